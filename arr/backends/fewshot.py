"""Few-shot calibration for chat judges: worked examples shown to the VLM before every question.

A judge that has seen what "yes, the square is red" and "no, that is a fragment, not a triangle" look like on a
user's own images is better calibrated than one reading the criterion cold (AutoRubric and most LLM-as-judge
setups offer this). `FewShotBackend` wraps any `ChatBackend` (hf, openai): each example becomes a user turn, asked
exactly as real questions are (same templates, images included), followed by an assistant turn with the answer, so
the model sees the answer format in use too. The examples are part of the fingerprint, so cached judgments made
without them (or with others) are never served.

    from arr.backends.fewshot import CriterionExample, FewShotBackend, PairExample
    judge = RubricJudge(FewShotBackend(load_backend("openai", model=...), [
        CriterionExample(red_square, "The square is red.", holds=True, reason="the square is red"),
        PairExample(good, bad, better=1, prompt="a red square", reason="Image 2 has an extra circle"),
        RatingExample(small_square, "The square fills the image.", level=2, levels=5, reason="it is tiny"),
    ]))

Yes/no questions are shown the `CriterionExample`s, ordinal questions (`Criterion.levels`) the `RatingExample`s,
so each example is asked and answered in the format of the question that follows it.

From a labelled set (`LabelledCriterion`: an image, a criterion and its human label), `select_examples` picks the
examples automatically, balanced across labels (as many "no" as "yes", every level represented), so that the judge
is not nudged toward the majority answer; the same labelled set validates the judge
(`arr.evaluation.validation.validate_judge`), on items the examples do not use.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from arr.backends.base import CriterionQuery, CriterionVerdict, PairQuery, PairVerdict
from arr.backends.chat import (
    CANNOT_ASSESS_ANSWER,
    ChatBackend,
    ChatRequest,
    criterion_verdict,
    pair_verdict,
    render_criterion,
    render_pair,
)
from arr.rubrics import Criterion, Rubric

__all__ = [
    "CriterionExample",
    "FewShotBackend",
    "LabelledCriterion",
    "PairExample",
    "RatingExample",
    "select_examples",
]


@dataclass(frozen=True)
class CriterionExample:
    """A per-criterion example: does `criterion` hold for `image` (generated for `prompt`)? `holds=None` shows
    the cannot-assess answer ("unknown"): the image cannot show it."""

    image: Image.Image
    criterion: str
    holds: bool | None
    reason: str = ""
    prompt: str = ""


@dataclass(frozen=True)
class RatingExample:
    """An ordinal example: `criterion` is satisfied at `level` on a 1..`levels` scale for `image`; `level=None`
    shows the cannot-assess answer ("unknown")."""

    image: Image.Image
    criterion: str
    level: int | None
    levels: int
    reason: str = ""
    prompt: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 2:
            raise ValueError(f"RatingExample.levels must be an integer >= 2, got {self.levels!r}")
        if self.level is not None and (
            isinstance(self.level, bool)
            or not isinstance(self.level, int)
            or not 1 <= self.level <= self.levels
        ):
            raise ValueError(
                f"RatingExample.level must be an integer in 1..{self.levels} or None (unknown), got {self.level!r}"
            )


@dataclass(frozen=True)
class PairExample:
    """A pairwise example: `better` is 1 (image_1) or 2 (image_2) for `prompt` under `criteria`."""

    image_1: Image.Image
    image_2: Image.Image
    better: int
    reason: str = ""
    prompt: str = ""
    criteria: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.better not in (1, 2):
            raise ValueError(f"PairExample.better must be 1 or 2 (the better image), got {self.better!r}")


def _digest(image: Image.Image) -> str:
    from arr.cache import image_digest

    return image_digest(image)


def _turns(user: dict[str, Any], answer: str) -> list[dict[str, Any]]:
    return [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]


class FewShotBackend:
    """A `JudgeBackend` that asks `inner` (a `ChatBackend`) with worked examples before each question."""

    def __init__(
        self, inner: ChatBackend, examples: Sequence[CriterionExample | PairExample | RatingExample]
    ) -> None:
        if not isinstance(inner, ChatBackend):
            raise TypeError(
                f"FewShotBackend wraps a chat judge (hf, openai), got {type(inner).__name__}: "
                "other backends have no prompt to put examples in"
            )
        kinds = (CriterionExample, PairExample, RatingExample)
        bad = [type(e).__name__ for e in examples if not isinstance(e, kinds)]
        if bad:
            raise TypeError(
                f"FewShotBackend examples must be CriterionExample, PairExample or RatingExample, got {bad[0]}"
            )
        self.inner = inner
        self.name = f"{inner.name}+fewshot"
        self.criterion_examples = [e for e in examples if isinstance(e, CriterionExample)]
        self.pair_examples = [e for e in examples if isinstance(e, PairExample)]
        self.rating_examples = [e for e in examples if isinstance(e, RatingExample)]
        self._criterion_turns = [t for e in self.criterion_examples for t in self._criterion_turn(e)]
        self._rating_turns = [t for e in self.rating_examples for t in self._rating_turn(e)]
        self._pair_turns = [t for e in self.pair_examples for t in self._pair_turn(e)]

    def fingerprint(self) -> str:
        parts = [
            [e.criterion, e.holds, e.reason, e.prompt, _digest(e.image)] for e in self.criterion_examples
        ] + [
            [e.better, e.reason, e.prompt, list(e.criteria), _digest(e.image_1), _digest(e.image_2)]
            for e in self.pair_examples
        ]
        # Appended only when present, so fingerprints (and caches) made before rating examples existed still match.
        parts += [
            ["rating", e.criterion, e.level, e.levels, e.reason, e.prompt, _digest(e.image)]
            for e in self.rating_examples
        ]
        digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
        return f"{self.inner.fingerprint()}|fewshot={digest}"

    @staticmethod
    def _criterion_turn(e: CriterionExample) -> list[dict[str, Any]]:
        criterion = Criterion("example", e.criterion)
        request = render_criterion(
            CriterionQuery(e.prompt, e.image, Rubric(e.prompt, [criterion]), criterion)
        )
        word = CANNOT_ASSESS_ANSWER if e.holds is None else "yes" if e.holds else "no"
        answer = word + (f": {e.reason}" if e.reason else "")
        return _turns(request.messages[-1], answer)

    @staticmethod
    def _rating_turn(e: RatingExample) -> list[dict[str, Any]]:
        criterion = Criterion("example", e.criterion, levels=e.levels)
        request = render_criterion(
            CriterionQuery(e.prompt, e.image, Rubric(e.prompt, [criterion]), criterion)
        )
        answer = (CANNOT_ASSESS_ANSWER if e.level is None else str(e.level)) + (
            f": {e.reason}" if e.reason else ""
        )
        return _turns(request.messages[-1], answer)

    @staticmethod
    def _pair_turn(e: PairExample) -> list[dict[str, Any]]:
        criteria = [Criterion(f"c{i + 1}", text) for i, text in enumerate(e.criteria)]
        request = render_pair(PairQuery(e.prompt, (e.image_1, e.image_2), Rubric(e.prompt, criteria)))
        answer = json.dumps({"rank": [1, 2] if e.better == 1 else [2, 1], "reason": e.reason})
        return _turns(request.messages[-1], answer)

    @staticmethod
    def _with(request: ChatRequest, turns: list[dict[str, Any]]) -> ChatRequest:
        # The system prompt stays first and the real question last; the examples go between.
        messages = [*request.messages[:-1], *turns, request.messages[-1]]
        return ChatRequest(
            request.kind,
            messages,
            request.choices,
            request.answer_prefix,
            request.max_new_tokens,
            request.levels,
        )

    def render_pair(self, q: PairQuery) -> ChatRequest:
        return self._with(render_pair(q), self._pair_turns)

    def render_criterion(self, q: CriterionQuery) -> ChatRequest:
        turns = self._criterion_turns if q.criterion.levels is None else self._rating_turns
        return self._with(render_criterion(q), turns)

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]:
        requests = [self.render_pair(q) for q in queries]
        results = self.inner._ask(requests)
        return [pair_verdict(r, req.choices) for r, req in zip(results, requests, strict=True)]

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]:
        requests = [self.render_criterion(q) for q in queries]
        results = self.inner._ask(requests)
        return [
            criterion_verdict(r, req.choices, req.levels) for r, req in zip(results, requests, strict=True)
        ]


@dataclass(frozen=True)
class LabelledCriterion:
    """A human label for one criterion on one image: `label` is True / False for a yes/no criterion, a level
    1..levels for an ordinal one, or None where the image cannot show it (the cannot-assess answer).

    `criterion` is the rubric item itself (its `check` lets the pixel judge answer it); `source` is the source image
    of an edit.
    """

    image: Image.Image
    criterion: Criterion
    label: bool | int | None
    prompt: str = ""
    reason: str = ""
    source: Image.Image | None = None

    def __post_init__(self) -> None:
        levels = self.criterion.levels
        if levels is None and self.label is not None and not isinstance(self.label, bool):
            raise ValueError(
                f"label of yes/no criterion {self.criterion.id!r} must be True, False or None, got {self.label!r}"
            )
        if (
            levels is not None
            and self.label is not None
            and (
                isinstance(self.label, bool)
                or not isinstance(self.label, int)
                or not 1 <= self.label <= levels
            )
        ):
            raise ValueError(
                f"label of criterion {self.criterion.id!r} (levels={levels}) must be a level in 1..{levels} or "
                f"None, got {self.label!r}"
            )

    @property
    def answer(self) -> str | int:
        """The label as an answer: "yes", "no", a level, or "unknown"."""
        if self.label is None:
            return CANNOT_ASSESS_ANSWER
        if self.criterion.levels is None:
            return "yes" if self.label else "no"
        return int(self.label)

    def example(self) -> CriterionExample | RatingExample:
        """This labelled item as a worked example for `FewShotBackend`."""
        c, label = self.criterion, self.label
        if c.levels is None:
            return CriterionExample(
                self.image, c.text, None if label is None else bool(label), self.reason, self.prompt
            )
        level = None if label is None else int(label)
        return RatingExample(self.image, c.text, level, c.levels, self.reason, self.prompt)


def _balanced(items: list[LabelledCriterion], k: int, rng: random.Random) -> list[LabelledCriterion]:
    """`k` items spread evenly over the label classes (the remainder to the first classes), then filled up from the
    rest when a class runs short; classes and items are in a seeded random order."""
    classes: dict[str, list[LabelledCriterion]] = {}
    for item in items:
        classes.setdefault(f"{item.criterion.levels}:{item.answer}", []).append(item)
    keys = sorted(classes)
    rng.shuffle(keys)
    for key in keys:
        rng.shuffle(classes[key])
    share, extra = divmod(k, len(keys))
    picked: list[LabelledCriterion] = []
    rest: list[LabelledCriterion] = []
    for i, key in enumerate(keys):
        quota = share + (i < extra)
        picked += classes[key][:quota]
        rest += classes[key][quota:]
    rng.shuffle(rest)
    return picked + rest[: k - len(picked)]


def select_examples(
    labelled: Sequence[LabelledCriterion], k: int = 4, seed: int = 0
) -> list[CriterionExample | RatingExample]:
    """Up to `k` yes/no and up to `k` rating examples from a labelled set, balanced across labels, seeded.

    Each kind of question sees only its own kind of example (`FewShotBackend`), so each kind gets its own `k`. With
    labels 90% "yes", k=4 still shows two "no" examples: a judge shown the base rate learns to say "yes".
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"select_examples: k must be a positive integer, got {k!r}")
    bad = [type(x).__name__ for x in labelled if not isinstance(x, LabelledCriterion)]
    if bad:
        raise TypeError(f"select_examples takes LabelledCriterion items, got {bad[0]}")
    rng = random.Random(seed)
    out: list[CriterionExample | RatingExample] = []
    for ordinal in (False, True):
        kind = [x for x in labelled if (x.criterion.levels is not None) == ordinal]
        if kind:
            out += [x.example() for x in _balanced(kind, k, rng)]
    return out
