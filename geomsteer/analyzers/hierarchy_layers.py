"""Park et al.'s hierarchy statistics at every layer of the residual stream.

Park et al. estimate category directions in the unembedding with the causal inner product
(the unembedding's covariance, whitened away). Inside the model the analogue is the covariance
of the activations themselves: each word's residual at a layer is whitened with the covariance
of all the words read there, g(x) = Cov(X)^(-1/2) (x - mean(X)), and the same LDA estimator,
held-out split, statistics and nulls as :class:`~geomsteer.analyzers.hierarchy.HierarchyAnalyzer`
run on those rows, one layer at a time. The seed and so the held-out split and the comparison pool
are the same at every layer, so a statistic's curve over the layers shows where the hierarchy
emerges rather than where a split happened to be easy.

The rows are a hierarchy's tokens plus a pool of other word tokens, read once per layer; the
nulls keep the tree's nesting exactly as in the unembedding analysis (``shuffled_tokens``
permutes all rows read, ``nested_random_sets`` the tree's own rows, ``random_unembedding`` draws
Gaussian rows).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..types import AnalysisResult, ConceptHierarchy, Directions
from .base import Analyzer
from .hierarchy import NULLS, STATISTICS, HierarchyAnalyzer

__all__ = ["LayerHierarchyAnalyzer", "compact_hierarchy"]


def compact_hierarchy(hierarchy: ConceptHierarchy, token_ids: np.ndarray) -> ConceptHierarchy:
    """The same tree with every token id replaced by its row in ``token_ids`` (which must hold them all)."""
    from dataclasses import replace

    ids = np.asarray(token_ids, dtype=np.int64)
    lut = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
    lut[ids] = np.arange(len(ids))
    g = hierarchy.graph.copy()
    for n in g:
        t = np.asarray(g.nodes[n]["tokens"], dtype=np.int64)
        rows = lut[t[t < len(lut)]] if t.size else t
        if t.size and (int(t.max()) >= len(lut) or (rows < 0).any()):
            missing = t[(t >= len(lut)) | (lut[np.minimum(t, len(lut) - 1)] < 0)]
            raise DataError(f"category {n} has token id {int(missing[0])}, which was not read; read every token "
                            "of the hierarchy (HierarchyResult.hierarchy tokens) at each layer")
        g.nodes[n]["tokens"] = np.sort(rows)
    groups = {int(lut[t]): int(v) for t, v in (hierarchy.token_groups or {}).items()
              if t < len(lut) and lut[t] >= 0}
    return replace(hierarchy, graph=g, token_groups=groups)


class LayerHierarchyAnalyzer(Analyzer):
    """The hierarchy statistics of :class:`HierarchyAnalyzer` at each layer, with the activation covariance
    as the inner product.

    Parameters: as :class:`HierarchyAnalyzer` (``estimator``, ``test_size``, ``n_null_draws``,
    ``eig_floor``, ``seed``, ``n_jobs``).

    ``fit(activations, token_ids, hierarchy, pool)``: ``activations`` maps a layer name (a hook)
    to the rows (n, d) of the tokens ``token_ids`` at that layer; ``hierarchy`` names token ids
    (all of them in ``token_ids``); ``pool`` the token ids held-out tokens are compared with.

    After ``fit``: ``metrics_`` ({"layers": {layer: {statistic: ...}}}), ``by_layer_`` (one row
    per layer and statistic with its most conservative null and a Holm-adjusted p across layers),
    ``categories_`` (per category, held-out AUC and parent-child cosine at each layer),
    ``directions_`` ({layer: (categories, d) directions in the residual stream's own coordinates:
    moving a word by ``directions_[layer][i]`` moves its whitened row by category i's LDA vector}).
    """

    _fit_call = "fit(activations, token_ids, hierarchy, pool)"
    _fitted = "metrics_"
    _not_params = ("progress", "backend")

    def __init__(self, estimator: str = "lda", test_size: float = 0.3, n_null_draws: int = 4,
                 eig_floor: float = 1e-10, seed: int = 0, n_jobs: int | None = None, progress: bool = True,
                 backend: Any = None):
        self.estimator = estimator
        self.test_size = test_size
        self.n_null_draws = n_null_draws
        self.eig_floor = eig_floor
        self.seed = seed
        self.n_jobs = n_jobs
        self.progress = progress
        self.backend = backend

    def fit(self, activations: Mapping[str, np.ndarray], token_ids: Sequence[int], hierarchy: ConceptHierarchy,
            pool: Sequence[int]) -> "LayerHierarchyAnalyzer":
        from .._progress import track
        from ..stats import holm

        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if not activations:
            raise DataError("no layers given: expected {layer name: (n_tokens, d) activations}")
        if len(np.unique(ids)) != len(ids):
            raise DataError("token_ids has repeated ids: expected each token once, its row at every layer")
        for name, X in activations.items():
            if np.ndim(X) != 2 or len(X) != len(ids):
                raise DataError(f"layer {name!r}: expected {len(ids)} rows (one per token id), got an array of shape "
                                f"{np.shape(X)}")
        compact = compact_hierarchy(hierarchy, ids)
        lut = {int(t): i for i, t in enumerate(ids)}
        missing = [int(t) for t in np.asarray(pool).reshape(-1) if int(t) not in lut]
        if missing:
            raise DataError(f"pool token {missing[0]} was not read: the pool must be a subset of token_ids")
        pool_rows = np.array(sorted(lut[int(t)] for t in np.asarray(pool).reshape(-1)), dtype=np.int64)

        t0 = time.perf_counter()
        layers = list(activations)
        per_layer: dict[str, dict[str, Any]] = {}
        directions: dict[str, np.ndarray] = {}
        auc = {}
        pc = {}
        names: list[str] = []
        it = track(layers, f"hierarchy statistics at {len(layers)} layers") if self.progress else layers
        for name in it:
            X = np.asarray(activations[name])
            if not np.isfinite(X).all():
                raise DataError(f"layer {name!r} has NaN or infinite activations; check the model and dtype")
            an = HierarchyAnalyzer(estimator=self.estimator, test_size=self.test_size, n_null_draws=self.n_null_draws,
                                   eig_floor=self.eig_floor, seed=self.seed, n_jobs=self.n_jobs, progress=False, backend=self.backend)
            an.fit(Directions(X, [str(t) for t in ids], f"resid:{name}", "", {}), compact, pool=pool_rows)
            per_layer[name] = an.metrics_
            names = an.names_
            # a step l of the whitened row is the step l Cov^(1/2) in the residual stream
            directions[name] = (np.asarray(an.directions_.vectors, dtype=np.float64)
                                @ an.whitening_.inverse()).astype(np.float32)
            auc[name] = [r["heldout_auc"] for r in an.categories_]
            pc[name] = [r["orthogonality_cos"] for r in an.categories_]
            self._last_tables = an.categories_
            self._nulls_used = an.provenance_.get("nulls", {})
            del an

        rows = []
        for s in STATISTICS:
            ps = [per_layer[L][s].get("p_value") for L in layers]
            adj = holm(ps)
            for L, p_adj in zip(layers, adj):
                st = per_layer[L][s]
                cn = st.get("conservative_null") or next(iter(st.get("null") or {}), None)
                nd = (st.get("null") or {}).get(cn, {}) if cn else {}
                ci = st.get("ci95") or [None, None]
                rows.append({"layer": L, "statistic": s, "observed": st.get("observed"), "ci95_low": ci[0],
                             "ci95_high": ci[1], "null": cn, "null_mean": nd.get("mean"), "null_sd": nd.get("sd"),
                             "null_draws": nd.get("n_draws"), "effect_size": st.get("effect_size"),
                             "p_value": st.get("p_value"), "p_holm_across_layers": p_adj, "n": st.get("n")})
        cats = []
        for i, r in enumerate(self._last_tables):
            cats.append({"synset": r["synset"], "parent": r["parent"], "depth": r["depth"], "n_tokens": r["n_tokens"],
                         "heldout_auc": {L: auc[L][i] for L in layers},
                         "orthogonality_cos": {L: pc[L][i] for L in layers}})
        self.layers_ = layers
        self.names_ = names
        self.metrics_ = {"layers": per_layer}
        self.by_layer_ = rows
        self.categories_ = cats
        self.directions_ = directions
        self.provenance_ = {
            "n_layers": len(layers), "n_tokens_read": int(len(ids)), "n_pool": int(len(pool_rows)),
            "n_categories": len(names), "inner_product": "the covariance of the activations of all tokens read at "
            "that layer (whitened as the unembedding is for the causal inner product)",
            "nulls": dict(self._nulls_used) or {k: NULLS[k] for k in NULLS},
            "seconds": round(time.perf_counter() - t0, 1)}
        del self._last_tables, self._nulls_used
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(
            analyzer="hierarchy_layers", params=self.get_params(), provenance=self.provenance_, metrics=self.metrics_,
            tables={"by_layer": self.by_layer_, "categories": self.categories_},
            artifacts={"layers": self.layers_, "names": self.names_, "directions": self.directions_})
