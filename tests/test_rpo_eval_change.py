"""The held-out change since the first evaluation with its paired standard error, and the time-left estimate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from arr import RubricJudge
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOTrainer
from arr.rpo.report import eval_noise_band
from arr.rpo.trainer import format_duration
from arr.shapes.training import geneval_scores, t2i_records
from arr.stats import PER_PROMPT_SCORES, paired_change_se
from tests.conftest import brightness, make_args, tiny_policy
from tests.fakes import BrightnessBackend


def test_paired_change_se_by_hand():
    before = [("a", 1), ("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    after = [("a", 1), ("a", 1), ("a", 0), ("b", 1), ("b", 1)]
    change, se = paired_change_se(before, after)
    # Stratum means: a 2/3 -> 2/3, b 1/2 -> 1, so the mean over strata moves by 0.25. Differences: a [0, 1, -1]
    # (variance 1, over 3 prompts), b [1, 0] (variance 0.5, over 2).
    assert change == pytest.approx(0.25)
    assert se == pytest.approx(math.sqrt(1 / 3 + 0.5 / 2) / 2)
    assert paired_change_se(before, before) == (0.0, 0.0)  # the same outcomes: no noise in the change
    with pytest.raises(ValueError, match="5 prompts before but 4 after"):
        paired_change_se(before, after[:4])
    with pytest.raises(ValueError, match="prompt 0 is in stratum 'a' before and 'b' after"):
        paired_change_se(before, [("b", 1), *after[1:]])


def test_geneval_scores_give_each_prompt_with_its_category():
    from arr.shapes.scene import Scene, render

    records = t2i_records(12, "heldout", seed=3)
    blank = render(Scene(()))
    scores = geneval_scores(records, [blank] * len(records))
    per_prompt = scores[PER_PROMPT_SCORES]
    assert [c for c, _ in per_prompt] == [r.category for r in records]
    assert all(ok == 0.0 for _, ok in per_prompt)  # an empty image is right for no prompt
    _, se = paired_change_se(per_prompt, per_prompt)
    assert se == 0.0


def per_image_brightness(records, images):
    """A held-out score with per-prompt scores: each image's brightness in [0, 1]."""
    values = [brightness([im]) / 255 for im in images]
    return {"eval_score": sum(values) / len(values), PER_PROMPT_SCORES: [("all", v) for v in values]}


def run(tmp_path: Path, out: str, max_steps: int, resume: str | None = None) -> list[dict]:
    args = make_args(tmp_path, output_dir=out, max_steps=max_steps, save_steps=2, eval_steps=2,
                     resume_from_checkpoint=resume)  # fmt: skip
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    RPOTrainer(
        tiny_policy(), reward, args, t2i_records(16, "train"), t2i_records(4, "heldout"), per_image_brightness
    ).train()
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_evaluations_log_their_paired_change_and_resume_keeps_the_baseline(tmp_path):
    full = run(tmp_path, str(tmp_path / "full"), 4)
    evals = [r for r in full if "eval_score" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert "eval_change" not in evals[0] and all(PER_PROMPT_SCORES not in r for r in full)
    for r in evals[1:]:
        assert r["eval_change"] == pytest.approx(r["eval_score"] - evals[0]["eval_score"], abs=1e-12)
        assert r["eval_change_se"] >= 0 and r["eval_seconds"] > 0
    assert eval_noise_band(evals[0], evals[-1]) == pytest.approx(1.96 * evals[-1]["eval_change_se"])
    part = str(tmp_path / "part")
    run(tmp_path, part, 2)
    resumed = run(tmp_path, part, 4, resume="latest")
    last = [r for r in resumed if r["step"] == 4][0]
    # The step-0 baseline came back from the checkpoint, so the resumed run pairs with it as the full run did.
    assert last["eval_change"] == pytest.approx(evals[-1]["eval_change"], rel=1e-6)
    assert last["eval_change_se"] == pytest.approx(evals[-1]["eval_change_se"], rel=1e-6)


def test_time_left_counts_the_steps_and_the_evaluations_left(tmp_path):
    args = make_args(tmp_path, max_steps=10, eval_steps=4)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    trainer = RPOTrainer(tiny_policy(), reward, args, t2i_records(8, "train"), t2i_records(4, "heldout"))
    assert trainer.remaining_seconds() is None  # nothing measured yet
    trainer.step = 2
    trainer._iteration_seconds = [1.0, 3.0]
    trainer._eval_wall_seconds = 5.0
    # 8 steps left at 2 s, and the evaluations after steps 4, 8 and 10 (the last) at 5 s each.
    assert trainer.remaining_seconds() == pytest.approx(8 * 2.0 + 3 * 5.0)
    assert [s for s in range(1, 11) if trainer.evaluates_at(s)] == [4, 8, 10]


@pytest.mark.parametrize(("seconds", "text"), [(45.4, "45s"), (425, "7m05s"), (3720, "1h02m"), (-3, "0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
