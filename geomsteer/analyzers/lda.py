"""The causal inner product (whitening the unembedding) and category directions: LDA with Ledoit-Wolf
shrinkage (fast path and plain reference) and the mean direction (Park et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import DataError


# --------------------------------------------------------------------------------------------
# The causal inner product


@dataclass(frozen=True)
class Whitening:
    """``g(y) = (gamma(y) - mean) @ W`` with ``W = Cov(gamma)^(-1/2)`` (symmetric), float64."""

    mean: np.ndarray
    W: np.ndarray
    eigenvalues: np.ndarray
    n_floored: int

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float64) - self.mean) @ self.W

    def inverse(self) -> np.ndarray:
        """``W^(-1) = Cov^(1/2)`` (floored eigenvalues): a step ``l`` of a whitened row is the step ``l @ inverse()``
        of the raw row, so a direction fit in the whitened space maps back by this matrix."""
        w, Q = np.linalg.eigh(self.W)
        return (Q / w) @ Q.T


def fit_whitening(gamma: np.ndarray, eig_floor: float = 1e-10, chunk: int = 16384) -> Whitening:
    """Mean and inverse square root of the covariance of the rows of ``gamma``, in float64.

    The covariance is accumulated over row chunks (float64 cross-products, so float32 input loses
    nothing). Eigenvalues below ``eig_floor`` times the largest are raised to that floor, so a
    rank-deficient covariance gives a finite whitening instead of NaN or inf.
    """
    gamma = np.asarray(gamma)
    if gamma.ndim != 2 or gamma.shape[0] < 2:
        raise DataError(f"expected an unembedding matrix of shape (vocab, d) with vocab >= 2, got shape {gamma.shape}")
    if not np.isfinite(gamma).all():
        raise DataError("the unembedding matrix has NaN or infinite entries; check the model weights")
    n, d = gamma.shape
    mean = gamma.mean(axis=0, dtype=np.float64)
    cov = np.zeros((d, d))
    for i in range(0, n, chunk):
        x = gamma[i : i + chunk].astype(np.float64) - mean
        cov += x.T @ x
    cov /= n
    return _whitening_from_cov(mean, cov, eig_floor)


def _whitening_from_cov(mean: np.ndarray, cov: np.ndarray, eig_floor: float) -> Whitening:
    evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
    floor = max(float(evals.max()), np.finfo(np.float64).tiny) * eig_floor
    n_floored = int((evals < floor).sum())
    ev = np.maximum(evals, floor)
    W = (evecs / np.sqrt(ev)) @ evecs.T
    return Whitening(mean, W, evals, n_floored)


# --------------------------------------------------------------------------------------------
# Category directions


def ledoit_wolf_shrinkage(X: np.ndarray) -> tuple[float, float]:
    """Ledoit-Wolf shrinkage of the rows of ``X`` as scikit-learn computes it, in sample space.

    Returns ``(shrinkage, mu)`` with ``Sigma = (1 - shrinkage) S + shrinkage * mu * I``, S the
    maximum-likelihood covariance and mu = trace(S) / d. The two fourth-moment sums scikit-learn
    forms from d x d products are computed from the smaller Gram matrix:
    ||Xc^T Xc||_F = ||Xc Xc^T||_F and sum((Xc^2)^T Xc^2) = sum_k ||x_k||^4.
    """
    Xc = X - X.mean(axis=0)
    n, d = Xc.shape
    if d == 1:
        return 0.0, float((Xc**2).mean())
    gram = Xc @ Xc.T if n <= d else Xc.T @ Xc
    return _shrinkage_from_stats(np.einsum("ij,ij->i", Xc, Xc), gram, n, d)


def _shrinkage_from_stats(row_sq: np.ndarray, gram: np.ndarray, n: int, d: int) -> tuple[float, float]:
    """Ledoit-Wolf shrinkage from the squared row norms and either Gram matrix of centred data."""
    return _shrinkage_from_sums(float(row_sq.sum()), float(np.sum(row_sq**2)), float(np.sum(gram * gram)), n, d)


def _shrinkage_from_sums(sum_sq: float, sum_sq2: float, gram_fro2: float, n: int, d: int) -> tuple[float, float]:
    """Ledoit-Wolf shrinkage from sum_k ||x_k||^2, sum_k ||x_k||^4 and ||Xc^T Xc||_F^2 (centred rows)."""
    trace = sum_sq / n
    mu = trace / d
    delta_ = gram_fro2 / n**2
    beta_ = sum_sq2
    beta = (beta_ / n - delta_) / (d * n)
    if abs(beta_ / n - delta_) <= 1e-12 * max(beta_ / n, delta_):
        beta = 0.0  # a difference at rounding level is an exact zero (n = 2 gives exactly 0), not a shrinkage
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    return float(shrinkage), float(mu)


def lda_direction(G: np.ndarray, rcond: float = 1e-15) -> np.ndarray:
    """Park et al.'s LDA direction ``l = (u . mu) u``, ``u ∝ Sigma^+ mu``, without a d x d inverse.

    Sigma = a Xc^T Xc + b I with a = (1 - s) / n and b = s * trace(S) / d (Ledoit-Wolf). With
    fewer tokens than dimensions (n <= d) the Woodbury identity solves in sample space:
    Sigma^-1 mu = (mu - Xc^T (Xc Xc^T + (b/a) I_n)^-1 Xc mu) / b, one n x n Cholesky solve.
    With n > d the d x d system is solved by Cholesky (no inverse is formed). When the shrinkage
    is zero or tiny, Sigma is (nearly) singular and the pseudo-inverse is taken from an
    eigendecomposition instead. Cost O(n d min(n, d)) per category.
    """
    from scipy.linalg import LinAlgError, cho_factor, cho_solve

    X = np.asarray(G)
    if X.dtype != np.float32:
        X = X.astype(np.float64, copy=False)
    if X.ndim != 2 or X.shape[0] < 2:
        raise DataError(f"expected a category's (n, d) token matrix with n >= 2, got shape {X.shape}")
    n, d = X.shape
    mu = X.mean(axis=0, dtype=np.float64)
    small = n <= d
    if small:
        Xc = X - mu.astype(X.dtype)  # at most d x d numbers
        gram = (Xc @ Xc.T).astype(np.float64)
        row_sq = np.einsum("ij,ij->i", Xc, Xc).astype(np.float64)
        Xc = Xc.astype(np.float64)
    else:
        # Centre chunk by chunk in one reused buffer: exact centring without a full copy of X.
        # Float32 input (the null draws) keeps float32 products per chunk, summed in float64.
        gram = np.zeros((d, d))
        row_sq = np.empty(n)
        buf = np.empty((min(n, 4096), d), dtype=X.dtype)
        mu_w = mu.astype(X.dtype)
        for i in range(0, n, len(buf)):
            c = buf[: min(len(buf), n - i)]
            np.subtract(X[i : i + len(c)], mu_w, out=c)
            gram += c.T @ c
            row_sq[i : i + len(c)] = np.einsum("ij,ij->i", c, c)
    s, m = _shrinkage_from_stats(row_sq, gram, n, d)
    a, b = (1.0 - s) / n, s * m
    if a <= 0 and b > 0:  # full shrinkage: Sigma is a multiple of the identity
        return _scale(mu, mu)
    if s > 1e-6 and b > 0:
        try:
            if small:
                gram.flat[:: n + 1] += b / a
                w = cho_solve(cho_factor(gram, check_finite=False), Xc @ mu, check_finite=False)
                v = (mu - Xc.T @ w) / b
            else:
                gram *= a
                gram.flat[:: d + 1] += b
                v = cho_solve(cho_factor(gram, check_finite=False), mu, check_finite=False)
            return _scale(v, mu)
        except LinAlgError:
            pass
    if small:
        gram = Xc @ Xc.T  # the solve above may have modified it in place
    else:
        Xc = X.astype(np.float64) - mu
        gram = Xc.T @ Xc
    return _scale(_pinv_solve(Xc, gram, small, a, b, mu, rcond), mu)


def _pinv_solve(Xc, gram, small, a, b, mu, rcond):  # Xc is only read when small
    """Sigma^+ mu from the eigenpairs of the smaller Gram matrix (the singular or near-singular case).

    Eigenvalues of Sigma below ``rcond`` times the largest are treated as zero, as a pseudo-inverse
    does; with a vanishing shrinkage that drops the b * I part outside the span of the data.
    """
    lam, Q = np.linalg.eigh(gram)
    top = a * max(float(lam.max()), 0.0) + b
    keep = a * lam + b > rcond * top
    lam, Q = lam[keep], Q[:, keep]
    if small:
        nz = lam > 0
        V = (Xc.T @ Q[:, nz]) / np.sqrt(lam[nz])  # right singular vectors of Xc, (d, r)
        lam = lam[nz]
    else:
        V = Q
    proj = V.T @ mu
    v = V @ (proj / (a * lam + b))
    if b > rcond * top:
        v += (mu - V @ proj) / b
    return v


def _scale(v: np.ndarray, mu: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        return np.zeros_like(mu)
    u = v / norm
    return (u @ mu) * u


def lda_direction_reference(G: np.ndarray) -> np.ndarray:
    """The published formula, plainly: scikit-learn's LedoitWolf, a d x d pseudo-inverse. Slow."""
    from sklearn.covariance import LedoitWolf

    X = np.asarray(G, dtype=np.float64)
    mu = X.mean(axis=0)
    cov = LedoitWolf().fit(X).covariance_
    return _scale(np.linalg.pinv(cov) @ mu, mu)


def mean_direction(G: np.ndarray) -> np.ndarray:
    """The mean estimator: the category's mean whitened embedding."""
    return np.asarray(G, dtype=np.float64).mean(axis=0)


ESTIMATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "lda": lda_direction,
    "lda_reference": lda_direction_reference,
    "mean": mean_direction,
}
