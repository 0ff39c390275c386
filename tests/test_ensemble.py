"""Judge ensembles: aggregation by criterion kind, member weights, ties and the sceptical mode toward the worse
outcome for the criterion's sign, "unknown" answers, per-judge scores and agreement. Expected values are computed by
hand in each test."""

from __future__ import annotations

import pytest
from PIL import Image

from arr import Criterion, Rubric, RubricJudge
from arr.backends.base import CriterionQuery, CriterionVerdict
from arr.ensemble import EnsembleBackend, aggregate_criterion, aggregate_pair
from arr.judge import ensemble_agreement
from tests.fakes import ScriptedCriteria

IMAGE = Image.new("RGB", (8, 8), (200, 30, 30))
THREE = Criterion("q", "How centred is the circle?", levels=3)  # credits 0, 0.5, 1 for levels 1, 2, 3
FIVE = Criterion("q5", "Rate the layout.", levels=5)
PENALTY = Criterion("p", "There is a watermark.", weight=-1.0)
PENALTY5 = Criterion("p5", "How strong are the artefacts?", weight=-1.0, levels=5)


def credit(level: int, levels: int = 3) -> float:
    return (level - 1) / (levels - 1)


def test_ordinal_majority_is_the_middle_level_not_a_yes_no_vote():
    # Three judges at levels [2, 2, 3] and [1, 2, 2] of 3: level 2 (credit 0.5) both times.
    for levels in ([2, 2, 3], [1, 2, 2]):
        values = [credit(lv) for lv in levels]
        assert aggregate_criterion(values, "majority", criterion=THREE) == 0.5
        assert aggregate_criterion(values, "majority", criterion=THREE, ordinal="mode") == 0.5


def test_sceptical_min_applies_a_penalty_that_most_judges_see():
    rubric = Rubric("a red circle", [Criterion("c", "There is a red circle."), PENALTY])
    members = [
        ScriptedCriteria({"c": 1.0, "p": 1.0}, "a"),
        ScriptedCriteria({"c": 1.0, "p": 1.0}, "b"),
        ScriptedCriteria({"c": 1.0, "p": 0.0}, "c"),
    ]
    judgment = RubricJudge(EnsembleBackend(members, "min")).score(rubric.prompt, IMAGE, rubric)
    # The penalty holds as strongly as any judge sees it (1.0): (1 * 1 - 1 * 1) / 1 = 0, not 1.0.
    assert judgment.criteria == {"c": 1.0, "p": 1.0} and judgment.score == 0.0
    assert aggregate_criterion([1.0, 1.0, 0.0], "min", criterion=PENALTY) == 1.0
    assert aggregate_criterion([0.9, 0.6, 0.2], "min") == 0.2  # a positive criterion: the lowest
    assert aggregate_criterion([credit(2, 5), credit(4, 5)], "min", criterion=PENALTY5) == credit(4, 5)
    assert aggregate_criterion([credit(2, 5), credit(4, 5)], "min", criterion=FIVE) == credit(2, 5)


def test_vote_ties_go_to_the_worse_outcome_for_the_sign():
    assert aggregate_criterion([1.0, 0.0], "majority") == 0.0  # a positive criterion does not hold
    assert aggregate_criterion([1.0, 0.0], "majority", criterion=PENALTY) == 1.0  # the penalty applies
    assert aggregate_criterion([1.0, 0.0, 0.5], "weighted", criterion=PENALTY) == 1.0  # 0.5 abstains
    assert aggregate_criterion([0.5, 0.5], "majority") == 0.0  # nobody votes: a tie
    # Mode ties (one judge per level) and halfway snaps go the same way.
    assert aggregate_criterion([0.0, 1.0], "majority", criterion=THREE, ordinal="mode") == 0.0
    assert (
        aggregate_criterion(
            [0.0, 1.0], "majority", criterion=Criterion("x", "t", -1.0, levels=3), ordinal="mode"
        )
        == 1.0
    )
    # A pair has no sign: a tied vote is a tie.
    assert aggregate_pair([0.9, 0.1], "majority") == 0.5


def test_member_weights():
    # mean: (3 * 1 + 1 * 0) / 4; weighted vote: no (3) beats yes (1 + 1); majority counts heads: yes 2, no 1.
    assert aggregate_criterion([1.0, 0.0], "mean", weights=[3.0, 1.0]) == 0.75
    assert aggregate_criterion([0.0, 1.0, 1.0], "weighted", weights=[3.0, 1.0, 1.0]) == 0.0
    assert aggregate_criterion([0.0, 1.0, 1.0], "majority", weights=[3.0, 1.0, 1.0]) == 1.0
    # Ordinal mean on 5 levels, weights 1, 1, 2: (0 + 0.25 + 2 * 1) / 4 = 0.5625; snapped: 2.25 steps -> 0.5.
    values, w = [0.0, 0.25, 1.0], [1.0, 1.0, 2.0]
    assert aggregate_criterion(values, "mean", criterion=FIVE, weights=w) == pytest.approx(0.5625)
    assert aggregate_criterion(values, "mean", criterion=FIVE, weights=w, snap=True) == 0.5
    # Weighted median: cumulative weights 1, 2, 4 reach half (2) exactly after 0.25, so (0.25 + 1) / 2 = 0.625;
    # snapped it is halfway between levels 3 and 4: level 3 (0.5), or level 4 (0.75) for a penalty.
    assert aggregate_criterion(values, "weighted", criterion=FIVE, weights=w) == pytest.approx(0.625)
    assert aggregate_criterion(values, "weighted", criterion=FIVE, weights=w, snap=True) == 0.5
    assert aggregate_criterion(values, "weighted", criterion=PENALTY5, weights=w, snap=True) == 0.75
    # Majority's median counts heads: the middle of 0, 0.25, 1 is 0.25.
    assert aggregate_criterion(values, "majority", criterion=FIVE, weights=w) == 0.25
    # Weighted mode: levels 1 (weight 1) and 3 (weight 2) -> level 3.
    assert aggregate_criterion([0.0, 1.0], "mean", criterion=THREE, weights=[1.0, 2.0], ordinal="mode") == 1.0
    # Mode snaps soft credits first: 0.6 and 0.4 both round to level 2 of 3, beating one judge at level 3.
    assert aggregate_criterion([0.6, 0.4, 1.0], "mean", criterion=THREE, ordinal="mode") == 0.5
    # Pairs: weighted mean of P(Image 1) 0.9 (weight 1) and 0.3 (weight 2) = 1.5 / 3.
    assert aggregate_pair([0.9, 0.3], "mean", [1.0, 2.0]) == pytest.approx(0.5)
    assert aggregate_pair([0.9, 0.3], "weighted", [1.0, 2.0]) == 0.0


def test_unanimous_and_any():
    assert aggregate_criterion([1.0, 0.8, 0.5], "unanimous") == 1.0  # 0.5 abstains
    assert aggregate_criterion([1.0, 0.4], "unanimous") == 0.0
    assert aggregate_criterion([0.0, 0.2, 0.7], "any") == 1.0
    assert aggregate_criterion([0.0, 0.2], "any") == 0.0
    assert aggregate_pair([0.8, 0.6], "unanimous") == 1.0 and aggregate_pair([0.8, 0.4], "any") == 0.5


def test_unknown_answers_are_left_out_and_all_unknown_is_unknown():
    rubric = Rubric("p", [Criterion("c", "t")])
    query = [CriterionQuery("p", IMAGE, rubric, rubric.criteria[0])]
    mixed = [
        ScriptedCriteria({"c": "unknown"}, "a"),
        ScriptedCriteria({"c": 1.0}, "b"),
        ScriptedCriteria({"c": 0.0}, "c"),
    ]
    (v,) = EnsembleBackend(mixed, "majority").judge_criteria(query)
    assert v.prob_yes == 0.0 and not v.cannot_assess  # one yes, one no: a tie, the worse outcome
    assert v.members["a"].cannot_assess and v.members["b"].prob_yes == 1.0
    assert "a=unknown" in v.raw
    (v,) = EnsembleBackend(mixed, "mean").judge_criteria(query)
    assert v.prob_yes == 0.5  # the mean of 1 and 0; the unknown answer is not a 0
    unsure = [ScriptedCriteria({"c": "unknown"}, "a"), ScriptedCriteria({"c": None}, "b")]
    (v,) = EnsembleBackend(unsure).judge_criteria(query)
    assert v.cannot_assess and v.prob_yes is None and not v.failed
    # "unknown" is an answer for min_answers; a failure is not.
    (v,) = EnsembleBackend(unsure, min_answers=2).judge_criteria(query)
    assert v.failed and "1 of 2 members answered: HTTP 503" in v.error


RUBRIC = Rubric(
    "a red circle in the centre, no watermark",
    [Criterion("c1", "There is a red circle."), Criterion("c2", "The circle is centred."), PENALTY],
)
PANEL = {
    "a": {"c1": 1.0, "c2": 1.0, "p": 0.0},
    "b": {"c1": 1.0, "c2": 0.0, "p": 1.0},
    "c": {"c1": 1.0, "c2": "unknown", "p": 0.0},
}


def panel(**kwargs) -> EnsembleBackend:
    return EnsembleBackend([ScriptedCriteria(a, name) for name, a in PANEL.items()], "majority", **kwargs)


def test_per_judge_scores_and_agreement_by_hand(tmp_path):
    judgment = RubricJudge(panel()).score(RUBRIC.prompt, IMAGE, RUBRIC)
    # Each judge alone (skip policy): a (1 + 1 - 0) / 2, b (1 + 0 - 1) / 2, c (1 - 0) / 1 with c2 left out.
    assert judgment.judge_scores == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert judgment.judges["c"].cannot_assess == ["c2"] and judgment.judges["b"].criteria["p"] == 1.0
    # The ensemble: c1 yes (3 votes); c2 one yes, one no (c cannot assess): a tie, no; p no (2 of 3): (1 + 0 - 0) / 2.
    assert judgment.criteria == {"c1": 1.0, "c2": 0.0, "p": 0.0} and judgment.score == 0.5
    # Answers per criterion: c1 (yes, yes, yes), c2 (yes, no, unknown), p (no, yes, no).
    # Pairwise agreement: c1 3/3 pairs, c2 0/3, p 1/3 -> mean 4/9.
    # Fleiss: P-bar 4/9; answer shares yes 5/9, no 3/9, unknown 1/9 -> P_e = 35/81; (4/9 - 35/81) / (1 - 35/81).
    assert judgment.agreement["pairwise"] == pytest.approx(4 / 9)
    assert judgment.agreement["fleiss_kappa"] == pytest.approx(1 / 46)
    # Krippendorff's nominal alpha over the same answers: n = 9, D_o pairs 5, sum_c!=k n_c n_k = 81 - 35 = 46.
    pooled = ensemble_agreement([RUBRIC], [judgment])
    assert pooled["items"] == 3 and pooled["judges"] == ["a", "b", "c"]
    assert pooled["krippendorff_alpha"] == pytest.approx(1 - 8 * 5 / 46)
    assert pooled["fleiss_kappa"] == pytest.approx(1 / 46)
    # The same sample twice pools 6 items: alpha = 1 - 17 * 10 / (18^2 - 140).
    twice = ensemble_agreement([RUBRIC, RUBRIC], [judgment, judgment])
    assert twice["krippendorff_alpha"] == pytest.approx(1 - 17 * 10 / 184)
    # A single judge has no members and no agreement.
    alone = RubricJudge(ScriptedCriteria(PANEL["a"], "a")).score(RUBRIC.prompt, IMAGE, RUBRIC)
    assert alone.judges == {} and alone.agreement == {} and alone.score == 1.0


def test_member_answers_survive_the_cache(tmp_path):
    backend = panel()
    first = RubricJudge(backend, cache=tmp_path / "c.sqlite").score(RUBRIC.prompt, IMAGE, RUBRIC)
    again_judge = RubricJudge(panel(), cache=tmp_path / "c.sqlite")
    again = again_judge.score(RUBRIC.prompt, IMAGE, RUBRIC)
    assert again_judge.stats.cached == 3 and again_judge.stats.calls == 0
    assert again.to_dict() | {"reasons": {}} == first.to_dict() | {"reasons": {}}
    assert again.judge_scores == {"a": 1.0, "b": 0.0, "c": 1.0}


def test_an_unknown_sample_for_every_judge_has_no_score():
    members = [ScriptedCriteria({"c1": "unknown", "c2": "unknown", "p": "unknown"}, n) for n in ("a", "b")]
    judge = RubricJudge(EnsembleBackend(members))
    judgment = judge.score(RUBRIC.prompt, IMAGE, RUBRIC)
    assert judgment.score is None and judgment.errors == {} and judgment.cannot_assess == ["c1", "c2", "p"]
    assert judgment.judge_scores == {"a": None, "b": None}
    assert judge.stats.cannot_assess == 3 and judge.stats.failures == 0
    # Under "zero" the same answers score (0 + 0 + 0) / 2 = 0.
    assert (
        RubricJudge(EnsembleBackend(members), na_policy="zero").score(RUBRIC.prompt, IMAGE, RUBRIC).score
        == 0.0
    )


def test_configuration_errors_and_fingerprints():
    members = [ScriptedCriteria({}, "x"), ScriptedCriteria({}, "x")]
    assert EnsembleBackend(members).names == ["x", "x#2"]
    base = EnsembleBackend(members, "majority").fingerprint()
    assert base != EnsembleBackend(members, "majority", weights=[2, 1]).fingerprint()
    assert base != EnsembleBackend(members, "majority", ordinal="mode").fingerprint()
    assert base != EnsembleBackend(members, "majority", snap=True).fingerprint()
    assert base != EnsembleBackend(members, "majority", names=["p", "q"]).fingerprint()
    with pytest.raises(ValueError, match="weights must be 2 finite positive numbers"):
        EnsembleBackend(members, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weights must be 2"):
        EnsembleBackend(members, weights=[1.0])
    with pytest.raises(ValueError, match="unknown ordinal aggregation 'average'"):
        EnsembleBackend(members, ordinal="average")
    with pytest.raises(ValueError, match="names must be 2 distinct strings"):
        EnsembleBackend(members, names=["a", "a"])
    with pytest.raises(ValueError, match="unknown ensemble aggregation 'median'"):
        aggregate_criterion([1.0], "median")
    assert CriterionVerdict(None, cannot_assess=True).failed is False
