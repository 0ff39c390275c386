"""Objectives: the update RPO makes from a judged rollout, as small strategy objects picked by name.

An objective turns a rollout, its advantages and a micro-batch of samples into named per-sample terms, one dict per
trained timestep (`loss_terms` is a generator). The trainer backwards each dict's "loss" before asking for the
next, so memory holds one timestep's graph at a time, and scales it so that a minibatch's gradient is that of the
mean loss over its (sample, timestep) terms, however the minibatch is split into micro-batches and processes.
Every other term is a statistic for metrics.jsonl, reduced over timesteps, micro-batches, minibatches and
processes as the objective declares in `statistics` (`Statistics` does the bookkeeping).

- `PolicyGradient` ("policy_gradient"): the paper's PPO-clipped ratio of SDE transition log-probabilities plus
  beta x KL(policy || LoRA-disabled reference): the Gaussian KL of the transition means, or (`kl_estimator:
  sample`, as the authors' release computes it) log p_policy(x') - log p_ref(x') at the stored transition;
  optionally on a random subset of each sample's transitions (`timestep_sample_fraction`, the release's
  timestep_fraction). The release's whole update is this class with `rpo_preset: paper`'s settings.
- `ForwardNFT` ("forward"): DiffusionNFT's negative-aware, reward-weighted flow matching on the final samples.

A new objective subclasses `Objective` (or one of these) and is passed to the trainer
(`RPOTrainer(..., objective=MyObjective())`), or registered for `RPOConfig.objective` with
`register_objective("my_objective", MyObjective)`; the trainer needs no change.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from arr.policies.base import FlowPolicy, Trajectory
from arr.policies.sde import gaussian_kl
from arr.rpo.rollout import Rollout
from arr.rpo.seeds import FORWARD_DRAWS_SALT, TIMESTEP_SUBSET_SALT, seed_for

#: How a named statistic is reduced over all the per-sample terms of one RPO step (its timesteps, micro-batches,
#: minibatches, inner epochs and processes): the mean per (sample, timestep) term, the total, or the maximum.
Reduction = Literal["mean", "sum", "max"]

# The statistics every objective logs (metrics.jsonl keeps these columns whatever the update).
BASE_STATISTICS: dict[str, Reduction] = {
    "loss": "mean",
    "policy_loss": "mean",
    "kl": "mean",
    "clip_frac": "mean",
}

# The lowest noise level the forward objective trains at. torch.rand can return exactly 0, and with
# forward_t_min 0 that would put x_t at the clean sample, a noise level the sampler never visits (its last velocity
# is taken at sigma = 1 / num_steps) and flow-matching pretraining never draws.
MIN_NOISE_LEVEL = 1e-3


@dataclass
class TrainingContext:
    """What an objective uses of the trainer that runs it (given to `Objective.bind`)."""

    policy: FlowPolicy
    seed: int
    #: images per forward pass without gradients, for work an objective does outside `loss_terms` (e.g. fixed
    #: targets): the sampling batch size, since such passes keep no activations
    micro_batch_size: int
    #: the accelerator's autocast context (mixed precision)
    autocast: Callable[[], AbstractContextManager[Any]]
    #: within it the policy holds the weights that sampled the rollout (see `Objective.sampling_ema_decay`)
    sampling_policy: Callable[[], AbstractContextManager[None]]
    #: whether every process must run the same forward and backward passes: under a sharded engine (FSDP) each
    #: pass gathers the weights collectively, so a process may not skip a timestep that another one runs
    lockstep: bool = False


class Objective(ABC):
    """The contract of an update: per-sample terms per trained timestep, with declared statistics.

    The trainer calls `bind` once; then, per rollout, `prepare`, `loss_terms` for each micro-batch of each
    minibatch, and `release`. Subclasses are dataclasses of their settings; `from_config` fills them from the
    `RPOConfig` fields of the same names, so `RPOConfig.beta` reaches every objective that has a `beta`.
    """

    #: Each statistic `loss_terms` yields and how it is reduced (see `Reduction`). "loss" is the one that trains.
    statistics: ClassVar[dict[str, Reduction]] = BASE_STATISTICS
    #: Whether the loss uses transition log-probabilities, which only a stochastic sampler (eta > 0) has.
    needs_log_probs: ClassVar[bool] = False

    _context: TrainingContext | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Objective:
        """An instance whose settings are the same-named entries of `config` (`RPOConfig.to_dict()`)."""
        names = [f.name for f in dataclasses.fields(cls) if f.init] if dataclasses.is_dataclass(cls) else []
        return cls(**{name: config[name] for name in names if name in config})

    def bind(self, context: TrainingContext) -> None:
        """Attach the trainer's policy, seed and contexts; `RPOTrainer` calls this once."""
        if "loss" not in self.statistics:
            raise TypeError(f"{type(self).__name__}.statistics must declare 'loss', the term that is trained")
        self._context = context

    @property
    def context(self) -> TrainingContext:
        if self._context is None:
            raise RuntimeError(
                f"{type(self).__name__} is not bound to a trainer: RPOTrainer binds it on creation"
            )
        return self._context

    @property
    def sampling_ema_decay(self) -> float:
        """The per-step decay of a moving average of the LoRA that samples the rollouts (0: the LoRA samples)."""
        return 0.0

    def prepare(self, rollout: Rollout) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Compute what stays fixed while `rollout` trains; the trainer calls it before the rollout's first update."""

    def release(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Drop what `prepare` kept; the trainer calls it after the rollout's last update, before the next sample."""

    @abstractmethod
    def timesteps(self, rollout: Rollout) -> int:
        """How many term dicts `loss_terms` yields per sample (the loss is averaged over them)."""

    def num_terms(self, rollout: Rollout, members: Tensor) -> int:
        """How many term dicts `loss_terms(rollout, advantages, members)` yields. The trainer synchronises gradients
        over processes in the backward pass of a minibatch's last term, so it must know which one that is before
        asking for it; by default every timestep yields one."""
        return self.timesteps(rollout)

    @abstractmethod
    def loss_terms(
        self, rollout: Rollout, advantages: Tensor, members: Tensor
    ) -> Iterator[dict[str, Tensor]]:
        """Per timestep, the per-sample terms [K] of the samples of `members` (indices into the rollout) that train
        at it (all K = len(members) unless the objective trains each sample on a subset of `timesteps(rollout)`
        timesteps): "loss" carrying the gradient, and the declared statistics. `advantages` is [B], for the whole
        rollout."""


def _at_least_float32(x: Tensor) -> Tensor:
    """Half-precision outputs are upcast to float32 for the loss; float32 and float64 stay as they are."""
    return x if x.dtype == torch.float64 else x.float()


@dataclass
class PolicyGradient(Objective):
    """The paper's update: per stochastic transition, the PPO-clipped importance ratio of its log-probability under
    the current weights to the one recorded while sampling, plus `beta` x KL to the LoRA-disabled reference.

    `kl_estimator`: "analytic", the KL between the two Gaussian transitions (`gaussian_kl` of their means), or
    "sample", log p_policy(x') - log p_ref(x') at the stored transition x' (the authors' release; its expectation
    under the sampling policy is the same KL while the update is on-policy, and it is reduced over dimensions as
    the log-probabilities are). `timestep_sample_fraction` < 1 trains each sample on floor(fraction x T') of its T'
    stochastic transitions, a subset drawn per sample and step (the release's per-sample random permutation, cut
    to its timestep_fraction); the order a sample's transitions are back-propagated in does not change the
    accumulated gradient, so only the subset matters.
    """

    statistics: ClassVar[dict[str, Reduction]] = {**BASE_STATISTICS, "ratio_mean": "mean", "ratio_max": "max"}
    needs_log_probs: ClassVar[bool] = True

    clip_range: float = 0.2
    beta: float = 0.01
    kl_estimator: Literal["analytic", "sample"] = "analytic"
    timestep_sample_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.kl_estimator not in ("analytic", "sample"):
            raise ValueError(f"kl_estimator must be 'analytic' or 'sample', got {self.kl_estimator!r}")
        if not 0.0 < self.timestep_sample_fraction <= 1.0:
            raise ValueError(
                f"timestep_sample_fraction must be in (0, 1], got {self.timestep_sample_fraction}"
            )

    def timesteps(self, rollout: Rollout) -> int:
        n = len(rollout.trajectory.train_steps)
        return n if self.timestep_sample_fraction >= 1.0 else max(1, int(n * self.timestep_sample_fraction))

    def trained_steps(self, rollout: Rollout, members: Tensor) -> Tensor:
        """[len(members), T'] bool: which of its T' stochastic transitions each sample of `members` trains.

        A subset is drawn from a generator seeded by (seed, step, global group index, member of the group), so it
        does not depend on how samples are split over processes or micro-batches."""
        n = len(rollout.trajectory.train_steps)
        k = self.timesteps(rollout)
        chosen = torch.zeros(len(members), n, dtype=torch.bool)
        if k == n:
            return chosen.fill_(True)
        g = rollout.group_size
        for row, b in enumerate(members.tolist()):
            gen = torch.Generator("cpu").manual_seed(
                seed_for(
                    self.context.seed,
                    rollout.step,
                    rollout.group_indices[b // g],
                    b % g,
                    TIMESTEP_SUBSET_SALT,
                )
            )
            chosen[row, torch.randperm(n, generator=gen)[:k]] = True
        return chosen

    def num_terms(self, rollout: Rollout, members: Tensor) -> int:
        if self.context.lockstep:
            return len(rollout.trajectory.train_steps)
        return int(self.trained_steps(rollout, members).any(dim=0).sum())

    def loss_terms(
        self, rollout: Rollout, advantages: Tensor, members: Tensor
    ) -> Iterator[dict[str, Tensor]]:
        ctx, traj = self.context, rollout.trajectory
        policy = ctx.policy
        chosen = self.trained_steps(rollout, members)
        for pos, j in enumerate(traj.train_steps):
            # In lockstep every member runs every timestep and the terms keep the members trained there: the
            # forward and backward passes are then the same on every process, whichever subsets they drew.
            rows = chosen[:, pos]
            sub = members if ctx.lockstep else members[rows]
            if len(sub) == 0:
                continue
            adv = advantages[sub].to(policy.device)
            old = traj.log_probs[sub.to(traj.log_probs.device), j]
            with ctx.autocast():
                tr = policy.transition(traj, j, sub)
                if self.beta > 0:
                    with torch.no_grad(), policy.reference():
                        ref = policy.transition(traj, j, sub)
            # In the transition's precision (float32, float64 for float64 models): log-probs are float64 sums.
            ratio = torch.exp((tr.log_prob - old.to(tr.log_prob.device)).to(tr.mean.dtype))
            clipped_ratio = torch.clamp(ratio, 1.0 - self.clip_range, 1.0 + self.clip_range)
            policy_loss = torch.maximum(-adv * ratio, -adv * clipped_ratio)
            if self.beta == 0:
                kl = torch.zeros_like(policy_loss)
            elif self.kl_estimator == "sample":
                kl = (tr.log_prob - ref.log_prob).to(tr.mean.dtype)
            else:
                kl = gaussian_kl(tr.mean, ref.mean, tr.std, reduction=traj.reduction).to(tr.mean.dtype)
            terms = {
                "loss": policy_loss + self.beta * kl,
                "policy_loss": policy_loss,
                "kl": kl,
                "clip_frac": ((ratio - 1.0).abs() > self.clip_range).float(),
                "ratio_mean": ratio,
                "ratio_max": ratio,
            }
            if ctx.lockstep and not bool(rows.all()):
                terms = {k: v[rows.to(v.device)] for k, v in terms.items()}
            yield terms


@dataclass
class ForwardTargets:
    """The forward objective's fixed inputs for a rollout: per sample and draw k, the noise level t [B, K], the
    noised sample x_t = (1 - t) x_0 + t * noise [B, K, ...], the flow-matching target noise - x_0, and the
    velocities of the sampling policy (v_old) and of the reference (v_ref, for the KL) at x_t."""

    t: Tensor
    x_t: Tensor
    target: Tensor
    v_old: Tensor
    v_ref: Tensor | None


@dataclass
class ForwardNFT(Objective):
    """The negative-aware flow-matching loss of DiffusionNFT on the final samples, plus `beta` x velocity KL.

    The advantage becomes an optimality weight r = (1 + clamp(A, -1, 1)) / 2. With the implicit policies
    v+ = v_old + b (v - v_old) and v- = v_old - b (v - v_old) (b = forward_beta), the loss is
    r |v+ - target|^2 + (1 - r) |v- - target|^2: at v = v_old its gradient is 2 b (2r - 1)(v_old - target), an
    advantage-weighted flow-matching gradient, and its curvature 2 b^2 keeps losers from diverging. It needs no
    log-probabilities, so its gradient has the variance of pretraining's regression loss instead of the SDE noise
    the policy gradient carries, and any sampler works (eta 0 included).
    """

    beta: float = 0.01
    forward_beta: float = 1.0
    forward_timesteps: int = 2
    forward_t_min: float = 0.0
    forward_ema_decay: float = 0.0

    _prepared: tuple[Rollout, ForwardTargets] | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def sampling_ema_decay(self) -> float:
        return self.forward_ema_decay

    def timesteps(self, rollout: Rollout) -> int:
        return self.forward_timesteps

    @torch.no_grad()
    def prepare(self, rollout: Rollout) -> None:
        self._prepared = (rollout, self._targets(rollout))

    def release(self) -> None:
        self._prepared = None

    def targets(self, rollout: Rollout) -> ForwardTargets:
        """The fixed inputs of `rollout` (computed by `prepare`, or now if it was not called for this rollout)."""
        if self._prepared is None or self._prepared[0] is not rollout:
            self.prepare(rollout)
        return self._prepared[1]

    def _targets(self, rollout: Rollout) -> ForwardTargets:
        """Draws from a generator seeded by (seed, step, global group index), so they do not depend on how samples
        are split over processes. A group shares its draws (common random numbers): the regression noise, the same
        for every member, cancels in the advantage-weighted sum instead of swamping the differences between the
        images."""
        ctx, traj = self.context, rollout.trajectory
        device = ctx.policy.device
        x0 = traj.final.to(device)
        k, t_min = self.forward_timesteps, self.forward_t_min
        ts, noises = [], []
        for gid in rollout.group_indices:
            gen = torch.Generator("cpu").manual_seed(
                seed_for(ctx.seed, rollout.step, gid, FORWARD_DRAWS_SALT)
            )
            ts.append(t_min + (1.0 - t_min) * torch.rand(k, generator=gen))
            noises.append(torch.randn((k, *x0.shape[1:]), generator=gen))
        t = torch.stack(ts).clamp_min(MIN_NOISE_LEVEL).repeat_interleave(rollout.group_size, dim=0).to(device)
        noise = torch.stack(noises).repeat_interleave(rollout.group_size, dim=0).to(device)  # [B, K, ...]
        tb = t.view(*t.shape, *([1] * (x0.dim() - 1)))
        x_t = (1.0 - tb) * x0[:, None] + tb * noise
        with ctx.sampling_policy():
            v_old = self._velocities(traj, x_t, t)
        v_ref = None
        if self.beta > 0:
            with ctx.policy.reference():
                v_ref = self._velocities(traj, x_t, t)
        return ForwardTargets(t=t, x_t=x_t, target=noise - x0[:, None], v_old=v_old, v_ref=v_ref)

    def _velocities(self, traj: Trajectory, x_t: Tensor, t: Tensor) -> Tensor:
        """The policy's velocity at x_t [B, K, ...] and noise levels t [B, K]: every (sample, level) pair, in
        forward passes of `micro_batch_size` (a CPU forward costs a quarter less per image at 32 than at 16)."""
        ctx = self.context
        b, k = t.shape
        flat_x, flat_t = x_t.reshape(b * k, *x_t.shape[2:]), t.reshape(b * k)
        sample = torch.arange(b).repeat_interleave(k)  # pair i is sample i // k at level i % k
        # float32, or float64 for a float64 policy; half-precision outputs upcast
        out = torch.empty_like(flat_x)
        for start in range(0, b * k, ctx.micro_batch_size):
            idx = torch.arange(start, min(start + ctx.micro_batch_size, b * k))
            with ctx.autocast():
                out[idx] = ctx.policy.velocity(
                    flat_x[idx], flat_t[idx], traj.cond.index(sample[idx]), traj.guidance_scale, traj.extras
                )
        return out.view_as(x_t)

    def loss_terms(
        self, rollout: Rollout, advantages: Tensor, members: Tensor
    ) -> Iterator[dict[str, Tensor]]:
        ctx, traj = self.context, rollout.trajectory
        fixed = self.targets(rollout)
        b = self.forward_beta
        adv = advantages[members].to(ctx.policy.device)
        r = 0.5 * (1.0 + adv.float().clamp(-1.0, 1.0))
        cond = traj.cond.index(members)
        dims = tuple(range(1, fixed.x_t.dim() - 1))
        for j in range(self.forward_timesteps):
            with ctx.autocast():
                v = ctx.policy.velocity(
                    fixed.x_t[members, j], fixed.t[members, j], cond, traj.guidance_scale, traj.extras
                )
            v = _at_least_float32(v)
            v_old, target = fixed.v_old[members, j], fixed.target[members, j]
            pos = ((v_old + b * (v - v_old) - target) ** 2).mean(dim=dims)
            neg = ((v_old - b * (v - v_old) - target) ** 2).mean(dim=dims)
            policy_loss = r * pos + (1.0 - r) * neg
            if fixed.v_ref is not None:
                kl = ((v - fixed.v_ref[members, j]) ** 2).mean(dim=dims)
            else:
                kl = torch.zeros_like(policy_loss)
            # No ratio to clip: clip_frac is 0, logged as every objective logs it.
            yield {
                "loss": policy_loss + self.beta * kl,
                "policy_loss": policy_loss,
                "kl": kl,
                "clip_frac": torch.zeros_like(policy_loss),
            }


class Statistics:
    """Named statistics of an update, accumulated from yielded per-sample terms and reduced as declared.

    Micro-batches, minibatches and processes each keep their own and are merged in order, so sums add up the same
    way however the work was split.
    """

    def __init__(self, reductions: Mapping[str, Reduction]) -> None:
        self.reductions = dict(reductions)
        self.totals = {k: -math.inf if r == "max" else 0.0 for k, r in self.reductions.items()}
        self.count = 0  # (sample, timestep) terms seen

    @torch.no_grad()
    def add(self, terms: Mapping[str, Tensor]) -> None:
        """Add one timestep's per-sample terms (none: a timestep no sample of a lockstep micro-batch trains at)."""
        if terms["loss"].shape[0] == 0:
            return
        for key, reduction in self.reductions.items():
            if key in terms:
                value = terms[key]
                if reduction == "max":
                    self.totals[key] = max(self.totals[key], value.max().item())
                else:
                    self.totals[key] += value.sum().item()
        self.count += int(terms["loss"].shape[0])

    def merge(self, other: Statistics) -> None:
        for key, reduction in self.reductions.items():
            if reduction == "max":
                self.totals[key] = max(self.totals[key], other.totals[key])
            else:
                self.totals[key] += other.totals[key]
        self.count += other.count

    def reduce(
        self,
        sum_over_processes: Callable[[list[float]], list[float]],
        max_over_processes: Callable[[list[float]], list[float]],
    ) -> dict[str, float]:
        """The statistics over every process, in declared order; 0 for a step that trained nothing."""
        summed = [k for k, r in self.reductions.items() if r != "max"]
        maxed = [k for k, r in self.reductions.items() if r == "max"]
        sums = sum_over_processes([*(self.totals[k] for k in summed), float(self.count)])
        maxes = dict(
            zip(maxed, max_over_processes([self.totals[k] for k in maxed]) if maxed else [], strict=True)
        )
        count = max(sums[-1], 1.0)
        values = dict(zip(summed, sums[:-1], strict=True))
        out = {}
        for key, reduction in self.reductions.items():
            if reduction == "max":
                out[key] = maxes[key] if math.isfinite(maxes[key]) else 0.0
            else:
                out[key] = values[key] / count if reduction == "mean" else values[key]
        return out


OBJECTIVES: dict[str, type[Objective]] = {"policy_gradient": PolicyGradient, "forward": ForwardNFT}


def register_objective(name: str, cls: type[Objective]) -> None:
    """Make `cls` available as `RPOConfig.objective: name` (its settings come from `from_config`)."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register_objective({name!r}, ...) needs an Objective subclass, got {cls!r}")
    OBJECTIVES[name] = cls


def make_objective(name: str, config: Mapping[str, Any]) -> Objective:
    """The registered objective `name`, set up from `config` (`RPOConfig.to_dict()`)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name].from_config(config)


__all__ = [
    "BASE_STATISTICS",
    "OBJECTIVES",
    "ForwardNFT",
    "ForwardTargets",
    "Objective",
    "PolicyGradient",
    "Reduction",
    "Statistics",
    "TrainingContext",
    "make_objective",
    "register_objective",
]
