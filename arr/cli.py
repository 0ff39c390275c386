"""The `arr` command line: a thin layer over the library.

    arr judge --backend pixel --prompt "a red circle" --rubric rubric.json image.png [image_b.png]
    arr rubric show rubric.json

Each subcommand imports what it needs when it runs, so `arr --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

# name -> (one-line help, "module:function" that adds the subparser). One table, so `arr --help` lists them all;
# registrars live beside the feature they expose and must import nothing heavy at module level.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "train the built-in shapes model with RPO and the pixel judge on CPU (7-9 min on 2 cores)",
        "arr.rpo.cli:register_demo",
    ),
    "train": (
        "train a policy with RPO from a YAML recipe: `arr train RECIPE.yaml [--key value ...]`",
        "arr.rpo.cli:register_train",
    ),
    "judge": (
        "judge one image (pointwise) or two (pairwise) against a rubric; prints JSON",
        "arr.cli:_register_judge",
    ),
    "rubric": (
        "rubrics: `arr rubric show | generate | prompts` (ARR generate -> verify -> refine)",
        "arr.cli:_register_rubric",
    ),
    "eval": (
        "evaluate editing models on benchmarks (`arr eval SUITE.yaml --policy P --judge J`) "
        "and judges (`arr eval preference`)",
        "arr.evaluation.cli:register",
    ),
    "align": (
        "representation alignment: metrics of two .npy feature files, or a run's align/* curves",
        "arr.diagnostics.cli:register",
    ),
    "serve": ("serve a rubric judge over HTTP (score, compare, group; /health)", "arr.serve:register"),
    "reward-model": (
        "reward-model baselines: `arr reward-model train --pairs pairs.json --out DIR` (Bradley-Terry), `eval`",
        "arr.reward_models.cli:register",
    ),
    "shapes": (
        "the built-in shapes world: sample, edit, pretrain its tiny models",
        "arr.shapes.cli:register",
    ),
}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _backend_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("judge backend")
    g.add_argument("--backend", default="pixel", help="hf | openai | pixel | module:Class (default: pixel)")
    g.add_argument("--model", help="hf: model id or folder; openai: the served model name")
    g.add_argument("--base-url", help="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key-env", help="openai: environment variable that holds the API key")
    g.add_argument("--dtype", help="hf: torch dtype (auto, bfloat16, float32, ...)")
    g.add_argument("--device", help="hf: device (auto, cpu, cuda, ...)")
    g.add_argument("--mode", help="hf: 'probs' (choice-token probabilities) or 'generate' (reasoned answers)")
    g.add_argument("--trust-remote-code", action="store_true", help="hf: allow the model folder's own code")
    g.add_argument("--cache", help="path of a judgment cache (sqlite); created if missing")


def backend_from_args(args: argparse.Namespace):
    from arr.backends import load_backend

    kwargs = {}
    if args.backend == "hf":
        if not args.model:
            raise CLIError("--backend hf needs --model (a model id or a local folder)")
        kwargs["model"] = args.model
        for name in ("dtype", "device", "mode"):
            if getattr(args, name):
                kwargs[name] = getattr(args, name)
        if args.trust_remote_code:
            kwargs["trust_remote_code"] = True
    elif args.backend == "openai":
        if not args.model:
            raise CLIError("--backend openai needs --model (the model name the server serves)")
        kwargs["model"] = args.model
        if args.base_url:
            kwargs["base_url"] = args.base_url
        if args.api_key_env:
            kwargs["api_key_env"] = args.api_key_env
    try:
        return load_backend(args.backend, **kwargs)
    except (ValueError, OSError) as e:
        raise CLIError(str(e)) from None


def _register_judge(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    _backend_args(p)
    p.add_argument(
        "--prompt", required=True, help="the prompt (or editing instruction) the images were made for"
    )
    p.add_argument("--rubric", required=True, help="rubric JSON file")
    p.add_argument("--source", help="editing: the source image")
    p.add_argument("--no-swap", action="store_true", help="pairwise: ask in the given order only")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="one image (score) or two (compare)")
    p.set_defaults(run=_run_judge)


def _run_judge(args: argparse.Namespace) -> int:
    from arr.images import ImageLoadError, load_image
    from arr.judge import RubricJudge
    from arr.rubric import Rubric, RubricParseError

    if len(args.images) > 2:
        raise CLIError(f"arr judge takes one image (score) or two (compare), got {len(args.images)}")
    try:
        rubric = Rubric.load(args.rubric)
        images = [load_image(p) for p in args.images]
        source = load_image(args.source) if args.source else None
    except (RubricParseError, ImageLoadError) as e:
        raise CLIError(str(e)) from None
    judge = RubricJudge(backend_from_args(args), cache=args.cache, swap=not args.no_swap)
    if len(images) == 1:
        result = {"mode": "score", **judge.score(args.prompt, images[0], rubric, source).to_dict()}
    else:
        result = {
            "mode": "compare",
            **judge.compare(args.prompt, images[0], images[1], rubric, source).to_dict(),
        }
    result["judge"] = {"backend": judge.backend.name, **judge.stats.to_dict()}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _register_rubric(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    rsub = p.add_subparsers(dest="rubric_command", metavar="COMMAND", required=True)
    show = rsub.add_parser("show", help="pretty-print a rubric (validated and repaired)")
    show.add_argument("path", help="rubric JSON file (or a VLM answer containing one)")
    show.add_argument("--json", action="store_true", help="print canonical JSON instead of text")
    show.set_defaults(run=_run_rubric_show)
    from arr.generate_cli import add_rubric_subcommands  # `arr rubric generate` and `arr rubric prompts`

    add_rubric_subcommands(rsub)


def _run_rubric_show(args: argparse.Namespace) -> int:
    from arr.rubric import Rubric, RubricParseError

    try:
        rubric = Rubric.load(args.path)
    except RubricParseError as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(rubric.to_json(indent=2))
        return 0
    print(f"Rubric ({rubric.task}) for: {rubric.prompt}")
    for c in rubric.criteria:
        extra = f"  [{c.category}]" if c.category else ""
        check = f"  check={json.dumps(c.check)}" if c.check else ""
        levels = f"  levels=1..{c.levels}" if getattr(c, "levels", None) else ""
        print(f"  {c.id:>6}  w={c.weight:+g}  {c.text}{extra}{levels}{check}")
    if rubric.guide:
        print("Guide:")
        for g in rubric.guide:
            print(f"  * {g.theme}")
            for tip in g.tips:
                print(f"      - {tip}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    try:
        return args.run(args)
    except CLIError as e:
        print(f"arr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
