"""Agreement statistics: hand-computed values, Krippendorff's published example, undefined cases, and the reference
implementations (scikit-learn, statsmodels, krippendorff) where they are installed."""

from __future__ import annotations

import numpy as np
import pytest

from arr.agreement import cohen_kappa, fleiss_kappa, krippendorff_alpha, pairwise_agreement

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 observers, 12 units, with gaps.
# Published: nominal 0.743, ordinal 0.815, interval 0.849. Rows are units, columns observers.
_OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
PUBLISHED = [list(unit) for unit in zip(*_OBSERVERS, strict=True)]


def test_cohen_kappa_by_hand():
    # p_o = 3/4; marginals yes 2/4 and 1/4, no 2/4 and 3/4: p_e = (2 + 6) / 16 = 1/2 -> (3/4 - 1/2) / (1/2).
    assert cohen_kappa(["yes", "yes", "no", "no"], ["yes", "no", "no", "no"]) == pytest.approx(0.5)
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)  # p_o 0, p_e 1/2
    assert cohen_kappa(["yes", None, "no"], ["yes", "no", "no"]) == pytest.approx(
        1.0
    )  # the None item is dropped
    assert cohen_kappa(["yes", "yes"], ["yes", "yes"]) is None  # one category: chance agreement is perfect
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="rated 2 and 1 items"):
        cohen_kappa([1, 0], [1])


def test_fleiss_kappa_and_pairwise_agreement_by_hand():
    ratings = [["a", "a", "a"], ["a", "b", "b"], ["b", "b", "b"], ["a", "b", "a"]]
    # P_i = 1, 1/3, 1, 1/3 -> P-bar 2/3; a and b each 6 of 12 ratings -> P_e 1/2; (2/3 - 1/2) / (1/2) = 1/3.
    assert fleiss_kappa(ratings) == pytest.approx(1 / 3)
    assert pairwise_agreement(ratings) == pytest.approx(2 / 3)
    assert fleiss_kappa([*ratings, ["a", None, "b"]]) == pytest.approx(1 / 3)  # incomplete items are left out
    # Pairwise agreement takes what each item has: 1/3 for (a, a, b), 1 for (a, a); a lone rating is skipped.
    assert pairwise_agreement([["a", "a", "b"], ["a", None, "a"], ["b", None, None]]) == pytest.approx(2 / 3)
    assert fleiss_kappa([["a", "a"], ["a", "a"]]) is None and pairwise_agreement([["a"]]) is None


def test_krippendorff_alpha_by_hand_and_published():
    # Two units (a, a) and (a, b): o_aa = 2, o_ab = o_ba = 1; n_a = 3, n_b = 1, n = 4;
    # alpha = 1 - (n - 1) * D_o / sum_{c != k} n_c n_k = 1 - 3 * 2 / 6 = 0.
    assert krippendorff_alpha([["a", "a"], ["a", "b"]]) == pytest.approx(0.0)
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha(PUBLISHED, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(PUBLISHED, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(PUBLISHED, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha([["a", "a"], ["a", None]]) is None  # one value in use
    assert krippendorff_alpha([["a", None]]) is None  # nothing pairable
    with pytest.raises(ValueError, match="needs finite numbers"):
        krippendorff_alpha([["a", "b"]], "interval")
    with pytest.raises(ValueError, match="level must be one of"):
        krippendorff_alpha(PUBLISHED, "ratio")


def _random_ratings(rng: np.random.Generator, missing: float) -> list[list[int | None]]:
    n, raters, k = int(rng.integers(4, 20)), int(rng.integers(2, 5)), int(rng.integers(2, 5))
    values = rng.integers(0, k, size=(n, raters))
    return [[None if rng.random() < missing else int(v) for v in row] for row in values]


def test_agrees_with_reference_implementations():
    sklearn = pytest.importorskip("sklearn.metrics")
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    for _ in range(50):
        ratings = _random_ratings(rng, 0.0)
        a, b = [r[0] for r in ratings], [r[1] for r in ratings]
        ref = sklearn.cohen_kappa_score(a, b)
        assert (cohen_kappa(a, b) is None) if np.isnan(ref) else cohen_kappa(a, b) == pytest.approx(ref)
        table, _ = inter_rater.aggregate_raters(np.array(ratings))
        ref = inter_rater.fleiss_kappa(table)
        assert (
            (fleiss_kappa(ratings) is None) if np.isnan(ref) else fleiss_kappa(ratings) == pytest.approx(ref)
        )
        gappy = _random_ratings(rng, 0.2)
        data = np.array([[np.nan if v is None else v for v in row] for row in gappy], dtype=float).T
        for level in ("nominal", "ordinal", "interval"):
            try:
                ref = krippendorff.alpha(reliability_data=data, level_of_measurement=level)
            except ValueError:  # the reference refuses inputs with one value in use
                ref = float("nan")
            got = krippendorff_alpha(gappy, level)
            assert (got is None) if np.isnan(ref) else got == pytest.approx(ref)
