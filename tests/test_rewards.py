"""Reward adapters: RPO's pairwise reward from judged pairs, and pointwise rubric scores."""

from __future__ import annotations

import pytest

from arr import Criterion, Rubric, RubricJudge
from arr.rewards import RubricPairwiseReward, RubricPointwiseReward, pairwise_outcome_rewards
from tests.fakes import BrightnessBackend, FailingBackend, FirstPositionBackend, grey

RUBRIC = Rubric("p", [Criterion("c1", "bright")])


def test_group_of_two_is_the_papers_reward():
    assert pairwise_outcome_rewards(2, {(0, 1): 0}) == [1.0, -0.1]
    assert pairwise_outcome_rewards(2, {(0, 1): 1}) == [-0.1, 1.0]
    assert pairwise_outcome_rewards(2, {(0, 1): None}) == [0.0, 0.0]  # ties give zero advantage
    assert pairwise_outcome_rewards(2, {(0, 1): "failed"}) == [None, None]


def test_larger_groups_average_every_pair():
    # 0 beats 1 and 2; 1 ties 2.
    out = pairwise_outcome_rewards(3, {(0, 1): 0, (0, 2): 0, (1, 2): None})
    assert out == pytest.approx([1.0, -0.05, -0.05])
    # A failed pair is left out, not counted as a loss.
    out = pairwise_outcome_rewards(3, {(0, 1): 0, (0, 2): "failed", (1, 2): 1})
    assert out == pytest.approx([1.0, -0.1, 1.0])


def test_pairwise_reward_through_the_judge():
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    out = reward(
        prompts=["p", "q"], images=[[grey(9), grey(200)], [grey(5), grey(5)]], rubrics=[RUBRIC, RUBRIC]
    )
    assert out.rewards == [[-0.1, 1.0], [0.0, 0.0]]
    assert out.info["pairs"] == 2 and out.info["tie_rate"] == 0.5


def test_position_bias_yields_no_signal():
    reward = RubricPairwiseReward(RubricJudge(FirstPositionBackend(), swap=True))
    out = reward(prompts=["p"], images=[[grey(9), grey(200)]], rubrics=[RUBRIC])
    assert out.rewards == [[0.0, 0.0]] and out.info["inconsistent_rate"] == 1.0


def test_failures_mask_samples():
    reward = RubricPairwiseReward(RubricJudge(FailingBackend()))
    out = reward(prompts=["p"], images=[[grey(9), grey(200)]], rubrics=[RUBRIC])
    assert out.rewards == [[None, None]] and out.info["judge_failure_rate"] == 1.0


def test_pointwise_scores():
    reward = RubricPointwiseReward(RubricJudge(BrightnessBackend()))
    out = reward(prompts=["p"], images=[[grey(0), grey(255), grey(51)]], rubrics=[RUBRIC])
    assert out.rewards == [[0.0, 1.0, pytest.approx(0.2)]]
