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


def load_backend(name: str, **kwargs: Any) -> JudgeBackend:
    """Create a judge backend by registry name or dotted path ("package.module:Class")."""
    cls = resolve(BACKENDS, name, "judge backend")
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
