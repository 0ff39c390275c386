"""Prompt records and dataset loading: what the trainer, the evaluators and the probes read prompts from.

A `PromptRecord` is one prompt with its rubric (and, for editing, the source image). Datasets are JSONL files (one
{"prompt", "rubric", "category"?, "source_image"?, ...} object per line; a source image is a path relative to the
file) or `datasets` dataset ids. Bad rows are a `ConfigError` that names the file and the row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from arr.errors import ConfigError
from arr.rubrics import Rubric, RubricParseError, as_rubric

# The fields a record has; any other column of a row is kept in `PromptRecord.extra`.
RECORD_FIELDS = ("prompt", "rubric", "category", "source_image")


@dataclass
class PromptRecord:
    """One training or evaluation example: a prompt, its rubric and, for editing, the source image."""

    prompt: str
    rubric: Rubric
    category: str = "all"
    source_image: Image.Image | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def as_record(row: Any, where: str = "dataset row") -> PromptRecord:
    """A PromptRecord from a PromptRecord or a dataset row ({"prompt", "rubric" (Rubric, dict or JSON),
    "category"?, "source_image"?, ...}); anything else is a `ConfigError` that starts with `where`."""
    if isinstance(row, PromptRecord):
        return row
    if not isinstance(row, dict) or "prompt" not in row or "rubric" not in row:
        got = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ConfigError(f"{where}: a dataset row needs 'prompt' and 'rubric' fields, got {got}")
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise ConfigError(
            f"{where}: a dataset row's 'prompt' must be a string, got {type(prompt).__name__}: {prompt!r:.60}"
        )
    try:
        rubric = as_rubric(row["rubric"], where)
    except RubricParseError as e:
        raise ConfigError(str(e)) from None
    return PromptRecord(
        prompt=prompt,
        rubric=rubric,
        category=row.get("category") or "all",
        source_image=row.get("source_image"),
        extra={k: v for k, v in row.items() if k not in RECORD_FIELDS},
    )


def load_records(source: str, split: str) -> list[PromptRecord]:
    """Prompt records from a JSONL file (one {"prompt", "rubric", ...} per line) or a Hub dataset id."""
    path = Path(source)
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        from datasets import load_dataset

        try:
            rows = list(load_dataset(source, split=split))
        except Exception as e:  # datasets raises many types for a missing/unreachable dataset
            raise ConfigError(f"cannot load dataset {source!r} (split {split!r}): {e}") from None
    records = []
    for n, row in enumerate(rows, 1):
        image_path = row.get("source_image") if isinstance(row, dict) else None
        # Editing records in JSONL name their source image, relative to the file.
        if isinstance(image_path, str):
            from arr.images import ImageLoadError, load_image

            try:
                row = {**row, "source_image": load_image(path.parent / image_path)}
            except ImageLoadError as e:
                raise ConfigError(f"{source} row {n}: {e}") from None
        records.append(as_record(row, f"{source} row {n}"))
    return records


def _jsonl_rows(path: Path) -> list[Any]:
    """The rows of a JSONL dataset file, read strictly: a bad line is an error naming it."""
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"dataset file {path} is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); "
            "re-encode it as UTF-8"
        ) from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    return rows


__all__ = ["RECORD_FIELDS", "PromptRecord", "as_record", "load_records"]
