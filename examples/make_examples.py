"""Write the example inputs of the README's first commands: `python examples/make_examples.py` (deterministic).

- rubric.json: a hand-written rubric for "a red circle and a blue square" (text for VLM judges, checks for the
  pixel judge); good.png satisfies it, bad.png swaps the colours (the classic attribute-binding failure).
- source.png, edited.png, edit_rubric.json: a 48x48 scene for `arr shapes edit`, its exact edit under
  "make the red circle green", and the editing rubric (instruction and preservation criteria) for `arr judge --source`.
- prompts.txt: prompts for `arr rubric prompts`.
- pairs/pairs.json (+ pairs/images/): 8 labelled preference pairs, HPDv3-style, for `arr rubric generate` and
  `arr reward-model`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from arr import Criterion, Rubric
from arr.shapes.benchmarks import write_preference_pairs
from arr.shapes.edits import EditSpec, rubric_for_edit
from arr.shapes.scene import Obj, Scene, render

PROMPT = "a red circle and a blue square"
INSTRUCTION = "make the red circle green"
PROMPTS = ["a red circle and a blue square", "two green triangles", "a circle above a square"]


def example_rubric() -> Rubric:
    red_circle = {"shape": "circle", "color": "red", "count": 1}
    blue_square = {"shape": "square", "color": "blue", "count": 1}
    return Rubric(
        PROMPT,
        [
            Criterion(
                "c1",
                "There is exactly one red circle.",
                check={"type": "count", "shape": "circle", "color": "red", "n": 1},
            ),
            Criterion(
                "c2",
                "There is exactly one blue square.",
                check={"type": "count", "shape": "square", "color": "blue", "n": 1},
            ),
            Criterion(
                "c3",
                "Nothing else is in the image: no other shapes, colours or stray fragments.",
                weight=0.5,
                check={"type": "exact_set", "objects": [red_circle, blue_square]},
            ),
        ],
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    example_rubric().save(out / "rubric.json")
    render(Scene((Obj("circle", "red", 1, 0), Obj("square", "blue", 2, 3)))).save(out / "good.png")
    render(Scene((Obj("circle", "blue", 1, 0), Obj("square", "red", 2, 3)))).save(out / "bad.png")

    circle, square = Obj("circle", "red", 1, 1), Obj("square", "blue", 2, 3)
    green = Obj("circle", "green", 1, 1)
    source, target = Scene((circle, square)), Scene((green, square))
    edit = EditSpec("recolor", INSTRUCTION, source, target, subject=circle, result=green)
    render(source).save(out / "source.png")
    render(target).save(out / "edited.png")
    rubric_for_edit(edit).save(out / "edit_rubric.json")

    (out / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    write_preference_pairs(out / "pairs" / "pairs.json", n=8, split="train", seed=0, task="t2i")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
