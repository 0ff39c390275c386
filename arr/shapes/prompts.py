"""GenEval-style prompts for the shapes world, the scenes that satisfy them, and deterministic splits.

Categories follow GenEval: single_object, colors, counting, two_object, position, color_attr. A prompt is a
`PromptSpec` (what must be in the image, exactly) plus its text; `scene_for_prompt` draws a scene that satisfies it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from dataclasses import dataclass

from arr.shapes.scene import COLORS, GRID, SHAPES, Obj, Scene

CATEGORIES: tuple[str, ...] = ("single_object", "colors", "counting", "two_object", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
# GenEval's category mix (its 553 prompts: 80/94/80/99/100/100), used when sampling balanced suites.
CATEGORY_WEIGHTS = {
    "single_object": 80,
    "colors": 94,
    "counting": 80,
    "two_object": 99,
    "position": 100,
    "color_attr": 100,
}
HELD_OUT_FRACTION = 0.25


@dataclass(frozen=True)
class ObjectSpec:
    """`count` objects of `shape` (and `color`, when given; None means any colour)."""

    shape: str
    color: str | None = None
    count: int = 1

    def phrase(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        words = ["a" if self.count == 1 else NUMBER_WORDS[self.count]]
        if self.color:
            words.append(self.color)
        words.append(noun)
        return " ".join(words)


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and what it requires: exactly these objects (and `objects[0] relation objects[1]` if given)."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.relation:
            return f"{self.objects[0].phrase()} {self.relation} {self.objects[1].phrase()}"
        return " and ".join(o.phrase() for o in self.objects)

    @property
    def n_objects(self) -> int:
        return sum(o.count for o in self.objects)


def all_prompts(category: str) -> list[PromptSpec]:
    """Every distinct prompt of a category, in a fixed order."""
    return list(_all_prompts(category))


@functools.cache
def _all_prompts(category: str) -> tuple[PromptSpec, ...]:
    return tuple(_enumerate_prompts(category))


def _enumerate_prompts(category: str) -> list[PromptSpec]:
    if category == "single_object":
        return [PromptSpec(category, (ObjectSpec(s),)) for s in SHAPES]
    if category == "colors":
        return [PromptSpec(category, (ObjectSpec(s, c),)) for c in COLORS for s in SHAPES]
    if category == "counting":
        return [
            PromptSpec(category, (ObjectSpec(s, c, n),))
            for n in (2, 3, 4)
            for s in SHAPES
            for c in (None, *COLORS)
        ]
    if category == "two_object":
        return [
            PromptSpec(category, (ObjectSpec(a), ObjectSpec(b))) for a in SHAPES for b in SHAPES if a != b
        ]
    if category == "position":
        return [
            PromptSpec(category, (ObjectSpec(a), ObjectSpec(b)), rel)
            for a in SHAPES
            for b in SHAPES
            if a != b
            for rel in RELATIONS
        ]
    if category == "color_attr":
        return [
            PromptSpec(category, (ObjectSpec(a, ca), ObjectSpec(b, cb)))
            for a in SHAPES
            for b in SHAPES
            if a != b
            for ca in COLORS
            for cb in COLORS
            if ca != cb
        ]
    raise ValueError(f"unknown prompt category {category!r}; expected one of {CATEGORIES}")


def is_held_out(spec: PromptSpec) -> bool:
    """Deterministic split by prompt text. Categories too small to split (< 8 texts) are shared by both splits."""
    if len(_all_prompts(spec.category)) < 8:
        return False
    digest = hashlib.sha256(spec.text.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < HELD_OUT_FRACTION


def prompts_for_split(split: str, category: str | None = None) -> list[PromptSpec]:
    """All prompts of `split` ("train" or "heldout"); small categories appear in both."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    cats = [category] if category else list(CATEGORIES)
    out = []
    for cat in cats:
        pool = _all_prompts(cat)
        for spec in pool:
            held = is_held_out(spec)
            small = len(pool) < 8
            if small or (held == (split == "heldout")):
                out.append(spec)
    return out


def sample_prompts(
    n: int, split: str, seed: int = 0, category_multipliers: dict[str, float] | None = None
) -> list[PromptSpec]:
    """`n` prompts drawn with GenEval's category mix from `split`, deterministic for a seed.

    `category_multipliers` scales that mix (e.g. {"counting": 2.0} draws counting prompts twice as often); a
    category left out keeps its weight, 0 drops it.
    """
    multipliers = category_multipliers or {}
    unknown = sorted(set(multipliers) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown prompt categories {unknown}; expected some of {CATEGORIES}")
    if not all(math.isfinite(m) and m >= 0 for m in multipliers.values()):
        raise ValueError(f"category multipliers must be finite numbers >= 0, got {multipliers}")
    cats = list(CATEGORY_WEIGHTS)
    weights = [CATEGORY_WEIGHTS[c] * multipliers.get(c, 1.0) for c in cats]
    if sum(weights) <= 0:
        raise ValueError(f"category multipliers {multipliers} leave no category to draw from")
    rng = random.Random(seed)
    pools = {cat: prompts_for_split(split, cat) for cat in CATEGORIES}
    return [rng.choice(pools[rng.choices(cats, weights)[0]]) for _ in range(n)]


def scene_for_prompt(spec: PromptSpec, rng: random.Random, grid: int = GRID) -> Scene:
    """A random scene containing exactly what `spec` asks for (unspecified colours drawn at random)."""
    for _ in range(1000):
        cells = [(r, c) for r in range(grid) for c in range(grid)]
        rng.shuffle(cells)
        objects: list[Obj] = []
        for ospec in spec.objects:
            for _ in range(ospec.count):
                r, c = cells.pop()
                objects.append(Obj(ospec.shape, ospec.color or rng.choice(COLORS), r, c))
        if spec.relation is None or relation_holds(objects[0], spec.relation, objects[1]):
            return Scene(tuple(objects), grid)
    raise RuntimeError(f"could not place a scene for {spec.text!r}")


def relation_holds(a: Obj, relation: str, b: Obj) -> bool:
    """GenEval-style relation on cells: strictly left/right/above/below (the other axis is free)."""
    if relation == "left of":
        return a.col < b.col
    if relation == "right of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")
