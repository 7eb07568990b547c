"""SAE feature matching across models: activation correlation and one-to-one matching."""

from __future__ import annotations


import numpy as np

from ..errors import DataError
from .common import as_matrix


def feature_correlation(A, B, batch_size: int = 8192) -> np.ndarray:
    """Pearson correlation (f1, f2) between the features of A (n, f1) and B (n, f2) over the samples.

    Accumulated in float64 over row batches. A feature that is constant on these samples (dead)
    has no correlation: its row or column is NaN.
    """
    P, Q = as_matrix(A, "A"), as_matrix(B, "B")
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


def matching_null(A, B, n: int, seed: int = 0, top: int | None = None,
                  methods: tuple[str, ...] = ("hungarian",)) -> dict[str, np.ndarray]:
    """What matching finds by chance: the mean correlation of the matched pairs when B's samples are
    shuffled against A's (``n`` seeded draws), per method; with ``top``, also the mean of the ``top``
    best pairs (key ``"<method>_top"``). Each draw shuffles the rows, so every feature keeps its own
    values and only which sample is which is lost."""
    if n < 1:
        raise DataError(f"expected at least one shuffled draw, got {n}")
    P, Q = as_matrix(A, "A"), as_matrix(B, "B")
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    for _ in range(int(n)):
        C = feature_correlation(P, Q[rng.permutation(len(Q))])
        for method in methods:
            _, _, corr = match_features(C, method)
            out.setdefault(method, []).append(float(corr.mean()))
            if top:
                out.setdefault(f"{method}_top", []).append(float(corr[:top].mean()))
    return {k: np.asarray(v) for k, v in out.items()}
