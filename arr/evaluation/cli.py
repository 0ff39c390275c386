"""`arr eval`: evaluate judges.

    arr eval preference eval/shapes_pairs.yaml --judge pixel --out runs/eval/shapes_pairs
    arr eval preference eval/mmrb2_sample.yaml --judge hf --model Qwen/Qwen2.5-VL-7B-Instruct \
        --rubrics rubrics.jsonl --guide guide.json

Writes results.json and report.html to --out and prints the results as JSON.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    """Add `arr eval` (with its `preference` subcommand) to the `arr` parser."""
    from arr.cli import _backend_args

    p = sub.add_parser(name, help=help, description=help)
    esub = p.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    pref = esub.add_parser(
        "preference",
        help="preference accuracy, position-flip rate, ties and cost of a judge on labelled pairs",
        description="Judge every pair in both image orders under each configuration (plain, rubric, rubric+guide).",
    )
    pref.add_argument("suite", help="suite YAML (e.g. eval/shapes_pairs.yaml, eval/mmrb2_sample.yaml)")
    _backend_args(pref)
    pref.add_argument(
        "--judge", dest="backend", help="judge backend (same as --backend; default: the suite's judge)"
    )
    pref.set_defaults(backend=None)
    pref.add_argument(
        "--configs", default="plain,rubric,rubric+guide", help="comma-separated: plain, rubric, rubric+guide"
    )
    pref.add_argument("--guide", help="rubric guide (guide.json from `arr rubric generate`) for rubric+guide")
    pref.add_argument(
        "--rubrics", help="prompt rubrics (JSONL from `arr rubric prompts`); default: the data's own"
    )
    pref.add_argument(
        "--generate-rubrics",
        action="store_true",
        help="write missing prompt rubrics zero-shot with the judge's writer (cached in OUT/rubrics.jsonl)",
    )
    pref.add_argument("--limit", type=int, help="use at most this many pairs")
    pref.add_argument("--batch-size", type=int, default=64, help="pairs per judge batch (default 64)")
    pref.add_argument("--data-dir", help="where generated suites write their data (default: OUT/data)")
    pref.add_argument("--out", help="output folder (default: runs/eval/<suite name>)")
    pref.set_defaults(run=_run_preference)


def _run_preference(args: argparse.Namespace) -> int:
    from pathlib import Path

    from arr.cli import CLIError, backend_from_args
    from arr.evaluation.preference import CONFIGS, evaluate_preference, load_preference_suite, write_report
    from arr.rubric import RubricParseError

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        raise CLIError(f"--configs: unknown {bad}; choose from {list(CONFIGS)}")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    suite_path = Path(args.suite)
    out = Path(args.out) if args.out else Path("runs") / "eval" / suite_path.stem
    try:
        suite, pairs, ties = load_preference_suite(
            suite_path, Path(args.data_dir or out / "data"), args.limit
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not pairs:
        raise CLIError(f"suite {suite_path} has no pairs with a winner")
    if args.backend is None:
        args.backend = suite.get("judge", "pixel")
    if args.backend == "pixel" and suite.get("judge_kwargs") and args.model is None:
        from arr.backends import load_backend

        backend = load_backend("pixel", **suite["judge_kwargs"])
    else:
        backend = backend_from_args(args)

    rubrics = None
    guide = None
    try:
        if args.rubrics:
            from arr.generate import load_prompt_rubrics

            rubrics = load_prompt_rubrics(args.rubrics)
        if args.guide:
            from arr.generate import RubricGuide

            guide = RubricGuide.load_categories(args.guide)
    except RubricParseError as e:
        raise CLIError(str(e)) from None
    if args.generate_rubrics:
        from arr.generate import RubricGenerator

        missing = sorted(
            {p.prompt for p in pairs if p.prompt not in (rubrics or {}) and not p.rubric.criteria}
        )
        by_task = {}
        for p in pairs:
            by_task.setdefault(p.prompt, p.task)
        generator = RubricGenerator(backend)
        rubrics = dict(rubrics or {})
        for task in ("t2i", "edit"):
            wanted = [q for q in missing if by_task[q] == task]
            made = generator.prompt_rubrics(wanted, task=task, cache=out / "rubrics.jsonl")
            rubrics.update({q: r for q, r in zip(wanted, made, strict=True) if r is not None})

    result = evaluate_preference(
        pairs, backend, configs, rubrics=rubrics, guide=guide, cache=args.cache, batch_size=args.batch_size
    )
    result["suite"] = {
        "name": suite.get("name", suite_path.stem),
        "path": str(suite_path),
        "ties_skipped": ties,
    }
    json_path, html_path = write_report(result, out, f"Judge evaluation: {result['suite']['name']}")
    result["outputs"] = {"json": str(json_path), "html": str(html_path)}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
