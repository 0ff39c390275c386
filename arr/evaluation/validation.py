"""Validate a judge against human labels, criterion by criterion: accuracy, Cohen's kappa and Krippendorff's alpha,
each with a bootstrap interval.

    from arr import RubricJudge, load_backend
    from arr.evaluation.validation import validate_judge
    report = validate_judge(RubricJudge(load_backend("pixel")), labelled)   # labelled: [LabelledCriterion, ...]
    report["accuracy"], report["cohen_kappa"], report["criteria"]["count_0"]

Accuracy alone flatters a judge on skewed labels (saying "yes" to everything is 90% accurate when 90% of labels are
"yes"); kappa and alpha correct for chance agreement. Each labelled item is asked as one criterion question (with the
judge's cache), and both the label and the judge's answer become one of "yes", "no", a level, or "unknown":
- `accuracy`: the fraction of items answered exactly as labelled; a failed question counts as wrong.
- `cohen_kappa`: Cohen's kappa between answers and labels, over the items the judge answered ("unknown" is an answer).
- `krippendorff_alpha`: Krippendorff's alpha of the same pairs, "ordinal" for a group of ordinal criteria of one
  scale (an "unknown" there is a missing value), "nominal" otherwise.
Intervals resample the items (`arr.stats.bootstrap_ci`); a statistic undefined on the data (one category only) is
None. Items are grouped per criterion by `group_by`: the criterion id (default; shapes rubrics reuse ids such as
"count_0" and "exact" across prompts), its category, or its text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from arr.agreement import cohen_kappa, krippendorff_alpha
from arr.backends.base import JudgeBackend
from arr.backends.chat import CANNOT_ASSESS_ANSWER
from arr.backends.fewshot import LabelledCriterion
from arr.judge import RubricJudge, ScoreItem, ScoreJudgment
from arr.rubrics import Rubric
from arr.stats import bootstrap_items

__all__ = ["GROUP_BY", "validate_judge"]

GROUP_BY: tuple[str, ...] = ("id", "category", "text")


def _answer(item: LabelledCriterion, judgment: ScoreJudgment) -> str | int | None:
    """The judge's answer in the label's terms: "yes" / "no" / a level / "unknown", or None for a failure."""
    c = item.criterion
    if c.id in judgment.cannot_assess:
        return CANNOT_ASSESS_ANSWER
    value = judgment.criteria.get(c.id)
    if value is None:
        return None
    snapped = c.snap(value)
    if c.levels is None:
        return "yes" if snapped == 1.0 else "no"
    return 1 + round(snapped * (c.levels - 1))


def _interval(n: int, stat: Callable[[np.ndarray], float | None], resamples: int, alpha: float, seed: int):
    ci = bootstrap_items(n, stat, resamples, alpha, seed)
    return None if ci is None else {"value": ci.value, "low": ci.low, "high": ci.high}


def _summary(
    items: Sequence[LabelledCriterion],
    answers: Sequence[str | int | None],
    resamples: int,
    alpha: float,
    seed: int,
) -> dict[str, Any]:
    labels = [it.answer for it in items]
    answered = [i for i, a in enumerate(answers) if a is not None]
    correct = np.array([float(a == lab) for a, lab in zip(answers, labels, strict=True)])
    scales = {it.criterion.levels for it in items}
    level = "ordinal" if len(scales) == 1 and None not in scales else "nominal"

    def kappa(idx: np.ndarray) -> float | None:
        return cohen_kappa([labels[answered[i]] for i in idx], [answers[answered[i]] for i in idx])

    def alpha_of(idx: np.ndarray) -> float | None:
        pairs = [(labels[answered[i]], answers[answered[i]]) for i in idx]
        if level == "ordinal":  # "unknown" has no place on the scale: a missing value
            pairs = [tuple(None if v == CANNOT_ASSESS_ANSWER else v for v in p) for p in pairs]
        return krippendorff_alpha(pairs, level)

    return {
        "n": len(items),
        "answered": len(answered),
        "failures": len(items) - len(answered),
        "judge_unknown": sum(a == CANNOT_ASSESS_ANSWER for a in answers),
        "label_unknown": sum(lab == CANNOT_ASSESS_ANSWER for lab in labels),
        "accuracy": _interval(len(items), lambda idx: float(correct[idx].mean()), resamples, alpha, seed),
        "cohen_kappa": _interval(len(answered), kappa, resamples, alpha, seed),
        "krippendorff_alpha": _interval(len(answered), alpha_of, resamples, alpha, seed),
        "alpha_level": level,
        "confusion": {
            f"{lab} -> {'failed' if a is None else a}": n
            for (lab, a), n in sorted(Counter(zip(labels, answers, strict=True)).items(), key=str)
        },
    }


def validate_judge(
    judge: RubricJudge | JudgeBackend,
    labelled: Sequence[LabelledCriterion],
    *,
    group_by: str = "id",
    resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """How well `judge` (a `RubricJudge`, or a backend to wrap in one) recovers `labelled`: overall and per criterion
    (see the module docstring). Returns a JSON-serialisable dict; `items` lists every item's label and answer."""
    if group_by not in GROUP_BY:
        raise ValueError(f"validate_judge: group_by must be one of {list(GROUP_BY)}, got {group_by!r}")
    bad = [type(x).__name__ for x in labelled if not isinstance(x, LabelledCriterion)]
    if bad:
        raise TypeError(f"validate_judge takes LabelledCriterion items, got {bad[0]}")
    if not labelled:
        raise ValueError("validate_judge: no labelled items")
    judge = judge if isinstance(judge, RubricJudge) else RubricJudge(judge)
    answers: list[str | int | None] = []
    for lo in range(0, len(labelled), batch_size):
        chunk = labelled[lo : lo + batch_size]
        items = [
            ScoreItem(
                it.prompt,
                it.image,
                Rubric(it.prompt, [it.criterion], task="edit" if it.source is not None else "t2i"),
                it.source,
            )
            for it in chunk
        ]
        answers += [_answer(it, j) for it, j in zip(chunk, judge.score_many(items), strict=True)]
    key = {"id": lambda c: c.id, "category": lambda c: c.category or "(none)", "text": lambda c: c.text}[
        group_by
    ]
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(labelled):
        groups.setdefault(key(it.criterion), []).append(i)
    report = _summary(labelled, answers, resamples, alpha, seed)
    report["criteria"] = {
        name: _summary([labelled[i] for i in idx], [answers[i] for i in idx], resamples, alpha, seed)
        for name, idx in sorted(groups.items())
    }
    report["group_by"] = group_by
    report["judge"] = {"backend": judge.backend.name, "fingerprint": judge.backend.fingerprint()}
    report["cost"] = judge.stats.to_dict()
    report["items"] = [
        {"criterion": it.criterion.id, "prompt": it.prompt, "label": it.answer, "answer": a}
        for it, a in zip(labelled, answers, strict=True)
    ]
    return report
