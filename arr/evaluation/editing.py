"""Run an editing benchmark: edit every sample, judge and measure it, summarise per category, write a report.

    arr eval eval/shapes_edit.yaml --policy shapes-edit --backend pixel --out runs/eval/shapes_edit
    arr eval eval/gedit_bench.yaml --policy Qwen/Qwen-Image-Edit --backend openai \
        --model Qwen/Qwen2.5-VL-72B-Instruct --base-url http://127.0.0.1:8000/v1 --out runs/eval/gedit

Outputs in OUT: `samples.jsonl` (one row per finished sample, append-only, keyed by sample id), `edits/` (the
edited images), `summary.json` (means overall, per category and per language; skipped and failed samples) and
`report.html`. A run that stops (Ctrl-C, a crash, an unreachable judge) resumes where it stopped when started again
with the same OUT: finished samples are read back, edited images already on disk are judged without being
regenerated, and the summary is computed from the rows alone, so it equals that of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from PIL import Image

from arr.evaluation.edit_benchmarks import EditSample
from arr.evaluation.edit_judges import EditJudge
from arr.evaluation.edit_metrics import EditMetrics
from arr.evaluation.edit_report import write_edit_report
from arr.evaluation.edit_results import (
    ROWS,
    SUMMARY,
    claim_folder,
    file_stem,
    run_pending,
    save_image,
    summarize,
)
from arr.evaluation.editors import Editor
from arr.jsonl import write_text_atomic


def sample_seed(sample_id: str, seed: int = 0) -> int:
    """A seed that depends only on the sample and the run seed (stable across processes, unlike hash())."""
    return (zlib.crc32(sample_id.encode("utf-8")) + 1_000_003 * int(seed)) % 2**31


def _edit_missing(editor: Editor, batch: Sequence[EditSample], paths: list[Path], seeds: list[int]) -> float:
    """Edit the samples whose image is not on disk yet (a resumed run judges the others as they are); returns the
    seconds per edited image."""
    todo = [k for k, p in enumerate(paths) if not p.is_file()]
    t0 = time.perf_counter()
    if todo:
        made = editor.edit(
            [batch[k].source for k in todo],
            [batch[k].instruction for k in todo],
            [seeds[k] for k in todo],
        )
        for k, image in zip(todo, made, strict=True):
            save_image(image.convert("RGB"), paths[k])
    return (time.perf_counter() - t0) / max(len(todo), 1)


def _row(
    sample: EditSample,
    edit: str,
    seed: int,
    judged: dict[str, Any] | None,
    measured: dict[str, Any] | None,
    seconds: tuple[float, float],
) -> dict[str, Any]:
    """One sample's row of samples.jsonl: its judgment, metrics and timings (edit, judge seconds)."""
    row: dict[str, Any] = {
        "id": sample.id,
        "category": sample.category,
        "language": sample.language,
        "instruction": sample.instruction,
        "seed": seed,
        "edit": edit,
        "scores": None if judged is None else judged.get("scores"),
        "reason": None if judged is None else judged.get("reason"),
        "metrics": measured,
        "error": None if judged is None else judged.get("error"),
        "edit_seconds": round(seconds[0], 4),
        "judge_seconds": round(seconds[1], 4),
    }
    if "intersection" in sample.extra:  # GEdit-Bench's subset with both an en and a cn instruction
        row["intersection"] = bool(sample.extra["intersection"])
    if judged is not None and judged.get("raw") is not None:
        row["raw"] = judged["raw"]
    return row


def _run_batch(
    batch: Sequence[EditSample],
    editor: Editor,
    judge: EditJudge | None,
    metrics: EditMetrics | None,
    out: Path,
    seed: int,
    rows: IO[str],
) -> None:
    """Edit, judge and measure one batch, then append its rows with one flush: a row on disk always has its image
    on disk."""
    paths = [out / "edits" / f"{file_stem(s.id)}.png" for s in batch]
    seeds = [sample_seed(s.id, seed) for s in batch]
    edit_seconds = _edit_missing(editor, batch, paths, seeds)
    edits = [Image.open(p).convert("RGB") for p in paths]
    t0 = time.perf_counter()
    judged = judge.judge(batch, edits) if judge is not None else [None] * len(batch)
    judge_seconds = (time.perf_counter() - t0) / len(batch)
    measured = metrics.compute(batch, edits) if metrics is not None else [None] * len(batch)
    for s, path, sd, j, m in zip(batch, paths, seeds, judged, measured, strict=True):
        row = _row(s, str(path.relative_to(out)), sd, j, m, (edit_seconds, judge_seconds))
        rows.write(json.dumps(row, ensure_ascii=False) + "\n")
    rows.flush()
    os.fsync(rows.fileno())


def evaluate_edits(
    samples: Sequence[EditSample],
    editor: Editor,
    out_dir: str | Path,
    judge: EditJudge | None = None,
    metrics: EditMetrics | None = None,
    *,
    info: dict[str, Any] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
    report: bool = True,
    self_contained_report: bool = False,
) -> dict[str, Any]:
    """Evaluate `editor` on `samples` into `out_dir` (resumable, see the module docstring); returns the summary.

    `info` (suite name, schema, ...) is copied into the summary. `report` writes report.html, with its thumbnails
    inlined when `self_contained_report` (one file to share). Samples with `error` (corrupt rows) are skipped and
    listed; a sample whose judgment failed is written with its error and judged again on the next run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    (out / "edits").mkdir(parents=True, exist_ok=True)
    settings = {
        "policy": editor.fingerprint(),
        "judge": judge.fingerprint() if judge is not None else None,
        "metrics": metrics.fingerprint() if metrics is not None else None,
        "seed": int(seed),
    }
    claim_folder(out, settings)
    info = {
        **(info or {}),
        "policy": editor.name,
        "protocol": getattr(judge, "protocol", None),
        "judge": settings["judge"],
    }
    valid = [s for s in samples if not s.error]
    skipped = [{"id": s.id, "reason": s.error or ""} for s in samples if s.error]
    rows = run_pending(
        valid,
        out / ROWS,
        lambda batch, fh: _run_batch(batch, editor, judge, metrics, out, seed, fh),
        item_id=lambda s: s.id,
        batch_size=batch_size,
        unit="edit",
        progress=progress,
    )

    summary = summarize(rows, skipped, info)
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    if report:
        write_edit_report(summary, rows, valid, out, self_contained=self_contained_report)
    return summary


__all__ = ["evaluate_edits", "sample_seed"]
