"""Run an editing benchmark: edit every sample, judge and measure it, summarise per category, write a report.

    arr eval eval/shapes_edit.yaml --policy shapes-edit --judge pixel --out runs/eval/shapes_edit
    arr eval eval/gedit_bench.yaml --policy Qwen/Qwen-Image-Edit --judge openai \
        --model Qwen/Qwen2.5-VL-72B-Instruct --base-url http://127.0.0.1:8000/v1 --out runs/eval/gedit

Outputs in OUT: `samples.jsonl` (one row per finished sample, append-only, keyed by sample id), `edits/` (the
edited images), `summary.json` (means overall, per category and per language; skipped and failed samples) and
`report.html`. A run that stops (Ctrl-C, a crash, an unreachable judge) resumes where it stopped when started again
with the same OUT: finished samples are read back, edited images already on disk are judged without being
regenerated, and the summary is computed from the rows alone, so it equals that of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from arr.evaluation.edit_benchmarks import EditSample
from arr.evaluation.edit_judges import EditJudge
from arr.evaluation.edit_metrics import EditMetrics
from arr.evaluation.editors import Editor

ROWS = "samples.jsonl"
SETTINGS = "settings.json"
SUMMARY = "summary.json"
# Where each protocol's headline score lives, and its scale (for charts).
HEADLINE: dict[str, tuple[str, float]] = {"viescore": ("O", 10.0), "imgedit": ("score", 5.0)}
# Lower is better for these; the report sorts them ascending by default.
LOWER_IS_BETTER = ("l1", "l2")


def sample_seed(sample_id: str, seed: int = 0) -> int:
    """A seed that depends only on the sample and the run seed (stable across processes, unlike hash())."""
    return (zlib.crc32(sample_id.encode("utf-8")) + 1_000_003 * int(seed)) % 2**31


def file_stem(sample_id: str) -> str:
    """A safe, unique file name for a sample id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)[:80]
    return f"{safe}-{hashlib.sha1(sample_id.encode('utf-8')).hexdigest()[:8]}"


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Finished rows by id. A torn last line (the process died while writing it) is ignored; later rows win."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "id" in row:
            rows[row["id"]] = row
    return rows


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_image(image: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    values: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for group in ("scores", "metrics"):
            for k, v in (row.get(group) or {}).items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    values[k].append(float(v))
    return {"n": len(rows), **{k: _mean(v) for k, v in values.items()}}


def summarize(
    rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, str]], info: dict[str, Any]
) -> dict[str, Any]:
    """Means over the scored rows: overall (over samples), per category and per language, the macro average (mean of
    the category means, as ImgEdit's overall) and GEdit-Bench's intersection subset where the data marks it. Failed
    rows (no judgment) are listed, not averaged."""
    scored = [r for r in rows if not r.get("error")]
    failed = [{"id": r["id"], "error": r["error"]} for r in rows if r.get("error")]
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_lang: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in scored:
        by_cat[r.get("category") or "-"].append(r)
        by_lang[r.get("language") or "-"].append(r)
    categories = {c: _means(rs) for c, rs in sorted(by_cat.items())}
    overall = _means(scored)
    keys = [k for k in overall if k != "n"]
    macro = {k: _mean([m[k] for m in categories.values() if m.get(k) is not None]) for k in keys}
    headline_key = HEADLINE.get(info.get("protocol") or "", (None, 1.0))[0]
    subsets = {}
    if any("intersection" in r for r in scored):
        subsets["intersection"] = _means([r for r in scored if r.get("intersection")])
    return {
        **info,
        "n_samples": len(rows) + len(skipped),
        "n_scored": len(scored),
        "headline": {"metric": headline_key, "value": overall.get(headline_key)} if headline_key else None,
        "overall": overall,
        "macro": macro,
        "categories": categories,
        "languages": {lang: _means(rs) for lang, rs in sorted(by_lang.items())},
        "subsets": subsets,
        "skipped": list(skipped),
        "failed": failed,
    }


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
) -> dict[str, Any]:
    """Evaluate `editor` on `samples` into `out_dir` (resumable, see the module docstring); returns the summary.

    `info` (suite name, schema, ...) is copied into the summary. Samples with `error` (corrupt rows) are skipped and
    listed; a sample whose judgment failed is written with its error and judged again on the next run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    edits_dir = out / "edits"
    edits_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "policy": editor.fingerprint(),
        "judge": judge.fingerprint() if judge is not None else None,
        "metrics": metrics.fingerprint() if metrics is not None else None,
        "seed": int(seed),
    }
    settings_path = out / SETTINGS
    if settings_path.is_file():
        previous = json.loads(settings_path.read_text(encoding="utf-8"))
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ValueError(
                f"{out} holds results of another evaluation (different {', '.join(changed)}); "
                "use a new --out or delete that folder to start over"
            )
    else:
        _atomic_write(settings_path, json.dumps(settings, indent=1) + "\n")

    info = {
        **(info or {}),
        "policy": editor.name,
        "protocol": getattr(judge, "protocol", None),
        "judge": settings["judge"],
    }
    valid = [s for s in samples if not s.error]
    skipped = [{"id": s.id, "reason": s.error or ""} for s in samples if s.error]
    rows_path = out / ROWS
    done = {k: r for k, r in read_rows(rows_path).items() if not r.get("error")}
    pending = [s for s in valid if s.id not in done]

    bar = tqdm(
        total=len(valid),
        initial=len(valid) - len(pending),
        desc="arr eval",
        unit="edit",
        disable=not progress,
    )
    with rows_path.open("a", encoding="utf-8") as fh:
        if fh.tell() > 0 and not rows_path.read_bytes().endswith(b"\n"):
            fh.write("\n")  # end a row torn by a kill, so the next row starts on its own line
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            paths = [edits_dir / f"{file_stem(s.id)}.png" for s in batch]
            seeds = [sample_seed(s.id, seed) for s in batch]
            todo = [k for k, p in enumerate(paths) if not p.is_file()]
            t0 = time.perf_counter()
            if todo:
                made = editor.edit(
                    [batch[k].source for k in todo],
                    [batch[k].instruction for k in todo],
                    [seeds[k] for k in todo],
                )
                for k, image in zip(todo, made, strict=True):
                    _save_image(image.convert("RGB"), paths[k])
            edit_seconds = (time.perf_counter() - t0) / max(len(todo), 1)
            edits = [Image.open(p).convert("RGB") for p in paths]
            t0 = time.perf_counter()
            judged = judge.judge(batch, edits) if judge is not None else [None] * len(batch)
            judge_seconds = (time.perf_counter() - t0) / len(batch)
            measured = metrics.compute(batch, edits) if metrics is not None else [None] * len(batch)
            for s, path, sd, j, m in zip(batch, paths, seeds, judged, measured, strict=True):
                row: dict[str, Any] = {
                    "id": s.id,
                    "category": s.category,
                    "language": s.language,
                    "instruction": s.instruction,
                    "seed": sd,
                    "edit": str(path.relative_to(out)),
                    "scores": None if j is None else j.get("scores"),
                    "reason": None if j is None else j.get("reason"),
                    "metrics": m,
                    "error": None if j is None else j.get("error"),
                    "edit_seconds": round(edit_seconds, 4),
                    "judge_seconds": round(judge_seconds, 4),
                }
                if "intersection" in s.extra:  # GEdit-Bench's subset with both an en and a cn instruction
                    row["intersection"] = bool(s.extra["intersection"])
                if j is not None and j.get("raw") is not None:
                    row["raw"] = j["raw"]
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                if not row["error"]:
                    done[s.id] = row
            # One flush per batch: a row on disk always has its image on disk.
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(batch))
    bar.close()

    final = read_rows(rows_path)
    rows = [final[s.id] for s in valid if s.id in final]
    summary = summarize(rows, skipped, info)
    _atomic_write(out / SUMMARY, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    if report:
        from arr.evaluation.edit_report import write_edit_report

        write_edit_report(summary, rows, valid, out)
    return summary


__all__ = [
    "HEADLINE",
    "ROWS",
    "SUMMARY",
    "evaluate_edits",
    "file_stem",
    "read_rows",
    "sample_seed",
    "summarize",
]
