"""The RPO diagnosis scripts in bench/ run end to end on the shipped model and write the figures they promise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SUBPROCESS_ENV, needs_shipped_t2i

# Each test runs a bench script in a child process, as its docstring's command does.
pytestmark = [pytest.mark.slow, needs_shipped_t2i]


def _run(*args: str) -> None:
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=SUBPROCESS_ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


def test_grad_snr_compares_batch_gradients(tmp_path):
    out = tmp_path / "snr.jsonl"
    _run("bench/rpo_grad_snr.py", "--name", "t", "--batches", "3", "--out", str(out), "--",
         "--prompts_per_step", "2", "--num_train_prompts", "8", "--eval_num_prompts", "2")  # fmt: skip
    row = json.loads(out.read_text())
    assert row["batches"] == 3 and row["samples_per_batch"] == 8
    assert -1.0 <= row["mean_cosine"] <= 1.0 and row["snr_per_batch"] == row["snr_per_batch"]  # not NaN


def test_checkpoint_eval_scores_base_and_each_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from arr.policies.shapes import ShapesPolicy

    policy = ShapesPolicy.from_pretrained("t2i", device="cpu")
    policy.add_lora(16, 32)
    lora = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in policy.lora_state_dict().items()}, lora)
    out = tmp_path / "eval.jsonl"
    _run("bench/rpo_checkpoint_eval.py", "--prompts", "6", "--seeds", "2", "--out", str(out), str(lora))
    base, trained = [json.loads(line) for line in out.read_text().splitlines()]
    assert base["model"] == "base" and trained["model"] == str(lora)
    # A fresh LoRA (B = 0) is the base model: the same samples, the same score.
    assert trained["eval_score"] == base["eval_score"]
