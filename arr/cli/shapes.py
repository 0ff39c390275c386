"""`arr shapes ...`: sample and edit with the shipped shapes models, and pretrain them.

arr shapes sample "a red circle and a blue square" --n 8 --out grid.png
arr shapes sample "a red circle and a blue square" --lora runs/demo/checkpoints/step_200 --out grid_rpo.png
arr shapes edit examples/source.png "make the red circle green" --n 8 --out edits.png
arr shapes pretrain --task t2i --out DIR --steps 3500
arr shapes pretrain-judge --out DIR --steps 6000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arr.cli.common import (
    CLIError,
    DeprecatedAlias,
    emit_json,
    finite_float,
    positive_int,
    terminal_safe,
    writable_file,
)

# Far more than a grid can show; what matters is that a typo (`--n 100000000`) is refused, not run for days.
MAX_SAMPLES = 256
MAX_STEPS = 1000
MAX_SCALE = 32


def register(sub: argparse._SubParsersAction, name: str, help: str) -> None:
    p = sub.add_parser(name, help=help, description=help)
    ssub = p.add_subparsers(dest="shapes_command", metavar="COMMAND", required=True)

    s = ssub.add_parser(
        "sample",
        help="sample a grid of images for a prompt, captioned with pixel-judge scores",
        description="Sample the shipped shapes model for a prompt. A prompt of the shapes world's grammar (see "
        "the note printed for any other) is scored by the pixel judge, and the scores caption the grid.",
    )
    s.add_argument("prompt", help='e.g. "a red circle and a blue square", "two green triangles"')
    _common(s)
    s.set_defaults(run=_run_sample)

    e = ssub.add_parser("edit", help="edit a source image with the shapes editing model")
    e.add_argument("source", help="source image: a 48x48 shapes scene, e.g. examples/source.png")
    e.add_argument("instruction", help='e.g. "make the red circle green"')
    _common(e, default_policy="edit")
    e.set_defaults(run=_run_edit)

    t = ssub.add_parser(
        "pretrain",
        help="pretrain a tiny shapes model (see `arr shapes pretrain --help`)",
        add_help=False,
        forward=True,  # arr.shapes.pretrain has its own parser, `--help` included
    )
    t.set_defaults(run=_run_pretrain)

    j = ssub.add_parser(
        "pretrain-judge",
        help="pretrain the shapes VLM judge on pixel-judge labels (see `arr shapes pretrain-judge --help`)",
        add_help=False,
        forward=True,  # arr.shapes.pretrain_judge has its own parser, `--help` included
    )
    j.set_defaults(run=_run_pretrain_judge)


def _common(p: argparse.ArgumentParser, default_policy: str = "t2i") -> None:
    p.add_argument(
        "--n",
        type=positive_int(MAX_SAMPLES),
        default=8,
        help="number of samples (seeds --seed .. --seed+n-1; default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--policy",
        default=default_policy,
        help="the shapes model: a shipped name (t2i, edit) or a folder (default: %(default)s)",
    )
    p.add_argument(
        "--model",
        dest="policy",
        action=DeprecatedAlias,
        replacement="--policy",
        why="--model names the judge model in the other commands",
    )
    p.add_argument(
        "--steps",
        type=positive_int(MAX_STEPS),
        default=None,
        help="sampling steps (default: the sampler's, 20)",
    )
    p.add_argument(
        "--guidance", type=finite_float, default=None, help="classifier-free guidance scale (default 1.5)"
    )
    p.add_argument(
        "--scale",
        type=positive_int(MAX_SCALE),
        default=4,
        help="upscaling of the grid (nearest neighbour; default %(default)s)",
    )
    p.add_argument(
        "--lora",
        help="a LoRA trained on this model: an RPO checkpoint folder (RUN/checkpoints/step_N, or its moving_average/)",
    )
    p.add_argument("--out", default="grid.png", help="output image, e.g. grid.png (default: %(default)s)")


def _output(path: str) -> Path:
    """The grid's path, checked before any model loads: an image suffix PIL can write, in a writable folder."""
    from PIL import Image

    out = writable_file(path, "--out", "grid.png")
    if out.suffix.lower() not in Image.registered_extensions():
        raise CLIError(f"--out {path}: unknown image type {out.suffix or '(no suffix)'!r}; use e.g. grid.png")
    return out


# arr.shapes.models.CONFIG_NAME, not imported from there: that module loads torch, diffusers and transformers.
CONFIG_NAME = "shapes_config.json"


def _model_config(name: str) -> dict:
    """A shapes model's config, read without loading torch or the weights, so that bad input fails in a blink.

    The same lookup as `arr.shapes.models.load_pretrained`: a folder holding the config, else a shipped name."""
    from arr.shapes.scene import IMAGE_SIZE

    assets = Path(__file__).resolve().parent.parent / "shapes" / "assets"
    for folder in (Path(name), assets / name):
        path = folder / CONFIG_NAME
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CLIError(f"--policy {name}: cannot read {path} ({e})") from None
            if not isinstance(config, dict):
                raise CLIError(f"--policy {name}: {path} is not a JSON object")
            return {"task": "t2i", "image_size": IMAGE_SIZE, **config}
    shipped = (
        sorted(p.name for p in assets.iterdir() if (p / CONFIG_NAME).is_file()) if assets.is_dir() else []
    )
    raise CLIError(
        f"--policy {name}: no shapes model there; give a folder with {CONFIG_NAME} or a shipped name {shipped}"
    )


def _load(name: str, lora: str | None = None):
    """The shapes model `name`, with the LoRA in `lora` added to its transformer."""
    from arr.shapes.models import load_pretrained

    try:
        model = load_pretrained(name)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    if lora is not None:
        from arr.policies.shapes import ShapesPolicy

        try:
            ShapesPolicy(model).load_lora_weights(lora)  # the policy adds the adapter to model.transformer
        except ValueError as e:
            raise CLIError(f"--lora: {e}") from None
    return model


def _check_lora(lora: str | None) -> None:
    """A missing --lora path fails before the model loads."""
    if lora is not None and not Path(lora).exists():
        raise CLIError(f"--lora {lora}: no such folder or file (expected RUN/checkpoints/step_N)")


def _sampler_kwargs(args: argparse.Namespace) -> dict:
    kw = {}
    if args.steps is not None:
        kw["steps"] = args.steps
    if args.guidance is not None:
        kw["guidance"] = args.guidance
    return kw


def prompt_grammar() -> str:
    """The forms of shapes-world prompts (GenEval's categories), with an example of each."""
    from arr.shapes.prompts import NUMBER_WORDS, RELATIONS
    from arr.shapes.scene import COLORS, SHAPES

    numbers = ", ".join(NUMBER_WORDS[n] for n in sorted(NUMBER_WORDS) if n > 1)
    rows = [
        ("a SHAPE", "a triangle"),
        ("a COLOR SHAPE", "a red circle"),
        ("NUMBER [COLOR] SHAPEs", "three blue squares"),
        ("a SHAPE and a SHAPE", "a circle and a square"),
        ("a SHAPE RELATION a SHAPE", "a circle above a square"),
        ("a COLOR SHAPE and a COLOR SHAPE", "a red circle and a blue square"),
    ]
    lines = [f"  {form:<34}{example}" for form, example in rows]
    lines.append(
        f"  SHAPE: {', '.join(SHAPES)}; COLOR: {', '.join(COLORS)}; NUMBER: {numbers}; "
        f"RELATION: {', '.join(RELATIONS)}; the two objects of a prompt are different shapes "
        "(and, with colours, different colours)"
    )
    return "\n".join(lines)


def _find_prompt(text: str):
    """The shapes-world prompt `text` spells (case and spacing aside), or None."""
    from arr.shapes.prompts import CATEGORIES, all_prompts

    wanted = " ".join(text.lower().split())
    for category in CATEGORIES:
        for spec in all_prompts(category):
            if spec.text == wanted:
                return spec
    return None


def _run_sample(args: argparse.Namespace) -> int:
    out = _output(args.out)
    config = _model_config(args.policy)
    if config["task"] != "t2i":
        raise CLIError(f"--policy {args.policy} is an editing model; use `arr shapes edit` or a t2i model")
    spec = _find_prompt(args.prompt)
    if spec is None:
        sys.stderr.write(
            f"arr shapes sample: note: {terminal_safe(args.prompt)!r} is not a shapes-world prompt, so the samples "
            "are not scored. The model was trained on, and the pixel judge scores, prompts of these forms:\n"
            f"{prompt_grammar()}\n"
        )

    from arr.backends.pixel import PixelBackend
    from arr.report import image_grid
    from arr.shapes.rubrics import rubric_for_prompt
    from arr.shapes.sample import sample

    _check_lora(args.lora)
    model = _load(args.policy, args.lora)
    images = sample(
        model, [args.prompt] * args.n, list(range(args.seed, args.seed + args.n)), **_sampler_kwargs(args)
    )
    captions = None
    result: dict = {"prompt": args.prompt, "out": str(out), "n": args.n, "scored": spec is not None}
    if args.lora:
        result["lora"] = args.lora
    if spec is not None:
        pixel = PixelBackend()
        rubric = rubric_for_prompt(spec)
        scores = [pixel.score_image(im, rubric) for im in images]
        captions = [f"{s:.2f}" for s in scores]
        result.update(
            category=spec.category, scores=[round(s, 4) for s in scores], mean_score=sum(scores) / len(scores)
        )
    _save(image_grid(images, cols=min(8, args.n), captions=captions, scale=args.scale), out)
    emit_json(result)
    return 0


def _save(image, out: Path) -> None:
    try:
        image.save(out)
    except OSError as e:
        raise CLIError(f"--out: cannot write {out} ({e})") from None


def _run_edit(args: argparse.Namespace) -> int:
    from arr.images import ImageLoadError, load_image

    out = _output(args.out)
    config = _model_config(args.policy)
    if config["task"] != "edit":
        raise CLIError(
            f"--policy {args.policy} is a text-to-image model; pass an editing model (default: edit)"
        )
    # The source is checked before the model loads: a wrong file should fail in a blink, not after the load.
    try:
        source = load_image(args.source)
    except ImageLoadError as e:
        raise CLIError(str(e)) from None
    _check_lora(args.lora)
    size = config["image_size"]
    if source.size != (size, size):
        raise CLIError(
            f"source image {args.source} is {source.size[0]}x{source.size[1]}; the shapes model edits "
            f"{size}x{size} scenes (e.g. examples/source.png)"
        )

    from arr.report import image_grid
    from arr.shapes.sample import sample

    model = _load(args.policy, args.lora)
    images = sample(
        model,
        [args.instruction] * args.n,
        list(range(args.seed, args.seed + args.n)),
        source_images=[source] * args.n,
        **_sampler_kwargs(args),
    )
    grid = image_grid(
        [source, *images],
        cols=min(9, args.n + 1),
        captions=["source"] + [str(i) for i in range(args.n)],
        scale=args.scale,
    )
    _save(grid, out)
    result = {"instruction": args.instruction, "source": args.source, "out": str(out), "n": args.n}
    emit_json({**result, "lora": args.lora} if args.lora else result)
    return 0


def _dashed(forwarded: list[str]) -> list[str]:
    """Options as the forwarded parsers declare them (--batch-size); `--batch_size` works too, as everywhere."""
    argv = []
    for arg in forwarded:
        name, eq, value = arg.partition("=")
        argv.append(name.replace("_", "-") + eq + value if name.startswith("--") else arg)
    return argv


def _run_pretrain(args: argparse.Namespace) -> int:
    from arr.shapes.pretrain import main

    return main(_dashed(args.forwarded))


def _run_pretrain_judge(args: argparse.Namespace) -> int:
    from arr.shapes.pretrain_judge import main

    return main(_dashed(args.forwarded))
