"""The rubric scoring formula: per-criterion answers -> one score (what `Rubric.score` computes).

Every scored criterion contributes `w * v`: its weight `w` (negative for a penalty) times its value `v` in [0, 1]
(1 / 0 for yes / no, a probability, or a rating's credit (level - 1) / (levels - 1)). With `P` the total positive
weight and `N` the total penalty weight (|sum of the negative weights|) of the criteria scored:

- `P > 0`: `clamp(sum(w * v) / P, 0, 1)`: positive weights earn, penalties subtract;
- `P = 0 < N` (a penalty-only rubric, "no watermark, no artefacts"): `clamp(1 + sum(w * v) / N, 0, 1)`, 1.0 when
  no penalty applies and 0.0 when all do, so such a rubric still ranks images;
- nothing scored, or only zero weights: `None`, no score (never a made-up 0.0).

The raw (unnormalised) score is `sum(w * v)`. A criterion the judge could not assess (it answered "unknown") is
scored by the cannot-assess policy:

- `skip` (default): left out, of the sum and of `P` and `N`;
- `zero`: value 0 (earns nothing; a penalty does not apply), its weight kept in `P` or `N`;
- `partial`: value `partial_credit` for a positive weight, 0 for a penalty;
- `fail`: the worst value for the criterion's sign: 0 for a positive weight, 1 (the penalty applies) for a penalty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

NA_POLICIES: tuple[str, ...] = ("skip", "zero", "partial", "fail")

__all__ = ["NA_POLICIES", "cannot_assess_value", "check_na_policy", "weighted_score"]


def check_na_policy(policy: str, partial_credit: float = 0.5) -> None:
    """Refuse an unknown cannot-assess policy or a partial credit outside [0, 1], naming the value received."""
    if policy not in NA_POLICIES:
        raise ValueError(f"unknown cannot-assess policy {policy!r}; expected one of {list(NA_POLICIES)}")
    if isinstance(partial_credit, bool) or not (
        isinstance(partial_credit, (int, float)) and 0.0 <= partial_credit <= 1.0
    ):
        raise ValueError(f"partial_credit must be a number in [0, 1], got {partial_credit!r}")


def cannot_assess_value(weight: float, policy: str = "skip", partial_credit: float = 0.5) -> float | None:
    """The value a criterion of `weight` that could not be assessed gets under `policy` (None: `skip`, left out)."""
    check_na_policy(policy, partial_credit)
    if policy == "skip":
        return None
    if policy == "zero":
        return 0.0
    if policy == "partial":
        return float(partial_credit) if weight > 0 else 0.0
    return 1.0 if weight < 0 else 0.0  # "fail": the worst outcome for the criterion's sign


def weighted_score(terms: Iterable[tuple[float, float]], normalize: bool = True) -> float | None:
    """The score of `(weight, value)` terms (see the module docstring); None when there is nothing to score."""
    terms = list(terms)
    if not terms:
        return None
    total = math.fsum(w * v for w, v in terms)
    if not normalize:
        return total
    positive = math.fsum(w for w, _ in terms if w > 0)
    penalty = -math.fsum(w for w, _ in terms if w < 0)
    if positive > 0:
        return min(1.0, max(0.0, total / positive))
    if penalty > 0:
        return min(1.0, max(0.0, 1.0 + total / penalty))
    return None
