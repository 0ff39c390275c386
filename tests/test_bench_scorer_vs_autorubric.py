"""bench/scorer_vs_autorubric.py: arr and AutoRubric agree on every comparison it makes, and the designed
differences show the values the docs describe. Runs only where AutoRubric is installed (the `autorubric` extra)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SUBPROCESS_ENV

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("autorubric") is None, reason="AutoRubric is not installed"),
]


def test_both_scorers_agree_on_the_same_verdicts(tmp_path):
    out = tmp_path / "cmp.json"
    args = ["bench/scorer_vs_autorubric.py", "--pairs", "8", "--synthetic", "80", "--out", str(out)]
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["pixel_images"] == 16 and result["synthetic_rubrics"] == 80
    assert result["all_agree"], [c for c in result["comparisons"] if c["agree"] != c["n"]]
    assert len(result["comparisons"]) == 2 * 4 + 6 * 4  # one judge on both sets, six ensembles, four policies
    # The designed differences (docs/api.md): sceptical penalties, zero weights, failed questions.
    assert [(c["arr"], c["autorubric"]) for c in result["on_purpose"]] == [
        (0.0, 1.0),
        (0.0, 0.75),
        (None, 0.0),
        (None, 0.5),
    ]
    assert "agree on every comparison" in r.stdout
