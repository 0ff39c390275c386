"""Alignment metrics against brute-force loops written here from the definitions, plus the known cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from arr.diagnostics import alignment as al

# ---- brute force: plain Python/numpy loops, straight from the definitions ---------------------------------------


def bf_normalize(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    for i, row in enumerate(x):
        norm = math.sqrt(sum(float(v) * float(v) for v in row))
        out[i] = row / max(norm, 1e-12)
    return out


def bf_gram(x: np.ndarray) -> list[list[float]]:
    n = len(x)
    return [[float(np.dot(x[i], x[j])) for j in range(n)] for i in range(n)]


def bf_knn(k_mat: list[list[float]], topk: int) -> list[list[int]]:
    """Each row's topk others by decreasing inner product (the point itself never counts)."""
    n = len(k_mat)
    out = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: -k_mat[i][j])
        out.append(others[:topk])
    return out


def bf_mutual_knn(a, b, topk):
    na, nb = bf_knn(bf_gram(a), topk), bf_knn(bf_gram(b), topk)
    return sum(len(set(x) & set(y)) / topk for x, y in zip(na, nb, strict=True)) / len(a)


def bf_cycle_knn(a, b, topk):
    na, nb = bf_knn(bf_gram(a), topk), bf_knn(bf_gram(b), topk)
    hits = 0
    for i in range(len(a)):
        hits += any(i in na[j] for j in nb[i])
    return hits / len(a)


def bf_levenshtein(x, y):
    d = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(len(x) + 1):
        d[i][0] = i
    for j in range(len(y) + 1):
        d[0][j] = j
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (x[i - 1] != y[j - 1]))
    return d[-1][-1]


def bf_edit_distance_knn(a, b, topk):
    na, nb = bf_knn(bf_gram(a), topk), bf_knn(bf_gram(b), topk)
    return 1 - sum(bf_levenshtein(x, y) for x, y in zip(na, nb, strict=True)) / len(a) / topk


def bf_hsic_biased(k, l):  # noqa: E741
    n = len(k)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(np.array(k) @ h @ np.array(l) @ h))


def bf_hsic_unbiased(k, l):  # noqa: E741
    """Song et al. (2012) eq. 5 with loops; K~, L~ have zero diagonals. Neither needs to be symmetric."""
    m = len(k)
    kt = [[0.0 if i == j else k[i][j] for j in range(m)] for i in range(m)]
    lt = [[0.0 if i == j else l[i][j] for j in range(m)] for i in range(m)]
    trace_kl = sum(kt[i][j] * lt[j][i] for i in range(m) for j in range(m))
    sum_k = sum(map(sum, kt))
    sum_l = sum(map(sum, lt))
    ones_kl_ones = sum(kt[i][j] * lt[j][q] for i in range(m) for j in range(m) for q in range(m))
    return (trace_kl + sum_k * sum_l / ((m - 1) * (m - 2)) - 2 * ones_kl_ones / (m - 2)) / (m * (m - 3))


def bf_cka(a, b, unbiased=False):
    k, l = bf_gram(a), bf_gram(b)  # noqa: E741
    h = bf_hsic_unbiased if unbiased else bf_hsic_biased
    return h(k, l) / (math.sqrt(h(k, k) * h(l, l)) + 1e-6)


def bf_cknna(a, b, topk):
    k, l = bf_gram(a), bf_gram(b)  # noqa: E741
    n = len(a)

    def sim(k1, l1):
        # Row i keeps column j when j is among row i's top-k in both kernels: a row-wise mask, not symmetrised.
        n1, n2 = bf_knn(k1, topk), bf_knn(l1, topk)
        mask = [[1.0 if (j in n1[i] and j in n2[i]) else 0.0 for j in range(n)] for i in range(n)]
        mk = [[mask[i][j] * k1[i][j] for j in range(n)] for i in range(n)]
        ml = [[mask[i][j] * l1[i][j] for j in range(n)] for i in range(n)]
        return bf_hsic_unbiased(mk, ml)

    return sim(k, l) / (math.sqrt(sim(k, k) * sim(l, l)) + 1e-6)


# ---- data -------------------------------------------------------------------------------------------------------


def paired(n: int, da: int, db: int, seed: int, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Two views of shared latent factors plus independent noise: partly aligned, like two real models."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 6))
    a = z @ rng.standard_normal((6, da)) + 0.7 * rng.standard_normal((n, da)) + offset
    b = z @ rng.standard_normal((6, db)) + 1.2 * rng.standard_normal((n, db))
    return a, b


BRUTE = {
    "mutual_knn": bf_mutual_knn,
    "cycle_knn": bf_cycle_knn,
    "edit_distance_knn": bf_edit_distance_knn,
    "cknna": bf_cknna,
}


@pytest.mark.parametrize("seed,n,topk,offset", [(0, 24, 3, 0.0), (1, 31, 5, 1.5), (2, 40, 10, 0.0)])
def test_metrics_equal_brute_force(seed, n, topk, offset):
    a, b = paired(n, 17, 9, seed, offset)
    an, bn = bf_normalize(a), bf_normalize(b)
    for name, fn in BRUTE.items():
        expected = fn(an, bn, topk)
        assert getattr(al, name)(a, b, topk=topk) == pytest.approx(expected, abs=1e-6), name
    assert al.cka(a, b) == pytest.approx(bf_cka(an, bn), abs=1e-6)
    assert al.unbiased_cka(a, b) == pytest.approx(bf_cka(an, bn, unbiased=True), abs=1e-6)
    # The values are not degenerate: partly aligned features give neither 0 nor 1.
    assert 0.05 < al.mutual_knn(a, b, topk=topk) < 0.95
    assert 0.05 < al.cknna(a, b, topk=topk) < 0.99


def test_float32_torch_input_matches_float64_numpy():
    a, b = paired(60, 33, 21, 3)
    ref = al.alignment_metrics(a, b, "all", topk=6)
    got = al.alignment_metrics(torch.from_numpy(a).float(), torch.from_numpy(b).float(), "all", topk=6)
    for m in al.METRICS:
        assert got[m] == pytest.approx(ref[m], abs=1e-5), m
    assert all(isinstance(v, float) for v in got.values())


def test_identical_inputs_give_one():
    a, _ = paired(50, 20, 5, 4)
    got = al.alignment_metrics(a, a.copy(), "all", topk=5)
    for m, v in got.items():
        if m != "cycle_knn":
            # CKA-type ratios are h / (h + 1e-6), a hair under 1, as in the reference.
            assert v == pytest.approx(1.0, abs=1e-4), m
    # kNN is not symmetric: a point need not be a neighbour of any of its neighbours, so the cycle can miss.
    an = bf_normalize(a)
    assert got["cycle_knn"] == pytest.approx(bf_cycle_knn(an, an, 5), abs=1e-9)
    assert got["cycle_knn"] < 1.0


def test_independent_gaussians_mutual_knn_is_chance():
    rng = np.random.default_rng(5)
    n, k = 600, 10
    a, b = rng.standard_normal((n, 64)), rng.standard_normal((n, 48))
    # Two independent k-subsets of the N-1 others share k^2/(N-1) points on average.
    assert al.mutual_knn(a, b, topk=k) == pytest.approx(k / (n - 1), abs=0.006)
    assert abs(al.unbiased_cka(a, b)) < 0.02
    assert abs(al.cknna(a, b, topk=k)) < 0.1


def test_normalisation_and_invariances():
    a, b = paired(40, 12, 7, 6, offset=0.5)
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(40, 1))
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((12, 12)))
    base = al.alignment_metrics(a, b, "all", topk=4)
    # Rows are normalised inside: rescaling rows changes nothing; rotating a feature space changes nothing.
    for m, v in al.alignment_metrics(a * scale, b, "all", topk=4).items():
        assert v == pytest.approx(base[m], abs=1e-9), m
    for m, v in al.alignment_metrics(a @ q, b, "all", topk=4).items():
        assert v == pytest.approx(base[m], abs=1e-9), m
    # normalize=False on already-normalised rows is the same; on raw rows it is not (for CKA).
    an, bn = bf_normalize(a), bf_normalize(b)
    assert al.cka(an, bn, normalize=False) == pytest.approx(base["cka"], abs=1e-9)
    assert abs(al.cka(a * scale, b, normalize=False) - base["cka"]) > 1e-3


def test_max_alignment_finds_the_aligned_layer_pair():
    a, b = paired(80, 16, 16, 7)
    rng = np.random.default_rng(8)
    policy = {"block0": rng.standard_normal((80, 16)), "block1": a, "block2": rng.standard_normal((80, 8))}
    judge = {"noise": rng.standard_normal((80, 5)), "judge": b}
    best = al.max_alignment(policy, judge, ["mutual_knn", "cknna"], topk=5)
    for m in ("mutual_knn", "cknna"):
        value, pl, jl = best[m]
        assert (pl, jl) == ("block1", "judge"), (m, pl, jl)
        assert value == pytest.approx(getattr(al, m)(a, b, topk=5), abs=1e-9)


def test_bad_inputs_name_the_problem():
    a, b = paired(10, 4, 4, 9)
    with pytest.raises(ValueError, match="same inputs.*10 rows in a and 9"):
        al.mutual_knn(a, b[:9])
    with pytest.raises(ValueError, match=r"topk must lie in \[1, N-1\] = \[1, 9\].*got 10"):
        al.mutual_knn(a, b, topk=10)
    with pytest.raises(ValueError, match="topk must lie in \\[2"):
        al.cknna(a, b, topk=1)
    with pytest.raises(ValueError, match=r"shape \[N, D\].*\(2, 5, 4\)"):
        al.cka(np.zeros((2, 5, 4)), b)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        al.cka([[1.0, 2.0]], b)
    with pytest.raises(ValueError, match="unknown alignment metrics"):
        al.alignment_metrics(a, b, ["mutual_nn"])
