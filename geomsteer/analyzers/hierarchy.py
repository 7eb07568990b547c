"""Hierarchical and categorical concept directions in the unembedding (Park, Choe, Jiang, Veitch 2024).

With the unembedding matrix gamma (vocab x d), the causal inner product whitens it:

    g(y) = Cov(gamma)^(-1/2) (gamma(y) - mean(gamma))

For a category w with tokens Y(w): G_w = g(Y(w)), mu = mean(G_w), Sigma = the Ledoit-Wolf
shrinkage covariance of G_w, u = Sigma^+ mu / ||Sigma^+ mu||, and the LDA direction is
l_w = (u . mu) u. The paper predicts l_w orthogonal to l_z - l_w for a child z of w, and the
children of a parent forming a simplex. A 2025 critique showed both also appear for nonsense
categories and random unembeddings, so :class:`HierarchyAnalyzer` reports every statistic next to
shuffled-token, random-category, random-unembedding, random-parent and Euclidean baselines.

:func:`lda_direction` is the fast path: Sigma is a multiple of the identity plus the low-rank
sample covariance, so Sigma^-1 mu is solved from the eigendecomposition of the smaller of the
two Gram matrices (n x n when the category has fewer tokens than dimensions), never by inverting
a d x d matrix. :func:`lda_direction_reference` is the published formula written plainly
(scikit-learn's LedoitWolf and a pseudo-inverse); tests and benchmarks hold the two together.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, NotFittedError
from ..types import AnalysisResult, ConceptHierarchy, Directions

__all__ = [
    "Whitening",
    "fit_whitening",
    "ledoit_wolf_shrinkage",
    "lda_direction",
    "lda_direction_reference",
    "mean_direction",
    "HierarchyAnalyzer",
]


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
    trace = row_sq.sum() / n
    mu = trace / d
    delta_ = float(np.sum(gram * gram)) / n**2
    beta_ = float(np.sum(row_sq**2))
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

    X = np.asarray(G, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2:
        raise DataError(f"expected a category's (n, d) token matrix with n >= 2, got shape {X.shape}")
    n, d = X.shape
    mu = X.mean(axis=0)
    small = n <= d
    if small:
        Xc = X - mu  # at most d x d numbers
        gram = Xc @ Xc.T
        row_sq = np.einsum("ij,ij->i", Xc, Xc)
    else:
        # Centre chunk by chunk in one reused buffer: exact centring without a full copy of X.
        gram = np.zeros((d, d))
        row_sq = np.empty(n)
        buf = np.empty((min(n, 4096), d))
        for i in range(0, n, len(buf)):
            c = buf[: min(len(buf), n - i)]
            np.subtract(X[i : i + len(c)], mu, out=c)
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
        Xc = X - mu
        gram = Xc.T @ Xc
    return _scale(_pinv_solve(Xc, gram, small, a, b, mu, rcond), mu)


def _pinv_solve(Xc, gram, small, a, b, mu, rcond):
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


# --------------------------------------------------------------------------------------------
# Small statistics


def _cos_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ij,ij->i", A, B) / (na * nb)
    return np.where((na > 0) & (nb > 0), out, np.nan)


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, mean |.|, median |.| and spread of a set of cosines (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "mean_abs": float("nan"), "median_abs": float("nan"), "std": float("nan")}
    return {"n": int(v.size), "mean": float(v.mean()), "mean_abs": float(np.abs(v).mean()),
            "median_abs": float(np.median(np.abs(v))), "std": float(v.std())}


def _tree_distance_similarity(hierarchy: ConceptHierarchy, names: Sequence[str]) -> np.ndarray:
    import networkx as nx

    und = hierarchy.graph.to_undirected(as_view=True)
    idx = {n: i for i, n in enumerate(names)}
    S = np.zeros((len(names), len(names)))
    for src, dists in nx.all_pairs_shortest_path_length(und):
        i = idx[src]
        for dst, dd in dists.items():
            S[i, idx[dst]] = 1.0 / (1.0 + dd)
    return S


# --------------------------------------------------------------------------------------------
# The analyzer


class HierarchyAnalyzer:
    """Estimate category directions on a WordNet hierarchy and test Park et al.'s predictions.

    Parameters (stored as given; validated in :meth:`fit`)
    ----------
    estimator: ``"lda"`` (Park et al.'s, fast path), ``"lda_reference"`` (plain, slow) or ``"mean"``.
    test_size: fraction of each category's tokens held out for the projection and simplex checks.
    n_random_tokens: size of the pool of random vocabulary tokens used as the null for projections.
    eig_floor: eigenvalues of Cov(gamma) below this fraction of the largest are floored.
    baselines: compute the shuffled-token, random-category, random-unembedding and Euclidean runs.
    seed: seeds every random choice (splits, shuffles, random unembedding).
    n_jobs: threads estimating categories in parallel (default: all cores); each runs BLAS on
        one thread, which on small matrices is much faster than one multi-threaded BLAS call.

    After ``fit``: ``whitening_``, ``directions_`` (:class:`~geomsteer.types.Directions` in the
    whitened space), ``mean_directions_``, ``categories_`` (a table), ``metrics_``,
    ``cosine_matrix_``; :meth:`result` returns an :class:`~geomsteer.types.AnalysisResult`.
    """

    def __init__(self, estimator: str = "lda", test_size: float = 0.3, n_random_tokens: int = 1000,
                 eig_floor: float = 1e-10, baselines: bool = True, seed: int = 0, n_jobs: int | None = None,
                 progress: bool = True):
        self.estimator = estimator
        self.test_size = test_size
        self.n_random_tokens = n_random_tokens
        self.eig_floor = eig_floor
        self.baselines = baselines
        self.seed = seed
        self.n_jobs = n_jobs
        self.progress = progress

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in
                ("estimator", "test_size", "n_random_tokens", "eig_floor", "baselines", "seed", "n_jobs")}

    # -- validation -----------------------------------------------------------------------
    def _validate(self, gamma: np.ndarray, hierarchy: ConceptHierarchy) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}: expected one of {', '.join(ESTIMATORS)}")
        if not (isinstance(self.test_size, float) and 0.0 < self.test_size < 1.0):
            raise ConfigError(f"test_size must be a float strictly between 0 and 1, got {self.test_size!r}")
        if not isinstance(self.n_random_tokens, (int, np.integer)) or self.n_random_tokens < 1:
            raise ConfigError(f"n_random_tokens must be a positive integer, got {self.n_random_tokens!r}")
        if gamma.ndim != 2:
            raise DataError(f"expected a 2-D unembedding matrix (vocab, d), got an array of shape {gamma.shape}")
        if len(hierarchy) == 0:
            raise DataError("the hierarchy has no categories; lower min_tokens when building it")
        top = max(int(hierarchy.tokens(n).max()) for n in hierarchy.graph)
        if top >= gamma.shape[0]:
            raise DataError(
                f"the hierarchy names token id {top} but the unembedding has {gamma.shape[0]} rows; "
                "build the hierarchy with the same model's tokenizer"
            )
        small = [n for n in hierarchy.graph if len(hierarchy.tokens(n)) < 4]
        if small:
            raise DataError(
                f"categories need at least 4 tokens for a train/test split; {small[0]} has "
                f"{len(hierarchy.tokens(small[0]))}; build the hierarchy with a larger min_tokens"
            )

    # -- fitting --------------------------------------------------------------------------
    def fit(self, unembedding: Directions | np.ndarray, hierarchy: ConceptHierarchy) -> "HierarchyAnalyzer":
        from .._progress import step

        if isinstance(unembedding, Directions):
            gamma, model, prov = np.asarray(unembedding.vectors), unembedding.model, dict(unembedding.provenance)
        else:
            gamma, model, prov = np.asarray(unembedding), "array", {}
        self._validate(gamma, hierarchy)
        rng = np.random.default_rng(self.seed)
        names = hierarchy.names
        token_sets = [hierarchy.tokens(n) for n in names]
        V, d = gamma.shape
        estimate = ESTIMATORS[self.estimator]
        quiet = not self.progress

        n_jobs = self.n_jobs or os.cpu_count() or 1

        def run(embed: Callable[[np.ndarray], np.ndarray], sets: Sequence[np.ndarray], label: str,
                fn: Callable[[np.ndarray], np.ndarray] = estimate) -> np.ndarray:
            return _map_categories(lambda i: fn(embed(sets[i])), len(sets), n_jobs,
                                   None if quiet else label, sizes=[len(x) for x in sets])

        with step("Whitening the unembedding (causal inner product)") if not quiet else contextlib.nullcontext():
            wh = fit_whitening(gamma, self.eig_floor)
        used = np.unique(np.concatenate(token_sets))
        pool = rng.choice(V, size=min(self.n_random_tokens, V), replace=False)
        rows = np.unique(np.concatenate([used, pool]))
        g_cache = _RowCache(rows, wh(gamma[rows]))
        g = g_cache.get

        # Train/test split of every category (70/30 by default), seeded.
        splits = []
        for toks in token_sets:
            perm = rng.permutation(len(toks))
            n_test = max(1, int(round(self.test_size * len(toks))))
            splits.append((np.sort(toks[perm[n_test:]]), np.sort(toks[perm[:n_test]])))

        L = run(g, token_sets, f"{self.estimator} directions ({len(names)} categories)")
        L_mean = run(g, token_sets, "mean directions", mean_direction)
        L_train = run(g, [s[0] for s in splits], "held-out directions (train split)")

        edges, chains = _edges_and_chains(hierarchy, names)
        rand_parent = _random_parents(hierarchy, names, edges, rng)
        metrics: dict[str, Any] = {}

        # Projection of train, test and random tokens onto the train-split direction.
        proj = _projections(g, L_train, splits, pool, token_sets)
        metrics["projection"] = {"observed": _proj_summary(proj)}

        ortho = {"lda": _orthogonality(L, edges, chains, rand_parent)}
        ortho["mean_estimator"] = _orthogonality(L_mean, edges, chains, rand_parent)
        Sim = _tree_distance_similarity(hierarchy, names)
        heat = {"observed": _heat_corr(L, Sim)}
        simplex = _simplices(hierarchy, names, g, L_train, splits, pool)

        if self.baselines:
            # Shuffled tokens: a random permutation of the vocabulary, so each category keeps its
            # size and nesting but its tokens are arbitrary.
            perm = rng.permutation(V)
            shuf_rows = np.unique(np.concatenate([perm[rows]]))
            g_shuf_cache = _RowCache(shuf_rows, wh(gamma[shuf_rows]))
            g_shuf = lambda ids: g_shuf_cache.get(perm[ids])  # noqa: E731
            L_shuf = run(g_shuf, token_sets, "baseline: shuffled tokens")
            L_shuf_train = run(g_shuf, [s[0] for s in splits], "baseline: shuffled tokens (train split)")
            proj_s = _projections(g_shuf, L_shuf_train, splits, pool, token_sets)
            self.shuffled_projection_values_ = proj_s
            metrics["projection"]["shuffled_tokens"] = _proj_summary(proj_s)
            ortho["shuffled_tokens"] = _orthogonality(L_shuf, edges, chains, rand_parent)
            heat["shuffled_tokens"] = _heat_corr(L_shuf, Sim)
            simplex_s = _simplices(hierarchy, names, g_shuf, L_shuf_train, splits, pool)

            # Random categories: independent random token sets of the same sizes (no nesting).
            rand_sets = [np.sort(rng.choice(rows, size=len(t), replace=False)) for t in token_sets]
            L_rcat = run(g, rand_sets, "baseline: random categories")
            ortho["random_categories"] = _orthogonality(L_rcat, edges, chains, rand_parent)
            heat["random_categories"] = _heat_corr(L_rcat, Sim)

            # Euclidean: the same estimator on the centred, unwhitened unembedding.
            g_euc_cache = _RowCache(rows, np.asarray(gamma[rows], dtype=np.float64) - wh.mean)
            L_euc = run(g_euc_cache.get, token_sets, "baseline: Euclidean inner product")
            ortho["euclidean"] = _orthogonality(L_euc, edges, chains, rand_parent)
            heat["euclidean"] = _heat_corr(L_euc, Sim)

            # Random unembedding: i.i.d. Gaussian of the same shape, whitened the same way.
            g_rand_cache, wh_rand = _random_unembedding(V, d, rows, self.seed, self.eig_floor)
            L_rand = run(g_rand_cache.get, token_sets, "baseline: random unembedding")
            L_rand_train = run(g_rand_cache.get, [s[0] for s in splits], "baseline: random unembedding (train split)")
            metrics["projection"]["random_unembedding"] = _proj_summary(
                _projections(g_rand_cache.get, L_rand_train, splits, pool, token_sets))
            ortho["random_unembedding"] = _orthogonality(L_rand, edges, chains, rand_parent)
            heat["random_unembedding"] = _heat_corr(L_rand, Sim)
            simplex["baselines"] = {"shuffled_tokens": simplex_s["observed"]}

        metrics["orthogonality_parent_child"] = {k: v["parent_child"] for k, v in ortho.items()}
        metrics["orthogonality_parent_child"]["random_parent"] = ortho["lda"]["random_parent"]
        metrics["orthogonality_child_grandparent"] = {k: v["chain"] for k, v in ortho.items()}
        metrics["simplex"] = simplex
        metrics["cosine_vs_tree_distance"] = heat

        # Per-category table.
        pos = {n: i for i, n in enumerate(names)}
        pc_cos = {names[c]: float(v) for (_, c), v in zip(edges, ortho["lda"]["parent_child_values"])}
        table = []
        for i, n in enumerate(names):
            table.append({
                "synset": n,
                "parent": hierarchy.parent(n),
                "depth": hierarchy.graph.nodes[n].get("depth", 0),
                "n_tokens": int(len(token_sets[i])),
                "n_train": int(len(splits[i][0])),
                "n_test": int(len(splits[i][1])),
                "train_projection": proj["train"][i],
                "test_projection": proj["test"][i],
                "random_projection": proj["random"][i],
                "orthogonality_cos": pc_cos.get(n, float("nan")),
                "norm": float(np.linalg.norm(L[pos[n]])),
                "merged": list(hierarchy.graph.nodes[n].get("merged", [])),
            })

        if not self.baselines:
            self.shuffled_projection_values_ = None
        self.whitening_ = wh
        self._embedded = g_cache
        self.names_ = names
        self.directions_ = Directions(L.astype(np.float32), names, "causal:unembed", model,
                                      {"estimator": self.estimator, **prov})
        self.mean_directions_ = Directions(L_mean.astype(np.float32), names, "causal:unembed", model,
                                           {"estimator": "mean", **prov})
        self.token_ids_ = token_sets
        self.categories_ = table
        self.metrics_ = metrics
        Ln = L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-300)
        self.cosine_matrix_ = Ln @ Ln.T
        self.tree_similarity_ = Sim
        self.orthogonality_values_ = {k: {kk: vv for kk, vv in v.items() if kk.endswith("_values")}
                                      for k, v in ortho.items()}
        self.projection_values_ = proj
        self.edges_ = edges
        self.model_ = model
        self.provenance_ = {"model": model, "unembedding": prov, "hierarchy": dict(hierarchy.coverage),
                            "n_whitening_eigenvalues_floored": wh.n_floored}
        return self

    def embed_(self, token_ids: np.ndarray) -> np.ndarray:
        """Whitened unembedding rows g(y) of tokens that belong to a category (after ``fit``)."""
        if not hasattr(self, "_embedded"):
            raise NotFittedError("this HierarchyAnalyzer is not fitted yet: call fit(unembedding, hierarchy) first")
        return self._embedded.get(token_ids)

    def result(self) -> AnalysisResult:
        if not hasattr(self, "metrics_"):
            raise NotFittedError("this HierarchyAnalyzer is not fitted yet: call fit(unembedding, hierarchy) first")
        return AnalysisResult(
            analyzer="hierarchy",
            params=self.get_params(),
            provenance=self.provenance_,
            metrics=self.metrics_,
            tables={"categories": self.categories_},
        )


# --------------------------------------------------------------------------------------------
# Pieces of fit


def _map_categories(fn: Callable[[int], np.ndarray], n: int, n_jobs: int, label: str | None,
                    sizes: Sequence[int]) -> np.ndarray:
    """``np.stack([fn(i) for i in range(n)])``, largest categories first, on ``n_jobs`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    from .._progress import track

    order = sorted(range(n), key=lambda i: -sizes[i])
    out: list[np.ndarray | None] = [None] * n
    with threadpool_limits(1), ThreadPoolExecutor(max(1, n_jobs)) as ex:
        results = ex.map(lambda i: (i, fn(i)), order)
        for i, v in (results if label is None else track(results, label, total=n)):
            out[i] = v
    return np.stack(out)  # type: ignore[arg-type]


class _RowCache:
    """Whitened rows for a fixed set of token ids, looked up by id."""

    def __init__(self, ids: np.ndarray, rows: np.ndarray):
        self.ids = np.asarray(ids)
        self.rows = rows
        self.index = np.full(int(self.ids.max()) + 1, -1, dtype=np.int64)
        self.index[self.ids] = np.arange(len(self.ids))

    def get(self, ids: np.ndarray) -> np.ndarray:
        ix = self.index[np.asarray(ids)]
        if (ix < 0).any():
            raise KeyError("token id outside the cached rows")
        return self.rows[ix]


def _random_unembedding(V: int, d: int, rows: np.ndarray, seed: int, eig_floor: float,
                        chunk: int = 16384) -> tuple[_RowCache, Whitening]:
    """Whiten an i.i.d. N(0, 1) matrix of shape (V, d), generated chunk by chunk; keep ``rows``."""
    rng = np.random.default_rng([seed, 0xBA5E])
    total = np.zeros(d)
    cross = np.zeros((d, d))
    keep = np.zeros((len(rows), d))
    for start in range(0, V, chunk):
        x = rng.standard_normal((min(chunk, V - start), d))
        total += x.sum(axis=0)
        cross += x.T @ x
        sel = (rows >= start) & (rows < start + len(x))
        keep[sel] = x[rows[sel] - start]
    mean = total / V
    cov = cross / V - np.outer(mean, mean)
    wh = _whitening_from_cov(mean, cov, eig_floor)
    return _RowCache(rows, wh(keep)), wh


def _edges_and_chains(h: ConceptHierarchy, names: Sequence[str]):
    idx = {n: i for i, n in enumerate(names)}
    edges = [(idx[p], idx[c]) for p, c in h.graph.edges]
    edges.sort(key=lambda e: (e[1], e[0]))
    chains = []
    for p, c in edges:
        gp = h.parent(names[p])
        if gp is not None:
            chains.append((idx[gp], p, c))
    return edges, chains


def _random_parents(h: ConceptHierarchy, names: Sequence[str], edges, rng) -> list[tuple[int, int]]:
    """For each (parent, child) edge, a random category that is neither an ancestor nor a descendant."""
    import networkx as nx

    idx = {n: i for i, n in enumerate(names)}
    out = []
    for _, c in edges:
        related = {idx[x] for x in nx.ancestors(h.graph, names[c]) | nx.descendants(h.graph, names[c])} | {c}
        candidates = [i for i in range(len(names)) if i not in related]
        if candidates:
            out.append((int(rng.choice(candidates)), c))
    return out


def _orthogonality(L: np.ndarray, edges, chains, rand_parent) -> dict[str, Any]:
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    pc = _cos_rows(L[e[:, 0]], L[e[:, 1]] - L[e[:, 0]]) if len(e) else np.array([])
    ch = np.array(chains, dtype=np.int64).reshape(-1, 3)
    chain = _cos_rows(L[ch[:, 2]] - L[ch[:, 1]], L[ch[:, 1]] - L[ch[:, 0]]) if len(ch) else np.array([])
    r = np.array(rand_parent, dtype=np.int64).reshape(-1, 2)
    rp = _cos_rows(L[r[:, 0]], L[r[:, 1]] - L[r[:, 0]]) if len(r) else np.array([])
    return {"parent_child": summarize(pc), "chain": summarize(chain), "random_parent": summarize(rp),
            "parent_child_values": pc, "chain_values": chain, "random_parent_values": rp}


def _projections(g, L_train, splits, pool, token_sets) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"train": [], "test": [], "random": []}
    for i, (tr, te) in enumerate(splits):
        l = L_train[i]
        nn = float(l @ l)
        if nn == 0:
            for k in out:
                out[k].append(float("nan"))
            continue
        rnd = np.setdiff1d(pool, token_sets[i], assume_unique=False)
        out["train"].append(float((g(tr) @ l).mean() / nn))
        out["test"].append(float((g(te) @ l).mean() / nn))
        out["random"].append(float((g(rnd) @ l).mean() / nn))
    return out


def _proj_summary(p: dict[str, list[float]]) -> dict[str, float]:
    return {f"{k}_mean": float(np.nanmean(v)) for k, v in p.items()} | {
        f"{k}_std": float(np.nanstd(v)) for k, v in p.items()}


def _heat_corr(L: np.ndarray, Sim: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    Ln = L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-300)
    C = Ln @ Ln.T
    iu = np.triu_indices(len(L), k=1)
    x, y = C[iu], Sim[iu]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "mean_cos": float(np.mean(x)) if len(x) else float("nan")}
    return {"pearson": float(pearsonr(x, y)[0]), "spearman": float(spearmanr(x, y)[0]), "mean_cos": float(x.mean())}


def _simplices(h: ConceptHierarchy, names, g, L_train, splits, pool) -> dict[str, Any]:
    """For parents with >= 3 children: are the children's vectors affinely independent, and where
    do held-out child tokens land after projection onto the affine span of those vectors?

    ``fraction_test_inside``: held-out tokens whose barycentric coordinates are all >= 0;
    ``fraction_random_inside``: the same for random vocabulary tokens outside the parent;
    ``nearest_vertex_accuracy``: held-out tokens whose largest coordinate is their own child's
    vertex, against ``chance_accuracy`` = 1 / (number of children).
    """
    idx = {n: i for i, n in enumerate(names)}
    rows = []
    acc = dict.fromkeys(["inside", "total", "hit", "chance", "r_inside", "r_total"], 0.0)
    for p in names:
        kids = sorted(h.graph.successors(p), key=idx.get)
        if len(kids) < 3:
            continue
        k = [idx[c] for c in kids]
        Lk = L_train[k]
        D = (Lk[1:] - Lk[0]).T  # (d, m-1)
        sv = np.linalg.svd(D, compute_uv=False)
        independent = bool(sv.min() > 1e-8 * sv.max()) if sv.size else False
        rnd = np.setdiff1d(pool, h.tokens(p))

        def barycentric(ids: np.ndarray, Lk: np.ndarray = Lk, D: np.ndarray = D) -> np.ndarray:
            X = g(ids) - Lk[0]  # (n, d)
            lam_rest, *_ = np.linalg.lstsq(D, X.T, rcond=None)  # (m-1, n)
            return np.vstack([1.0 - lam_rest.sum(axis=0), lam_rest])  # (m, n), columns sum to 1

        n_in = n_tot = n_hit = 0
        for j, i in enumerate(k):
            te = splits[i][1]
            lam = barycentric(te)
            n_in += int((lam >= 0).all(axis=0).sum())
            n_hit += int((lam.argmax(axis=0) == j).sum())
            n_tot += len(te)
        lam_r = barycentric(rnd) if len(rnd) else np.zeros((len(k), 0))
        r_in, r_tot = int((lam_r >= 0).all(axis=0).sum()), lam_r.shape[1]
        acc["inside"] += n_in
        acc["total"] += n_tot
        acc["hit"] += n_hit
        acc["chance"] += n_tot / len(k)
        acc["r_inside"] += r_in
        acc["r_total"] += r_tot
        rows.append({"parent": p, "n_children": len(kids), "affinely_independent": independent,
                     "fraction_test_inside": n_in / n_tot if n_tot else float("nan"),
                     "fraction_random_inside": r_in / r_tot if r_tot else float("nan"),
                     "nearest_vertex_accuracy": n_hit / n_tot if n_tot else float("nan"),
                     "chance_accuracy": 1.0 / len(k)})
    summary = {
        "n_parents": len(rows),
        "fraction_affinely_independent": float(np.mean([r["affinely_independent"] for r in rows])) if rows else float("nan"),
        "fraction_test_inside": acc["inside"] / acc["total"] if acc["total"] else float("nan"),
        "fraction_random_inside": acc["r_inside"] / acc["r_total"] if acc["r_total"] else float("nan"),
        "nearest_vertex_accuracy": acc["hit"] / acc["total"] if acc["total"] else float("nan"),
        "chance_accuracy": acc["chance"] / acc["total"] if acc["total"] else float("nan"),
    }
    return {"observed": summary, "parents": rows}
