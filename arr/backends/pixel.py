"""The pixel judge: a weight-free, exact, deterministic judge for the built-in shapes world.

It reads objects back from the image (arr/shapes/detect.py) and evaluates each criterion's machine-checkable
`check` (arr/shapes/rubrics.py); ordinal criteria (`levels`) use a "graded" check, rated by how many of its
sub-checks hold. Criteria without a check cannot be judged here: their verdict is "cannot assess" (the
judge's policy scores it; the default leaves it out) instead of a guess, and a malformed check is an error. Scores
follow the rubric's weights; editing rubrics combine instruction following and preservation as
sqrt(instruction * preservation), like GEdit-Bench's overall score.

    from arr import load_backend
    judge = load_backend("pixel")              # or PixelBackend(strict=True)
    judge.score_image(image, rubric)           # 0..1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from arr.backends.base import CriterionQuery, CriterionVerdict, PairQuery, PairVerdict
from arr.rubrics import PRESERVATION, Criterion, Rubric
from arr.shapes.detect import COLOR_CLASSES, DETECTOR_VERSION, UNKNOWN, DetectionReport, analyze
from arr.shapes.rubrics import CheckError, evaluate_check
from arr.shapes.scene import GRID, IMAGE_SIZE, SHAPES

if TYPE_CHECKING:
    from arr.shapes.rubric_writer import ShapesRubricWriter

_FEATURE_SHAPES: tuple[str, ...] = (*SHAPES, UNKNOWN)


def _feature_names() -> list[str]:
    names = []
    for r in range(GRID):
        for c in range(GRID):
            names += [f"cell{r}{c}/shape={s}" for s in _FEATURE_SHAPES]
            names += [f"cell{r}{c}/color={k}" for k in COLOR_CLASSES]
    names += [f"count/{s}/{k}" for s in _FEATURE_SHAPES for k in COLOR_CLASSES]
    names += ["fragments", "speck_pixels", "objects", "foreground_fraction"]
    return names


FEATURE_NAMES: tuple[str, ...] = tuple(_feature_names())


class PixelBackend:
    """Judge backend for the shapes world. `strict=True` fails set checks on stray fragments and excess specks."""

    name = "pixel"

    def __init__(self, strict: bool = True) -> None:
        self.strict = bool(strict)

    def fingerprint(self) -> str:
        return f"pixel/v{DETECTOR_VERSION}/{'strict' if self.strict else 'lenient'}"

    def rubric_writer(self) -> ShapesRubricWriter:
        """The shapes world's exact rubric writer, used by `RubricGenerator` with this backend."""
        from arr.shapes.rubric_writer import ShapesRubricWriter

        return ShapesRubricWriter()

    # -- single-image scoring ---------------------------------------------------------------------------------

    def _check(
        self, criterion: Criterion, report: DetectionReport, source: DetectionReport | None
    ) -> tuple[float | None, str]:
        """The criterion's credit in [0, 1] (1.0 / 0.0 for binary items) and why, or None and the error."""
        if criterion.check is None:
            return None, "the pixel judge needs a machine-checkable 'check' on every criterion it judges"
        if criterion.levels is not None:
            return self._graded(criterion, report, source)
        try:
            result = evaluate_check(criterion.check, report, strict=self.strict, source=source)
        except CheckError as e:
            return None, f"criterion {criterion.id!r}: {e}"
        return (1.0 if result.holds else 0.0), result.reason

    def _graded(
        self, criterion: Criterion, report: DetectionReport, source: DetectionReport | None
    ) -> tuple[float | None, str]:
        """An ordinal item: {"type": "graded", "checks": [...]} rates 1 + (levels - 1) * (fraction that hold).

        The rating is rounded to a whole level, as a VLM asked for "1-5" would answer, then turned into credit.
        """
        check = criterion.check or {}
        subs = check.get("checks")
        if check.get("type") != "graded" or not isinstance(subs, list) or not subs:
            return None, (
                f"criterion {criterion.id!r} has levels={criterion.levels}: the pixel judge needs a check "
                f'{{"type": "graded", "checks": [check, ...]}}, got {check!r}'
            )
        held = 0
        for sub in subs:
            try:
                held += evaluate_check(sub, report, strict=self.strict, source=source).holds
            except CheckError as e:
                return None, f"criterion {criterion.id!r}: {e}"
        levels = criterion.levels or 2
        level = 1 + round((levels - 1) * held / len(subs))
        return criterion.credit(level), f"level {level}/{levels}: {held} of {len(subs)} graded checks hold"

    def score_details(
        self, image: Image.Image, rubric: Rubric, source: Image.Image | None = None
    ) -> dict[str, Any]:
        """Per-criterion results, detections and the score (plus instruction/preservation for editing)."""
        report = analyze(image)
        source_report = analyze(source) if source is not None else None
        return self._details(report, rubric, source_report)

    def _details(
        self, report: DetectionReport, rubric: Rubric, source: DetectionReport | None
    ) -> dict[str, Any]:
        per_criterion = []
        judged: list[tuple[Criterion, float]] = []
        for c in rubric.criteria:
            credit, reason = self._check(c, report, source)
            entry: dict[str, Any] = {
                "id": c.id,
                "holds": None if credit is None else credit == 1.0,
                "weight": c.weight,
                "reason": reason,
            }
            if c.levels is not None:
                entry["credit"] = credit
            per_criterion.append(entry)
            if credit is not None:
                judged.append((c, credit))
        if not judged:
            raise CheckError(
                f"rubric for {rubric.prompt[:60]!r} has no criterion the pixel judge can evaluate: "
                "add machine-checkable 'check' dicts (see arr/shapes/rubrics.py) or use a VLM backend"
            )
        details: dict[str, Any] = {
            "criteria": per_criterion,
            "detections": [asdict(d) for d in report.detections],
            "n_specks": report.n_specks,
            "speck_pixels": report.speck_pixels,
        }
        probs = {c.id: float(credit) for c, credit in judged}
        details["score"] = rubric.score(probs)
        if details["score"] is None:
            raise CheckError(
                f"rubric for {rubric.prompt[:60]!r}: every criterion the pixel judge can evaluate has weight 0, "
                "so there is no score; give some criterion a non-zero weight"
            )
        if rubric.task == "edit":
            instruction = [c for c, _ in judged if c.category != PRESERVATION]
            preservation = [c for c, _ in judged if c.category == PRESERVATION]
            details["instruction"] = (
                Rubric(rubric.prompt, instruction, task="t2i").score(probs) if instruction else 0.0
            )
            details["preservation"] = (
                Rubric(rubric.prompt, preservation, task="t2i").score(probs) if preservation else None
            )
        return details

    def score_image(self, image: Image.Image, rubric: Rubric, source: Image.Image | None = None) -> float:
        """Pointwise score in [0, 1]: weighted fraction of criteria that hold (sqrt(I*P) for editing rubrics)."""
        return float(self.score_details(image, rubric, source)["score"])

    # -- JudgeBackend protocol ------------------------------------------------------------------------------------

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]:
        reports: dict[int, DetectionReport] = {}  # one detection pass per distinct image object in the batch

        def read(image: Image.Image) -> DetectionReport:
            key = id(image)
            if key not in reports:
                reports[key] = analyze(image)
            return reports[key]

        out = []
        for q in queries:
            source = read(q.source) if q.source is not None else None
            credit, reason = self._check(q.criterion, read(q.image), source)
            if credit is None and q.criterion.check is None:
                out.append(CriterionVerdict(prob_yes=None, reason=reason, raw="unknown", cannot_assess=True))
            elif credit is None:
                out.append(CriterionVerdict(prob_yes=None, reason=reason, error=reason))
            elif q.criterion.levels is None:
                out.append(CriterionVerdict(prob_yes=credit, reason=reason, raw=str(credit == 1.0).lower()))
            else:
                out.append(CriterionVerdict(prob_yes=credit, reason=reason, raw=reason.split(":")[0]))
        return out

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]:
        # A group of G images is asked about in G(G - 1) ordered pairs, so each image is read and scored once per
        # batch, not once per question (6x fewer detection passes for the demo's groups of 4, both orders).
        reports: dict[int, DetectionReport] = {}
        details: dict[tuple[int, int, int], dict[str, Any] | CheckError] = {}

        def read(image: Image.Image) -> DetectionReport:
            if id(image) not in reports:
                reports[id(image)] = analyze(image)
            return reports[id(image)]

        def scored(image: Image.Image, q: PairQuery) -> dict[str, Any]:
            key = (id(image), id(q.rubric), id(q.source))
            if key not in details:
                try:
                    source = read(q.source) if q.source is not None else None
                    details[key] = self._details(read(image), q.rubric, source)
                except CheckError as e:
                    details[key] = e
            found = details[key]
            if isinstance(found, CheckError):
                raise found
            return found

        out = []
        for q in queries:
            try:
                d1, d2 = scored(q.images[0], q), scored(q.images[1], q)
            except CheckError as e:
                out.append(PairVerdict(prob_first=None, error=str(e)))
                continue
            s1, s2 = d1["score"], d2["score"]
            prob = 1.0 if s1 > s2 else 0.0 if s2 > s1 else 0.5
            failed1 = [c["id"] for c in d1["criteria"] if c["holds"] is False]
            failed2 = [c["id"] for c in d2["criteria"] if c["holds"] is False]
            reason = (
                f"Image 1 scores {s1:.3f} (failed: {', '.join(failed1) or 'none'}); "
                f"Image 2 scores {s2:.3f} (failed: {', '.join(failed2) or 'none'})"
            )
            rank = [1, 2] if prob >= 0.5 else [2, 1]
            out.append(PairVerdict(prob_first=prob, reason=reason, raw=f'{{"rank": {rank}}}'))
        return out

    # -- features for the alignment diagnostic --------------------------------------------------------------------

    def features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """[N, len(FEATURE_NAMES)] float32: per-cell shape/colour counts, global counts, debris, coverage."""
        n_shapes, n_colors = len(_FEATURE_SHAPES), len(COLOR_CLASSES)
        per_cell = n_shapes + n_colors
        out = np.zeros((len(images), len(FEATURE_NAMES)), dtype=np.float32)
        counts_at = GRID * GRID * per_cell
        tail = counts_at + n_shapes * n_colors
        for i, image in enumerate(images):
            report = analyze(image)
            for d in report.objects:
                s, k = _FEATURE_SHAPES.index(d.shape), COLOR_CLASSES.index(d.color)
                base = (d.cell[0] * GRID + d.cell[1]) * per_cell
                out[i, base + s] += 1
                out[i, base + n_shapes + k] += 1
                out[i, counts_at + s * n_colors + k] += 1
            out[i, tail] = len(report.fragments)
            out[i, tail + 1] = report.speck_pixels
            out[i, tail + 2] = len(report.objects)
            out[i, tail + 3] = report.foreground_pixels / (IMAGE_SIZE * IMAGE_SIZE)
        return out


__all__ = ["FEATURE_NAMES", "PRESERVATION", "PixelBackend"]
