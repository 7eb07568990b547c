"""Linear CKA (streamed, debiased), RBF CKA, layer x layer CKA scans and their permutation nulls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .common import as_matrix, center_gram, paired, self_gram


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
        A, B = as_matrix(X, "X"), as_matrix(Y, "Y")
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
    A, B = paired(X, Y, 4 if debiased else 2, "debiased linear CKA" if debiased else "linear CKA")
    shift_x = A[: min(len(A), batch_size)].mean(0, dtype=np.float64)
    shift_y = B[: min(len(B), batch_size)].mean(0, dtype=np.float64)
    acc = CKAAccumulator(A.shape[1], B.shape[1], shift_x, shift_y)
    for i in range(0, len(A), batch_size):
        acc.update(A[i : i + batch_size], B[i : i + batch_size])
    return acc.value(debiased)


def rbf_cka(X, Y, sigma: float = 0.8) -> float:
    """CKA with Gaussian (RBF) kernels (Kornblith et al. 2019).

    k(x, x') = exp(-||x - x'||^2 / (2 s^2)) with s = ``sigma`` times the median pairwise distance
    (computed per representation). CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the biased
    HSIC tr(K H L H). Invariant to orthogonal transforms, isotropic scaling (the bandwidth scales
    with the data) and translation; builds n x n matrices.
    """
    return rbf_cka_permutations(X, Y, [], sigma)[0]


def _rbf_gram(M: np.ndarray, sigma: float) -> np.ndarray:
    M = M.astype(np.float64)
    sq = np.einsum("ij,ij->i", M, M)
    D = np.maximum(sq[:, None] + sq[None, :] - 2 * self_gram(M), 0)
    med = np.median(np.sqrt(D[np.triu_indices(len(M), 1)]))
    return np.exp(-D / (2 * (sigma * med) ** 2))


def rbf_cka_permutations(X, Y, permutations: Sequence[np.ndarray], sigma: float = 0.8) -> tuple[float, np.ndarray]:
    """:func:`rbf_cka` of X and Y, and of X against Y with its rows re-paired by each permutation.

    Both kernels are built once: re-pairing the samples permutes L's rows and columns, the median
    distance does not change, and with K centred tr(K H P L P' H) = sum(K * L[p][:, p]), so each
    draw is one gather and one dot product instead of two n x n kernels."""
    A, B = paired(X, Y, 3, "RBF CKA")
    if not sigma > 0:
        raise DataError(f"sigma must be positive (a fraction of the median distance), got {sigma!r}")
    K = center_gram(_rbf_gram(A, sigma))
    L = _rbf_gram(B, sigma)
    Lc = center_gram(L)
    den = np.sqrt(np.sum(K * K) * np.sum(Lc * Lc))
    obs = float(np.sum(K * Lc) / den)
    null = np.array([np.sum(K * L[np.ix_(p, p)]) / den for p in map(np.asarray, permutations)])
    return obs, null


@dataclass(frozen=True)
class _Centred:
    """A representation prepared for many CKA pairs: centred rows, squared row norms, self-HSIC."""

    Xc: np.ndarray
    r: np.ndarray
    h_biased: float
    h_debiased: float


def _prepare(X, name: str, dtype=np.float64) -> _Centred:
    A = as_matrix(X, name).astype(np.float64)
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


def repair(K: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``K[p][:, p]``: a square matrix with its samples re-paired (two takes; 2.5x faster than np.ix_)."""
    return K.take(p, axis=0).take(p, axis=1)


def _centred_gram(X) -> np.ndarray:
    """The centred Gram matrix in float32: rows centred in float64, the product taken in float32
    (4x faster than a float64 product rounded to float32; debiased CKA of real layers agreed to
    1e-7 with the float64 product, and a float32 Gram is what is stored either way)."""
    A = np.asarray(X, dtype=np.float64)
    C = np.ascontiguousarray((A - A.mean(0)).astype(np.float32))
    return C @ C.T  # numpy takes C @ C.T as one symmetric product (syrk): half the work of a general one


def _cka_terms(K: np.ndarray) -> dict[str, Any]:
    """What linear CKA (biased and debiased) of K against any re-pairing of another Gram needs."""
    n = len(K)
    diag = np.diag(K).astype(np.float64)
    r = K.sum(1, dtype=np.float64) - diag  # row sums with the diagonal zeroed
    s = float(r.sum())
    full = float(np.einsum("ij,ij->", K, K, dtype=np.float64))  # summed in float64 without a float64 copy
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
    ``L[pi][:, pi]``, which keeps every term but the two products with K.
    """
    A, B = paired(X, Y, 4, "linear CKA")
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
        b, u = both(repair(L, p), tl["diag"][p], tl["r"][p])
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

    def __init__(self, Xs: Sequence[np.ndarray], map: Any = None) -> None:
        """``map(fn, items) -> list``: how the layers' Grams are computed (e.g. on threads; default in turn)."""
        from .._threads import serial_map

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
        for x in Xs:
            if len(x) != n:
                raise DataError(f"every representation must have the same number of rows (one per sample), got {n} "
                                f"and {len(x)}; align the samples first")

        def one(i: int) -> None:
            K = _centred_gram(Xs[i])
            t = _cka_terms(K)
            self.F[i] = K.ravel()
            self.D[i], self.R[i], self.S[i], self.U[i] = t["diag"], t["r"], t["s"], t["self_u"]

        (map or serial_map)(one, range(len(Xs)))

    def __len__(self) -> int:
        return len(self.F)

    def gram(self, i: int) -> np.ndarray:
        return self.F[i].reshape(self.n, self.n)

    def repaired(self, q: np.ndarray, buf: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(F, D, R) with the samples re-paired by ``q`` (``K[q][:, q]`` for every layer), into ``buf``."""
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


def cka_scan_max_null(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray], permutations: Sequence[np.ndarray],
                      map: Any = None, chunks: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Debiased linear CKA of every layer pair, and for each permutation (the same re-pairing of
    the samples for every pair) the largest debiased CKA over all pairs: the max-statistic null
    for choosing the best pair of a scan. Returns (scan (len(As), len(Bs)), maxima (n_perms,)).
    ``map``/``chunks``: the permutations are cut into ``chunks`` runs handed to ``map`` (each with
    its own buffer; the maxima do not depend on it).
    """
    from .._threads import serial_map

    map = map or serial_map
    A, B = GramSide(As, map), GramSide(Bs, map)
    obs = debiased_cka_scan(A, B)
    perms = [np.asarray(p) for p in permutations]
    step = -(-len(perms) // max(1, chunks)) if perms else 1

    def run(c: int) -> list[float]:
        buf = np.empty_like(A.F if len(A) < len(B) else B.F)  # one reused buffer for the gathered Grams
        return [float(np.nanmax(debiased_cka_scan(A, B, p, buf))) for p in perms[c : c + step]]

    maxima = np.array([m for part in map(run, range(0, len(perms), step)) for m in part])
    return obs, maxima
