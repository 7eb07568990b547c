"""Cyclic order of categories (days of the week, months): do neighbours in the cycle sit nearest?"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DataError


def _nearest_is_neighbour(D: np.ndarray, position: np.ndarray) -> float:
    """Share of categories whose nearest other centroid is one of their two neighbours in the cycle.

    ``D`` is the centroid distance matrix; ``position[i]`` is category i's place in the cycle."""
    k = len(D)
    nearest = np.argmin(D + np.diag(np.full(k, np.inf)), axis=1)
    step = (position[nearest] - position) % k
    return float(np.mean((step == 1) | (step == k - 1)))


def cyclic_neighbours(X: Any, labels: Sequence[str], cycle: Sequence[str], *, n_permutations: int = 2000,
                      n_bootstrap: int = 200, seed: int = 0) -> dict[str, Any]:
    """Whether the category centroids of ``X`` keep the order of ``cycle`` (Engels et al. 2024's circles).

    Each category's centroid is the mean of its rows; the statistic is the share of categories whose
    nearest other centroid (Euclidean) is one of its two neighbours in ``cycle`` (Monday: Sunday or
    Tuesday). The null keeps the centroids and their distances and shuffles which name sits where in
    the cycle (``n_permutations`` draws): it destroys the order and nothing else. Chance is 2/(k-1).
    The interval resamples rows within each category (``n_bootstrap`` draws). Returns the shared
    statistic shape with the nearest centroid of each category under ``nearest``."""
    from ..stats import null_summary, statistic

    X = np.asarray(X, dtype=np.float64)
    lab = np.asarray(labels)
    cycle = list(cycle)
    k = len(cycle)
    if k < 4:
        raise DataError(f"a cycle needs at least 4 categories (with 3 every pair is adjacent), got {k}")
    if X.ndim != 2 or len(X) != len(lab):
        raise DataError(f"expected rows (n, d) and one label per row, got shape {X.shape} and {len(lab)} labels")
    rows = [np.flatnonzero(lab == c) for c in cycle]
    empty = [c for c, r in zip(cycle, rows) if not len(r)]
    if empty:
        raise DataError(f"no rows carry the label(s) {', '.join(map(repr, empty))}; every name in the cycle needs rows")
    C = np.stack([X[r].mean(0) for r in rows])
    D = np.linalg.norm(C[:, None] - C[None], axis=-1)
    position = np.arange(k)
    observed = _nearest_is_neighbour(D, position)
    rng = np.random.default_rng([seed, 0xC1C])
    draws = [_nearest_is_neighbour(D, rng.permutation(k)) for _ in range(n_permutations)]
    boot = []
    for _ in range(n_bootstrap):
        Cb = np.stack([X[rng.choice(r, len(r))].mean(0) for r in rows])
        boot.append(_nearest_is_neighbour(np.linalg.norm(Cb[:, None] - Cb[None], axis=-1), position))
    nearest = np.argmin(D + np.diag(np.full(k, np.inf)), axis=1)
    return statistic(observed, k, nulls={"shuffled_cycle": null_summary(observed, draws, "greater")},
                     ci95=[float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))] if boot else None,
                     ci95_reason="n_bootstrap=0", alternative="greater",
                     chance=2 / (k - 1), nearest={c: cycle[j] for c, j in zip(cycle, nearest)},
                     what="share of categories whose nearest centroid is a neighbour in the cycle")
