"""Shapes-GenEval score of a pretrained shapes model, per category, with the pixel judge.

    OMP_WAIT_POLICY=PASSIVE python bench/pretrain_eval.py --model arr/shapes/assets/t2i --n 600 --guidance 2 \
        --out bench/results/pretrain_eval.json --grid bench/results/pretrain_eval.png

`--model` is a folder written by `save_pretrained` (e.g. a checkpoint's `ema/`) or a shipped name ("t2i").
Prompts are `sample_prompts(n, split, seed)`; image i uses seed `seed * 100000 + i`. Writes a JSON with overall and
per-category accuracy, the settings and the sampling time, and optionally a PNG grid of the first 64 samples.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from arr.shapes.detect import detect
from arr.shapes.models import load_pretrained
from arr.shapes.prompts import PromptSpec, relation_holds, sample_prompts
from arr.shapes.sample import sample
from arr.shapes.scene import SHAPES, Obj

try:  # the pixel judge's exact GenEval rule; the fallback below mirrors GenEval's for runs before it exists
    from arr.shapes.rubrics import geneval_correct
except ImportError:  # pragma: no cover - only while the rubrics module is not there yet
    geneval_correct = None


def _fallback_correct(spec: PromptSpec, detections: list) -> bool:
    objs = [d for d in detections if d.is_object]
    if sum(o.count for o in spec.objects) != len(objs) or any(d.shape not in SHAPES for d in objs):
        return False
    for o in spec.objects:
        if sum(d.matches(o.shape, o.color) for d in objs) != o.count:
            return False
    if spec.relation:
        a = next(d for d in objs if d.matches(spec.objects[0].shape))
        b = next(d for d in objs if d.matches(spec.objects[1].shape))
        return relation_holds(Obj(a.shape, a.color, *a.cell), spec.relation, Obj(b.shape, b.color, *b.cell))
    return True


def grid_image(images: list[Image.Image], texts: list[str], cols: int = 8, scale: int = 2) -> Image.Image:
    size = images[0].size[0] * scale
    rows = (len(images) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * size, rows * (size + 12)), (60, 60, 60))
    draw = ImageDraw.Draw(canvas)
    for i, (im, text) in enumerate(zip(images, texts, strict=True)):
        x, y = (i % cols) * size, (i // cols) * (size + 12)
        canvas.paste(im.resize((size, size), Image.Resampling.NEAREST), (x, y + 12))
        draw.text((x + 1, y), text[:18], fill=(255, 255, 255))
    return canvas


def evaluate(model, n: int, split: str, seed: int, guidance: float, steps: int, batch: int = 50) -> dict:
    specs = sample_prompts(n, split, seed)
    judge = geneval_correct or _fallback_correct
    per_cat: dict[str, list[bool]] = defaultdict(list)
    images: list[Image.Image] = []
    t0 = time.monotonic()
    for i in range(0, n, batch):
        chunk = specs[i : i + batch]
        ims = sample(
            model,
            [s.text for s in chunk],
            [seed * 100000 + i + j for j in range(len(chunk))],
            steps,
            guidance,
        )
        images.extend(ims)
        for spec, im in zip(chunk, ims, strict=True):
            per_cat[spec.category].append(bool(judge(spec, detect(im))))
    seconds = time.monotonic() - t0
    cats = {c: sum(v) / len(v) for c, v in sorted(per_cat.items())}
    overall_images = sum(sum(v) for v in per_cat.values()) / n
    return {
        "overall": sum(cats.values()) / len(cats),  # GenEval averages its categories
        "overall_images": overall_images,
        "categories": cats,
        "n": n,
        "split": split,
        "seed": seed,
        "guidance": guidance,
        "steps": steps,
        "judge": "geneval_correct" if geneval_correct else "fallback",
        "sample_seconds": seconds,
        "_images": images,
        "_texts": [s.text for s in specs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t2i")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--split", default="heldout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench/results/pretrain_eval.json")
    p.add_argument(
        "--grid", default=None, help="PNG of the first 64 samples per guidance (_g<scale> is added)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_pretrained(args.model)
    results = []
    for g in args.guidance:
        r = evaluate(model, args.n, args.split, args.seed, g, args.steps)
        if args.grid:
            Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
            grid_image(r["_images"][:64], r["_texts"][:64]).save(args.grid.replace(".png", f"_g{g}.png"))
        r = {k: v for k, v in r.items() if not k.startswith("_")}
        r["model"] = str(args.model)
        results.append(r)
        print(json.dumps(r))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
