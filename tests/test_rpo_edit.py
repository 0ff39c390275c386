"""RPO for editing: shapes edit records and their GEdit-style scorer, JSONL edit records with source images, a tiny
editing policy trained with the pixel judge (which sees the source image), and every shipped recipe parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arr.judge import RubricJudge
from arr.policies.shapes import ShapesPolicy
from arr.rewards import RubricPairwiseReward
from arr.rpo import ConfigError, RPOConfig, RPOTrainer
from arr.rpo.build import load_records
from arr.rpo.recipe import parse_recipe
from arr.shapes.edits import rubric_for_edit, sample_edit
from arr.shapes.models import ShapesModelConfig, build_edit_model
from arr.shapes.scene import render
from arr.shapes.training import edit_records, edit_scores

ROOT = Path(__file__).resolve().parent.parent


def test_edit_scores_of_exact_targets_and_of_copies():
    records = edit_records(24, "heldout", seed=3)
    assert {r.category for r in records} == {"recolor", "remove", "add", "move"}
    targets = edit_scores(records, [render(r.extra["edit"].target) for r in records])
    assert targets["eval_score"] == targets["eval_correct"] == targets["eval_instruction"] == 1.0
    copies = edit_scores(records, [r.source_image for r in records])
    # Returning the source keeps everything (preservation 1) and follows no instruction: overall sqrt(0 * 1) = 0.
    assert copies["eval_preservation"] == 1.0
    assert copies["eval_score"] == copies["eval_instruction"] == copies["eval_correct"] == 0.0
    assert set(copies) >= {"eval/recolor", "eval/remove", "eval/add", "eval/move"}


def test_jsonl_edit_records_load_their_source_images(tmp_path):
    import random

    edit = sample_edit(random.Random(0), "train")
    (tmp_path / "img").mkdir()
    render(edit.source).save(tmp_path / "img" / "src.png")
    row = {"prompt": edit.text, "rubric": rubric_for_edit(edit).to_dict(), "source_image": "img/src.png"}
    (tmp_path / "edits.jsonl").write_text(json.dumps(row) + "\n")
    (record,) = load_records(str(tmp_path / "edits.jsonl"), "train")
    assert record.source_image.size == (48, 48) and record.rubric.task == "edit"
    (tmp_path / "bad.jsonl").write_text(json.dumps({**row, "source_image": "img/missing.png"}) + "\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl row 1: image not found: .*missing.png"):
        load_records(str(tmp_path / "bad.jsonl"), "train")


def test_editing_rpo_judges_with_the_source_and_trains(tmp_path):
    tiny = ShapesModelConfig(
        task="edit", patch_size=12, num_layers=1, num_attention_heads=2, attention_head_dim=8,
        text_hidden_size=16, text_layers=1, text_heads=2,
    )  # fmt: skip
    policy = ShapesPolicy(build_edit_model(tiny, seed=0), num_steps=2, eta=1.0)
    seen_sources = []

    class SpyJudge(RubricJudge):
        def compare_many(self, items):
            seen_sources.extend(item.source for item in items)
            return super().compare_many(items)

    from arr.backends.pixel import PixelBackend

    reward = RubricPairwiseReward(SpyJudge(PixelBackend()))
    args = RPOConfig(
        output_dir=str(tmp_path / "run"), max_steps=2, prompts_per_step=2, group_size=2, num_sampling_steps=2,
        eval_num_prompts=4, eval_steps=1, eval_num_sampling_steps=2, save_steps=100, sample_steps=100,
        report_to="none", guidance_scale=1.0, lora_rank=4, lora_alpha=8, cpu=True,
    )  # fmt: skip
    train, evals = edit_records(8, "train"), edit_records(4, "heldout", seed=1)
    trainer = RPOTrainer(policy, reward, args, train, evals, edit_scores)
    trainer.train()
    assert seen_sources and all(s is not None and s.size == (48, 48) for s in seen_sources)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_score" in r] == [0, 1, 2]
    assert all(0.0 <= r["eval_preservation"] <= 1.0 for r in rows if "eval_score" in r)
    assert all(r["judge_calls"] > 0 for r in rows if "loss" in r)


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    parsed = parse_recipe([str(recipe)])
    assert parsed.rpo.max_steps > 0 and parsed.policy.policy
    if "edit" in recipe.name:
        assert parsed.data.dataset.startswith("shapes_edit") or parsed.data.dataset.endswith(".jsonl")


def test_eval_standard_errors_by_hand():
    import random

    from arr.rpo.report import eval_noise_band
    from arr.shapes.prompts import scene_for_prompt
    from arr.shapes.scene import Scene
    from arr.shapes.training import geneval_scores, t2i_records

    # Text-to-image: per category, alternate a correct image and a blank one; categories with one prompt get 1/1.
    records = t2i_records(40, "heldout", seed=5)
    blank = render(Scene())
    images, seen = [], {}
    for r in records:
        k = seen.get(r.category, 0)
        seen[r.category] = k + 1
        images.append(render(scene_for_prompt(r.extra["spec"], random.Random(k))) if k % 2 == 0 else blank)
    scores = geneval_scores(records, images)
    cats = [k for k in scores if k.startswith("eval/")]
    counts = {c[5:]: sum(r.category == c[5:] for r in records) for c in cats}
    by_hand = sum(scores[c] * (1 - scores[c]) / counts[c[5:]] for c in cats) ** 0.5 / len(cats)
    assert scores["eval_score_se"] == pytest.approx(by_hand)
    assert 0 < scores["eval_score_se"] < 0.2
    # Editing: the standard error of the mean sqrt(I * P) over edits; half exact targets (1), half copies (0).
    edits = edit_records(8, "heldout", seed=3)
    outs = [render(r.extra["edit"].target) if i % 2 == 0 else r.source_image for i, r in enumerate(edits)]
    e = edit_scores(edits, outs)
    assert e["eval_score"] == 0.5
    assert e["eval_score_se"] == pytest.approx((0.25 * 8 / 7 / 8) ** 0.5)
    # The 95% band of a change combines two evaluations' errors.
    assert eval_noise_band({"eval_score_se": 0.03}, {"eval_score_se": 0.04}) == pytest.approx(1.96 * 0.05)
    assert eval_noise_band({}, {"eval_score_se": 0.04}) is None
