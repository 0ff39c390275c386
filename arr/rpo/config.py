"""RPOConfig: every hyperparameter of Rubric Policy Optimization, with the paper's defaults.

Defaults follow the ARR/RPO paper's FLUX.1-dev text-to-image setting: groups of 2 from the same
initial noise, winner +1.0 / loser -0.1, advantages clamped to +-5, PPO clip 0.2, KL beta 0.01 on transition means
against the LoRA-disabled reference, flow SDE eta 0.3, timestep shift 3, 8 sampling steps, LoRA r16/alpha32,
AdamW lr 5e-5, grad-norm clip 1.0. Validation happens in `__post_init__`, with messages that name the rule, the
values received and the fix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

REWARD_MODES = ("pairwise", "pointwise")
LOGPROB_REDUCTIONS = ("mean", "sum")
OBJECTIVES = ("policy_gradient", "forward")
LR_SCHEDULERS = ("constant", "linear", "cosine")


class ConfigError(ValueError):
    """An invalid training configuration; the message names the field, the value and the fix."""


@dataclass
class RPOConfig:
    """Configuration of `RPOTrainer` (YAML recipes + command-line overrides via `arr train`)."""

    # ---- run ----
    output_dir: str = field(
        default="runs/rpo", metadata={"help": "run directory (metrics, checkpoints, report)"}
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
    shift: float = field(default=3.0, metadata={"help": "timestep shift of the sigma schedule"})
    guidance_scale: float = field(
        default=3.5, metadata={"help": "guidance while sampling (CFG or FLUX guidance)"}
    )
    train_timestep_fraction: float = field(
        default=1.0,
        metadata={"help": "fraction of the sampling steps that are stochastic and trained (the rest ODE)"},
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
            "help": "policy_gradient (the paper: PPO-clipped ratio of SDE transition log-probs) or forward "
            "(reward-weighted flow matching on the final samples, negative-aware as in DiffusionNFT: no "
            "log-probabilities, so any sampler works, eta 0 included)"
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
    logprob_reduction: str = field(
        default="sum",
        metadata={"help": "reduce transition log-probs (and the KL) over dimensions: sum (exact) or mean"},
    )

    # ---- optimisation ----
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate"})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-4
    adam_epsilon: float = 1e-8
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
    logging_steps: int = field(default=1, metadata={"help": "write metrics every N steps"})
    sample_steps: int = field(default=50, metadata={"help": "save a grid of training samples every N steps"})
    save_steps: int = field(default=50, metadata={"help": "checkpoint every N steps (and on SIGTERM/SIGINT)"})
    save_total_limit: int = field(default=3, metadata={"help": "checkpoints kept (oldest deleted first)"})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest', a step_N folder, or None for a fresh run"}
    )
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard | wandb | none"})

    def __post_init__(self) -> None:
        def fail(name: str, rule: str, fix: str) -> None:
            raise ConfigError(f"RPOConfig.{name}={getattr(self, name)!r}: {rule}; {fix}")

        for name in ("learning_rate", "eta", "shift", "guidance_scale", "beta", "clip_range", "adv_clip",
                     "win_reward", "lose_reward", "max_grad_norm", "weight_decay", "adam_epsilon"):  # fmt: skip
            if not math.isfinite(getattr(self, name)):
                fail(name, "must be a finite number", "check the recipe for nan/inf")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            fail("lora_rank", "LoRA rank must be >= 1 and lora_alpha > 0", "the paper uses r16/alpha32")
        if self.group_size < 2:
            fail(
                "group_size",
                "RPO compares samples within a group, so it needs at least 2",
                "set group_size >= 2",
            )
        if self.prompts_per_step < 1:
            fail("prompts_per_step", "must be positive", "set prompts_per_step >= 1")
        if self.reward_mode not in REWARD_MODES:
            fail("reward_mode", f"must be one of {REWARD_MODES}", "choose one of them")
        if self.logprob_reduction not in LOGPROB_REDUCTIONS:
            fail("logprob_reduction", f"must be one of {LOGPROB_REDUCTIONS}", "choose one of them")
        if not 0.0 < self.train_timestep_fraction <= 1.0:
            fail("train_timestep_fraction", "must be in (0, 1]", "e.g. 0.5 trains half of the sampling steps")
        if self.num_sampling_steps < 1:
            fail("num_sampling_steps", "must be positive", "the paper uses 8 (FLUX) or 10 (editing)")
        if self.eta < 0:
            fail("eta", "the SDE noise level cannot be negative", "the paper uses 0.3")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            fail("lr_scheduler_type", f"must be one of {LR_SCHEDULERS}", "choose one of them")
        if self.objective not in OBJECTIVES:
            fail("objective", f"must be one of {OBJECTIVES}", "choose one of them")
        if self.eta == 0 and self.objective == "policy_gradient":
            fail(
                "eta",
                "with eta 0 the sampler is deterministic and has no log-probability",
                "use eta > 0, or objective: forward",
            )
        if self.eta == 0 and self.shared_noise:
            fail(
                "shared_noise",
                "with eta 0 and shared initial noise every sample of a group is the same image, so each "
                "judgment ties and nothing is learned",
                "set shared_noise: false (or eta > 0)",
            )
        if self.forward_beta <= 0 or self.forward_timesteps < 1 or not 0 <= self.forward_t_min < 1:
            fail(
                "forward_beta",
                "forward_beta must be > 0, forward_timesteps >= 1 and forward_t_min in [0, 1)",
                "the defaults are 1.0, 2 and 0.0",
            )
        if not 0 <= self.forward_ema_decay < 1:
            fail(
                "forward_ema_decay", "must be in [0, 1)", "e.g. 0.9 (a ~10-step average), or 0 to turn it off"
            )
        if self.clip_range <= 0:
            fail("clip_range", "must be positive", "the paper uses 0.2")
        if self.beta < 0:
            fail("beta", "must be >= 0", "use 0 to turn the KL penalty off")
        if self.adv_clip <= 0:
            fail("adv_clip", "must be positive", "the paper clamps advantages to +-5")
        if self.learning_rate <= 0:
            fail("learning_rate", "must be positive", "the paper uses 5e-5 (t2i) or 1e-5 (editing)")
        if self.num_minibatches < 1 or self.num_inner_epochs < 1:
            fail("num_minibatches", "num_minibatches and num_inner_epochs must be >= 1", "use 1 or more")
        if self.num_minibatches > self.prompts_per_step:
            fail(
                "num_minibatches",
                f"cannot exceed prompts_per_step={self.prompts_per_step} (groups are split)",
                "lower it",
            )
        if self.overlap_judging not in ("auto", "on", "off"):
            fail("overlap_judging", "must be auto, on or off", "auto overlaps only with remote judges")
        if self.train_batch_size < 1 or self.sample_batch_size < 1:
            fail(
                "train_batch_size",
                "batch sizes must be positive",
                "set train_batch_size and sample_batch_size >= 1",
            )
        if not 0 <= self.max_judge_failure_rate <= 1:
            fail("max_judge_failure_rate", "must be a fraction in [0, 1]", "e.g. 0.5")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            fail("mixed_precision", "must be no, bf16 or fp16", "choose one of them")
        if self.resume_from_checkpoint in ("", "none", "None"):
            self.resume_from_checkpoint = None
        for name in ("max_steps", "save_steps", "sample_steps", "logging_steps", "eval_num_prompts"):
            if getattr(self, name) < 1:
                fail(name, "must be positive", f"set {name} >= 1")
        if self.eval_steps < 0:
            fail("eval_steps", "must be >= 0", "use 0 to evaluate only at the start and the end")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
