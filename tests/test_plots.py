"""The plotting module (arr/plots.py): round tick values written alike, integer ticks on step axes, labelled axes
and titles in the SVG, bar charts that leave missing values out, panels that share one step range."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from arr.plots import Panel, bar_chart, line_chart, panel_figure, tick_labels, to_svg

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(svg: str) -> dict[str, list[str]]:
    """The SVG's text, grouped as matplotlib groups it: x tick labels, y tick labels, and every other text."""
    root = ET.fromstring(svg)
    out: dict[str, list[str]] = {"x": [], "y": [], "other": []}
    seen: set[int] = set()
    for g in root.iter(f"{SVG}g"):
        gid = g.get("id", "")
        axis = "x" if gid.startswith("xtick_") else "y" if gid.startswith("ytick_") else None
        if axis is None:
            continue
        for t in g.iter(f"{SVG}text"):
            out[axis].append("".join(t.itertext()).strip())
            seen.add(id(t))
    out["other"] = ["".join(t.itertext()).strip() for t in root.iter(f"{SVG}text") if id(t) not in seen]
    return out


def as_number(label: str) -> float:
    return float(label.replace("−", "-"))


def round_spacing(values: list[float]) -> bool:
    """Ticks are evenly spaced by 1, 2, 2.5 or 5 times a power of ten."""
    gaps = {round(b - a, 12) for a, b in zip(values, values[1:], strict=False)}
    if len(gaps) != 1:
        return False
    gap = gaps.pop()
    mantissa = gap / 10 ** math.floor(math.log10(gap))
    return any(abs(mantissa - m) < 1e-6 for m in (1, 2, 2.5, 5, 10))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.45, 0.5, 0.55], ["0.45", "0.50", "0.55"]),  # one number of decimals for the whole axis
        ([0, 50, 100, 150], ["0", "50", "100", "150"]),
        ([0.375, 0.4, 0.425], ["0.375", "0.400", "0.425"]),
        ([-2, 0, 2], ["-2", "0", "2"]),
        ([0, 1e-4, 2e-4, 3e-4], ["0", "1e-4", "2e-4", "3e-4"]),  # no "x1e-4" offset to apply in one's head
        ([1e-17, 0.5, 1.0], ["0", "0.5", "1.0"]),  # float noise at zero reads as 0
    ],
)
def test_tick_labels_are_written_alike(values, expected):
    assert tick_labels(values) == expected


@pytest.mark.parametrize("last_step", [3, 6, 7, 13, 200])
def test_integer_steps_get_integer_round_ticks(last_step):
    points = [(s, 0.5 + 0.01 * math.sin(s)) for s in range(1, last_step + 1)]
    texts = svg_texts(line_chart(Panel("Held-out score", {"eval_score": points}, "eval_score")))
    xs = [as_number(t) for t in texts["x"]]
    assert len(xs) >= 3 and all(x == int(x) for x in xs), texts["x"]  # never 0.75 or 1.5 steps
    assert all("." not in t for t in texts["x"])
    assert round_spacing(xs) and round_spacing([as_number(t) for t in texts["y"]])


def test_ticks_stay_round_for_awkward_ranges():
    # The old plotter put ticks at 0.574 / 0.714 / 0.855 here.
    texts = svg_texts(line_chart(Panel("x", {"a": [(0, 0.574), (1, 0.99), (2, 0.62)]}, "score")))
    ys = [as_number(t) for t in texts["y"]]
    assert round_spacing(ys) and all(len(t.split(".")[-1]) <= 2 for t in texts["y"])


def test_a_chart_labels_its_axes_and_names_its_series():
    panel = Panel(
        "Loss",
        {"loss": [(1, 0.3), (2, 0.2), (3, 0.25)], "policy_loss": [(1, 0.1), (2, 0.15), (3, 0.12)]},
        "loss (mean per sample)",
    )
    other = svg_texts(line_chart(panel))["other"]
    for text in ("Loss", "training step", "loss (mean per sample)", "loss", "policy_loss"):
        assert text in other, (text, other)


def test_empty_panel_says_no_data_and_missing_points_are_dropped():
    assert "no data" in svg_texts(line_chart(Panel("KL", {"kl": []}, "KL")))["other"]
    panel = Panel("KL", {"kl": [(1, float("nan")), (2, None), (3, 0.5)], "empty": [(1, None)]}, "KL")
    assert panel.finite_series() == {"kl": [(3.0, 0.5)]}


def test_bar_chart_labels_axes_and_leaves_missing_values_out():
    svg = bar_chart(
        {"plain": {"accuracy": 0.52, "flip rate": None}, "rubric": {"accuracy": 1.0, "flip rate": 0.125}},
        "Accuracy",
        "fraction of pairs",
        xlabel="judge configuration",
    )
    texts = svg_texts(svg)
    # One value label per bar that exists: the missing flip rate of "plain" is a gap, not a bar at 0.
    values = [t for t in texts["other"] if t.replace(".", "").isdigit()]
    assert sorted(values) == ["0.12", "0.52", "1.00"]
    assert {"Accuracy", "fraction of pairs", "judge configuration", "accuracy", "flip rate"} <= set(
        texts["other"]
    )
    assert texts["x"] == ["plain", "rubric"]
    ys = [as_number(t) for t in texts["y"]]
    assert ys[0] == 0 and ys[-1] >= 1.0 and round_spacing(ys)


def test_panels_of_one_figure_share_the_step_range():
    fig = panel_figure(
        [
            Panel("eval", {"eval_score": [(0, 0.4), (100, 0.5), (200, 0.6)]}, "eval_score"),
            Panel("loss", {"loss": [(s, 1.0 / s) for s in range(1, 201)]}, "loss"),
            None,  # an empty slot
        ],
        cols=3,
    )
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[0].get_xlim() == axes[1].get_xlim()
    assert "training step" in svg_texts(to_svg(fig))["other"]
