"""`arr train` and `arr demo`: thin layers over `parse_recipe` + `build_trainer`.

arr train recipes/shapes_t2i_rpo.yaml --max_steps 4
arr train recipes/flux_dev_t2i_rpo.yaml --print_config   # every resolved value (preset included), then exit
accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m arr train recipes/shapes_t2i_rpo.yaml
arr demo                      # the shapes-world demo on CPU: one rank per core, ~21 CPU-minutes
arr demo --judge vlm          # the same with the shipped VLM judge (shapes-judge) instead of the pixel judge
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources
from pathlib import Path

from arr.cli.common import shorten, writable_dir

DEMO_RECIPE = "shapes_t2i_rpo.yaml"
# The demo judged by the shipped VLM judge; the exact pixel judge still evaluates (and monitors) it.
DEMO_RECIPES = {"pixel": DEMO_RECIPE, "vlm": "shapes_t2i_rpo_vlm.yaml"}


def register_train(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    # The recipe parser (TRL's) owns every argument, `--help` included: see `_run_train`.
    p = sub.add_parser(name, help=help, description=help, add_help=False, forward=True)
    p.set_defaults(run=_run_train)


def register_demo(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--output-dir", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument(
        "--judge",
        choices=sorted(DEMO_RECIPES),
        default="pixel",
        help="the training judge: the exact pixel judge, or the shipped VLM judge (shapes-judge) with its own "
        "recipe; both are evaluated by the pixel judge on the same held-out prompts (default: pixel)",
    )
    p.add_argument(
        "--num-processes",
        default="auto",
        help="CPU ranks to train with (default: auto, one per usable core, at most 8, dividing prompts_per_step)",
    )
    p.epilog = "Any recipe key can be overridden, e.g. `arr demo --max_steps 10 --reward_mode pointwise`."
    p.set_defaults(run=_run_demo, passthrough=True, overrides=[])


def demo_recipe_path(judge: str = "pixel") -> Path:
    return Path(str(resources.files("arr.recipes").joinpath(DEMO_RECIPES[judge])))


class _OneSpellingFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that lists each recipe key once: TRL registers `--max_steps` and `--max-steps`, and both work."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        names: list[str] = []
        for name in action.option_strings:
            if name.replace("_", "-") not in (n.replace("_", "-") for n in names):
                names.append(name)
        if action.nargs == 0:
            return ", ".join(names)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{name} {metavar}" for name in names)


def recipe_help() -> str:
    """`arr train --help`: every recipe key, with its default and help, grouped by dataclass."""
    from trl import TrlParser

    from arr.rpo.recipe import RECIPE_TYPES

    return TrlParser(
        RECIPE_TYPES,
        prog="arr train",
        usage="arr train RECIPE.yaml [--key value ...]",
        description="Train a policy with RPO from a YAML recipe. Every recipe key below can also be given on the "
        "command line (`--key value`, as `--max_steps` or `--max-steps`); command-line values override the "
        "recipe's, a preset (`rpo_preset`) fills the keys neither sets, and unknown keys are errors. "
        "`--print_config` prints every resolved value as a recipe and exits without training.",
        formatter_class=_OneSpellingFormatter,
    ).format_help()


def _run_train(args: argparse.Namespace) -> int:
    argv = list(args.forwarded)
    if not argv or "-h" in argv or "--help" in argv:
        sys.stdout.write(recipe_help())
        return 0
    if PRINT_CONFIG in argv or PRINT_CONFIG.replace("_", "-") in argv:
        return _print_config([a for a in argv if a not in (PRINT_CONFIG, PRINT_CONFIG.replace("_", "-"))])
    return _train(argv)


PRINT_CONFIG = "--print_config"


def _print_config(argv: list[str]) -> int:
    """Print the recipe as it resolves (defaults, preset, YAML, command line): what the run's config.yaml records."""
    from arr.cli.common import CLIError
    from arr.rpo.config import ConfigError
    from arr.rpo.recipe import parse_recipe

    try:
        sys.stdout.write(parse_recipe(argv).to_yaml())
    except (ConfigError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from arr.cli.common import CLIError
    from arr.rpo.config import ConfigError
    from arr.rpo.launch import launch_cpu_processes, launched_as_a_rank
    from arr.rpo.recipe import parse_recipe

    argv = [str(demo_recipe_path(args.judge)), "--output_dir", args.output_dir, *args.overrides]
    if launched_as_a_rank():
        return _train(argv, demo=True)
    start = time.perf_counter()
    try:
        rpo = parse_recipe(argv).rpo
    except ConfigError as e:
        raise CLIError(str(e)) from None
    n = _demo_processes(args.num_processes, rpo.prompts_per_step, rpo.cpu)
    writable_dir(rpo.output_dir, "--output-dir")
    if n == 1:
        code = _train(argv, demo=True)
    else:
        print(f"arr demo: training with {n} CPU processes (--num_processes 1 for one)", flush=True)
        code = launch_cpu_processes(
            n,
            [
                "demo",
                "--judge",
                args.judge,
                "--output_dir",
                args.output_dir,
                "--num_processes",
                str(n),
                *args.overrides,
            ],
        )
    if code == 0:
        from arr.rpo.trainer import format_duration

        print(f"arr demo: finished in {format_duration(time.perf_counter() - start)}", flush=True)
    return code


def _demo_processes(requested: str, prompts_per_step: int, cpu: bool) -> int:
    from arr.cli.common import CLIError
    from arr.rpo.launch import auto_num_processes, can_launch_ranks

    if requested == "auto":
        import torch

        # Several ranks pay off on CPU only; a GPU run is launched by the user with accelerate.
        on_cpu = cpu or not torch.cuda.is_available()
        return auto_num_processes(prompts_per_step) if on_cpu and can_launch_ranks() else 1
    try:
        n = int(requested)
    except ValueError:
        n = 0
    if n < 1:
        raise CLIError(f"--num_processes must be a positive integer or auto, got {requested!r}")
    if prompts_per_step % n:
        raise CLIError(
            f"--num_processes {n} does not divide prompts_per_step={prompts_per_step}: every process judges "
            "whole groups"
        )
    return n


def _check_prompts(trainer) -> None:
    """Refuse prompts the policy's text encoder cannot take before the first step, not at the step that draws one.

    Diffusers pipelines truncate long prompts (with a warning); the shapes world's word-level encoder refuses them.
    """
    from arr.cli.common import CLIError
    from arr.policies.shapes import ShapesPolicy

    if not isinstance(trainer.policy, ShapesPolicy):
        return
    encoder = trainer.policy.model.text_encoder
    for where, records in (("training", trainer.train_records), ("evaluation", trainer.eval_records)):
        try:
            encoder.tokenize([r.prompt for r in records])
            continue
        except ValueError:
            pass
        for n, record in enumerate(records, 1):  # name the first offending record
            try:
                encoder.tokenize([record.prompt])
            except ValueError:
                raise CLIError(
                    f"{where} record {n}: prompt {shorten(record.prompt)!r} is longer than the shapes text "
                    f"encoder's {encoder.max_length - 2} words; shorten the dataset's prompts"
                ) from None


def _train(argv: list[str], demo: bool = False) -> int:
    from arr.cli.common import CLIError
    from arr.rpo.build import build_trainer
    from arr.rpo.config import ConfigError
    from arr.rpo.recipe import parse_recipe
    from arr.rpo.report import eval_noise_band
    from arr.rpo.trainer import TrainingStopped

    try:
        recipe = parse_recipe(argv)
        writable_dir(recipe.rpo.output_dir, "output_dir")
        trainer = build_trainer(recipe)
        _check_prompts(trainer)
        trainer.train()
    except (ConfigError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None
    except TrainingStopped as e:
        raise CLIError(str(e)) from None
    if trainer.accelerator.is_main_process:
        evals = [r for r in trainer.history if "eval_score" in r]
        summary = {"output_dir": str(trainer.output_dir), "steps": trainer.step}
        if evals:
            summary["eval_score_before"] = round(evals[0]["eval_score"], 4)
            summary["eval_score_after"] = round(evals[-1]["eval_score"], 4)
        summary["report"] = str(trainer.output_dir / "report.html")
        band = eval_noise_band(evals[0], evals[-1]) if evals else None
        if band is not None:
            summary["eval_change_noise_band"] = round(band, 4)
        if demo and evals:
            change = evals[-1]["eval_score"] - evals[0]["eval_score"]
            paired = "eval_change_se" in evals[-1]
            noise = (
                f" ({change:+.3f}; changes within ±{band:.3f} are evaluation noise at 95%"
                f"{', the same prompts and seeds compared one by one' if paired else ''})"
                if band is not None
                else ""
            )
            print(
                f"held-out shapes-GenEval score: {evals[0]['eval_score']:.3f} before -> "
                f"{evals[-1]['eval_score']:.3f} after {trainer.step} RPO steps{noise}\n"
                "Rerun on this machine with the same number of ranks, it gives this result exactly; on another CPU "
                "or rank count float rounding differs, and the result varies as it does from seed to seed."
            )
        print(json.dumps(summary, indent=2))
    return 0
