"""Registries map a short name to a lazily imported "module:attribute" path and accept such a path directly."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(registry: dict[str, str], name: str, kind: str) -> Any:
    """The object named `name` in `registry` (or by a "package.module:Attr" path); errors list the valid names."""
    target = registry.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(registry)} or 'module:Class'")
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{kind} {name!r}: cannot import {module_name} ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{kind} {name!r}: {module_name} has no attribute {attr}") from None
