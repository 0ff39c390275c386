"""Representation-alignment metrics of the Platonic Representation Hypothesis (Huh et al., 2024).

Each metric compares two feature sets of the same N inputs, `a` [N, Da] and `b` [N, Db] (numpy arrays or torch
tensors, any widths), and returns a Python float. The definitions reproduce the reference code (`metrics.py` of
minyoungg/platonic-rep) exactly, because researchers compare these figures with published ones and its details
move results by more than 1e-4:

- rows are L2-normalised first (`normalize=False` skips it), as its `measure_alignment.py` does;
- k-nearest neighbours are by inner product, with the point itself excluded by setting the Gram diagonal to
  -1e8 (CKNNA sets it to -inf, as the reference does);
- `mutual_knn`: mean over rows of |N_a(i) ∩ N_b(i)| / k;
- `cycle_knn`: the fraction of rows i that appear among the a-neighbours of one of their b-neighbours;
- `edit_distance_knn`: 1 - mean Levenshtein distance between the two ordered neighbour lists / k;
- `cka`: linear-kernel CKA from the biased, unnormalised HSIC tr(KHLH), hsic_kl / (sqrt(hsic_kk hsic_ll) + 1e-6);
- `unbiased_cka`: the same with the unbiased HSIC estimator (Song et al., 2012, eq. 5);
- `cknna`: the unbiased HSIC of the kernels masked to mutual top-k neighbours, where the mask is the product of
  the two *row-wise* top-k masks (not symmetrised), normalised the same way.

Everything runs in torch on the features' device. Gram matrices are computed in float32 (float64 inputs stay
float64) and the HSIC sums in float64: the unbiased estimator subtracts terms of order N^2 from each other.
`alignment_metrics` and `max_alignment` share each Gram matrix, neighbour list and self-HSIC between metrics and
layer pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

METRICS: tuple[str, ...] = ("mutual_knn", "cycle_knn", "edit_distance_knn", "cka", "unbiased_cka", "cknna")
# Metrics that take `topk`.
KNN_METRICS = frozenset({"mutual_knn", "cycle_knn", "edit_distance_knn", "cknna"})

# The reference's constants: kNN excludes the point itself with this fill value; CKA-type ratios add EPS to the
# denominator's square root.
_SELF_FILL = -1e8
_EPS = 1e-6


class Features:
    """One feature set, normalised once, with the kernel quantities the metrics share computed on demand.

    Pass `Features` objects instead of arrays to `alignment_metrics` / `max_alignment` to reuse a Gram matrix
    across many comparisons (the probe compares every policy layer with every judge layer).
    """

    def __init__(
        self,
        feats: Any,
        *,
        normalize: bool = True,
        name: str = "features",
        device: torch.device | str | None = None,
    ) -> None:
        x = _as_tensor(feats, name)
        if device is not None:
            x = x.to(device)
        if normalize:
            # torch.nn.functional.normalize's rule: divide by max(norm, 1e-12), so zero rows stay zero.
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.x = x
        self.name = name
        self._gram: Tensor | None = None
        self._gram64: Tensor | None = None
        self._knn: dict[int, Tensor] = {}
        self._topk_mask: dict[int, Tensor] = {}
        self._self: dict[tuple[str, int], Tensor] = {}

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def gram(self) -> Tensor:
        """K = X X^T [N, N] in the working dtype."""
        if self._gram is None:
            self._gram = self.x @ self.x.T
        return self._gram

    @property
    def gram64(self) -> Tensor:
        if self._gram64 is None:
            self._gram64 = self.gram.double()
        return self._gram64

    def knn(self, topk: int) -> Tensor:
        """[N, topk] indices of each row's nearest neighbours by inner product, best first, itself excluded."""
        if topk not in self._knn:
            k = self.gram.clone()
            k.fill_diagonal_(_SELF_FILL)
            self._knn[topk] = torch.topk(k, topk, dim=1).indices
        return self._knn[topk]

    def topk_mask(self, topk: int) -> Tensor:
        """[N, N] float64 row-wise top-k neighbour mask with the diagonal at -inf first (CKNNA's selection)."""
        if topk not in self._topk_mask:
            k = self.gram.clone()
            k.fill_diagonal_(float("-inf"))
            idx = torch.topk(k, topk, dim=1).indices
            mask = torch.zeros_like(self.gram64)
            mask.scatter_(1, idx, 1.0)
            self._topk_mask[topk] = mask
        return self._topk_mask[topk]

    def self_term(self, kind: str, topk: int = 0) -> Tensor:
        """HSIC of this kernel with itself ("biased", "unbiased", or "cknna" at `topk`), cached."""
        key = (kind, topk)
        if key not in self._self:
            if kind == "biased":
                value = _hsic_biased(self.gram64, self.gram64)
            elif kind == "unbiased":
                value = _hsic_unbiased(self.gram64, self.gram64)
            else:
                masked = self.topk_mask(topk) * self.gram64
                value = _hsic_unbiased(masked, masked)
            self._self[key] = value
        return self._self[key]


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Features):
        return x.x
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, Tensor):
        t = x.detach()
    else:
        raise TypeError(f"{name}: expected a numpy array or torch tensor [N, D], got {type(x).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected features of shape [N, D], got shape {tuple(t.shape)}")
    # float64 stays float64 (exact comparisons); everything else is computed in float32, the reference's dtype.
    return t.double() if t.dtype == torch.float64 else t.float()


def _pair(a: Any, b: Any, normalize: bool) -> tuple[Features, Features]:
    fa = a if isinstance(a, Features) else Features(a, normalize=normalize, name="a")
    fb = b if isinstance(b, Features) else Features(b, normalize=normalize, name="b", device=fa.x.device)
    if len(fa) != len(fb):
        raise ValueError(f"a and b must describe the same inputs: got {len(fa)} rows in a and {len(fb)} in b")
    if fb.x.device != fa.x.device:
        fb = Features(fb.x.to(fa.x.device), normalize=False, name=fb.name)
    if fb.x.dtype != fa.x.dtype:  # one float64 side makes both float64
        dtype = torch.promote_types(fa.x.dtype, fb.x.dtype)
        fa = Features(fa.x.to(dtype), normalize=False, name=fa.name)
        fb = Features(fb.x.to(dtype), normalize=False, name=fb.name)
    return fa, fb


def _check_topk(topk: int, n: int, minimum: int = 1) -> int:
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)):
        raise TypeError(f"topk must be an int, got {type(topk).__name__}")
    if not minimum <= topk <= n - 1:
        raise ValueError(
            f"topk must lie in [{minimum}, N-1] = [{minimum}, {n - 1}] for N={n} rows (the point itself is "
            f"excluded from its neighbours), got {topk}"
        )
    return int(topk)


def _hsic_biased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 - K and L are the papers' names
    """tr(K H L H) with H = I - 11^T/n, computed as <HKH, L^T> in O(n^2) (no n^3 products)."""
    centered = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    return (centered * l.T).sum()


def _hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741
    """Song et al.'s unbiased HSIC (eq. 5), unnormalised as the reference: it divides by m(m-3) only.

    K and L need not be symmetric (CKNNA masks rows), so L^T is kept where the formula has it, and
    sum(K L) = colsum(K) . rowsum(L) avoids the n^3 product.
    """
    m = k.shape[0]
    kt = k.clone()
    kt.fill_diagonal_(0)
    lt = l.clone()
    lt.fill_diagonal_(0)
    value = (
        (kt * lt.T).sum()
        + kt.sum() * lt.sum() / ((m - 1) * (m - 2))
        - 2 * (kt.sum(dim=0) @ lt.sum(dim=1)) / (m - 2)
    )
    return value / (m * (m - 3))


def _levenshtein(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise edit distance between integer sequences x [N, k] and y [N, l] (unit costs), vectorised over N."""
    n, k = x.shape
    length = y.shape[1]
    prev = torch.arange(length + 1, device=x.device).expand(n, length + 1).clone()
    for i in range(1, k + 1):
        cur = torch.empty_like(prev)
        cur[:, 0] = i
        for j in range(1, length + 1):
            substitute = prev[:, j - 1] + (x[:, i - 1] != y[:, j - 1]).long()
            cur[:, j] = torch.minimum(torch.minimum(prev[:, j] + 1, cur[:, j - 1] + 1), substitute)
        prev = cur
    return prev[:, length]


def _metric(name: str, fa: Features, fb: Features, topk: int) -> float:
    n = len(fa)
    if name in ("mutual_knn", "cycle_knn", "edit_distance_knn"):
        topk = _check_topk(topk, n)
        ka, kb = fa.knn(topk), fb.knn(topk)
        if name == "mutual_knn":
            shared = (ka[:, :, None] == kb[:, None, :]).any(dim=2).sum(dim=1)
            return float((shared.double() / topk).mean())
        if name == "cycle_knn":
            # i -> its b-neighbours j -> the a-neighbours of each j: does the cycle come back to i?
            back = ka[kb]  # [N, k, k]
            rows = torch.arange(n, device=back.device).view(-1, 1, 1)
            return float((back == rows).flatten(1).any(dim=1).double().mean())
        dist = _levenshtein(ka, kb)
        return float(1.0 - dist.double().mean() / topk)
    if name in ("cka", "unbiased_cka"):
        if name == "unbiased_cka" and n < 4:
            raise ValueError(f"unbiased_cka needs at least 4 rows (it divides by N(N-3)), got {n}")
        kind = "biased" if name == "cka" else "unbiased"
        hsic = _hsic_biased if name == "cka" else _hsic_unbiased
        kl = hsic(fa.gram64, fb.gram64)
        return float(kl / (torch.sqrt(fa.self_term(kind) * fb.self_term(kind)) + _EPS))
    if name == "cknna":
        topk = _check_topk(topk, n, minimum=2)
        if n < 4:
            raise ValueError(f"cknna needs at least 4 rows (it divides by N(N-3)), got {n}")
        mask = fa.topk_mask(topk) * fb.topk_mask(topk)
        kl = _hsic_unbiased(mask * fa.gram64, mask * fb.gram64)
        return float(kl / (torch.sqrt(fa.self_term("cknna", topk) * fb.self_term("cknna", topk)) + _EPS))
    raise ValueError(f"unknown alignment metric {name!r}; expected one of {', '.join(METRICS)}")


@torch.no_grad()
def mutual_knn(a: Any, b: Any, topk: int = 10, *, normalize: bool = True) -> float:
    """Mean over rows of the fraction of the k nearest neighbours that a and b share (the paper's headline)."""
    return _metric("mutual_knn", *_pair(a, b, normalize), topk)


@torch.no_grad()
def cycle_knn(a: Any, b: Any, topk: int = 10, *, normalize: bool = True) -> float:
    """Fraction of rows i found among the a-neighbours of at least one of i's b-neighbours."""
    return _metric("cycle_knn", *_pair(a, b, normalize), topk)


@torch.no_grad()
def edit_distance_knn(a: Any, b: Any, topk: int = 10, *, normalize: bool = True) -> float:
    """1 - (mean edit distance between the ordered k-neighbour lists of a and b) / k."""
    return _metric("edit_distance_knn", *_pair(a, b, normalize), topk)


@torch.no_grad()
def cka(a: Any, b: Any, *, normalize: bool = True) -> float:
    """Linear CKA from the biased HSIC tr(KHLH) (Kornblith et al., 2019), with the reference's 1e-6."""
    return _metric("cka", *_pair(a, b, normalize), 0)


@torch.no_grad()
def unbiased_cka(a: Any, b: Any, *, normalize: bool = True) -> float:
    """Linear CKA from the unbiased HSIC estimator; needs N >= 4."""
    return _metric("unbiased_cka", *_pair(a, b, normalize), 0)


@torch.no_grad()
def cknna(a: Any, b: Any, topk: int = 10, *, normalize: bool = True) -> float:
    """CKA restricted to mutual nearest neighbours (unbiased HSIC of the kernels masked to shared top-k pairs)."""
    return _metric("cknna", *_pair(a, b, normalize), topk)


def _layer_features(
    layers: Mapping[str, Any], normalize: bool, device: torch.device | None
) -> dict[str, Features]:
    out = {}
    for name, v in layers.items():
        f = v if isinstance(v, Features) else Features(v, normalize=normalize, name=name)
        if device is not None and f.x.device != device:
            f = Features(f.x.to(device), normalize=False, name=name)
        out[name] = f
    return out


def _metric_names(metrics: str | Sequence[str]) -> list[str]:
    names = list(METRICS) if metrics == "all" else [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ValueError(
            f"unknown alignment metrics {unknown or names}; expected 'all' or some of {list(METRICS)}"
        )
    return names


@torch.no_grad()
def alignment_metrics(
    a: Any, b: Any, metrics: str | Sequence[str] = "all", topk: int = 10, *, normalize: bool = True
) -> dict[str, float]:
    """Several metrics of one pair at once, sharing the Gram matrices and neighbour lists."""
    fa, fb = _pair(a, b, normalize)
    return {m: _metric(m, fa, fb, topk) for m in _metric_names(metrics)}


@torch.no_grad()
def max_alignment(
    a_layers: Mapping[str, Any],
    b_layers: Mapping[str, Any],
    metrics: str | Sequence[str] = ("mutual_knn", "cknna"),
    topk: int = 10,
    *,
    normalize: bool = True,
) -> dict[str, tuple[float, str, str]]:
    """For each metric, the maximum over (a layer, b layer) pairs and the pair that attains it.

    The paper reports alignment between two models as this maximum over their layers. Returns
    {metric: (value, a layer name, b layer name)}; NaN values (degenerate features) never win unless all are NaN.
    """
    if not a_layers or not b_layers:
        raise ValueError(
            f"max_alignment needs at least one layer on each side, got {len(a_layers)} and {len(b_layers)}"
        )
    fa = _layer_features(a_layers, normalize, None)
    device = next(iter(fa.values())).x.device
    fb = _layer_features(b_layers, normalize, device)
    dtypes = {f.x.dtype for f in (*fa.values(), *fb.values())}
    if (
        len(dtypes) > 1
    ):  # one float64 layer makes every layer float64, so each Gram matrix is still built once
        fa = {k: Features(f.x.double(), normalize=False, name=k) for k, f in fa.items()}
        fb = {k: Features(f.x.double(), normalize=False, name=k) for k, f in fb.items()}
    sizes = {len(f) for f in (*fa.values(), *fb.values())}
    if len(sizes) > 1:
        raise ValueError(f"every layer must describe the same inputs, got row counts {sorted(sizes)}")
    best: dict[str, tuple[float, str, str]] = {}
    for m in _metric_names(metrics):
        for na, xa in fa.items():
            for nb, xb in fb.items():
                value = _metric(m, xa, xb, topk)
                current = best.get(m)
                if current is None or value > current[0] or (np.isnan(current[0]) and not np.isnan(value)):
                    best[m] = (value, na, nb)
    return best


__all__ = [
    "KNN_METRICS",
    "METRICS",
    "Features",
    "alignment_metrics",
    "cka",
    "cknna",
    "cycle_knn",
    "edit_distance_knn",
    "max_alignment",
    "mutual_knn",
    "unbiased_cka",
]
