"""Preference pairs with winners known by construction, for judge accuracy and position-bias measurements.

The winner is an exact render of a scene that satisfies the prompt (or the edit's target); the loser is the same
scene corrupted in one named way. Every loser is verified to fail the strict verdict (and every winner to pass
it) before it is used, so labels are right by construction. Half the pairs put the winner first ("A"). Each pair
also carries per-criterion labels for both images (`labels`), read from the exact renders, for validating a judge
criterion by criterion.

    pairs = make_pairs(200, seed=0, split="heldout", task="t2i")
    pairs[0].image_a, pairs[0].image_b, pairs[0].winner, pairs[0].corruption
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from arr.rubrics import Rubric
from arr.shapes.detect import analyze
from arr.shapes.edits import EditSpec, edit_correct, rubric_for_edit, sample_edit
from arr.shapes.prompts import PromptSpec, sample_prompts, scene_for_prompt
from arr.shapes.rubrics import evaluate_check, geneval_correct, rubric_for_prompt
from arr.shapes.scene import COLORS, IMAGE_SIZE, PALETTE, SHAPES, Obj, Scene, render

T2I_CORRUPTIONS: tuple[str, ...] = (
    "wrong_color",
    "wrong_count",
    "wrong_relation",
    "wrong_shape",
    "extra_object",
    "missing_object",
    "fragments",
)
EDIT_CORRUPTIONS: tuple[str, ...] = (
    "unedited",
    "wrong_color",
    "wrong_position",
    "extra_change",
    "extra_object",
    "missing_object",
    "fragments",
)


@dataclass
class PreferencePair:
    """Two images for one prompt (or edit instruction); `winner` is "A" or "B"."""

    id: str
    task: str  # "t2i" or "edit"
    prompt: str
    category: str  # GenEval category (t2i) or edit kind
    corruption: str  # how the loser was made
    image_a: Image.Image
    image_b: Image.Image
    winner: str
    rubric: Rubric
    source: Image.Image | None = None  # editing: the source image
    # Per-criterion labels, {"chosen": {criterion id: True / False}, "rejected": {...}}, where known.
    labels: dict[str, dict[str, bool | int | None]] | None = None

    @property
    def chosen(self) -> Image.Image:
        return self.image_a if self.winner == "A" else self.image_b

    @property
    def rejected(self) -> Image.Image:
        return self.image_b if self.winner == "A" else self.image_a


def pair_labels(value: Any, rubric: Rubric, where: str) -> dict[str, dict[str, bool | int | None]] | None:
    """A pair's optional per-criterion labels, {"chosen": {id: label}, "rejected": {...}}, checked against its
    rubric: a yes/no criterion takes true / false / null, an ordinal one a level or null. A mismatch is a
    ValueError naming `where`."""
    if value is None:
        return None
    ids = {c.id: c for c in rubric.criteria}
    if not isinstance(value, dict) or not set(value) <= {"chosen", "rejected"}:
        raise ValueError(f"{where}: 'labels' must map 'chosen' and/or 'rejected' to {{criterion id: label}}")
    for side, labels in value.items():
        for cid, label in (labels or {}).items() if isinstance(labels, dict) else [(None, labels)]:
            c = ids.get(cid)
            ok = c is not None and (
                label is None
                or (
                    isinstance(label, bool)
                    if c.levels is None
                    else type(label) is int and 1 <= label <= c.levels
                )
            )
            if not ok:
                raise ValueError(
                    f"{where}: label {label!r} for criterion {cid!r} ({side}) does not fit the pair's rubric; "
                    "expected true/false/null for a yes/no criterion, a level 1..levels or null for a rating"
                )
    return value


def perturb_image(
    image: Image.Image, rng: random.Random, noise: float = 10.0, max_shift: int = 1, blur: float = 0.5
) -> Image.Image:
    """Mild generation-like damage: a shift of up to `max_shift` px, Gaussian blur, Gaussian noise (0-255 scale)."""
    arr = np.asarray(image.convert("RGB"))
    if max_shift:
        dx, dy = rng.randint(-max_shift, max_shift), rng.randint(-max_shift, max_shift)
        # Objects keep a 1 px margin inside their cell, so a 1 px roll never wraps an object around the border.
        arr = np.roll(arr, (dy, dx), axis=(0, 1))
    out = Image.fromarray(arr)
    if blur:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    if noise:
        gen = np.random.default_rng(rng.getrandbits(32))
        noisy = np.asarray(out, dtype=np.float32) + gen.normal(0.0, noise, (*arr.shape[:2], 3))
        out = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def add_fragments(image: Image.Image, scene: Scene, rng: random.Random, n: int | None = None) -> Image.Image:
    """Draw `n` (default 2-4) stray blobs of 4-12 px in free cells, the debris a sloppy generator leaves."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    cells = scene.free_cells()
    rng.shuffle(cells)
    cell_px = IMAGE_SIZE // scene.grid
    for r, c in cells[: n if n is not None else rng.randint(2, 4)]:
        w, h = rng.randint(2, 4), rng.randint(2, 3)
        x0 = c * cell_px + rng.randint(1, cell_px - 1 - w)
        y0 = r * cell_px + rng.randint(1, cell_px - 1 - h)
        draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=PALETTE[rng.choice(COLORS)])
    return out


def _with(scene: Scene, drop: Obj | None = None, add: Obj | None = None) -> Scene:
    objs = [o for o in scene.objects if o != drop]
    if add is not None:
        objs.append(add)
    return Scene(tuple(objs), scene.grid)


def _random_obj(rng: random.Random, cell: tuple[int, int]) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(COLORS), *cell)


def _other(rng: random.Random, options: tuple[str, ...], not_this: str) -> str:
    return rng.choice([o for o in options if o != not_this])


def corrupt_t2i(spec: PromptSpec, scene: Scene, corruption: str, rng: random.Random) -> Scene | None:
    """The scene corrupted one way (None if that corruption does not apply); "fragments" keeps the scene."""
    objs = list(scene.objects)
    free = scene.free_cells()
    if corruption == "wrong_color":
        colored = [o for o, s in zip(objs, _spec_of_each(spec), strict=True) if s.color]
        if not colored:
            return None
        o = rng.choice(colored)
        return _with(scene, o, Obj(o.shape, _other(rng, COLORS, o.color), o.row, o.col))
    if corruption == "wrong_count":
        if spec.category != "counting":
            return None
        if rng.random() < 0.5:
            return _with(scene, rng.choice(objs))
        o = objs[0]
        return _with(scene, add=Obj(o.shape, spec.objects[0].color or rng.choice(COLORS), *rng.choice(free)))
    if corruption == "wrong_relation":
        if spec.relation is None:
            return None
        a, b = objs[0], objs[1]
        return Scene((Obj(a.shape, a.color, b.row, b.col), Obj(b.shape, b.color, a.row, a.col)), scene.grid)
    if corruption == "wrong_shape":
        o = rng.choice(objs)
        return _with(scene, o, Obj(_other(rng, SHAPES, o.shape), o.color, o.row, o.col))
    if corruption == "extra_object":
        return _with(scene, add=_random_obj(rng, rng.choice(free)))
    if corruption == "missing_object":
        return _with(scene, rng.choice(objs))
    if corruption == "fragments":
        return scene
    raise ValueError(f"unknown corruption {corruption!r}; expected one of {T2I_CORRUPTIONS}")


def _spec_of_each(spec: PromptSpec) -> list:
    """The ObjectSpec behind each object of `scene_for_prompt`'s scene, in the same order."""
    return [o for o in spec.objects for _ in range(o.count)]


def corrupt_edit(edit: EditSpec, corruption: str, rng: random.Random) -> Scene | None:
    """The edit's target corrupted one way (None if that corruption does not apply)."""
    target, new = edit.target, edit.result
    keep = list(edit.unchanged)
    free = [c for c in target.free_cells() if c != (edit.subject.row, edit.subject.col)]
    if corruption == "unedited":
        return edit.source
    if corruption == "wrong_color":
        if new is None or edit.kind not in ("recolor", "add"):
            return None
        bad = [c for c in COLORS if c not in (new.color, edit.subject.color)] or [
            _other(rng, COLORS, new.color)
        ]
        return _with(target, new, Obj(new.shape, rng.choice(bad), new.row, new.col))
    if corruption == "wrong_position":
        if new is None or edit.kind not in ("move", "add") or edit.free or not free:
            return None
        return _with(target, new, Obj(new.shape, new.color, *rng.choice(free)))
    if corruption == "extra_change":
        if not keep:
            return None
        o = rng.choice(keep)
        return _with(target, o, Obj(o.shape, _other(rng, COLORS, o.color), o.row, o.col))
    if corruption == "extra_object":
        return _with(target, add=_random_obj(rng, rng.choice(free))) if free else None
    if corruption == "missing_object":
        return _with(target, rng.choice(keep)) if keep else None
    if corruption == "fragments":
        return target
    raise ValueError(f"unknown corruption {corruption!r}; expected one of {EDIT_CORRUPTIONS}")


def _t2i_verdict(spec: PromptSpec) -> Callable[[Image.Image], bool]:
    return lambda image: geneval_correct(spec, analyze(image))


def _edit_verdict(edit: EditSpec) -> Callable[[Image.Image], bool]:
    return lambda image: edit_correct(edit, image)


def _labels(rubric: Rubric, image: Image.Image, source: Image.Image | None) -> dict[str, bool | int | None]:
    """Every machine-checkable yes/no criterion evaluated on an exact render, where detection is exact."""
    report, source_report = analyze(image), analyze(source) if source is not None else None
    return {
        c.id: evaluate_check(c.check, report, strict=True, source=source_report).holds
        for c in rubric.criteria
        if c.check is not None and c.levels is None
    }


def _make(
    n: int,
    rng: random.Random,
    positions: list[str],
    task: str,
    split: str,
    perturb: bool,
    prompts: list[PromptSpec],
) -> list[PreferencePair]:
    out: list[PreferencePair] = []
    i = 0
    while len(out) < n:
        pos = positions[len(out)]
        loser_scene = None
        if task == "t2i":
            spec = prompts[i % len(prompts)]
            i += 1
            scene = scene_for_prompt(spec, rng)
            for corruption in rng.sample(T2I_CORRUPTIONS, len(T2I_CORRUPTIONS)):
                if (loser_scene := corrupt_t2i(spec, scene, corruption, rng)) is not None:
                    break
            winner_scene, verdict = scene, _t2i_verdict(spec)
            rubric, prompt, category, source_scene = rubric_for_prompt(spec), spec.text, spec.category, None
        else:
            edit = sample_edit(rng, split)
            for corruption in rng.sample(EDIT_CORRUPTIONS, len(EDIT_CORRUPTIONS)):
                if (loser_scene := corrupt_edit(edit, corruption, rng)) is not None:
                    break
            winner_scene, verdict = edit.target, _edit_verdict(edit)
            rubric, prompt, category, source_scene = rubric_for_edit(edit), edit.text, edit.kind, edit.source
        if loser_scene is None:
            continue
        winner, loser = render(winner_scene), render(loser_scene)
        if corruption == "fragments":
            loser = add_fragments(loser, loser_scene, rng)
        # Labels must be right by construction: skip the rare draw where the corruption left the loser correct.
        # Checked on exact renders (where detection is exact), before any perturbation, so that the set is not
        # filtered towards what the pixel judge gets right on perturbed images.
        if not verdict(winner) or verdict(loser):
            continue
        source = render(source_scene) if source_scene is not None else None
        labels = {"chosen": _labels(rubric, winner, source), "rejected": _labels(rubric, loser, source)}
        if perturb:
            winner, loser = perturb_image(winner, rng), perturb_image(loser, rng)
            source = perturb_image(source, rng) if source is not None else None
        a, b = (winner, loser) if pos == "A" else (loser, winner)
        out.append(
            PreferencePair(
                id=f"{task}-{len(out):05d}",
                task=task,
                prompt=prompt,
                category=category,
                corruption=corruption,
                image_a=a,
                image_b=b,
                winner=pos,
                rubric=rubric,
                source=source,
                labels=labels,
            )
        )
    return out


def make_pairs(
    n: int, seed: int = 0, split: str = "heldout", task: str = "t2i", perturb: bool = False
) -> list[PreferencePair]:
    """`n` labelled pairs for `task` ("t2i", "edit" or "both": half each), deterministic for a seed.

    `perturb` applies `perturb_image` to every image, so judges are tested on generation-like images.
    """
    if task not in ("t2i", "edit", "both"):
        raise ValueError(f"task must be 't2i', 'edit' or 'both', got {task!r}")
    if n < 0:
        raise ValueError(f"number of pairs must be >= 0, got {n}")
    rng = random.Random(seed)
    positions = ["A"] * (n // 2) + ["B"] * (n - n // 2)
    rng.shuffle(positions)
    # sample_prompts walks every prompt of the split: only pay for it when text-to-image pairs are wanted.
    prompts = sample_prompts(max(n, 1), split, seed) if task != "edit" else []
    if task == "both":
        n_t2i = n // 2
        pairs = _make(n_t2i, rng, positions[:n_t2i], "t2i", split, perturb, prompts)
        pairs += _make(n - n_t2i, rng, positions[n_t2i:], "edit", split, perturb, prompts)
        return pairs
    return _make(n, rng, positions, task, split, perturb, prompts)


__all__ = [
    "EDIT_CORRUPTIONS",
    "T2I_CORRUPTIONS",
    "PreferencePair",
    "add_fragments",
    "corrupt_edit",
    "corrupt_t2i",
    "make_pairs",
    "pair_labels",
    "perturb_image",
]
