"""`arr align` (through its registrar, so it is tested before the main CLI table lists it) and the run curves."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from PIL import Image

from arr.cli.align import register
from arr.cli.common import CLIError
from arr.diagnostics import alignment as al
from arr.diagnostics.curves import correlations, plot_alignment


def run_align(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="arr")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub, "align", "representation alignment")
    args = parser.parse_args(["align", *argv])
    return args.run(args)


def test_feature_files_print_the_metrics(tmp_path, capsys):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((40, 4))
    a, b = (
        z @ rng.standard_normal((4, 12)),
        z @ rng.standard_normal((4, 7)) + 0.5 * rng.standard_normal((40, 7)),
    )
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    assert run_align([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--topk", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 40 and out["dims"] == [12, 7] and set(out["metrics"]) == set(al.METRICS)
    assert out["metrics"]["cknna"] == pytest.approx(al.cknna(a, b, topk=5), abs=1e-12)
    run_align(
        [str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--metric", "cka,mutual_knn", "--no-normalize"]
    )
    out = json.loads(capsys.readouterr().out)
    assert list(out["metrics"]) == ["cka", "mutual_knn"]
    assert out["metrics"]["cka"] == pytest.approx(al.cka(a, b, normalize=False), abs=1e-12)


def test_bad_inputs_are_one_line_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3)))
    np.save(tmp_path / "c.npy", np.zeros((4, 3)))
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(CLIError, match="two feature files"):
        run_align([str(tmp_path / "a.npy")])
    with pytest.raises(CLIError, match=r"expected \[N, D\] features, got shape \(5,\)"):
        run_align([str(tmp_path / "a.npy"), str(tmp_path / "v.npy")])
    with pytest.raises(CLIError, match="5 rows in a and 4"):
        run_align([str(tmp_path / "a.npy"), str(tmp_path / "c.npy"), "--topk", "2"])
    with pytest.raises(CLIError, match="no such file"):
        run_align([str(tmp_path / "a.npy"), str(tmp_path / "missing.npy")])
    with pytest.raises(CLIError, match="metrics.jsonl not found"):
        run_align(["--run", str(tmp_path)])


def rows_for_curves() -> list[dict]:
    align = [0.10, 0.20, 0.15, 0.40, 0.35]
    evals = [0.30, 0.40, 0.45, 0.60, 0.50]
    rows = []
    for step, (x, y) in enumerate(zip(align, evals, strict=True)):
        rows.append(
            {"step": step * 10, "eval_score": y, "align/mutual_knn": x, "align/mutual_knn_layer": "b|j"}
        )
        rows.append({"step": step * 10 + 5, "loss": 0.1})
    return rows


def test_correlations_hand_computed():
    corr = correlations(rows_for_curves())
    assert set(corr) == {"align/mutual_knn"}  # the _layer names are not metrics
    c = corr["align/mutual_knn"]
    x, y = [0.10, 0.20, 0.15, 0.40, 0.35], [0.30, 0.40, 0.45, 0.60, 0.50]
    mx, my = sum(x) / 5, sum(y) / 5
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = sxy / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    assert c["n"] == 5 and c["pearson"] == pytest.approx(r, abs=1e-12)
    # ranks: x -> 1,3,2,5,4 ; y -> 1,2,3,5,4 ; d^2 = 0,1,1,0,0 ; rho = 1 - 6*2/(5*24) = 0.9
    assert c["spearman"] == pytest.approx(0.9, abs=1e-12)
    assert math.isnan(correlations(rows_for_curves()[:4])["align/mutual_knn"]["pearson"])  # 2 points


def test_run_plot_png(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows_for_curves()) + '{"step": 9'
    )
    assert run_align(["--run", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["png"] == str(run / "alignment.png")
    assert out["correlation_with_eval_score"]["align/mutual_knn"]["spearman"] == pytest.approx(0.9)
    im = Image.open(run / "alignment.png").convert("RGB")
    colours = {c for _, c in im.getcolors(maxcolors=1 << 16)}
    assert (0x1F, 0x77, 0xB4) in colours  # the alignment curve was drawn
    with pytest.raises(ValueError, match="no align"):
        plot_alignment([{"step": 1, "eval_score": 0.5}], tmp_path / "x.png")
