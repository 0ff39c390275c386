"""A run's alignment curves: read them from metrics.jsonl, correlate them with the eval score, draw them as a PNG.

The figure (`arr.plots`) has the alignment metrics on top and the eval score below, on one step axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arr.jsonl import read_jsonl
from arr.plots import COLORS, Panel, panel_figure, save_figure


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
    """Draw the align/* curves (top) and `target` (bottom) against the training step, on one step axis; writes a
    PNG (or SVG, from the suffix) and returns its path."""
    keys = alignment_keys(rows)
    if not keys:
        raise ValueError(
            "no align/* metrics in these rows: train with an AlignmentProbe callback to log them"
        )
    # The target's line takes the colour after the alignment lines', so that no two lines share one.
    colors = {name: COLORS[i % len(COLORS)] for i, name in enumerate([*(k[6:] for k in keys), target])}
    panels = [
        Panel(title, {k[len("align/") :]: series(rows, k) for k in keys}, "alignment (similarity)"),
        Panel(f"held-out {target}", {target: series(rows, target)}, target),
    ]
    fig = panel_figure(panels, cols=1, panel_size=(7.2, 2.8), colors=colors)
    return save_figure(fig, path)


__all__ = ["alignment_keys", "correlations", "plot_alignment", "read_metrics", "series"]
