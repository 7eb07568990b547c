"""Mapper complexes (Singh, Mémoli, Carlsson 2007) whose filter is the SAE feature space.

Samples (words, contexts) have two descriptions: their activations X (n, d) at a hook and their
SAE feature activations (n, f). The lens (filter) is a low-dimensional view of the SAE codes:
their PCA or UMAP, or chosen features. The lens range is covered by overlapping hypercubes;
within each cube the samples are clustered in activation space; every cluster is a node, and
nodes that share samples are joined. Two backends read the same cover:

- kmapper builds the graph (nodes and edges), which geomsteer draws as a self-contained
  interactive HTML page;
- gudhi builds the true nerve of the cover by clusters (a simplex for every set of nodes that
  share a sample, so higher simplices too), its Betti numbers, and the persistence diagram of
  the lower-star filtration by the nodes' mean first lens coordinate.

Defaults adapt to the data's scale: DBSCAN's radius is ``eps_scale`` times the median distance of
a sample to its ``eps_k``-th nearest neighbour, so multiplying the data by any constant
gives the same graph (a fixed eps of 0.5 silently gives an empty graph on residuals whose norms
are in the hundreds). A bootstrap (refitting on subsamples) scores the graph's stability.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["MapperAnalyzer", "adaptive_eps", "graph_betti"]

LENSES = ("pca", "umap", "features")
LARGE_COMPONENT = 0.05  # a component holding at least this share of the covered samples counts as large


def adaptive_eps(X: np.ndarray, k: int, scale: float = 1.0, max_queries: int = 2000, seed: int = 0) -> float:
    """``scale`` x the median Euclidean distance from a sample to its k-th nearest other sample.

    Computed for up to ``max_queries`` random samples against all samples (blocks of rows, float64).
    Equivariant: multiplying X by c multiplies the result by c.
    """
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n <= k:
        raise DataError(f"need more than k = {k} samples to set the clustering radius, got {n}")
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, min(n, max_queries), replace=False))
    sq = np.einsum("ij,ij->i", X, X)
    out = np.empty(len(q))
    for s in range(0, len(q), 512):
        rows = q[s : s + 512]
        d2 = sq[rows, None] + sq[None, :] - 2 * X[rows] @ X.T
        d2[np.arange(len(rows)), rows] = np.inf  # self
        out[s : s + 512] = np.sqrt(np.maximum(np.partition(d2, k - 1, axis=1)[:, k - 1], 0))
    return float(scale * np.median(out))


def _purity(members: Sequence[np.ndarray], codes: np.ndarray) -> float:
    """Size-weighted share of each node's samples that carry the node's commonest label."""
    top = sum(int(np.bincount(codes[m]).max()) for m in members if len(m))
    return top / max(sum(len(m) for m in members), 1)


def graph_betti(nodes: dict, links: dict) -> tuple[int, int]:
    """(components, independent cycles) of a kmapper graph's 1-skeleton: b0 and b1 = E - V + b0."""
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(nodes)
    for a, bs in links.items():
        g.add_edges_from((a, b) for b in bs)
    c = nx.number_connected_components(g) if len(g) else 0
    return c, g.number_of_edges() - g.number_of_nodes() + c


class MapperAnalyzer(Analyzer):
    """Mapper with an SAE-feature lens; kmapper graph + gudhi nerve, Betti numbers, persistence.

    Parameters: ``lens`` ("pca", "umap" or "features"), ``n_components`` of the lens (PCA/UMAP),
    ``features`` (indices of SAE features for ``lens="features"``), ``n_cubes`` per lens
    dimension and their fractional ``overlap``, DBSCAN's ``min_samples`` and ``eps_scale`` (the
    radius in units of the median distance of a sample to its ``eps_k``-th nearest neighbour), ``n_bootstrap``
    subsamples of ``bootstrap_fraction`` for the stability score, ``max_dim`` the highest
    simplex dimension of the nerve, ``lens_clip`` the quantile at which each lens coordinate is
    clipped on both sides (so that a few outliers do not stretch the cover), ``seed``.
    """

    _fit_call = "fit(X, codes, labels)"
    _fitted = "graph_"

    def __init__(self, lens: str = "pca", n_components: int = 2, features: Sequence[int] | None = None,
                 n_cubes: int = 10, overlap: float = 0.3, min_samples: int = 5, eps_scale: float = 1.0, eps_k: int = 10,
                 n_bootstrap: int = 5, bootstrap_fraction: float = 0.8, max_dim: int = 3, lens_clip: float = 0.01,
                 n_null: int = 20, n_label_permutations: int = 1000, seed: int = 0):
        self.lens = lens
        self.n_components = n_components
        self.features = features
        self.n_cubes = n_cubes
        self.overlap = overlap
        self.min_samples = min_samples
        self.eps_scale = eps_scale
        self.eps_k = eps_k
        self.n_bootstrap = n_bootstrap
        self.bootstrap_fraction = bootstrap_fraction
        self.max_dim = max_dim
        self.lens_clip = lens_clip
        self.n_null = n_null
        self.n_label_permutations = n_label_permutations
        self.seed = seed

    # ----------------------------------------------------------------------------------------

    def _validate(self, X: np.ndarray, codes: np.ndarray) -> None:
        if self.lens not in LENSES:
            raise ConfigError(f"unknown lens {self.lens!r}: expected one of {', '.join(LENSES)}")
        if not 0 < self.overlap < 1:
            raise ConfigError(f"overlap must be between 0 and 1 (a fraction of a cube), got {self.overlap}")
        if self.n_null and self.n_null < 2:
            raise ConfigError(f"n_null must be 0 (no null) or at least 2 Gaussian surrogates, got {self.n_null}; 20 is "
                              "the default")
        if self.n_cubes < 1 or self.min_samples < 1 or self.eps_scale <= 0:
            raise ConfigError(f"n_cubes and min_samples must be positive and eps_scale > 0, got {self.n_cubes}, "
                              f"{self.min_samples} and {self.eps_scale}")
        if X.ndim != 2 or codes.ndim != 2 or len(X) != len(codes):
            raise DataError(f"expected activations (n, d) and SAE codes (n, f) for the same samples, got shapes "
                            f"{X.shape} and {codes.shape}")
        for name, A in (("activations", X), ("SAE codes", codes)):
            if not np.isfinite(A).all():
                raise DataError(f"the {name} hold NaN or infinite values: expected finite numbers")
        if self.lens == "features":
            feats = list(self.features or [])
            bad = [f for f in feats if not 0 <= f < codes.shape[1]]
            if not feats or bad:
                raise ConfigError(f"lens 'features' needs SAE feature indices in 0..{codes.shape[1] - 1}, got "
                                  f"{feats or 'none'}")
        dims = len(self.features) if self.lens == "features" else self.n_components
        per_cube = len(X) * (1 + self.overlap) ** dims / self.n_cubes**dims
        if per_cube < self.min_samples:
            fit = max(1, int((len(X) / self.min_samples) ** (1 / dims)))
            raise DataError(f"too few samples for the cover: {len(X)} samples over {self.n_cubes}^{dims} cubes leave "
                            f"about {per_cube:.1f} per cube, fewer than min_samples = {self.min_samples}; use at most "
                            f"{fit} cubes per dimension, or more samples")

    def _lens(self, codes: np.ndarray) -> np.ndarray:
        if self.lens == "features":
            return np.asarray(codes)[:, list(self.features)].astype(np.float64)
        C = np.asarray(codes, dtype=np.float32)
        if self.lens == "pca":
            from sklearn.decomposition import PCA

            return PCA(self.n_components, random_state=self.seed, svd_solver="randomized").fit_transform(C).astype(np.float64)
        import umap

        return umap.UMAP(n_components=self.n_components, random_state=self.seed, n_jobs=1).fit_transform(C).astype(np.float64)

    def _clip(self, lens: np.ndarray) -> np.ndarray:
        """Clip each lens coordinate to its [lens_clip, 1 - lens_clip] quantiles: the cover spans the
        lens's range, and a few extreme samples (tokens with huge residual norms) would otherwise
        stretch it until nearly every sample falls in one cube."""
        if not self.lens_clip:
            return lens
        lo, hi = np.quantile(lens, [self.lens_clip, 1 - self.lens_clip], axis=0)
        return np.clip(lens, lo, hi)

    def _graph(self, X: np.ndarray, lens: np.ndarray, seed: int) -> tuple[dict, float]:
        import kmapper
        from sklearn.cluster import DBSCAN

        eps = adaptive_eps(X, min(self.eps_k, len(X) - 1), self.eps_scale, seed=seed)
        if eps <= 0:
            raise DataError("the samples coincide (their nearest-neighbour distances are 0): Mapper needs distinct "
                            "samples; drop duplicates first")
        mapper = kmapper.KeplerMapper(verbose=0)
        graph = mapper.map(lens, X, clusterer=DBSCAN(eps=eps, min_samples=self.min_samples),
                           cover=kmapper.Cover(n_cubes=self.n_cubes, perc_overlap=self.overlap))
        return graph, eps

    def fit(self, X, codes, labels: Sequence[str] | None = None, names: Sequence[str] | None = None
            ) -> "MapperAnalyzer":
        """``X`` (n, d) activations, ``codes`` (n, f) SAE activations of the same samples; ``labels`` a
        category per sample (for colouring and node labels), ``names`` a display name per sample."""
        import time

        X = np.asarray(X, dtype=np.float64)
        codes = np.asarray(codes)
        self._validate(X, codes)
        n = len(X)
        self.labels_ = list(labels) if labels is not None else [""] * n
        self.names_ = list(names) if names is not None else [str(i) for i in range(n)]
        if len(self.labels_) != n or len(self.names_) != n:
            raise DataError(f"labels and names must give one entry per sample ({n})")
        t = {}
        t0 = time.perf_counter()
        self.lens_raw_ = self._lens(codes)
        self.lens_ = self._clip(self.lens_raw_)
        t["lens"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.graph_, self.eps_ = self._graph(X, self.lens_, self.seed)
        t["cover_and_clustering"] = time.perf_counter() - t0
        nodes = self.graph_["nodes"]
        if not nodes:
            raise DataError(
                f"Mapper found no node: in every cube DBSCAN (eps {self.eps_:.4g} = {self.eps_scale} x the median "
                f"distance to the {self.eps_k}th neighbour, min_samples {self.min_samples}) marked all samples "
                f"as noise; raise eps_scale (e.g. --eps-scale {self.eps_scale * 2:g}) or lower min_samples")
        if len(nodes) == 1:
            raise DataError(
                f"Mapper found a single node: one cluster covers every sample, so the graph shows no structure; "
                f"use more cubes (e.g. --cubes {self.n_cubes * 2}) or a smaller radius (e.g. --eps-scale "
                f"{self.eps_scale / 2:g})")
        t0 = time.perf_counter()
        self._nerve(nodes)
        t["nerve"] = time.perf_counter() - t0
        self.graph_betti_ = graph_betti(nodes, self.graph_["links"])
        t0 = time.perf_counter()
        self.stability_ = self._bootstrap(X, codes)
        t["bootstrap"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.statistics_ = self._statistics(X)
        t["nulls"] = time.perf_counter() - t0
        self.codes_top_ = self._node_features(codes)
        self.node_examples_ = {k: [int(i) for i in np.asarray(v)[np.argsort(
            np.linalg.norm(X[v] - X[v].mean(0), axis=1))[:8]]] for k, v in nodes.items()}
        self.seconds_ = t
        return self

    def _nerve(self, nodes: dict) -> None:
        st, ids, f = self._simplex_tree(nodes, self.lens_)
        self.persistence_ = [(int(dim), (float(b), float(d))) for dim, (b, d) in st.persistence(persistence_dim_max=True)]
        betti = st.betti_numbers()
        self.betti_ = [int(b) for b in betti] + [0] * max(0, 3 - len(betti))
        self.n_simplices_ = {d: 0 for d in range(st.dimension() + 1)}
        for simplex, _ in st.get_simplices():
            self.n_simplices_[len(simplex) - 1] += 1
        self.node_ids_ = ids
        self.node_values_ = f

    def _nerve_betti(self, nodes: dict, lens: np.ndarray) -> list[int]:
        st, _, _ = self._simplex_tree(nodes, lens)
        st.compute_persistence(persistence_dim_max=True)
        betti = [int(b) for b in st.betti_numbers()]
        return betti + [0] * max(0, 3 - len(betti))

    def _simplex_tree(self, nodes: dict, lens: np.ndarray) -> tuple[Any, list, np.ndarray]:
        """The nerve of the cover by clusters, filtered lower-star by each node's mean first lens coordinate."""
        import gudhi

        ids = sorted(nodes)
        index = {k: i for i, k in enumerate(ids)}
        f = np.array([lens[nodes[k], 0].mean() for k in ids])
        member_of: dict[int, list[int]] = {}
        for k in ids:
            for s in nodes[k]:
                member_of.setdefault(s, []).append(index[k])
        st = gudhi.SimplexTree()
        for i in range(len(ids)):
            st.insert([i], filtration=float(f[i]))
        for vs in {tuple(sorted(v)) for v in member_of.values()}:
            if len(vs) > self.max_dim + 1:  # the faces up to max_dim of a larger simplex
                from itertools import combinations

                for face in combinations(vs, self.max_dim + 1):
                    st.insert(list(face))
            else:
                st.insert(list(vs))
        for simplex, _ in list(st.get_simplices()):  # lower-star filtration by the node values
            st.assign_filtration(simplex, float(f[simplex].max()))
        st.make_filtration_non_decreasing()
        return st, ids, f

    def _summary(self, nodes: dict, links: dict, lens: np.ndarray) -> dict[str, float]:
        """The graph statistics compared with the null: nodes, edges, components, cycles, nerve b1."""
        import networkx as nx

        b0, b1 = graph_betti(nodes, links)
        nerve = self._nerve_betti(nodes, lens) if len(nodes) else [0, 0, 0]
        g = nx.Graph()
        g.add_nodes_from(nodes)
        g.add_edges_from((a, b) for a, bs in links.items() for b in bs)
        sizes = [len({i for k in comp for i in nodes[k]}) for comp in nx.connected_components(g)]
        covered = len({i for v in nodes.values() for i in v})
        large = sum(sz >= LARGE_COMPONENT * covered for sz in sizes)
        return {"nodes": float(len(nodes)), "edges": float(sum(len(v) for v in links.values())),
                "components": float(b0), "large_components": float(large), "cycles": float(b1),
                "nerve_betti_1": float(nerve[1])}

    def _statistics(self, X: np.ndarray) -> dict[str, Any]:
        """The graph against Gaussian surrogates, and node purity against shuffled labels.

        A surrogate draws n samples from a Gaussian with the mean and covariance of the activations
        and the lens jointly (so the lens keeps its linear relation to the activations), clips its
        lens like the data's, and runs the same cover and clusterer with the same radius rule.
        It keeps every first and second moment and destroys all other structure (clusters, loops,
        flares): the graph statistics a Gaussian cloud produces under this cover."""
        from ..stats import null_summary, statistic

        g = self.graph_
        obs = self._summary(g["nodes"], g["links"], self.lens_)
        out: dict[str, Any] = {}
        if self.n_null:
            rng = np.random.default_rng([self.seed, 0x6A55])
            raw = self.lens_raw_
            J = np.hstack([X, raw])
            mu = J.mean(0)
            Jc = J - mu
            n, d = X.shape
            draws: dict[str, list[float]] = {k: [] for k in obs}
            empty = 0
            for b in range(self.n_null):
                Z = mu + rng.standard_normal((n, n)) @ Jc / np.sqrt(n - 1)
                lens = self._clip(Z[:, d:])
                try:
                    gz, _ = self._graph(Z[:, :d], lens, self.seed + 100 + b)
                except (ValueError, DataError):
                    gz = {"nodes": {}, "links": {}}
                empty += not gz["nodes"]
                for k, v in self._summary(gz["nodes"], gz["links"], lens).items():
                    draws[k].append(v)
            for k, o in obs.items():
                alt = "two-sided" if k == "edges" else "greater"  # structure adds nodes, components and loops
                out[k] = statistic(o, n, nulls={"gaussian_surrogate": null_summary(o, draws[k], alt)},
                                   ci95=None, ci95_reason="one graph; the bootstrap scores its stability instead",
                                   alternative=alt, surrogates_without_nodes=empty)
        codes = self._label_codes()
        if codes is not None:
            members = [np.asarray(v) for v in g["nodes"].values()]
            p_obs = _purity(members, codes)
            rng = np.random.default_rng([self.seed, 0x9E1])
            perm = [_purity(members, rng.permutation(codes)) for _ in range(self.n_label_permutations)]
            out["node_purity"] = statistic(
                p_obs, len(members), nulls={"shuffled_labels": null_summary(p_obs, perm, "greater")}, ci95=None,
                ci95_reason="nodes overlap, so they are not independent units to resample", alternative="greater",
                what="share of each node's samples in its commonest label, weighted by node size")
        return out

    def _label_codes(self) -> np.ndarray | None:
        labels = self.labels_
        if len(set(labels)) < 2:
            return None
        uniq = {lab: i for i, lab in enumerate(sorted(set(labels)))}
        return np.array([uniq[lab] for lab in labels])

    def _bootstrap(self, X: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
        if self.n_bootstrap < 1:
            return {"n": 0}
        rng = np.random.default_rng(self.seed + 1)
        n = len(X)
        m = max(self.min_samples + 1, int(self.bootstrap_fraction * n))
        nodes = {k: set(v) for k, v in self.graph_["nodes"].items()}
        same, jac = 0, []
        for b in range(self.n_bootstrap):
            idx = np.sort(rng.choice(n, m, replace=False))
            try:  # the lens is refitted on the resample: its variability is part of the graph's
                g, _ = self._graph(X[idx], self._clip(self._lens(codes[idx])), self.seed + 2 + b)
            except ValueError:
                jac.append(0.0)
                continue
            bn = [set(idx[v].tolist()) for v in g["nodes"].values()]
            same += graph_betti(g["nodes"], g["links"]) == self.graph_betti_
            keep = set(idx.tolist())
            scores = []
            for members in nodes.values():
                mine = members & keep
                if not mine:
                    continue
                scores.append(max((len(mine & o) / len(mine | o) for o in bn), default=0.0))
            jac.append(float(np.mean(scores)) if scores else 0.0)
        return {"n": self.n_bootstrap, "fraction": self.bootstrap_fraction,
                "same_graph_betti": same / self.n_bootstrap, "node_jaccard_mean": float(np.mean(jac)),
                "node_jaccard_min": float(np.min(jac))}

    def _node_features(self, codes: np.ndarray, k: int = 5) -> dict[str, list[tuple[int, float]]]:
        out = {}
        for key, members in self.graph_["nodes"].items():
            mean = np.asarray(codes[members], dtype=np.float64).mean(0)
            top = np.argsort(-mean)[:k]
            out[key] = [(int(i), float(mean[i])) for i in top if mean[i] > 0]
        return out

    # ----------------------------------------------------------------------------------------

    def node_table(self) -> list[dict[str, Any]]:
        """One row per node: size, dominant categories with their shares, top SAE features, example names."""
        self.check_fitted("graph_")
        from collections import Counter

        rows = []
        for key in self.node_ids_:
            members = self.graph_["nodes"][key]
            counts = Counter(self.labels_[i] for i in members)
            rows.append({
                "node": key, "size": len(members),
                "categories": [(c, n / len(members)) for c, n in counts.most_common(3)],
                "top_features": self.codes_top_[key],
                "examples": [self.names_[i] for i in self.node_examples_[key]],  # nearest the node's centroid
                "filter": float(self.node_values_[self.node_ids_.index(key)]),
            })
        return rows

    def result(self) -> AnalysisResult:
        self.check_fitted("graph_")
        g = self.graph_
        n_edges = sum(len(v) for v in g["links"].values())
        covered = len({i for v in g["nodes"].values() for i in v})
        return AnalysisResult(
            analyzer="mapper",
            params=self.get_params(),
            provenance={"n_samples": len(self.labels_), "eps": self.eps_, "seconds": self.seconds_},
            metrics={
                "kmapper_graph": {"nodes": len(g["nodes"]), "edges": n_edges, "components": self.graph_betti_[0],
                                  "cycles": self.graph_betti_[1], "samples_covered": covered},
                "gudhi_nerve": {"betti": self.betti_, "simplices_by_dimension": self.n_simplices_,
                                "persistence": self.persistence_},
                "stability": self.stability_,
                "statistics": self.statistics_,
            },
            tables={"nodes": self.node_table()},
            artifacts={"graph": self.graph_, "node_ids": list(self.node_ids_), "names": list(self.names_),
                       "labels": list(self.labels_), "lens": np.asarray(self.lens_), "persistence": self.persistence_},
        )
