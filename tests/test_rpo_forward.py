"""The forward objective (`RPOConfig.objective="forward"`): its gradient by hand, the shared draws of a group (keyed
by the rollout's own indexing), held-out images that move the way the judge prefers (with deterministic, eta 0
sampling), and an exact resume."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest
import torch

from arr import RubricJudge
from arr.backends.base import PairVerdict
from arr.rewards import RubricPairwiseReward
from arr.rpo import ConfigError, RPOConfig, RPOTrainer
from arr.rpo.trainer import TrainerCallback
from arr.shapes.training import t2i_records
from tests.conftest import (
    assert_same_rows,
    brightness,
    brightness_eval,
    make_args,
    read_rows,
    tiny_policy,
)
from tests.fakes import BrightnessBackend


def forward_trainer(tmp_path: Path, **kw) -> RPOTrainer:
    kw = {
        "objective": "forward",
        "eta": 0.0,
        "shared_noise": False,
        "lose_reward": -1.0,
        "center_rewards": True,
        **kw,
    }
    args = make_args(tmp_path, **kw)
    reward = RubricPairwiseReward(RubricJudge(BrightnessBackend()), lose_reward=-1.0)
    return RPOTrainer(
        tiny_policy(), reward, args, t2i_records(16, "train"), t2i_records(8, "heldout"), brightness_eval
    )


def test_config_allows_eta_zero_only_for_the_forward_objective():
    RPOConfig(objective="forward", eta=0.0, shared_noise=False)
    with pytest.raises(ConfigError, match="shared_noise: false"):
        RPOConfig(objective="forward", eta=0.0)  # a group of identical images always ties
    with pytest.raises(ConfigError, match="objective: forward"):
        RPOConfig(eta=0.0)
    with pytest.raises(ConfigError, match="objective"):
        RPOConfig(objective="dpo")
    with pytest.raises(ConfigError, match=r"RPOConfig.forward_t_min=1.0: must be in \[0, 1\)"):
        RPOConfig(objective="forward", forward_t_min=1.0)


def test_group_members_share_noise_levels_and_noise(tmp_path):
    trainer = forward_trainer(tmp_path, group_size=3, forward_timesteps=2, forward_t_min=0.5, beta=0.0)
    rollout = trainer.sample(0)
    fixed = trainer.objective.targets(rollout)
    t, x0 = fixed.t, rollout.trajectory.final
    assert t.shape == (12, 2) and bool((t >= 0.5).all()) and bool((t < 1.0).all())
    groups = t.view(4, 3, 2)
    assert torch.equal(groups, groups[:, :1].expand_as(groups)), "a group's members share their draws"
    assert not torch.equal(groups[0, 0], groups[1, 0]), "different groups draw differently"
    noise = fixed.target + x0[:, None]  # target = noise - x0
    assert torch.allclose(noise[0], noise[1], atol=1e-6) and not torch.allclose(noise[0], noise[3])
    tb = t.view(12, 2, 1, 1, 1)
    assert torch.allclose(fixed.x_t, (1 - tb) * x0[:, None] + tb * noise, atol=1e-5)
    assert fixed.v_ref is None  # beta 0: no reference velocities are computed


def test_draws_follow_the_group_not_its_position_or_the_trainer_step(tmp_path):
    """A rollout carries its groups' global indices and its step: the forward objective's draws for a group are the
    same wherever the group sits in the rollout and whatever step the trainer is at."""
    from arr.rpo.rollout import cat_rollouts

    trainer = forward_trainer(tmp_path, sample_batch_size=2, forward_timesteps=2, beta=0.0)
    chunks = list(trainer.sample_chunks(3))  # one group per chunk; the trainer is at step 0
    assert [c.group_indices for c in chunks] == [[0], [1], [2], [3]] and {c.step for c in chunks} == {3}
    forward, backward = cat_rollouts(chunks), cat_rollouts(chunks[::-1])
    t_forward = trainer.objective.targets(forward).t.view(4, 2, 2)
    trainer.step = 7
    t_backward = trainer.objective.targets(backward).t.view(4, 2, 2)
    assert torch.equal(t_backward, t_forward.flip(0))
    assert backward.sample_group_indices().tolist() == [3, 3, 2, 2, 1, 1, 0, 0]


def test_gradient_at_the_sampling_policy_is_advantage_weighted_flow_matching(tmp_path):
    """At v = v_old the loss r|v+ - u|^2 + (1 - r)|v- - u|^2 has the gradient of b (2r - 1) |v - u|^2."""
    trainer = forward_trainer(tmp_path, forward_timesteps=2, forward_beta=0.7, beta=0.0)
    with torch.no_grad():  # a LoRA that is not zero, so the gradient reaches every LoRA matrix
        for p in trainer.params:
            p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    rollout = trainer.sample(0)
    # |A| > 1 is clamped to r = 1 or 0. Not centred in each group: with shared draws, a group's opposite
    # advantages cancel to a gradient too small to compare in float32.
    adv = torch.tensor([0.9, 0.5, 0.3, -0.2, 2.0, 0.7, -3.0, 0.1])
    members = torch.arange(8)
    fixed = trainer.objective.targets(rollout)
    stats = trainer.backward_batch(rollout, adv, members, 1.0 / 8).totals
    got = [p.grad.clone() for p in trainer.params]

    trainer.optimizer.zero_grad(set_to_none=True)
    traj = rollout.trajectory
    r = 0.5 * (1 + adv.clamp(-1, 1))
    surrogate, loss = 0.0, 0.0
    for j in range(2):
        v = trainer.policy.velocity(fixed.x_t[:, j], fixed.t[:, j], traj.cond, 1.0, traj.extras)
        sq = ((v - fixed.target[:, j]) ** 2).mean(dim=(1, 2, 3))
        surrogate = surrogate + (0.7 * (2 * r - 1) * sq).sum() / 16
        loss += float(((fixed.v_old[:, j] - fixed.target[:, j]) ** 2).mean(dim=(1, 2, 3)).sum())
    surrogate.backward()
    assert stats["policy_loss"] == pytest.approx(loss, rel=1e-5)  # at v = v_old, v+ = v- = v_old
    assert stats["clip_frac"] == 0.0
    for a, b in zip(got, (p.grad for p in trainer.params), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-9)
    assert sum(float(g.abs().sum()) for g in got) > 0


class MeanBrightnessBackend(BrightnessBackend):
    """Prefers the brighter (sign 1) or the darker (sign -1) image by mean brightness: a preference the
    flow-matching regression can follow, where the single pixel `BrightnessBackend` reads barely moves."""

    def __init__(self, sign: int) -> None:
        super().__init__()
        self.sign = sign

    def judge_pairs(self, queries):
        out = []
        for q in queries:
            a, b = (self.sign * brightness([im]) for im in q.images)
            out.append(PairVerdict(1.0 if a > b else 0.0 if a < b else 0.5, reason=f"{a:.1f} vs {b:.1f}"))
        return out


@pytest.mark.parametrize("sign", [1, -1], ids=["brighter", "darker"])
def test_forward_objective_moves_held_out_images_the_judges_way(tmp_path, sign):
    args = make_args(
        tmp_path,
        objective="forward",
        eta=0.0,
        shared_noise=False,
        lose_reward=-1.0,
        center_rewards=True,
        beta=0.0,
        max_steps=16,
        group_size=4,
        learning_rate=3e-2,
        forward_t_min=0.5,
        eval_num_prompts=8,
    )
    reward = RubricPairwiseReward(RubricJudge(MeanBrightnessBackend(sign)), lose_reward=-1.0)
    trainer = RPOTrainer(
        tiny_policy(), reward, args, t2i_records(16, "train"), t2i_records(8, "heldout"), brightness_eval
    )
    trainer.train()
    rows = read_rows(Path(args.output_dir))
    evals = [r["eval_score"] for r in rows if "eval_score" in r]
    assert sign * (evals[-1] - evals[0]) > 0.01, f"held-out brightness must move by sign {sign}, got {evals}"
    train_rows = [r for r in rows if "loss" in r]
    assert all(r["clip_frac"] == 0.0 and "ratio_mean" not in r for r in train_rows)


class StopAt(TrainerCallback):
    """Ask the trainer to stop after `step`, as the SIGTERM handler does."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            trainer._stop_signal = signal.SIGTERM


def test_forward_objective_resumes_exactly(tmp_path):
    def run(out: str, resume: str | None = None, stop_at: int | None = None):
        trainer = forward_trainer(
            tmp_path,
            output_dir=out,
            max_steps=4,
            save_steps=2,
            eval_steps=2,
            resume_from_checkpoint=resume,
            forward_ema_decay=0.5,
            warmup_steps=1,
            lr_scheduler_type="cosine",
        )
        if stop_at is not None:  # stop as SIGTERM would: the schedule still spans all 4 steps
            trainer.callbacks.append(StopAt(stop_at))
        with contextlib.suppress(KeyboardInterrupt):
            trainer.train()

    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    run(full)
    run(part, stop_at=2)
    run(part, resume="latest")
    assert_same_rows(Path(full), Path(part), steps=[0, 1, 2, 3, 4])
    # Warmup over 1 step, then cosine from 1 towards 0 at step 4; each row logs the rate its step used.
    lrs = [r["lr"] / 3e-3 for r in read_rows(Path(full)) if "lr" in r]
    assert lrs == pytest.approx([1.0, 1.0, 0.75, 0.25])


def test_sampling_policy_is_a_moving_average_of_the_lora(tmp_path):
    class Record(TrainerCallback):
        def __init__(self) -> None:
            self.weights: list[list[torch.Tensor]] = []

        def on_step_end(self, trainer, step, metrics):
            self.weights.append([p.detach().clone() for p in trainer.params])

    record = Record()
    trainer = forward_trainer(tmp_path, max_steps=2, forward_ema_decay=0.75, learning_rate=1e-2)
    trainer.callbacks.append(record)
    start = [p.detach().clone() for p in trainer.params]
    trainer.train()
    w1, w2 = record.weights
    for s0, a, b, ema in zip(start, w1, w2, trainer.sampling_params, strict=True):
        assert torch.allclose(ema, 0.75**2 * s0 + 0.75 * 0.25 * a + 0.25 * b, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(w2, trainer.sampling_params, strict=True))
    with trainer.sampling_policy():  # sampling swaps the average in ...
        assert all(torch.equal(p, e) for p, e in zip(trainer.params, trainer.sampling_params, strict=True))
    assert all(torch.equal(p, b) for p, b in zip(trainer.params, w2, strict=True))  # ... and back out
    # The checkpoint keeps the average under peft names, so it loads as a LoRA of its own.
    from safetensors.torch import load_file

    trainer.policy.load_lora_state_dict(load_file(trainer.save_checkpoint() / "sampling_lora.safetensors"))
    assert all(torch.equal(p, e) for p, e in zip(trainer.params, trainer.sampling_params, strict=True))
