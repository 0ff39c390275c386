"""The `arr` command line: a thin layer over the library.

    arr judge --backend pixel --prompt "a red circle" --rubric examples/rubric.json examples/good.png
    arr rubric show examples/rubric.json

Each subcommand imports what it needs when it runs, so `arr --help` stays fast (it imports neither torch nor any
model library). Every long option is accepted as `--a-b` and as `--a_b`, like TRL's recipe parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

# name -> (one-line help, "module:function" that adds the subparser). One table, so `arr --help` lists them all;
# each subcommand's module (arr/cli/<name>.py) must import nothing heavy at module level.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "train the built-in shapes model with RPO and the pixel judge on CPU (~21 CPU-minutes)",
        "arr.cli.train:register_demo",
    ),
    "train": (
        "train a policy with RPO from a YAML recipe: `arr train RECIPE.yaml [--key value ...]`",
        "arr.cli.train:register_train",
    ),
    "judge": (
        "judge one image (pointwise) or two (pairwise) against a rubric; prints JSON",
        "arr.cli.judge:register",
    ),
    "rubric": (
        "rubrics: `arr rubric show | generate | prompts` (ARR generate -> verify -> refine)",
        "arr.cli.rubric:register",
    ),
    "eval": (
        "evaluate editing models on benchmarks (`arr eval SUITE.yaml --policy P --backend J`) "
        "and judges (`arr eval preference`)",
        "arr.cli.eval:register",
    ),
    "align": (
        "representation alignment: metrics of two .npy feature files, or a run's align/* curves",
        "arr.cli.align:register",
    ),
    "serve": ("serve a rubric judge over HTTP (score, compare, group; /health)", "arr.cli.serve:register"),
    "reward-model": (
        "reward-model baselines: `arr reward-model train --pairs pairs.json --out DIR` (Bradley-Terry), `eval`",
        "arr.cli.reward_model:register",
    ),
    "shapes": (
        "the built-in shapes world: sample, edit, pretrain its tiny models",
        "arr.cli.shapes:register",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from arr.cli.common import ArgumentParser

    parser = ArgumentParser(
        prog="arr",
        description="Rubric-based rewards (Auto-Rubric as Reward) and Rubric Policy Optimization.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help, target) in SUBCOMMANDS.items():
        module_name, func_name = target.split(":")
        getattr(importlib.import_module(module_name), func_name)(sub, name, help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The shared 2-core machines this often runs on lose ~4x throughput to busy-waiting OpenMP threads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    # Recipe overrides (`arr demo --max_steps 5`) are not declared to argparse: commands that take them set
    # `passthrough` and receive the rest; for every other command an unknown argument is an error.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "passthrough", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*getattr(args, "overrides", []), *extra]
    from arr.cli.common import CLIError, terminal_safe

    # Library warnings (a judge request that failed after its retries) print as `arr judge: ...` lines.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"{args.command_prog}: %(message)s"))
    logging.getLogger("arr").addHandler(handler)
    try:
        return args.run(args)
    except CLIError as e:
        # terminal_safe also escapes newlines: an error is one line, whatever text from the input it quotes.
        print(f"{args.command_prog}: error: {terminal_safe(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{args.command_prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("arr").removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
