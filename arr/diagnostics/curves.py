"""A run's alignment curves: read them from metrics.jsonl, correlate them with the eval score, draw them as a PNG.

The PNG is drawn with PIL alone (no plotting library): alignment metrics on top, the eval score below, on one
step axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from arr.jsonl import read_jsonl

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/metrics.jsonl (a row cut short by a crash is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected a run directory written by `arr train` / `arr demo`"
        )
    return read_jsonl(path)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def alignment_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The numeric align/<metric> keys present in the rows (not the align/<metric>_layer names)."""
    return sorted({k for r in rows for k, v in r.items() if k.startswith("align/") and _number(v)})


def series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[key])) for r in rows if "step" in r and _number(r.get(key))]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def correlations(rows: Sequence[dict[str, Any]], target: str = "eval_score") -> dict[str, dict[str, Any]]:
    """Pearson and Spearman correlation of each align/* metric with `target` over rows that log both.

    NaN where fewer than 3 such rows exist or either side is constant.
    """
    out = {}
    for key in alignment_keys(rows):
        both = [(r[key], r[target]) for r in rows if _number(r.get(key)) and _number(r.get(target))]
        x = np.array([a for a, _ in both], dtype=float)
        y = np.array([b for _, b in both], dtype=float)
        out[key] = {
            "n": len(both),
            "pearson": _pearson(x, y),
            "spearman": _pearson(_ranks(x), _ranks(y)) if len(both) >= 3 else float("nan"),
        }
    return out


def plot_alignment(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    title: str = "Policy-judge alignment",
    target: str = "eval_score",
) -> Path:
    """Draw the align/* curves (top) and `target` (bottom) against the step; returns the PNG path."""
    keys = alignment_keys(rows)
    if not keys:
        raise ValueError(
            "no align/* metrics in these rows: train with an AlignmentProbe callback to log them"
        )
    width, panel_h, margin_l, margin_r, top = 760, 240, 64, 170, 30
    height = top + 2 * panel_h + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((margin_l, 8), title, fill="black", font=font)
    steps = [s for k in [*keys, target] for s, _ in series(rows, k)]
    x0, x1 = (min(steps), max(steps)) if steps else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    panels = [
        ({k[len("align/") :]: series(rows, k) for k in keys}, top),
        ({target: series(rows, target)}, top + panel_h + 20),
    ]
    for i, (named, y_top) in enumerate(panels):
        box = (margin_l, y_top, width - margin_r, y_top + panel_h - 30)
        # The eval curve takes the colour after the alignment curves', so no two lines share one.
        _panel(draw, font, named, box, (x0, x1), first_colour=0 if i == 0 else len(keys))
    draw.text(((margin_l + width - margin_r) // 2 - 10, height - 18), "step", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _panel(
    draw: ImageDraw.ImageDraw,
    font: Any,
    named: dict[str, list[tuple[float, float]]],
    box: tuple[int, int, int, int],
    xrange: tuple[float, float],
    first_colour: int = 0,
) -> None:
    left, top, right, bottom = box
    x0, x1 = xrange
    ys = [y for pts in named.values() for _, y in pts]
    if not ys:
        draw.text((left + 8, (top + bottom) // 2), f"{', '.join(named)}: no data", fill="#777", font=font)
        return
    y0, y1 = min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.08
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def sy(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        draw.line([(left, sy(yv)), (right, sy(yv))], fill="#eeeeee")
        draw.text((4, sy(yv) - 6), f"{yv:.3g}".rjust(8), fill="black", font=font)
        xv = x0 + (x1 - x0) * k / 4
        draw.text((sx(xv) - 8, bottom + 4), f"{xv:.4g}", fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="#999999")
    for i, (name, pts) in enumerate(named.items()):
        color = PALETTE[(first_colour + i) % len(PALETTE)]
        xy = [(sx(x), sy(y)) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for px, py in xy if len(xy) <= 60 else []:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=color)
        draw.text((right + 10, top + 14 * i), name, fill=color, font=font)


__all__ = ["alignment_keys", "correlations", "plot_alignment", "read_metrics", "series"]
