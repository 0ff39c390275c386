"""Agreement between raters: judges in an ensemble, or a judge and human labels.

Accuracy says how often a judge matches the labels, not how much of that is chance: a judge that says "yes" to
everything is 90% accurate on criteria that hold 90% of the time. These statistics correct for chance:
- `cohen_kappa(a, b)`: two raters, nominal categories: (p_o - p_e) / (1 - p_e).
- `fleiss_kappa(ratings)`: any fixed number of raters per item, nominal categories.
- `krippendorff_alpha(ratings, level)`: any number of raters, missing ratings allowed, nominal, ordinal or interval
  distances: 1 - D_o / D_e from the coincidence matrix (Krippendorff, "Computing Krippendorff's alpha-reliability").
- `pairwise_agreement(ratings)`: the plain fraction of rater pairs that agree, per item, averaged.

`ratings[i][r]` is rater r's category for item i (any hashable value; for "ordinal" and "interval" a number), or
None where rater r gave none. A statistic that is undefined on its input (no pairable ratings, or only one category
in use, so that chance agreement is perfect) is None, never a made-up number.

    from arr.agreement import cohen_kappa, krippendorff_alpha
    cohen_kappa(["yes", "yes", "no", "no"], ["yes", "no", "no", "no"])   # 0.5
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

__all__ = ["LEVELS", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha", "pairwise_agreement"]

LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval")


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa between two raters' categories for the same items (items where either is None are dropped)."""
    if len(a) != len(b):
        raise ValueError(
            f"cohen_kappa: the raters rated {len(a)} and {len(b)} items; give one rating per item each"
        )
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(x == y for x, y in pairs) / n
    count_a = Counter(x for x, _ in pairs)
    count_b = Counter(y for _, y in pairs)
    expected = math.fsum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1.0 - expected)


def _rows(ratings: Sequence[Sequence[Hashable | None]]) -> list[list[Hashable]]:
    return [[r for r in row if r is not None] for row in ratings]


def pairwise_agreement(ratings: Sequence[Sequence[Hashable | None]]) -> float | None:
    """The fraction of agreeing rater pairs per item, averaged over items rated at least twice."""
    per_item = []
    for row in _rows(ratings):
        m = len(row)
        if m < 2:
            continue
        same = sum(c * (c - 1) for c in Counter(row).values())
        per_item.append(same / (m * (m - 1)))
    return sum(per_item) / len(per_item) if per_item else None


def fleiss_kappa(ratings: Sequence[Sequence[Hashable | None]]) -> float | None:
    """Fleiss' kappa over the items that every rater rated (it needs the same number of raters per item)."""
    width = max((len(row) for row in ratings), default=0)
    complete = [list(row) for row in ratings if len(row) == width and all(r is not None for r in row)]
    if width < 2 or not complete:
        return None
    n_items, n = len(complete), width
    totals: Counter = Counter()
    observed = 0.0
    for row in complete:
        counts = Counter(row)
        totals.update(counts)
        observed += (sum(c * c for c in counts.values()) - n) / (n * (n - 1))
    observed /= n_items
    expected = math.fsum((t / (n_items * n)) ** 2 for t in totals.values())
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1.0 - expected)


def _distance(level: str, values: list[Hashable], marginals: dict[Hashable, float]):
    """The squared distance delta^2(c, k) of Krippendorff's alpha for `level` (marginals n_c for "ordinal")."""
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "interval":
        return lambda c, k: (float(c) - float(k)) ** 2
    order = sorted(values, key=float)
    rank = {v: i for i, v in enumerate(order)}
    cumulative = [0.0]
    for v in order:
        cumulative.append(cumulative[-1] + marginals[v])

    def ordinal(c: Hashable, k: Hashable) -> float:
        lo, hi = sorted((rank[c], rank[k]))
        between = cumulative[hi + 1] - cumulative[lo]  # n_g summed for g from c to k, both included
        return (between - (marginals[c] + marginals[k]) / 2) ** 2

    return ordinal


def krippendorff_alpha(ratings: Sequence[Sequence[Hashable | None]], level: str = "nominal") -> float | None:
    """Krippendorff's alpha of `ratings[item][rater]` (None: missing) at `level` "nominal", "ordinal" or "interval"."""
    if level not in LEVELS:
        raise ValueError(f"krippendorff_alpha: level must be one of {list(LEVELS)}, got {level!r}")
    pairable = [row for row in _rows(ratings) if len(row) >= 2]
    if level != "nominal":
        for row in pairable:
            for v in row:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"krippendorff_alpha: level {level!r} needs finite numbers, got {v!r}")
    # The coincidence matrix o[c, k]: each ordered pair of values in a unit counts 1 / (m_u - 1).
    coincidence: Counter = Counter()
    for row in pairable:
        share = 1.0 / (len(row) - 1)
        for i, c in enumerate(row):
            for j, k in enumerate(row):
                if i != j:
                    coincidence[c, k] += share
    marginals: dict[Hashable, float] = {}
    for (c, _), o in coincidence.items():
        marginals[c] = marginals.get(c, 0.0) + o
    n = math.fsum(marginals.values())
    if n <= 1 or len(marginals) < 2:
        return None
    delta = _distance(level, list(marginals), marginals)
    disagreement = math.fsum(o * delta(c, k) for (c, k), o in coincidence.items())
    chance = math.fsum(marginals[c] * marginals[k] * delta(c, k) for c in marginals for k in marginals)
    if chance <= 0.0:
        return None
    return 1.0 - (n - 1) * disagreement / chance
