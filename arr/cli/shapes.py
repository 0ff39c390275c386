"""`arr shapes ...`: sample and edit with the shipped shapes models, and pretrain them.

arr shapes sample "a red circle above two blue squares" --n 8 --out grid.png
arr shapes edit SOURCE.png "make the circle green" --n 8 --out grid.png
arr shapes pretrain --task t2i --out DIR --steps 3500
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    ssub = p.add_subparsers(dest="shapes_command", metavar="COMMAND", required=True)

    s = ssub.add_parser(
        "sample", help="sample a grid of images for a prompt, captioned with pixel-judge scores"
    )
    s.add_argument("prompt")
    _common(s)
    s.set_defaults(run=_run_sample)

    e = ssub.add_parser("edit", help="edit a source image with the shapes editing model")
    e.add_argument("source", help="source image (48x48 shapes scene)")
    e.add_argument("instruction")
    _common(e, default_model="edit")
    e.set_defaults(run=_run_edit)

    t = ssub.add_parser(
        "pretrain", help="pretrain a tiny shapes model (see `arr shapes pretrain --help`)", add_help=False
    )
    t.add_argument("pretrain_args", nargs=argparse.REMAINDER)
    t.set_defaults(run=_run_pretrain)


def _common(p: argparse.ArgumentParser, default_model: str = "t2i") -> None:
    p.add_argument("--n", type=int, default=8, help="number of samples (seeds 0..n-1 from --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model", default=default_model, help="shipped model name or a folder (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the sampler's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--scale", type=int, default=4, help="upscaling of the grid (nearest neighbour)")
    p.add_argument("--out", default="grid.png", help="output PNG (default: %(default)s)")


def _load(name: str):
    from arr.cli.common import CLIError
    from arr.shapes.models import load_pretrained

    try:
        return load_pretrained(name)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None


def _sampler_kwargs(args: argparse.Namespace) -> dict:
    kw = {}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.guidance is not None:
        kw["guidance"] = args.guidance
    return kw


def _run_sample(args: argparse.Namespace) -> int:
    from arr.backends.pixel import PixelBackend
    from arr.report import image_grid
    from arr.shapes.prompts import CATEGORIES, all_prompts
    from arr.shapes.rubrics import rubric_for_prompt
    from arr.shapes.sample import sample

    model = _load(args.model)
    images = sample(
        model, [args.prompt] * args.n, list(range(args.seed, args.seed + args.n)), **_sampler_kwargs(args)
    )
    known = {spec.text: spec for cat in CATEGORIES for spec in all_prompts(cat)}
    spec = known.get(args.prompt.strip().lower())
    captions = None
    result: dict = {"prompt": args.prompt, "out": args.out, "n": args.n}
    if spec is not None:
        pixel = PixelBackend()
        rubric = rubric_for_prompt(spec)
        scores = [pixel.score_image(im, rubric) for im in images]
        captions = [f"{s:.2f}" for s in scores]
        result.update(
            category=spec.category, scores=[round(s, 4) for s in scores], mean_score=sum(scores) / len(scores)
        )
    image_grid(images, cols=min(8, args.n), captions=captions, scale=args.scale).save(args.out)
    print(json.dumps(result, indent=2))
    return 0


def _run_edit(args: argparse.Namespace) -> int:
    from arr.cli.common import CLIError
    from arr.images import ImageLoadError, load_image
    from arr.report import image_grid
    from arr.shapes.sample import sample

    model = _load(args.model)
    if model.config.task != "edit":
        raise CLIError(f"model {args.model!r} is a text-to-image model; pass an editing model with --model")
    try:
        source = load_image(args.source)
    except ImageLoadError as e:
        raise CLIError(str(e)) from None
    size = model.config.image_size
    if source.size != (size, size):
        raise CLIError(
            f"source image {args.source} is {source.size[0]}x{source.size[1]}; the shapes model edits {size}x{size} scenes"
        )
    images = sample(
        model,
        [args.instruction] * args.n,
        list(range(args.seed, args.seed + args.n)),
        source_images=[source] * args.n,
        **_sampler_kwargs(args),
    )
    image_grid(
        [source, *images],
        cols=min(9, args.n + 1),
        captions=["source"] + [str(i) for i in range(args.n)],
        scale=args.scale,
    ).save(args.out)
    print(
        json.dumps(
            {"instruction": args.instruction, "source": args.source, "out": args.out, "n": args.n}, indent=2
        )
    )
    return 0


def _run_pretrain(args: argparse.Namespace) -> int:
    from arr.shapes.pretrain import main

    return main(list(args.pretrain_args))
