"""Build an `RPOTrainer` from a parsed recipe: the policy, the judge, the reward, the data and the evaluator.

This is the only place where recipe names become objects, so `arr train`, `arr demo` and user scripts share it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from arr.data import PromptRecord, load_records
from arr.rpo.config import ConfigError
from arr.rpo.recipe import DataArguments, JudgeArguments, PolicyArguments, Recipe
from arr.rpo.trainer import RPOTrainer

logger = logging.getLogger(__name__)

EVAL_SEED = (
    1234  # held-out prompts are drawn with their own seed, so the eval set never depends on the run seed
)


def policy_device(cpu: bool) -> str:
    """This process's device: its own GPU under `accelerate launch` (LOCAL_RANK), else the CPU.

    The policy is built before the trainer's Accelerator exists, so the rank's GPU is read from the launcher's
    environment; loading every rank onto cuda:0 would put 8 copies of FLUX on one card.
    """
    import torch

    if cpu or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def policy_settings(recipe: Recipe) -> dict[str, Any]:
    """The sampler settings a recipe gives its policy's constructor (every family takes them)."""
    rpo, args = recipe.rpo, recipe.policy
    return dict(
        num_steps=rpo.num_sampling_steps,
        eta=rpo.eta,
        shift=rpo.shift,
        reduction=rpo.logprob_reduction,
        sde_convention=rpo.sde_convention,
        guidance_scale=rpo.guidance_scale,
        true_cfg_scale=args.true_cfg_scale,
        integer_timesteps=args.integer_timesteps,
    )


def build_policy(args: PolicyArguments, recipe: Recipe):
    import torch

    from arr.policies import make_policy

    rpo = recipe.rpo
    dtype = getattr(torch, args.torch_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(
            f"torch_dtype={args.torch_dtype!r} is not a torch dtype; use float32, bfloat16 or float16"
        )
    common = {**policy_settings(recipe), "device": policy_device(rpo.cpu)}
    if args.policy == "shapes":
        from arr.policies.shapes import ShapesPolicy

        try:
            policy = ShapesPolicy.from_pretrained(args.model_name_or_path, **common)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load shapes model {args.model_name_or_path!r}: {e}") from None
    else:
        try:
            # A recipe is a data file: it names a registered family, never a module to import.
            policy = make_policy(
                args.policy,
                allow_import_path=False,
                model_id=args.model_name_or_path,
                torch_dtype=dtype,
                **common,
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load policy {args.policy!r} from {args.model_name_or_path!r}: {e}"
            ) from None
    try:
        policy.check_guidance(rpo.guidance_scale)
    except ValueError as e:
        raise ConfigError(f"policy {args.policy!r}: {e}") from None
    return policy


def build_judge(args: JudgeArguments, output_dir: str):
    """The recipe's `RubricJudge`: its backend from the `judge_*` keys (the settings `arr judge` takes as options)."""
    from arr.backends import load_backend
    from arr.backends.options import BackendOptionError, backend_kwargs
    from arr.cache import CacheError
    from arr.judge import RubricJudge

    try:
        kwargs = backend_kwargs(
            args.judge_backend,
            model=args.judge_model,
            base_url=args.judge_base_url,
            api_key_env=args.judge_api_key_env,
            dtype=args.judge_dtype,
            device=args.judge_device,
            mode=args.judge_mode,
            trust_remote_code=args.judge_trust_remote_code,
            max_concurrency=args.judge_max_concurrency,
            timeout=args.judge_timeout,
            spell=lambda name: f"judge_{name}",
        )
    except BackendOptionError as e:
        raise ConfigError(str(e)) from None
    try:
        backend = load_backend(args.judge_backend, allow_import_path=False, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot create judge backend {args.judge_backend!r}: {e}") from None
    cache = args.judge_cache or str(Path(output_dir) / "judge_cache.sqlite")
    try:
        return RubricJudge(backend, cache=cache, swap=args.judge_swap)
    except CacheError as e:
        raise ConfigError(f"judge_cache: {e}") from None


def build_reward(judge, recipe: Recipe):
    from arr.rewards import RubricPairwiseReward, RubricPointwiseReward

    rpo, kind = recipe.rpo, recipe.judge.reward
    if kind == "reward_model":
        from arr.reward_models import PairwiseRewardModel, RewardModelReward

        if not recipe.judge.reward_model:
            raise ConfigError(
                "reward=reward_model needs reward_model: FOLDER (written by `arr reward-model train`)"
            )
        if rpo.reward_mode != "pointwise":
            raise ConfigError(
                f"reward=reward_model gives one score per image, not pairwise verdicts, but reward_mode="
                f"{rpo.reward_mode!r}; set reward_mode: pointwise"
            )
        try:
            model = PairwiseRewardModel.from_pretrained(
                recipe.judge.reward_model, device=policy_device(rpo.cpu)
            )
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"cannot load reward_model {recipe.judge.reward_model!r}: {e}") from None
        return RewardModelReward(model)
    if kind == "plain":
        from arr.reward_models import PlainJudgeReward

        if rpo.reward_mode != "pairwise":
            raise ConfigError("reward=plain is a pairwise judge; set reward_mode: pairwise")
        return PlainJudgeReward(
            judge, win_reward=rpo.win_reward, lose_reward=rpo.lose_reward, mapping=rpo.pairwise_reward
        )
    if kind != "rubric":
        raise ConfigError(f"reward={kind!r}: choose rubric, plain or reward_model")
    if rpo.reward_mode == "pairwise":
        return RubricPairwiseReward(
            judge, win_reward=rpo.win_reward, lose_reward=rpo.lose_reward, mapping=rpo.pairwise_reward
        )
    return RubricPointwiseReward(judge)


def parse_category_multipliers(text: str) -> dict[str, float]:
    """'counting=2, position=1.5' -> {"counting": 2.0, "position": 1.5}; '' -> {}."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"category_multipliers: expected 'category=number' items separated by commas, got {item!r}"
            ) from None
    return out


def build_data(args: DataArguments, recipe: Recipe) -> tuple[list[PromptRecord], list[PromptRecord], Any]:
    """(train records, eval records, evaluator or None for the judge's pointwise score); a dataset that is not a
    shapes world is a JSONL file or a Hub dataset (`arr.data.load_records`)."""
    rpo = recipe.rpo
    if args.dataset == "shapes":
        from arr.shapes.training import balanced_t2i_records, geneval_scores, t2i_records

        multipliers = parse_category_multipliers(args.category_multipliers)
        try:
            train = t2i_records(args.num_train_prompts, args.train_split, rpo.seed, multipliers)
        except ValueError as e:
            raise ConfigError(f"category_multipliers={args.category_multipliers!r}: {e}") from None
        evals = balanced_t2i_records(rpo.eval_num_prompts, args.eval_split, seed=EVAL_SEED)
        return train, evals, geneval_scores
    if args.category_multipliers:
        raise ConfigError(
            f"category_multipliers is for the shapes text-to-image world (dataset: shapes), not {args.dataset!r}"
        )
    if args.dataset == "shapes_edit":
        from arr.shapes.training import edit_records, edit_scores

        train = edit_records(args.num_train_prompts, args.train_split, seed=rpo.seed)
        evals = edit_records(rpo.eval_num_prompts, args.eval_split, seed=EVAL_SEED)
        return train, evals, edit_scores
    train = load_records(args.dataset, args.train_split)
    evals = load_records(args.dataset, args.eval_split) if args.eval_split else []
    return train, evals, None


def build_monitor(judge, recipe: Recipe):
    """The training-sample monitor of `monitor_steps`: in the shapes worlds, the pixel judge beside the training
    judge's own score (`arr.shapes.training.sample_monitor`); None when off or for other datasets."""
    if not recipe.rpo.monitor_steps:
        return None
    if recipe.data.dataset not in ("shapes", "shapes_edit"):
        raise ConfigError(
            f"monitor_steps needs an exact judge to compare with, which only the shapes worlds have (dataset: "
            f"shapes or shapes_edit), not {recipe.data.dataset!r}; set monitor_steps: 0"
        )
    from arr.shapes.training import sample_monitor

    return sample_monitor(judge)


def build_sample_notes(args: DataArguments) -> Any:
    """The verdict and score under each held-out sample of the report: the shapes worlds' exact checks, else None
    (the report then asks the reward's judge)."""
    if args.dataset == "shapes":
        from arr.shapes.training import geneval_notes

        return geneval_notes
    if args.dataset == "shapes_edit":
        from arr.shapes.training import edit_notes

        return edit_notes
    return None


def _judge_has_features(judge: Any) -> bool:
    from arr.diagnostics.probe import judge_features_of

    try:
        judge_features_of(judge)
    except TypeError:
        return False
    return True


def build_trainer(recipe: Recipe, callbacks=()) -> RPOTrainer:
    from arr.rpo.report import ReportCallback

    policy = build_policy(recipe.policy, recipe)
    judge = build_judge(recipe.judge, recipe.rpo.output_dir)
    reward = build_reward(judge, recipe)
    train, evals, evaluator = build_data(recipe.data, recipe)
    targets = [t.strip() for t in recipe.policy.lora_target_modules.split(",") if t.strip()]
    diag = recipe.diagnostics
    if diag.align_every > 0 and not _judge_has_features(judge):
        logger.warning(
            "align_every %d: the %s judge shows no image features, so policy-judge alignment is not measured "
            "(set align_every 0 to silence this)",
            diag.align_every,
            recipe.judge.judge_backend,
        )
    elif diag.align_every > 0:
        from arr.diagnostics.probe import AlignmentProbe

        metrics = diag.align_metrics if diag.align_metrics == "all" else diag.align_metrics.split(",")
        probe = AlignmentProbe(
            num_prompts=diag.align_num_prompts, align_every=diag.align_every, metrics=metrics
        )
        callbacks = [probe, *callbacks]
    report = ReportCallback(build_sample_notes(recipe.data), diag.report_self_contained)
    return RPOTrainer(
        policy,
        reward,
        recipe.rpo,
        train_dataset=train,
        eval_dataset=evals,
        evaluator=evaluator,
        monitor=build_monitor(judge, recipe),
        callbacks=[report, *callbacks],
        lora_target_modules=targets or None,
        run_config=recipe.to_dict(),
    )
