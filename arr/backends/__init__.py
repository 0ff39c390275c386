"""Judge backends, created by name: `load_backend("hf" | "openai" | "pixel", **kwargs)` or a dotted path."""

from __future__ import annotations

import importlib
from typing import Any

from arr.backends.base import (
    CriterionQuery,
    CriterionVerdict,
    JudgeBackend,
    PairQuery,
    PairVerdict,
)

# Short name -> "module:Class", imported lazily so that `pixel` never pulls in transformers or httpx.
BACKENDS: dict[str, str] = {
    "hf": "arr.backends.hf:HFBackend",
    "openai": "arr.backends.openai:OpenAIBackend",
    "pixel": "arr.backends.pixel:PixelBackend",
}


def load_backend(name: str, **kwargs: Any) -> JudgeBackend:
    """Create a judge backend by registry name or dotted path ("package.module:Class")."""
    target = BACKENDS.get(name, name)
    if ":" not in target:
        raise ValueError(
            f"unknown judge backend {name!r}; expected one of {sorted(BACKENDS)} or 'module:Class'"
        )
    module_name, cls_name = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"judge backend {name!r}: cannot import {module_name} ({e})") from None
    try:
        cls = getattr(module, cls_name)
    except AttributeError:
        raise ValueError(f"judge backend {name!r}: {module_name} has no class {cls_name}") from None
    return cls(**kwargs)


__all__ = [
    "BACKENDS",
    "CriterionQuery",
    "CriterionVerdict",
    "JudgeBackend",
    "PairQuery",
    "PairVerdict",
    "load_backend",
]
