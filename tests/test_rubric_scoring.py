"""The rubric score formula: penalties, penalty-only rubrics, "no score", the raw score, cannot-assess policies and
snapping to a judge's answers. Every expected value is computed by hand from the formula in the test."""

from __future__ import annotations

import math

import pytest

from arr import Criterion, Rubric
from arr.rubrics import NA_POLICIES
from arr.rubrics.scoring import cannot_assess_value, weighted_score

MIXED = Rubric(
    "a red circle, no watermark",
    [
        Criterion("c1", "There is a red circle.", weight=2.0),
        Criterion("c2", "The circle is centred.", weight=1.0),
        Criterion("p1", "There is a watermark.", weight=-1.0),
        Criterion("p2", "The image is blurry.", weight=-0.5),
    ],
)
PENALTIES = Rubric(
    "anything, cleanly",
    [
        Criterion("p1", "There is a watermark.", weight=-1.0),
        Criterion("p2", "There are artefacts.", weight=-3.0),
    ],
)


def test_positive_weights_earn_and_penalties_subtract():
    # sum(w * v) = 2*1 + 1*0.5 - 1*1 - 0.5*0 = 1.5 over the positive weight 2 + 1 = 3.
    probs = {"c1": 1.0, "c2": 0.5, "p1": 1.0, "p2": 0.0}
    assert MIXED.score(probs) == pytest.approx(1.5 / 3)
    assert MIXED.score(probs, normalize=False) == pytest.approx(1.5)
    # Clamped to [0, 1]: every penalty and nothing earned is -1.5 / 3, shown as 0.
    assert MIXED.score({"c1": 0.0, "c2": 0.0, "p1": 1.0, "p2": 1.0}) == 0.0
    assert MIXED.score({"c1": 0.0, "c2": 0.0, "p1": 1.0, "p2": 1.0}, normalize=False) == pytest.approx(-1.5)


def test_penalty_only_rubrics_rank_images():
    # 1 + sum(w * v) / |sum of penalties| with |(-1) + (-3)| = 4.
    assert PENALTIES.score({"p1": 0.0, "p2": 0.0}) == 1.0  # no penalty applies
    assert PENALTIES.score({"p1": 1.0, "p2": 0.0}) == pytest.approx(1 - 1 / 4)
    assert PENALTIES.score({"p1": 0.0, "p2": 0.5}) == pytest.approx(1 - 1.5 / 4)
    assert PENALTIES.score({"p1": 1.0, "p2": 1.0}) == 0.0  # every penalty applies
    assert PENALTIES.score({"p1": 1.0, "p2": 1.0}, normalize=False) == pytest.approx(-4.0)


def test_nothing_scored_is_no_score():
    assert MIXED.score({}) is None
    assert MIXED.score({}, normalize=False) is None
    assert Rubric("p", []).score({}) is None
    assert MIXED.score({"unrelated": 1.0}) is None  # ids the rubric does not have are not criteria
    # Only zero weights ("logged, not scored"): no score, though the raw sum is defined.
    logged = Rubric("p", [Criterion("z", "t", weight=0.0)])
    assert logged.score({"z": 1.0}) is None and logged.score({"z": 1.0}, normalize=False) == 0.0
    assert weighted_score([]) is None


@pytest.mark.parametrize(
    ("policy", "terms"),
    [
        # c1 = 1 and p2 = 1 judged; c2 (weight 1) and p1 (weight -1) cannot be assessed.
        ("skip", [(2.0, 1.0), (-0.5, 1.0)]),  # left out
        ("zero", [(2.0, 1.0), (1.0, 0.0), (-1.0, 0.0), (-0.5, 1.0)]),  # value 0, weights kept
        (
            "partial",
            [(2.0, 1.0), (1.0, 0.5), (-1.0, 0.0), (-0.5, 1.0)],
        ),  # 0.5 for a positive weight, 0 for a penalty
        (
            "fail",
            [(2.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (-0.5, 1.0)],
        ),  # worst for the sign: the penalty applies
    ],
)
def test_cannot_assess_policies(policy, terms):
    total = sum(w * v for w, v in terms)
    positive = sum(w for w, _ in terms if w > 0)
    got = MIXED.score({"c1": 1.0, "p2": 1.0}, cannot_assess={"c2", "p1"}, na_policy=policy)
    assert got == pytest.approx(min(1.0, max(0.0, total / positive)))
    raw = MIXED.score({"c1": 1.0, "p2": 1.0}, cannot_assess={"c2", "p1"}, na_policy=policy, normalize=False)
    assert raw == pytest.approx(total)


def test_cannot_assess_numbers_and_partial_credit():
    # Literal values of the four cases above: 1.5/2, 1.5/3, 2/3, 0.5/3.
    expected = {"skip": 0.75, "zero": 0.5, "partial": 2 / 3, "fail": 0.5 / 3}
    for policy in NA_POLICIES:
        got = MIXED.score({"c1": 1.0, "p2": 1.0}, {"c2", "p1"}, policy)
        assert got == pytest.approx(expected[policy]), policy
    # partial_credit 0.2: (2 + 0.2 - 0.5) / 3.
    assert MIXED.score({"c1": 1.0, "p2": 1.0}, {"c2", "p1"}, "partial", 0.2) == pytest.approx(1.7 / 3)
    assert [cannot_assess_value(w, "partial", 0.3) for w in (2.0, -1.0)] == [0.3, 0.0]
    assert [cannot_assess_value(w, "fail") for w in (2.0, -1.0, 0.0)] == [0.0, 1.0, 0.0]
    assert cannot_assess_value(2.0, "skip") is None
    # Nothing judged and everything skipped: no score; other policies still score.
    assert MIXED.score({}, set(c.id for c in MIXED.criteria)) is None
    assert MIXED.score({}, {c.id for c in MIXED.criteria}, "zero") == 0.0
    with pytest.raises(ValueError, match="unknown cannot-assess policy 'ignore'"):
        MIXED.score({}, (), "ignore")
    with pytest.raises(ValueError, match="partial_credit must be a number in"):
        MIXED.score({}, (), "partial", 1.5)


def test_cannot_assess_on_penalty_only_rubrics():
    # p2 (weight -3) cannot be assessed, p1 does not apply: skip leaves 1 + 0/1; fail applies p2: 1 - 3/4.
    assert PENALTIES.score({"p1": 0.0}, {"p2"}, "skip") == 1.0
    assert PENALTIES.score({"p1": 0.0}, {"p2"}, "zero") == 1.0
    assert PENALTIES.score({"p1": 0.0}, {"p2"}, "partial") == 1.0
    assert PENALTIES.score({"p1": 0.0}, {"p2"}, "fail") == pytest.approx(1 - 3 / 4)
    # p1 applies: skip scores 1 - 1/1, zero keeps p2's weight in the denominator: 1 - 1/4.
    assert PENALTIES.score({"p1": 1.0}, {"p2"}, "skip") == 0.0
    assert PENALTIES.score({"p1": 1.0}, {"p2"}, "zero") == pytest.approx(0.75)


def test_editing_rubrics_combine_parts_with_cannot_assess():
    edit = Rubric(
        "make the circle blue",
        [
            Criterion("i1", "The circle is blue.", category="instruction"),
            Criterion("i2", "Only the circle changed colour.", category="instruction"),
            Criterion("k1", "The square is unchanged.", category="preservation"),
        ],
        task="edit",
    )
    # skip: instruction = 1/1, preservation 0.25 -> sqrt(1 * 0.25); zero: instruction (1 + 0) / 2.
    assert edit.score({"i1": 1.0, "k1": 0.25}, {"i2"}) == pytest.approx(math.sqrt(0.25))
    assert edit.score({"i1": 1.0, "k1": 0.25}, {"i2"}, "zero") == pytest.approx(math.sqrt(0.5 * 0.25))
    # The raw score is the plain weighted sum over both parts.
    assert edit.score({"i1": 1.0, "k1": 0.25}, {"i2"}, normalize=False) == pytest.approx(1.25)
    # Preservation alone is no edit: no instruction item scored earns 0, not a preservation-only score.
    assert edit.score({"k1": 1.0}, {"i1", "i2"}) == 0.0
    assert edit.score({"i1": 0.5}) == pytest.approx(0.5)  # no preservation scored: instruction alone
    assert edit.score({}, {"i1", "i2", "k1"}) is None


def test_snap_and_worst_follow_the_sign():
    rating, penalty = Criterion("q", "t", levels=5), Criterion("q", "t", weight=-1.0, levels=5)
    assert rating.snap(0.6) == 0.5 and rating.snap(0.7) == 0.75  # 2.4 and 2.8 steps of 0.25
    assert rating.snap(0.625) == 0.5 and penalty.snap(0.625) == 0.75  # halfway: the worse level for the sign
    yes_no, flaw = Criterion("c", "t"), Criterion("f", "t", weight=-2.0)
    assert yes_no.snap(0.5) == 0.0 and flaw.snap(0.5) == 1.0
    assert yes_no.snap(0.51) == 1.0 and flaw.snap(0.49) == 0.0
    assert yes_no.worst([0.2, 0.9]) == 0.2 and flaw.worst([0.2, 0.9]) == 0.9
    assert Criterion("t", "t", levels=4).snap(1 / 3) == pytest.approx(1 / 3)  # exactly level 2 stays
