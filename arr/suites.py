"""Evaluation suite files: one YAML mapping per benchmark, read strictly (unknown keys are errors, as in recipes).

Suites are shared like datasets, so they are data: a suite names arr's own judge backends and data generators by
their registry names, never a Python callable for arr to import.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from arr.backends import BACKENDS


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
    judge = suite.get("judge")
    if judge is not None and (not isinstance(judge, str) or judge not in BACKENDS):
        raise ValueError(f"suite {path}: unknown judge {judge!r}; expected one of {sorted(BACKENDS)}")
    return suite
