"""Evaluation suite files: one YAML mapping per benchmark, read strictly (unknown keys are errors, as in recipes)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any


def read_suite(path: str | Path, allowed_keys: Collection[str]) -> dict[str, Any]:
    """The suite at `path` as a dict; a one-line ValueError for unreadable YAML, a non-mapping or unknown keys."""
    import yaml

    path = Path(path)
    try:
        suite = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read suite {path}: {e}") from None
    if not isinstance(suite, dict):
        raise ValueError(f"suite {path} must be a YAML mapping, got {type(suite).__name__}")
    unknown = set(suite) - set(allowed_keys)
    if unknown:
        raise ValueError(f"suite {path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed_keys)}")
    return suite
