"""Maps between two models' residual streams, fitted on word-aligned activations (issue 18, part 2).

A steering vector of model A lives in A's residual basis. To try it on model B it has to be carried
into B's basis; :func:`fit_linear_map` fits that map on the same words read by both models
(:func:`geomsteer.activations.unit_activations` aligns words across tokenizers), centred on each
side:

- ``"procrustes"``: the scaled semi-orthogonal map W = s U V^T from the SVD of A_c^T B_c
  (orthogonal Procrustes, Schönemann 1966; for unequal widths W keeps the min(d_a, d_b) shared
  directions), with s the least-squares scale trace(S) / ||A_c||_F^2. It preserves angles, so a
  direction keeps its relation to every other direction of A.
- ``"ridge"``: W = (A_c^T A_c + lam I)^-1 A_c^T B_c, the ridge regression of B on A, with lam chosen
  among a grid by held-out error.

A map is only worth using if it predicts held-out words better than a map fitted on shuffled
word pairs: :meth:`LinearMap.heldout_r2` and :func:`shuffled_maps` give that comparison.
Vectors (differences of activations) are mapped without the means: ``map.vector(v) = v @ W``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["LinearMap", "fit_linear_map", "shuffled_maps", "measure_transfer", "TransferMeasurements", "METHODS"]

METHODS = ("procrustes", "ridge")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # fractions of the mean eigenvalue of A_c^T A_c / n


@dataclass
class LinearMap:
    """``B ≈ (A - mean_a) @ W + mean_b``: a map from model A's residuals to model B's."""

    W: np.ndarray  # (d_a, d_b)
    mean_a: np.ndarray
    mean_b: np.ndarray
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def vector(self, v: np.ndarray) -> np.ndarray:
        """A direction (a steering vector, a decoder row) of A carried into B's basis."""
        v = np.asarray(v, dtype=np.float64)
        if v.shape[-1] != self.W.shape[0]:
            raise DataError(f"the map reads vectors of size {self.W.shape[0]} (model A's d_model), got {v.shape[-1]}")
        return v @ self.W

    def predict(self, A: np.ndarray) -> np.ndarray:
        return (np.asarray(A, dtype=np.float64) - self.mean_a) @ self.W + self.mean_b

    def heldout_r2(self, A: np.ndarray, B: np.ndarray) -> float:
        """Fraction of B's variance (about B's mean on these rows) that the map predicts."""
        B = np.asarray(B, dtype=np.float64)
        resid = B - self.predict(A)
        total = B - B.mean(0)
        return float(1.0 - np.sum(resid * resid) / np.sum(total * total))


def _check(A: Any, B: Any) -> tuple[np.ndarray, np.ndarray]:
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or len(A) != len(B):
        raise DataError(f"expected activations of shapes (n, d_a) and (n, d_b) on the same n words, got {A.shape} "
                        f"and {B.shape}; align the words of both models first (geomsteer.activations.unit_activations)")
    if len(A) < 8:
        raise DataError(f"a map needs at least 8 aligned words, got {len(A)}")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise DataError("the activations hold NaN or infinite values; drop those words from both sides first")
    return A, B


def fit_linear_map(A: Any, B: Any, method: str = "procrustes", *, heldout: float = 0.2, seed: int = 0) -> LinearMap:
    """Fit a map from A's activations to B's on the same words (rows). ``heldout`` of the words
    (seeded) are kept out of the fit to choose ridge's penalty and to report the held-out R^2; the
    returned map is then refitted on every word."""
    if method not in METHODS:
        raise ConfigError(f"unknown map {method!r}: expected one of {', '.join(METHODS)}")
    if not 0 < heldout < 1:
        raise ConfigError(f"heldout must be a fraction between 0 and 1, got {heldout!r}")
    A, B = _check(A, B)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(A))
    n_test = max(2, int(round(heldout * len(A))))
    test, train = order[:n_test], order[n_test:]
    lam = None
    if method == "ridge":
        scores = {c: _fit(A[train], B[train], "ridge", c).heldout_r2(A[test], B[test]) for c in RIDGE_GRID}
        lam = max(scores, key=scores.get)
    r2 = _fit(A[train], B[train], method, lam).heldout_r2(A[test], B[test])
    m = _fit(A, B, method, lam)
    m.info.update({"n_words": len(A), "heldout_words": int(n_test), "heldout_r2": r2, "seed": seed})
    if lam is not None:
        m.info["ridge_fraction"] = lam
    return m


def _fit(A: np.ndarray, B: np.ndarray, method: str, lam: float | None) -> LinearMap:
    ma, mb = A.mean(0), B.mean(0)
    Ac, Bc = A - ma, B - mb
    if method == "procrustes":
        U, S, Vt = np.linalg.svd(Ac.T @ Bc, full_matrices=False)
        scale = float(S.sum() / np.sum(Ac * Ac))
        return LinearMap(scale * (U @ Vt), ma, mb, method, {"scale": scale})
    G = Ac.T @ Ac
    penalty = float(lam) * np.trace(G) / G.shape[0]
    W = np.linalg.solve(G + penalty * np.eye(G.shape[0]), Ac.T @ Bc)
    return LinearMap(W, ma, mb, method, {"penalty": penalty})


def shuffled_maps(A: Any, B: Any, method: str = "procrustes", n: int = 20, seed: int = 0) -> list[LinearMap]:
    """Maps fitted with B's words shuffled against A's (``n`` seeded draws): the null for a map,
    which keeps both sides' geometry and loses only which word is which."""
    A, B = _check(A, B)
    rng = np.random.default_rng(seed)
    return [fit_linear_map(A, B[rng.permutation(len(B))], method, seed=seed + 1 + i) for i in range(n)]


@dataclass
class TransferMeasurements:
    """Target log-odds shifts in model B under B's own vector, the transferred vectors and nulls."""

    alpha: float
    norm: float  # every vector is steered at this norm (B's own vector's), so effects compare
    shifts: dict[str, np.ndarray]  # name -> per-prompt shift of the target log-odds (steered - unsteered)
    null_shifts: dict[str, np.ndarray]  # null name -> mean shift per draw
    mapped_norms: dict[str, float]  # each transferred vector's norm before rescaling
    kl: dict[str, float] = field(default_factory=dict)  # name -> neutral-text KL, when texts were given

    def statistics(self) -> dict[str, Any]:
        """Per transferred vector: its mean shift as a fraction of B's own vector's, in the shared
        statistic shape, against random directions and vectors carried by shuffled maps (both
        expressed as the same fraction)."""
        from .stats import null_summary, statistic

        own = self.shifts["own"]
        base = float(own.mean())
        if base == 0:
            raise DataError("B's own vector does not move the target log-odds at this multiplier (mean shift 0), so "
                            "no fraction of it can be taken; steer with a larger alpha")
        out = {}
        for name, s in self.shifts.items():
            if name == "own":
                continue
            frac = float(s.mean()) / base
            nulls = {k: null_summary(frac, v / base, "greater") for k, v in self.null_shifts.items()
                     if k.startswith(name + ":") or k == "random"}
            ci = _ratio_ci(s, own)
            out[name] = statistic(frac, len(s), nulls={k.split(":")[-1]: v for k, v in nulls.items()}, ci95=ci,
                                  alternative="greater", unit="fraction of B's own vector's log-odds shift",
                                  mean_shift=float(s.mean()), own_mean_shift=base,
                                  mapped_norm=self.mapped_norms.get(name))
        return out


def measure_transfer(model_b: Any, own: np.ndarray, transferred: dict[str, np.ndarray],
                     null_vectors: dict[str, list[np.ndarray]], items: Any, hook: str, alpha: float,
                     n_random: int = 20, seed: int = 0, neutral: Any = None) -> TransferMeasurements:
    """Steer model B at ``hook`` with its own vector, each transferred vector and each null vector
    (``null_vectors["<name>:shuffled_map"]``: a transferred vector's shuffled-map draws), every one
    rescaled to the norm of B's own vector, plus ``n_random`` random directions; measure the shift of
    the target log-odds on ``items`` (evaluation prompts) against the unsteered model, and the
    neutral-text KL (a :class:`~geomsteer.steering.evaluate.NeutralText`) when given."""
    from .steering.evaluate import SteeredTargets

    own = np.asarray(own, dtype=np.float64)
    norm = float(np.linalg.norm(own))
    if norm == 0:
        raise DataError("B's own steering vector is zero: expected the vector computed on model B (gs.steer.compute) "
                        "at the same hook")
    d = len(own)

    def at_norm(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (d,):
            raise DataError(f"a transferred vector must have B's d_model ({d}), got shape {v.shape}; carry A's vector "
                            "into B with a map fitted from A to B (fit_linear_map(A_acts, B_acts).vector(v))")
        n = np.linalg.norm(v)
        return v * (norm / n) if n > 0 else v

    rng = np.random.default_rng(seed)
    randoms = [at_norm(rng.normal(size=d)) for _ in range(n_random)]
    named = {"own": own, **{k: at_norm(v) for k, v in transferred.items()}}
    st = SteeredTargets(model_b, items, hook)
    base = st(np.zeros((1, d)), 0.0)[0, :, 0]
    V = np.stack(list(named.values()))
    got = st(V, alpha)[:, :, 0] - base
    shifts = dict(zip(named, got))
    null_shifts = {"random": (st(np.stack(randoms), alpha)[:, :, 0] - base).mean(1)}
    for k, vs in null_vectors.items():
        null_shifts[k] = (st(np.stack([at_norm(v) for v in vs]), alpha)[:, :, 0] - base).mean(1)
    kl = {}
    if neutral is not None:
        kl = dict(zip(named, neutral.kl_steered(model_b, V.astype(np.float32), alpha, hook)))
    return TransferMeasurements(float(alpha), norm, shifts, null_shifts,
                                {k: float(np.linalg.norm(v)) for k, v in transferred.items()}, kl)


def _ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of mean(num) / mean(den) over prompts resampled in pairs."""
    n = len(num)
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    d = den[idx].mean(1)
    r = np.where(d != 0, num[idx].mean(1) / np.where(d != 0, d, 1), np.nan)
    r = r[np.isfinite(r)]
    return [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))] if len(r) > 1 else None
