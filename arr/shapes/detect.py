"""Reading shapes-world images back into objects, for the pixel judge.

The detector must work on *generated* images (blurry edges, colours slightly off, stray fragments, objects not
aligned to cells), not only on exact renders, so every step tolerates small errors while refusing to call a blob
an object unless it looks like one:

1. Resize to `IMAGE_SIZE` (nearest) so that every threshold below is in 48-px units.
2. Classify each pixel: background if dark (brightest channel < `DARK_LEVEL`); otherwise the palette colour whose
   *scaled* version is nearest (a blurred edge is the colour blended with black, i.e. the colour times a factor
   in [`ALPHA_MIN`, `ALPHA_MAX`]); "unknown" when even the nearest is over `UNKNOWN_DISTANCE` away (white, grey,
   mixed colours). Pixels under `HALO_LEVEL` of their colour are blur halo, i.e. background, so that blurred
   neighbours 2 px apart do not merge.
3. Connected components of equal class, 8-connectivity, by union-find over row runs (numpy-only, no scipy).
4. Components by area: up to `SPECK_MAX_AREA` px are *specks* (sampling noise; dropped but counted, see
   `DetectionReport.n_specks`), up to `FRAGMENT_MAX_AREA` px are *fragments* (shape "fragment": not objects,
   but strict checks fail on them), larger ones are objects.
5. Off-colour rims: small components touching an object (a generated purple square edged with unknown-colour
   pixels) are absorbed into it, up to `RIM_MAX_FRACTION` of its area; beyond that they stay fragments.
6. Shape from geometry, read on the half-intensity core (`CORE_LEVEL`, where a blurred edge was): fill ratio of the bounding box (square ~1, circle ~0.78, triangle ~0.55), top-versus-bottom
   mass (an apex-up triangle is light on top) and how full the bbox corners are. Blobs too large for one cell
   (e.g. two objects merged), too elongated or of no clear shape are "unknown" and count as extra objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from arr.images import to_rgb
from arr.shapes.scene import COLORS, GRID, IMAGE_SIZE, PALETTE, SHAPES

DETECTOR_VERSION = 1  # bump whenever a threshold or rule below changes: judge fingerprints include it

CELL = IMAGE_SIZE // GRID  # 12 px; a rendered object is 10x10 px inside its cell
DARK_LEVEL = 80  # brightest channel below this is background (rendered colours peak at 210-235)
ALPHA_MIN, ALPHA_MAX = 0.35, 1.25  # blend-with-black factors accepted as the same colour
HALO_LEVEL = 0.45  # blend factor below which a coloured pixel is blur halo, i.e. background
# Nearest palette colours are >= 97 apart after scaling (green vs cyan); 60 leaves room for "slightly off" colours.
UNKNOWN_DISTANCE = 60.0
SPECK_MAX_AREA = (
    2  # px; isolated 1-2 px dots are sampling noise, invisible to a viewer and to GenEval's detector
)
FRAGMENT_MAX_AREA = 19  # px; the smallest rendered object (triangle) has 55 px, a sloppy generated one ~30
MAX_OBJECT_SIDE = (
    17  # px; a 10 px object blurred by 1-2 px stays under this, two merged neighbours (22 px) do not
)
MAX_ASPECT = 1.6  # width/height (or inverse) above this is no circle, square or triangle
RIM_MAX_FRACTION = 0.3  # off-colour rim pixels absorbed into an object, at most this fraction of its area
CORE_LEVEL = 0.5  # shapes are read where intensity >= this fraction of the component's 90th percentile

UNKNOWN = "unknown"
FRAGMENT = "fragment"
COLOR_CLASSES: tuple[str, ...] = (*COLORS, UNKNOWN)  # class id k (1-based) <-> COLOR_CLASSES[k - 1]

_PAL = np.array([PALETTE[c] for c in COLORS], dtype=np.float32)  # (6, 3)
_PAL_NORM2 = (_PAL**2).sum(axis=1)  # (6,)
_UNKNOWN_CLASS = len(COLORS) + 1


@dataclass(frozen=True)
class Detection:
    """One connected component read from an image.

    `shape` is one of `SHAPES`, "unknown" (object-sized but no clear shape, e.g. merged objects) or "fragment"
    (too small to be an object). `bbox` is (x0, y0, x1, y1) inclusive, `centroid` (x, y), both in pixels of the
    48-px image; `cell` is (row, col) of the centroid.
    """

    shape: str
    color: str
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area: int
    fill_ratio: float
    cell: tuple[int, int]

    @property
    def is_object(self) -> bool:
        """Objects (including unknown blobs) count towards what is in the image; fragments do not."""
        return self.shape != FRAGMENT

    @property
    def width(self) -> int:
        return self.bbox[2] - self.bbox[0] + 1

    @property
    def height(self) -> int:
        return self.bbox[3] - self.bbox[1] + 1

    def matches(self, shape: str | None = None, color: str | None = None) -> bool:
        """True when this is an object of `shape` (any if None) and `color` (any if None)."""
        if not self.is_object:
            return False
        return (shape is None or self.shape == shape) and (color is None or self.color == color)


@dataclass(frozen=True)
class DetectionReport:
    """Everything the detector found: detections (objects and fragments) plus the specks it dropped."""

    detections: tuple[Detection, ...]
    n_specks: int = 0
    speck_pixels: int = 0
    foreground_pixels: int = 0

    @property
    def objects(self) -> list[Detection]:
        return [d for d in self.detections if d.is_object]

    @property
    def fragments(self) -> list[Detection]:
        return [d for d in self.detections if not d.is_object]

    @property
    def unknown_objects(self) -> list[Detection]:
        return [d for d in self.detections if d.shape == UNKNOWN]


def image_array(image: Image.Image) -> np.ndarray:
    """RGB uint8 array of `image` at `IMAGE_SIZE`x`IMAGE_SIZE` (nearest resize: no new blended colours)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"detect expects a PIL.Image, got {type(image).__name__}")
    image = to_rgb(image)
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
    return np.asarray(image, dtype=np.uint8)


def classify_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class (0 background, k in 1..6 palette colour COLORS[k-1], 7 unknown) and intensity.

    The intensity is the blend factor with black of the matched colour (brightness / 255 for unknown pixels);
    shapes are read from the half-intensity region, which is where a blurred edge was before blurring.
    """
    h, w, _ = rgb.shape
    flat = rgb.reshape(-1, 3)
    bright_all = flat.max(axis=1)
    classes = np.zeros(h * w, dtype=np.int8)
    intensity = np.zeros(h * w, dtype=np.float32)
    lit = np.flatnonzero(bright_all >= DARK_LEVEL)  # most pixels are black: classify only the others
    if lit.size:
        x = flat[lit].astype(np.float32)
        alpha = np.clip(
            (x @ _PAL.T) / _PAL_NORM2, ALPHA_MIN, ALPHA_MAX
        )  # (N, 6) best blend factor per colour
        resid = ((x[:, None, :] - alpha[:, :, None] * _PAL[None]) ** 2).sum(axis=2)  # (N, 6)
        best = resid.argmin(axis=1)
        rows = np.arange(lit.size)
        known = resid[rows, best] <= UNKNOWN_DISTANCE**2
        inten = np.where(known, alpha[rows, best], bright_all[lit] / 255.0)
        cls = np.where(known, best + 1, _UNKNOWN_CLASS)
        # Below half intensity a pixel is the outer halo of a blurred edge: counting it would merge neighbours
        # 2 px apart into one blob.
        cls = np.where(inten < HALO_LEVEL, 0, cls)
        classes[lit] = cls
        intensity[lit] = inten
    return classes.reshape(h, w), intensity.reshape(h, w)


def label_components(classes: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """8-connected components of equal non-zero class: labels (0 = background, 1..n) and each one's bbox.

    Bounding boxes are (x0, y0, x1, y1) inclusive, listed for labels 1..n.

    Union-find over horizontal runs keeps the Python loop to the number of runs (~100 for a scene), not pixels.
    """
    h, w = classes.shape
    padded = np.zeros((h, w + 1), dtype=np.int8)  # a zero column ends every run at its row's end
    padded[:, :w] = classes
    flat = padded.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    keep = flat[starts] != 0
    starts, ends = starts[keep], ends[keep]
    run_cls = flat[starts].tolist()
    run_row = (starts // (w + 1)).tolist()
    run_s = (starts % (w + 1)).tolist()
    run_e = (ends - (starts // (w + 1)) * (w + 1)).tolist()  # exclusive
    n_runs = len(run_cls)
    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    prev: list[int] = []
    cur: list[int] = []
    row = -1
    for i in range(n_runs):
        if run_row[i] != row:
            prev = cur if run_row[i] == row + 1 else []
            cur = []
            row = run_row[i]
            k = 0
        s, e, c = run_s[i], run_e[i], run_cls[i]
        # 8-connectivity: a run in the row above touches [s-1, e] (e exclusive, so columns s-1 .. e).
        while k < len(prev) and run_e[prev[k]] < s:
            k += 1
        m = k
        while m < len(prev) and run_s[prev[m]] <= e:
            j = prev[m]
            if run_cls[j] == c:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            m += 1
        cur.append(i)

    labels = np.zeros((h, w), dtype=np.int32)
    comp_of_root: dict[int, int] = {}
    boxes: list[list[int]] = []
    for i in range(n_runs):
        root = find(i)
        comp = comp_of_root.get(root)
        r, s, e = run_row[i], run_s[i], run_e[i]
        if comp is None:
            comp = comp_of_root[root] = len(comp_of_root) + 1
            boxes.append([s, r, e - 1, r])
        else:
            box = boxes[comp - 1]
            box[0], box[2], box[3] = min(box[0], s), max(box[2], e - 1), r  # runs come in row order
        labels[r, s:e] = comp
    return labels, [(b[0], b[1], b[2], b[3]) for b in boxes]


def _crop(mask: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def classify_shape(mask: np.ndarray) -> str:
    """Shape of one component from its bbox-cropped boolean mask (see the module docstring for the rules)."""
    h, w = mask.shape
    if max(h, w) > MAX_OBJECT_SIDE or max(h, w) / min(h, w) > MAX_ASPECT:
        return UNKNOWN
    fill = float(mask.mean())
    half = h // 2
    top = float(mask[:half].sum())
    bottom = float(mask[h - half :].sum())
    balance = top / max(bottom, 1.0)  # 1 for symmetric shapes, ~0.35 for an apex-up triangle
    k = max(1, round(min(h, w) * 0.2))
    corners = [mask[:k, :k].mean(), mask[:k, -k:].mean(), mask[-k:, :k].mean(), mask[-k:, -k:].mean()]
    top_corners = (corners[0] + corners[1]) / 2
    bottom_corners = (corners[2] + corners[3]) / 2
    if fill >= 0.82 and min(corners) >= 0.5 and balance >= 0.8:
        return "square"
    if 0.35 <= fill <= 0.75 and balance <= 0.65 and top_corners <= 0.25 and bottom_corners >= 0.5:
        return "triangle"
    if 0.6 <= fill < 0.92 and 0.75 <= balance <= 1.33 and max(corners) <= 0.5:
        return "circle"
    return UNKNOWN


def _absorb_rims(labels: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """owner[k]: the component that component k belongs to after absorbing off-colour rims.

    Generated objects often have a rim of off-colour pixels (a purple square edged with unknown-colour pixels).
    Small components (fragment size or less) that touch an object-sized component are part of that object, not
    stray debris; the largest touching object takes them, unless together they exceed `RIM_MAX_FRACTION` of its
    area (then they stay separate fragments, and strict checks see them).
    """
    n = areas.size - 1
    owner = np.arange(n + 1)
    big = areas > FRAGMENT_MAX_AREA
    big[0] = False
    if not big.any() or big[1:].all():
        return owner
    pairs = []
    for a, b in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs += [a[touch] * (n + 1) + b[touch], b[touch] * (n + 1) + a[touch]]
    codes = np.unique(np.concatenate(pairs))
    host_of: dict[int, int] = {}
    for small, other in zip((codes // (n + 1)).tolist(), (codes % (n + 1)).tolist(), strict=True):
        if big[small] or not big[other]:
            continue
        if small not in host_of or areas[other] > areas[host_of[small]]:
            host_of[small] = other
    taken: dict[int, list[int]] = {}
    for small, host in host_of.items():
        taken.setdefault(host, []).append(small)
    for host, smalls in taken.items():
        if areas[smalls].sum() <= RIM_MAX_FRACTION * areas[host]:
            owner[smalls] = host
    return owner


def analyze(image: Image.Image) -> DetectionReport:
    """Detect every object, fragment and speck in a shapes-world image (any size; resized to 48 px)."""
    rgb = image_array(image)
    classes, intensity = classify_pixels(rgb)
    labels, boxes = label_components(classes)
    n = len(boxes)
    if n == 0:
        return DetectionReport(detections=(), foreground_pixels=0)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    comp_cls = np.zeros(n + 1, dtype=np.int64)
    comp_cls[labels.ravel()] = classes.ravel()  # every pixel of a component has the same class
    owner = _absorb_rims(labels, areas)
    members: dict[int, list[int]] = {}
    for k in range(1, n + 1):
        members.setdefault(int(owner[k]), []).append(k)
    labels = owner[labels]
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)
    ys, xs = np.divmod(np.arange(flat.size), IMAGE_SIZE)
    sum_x = np.bincount(flat, weights=xs, minlength=n + 1)
    sum_y = np.bincount(flat, weights=ys, minlength=n + 1)
    detections: list[Detection] = []
    n_specks = speck_pixels = 0
    for k, group in members.items():
        area = int(areas[k])
        if area <= SPECK_MAX_AREA:
            n_specks += 1
            speck_pixels += area
            continue
        x0, y0 = min(boxes[g - 1][0] for g in group), min(boxes[g - 1][1] for g in group)
        x1, y1 = max(boxes[g - 1][2] for g in group), max(boxes[g - 1][3] for g in group)
        mask = labels[y0 : y1 + 1, x0 : x1 + 1] == k
        fill = area / mask.size
        if area <= FRAGMENT_MAX_AREA:
            shape = FRAGMENT
        else:
            # Half-maximum region: undoes blur spreading (a blurred edge sits at half intensity).
            inten = intensity[y0 : y1 + 1, x0 : x1 + 1]
            values = np.sort(inten[mask])
            core = mask & (inten >= CORE_LEVEL * float(values[int(0.9 * (values.size - 1))]))
            shape = classify_shape(_crop(core)) if core.sum() > FRAGMENT_MAX_AREA else UNKNOWN
        cx, cy = float(sum_x[k] / area), float(sum_y[k] / area)
        cell = (min(GRID - 1, int(cy // CELL)), min(GRID - 1, int(cx // CELL)))
        detections.append(
            Detection(
                shape=shape,
                color=COLOR_CLASSES[int(comp_cls[k]) - 1],
                bbox=(x0, y0, x1, y1),
                centroid=(round(cx, 3), round(cy, 3)),
                area=area,
                fill_ratio=round(fill, 4),
                cell=cell,
            )
        )
    # Reading order (top to bottom, left to right) so that results do not depend on labelling order.
    detections.sort(key=lambda d: (d.cell, d.centroid[1], d.centroid[0]))
    return DetectionReport(
        detections=tuple(detections),
        n_specks=n_specks,
        speck_pixels=speck_pixels,
        foreground_pixels=int((classes != 0).sum()),
    )


def detect(image: Image.Image) -> list[Detection]:
    """Objects and fragments in `image` (specks left out; use `analyze` for their count)."""
    return list(analyze(image).detections)


__all__ = [
    "CELL",
    "COLOR_CLASSES",
    "DETECTOR_VERSION",
    "FRAGMENT",
    "FRAGMENT_MAX_AREA",
    "SHAPES",
    "SPECK_MAX_AREA",
    "UNKNOWN",
    "Detection",
    "DetectionReport",
    "analyze",
    "classify_pixels",
    "classify_shape",
    "detect",
    "image_array",
    "label_components",
]
