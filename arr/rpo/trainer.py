"""RPOTrainer: Rubric Policy Optimization for flow-matching policies.

One optimizer step runs five named stages, each a method that a subclass may override:

    sample            G trajectories per prompt from the same initial noise, with every transition log-prob
    judge             the reward (pairwise rubric judgments, or pointwise rubric scores) per sample
    compute_advantages  pairwise: the reward itself (no normalisation); pointwise: group-normalised; clamped
    optimize          objective "policy_gradient" (the paper): PPO-clipped ratio + beta * KL(policy || LoRA-disabled
                      reference) on transition means; objective "forward": the negative-aware flow-matching loss
                      on the final images (DiffusionNFT), sampled by a moving average of the LoRA
    evaluate          held-out prompts sampled by the ODE, scored by the evaluation function

With a remote judge, `sample_and_judge` sends each chunk of groups to the judge as soon as it is sampled and
samples the next chunk meanwhile (`overlap_judging`), so network latency hides behind sampling.

Distribution: each process samples and judges its share of the prompts; gradients of the LoRA parameters are
all-reduced once per optimizer step (not per micro-batch), so N processes with the same global batch compute
the same update as one. Every group's noise comes from a generator seeded by (seed, step, global group index),
so results do not depend on how groups are split over processes or resumed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from arr.backends.chat import JudgeUnavailableError
from arr.policies.base import FlowPolicy, Trajectory
from arr.policies.sde import gaussian_kl
from arr.rewards import GroupReward
from arr.rpo.config import ConfigError, RPOConfig
from arr.rubrics import Rubric

CHECKPOINT_PREFIX = "step_"


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (judge failure rate over the limit); a checkpoint was written first."""


@dataclass
class PromptRecord:
    """One training or evaluation example: a prompt, its rubric and, for editing, the source image."""

    prompt: str
    rubric: Rubric
    category: str = "all"
    source_image: Image.Image | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def as_record(row: Any) -> PromptRecord:
    """Accept PromptRecords or dataset rows ({"prompt", "rubric" (Rubric, dict or JSON), "category"?, ...})."""
    if isinstance(row, PromptRecord):
        return row
    if not isinstance(row, dict) or "prompt" not in row or "rubric" not in row:
        raise ConfigError(
            f"a dataset row needs 'prompt' and 'rubric' fields, got {sorted(row) if isinstance(row, dict) else type(row).__name__}"
        )
    if not isinstance(row["prompt"], str):
        raise ConfigError(
            f"a dataset row's 'prompt' must be a string, got {type(row['prompt']).__name__}: {row['prompt']!r:.60}"
        )
    rubric = row["rubric"]
    if not isinstance(rubric, (Rubric, dict, str, bytes)):
        raise ConfigError(
            f"the 'rubric' of prompt {row['prompt'][:60]!r} must be a Rubric, a dict or JSON text, got {type(rubric).__name__}"
        )
    if isinstance(rubric, dict):
        rubric = Rubric.from_dict(rubric)
    elif isinstance(rubric, (str, bytes)):
        rubric = Rubric.from_json(rubric)
    known = {"prompt", "rubric", "category", "source_image"}
    return PromptRecord(
        prompt=row["prompt"],
        rubric=rubric,
        category=row.get("category") or "all",
        source_image=row.get("source_image"),
        extra={k: v for k, v in row.items() if k not in known},
    )


# An evaluation function maps (records, images) to metrics; "eval_score" is the headline number.
Evaluator = Callable[[Sequence[PromptRecord], Sequence[Image.Image]], dict[str, float]]


@dataclass
class Rollout:
    """One process's sampled batch: trajectories, images, and which records (global indices) they belong to."""

    trajectory: Trajectory
    images: list[Image.Image]
    records: list[PromptRecord]
    group_size: int


class TrainerCallback:
    """Hooks called by the trainer on the main process; override what you need.

    `on_step_end` and `on_evaluate` run before the step's row is written, so they may add keys to `metrics`.
    """

    def on_step_end(self, trainer: RPOTrainer, step: int, metrics: dict[str, Any]) -> None:
        pass

    def on_evaluate(self, trainer: RPOTrainer, step: int, metrics: dict[str, Any]) -> None:
        pass

    def on_train_end(self, trainer: RPOTrainer, step: int) -> None:
        pass


def _seed_for(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


class RPOTrainer:
    """Fine-tune a `FlowPolicy` with LoRA on rubric rewards.

    Args:
        policy: the flow policy (LoRA is added here unless it already has trainable parameters).
        reward: a `GroupReward` (e.g. `RubricPairwiseReward(judge)`, or `RubricPointwiseReward` for GRPO).
        args: `RPOConfig`.
        train_dataset: rows with "prompt" and "rubric" (and "category", "source_image" for editing).
        eval_dataset: held-out rows; evaluated with `evaluator` every `eval_steps`.
        evaluator: (records, images) -> metrics with "eval_score"; defaults to the reward's judge pointwise score.
        callbacks: `TrainerCallback`s.
        lora_target_modules: LoRA target names (default: the policy's).
        accelerator: an `accelerate.Accelerator` (created from `args` when None).
    """

    def __init__(
        self,
        policy: FlowPolicy,
        reward: GroupReward,
        args: RPOConfig,
        train_dataset: Sequence[Any],
        eval_dataset: Sequence[Any] | None = None,
        evaluator: Evaluator | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        lora_target_modules: Sequence[str] | None = None,
        accelerator: Any = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        from accelerate import Accelerator

        self.args = args
        self.policy = policy
        self.reward = reward
        self.train_records = [as_record(r) for r in train_dataset]
        self.eval_records = [as_record(r) for r in (eval_dataset or [])]
        if not self.train_records:
            raise ConfigError("train_dataset is empty: RPO needs prompts with rubrics")
        self.evaluator = evaluator or self._default_evaluator
        self.callbacks = list(callbacks)
        self.run_config = run_config or {"rpo": args.to_dict()}
        self.output_dir = Path(args.output_dir)

        log_with = None if args.report_to == "none" else args.report_to
        self.accelerator = accelerator or Accelerator(
            cpu=args.cpu,
            mixed_precision=args.mixed_precision,
            log_with=log_with,
            project_dir=str(self.output_dir),
        )
        acc = self.accelerator
        if args.prompts_per_step % acc.num_processes:
            raise ConfigError(
                f"RPOConfig.prompts_per_step={args.prompts_per_step} must be divisible by the number of processes "
                f"({acc.num_processes}) so that every process judges whole groups; use a multiple of it"
            )
        torch.manual_seed(_seed_for(args.seed, 0xA11))  # LoRA init is identical on every process
        if not policy.trainable_parameters():
            policy.add_lora(args.lora_rank, args.lora_alpha, lora_target_modules)
        if args.gradient_checkpointing and hasattr(policy, "set_gradient_checkpointing"):
            policy.set_gradient_checkpointing(True)
        self.params = policy.trainable_parameters()
        if not self.params:
            raise ConfigError(f"{type(policy).__name__} has no trainable parameters after add_lora")
        # The forward objective's sampling policy: a moving average of the trained LoRA (None: the LoRA itself).
        self.sampling_params: list[torch.Tensor] | None = None
        if args.objective == "forward" and args.forward_ema_decay > 0:
            self.sampling_params = [p.detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.weight_decay,
            eps=args.adam_epsilon,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self._lr_factor(s))
        self.step = 0
        self.phase_seconds: dict[str, float] = {"sample": 0.0, "judge": 0.0, "optimize": 0.0, "evaluate": 0.0}
        self._stop_signal: int | None = None
        self._last_eval_score: float | None = None
        self.history: list[dict[str, Any]] = []
        self._orders: dict[int, np.ndarray] = {}

    def _lr_factor(self, step: int) -> float:
        """The learning-rate multiplier after `step` RPO steps: linear warmup, then constant or decayed to 0 at
        `max_steps` (a decay lets the last steps settle instead of ending on a full-size, noisy step)."""
        args = self.args
        warmup = max(args.warmup_steps, 0)
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, args.max_steps - warmup))
        if args.lr_scheduler_type == "linear":
            return 1.0 - progress
        if args.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    # ---- data ----------------------------------------------------------------------------------------------

    def prompts_for_step(self, step: int) -> list[tuple[int, PromptRecord]]:
        """This process's (global group index, record) pairs for `step`: a deterministic pass over epochs."""
        n = len(self.train_records)
        per_step = self.args.prompts_per_step
        out = []
        for k in range(per_step):
            epoch, offset = divmod(step * per_step + k, n)
            out.append((k, self.train_records[int(self._epoch_order(epoch)[offset])]))
        share = per_step // self.accelerator.num_processes
        rank = self.accelerator.process_index
        return out[rank * share : (rank + 1) * share]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The shuffled order of the training records in `epoch` (memoised: every step of an epoch reuses it)."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a step spans at most two epochs
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng(_seed_for(self.args.seed, 0xDA7A, epoch))
            self._orders[epoch] = rng.permutation(len(self.train_records))
        return self._orders[epoch]

    # ---- stages --------------------------------------------------------------------------------------------

    def _sde_steps(self) -> list[int]:
        """Which sampling steps are stochastic (and trained): the first ceil(fraction * T), the high-noise ones."""
        t = self.args.num_sampling_steps
        return list(range(max(1, math.ceil(self.args.train_timestep_fraction * t))))

    @torch.no_grad()
    def sample(self, step: int) -> Rollout:
        """Sample G trajectories per prompt; each group's noise comes from its own (seed, step, index) generator."""
        return _cat_rollouts(list(self.sample_chunks(step)))

    @torch.no_grad()
    def sample_chunks(self, step: int) -> Iterator[Rollout]:
        """This step's rollout in chunks of `sample_batch_size` images, each yielded (decoded) as soon as it is
        sampled, so a remote judge can start on it. Noise is drawn per group, so chunking does not change results."""
        args = self.args
        mine = self.prompts_for_step(step)
        per_chunk = max(1, args.sample_batch_size // args.group_size)
        for c in range(0, len(mine), per_chunk):
            chunk = mine[c : c + per_chunk]
            cond = self.policy.encode(
                [r.prompt for _, r in chunk],
                source_images=[r.source_image for _, r in chunk]
                if chunk[0][1].source_image is not None
                else None,
            )
            gens = [torch.Generator("cpu").manual_seed(_seed_for(args.seed, step, k)) for k, _ in chunk]
            with self.accelerator.autocast(), self.sampling_policy():
                traj = self.policy.sample(
                    cond,
                    group_size=args.group_size,
                    num_steps=args.num_sampling_steps,
                    eta=args.eta,
                    guidance_scale=args.guidance_scale,
                    sde_steps=self._sde_steps(),
                    generators=gens,
                    shared_noise=args.shared_noise,
                )
            yield Rollout(traj, self.policy.decode(traj.final), [r for _, r in chunk], args.group_size)

    @contextlib.contextmanager
    def sampling_policy(self) -> Iterator[None]:
        """The weights that sample: the moving average of the LoRA under `forward_ema_decay`, else the LoRA."""
        if self.sampling_params is None:
            yield
            return
        trained = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.sampling_params, strict=True):
                    p.copy_(s)
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained, strict=True):
                    p.copy_(t)

    @torch.no_grad()
    def _update_sampling_policy(self) -> None:
        if self.sampling_params is not None:
            decay = self.args.forward_ema_decay
            for p, s in zip(self.params, self.sampling_params, strict=True):
                s.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def overlaps_judging(self) -> bool:
        """Whether `sample_and_judge` judges chunks in the background (see `RPOConfig.overlap_judging`)."""
        mode = self.args.overlap_judging
        if mode != "auto":
            return mode == "on"
        judge = getattr(self.reward, "judge", None)
        return bool(getattr(getattr(judge, "backend", None), "remote", False))

    def sample_and_judge(self, step: int) -> tuple[Rollout, list[float | None], dict[str, Any], float]:
        """Sample and judge this step's batch; returns the rollout, rewards, reward info and the seconds spent
        sampling. With overlap, each chunk goes to the judge (one background thread; the judge runs its own
        requests concurrently) as soon as it is sampled, and only the last chunk's judging is left to wait for.
        Rewards are per group, so they are the same either way."""
        t0 = time.perf_counter()
        if not self.overlaps_judging():
            rollout = self.sample(step)
            sample_seconds = time.perf_counter() - t0
            rewards, info = self.judge(rollout)
            return rollout, rewards, info, sample_seconds
        chunks, futures = [], []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="arr-judge") as pool:
            try:
                for chunk in self.sample_chunks(step):
                    chunks.append(chunk)
                    futures.append(pool.submit(self.judge, chunk))
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            sample_seconds = time.perf_counter() - t0
            results = [f.result() for f in futures]
        rewards = [r for chunk_rewards, _ in results for r in chunk_rewards]
        weights = [len(chunk.records) for chunk in chunks]
        return _cat_rollouts(chunks), rewards, _merge_infos([i for _, i in results], weights), sample_seconds

    def judge(self, rollout: Rollout) -> tuple[list[float | None], dict[str, Any]]:
        """Rewards per sample (None = no judgment) and the reward's extra info."""
        g = rollout.group_size
        groups = [rollout.images[i * g : (i + 1) * g] for i in range(len(rollout.records))]
        out = self.reward(
            prompts=[r.prompt for r in rollout.records],
            images=groups,
            rubrics=[r.rubric for r in rollout.records],
            source_images=[r.source_image for r in rollout.records],
        )
        return [x for group in out.rewards for x in group], out.info

    def compute_advantages(
        self, rewards: list[float | None], group_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Advantages [B] and a validity mask [B]; masked samples have advantage 0 and are left out of the loss."""
        adv = torch.zeros(len(rewards), dtype=torch.float64)
        mask = torch.tensor([r is not None for r in rewards])
        for start in range(0, len(rewards), group_size):
            vals = [(i, r) for i, r in enumerate(rewards[start : start + group_size], start) if r is not None]
            if self.args.reward_mode == "pairwise":
                baseline = sum(r for _, r in vals) / len(vals) if self.args.center_rewards and vals else 0.0
                for i, r in vals:
                    adv[i] = r - baseline
            elif len(vals) >= 2:
                x = torch.tensor([r for _, r in vals], dtype=torch.float64)
                z = (x - x.mean()) / (x.std(unbiased=False) + 1e-4)
                for (i, _), zi in zip(vals, z, strict=True):
                    adv[i] = zi
            else:  # a lone judged sample has nothing to be compared with
                for i, _ in vals:
                    mask[i] = False
        return adv.clamp(-self.args.adv_clip, self.args.adv_clip).float(), mask

    def optimize(self, rollout: Rollout, advantages: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """PPO-clipped policy gradient + beta * KL over `num_minibatches` optimizer steps per inner epoch.

        The batch's groups are split into minibatches by global group index (so one process and many split it the
        same way); each minibatch's gradient is accumulated over its samples (in micro-batches of
        `train_batch_size`) and every trained timestep, all-reduced once, clipped and applied. From the second
        minibatch on the policy differs from the one that sampled, so the ratio moves off 1 and clipping acts.
        """
        args = self.args
        traj = rollout.trajectory
        group_index = torch.tensor([k for k, _ in self.prompts_for_step(self.step)]).repeat_interleave(
            rollout.group_size
        )
        forward = args.objective == "forward"
        fixed = self._forward_targets(rollout) if forward else None
        terms_per_sample = args.forward_timesteps if forward else len(traj.train_steps)
        stat_keys = ("loss", "policy_loss", "kl", "clip_frac") + (() if forward else ("ratio_mean",))
        sums = dict.fromkeys(stat_keys, 0.0)
        n_terms, ratio_max, grad_norms = 0, 0.0, []
        for epoch in range(args.num_inner_epochs):
            for m in range(args.num_minibatches):
                members = torch.nonzero(mask & (group_index % args.num_minibatches == m)).flatten()
                n_global = int(self._sum_over_processes(float(len(members))))
                if n_global == 0:
                    continue
                order = torch.randperm(
                    len(members),
                    generator=torch.Generator().manual_seed(_seed_for(args.seed, self.step, epoch, m)),
                )
                members = members[order]
                # Each sample weighs 1 / global samples: after the all-reduce sum, the gradient is that of the
                # mean loss over the whole minibatch, however it is split.
                terms = self.backward_batch(rollout, advantages, members, 1.0 / n_global, fixed)
                for k in sums:  # a rank may hold none of this minibatch's groups, and so no statistics
                    sums[k] += terms.get(k, 0.0)
                ratio_max = max(ratio_max, terms.get("ratio_max", 0.0))
                n_terms += len(members) * terms_per_sample
                self._all_reduce_grads()
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(self.params, args.max_grad_norm)))
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.scheduler.step()
        self._update_sampling_policy()
        totals = self._sum_over_processes([*sums.values(), float(n_terms)])
        denom = max(totals[-1], 1.0)
        out = {k: v / denom for k, v in zip(sums, totals[:-1], strict=True)}
        if not forward:
            out["ratio_max"] = self._max_over_processes(ratio_max)
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        out["optimizer_steps"] = len(grad_norms)
        out["lr"] = lr
        return out

    def backward_batch(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        members: torch.Tensor,
        weight: float,
        fixed: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Accumulate the gradient of `weight` x the summed per-sample loss of samples `members`, in micro-batches
        of `train_batch_size`; returns the summed statistics. `fixed` holds the forward objective's inputs
        (`_forward_targets`), computed here when not given."""
        args, traj, device = self.args, rollout.trajectory, self.policy.device
        forward = args.objective == "forward"
        if forward and fixed is None:
            fixed = self._forward_targets(rollout)
        steps = traj.train_steps
        sums: dict[str, float] = {}
        for start in range(0, len(members), args.train_batch_size):
            idx = members[start : start + args.train_batch_size]
            adv = advantages[idx].to(device)
            if forward:
                terms = self._forward_loss_terms(traj, fixed, idx, adv, weight / args.forward_timesteps)
            else:
                terms = self._loss_terms(traj, idx, adv, steps, weight / len(steps))
            for k, v in terms.items():
                sums[k] = max(sums.get(k, 0.0), v) if k == "ratio_max" else sums.get(k, 0.0) + v
        return sums

    def _loss_terms(
        self, traj: Trajectory, idx: torch.Tensor, adv: torch.Tensor, steps: list[int], scale: float
    ) -> dict[str, float]:
        """Backward the clipped objective + KL for samples `idx` over `steps`; returns summed statistics."""
        args, acc = self.args, self.accelerator
        old = traj.log_probs[idx.to(traj.log_probs.device)]
        stats = dict.fromkeys(("loss", "policy_loss", "kl", "clip_frac", "ratio_mean", "ratio_max"), 0.0)
        for j in steps:
            with acc.autocast():
                tr = self.policy.transition(traj, j, idx)
                if args.beta > 0:
                    with torch.no_grad(), self.policy.reference():
                        ref = self.policy.transition(traj, j, idx)
            ratio = torch.exp((tr.log_prob - old[:, j].to(tr.log_prob.device)).float())
            clipped_ratio = torch.clamp(ratio, 1.0 - args.clip_range, 1.0 + args.clip_range)
            policy_loss = torch.maximum(-adv * ratio, -adv * clipped_ratio)
            if args.beta > 0:
                kl = gaussian_kl(tr.mean, ref.mean, tr.std, reduction=traj.reduction).float()
            else:
                kl = torch.zeros_like(policy_loss)
            per_sample = policy_loss + args.beta * kl
            (per_sample.sum() * scale).backward()
            with torch.no_grad():
                stats["loss"] += per_sample.sum().item()
                stats["policy_loss"] += policy_loss.sum().item()
                stats["kl"] += kl.sum().item()
                stats["clip_frac"] += ((ratio - 1.0).abs() > args.clip_range).float().sum().item()
                stats["ratio_mean"] += ratio.sum().item()
                stats["ratio_max"] = max(stats["ratio_max"], ratio.max().item())
        return stats

    @torch.no_grad()
    def _forward_targets(self, rollout: Rollout) -> dict[str, torch.Tensor]:
        """The forward objective's fixed inputs: for each sample and each of `forward_timesteps` draws, a noise
        level t, the noised sample x_t = (1 - t) x_0 + t * noise, the flow-matching target noise - x_0, and the
        velocities of the sampling policy (and of the reference, for the KL) at x_t. The draws come from a
        generator seeded by (seed, step, global group index), so they do not depend on how samples are split
        over processes."""
        args, traj = self.args, rollout.trajectory
        device = self.policy.device
        group_index = torch.tensor([k for k, _ in self.prompts_for_step(self.step)])
        x0 = traj.final.to(device)
        k, t_min = args.forward_timesteps, args.forward_t_min
        ts, noises = [], []
        for gid in group_index.tolist():
            gen = torch.Generator("cpu").manual_seed(_seed_for(args.seed, self.step, gid, 1_000_003))
            ts.append(t_min + (1.0 - t_min) * torch.rand(k, generator=gen))
            noises.append(torch.randn((k, *x0.shape[1:]), generator=gen))
        # A group shares its draws (common random numbers): the regression noise, the same for every member,
        # cancels in the advantage-weighted sum instead of swamping the differences between the images.
        t = torch.stack(ts).clamp_min(1e-3).repeat_interleave(rollout.group_size, dim=0).to(device)  # [B, K]
        noise = torch.stack(noises).repeat_interleave(rollout.group_size, dim=0).to(device)  # [B, K, ...]
        tb = t.view(*t.shape, *([1] * (x0.dim() - 1)))
        x_t = (1.0 - tb) * x0[:, None] + tb * noise
        fixed = {"t": t, "x_t": x_t, "target": noise - x0[:, None]}
        with self.sampling_policy():
            fixed["v_old"] = self._velocities(traj, x_t, t)
        if args.beta > 0:
            with self.policy.reference():
                fixed["v_ref"] = self._velocities(traj, x_t, t)
        return fixed

    def _velocities(self, traj: Trajectory, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The policy's velocity at x_t [B, K, ...] and noise levels t [B, K], in micro-batches."""
        out = torch.empty_like(x_t)
        for start in range(0, len(traj), self.args.train_batch_size):
            idx = torch.arange(start, min(start + self.args.train_batch_size, len(traj)))
            cond = traj.cond.index(idx)
            for j in range(x_t.shape[1]):
                with self.accelerator.autocast():
                    v = self.policy.velocity(x_t[idx, j], t[idx, j], cond, traj.guidance_scale, traj.extras)
                out[idx, j] = v.float()
        return out

    def _forward_loss_terms(
        self,
        traj: Trajectory,
        fixed: dict[str, torch.Tensor],
        idx: torch.Tensor,
        adv: torch.Tensor,
        scale: float,
    ) -> dict[str, float]:
        """Backward the negative-aware flow-matching loss (DiffusionNFT) + beta * velocity KL for samples `idx`.

        The advantage becomes an optimality weight r = (1 + clamp(A, -1, 1)) / 2. With the implicit policies
        v+ = v_old + b (v - v_old) and v- = v_old - b (v - v_old) (b = forward_beta), the loss is
        r |v+ - target|^2 + (1 - r) |v- - target|^2: at v = v_old its gradient is 2 b (2r - 1)(v_old - target),
        an advantage-weighted flow-matching gradient, and its curvature 2 b^2 keeps losers from diverging. It
        needs no log-probabilities, so its gradient has the variance of pretraining's regression loss instead
        of the SDE noise the policy gradient carries."""
        args = self.args
        b = args.forward_beta
        r = 0.5 * (1.0 + adv.float().clamp(-1.0, 1.0))
        cond = traj.cond.index(idx)
        dims = tuple(range(1, fixed["x_t"].dim() - 1))
        stats = dict.fromkeys(("loss", "policy_loss", "kl", "clip_frac"), 0.0)
        for j in range(args.forward_timesteps):
            with self.accelerator.autocast():
                v = self.policy.velocity(
                    fixed["x_t"][idx, j], fixed["t"][idx, j], cond, traj.guidance_scale, traj.extras
                ).float()
            v_old, target = fixed["v_old"][idx, j], fixed["target"][idx, j]
            pos = ((v_old + b * (v - v_old) - target) ** 2).mean(dim=dims)
            neg = ((v_old - b * (v - v_old) - target) ** 2).mean(dim=dims)
            policy_loss = r * pos + (1.0 - r) * neg
            if args.beta > 0:
                kl = ((v - fixed["v_ref"][idx, j]) ** 2).mean(dim=dims)
            else:
                kl = torch.zeros_like(policy_loss)
            per_sample = policy_loss + args.beta * kl
            (per_sample.sum() * scale).backward()
            stats["loss"] += per_sample.sum().item()
            stats["policy_loss"] += policy_loss.sum().item()
            stats["kl"] += kl.sum().item()
        return stats

    def _sum_over_processes(self, values: float | list[float]) -> Any:
        single = not isinstance(values, list)
        t = torch.tensor([values] if single else values, dtype=torch.float64, device=self.policy.device)
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return float(t[0]) if single else t.tolist()

    def _max_over_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor(value, dtype=torch.float64, device=self.policy.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def _all_reduce_grads(self) -> None:
        """Average LoRA gradients over processes in one flat all-reduce (once per optimizer step)."""
        if self.accelerator.num_processes == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        # The per-process losses are already shares of the global mean, so the sum is the gradient of the mean.
        offset = 0
        for p, g in zip(self.params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out score: ODE samples (fixed seeds) of the eval prompts, scored by the evaluator."""
        args, acc = self.args, self.accelerator
        records = self.eval_records[: args.eval_num_prompts]
        if not records:
            return {}
        idx = list(range(acc.process_index, len(records), acc.num_processes))
        images: list[Image.Image] = []
        for c in range(0, len(idx), args.sample_batch_size):
            chunk = idx[c : c + args.sample_batch_size]
            recs = [records[i] for i in chunk]
            cond = self.policy.encode(
                [r.prompt for r in recs],
                source_images=[r.source_image for r in recs] if recs[0].source_image is not None else None,
            )
            gens = [torch.Generator("cpu").manual_seed(_seed_for(args.seed, 0xE7A1, i)) for i in chunk]
            with acc.autocast():
                traj = self.policy.sample(
                    cond,
                    group_size=1,
                    num_steps=args.eval_num_sampling_steps,
                    eta=0.0,
                    guidance_scale=args.guidance_scale,
                    generators=gens,
                )
            images.extend(self.policy.decode(traj.final))
        # Score on the main process over all prompts: per-category figures need every sample, not averages.
        from accelerate.utils import gather_object

        pairs = list(zip(idx, images, strict=True))
        if acc.num_processes > 1:
            pairs = gather_object(pairs)
        pairs.sort(key=lambda p: p[0])
        self._last_eval_images = (records, [i for i, _ in pairs], [im for _, im in pairs])
        if not acc.is_main_process:
            return {}
        return self.evaluator([records[i] for i, _ in pairs], [im for _, im in pairs])

    def _default_evaluator(
        self, records: Sequence[PromptRecord], images: Sequence[Image.Image]
    ) -> dict[str, float]:
        from arr.judge import ScoreItem

        judge = getattr(self.reward, "judge", None)
        if judge is None:
            raise ConfigError(
                "no evaluator given and the reward has no .judge to score held-out samples with"
            )
        scores = judge.score_many(
            [ScoreItem(r.prompt, im, r.rubric, r.source_image) for r, im in zip(records, images, strict=True)]
        )
        vals = [s.score for s in scores if s.score is not None]
        return {"eval_score": float(np.mean(vals)) if vals else float("nan")}

    # ---- the loop ------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Run to `max_steps` (resuming first if asked); returns the final metrics row."""
        args, acc = self.args, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if args.resume_from_checkpoint:
            self.load_checkpoint(args.resume_from_checkpoint)
        if acc.is_main_process:
            import yaml

            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
            if acc.log_with:
                acc.init_trackers("rpo", config=_flat_scalars(self.run_config))
        self._install_signal_handlers()
        metrics_path = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:
            _truncate_metrics(metrics_path, self.step)
        if self.step == 0 and self.eval_records:
            self._run_eval(metrics_path)

        from tqdm.auto import tqdm

        bar = tqdm(
            total=args.max_steps,
            initial=self.step,
            desc="RPO",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
        )
        row: dict[str, Any] = {}
        try:
            while self.step < args.max_steps:
                row = self.training_step()
                self.step += 1
                row["step"] = self.step
                if (
                    self.eval_records
                    and args.eval_steps
                    and self.step % args.eval_steps == 0
                    and self.step < args.max_steps
                ):
                    row.update(self._evaluate_timed())
                if self.step == args.max_steps and self.eval_records:
                    row.update(self._evaluate_timed())
                if acc.is_main_process and (self.step % args.logging_steps == 0 or "eval_score" in row):
                    # Callbacks run first so that they can add their own metrics (e.g. align/*) to the row.
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step, row)
                        if "eval_score" in row:
                            cb.on_evaluate(self, self.step, row)
                    _append_jsonl(metrics_path, row)
                    self.history.append(row)
                    if acc.log_with:
                        acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.step)
                bar.update(1)
                postfix = {"reward": f"{row.get('reward_mean', float('nan')):.3f}"}
                if "reward/tie_rate" in row:  # symmetric pairwise rewards average 0; the tie rate says more
                    postfix["ties"] = f"{row['reward/tie_rate']:.2f}"
                postfix["eval"] = f"{self._last_eval_score:.3f}" if self._last_eval_score is not None else "-"
                bar.set_postfix(postfix)
                if self.step % args.save_steps == 0 or self.step == args.max_steps:
                    self.save_checkpoint()
                # Ranks agree on stopping: a signal that reached one rank only must not leave the others in the next
                # step's collectives while it checkpoints.
                signum = self._max_over_processes(float(self._stop_signal or 0))
                if signum and self.step < args.max_steps:  # at the last step the run simply ends
                    self._stop_signal = int(signum)
                    if self.step % args.save_steps:
                        self.save_checkpoint()
                    raise KeyboardInterrupt(f"stopped by signal {self._stop_signal} at step {self.step}")
        finally:
            bar.close()
            self._restore_signal_handlers()
        if acc.is_main_process:
            for cb in self.callbacks:
                cb.on_train_end(self, self.step)
        acc.end_training()
        return row

    def training_step(self) -> dict[str, Any]:
        """Sample, judge, compute advantages and optimize once; returns this step's metrics."""
        args, acc = self.args, self.accelerator
        t0 = time.perf_counter()
        judge_stats_before = self._judge_stats()
        unreachable: JudgeUnavailableError | None = None
        try:
            rollout, rewards, info, sample_seconds = self.sample_and_judge(self.step)
        except JudgeUnavailableError as e:
            unreachable = e
        # The judge server is down (every request failed to connect): keep the work done so far. All ranks stop
        # together, even if only one rank's requests failed, or the others would wait in the next collective.
        if self._max_over_processes(float(unreachable is not None)):
            self.save_checkpoint()
            raise TrainingStopped(
                f"step {self.step + 1}: the judge is unreachable ({unreachable or 'from another rank'}), so 100% "
                "of samples got no judgment, over "
                f"max_judge_failure_rate={self.args.max_judge_failure_rate:.0%}; a checkpoint was saved in "
                f"{self.checkpoint_dir}; restart the judge server and resume with --resume_from_checkpoint latest"
            ) from None
        t1 = t0 + sample_seconds
        t2 = time.perf_counter()
        judge_stats = {k: v - judge_stats_before.get(k, 0) for k, v in self._judge_stats().items()}
        advantages, mask = self.compute_advantages(rewards, rollout.group_size)
        valid_rewards = [r for r in rewards if r is not None]
        tot = self._sum_over_processes(
            [
                sum(valid_rewards),
                len(valid_rewards),
                len(rewards),
                float(mask.sum()),
                judge_stats.get("calls", 0),
                judge_stats.get("seconds", 0.0),
                judge_stats.get("cached", 0),
            ]
        )
        masked_frac = 1.0 - float(tot[3]) / max(float(tot[2]), 1.0)
        judged_frac = float(tot[1]) / max(float(tot[2]), 1.0)
        if 1.0 - judged_frac > args.max_judge_failure_rate:
            self.save_checkpoint()
            raise TrainingStopped(
                f"step {self.step + 1}: {1.0 - judged_frac:.0%} of samples got no judgment, over "
                f"max_judge_failure_rate={args.max_judge_failure_rate:.0%}; check the judge server "
                f"(a checkpoint was saved in {self.output_dir / 'checkpoints'})"
            )
        opt = self.optimize(rollout, advantages, mask)
        t3 = time.perf_counter()
        self.phase_seconds["sample"] += t1 - t0
        self.phase_seconds["judge"] += t2 - t1
        self.phase_seconds["optimize"] += t3 - t2
        if acc.is_main_process and args.sample_steps and (self.step % args.sample_steps == 0):
            self._save_sample_grid(rollout, rewards)
        row: dict[str, Any] = {
            "reward_mean": float(tot[0]) / max(float(tot[1]), 1.0),
            **opt,
            "masked_frac": masked_frac,
            "judge_calls": int(tot[4]),
            "judge_cached": int(tot[6]),
            "judge_seconds": float(tot[5]),
            "step_seconds": t3 - t0,
            "sample_seconds": t1 - t0,
            "judge_wait_seconds": t2 - t1,
            "optimize_seconds": t3 - t2,
        }
        row.update({f"reward/{k}": v for k, v in self._batch_reward_info(info, len(rewards)).items()})
        return row

    def _batch_reward_info(self, info: dict[str, Any], num_samples: int) -> dict[str, float]:
        """The reward's numbers for the whole batch, not this rank's share (merged as chunks are, weighted by the
        pairs, else samples, each rank judged). One all-gather of small dicts, so ranks need not report the same
        keys."""
        numbers = {
            k: v
            for k, v in info.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "pairs"
        }
        parts = [(float(info.get("pairs", num_samples)), numbers)]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object(parts)
        return _merge_infos([nums for _, nums in parts], [w for w, _ in parts])

    def _judge_stats(self) -> dict[str, float]:
        judge = getattr(self.reward, "judge", None)
        return judge.stats.to_dict() if judge is not None else {}

    def _evaluate_timed(self) -> dict[str, float]:
        t = time.perf_counter()
        metrics = self.evaluate()
        self.phase_seconds["evaluate"] += time.perf_counter() - t
        self._last_eval_score = metrics.get("eval_score")
        if self.accelerator.is_main_process and self.args.sample_steps:
            self._save_eval_grid()
        return metrics

    def _run_eval(self, metrics_path: Path) -> None:
        row = {"step": 0, **self._evaluate_timed()}
        if self.accelerator.is_main_process:
            for cb in self.callbacks:
                cb.on_evaluate(self, 0, row)
            _append_jsonl(metrics_path, row)
            self.history.append(row)

    # ---- samples -------------------------------------------------------------------------------------------

    def _save_sample_grid(self, rollout: Rollout, rewards: list[float | None]) -> None:
        from arr.report import image_grid

        n = min(len(rollout.images), 8 * rollout.group_size)
        captions = ["-" if r is None else f"{r:+.2f}" for r in rewards[:n]]
        grid = image_grid(rollout.images[:n], cols=rollout.group_size * 4, captions=captions, scale=2)
        out = self.output_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        grid.save(out / f"train_step_{self.step:06d}.png")

    def _save_eval_grid(self) -> None:
        from arr.report import image_grid

        records, idx, images = getattr(self, "_last_eval_images", ([], [], []))
        if not images:
            return
        out = self.output_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        image_grid(images[:32], cols=8, scale=2).save(out / f"eval_step_{self.step:06d}.png")

    # ---- checkpoints ---------------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N atomically: a temporary folder renamed into place once complete."""
        from safetensors.torch import save_file

        acc = self.accelerator
        final = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = self.checkpoint_dir / f".tmp_{CHECKPOINT_PREFIX}{self.step}_{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            save_file(self._lora_tensors(), tmp / "lora.safetensors")
            if self.sampling_params is not None:
                # Under peft names, so the moving average loads as a LoRA of its own (e.g. with `arr eval --lora`).
                with self.sampling_policy():
                    save_file(self._lora_tensors(), tmp / "sampling_lora.safetensors")
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                tmp / "optimizer.pt",
            )
            _save_rng_state(tmp)
            state = {
                "step": self.step,
                "data_position": self.step * self.args.prompts_per_step,
                "phase_seconds": self.phase_seconds,
                "last_eval_score": self._last_eval_score,
                "judge_cache": str(
                    getattr(getattr(getattr(self.reward, "judge", None), "cache", None), "path", "") or ""
                ),
                "num_processes": acc.num_processes,
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            with open(tmp / "trainer_state.json", "rb") as f:
                os.fsync(f.fileno())
            if (
                final.exists()
            ):  # re-saving a step: move the old copy aside first, never half-delete it in place
                old = self.checkpoint_dir / f".old_{final.name}_{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            self._prune_checkpoints()
        acc.wait_for_everyone()
        return final

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        """The LoRA weights now in the model, copied to CPU (peft's state dict aliases the live parameters,
        which `sampling_policy()` swaps)."""
        return {k: v.detach().cpu().clone() for k, v in self.policy.lora_state_dict().items()}

    def _prune_checkpoints(self) -> None:
        ckpts = sorted(
            _complete_checkpoints(self.checkpoint_dir), key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :])
        )
        for old in ckpts[: -self.args.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self, which: str) -> None:
        """Resume from 'latest' or a checkpoint folder; a checkpoint asked for by name must exist."""
        from safetensors.torch import load_file

        if which == "latest":
            ckpts = sorted(
                _complete_checkpoints(self.checkpoint_dir),
                key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]),
            )
            if not ckpts:
                return  # nothing to resume: a fresh run (the flag is safe to leave in a launcher)
            path = ckpts[-1]
        else:
            path = Path(which)
            if not path.is_absolute() and not path.exists():
                path = self.checkpoint_dir / which
            if not (path / "trainer_state.json").is_file():
                raise ConfigError(f"resume_from_checkpoint={which!r}: no complete checkpoint at {path}")
        state = json.loads((path / "trainer_state.json").read_text())
        device = str(self.policy.device)
        if self.sampling_params is not None:
            ema_path = path / "sampling_lora.safetensors"
            if not ema_path.is_file():
                raise ConfigError(
                    f"{path} has no sampling_lora.safetensors: it was saved without forward_ema_decay, so it "
                    "cannot resume a run that samples with a moving average"
                )
            self.policy.load_lora_state_dict(load_file(ema_path, device=device))
            self.sampling_params = [p.detach().clone() for p in self.params]
        self.policy.load_lora_state_dict(load_file(path / "lora.safetensors", device=device))
        opt = torch.load(path / "optimizer.pt", map_location=self.policy.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        _load_rng_state(path)
        self.step = int(state["step"])
        self.phase_seconds.update(state.get("phase_seconds", {}))
        self._last_eval_score = state.get("last_eval_score")

    # ---- signals -------------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._previous_handlers = {}

        def handler(signum, frame):  # finish the step, checkpoint, stop
            self._stop_signal = signum

        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread (a notebook worker, say) signals cannot be caught: keep default behaviour.
            with contextlib.suppress(ValueError):
                self._previous_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, h in getattr(self, "_previous_handlers", {}).items():
            signal.signal(sig, h)


def _complete_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / "trainer_state.json").is_file()
    ]


def _save_rng_state(folder: Path) -> None:
    """RNG states without pickle: torch's as safetensors, numpy's and Python's as JSON."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(tensors, folder / "rng.safetensors")
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    (folder / "rng.json").write_text(
        json.dumps(
            {
                "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "python": [version, list(internal), py_gauss],
            }
        )
    )


def _load_rng_state(folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(folder / "rng.safetensors")
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    data = json.loads((folder / "rng.json").read_text())
    name, keys, pos, has_gauss, gauss = data["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = data["python"]
    random.setstate((version, tuple(internal), py_gauss))


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint's step (they are logged again); a fresh run starts empty."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut by a crash
        if step > 0 and row.get("step", 0) <= step:
            keep.append(line)
    # Write beside and rename: a crash mid-rewrite must not lose the rows logged before the checkpoint.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def _flat_scalars(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


def _cat_rollouts(chunks: list[Rollout]) -> Rollout:
    if len(chunks) == 1:
        return chunks[0]
    return Rollout(
        _cat_trajectories([c.trajectory for c in chunks]),
        [im for c in chunks for im in c.images],
        [r for c in chunks for r in c.records],
        chunks[0].group_size,
    )


def _merge_infos(infos: list[dict[str, Any]], weights: list[float]) -> dict[str, Any]:
    """Reward infos of parts (chunks, ranks) as one: counts (ints) add up, rates (floats) are averaged weighted by
    the parts' groups or pairs; a part lacking a key, or holding NaN for it, carries no weight for that key."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for info in infos for k in info):  # every part's keys, in first-seen order
        values = [(info[key], w) for info, w in zip(infos, weights, strict=True) if key in info]
        if all(isinstance(v, int) and not isinstance(v, bool) for v, _ in values):
            out[key] = sum(v for v, _ in values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in values):
            finite = [(float(v), w) for v, w in values if math.isfinite(v)]
            total = sum(w for _, w in finite)
            if total > 0:
                out[key] = sum(v * w for v, w in finite) / total
            else:
                out[key] = sum(v for v, _ in finite) / len(finite) if finite else float("nan")
        else:
            out[key] = values[-1][0]
    return out


def _cat_trajectories(trajs: list[Trajectory]) -> Trajectory:
    """Concatenate trajectories sampled in chunks with the same settings."""
    from dataclasses import replace

    from arr.policies.base import Conditioning

    first = trajs[0]
    conds = [t.cond for t in trajs]
    cond = Conditioning(
        prompts=[p for c in conds for p in c.prompts],
        embeds={k: torch.cat([c.embeds[k] for c in conds]) for k in first.cond.embeds},
        negative=None
        if first.cond.negative is None
        else {k: torch.cat([c.negative[k] for c in conds]) for k in first.cond.negative},
        source_images=None
        if first.cond.source_images is None
        else [im for c in conds for im in c.source_images],
        extras=dict(first.cond.extras),
    )
    offsets = np.cumsum([0] + [int(t.group_ids.max()) + 1 for t in trajs[:-1]])
    return replace(
        first,
        latents=torch.cat([t.latents for t in trajs]),
        log_probs=torch.cat([t.log_probs for t in trajs]),
        cond=cond,
        group_ids=torch.cat([t.group_ids + int(o) for t, o in zip(trajs, offsets, strict=True)]),
    )
