"""Subspace and geometry metrics: SVCCA (cross-validated), Procrustes, RSA, cosine, feature Jaccard."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError
from .cka import repair
from .common import as_matrix, paired


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
    A, B = paired(X, Y, 8, "SVCCA")
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


def _svcca_side(M: np.ndarray, fit: np.ndarray, test: np.ndarray, keep: float, cap: int):
    """One representation reduced on the fitting half: (fit rows reduced, test rows reduced, whitener)."""
    mean, V = _svcca_reduce(M[fit], keep, cap)
    R = (M[fit] - mean) @ V
    return R, (M[test] - mean) @ V, _inv_sqrt(R.T @ R)


def _svcca_score(a: tuple, b: tuple, qf: np.ndarray | None = None, qt: np.ndarray | None = None) -> float:
    """Mean held-out canonical correlation of two reduced sides; ``qf``/``qt`` re-pair b's fitting and
    test rows (a row permutation leaves b's reduction and whitener unchanged)."""
    Ra, Ta, Wa = a
    Rb, Tb, Wb = b
    if qf is not None:
        Rb, Tb = Rb[qf], Tb[qt]
    U, _, Vt = np.linalg.svd(Wa @ (Ra.T @ Rb) @ Wb)
    m = min(Ra.shape[1], Rb.shape[1])
    Pa = Ta @ (Wa @ U[:, :m])
    Pb = Tb @ (Wb @ Vt.T[:, :m])
    Pa, Pb = Pa - Pa.mean(0), Pb - Pb.mean(0)
    den = np.linalg.norm(Pa, axis=0) * np.linalg.norm(Pb, axis=0)
    corr = np.where(den > 0, np.einsum("ij,ij->j", Pa, Pb) / np.where(den > 0, den, 1), 0.0)
    return float(corr.mean())


def svcca_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two halves :func:`svcca` fits and scores on (seeded)."""
    perm = np.random.default_rng([seed, 0x5CCA]).permutation(n)
    return perm[: n // 2], perm[n // 2:]


def within_halves(p: np.ndarray, halves: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A permutation of the samples that keeps each half in itself, drawn from ``p``: within each half the
    samples are re-paired in the relative order ``p`` gives them (uniform when ``p`` is)."""
    p = np.asarray(p)
    q = np.arange(len(p))
    for h in halves:
        q[h] = h[np.argsort(p[h], kind="stable")]
    return q


def svcca_permutations(X, Y, permutations: Sequence[np.ndarray | None], keep: float = 0.99,
                       max_dims: int | None = None, seed: int = 0) -> np.ndarray:
    """:func:`svcca` of X against Y with Y's rows re-paired by each permutation (None: as given).

    Each draw re-pairs the samples within the two halves :func:`svcca` fits and scores on
    (:func:`within_halves` of the permutation): the halves are fixed before looking at the data, so
    re-pairing within them is exchangeable under the null of no correspondence, and every draw
    keeps both sides' reductions and whiteners, computed once (one SVD of a kept-by-kept matrix a
    draw instead of two reductions). ``svcca_permutations(X, Y, [p])`` equals
    ``svcca(X, Y[within_halves(p, svcca_halves(n))])``."""
    A, B = paired(X, Y, 8, "SVCCA")
    A, B = A.astype(np.float64), B.astype(np.float64)
    n = len(A)
    halves = svcca_halves(n, seed)
    cap = max(1, n // 2 - 2) if max_dims is None else int(max_dims)
    # both ways round: fit on half 0 and score on half 1, and the reverse
    ways = [(halves[0], halves[1]), (halves[1], halves[0])]
    sa = [_svcca_side(A, f, t, keep, cap) for f, t in ways]
    sb = [_svcca_side(B, f, t, keep, cap) for f, t in ways]
    pos = np.empty(n, dtype=np.int64)  # each sample's row within its half
    for h in halves:
        pos[h] = np.arange(len(h))
    out = []
    for p in permutations:
        if p is None:
            out.append((_svcca_score(sa[0], sb[0]) + _svcca_score(sa[1], sb[1])) / 2)
            continue
        q = within_halves(p, halves)
        qs = [pos[q[h]] for h in halves]  # the re-paired rows, as row numbers within each half
        out.append((_svcca_score(sa[0], sb[0], qs[0], qs[1]) + _svcca_score(sa[1], sb[1], qs[1], qs[0])) / 2)
    return np.array(out)


def procrustes(X, Y) -> float:
    """Orthogonal Procrustes distance (Schönemann 1966; as a shape metric, Williams et al. 2021).

    With Xc, Yc column-centred and scaled to unit Frobenius norm (zero-padded to a common width),
    d = min over orthogonal Q of ||Xc - Yc Q||_F = sqrt(2 - 2 ||Xc^T Yc||_*), ||.||_* the nuclear
    norm. 0 for representations equal up to rotation, translation and scale; at most sqrt(2).
    Symmetric; invariant to orthogonal transforms, isotropic scaling and translation.
    """
    A, B = paired(X, Y, 2, "Procrustes distance")

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
    from scipy.stats import pearsonr

    A, B = paired(X, Y, 3, "RSA")
    if method not in ("spearman", "pearson"):
        raise DataError(f"unknown method {method!r}: expected 'spearman' or 'pearson'")
    _check_rows_vary(A, B)
    if method == "spearman":
        return rsa_ranked(rank_dissimilarities(A), rank_dissimilarities(B))[0]
    iu = np.triu_indices(len(A), 1)
    da, db = (1 - np.corrcoef(A.astype(np.float64)))[iu], (1 - np.corrcoef(B.astype(np.float64)))[iu]
    return float(pearsonr(da, db)[0])


def cosine(A, B) -> np.ndarray:
    """Cosine similarity of matched directions: row i of A against row i of B (same width).

    Returns an array of n cosines in [-1, 1]. Invariant to positive scaling of either row and to
    one orthogonal transform applied to both.
    """
    P, Q = as_matrix(A, "A").astype(np.float64), as_matrix(B, "B").astype(np.float64)
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
    P = as_matrix(np.reshape(A, (-1, 1)) if a1 else A, "A") > threshold
    Q = as_matrix(np.reshape(B, (-1, 1)) if b1 else B, "B") > threshold
    if P.shape[0] != Q.shape[0]:
        raise DataError(f"A and B must have the same number of rows (samples), got {P.shape[0]} and {Q.shape[0]}")
    inter = P.T.astype(np.float64) @ Q.astype(np.float64)
    union = P.sum(0)[:, None] + Q.sum(0)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        J = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    return J[0, 0] if a1 and b1 else J


def rsa_permutations(X, Y, permutations: Sequence[np.ndarray], ranks_x: np.ndarray | None = None
                     ) -> tuple[float, np.ndarray]:
    """Spearman RSA of X and Y (as :func:`rsa`) and of X against Y with its rows re-paired by each
    permutation. The ranks of Y's dissimilarities are taken once: re-pairing the samples permutes
    the rank matrix, so each draw is one gather and one dot product. ``ranks_x``: X's
    :func:`rank_dissimilarities`, when already computed (X against several Y)."""
    A, B = paired(X, Y, 3, "RSA")
    _check_rows_vary(A, B)
    Ra = rank_dissimilarities(A) if ranks_x is None else np.asarray(ranks_x)
    return rsa_ranked(Ra, rank_dissimilarities(B), permutations)


def average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v``, ties given the mean of their ranks (``scipy.stats.rankdata``'s default),
    from one sort."""
    v = np.asarray(v).reshape(-1)
    order = np.argsort(v)
    s = v[order]
    first = np.empty(len(s), dtype=bool)
    first[:1] = True
    first[1:] = s[1:] != s[:-1]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(s)))
    ranks = np.empty(len(s))
    ranks[order] = (starts + (sizes + 1) / 2.0)[np.cumsum(first) - 1]
    return ranks


def rank_dissimilarities(X) -> np.ndarray:
    """The (n, n) symmetric matrix of the ranks of the samples' correlation distances 1 - r (the
    n(n-1)/2 pairs ranked together, ties averaged; zero diagonal): what Spearman RSA compares.
    Rows must not be constant."""
    A = as_matrix(X, "X")
    n = len(A)
    iu = np.triu_indices(n, 1)
    R = np.zeros((n, n))
    R[iu] = average_ranks((1 - np.corrcoef(A.astype(np.float64)))[iu])
    return R + R.T


def rsa_ranked(Ra: np.ndarray, Rb: np.ndarray, permutations: Sequence[np.ndarray] = ()) -> tuple[float, np.ndarray]:
    """Spearman RSA from two :func:`rank_dissimilarities` matrices, and with B's samples re-paired
    by each permutation: the Pearson correlation of the upper triangles, which for symmetric
    matrices with zero diagonals is half a full-matrix dot product (re-pairing keeps B's mean and
    spread over the pairs, so only that dot product changes)."""
    n = len(Ra)
    if Ra.shape != (n, n) or Rb.shape != (n, n):
        raise DataError(f"expected two square rank matrices of one size, got {Ra.shape} and {Rb.shape}")
    pairs = n * (n - 1) / 2
    ma, mb = Ra.sum() / 2 / pairs, Rb.sum() / 2 / pairs
    Ac = Ra - ma
    np.fill_diagonal(Ac, 0.0)
    va = float(np.einsum("ij,ij->", Ac, Ac)) / 2
    vb = float(np.einsum("ij,ij->", Rb, Rb)) / 2 - pairs * mb * mb
    norm = np.sqrt(va * vb)
    flat = Ac.ravel()

    def score(R: np.ndarray) -> float:  # sum over pairs of (a - ma)(b - mb) = sum of (a - ma) b
        return float(np.dot(flat, R.ravel()) / 2 / norm) if norm > 0 else float("nan")

    return score(Rb), np.array([score(repair(Rb, np.asarray(p))) for p in permutations])
