"""RPOTrainer on a tiny shapes policy: the reward rises, LoRA trains, the KL has a gradient, resume reproduces,
judge failures stop training with a checkpoint, and two processes compute what one does (in float64, exactly)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arr import RubricJudge
from arr.rewards import RubricPairwiseReward, RubricPointwiseReward
from arr.rpo import ConfigError, RPOConfig, RPOTrainer, TrainingStopped
from arr.rpo.checkpoint import CheckpointError
from arr.shapes.training import t2i_records
from tests.conftest import (
    TIMING,
    assert_same_rows,
    brightness_eval,
    make_args,
    read_rows,
    tiny_policy,
    tiny_shapes_config,
)
from tests.fakes import BrightnessBackend, FailingBackend


def test_config_validation_names_rule_and_fix():
    with pytest.raises(ConfigError, match=r"group_size=1.*at least 2.*set group_size >= 2"):
        RPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="reward_mode"):
        RPOConfig(reward_mode="listwise")
    with pytest.raises(ConfigError, match="eta"):
        RPOConfig(eta=0.0)


@pytest.mark.parametrize(
    ("mode", "center", "expected"),
    [
        # Paper RPO: the reward itself. Group 1: win rates 1, 0.45, -0.1 (and a failed judgment, masked);
        # group 2: two ties.
        ("pairwise", False, [1.0, 0.45, -0.1, 0.0, 0.0, 0.0]),
        # Centred: minus each group's mean over judged samples (0.45 and 0).
        ("pairwise", True, [0.55, 0.0, -0.55, 0.0, 0.0, 0.0]),
        # Pointwise: (r - mean) / std within the group; a tied group gets zeros.
        ("pointwise", False, [1.2247, 0.0, -1.2247, 0.0, 0.0, 0.0]),
    ],
)
def test_advantages_by_hand(tmp_path, mode, center, expected):
    trainer = RPOTrainer.__new__(RPOTrainer)  # compute_advantages reads only the config
    trainer.args = make_args(tmp_path, reward_mode=mode, center_rewards=center, group_size=3)
    adv, mask = trainer.compute_advantages([1.0, 0.45, -0.1, None, 0.0, 0.0], group_size=3)
    assert mask.tolist() == [True, True, True, False, True, True]
    assert adv.tolist() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("mode", ["pairwise", "pointwise"])
def test_reward_rises_and_lora_trains(tmp_path, mode):
    torch.manual_seed(0)
    policy = tiny_policy()
    judge = RubricJudge(BrightnessBackend())
    reward = RubricPairwiseReward(judge) if mode == "pairwise" else RubricPointwiseReward(judge)
    args = make_args(
        tmp_path, max_steps=8, reward_mode=mode, eval_num_prompts=8, learning_rate=3e-2, beta=0.0
    )
    trainer = RPOTrainer(
        policy, reward, args, t2i_records(16, "train"), t2i_records(8, "heldout"), brightness_eval
    )
    before = {n: p.detach().clone() for n, p in policy.transformer.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(policy.transformer.named_parameters())
    frozen = [n for n in before if torch.equal(before[n], after[n])]
    # The last SD3 block discards its text outputs (context_pre_only), so its text-query LoRA gets no gradient.
    last = tiny_shapes_config().num_layers - 1
    assert before and frozen == [f"transformer_blocks.{last}.attn.add_q_proj.lora_B.default.weight"], frozen
    rows = read_rows(Path(args.output_dir))
    train_rows = [r for r in rows if "loss" in r]
    if mode == "pairwise":  # +1 / -0.1 per pair: the mean reward is constant, the held-out score must rise
        evals = [r["eval_score"] for r in rows if "eval_score" in r]
        assert evals[-1] > evals[0] + 0.01, f"held-out brightness must rise, got {evals}"
    else:  # pointwise rewards are the judge's scores of the training samples themselves
        rewards = [r["reward_mean"] for r in train_rows]
        assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.1, rewards
    assert all(r["judge_calls"] > 0 and 0 <= r["clip_frac"] <= 1 for r in train_rows)
    for key in ("reward_mean", "loss", "kl", "clip_frac", "judge_calls", "judge_seconds", "step_seconds"):
        assert key in train_rows[-1]


@pytest.mark.parametrize("objective", ["policy_gradient", "forward"])
def test_kl_term_has_a_gradient(tmp_path, objective):
    """Through the trainer's backward, with zero advantages: the gradient that beta adds is the KL term's, so it
    must be non-zero and linear in beta (a KL computed under no_grad, or detached, adds nothing)."""
    if objective == "forward":
        kw = {"objective": "forward", "eta": 0.0, "shared_noise": False}
    else:
        kw = {"eta": 0.5}
    args = make_args(tmp_path, prompts_per_step=2, beta=0.1, **kw)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
    trainer = RPOTrainer(tiny_policy(), reward, args, t2i_records(4, "train"))
    with torch.no_grad():  # a LoRA away from zero, so that the policy differs from its reference
        gen = torch.Generator().manual_seed(0)
        for p in trainer.params:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    rollout = trainer.sample(0)
    members = torch.arange(len(rollout))

    def gradient(beta: float) -> tuple[torch.Tensor, float]:
        trainer.objective.beta = beta
        trainer.objective.prepare(rollout)  # the forward objective's reference velocities need beta > 0
        trainer.optimizer.zero_grad(set_to_none=True)
        stats = trainer.backward_batch(rollout, torch.zeros(len(rollout)), members, 1.0 / len(rollout))
        flat = torch.cat(
            [torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in trainer.params]
        )
        return flat, stats.totals["kl"]

    g0, _ = gradient(0.0)
    g1, kl = gradient(0.1)
    g2, _ = gradient(0.2)
    assert kl > 0
    kl_grad = g1 - g0
    assert kl_grad.norm() > 1e-3 * max(g0.norm().item(), 1e-6) and kl_grad.abs().max() > 0
    torch.testing.assert_close(g2 - g0, 2 * kl_grad, rtol=1e-3, atol=1e-3 * kl_grad.abs().max().item())


def test_resume_reproduces_uninterrupted_run(tmp_path):
    def run(out: str, max_steps: int, resume: str | None = None):
        policy = tiny_policy()
        args = make_args(
            tmp_path,
            output_dir=out,
            max_steps=max_steps,
            save_steps=2,
            resume_from_checkpoint=resume,
            eval_steps=2,
        )
        reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
        RPOTrainer(
            policy, reward, args, t2i_records(16, "train"), t2i_records(4, "heldout"), brightness_eval
        ).train()

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run(full, 4)
    run(part, 2)
    assert (Path(part) / "checkpoints" / "step_2" / "lora.safetensors").is_file()
    run(part, 4, resume="latest")
    assert_same_rows(Path(full), Path(part), steps=[0, 1, 2, 3, 4])


@pytest.mark.parametrize("damaged", ["lora.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_a_cut_short_checkpoint_is_named_and_latest_resumes_from_the_one_before(tmp_path, damaged, caplog):
    def trainer(out: Path, max_steps: int, resume: str | None = None) -> RPOTrainer:
        args = make_args(tmp_path, output_dir=str(out), max_steps=max_steps, save_steps=1,
                         resume_from_checkpoint=resume, eval_steps=100)  # fmt: skip
        reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
        return RPOTrainer(tiny_policy(), reward, args, t2i_records(16, "train"))

    out = tmp_path / "run"
    trainer(out, 2).train()
    file = out / "checkpoints" / "step_2" / damaged
    file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])  # a copy or a full disk cut it short

    named = trainer(out, 3, resume=str(out / "checkpoints" / "step_2"))
    with pytest.raises(CheckpointError, match=re.escape(str(file))):
        named.load_checkpoint(str(out / "checkpoints" / "step_2"))
    assert named.step == 0  # nothing of the damaged checkpoint was applied

    latest = trainer(out, 3, resume="latest")
    with caplog.at_level(logging.WARNING, logger="arr.rpo.checkpoint"):
        latest.load_checkpoint("latest")
    assert latest.step == 1 and str(file) in caplog.text


def test_a_checkpoint_of_the_first_layout_still_resumes(tmp_path):
    """Checkpoints written before the trainer saved through accelerate (tests/data/checkpoint_v1) keep resuming: the
    LoRA, the optimizer's moments, the RNG and the step are those saved, and the run goes on in the new layout."""
    import shutil

    from safetensors.torch import load_file

    saved = Path(__file__).parent / "data" / "checkpoint_v1" / "step_2"
    out = tmp_path / "run"
    shutil.copytree(saved, out / "checkpoints" / "step_2")
    args = make_args(
        tmp_path, output_dir=str(out), max_steps=3, save_steps=1, resume_from_checkpoint="latest"
    )
    trainer = RPOTrainer(
        tiny_policy(), RubricPairwiseReward(RubricJudge(BrightnessBackend())), args, t2i_records(16, "train")
    )
    trainer.load_checkpoint("latest")
    assert trainer.step == 2
    lora = load_file(saved / "lora.safetensors")
    assert trainer.policy.lora_state_dict().keys() == lora.keys()
    for name, value in trainer.policy.lora_state_dict().items():
        torch.testing.assert_close(value, lora[name], rtol=0, atol=0)
    moments = torch.load(saved / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    state = trainer.optimizer.state_dict()["state"]
    assert state.keys() == moments.keys()
    for k in state:
        assert int(state[k]["step"]) == int(moments[k]["step"]) > 0
        torch.testing.assert_close(state[k]["exp_avg_sq"], moments[k]["exp_avg_sq"], rtol=0, atol=0)
    assert torch.equal(torch.get_rng_state(), load_file(saved / "rng.safetensors")["torch"])
    trainer.train()
    assert [r["step"] for r in read_rows(out)] == [3]
    new = out / "checkpoints" / "step_3"
    assert (new / "optimizer.bin").is_file() and json.loads((new / "trainer_state.json").read_text())[
        "format"
    ] == 2


def test_resuming_an_earlier_checkpoint_replaces_what_came_after_it(tmp_path, caplog):
    """Resumed from step 1 of a run that reached step 3: the checkpoints after step 1 and a killed save's leftover
    folder are removed, so that a later `latest` continues this run, not the one it replaced."""

    def trainer(max_steps: int, resume: str | None = None) -> RPOTrainer:
        args = make_args(tmp_path, max_steps=max_steps, save_steps=1, resume_from_checkpoint=resume,
                         save_total_limit=5)  # fmt: skip
        reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()))
        return RPOTrainer(tiny_policy(), reward, args, t2i_records(16, "train"))

    trainer(3).train()
    folder = tmp_path / "run" / "checkpoints"
    (folder / ".tmp_step_9").mkdir()
    with caplog.at_level(logging.WARNING, logger="arr.rpo.trainer"):
        trainer(2, resume=str(folder / "step_1")).train()
    assert sorted(p.name for p in folder.iterdir()) == ["step_1", "step_2"]
    assert "step_3" in caplog.text and ".tmp_step_9" in caplog.text
    assert [r["step"] for r in read_rows(tmp_path / "run")] == [1, 2]
    resumed = trainer(2, resume="latest")
    resumed.load_checkpoint("latest")
    assert resumed.step == 2


def test_a_checkpoint_of_another_number_of_processes_resumes_without_its_random_states(tmp_path, caplog):
    from arr.rpo.checkpoint import STATE_FILE, manifest

    def trainer(max_steps: int, resume: str | None = None) -> RPOTrainer:
        args = make_args(tmp_path, max_steps=max_steps, save_steps=1, resume_from_checkpoint=resume)
        return RPOTrainer(tiny_policy(), RubricPairwiseReward(RubricJudge(BrightnessBackend())), args,
                          t2i_records(16, "train"))  # fmt: skip

    trainer(1).train()
    ckpt = tmp_path / "run" / "checkpoints" / "step_1"
    # As if saved by 2 processes: rank 1's random states are not for this run (and rank 0's stays unread).
    (ckpt / "random_states_0.pkl").rename(ckpt / "random_states_1.pkl")
    state = json.loads((ckpt / STATE_FILE).read_text())
    (ckpt / STATE_FILE).write_text(json.dumps({**state, "num_processes": 2, "files": manifest(ckpt)}))
    resumed = trainer(2, resume="latest")
    with caplog.at_level(logging.WARNING, logger="arr.rpo.trainer"):
        resumed.load_checkpoint("latest")
    assert resumed.step == 1 and "saved by 2 processes and this run has 1" in caplog.text


def test_missing_named_checkpoint_is_an_error(tmp_path):
    args = make_args(tmp_path, resume_from_checkpoint="step_7")
    trainer = RPOTrainer(
        tiny_policy(), RubricPairwiseReward(RubricJudge(BrightnessBackend())), args, t2i_records(4, "train")
    )
    with pytest.raises(ConfigError, match="step_7"):
        trainer.train()


def test_judge_failures_stop_with_a_checkpoint(tmp_path):
    args = make_args(tmp_path, max_judge_failure_rate=0.5)
    trainer = RPOTrainer(
        tiny_policy(), RubricPairwiseReward(RubricJudge(FailingBackend())), args, t2i_records(4, "train")
    )
    with pytest.raises(TrainingStopped, match="max_judge_failure_rate"):
        trainer.train()
    assert (Path(args.output_dir) / "checkpoints" / "step_0" / "trainer_state.json").is_file()


TWO_PROC_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {root!r})
from tests.conftest import tiny_policy, make_args, brightness_eval
from tests.fakes import BrightnessBackend, CoarseBrightnessBackend
from arr import RubricJudge
from arr.rewards import RubricPairwiseReward
from arr.rpo import RPOTrainer
from arr.shapes.training import t2i_records
from pathlib import Path
overrides = json.loads(sys.argv[2])
backend = CoarseBrightnessBackend() if overrides.pop("coarse_judge", False) else BrightnessBackend()
args = make_args(Path(sys.argv[1]), max_steps=2, **overrides)
policy = tiny_policy(torch.float64)
RPOTrainer(policy, RubricPairwiseReward(RubricJudge(backend)), args, t2i_records(16, "train")).train()
"""


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"objective": "forward", "eta": 0.0, "shared_noise": False, "center_rewards": True},
        # two groups in two minibatches: each rank holds one group, so sits out one minibatch's backward; a judge
        # that ties often, so that the logged tie rate must be the two ranks' together, not rank 0's
        {"prompts_per_step": 2, "num_minibatches": 2, "coarse_judge": True},
    ],
    ids=["policy_gradient", "forward", "rank_without_minibatch"],
)
@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, overrides):
    """In float64, so that a real difference cannot hide in rounding: in float32 a transition recomputed in a
    batch of another shape moves its log-probability by ~1e-4 (rounding summed over 6,912 dimensions), and one
    process samples and trains in other batch shapes than two do."""
    script = tmp_path / "train2.py"
    script.write_text(TWO_PROC_SCRIPT.format(root=str(Path(__file__).parent.parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), json.dumps(overrides)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [*launch, str(script), str(tmp_path / "two"), json.dumps(overrides)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_rows(tmp_path / "one" / "run"), read_rows(tmp_path / "two" / "run")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        keys = ("reward_mean", "reward/tie_rate", "loss", "kl", "clip_frac", "grad_norm") + (
            () if overrides.get("objective") == "forward" else ("ratio_mean",)
        )
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-9, abs=1e-12), k
    if overrides.get("coarse_judge"):
        assert any(0 < r["reward/tie_rate"] < 1 for r in a)  # ties happened, and not in every pair


class _RemoteBrightness(BrightnessBackend):
    """A 'remote' judge (as the openai backend declares itself) that logs when each request batch arrives."""

    remote = True

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def judge_pairs(self, queries):
        self.events.append("judge")
        return super().judge_pairs(queries)


def test_overlapped_judging_starts_before_sampling_ends_and_changes_nothing(tmp_path):
    results = {}
    for mode in ("auto", "off"):
        events: list[str] = []
        reward = RubricPairwiseReward(RubricJudge(_RemoteBrightness(events)))
        # 4 prompts x 2 samples in chunks of 2 images: 4 chunks per step.
        args = make_args(tmp_path / mode, max_steps=2, sample_batch_size=2, overlap_judging=mode)
        trainer = RPOTrainer(tiny_policy(), reward, args, t2i_records(16, "train"), t2i_records(4, "heldout"))
        assert trainer.overlaps_judging() == (mode == "auto")
        chunks = trainer.sample_chunks

        def logged_chunks(step, _chunks=chunks, _events=events, _mode=mode):
            for i, chunk in enumerate(_chunks(step)):
                _events.append("sampled")
                yield chunk
                if _mode == "auto" and i == 0:
                    # The 2nd chunk waits (up to 10 s) for the judge: only a judge in the background can answer.
                    deadline = time.monotonic() + 10
                    while "judge" not in _events and time.monotonic() < deadline:
                        time.sleep(0.01)

        trainer.sample_chunks = logged_chunks
        trainer.train()
        first_step = events[: events.index("judge") + 1]
        # With overlap the first chunk is judged while the others are still being sampled.
        assert first_step.count("sampled") == (1 if mode == "auto" else 4), events[:12]
        rows = read_rows(Path(args.output_dir))
        results[mode] = [{k: v for k, v in r.items() if k not in TIMING} for r in rows]
    assert len(results["auto"]) == len(results["off"]) == 3
    for a, b in zip(results["auto"], results["off"], strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_reward_infos_merge_counts_rates_and_gaps():
    """Chunks' and ranks' reward infos: counts add, rates weigh by pairs, NaN and missing keys carry no weight."""
    from arr.rpo.trainer import _merge_infos

    parts = [
        {"judged": 3, "tie_rate": 0.5, "rm_score_mean": float("nan")},
        {"judged": 2, "tie_rate": 0.25, "rm_score_mean": 0.8, "extra_rate": 0.1},
    ]
    out = _merge_infos(parts, [6.0, 2.0])
    assert out == {"judged": 5, "tie_rate": (0.5 * 6 + 0.25 * 2) / 8, "rm_score_mean": 0.8, "extra_rate": 0.1}
