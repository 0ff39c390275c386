"""Every chart arr draws: training curves, bar charts, the alignment figure and the benchmarks' plots.

One module, drawn with matplotlib, so that every chart has a title, labelled axes, round tick values (integer ticks
on integer axes such as training steps) and a legend, and panels that show the same quantity share one scale.
Charts come back as SVG text to inline in an HTML report (text stays text, so a page can be searched and read by
tests) or are saved as PNG / SVG files. No global matplotlib state is touched: figures are built without pyplot.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import Formatter, MaxNLocator

# matplotlib's tab10, in order: one colour per series, the same series keeping its colour across panels.
COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#17becf",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
)
# At most this many points get a marker; denser lines read better without.
MARKER_LIMIT = 40

RC = {
    "svg.fonttype": "none",  # text as <text>, not glyph outlines: smaller, searchable, testable
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
}

Points = Sequence[tuple[float, float]]


@dataclass
class Panel:
    """One chart: named series of (x, y) points, with its title and axis labels (say the unit in the label).

    `bands` shade an interval around a series: name -> (x, low, high) points. `integer_x` puts ticks on whole
    numbers only (steps). `ylim` fixes the y range (e.g. (0, 1) for a rate); None ends follow the data.
    """

    title: str
    series: Mapping[str, Points]
    ylabel: str
    xlabel: str = "training step"
    integer_x: bool = True
    ylim: tuple[float | None, float | None] | None = None
    bands: Mapping[str, Sequence[tuple[float, float, float]]] = field(default_factory=dict)
    note: str = ""

    def finite_series(self) -> dict[str, list[tuple[float, float]]]:
        """The series without missing or non-finite points (and without series left empty)."""
        out = {}
        for name, points in self.series.items():
            good = [(float(x), float(y)) for x, y in points if _finite(x) and _finite(y)]
            if good:
                out[name] = good
        return out


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def tick_labels(values: Sequence[float]) -> list[str]:
    """Tick values written alike, with just the digits that tell neighbours apart: 0.45 0.5 0.55 -> "0.45" "0.50"
    "0.55"; spacings under 1e-3 (or values from 1e6) in scientific notation, 1e-4 -> "1e-4", never an offset or
    multiplier that the reader must apply in their head."""
    finite = sorted({float(v) for v in values if _finite(v)})
    gaps = [b - a for a, b in zip(finite, finite[1:], strict=False) if b > a]
    step = min(gaps) if gaps else max((abs(v) for v in finite), default=1.0) or 1.0
    tol = step * 1e-6
    scientific = step < 1e-3 or max((abs(v) for v in finite), default=0.0) >= 1e6
    if scientific:
        digits = next((d for d in range(6) if all(abs(float(f"{v:.{d}e}") - v) <= tol for v in finite)), 6)
    else:
        digits = next((d for d in range(10) if all(abs(round(v, d) - v) <= tol for v in finite)), 10)
    out = []
    for v in values:
        if not _finite(v):
            out.append(str(v))
        elif abs(v) <= tol:
            out.append("0")
        elif scientific:
            mantissa, exponent = f"{v:.{digits}e}".split("e")
            out.append(f"{mantissa}e{int(exponent)}")
        else:
            out.append(f"{v:.{digits}f}")
    return out


class RoundFormatter(Formatter):
    """Formats the ticks of an axis together, with `tick_labels`."""

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        return tick_labels(values)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return tick_labels([x])[0]


def _style_axes(ax: Axes, panel: Panel) -> None:
    ax.set_title(panel.title)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=7, integer=panel.integer_x, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(RoundFormatter())
    ax.yaxis.set_major_formatter(RoundFormatter())


def draw_panel(
    ax: Axes,
    panel: Panel,
    xlim: tuple[float, float] | None = None,
    colors: Mapping[str, str] | None = None,
) -> None:
    """Draw `panel` on `ax`: one line per series (markers while points are few), its bands, labels and legend."""
    _style_axes(ax, panel)
    series = panel.finite_series()
    if not series:
        ax.text(
            0.5, 0.5, panel.note or "no data", ha="center", va="center", transform=ax.transAxes, color="#777"
        )
        ax.set_yticks([])
        if xlim is not None:
            ax.set_xlim(*xlim)
        return
    for i, (name, points) in enumerate(series.items()):
        color = (colors or {}).get(name, COLORS[i % len(COLORS)])
        xs, ys = zip(*points, strict=True)
        marker = "o" if len(points) <= MARKER_LIMIT else None
        ax.plot(xs, ys, color=color, linewidth=1.8, marker=marker, markersize=3.5, label=name)
        band = [b for b in panel.bands.get(name, ()) if all(_finite(v) for v in b)]
        if band:
            bx, lo, hi = zip(*band, strict=True)
            ax.fill_between(bx, lo, hi, color=color, alpha=0.15, linewidth=0)
    if xlim is not None:
        lo, hi = xlim
        margin = 0.02 * (hi - lo) if hi > lo else 0.5
        ax.set_xlim(lo - margin, hi + margin)
    if panel.ylim is not None:
        ax.set_ylim(*panel.ylim)
    if len(series) > 1 or panel.note:
        # A few names fit inside the axes; more go to the right, where they cannot hide a line.
        where = {"loc": "best"} if len(series) <= 3 else {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}
        ax.legend(frameon=False, title=panel.note or None, title_fontsize=8, **where)


def line_chart(
    panel: Panel, xlim: tuple[float, float] | None = None, size: tuple[float, float] = (5.0, 2.9)
) -> str:
    """One panel as SVG text (`size` in inches at 72 points per inch: 5.0 x 2.9 is 480 x 278 CSS pixels)."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=size, layout="constrained")
        draw_panel(fig.add_subplot(), panel, xlim)
        return to_svg(fig, salt=panel.title)


def panel_figure(
    panels: Sequence[Panel | None],
    cols: int = 2,
    panel_size: tuple[float, float] = (4.6, 2.8),
    sharex: bool = True,
    colors: Mapping[str, str] | None = None,
    legend: Sequence[str] = (),
) -> Figure:
    """Panels on one figure, `cols` to a row (None leaves a slot empty), on one x range when `sharex` (steps of one
    run line up).

    `colors` keeps a series' colour the same in every panel; `legend` names the series of one legend below the
    panels, for figures whose panels all show the same series (the panels then skip their own legends).
    """
    rows = math.ceil(len(panels) / cols)
    with matplotlib.rc_context(RC):
        fig = Figure(
            figsize=(panel_size[0] * cols, panel_size[1] * rows + (0.4 if legend else 0)),
            layout="constrained",
        )
        axes = fig.subplots(rows, cols, squeeze=False)
        xs = [x for p in panels if p is not None for pts in p.finite_series().values() for x, _ in pts]
        xlim = (min(xs), max(xs)) if sharex and xs else None
        for k, ax in enumerate(axes.flat):
            if k >= len(panels) or panels[k] is None:
                ax.set_visible(False)
                continue
            draw_panel(ax, panels[k], xlim, colors)
            if legend and ax.get_legend() is not None:
                ax.get_legend().remove()
        if legend:
            handles = [
                Line2D([], [], color=(colors or {}).get(n, COLORS[i % len(COLORS)]), linewidth=2)
                for i, n in enumerate(legend)
            ]
            fig.legend(
                handles, list(legend), loc="outside lower center", ncols=min(len(legend), 4), frameon=False
            )
    return fig


def bar_chart(
    groups: Mapping[str, Mapping[str, float | None]],
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = (0.0, 1.0),
    xlabel: str = "",
    value_format: str = "{:.2f}",
    size: tuple[float, float] | None = None,
) -> str:
    """Grouped bars as SVG text: one group per key of `groups`, one bar (and legend entry) per metric, each bar
    labelled with its value. A missing value (None) leaves a gap rather than a zero-height bar."""
    metrics = list(dict.fromkeys(m for values in groups.values() for m in values))
    legend_w = 1.3 if len(metrics) > 1 else 0.0
    width = size or (max(4.6, 1.2 + legend_w + 0.3 * len(groups) * max(len(metrics), 1)), 3.0)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=width, layout="constrained")
        ax = fig.add_subplot()
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_formatter(RoundFormatter())
        ax.grid(axis="x", visible=False)
        n = max(len(metrics), 1)
        bar_w = 0.8 / n
        for m, metric in enumerate(metrics):
            xs, hs = [], []
            for g, values in enumerate(groups.values()):
                v = values.get(metric)
                if _finite(v):
                    xs.append(g - 0.4 + bar_w * (m + 0.5))
                    hs.append(float(v))
            bars = ax.bar(xs, hs, width=bar_w * 0.92, color=COLORS[m % len(COLORS)], label=metric)
            ax.bar_label(bars, labels=[value_format.format(h) for h in hs], fontsize=7, padding=1.5)
        ax.set_xticks(range(len(groups)), [str(g) for g in groups])
        if len(groups) > 5 and max((len(str(g)) for g in groups), default=0) > 8:
            ax.tick_params(axis="x", labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        if ylim is not None:
            top = max([ylim[1], *(h for v in groups.values() for h in v.values() if _finite(h))])
            ax.set_ylim(ylim[0], top * 1.08)  # room for the value labels above a full bar
        if len(metrics) > 1:  # beside the bars, which it would otherwise hide
            ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        return to_svg(fig, salt=title)


def to_svg(fig: Figure, salt: str = "") -> str:
    """The figure as an `<svg>` element to inline in HTML: no XML prolog, no metadata, and ids salted with `salt`
    so that two charts on one page do not share the ids of different definitions."""
    buf = io.StringIO()
    with matplotlib.rc_context({**RC, "svg.hashsalt": f"arr:{salt}"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    # Scale with the page: the intrinsic size stays the maximum, a narrow window shrinks the chart.
    return text.replace("<svg ", "<svg class='chart' style='max-width:100%;height:auto' ", 1)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure as PNG or SVG (from the file's suffix); returns the path."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"{path}: write charts as .png or .svg, not {path.suffix or 'no suffix'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "svg":
        path.write_text(to_svg(fig, salt=path.stem) + "\n", encoding="utf-8")
    else:
        with matplotlib.rc_context(RC):
            fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


__all__ = [
    "COLORS",
    "Panel",
    "RoundFormatter",
    "bar_chart",
    "draw_panel",
    "line_chart",
    "panel_figure",
    "save_figure",
    "tick_labels",
    "to_svg",
]
