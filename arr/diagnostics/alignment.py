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

Everything runs in torch on the features' device. Gram matrices and elementwise products are float32 (float64
inputs stay float64) and the HSIC sums accumulate in float64: the unbiased estimator subtracts terms of order
N^2 from each other. No N^3 product is formed, and CKNNA works on the k entries per row its mask keeps.
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
        self._cache: dict[Any, Any] = {}

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def _cached(self, key: Any, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def gram(self) -> Tensor:
        """K = X X^T [N, N] in the working dtype."""
        return self._cached("gram", lambda: self.x @ self.x.T)

    def knn(self, topk: int) -> Tensor:
        """[N, topk] indices of each row's nearest neighbours by inner product, best first, itself excluded."""
        return self._cached(("knn", topk), lambda: _topk_excluding_self(self.gram, topk, _SELF_FILL))

    def cknna_knn(self, topk: int) -> Tensor:
        """[N, topk] neighbour indices as CKNNA selects them (the diagonal set to -inf rather than -1e8)."""
        return self._cached(("cknna_knn", topk), lambda: _topk_excluding_self(self.gram, topk, float("-inf")))

    @property
    def centered(self) -> Tensor:
        """HKH, the doubly centred kernel (H = I - 11^T/n): tr(KHLH) = <HKH, (HLH)^T> as H is idempotent."""

        def make() -> Tensor:
            k = self.gram
            return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()

        return self._cached("centered", make)

    @property
    def zero_diag(self) -> Tensor:
        """K with a zero diagonal (K~ of the unbiased estimator)."""

        def make() -> Tensor:
            k = self.gram.clone()
            k.fill_diagonal_(0)
            return k

        return self._cached("zero_diag", make)

    @property
    def zero_diag_sums(self) -> tuple[Tensor, Tensor, Tensor]:
        """(sum, column sums, row sums) of K~ in float64."""

        def make() -> tuple[Tensor, Tensor, Tensor]:
            col = self.zero_diag.sum(dim=0).double()
            row = self.zero_diag.sum(dim=1).double()
            return row.sum(), col, row

        return self._cached("zero_diag_sums", make)

    def hsic_self(self, kind: str, topk: int = 0) -> Tensor:
        """HSIC of this kernel with itself ("biased", "unbiased", or "cknna" at `topk`), a float64 scalar."""

        def make() -> Tensor:
            if kind == "biased":
                return _hsic_biased(self, self)
            if kind == "unbiased":
                return _hsic_unbiased(self, self)
            return _cknna_hsic(self, self, topk)

        return self._cached(("hsic", kind, topk), make)


def _topk_excluding_self(gram: Tensor, topk: int, fill: float) -> Tensor:
    k = gram.clone()
    k.fill_diagonal_(fill)
    return torch.topk(k, topk, dim=1).indices


def _frobenius(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 - K and L are the papers' names
    """<K, L> = sum_ij K_ij L_ij as a float64 scalar.

    Per-row dot products in the working dtype (float32 like the reference), summed over rows in float64: the
    unbiased estimator subtracts sums of order N^2 from each other. Contiguous rows, no N^2 temporary.
    """
    return torch.linalg.vecdot(k, l).double().sum()


def _hsic_biased(fa: Features, fb: Features) -> Tensor:
    """tr(K H L H), unnormalised (the reference divides by nothing), in O(n^2) as <HKH, HLH>.

    tr(AB) = <A, B^T>, and B^T = B here: both are doubly centred Gram matrices, which are symmetric.
    """
    return _frobenius(fa.centered, fb.centered)


def _hsic_unbiased(fa: Features, fb: Features) -> Tensor:
    """Song et al.'s unbiased HSIC (eq. 5), divided by m(m-3) only, as the reference.

    tr(K~ L~) = <K~, L~> for symmetric kernels, and sum(K~ L~) = colsum(K~) . rowsum(L~) avoids the n^3 product.
    """
    m = len(fa)
    total_a, col_a, _ = fa.zero_diag_sums
    total_b, _, row_b = fb.zero_diag_sums
    value = (
        _frobenius(fa.zero_diag, fb.zero_diag)
        + total_a * total_b / ((m - 1) * (m - 2))
        - 2 * (col_a @ row_b) / (m - 2)
    )
    return value / (m * (m - 3))


def _cknna_hsic(fa: Features, fb: Features, topk: int) -> Tensor:
    """Unbiased HSIC of M*K and M*L, M = (row-wise top-k mask of K) * (row-wise top-k mask of L).

    M has at most k entries per row (and none on the diagonal), so every term of the estimator is a sum over
    those entries: O(N k^2) after the neighbour lists instead of N^2 dense masks. M is not symmetric, so
    tr(MK (ML)^T)'s terms need (j, i) in M as well as (i, j).
    """
    m = len(fa)
    ia, ib = fa.cknna_knn(topk), fb.cknna_knn(topk)
    keep = ia if fa is fb else ia.masked_fill(~(ia[:, :, None] == ib[:, None, :]).any(dim=2), -1)
    rows = torch.arange(m, device=ia.device).view(-1, 1).expand_as(keep)[keep >= 0]
    cols = keep[keep >= 0]
    kv = fa.gram[rows, cols].double()
    lv = fb.gram[rows, cols].double()
    keys = (rows * m + cols).sort().values
    transposed = cols * m + rows
    if len(keys):
        both = keys[torch.searchsorted(keys, transposed).clamp(max=len(keys) - 1)] == transposed
    else:  # no shared neighbours at all
        both = torch.zeros(0, dtype=torch.bool, device=keys.device)
    trace = (kv * fb.gram[cols, rows].double())[both].sum()
    col_k = torch.zeros(m, dtype=torch.float64, device=kv.device).index_add_(0, cols, kv)
    row_l = torch.zeros(m, dtype=torch.float64, device=kv.device).index_add_(0, rows, lv)
    value = trace + kv.sum() * lv.sum() / ((m - 1) * (m - 2)) - 2 * (col_k @ row_l) / (m - 2)
    return value / (m * (m - 3))


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
        kl = _hsic_biased(fa, fb) if name == "cka" else _hsic_unbiased(fa, fb)
        return float(kl / (torch.sqrt(fa.hsic_self(kind) * fb.hsic_self(kind)) + _EPS))
    if name == "cknna":
        topk = _check_topk(topk, n, minimum=2)
        if n < 4:
            raise ValueError(f"cknna needs at least 4 rows (it divides by N(N-3)), got {n}")
        kl = _cknna_hsic(fa, fb, topk)
        return float(kl / (torch.sqrt(fa.hsic_self("cknna", topk) * fb.hsic_self("cknna", topk)) + _EPS))
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
