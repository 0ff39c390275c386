"""RPOConfig: every hyperparameter of Rubric Policy Optimization, with the paper's defaults.

Defaults follow the ARR/RPO paper's FLUX.1-dev text-to-image setting: groups of 2 from the same
initial noise, winner +1.0 / loser -0.1, advantages clamped to +-5, PPO clip 0.2, KL beta 0.01 against the
LoRA-disabled reference, flow SDE eta 0.3, timestep shift 3, 8 sampling steps, LoRA r16/alpha32, AdamW lr 5e-5,
grad-norm clip 1.0. Where the authors' released code made another choice of how the update is computed (what eta
means, how log-probabilities are reduced, how the KL is estimated, which transitions train, how pairs are judged
and rewarded), the default is arr's and the release's is one key away; a recipe's `rpo_preset: paper`
(arr.rpo.presets) sets all of them. Validation happens in `__post_init__`, with messages that name the rule, the
values received and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from arr.errors import ConfigError

REWARD_MODES = ("pairwise", "pointwise")
PAIRWISE_REWARDS = ("win_rate", "rank")
LOGPROB_REDUCTIONS = ("mean", "sum")
KL_ESTIMATORS = ("analytic", "sample")
LR_SCHEDULERS = ("constant", "linear", "cosine")
NAN_POLICIES = ("stop", "skip_step")


@dataclass
class RPOConfig:
    r"""
    Configuration of `RPOTrainer`, one field per hyperparameter (YAML recipes and command-line overrides go through
    `arr train`). The defaults are the paper's FLUX.1-dev text-to-image setting.

    Parameters:
        > Run

        output_dir (`str`, *optional*, defaults to `"runs/rpo"`):
            Run directory: `config.yaml`, `metrics.jsonl`, `checkpoints/step_N/`, `samples/`, `report.html`.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Replace a run already in `output_dir` (its checkpoints, metrics, report and samples are deleted
            first). Without it, or `resume_from_checkpoint`, a directory holding another run is refused.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the sampling noise, the data order and the LoRA initialisation.
        max_steps (`int`, *optional*, defaults to `300`):
            RPO steps to train (each samples, judges and updates once).

        > Sampling

        prompts_per_step (`int`, *optional*, defaults to `16`):
            Prompts per step over all processes; the batch is prompts x `group_size` samples.
        group_size (`int`, *optional*, defaults to `2`):
            Samples per prompt that are compared with each other (at least 2).
        num_sampling_steps (`int`, *optional*, defaults to `8`):
            Flow SDE (or ODE) steps per sample.
        eta (`float`, *optional*, defaults to `0.3`):
            SDE noise level; 0 samples the ODE (only for objectives without log-probabilities).
        sde_convention (`str`, *optional*, defaults to `"flow_grpo"`):
            What `eta` means: `"flow_grpo"`, std = eta * sqrt(sigma / (1 - sigma)) * sqrt(dsigma), or
            `"dance_grpo"` (the release), std = eta * sqrt(dsigma). At eta 0.3 on 8 shift-3 steps flow_grpo's std
            is 0.65-4.7x dance_grpo's.
        shift (`float`, *optional*, defaults to `3.0`):
            Timestep shift of the sigma schedule.
        guidance_scale (`float`, *optional*, defaults to `3.5`):
            Guidance while sampling (classifier-free or FLUX's embedded guidance).
        train_timestep_fraction (`float`, *optional*, defaults to `1.0`):
            Fraction of the sampling steps that are stochastic and trained (the high-noise ones); the rest are ODE.
        stochastic_last_step (`bool`, *optional*, defaults to `True`):
            The last sampling step is stochastic and trained; `False` (the release): it is the Euler step to the
            predicted clean sample, so no noise is added after the last network call and that step is not trained.
        shared_noise (`bool`, *optional*, defaults to `True`):
            A group's samples start from the same initial noise (RPO); `False`: each from its own (flow-GRPO).
        sample_batch_size (`int`, *optional*, defaults to `16`):
            Images per sampling forward pass, per process.
        overlap_judging (`str`, *optional*, defaults to `"auto"`):
            Judge each sampled chunk in a background thread while the next one samples: `"on"`, `"off"`, or
            `"auto"` (on for remote judges).

        > Reward

        reward_mode (`str`, *optional*, defaults to `"pairwise"`):
            `"pairwise"` (RPO: judged pairs) or `"pointwise"` (GRPO on rubric scores).
        win_reward (`float`, *optional*, defaults to `1.0`):
            Reward of a pairwise win.
        lose_reward (`float`, *optional*, defaults to `-0.1`):
            Reward of a pairwise loss (a tie gives 0).
        pairwise_reward (`str`, *optional*, defaults to `"win_rate"`):
            Pairwise verdicts to rewards: `"win_rate"`, each sample's mean outcome over its pairs (win, lose, 0 for
            a tie), or `"rank"` (the release), ranks mapped linearly from `win_reward` (best) to `lose_reward`
            (worst), equal ranks sharing a reward: a pair the judge ranks [1, 1] gives both `win_reward`.
        center_rewards (`bool`, *optional*, defaults to `False`):
            Pairwise: subtract each group's mean reward (a baseline: same expected gradient, lower variance).
        adv_clip (`float`, *optional*, defaults to `5.0`):
            Advantages are clamped to +-`adv_clip`.
        max_judge_failure_rate (`float`, *optional*, defaults to `0.5`):
            Stop, with a checkpoint, when a larger fraction of a step's samples got no judgment.

        > Loss

        objective (`str`, *optional*, defaults to `"policy_gradient"`):
            The update, by registered name (`arr.rpo.objectives.OBJECTIVES`): `"policy_gradient"` (the paper) or
            `"forward"` (DiffusionNFT's negative-aware flow matching).
        forward_beta (`float`, *optional*, defaults to `1.0`):
            Forward objective: the step from the sampling policy to its implicit positive/negative policies.
        forward_timesteps (`int`, *optional*, defaults to `2`):
            Forward objective: noise levels drawn per sample (one forward pass each).
        forward_ema_decay (`float`, *optional*, defaults to `0.0`):
            Forward objective: the rollouts are sampled by a moving average of the LoRA with this decay per step
            (0: by the LoRA itself).
        forward_t_min (`float`, *optional*, defaults to `0.0`):
            Forward objective: noise levels are drawn from [`forward_t_min`, 1).
        clip_range (`float`, *optional*, defaults to `0.2`):
            Policy gradient: the PPO clip epsilon of the importance ratio.
        beta (`float`, *optional*, defaults to `0.01`):
            Weight of the KL penalty to the LoRA-disabled reference (0 turns it off).
        kl_estimator (`str`, *optional*, defaults to `"analytic"`):
            Policy gradient: the KL term, `"analytic"` (the KL between the policy's and the reference's Gaussian
            transitions) or `"sample"` (the release: log p_policy(x') - log p_ref(x') at the stored transition).
        logprob_reduction (`str`, *optional*, defaults to `"sum"`):
            Reduce transition log-probabilities (and the KL) over dimensions: `"sum"` (exact) or `"mean"`.
        timestep_sample_fraction (`float`, *optional*, defaults to `1.0`):
            Policy gradient: the fraction of each sample's stochastic transitions that train in an update, a fresh
            random subset per sample and step (the release's timestep_fraction); 1 trains them all.

        > Optimisation

        learning_rate (`float`, *optional*, defaults to `5e-5`):
            AdamW learning rate after warmup.
        adam_beta1 (`float`, *optional*, defaults to `0.9`):
            AdamW decay of the gradient's moving average, in [0, 1).
        adam_beta2 (`float`, *optional*, defaults to `0.999`):
            AdamW decay of the squared gradient's moving average, in [0, 1).
        weight_decay (`float`, *optional*, defaults to `1e-4`):
            AdamW decoupled weight decay of the LoRA weights (>= 0).
        adam_epsilon (`float`, *optional*, defaults to `1e-8`):
            AdamW epsilon added to the denominator (>= 0).
        max_grad_norm (`float`, *optional*, defaults to `1.0`):
            Gradients are clipped to this global norm before each optimizer step.
        warmup_steps (`int`, *optional*, defaults to `0`):
            Steps of linear learning-rate warmup.
        lr_scheduler_type (`str`, *optional*, defaults to `"constant"`):
            Learning rate after warmup: `"constant"`, or decayed to 0 at `max_steps` (`"linear"`, `"cosine"`).
        train_batch_size (`int`, *optional*, defaults to `8`):
            Samples per backward pass, per process (micro-batches are accumulated into one optimizer step).
        num_minibatches (`int`, *optional*, defaults to `2`):
            Optimizer steps per pass over a sampled batch (split by group).
        num_inner_epochs (`int`, *optional*, defaults to `1`):
            Passes over each sampled batch.
        nan_policy (`str`, *optional*, defaults to `"stop"`):
            When an update's loss or gradient norm is NaN or infinite: `"stop"` training with an error (no
            checkpoint of that step), or `"skip_step"` that optimizer step and log it (`skipped_updates`).
        lora_rank (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA alpha (the update is scaled by alpha / rank).
        gradient_checkpointing (`bool`, *optional*, defaults to `False`):
            Recompute activations in backward: less memory, slower steps.
        mixed_precision (`str`, *optional*, defaults to `"no"`):
            `"no"`, `"bf16"` or `"fp16"` (accelerate's autocast).
        cpu (`bool`, *optional*, defaults to `False`):
            Train on the CPU even when a GPU is present.

        > Evaluation, logging and checkpoints

        eval_steps (`int`, *optional*, defaults to `50`):
            Evaluate the held-out prompts every N steps (0: only at the start and the end).
        eval_num_prompts (`int`, *optional*, defaults to `64`):
            Held-out prompts per evaluation.
        eval_num_sampling_steps (`int`, *optional*, defaults to `20`):
            ODE steps of the evaluation samples.
        monitor_steps (`int`, *optional*, defaults to `0`):
            Every N steps, score one training sample per group with the run's monitor (in the shapes world: the
            exact pixel judge and the training judge's own pointwise score) and log them as `train/<metric>`. With a
            learned judge, reward hacking shows as the judge's score rising while the exact score does not. 0: off.
        logging_steps (`int`, *optional*, defaults to `1`):
            Write a metrics row every N steps (and at every evaluation).
        sample_steps (`int`, *optional*, defaults to `50`):
            Save a grid of training samples every N steps.
        save_steps (`int`, *optional*, defaults to `50`):
            Checkpoint every N steps (and at the last step, and on SIGTERM/SIGINT).
        save_total_limit (`int`, *optional*, defaults to `3`):
            Checkpoints kept, the oldest deleted first (at least 1).
        resume_from_checkpoint (`str` or `None`, *optional*, defaults to `None`):
            `"latest"` (a fresh run when there is none), a `step_N` folder, or `None` for a fresh run.
        report_to (`str`, *optional*, defaults to `"tensorboard"`):
            Tracker: `"tensorboard"`, `"wandb"` or `"none"`.
    """

    # ---- run ----
    output_dir: str = field(
        default="runs/rpo", metadata={"help": "run directory (metrics, checkpoints, report)"}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "replace a run already in output_dir (its checkpoints, metrics, report and samples are deleted "
            "first); without it, or resume_from_checkpoint, a directory holding another run is refused"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed for sampling noise, data order and LoRA init"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps to train"})

    # ---- sampling ----
    prompts_per_step: int = field(
        default=16,
        metadata={"help": "prompts per optimizer step, over all processes (batch = prompts x group)"},
    )
    group_size: int = field(
        default=2, metadata={"help": "samples per prompt from the same initial noise (>= 2)"}
    )
    num_sampling_steps: int = field(default=8, metadata={"help": "flow SDE steps per sample"})
    eta: float = field(default=0.3, metadata={"help": "SDE noise level"})
    sde_convention: str = field(
        default="flow_grpo",
        metadata={
            "help": "what eta means: flow_grpo (std = eta sqrt(sigma / (1 - sigma)) sqrt(dsigma)) or dance_grpo "
            "(the release: std = eta sqrt(dsigma))"
        },
    )
    shift: float = field(default=3.0, metadata={"help": "timestep shift of the sigma schedule"})
    guidance_scale: float = field(
        default=3.5, metadata={"help": "guidance while sampling (CFG or FLUX guidance)"}
    )
    train_timestep_fraction: float = field(
        default=1.0,
        metadata={"help": "fraction of the sampling steps that are stochastic and trained (the rest ODE)"},
    )
    stochastic_last_step: bool = field(
        default=True,
        metadata={
            "help": "the last sampling step is stochastic and trained; false (the release): it is the Euler step "
            "to the predicted clean sample, untrained"
        },
    )
    shared_noise: bool = field(
        default=True,
        metadata={
            "help": "a group's samples start from the same initial noise (RPO); false: each from its own (flow-GRPO)"
        },
    )
    sample_batch_size: int = field(
        default=16, metadata={"help": "images per sampling forward pass, per process"}
    )
    overlap_judging: str = field(
        default="auto",
        metadata={
            "help": "judge each sampled chunk in a background thread while the next chunk samples: on, off, or "
            "auto (on for remote judges, e.g. the openai backend; a local judge would compete for the same "
            "cores). Needs several chunks per step (sample_batch_size below the samples per process)"
        },
    )

    # ---- reward ----
    reward_mode: str = field(
        default="pairwise",
        metadata={"help": "pairwise (RPO: judged pairs) or pointwise (GRPO on rubric scores)"},
    )
    win_reward: float = field(default=1.0, metadata={"help": "reward of a pairwise win"})
    lose_reward: float = field(default=-0.1, metadata={"help": "reward of a pairwise loss (ties give 0)"})
    pairwise_reward: str = field(
        default="win_rate",
        metadata={
            "help": "pairwise verdicts to rewards: win_rate (mean outcome over a sample's pairs, ties 0) or rank "
            "(the release: ranks mapped from win_reward to lose_reward, equal ranks share a reward)"
        },
    )
    center_rewards: bool = field(
        default=False,
        metadata={
            "help": "pairwise: subtract each group's mean reward before clamping (a baseline: same expected "
            "gradient, lower variance; the paper's +1/-0.1 rewards are uncentered)"
        },
    )
    adv_clip: float = field(default=5.0, metadata={"help": "advantages are clamped to +-adv_clip"})
    max_judge_failure_rate: float = field(
        default=0.5,
        metadata={"help": "stop (with a checkpoint) when more samples than this fraction are masked"},
    )

    # ---- loss ----
    objective: str = field(
        default="policy_gradient",
        metadata={
            "help": "the update, by registered name: policy_gradient (the paper: PPO-clipped ratio of SDE "
            "transition log-probs) or forward (reward-weighted flow matching on the final samples, "
            "negative-aware as in DiffusionNFT: no log-probabilities, so any sampler works, eta 0 included)"
        },
    )
    forward_beta: float = field(
        default=1.0,
        metadata={
            "help": "forward objective: the step from the sampling policy to the implicit positive/negative "
            "policies (v+- = v_old +- forward_beta * (v - v_old))"
        },
    )
    forward_timesteps: int = field(
        default=2,
        metadata={"help": "forward objective: noise levels drawn per sample (each one forward pass)"},
    )
    forward_ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "forward objective: the sampling (old) policy is an exponential moving average of the trained "
            "LoRA with this decay per step, so the loss pulls the trained weights a bounded way from it "
            "(DiffusionNFT's soft update); 0 samples with the trained weights themselves"
        },
    )
    forward_t_min: float = field(
        default=0.0,
        metadata={
            "help": "forward objective: noise levels are drawn uniformly from [forward_t_min, 1) (composition "
            "is decided at high noise)"
        },
    )
    clip_range: float = field(default=0.2, metadata={"help": "PPO clip epsilon"})
    beta: float = field(
        default=0.01,
        metadata={
            "help": "KL penalty vs the LoRA-disabled reference: on transition means (policy_gradient) or "
            "on velocities at the noised samples (forward)"
        },
    )
    kl_estimator: str = field(
        default="analytic",
        metadata={
            "help": "policy gradient KL: analytic (Gaussian KL of the transition means) or sample (the release: "
            "log p_policy(x') - log p_ref(x') at the stored transition)"
        },
    )
    logprob_reduction: str = field(
        default="sum",
        metadata={"help": "reduce transition log-probs (and the KL) over dimensions: sum (exact) or mean"},
    )
    timestep_sample_fraction: float = field(
        default=1.0,
        metadata={
            "help": "policy gradient: fraction of each sample's stochastic transitions trained per update, a "
            "random subset per sample and step (the release's timestep_fraction)"
        },
    )

    # ---- optimisation ----
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate"})
    adam_beta1: float = field(
        default=0.9, metadata={"help": "AdamW decay of the gradient's moving average, in [0, 1)"}
    )
    adam_beta2: float = field(
        default=0.999, metadata={"help": "AdamW decay of the squared gradient's moving average, in [0, 1)"}
    )
    weight_decay: float = field(
        default=1e-4, metadata={"help": "AdamW decoupled weight decay of the LoRA weights (>= 0)"}
    )
    adam_epsilon: float = field(
        default=1e-8, metadata={"help": "AdamW epsilon added to the denominator (>= 0)"}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clip"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warmup steps"})
    lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": "learning rate after warmup: constant, or decayed to 0 at max_steps (linear, cosine)"
        },
    )
    train_batch_size: int = field(
        default=8,
        metadata={"help": "samples per backward pass, per process (micro-batch; accumulated to one step)"},
    )
    num_minibatches: int = field(
        default=2,
        metadata={
            "help": "optimizer steps per pass over a sampled batch (>= 2 makes the PPO ratio move off 1)"
        },
    )
    num_inner_epochs: int = field(default=1, metadata={"help": "passes over each sampled batch"})
    nan_policy: str = field(
        default="stop",
        metadata={
            "help": "when an update's loss or gradient norm is NaN or infinite: stop training with an error (no "
            "checkpoint of that step), or skip_step (skip that optimizer step and log it as skipped_updates)"
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "trade compute for activation memory"}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no | bf16 | fp16 (accelerate)"})
    cpu: bool = field(default=False, metadata={"help": "force CPU even when a GPU is present"})

    # ---- evaluation, logging, checkpoints ----
    eval_steps: int = field(
        default=50, metadata={"help": "evaluate every N steps (0: only at start and end)"}
    )
    eval_num_prompts: int = field(default=64, metadata={"help": "held-out prompts per evaluation"})
    eval_num_sampling_steps: int = field(default=20, metadata={"help": "ODE steps for evaluation samples"})
    monitor_steps: int = field(
        default=0,
        metadata={
            "help": "every N steps, score one training sample per group with the exact judge and the training "
            "judge (train/<metric>), to catch reward hacking; 0: off"
        },
    )
    logging_steps: int = field(default=1, metadata={"help": "write metrics every N steps"})
    sample_steps: int = field(default=50, metadata={"help": "save a grid of training samples every N steps"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps (and on SIGTERM/SIGINT)"})
    save_total_limit: int = field(
        default=3, metadata={"help": "checkpoints kept, the oldest deleted first (at least 1)"}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest', a step_N folder, or None for a fresh run"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard | wandb | none"})

    def __post_init__(self) -> None:
        if self.resume_from_checkpoint in ("", "none", "None"):
            self.resume_from_checkpoint = None
        for f in fields(self):  # a NaN or inf passes every comparison below, so it is refused first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                self._fail(f.name, "must be a finite number", "check the recipe for nan/inf")
        self._check_sampling()
        self._check_reward()
        self._check_loss()
        self._check_optimisation()
        self._check_schedule()

    def _fail(self, name: str, rule: str, fix: str) -> None:
        raise ConfigError(f"RPOConfig.{name}={getattr(self, name)!r}: {rule}; {fix}")

    def _choice(self, name: str, choices: Sequence[str]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, f"must be one of {tuple(choices)}", "choose one of them")

    def _check_sampling(self) -> None:
        from arr.policies.sde import SDE_CONVENTIONS

        if self.group_size < 2:
            self._fail(
                "group_size",
                "RPO compares samples within a group, so it needs at least 2",
                "set group_size >= 2",
            )
        if self.prompts_per_step < 1:
            self._fail("prompts_per_step", "must be positive", "set prompts_per_step >= 1")
        if not 0.0 < self.train_timestep_fraction <= 1.0:
            self._fail(
                "train_timestep_fraction", "must be in (0, 1]", "e.g. 0.5 trains half of the sampling steps"
            )
        if self.num_sampling_steps < 1:
            self._fail("num_sampling_steps", "must be positive", "the paper uses 8 (FLUX) or 10 (editing)")
        if self.eta < 0:
            self._fail("eta", "the SDE noise level cannot be negative", "the paper uses 0.3")
        self._choice("sde_convention", SDE_CONVENTIONS)
        if not self.stochastic_last_step and self.num_sampling_steps < 2:
            self._fail(
                "stochastic_last_step",
                f"with num_sampling_steps={self.num_sampling_steps} and a deterministic last step no step is "
                "stochastic",
                "use num_sampling_steps >= 2 or stochastic_last_step: true",
            )
        self._choice("overlap_judging", ("auto", "on", "off"))
        for name in ("sample_batch_size", "train_batch_size"):
            if getattr(self, name) < 1:
                self._fail(name, "must be positive", f"set {name} >= 1")

    def _check_reward(self) -> None:
        self._choice("reward_mode", REWARD_MODES)
        self._choice("pairwise_reward", PAIRWISE_REWARDS)
        if self.adv_clip <= 0:
            self._fail("adv_clip", "must be positive", "the paper clamps advantages to +-5")
        if not 0 <= self.max_judge_failure_rate <= 1:
            self._fail("max_judge_failure_rate", "must be a fraction in [0, 1]", "e.g. 0.5")

    def _check_loss(self) -> None:
        from arr.rpo.objectives import OBJECTIVES

        if self.objective not in OBJECTIVES:
            self._fail(
                "objective", f"must be a registered objective, one of {sorted(OBJECTIVES)}", "choose one"
            )
        if self.eta == 0 and OBJECTIVES[self.objective].needs_log_probs:
            self._fail(
                "eta",
                "with eta 0 the sampler is deterministic and has no log-probability",
                "use eta > 0, or objective: forward",
            )
        if self.eta == 0 and self.shared_noise:
            self._fail(
                "shared_noise",
                "with eta 0 and shared initial noise every sample of a group is the same image, so each "
                "judgment ties and nothing is learned",
                "set shared_noise: false (or eta > 0)",
            )
        self._choice("logprob_reduction", LOGPROB_REDUCTIONS)
        self._choice("kl_estimator", KL_ESTIMATORS)
        if not 0.0 < self.timestep_sample_fraction <= 1.0:
            self._fail(
                "timestep_sample_fraction", "must be in (0, 1]", "1 trains every stochastic transition"
            )
        if self.forward_beta <= 0:
            self._fail("forward_beta", "must be > 0", "the default is 1.0")
        if self.forward_timesteps < 1:
            self._fail("forward_timesteps", "must be >= 1", "the default is 2")
        if not 0 <= self.forward_t_min < 1:
            self._fail("forward_t_min", "must be in [0, 1)", "e.g. 0.5 trains at high noise only")
        if not 0 <= self.forward_ema_decay < 1:
            self._fail(
                "forward_ema_decay", "must be in [0, 1)", "e.g. 0.9 (a ~10-step average), or 0 to turn it off"
            )
        if self.clip_range <= 0:
            self._fail("clip_range", "must be positive", "the paper uses 0.2")
        if self.beta < 0:
            self._fail("beta", "must be >= 0", "use 0 to turn the KL penalty off")

    def _check_optimisation(self) -> None:
        if self.learning_rate <= 0:
            self._fail("learning_rate", "must be positive", "the paper uses 5e-5 (t2i) or 1e-5 (editing)")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                self._fail(name, "must be in [0, 1)", "the defaults are 0.9 and 0.999")
        for name in ("weight_decay", "adam_epsilon"):
            if getattr(self, name) < 0:
                self._fail(name, "must be >= 0", "the defaults are 1e-4 and 1e-8")
        if self.max_grad_norm <= 0:
            self._fail("max_grad_norm", "must be positive", "the paper clips to 1.0")
        if self.warmup_steps < 0:
            self._fail("warmup_steps", "must be >= 0", "use 0 for no warmup")
        self._choice("lr_scheduler_type", LR_SCHEDULERS)
        for name in ("num_minibatches", "num_inner_epochs"):
            if getattr(self, name) < 1:
                self._fail(name, "must be >= 1", "use 1 or more")
        if self.num_minibatches > self.prompts_per_step:
            self._fail(
                "num_minibatches",
                f"cannot exceed prompts_per_step={self.prompts_per_step} (groups are split)",
                "lower it",
            )
        self._choice("nan_policy", NAN_POLICIES)
        if self.lora_rank < 1:
            self._fail("lora_rank", "LoRA rank must be >= 1", "the paper uses r16/alpha32")
        if self.lora_alpha <= 0:
            self._fail("lora_alpha", "must be > 0", "the paper uses r16/alpha32")
        self._choice("mixed_precision", ("no", "bf16", "fp16"))

    def _check_schedule(self) -> None:
        for name in ("max_steps", "save_steps", "sample_steps", "logging_steps", "eval_num_prompts"):
            if getattr(self, name) < 1:
                self._fail(name, "must be positive", f"set {name} >= 1")
        if self.eval_steps < 0:
            self._fail("eval_steps", "must be >= 0", "use 0 to evaluate only at the start and the end")
        if self.eval_num_sampling_steps < 1:
            self._fail("eval_num_sampling_steps", "must be positive", "e.g. 20")
        if self.monitor_steps < 0:
            self._fail("monitor_steps", "must be >= 0", "use 0 to switch the training-sample monitor off")
        if self.save_total_limit < 1:
            self._fail("save_total_limit", "must be >= 1 (the newest checkpoint is always kept)", "e.g. 3")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
