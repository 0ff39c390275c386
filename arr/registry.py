"""Registries map a short name to a lazily imported "module:attribute" path.

A user's own Python code may also name its class by such a path ("package.module:Class"). Names read from data
files (suites, recipes, eval configs) must be registry names: a data file is shared like a dataset, and a path in
it would make arr import and call whatever it names (`os:system`). Loaders of data files pass
`allow_import_path=False`, which refuses a path before importing anything.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def _import(target: str, name: str, kind: str) -> Any:
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ValueError(f"{kind} {name!r}: cannot import {module_name} ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{kind} {name!r}: {module_name} has no attribute {attr}") from None


def _protocol_methods(protocol: type) -> list[str]:
    return [k for k, v in vars(protocol).items() if callable(v) and not k.startswith("_")]


def is_kind(obj: Any, expected: type) -> bool:
    """Whether `obj` is a class of the kind `expected`: a subclass, or for a `typing.Protocol` (whose data members
    rule out `issubclass`) a class with every method the protocol lists."""
    if not inspect.isclass(obj):
        return False
    if getattr(expected, "_is_protocol", False):
        return all(callable(getattr(obj, m, None)) for m in _protocol_methods(expected))
    return issubclass(obj, expected)


def resolve(
    registry: dict[str, str],
    name: str,
    kind: str,
    *,
    allow_import_path: bool = True,
    expected: type | None = None,
) -> Any:
    """The object named `name` in `registry`, or by a "package.module:Class" path; errors list the valid names.

    `allow_import_path=False` (names from data files) accepts registry names only. A path must name a class of
    the `expected` kind (when given): anything else is a ValueError, never called.
    """
    if name in registry:
        return _import(registry[name], name, kind)
    if not allow_import_path:
        raise ValueError(
            f"unknown {kind} {name!r}; expected one of {sorted(registry)} (a data file names registry entries "
            "only, never a Python path)"
        )
    if ":" not in name:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(registry)} or 'module:Class'")
    obj = _import(name, name, kind)
    if expected is not None and not is_kind(obj, expected):
        what = type(obj).__name__ if not inspect.isclass(obj) else f"class {obj.__name__}"
        raise ValueError(
            f"{name} is not a {kind} class (it is a {what}); expected one of {sorted(registry)} or a "
            f"'module:Class' path to a {expected.__name__}"
        )
    return obj
