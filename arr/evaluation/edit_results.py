"""The results folder of a benchmark evaluation (editing or text-to-image): its file names, its claim on the folder,
its rows (one per finished sample) and the summary computed from them alone, so that a resumed run summarises exactly
like an uninterrupted one.

Read by the evaluations (arr.evaluation.editing, arr.evaluation.t2i) and by their reports.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from PIL import Image
from tqdm.auto import tqdm

from arr.jsonl import read_jsonl, write_text_atomic

ROWS = "samples.jsonl"
SETTINGS = "settings.json"
SUMMARY = "summary.json"
# Where each protocol's headline score lives, and its scale (for charts).
HEADLINE: dict[str, tuple[str, float]] = {"viescore": ("O", 10.0), "imgedit": ("score", 5.0)}
# Lower is better for these; the report sorts them ascending by default.
LOWER_IS_BETTER = ("l1", "l2")


def file_stem(sample_id: str) -> str:
    """A safe, unique file name for a sample id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id)[:80]
    return f"{safe}-{hashlib.sha1(sample_id.encode('utf-8')).hexdigest()[:8]}"


def save_image(image: Image.Image, path: Path) -> None:
    """Write an image beside its final name and rename it into place: a kill never leaves half a PNG."""
    tmp = path.with_name(path.stem + ".tmp.png")
    image.save(tmp)
    os.replace(tmp, path)


def claim_folder(out: Path, settings: dict[str, Any]) -> None:
    """Record what this evaluation is in OUT/settings.json, or check that OUT holds results of the same one."""
    path = out / SETTINGS
    if not path.is_file():
        write_text_atomic(path, json.dumps(settings, indent=1) + "\n")
        return
    previous = json.loads(path.read_text(encoding="utf-8"))
    if previous != settings:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise ValueError(
            f"{out} holds results of another evaluation (different {', '.join(changed)}); "
            "use a new --out or delete that folder to start over"
        )


def read_rows(path: Path) -> dict[str, dict[str, Any]]:
    """Finished rows by id. A torn last line (the process died while writing it) is ignored; later rows win."""
    return {row["id"]: row for row in read_jsonl(path) if "id" in row}


Item = TypeVar("Item")


def run_pending(
    items: Sequence[Item],
    rows_path: Path,
    run_batch: Callable[[list[Item], IO[str]], None],
    *,
    item_id: Callable[[Item], str],
    batch_size: int,
    unit: str,
    progress: bool,
) -> list[dict[str, Any]]:
    """Run `run_batch` over the items that have no finished row yet, appending rows to `rows_path`, with a
    progress bar that starts at what an earlier (killed) run already finished; returns every item's finished row,
    in the items' order."""
    done = {k for k, r in read_rows(rows_path).items() if not r.get("error")}
    pending = [it for it in items if item_id(it) not in done]
    bar = tqdm(
        total=len(items), initial=len(items) - len(pending), desc="arr eval", unit=unit, disable=not progress
    )
    with rows_path.open("a", encoding="utf-8") as fh:
        if fh.tell() > 0 and not rows_path.read_bytes().endswith(b"\n"):
            fh.write("\n")  # end a row torn by a kill, so the next row starts on its own line
        for start in range(0, len(pending), batch_size):
            batch = list(pending[start : start + batch_size])
            run_batch(batch, fh)
            bar.update(len(batch))
    bar.close()
    final = read_rows(rows_path)
    return [final[item_id(it)] for it in items if item_id(it) in final]


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


__all__ = [
    "HEADLINE",
    "LOWER_IS_BETTER",
    "ROWS",
    "SETTINGS",
    "SUMMARY",
    "claim_folder",
    "file_stem",
    "read_rows",
    "save_image",
    "summarize",
]
