"""Regenerate the README's figure of base-model samples with their pixel-judge scores.

OMP_WAIT_POLICY=PASSIVE python docs/make_figures.py    # writes docs/images/base_samples.png
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from arr.backends.pixel import PixelBackend
from arr.report import image_grid
from arr.shapes.detect import analyze
from arr.shapes.models import load_pretrained
from arr.shapes.prompts import CATEGORIES, prompts_for_split
from arr.shapes.rubrics import geneval_correct, rubric_for_prompt
from arr.shapes.sample import sample

OUT = Path(__file__).parent / "images" / "base_samples.png"
SEEDS = list(range(6))


def main() -> None:
    model = load_pretrained("t2i")
    pixel = PixelBackend()
    rows = []
    for category in CATEGORIES:
        spec = prompts_for_split("heldout", category)[0]
        images = sample(model, [spec.text] * len(SEEDS), SEEDS)
        captions = [
            f"{'OK ' if geneval_correct(spec, analyze(im)) else 'x  '}{pixel.score_image(im, rubric_for_prompt(spec)):.2f}"
            for im in images
        ]
        grid = image_grid(images, cols=len(SEEDS), captions=captions, scale=2)
        label = Image.new("RGB", (grid.width, 14), (255, 255, 255))
        ImageDraw.Draw(label).text((2, 1), f"{category}: {spec.text}", fill=(0, 0, 0))
        rows += [label, grid]
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    OUT.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(OUT)


if __name__ == "__main__":
    main()
