"""The shapes world's rubric writer: exact, deterministic rubric items for the generate -> verify -> refine pipeline.

    from arr.rubrics.generate import RubricGenerator
    guide = RubricGenerator(load_backend("pixel")).generate(make_pairs(50))   # writer chosen automatically

A VLM writes rubric items by looking at a pair and its label; here the writer reads the prompt's structure and the
images' detections instead, so the whole ARR pipeline runs offline and its statistics mean something:
- first try: the items of the prompt's own rubric (`rubric_for_prompt`, looked up from the prompt text) that the
  preferred image satisfies, those the other image fails first. Editing instructions carry no scene in their text,
  so editing pairs start from the detections (below).
- refinement: items read from the preferred image's detections (each object in its cell, exact counts, nothing
  else, unchanged outside the edited cells, no fragments), again those that separate the two images first. A pair
  whose images the detector cannot tell apart stays unseparated and is discarded, as it should be.
Every item carries a machine-checkable `check`, so the pixel judge can verify it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Any

from arr.rubrics import Criterion, GuideCategory, Rubric
from arr.rubrics.writer import RefineTask, WriterOutput, WriteTask
from arr.shapes.detect import DETECTOR_VERSION, UNKNOWN, DetectionReport, analyze
from arr.shapes.edits import cell_phrase
from arr.shapes.prompts import CATEGORIES, PLURALS, PromptSpec, all_prompts
from arr.shapes.rubrics import CheckError, evaluate_check, rubric_for_prompt

WRITER_VERSION = 1

# Guide themes per item category, with tips that hold for any shapes prompt (not copies of single items).
_THEMES: dict[str, tuple[str, list[str]]] = {
    "objects": (
        "Objects and counts",
        [
            "Count every object of each requested shape; one too many or too few is a failure.",
            "The right shape matters as much as its presence: a square is not a circle.",
        ],
    ),
    "color": (
        "Colour fidelity",
        [
            "Check each object's colour against the prompt; the right shape in the wrong colour is a defect.",
            "Attributes must stay bound to their objects: a red circle and a blue square is not a blue circle.",
        ],
    ),
    "position": (
        "Layout and relations",
        [
            "Check left/right/above/below between the named objects, not just that both are present.",
            "Objects must sit where the prompt or instruction puts them.",
        ],
    ),
    "exactness": (
        "Nothing extra",
        [
            "Prefer the image with nothing unrequested: extra objects, stray blobs or fragments of colour.",
            "Clean, whole shapes beat broken or smeared ones.",
        ],
    ),
    "instruction": (
        "Instruction following",
        ["The requested change must be visible: the object recoloured, removed, added or moved as asked."],
    ),
    "preservation": (
        "Preservation",
        [
            "Everything the instruction does not mention stays as in the source image: objects, colours, places."
        ],
    ),
}
# Item categories folded into a theme above.
_FOLD = {"counting": "objects", "layout": "position", "quality": "exactness", "general": "exactness"}


@cache
def _specs_by_text() -> dict[str, PromptSpec]:
    return {spec.text: spec for cat in CATEGORIES for spec in all_prompts(cat)}


def spec_for_text(prompt: str) -> PromptSpec | None:
    """The shapes-world prompt spec whose text is `prompt` (None for any other text)."""
    return _specs_by_text().get(" ".join(prompt.strip().split()))


def _noun(shape: str, color: str, n: int = 1) -> str:
    return f"{color} {shape if n == 1 else PLURALS.get(shape, shape + 's')}"


def detection_items(winner: DetectionReport, source: DetectionReport | None) -> list[Criterion]:
    """Items that describe the preferred image as detected (and, for edits, what stayed as in the source)."""
    objects = [d for d in winner.objects if d.shape != UNKNOWN]
    items: list[Criterion] = []
    for d in objects:
        items.append(
            Criterion(
                f"at_{d.cell[0]}{d.cell[1]}",
                f"There is a {d.color} {d.shape} in {cell_phrase(d.cell)}.",
                category="position",
                check={"type": "object_at", "shape": d.shape, "color": d.color, "cell": list(d.cell)},
            )
        )
    for (shape, color), n in sorted(Counter((d.shape, d.color) for d in objects).items()):
        items.append(
            Criterion(
                f"count_{color}_{shape}",
                f"The image contains exactly {n} {_noun(shape, color, n)}.",
                category="objects",
                check={"type": "count", "shape": shape, "color": color, "n": n},
            )
        )
    if source is not None:
        before = {(d.shape, d.color, d.cell) for d in source.objects}
        after = {(d.shape, d.color, d.cell) for d in objects}
        changed = sorted({c for _, _, c in before ^ after})
        items.append(
            Criterion(
                "unchanged",
                "Apart from the edited object, every object is unchanged from the source image.",
                category="preservation",
                check={"type": "unchanged_from_source", "except_cells": [list(c) for c in changed]},
            )
        )
    items.append(
        Criterion(
            "nothing_else",
            "There are no other objects, shapes or stray fragments of colour in the image.",
            category="exactness",
            check={
                "type": "no_extra",
                "allowed": [{"shape": d.shape, "color": d.color, "cell": list(d.cell)} for d in objects],
            },
        )
    )
    items.append(
        Criterion(
            "fragments",
            "The image shows stray fragments or specks of colour.",
            weight=-1.0,
            category="quality",
            check={"type": "fragments"},
        )
    )
    return items


def _holds(c: Criterion, report: DetectionReport, source: DetectionReport | None) -> bool | None:
    try:
        return evaluate_check(c.check or {}, report, strict=True, source=source).holds
    except CheckError:
        return None


def select_items(
    candidates: Sequence[Criterion],
    winner: DetectionReport,
    loser: DetectionReport,
    source: DetectionReport | None,
    k: int,
) -> list[Criterion]:
    """Up to `k` items that favour the winner: those that separate the images first, then those both satisfy.

    An item separates the images when it holds for the winner and fails for the loser (a penalty: the reverse).
    Items that would favour the loser are never chosen.
    """
    separating, neutral = [], []
    for c in candidates:
        w, lo = _holds(c, winner, source), _holds(c, loser, source)
        if w is None or lo is None:
            continue
        good_w, good_l = (w, lo) if c.weight >= 0 else (not w, not lo)
        if good_w and not good_l:
            separating.append(c)
        elif good_w and good_l:
            neutral.append(c)
    chosen = (separating + neutral)[:k]
    return [Criterion(c.id, c.text, 1.0 if c.weight >= 0 else -1.0, c.category, c.check) for c in chosen]


class ShapesRubricWriter:
    """The pixel backend's `RubricWriter` (see the module docstring)."""

    name = "shapes"

    def fingerprint(self) -> str:
        return f"shapes-writer/v{WRITER_VERSION}/detector-v{DETECTOR_VERSION}"

    @staticmethod
    def _answer(prompt: str, task: str, items: Sequence[Criterion]) -> WriterOutput:
        return WriterOutput(Rubric(prompt, list(items), task=task).to_json())

    def _pair(self, t: WriteTask, from_detections: bool) -> WriterOutput:
        a, b = analyze(t.image_a), analyze(t.image_b)
        winner, loser = (a, b) if t.winner == "A" else (b, a)
        source = analyze(t.source) if t.source is not None else None
        spec = spec_for_text(t.prompt) if t.task == "t2i" else None
        if spec is not None and not from_detections:
            candidates = rubric_for_prompt(spec).criteria
        else:
            candidates = detection_items(winner, source)
        return self._answer(t.prompt, t.task, select_items(candidates, winner, loser, source, t.k))

    def _zero_shot(self, t: WriteTask) -> WriterOutput:
        spec = spec_for_text(t.prompt) if t.task == "t2i" else None
        if spec is None:
            what = (
                "editing instructions carry no scene"
                if t.task == "edit"
                else "it is not a shapes-world prompt"
            )
            return WriterOutput(
                None, error=f"the shapes writer cannot write a rubric for {t.prompt[:60]!r}: {what}"
            )
        criteria = rubric_for_prompt(spec).criteria
        return self._answer(t.prompt, t.task, criteria[: max(t.k, 1)] if t.k < len(criteria) else criteria)

    def write_rubric(self, tasks: Sequence[WriteTask]) -> list[WriterOutput]:
        return [self._pair(t, from_detections=False) if t.is_pair else self._zero_shot(t) for t in tasks]

    def refine(self, tasks: Sequence[RefineTask]) -> list[WriterOutput]:
        # The writer is deterministic: a refinement switches to the detections, and later rounds repeat it.
        return [
            self._pair(r.write, from_detections=True) if r.write.is_pair else self._zero_shot(r.write)
            for r in tasks
        ]

    def structure(
        self, items: Sequence[Criterion], max_categories: int, feedback: str | None = None
    ) -> WriterOutput:
        counts: Counter[str] = Counter()
        for c in items:
            cat = (c.category or "general").lower()
            counts[_FOLD.get(cat, cat) if _FOLD.get(cat, cat) in _THEMES else "exactness"] += 1
        ordered = [cat for cat, _ in counts.most_common()]
        guide: list[dict[str, Any]] = []
        for cat in ordered[:max_categories]:
            theme, tips = _THEMES[cat]
            guide.append(GuideCategory(theme, list(tips)).to_dict())
        return WriterOutput(json.dumps({"guide": guide}))


__all__ = ["ShapesRubricWriter", "detection_items", "select_items", "spec_for_text"]
