"""Axis ticks of the report's plots land on round numbers inside the data range."""

from __future__ import annotations

import re

import pytest

from arr.report import nice_ticks, svg_line_plot


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (1, 200, [50, 100, 150, 200]),  # training steps: never 50.75 or 100.5
        (0.226, 0.722, [0.3, 0.4, 0.5, 0.6, 0.7]),
        (0.361, 0.48, [0.375, 0.4, 0.425, 0.45, 0.475]),
        (-3, 7, [-2, 0, 2, 4, 6]),
    ],
)
def test_nice_ticks_are_round_and_inside_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_plot_labels_its_axes_with_the_round_ticks():
    svg = svg_line_plot({"eval": [(0, 0.38), (100, 0.43), (200, 0.47)]}, "Held-out eval score")
    labels = re.findall(r'font-size="10">([^<]*)<', svg)  # y ticks (the range padded by 8%), then x ticks
    assert labels == ["0.375", "0.4", "0.425", "0.45", "0.475", "0", "50", "100", "150", "200"]
