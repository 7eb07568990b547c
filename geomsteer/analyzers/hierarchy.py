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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..types import AnalysisResult, ConceptHierarchy, Directions
from .base import Analyzer

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


# --------------------------------------------------------------------------------------------
# Small pieces


def _cos_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ij,ij->i", A, B) / (na * nb)
    return np.where((na > 0) & (nb > 0), out, np.nan)


def _tree_distance_similarity(hierarchy: ConceptHierarchy, names: Sequence[str]) -> np.ndarray:
    """1 / (1 + tree distance) between all categories (0 across separate trees)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    idx = {n: i for i, n in enumerate(names)}
    e = np.array([(idx[p], idx[c]) for p, c in hierarchy.graph.edges], dtype=np.int64).reshape(-1, 2)
    A = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(names), len(names)))
    D = shortest_path(A, directed=False, unweighted=True)
    return np.where(np.isfinite(D), 1.0 / (1.0 + D), 0.0)


def _pearson_upper(C: np.ndarray, S: np.ndarray, keep: np.ndarray | None = None) -> float:
    iu = np.triu_indices(len(C), k=1)
    x, y = C[iu], S[iu]
    if keep is not None:
        x, y = x[keep], y[keep]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _unit_cos(L: np.ndarray) -> np.ndarray:
    Ln = L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-300)
    return Ln @ Ln.T


# The statistics, each measured identically on the data and on every null draw:
# name -> (unit, alternative, description). "less" means: closer to 0 than the null (more orthogonal).
STATISTICS: dict[str, tuple[str, str, str]] = {
    "heldout_auc": ("category", "greater",
                    "AUC of held-out tokens (split by lemma) against random vocabulary tokens, both projected on "
                    "the direction fit on the train split; 0.5 = no separation"),
    "heldout_projection": ("category", "greater",
                           "mean normalized projection g(y)·ℓ/‖ℓ‖² of held-out tokens on the train-split direction "
                           "(train tokens give 1 by construction)"),
    "orthogonality_parent_child": ("edge", "less", "|cos(ℓ_parent, ℓ_child − ℓ_parent)| (Park et al. predict 0)"),
    "orthogonality_siblings": ("sibling pair", "less", "|cos(ℓ_parent, ℓ_child1 − ℓ_child0)| (Park et al. predict 0)"),
    "orthogonality_chain": ("chain", "less", "|cos(ℓ_child − ℓ_parent, ℓ_parent − ℓ_grandparent)|"),
    "simplex_nearest_vertex": ("parent", "greater",
                               "fraction of held-out child tokens whose largest barycentric coordinate in the "
                               "children's affine span is their own child (parents with ≥ 3 children)"),
    "simplex_span_auc": ("parent", "greater",
                         "AUC: held-out child tokens lie closer to the children's affine span than random tokens"),
    "simplex_min_singular_value": ("parent", "two-sided",
                                   "smallest nonzero singular value of the centred matrix of the children's vectors "
                                   "(how far the simplex is from degenerate)"),
    "cosine_vs_tree_distance": ("category pair", "greater",
                                "Pearson r between cos(ℓ_w, ℓ_z) and 1/(1 + tree distance), all category pairs"),
}

NULLS: dict[str, str] = {
    "shuffled_tokens": "a random permutation of the whole vocabulary applied to every category: sizes, nesting and "
                       "overlaps kept, meaning gone",
    "nested_random_sets": "a random permutation of the tree's own tokens (the words of this part of speech): the "
                          "same nested sets of the same sizes, filled with the wrong words",
    "random_unembedding": "an i.i.d. Gaussian unembedding, whitened (rows of N(0, I)): the same tree and tokens, a "
                          "model that knows nothing",
}


@dataclass(frozen=True)
class _Tree:
    """Index structures of the hierarchy, shared by the observed run and every null draw."""

    names: list[str]
    edges: np.ndarray  # (E, 2) parent, child
    chains: np.ndarray  # (C, 3) grandparent, parent, child
    siblings: np.ndarray  # (S, 3) parent, child0, child1
    simplices: list[tuple[int, np.ndarray]]  # (parent, children) for parents with >= 3 children
    sim: np.ndarray  # 1 / (1 + tree distance)


def _tree(h: ConceptHierarchy, names: Sequence[str]) -> _Tree:
    idx = {n: i for i, n in enumerate(names)}
    edges = sorted(((idx[p], idx[c]) for p, c in h.graph.edges), key=lambda e: (e[1], e[0]))
    chains = [(idx[gp], p, c) for p, c in edges if (gp := h.parent(names[p])) is not None]
    siblings, simplices = [], []
    for p in names:
        kids = sorted((idx[c] for c in h.graph.successors(p)))
        siblings.extend((idx[p], a, b) for i, a in enumerate(kids) for b in kids[i + 1:])
        if len(kids) >= 3:
            simplices.append((idx[p], np.array(kids)))
    return _Tree(list(names), np.array(edges, dtype=np.int64).reshape(-1, 2),
                 np.array(chains, dtype=np.int64).reshape(-1, 3), np.array(siblings, dtype=np.int64).reshape(-1, 3),
                 simplices, _tree_distance_similarity(h, names))


def lemma_split(tokens: np.ndarray, groups: Mapping[int, int], test_size: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split a category's tokens into (train, test) with every lemma's forms on one side.

    ``groups`` maps a token id to its lemma group (tokens shared by two lemmas join their groups);
    a token without a group is a group of its own. Groups are taken in random order into the
    test side until it holds ``test_size`` of the tokens; both sides keep at least one token
    (the train side two, for a direction).
    """
    toks = np.asarray(tokens)
    gid = np.array([groups.get(int(t), -1 - int(t)) for t in toks])
    uniq = rng.permutation(np.unique(gid))
    target = max(1, int(round(test_size * len(toks))))
    test_mask = np.zeros(len(toks), dtype=bool)
    for gr in uniq:
        if test_mask.sum() >= target:
            break
        cand = test_mask | (gid == gr)
        if len(toks) - cand.sum() < 2:
            continue
        test_mask = cand
    if not test_mask.any():  # one big group: fall back to tokens
        test_mask[rng.permutation(len(toks))[:target]] = True
    return np.sort(toks[~test_mask]), np.sort(toks[test_mask])


def tree_split(token_sets: Sequence[np.ndarray], groups: Mapping[int, int], test_size: float,
               rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """One held-out split for the whole tree: a random ``test_size`` of the lemma groups is held out
    in every category at once, so the train sets stay nested like the categories (and a word is
    never on the train side of one category and the test side of its parent). A category left
    with no held-out token or fewer than two train tokens is split on its own by
    :func:`lemma_split`. Returns the splits and how many categories needed that.
    """
    used = np.unique(np.concatenate([np.asarray(t) for t in token_sets]))
    gid = np.array([groups.get(int(t), -1 - int(t)) for t in used])
    uniq = rng.permutation(np.unique(gid))
    held = set(uniq[: max(1, int(round(test_size * len(uniq))))].tolist())
    is_test = np.zeros(int(used.max()) + 1, dtype=bool)
    is_test[used] = [x in held for x in gid]
    out, n_local = [], 0
    for toks in token_sets:
        toks = np.asarray(toks)
        te = is_test[toks]
        if te.sum() < 1 or (~te).sum() < 2:
            out.append(lemma_split(toks, groups, test_size, rng))
            n_local += 1
        else:
            out.append((toks[~te], toks[te]))
    return out, n_local


# --------------------------------------------------------------------------------------------
# The analyzer


class HierarchyAnalyzer(Analyzer):
    """Estimate category directions on a WordNet hierarchy and test Park et al.'s predictions.

    Parameters (stored as given; validated in :meth:`fit`)
    ----------
    estimator: ``"lda"`` (Park et al.'s, fast path), ``"lda_reference"`` (plain, slow) or ``"mean"``.
    test_size: fraction of each category's tokens held out (split by lemma) for projections and simplices.
    n_random_tokens: size of the pool of random vocabulary tokens that held-out tokens are compared with.
    n_null_draws: draws of each null (shuffled tokens, nested random sets, random unembedding).
    eig_floor: eigenvalues of Cov(gamma) below this fraction of the largest are floored.
    baselines: draw the nulls and compute the contrasts (Euclidean, mean estimator, random parent).
    seed: seeds every random choice (splits, shuffles, random unembeddings).
    n_jobs: threads estimating categories in parallel (default: all cores); each runs BLAS on
        one thread, which on small matrices is much faster than one multi-threaded BLAS call.

    After ``fit``: ``whitening_``, ``directions_`` (:class:`~geomsteer.types.Directions` in the
    whitened space), ``mean_directions_``, ``categories_`` and ``simplices_`` (tables),
    ``metrics_`` (every statistic in :mod:`geomsteer.stats`' shape), ``null_draws_`` (each
    statistic's draws per null), ``cosine_matrix_``; :meth:`result` returns an
    :class:`~geomsteer.types.AnalysisResult`.
    """

    _fit_call = "fit(unembedding, hierarchy)"
    _fitted = "metrics_"
    _not_params = ('progress',)

    def __init__(self, estimator: str = "lda", test_size: float = 0.3, n_random_tokens: int = 1000,
                 n_null_draws: int = 4, eig_floor: float = 1e-10, baselines: bool = True, seed: int = 0,
                 n_jobs: int | None = None, progress: bool = True):
        self.estimator = estimator
        self.test_size = test_size
        self.n_random_tokens = n_random_tokens
        self.n_null_draws = n_null_draws
        self.eig_floor = eig_floor
        self.baselines = baselines
        self.seed = seed
        self.n_jobs = n_jobs
        self.progress = progress

    # -- validation -----------------------------------------------------------------------
    def _validate(self, gamma: np.ndarray, hierarchy: ConceptHierarchy) -> None:
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}: expected one of {', '.join(ESTIMATORS)}")
        if not (isinstance(self.test_size, float) and 0.0 < self.test_size < 1.0):
            raise ConfigError(f"test_size must be a float strictly between 0 and 1, got {self.test_size!r}")
        if not isinstance(self.n_random_tokens, (int, np.integer)) or self.n_random_tokens < 1:
            raise ConfigError(f"n_random_tokens must be a positive integer, got {self.n_random_tokens!r}")
        if not isinstance(self.n_null_draws, (int, np.integer)) or self.n_null_draws < 2:
            raise ConfigError(f"n_null_draws must be an integer >= 2 (a null needs a spread), got {self.n_null_draws!r}; "
                              "pass n_null_draws=2 or more (the CLI's default is 4)")
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
        import time

        from .._progress import step, track

        if isinstance(unembedding, Directions):
            gamma, model, prov = np.asarray(unembedding.vectors), unembedding.model, dict(unembedding.provenance)
        else:
            gamma, model, prov = np.asarray(unembedding), "array", {}
        self._validate(gamma, hierarchy)
        t_start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        names = hierarchy.names
        token_sets = [hierarchy.tokens(n) for n in names]
        V, d = gamma.shape
        estimate = ESTIMATORS[self.estimator]
        quiet = not self.progress
        n_jobs = self.n_jobs or os.cpu_count() or 1

        tree = _tree(hierarchy, names)

        def run(embed: Callable[[np.ndarray], np.ndarray], sets: Sequence[np.ndarray], label: str | None = None,
                fn: Callable[[np.ndarray], np.ndarray] = estimate) -> np.ndarray:
            return _map_categories(lambda i: fn(embed(sets[i])), len(sets), n_jobs,
                                   None if quiet else label, sizes=[len(x) for x in sets])

        with step("Whitening the unembedding (causal inner product)") if not quiet else contextlib.nullcontext():
            wh = fit_whitening(gamma, self.eig_floor)
        used = np.unique(np.concatenate(token_sets))
        pool = np.sort(rng.choice(V, size=min(self.n_random_tokens, V), replace=False))
        rows = np.unique(np.concatenate([used, pool]))
        g_cache = _RowCache(rows, wh(gamma[rows]))
        g = g_cache.get
        groups = dict(getattr(hierarchy, "token_groups", None) or {})
        splits, n_local_splits = tree_split(token_sets, groups, self.test_size, rng)
        timings: dict[str, float] = {}

        # Every statistic is measured on directions fit to the training lemmas, for the data and for
        # each null draw alike; the directions saved and drawn are fit to all tokens.
        train_sets = [s_[0] for s_ in splits]
        t0 = time.perf_counter()
        L = run(g, token_sets, f"{self.estimator} directions ({len(names)} categories)")
        L_train = run(g, train_sets, "held-out directions (train split)")
        obs = _measure(L_train, g, splits, pool, token_sets, tree, train_projection=True)
        L_mean = run(g, token_sets, None, mean_direction)
        timings["observed"] = time.perf_counter() - t0

        null_draws: dict[str, list[dict[str, Any]]] = {}
        contrasts: dict[str, dict[str, Any]] = {}
        if self.baselines:
            B = int(self.n_null_draws)
            g32 = _RowCache(rows, g_cache.rows.astype(np.float32)).get
            jobs = [(k, null, b) for k, null in enumerate(NULLS) for b in range(B)]

            def one_draw(job: tuple[int, str, int]) -> dict[str, Any]:
                k, null, b = job
                r = np.random.default_rng([self.seed, k + 1, b])
                ge, sets_b, splits_b = self._null_draw(null, r, gamma, wh, used, pool, token_sets, splits, g32, d)
                Lb = np.stack([estimate(ge(s_[0])) for s_ in splits_b])
                return _measure(Lb, ge, splits_b, pool, sets_b, tree)

            # Draws run side by side, each on one BLAS thread: the measuring is partly Python, and
            # two draws at once keep both cores busy where one draw's threads would not.
            from concurrent.futures import ThreadPoolExecutor

            from threadpoolctl import threadpool_limits

            t0 = time.perf_counter()
            with threadpool_limits(1), ThreadPoolExecutor(max(1, n_jobs)) as ex:
                results = ex.map(one_draw, jobs)
                if not quiet:
                    results = track(results, f"null distributions: {len(NULLS)} nulls x {B} draws", total=len(jobs))
                for (k, null, b), res in zip(jobs, results):
                    null_draws.setdefault(null, []).append(res)
            timings["null_draws"] = time.perf_counter() - t0
            # Contrasts (not nulls): the plain inner product, the mean estimator, an unrelated parent.
            t0 = time.perf_counter()
            g_euc = _RowCache(rows, np.asarray(gamma[rows], dtype=np.float64) - wh.mean).get
            L_euc = run(g_euc, train_sets, None if quiet else "contrast: Euclidean inner product")
            L_mean_train = run(g, train_sets, None, mean_direction)
            for cname, Lc in (("euclidean", L_euc), ("mean_estimator", L_mean_train)):
                cu = _orthogonality_units(Lc, tree)
                cu.pop("_signed")
                contrasts[cname] = cu | {"cosine_vs_tree_distance": _pearson_upper(_unit_cos(Lc), tree.sim)}
            rp = np.array(_random_parents(hierarchy, names, tree.edges, rng), dtype=np.int64).reshape(-1, 2)
            contrasts["random_parent"] = {"orthogonality_parent_child": np.abs(
                _cos_rows(L_train[rp[:, 0]], L_train[rp[:, 1]] - L_train[rp[:, 0]])) if len(rp) else np.array([])}
            timings["contrasts"] = time.perf_counter() - t0

        metrics = self._assemble(obs, null_draws, contrasts, tree)

        e = tree.edges
        pc_full = _cos_rows(L[e[:, 0]], L[e[:, 1]] - L[e[:, 0]]) if len(e) else np.array([])
        pc_cos = dict(zip(e[:, 1].tolist(), pc_full.tolist()))
        table = []
        for i, n in enumerate(names):
            table.append({
                "synset": n,
                "parent": hierarchy.parent(n),
                "depth": hierarchy.graph.nodes[n].get("depth", 0),
                "n_tokens": int(len(token_sets[i])),
                "n_train": int(len(splits[i][0])),
                "n_test": int(len(splits[i][1])),
                "train_projection": float(obs["train_projection"][i]),
                "test_projection": float(obs["units"]["heldout_projection"][i]),
                "random_projection": float(obs["random_projection"][i]),
                "heldout_auc": float(obs["units"]["heldout_auc"][i]),
                "orthogonality_cos": pc_cos.get(i, float("nan")),
                "norm": float(np.linalg.norm(L[i])),
                "merged": list(hierarchy.graph.nodes[n].get("merged", [])),
            })
        simplex_rows = [{"parent": names[p], "n_children": int(len(kids)), "children": [names[c] for c in kids],
                         "nearest_vertex": float(obs["units"]["simplex_nearest_vertex"][j]),
                         "chance_one_over_k": 1.0 / len(kids),
                         "span_auc": float(obs["units"]["simplex_span_auc"][j]),
                         "min_singular_value": float(obs["units"]["simplex_min_singular_value"][j])}
                        for j, (p, kids) in enumerate(tree.simplices)]

        self.whitening_ = wh
        self._embedded = g_cache
        self.names_ = names
        self.directions_ = Directions(L.astype(np.float32), names, "causal:unembed", model,
                                      {"estimator": self.estimator, **prov})
        self.mean_directions_ = Directions(L_mean.astype(np.float32), names, "causal:unembed", model,
                                           {"estimator": "mean", **prov})
        self.token_ids_ = token_sets
        self.splits_ = splits
        self.categories_ = table
        self.simplices_ = simplex_rows
        self.metrics_ = metrics
        self.observed_units_ = obs["units"]
        self.signed_ = obs["signed"]
        self.null_draws_ = {
            s: {nm: np.array([_summary(dr["units"].get(s, dr["scalars"].get(s))) for dr in draws])
                for nm, draws in null_draws.items()} for s in STATISTICS}
        self.null_signed_ = {nm: {k: np.concatenate([dr["signed"][k] for dr in draws]) for k in obs["signed"]}
                             for nm, draws in null_draws.items()}
        self.null_units_ = {nm: {s: np.concatenate([np.ravel(dr["units"][s]) for dr in draws])
                                 for s in obs["units"]} for nm, draws in null_draws.items()}
        self.contrasts_ = contrasts
        self.cosine_matrix_ = _unit_cos(L)
        self.tree_similarity_ = tree.sim
        self.edges_ = [tuple(e) for e in tree.edges.tolist()]
        self.model_ = model
        timings["total"] = time.perf_counter() - t_start
        self.timings_ = {k: round(v, 2) for k, v in timings.items()}
        self.provenance_ = {"model": model, "unembedding": prov, "hierarchy": dict(hierarchy.coverage),
                            "n_whitening_eigenvalues_floored": wh.n_floored,
                            "split": ("by lemma group, one held-out set for the whole tree" if groups
                                      else "by token, one held-out set for the whole tree (the hierarchy carries "
                                           "no lemma groups)"),
                            "n_categories_split_on_their_own": n_local_splits,
                            "nulls": {k: NULLS[k] for k in null_draws}, "seconds": self.timings_}
        return self

    def _null_draw(self, null: str, r: np.random.Generator, gamma, wh, used, pool, token_sets, splits, g, d):
        """One draw of a null: (embedding lookup, token sets, splits), nesting and split structure kept."""
        if null == "random_unembedding":
            ids = np.unique(np.concatenate([used, pool]))
            cache = _RowCache(ids, r.standard_normal((len(ids), d), dtype=np.float32))
            return cache.get, token_sets, splits
        if null == "shuffled_tokens":
            perm = r.permutation(gamma.shape[0])
            mapping = lambda t: perm[t]  # noqa: E731
            targets = perm[used]
            ids = np.unique(np.concatenate([targets, pool]))
            ge = _RowCache(ids, wh(gamma[ids]).astype(np.float32)).get
        else:  # nested_random_sets: permute the tree's own tokens
            lut = np.arange(int(used.max()) + 1)
            lut[used] = used[r.permutation(len(used))]
            mapping = lambda t: lut[t]  # noqa: E731
            ge = g
        sets = [np.sort(mapping(t)) for t in token_sets]
        spl = [(np.sort(mapping(tr)), np.sort(mapping(te))) for tr, te in splits]
        return ge, sets, spl

    def _assemble(self, obs, null_draws, contrasts, tree: _Tree) -> dict[str, Any]:
        from ..stats import bootstrap_ci, null_summary, statistic

        metrics: dict[str, Any] = {}
        for s, (unit, alt, desc) in STATISTICS.items():
            if s in obs["units"]:
                u = obs["units"][s]
                observed = _summary(u)
                n = int(np.isfinite(u).sum())
                ci = bootstrap_ci(u, seed=self.seed)
                nulls = {nm: null_summary(observed, [_summary(dr["units"][s]) for dr in draws], alt)
                         for nm, draws in null_draws.items()}
            else:
                observed = obs["scalars"][s]
                n = len(tree.names) * (len(tree.names) - 1) // 2
                ci = _pair_bootstrap_ci(obs["cos"], tree.sim, seed=self.seed)
                nulls = {nm: null_summary(observed, [dr["scalars"][s] for dr in draws], alt)
                         for nm, draws in null_draws.items()}
            con = {}
            for cn, cv in contrasts.items():
                if s in cv:
                    v = cv[s]
                    con[cn] = _summary(v) if np.ndim(v) else float(v)
            metrics[s] = statistic(
                observed, n, nulls=nulls, ci95=ci, alternative=alt,
                p_reason=None if self.baselines else "nulls skipped (baselines=False); not for reporting",
                unit=unit, description=desc,
                contrasts=con, **({"contrasts_note": CONTRAST_NOTE} if con else {}))
        return metrics

    def embed_(self, token_ids: np.ndarray) -> np.ndarray:
        """Whitened unembedding rows g(y) of tokens that belong to a category (after ``fit``)."""
        self.check_fitted("_embedded")
        return self._embedded.get(token_ids)

    def result(self) -> AnalysisResult:
        self.check_fitted("metrics_")
        return AnalysisResult(
            analyzer="hierarchy",
            params=self.get_params(),
            provenance=self.provenance_,
            metrics=self.metrics_,
            tables={"categories": self.categories_, "simplices": self.simplices_},
        )


CONTRAST_NOTE = ("contrasts are not nulls: 'euclidean' is the same estimator without the whitening (Park et al. "
                 "expect orthogonality to vanish there), 'mean_estimator' uses mean vectors instead of LDA, and "
                 "'random_parent' pairs each child with a category it is not a subset of, so its cosine is about "
                 "-0.6 whatever the model does")


def _summary(v: Any) -> float:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        return float(a)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _pair_bootstrap_ci(C: np.ndarray, S: np.ndarray, seed: int, n_boot: int = 100) -> list[float] | None:
    """Bootstrap over categories of the Pearson r between cosines and tree similarity (pairs of
    distinct original categories only)."""
    k = len(C)
    if k < 4:
        return None
    rng = np.random.default_rng([seed, 0xC05])
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, k, size=k)
        distinct = (idx[:, None] != idx[None, :])[np.triu_indices(k, k=1)]
        vals.append(_pearson_upper(C[np.ix_(idx, idx)], S[np.ix_(idx, idx)], keep=distinct))
    vals = np.asarray(vals)
    vals = vals[np.isfinite(vals)]
    if vals.size < 10:
        return None
    return [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


# --------------------------------------------------------------------------------------------
# Pieces of fit


def _orthogonality_units(L: np.ndarray, tree: _Tree) -> dict[str, np.ndarray]:
    e, ch, sb = tree.edges, tree.chains, tree.siblings
    pc = _cos_rows(L[e[:, 0]], L[e[:, 1]] - L[e[:, 0]]) if len(e) else np.array([])
    chain = _cos_rows(L[ch[:, 2]] - L[ch[:, 1]], L[ch[:, 1]] - L[ch[:, 0]]) if len(ch) else np.array([])
    sib = _cos_rows(L[sb[:, 0]], L[sb[:, 2]] - L[sb[:, 1]]) if len(sb) else np.array([])
    return {"orthogonality_parent_child": np.abs(pc), "orthogonality_siblings": np.abs(sib),
            "orthogonality_chain": np.abs(chain), "_signed": {"parent_child": pc, "siblings": sib, "chain": chain}}


def _measure(L_train: np.ndarray, g: Callable[[np.ndarray], np.ndarray], splits, pool: np.ndarray,
             token_sets, tree: _Tree, train_projection: bool = False) -> dict[str, Any]:
    """Every statistic's per-unit values for one set of train-split directions (the data or a null draw).

    All token projections come from two products: the tree's tokens and the random pool against
    every direction at once.
    """
    from ..stats import auc

    o = _orthogonality_units(L_train, tree)
    signed = o.pop("_signed")
    k = len(token_sets)
    ids = np.unique(np.concatenate([np.asarray(t) for t in token_sets]))
    G = g(ids)
    P = np.asarray(G @ L_train.T.astype(G.dtype), dtype=np.float64)  # (tokens, categories)
    Gp = g(pool)
    Pp = np.asarray(Gp @ L_train.T.astype(G.dtype), dtype=np.float64)  # (pool, categories)
    Gp = np.asarray(Gp, dtype=np.float64)
    nn = np.einsum("ij,ij->i", L_train, L_train)
    member = np.zeros(max(int(ids.max()), int(pool.max())) + 1, dtype=bool)
    test_proj, train_proj, rand_proj, aucs = (np.full(k, np.nan) for _ in range(4))
    for i, (tr, te) in enumerate(splits):
        if nn[i] == 0 or not np.isfinite(nn[i]):
            continue
        member[token_sets[i]] = True
        pr = Pp[~member[pool], i] / nn[i]
        member[token_sets[i]] = False
        pt = P[np.searchsorted(ids, te), i] / nn[i]
        test_proj[i], rand_proj[i] = pt.mean(), pr.mean()
        if train_projection:
            train_proj[i] = float(P[np.searchsorted(ids, tr), i].mean() / nn[i])
        aucs[i] = auc(pt, pr)
    m = len(tree.simplices)
    nearest, span_auc, min_sv = np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan)
    for j, (p, kids) in enumerate(tree.simplices):
        Lk = L_train[kids]
        sv = np.linalg.svd(Lk - Lk.mean(axis=0), compute_uv=False)
        min_sv[j] = sv[len(kids) - 2] if len(sv) >= len(kids) - 1 else 0.0
        Q, R = np.linalg.qr((Lk[1:] - Lk[0]).T)  # the affine span: Lk[0] + span(Q)
        tests = [splits[c][1] for c in kids]
        X = np.asarray(G[np.searchsorted(ids, np.concatenate(tests))], dtype=np.float64) - Lk[0]
        XQ = X @ Q
        try:
            lam = np.linalg.solve(R, XQ.T)  # barycentric coordinates of the projection, but the first
        except np.linalg.LinAlgError:
            continue
        bary = np.vstack([1.0 - lam.sum(axis=0), lam])
        own = np.repeat(np.arange(len(kids)), [len(t) for t in tests])
        nearest[j] = float((bary.argmax(axis=0) == own).mean())
        member[token_sets[p]] = True
        n_rnd = int((~member[pool]).sum())
        if n_rnd:
            Rr = Gp[~member[pool]] - Lk[0]
            dist_t = np.einsum("ij,ij->i", X, X) - np.einsum("ij,ij->i", XQ, XQ)
            RQ = Rr @ Q
            dist_r = np.einsum("ij,ij->i", Rr, Rr) - np.einsum("ij,ij->i", RQ, RQ)
            span_auc[j] = auc(-dist_t, -dist_r)
        member[token_sets[p]] = False
    C = _unit_cos(L_train)
    units = dict(o)
    units.update({"heldout_auc": aucs, "heldout_projection": test_proj, "simplex_nearest_vertex": nearest,
                  "simplex_span_auc": span_auc, "simplex_min_singular_value": min_sv})
    return {"units": units, "scalars": {"cosine_vs_tree_distance": _pearson_upper(C, tree.sim)},
            "signed": signed, "train_projection": train_proj, "random_projection": rand_proj, "cos": C}


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
        ids = np.asarray(ids)
        if ids.size and int(ids.max()) >= len(self.index):
            raise KeyError("token id outside the cached rows")
        ix = self.index[ids]
        if (ix < 0).any():
            raise KeyError("token id outside the cached rows")
        return self.rows[ix]


def _random_parents(h: ConceptHierarchy, names: Sequence[str], edges, rng) -> list[tuple[int, int]]:
    """For each (parent, child) edge, a random category that is neither an ancestor nor a descendant."""
    import networkx as nx

    idx = {n: i for i, n in enumerate(names)}
    out = []
    for _, c in edges:
        related = {idx[x] for x in nx.ancestors(h.graph, names[c]) | nx.descendants(h.graph, names[c])} | {c}
        candidates = [i for i in range(len(names)) if i not in related]
        if candidates:
            out.append((int(rng.choice(candidates)), int(c)))
    return out
