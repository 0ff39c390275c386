"""RubricJudge: swapping, tie rules, scores from criterion probabilities, caching and cost counters."""

from __future__ import annotations

import pytest

from arr import Criterion, Rubric, RubricJudge
from arr.backends.base import JudgeBackend
from arr.judge import PairItem, ScoreItem, rubric_score
from tests.fakes import BrightnessBackend, FailingBackend, FirstPositionBackend, grey

RUBRIC = Rubric(
    "a bright square",
    [Criterion("c1", "The square is bright.", 2.0), Criterion("c2", "The square is centred.", 1.0)],
)


def test_backends_satisfy_protocol():
    assert isinstance(BrightnessBackend(), JudgeBackend)


def test_compare_asks_both_orders_and_agrees():
    backend = BrightnessBackend()
    judge = RubricJudge(backend, swap=True)
    j = judge.compare("p", grey(200), grey(50), RUBRIC)
    assert backend.pair_calls == [(200, 50), (50, 200)]
    assert j.preferred == 0 and j.consistent and j.prob_a == 1.0
    j = judge.compare("p", grey(10), grey(50), RUBRIC)
    assert j.preferred == 1 and j.prob_a == 0.0
    assert judge.stats.calls == 4


def test_position_biased_backend_gives_ties_with_swap_only():
    judge = RubricJudge(FirstPositionBackend(), swap=True)
    j = judge.compare("p", grey(200), grey(50), RUBRIC)
    assert j.preferred is None and not j.consistent
    assert j.prob_a == pytest.approx(0.5)  # 0.9 in one order, 1 - 0.9 in the other
    unswapped = RubricJudge(FirstPositionBackend(), swap=False).compare("p", grey(50), grey(200), RUBRIC)
    assert unswapped.preferred == 0 and unswapped.prob_a == pytest.approx(0.9)


def test_equal_images_tie():
    j = RubricJudge(BrightnessBackend()).compare("p", grey(9), grey(9), RUBRIC)
    assert j.preferred is None and j.consistent and j.prob_a == 0.5


def test_failures_are_reported_not_guessed():
    judge = RubricJudge(FailingBackend())
    j = judge.compare("p", grey(200), grey(50), RUBRIC)
    assert not j.ok and j.preferred is None and "503" in j.error
    s = judge.score("p", grey(255), RUBRIC)
    assert s.score is None and set(s.errors) == {"c2"} and s.criteria["c1"] == 1.0
    assert judge.stats.failures == 2 + 1


def test_score_is_weighted_mean_of_criterion_probabilities():
    s = RubricJudge(BrightnessBackend()).score("p", grey(51), RUBRIC)
    assert s.criteria == {"c1": pytest.approx(0.2), "c2": pytest.approx(0.2)}
    assert s.score == pytest.approx(0.2)


def test_negative_weights_are_penalties():
    rubric = Rubric("p", [Criterion("good", "x", 1.0), Criterion("bad", "text is misspelled", -0.5)])
    assert rubric_score(rubric, {"good": 1.0, "bad": 1.0}) == pytest.approx(0.5)
    assert rubric_score(rubric, {"good": 1.0, "bad": 0.0}) == pytest.approx(1.0)
    assert rubric_score(rubric, {"good": 0.0, "bad": 1.0}) == 0.0  # clipped at 0


def test_batched_equals_single():
    judge = RubricJudge(BrightnessBackend())
    items = [PairItem("p", grey(a), grey(b), RUBRIC) for a, b in [(1, 2), (3, 3), (9, 4)]]
    batched = judge.compare_many(items)
    single = [judge.compare(it.prompt, it.image_a, it.image_b, it.rubric) for it in items]
    assert [j.preferred for j in batched] == [j.preferred for j in single] == [1, None, 0]
    scores = judge.score_many([ScoreItem("p", grey(v), RUBRIC) for v in (0, 255)])
    assert [s.score for s in scores] == [0.0, 1.0]


def test_rank_is_round_robin_win_rate():
    judge = RubricJudge(BrightnessBackend())
    assert judge.rank("p", [grey(10), grey(200), grey(100)], RUBRIC) == [0.0, 1.0, 0.5]


def test_cache_serves_second_pass_and_skips_failures(tmp_path):
    backend = BrightnessBackend()
    judge = RubricJudge(backend, cache=tmp_path / "judge.sqlite")
    first = judge.compare("p", grey(200), grey(50), RUBRIC)
    first_score = judge.score("p", grey(100), RUBRIC)
    calls = len(backend.pair_calls), backend.criterion_calls
    again = RubricJudge(backend, cache=tmp_path / "judge.sqlite")  # a new judge, same file
    assert again.compare("p", grey(200), grey(50), RUBRIC) == first
    assert again.score("p", grey(100), RUBRIC) == first_score
    assert (len(backend.pair_calls), backend.criterion_calls) == calls
    assert again.stats.cached == 2 + 2 and again.stats.calls == 0
    # A different rubric is a different question.
    other = Rubric("a bright square", [Criterion("c1", "The square is very bright.")])
    again.compare("p", grey(200), grey(50), other)
    assert len(backend.pair_calls) == calls[0] + 2

    failing = RubricJudge(FailingBackend(), cache=tmp_path / "fail.sqlite")
    failing.compare("p", grey(1), grey(2), RUBRIC)
    assert len(failing.cache) == 0


def test_rejects_non_backend():
    with pytest.raises(TypeError, match="JudgeBackend"):
        RubricJudge(object())


def test_edit_rubrics_combine_instruction_and_preservation_geometrically():
    rubric = Rubric(
        "make the circle red",
        [
            Criterion("i1", "the circle is red", 1.0),
            Criterion("p1", "the square is unchanged", 1.0, category="preservation"),
            Criterion("p2", "the background is unchanged", 1.0, category="preservation"),
        ],
        task="edit",
    )
    assert rubric_score(rubric, {"i1": 1.0, "p1": 1.0, "p2": 0.0}) == pytest.approx(0.5**0.5)
    assert rubric_score(rubric, {"i1": 0.0, "p1": 1.0, "p2": 1.0}) == 0.0  # preserving everything is no edit
