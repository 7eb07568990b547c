"""Clustering of samples (activations or SAE codes) and of SAE features (decoder directions).

:class:`ClusterAnalyzer` clusters the rows of a matrix with any scikit-learn clusterer (k-means by
default). With a category per row (WordNet), it scores the clusters against the categories
(purity, normalized mutual information, adjusted Rand index) beside the same scores for
shuffled categories; each cluster is labelled by its dominant categories, its rows nearest the
centroid, and, given an unembedding, the tokens its centroid direction promotes (logit lens).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["ClusterAnalyzer", "purity"]


def purity(labels_true: Sequence, labels_pred: Sequence) -> float:
    """Fraction of samples whose cluster's most common true label is their own (Manning et al. 2008)."""
    t, p = np.asarray(labels_true), np.asarray(labels_pred)
    if len(t) != len(p) or not len(t):
        raise DataError(f"purity needs two label arrays of the same non-zero length, got {len(t)} and {len(p)}")
    total = 0
    for c in np.unique(p):
        _, counts = np.unique(t[p == c], return_counts=True)
        total += counts.max()
    return float(total / len(t))


class ClusterAnalyzer(Analyzer):
    """Cluster rows; score against categories with a shuffled-category baseline; label clusters.

    ``estimator``: any scikit-learn clusterer with ``fit_predict`` (default
    ``KMeans(n_clusters, n_init=10, random_state=seed)``); ``normalize`` scales rows to unit norm
    first (the right choice for directions); ``n_shuffles`` shuffled-category draws (the null of
    each score); ``n_bootstrap`` resamples of the rows for each score's 95% interval (the
    clustering held fixed); ``top_k`` names/tokens per cluster.
    """

    _fit_call = "fit(X, labels)"
    _fitted = "labels_"

    def __init__(self, estimator: Any = None, n_clusters: int = 8, normalize: bool = False, n_shuffles: int = 200,
                 top_k: int = 8, seed: int = 0, n_bootstrap: int = 200):
        self.estimator = estimator
        self.n_clusters = n_clusters
        self.normalize = normalize
        self.n_shuffles = n_shuffles
        self.top_k = top_k
        self.seed = seed
        self.n_bootstrap = n_bootstrap

    def get_params(self) -> dict[str, Any]:
        est = repr(self.estimator) if self.estimator is not None else f"KMeans({self.n_clusters})"
        return {**super().get_params(), "estimator": est}

    def fit(self, X, labels: Sequence[str] | None = None, names: Sequence[str] | None = None,
            unembedding: np.ndarray | None = None, vocab: Sequence[str] | None = None,
            decoder: np.ndarray | None = None, what: str = "samples") -> "ClusterAnalyzer":
        """Cluster the rows of ``X`` (n, d). ``labels``: a category per row; ``names``: a display name
        per row; ``unembedding`` (vocab, d) and ``vocab`` (token strings) for the logit lens of each
        cluster's centroid (centred on the mean of all rows), first mapped through ``decoder`` (f, d)
        when the rows are SAE codes; ``what`` names the rows in reports."""
        from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

        A = np.asarray(X, dtype=np.float64)
        if A.ndim != 2 or not len(A):
            raise DataError(f"expected a 2-D array (n rows, d), got shape {A.shape}")
        if not np.isfinite(A).all():
            raise DataError("X holds NaN or infinite values: expected finite numbers")
        n = len(A)
        if self.estimator is None and not 1 < self.n_clusters <= n:
            raise ConfigError(f"n_clusters must be between 2 and the number of rows ({n}), got {self.n_clusters}")
        if labels is not None and len(labels) != n or names is not None and len(names) != n:
            raise DataError(f"labels and names must give one entry per row ({n})")
        if self.normalize:
            norms = np.linalg.norm(A, axis=1, keepdims=True)
            A = A / np.where(norms > 0, norms, 1)
        est = self.estimator
        if est is None:
            from sklearn.cluster import KMeans

            est = KMeans(self.n_clusters, n_init=10, random_state=self.seed)
        self.labels_ = np.asarray(est.fit_predict(A))
        self.what_ = what
        self.names_ = list(names) if names is not None else [str(i) for i in range(n)]
        self.categories_ = list(labels) if labels is not None else None
        self.scores_: dict[str, Any] = {}
        if labels is not None:
            from ..stats import null_summary, statistic

            rng = np.random.default_rng(self.seed)
            y = np.asarray(labels, dtype=object).astype(str)
            fns = {"purity": purity, "nmi": normalized_mutual_info_score, "adjusted_rand": adjusted_rand_score}
            boots = [rng.integers(0, n, n) for _ in range(self.n_bootstrap)]
            for name, fn in fns.items():
                obs = float(fn(y, self.labels_))
                null = np.array([fn(rng.permutation(y), self.labels_) for _ in range(self.n_shuffles)], dtype=np.float64)
                ci = None
                if boots:  # rows resampled with their clusters and categories: the clustering is held fixed
                    b = np.array([fn(y[i], self.labels_[i]) for i in boots])
                    ci = [float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))]
                self.scores_[name] = statistic(
                    obs, n, nulls={"shuffled_labels": null_summary(obs, null, "greater")}, ci95=ci,
                    ci95_reason="no bootstrap asked for (n_bootstrap 0)", alternative="greater",
                    what={"purity": "share of rows in their cluster's commonest category",
                          "nmi": "normalized mutual information of clusters and categories",
                          "adjusted_rand": "adjusted Rand index of clusters and categories"}[name])
        self.clusters_ = self._describe(A, unembedding, vocab, decoder)
        return self

    def _describe(self, A: np.ndarray, W_U: np.ndarray | None, vocab: Sequence[str] | None,
                  decoder: np.ndarray | None) -> list[dict[str, Any]]:
        overall = A.mean(0)
        out = []
        for c in np.unique(self.labels_):
            idx = np.flatnonzero(self.labels_ == c)
            centroid = A[idx].mean(0)
            near = idx[np.argsort(np.linalg.norm(A[idx] - centroid, axis=1))[: self.top_k]]
            row: dict[str, Any] = {"cluster": int(c), "size": int(len(idx)),
                                   "nearest_centroid": [self.names_[i] for i in near]}
            if self.categories_ is not None:
                counts = Counter(self.categories_[i] for i in idx)
                row["categories"] = [(k, v / len(idx)) for k, v in counts.most_common(3)]
            if W_U is not None:
                d = centroid - overall if len(np.unique(self.labels_)) > 1 else centroid
                if decoder is not None:
                    d = d @ np.asarray(decoder, dtype=np.float64)
                logits = np.asarray(W_U, dtype=np.float64) @ d
                top = np.argsort(-logits)[: self.top_k]
                row["logit_lens"] = [(vocab[t] if vocab is not None else int(t), float(logits[t])) for t in top]
            out.append(row)
        return out

    def result(self) -> AnalysisResult:
        self.check_fitted("labels_")
        return AnalysisResult(
            analyzer="clustering",
            params=self.get_params(),
            provenance={"rows": self.what_, "n": len(self.labels_)},
            metrics=self.scores_,
            tables={"clusters": self.clusters_},
            artifacts={"names": list(self.names_), "labels": np.asarray(self.labels_),
                       "categories": None if self.categories_ is None else list(self.categories_)},
        )
