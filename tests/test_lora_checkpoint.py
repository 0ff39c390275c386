"""What a checkpoint exports beside arr's resume state: the trained LoRA and its moving average in diffusers' format,
each loading into a fresh policy as exactly the weights that trained (or sampled), and a model card with the base
model, the held-out scores logged up to that step and the recipe."""

from __future__ import annotations

import re

import pytest
import torch

from arr import RubricJudge
from arr.policies.lora import LORA_WEIGHTS_NAME
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOTrainer
from arr.rpo.model_card import model_card
from arr.shapes.training import t2i_records
from tests.conftest import brightness_eval, make_args, read_rows, tiny_policy
from tests.fakes import BrightnessBackend


def sample(policy, seed=3):
    cond = policy.encode(["a red circle", "two blue squares"])
    with torch.no_grad():
        return policy.sample(cond, eta=0.0, seed=seed).final


def test_checkpoint_exports_diffusers_loras_and_a_model_card(tmp_path):
    args = make_args(
        tmp_path,
        max_steps=2,
        eval_steps=2,
        save_steps=2,
        objective="forward",
        eta=0.0,
        shared_noise=False,
        lose_reward=-1.0,
        center_rewards=True,
        forward_ema_decay=0.5,
        learning_rate=1e-2,
    )
    run_config = {
        "policy": "shapes",
        "model_name_or_path": "t2i",
        "judge_backend": "brightness",
        **args.to_dict(),
    }
    trainer = RPOTrainer(
        tiny_policy(),
        RubricPairwiseReward(RubricJudge(BrightnessBackend()), lose_reward=-1.0),
        args,
        t2i_records(16, "train"),
        t2i_records(8, "heldout"),
        brightness_eval,
        run_config=run_config,
    )
    trainer.train()
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    for name in ("lora.safetensors", "sampling_lora.safetensors", LORA_WEIGHTS_NAME, "README.md"):
        assert (ckpt / name).is_file(), name
    assert (ckpt / "moving_average" / LORA_WEIGHTS_NAME).is_file()

    trained = sample(trainer.policy)
    loaded = tiny_policy()
    weights = loaded.load_lora_weights(ckpt)
    assert (weights.rank, weights.alpha, weights.base_model) == (4, 8.0, "t2i")
    torch.testing.assert_close(sample(loaded), trained, rtol=0, atol=1e-6)
    assert (sample(tiny_policy()) - trained).abs().max() > 1e-3  # the LoRA moved away from the base model

    with trainer.sampling_policy():
        averaged = sample(trainer.policy)
    moving = tiny_policy()
    moving.load_lora_weights(ckpt / "moving_average")
    torch.testing.assert_close(sample(moving), averaged, rtol=0, atol=1e-6)
    assert (averaged - trained).abs().max() > 1e-4  # the average is not the trained LoRA

    card = (ckpt / "README.md").read_text()
    evals = [r for r in read_rows(tmp_path / "run") if "eval_score" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert card.startswith("---\nlibrary_name: arr\n") and "shapes-world model `t2i`" in card
    assert "trained for 2 steps" in card
    assert f"| `eval_score` | {evals[0]['eval_score']:.4g} | {evals[1]['eval_score']:.4g} |" in card
    assert f"--lora {ckpt}" in card and "moving_average/" in card
    assert "| `lora_alpha` | 8" in card and "| `objective` | forward |" in card


def test_model_card_for_a_diffusers_base_model():
    config = {
        "policy": "flux",
        "model_name_or_path": "black-forest-labs/FLUX.1-dev",
        "judge_backend": "openai",
        "judge_model": "Qwen/Qwen3-VL-8B-Instruct",
        "lora_rank": 16,
        "lora_alpha": 32,
        "objective": "policy_gradient",
    }
    card = model_card(config, 300, [], "runs/flux/checkpoints/step_300")
    assert card.startswith("---\nbase_model: black-forest-labs/FLUX.1-dev\nlibrary_name: diffusers\n")
    assert 'DiffusionPipeline.from_pretrained("black-forest-labs/FLUX.1-dev"' in card
    assert 'pipe.load_lora_weights("runs/flux/checkpoints/step_300")' in card
    assert "(`Qwen/Qwen3-VL-8B-Instruct`)" in card and "No held-out evaluation" in card
    assert "moving_average" not in card


def test_a_lora_state_with_a_missing_or_unknown_key_is_refused_by_name():
    """The same check as for sharded (FSDP) weights: a state that does not cover the adapter exactly is an error,
    so that a file loads under every engine or under none."""
    policy = tiny_policy()
    policy.add_lora(4, 8)
    state = policy.lora_state_dict()
    dropped = sorted(state)[0]
    with pytest.raises(ValueError, match=r"missing keys \['" + re.escape(dropped)):
        policy.load_lora_state_dict({k: v for k, v in state.items() if k != dropped})
    with pytest.raises(ValueError, match=r"unknown keys \['extra.lora_A.weight'\]"):
        policy.load_lora_state_dict({**state, "extra.lora_A.weight": state[dropped]})
    policy.load_lora_state_dict(state)  # the whole state loads
