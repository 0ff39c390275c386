"""The rubric data model: what a judge is asked to check, and how VLM answers become rubrics.

A `Rubric` holds the prompt it was written for, a list of binary `Criterion` items and, optionally, a guide of
"Theme + Tips" categories (the ARR rubric guide, used as the judge's system prompt). Criteria carry natural-language
text for VLM judges and an optional machine-checkable `check` (a small JSON dict) for the pixel judge.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arr.rubrics.parse import MAX_INPUT_BYTES, RubricParseError, parse_rubric_data, rubric_data_from_obj
from arr.rubrics.scoring import cannot_assess_value, check_na_policy, weighted_score

PRESERVATION = "preservation"  # criterion category scored as preservation in editing rubrics


@dataclass
class Criterion:
    """One rubric item ("the image shows exactly two blue squares"): binary, or ordinal with `levels`.

    `weight` may be negative for penalties; `check` is an optional machine-checkable form used by the pixel judge.
    `levels` (None: binary yes/no) makes the item ordinal, rated 1..levels (e.g. 5); a judge reports it as the
    credit (level - 1) / (levels - 1) in [0, 1], so `Rubric.score` weighs binary and ordinal items alike.
    """

    id: str
    text: str
    weight: float = 1.0
    category: str | None = None
    check: dict[str, Any] | None = None
    levels: int | None = None

    def __post_init__(self) -> None:
        if self.levels is not None and (
            isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2
        ):
            raise RubricParseError(
                f"criterion {self.id!r}: levels must be an integer >= 2 (or absent for yes/no), got {self.levels!r}"
            )

    def credit(self, level: float) -> float:
        """The [0, 1] credit of an ordinal rating 1..levels (binary items: 1 -> 1.0, 0 -> 0.0 as given)."""
        if self.levels is None:
            return float(level)
        if not 1 <= level <= self.levels:
            raise ValueError(f"criterion {self.id!r}: level must be in 1..{self.levels}, got {level}")
        return (level - 1) / (self.levels - 1)

    def worst(self, values: Iterable[float]) -> float:
        """The worst of `values` for this criterion's sign: the lowest, or for a penalty (negative weight, where
        holding is bad) the highest. Sceptical ensembles and tie-breaks use it, so that doubt never hides a
        penalty."""
        values = list(values)
        return max(values) if self.weight < 0 else min(values)

    def snap(self, value: float) -> float:
        """`value` moved to the nearest answer a judge can give: 0 or 1 (yes/no), or a level's credit; exactly
        halfway between two goes to the worse one for this criterion's sign (see `worst`)."""
        steps = 1 if self.levels is None else self.levels - 1
        x = min(1.0, max(0.0, float(value))) * steps
        nearest = round(x)
        if math.isclose(x, nearest, abs_tol=1e-9):
            return nearest / steps
        low = math.floor(x)
        if math.isclose(x - low, 0.5, abs_tol=1e-9):
            return self.worst((low / steps, (low + 1) / steps))
        return nearest / steps

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class GuideCategory:
    """One "Theme + Tips" category of an ARR rubric guide."""

    theme: str
    tips: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"theme": self.theme, "tips": list(self.tips)}


@dataclass
class Rubric:
    """The criteria a judge checks for one prompt (or one editing instruction)."""

    prompt: str
    criteria: list[Criterion]
    guide: list[GuideCategory] = field(default_factory=list)
    task: str = "t2i"  # "t2i" (text-to-image) or "edit" (the prompt is an editing instruction)

    def __post_init__(self) -> None:
        if self.task not in ("t2i", "edit"):
            raise RubricParseError(f"rubric task must be 't2i' or 'edit', got {self.task!r}")
        seen: set[str] = set()
        for c in self.criteria:
            if c.id in seen:
                raise RubricParseError(
                    f"duplicate criterion id {c.id!r} in rubric for prompt {self.prompt[:60]!r}"
                )
            seen.add(c.id)

    @property
    def total_weight(self) -> float:
        return sum(c.weight for c in self.criteria if c.weight > 0)

    def score(
        self,
        probs: Mapping[str, float],
        cannot_assess: Collection[str] = (),
        na_policy: str = "skip",
        partial_credit: float = 0.5,
        normalize: bool = True,
    ) -> float | None:
        """The rubric score in [0, 1] from per-criterion values, or None when nothing could be scored.

        `probs` maps criterion ids to P(holds) or a rating's credit; ids in `cannot_assess` are criteria the judge
        could not assess, scored by `na_policy` ("skip", "zero", "partial" with `partial_credit`, "fail"); criteria
        in neither are left out. Positive weights earn and penalties subtract, normalised by the positive weight; a
        penalty-only rubric scores 1 + sum(w * v) / |sum of penalties| (the formula: `arr.rubrics.scoring`).
        `normalize=False` gives the raw sum(w * v) instead. Editing rubrics combine instruction following and
        preservation (criteria of category "preservation") as sqrt(instruction * preservation), like
        GEdit-Bench's overall score, so neither can buy the other.
        """
        check_na_policy(na_policy, partial_credit)
        instruction: list[tuple[float, float]] = []
        preservation: list[tuple[float, float]] = []
        for c in self.criteria:
            if c.id in probs:
                value: float | None = float(probs[c.id])
            elif c.id in cannot_assess:
                value = cannot_assess_value(c.weight, na_policy, partial_credit)
            else:
                continue
            if value is not None:
                part = preservation if self.task == "edit" and c.category == PRESERVATION else instruction
                part.append((c.weight, value))
        if not normalize:
            return weighted_score(instruction + preservation, normalize=False)
        kept = weighted_score(preservation)
        if kept is None:
            return weighted_score(instruction)
        # Preservation alone is no edit: an instruction part with nothing scored earns 0.
        return math.sqrt((weighted_score(instruction) or 0.0) * kept)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prompt": self.prompt,
            "task": self.task,
            "criteria": [c.to_dict() for c in self.criteria],
        }
        if self.guide:
            data["guide"] = [g.to_dict() for g in self.guide]
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, sort_keys=indent is None)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rubric:
        return rubric_from_obj(data)

    @classmethod
    def from_json(cls, text: str | bytes, prompt: str | None = None) -> Rubric:
        """Parse a rubric from JSON or from a VLM's free-form answer (repaired where possible)."""
        return parse_rubric(text, prompt=prompt)

    @classmethod
    def load(cls, path: str | Path) -> Rubric:
        """Read a rubric file. At most `MAX_INPUT_BYTES` + 1 bytes are read, so a huge file or a device that never
        ends (`/dev/zero`) is refused at once instead of being read into memory first."""
        path = Path(path)
        if path.is_dir():
            raise RubricParseError(f"rubric path {path} is a folder; give a rubric JSON file")
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_INPUT_BYTES + 1)
        except OSError as e:
            raise RubricParseError(f"cannot read rubric file {path}: {e.strerror}") from None
        if len(raw) > MAX_INPUT_BYTES:
            raise RubricParseError(
                f"rubric file {path} is over {MAX_INPUT_BYTES:,} bytes; a rubric is a small JSON file"
            )
        try:
            return cls.from_json(raw)
        except RubricParseError as e:
            raise RubricParseError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2) + "\n", encoding="utf-8")


def _build(data: dict[str, Any]) -> Rubric:
    return Rubric(
        prompt=data["prompt"],
        criteria=[Criterion(**c) for c in data["criteria"]],
        guide=[GuideCategory(theme=g["theme"], tips=list(g["tips"])) for g in data["guide"]],
        task=data["task"],
    )


def rubric_from_obj(obj: Any, prompt: str | None = None) -> Rubric:
    """A `Rubric` from decoded JSON: the canonical object or the common VLM variants (see
    `arr.rubrics.parse.rubric_data_from_obj`). `prompt`, when given, overrides the prompt in `obj`."""
    return _build(rubric_data_from_obj(obj, prompt))


def parse_rubric(text: str | bytes, prompt: str | None = None) -> Rubric:
    """A `Rubric` from a VLM answer or a rubric file, repairing what can be repaired (see
    `arr.rubrics.parse.parse_rubric_data`); raises `RubricParseError` for everything else."""
    return _build(parse_rubric_data(text, prompt))


def as_rubric(value: Any, where: str = "rubric") -> Rubric:
    """A `Rubric` from what users pass around: a Rubric, a rubric dict, or rubric JSON (text or bytes).

    Anything else is a `RubricParseError` naming `where` (e.g. "dataset row 12's rubric")."""
    if isinstance(value, Rubric):
        return value
    try:
        if isinstance(value, dict):
            return rubric_from_obj(value)
        if isinstance(value, (str, bytes)):
            return parse_rubric(value)
    except RubricParseError as e:
        raise RubricParseError(f"{where}: {e}") from None
    raise RubricParseError(
        f"{where}: expected a Rubric, a rubric dict or rubric JSON, got {type(value).__name__}"
    )
