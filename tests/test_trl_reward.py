"""TRL reward functions: RubricReward / RubricPairReward called as GRPOTrainer calls them, and a real GRPO run.

The policy in the GRPO test is a tiny text LM whose completions name a shapes-world scene ("red circle blue
square"); `scene_from_words` draws that scene and the pixel judge scores it against the prompt's rubric, so the
reward is a real rubric judgment of a real image, made from the policy's text.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from arr import RubricJudge, load_backend
from arr.rewards import RubricPairReward, RubricReward, image_from_completion
from arr.shapes.prompts import ObjectSpec, PromptSpec
from arr.shapes.rubrics import rubric_for_prompt
from arr.shapes.scene import COLORS, GRID, SHAPES, Obj, Scene, render

WORDS = ["<pad>", "<eos>", *COLORS, *SHAPES]


def scene_from_words(completion, **row) -> Image.Image:
    """Each "<colour> <shape>" in the text becomes one object, placed cell by cell from the top left."""
    words = (completion if isinstance(completion, str) else completion[-1]["content"]).split()
    objects = []
    for first, second in zip(words, words[1:], strict=False):
        if first in COLORS and second in SHAPES and len(objects) < GRID * GRID:
            k = len(objects)
            objects.append(Obj(second, first, k // GRID, k % GRID))
    return render(Scene(tuple(objects)))


def spec(color, shape) -> PromptSpec:
    return PromptSpec("colors", (ObjectSpec(shape, color),))


# ---- calling convention ----------------------------------------------------------------------------------------


def test_rubric_reward_matches_direct_judgments():
    rubric = rubric_for_prompt(spec("red", "circle"))
    reward = RubricReward("pixel", rubric, to_image=scene_from_words, name="shapes")
    assert reward.__name__ == "shapes"
    completions = ["red circle", "blue circle", "red circle blue square", "nothing here"]
    logged = {}
    values = reward(
        prompts=["a red circle"] * 4,
        completions=completions,
        completion_ids=[[0]] * 4,
        trainer_state=None,
        log_metric=lambda k, v: logged.__setitem__(k, v),
        log_extra=lambda k, v: None,
    )
    judge = RubricJudge(load_backend("pixel"))
    direct = [judge.score(rubric.prompt, scene_from_words(c), rubric).score for c in completions]
    assert values == direct
    # Hand-computed from rubric_for_prompt weights: count 0.375, colour 0.375, exact 0.25.
    assert values == [1.0, 0.375, 0.75, 0.0]
    assert logged == {"shapes/failure_rate": 0.0}


def test_rubric_column_images_and_failures(tmp_path):
    good = render(Scene((Obj("square", "blue", 1, 1),)))
    path = tmp_path / "good.png"
    good.save(path)
    rubric_json = rubric_for_prompt(spec("blue", "square")).to_json()
    reward = RubricReward(RubricJudge(load_backend("pixel")))  # rubrics from the "rubric" column
    completions = [
        str(path),
        {"image": good},
        [{"role": "assistant", "content": [{"type": "image", "image": good}]}],
        str(tmp_path / "missing.png"),
    ]
    values = reward(prompts=["p"] * 4, completions=completions, rubric=[rubric_json] * 4)
    assert values == [1.0, 1.0, 1.0, None]
    assert len(reward.last_errors) == 1 and "missing.png" in reward.last_errors[0]
    with pytest.raises(ValueError, match="no rubrics= given and no 'rubric' dataset column"):
        reward(prompts=["p"], completions=[good])
    with pytest.raises(ValueError, match="cannot find an image"):
        image_from_completion(42)


def test_pair_reward_groups_and_outcomes():
    rubric = rubric_for_prompt(spec("red", "circle"))
    reward = RubricPairReward("pixel", rubric, group_size=2, to_image=scene_from_words)
    # Group 1: the exact image wins (+1.0), the other loses (-0.1). Group 2: identical images tie (0, 0).
    values = reward(
        prompts=["a", "a", "b", "b"], completions=["red circle", "blue circle", "red circle", "red circle"]
    )
    assert values == [1.0, -0.1, 0.0, 0.0]
    three = RubricPairReward("pixel", rubric, group_size=3, to_image=scene_from_words)
    # Scores 1.0 > 0.75 > 0.0: mean outcomes (1 + 1) / 2, (-0.1 + 1) / 2, (-0.1 - 0.1) / 2.
    assert three(
        prompts=["a"] * 3, completions=["red circle", "red circle blue square", "x"]
    ) == pytest.approx([1.0, 0.45, -0.1])
    with pytest.raises(ValueError, match="not whole groups"):
        reward(prompts=["a"] * 3, completions=["red circle"] * 3)
    with pytest.raises(ValueError, match="prompts differ"):
        reward(prompts=["a", "b"], completions=["red circle"] * 2)


# ---- a few steps of trl.GRPOTrainer ----------------------------------------------------------------------------


def tiny_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = [*WORDS, "a", "an"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=True,
    )
    return Qwen2ForCausalLM(config), tokenizer


def test_grpo_trainer_runs_with_rubric_rewards(tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    specs = [spec("red", "circle"), spec("blue", "square"), spec("green", "triangle"), spec("cyan", "circle")]
    data = Dataset.from_dict(
        {"prompt": [s.text for s in specs], "rubric": [rubric_for_prompt(s).to_json() for s in specs]}
    )
    model, tokenizer = tiny_lm()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    score = RubricReward("pixel", to_image=scene_from_words, name="rubric_score")
    pairs = RubricPairReward("pixel", group_size=4, to_image=scene_from_words, name="rubric_pairs")
    calls = []

    def counted(**kwargs):
        out = score(**kwargs)
        calls.append(out)
        return out

    counted.__name__ = "rubric_score"
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=4,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        reward_weights=[1.0, 0.5],
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[counted, pairs], args=args, train_dataset=data, processing_class=tokenizer
    )
    trainer.train()

    assert len(calls) == 3 and all(len(c) == 8 for c in calls)
    assert all(r is not None and 0.0 <= r <= 1.0 for c in calls for r in c)
    logs = [h for h in trainer.state.log_history if "rewards/rubric_score/mean" in h]
    assert len(logs) == 3
    for h in logs:
        assert 0.0 <= h["rewards/rubric_score/mean"] <= 1.0
        assert math.isfinite(h["rewards/rubric_pairs/mean"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "no parameter moved: the rubric rewards gave no learning signal"
