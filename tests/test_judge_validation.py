"""Validating a judge against labels (accuracy, Cohen's kappa, Krippendorff's alpha with bootstrap intervals, per
criterion), balanced few-shot selection from a labelled set, and per-criterion labels of preference pairs."""

from __future__ import annotations

import json

import pytest

from arr import Criterion, RubricJudge, load_backend
from arr.backends.fewshot import CriterionExample, LabelledCriterion, RatingExample, select_examples
from arr.evaluation.preference import _agreement_with_labels, evaluate_preference, labelled_criteria
from arr.evaluation.preference_benchmarks import load_hpdv3
from arr.evaluation.validation import validate_judge
from arr.shapes.benchmarks import write_preference_pairs
from arr.shapes.pairs import make_pairs, pair_labels
from tests.fakes import BrightnessBackend, ScriptedCriteria, grey

C = Criterion("c", "The square is red.")
D = Criterion("d", "How centred is it?", levels=3)


def test_validation_by_hand():
    # BrightnessBackend answers P(holds) = brightness / 255: 255 -> yes, 0 -> no, 200 -> yes; for the 3-level
    # criterion 255 -> level 3, 0 -> level 1, 128 -> level 2.
    labelled = [
        LabelledCriterion(grey(255), C, True),
        LabelledCriterion(grey(255), C, True),
        LabelledCriterion(grey(0), C, False),
        LabelledCriterion(grey(200), C, False),  # judged yes: wrong
        LabelledCriterion(grey(0), C, True),  # judged no: wrong
        LabelledCriterion(grey(0), C, False),
        LabelledCriterion(grey(255), D, 3),
        LabelledCriterion(grey(0), D, 1),
        LabelledCriterion(grey(128), D, 2),
        LabelledCriterion(grey(255), D, 2),  # judged 3: wrong
    ]
    report = validate_judge(BrightnessBackend(), labelled, resamples=300)
    c, d = report["criteria"]["c"], report["criteria"]["d"]
    assert c["accuracy"]["value"] == pytest.approx(4 / 6)
    # labels y y n n y n, answers y y n y n n: p_o 4/6, both marginals 3/3 -> p_e 1/2 -> (2/3 - 1/2) / (1/2).
    assert c["cohen_kappa"]["value"] == pytest.approx(1 / 3)
    # Coincidences o_yy = o_nn = 4, o_yn = o_ny = 2; n_y = n_n = 6: 1 - 11 * 4 / (2 * 6 * 6) = 7/18.
    assert c["krippendorff_alpha"]["value"] == pytest.approx(7 / 18) and c["alpha_level"] == "nominal"
    assert c["confusion"] == {"no -> no": 2, "no -> yes": 1, "yes -> no": 1, "yes -> yes": 2}
    assert d["accuracy"]["value"] == pytest.approx(3 / 4) and d["alpha_level"] == "ordinal"
    # Ordinal alpha of (3,3) (1,1) (2,2) (2,3): n_1 = 2, n_2 = n_3 = 3; delta^2(2,3) = (6 - 3)^2 = 9,
    # delta^2(1,2) = (5 - 2.5)^2, delta^2(1,3) = (8 - 2.5)^2; D_o sum 2 * 9 = 18, chance sum 600 -> 1 - 7 * 18 / 600.
    assert d["krippendorff_alpha"]["value"] == pytest.approx(1 - 7 * 18 / 600)
    assert report["accuracy"]["value"] == pytest.approx(7 / 10) and report["alpha_level"] == "nominal"
    for figure in (c["accuracy"], c["cohen_kappa"], report["krippendorff_alpha"]):
        assert figure["low"] <= figure["value"] <= figure["high"]
    assert report["items"][3] == {"criterion": "c", "prompt": "", "label": "no", "answer": "yes"}
    again = validate_judge(BrightnessBackend(), labelled, resamples=300)
    assert {**again, "cost": None} == {**report, "cost": None}  # seeded: the same intervals
    json.dumps(report)  # serialisable as it is


def test_validation_counts_failures_and_unknown_answers():
    x, u = Criterion("x", "t"), Criterion("u", "t")
    judge = RubricJudge(ScriptedCriteria({"c": 1.0, "x": None, "u": "unknown"}))
    labelled = [
        LabelledCriterion(grey(1), C, True),
        LabelledCriterion(grey(2), C, False),  # wrong
        LabelledCriterion(grey(3), x, True),  # the question fails: wrong, and out of the agreement
        LabelledCriterion(grey(4), u, None),  # "unknown" labelled and answered: right
    ]
    report = validate_judge(judge, labelled, resamples=200)
    assert (report["n"], report["answered"], report["failures"], report["judge_unknown"]) == (4, 3, 1, 1)
    assert report["accuracy"]["value"] == pytest.approx(2 / 4)
    # Answered: (yes, yes), (no, yes), (unknown, unknown): p_o 2/3, p_e (1 * 2 + 1 * 1) / 9 -> (2/3 - 1/3) / (2/3).
    assert report["cohen_kappa"]["value"] == pytest.approx(0.5)
    assert report["criteria"]["u"]["cohen_kappa"] is None  # one category: undefined, not a number
    assert report["cost"]["failures"] == 1 and report["cost"]["cannot_assess"] == 1
    with pytest.raises(ValueError, match="group_by must be one of"):
        validate_judge(judge, labelled, group_by="weight")
    with pytest.raises(ValueError, match="label of yes/no criterion 'c' must be True, False or None"):
        LabelledCriterion(grey(1), C, 2)
    with pytest.raises(ValueError, match=r"must be a level in 1\.\.3 or None"):
        LabelledCriterion(grey(1), D, True)


def test_balanced_few_shot_selection():
    skewed = [LabelledCriterion(grey(i), C, True, reason=f"y{i}") for i in range(9)]
    skewed += [LabelledCriterion(grey(100), C, False, reason="n"), LabelledCriterion(grey(101), C, None)]
    skewed += [LabelledCriterion(grey(102), C, None)]
    ratings = [LabelledCriterion(grey(200 + i), D, level) for i, level in enumerate([1, 1, 1, 1, 2, 3])]
    picked = select_examples(skewed + ratings, k=4, seed=0)
    yes_no = [e for e in picked if isinstance(e, CriterionExample)]
    rated = [e for e in picked if isinstance(e, RatingExample)]
    # Three label classes for 4 slots: one each, the spare slot to one of them; the lone "no" is always shown.
    assert len(yes_no) == 4 and {e.holds for e in yes_no} == {True, False, None}
    assert sum(e.holds is False for e in yes_no) == 1
    assert len(rated) == 4 and {e.level for e in rated} == {1, 2, 3} and all(e.levels == 3 for e in rated)
    assert select_examples(skewed + ratings, k=4, seed=0) == picked  # seeded
    # Drawn at the base rate, 4 of these 12 items would be mostly "yes"; asking for more than there is takes all.
    assert len(select_examples(skewed, k=50)) == len(skewed)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        select_examples(skewed, k=0)
    with pytest.raises(TypeError, match="takes LabelledCriterion items"):
        select_examples([CriterionExample(grey(0), "t", True)])


def test_pair_agreement_with_labels_by_hand():
    rows = [
        {"winner": "A", "picks": [0, 0]},
        {"winner": "B", "picks": [1, 1]},
        {"winner": "A", "picks": [0, 1]},  # a flip: a tie
        {"winner": "B", "picks": [1, 1]},
        {"winner": "A", "error": "HTTP 503"},
    ]
    out = _agreement_with_labels(rows, resamples=300)
    # labels A B A B, verdicts A B tie B: p_o 3/4, p_e (2 * 1 + 2 * 2) / 16 -> (12/16 - 6/16) / (10/16).
    assert out["cohen_kappa"]["value"] == pytest.approx(0.6)
    lo, hi = out["accuracy_ci"]
    assert 0.0 <= lo <= 3 / 5 <= hi <= 1.0


def test_shapes_pairs_carry_criterion_labels_and_validate(tmp_path):
    pairs = make_pairs(6, seed=1, task="both", perturb=True)
    assert all(p.labels and set(p.labels) == {"chosen", "rejected"} for p in pairs)
    for p in pairs:
        # The winner meets every positive criterion, the loser fails at least one.
        assert all(p.labels["chosen"].values()) and not all(p.labels["rejected"].values())
    labelled = labelled_criteria(pairs)
    assert len(labelled) == sum(len(p.labels["chosen"]) + len(p.labels["rejected"]) for p in pairs)
    result = evaluate_preference(pairs, load_backend("pixel", strict=True), ["rubric"])
    assert result["criteria_validation"]["accuracy"]["value"] == 1.0  # the exact judge recovers every label
    assert result["configs"]["rubric"]["cohen_kappa"]["value"] == 1.0
    # Labels survive the HPDv3-style file.
    path = write_preference_pairs(tmp_path / "pairs.json", n=4, seed=2, task="both")
    again = load_hpdv3(path)
    assert [p.labels for p in again] == [p.labels for p in make_pairs(4, seed=2, task="both", perturb=True)]
    with pytest.raises(ValueError, match="label 3 for criterion 'count_0'"):
        pair_labels({"chosen": {"count_0": 3}}, pairs[0].rubric, "pair 0")
    with pytest.raises(ValueError, match="label True for criterion 'nope'"):
        pair_labels({"rejected": {"nope": True}}, pairs[0].rubric, "pair 0")
