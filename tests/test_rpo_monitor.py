"""The training-sample monitor (`monitor_steps`): what it logs, on which samples, and the shapes monitor's scores."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from arr import RubricJudge
from arr.backends.pixel import PixelBackend
from arr.rewards import RubricPairwiseReward
from arr.rpo import ConfigError, RPOConfig, RPOTrainer
from arr.shapes.training import sample_monitor, t2i_records
from tests.conftest import brightness, make_args, read_rows, tiny_policy
from tests.fakes import BrightnessBackend


def test_monitor_scores_one_sample_per_group_every_n_steps(tmp_path):
    seen = []

    def monitor(records, images):
        seen.append((len(records), len(images)))
        return {"brightness": brightness(images) / 255, "label": "ignored: not a number"}

    args = make_args(tmp_path, max_steps=4, monitor_steps=2, group_size=2, prompts_per_step=4)
    trainer = RPOTrainer(
        tiny_policy(),
        RubricPairwiseReward(RubricJudge(BrightnessBackend())),
        args,
        t2i_records(8, "train"),
        monitor=monitor,
    )
    trainer.train()
    rows = read_rows(Path(args.output_dir))
    assert seen == [(4, 4), (4, 4)]  # steps 2 and 4, the first image of each of the 4 groups
    assert [("train/brightness" in r) for r in rows if "loss" in r] == [False, True, False, True]
    assert all(0.0 <= r["train/brightness"] <= 1.0 for r in rows if "train/brightness" in r)
    assert not any("train/label" in r for r in rows)
    with pytest.raises(ConfigError, match="monitor_steps"):
        RPOConfig(monitor_steps=-1)


def test_shapes_monitor_agrees_with_itself_when_the_judge_is_exact():
    """With the pixel judge as the training judge, its pointwise score is the pixel score, image by image."""
    from arr.shapes.prompts import scene_for_prompt
    from arr.shapes.scene import render

    records = t2i_records(12, "heldout", seed=3)
    rng = random.Random(0)
    images = [render(scene_for_prompt(r.extra["spec"], rng)) for r in records[:6]]
    images += [render(scene_for_prompt(r.extra["spec"], rng)).rotate(90) for r in records[6:]]
    out = sample_monitor(RubricJudge(PixelBackend()))(records, images)
    pixel = PixelBackend()
    expected = sum(pixel.score_image(im, r.rubric) for r, im in zip(records, images, strict=True)) / 12
    assert out["pixel_score"] == pytest.approx(expected) and out["judge_score"] == pytest.approx(expected)
    # Exact renders are strictly correct; rotating a scene breaks relations and cells for at least some.
    assert 0.5 <= out["pixel_accuracy"] < 1.0
