"""Bradley-Terry reward model: the loss falls and accuracy rises on a small synthetic set; save/load is exact; the
plain judge's reward on hand-made images matches hand-computed values; the reward adapters and the CLI work."""

from __future__ import annotations

import json
import random

import pytest
import torch

from arr.judge import RubricJudge
from arr.reward_models.bradley_terry import (
    BradleyTerryConfig,
    BradleyTerryTrainer,
    PairwiseRewardModel,
    PairwiseRewardModelConfig,
    preference_accuracy,
)
from arr.reward_models.plain_judge import HolisticShapesBackend, PlainJudgeReward, shapes_spec_for_prompt
from arr.reward_models.rewards import RewardModelReward
from arr.shapes.pairs import PreferencePair
from arr.shapes.scene import Obj, Scene, render

TINY = dict(channels=(8, 16), hidden_size=16, fusion_layers=1, fusion_heads=2, text_hidden_size=16, text_layers=1,
            text_heads=2, text_init=None)  # fmt: skip


def _synthetic_pairs(n: int, seed: int) -> list[PreferencePair]:
    """The prompt names a colour; the chosen image shows a square of that colour, the rejected one another colour."""
    from arr.rubrics import Rubric

    rng = random.Random(seed)
    colors = ["red", "blue", "green"]
    pairs = []
    for i in range(n):
        want, other = rng.sample(colors, 2)
        cell = (rng.randrange(4), rng.randrange(4))
        chosen = render(Scene((Obj("square", want, *cell),)))
        rejected = render(Scene((Obj("square", other, *cell),)))
        a, b, winner = (chosen, rejected, "A") if i % 2 else (rejected, chosen, "B")
        prompt = f"a {want} square"
        pairs.append(
            PreferencePair(f"p{i}", "t2i", prompt, "colors", "wrong_color", a, b, winner, Rubric(prompt, []))
        )
    return pairs


@pytest.mark.slow  # ~3 s on idle cores, up to 15 s on a loaded shared machine
def test_bradley_terry_loss_falls_and_accuracy_rises():
    torch.manual_seed(0)
    train, held = _synthetic_pairs(32, 0), _synthetic_pairs(24, 1)
    model = PairwiseRewardModel(PairwiseRewardModelConfig(**TINY))
    before = preference_accuracy(model, held)["accuracy"]
    cfg = BradleyTerryConfig(
        epochs=12, batch_size=16, learning_rate=3e-3, text_learning_rate=3e-3, eval_every=12
    )
    result = BradleyTerryTrainer(model, cfg, train, held).train()
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.train_accuracy >= 0.8
    assert result.eval["accuracy"] >= 0.8 > before + 0.1


def test_save_load_round_trip_gives_identical_scores(tmp_path):
    torch.manual_seed(1)
    model = PairwiseRewardModel(PairwiseRewardModelConfig(**TINY))
    pairs = _synthetic_pairs(4, 2)
    prompts, images = [p.prompt for p in pairs], [p.image_a for p in pairs]
    before = model.score(prompts, images)
    model.save_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").is_file()
    again = PairwiseRewardModel.from_pretrained(tmp_path / "rm").score(prompts, images)
    assert again == before
    with pytest.raises(FileNotFoundError, match="no reward model"):
        PairwiseRewardModel.from_pretrained(tmp_path / "missing")


def test_text_init_copies_the_shapes_text_encoder():
    from arr.shapes.models import load_pretrained

    model = PairwiseRewardModel(PairwiseRewardModelConfig(channels=(8,), hidden_size=16, fusion_heads=2))
    ref = load_pretrained("t2i").text_encoder.state_dict()
    for k, v in model.text_encoder.state_dict().items():
        assert torch.equal(v, ref[k]), k
    with pytest.raises(ValueError, match="other sizes"):
        PairwiseRewardModel(PairwiseRewardModelConfig(**{**TINY, "text_init": "t2i"}))


def test_editing_model_needs_sources():
    torch.manual_seed(0)
    model = PairwiseRewardModel(PairwiseRewardModelConfig(**TINY, task="edit"))
    im = render(Scene((Obj("circle", "red", 0, 0),)))
    assert len(model.score(["make it blue"], [im], [im])) == 1
    with pytest.raises(ValueError, match="source image"):
        model.score(["make it blue"], [im])


def test_reward_model_reward_groups_scores():
    torch.manual_seed(0)
    model = PairwiseRewardModel(PairwiseRewardModelConfig(**TINY))
    pairs = _synthetic_pairs(2, 3)
    groups = [[pairs[0].image_a, pairs[0].image_b], [pairs[1].image_a, pairs[1].image_b]]
    out = RewardModelReward(model)(
        prompts=[p.prompt for p in pairs], images=groups, rubrics=[p.rubric for p in pairs]
    )
    expected = model.score([pairs[0].prompt] * 2 + [pairs[1].prompt] * 2, [im for g in groups for im in g])
    assert [x for g in out.rewards for x in g] == pytest.approx(expected)


def test_plain_judge_matches_hand_computed_rewards():
    prompt = "a circle left of a square"
    assert shapes_spec_for_prompt(prompt).relation == "left of"
    right = render(Scene((Obj("circle", "red", 1, 0), Obj("square", "blue", 1, 3))))
    swapped = render(Scene((Obj("circle", "red", 1, 3), Obj("square", "blue", 1, 0))))
    wrong_color = render(Scene((Obj("triangle", "red", 1, 0), Obj("square", "blue", 1, 3))))
    reward = PlainJudgeReward(RubricJudge(HolisticShapesBackend()))
    from arr.rubrics import Rubric

    out = reward(prompts=[prompt], images=[[right, swapped, wrong_color]], rubrics=[Rubric(prompt, [])])
    # Pairs: (right, swapped): right wins; (right, wrong_color): right wins; (swapped, wrong_color): both fail, tie.
    # Sample rewards are mean pairwise outcomes: right (1 + 1) / 2 = 1.0; swapped (-0.1 + 0) / 2; wrong shape (-0.1 + 0) / 2.
    assert out.rewards[0] == pytest.approx([1.0, -0.05, -0.05])
    assert out.info["tie_rate"] == pytest.approx(1 / 3)
    # No partial credit: with the rubric, the swapped image (objects right) beats the wrong shape; plain ties them.
    from arr.backends.pixel import PixelBackend
    from arr.rewards import RubricPairwiseReward
    from arr.shapes.prompts import PromptSpec
    from arr.shapes.rubrics import rubric_for_prompt

    spec: PromptSpec = shapes_spec_for_prompt(prompt)
    rubric_out = RubricPairwiseReward(RubricJudge(PixelBackend()))(
        prompts=[prompt], images=[[swapped, wrong_color]], rubrics=[rubric_for_prompt(spec)]
    )
    plain_out = reward(prompts=[prompt], images=[[swapped, wrong_color]], rubrics=[Rubric(prompt, [])])
    assert plain_out.rewards[0] == [0.0, 0.0]
    assert rubric_out.rewards[0][0] != rubric_out.rewards[0][1]


def test_plain_judge_refuses_unknown_prompts():
    from arr.rubrics import Rubric

    reward = PlainJudgeReward(RubricJudge(HolisticShapesBackend()))
    im = render(Scene((Obj("circle", "red", 0, 0),)))
    out = reward(prompts=["a photo of a cat"], images=[[im, im]], rubrics=[Rubric("a photo of a cat", [])])
    assert out.rewards == [[None, None]] and out.info["judge_failure_rate"] == 1.0


def _cli(argv):
    """Run `arr reward-model ...` through this package's own registrar (as arr/cli.py's table does)."""
    import argparse

    from arr.cli.reward_model import register

    parser = argparse.ArgumentParser(prog="arr")
    register(parser.add_subparsers(dest="command"), "reward-model", "reward models")
    args = parser.parse_args(["reward-model", *argv])
    return args.run(args)


def test_cli_train_and_eval(tmp_path, capsys):
    from arr.cli.common import CLIError
    from arr.shapes.benchmarks import write_preference_pairs

    data = write_preference_pairs(
        tmp_path / "d" / "pairs.json", n=6, split="train", task="t2i", perturb=False
    )
    code = _cli(["train", "--pairs", str(data), "--out", str(tmp_path / "rm"), "--epochs", "1",
                 "--eval-fraction", "0.5", "--no-text-init"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_pairs"] == 3 and summary["eval_pairs"] == 3
    assert 0.0 <= summary["heldout_accuracy"] <= 1.0
    assert json.loads((tmp_path / "rm" / "training.json").read_text())["task"] == "t2i"
    assert _cli(["eval", str(tmp_path / "rm"), "--pairs", str(data)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 6
    with pytest.raises(CLIError, match="not found"):
        _cli(["train", "--pairs", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x")])
