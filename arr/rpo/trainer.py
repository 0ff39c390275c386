"""RPOTrainer: Rubric Policy Optimization for flow-matching policies.

One RPO step runs five named stages, each a method that a subclass may override:

    sample            G trajectories per prompt (a `Rollout`, which carries each group's global index and its step)
    judge             the reward (pairwise rubric judgments, or pointwise rubric scores) per sample
    compute_advantages  pairwise: the reward itself (no normalisation); pointwise: group-normalised; clamped
    optimize          the objective's update (arr/rpo/objectives.py): "policy_gradient" (the paper: PPO-clipped
                      ratio + beta * KL to the LoRA-disabled reference on transition means) or "forward" (the
                      negative-aware flow-matching loss of DiffusionNFT on the final images), over minibatches
    evaluate          held-out prompts sampled by the ODE, scored by the evaluation function

With a remote judge, `sample_and_judge` sends each chunk of groups to the judge as soon as it is sampled and
samples the next chunk meanwhile (`overlap_judging`), so network latency hides behind sampling.

Distribution is accelerate's: the policy's network, the optimizer and the scheduler go through
`accelerator.prepare`. Under DDP the network is wrapped and its bucketed all-reduce averages the LoRA gradients;
under FSDP (version 2) it is sharded in place, the frozen base included, and the LoRA gradients are
reduce-scattered. An optimizer step spans many backward passes (every trained timestep of every micro-batch), so
all but its last run under `accelerator.no_sync`: one synchronisation per optimizer step. Each process samples and
judges its share of the prompts, and N processes with the same global batch compute the same update as one. Every
group's noise comes from a generator seeded by (seed, step, global group index), so results do not depend on how
groups are split over processes or resumed. Under FSDP every forward and backward pass gathers weights
collectively, so processes run in lockstep: the same number of passes, padded with zero-weight ones where a
process has fewer samples. Checkpoints go through `accelerator.save_state` (arr/rpo/checkpoint.py has the layout).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from arr.backends.base import JudgeUnavailableError
from arr.data import PromptRecord, as_record
from arr.jsonl import append_jsonl, read_jsonl
from arr.policies.base import FlowMatchingPolicy, FlowPolicy
from arr.rewards import GroupReward
from arr.rpo.checkpoint import (
    LORA_FILE,
    SAMPLING_LORA_FILE,
    STATE_FILE,
    TRACKER_PROJECT,
    CheckpointError,
    checkpoint_path,
    clear_run,
    clear_stale,
    clear_temporary,
    finish_checkpoint,
    is_legacy,
    load_legacy_rng_state,
    prune_checkpoints,
    read_legacy_checkpoint,
    read_state,
    resolve_checkpoint,
    run_outputs,
    temporary_path,
    truncate_metrics,
)
from arr.rpo.config import ConfigError, RPOConfig
from arr.rpo.model_card import MOVING_AVERAGE_DIR, model_card, run_settings, write_model_card
from arr.rpo.objectives import Objective, Statistics, TrainingContext, make_objective
from arr.rpo.rollout import Rollout, cat_rollouts
from arr.rpo.seeds import DATA_ORDER_SALT, EVAL_NOISE_SALT, LORA_INIT_SALT, seed_for
from arr.stats import PER_PROMPT_SCORES, paired_change_se

logger = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """Training stopped on purpose: the judge failed too often (a checkpoint was written first), or an update was
    not finite (`NonFiniteLossError`)."""


class NonFiniteLossError(TrainingStopped):
    """An update's loss or gradient norm was NaN or infinite (`nan_policy: stop`); that step was not checkpointed."""


# Sample grids: training groups per grid, and the width in pixels of each image in it (small images are enlarged
# with sharp pixels so that a caption fits under them, large ones shrunk).
GRID_GROUPS = 8
GRID_CELL = 128

# An evaluation function maps (records, images) to metrics; "eval_score" is the headline number. It may also
# return per-prompt scores under `arr.stats.PER_PROMPT_SCORES`: later evaluations then log their change since the
# run's first one with a paired standard error (`eval_change`, `eval_change_se`), which on the same prompts and
# seeds is far smaller than that of two independent evaluations.
Evaluator = Callable[[Sequence[PromptRecord], Sequence[Image.Image]], dict[str, Any]]


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


class RPOTrainer:
    """Fine-tune a `FlowPolicy` with LoRA on rubric rewards.

    Args:
        policy: the flow policy (LoRA is added here unless it already has trainable parameters).
        reward: a `GroupReward` (e.g. `RubricPairwiseReward(judge)`, or `RubricPointwiseReward` for GRPO).
        args: `RPOConfig`.
        train_dataset: rows with "prompt" and "rubric" (and "category", "source_image" for editing).
        eval_dataset: held-out rows; evaluated with `evaluator` every `eval_steps`.
        evaluator: (records, images) -> metrics with "eval_score"; defaults to the reward's judge pointwise score.
        monitor: (records, images) -> metrics of training samples (one per group), every `args.monitor_steps`
            steps, logged as `train/<metric>`; e.g. an exact judge beside the training judge, to catch reward hacking.
        callbacks: `TrainerCallback`s.
        lora_target_modules: LoRA target names (default: the policy's).
        accelerator: an `accelerate.Accelerator` (created from `args` when None); the trainer prepares the policy's
            network, its optimizer and scheduler with it. DDP, FSDP version 2 and one process are supported.
        run_config: what `config.yaml` records (default: `args`).
        objective: the update, an `arr.rpo.objectives.Objective` (default: the one `args.objective` names, set up
            from `args`); an objective given here keeps its own settings.
    """

    def __init__(
        self,
        policy: FlowPolicy,
        reward: GroupReward,
        args: RPOConfig,
        train_dataset: Sequence[Any],
        eval_dataset: Sequence[Any] | None = None,
        evaluator: Evaluator | None = None,
        monitor: Evaluator | None = None,
        callbacks: Sequence[TrainerCallback] = (),
        lora_target_modules: Sequence[str] | None = None,
        accelerator: Any = None,
        run_config: dict[str, Any] | None = None,
        objective: Objective | None = None,
    ) -> None:
        if not isinstance(reward, GroupReward):
            raise TypeError(
                f"reward must be an arr.rewards.GroupReward (subclass it and implement __call__), got "
                f"{type(reward).__name__}"
            )
        self.args = args
        self.policy = policy
        self.reward = reward
        self.train_records = [as_record(r, f"train_dataset[{i}]") for i, r in enumerate(train_dataset)]
        self.eval_records = [as_record(r, f"eval_dataset[{i}]") for i, r in enumerate(eval_dataset or [])]
        if not self.train_records:
            raise ConfigError("train_dataset is empty: RPO needs prompts with rubrics")
        self.evaluator = evaluator or self._default_evaluator
        self.monitor = monitor
        self.callbacks = list(callbacks)
        self.run_config = run_config or {"rpo": args.to_dict()}
        self.output_dir = Path(args.output_dir)
        self.objective = (
            objective if objective is not None else make_objective(args.objective, args.to_dict())
        )
        if args.eta == 0 and self.objective.needs_log_probs:
            raise ConfigError(
                f"RPOConfig.eta=0.0: {type(self.objective).__name__} trains on transition log-probabilities, "
                "which the deterministic (eta 0) sampler does not have; use eta > 0"
            )

        self.accelerator = accelerator or _make_accelerator(args)
        acc = self.accelerator
        _check_engine(acc)
        if args.prompts_per_step % acc.num_processes:
            raise ConfigError(
                f"RPOConfig.prompts_per_step={args.prompts_per_step} must be divisible by the number of processes "
                f"({acc.num_processes}) so that every process judges whole groups; use a multiple of it"
            )
        self._prepare(self._trainable_parameters(lora_target_modules))
        # The weights that sample: a moving average of the trained LoRA when the objective keeps one (None: the
        # LoRA itself). Made after `prepare`, so that under FSDP they are shards like the parameters.
        self.sampling_params: list[torch.Tensor] | None = None
        if self.objective.sampling_ema_decay > 0:
            self.sampling_params = [p.detach().clone() for p in self.params]
        self.objective.bind(
            TrainingContext(
                policy,
                args.seed,
                args.sample_batch_size,
                acc.autocast,
                self.sampling_policy,
                lockstep=self.lockstep,
            )
        )
        acc.register_save_state_pre_hook(self._save_lora_hook)
        acc.register_load_state_pre_hook(self._load_lora_hook)
        self.step = 0
        self.phase_seconds: dict[str, float] = {"sample": 0.0, "judge": 0.0, "optimize": 0.0, "evaluate": 0.0}
        self._stop_signal: int | None = None
        self._last_eval_score: float | None = None
        # Wall seconds of the training iterations this process ran (since the start or the resume; evaluations
        # excluded) and of its last evaluation, for the time-left estimate (`remaining_seconds`).
        self._iteration_seconds: list[float] = []
        self._eval_wall_seconds = 0.0
        # The run's first evaluation, per prompt (stratum, score): the baseline later evaluations pair with.
        self._eval_baseline: list[tuple[str, float]] | None = None
        # The latest evaluation's (records, indices, images), for sample grids and the report.
        self.last_eval_images: tuple[list[PromptRecord], list[int], list[Image.Image]] | None = None
        # The latest training grid's (records, images, rewards, group size, step), for the report.
        self.last_train_samples: tuple[list[PromptRecord], list[Image.Image], list, int, int] | None = None
        self.history: list[dict[str, Any]] = []
        self._orders: dict[int, np.ndarray] = {}

    def _trainable_parameters(self, lora_target_modules: Sequence[str] | None) -> list[torch.nn.Parameter]:
        """The LoRA parameters, adding the adapter unless the policy already has trainable parameters."""
        args, policy = self.args, self.policy
        torch.manual_seed(seed_for(args.seed, LORA_INIT_SALT))  # LoRA init is identical on every process
        if not policy.trainable_parameters():
            policy.add_lora(args.lora_rank, args.lora_alpha, lora_target_modules)
        if args.gradient_checkpointing:
            policy.set_gradient_checkpointing(True)
        params = policy.trainable_parameters()
        if not params:
            raise ConfigError(f"{type(policy).__name__} has no trainable parameters after add_lora")
        return params

    def _prepare(self, params: list[torch.nn.Parameter]) -> None:
        """Hand the network, its optimizer and scheduler to accelerate: DDP wraps the network, FSDP shards it in
        place, one process keeps it as it is. The policy calls what `prepare` returned from then on."""
        from torch.nn.parallel import DistributedDataParallel

        args, acc = self.args, self.accelerator
        optimizer = torch.optim.AdamW(
            params,
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.weight_decay,
            eps=args.adam_epsilon,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: self._lr_factor(s))
        network, self.optimizer, _ = acc.prepare(self.policy.network, optimizer, scheduler)
        if isinstance(network, DistributedDataParallel):
            # The frozen base's buffers (position tables) never change; broadcasting them would also make every
            # forward pass a collective, and processes run different numbers of them.
            network.broadcast_buffers = False
        self.policy.set_network(network)
        self.network = network
        # Stepped here once per RPO step; accelerate's wrapper of it (which would step it once per process) only
        # saves and loads its state.
        self.scheduler = scheduler
        # FSDP replaced the parameters by sharded ones: the optimizer holds those now.
        self.params = self.policy.trainable_parameters()

    @property
    def lockstep(self) -> bool:
        """Whether processes must run the same forward and backward passes (FSDP: each one gathers weights)."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def _lr_factor(self, step: int) -> float:
        """The learning-rate multiplier after `step` RPO steps: linear warmup, then constant or decayed to 0 at
        `max_steps` (a decay lets the last steps settle instead of ending on a full-size, noisy step)."""
        args = self.args
        warmup = args.warmup_steps
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
            rng = np.random.default_rng(seed_for(self.args.seed, DATA_ORDER_SALT, epoch))
            self._orders[epoch] = rng.permutation(len(self.train_records))
        return self._orders[epoch]

    # ---- stages --------------------------------------------------------------------------------------------

    def _sde_steps(self) -> list[int]:
        """Which sampling steps are stochastic (and trained): the first ceil(fraction * T), the high-noise ones,
        without the last step unless `stochastic_last_step`. A deterministic last step is the Euler step to the
        predicted clean sample x - sigma * v, the image the release decodes, so its noise never reached the image
        there and it was not trained."""
        t = self.args.num_sampling_steps
        steps = range(max(1, math.ceil(self.args.train_timestep_fraction * t)))
        return [i for i in steps if self.args.stochastic_last_step or i < t - 1]

    @torch.no_grad()
    def sample(self, step: int) -> Rollout:
        """Sample G trajectories per prompt; each group's noise comes from its own (seed, step, index) generator."""
        return cat_rollouts(list(self.sample_chunks(step)))

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
            # A group's sampling noise: (seed, step, global group index), so it is the same on any process.
            gens = [torch.Generator("cpu").manual_seed(seed_for(args.seed, step, k)) for k, _ in chunk]
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
                    reduction=args.logprob_reduction,
                    convention=args.sde_convention,
                )
            images = self.policy.decode(traj.final)
            yield Rollout(traj, images, [r for _, r in chunk], args.group_size, [k for k, _ in chunk], step)

    @contextlib.contextmanager
    def sampling_policy(self) -> Iterator[None]:
        """The weights that sample: the moving average of the LoRA when the objective keeps one, else the LoRA.

        Passes without gradients inside it (an objective's fixed targets) run with the LoRA folded into the weights
        once for all of them (`FlowMatchingPolicy.folded_lora`), rather than once per velocity call."""
        if self.sampling_params is None:
            with self._folded_lora():
                yield
            return
        trained = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.sampling_params, strict=True):
                    p.copy_(s)
            with self._folded_lora():
                yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained, strict=True):
                    p.copy_(t)

    def _folded_lora(self) -> contextlib.AbstractContextManager[None]:
        if isinstance(self.policy, FlowMatchingPolicy):
            return self.policy.folded_lora()
        return contextlib.nullcontext()

    @torch.no_grad()
    def _update_sampling_policy(self) -> None:
        if self.sampling_params is not None:
            decay = self.objective.sampling_ema_decay
            for p, s in zip(self.params, self.sampling_params, strict=True):
                s.mul_(decay).add_(p.detach(), alpha=1.0 - decay)

    def overlaps_judging(self) -> bool:
        """Whether `sample_and_judge` judges chunks in the background (see `RPOConfig.overlap_judging`)."""
        mode = self.args.overlap_judging
        if mode != "auto":
            return mode == "on"
        return self.reward.remote

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
        return cat_rollouts(chunks), rewards, _merge_infos([i for _, i in results], weights), sample_seconds

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
        """The objective's update over `num_minibatches` optimizer steps per inner epoch; returns its statistics.

        The batch's groups are split into minibatches by global group index (so one process and many split it the
        same way); each minibatch's gradient is accumulated over its samples (in micro-batches of
        `train_batch_size`) and every trained timestep, synchronised over processes once, clipped and applied. From
        the second minibatch on the policy differs from the one that sampled, so the policy gradient's ratio moves
        off 1 and clipping acts.
        """
        args = self.args
        group_index = rollout.sample_group_indices()
        self.objective.prepare(rollout)
        totals = Statistics(self.objective.statistics)
        grad_norms: list[float] = []
        skipped = 0
        try:
            for epoch in range(args.num_inner_epochs):
                for m in range(args.num_minibatches):
                    members = torch.nonzero(mask & (group_index % args.num_minibatches == m)).flatten()
                    n_global, n_micro = self._minibatch_shape(len(members))
                    if n_global == 0:
                        continue
                    order = torch.randperm(
                        len(members),
                        generator=torch.Generator().manual_seed(seed_for(args.seed, rollout.step, epoch, m)),
                    )
                    # Each sample weighs num_processes / global samples: DDP and FSDP average gradients over
                    # processes, so the gradient is that of the mean loss over the whole minibatch, however it is
                    # split.
                    weight = self.accelerator.num_processes / n_global
                    stats = self.backward_batch(rollout, advantages, members[order], weight, n_micro)
                    grad_norm = self._clip_grad_norm()
                    if not self._update_is_finite(stats, grad_norm, m):
                        self.optimizer.zero_grad(set_to_none=True)
                        skipped += 1
                        continue
                    totals.merge(stats)  # a rank may hold none of this minibatch's groups, so no statistics
                    grad_norms.append(grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        finally:
            self.objective.release()
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
        self.scheduler.step()
        self._update_sampling_policy()
        out = totals.reduce(self._sum_over_processes, self._max_over_processes)
        out["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        out["optimizer_steps"] = len(grad_norms)
        if args.nan_policy == "skip_step":
            out["skipped_updates"] = skipped
        out["lr"] = lr
        return out

    def _minibatch_shape(self, num_members: int) -> tuple[int, int]:
        """(samples of the minibatch over all processes, micro-batches each process runs). A process runs at least
        one micro-batch, even without samples, to take part in the gradient synchronisation; under FSDP all run as
        many as the busiest one (every pass gathers weights collectively)."""
        n_global = int(self._sum_over_processes(float(num_members)))
        if self.accelerator.num_processes == 1:
            return n_global, 0
        if not self.lockstep:
            return n_global, 1
        return n_global, int(self._max_over_processes(float(-(-num_members // self.args.train_batch_size))))

    def backward_batch(
        self,
        rollout: Rollout,
        advantages: torch.Tensor,
        members: torch.Tensor,
        weight: float,
        num_micro_batches: int = 0,
    ) -> Statistics:
        """Accumulate the gradient of `weight` x the per-sample loss of samples `members`, averaged over the
        objective's timesteps, in micro-batches of `train_batch_size` (padded to `num_micro_batches` with
        zero-weight ones); returns the statistics of those terms.

        One backward per timestep: the objective yields a timestep's terms only after the last one's backward.
        Gradients are synchronised over processes in the last backward only; the others run under
        `accelerator.no_sync`, which DDP needs around the forward pass as well, so the trainer asks the objective
        how many terms come before asking for each one."""
        objective, size = self.objective, self.args.train_batch_size
        scale = weight / objective.timesteps(rollout)
        stats = Statistics(objective.statistics)
        parts = [members[start : start + size] for start in range(0, len(members), size)]
        real = len(parts)
        # A padding micro-batch recomputes sample 0 (any sample would do) and backwards it with weight 0.
        parts += [torch.zeros(1, dtype=torch.long)] * max(0, num_micro_batches - real)
        for i, part in enumerate(parts):
            count = objective.num_terms(rollout, part)
            if count < 1:
                raise RuntimeError(
                    f"{type(objective).__name__}.num_terms is {count}: a micro-batch trains >= 1 term"
                )
            terms_of = iter(objective.loss_terms(rollout, advantages, part))
            micro = Statistics(objective.statistics)
            for t in range(count):
                last = i == len(parts) - 1 and t == count - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(self.network):
                    terms = next(terms_of, None)
                    if terms is None:
                        raise RuntimeError(
                            f"{type(objective).__name__}.loss_terms yielded {t} terms where num_terms said {count}"
                        )
                    self.accelerator.backward(terms["loss"].sum() * (scale if i < real else 0.0))
                if i < real:
                    micro.add(terms)
            if next(terms_of, None) is not None:
                raise RuntimeError(
                    f"{type(objective).__name__}.loss_terms yielded more terms than num_terms said ({count})"
                )
            stats.merge(micro)
        return stats

    def _clip_grad_norm(self) -> float:
        """Clip the LoRA gradients (synchronised by now) to `max_grad_norm`; returns their norm before clipping."""
        norm = self.accelerator.clip_grad_norm_(self.params, self.args.max_grad_norm)
        full = getattr(norm, "full_tensor", None)  # FSDP: the norm of sharded gradients is a DTensor
        return float(full() if full is not None else norm)

    def _update_is_finite(self, stats: Statistics, grad_norm: float, minibatch: int) -> bool:
        """Whether the minibatch's loss and gradient norm are finite on every process; under `nan_policy: stop` a
        non-finite one ends training here, before the update is applied or anything of the step is saved."""
        loss = stats.totals["loss"]
        bad = self._max_over_processes(float(not (math.isfinite(loss) and math.isfinite(grad_norm))))
        if not bad:
            return True
        if self.args.nan_policy == "stop":
            raise NonFiniteLossError(
                f"step {self.step + 1}, minibatch {minibatch}: the loss ({loss:.4g} on this process) or the gradient "
                f"norm ({grad_norm:.4g}) is not finite, so training stopped before applying it (step {self.step + 1} "
                "was not checkpointed); lower learning_rate, or set nan_policy: skip_step to skip such updates"
            )
        return False

    def _sum_over_processes(self, values: float | list[float]) -> Any:
        single = not isinstance(values, list)
        t = torch.tensor([values] if single else values, dtype=torch.float64, device=self.policy.device)
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return float(t[0]) if single else t.tolist()

    def _max_over_processes(self, values: float | list[float]) -> Any:
        if self.accelerator.num_processes == 1:
            return values
        single = not isinstance(values, list)
        t = torch.tensor([values] if single else values, dtype=torch.float64, device=self.policy.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t[0]) if single else t.tolist()

    def _sum_named(self, values: dict[str, float]) -> dict[str, float]:
        """`values` summed over processes, by name (one all-reduce)."""
        return dict(zip(values, self._sum_over_processes(list(values.values())), strict=True))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out score: ODE samples (fixed seeds) of the eval prompts, scored by the evaluator."""
        args, acc = self.args, self.accelerator
        records = self.eval_records[: args.eval_num_prompts]
        if not records:
            return {}
        idx = list(range(acc.process_index, len(records), acc.num_processes))
        mine = len(idx)
        if (
            self.lockstep
        ):  # every process samples as many prompts (repeating its first), and drops the repeats
            idx += [idx[0] if idx else 0] * (-(-len(records) // acc.num_processes) - mine)
        images: list[Image.Image] = []
        for c in range(0, len(idx), args.sample_batch_size):
            chunk = idx[c : c + args.sample_batch_size]
            recs = [records[i] for i in chunk]
            cond = self.policy.encode(
                [r.prompt for r in recs],
                source_images=[r.source_image for r in recs] if recs[0].source_image is not None else None,
            )
            gens = [
                torch.Generator("cpu").manual_seed(seed_for(args.seed, EVAL_NOISE_SALT, i)) for i in chunk
            ]
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
        idx, images = idx[:mine], images[:mine]
        # Score on the main process over all prompts: per-category figures need every sample, not averages.
        from accelerate.utils import gather_object

        pairs = list(zip(idx, images, strict=True))
        if acc.num_processes > 1:
            pairs = gather_object(pairs)
        pairs.sort(key=lambda p: p[0])
        self.last_eval_images = (records, [i for i, _ in pairs], [im for _, im in pairs])
        if not acc.is_main_process:
            return {}
        return self.evaluator([records[i] for i, _ in pairs], [im for _, im in pairs])

    def _default_evaluator(
        self, records: Sequence[PromptRecord], images: Sequence[Image.Image]
    ) -> dict[str, float]:
        from arr.judge import ScoreItem

        judge = self.reward.judge
        if judge is None:
            raise ConfigError(
                f"no evaluator given and the reward ({type(self.reward).__name__}) has no judge to score held-out "
                "samples with; pass evaluator="
            )
        scores = judge.score_many(
            [ScoreItem(r.prompt, im, r.rubric, r.source_image) for r, im in zip(records, images, strict=True)]
        )
        vals = [s.score for s in scores if s.score is not None]
        out: dict[str, Any] = {"eval_score": float(np.mean(vals)) if vals else float("nan")}
        if len(vals) > 1:
            out["eval_score_se"] = float(np.std(vals, ddof=1) / math.sqrt(len(vals)))
        if vals and len(vals) == len(scores):  # a failed judgment leaves nothing to pair that prompt with
            out[PER_PROMPT_SCORES] = [("all", float(v)) for v in vals]
        return out

    # ---- the loop ------------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Run to `max_steps` (resuming first if asked); returns the final metrics row."""
        args, acc = self.args, self.accelerator
        metrics_path = self._begin()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=args.max_steps,
            initial=self.step,
            desc="RPO",
            disable=not acc.is_main_process,
            dynamic_ncols=True,
            # tqdm's own time left extrapolates the step rate only; the postfix's "left" counts the evaluations.
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        row: dict[str, Any] = {}
        try:
            while self.step < args.max_steps:
                start = time.perf_counter()
                row = self.training_step()
                self.step += 1
                row["step"] = self.step
                evaluated = self.evaluates_at(self.step)
                if evaluated:
                    row.update(self._evaluate_timed())
                if acc.is_main_process and (self.step % args.logging_steps == 0 or "eval_score" in row):
                    self._log_row(metrics_path, row)
                self._iteration_seconds.append(
                    time.perf_counter() - start - (self._eval_wall_seconds if evaluated else 0.0)
                )
                bar.update(1)
                bar.set_postfix(self._progress(row))
                if self.step % args.save_steps == 0 or self.step == args.max_steps:
                    self.save_checkpoint()
                self._stop_if_signalled()
        finally:
            bar.close()
            self._restore_signal_handlers()
        if acc.is_main_process:
            for cb in self.callbacks:
                cb.on_train_end(self, self.step)
        acc.end_training()
        return row

    def _begin(self) -> Path:
        """Prepare the run directory, resume if asked, record the config, and evaluate at step 0."""
        args, acc = self.args, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._claim_output_dir()
        if args.resume_from_checkpoint:
            self.load_checkpoint(args.resume_from_checkpoint)
            acc.wait_for_everyone()  # every process has read its checkpoint before anything is removed
            if acc.is_main_process:
                for path in clear_stale(self.checkpoint_dir, self.step):
                    logger.warning(
                        "removed %s: left by a killed save, or written after step %d", path, self.step
                    )
            acc.wait_for_everyone()
        if acc.is_main_process:
            import yaml

            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(self.run_config, sort_keys=False))
            if acc.log_with:
                acc.init_trackers(TRACKER_PROJECT, config=_flat_scalars(self.run_config))
        self._install_signal_handlers()
        metrics_path = self.output_dir / "metrics.jsonl"
        if acc.is_main_process:
            truncate_metrics(metrics_path, self.step)
        if self.step == 0 and self.eval_records:
            self._run_eval(metrics_path)
        return metrics_path

    def _claim_output_dir(self) -> None:
        """Refuse an output directory that holds another run, unless this run resumes it or overwrites it: a new
        run would otherwise mix its metrics with the old checkpoints (and `resume latest` resume the old run)."""
        args, acc = self.args, self.accelerator
        if args.resume_from_checkpoint:
            return
        # Every process reads the directory; only the main one clears it, and only when told to, so they agree.
        found = run_outputs(self.output_dir)
        if found and not args.overwrite_output_dir:
            raise ConfigError(
                f"output_dir {self.output_dir} holds another run ({', '.join(found)}); set overwrite_output_dir: "
                "true to replace it, resume_from_checkpoint: latest to continue it, or choose another output_dir"
            )
        if found and acc.is_main_process:
            clear_run(self.output_dir)
        acc.wait_for_everyone()

    def _log_row(self, metrics_path: Path, row: dict[str, Any]) -> None:
        # Callbacks run first so that they can add their own metrics (e.g. align/*) to the row.
        for cb in self.callbacks:
            cb.on_step_end(self, self.step, row)
            if "eval_score" in row:
                cb.on_evaluate(self, self.step, row)
        append_jsonl(metrics_path, row)
        self.history.append(row)
        if self.accelerator.log_with:
            self.accelerator.log(
                {k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.step
            )

    def evaluates_at(self, step: int) -> bool:
        """Whether the held-out evaluation runs after `step` (every `eval_steps`, and after the last step)."""
        args = self.args
        if not self.eval_records:
            return False
        return step == args.max_steps or bool(args.eval_steps and step % args.eval_steps == 0)

    def remaining_seconds(self) -> float | None:
        """Estimated wall seconds to `max_steps`: the steps left at the mean time of the steps this process has run
        so far, plus each evaluation left at the time the last one took (an evaluation of 300 prompts costs several
        steps, and they come at the start and the end); None before the first step."""
        if not self._iteration_seconds:
            return None
        steps_left = range(self.step + 1, self.args.max_steps + 1)
        per_step = sum(self._iteration_seconds) / len(self._iteration_seconds)
        evals_left = sum(self.evaluates_at(s) for s in steps_left)
        return len(steps_left) * per_step + evals_left * self._eval_wall_seconds

    def _progress(self, row: dict[str, Any]) -> dict[str, str]:
        postfix = {"reward": f"{row.get('reward_mean', float('nan')):.3f}"}
        if "reward/tie_rate" in row:  # symmetric pairwise rewards average 0; the tie rate says more
            postfix["ties"] = f"{row['reward/tie_rate']:.2f}"
        postfix["eval"] = f"{self._last_eval_score:.3f}" if self._last_eval_score is not None else "-"
        left = self.remaining_seconds()
        if left is not None:
            postfix["left"] = format_duration(left)
        return postfix

    def _stop_if_signalled(self) -> None:
        """Ranks agree on stopping: a signal that reached one rank only must not leave the others in the next
        step's collectives while it checkpoints."""
        signum = self._max_over_processes(float(self._stop_signal or 0))
        if signum and self.step < self.args.max_steps:  # at the last step the run simply ends
            self._stop_signal = int(signum)
            if self.step % self.args.save_steps:
                self.save_checkpoint()
            raise KeyboardInterrupt(f"stopped by signal {self._stop_signal} at step {self.step}")

    def training_step(self) -> dict[str, Any]:
        """Sample, judge, compute advantages and optimize once; returns this step's metrics."""
        args = self.args
        t0 = time.perf_counter()
        judge_before = self.reward.stats()
        rollout, rewards, info, sample_seconds = self._sample_and_judge_or_stop()
        t1 = t0 + sample_seconds
        t2 = time.perf_counter()
        judge = {k: v - judge_before.get(k, 0) for k, v in self.reward.stats().items()}
        advantages, mask = self.compute_advantages(rewards, rollout.group_size)
        valid_rewards = [r for r in rewards if r is not None]
        tot = self._sum_named(
            {
                "reward_sum": sum(valid_rewards),
                "judged": len(valid_rewards),
                "samples": len(rewards),
                "unmasked": float(mask.sum()),
                "judge_calls": judge.get("calls", 0),
                "judge_seconds": judge.get("seconds", 0.0),
                "judge_cached": judge.get("cached", 0),
            }
        )
        masked_frac = 1.0 - tot["unmasked"] / max(tot["samples"], 1.0)
        judged_frac = tot["judged"] / max(tot["samples"], 1.0)
        if 1.0 - judged_frac > args.max_judge_failure_rate:
            self.save_checkpoint()
            raise TrainingStopped(
                f"step {self.step + 1}: {1.0 - judged_frac:.0%} of samples got no judgment, over "
                f"max_judge_failure_rate={args.max_judge_failure_rate:.0%}; check the judge server "
                f"(a checkpoint was saved in {self.checkpoint_dir})"
            )
        opt = self.optimize(rollout, advantages, mask)
        t3 = time.perf_counter()
        self.phase_seconds["sample"] += t1 - t0
        self.phase_seconds["judge"] += t2 - t1
        self.phase_seconds["optimize"] += t3 - t2
        if self.accelerator.is_main_process and args.sample_steps and (self.step % args.sample_steps == 0):
            self._save_sample_grid(rollout, rewards)
        row: dict[str, Any] = {
            "reward_mean": tot["reward_sum"] / max(tot["judged"], 1.0),
            **opt,
            "masked_frac": masked_frac,
            "judge_calls": int(tot["judge_calls"]),
            "judge_cached": int(tot["judge_cached"]),
            "judge_seconds": tot["judge_seconds"],
            "step_seconds": t3 - t0,
            "sample_seconds": t1 - t0,
            "judge_wait_seconds": t2 - t1,
            "optimize_seconds": t3 - t2,
        }
        row.update({f"reward/{k}": v for k, v in self._batch_reward_info(info, len(rewards)).items()})
        if self.monitor is not None and args.monitor_steps and (self.step + 1) % args.monitor_steps == 0:
            t = time.perf_counter()
            row.update(self._monitor_samples(rollout))
            self.phase_seconds["monitor"] = self.phase_seconds.get("monitor", 0.0) + time.perf_counter() - t
        row.update(self.reward.health())
        return row

    def _monitor_samples(self, rollout: Rollout) -> dict[str, float]:
        """The monitor's metrics of this step's training samples (the first of each group), over all ranks."""
        g = rollout.group_size
        images = [rollout.images[i * g] for i in range(len(rollout.records))]
        metrics = self.monitor(rollout.records, images) if images else {}
        numbers = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        parts = [(float(len(images)), numbers)]
        if self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object(parts)
        merged = _merge_infos([nums for _, nums in parts], [w for w, _ in parts])
        return {f"train/{k}": v for k, v in merged.items()}

    def _sample_and_judge_or_stop(self) -> tuple[Rollout, list[float | None], dict[str, Any], float]:
        """`sample_and_judge`, except that an unreachable judge server stops training with a checkpoint: the work
        done so far is kept. All ranks stop together, even if only one rank's requests failed, or the others would
        wait in the next collective."""
        unreachable: JudgeUnavailableError | None = None
        try:
            result = self.sample_and_judge(self.step)
        except JudgeUnavailableError as e:
            unreachable = e
        if self._max_over_processes(float(unreachable is not None)):
            self.save_checkpoint()
            raise TrainingStopped(
                f"step {self.step + 1}: the judge is unreachable ({unreachable or 'from another rank'}), so 100% "
                "of samples got no judgment, over "
                f"max_judge_failure_rate={self.args.max_judge_failure_rate:.0%}; a checkpoint was saved in "
                f"{self.checkpoint_dir}; restart the judge server and resume with --resume_from_checkpoint latest"
            ) from None
        return result

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

    def _evaluate_timed(self) -> dict[str, float]:
        t = time.perf_counter()
        metrics = self.evaluate()
        self._eval_wall_seconds = time.perf_counter() - t
        self.phase_seconds["evaluate"] += self._eval_wall_seconds
        if metrics:  # the main process
            metrics = {**metrics, "eval_seconds": self._eval_wall_seconds}
            per_prompt = metrics.pop(PER_PROMPT_SCORES, None)
            if per_prompt is not None:
                metrics.update(self._change_since_baseline(per_prompt))
        self._last_eval_score = metrics.get("eval_score")
        if self.accelerator.is_main_process and self.args.sample_steps:
            self._save_eval_grid()
        return metrics

    def _change_since_baseline(self, per_prompt: Sequence[tuple[str, float]]) -> dict[str, float]:
        """The score's change since the run's first evaluation and its paired standard error; the first
        evaluation becomes the baseline. Evaluations pair prompt by prompt: the same records, the same seeds."""
        per_prompt = [(str(stratum), float(score)) for stratum, score in per_prompt]
        if self._eval_baseline is None:
            self._eval_baseline = per_prompt
            return {}
        if len(self._eval_baseline) != len(per_prompt):  # eval_num_prompts changed on resume: nothing to pair
            return {}
        change, se = paired_change_se(self._eval_baseline, per_prompt)
        return {"eval_change": change, "eval_change_se": se}

    def _run_eval(self, metrics_path: Path) -> None:
        row = {"step": 0, **self._evaluate_timed()}
        if self.accelerator.is_main_process:
            for cb in self.callbacks:
                cb.on_evaluate(self, 0, row)
            append_jsonl(metrics_path, row)
            self.history.append(row)

    # ---- samples -------------------------------------------------------------------------------------------

    def _save_sample_grid(self, rollout: Rollout, rewards: list[float | None]) -> None:
        """samples/train_step_N.png: up to GRID_GROUPS groups, each image captioned with its reward, its standing
        in its group and its prompt; also sent to TensorBoard."""
        from arr.report import image_grid, reward_captions

        groups = min(len(rollout.records), GRID_GROUPS)
        n = groups * rollout.group_size
        records, images = rollout.records[:groups], rollout.images[:n]
        self.last_train_samples = (records, images, list(rewards[:n]), rollout.group_size, self.step + 1)
        captions = reward_captions([r.prompt for r in records], rewards[:n], rollout.group_size)
        cols = rollout.group_size * max(1, 8 // rollout.group_size)
        grid = image_grid(images, cols=cols, captions=captions, cell=GRID_CELL, group=rollout.group_size)
        out = self.output_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        grid.save(out / f"train_step_{self.step:06d}.png")
        self._log_grid("samples/train", grid, self.step + 1)

    def _save_eval_grid(self) -> None:
        """samples/eval_step_N.png: the first 32 held-out samples captioned with their prompts; also sent to
        TensorBoard."""
        from arr.report import image_grid

        if self.last_eval_images is None or not self.last_eval_images[2]:
            return
        records, idx, images = self.last_eval_images
        out = self.output_dir / "samples"
        out.mkdir(parents=True, exist_ok=True)
        captions = [records[i].prompt for i in idx[:32]]
        grid = image_grid(images[:32], cols=8, captions=captions, cell=GRID_CELL)
        grid.save(out / f"eval_step_{self.step:06d}.png")
        self._log_grid("samples/eval", grid, self.step)

    def _log_grid(self, tag: str, grid: Image.Image, step: int) -> None:
        """Send a sample grid to TensorBoard when accelerate tracks to it (at the step its scalars are logged)."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: np.asarray(grid)[None]}, step=step, dataformats="NHWC")

    # ---- checkpoints ---------------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N atomically with `accelerator.save_state` (every process writes its part into a
        temporary folder, which the main process seals and renames; see arr/rpo/checkpoint.py) and prune old
        ones."""
        acc = self.accelerator
        tmp = temporary_path(self.checkpoint_dir, self.step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            clear_temporary(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "data_position": self.step * self.args.prompts_per_step,
                "phase_seconds": self.phase_seconds,
                "last_eval_score": self._last_eval_score,
                "eval_baseline": self._eval_baseline,
                "judge_cache": self.reward.cache_path or "",
                "num_processes": acc.num_processes,
                "distributed_type": str(acc.distributed_type),
            }
            finish_checkpoint(self.checkpoint_dir, self.step, tmp, state)
            prune_checkpoints(self.checkpoint_dir, self.args.save_total_limit)
        acc.wait_for_everyone()
        return checkpoint_path(self.checkpoint_dir, self.step)

    def _save_lora_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        """accelerate's save hook: the LoRA (and the moving average that samples) as arr's safetensors files, in
        place of the whole network, whose frozen base is the pretrained model. Under FSDP accelerate has saved the
        sharded network itself, and `weights` is empty."""
        from safetensors.torch import save_file

        lora = self._lora_tensors()  # FSDP: gathered on every process
        sampling_lora = None
        if self.sampling_params is not None:
            with self.sampling_policy():
                sampling_lora = self._lora_tensors()
        if self.accelerator.is_main_process:
            save_file(lora, Path(output_dir) / LORA_FILE)
            if sampling_lora is not None:
                # Under peft names, so the moving average loads as a LoRA of its own (e.g. with `arr eval --lora`).
                save_file(sampling_lora, Path(output_dir) / SAMPLING_LORA_FILE)
            self._export_lora(Path(output_dir), lora, sampling_lora)
        weights.clear()

    def _load_lora_hook(self, models: list[Any], input_dir: str) -> None:
        """accelerate's load hook: the LoRA from arr's file (under FSDP accelerate loaded the sharded network, and
        `models` is empty), and the moving average that samples."""
        from safetensors.torch import load_file

        lora = load_file(Path(input_dir) / LORA_FILE, device=str(self.policy.device))
        if self.sampling_params is not None:
            self._load_sampling_lora(Path(input_dir), lora)
        elif models:
            self.policy.load_lora_state_dict(lora)
        models.clear()

    def _load_sampling_lora(self, path: Path, trained: dict[str, torch.Tensor]) -> None:
        """Set the moving average from `path`'s sampling LoRA; the network ends with the `trained` LoRA loaded
        (under FSDP on every process: loading takes each process's shard)."""
        from safetensors.torch import load_file

        ema = path / SAMPLING_LORA_FILE
        if not ema.is_file():
            raise ConfigError(
                f"{path} has no {SAMPLING_LORA_FILE}: it was saved without forward_ema_decay, so it cannot resume "
                "a run that samples with a moving average"
            )
        self.policy.load_lora_state_dict(load_file(ema, device=str(self.policy.device)))
        self.sampling_params = [p.detach().clone() for p in self.params]
        self.policy.load_lora_state_dict(trained)

    def _export_lora(
        self, folder: Path, lora: dict[str, torch.Tensor], sampling_lora: dict[str, torch.Tensor] | None
    ) -> None:
        """The checkpoint's files for use outside arr: the LoRA in diffusers' format (`pipe.load_lora_weights` reads
        it at full strength), the moving average that sampled in `moving_average/`, and the model card."""
        base = run_settings(self.run_config).get("model_name_or_path")
        file = self.policy.save_lora_weights(folder, lora, base_model=base)
        if file is not None and sampling_lora is not None:
            self.policy.save_lora_weights(folder / MOVING_AVERAGE_DIR, sampling_lora, base_model=base)
        metrics = self.output_dir / "metrics.jsonl"
        evals = [r for r in read_jsonl(metrics) if "eval_score" in r and r.get("step", 0) <= self.step]
        text = model_card(
            self.run_config,
            self.step,
            evals,
            str(checkpoint_path(self.checkpoint_dir, self.step)),
            lora_file=file is not None,
            moving_average=file is not None and sampling_lora is not None,
        )
        write_model_card(folder, text)

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        """The LoRA weights now in the model, copied to CPU (peft's state dict aliases the live parameters,
        which `sampling_policy()` swaps). Under FSDP every process must call this: the shards are gathered."""
        return {k: v.detach().cpu().clone() for k, v in self.policy.lora_state_dict().items()}

    def load_checkpoint(self, which: str) -> None:
        """Resume from 'latest' or a checkpoint folder; a checkpoint asked for by name must exist and be intact."""
        path = self._agreed_checkpoint(which)
        if path is None:
            return  # nothing to resume: a fresh run (the flag is safe to leave in a launcher)
        state = read_state(path)
        if is_legacy(state):
            self._load_legacy_checkpoint(path)
        else:
            saved = state.get("distributed_type")
            if ("FSDP" in (saved or "")) != self.lockstep:
                raise ConfigError(
                    f"resume_from_checkpoint: {path} was saved under {saved} and this run is "
                    f"{self.accelerator.distributed_type}; resume an FSDP checkpoint under FSDP and a DDP or "
                    "single-process one under DDP or one process"
                )
            saved_processes = state.get("num_processes")
            if saved_processes == self.accelerator.num_processes:
                _check_random_states(path, self.accelerator.process_index)
            else:  # every process reads the same file, so all take this branch together
                logger.warning(
                    "%s was saved by %s processes and this run has %d: the weights and optimizer state resume, the "
                    "processes' random states do not (the training noise is seeded per group and step, not by them)",
                    path,
                    saved_processes,
                    self.accelerator.num_processes,
                )
            self.accelerator.load_state(str(path))
        self.step = int(state["step"])
        self.phase_seconds.update(state.get("phase_seconds", {}))
        self._last_eval_score = state.get("last_eval_score")
        baseline = state.get("eval_baseline")
        self._eval_baseline = None if baseline is None else [(str(k), float(v)) for k, v in baseline]

    def _agreed_checkpoint(self, which: str) -> Path | None:
        """The checkpoint every process resumes from: the main process finds and verifies it (hashing its files once,
        not once per process) and tells the others, so that all resume the same one, or all stop with its error."""
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        if acc.num_processes == 1:
            return resolve_checkpoint(self.checkpoint_dir, which)
        found: list[Any] = [None]
        if acc.is_main_process:
            try:
                path = resolve_checkpoint(self.checkpoint_dir, which)
                found[0] = ("path", None if path is None else str(path))
            except ConfigError as e:
                found[0] = ("error", type(e).__name__, str(e))
        broadcast_object_list(found)
        if found[0][0] == "error":
            raise (CheckpointError if found[0][1] == "CheckpointError" else ConfigError)(found[0][2])
        path = None if found[0][1] is None else Path(found[0][1])
        if path is not None and not (path / STATE_FILE).is_file():
            raise ConfigError(
                f"resume_from_checkpoint: process {acc.process_index} cannot see {path}, which the main process "
                "resumes from; output_dir must be on a filesystem every machine sees"
            )
        return path

    def _load_legacy_checkpoint(self, path: Path) -> None:
        """A checkpoint of arr's first layout: LoRA, optimizer.pt and RNG files of one unsharded state."""
        if self.lockstep:
            raise ConfigError(
                f"resume_from_checkpoint: {path} is in arr's first checkpoint layout, which holds unsharded state; "
                "resume it with DDP or one process, and let that run save a checkpoint that FSDP can resume"
            )
        ckpt = read_legacy_checkpoint(path, self.policy.device)
        if self.sampling_params is not None:
            self._load_sampling_lora(path, ckpt.lora)
        else:
            self.policy.load_lora_state_dict(ckpt.lora)
        self.optimizer.load_state_dict(ckpt.optimizer["optimizer"])
        self.scheduler.load_state_dict(ckpt.optimizer["scheduler"])
        load_legacy_rng_state(path)

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


def _make_accelerator(args: RPOConfig) -> Any:
    """The trainer's Accelerator, as a launcher (`accelerate launch`, its config file) set the engine up."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        cpu=args.cpu,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=args.output_dir,
        # The trainer steps its scheduler once per RPO step, however many processes there are.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def _check_random_states(path: Path, rank: int) -> None:
    """Refuse a checkpoint whose RNG file for this process does not load with weights_only=True: accelerate's
    `load_state` would skip it with a log line, and the run would go on with other random numbers than the run it
    resumes (or, for a file that carries code, quietly)."""
    from accelerate.utils.other import load

    file = path / f"random_states_{rank}.pkl"
    try:
        load(file)  # torch.load with weights_only=True, numpy's RNG state types allowed
    except Exception as e:  # a refused global (code in the file), a cut file, a missing one
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint file {file} does not load as plain data ({why}); resume from another checkpoint"
        ) from None


def _check_engine(acc: Any) -> None:
    """Refuse the engines RPOTrainer does not drive: DeepSpeed, and FSDP's first version."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError(
            "RPOTrainer does not run under DeepSpeed (its engine steps the optimizer inside backward, and ZeRO-2 "
            "shards only LoRA-sized optimizer state); launch with FSDP to shard the frozen base "
            "(recipes/accelerate/8gpu_fsdp.yaml) or with DDP (recipes/accelerate/8gpu_ddp.yaml)"
        )
    if acc.distributed_type == DistributedType.FSDP and not acc.is_fsdp2:
        raise ConfigError(
            "RPOTrainer needs FSDP version 2 (fully_shard), which keeps peft's LoRA parameters addressable; set "
            "fsdp_version: 2 in the accelerate config (recipes/accelerate/8gpu_fsdp.yaml)"
        )


def format_duration(seconds: float) -> str:
    """'7m05s' (or '45s', '1h02m'): a time for people, to the second under an hour."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _flat_scalars(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


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
