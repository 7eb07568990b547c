"""Input checks and small matrix helpers shared by the metric families."""

from __future__ import annotations


import numpy as np

from ..errors import DataError


def as_matrix(X, name: str) -> np.ndarray:
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


def paired(X, Y, min_n: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    A, B = as_matrix(X, "X"), as_matrix(Y, "Y")
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


def check_k(k: int, n: int, what: str) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= n:
        raise DataError(f"{what} needs 1 <= k < n (the number of samples), got k={k!r} with n={n}; "
                        "use a smaller k or more samples")


def self_gram(A: np.ndarray) -> np.ndarray:
    """A @ A.T through a general matrix product: numpy sends ``A @ A.T`` to BLAS syrk, which in the
    OpenBLAS build numpy ships crashed (segmentation fault) here for n = 20,000 on two threads."""
    A = np.asarray(A, dtype=np.float64)
    return A @ np.ascontiguousarray(A.T)


def center_gram(K: np.ndarray) -> np.ndarray:
    m = K.mean(0)
    return K - m[None, :] - m[:, None] + m.mean()


def unit_rows(M: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float64."""
    M = M.astype(np.float64)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.where(norms > 0, norms, 1)


def hsic_unbiased_gram(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s unbiased HSIC from two n x n kernel matrices (diagonals ignored; need not be symmetric)."""
    n = len(K)
    K = K.copy()
    L = L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    t = np.sum(K * L.T) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (K.sum(0) @ L.sum(1))
    return float(t / (n * (n - 3)))
