"""Neighbourhood metrics: mutual k-NN, k-NN Jaccard, CKNNA, and their scans and permutation nulls."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DataError
from .common import as_matrix, check_k, hsic_unbiased_gram, paired, self_gram, unit_rows


def _knn(M: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Indices (n, k) of each row's k nearest neighbours by cosine similarity, self excluded (in
    no particular order).

    Rows are normalised in float64 and compared in float32 (cosines to about 1e-7: only
    neighbours tied that closely can swap; 3x faster than float64 at n = 3,609)."""
    U = np.ascontiguousarray(unit_rows(M).astype(np.float32))
    n = len(M)
    out = np.empty((n, k), dtype=np.int64)
    for i in range(0, n, block):
        S = U[i : i + block] @ U.T
        S[np.arange(len(S)), np.arange(i, i + len(S))] = -np.inf
        out[i : i + block] = np.argpartition(S, n - k, axis=1)[:, n - k :]
    return out


def mutual_knn(X, Y, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024, the platonic representation hypothesis).

    For each sample, the fraction of its k nearest neighbours (cosine similarity, self excluded)
    in X that are also among its k nearest neighbours in Y; averaged over samples. In [0, 1];
    about k / (n - 1) for unrelated representations. Invariant to orthogonal transforms and
    scaling (of each row or of all); not to translation (cosine neighbourhoods move with the origin).
    """
    A, B = paired(X, Y, 2, "mutual k-NN")
    check_k(k, len(A), "mutual k-NN")
    na, nb = _knn(A, k), _knn(B, k)
    hits = [len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(na, nb)]
    return float(np.mean(hits) / k)


def knn_jaccard(X, Y, k: int = 10) -> float:
    """Mean Jaccard overlap |N_X(i) ∩ N_Y(i)| / |N_X(i) ∪ N_Y(i)| of the k-NN sets (cosine, self excluded).

    In [0, 1]; 1 when the neighbourhoods agree. Same invariances as :func:`mutual_knn`.
    """
    A, B = paired(X, Y, 2, "k-NN Jaccard")
    check_k(k, len(A), "k-NN Jaccard")
    na, nb = _knn(A, k), _knn(B, k)
    inter = np.array([len(np.intersect1d(r, s, assume_unique=True)) for r, s in zip(na, nb)])
    return float(np.mean(inter / (2 * k - inter)))


def knn_jaccard_permutations(X, Y, permutations: Sequence[np.ndarray], k: int = 10) -> tuple[float, np.ndarray]:
    """:func:`knn_jaccard` of X and Y and of X against Y with its rows re-paired by each permutation.

    Re-pairing the samples relabels Y's neighbour sets (row i of Y[p] has the neighbours
    p^-1(N_Y(p(i)))), so both neighbour searches run once and each draw is one overlap count."""
    A, B = paired(X, Y, 2, "k-NN Jaccard")
    check_k(k, len(A), "k-NN Jaccard")
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
    return cknna_permutations(X, Y, [], k, normalize)[0]


def cknna_permutations(X, Y, permutations: Sequence[np.ndarray], k: int = 10, normalize: bool = True
                       ) -> tuple[float, np.ndarray]:
    """:func:`cknna` of X and Y, and of X against Y with its rows re-paired by each permutation.

    Kernels, neighbour masks and both self-HSICs are computed once: re-pairing the samples permutes
    L and M_L by rows and columns (neighbourhoods move with their samples), so each draw is two
    gathers and one HSIC."""
    from .cka import repair

    A, B = paired(X, Y, 4, "CKNNA")
    check_k(k, len(A), "CKNNA")
    n = len(A)
    if normalize:
        A, B = unit_rows(A), unit_rows(B)
    K, L = self_gram(A), self_gram(B)

    def mask(G):
        H = G.copy()
        np.fill_diagonal(H, -np.inf)
        idx = np.argpartition(-H, k - 1, axis=1)[:, :k]
        Mk = np.zeros_like(G, dtype=bool)
        Mk[np.arange(n)[:, None], idx] = True
        return Mk

    MK, ML = mask(K), mask(L)
    kk = hsic_unbiased_gram(K * MK, K * MK)
    ll = hsic_unbiased_gram(L * ML, L * ML)
    if kk <= 0 or ll <= 0:
        return float("nan"), np.full(len(permutations), np.nan)
    den = np.sqrt(kk * ll)

    def score(Lp: np.ndarray, MLp: np.ndarray) -> float:
        M = MK & MLp
        return float(hsic_unbiased_gram(K * M, Lp * M) / den)

    null = np.array([score(repair(L, np.asarray(p)), repair(ML, np.asarray(p))) for p in permutations])
    return score(L, ML), null


def knn_indices(X, k: int = 10) -> np.ndarray:
    """Indices (n, k) of each sample's k nearest neighbours by cosine similarity, self excluded."""
    A = as_matrix(X, "X")
    check_k(k, len(A), "k-NN")
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
