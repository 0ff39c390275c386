"""`arr judge`: judge one image (pointwise) or two (pairwise) against a rubric; prints JSON.

arr judge --backend pixel --prompt "a red circle left of a blue square" --rubric examples/rubric.json \
    examples/good.png examples/bad.png
"""

from __future__ import annotations

import argparse

from arr.cli.common import CLIError, add_backend_options, add_na_options, emit_json, judge_from_args


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    add_backend_options(p)
    p.add_argument(
        "--prompt", required=True, help="the prompt (or editing instruction) the images were made for"
    )
    p.add_argument("--rubric", required=True, help="rubric JSON file (e.g. examples/rubric.json)")
    p.add_argument("--source", help="editing: the source image")
    p.add_argument("--no-swap", action="store_true", help="pairwise: ask in the given order only")
    add_na_options(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="one image (score) or two (compare)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from arr.backends.chat import JudgeUnavailableError
    from arr.images import ImageLoadError, load_image
    from arr.rubrics import Rubric, RubricParseError

    if len(args.images) > 2:
        raise CLIError(f"arr judge takes one image (score) or two (compare), got {len(args.images)}")
    # Every input is read before the judge loads: a typo should not cost a model load.
    try:
        rubric = Rubric.load(args.rubric)
        images = [load_image(p) for p in args.images]
        source = load_image(args.source) if args.source else None
    except (RubricParseError, ImageLoadError) as e:
        raise CLIError(str(e)) from None
    judge = judge_from_args(args, swap=not args.no_swap)
    try:
        if len(images) == 1:
            result = {"mode": "score", **judge.score(args.prompt, images[0], rubric, source).to_dict()}
        else:
            verdict = judge.compare(args.prompt, images[0], images[1], rubric, source)
            result = {"mode": "compare", **verdict.to_dict()}
    except JudgeUnavailableError as e:
        raise CLIError(
            f"{e}; check that the server runs and --base-url points at it (or raise --timeout)"
        ) from None
    result["judge"] = {"backend": judge.backend.name, **judge.stats.to_dict()}
    emit_json(result)
    return 0
