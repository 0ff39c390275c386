"""`arr rubric show | generate | prompts`: rubric files and the ARR rubric pipeline from the command line.

    arr rubric show rubric.json
    arr rubric generate --pairs eval/data/shapes_pairs_sample/pairs.json --backend pixel --out guide.json
    arr rubric prompts --prompts prompts.txt --backend pixel --out rubrics.jsonl

`generate` reads labelled pairs (HPDv3-style pairs.json by default; --schema mmrb2 or editreward for the others),
runs generate -> verify -> refine -> structure and writes the rubric guide (a rubric file: `arr rubric show` reads
it) with the pipeline's statistics; `prompts` writes one zero-shot rubric per prompt line to a JSONL file that is
also the cache (prompts already in it are not asked again).
"""

from __future__ import annotations

import argparse
import contextlib
import json

from arr.cli.common import (
    CLIError,
    add_backend_options,
    backend_from_args,
    emit,
    emit_json,
    positive_int,
    terminal_safe,
    writable_file,
)


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    rsub = p.add_subparsers(dest="rubric_command", metavar="COMMAND", required=True)
    show = rsub.add_parser("show", help="pretty-print a rubric (validated and repaired)")
    show.add_argument("path", help="rubric JSON file (or a VLM answer containing one)")
    show.add_argument("--json", action="store_true", help="print canonical JSON instead of text")
    show.set_defaults(run=_run_show)
    _add_pipeline_commands(rsub)


def _run_show(args: argparse.Namespace) -> int:
    from arr.rubrics import Rubric, RubricParseError

    try:
        rubric = Rubric.load(args.path)
    except RubricParseError as e:
        raise CLIError(str(e)) from None
    if args.json:
        emit_json(rubric.to_dict())
        return 0
    # Every value comes from the file (often a model's answer): escape control characters so that printing it
    # cannot recolour, move the cursor or hide lines, and so that one item stays on one line.
    safe = terminal_safe
    emit(f"Rubric ({safe(rubric.task)}) for: {safe(rubric.prompt)}")
    for c in rubric.criteria:
        extra = f"  [{safe(c.category)}]" if c.category else ""
        check = f"  check={safe(json.dumps(c.check, ensure_ascii=False))}" if c.check else ""
        levels = f"  levels=1..{c.levels}" if c.levels else ""
        emit(f"  {safe(c.id):>6}  w={c.weight:+g}  {safe(c.text)}{extra}{levels}{check}")
    if rubric.guide:
        emit("Guide:")
        for g in rubric.guide:
            emit(f"  * {safe(g.theme)}")
            for tip in g.tips:
                emit(f"      - {safe(tip)}")
    return 0


def _add_pipeline_commands(rubric_sub: argparse._SubParsersAction) -> None:
    """Add `generate` and `prompts` to the subparsers of `arr rubric`."""

    gen = rubric_sub.add_parser(
        "generate",
        help="turn labelled preference pairs into a verified rubric guide (generate, verify, refine, structure)",
    )
    gen.add_argument(
        "--pairs", required=True, help="labelled pairs file (pairs.json, MMRB2 json, EditReward jsonl)"
    )
    gen.add_argument("--schema", default="hpdv3", help="hpdv3 (default) | mmrb2 | editreward")
    gen.add_argument(
        "--limit", type=positive_int(), help="use at most this many pairs (the paper uses 50-100)"
    )
    gen.add_argument("--k", type=positive_int(), default=5, help="rubric items per pair (default 5)")
    gen.add_argument(
        "--max-refine-rounds", type=int, default=5, help="refinements before discarding (default 5)"
    )
    gen.add_argument("--out", required=True, help="where to write guide.json")
    add_backend_options(gen)
    gen.set_defaults(run=_run_generate)

    pr = rubric_sub.add_parser(
        "prompts", help="write a rubric per prompt, zero-shot, to a JSONL file (cached)"
    )
    pr.add_argument(
        "--prompts", required=True, help="text file with one prompt (or editing instruction) per line"
    )
    pr.add_argument("--task", default="t2i", choices=("t2i", "edit"), help="t2i (default) or edit")
    pr.add_argument("--k", type=positive_int(), default=5, help="rubric items per prompt (default 5)")
    pr.add_argument(
        "--max-refine-rounds", type=int, default=5, help="retries of unreadable answers (default 5)"
    )
    pr.add_argument("--out", required=True, help="rubrics.jsonl (appended; also the cache)")
    add_backend_options(pr)
    pr.set_defaults(run=_run_prompts)


def _generator(args: argparse.Namespace):
    from arr.rubrics.generate import RubricGenerator

    try:
        return RubricGenerator(backend_from_args(args), k=args.k, max_refine_rounds=args.max_refine_rounds)
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None


@contextlib.contextmanager
def _judge_reachable():
    """An unreachable judge server is a one-line error, not a traceback."""
    from arr.backends.chat import JudgeUnavailableError

    try:
        yield
    except JudgeUnavailableError as e:
        raise CLIError(f"{e}; check that the server runs and --base-url points at it") from None


def _run_generate(args: argparse.Namespace) -> int:
    from arr.evaluation.preference_benchmarks import load_pairs

    try:
        pairs, _ties = load_pairs(args.schema, args.pairs, limit=args.limit)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not pairs:
        raise CLIError(f"{args.pairs}: no labelled pairs")
    writable_file(args.out, "--out", "guide.json")
    generator = _generator(args)
    with _judge_reachable():
        guide = generator.generate(pairs)
    path = guide.save(args.out)
    emit_json(
        {
            "out": str(path),
            "categories": [g.to_dict() for g in guide.categories],
            "stats": guide.stats.to_dict(),
        }
    )
    return 0


def _run_prompts(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CLIError(f"cannot read prompts file {args.prompts}: {e.strerror}") from None
    prompts = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not prompts:
        raise CLIError(f"{args.prompts}: no prompts (expected one per line)")
    writable_file(args.out, "--out", "rubrics.jsonl")
    generator = _generator(args)
    with _judge_reachable():
        rubrics = generator.prompt_rubrics(prompts, task=args.task, cache=args.out)
    failed = [p for p, r in zip(prompts, rubrics, strict=True) if r is None]
    emit_json(
        {
            "out": args.out,
            "prompts": len(prompts),
            "written": len(prompts) - len(failed),
            "failed": failed,
            "stats": generator.stats.to_dict(),
        }
    )
    return 1 if failed else 0
