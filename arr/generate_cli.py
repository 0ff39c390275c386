"""`arr rubric generate` and `arr rubric prompts`: the ARR rubric pipeline from the command line.

    arr rubric generate --pairs eval/data/shapes_pairs_sample/pairs.json --backend pixel --out guide.json
    arr rubric prompts --prompts prompts.txt --backend pixel --out rubrics.jsonl

`generate` reads labelled pairs (HPDv3-style pairs.json by default; --schema mmrb2 or editreward for the others),
runs generate -> verify -> refine -> structure and writes the rubric guide (a rubric file: `arr rubric show` reads
it) with the pipeline's statistics; `prompts` writes one zero-shot rubric per prompt line to a JSONL file that is
also the cache (prompts already in it are not asked again).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_rubric_subcommands(rubric_sub: argparse._SubParsersAction) -> None:
    """Add `generate` and `prompts` to the subparsers of `arr rubric`."""
    from arr.cli import _backend_args

    gen = rubric_sub.add_parser(
        "generate",
        help="turn labelled preference pairs into a verified rubric guide (generate, verify, refine, structure)",
    )
    gen.add_argument(
        "--pairs", required=True, help="labelled pairs file (pairs.json, MMRB2 json, EditReward jsonl)"
    )
    gen.add_argument("--schema", default="hpdv3", help="hpdv3 (default) | mmrb2 | editreward")
    gen.add_argument("--limit", type=int, help="use at most this many pairs (the paper uses 50-100)")
    gen.add_argument("--k", type=int, default=5, help="rubric items per pair (default 5)")
    gen.add_argument(
        "--max-refine-rounds", type=int, default=5, help="refinements before discarding (default 5)"
    )
    gen.add_argument("--out", required=True, help="where to write guide.json")
    _backend_args(gen)
    gen.set_defaults(run=_run_generate)

    pr = rubric_sub.add_parser(
        "prompts", help="write a rubric per prompt, zero-shot, to a JSONL file (cached)"
    )
    pr.add_argument(
        "--prompts", required=True, help="text file with one prompt (or editing instruction) per line"
    )
    pr.add_argument("--task", default="t2i", choices=("t2i", "edit"), help="t2i (default) or edit")
    pr.add_argument("--k", type=int, default=5, help="rubric items per prompt (default 5)")
    pr.add_argument(
        "--max-refine-rounds", type=int, default=5, help="retries of unreadable answers (default 5)"
    )
    pr.add_argument("--out", required=True, help="rubrics.jsonl (appended; also the cache)")
    _backend_args(pr)
    pr.set_defaults(run=_run_prompts)


def _emit(text: str) -> None:
    # The command's result goes to stdout (this module is outside arr/*/cli.py, where ruff allows print).
    sys.stdout.write(text + "\n")


def _generator(args: argparse.Namespace):
    from arr.cli import CLIError, backend_from_args
    from arr.generate import RubricGenerator

    try:
        return RubricGenerator(backend_from_args(args), k=args.k, max_refine_rounds=args.max_refine_rounds)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None


def _run_generate(args: argparse.Namespace) -> int:
    from arr.cli import CLIError
    from arr.evaluation.preference import load_pairs

    try:
        pairs, _ties = load_pairs(args.schema, args.pairs, limit=args.limit)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not pairs:
        raise CLIError(f"{args.pairs}: no labelled pairs")
    guide = _generator(args).generate(pairs)
    path = guide.save(args.out)
    _emit(
        json.dumps(
            {
                "out": str(path),
                "categories": [g.to_dict() for g in guide.categories],
                "stats": guide.stats.to_dict(),
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


def _run_prompts(args: argparse.Namespace) -> int:
    from pathlib import Path

    from arr.cli import CLIError

    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CLIError(f"cannot read prompts file {args.prompts}: {e.strerror}") from None
    prompts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not prompts:
        raise CLIError(f"{args.prompts}: no prompts (expected one per line)")
    generator = _generator(args)
    rubrics = generator.prompt_rubrics(prompts, task=args.task, cache=args.out)
    failed = [p for p, r in zip(prompts, rubrics, strict=True) if r is None]
    _emit(
        json.dumps(
            {
                "out": args.out,
                "prompts": len(prompts),
                "written": len(prompts) - len(failed),
                "failed": failed,
                "stats": generator.stats.to_dict(),
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 1 if failed else 0
