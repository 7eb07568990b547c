"""Representational similarity metrics: pure functions of two matrices X (n, d1) and Y (n, d2).

Row i of X and row i of Y describe the same sample (word, context) in two representations
(two models, two layers). Every function accumulates in float64, validates its input with a
message that says what is wrong and how to fix it, and documents its formula, its reference and
its invariances. None prints or mutates its input.

Linear CKA is computed from d x d cross-products in O(n d^2) time and O(d^2) memory and streams
over batches (:class:`CKAAccumulator`); the other metrics build n x n matrices and are meant for
n up to about 20,000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import DataError

__all__ = [
    "CKAAccumulator",
    "linear_cka",
    "rbf_cka",
    "mutual_knn",
    "cknna",
    "svcca",
    "procrustes",
    "rsa",
    "cosine",
    "knn_jaccard",
    "feature_jaccard",
    "linear_cka_matrix",
    "GramSide",
    "debiased_cka_scan",
    "svcca_permutations",
    "knn_jaccard_permutations",
    "knn_indices",
    "mutual_knn_matrix",
    "feature_correlation",
    "match_features",
]


# --------------------------------------------------------------------------------------------
# Validation


def _as_matrix(X, name: str) -> np.ndarray:
    A = np.asarray(X)
    if A.ndim != 2:
        raise DataError(f"expected {name} as a 2-D array (n samples, d features), got shape {A.shape}; "
                        "reshape it, e.g. with X.reshape(n, -1)")
    if not np.issubdtype(A.dtype, np.number) or np.issubdtype(A.dtype, np.complexfloating):
        raise DataError(f"expected {name} to hold real numbers, got dtype {A.dtype}")
    if not np.isfinite(A).all():
        bad = int((~np.isfinite(A)).any(axis=1).sum())
        raise DataError(f"{name} has NaN or infinite values in {bad} row(s): expected finite numbers; "
                        "drop or impute those rows (in both X and Y) first")
    return A


def _pair(X, Y, min_n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    A, B = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if A.shape[0] != B.shape[0]:
        raise DataError(f"X and Y must have the same number of rows (one per sample), got {A.shape[0]} and "
                        f"{B.shape[0]}; align the samples of the two representations first")
    if A.shape[0] < min_n:
        raise DataError(f"{what} needs at least {min_n} samples, got {A.shape[0]}")
    for M, name in ((A, "X"), (B, "Y")):
        if np.ptp(M, axis=0).max() == 0:
            raise DataError(f"{name} is constant (every column has a single value), so {what} is undefined; "
                            "check that the representation was extracted correctly")
    return A, B


def _check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= n:
        raise DataError(f"{what} needs 1 <= k < n (the number of samples), got k={k!r} with n={n}; "
                        "use a smaller k or more samples")


# --------------------------------------------------------------------------------------------
# Linear CKA, streamed


@dataclass
class CKAAccumulator:
    """Mergeable sufficient statistics for linear CKA (biased and debiased) of paired batches.

    ``update(X, Y)`` adds a batch; ``merge(other)`` adds another accumulator's batches (the
    result equals one pass over all rows); ``value(debiased)`` returns CKA. Memory is
    O(d1^2 + d2^2 + d1 d2), independent of n. Rows are shifted by ``shift_x``/``shift_y`` before
    accumulating (CKA is translation invariant): a shift near the data's mean keeps float64 sums
    accurate for representations with a large mean. Accumulators merge only with equal shifts.
    """

    d1: int
    d2: int
    shift_x: np.ndarray | None = None
    shift_y: np.ndarray | None = None
    n: int = 0
    sx: np.ndarray = field(init=False)
    sy: np.ndarray = field(init=False)
    xx: np.ndarray = field(init=False)
    yy: np.ndarray = field(init=False)
    xy: np.ndarray = field(init=False)
    # For the debiased estimator: sums over rows of products of squared row norms.
    a: float = 0.0  # sum |x_i|^2
    b: float = 0.0  # sum |y_i|^2
    ab: float = 0.0  # sum |x_i|^2 |y_i|^2
    aa: float = 0.0  # sum |x_i|^4
    bb: float = 0.0  # sum |y_i|^4
    a_x: np.ndarray = field(init=False)  # sum |x_i|^2 x_i
    a_y: np.ndarray = field(init=False)  # sum |x_i|^2 y_i
    b_x: np.ndarray = field(init=False)  # sum |y_i|^2 x_i
    b_y: np.ndarray = field(init=False)  # sum |y_i|^2 y_i

    def __post_init__(self) -> None:
        d1, d2 = self.d1, self.d2
        self.shift_x = np.zeros(d1) if self.shift_x is None else np.asarray(self.shift_x, dtype=np.float64)
        self.shift_y = np.zeros(d2) if self.shift_y is None else np.asarray(self.shift_y, dtype=np.float64)
        self.sx, self.sy = np.zeros(d1), np.zeros(d2)
        self.xx, self.yy, self.xy = np.zeros((d1, d1)), np.zeros((d2, d2)), np.zeros((d1, d2))
        self.a_x, self.b_x = np.zeros(d1), np.zeros(d1)
        self.a_y, self.b_y = np.zeros(d2), np.zeros(d2)

    def update(self, X, Y) -> "CKAAccumulator":
        A, B = _as_matrix(X, "X"), _as_matrix(Y, "Y")
        if A.shape[0] != B.shape[0] or A.shape[1] != self.d1 or B.shape[1] != self.d2:
            raise DataError(f"expected a batch of shapes (m, {self.d1}) and (m, {self.d2}), got {A.shape} and {B.shape}")
        x = A.astype(np.float64) - self.shift_x
        y = B.astype(np.float64) - self.shift_y
        ra, rb = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.yy += y.T @ y
        self.xy += x.T @ y
        self.a += ra.sum()
        self.b += rb.sum()
        self.ab += ra @ rb
        self.aa += ra @ ra
        self.bb += rb @ rb
        self.a_x += ra @ x
        self.a_y += ra @ y
        self.b_x += rb @ x
        self.b_y += rb @ y
        return self

    def merge(self, other: "CKAAccumulator") -> "CKAAccumulator":
        if (self.d1, self.d2) != (other.d1, other.d2):
            raise DataError(f"cannot merge accumulators of shapes ({self.d1}, {self.d2}) and ({other.d1}, {other.d2})")
        if not (np.array_equal(self.shift_x, other.shift_x) and np.array_equal(self.shift_y, other.shift_y)):
            raise DataError("cannot merge accumulators with different shifts: create every shard's accumulator "
                            "with the same shift_x and shift_y")
        out = CKAAccumulator(self.d1, self.d2, self.shift_x, self.shift_y)
        for name in ("n", "sx", "sy", "xx", "yy", "xy", "a", "b", "ab", "aa", "bb", "a_x", "a_y", "b_x", "b_y"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out

    def _centered(self):
        """Centred cross-products and the row-norm statistics of the centred rows."""
        n = self.n
        mx, my = self.sx / n, self.sy / n
        cxx = self.xx - n * np.outer(mx, mx)
        cyy = self.yy - n * np.outer(my, my)
        cxy = self.xy - n * np.outer(mx, my)
        # |x_i - mx|^2 = a_i - 2 x_i.mx + |mx|^2 =: a_i + p_i; sums of products over rows follow.
        mxx, myy = mx @ mx, my @ my
        ta = self.a - n * mxx  # sum of centred |x_i|^2 (= trace of centred K)
        tb = self.b - n * myy
        # sum_i (a_i - 2 x_i.mx + mxx) (b_i - 2 y_i.my + myy)
        s_ab = (self.ab - 2 * self.a_y @ my + myy * self.a
                - 2 * self.b_x @ mx + 4 * mx @ self.xy @ my - 2 * myy * (self.sx @ mx)
                + mxx * self.b - 2 * mxx * (self.sy @ my) + n * mxx * myy)
        s_aa = (self.aa - 4 * self.a_x @ mx + 2 * mxx * self.a
                + 4 * mx @ self.xx @ mx - 4 * mxx * (self.sx @ mx) + n * mxx**2)
        s_bb = (self.bb - 4 * self.b_y @ my + 2 * myy * self.b
                + 4 * my @ self.yy @ my - 4 * myy * (self.sy @ my) + n * myy**2)
        return cxx, cyy, cxy, ta, tb, s_ab, s_aa, s_bb

    def value(self, debiased: bool = False) -> float:
        """Linear CKA of everything accumulated so far."""
        n = self.n
        if n < (4 if debiased else 2):
            raise DataError(f"{'debiased ' if debiased else ''}linear CKA needs at least {4 if debiased else 2} "
                            f"samples, got {n}")
        cxx, cyy, cxy, ta, tb, s_ab, s_aa, s_bb = self._centered()
        hxy, hxx, hyy = np.sum(cxy * cxy), np.sum(cxx * cxx), np.sum(cyy * cyy)
        if debiased:
            hxy = _unbiased_hsic(hxy, s_ab, ta, tb, n)
            hxx = _unbiased_hsic(hxx, s_aa, ta, ta, n)
            hyy = _unbiased_hsic(hyy, s_bb, tb, tb, n)
        denom = np.sqrt(hxx * hyy) if hxx > 0 and hyy > 0 else 0.0
        if denom == 0:
            raise DataError("linear CKA is undefined: one representation has no variance left after centring")
        return float(hxy / denom)


def _unbiased_hsic(tr_kl: float, diag_kl: float, tr_k: float, tr_l: float, n: int) -> float:
    """n(n-3) times Song et al.'s unbiased HSIC, for centred linear kernels, from feature-space sums.

    With K = X X^T, L = Y Y^T of column-centred X, Y (so K 1 = L 1 = 0), the estimator
    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1], K~ = K with zero diagonal, is
    ||X^T Y||_F^2 - n/(n-2) diag(K).diag(L) + tr(K) tr(L) / ((n-1)(n-2)). The common factor
    1/(n(n-3)) cancels in CKA.
    """
    return tr_kl - n / (n - 2) * diag_kl + tr_k * tr_l / ((n - 1) * (n - 2))


def linear_cka(X, Y, debiased: bool = False, batch_size: int = 8192) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019).

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc. With
    ``debiased`` the three HSIC terms use the unbiased estimator of Song et al. (2012), which
    removes the bias towards 1 at small n / large d (independent data give ~0, not a positive
    value). Computed from d x d cross-products in batches of ``batch_size`` rows: O(n d^2) time,
    O(d^2) memory beyond the inputs.

    Invariant to orthogonal transforms and isotropic scaling of X or Y, to translations, and to
    a permutation of samples applied to both; not invariant to general invertible linear maps.
    Needs n >= 2 (n >= 4 debiased).
    """
    A, B = _pair(X, Y, 4 if debiased else 2, "debiased linear CKA" if debiased else "linear CKA")
    shift_x = A[: min(len(A), batch_size)].mean(0, dtype=np.float64)
    shift_y = B[: min(len(B), batch_size)].mean(0, dtype=np.float64)
    acc = CKAAccumulator(A.shape[1], B.shape[1], shift_x, shift_y)
    for i in range(0, len(A), batch_size):
        acc.update(A[i : i + batch_size], B[i : i + batch_size])
    return acc.value(debiased)


# --------------------------------------------------------------------------------------------
# Gram-matrix metrics


def _self_gram(A: np.ndarray) -> np.ndarray:
    """A @ A.T through a general matrix product: numpy sends ``A @ A.T`` to BLAS syrk, which in the
    OpenBLAS build numpy ships crashed (segmentation fault) here for n = 20,000 on two threads."""
    A = np.asarray(A, dtype=np.float64)
    return A @ np.ascontiguousarray(A.T)


def _center_gram(K: np.ndarray) -> np.ndarray:
    m = K.mean(0)
    return K - m[None, :] - m[:, None] + m.mean()


def rbf_cka(X, Y, sigma: float = 0.8) -> float:
    """CKA with Gaussian (RBF) kernels (Kornblith et al. 2019).

    k(x, x') = exp(-||x - x'||^2 / (2 s^2)) with s = ``sigma`` times the median pairwise distance
    (computed per representation). CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the biased
    HSIC tr(K H L H). Invariant to orthogonal transforms, isotropic scaling (the bandwidth scales
    with the data) and translation; builds n x n matrices.
    """
    A, B = _pair(X, Y, 3, "RBF CKA")
    if not sigma > 0:
        raise DataError(f"sigma must be positive (a fraction of the median distance), got {sigma!r}")

    def gram(M):
        M = M.astype(np.float64)
        sq = np.einsum("ij,ij->i", M, M)
        D = np.maximum(sq[:, None] + sq[None, :] - 2 * _self_gram(M), 0)
        med = np.median(np.sqrt(D[np.triu_indices(len(M), 1)]))
        return np.exp(-D / (2 * (sigma * med) ** 2))

    K, L = _center_gram(gram(A)), _center_gram(gram(B))
    return float(np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L)))


def _unit_rows(M: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64."""
    M = M.astype(np.float64)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.where(norms > 0, norms, 1)


def _knn(M: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Indices (n, k) of each row's k nearest neighbours by cosine similarity, self excluded."""
    U = _unit_rows(M)
    out = np.empty((len(M), k), dtype=np.int64)
    for i in range(0, len(M), block):
        S = U[i : i + block] @ U.T
        S[np.arange(len(S)), np.arange(i, i + len(S))] = -np.inf
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        out[i : i + block] = part
    return out


def mutual_knn(X, Y, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024, the platonic representation hypothesis).

    For each sample, the fraction of its k nearest neighbours (cosine similarity, self excluded)
    in X that are also among its k nearest neighbours in Y; averaged over samples. In [0, 1];
    about k / (n - 1) for unrelated representations. Invariant to orthogonal transforms and
    scaling (of each row or of all); not to translation (cosine neighbourhoods move with the origin).
    """
    A, B = _pair(X, Y, 2, "mutual k-NN")
    _check_k(k, len(A), "mutual k-NN")
    na, nb = _knn(A, k), _knn(B, k)
    hits = [len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(na, nb)]
    return float(np.mean(hits) / k)


def knn_jaccard(X, Y, k: int = 10) -> float:
    """Mean Jaccard overlap |N_X(i) ∩ N_Y(i)| / |N_X(i) ∪ N_Y(i)| of the k-NN sets (cosine, self excluded).

    In [0, 1]; 1 when the neighbourhoods agree. Same invariances as :func:`mutual_knn`.
    """
    A, B = _pair(X, Y, 2, "k-NN Jaccard")
    _check_k(k, len(A), "k-NN Jaccard")
    na, nb = _knn(A, k), _knn(B, k)
    inter = np.array([len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(na, nb)])
    return float(np.mean(inter / (2 * k - inter)))


def knn_jaccard_permutations(X, Y, permutations: Sequence[np.ndarray], k: int = 10) -> tuple[float, np.ndarray]:
    """:func:`knn_jaccard` of X and Y and of X against Y with its rows re-paired by each permutation.

    Re-pairing the samples relabels Y's neighbour sets (row i of Y[p] has the neighbours
    p^-1(N_Y(p(i)))), so both neighbour searches run once and each draw is one overlap count."""
    A, B = _pair(X, Y, 2, "k-NN Jaccard")
    _check_k(k, len(A), "k-NN Jaccard")
    na, nb = _knn(A, k), _knn(B, k)

    def jaccard(nbp: np.ndarray) -> float:
        inter = _overlap(na, nbp)
        return float(np.mean(inter / (2 * k - inter)))

    null = []
    for p in permutations:
        p = np.asarray(p)
        inv = np.empty_like(p)
        inv[p] = np.arange(len(p))
        null.append(jaccard(inv[nb[p]]))
    return jaccard(nb), np.array(null)


def cknna(X, Y, k: int = 10, normalize: bool = True) -> float:
    """Centred kernel nearest-neighbour alignment (Huh et al. 2024), as their reference code defines it.

    Rows are L2-normalised first (``normalize=True``, as platonic-rep does before every metric), so
    a few high-norm rows cannot become everyone's neighbours. With linear kernels K = X X^T,
    L = Y Y^T, the mask M_K keeps entry (i, j) when j is among the k largest K[i, :] (self
    excluded), likewise M_L, and M = M_K * M_L. Then

        CKNNA = HSIC(M∘K, M∘L) / sqrt(HSIC(M_K∘K, M_K∘K) HSIC(M_L∘L, M_L∘L))

    with Song et al.'s unbiased HSIC(A, B) = [tr(Ã B̃^T) + 1^T Ã 1 1^T B̃ 1 / ((n-1)(n-2))
    - 2 1^T Ã B̃ 1 / (n-2)] / (n(n-3)), Ã and B̃ with zeroed diagonals (the masked kernels are
    not symmetric, so the transpose matters). The reference adds 1e-6 to the denominator; this
    does not. NaN when a self-HSIC is not positive. Invariant to orthogonal transforms and to
    scaling any row (with ``normalize``); not to translation. Builds n x n matrices.
    """
    A, B = _pair(X, Y, 4, "CKNNA")
    _check_k(k, len(A), "CKNNA")
    n = len(A)
    if normalize:
        A, B = _unit_rows(A), _unit_rows(B)
    K, L = _self_gram(A), _self_gram(B)

    def mask(G):
        H = G.copy()
        np.fill_diagonal(H, -np.inf)
        idx = np.argpartition(-H, k - 1, axis=1)[:, :k]
        Mk = np.zeros_like(G, dtype=bool)
        Mk[np.arange(n)[:, None], idx] = True
        return Mk

    MK, ML = mask(K), mask(L)
    M = MK & ML
    kl = _hsic_unbiased_gram(K * M, L * M)
    kk = _hsic_unbiased_gram(K * MK, K * MK)
    ll = _hsic_unbiased_gram(L * ML, L * ML)
    if kk <= 0 or ll <= 0:
        return float("nan")
    return float(kl / np.sqrt(kk * ll))


def _hsic_unbiased_gram(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC from two n x n kernel matrices (diagonals ignored; need not be symmetric)."""
    n = len(K)
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    t = np.sum(K * L.T) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (K.sum(0) @ L.sum(1))
    return float(t / (n * (n - 3)))


# --------------------------------------------------------------------------------------------
# Subspace and geometry metrics


def svcca(X, Y, keep: float = 0.99, max_dims: int | None = None, seed: int = 0) -> float:
    """Singular vector CCA (Raghu et al. 2017), cross-validated: fit on half the samples, score on the other.

    In-sample SVCCA is about 1 for independent data whenever the kept directions approach the number
    of samples (two independent 640-d Gaussians score 0.98 at n = 100), so here the samples are split
    in two halves at random (``seed``). On one half each centred representation keeps its top
    singular directions explaining ``keep`` of its variance (``keep`` >= 1: that many directions),
    at most ``max_dims`` (default: the half's size minus 2, so the kept directions never span the
    whole sample space, where canonical directions become arbitrary), and CCA between the reduced
    representations gives canonical direction pairs; the score is the mean correlation of those
    pairs on the other half (centred with the first half's means), averaged over both ways round.
    About 0 for independent data at any n (it can be slightly negative), about 1 when Y is an
    invertible linear map of X plus small noise. Invariant to orthogonal transforms, isotropic
    scaling and translation. Needs at least 8 samples.
    """
    A, B = _pair(X, Y, 8, "SVCCA")
    return float(svcca_permutations(A, B, [None], keep, max_dims, seed)[0])


def _svcca_reduce(M: np.ndarray, keep: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the top singular directions (d, r) keeping ``keep`` of the variance, r <= cap."""
    mean = M.mean(0)
    _, s, Vt = np.linalg.svd(M - mean, full_matrices=False)
    s2 = s**2
    if keep >= 1:
        r = int(min(keep, (s > s[0] * 1e-12).sum()))
    else:
        r = int(np.searchsorted(np.cumsum(s2) / s2.sum(), keep) + 1)
    r = max(1, min(r, cap, int((s > s[0] * 1e-12).sum())))
    return mean, Vt[:r].T


def _inv_sqrt(C: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh((C + C.T) / 2)
    w = np.maximum(w, w.max() * 1e-12)
    return (V / np.sqrt(w)) @ V.T


def _svcca_one_way(A: np.ndarray, B: np.ndarray, fit: np.ndarray, test: np.ndarray,
                   ra: tuple[np.ndarray, np.ndarray], rb: tuple[np.ndarray, np.ndarray]) -> float:
    (ma, Va), (mb, Vb) = ra, rb
    Ra, Rb = (A[fit] - ma) @ Va, (B[fit] - mb) @ Vb
    Wa, Wb = _inv_sqrt(Ra.T @ Ra), _inv_sqrt(Rb.T @ Rb)
    U, _, Vt = np.linalg.svd(Wa @ Ra.T @ Rb @ Wb)
    m = min(Va.shape[1], Vb.shape[1])
    Pa = (A[test] - ma) @ Va @ Wa @ U[:, :m]
    Pb = (B[test] - mb) @ Vb @ Wb @ Vt.T[:, :m]
    Pa, Pb = Pa - Pa.mean(0), Pb - Pb.mean(0)
    den = np.linalg.norm(Pa, axis=0) * np.linalg.norm(Pb, axis=0)
    corr = np.where(den > 0, np.einsum("ij,ij->j", Pa, Pb) / np.where(den > 0, den, 1), 0.0)
    return float(corr.mean())


def svcca_permutations(X, Y, permutations: Sequence[np.ndarray | None], keep: float = 0.99,
                       max_dims: int | None = None, seed: int = 0) -> np.ndarray:
    """:func:`svcca` of X against Y with its rows re-paired by each permutation (None: as given).

    The halves are the same for every draw (``seed``), so X's reductions on each half are computed
    once; each draw reduces only Y's re-paired halves."""
    A, B = _pair(X, Y, 8, "SVCCA")
    A, B = A.astype(np.float64), B.astype(np.float64)
    n = len(A)
    perm = np.random.default_rng([seed, 0x5CCA]).permutation(n)
    halves = (perm[: n // 2], perm[n // 2:])
    cap = max(1, n // 2 - 2) if max_dims is None else int(max_dims)
    ra = [_svcca_reduce(A[h], keep, cap) for h in halves]
    out = []
    for p in permutations:
        Bp = B if p is None else B[np.asarray(p)]
        rb = [_svcca_reduce(Bp[h], keep, cap) for h in halves]
        out.append((_svcca_one_way(A, Bp, halves[0], halves[1], ra[0], rb[0])
                    + _svcca_one_way(A, Bp, halves[1], halves[0], ra[1], rb[1])) / 2)
    return np.array(out)


def procrustes(X, Y) -> float:
    """Orthogonal Procrustes distance (Schönemann 1966; as a shape metric, Williams et al. 2021).

    With Xc, Yc column-centred and scaled to unit Frobenius norm (zero-padded to a common width),
    d = min over orthogonal Q of ||Xc - Yc Q||_F = sqrt(2 - 2 ||Xc^T Yc||_*), ||.||_* the nuclear
    norm. 0 for representations equal up to rotation, translation and scale; at most sqrt(2).
    Symmetric; invariant to orthogonal transforms, isotropic scaling and translation.
    """
    A, B = _pair(X, Y, 2, "Procrustes distance")

    def norm(M):
        Mc = M.astype(np.float64) - M.mean(0, dtype=np.float64)
        return Mc / np.linalg.norm(Mc)

    nuc = np.linalg.svd(norm(A).T @ norm(B), compute_uv=False).sum()
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * nuc)))


def _check_rows_vary(A: np.ndarray, B: np.ndarray) -> None:
    """RSA's correlation distance needs rows that are not constant."""
    for M, name in ((A, "X"), (B, "Y")):
        const = np.ptp(M, axis=1) == 0
        if const.any():
            raise DataError(f"{name} has {int(const.sum())} constant row(s) (e.g. row {int(np.argmax(const))}): the "
                            "correlation distance is undefined for them; drop those samples from X and Y")


def rsa(X, Y, method: str = "spearman") -> float:
    """Representational similarity analysis (Kriegeskorte et al. 2008).

    Each representation's dissimilarity matrix is 1 - Pearson correlation between the samples'
    vectors; the score is the Spearman (or Pearson) correlation of the two matrices' upper
    triangles. Invariant to permutations of samples applied to both, and to any per-sample
    affine change of a row (a correlation distance), hence to isotropic scaling; not to general
    rotations of the feature space when rows are not centred. Rows must not be constant.
    """
    from scipy.stats import pearsonr, spearmanr

    A, B = _pair(X, Y, 3, "RSA")
    if method not in ("spearman", "pearson"):
        raise DataError(f"unknown method {method!r}: expected 'spearman' or 'pearson'")
    _check_rows_vary(A, B)
    iu = np.triu_indices(len(A), 1)
    da, db = (1 - np.corrcoef(A.astype(np.float64)))[iu], (1 - np.corrcoef(B.astype(np.float64)))[iu]
    return float((spearmanr if method == "spearman" else pearsonr)(da, db)[0])


def cosine(A, B) -> np.ndarray:
    """Cosine similarity of matched directions: row i of A against row i of B (same width).

    Returns an array of n cosines in [-1, 1]. Invariant to positive scaling of either row and to
    one orthogonal transform applied to both.
    """
    P, Q = _as_matrix(A, "A").astype(np.float64), _as_matrix(B, "B").astype(np.float64)
    if P.shape != Q.shape:
        raise DataError(f"matched directions need equal shapes, got {P.shape} and {Q.shape}; "
                        "map both into one space first")
    na, nb = np.linalg.norm(P, axis=1), np.linalg.norm(Q, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise DataError("cosine is undefined for a zero vector; drop the zero rows first")
    return np.einsum("ij,ij->i", P, Q) / (na * nb)


def feature_jaccard(A, B, threshold: float = 0.0) -> np.ndarray:
    """Jaccard overlap of the samples on which two features fire (activation > ``threshold``).

    ``A`` (n, f1) and ``B`` (n, f2) are feature activations on the same n samples; the result is
    the (f1, f2) matrix |S_a ∩ S_b| / |S_a ∪ S_b|, with 1-D inputs a single number. Invariant to
    permutations of samples applied to both and to positive scaling of a feature (threshold 0).
    A pair of features that never fire has no Jaccard index (NaN).
    """
    a1, b1 = np.ndim(A) == 1, np.ndim(B) == 1
    P = _as_matrix(np.reshape(A, (-1, 1)) if a1 else A, "A") > threshold
    Q = _as_matrix(np.reshape(B, (-1, 1)) if b1 else B, "B") > threshold
    if P.shape[0] != Q.shape[0]:
        raise DataError(f"A and B must have the same number of rows (samples), got {P.shape[0]} and {Q.shape[0]}")
    inter = P.T.astype(np.float64) @ Q.astype(np.float64)
    union = P.sum(0)[:, None] + Q.sum(0)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        J = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    return J[0, 0] if a1 and b1 else J


# --------------------------------------------------------------------------------------------
# Many pairs at once: layer x layer scans


@dataclass(frozen=True)
class _Centred:
    """A representation prepared for many CKA pairs: centred rows, squared row norms, self-HSIC."""

    Xc: np.ndarray
    r: np.ndarray
    h_biased: float
    h_debiased: float


def _prepare(X, name: str, dtype=np.float64) -> _Centred:
    A = _as_matrix(X, name).astype(np.float64)
    Xc = A - A.mean(0)
    r = np.einsum("ij,ij->i", Xc, Xc)
    Xc = Xc.astype(dtype, copy=False)
    g = (Xc.T @ Xc).astype(np.float64)
    hb = float(np.sum(g * g))
    return _Centred(Xc, r, hb, _unbiased_hsic(hb, float(r @ r), float(r.sum()), float(r.sum()), len(A)))


def linear_cka_matrix(As, Bs, debiased: bool = False, permutation=None, dtype=np.float64) -> np.ndarray:
    """Linear CKA of every pair (As[i], Bs[j]): entry (i, j) equals ``linear_cka(As[i], Bs[j], debiased)``.

    ``As`` and ``Bs`` are sequences of (n, d) arrays over the same n samples (the layers of two
    models). Each representation is centred once, so a scan costs one d_i x d_j cross-product
    per pair. ``permutation`` (an index array of length n) re-pairs the samples of every B
    (row p[k] of B goes with row k of A): the shuffled-pairing null, for which CKA measures
    only what survives without correspondence (debiased: about 0). Centring, row norms and all
    sums are float64; ``dtype=np.float32`` computes the d_i x d_j products in single precision
    (about twice as fast; CKA values agree to about 1e-5).
    """
    As, Bs = list(As), list(Bs)
    if not As or not Bs:
        raise DataError("linear_cka_matrix needs at least one representation on each side")
    n = len(np.asarray(As[0]))
    for M in As + Bs:
        if len(np.asarray(M)) != n:
            raise DataError(f"every representation must have the same number of rows (one per sample), got {n} and "
                            f"{len(np.asarray(M))}; align the samples first")
    min_n = 4 if debiased else 2
    if n < min_n:
        raise DataError(f"{'debiased ' if debiased else ''}linear CKA needs at least {min_n} samples, got {n}")
    pa = [_prepare(M, f"As[{i}]", dtype) for i, M in enumerate(As)]
    pb = [_prepare(M, f"Bs[{j}]", dtype) for j, M in enumerate(Bs)]
    return _cka_prepared(pa, pb, debiased, permutation)


def _cka_prepared(pa: Sequence[_Centred], pb: Sequence[_Centred], debiased: bool, permutation=None) -> np.ndarray:
    n = len(pa[0].r)
    if permutation is not None:
        perm = np.asarray(permutation)
        if sorted(perm.tolist()) != list(range(n)):
            raise DataError(f"permutation must be a rearrangement of 0..{n - 1}")
        pb = [_Centred(p.Xc[perm], p.r[perm], p.h_biased, p.h_debiased) for p in pb]
    out = np.empty((len(pa), len(pb)))
    for i, a in enumerate(pa):
        for j, b in enumerate(pb):
            c = (a.Xc.T @ b.Xc).astype(np.float64)
            h = float(np.sum(c * c))
            if debiased:
                h = _unbiased_hsic(h, float(a.r @ b.r), float(a.r.sum()), float(b.r.sum()), n)
                denom = a.h_debiased * b.h_debiased
            else:
                denom = a.h_biased * b.h_biased
            if denom <= 0:
                raise DataError(f"linear CKA is undefined for pair ({i}, {j}): a representation has no variance")
            out[i, j] = h / np.sqrt(denom)
    return out


def knn_indices(X, k: int = 10) -> np.ndarray:
    """Indices (n, k) of each sample's k nearest neighbours by cosine similarity, self excluded."""
    A = _as_matrix(X, "X")
    _check_k(k, len(A), "k-NN")
    return _knn(A, k)


def _overlap(na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    return (na[:, :, None] == nb[:, None, :]).sum((1, 2))


def mutual_knn_matrix(neighbours_a, neighbours_b, permutation=None) -> np.ndarray:
    """Mutual k-NN alignment of every pair of precomputed neighbour sets (from :func:`knn_indices`).

    Entry (i, j) equals ``mutual_knn(A_i, B_j, k)``. ``permutation`` re-pairs the samples of
    every B as in :func:`linear_cka_matrix` (the shuffled-pairing null: about k / (n - 1)).
    """
    na_list, nb_list = [np.asarray(a) for a in neighbours_a], [np.asarray(b) for b in neighbours_b]
    shapes = {a.shape for a in na_list + nb_list}
    if len(shapes) != 1:
        raise DataError(f"neighbour sets must all have the same shape (n, k), got {sorted(shapes)}")
    if permutation is not None:
        perm = np.asarray(permutation)
        inv = np.empty_like(perm)
        inv[perm] = np.arange(len(perm))
        nb_list = [inv[b[perm]] for b in nb_list]
    k = na_list[0].shape[1]
    return np.array([[_overlap(a, b).mean() / k for b in nb_list] for a in na_list])


# --------------------------------------------------------------------------------------------
# SAE feature matching


def feature_correlation(A, B, batch_size: int = 8192) -> np.ndarray:
    """Pearson correlation (f1, f2) between the features of A (n, f1) and B (n, f2) over the samples.

    Accumulated in float64 over row batches. A feature that is constant on these samples (dead)
    has no correlation: its row or column is NaN.
    """
    P, Q = _as_matrix(A, "A"), _as_matrix(B, "B")
    if len(P) != len(Q):
        raise DataError(f"A and B must have the same number of rows (samples), got {len(P)} and {len(Q)}")
    if len(P) < 2:
        raise DataError(f"feature correlation needs at least 2 samples, got {len(P)}")
    n = len(P)
    sa, sb = np.zeros(P.shape[1]), np.zeros(Q.shape[1])
    qa, qb = np.zeros(P.shape[1]), np.zeros(Q.shape[1])
    ab = np.zeros((P.shape[1], Q.shape[1]))
    for i in range(0, n, batch_size):
        x, y = P[i : i + batch_size].astype(np.float64), Q[i : i + batch_size].astype(np.float64)
        sa += x.sum(0)
        sb += y.sum(0)
        qa += np.einsum("ij,ij->j", x, x)
        qb += np.einsum("ij,ij->j", y, y)
        ab += x.T @ y
    cov = ab / n - np.outer(sa / n, sb / n)
    va, vb = qa / n - (sa / n) ** 2, qb / n - (sb / n) ** 2
    tiny = 1e-12
    sd_a = np.where(va > tiny * max(va.max(), tiny), np.sqrt(np.maximum(va, 0)), np.nan)
    sd_b = np.where(vb > tiny * max(vb.max(), tiny), np.sqrt(np.maximum(vb, 0)), np.nan)
    return np.clip(cov / np.outer(sd_a, sd_b), -1, 1)


def match_features(C, method: str = "hungarian") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair features by correlation C (f1, f2), NaN rows/columns (dead features) left out.

    ``"greedy"``: every feature of A takes its most correlated feature of B (several may take
    the same one). ``"hungarian"``: a one-to-one pairing that maximises the summed correlation
    (scipy's linear_sum_assignment). Returns (index in A, index in B, correlation), sorted by
    decreasing correlation.
    """
    M = np.asarray(C, dtype=np.float64)
    if M.ndim != 2:
        raise DataError(f"expected a 2-D correlation matrix, got shape {M.shape}")
    rows = np.flatnonzero(~np.isnan(M).all(1))
    cols = np.flatnonzero(~np.isnan(M).all(0))
    if not len(rows) or not len(cols):
        raise DataError("no live features to match: every feature of one SAE is constant on these samples; "
                        "use more text or check the SAEs")
    S = np.nan_to_num(M[np.ix_(rows, cols)], nan=-1.0)
    if method == "greedy":
        j = S.argmax(1)
        ia, ib = rows, cols[j]
    elif method == "hungarian":
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(S, maximize=True)
        ia, ib = rows[r], cols[c]
    else:
        raise DataError(f"unknown matching method {method!r}: expected 'greedy' or 'hungarian'")
    corr = M[ia, ib]
    order = np.argsort(-corr, kind="stable")
    return ia[order], ib[order], corr[order]


# --------------------------------------------------------------------------------------------
# Permutation nulls from Gram matrices


def _repair(K: np.ndarray, p: np.ndarray) -> np.ndarray:
    """K[p][:, p]: a square matrix with its samples re-paired (two takes; 2.5x faster than np.ix_)."""
    return K.take(p, axis=0).take(p, axis=1)


def _centred_gram(X, dtype=np.float32) -> np.ndarray:
    A = np.asarray(X, dtype=np.float64)
    return _self_gram(A - A.mean(0)).astype(dtype)


def _cka_terms(K: np.ndarray) -> dict[str, Any]:
    """What linear CKA (biased and debiased) of K against any re-pairing of another Gram needs."""
    n = len(K)
    diag = np.diag(K).astype(np.float64)
    r = K.sum(1, dtype=np.float64) - diag  # row sums with the diagonal zeroed
    s = float(r.sum())
    full = float(np.sum(K.astype(np.float64) ** 2))
    tr_tilde = full - float(diag @ diag)
    self_u = (tr_tilde + s * s / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(r @ r)) / (n * (n - 3))
    return {"diag": diag, "r": r, "s": s, "self_b": full, "self_u": self_u, "n": n}


def linear_cka_permutations(X, Y, permutations: Sequence[np.ndarray]) -> dict[str, Any]:
    """Linear CKA and its debiased form for X against Y and against Y with its rows re-paired by
    each permutation, from the two n x n Gram matrices: one gather and one dot per permutation,
    instead of an n x d x d product. Returns ``{"linear_cka", "linear_cka_debiased"}`` observed
    values and ``{"..._null"}`` arrays; agrees with :func:`linear_cka` on ``(X, Y[perm])``.

    Centred Grams K = Xc Xc^T and L = Yc Yc^T; biased HSIC = sum(K * L); the unbiased HSIC
    (Song et al. 2012) uses K and L with zeroed diagonals. Re-pairing Y by pi turns L into
    L[pi][:, pi], which keeps every term but the two products with K.
    """
    A, B = _pair(X, Y, 4, "linear CKA")
    n = len(A)
    K, L = _centred_gram(A), _centred_gram(B)
    tk, tl = _cka_terms(K), _cka_terms(L)
    if tk["self_b"] <= 0 or tl["self_b"] <= 0:
        raise DataError("linear CKA is undefined: a representation has no variance")

    def both(Lp: np.ndarray, diag_l: np.ndarray, r_l: np.ndarray) -> tuple[float, float]:
        t = float(np.dot(K.ravel(), Lp.ravel()))
        b = t / np.sqrt(tk["self_b"] * tl["self_b"])
        tt = t - float(tk["diag"] @ diag_l)
        u = (tt + tk["s"] * tl["s"] / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(tk["r"] @ r_l)) / (n * (n - 3))
        den = tk["self_u"] * tl["self_u"]
        return b, (u / np.sqrt(den) if den > 0 else float("nan"))

    obs = both(L, tl["diag"], tl["r"])
    nb, nu = [], []
    for p in permutations:
        p = np.asarray(p)
        b, u = both(_repair(L, p), tl["diag"][p], tl["r"][p])
        nb.append(b)
        nu.append(u)
    return {"linear_cka": obs[0], "linear_cka_debiased": obs[1], "linear_cka_null": np.array(nb),
            "linear_cka_debiased_null": np.array(nu)}


class GramSide:
    """The centred linear Gram matrices of several representations of the same n samples (the
    layers of one model), with the sums debiased CKA needs: prepared once, then any number of
    scans against another side, re-paired or not, cost one (L_a x n^2) @ (n^2 x L_b) product each.

    The Grams are float32 (n^2 x 4 bytes per layer: 52 MB at n = 3,609), computed in float64 from
    centred rows; row sums, diagonals and self-HSICs are float64.
    """

    def __init__(self, Xs: Sequence[np.ndarray]) -> None:
        Xs = [np.asarray(x) for x in Xs]
        if not Xs:
            raise DataError("a Gram side needs at least one representation")
        n = len(Xs[0])
        if n < 4:
            raise DataError(f"debiased linear CKA needs at least 4 samples, got {n}")
        self.n = n
        self.F = np.empty((len(Xs), n * n), dtype=np.float32)  # each row is one layer's Gram, flattened
        self.D = np.empty((len(Xs), n))
        self.R = np.empty((len(Xs), n))
        self.S = np.empty(len(Xs))
        self.U = np.empty(len(Xs))
        for i, x in enumerate(Xs):
            if len(x) != n:
                raise DataError(f"every representation must have the same number of rows (one per sample), got {n} "
                                f"and {len(x)}; align the samples first")
            K = _centred_gram(x)
            t = _cka_terms(K)
            self.F[i] = K.ravel()
            self.D[i], self.R[i], self.S[i], self.U[i] = t["diag"], t["r"], t["s"], t["self_u"]

    def __len__(self) -> int:
        return len(self.F)

    def gram(self, i: int) -> np.ndarray:
        return self.F[i].reshape(self.n, self.n)

    def repaired(self, q: np.ndarray, buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(F, D, R) with the samples re-paired by ``q`` (K[q][:, q] for every layer), into ``buf``."""
        buf = np.empty_like(self.F) if buf is None else buf
        for i in range(len(self.F)):
            self.gram(i).take(q, axis=0).take(q, axis=1, out=buf[i].reshape(self.n, self.n))
        return buf, self.D[:, q], self.R[:, q]


def debiased_cka_scan(A: GramSide, B: GramSide, permutation: np.ndarray | None = None,
                      buffer: np.ndarray | None = None) -> np.ndarray:
    """Debiased linear CKA of every pair of ``A``'s and ``B``'s representations, (len(A), len(B));
    ``permutation`` re-pairs B's samples (row p[k] of B goes with row k of A). Agrees with
    :func:`linear_cka_matrix` (``debiased=True``).

    Re-pairing B by p equals re-pairing A by p's inverse (sum K_ij L_p(i)p(j) = sum K_q(i)q(j) L_ij
    with q = p^-1), so the side with fewer layers is the one gathered (into ``buffer`` if given).
    """
    n = A.n
    if B.n != n:
        raise DataError(f"the two sides hold different samples: {n} and {B.n} rows")
    (FA, DA, RA), (FB, DB, RB) = (A.F, A.D, A.R), (B.F, B.D, B.R)
    if permutation is not None:
        p = np.asarray(permutation)
        if len(A) < len(B):
            FA, DA, RA = A.repaired(np.argsort(p), buffer)
        else:
            FB, DB, RB = B.repaired(p, buffer)
    T = (FA @ FB.T).astype(np.float64) - DA @ DB.T
    U = (T + np.outer(A.S, B.S) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (RA @ RB.T)) / (n * (n - 3))
    den = np.sqrt(np.outer(A.U, B.U))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, U / den, np.nan)


def cka_scan_max_null(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray], permutations: Sequence[np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Debiased linear CKA of every layer pair, and for each permutation (the same re-pairing of
    the samples for every pair) the largest debiased CKA over all pairs: the max-statistic null
    for choosing the best pair of a scan. Returns (scan (len(As), len(Bs)), maxima (n_perms,)).
    """
    A, B = GramSide(As), GramSide(Bs)
    buf = np.empty_like(A.F if len(A) < len(B) else B.F)  # one reused buffer for the gathered Grams
    obs = debiased_cka_scan(A, B)
    maxima = np.array([np.nanmax(debiased_cka_scan(A, B, np.asarray(p), buf)) for p in permutations])
    return obs, maxima


def rsa_permutations(X, Y, permutations: Sequence[np.ndarray]) -> tuple[float, np.ndarray]:
    """Spearman RSA of X and Y (as :func:`rsa`) and of X against Y with its rows re-paired by each
    permutation. The ranks of Y's dissimilarities are taken once: re-pairing the samples permutes
    the rank matrix, so each draw is one gather and one dot product."""
    from scipy.stats import rankdata

    A, B = _pair(X, Y, 3, "RSA")
    _check_rows_vary(A, B)
    n = len(A)
    iu = np.triu_indices(n, 1)

    def rank_matrix(M: np.ndarray) -> np.ndarray:
        r = rankdata((1 - np.corrcoef(M.astype(np.float64)))[iu])
        R = np.zeros((n, n))
        R[iu] = r
        return R + R.T

    Ra, Rb = rank_matrix(A), rank_matrix(B)
    ra = Ra[iu]
    ra_c = ra - ra.mean()
    rb = Rb[iu]
    norm = np.sqrt((ra_c @ ra_c) * ((rb - rb.mean()) @ (rb - rb.mean())))

    def score(R: np.ndarray) -> float:
        v = R[iu]
        return float(ra_c @ (v - v.mean()) / norm) if norm > 0 else float("nan")

    return score(Rb), np.array([score(_repair(Rb, np.asarray(p))) for p in permutations])
