"""Editing instructions on shapes-world scenes, with the exact target and the rubric that checks an edit.

Kinds: "recolor" ("make the red circle blue"), "remove" ("remove the blue square"), "add" ("add a yellow square",
"add a yellow square in the top-left corner", "add a green triangle to the left of the red circle") and "move"
("move the red circle one cell to the right", "move the red circle to the top-left corner"). The object an
instruction names is unique in the source scene, so "the red circle" is never ambiguous.

Rubrics split into *instruction* criteria (the requested change happened) and *preservation* criteria (nothing
else changed); the pixel judge scores them as sqrt(instruction * preservation), like GEdit-Bench.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from arr.rubrics import Criterion, Rubric
from arr.shapes.detect import DetectionReport, analyze
from arr.shapes.prompts import HELD_OUT_FRACTION, RELATIONS
from arr.shapes.rubrics import evaluate_check
from arr.shapes.scene import COLORS, GRID, SHAPES, Obj, Scene, random_scene

EDIT_KINDS: tuple[str, ...] = ("recolor", "remove", "add", "move")
CORNERS: dict[str, tuple[int, int]] = {
    "top-left": (0, 0),
    "top-right": (0, GRID - 1),
    "bottom-left": (GRID - 1, 0),
    "bottom-right": (GRID - 1, GRID - 1),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
_REL_STEP: dict[str, tuple[int, int]] = {
    "left of": (0, -1),
    "right of": (0, 1),
    "above": (-1, 0),
    "below": (1, 0),
}


@dataclass(frozen=True)
class EditSpec:
    """An instruction with its exact source and target scenes.

    `subject` is the object the instruction names (in the source; for "add", the new object as placed in the
    target); `result` is that object after the edit (None for "remove"). For "add", `free` means any free cell is
    acceptable, and `anchor`/`relation` constrain the new object relative to an existing one.
    """

    kind: str
    text: str
    source: Scene
    target: Scene
    subject: Obj
    result: Obj | None = None
    anchor: Obj | None = None
    relation: str | None = None
    free: bool = False

    @property
    def task_type(self) -> str:
        """GEdit-Bench-style task type (moving objects has no GEdit category; we call it position_change)."""
        return {
            "recolor": "color_alter",
            "remove": "subject-remove",
            "add": "subject-add",
            "move": "position_change",
        }[self.kind]

    @property
    def unchanged(self) -> tuple[Obj, ...]:
        """Source objects the instruction does not touch."""
        return tuple(o for o in self.source.objects if self.kind == "add" or o != self.subject)


def cell_phrase(cell: tuple[int, int]) -> str:
    """'the top-left corner' for corners, 'row 2, column 3' otherwise (1-based, as people count)."""
    for name, c in CORNERS.items():
        if c == tuple(cell):
            return f"the {name} corner"
    return f"row {cell[0] + 1}, column {cell[1] + 1}"


def _rel_text(rel: str) -> str:
    return f"to the {rel}" if rel in ("left of", "right of") else rel


def is_held_out_edit(text: str) -> bool:
    """Deterministic split by instruction text, like prompts.is_held_out."""
    digest = hashlib.sha256(("edit:" + text).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELD_OUT_FRACTION


def _unique(scene: Scene) -> list[Obj]:
    keys = [(o.shape, o.color) for o in scene.objects]
    return [o for o in scene.objects if keys.count((o.shape, o.color)) == 1]


def _replace(scene: Scene, old: Obj, new: Obj | None) -> Scene:
    objs = [o for o in scene.objects if o != old]
    if new is not None:
        objs.append(new)
    return Scene(tuple(objs), scene.grid)


def _try_edit(rng: random.Random, kind: str) -> EditSpec | None:
    """One attempt at a random edit of `kind`; None when the drawn scene does not allow it."""
    if kind == "recolor":
        source = random_scene(rng, rng.randint(1, 4))
        x = rng.choice(_unique(source) or [None])
        if x is None:
            return None
        present = {(o.shape, o.color) for o in source.objects}
        colors = [c for c in COLORS if c != x.color and (x.shape, c) not in present]
        new = Obj(x.shape, rng.choice(colors), x.row, x.col)
        text = f"make the {x.color} {x.shape} {new.color}"
        return EditSpec(kind, text, source, _replace(source, x, new), subject=x, result=new)
    if kind == "remove":
        source = random_scene(rng, rng.randint(2, 4))
        x = rng.choice(_unique(source) or [None])
        if x is None:
            return None
        return EditSpec(kind, f"remove the {x.color} {x.shape}", source, _replace(source, x, None), subject=x)
    if kind == "add":
        source = random_scene(rng, rng.randint(1, 3))
        present = {(o.shape, o.color) for o in source.objects}
        options = [(s, c) for s in SHAPES for c in COLORS if (s, c) not in present]
        shape, color = rng.choice(options)
        mode = rng.choice(("free", "corner", "relation"))
        if mode == "free":
            r, c = rng.choice(source.free_cells())
            new = Obj(shape, color, r, c)
            text = f"add a {color} {shape}"
            return EditSpec(
                kind, text, source, _replace(source, new, new), subject=new, result=new, free=True
            )
        if mode == "corner":
            name, cell = rng.choice(list(CORNERS.items()))
            if cell not in source.free_cells():
                return None
            new = Obj(shape, color, *cell)
            text = f"add a {color} {shape} in the {name} corner"
            return EditSpec(kind, text, source, _replace(source, new, new), subject=new, result=new)
        anchor = rng.choice(_unique(source) or [None])
        if anchor is None:
            return None
        rel = rng.choice(RELATIONS)
        dr, dc = _REL_STEP[rel]
        cell = (anchor.row + dr, anchor.col + dc)
        if cell not in source.free_cells():
            return None
        new = Obj(shape, color, *cell)
        text = f"add a {color} {shape} {_rel_text(rel)} the {anchor.color} {anchor.shape}"
        return EditSpec(
            kind,
            text,
            source,
            _replace(source, new, new),
            subject=new,
            result=new,
            anchor=anchor,
            relation=rel,
        )
    if kind == "move":
        source = random_scene(rng, rng.randint(1, 4))
        x = rng.choice(_unique(source) or [None])
        if x is None:
            return None
        if rng.random() < 0.5:
            direction = rng.choice(list(DIRECTIONS))
            dr, dc = DIRECTIONS[direction]
            cell = (x.row + dr, x.col + dc)
            text = f"move the {x.color} {x.shape} one cell {'to the ' if dr == 0 else ''}{direction}"
        else:
            name, cell = rng.choice(list(CORNERS.items()))
            text = f"move the {x.color} {x.shape} to the {name} corner"
        if cell not in source.free_cells():
            return None
        new = Obj(x.shape, x.color, *cell)
        return EditSpec(kind, text, source, _replace(source, x, new), subject=x, result=new)
    raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")


def sample_edit(rng: random.Random, split: str, kind: str | None = None) -> EditSpec:
    """A random edit whose instruction text belongs to `split` ("train" or "heldout"); deterministic for an rng."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if kind is not None and kind not in EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    for _ in range(10_000):
        edit = _try_edit(rng, kind or rng.choice(EDIT_KINDS))
        if edit is not None and is_held_out_edit(edit.text) == (split == "heldout"):
            return edit
    raise RuntimeError(f"could not draw an edit of kind {kind!r} for split {split!r}")


def _sel(o: Obj, with_cell: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": o.shape, "color": o.color}
    if with_cell:
        out["cell"] = [o.row, o.col]
    return out


def _recolor_criteria(edit: EditSpec) -> list[Criterion]:
    x, new = edit.subject, edit.result
    return [
        Criterion(
            "recolored",
            f"The {x.shape} in {cell_phrase((x.row, x.col))} is now {new.color}.",
            check={"type": "object_at", **_sel(new)},
        ),
        Criterion(
            "old_color_gone",
            f"There is no {x.color} {x.shape} left in the image.",
            check={"type": "count", "shape": x.shape, "color": x.color, "n": 0},
        ),
    ]


def _remove_criteria(edit: EditSpec) -> list[Criterion]:
    x = edit.subject
    return [
        Criterion(
            "removed",
            f"The {x.color} {x.shape} has been removed.",
            check={"type": "count", "shape": x.shape, "color": x.color, "n": 0},
        ),
        Criterion(
            "cell_cleared",
            f"Nothing is left where the {x.color} {x.shape} was ({cell_phrase((x.row, x.col))}).",
            check={"type": "cell_empty", "cell": [x.row, x.col]},
        ),
    ]


def _add_criteria(edit: EditSpec) -> list[Criterion]:
    x = edit.subject
    out = [
        Criterion(
            "added",
            f"The image now contains exactly one {x.color} {x.shape}.",
            check={"type": "count", "shape": x.shape, "color": x.color, "n": 1},
        )
    ]
    if edit.anchor is not None and edit.relation is not None:
        a = edit.anchor
        out.append(
            Criterion(
                "placed",
                f"The {x.color} {x.shape} is {_rel_text(edit.relation)} the {a.color} {a.shape}.",
                check={"type": "relation", "a": _sel(x, False), "rel": edit.relation, "b": _sel(a, False)},
            )
        )
    elif not edit.free:
        out.append(
            Criterion(
                "placed",
                f"The {x.color} {x.shape} is in {cell_phrase((x.row, x.col))}.",
                check={"type": "object_at", **_sel(x)},
            )
        )
    return out


def _move_criteria(edit: EditSpec) -> list[Criterion]:
    x, new = edit.subject, edit.result
    return [
        Criterion(
            "moved_to",
            f"The {x.color} {x.shape} is now in {cell_phrase((new.row, new.col))}.",
            check={"type": "object_at", **_sel(new)},
        ),
        Criterion(
            "moved_from",
            f"The {x.color} {x.shape} is no longer in {cell_phrase((x.row, x.col))}.",
            check={"type": "cell_empty", "cell": [x.row, x.col]},
        ),
    ]


_INSTRUCTION_CRITERIA = {
    "recolor": _recolor_criteria,
    "remove": _remove_criteria,
    "add": _add_criteria,
    "move": _move_criteria,
}


def _preservation_criteria(edit: EditSpec) -> list[Criterion]:
    """Every untouched object is unchanged, and nothing else was added, removed or changed."""
    keep = edit.unchanged
    out = [
        Criterion(
            f"kept_{o.row}{o.col}",
            f"The {o.color} {o.shape} in {cell_phrase((o.row, o.col))} is unchanged.",
            category="preservation",
            check={"type": "object_at", **_sel(o)},
        )
        for o in keep
    ]
    # The edited object may be in its source or target state: a missing change is the instruction's failure,
    # not a preservation failure. Anything beyond that is an unrequested change.
    allowed = [_sel(o) for o in keep]
    if edit.kind != "add":
        allowed.append(_sel(edit.subject))
    if edit.result is not None:
        # Free and relative additions may land in any cell (the instruction criteria check the relation).
        allowed.append(_sel(edit.result, with_cell=not (edit.free or edit.relation is not None)))
    out.append(
        Criterion(
            "nothing_else",
            "Nothing else was added, removed or changed, and there are no stray fragments.",
            category="preservation",
            check={"type": "no_extra", "allowed": allowed},
        )
    )
    return out


def rubric_for_edit(edit: EditSpec) -> Rubric:
    """Instruction criteria (the change happened) and preservation criteria (nothing else changed)."""
    if edit.result is None and edit.kind != "remove":
        raise ValueError(
            f"edit {edit.text!r} of kind {edit.kind!r} needs a `result` object (only removals have none)"
        )
    if edit.kind not in _INSTRUCTION_CRITERIA:
        raise ValueError(f"unknown edit kind {edit.kind!r}; expected one of {EDIT_KINDS}")
    instruction = _INSTRUCTION_CRITERIA[edit.kind](edit)
    for c in instruction:
        c.category = "instruction"
    return Rubric(prompt=edit.text, criteria=instruction + _preservation_criteria(edit), task="edit")


def edit_correct(edit: EditSpec, image: Image.Image | DetectionReport, strict: bool = True) -> bool:
    """Strict verdict: the instruction was followed exactly and nothing else changed (free placements allowed)."""
    report = image if isinstance(image, DetectionReport) else analyze(image)
    return all(
        evaluate_check(c.check, report, strict=strict).holds
        for c in rubric_for_edit(edit).criteria
        if c.check
    )


def scene_to_dict(scene: Scene) -> dict[str, Any]:
    return {"grid": scene.grid, "objects": [[o.shape, o.color, o.row, o.col] for o in scene.objects]}


def scene_from_dict(data: dict[str, Any]) -> Scene:
    try:
        return Scene(tuple(Obj(*o) for o in data["objects"]), int(data.get("grid", GRID)))
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"a scene must look like {{'grid': 4, 'objects': [[shape, color, row, col], ...]}}: {e}"
        ) from None


__all__ = [
    "CORNERS",
    "DIRECTIONS",
    "EDIT_KINDS",
    "EditSpec",
    "cell_phrase",
    "edit_correct",
    "is_held_out_edit",
    "rubric_for_edit",
    "sample_edit",
    "scene_from_dict",
    "scene_to_dict",
]
