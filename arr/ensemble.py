"""Judge ensembles: several backends answer every question, and an aggregation by criterion kind makes one answer.

Single VLM judges are noisy and biased in their own ways; combining several (different models, prompts or
temperatures) is the cheapest way to a steadier reward. `EnsembleBackend` is itself a `JudgeBackend`, so
`RubricJudge`, the rewards, the cache and the server use it unchanged, and every criterion verdict it returns keeps
each member's own answer (`CriterionVerdict.members`), from which `RubricJudge` reports per-judge scores and
agreement.

    from arr import RubricJudge, load_backend
    from arr.ensemble import EnsembleBackend
    judge = RubricJudge(EnsembleBackend([load_backend("pixel"), other], "majority", weights=[2.0, 1.0]))

Yes/no criteria and pairs (`aggregation`; a member's vote is yes / Image 1 above 0.5, no / Image 2 below, none at
exactly 0.5):
- "mean": the weighted mean probability.
- "majority": head-count vote, one vote per member whatever its weight.
- "weighted": vote by member weight.
- "unanimous": yes only if no member votes no (and one votes yes); "any": yes if any member votes yes. On pairs
  both give a winner only when no member prefers the other image.
- "min" (sceptical): the worst answer any member gives for the criterion's sign: the lowest P(holds), or for a
  penalty (negative weight) the highest, so a defect one member sees is never waved through. Pairs give each image
  its least support, min_k p_k for Image 1 and min_k (1 - p_k) for Image 2, renormalised (no position dependence).
A criterion vote that ties goes to the worse outcome for the criterion's sign (no / the penalty applies); a tied
pair is a tie (0.5).

Ordinal criteria (`levels`; `ordinal`, by default "mean" for "mean", "min" for "min", else "median"):
- "mean" / "median": the weighted mean / median credit (the median is the ordinal counterpart of a majority vote);
- "mode": the level most (weight of) members chose, each member's credit first snapped to its nearest level;
- "min": the worst level any member gives, as above.
`snap=True` moves mean and median results to the nearest answer a judge can give (a level, or yes/no); halfway
goes to the worse one. Member weights count everywhere except in "majority", which counts heads on every kind.

Members that answered "unknown" (cannot assess) are left out of a criterion's aggregation; when no member could
assess it, the ensemble's verdict is "cannot assess" too. Members that failed are left out, up to `min_answers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from arr.backends.base import CriterionQuery, CriterionVerdict, JudgeBackend, PairQuery, PairVerdict
from arr.rubrics import Criterion

__all__ = [
    "AGGREGATIONS",
    "ORDINAL_AGGREGATIONS",
    "EnsembleBackend",
    "aggregate_criterion",
    "aggregate_pair",
]

AGGREGATIONS: tuple[str, ...] = ("mean", "majority", "weighted", "unanimous", "any", "min")
ORDINAL_AGGREGATIONS: tuple[str, ...] = ("mean", "median", "mode", "min")
_DEFAULT_ORDINAL = {"mean": "mean", "min": "min"}  # every vote-based aggregation: "median"
_YES_NO = Criterion("yes/no", "")  # what an aggregation assumes without a criterion: yes/no, positive weight


def default_ordinal(aggregation: str) -> str:
    """The ordinal aggregation that goes with a yes/no one when none is given."""
    return _DEFAULT_ORDINAL.get(aggregation, "median")


def _weights(n: int, weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} member weights for {n} answers")
    return [float(w) for w in weights]


def _mean(values: Sequence[float], weights: Sequence[float]) -> float:
    return math.fsum(v * w for v, w in zip(values, weights, strict=True)) / math.fsum(weights)


def _median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The weighted median: the value where the cumulative weight reaches half; the midpoint when it reaches half
    exactly at a boundary (so equal weights give the usual median)."""
    ranked = sorted(zip(values, weights, strict=True))
    half = math.fsum(weights) / 2
    seen = 0.0
    for i, (value, weight) in enumerate(ranked):
        seen += weight
        if math.isclose(seen, half) and i + 1 < len(ranked):
            return (value + ranked[i + 1][0]) / 2
        if seen > half:
            return value
    return ranked[-1][0]


def _votes(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """(weight voting yes / Image 1, weight voting no / Image 2); a value of exactly 0.5 abstains."""
    yes = math.fsum(w for v, w in zip(values, weights, strict=True) if v > 0.5)
    no = math.fsum(w for v, w in zip(values, weights, strict=True) if v < 0.5)
    return yes, no


def _mode(values: Sequence[float], weights: Sequence[float], criterion: Criterion) -> float:
    tally: dict[float, float] = {}
    for v, w in zip(values, weights, strict=True):
        level = criterion.snap(v)
        tally[level] = tally.get(level, 0.0) + w
    top = max(tally.values())
    return criterion.worst(level for level, w in tally.items() if math.isclose(w, top))


def aggregate_criterion(
    probs: Sequence[float],
    aggregation: str = "mean",
    *,
    criterion: Criterion | None = None,
    weights: Sequence[float] | None = None,
    ordinal: str | None = None,
    snap: bool = False,
) -> float:
    """One value for a criterion from the members' values (see the module docstring).

    `criterion` decides the kind (ordinal when it has `levels`) and the sign that breaks ties; without it the values
    are yes/no probabilities of a positively weighted criterion. `weights` are the members' weights, in order.
    """
    if not probs:
        raise ValueError("aggregate_criterion: no member probabilities to aggregate")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown ensemble aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
    c = criterion if criterion is not None else _YES_NO
    w = [1.0] * len(probs) if aggregation == "majority" else _weights(len(probs), weights)
    if c.levels is not None:
        method = ordinal or default_ordinal(aggregation)
        if method not in ORDINAL_AGGREGATIONS:
            raise ValueError(
                f"unknown ordinal aggregation {method!r}; expected one of {ORDINAL_AGGREGATIONS}"
            )
        if method == "mode":
            return _mode(probs, w, c)
        value = (
            c.worst(probs) if method == "min" else _mean(probs, w) if method == "mean" else _median(probs, w)
        )
        return c.snap(value) if snap and method != "min" else value
    if aggregation == "mean":
        return c.snap(_mean(probs, w)) if snap else _mean(probs, w)
    if aggregation == "min":
        return c.worst(probs)
    yes, no = _votes(probs, w)
    if aggregation == "unanimous":
        return 1.0 if yes > 0 and no == 0 else 0.0
    if aggregation == "any":
        return 1.0 if yes > 0 else 0.0
    return 1.0 if yes > no else 0.0 if no > yes else c.worst((0.0, 1.0))


def aggregate_pair(
    probs_first: Sequence[float], aggregation: str = "mean", weights: Sequence[float] | None = None
) -> float:
    """One P(Image 1 is better) from the members' probabilities (see the module docstring)."""
    if not probs_first:
        raise ValueError("aggregate_pair: no member probabilities to aggregate")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown ensemble aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
    w = [1.0] * len(probs_first) if aggregation == "majority" else _weights(len(probs_first), weights)
    if aggregation == "mean":
        return _mean(probs_first, w)
    if aggregation == "min":
        first = min(probs_first)
        second = min(1.0 - p for p in probs_first)
        total = first + second
        return 0.5 if total <= 0.0 else first / total
    first, second = _votes(probs_first, w)
    if aggregation in ("unanimous", "any"):
        return 1.0 if first > 0 and second == 0 else 0.0 if second > 0 and first == 0 else 0.5
    return 1.0 if first > second else 0.0 if second > first else 0.5


def _member_names(members: Sequence[JudgeBackend], names: Sequence[str] | None) -> list[str]:
    """Unique member names: given, or the backends' names with "#2", "#3", ... on repeats."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(members) or len(set(names)) != len(names):
            raise ValueError(
                f"EnsembleBackend names must be {len(members)} distinct strings (one per member), got {names}"
            )
        return names
    out: list[str] = []
    for m in members:
        name, k = m.name, 1
        while name in out:
            k += 1
            name = f"{m.name}#{k}"
        out.append(name)
    return out


class EnsembleBackend:
    """A `JudgeBackend` that asks every member backend and aggregates their answers by criterion kind.

    Args:
        members: the backends (at least one); each is asked the whole batch, in order.
        aggregation: for yes/no criteria and pairs: "mean", "majority", "weighted", "unanimous", "any" or "min".
        ordinal: for ordinal criteria: "mean", "median", "mode" or "min" (default: follows `aggregation`).
        weights: one positive weight per member (default: all 1).
        snap: move mean and median results to the nearest level (or yes/no).
        min_answers: how many members must answer a question (a value or "unknown") for a verdict; fewer gives a
            failed verdict (a member's failure is otherwise left out, so one flaky server does not fail the
            ensemble).
        names: the members' names in results (default: their backend names, made unique).
    """

    name = "ensemble"

    def __init__(
        self,
        members: Sequence[JudgeBackend],
        aggregation: str = "mean",
        min_answers: int = 1,
        *,
        ordinal: str | None = None,
        weights: Sequence[float] | None = None,
        snap: bool = False,
        names: Sequence[str] | None = None,
    ) -> None:
        members = list(members)
        if not members:
            raise ValueError("EnsembleBackend needs at least one member backend, got none")
        for i, m in enumerate(members):
            if not isinstance(m, JudgeBackend):
                raise TypeError(
                    f"EnsembleBackend member {i} must be a JudgeBackend (name, fingerprint(), judge_pairs(), "
                    f"judge_criteria()), got {type(m).__name__}"
                )
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown ensemble aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
        if ordinal is not None and ordinal not in ORDINAL_AGGREGATIONS:
            raise ValueError(
                f"unknown ordinal aggregation {ordinal!r}; expected one of {ORDINAL_AGGREGATIONS}"
            )
        if not 1 <= min_answers <= len(members):
            raise ValueError(
                f"EnsembleBackend min_answers must be in 1..{len(members)} (the number of members), "
                f"got {min_answers}"
            )
        if weights is not None:
            weights = list(weights)
            bad = [
                w for w in weights if isinstance(w, bool) or not (math.isfinite(float(w)) and float(w) > 0)
            ]
            if len(weights) != len(members) or bad:
                raise ValueError(
                    f"EnsembleBackend weights must be {len(members)} finite positive numbers (one per member), "
                    f"got {weights}"
                )
        self.members = members
        self.aggregation = aggregation
        self.ordinal = ordinal or default_ordinal(aggregation)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(members)
        self.snap = bool(snap)
        self.min_answers = min_answers
        self.names = _member_names(members, names)

    def fingerprint(self) -> str:
        inner = ";".join(m.fingerprint() for m in self.members)
        extra = ""
        if self.ordinal != default_ordinal(self.aggregation) or self.snap:
            extra += f"/ordinal={self.ordinal}{'/snap' if self.snap else ''}"
        if any(w != 1.0 for w in self.weights):
            extra += "/weights=" + ",".join(f"{w:g}" for w in self.weights)
        if self.names != _member_names(self.members, None):
            extra += "/names=" + ",".join(self.names)
        # v2: ties break toward the criterion's worse outcome, "min" is sign-aware, ordinal items aggregate as levels.
        return f"ensemble/v2/{self.aggregation}/min{self.min_answers}{extra}[{inner}]"

    def _gather(self, ask: Callable[[JudgeBackend], list[Any]], n: int) -> list[list[Any]]:
        """answers[q][m]: member m's verdict on question q."""
        per_member = []
        for m in self.members:
            got = ask(m)
            if len(got) != n:
                raise RuntimeError(
                    f"ensemble member {m.name!r} returned {len(got)} verdicts for {n} questions"
                )
            per_member.append(got)
        return [list(row) for row in zip(*per_member, strict=True)] if n else []

    def _summary(self, verdicts: Sequence[Any], shown: Sequence[str]) -> tuple[str, str]:
        values = ", ".join(f"{name}={s}" for name, s in zip(self.names, shown, strict=True))
        reasons = [f"[{name}] {v.reason}" for name, v in zip(self.names, verdicts, strict=True) if v.reason]
        return f"{self.aggregation} of {values}", " | ".join(reasons)

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]:
        rows = self._gather(lambda m: m.judge_criteria(queries), len(queries))
        return [self._combine_criterion(q.criterion, v) for q, v in zip(queries, rows, strict=True)]

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]:
        rows = self._gather(lambda m: m.judge_pairs(queries), len(queries))
        return [self._combine_pair(v) for v in rows]

    def _combine_criterion(
        self, criterion: Criterion, verdicts: Sequence[CriterionVerdict]
    ) -> CriterionVerdict:
        """One criterion's member verdicts -> the aggregated verdict, "cannot assess", or a failure."""
        shown = [
            "unknown" if v.cannot_assess else "failed" if v.prob_yes is None else f"{v.prob_yes:.2f}"
            for v in verdicts
        ]
        raw, reason = self._summary(verdicts, shown)
        members = {
            name: CriterionVerdict(v.prob_yes, error=v.error, cannot_assess=v.cannot_assess)
            for name, v in zip(self.names, verdicts, strict=True)
        }
        answered = sum(not v.failed for v in verdicts)
        if answered < self.min_answers:
            errors = "; ".join(v.error or "no probability" for v in verdicts if v.failed)
            error = f"{answered} of {len(verdicts)} members answered: {errors}"
            return CriterionVerdict(None, reason, raw, error=error, members=members)
        kept = [
            (v.prob_yes, w) for v, w in zip(verdicts, self.weights, strict=True) if v.prob_yes is not None
        ]
        if not kept:
            return CriterionVerdict(None, reason, raw, cannot_assess=True, members=members)
        value = aggregate_criterion(
            [p for p, _ in kept],
            self.aggregation,
            criterion=criterion,
            weights=[w for _, w in kept],
            ordinal=self.ordinal,
            snap=self.snap,
        )
        return CriterionVerdict(value, reason, raw, members=members)

    def _combine_pair(self, verdicts: Sequence[PairVerdict]) -> PairVerdict:
        shown = ["failed" if v.prob_first is None else f"{v.prob_first:.2f}" for v in verdicts]
        raw, reason = self._summary(verdicts, shown)
        kept = [
            (v.prob_first, w) for v, w in zip(verdicts, self.weights, strict=True) if v.prob_first is not None
        ]
        if len(kept) < self.min_answers:
            errors = "; ".join(v.error or "no probability" for v in verdicts if v.prob_first is None)
            return PairVerdict(
                None, reason, raw, error=f"{len(kept)} of {len(verdicts)} members answered: {errors}"
            )
        value = aggregate_pair([p for p, _ in kept], self.aggregation, [w for _, w in kept])
        return PairVerdict(value, reason, raw)
