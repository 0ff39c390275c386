"""JSON Lines files: logs that survive a crash (append, fsync) and data files with errors that name the line.

Logs (`metrics.jsonl`, `samples.jsonl`, caches) are read tolerantly: a line torn by a crash mid-write is skipped.
Data files (datasets, benchmark records) are read strictly: a bad line is a `JSONLError` naming file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class JSONLError(ValueError):
    """A data file's line is not a JSON object; the message names the file and the line."""


def read_jsonl(path: str | Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of `path`, one per non-empty line.

    `strict=False` (logs): lines that do not parse as a JSON object are skipped, and a missing file reads as
    empty. `strict=True` (data): they raise `JSONLError`, as does a missing file."""
    return [row for _, row in iter_jsonl(path, strict=strict)]


def iter_jsonl(path: str | Path, *, strict: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line, as `read_jsonl` reads them: for callers whose own checks
    of a record name its line."""
    path = Path(path)
    if not path.is_file():
        if strict:
            raise JSONLError(f"{path}: no such file")
        return
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if strict:
                raise JSONLError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            continue
        if not isinstance(row, dict):
            if strict:
                raise JSONLError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            continue
        yield n, row


def append_jsonl(path: str | Path, row: dict[str, Any], *, fsync: bool = True) -> None:
    """Append one row as a line; with `fsync`, the row is on disk when this returns (a crash loses nothing)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write beside and rename: readers see the old file or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
