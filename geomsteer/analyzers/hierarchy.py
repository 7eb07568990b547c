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
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..types import AnalysisResult, ConceptHierarchy, Directions
from .hierarchy_stats import CONTRAST_NOTE, NULLS, RowCache, STATISTICS, Tree, build_tree, cos_rows, map_categories, measure_statistics, orthogonality_units, pair_bootstrap_ci, pearson_upper, random_parents, summary_value, tree_split, unit_cos
from .lda import (
    ESTIMATORS,
    Whitening,
    fit_whitening,
    lda_direction,
    lda_direction_reference,
    ledoit_wolf_shrinkage,
    mean_direction,
)
from .base import Analyzer

__all__ = [
    "Whitening",
    "fit_whitening",
    "ledoit_wolf_shrinkage",
    "lda_direction",
    "lda_direction_reference",
    "mean_direction",
    "HierarchyAnalyzer",
    "STATISTICS",
    "NULLS",
]


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
    backend: where the category map and the null draws run: ``None``/``"local"`` (threads in this
        process) or ``"ray"`` / a :class:`geomsteer.backend.RayBackend` (Ray tasks: chunks of
        categories, one task per null draw); the numbers are the same either way.

    After ``fit``: ``whitening_``, ``directions_`` (:class:`~geomsteer.types.Directions` in the
    whitened space), ``mean_directions_``, ``categories_`` and ``simplices_`` (tables),
    ``metrics_`` (every statistic in :mod:`geomsteer.stats`' shape), ``null_draws_`` (each
    statistic's draws per null), ``cosine_matrix_``; :meth:`result` returns an
    :class:`~geomsteer.types.AnalysisResult`.
    """

    _fit_call = "fit(unembedding, hierarchy)"
    _fitted = "metrics_"
    _not_params = ('progress', 'backend')

    def __init__(self, estimator: str = "lda", test_size: float = 0.3, n_random_tokens: int = 1000,
                 n_null_draws: int = 4, eig_floor: float = 1e-10, baselines: bool = True, seed: int = 0,
                 n_jobs: int | None = None, progress: bool = True, backend: Any = None):
        self.estimator = estimator
        self.test_size = test_size
        self.n_random_tokens = n_random_tokens
        self.n_null_draws = n_null_draws
        self.eig_floor = eig_floor
        self.baselines = baselines
        self.seed = seed
        self.n_jobs = n_jobs
        self.progress = progress
        self.backend = backend

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
    def fit(self, unembedding: Directions | np.ndarray, hierarchy: ConceptHierarchy,
            pool: np.ndarray | None = None) -> "HierarchyAnalyzer":
        """Estimate the directions and measure every statistic against its nulls.

        ``pool``: the row ids held-out tokens are compared with (default: ``n_random_tokens`` rows drawn
        at random from the whole matrix). Give it when the rows are not a vocabulary, e.g. activations
        of the tree's words plus a sample of other tokens (:class:`LayerHierarchyAnalyzer`).
        """
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
        from ..backend import get_backend

        be = get_backend(self.backend)

        tree = build_tree(hierarchy, names)

        def run(embed: Callable[[np.ndarray], np.ndarray], sets: Sequence[np.ndarray], label: str | None = None,
                fn: Callable[[np.ndarray], np.ndarray] = estimate) -> np.ndarray:
            if be.name != "local":
                return np.concatenate(be.map(_estimate_chunk, _chunks(len(sets), 4 * be.workers), (embed, sets, fn),
                                             None if quiet else label))
            return map_categories(lambda i: fn(embed(sets[i])), len(sets), n_jobs,
                                   None if quiet else label, sizes=[len(x) for x in sets])

        with step("Whitening the unembedding (causal inner product)") if not quiet else contextlib.nullcontext():
            wh = fit_whitening(gamma, self.eig_floor)
        used = np.unique(np.concatenate(token_sets))
        if pool is None:
            pool = np.sort(rng.choice(V, size=min(self.n_random_tokens, V), replace=False))
        else:
            pool = np.unique(np.asarray(pool, dtype=np.int64))
            if pool.size == 0 or pool.min() < 0 or pool.max() >= V:
                raise DataError(f"pool must hold row ids in 0..{V - 1}, got {pool.size} ids"
                                + (f" from {pool.min()} to {pool.max()}" if pool.size else ""))
        rows = np.unique(np.concatenate([used, pool]))
        g_cache = RowCache(rows, wh(gamma[rows]))
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
        obs = measure_statistics(L_train, g, splits, pool, token_sets, tree, train_projection=True)
        L_mean = run(g, token_sets, None, mean_direction)
        timings["observed"] = time.perf_counter() - t0

        null_draws: dict[str, list[dict[str, Any]]] = {}
        contrasts: dict[str, dict[str, Any]] = {}
        if self.baselines:
            B = int(self.n_null_draws)
            g32 = RowCache(rows, g_cache.rows.astype(np.float32)).get
            jobs = [(k, null, b) for k, null in enumerate(NULLS) for b in range(B)]

            ctx = {"an": self, "gamma": gamma, "wh": wh, "used": used, "pool": pool, "token_sets": token_sets,
                   "splits": splits, "g": g32, "d": d, "tree": tree, "estimate": estimate}
            label = f"null distributions: {len(NULLS)} nulls x {B} draws"
            t0 = time.perf_counter()
            if be.name != "local":
                results = be.map(_null_draw_job, jobs, ctx, None if quiet else label)
            else:
                # Draws run side by side, each on one BLAS thread: the measuring is partly Python, and
                # two draws at once keep both cores busy where one draw's threads would not.
                from .._threads import thread_map

                with thread_map(max(1, n_jobs), one_blas_thread=True) as tmap:
                    it = tmap.imap(lambda job: _null_draw_job(ctx, job), jobs)
                    results = list(it if quiet else track(it, label, total=len(jobs)))
            for (k, null, b), res in zip(jobs, results):
                null_draws.setdefault(null, []).append(res)
            timings["null_draws"] = time.perf_counter() - t0
            # Contrasts (not nulls): the plain inner product, the mean estimator, an unrelated parent.
            t0 = time.perf_counter()
            g_euc = RowCache(rows, np.asarray(gamma[rows], dtype=np.float64) - wh.mean).get
            L_euc = run(g_euc, train_sets, None if quiet else "contrast: Euclidean inner product")
            L_mean_train = run(g, train_sets, None, mean_direction)
            for cname, Lc in (("euclidean", L_euc), ("mean_estimator", L_mean_train)):
                cu = orthogonality_units(Lc, tree)
                cu.pop("_signed")
                contrasts[cname] = cu | {"cosine_vs_tree_distance": pearson_upper(unit_cos(Lc), tree.sim)}
            rp = np.array(random_parents(hierarchy, names, tree.edges, rng), dtype=np.int64).reshape(-1, 2)
            contrasts["random_parent"] = {"orthogonality_parent_child": np.abs(
                cos_rows(L_train[rp[:, 0]], L_train[rp[:, 1]] - L_train[rp[:, 0]])) if len(rp) else np.array([])}
            timings["contrasts"] = time.perf_counter() - t0

        metrics = self._assemble(obs, null_draws, contrasts, tree)

        e = tree.edges
        pc_full = cos_rows(L[e[:, 0]], L[e[:, 1]] - L[e[:, 0]]) if len(e) else np.array([])
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
            s: {nm: np.array([summary_value(dr["units"].get(s, dr["scalars"].get(s))) for dr in draws])
                for nm, draws in null_draws.items()} for s in STATISTICS}
        self.null_signed_ = {nm: {k: np.concatenate([dr["signed"][k] for dr in draws]) for k in obs["signed"]}
                             for nm, draws in null_draws.items()}
        self.null_units_ = {nm: {s: np.concatenate([np.ravel(dr["units"][s]) for dr in draws])
                                 for s in obs["units"]} for nm, draws in null_draws.items()}
        self.contrasts_ = contrasts
        self.cosine_matrix_ = unit_cos(L)
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
            cache = RowCache(ids, r.standard_normal((len(ids), d), dtype=np.float32))
            return cache.get, token_sets, splits
        if null == "shuffled_tokens":
            perm = r.permutation(gamma.shape[0])
            mapping = lambda t: perm[t]  # noqa: E731
            targets = perm[used]
            ids = np.unique(np.concatenate([targets, pool]))
            ge = RowCache(ids, wh(gamma[ids]).astype(np.float32)).get
        else:  # nested_random_sets: permute the tree's own tokens
            lut = np.arange(int(used.max()) + 1)
            lut[used] = used[r.permutation(len(used))]
            mapping = lambda t: lut[t]  # noqa: E731
            ge = g
        sets = [np.sort(mapping(t)) for t in token_sets]
        spl = [(np.sort(mapping(tr)), np.sort(mapping(te))) for tr, te in splits]
        return ge, sets, spl

    def _assemble(self, obs, null_draws, contrasts, tree: Tree) -> dict[str, Any]:
        from ..stats import bootstrap_ci, null_summary, statistic

        metrics: dict[str, Any] = {}
        for s, (unit, alt, desc) in STATISTICS.items():
            if s in obs["units"]:
                u = obs["units"][s]
                observed = summary_value(u)
                n = int(np.isfinite(u).sum())
                ci = bootstrap_ci(u, seed=self.seed)
                nulls = {nm: null_summary(observed, [summary_value(dr["units"][s]) for dr in draws], alt)
                         for nm, draws in null_draws.items()}
            else:
                observed = obs["scalars"][s]
                n = len(tree.names) * (len(tree.names) - 1) // 2
                ci = pair_bootstrap_ci(obs["cos"], tree.sim, seed=self.seed)
                nulls = {nm: null_summary(observed, [dr["scalars"][s] for dr in draws], alt)
                         for nm, draws in null_draws.items()}
            con = {}
            for cn, cv in contrasts.items():
                if s in cv:
                    v = cv[s]
                    con[cn] = summary_value(v) if np.ndim(v) else float(v)
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
            artifacts={"model": self.model_, "names": list(self.names_), "directions": self.directions_,
                       "mean_directions": self.mean_directions_, "whitening": self.whitening_,
                       "token_ids": self.token_ids_, "estimator": self.estimator, "null_draws": self.null_draws_,
                       "signed": self.signed_, "null_signed": self.null_signed_, "observed_units": self.observed_units_,
                       "null_units": self.null_units_, "cosine_matrix": self.cosine_matrix_,
                       "tree_similarity": self.tree_similarity_, "embed": self.embed_, "splits": self.splits_},
        )


def _chunks(n: int, k: int) -> list[np.ndarray]:
    """``range(n)`` cut into at most ``k`` contiguous pieces."""
    return [c for c in np.array_split(np.arange(n), max(1, min(k, n))) if len(c)]


def _estimate_chunk(shared: tuple, idx: np.ndarray) -> np.ndarray:
    """A backend task: the directions of the categories ``idx`` (embed, token sets and estimator shared)."""
    embed, sets, fn = shared
    return np.stack([fn(embed(sets[i])) for i in idx])


def _null_draw_job(ctx: dict[str, Any], job: tuple[int, str, int]) -> dict[str, Any]:
    """One draw of one null (a backend task): its own generator, seeded by (seed, null, draw)."""
    k, null, b = job
    an = ctx["an"]
    r = np.random.default_rng([an.seed, k + 1, b])
    ge, sets_b, splits_b = an._null_draw(null, r, ctx["gamma"], ctx["wh"], ctx["used"], ctx["pool"],
                                         ctx["token_sets"], ctx["splits"], ctx["g"], ctx["d"])
    Lb = np.stack([ctx["estimate"](ge(s_[0])) for s_ in splits_b])
    return measure_statistics(Lb, ge, splits_b, ctx["pool"], sets_b, ctx["tree"])
