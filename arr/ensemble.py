"""Judge ensembles: several backends answer every question, and one aggregation turns their answers into one.

Single VLM judges are noisy and biased in their own ways; averaging several (different models, prompts or
temperatures) is the cheapest way to a steadier reward. `EnsembleBackend` is itself a `JudgeBackend`, so
`RubricJudge`, the rewards, the cache and the server use it unchanged.

    from arr import RubricJudge, load_backend
    from arr.ensemble import EnsembleBackend
    judge = RubricJudge(EnsembleBackend([load_backend("pixel"), other_backend], aggregation="majority"))

Aggregations (applied per question, over the members that answered):
- "mean": the mean probability.
- "majority": each member votes (probability above or below 0.5, exactly 0.5 abstains); the result is 1.0 / 0.0
  for the side with more votes and 0.5 for a tie. Robust to one member's confident mistakes.
- "min": criteria get the lowest probability (a criterion holds only as far as the most sceptical member
  agrees); pairs give each image its lowest support across members, min_k p_k for Image 1 and min_k (1 - p_k) for
  Image 2, renormalised, so the verdict does not depend on which image is shown first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from arr.backends.base import CriterionQuery, CriterionVerdict, JudgeBackend, PairQuery, PairVerdict

__all__ = ["AGGREGATIONS", "EnsembleBackend", "aggregate_criterion", "aggregate_pair"]

AGGREGATIONS: tuple[str, ...] = ("mean", "majority", "min")


def _vote(probs: Sequence[float]) -> float:
    yes = sum(p > 0.5 for p in probs)
    no = sum(p < 0.5 for p in probs)
    return 1.0 if yes > no else 0.0 if no > yes else 0.5


def aggregate_criterion(probs: Sequence[float], aggregation: str) -> float:
    """One P(criterion holds) from the members' probabilities (see the module docstring)."""
    if not probs:
        raise ValueError("aggregate_criterion: no member probabilities to aggregate")
    if aggregation == "mean":
        return sum(probs) / len(probs)
    if aggregation == "majority":
        return _vote(probs)
    if aggregation == "min":
        return min(probs)
    raise ValueError(f"unknown ensemble aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


def aggregate_pair(probs_first: Sequence[float], aggregation: str) -> float:
    """One P(Image 1 is better) from the members' probabilities (see the module docstring)."""
    if not probs_first:
        raise ValueError("aggregate_pair: no member probabilities to aggregate")
    if aggregation == "min":
        first = min(probs_first)
        second = min(1.0 - p for p in probs_first)
        total = first + second
        return 0.5 if total <= 0.0 else first / total
    return aggregate_criterion(probs_first, aggregation)


class EnsembleBackend:
    """A `JudgeBackend` that asks every member backend and aggregates their answers.

    Args:
        members: the backends (at least one); each is asked the whole batch, in order.
        aggregation: "mean", "majority" or "min".
        min_answers: how many members must answer a question for a verdict; fewer gives a failed verdict
            (a member's failure is otherwise left out, so one flaky server does not fail the ensemble).
    """

    name = "ensemble"

    def __init__(
        self, members: Sequence[JudgeBackend], aggregation: str = "mean", min_answers: int = 1
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
        if not 1 <= min_answers <= len(members):
            raise ValueError(
                f"EnsembleBackend min_answers must be in 1..{len(members)} (the number of members), "
                f"got {min_answers}"
            )
        self.members = members
        self.aggregation = aggregation
        self.min_answers = min_answers

    def fingerprint(self) -> str:
        inner = ";".join(m.fingerprint() for m in self.members)
        return f"ensemble/{self.aggregation}/min{self.min_answers}[{inner}]"

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

    def _summary(self, verdicts: Sequence[Any], values: Sequence[float | None]) -> tuple[str, str]:
        names = [m.name for m in self.members]
        shown = ", ".join(
            f"{name}={'failed' if v is None else f'{v:.2f}'}" for name, v in zip(names, values, strict=True)
        )
        reasons = [f"[{name}] {v.reason}" for name, v in zip(names, verdicts, strict=True) if v.reason]
        return f"{self.aggregation} of {shown}", " | ".join(reasons)

    def judge_criteria(self, queries: Sequence[CriterionQuery]) -> list[CriterionVerdict]:
        rows = self._gather(lambda m: m.judge_criteria(queries), len(queries))
        return [self._combine(v, "prob_yes", CriterionVerdict, aggregate_criterion) for v in rows]

    def judge_pairs(self, queries: Sequence[PairQuery]) -> list[PairVerdict]:
        rows = self._gather(lambda m: m.judge_pairs(queries), len(queries))
        return [self._combine(v, "prob_first", PairVerdict, aggregate_pair) for v in rows]

    def _combine(self, verdicts: Sequence[Any], field: str, verdict_cls: type, aggregate: Callable) -> Any:
        """One question's member verdicts -> the aggregated verdict, or a failure when too few answered."""
        values = [getattr(v, field) for v in verdicts]
        raw, reason = self._summary(verdicts, values)
        answered = [p for p in values if p is not None]
        if len(answered) < self.min_answers:
            errors = "; ".join(v.error or "no probability" for v in verdicts if getattr(v, field) is None)
            return verdict_cls(
                None, reason, raw, error=f"{len(answered)} of {len(values)} members answered: {errors}"
            )
        return verdict_cls(aggregate(answered, self.aggregation), reason, raw)
