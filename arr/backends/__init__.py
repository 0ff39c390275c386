"""Judge backends, created by name: `load_backend("hf" | "openai" | "pixel", **kwargs)` or a dotted path."""

from __future__ import annotations

from typing import Any

from arr.backends.base import (
    CriterionQuery,
    CriterionVerdict,
    JudgeBackend,
    PairQuery,
    PairVerdict,
)
from arr.registry import resolve

# Short name -> "module:Class", imported lazily so that `pixel` never pulls in transformers or httpx.
BACKENDS: dict[str, str] = {
    "hf": "arr.backends.hf:HFBackend",
    "openai": "arr.backends.openai:OpenAIBackend",
    "pixel": "arr.backends.pixel:PixelBackend",
}


def load_backend(name: str, *, allow_import_path: bool = True, **kwargs: Any) -> JudgeBackend:
    """Create a judge backend by registry name or dotted path ("package.module:Class") with `kwargs`.

    A path must name a judge backend class. A name read from a data file (a suite, a recipe) is looked up with
    `allow_import_path=False`: registry names only, nothing imported from elsewhere.
    """
    cls = resolve(BACKENDS, name, "judge backend", allow_import_path=allow_import_path, expected=JudgeBackend)
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
