"""Sparse coding of a vector over a dictionary of atoms (orthogonal matching pursuit)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["omp"]


def omp(D: np.ndarray, v: np.ndarray, k: int, nonneg: bool = False) -> dict[str, Any]:
    """Orthogonal matching pursuit of ``v`` over the rows of ``D`` (atoms), up to ``k`` atoms.

    Atoms are scaled to unit norm for the greedy choice (the atom most correlated with the
    residual; with ``nonneg`` the most positively correlated, and coefficients constrained to be
    non-negative by NNLS). After each choice the coefficients of all chosen atoms are refitted by
    least squares. Returns the chosen atom indices in order, their coefficients on the unit atoms,
    and the explained fraction ``1 - |residual|^2 / |v|^2`` after each step.
    """
    from scipy.optimize import nnls

    D = np.asarray(D, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    norms = np.linalg.norm(D, axis=1)
    if D.ndim != 2 or D.shape[1] != v.shape[0]:
        raise DataError(f"atoms of shape {D.shape} do not fit a vector of size {v.shape[0]}")
    U = D / np.where(norms > 0, norms, 1.0)[:, None]
    vv = float(v @ v)
    if vv == 0:
        raise DataError("cannot decompose a zero vector")
    chosen: list[int] = []
    coef = np.zeros(0)
    explained: list[float] = []
    r = v.copy()
    for _ in range(min(k, D.shape[0])):
        c = U @ r
        c[chosen] = 0.0
        c[norms == 0] = 0.0
        j = int(np.argmax(c)) if nonneg else int(np.argmax(np.abs(c)))
        if (c[j] <= 1e-12) if nonneg else (abs(c[j]) <= 1e-12):
            break
        chosen.append(j)
        A = U[chosen].T
        coef = nnls(A, v)[0] if nonneg else np.linalg.lstsq(A, v, rcond=None)[0]
        r = v - A @ coef
        explained.append(1.0 - float(r @ r) / vv)
    return {"atoms": chosen, "coefficients": coef, "explained": explained,
            "reconstruction": (U[chosen].T @ coef) if chosen else np.zeros_like(v)}
