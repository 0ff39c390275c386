"""One recipe key swaps RPO's reward for a baseline: the plain judge or a trained reward model."""

from __future__ import annotations

import pytest

from arr.reward_models import (
    PairwiseRewardModel,
    PairwiseRewardModelConfig,
    PlainJudgeReward,
    RewardModelReward,
)
from arr.rewards import RubricPairwiseReward, RubricPointwiseReward
from arr.rpo import ConfigError
from arr.rpo.build import build_judge, build_reward
from arr.rpo.recipe import parse_recipe


def _reward(tmp_path, *overrides: str):
    recipe = parse_recipe(["--output_dir", str(tmp_path / "run"), *overrides])
    return build_reward(build_judge(recipe.judge, recipe.rpo.output_dir), recipe)


def test_reward_key_selects_rubric_plain_or_reward_model(tmp_path):
    assert isinstance(_reward(tmp_path), RubricPairwiseReward)
    assert isinstance(_reward(tmp_path, "--reward_mode", "pointwise"), RubricPointwiseReward)
    assert isinstance(_reward(tmp_path, "--reward", "plain"), PlainJudgeReward)
    small = PairwiseRewardModelConfig(
        channels=(8,), hidden_size=16, fusion_layers=1, fusion_heads=2, text_hidden_size=16, text_layers=1,
        text_heads=2, text_init=None,
    )  # fmt: skip
    PairwiseRewardModel(small).save_pretrained(tmp_path / "rm")
    reward = _reward(
        tmp_path,
        "--reward",
        "reward_model",
        "--reward_model",
        str(tmp_path / "rm"),
        "--reward_mode",
        "pointwise",
    )
    assert isinstance(reward, RewardModelReward)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--reward", "reward_model", "--reward_mode", "pointwise"], "needs reward_model: FOLDER"),
        (["--reward", "reward_model", "--reward_model", "x"], "set reward_mode: pointwise"),
        (["--reward", "plain", "--reward_mode", "pointwise"], "set reward_mode: pairwise"),
        (["--reward", "bradley"], "choose rubric, plain or reward_model"),
    ],
)
def test_bad_reward_settings_are_one_line_config_errors(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _reward(tmp_path, *overrides)


def test_category_multipliers_reach_the_training_prompts(tmp_path):
    from collections import Counter

    from arr.rpo.build import build_data

    def train_mix(*overrides: str) -> Counter:
        recipe = parse_recipe(["--output_dir", str(tmp_path / "run"), "--eval_num_prompts", "4", *overrides])
        train, evals, _ = build_data(recipe.data, recipe)
        assert len(evals) == 4
        return Counter(r.category for r in train)

    base = train_mix()
    more = train_mix("--category_multipliers", "counting=3, two_object=0")
    assert more["counting"] > 2 * base["counting"] and more["two_object"] == 0 < base["two_object"]
    for bad, message in [("counting", "category=number"), ("count=2", "unknown prompt categories")]:
        with pytest.raises(ConfigError, match=message):
            train_mix("--category_multipliers", bad)
    with pytest.raises(ConfigError, match="shapes text-to-image world"):
        train_mix("--dataset", "shapes_edit", "--category_multipliers", "counting=2")
