"""Scenes of the shapes world and their exact rendering.

A scene is a few coloured shapes on a black background, each in one cell of a `GRID`×`GRID` layout. Positions are
snapped to cells so that tiny models can learn composition, and rendering is pixel-exact (no anti-aliasing) so that
the pixel judge can recover every object from the image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

# Well-separated in RGB so that nearest-palette classification is exact for rendered images.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (235, 220, 40),
    "purple": (160, 50, 210),
    "cyan": (40, 210, 220),
}
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
COLORS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

IMAGE_SIZE = 48  # pixels; each cell is IMAGE_SIZE // GRID wide
GRID = 4
MARGIN = 1  # empty pixels between an object and its cell border


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    row: int  # 0 = top
    col: int  # 0 = left

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in PALETTE:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {COLORS}")


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...] = field(default_factory=tuple)
    grid: int = GRID

    def __post_init__(self) -> None:
        cells = [(o.row, o.col) for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell in {self}")
        for r, c in cells:
            if not (0 <= r < self.grid and 0 <= c < self.grid):
                raise ValueError(f"cell ({r}, {c}) outside the {self.grid}x{self.grid} grid")

    def free_cells(self) -> list[tuple[int, int]]:
        used = {(o.row, o.col) for o in self.objects}
        return [(r, c) for r in range(self.grid) for c in range(self.grid) if (r, c) not in used]


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw `scene` as an RGB image of `size`×`size` pixels (size must be a multiple of the grid)."""
    if size % scene.grid:
        raise ValueError(f"image size {size} is not a multiple of the grid {scene.grid}")
    cell = size // scene.grid
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0 = obj.col * cell + MARGIN
        y0 = obj.row * cell + MARGIN
        x1 = (obj.col + 1) * cell - 1 - MARGIN
        y1 = (obj.row + 1) * cell - 1 - MARGIN
        color = PALETTE[obj.color]
        if obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=color)
        elif obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=color)
        else:  # triangle, apex up
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    return image


def random_scene(rng: random.Random, n_objects: int | None = None, grid: int = GRID) -> Scene:
    """A scene of 1-4 random objects in distinct random cells."""
    n = n_objects if n_objects is not None else rng.randint(1, 4)
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], n)
    objects = tuple(Obj(rng.choice(SHAPES), rng.choice(COLORS), r, c) for r, c in cells)
    return Scene(objects, grid)
