"""Held-out shapes-edit score of a shapes editing model, per edit kind, with the pixel judge.

    OMP_WAIT_POLICY=PASSIVE python bench/edit_eval.py --model arr/shapes/assets/edit --n 400 --guidance 1.5 \
        --out bench/results/edit_eval.json --grid bench/results/edit_samples.png

(`--grid docs/images/edit_samples.png` regenerates the README's figure.)

`--model` is a folder written by `save_pretrained` (e.g. a pretraining checkpoint's `ema/`) or a shipped name
("edit"). Edits are `sample_edit(rng, "heldout")` with `rng = Random(seed)`; edit i samples with seed
`seed * 100000 + i`. Each edit is scored GEdit-style by the pixel judge: instruction following, preservation of
what must not change, overall = sqrt(instruction * preservation), and strict correctness (the detected scene equals
the target scene). Two reference rows come from the same judge and edits: "copy source" (an editor that returns its
input: preservation 1, instruction ~0) and "exact target" (the rendered target scene: the ceiling).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from arr.backends.pixel import PixelBackend
from arr.shapes.edits import EditSpec, edit_correct, rubric_for_edit, sample_edit
from arr.shapes.models import load_pretrained
from arr.shapes.sample import sample
from arr.shapes.scene import render

_KEYS = ("instruction", "preservation", "score", "correct")


def score_edits(edits: list[EditSpec], images: list[Image.Image], judge: PixelBackend) -> dict:
    """Means of instruction / preservation / overall / strict correctness, overall and per edit kind."""
    per: dict[str, list[dict[str, float]]] = defaultdict(list)
    for edit, image in zip(edits, images, strict=True):
        source = render(edit.source)
        d = judge.score_details(image, rubric_for_edit(edit), source)
        per[edit.kind].append(
            {
                "instruction": float(d["instruction"]),
                "preservation": float(1.0 if d["preservation"] is None else d["preservation"]),
                "score": float(d["score"]),
                "correct": float(edit_correct(edit, image)),
            }
        )

    def means(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: sum(r[k] for r in rows) / len(rows) for k in _KEYS}

    return {
        "overall": means([r for rows in per.values() for r in rows]),
        "kinds": {k: means(rows) for k, rows in sorted(per.items())},
    }


def save_grid(edits: list[EditSpec], images: list[Image.Image], path: str, n: int = 16) -> None:
    """Rows of (source | model edit | exact target), 4 triples per row, instruction under each triple."""
    cell, pad, text_h, per_row = 96, 6, 28, 4
    rows = (min(n, len(edits)) + per_row - 1) // per_row
    w = per_row * (3 * cell + 2 * pad) + (per_row + 1) * 3 * pad
    h = rows * (cell + text_h + 2 * pad) + pad
    grid = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (edit, image) in enumerate(zip(edits[:n], images[:n], strict=True)):
        r, c = divmod(i, per_row)
        x0 = 3 * pad + c * (3 * cell + 2 * pad + 3 * pad)
        y0 = pad + r * (cell + text_h + 2 * pad)
        for j, im in enumerate((render(edit.source), image, render(edit.target))):
            grid.paste(im.resize((cell, cell), Image.NEAREST), (x0 + j * (cell + pad), y0))
        draw.text((x0, y0 + cell + 2), edit.text[:52], fill="black")
        draw.text((x0, y0 + cell + 14), edit.text[52:104], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="edit")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5])
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="bench/results/edit_eval.json")
    p.add_argument("--grid", default=None, help="PNG of the first 16 edits (source | edit | target)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)
    edits = [sample_edit(rng, "heldout") for _ in range(a.n)]
    judge = PixelBackend()
    model = load_pretrained(a.model)
    result: dict = {"model": a.model, "n": a.n, "seed": a.seed, "steps": a.steps, "runs": {}}
    result["runs"]["copy source"] = score_edits(edits, [render(e.source) for e in edits], judge)
    result["runs"]["exact target"] = score_edits(edits, [render(e.target) for e in edits], judge)
    for g in a.guidance:
        t0 = time.perf_counter()
        images: list[Image.Image] = []
        for s in range(0, a.n, a.batch):
            chunk = edits[s : s + a.batch]
            images += sample(
                model,
                [e.text for e in chunk],
                [a.seed * 100000 + i for i in range(s, s + len(chunk))],
                steps=a.steps,
                guidance=g,
                source_images=[render(e.source) for e in chunk],
            )
        seconds = time.perf_counter() - t0
        run = score_edits(edits, images, judge)
        run["sampling_seconds"] = seconds
        result["runs"][f"model g{g}"] = run
        if a.grid and g == a.guidance[0]:
            save_grid(edits, images, a.grid)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, run in result["runs"].items():
        o = run["overall"]
        kinds = " ".join(f"{k}={v['score']:.3f}/{v['correct']:.2f}" for k, v in run["kinds"].items())
        print(  # noqa: T201
            f"{name:14s} instr {o['instruction']:.3f} pres {o['preservation']:.3f} overall {o['score']:.3f} "
            f"correct {o['correct']:.3f} | {kinds}"
        )


if __name__ == "__main__":
    main()
