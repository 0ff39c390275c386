"""Bootstrap confidence intervals for the aggregate figures arr reports (mean scores, accuracies, win rates).

A shapes-world accuracy from 200 prompts moves by ±0.04 between sampling seeds, and a judge accuracy from 50
preference pairs by more: a figure without an interval invites reading noise as progress. `bootstrap_ci` gives a
percentile interval for any statistic of a sample of per-item values; it is seeded, so reports are reproducible.

    from arr.stats import bootstrap_ci
    ci = bootstrap_ci([1, 0, 1, 1, 0, 1], n=2000, seed=0)
    ci.value, ci.low, ci.high   # 0.667, and the 95% interval around it

`bootstrap_items` does the same for statistics of paired data (a kappa between a judge and labels): it resamples
item indices and hands them to the statistic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "PER_PROMPT_SCORES",
    "ConfidenceInterval",
    "bootstrap_ci",
    "bootstrap_items",
    "mean",
    "paired_change_se",
]

#: The metric key under which an evaluation function may also return its per-prompt scores, a list of
#: (stratum, score) in record order, where the headline score is the mean over strata of each stratum's mean score
#: (GenEval's categories; one stratum for a plain mean). Two evaluations of the same prompts with the same seeds
#: then compare prompt by prompt (`paired_change_se`).
PER_PROMPT_SCORES = "eval_per_prompt"


def mean(values: np.ndarray) -> float:
    """The arithmetic mean (the default statistic)."""
    return float(np.mean(values))


@dataclass(frozen=True)
class ConfidenceInterval:
    """`value` is the statistic on the full sample; [`low`, `high`] its (1 - alpha) percentile bootstrap interval."""

    value: float
    low: float
    high: float
    n: int  # sample size (values that were not None)
    alpha: float
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        level = round(100 * (1 - self.alpha))
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}] ({level}% CI, n={self.n})"


def bootstrap_ci(
    values: Sequence[float | bool | None] | np.ndarray,
    stat: Callable[[np.ndarray], float] = mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of `stat` over `values` (None entries, i.e. failed judgments, are dropped).

    Resamples the values with replacement `n` times; the interval is the alpha/2 and 1 - alpha/2 quantiles of the
    resampled statistic. `stat` receives a 1-D float array. A single value gives a zero-width interval. A statistic
    that can be undefined on a resample (a kappa on a resample with one category) returns NaN there; such resamples
    are left out of the interval (and `resamples` counts only the others).
    """
    if n < 1:
        raise ValueError(f"bootstrap_ci: n (resamples) must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    kept = [float(v) for v in values if v is not None]
    bad = [v for v in kept if not math.isfinite(v)]
    if bad:
        raise ValueError(f"bootstrap_ci: values must be finite numbers or None, got {bad[0]!r}")
    if not kept:
        raise ValueError("bootstrap_ci: no values to aggregate (empty, or every value is None)")
    data = np.asarray(kept, dtype=np.float64)
    value = float(stat(data))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data), size=(n, len(data)))
    if stat is mean:
        # The common case, vectorised: one matrix mean instead of n Python calls.
        resampled = data[idx].mean(axis=1)
    else:
        resampled = np.array([float(stat(data[row])) for row in idx])
        resampled = resampled[np.isfinite(resampled)]
    if not len(resampled):
        raise ValueError("bootstrap_ci: the statistic is undefined (NaN) on every resample")
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(value, float(low), float(high), len(data), alpha, len(resampled))


def paired_change_se(
    before: Sequence[tuple[str, float]], after: Sequence[tuple[str, float]]
) -> tuple[float, float]:
    """The change of a stratified mean score between two evaluations of the same prompts, and its standard error.

    `before` and `after` hold (stratum, score) per prompt, in the same order; the score is the mean over strata of
    each stratum's mean. The error comes from the per-prompt differences: a prompt that is right (or wrong) in both
    evaluations adds nothing, so with the same prompts and seeds it is far smaller than the error of two
    independent evaluations, sqrt(se_before^2 + se_after^2). Variance of the differences with n - 1 in each stratum.
    """
    if len(before) != len(after):
        raise ValueError(
            f"paired_change_se: {len(before)} prompts before but {len(after)} after; pair them one to one"
        )
    diffs: dict[str, list[float]] = {}
    for i, ((s1, x1), (s2, x2)) in enumerate(zip(before, after, strict=True)):
        if s1 != s2:
            raise ValueError(f"paired_change_se: prompt {i} is in stratum {s1!r} before and {s2!r} after")
        diffs.setdefault(s1, []).append(float(x2) - float(x1))
    if not diffs:
        raise ValueError("paired_change_se: no prompts to compare")
    change = variance = 0.0
    for values in diffs.values():
        d = np.asarray(values, dtype=np.float64)
        change += float(d.mean())
        variance += float(d.var(ddof=1)) / len(d) if len(d) > 1 else 0.0
    strata = len(diffs)
    return change / strata, math.sqrt(variance) / strata


def bootstrap_items(
    n_items: int,
    stat: Callable[[np.ndarray], float | None],
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> ConfidenceInterval | None:
    """Percentile bootstrap interval of a statistic of `n_items` paired items; `stat` receives an int array of item
    indices (all of them for the value, resampled with replacement for the interval) and may return None where it
    is undefined. None when there are no items or the statistic is undefined on all of them."""
    if n_items < 1 or stat(np.arange(n_items)) is None:
        return None

    def on(indices: np.ndarray) -> float:
        value = stat(indices.astype(int))
        return float("nan") if value is None else float(value)

    return bootstrap_ci(np.arange(n_items), stat=on, n=n, alpha=alpha, seed=seed)
