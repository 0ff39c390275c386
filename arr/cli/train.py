"""`arr train` and `arr demo`: thin layers over `parse_recipe` + `build_trainer`.

arr train recipes/shapes_t2i_rpo.yaml --max_steps 4
accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml -m arr train recipes/shapes_t2i_rpo.yaml
arr demo                      # the shapes-world demo on CPU: one rank per core, 7-9 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

DEMO_RECIPE = "shapes_t2i_rpo.yaml"


def register_train(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help, add_help=False)
    p.add_argument("recipe_args", nargs=argparse.REMAINDER, help="RECIPE.yaml [--key value ...]")
    p.set_defaults(run=_run_train)


def register_demo(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    p.add_argument("--output_dir", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument(
        "--num_processes",
        default="auto",
        help="CPU ranks to train with (default: auto, one per usable core, at most 8, dividing prompts_per_step)",
    )
    p.epilog = "Any recipe key can be overridden, e.g. `arr demo --max_steps 10 --reward_mode pointwise`."
    p.set_defaults(run=_run_demo, passthrough=True, overrides=[])


def demo_recipe_path() -> Path:
    return Path(str(resources.files("arr.recipes").joinpath(DEMO_RECIPE)))


def _run_train(args: argparse.Namespace) -> int:
    argv = list(args.recipe_args)
    if not argv or argv[0] in ("-h", "--help"):
        from trl import TrlParser

        from arr.rpo.recipe import RECIPE_TYPES

        TrlParser(
            RECIPE_TYPES, prog="arr train", usage="arr train RECIPE.yaml [--key value ...]"
        ).print_help()
        return 0
    return _train(argv)


def _run_demo(args: argparse.Namespace) -> int:
    from arr.cli.common import CLIError
    from arr.rpo.config import ConfigError
    from arr.rpo.launch import launch_cpu_processes, launched_as_a_rank
    from arr.rpo.recipe import parse_recipe

    argv = [str(demo_recipe_path()), "--output_dir", args.output_dir, *args.overrides]
    if launched_as_a_rank():
        return _train(argv, demo=True)
    try:
        rpo = parse_recipe(argv).rpo
    except ConfigError as e:
        raise CLIError(str(e)) from None
    n = _demo_processes(args.num_processes, rpo.prompts_per_step, rpo.cpu)
    if n == 1:
        return _train(argv, demo=True)
    print(f"arr demo: training with {n} CPU processes (--num_processes 1 for one)", flush=True)
    return launch_cpu_processes(
        n, ["demo", "--output_dir", args.output_dir, "--num_processes", str(n), *args.overrides]
    )


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


def _train(argv: list[str], demo: bool = False) -> int:
    from arr.cli.common import CLIError
    from arr.rpo.build import build_trainer
    from arr.rpo.config import ConfigError
    from arr.rpo.recipe import parse_recipe
    from arr.rpo.report import eval_noise_band
    from arr.rpo.trainer import TrainingStopped

    try:
        recipe = parse_recipe(argv)
        trainer = build_trainer(recipe)
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
            noise = (
                f" ({change:+.3f}; changes within ±{band:.3f} are evaluation noise at 95%)"
                if band is not None
                else ""
            )
            print(
                f"held-out shapes-GenEval score: {evals[0]['eval_score']:.3f} before -> "
                f"{evals[-1]['eval_score']:.3f} after {trainer.step} RPO steps{noise}"
            )
        print(json.dumps(summary, indent=2))
    return 0
