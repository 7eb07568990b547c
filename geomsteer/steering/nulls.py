"""Null vectors for steering statistics: random, shuffled-label and covariance-shaped directions."""

from __future__ import annotations


import numpy as np

from ..errors import DataError
from .vectors import SteeringVector


def random_direction(v: np.ndarray, seed: int) -> np.ndarray:
    """An isotropic random direction with the norm of ``v``.

    A contrast for generations only: in an anisotropic residual stream it is off-distribution, so
    the statistics use :func:`shuffled_label_vectors` and :func:`covariance_directions` instead."""
    r = np.random.default_rng(seed).standard_normal(np.asarray(v).shape)
    return (r / np.linalg.norm(r) * np.linalg.norm(v)).astype(np.float32)


def shuffled_label_vectors(vector: SteeringVector, n: int, seed: int = 0) -> np.ndarray:
    """``n`` vectors computed like ``vector`` from its own pairs with labels swapped at random, (n, d).

    Each draw gives every pair a random sign (positive and negative exchanged), then applies the
    vector's method: the mean of the signed differences, or, for ``pca``, the first principal
    direction of the uncentred differences (which sign flips leave unchanged) scaled by the signed
    mean's projection on it. Draws keep the pairs, their number and the method; only the labels'
    agreement is gone.
    """
    D = vector.pair_differences
    if D is None:
        raise DataError(f"the vector at {vector.hook} carries no pair differences, so its shuffled-label null cannot be "
                        "drawn; recompute the vectors with 'geomsteer steer compute' (files written before geomsteer "
                        "0.5 lack them)")
    D = np.asarray(D, dtype=np.float64)
    signs = np.random.default_rng([seed, 0x51C5]).choice([-1.0, 1.0], size=(int(n), len(D)))
    M = signs @ D / len(D)
    if vector.method == "pca":
        u = np.linalg.svd(D, full_matrices=False)[2][0]
        M = (M @ u)[:, None] * u[None, :]
    return M.astype(np.float32)


def covariance_directions(X: np.ndarray, norm: float, n: int, seed: int = 0) -> np.ndarray:
    """``n`` directions drawn from N(0, cov(X)), each scaled to ``norm``, (n, d).

    ``(X - mean)^T g`` with ``g ~ N(0, I)`` over the rows of ``X`` has exactly the rows'
    covariance (up to scale), so the covariance matrix is never formed. In a residual stream with
    a few massive dimensions these directions point where activations actually vary, unlike
    isotropic ones."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise DataError(f"covariance directions need at least 2 activation rows, got shape {X.shape}")
    Xc = X - X.mean(0)
    G = np.random.default_rng([seed, 0xC0F]).standard_normal((int(n), len(X)))
    R = G @ Xc
    R *= float(norm) / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-30)
    return R.astype(np.float32)
