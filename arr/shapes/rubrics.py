"""Rubrics for shapes-world prompts, the machine-checkable `check` language, and GenEval's strict verdict.

Every criterion carries natural-language text (what a VLM judge is asked) and a `check` dict the pixel judge
evaluates on detections. Check types (a "selector" is {"shape": ..., "color": ...}; either may be omitted):

- {"type": "count", "shape", "color"?, "n", "op"?}: the number of matching objects is n ("eq", default), or
  at least ("ge") / at most ("le") n.
- {"type": "color", "shape", "color"}: at least one object of `shape`, and every one of them has `color`.
- {"type": "relation", "a": selector, "rel", "b": selector}: some matching pair has a `rel` b, on centroids
  (strictly left/right/above/below by more than `RELATION_MARGIN`; the other axis is free, as in prompts.py).
- {"type": "exact_set", "objects": [{"shape", "color"?, "count"}]}: the image holds exactly these objects, no
  unknown blobs, and (strict) no stray fragments and at most `SPECK_BUDGET` speck pixels.
- {"type": "object_at", "shape", "color"?, "cell": [row, col]}: a matching object is in that cell.
- {"type": "cell_empty", "cell": [row, col]}: no object (strict: nor fragment) in that cell.
- {"type": "no_extra", "allowed": [{"shape", "color"?, "cell"?}]}: every object (strict: and fragment) can be
  matched to a distinct allowed entry; entries without a cell match anywhere.
- {"type": "fragments"}: the image has stray fragments (or too many specks); meant for negative-weight penalties.
- {"type": "unchanged_from_source", "except_cells"?: [[row, col], ...]}: outside those cells the image holds the
  same objects (shape, colour, cell) as the source image (editing without a known target).

Strictness matters: a policy trained against a lenient "at least one matching component" check learned to fill
the canvas with fragments and raised its reward while its real score fell. So `exact_set`, `no_extra` and
`geneval_correct` fail on anything extra, fragments included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from arr.rubrics import Criterion, Rubric
from arr.shapes.detect import CELL, UNKNOWN, Detection, DetectionReport, analyze
from arr.shapes.prompts import PLURALS, RELATIONS, ObjectSpec, PromptSpec
from arr.shapes.scene import COLORS, GRID, SHAPES

CHECK_TYPES: tuple[str, ...] = (
    "count",
    "color",
    "relation",
    "exact_set",
    "object_at",
    "cell_empty",
    "no_extra",
    "fragments",
    "unchanged_from_source",
)
RELATION_MARGIN = CELL / 4  # px; centroids of objects in neighbouring columns differ by a whole cell (12 px)
SPECK_BUDGET = 6  # px of specks tolerated by strict checks; sensor-like noise gives 0-2, sprinkled dots more
NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


class CheckError(ValueError):
    """A criterion's `check` is malformed or cannot be evaluated; the message names the check and the problem."""


@dataclass(frozen=True)
class CheckResult:
    holds: bool
    reason: str


def as_report(detections: DetectionReport | Sequence[Detection]) -> DetectionReport:
    """Accept either a full report or a plain list of detections (then no specks are known)."""
    if isinstance(detections, DetectionReport):
        return detections
    return DetectionReport(detections=tuple(detections))


# ---------------------------------------------------------------------------------------------------------------
# Evaluating checks


def _selector(check: dict[str, Any], key: str | None = None) -> tuple[str | None, str | None]:
    sel = check if key is None else check.get(key)
    if not isinstance(sel, dict):
        raise CheckError(
            f"check {check!r}: {key!r} must be an object like {{'shape': 'circle', 'color': 'red'}}"
        )
    shape, color = sel.get("shape"), sel.get("color")
    if shape is not None and shape not in SHAPES:
        raise CheckError(f"check {check!r}: unknown shape {shape!r}; expected one of {SHAPES}")
    if color is not None and color not in COLORS:
        raise CheckError(f"check {check!r}: unknown colour {color!r}; expected one of {COLORS}")
    return shape, color


def _cell(check: dict[str, Any], value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, int) and 0 <= v < GRID for v in value)
    ):
        raise CheckError(
            f"check {check!r}: cell must be [row, col] with 0 <= row, col < {GRID}, got {value!r}"
        )
    return int(value[0]), int(value[1])


def _int(check: dict[str, Any], key: str) -> int:
    value = check.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckError(f"check {check!r}: {key!r} must be a non-negative integer, got {value!r}")
    return value


def _describe(d: Detection) -> str:
    return f"{d.color} {d.shape} at cell {list(d.cell)}"


def noise_problem(report: DetectionReport) -> str | None:
    """Why strict checks reject the image's debris (fragments, too many specks), or None when it is clean."""
    if report.fragments:
        return f"{len(report.fragments)} stray fragment(s), e.g. {_describe(report.fragments[0])}"
    if report.speck_pixels > SPECK_BUDGET:
        return f"{report.n_specks} specks ({report.speck_pixels} px, budget {SPECK_BUDGET})"
    return None


def relation_holds_px(a: Detection, rel: str, b: Detection) -> bool:
    """Strict left/right/above/below on centroids, by more than `RELATION_MARGIN` px."""
    (ax, ay), (bx, by) = a.centroid, b.centroid
    if rel == "left of":
        return ax < bx - RELATION_MARGIN
    if rel == "right of":
        return ax > bx + RELATION_MARGIN
    if rel == "above":
        return ay < by - RELATION_MARGIN
    if rel == "below":
        return ay > by + RELATION_MARGIN
    raise CheckError(f"unknown relation {rel!r}; expected one of {RELATIONS}")


def _match_bipartite(items: list[Detection], slots: list[dict[str, Any]]) -> int:
    """Size of a maximum matching of detections to allowed slots (Kuhn's algorithm; inputs are tiny)."""

    def ok(d: Detection, slot: dict[str, Any]) -> bool:
        if not d.matches(slot.get("shape"), slot.get("color")):
            return False
        cell = slot.get("cell")
        return cell is None or tuple(cell) == d.cell

    owner: list[int | None] = [None] * len(slots)

    def augment(i: int, seen: set[int]) -> bool:
        for j, slot in enumerate(slots):
            if j in seen or not ok(items[i], slot):
                continue
            seen.add(j)
            if owner[j] is None or augment(owner[j], seen):  # type: ignore[arg-type]
                owner[j] = i
                return True
        return False

    return sum(augment(i, set()) for i in range(len(items)))


def _count(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    shape, color = _selector(check)
    n = _int(check, "n")
    op = check.get("op", "eq")
    found = sum(d.matches(shape, color) for d in report.objects)
    if op == "eq":
        holds = found == n
    elif op == "ge":
        holds = found >= n
    elif op == "le":
        holds = found <= n
    else:
        raise CheckError(f"check {check!r}: op must be 'eq', 'ge' or 'le', got {op!r}")
    what = " ".join(x for x in (color, shape) if x) or "object"
    return CheckResult(holds, f"found {found} {what}(s), wanted {op} {n}")


def _color(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    shape, color = _selector(check)
    if shape is None or color is None:
        raise CheckError(f"check {check!r}: a color check needs both 'shape' and 'color'")
    of_shape = [d for d in report.objects if d.shape == shape]
    if not of_shape:
        return CheckResult(False, f"no {shape} found")
    wrong = [d.color for d in of_shape if d.color != color]
    if wrong:
        return CheckResult(False, f"{shape}(s) coloured {', '.join(wrong)} instead of {color}")
    return CheckResult(True, f"every {shape} is {color}")


def _relation(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    a_sel, b_sel = _selector(check, "a"), _selector(check, "b")
    rel = check.get("rel")
    if rel not in RELATIONS:
        raise CheckError(f"check {check!r}: rel must be one of {RELATIONS}, got {rel!r}")
    a_list = [d for d in report.objects if d.matches(*a_sel)]
    b_list = [d for d in report.objects if d.matches(*b_sel)]
    if not a_list or not b_list:
        return CheckResult(False, f"missing an object: {len(a_list)} for a, {len(b_list)} for b")
    holds = any(a is not b and relation_holds_px(a, rel, b) for a in a_list for b in b_list)
    return CheckResult(holds, f"relation {rel!r} {'holds' if holds else 'does not hold'} on centroids")


def _exact_set(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    wanted = check.get("objects")
    if not isinstance(wanted, list):
        raise CheckError(f"check {check!r}: 'objects' must be a list of {{shape, color?, count}}")
    slots: list[dict[str, Any]] = []
    for item in wanted:
        shape, color = _selector(item)
        slots += [{"shape": shape, "color": color}] * _int(item, "count")
    if strict and (problem := noise_problem(report)):
        return CheckResult(False, problem)
    objects = report.objects
    unknown = [d for d in objects if d.shape == UNKNOWN]
    if unknown:
        return CheckResult(False, f"{len(unknown)} object(s) of no clear shape, e.g. {_describe(unknown[0])}")
    matched = _match_bipartite(objects, slots)
    holds = matched == len(objects) == len(slots)
    return CheckResult(holds, f"{len(objects)} object(s) found, {len(slots)} wanted, {matched} matched")


def _object_at(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    shape, color = _selector(check)
    cell = _cell(check, check.get("cell"))
    holds = any(d.matches(shape, color) and d.cell == cell for d in report.objects)
    here = [_describe(d) for d in report.objects if d.cell == cell]
    return CheckResult(holds, f"cell {list(cell)} holds {', '.join(here) or 'nothing'}")


def _cell_empty(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    cell = _cell(check, check.get("cell"))
    pool = report.detections if strict else tuple(report.objects)
    here = [_describe(d) for d in pool if d.cell == cell]
    return CheckResult(not here, f"cell {list(cell)} holds {', '.join(here) or 'nothing'}")


def _no_extra(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    allowed = check.get("allowed")
    if not isinstance(allowed, list):
        raise CheckError(f"check {check!r}: 'allowed' must be a list of {{shape, color?, cell?}}")
    slots = []
    for item in allowed:
        shape, color = _selector(item)
        slot: dict[str, Any] = {"shape": shape, "color": color}
        if item.get("cell") is not None:
            slot["cell"] = _cell(check, item["cell"])
        slots.append(slot)
    if strict and (problem := noise_problem(report)):
        return CheckResult(False, problem)
    extra = len(report.objects) - _match_bipartite(report.objects, slots)
    return CheckResult(extra == 0, f"{extra} object(s) not accounted for")


def _fragments(check: dict[str, Any], report: DetectionReport, strict: bool, source: Any) -> CheckResult:
    problem = noise_problem(report)
    return CheckResult(problem is not None, problem or "no stray fragments")


def _unchanged_from_source(
    check: dict[str, Any], report: DetectionReport, strict: bool, source: DetectionReport | None
) -> CheckResult:
    if source is None:
        raise CheckError(f"check {check!r} compares with the source image, but no source image was given")
    skip = {_cell(check, c) for c in check.get("except_cells", [])}

    def keyed(rep: DetectionReport) -> list[tuple[str, str, tuple[int, int]]]:
        return sorted((d.shape, d.color, d.cell) for d in rep.objects if d.cell not in skip)

    before, after = keyed(source), keyed(report)
    holds = before == after and not (strict and noise_problem(report))
    return CheckResult(holds, f"outside the edited cells: source {len(before)} object(s), image {len(after)}")


# One evaluator per check type: (check, report, strict, source report or None) -> CheckResult.
_EVALUATORS: dict[str, Callable[[dict[str, Any], DetectionReport, bool, Any], CheckResult]] = {
    "count": _count,
    "color": _color,
    "relation": _relation,
    "exact_set": _exact_set,
    "object_at": _object_at,
    "cell_empty": _cell_empty,
    "no_extra": _no_extra,
    "fragments": _fragments,
    "unchanged_from_source": _unchanged_from_source,
}


def evaluate_check(
    check: dict[str, Any],
    detections: DetectionReport | Sequence[Detection],
    strict: bool = True,
    source: DetectionReport | Sequence[Detection] | None = None,
) -> CheckResult:
    """Evaluate one `check` on detections. `strict` makes set checks fail on fragments and excess specks."""
    if not isinstance(check, dict) or "type" not in check:
        raise CheckError(f"a check must be a dict with a 'type' (one of {CHECK_TYPES}), got {check!r}")
    kind = check["type"]
    if not isinstance(kind, str) or kind not in _EVALUATORS:
        raise CheckError(f"unknown check type {kind!r}; expected one of {CHECK_TYPES}")
    source_report = None if source is None else as_report(source)
    return _EVALUATORS[kind](check, as_report(detections), strict, source_report)


# ---------------------------------------------------------------------------------------------------------------
# Rubrics from prompts


def noun_phrase(shape: str, color: str | None, n: int = 1) -> str:
    """'exactly two blue squares' style phrase pieces: ('two', 'blue squares')."""
    noun = shape if n == 1 else PLURALS[shape]
    return " ".join(x for x in (color, noun) if x)


def _count_text(o: ObjectSpec) -> str:
    return f"The image contains exactly {NUMBER_WORDS[o.count]} {noun_phrase(o.shape, o.color, o.count)}."


def exact_set_check(objects: Sequence[ObjectSpec]) -> dict[str, Any]:
    items = []
    for o in objects:
        item: dict[str, Any] = {"shape": o.shape, "count": o.count}
        if o.color:
            item["color"] = o.color
        items.append(item)
    return {"type": "exact_set", "objects": items}


def _selector_of(o: ObjectSpec) -> dict[str, Any]:
    return {"shape": o.shape, **({"color": o.color} if o.color else {})}


def rubric_for_prompt(spec: PromptSpec) -> Rubric:
    """The rubric of a GenEval-style prompt: counts, colours, relation, and "nothing else" (weights sum to 1).

    The core criteria share 0.75 of the weight and the exact-set criterion gets 0.25, so an image with the right
    objects plus debris scores 0.75, below any correct image, while partial credit still orders wrong images.
    """
    core: list[tuple[Criterion, float]] = []
    for i, o in enumerate(spec.objects):
        if spec.category == "counting":
            core.append(
                (
                    Criterion(
                        id=f"present_{i}",
                        text=f"The image contains at least one {noun_phrase(o.shape, o.color)}.",
                        category="objects",
                        check={"type": "count", **_selector_of(o), "n": 1, "op": "ge"},
                    ),
                    0.5,
                )
            )
            core.append(
                (
                    Criterion(
                        id=f"count_{i}",
                        text=_count_text(o),
                        category="counting",
                        check={"type": "count", **_selector_of(o), "n": o.count},
                    ),
                    1.0,
                )
            )
            continue
        # Other categories count the shape regardless of colour, and check colour separately, so that the right
        # shape in the wrong colour still earns the count criterion (GenEval scores colour as its own test).
        core.append(
            (
                Criterion(
                    id=f"count_{i}",
                    text=_count_text(ObjectSpec(o.shape, None, o.count)),
                    category="objects",
                    check={"type": "count", "shape": o.shape, "n": o.count},
                ),
                1.0,
            )
        )
        if o.color:
            core.append(
                (
                    Criterion(
                        id=f"color_{i}",
                        text=f"The {o.shape} is {o.color}.",
                        category="color",
                        check={"type": "color", "shape": o.shape, "color": o.color},
                    ),
                    1.0,
                )
            )
    if spec.relation:
        a, b = spec.objects[0], spec.objects[1]
        rel_text = "to the " + spec.relation if spec.relation in ("left of", "right of") else spec.relation
        core.append(
            (
                Criterion(
                    id="relation",
                    text=f"The {noun_phrase(a.shape, a.color)} is {rel_text} the {noun_phrase(b.shape, b.color)}.",
                    category="position",
                    check={
                        "type": "relation",
                        "a": _selector_of(a),
                        "rel": spec.relation,
                        "b": _selector_of(b),
                    },
                ),
                1.0,
            )
        )
    total = sum(w for _, w in core)
    criteria = [
        Criterion(id=c.id, text=c.text, weight=round(0.75 * w / total, 6), category=c.category, check=c.check)
        for c, w in core
    ]
    criteria.append(
        Criterion(
            id="exact",
            text="There are no other objects, shapes or stray fragments of colour in the image.",
            weight=0.25,
            category="exactness",
            check=exact_set_check(spec.objects),
        )
    )
    return Rubric(prompt=spec.text, criteria=criteria, task="t2i")


def geneval_correct(
    spec: PromptSpec, detections: DetectionReport | Sequence[Detection] | Image.Image
) -> bool:
    """GenEval's strict per-prompt verdict: exactly the requested objects, colours and relation, nothing else.

    Pass the image or `analyze(image)` rather than `detect(image)` to also apply the speck budget.
    """
    report = analyze(detections) if isinstance(detections, Image.Image) else as_report(detections)
    return all(
        evaluate_check(c.check, report, strict=True).holds
        for c in rubric_for_prompt(spec).criteria
        if c.check
    )


__all__ = [
    "CHECK_TYPES",
    "RELATION_MARGIN",
    "SPECK_BUDGET",
    "CheckError",
    "CheckResult",
    "as_report",
    "evaluate_check",
    "exact_set_check",
    "geneval_correct",
    "noise_problem",
    "noun_phrase",
    "relation_holds_px",
    "rubric_for_prompt",
]
