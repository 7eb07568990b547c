"""Offline auto-labels for SAE features from WordNet: no language-model judge.

For each live feature, the words it fires on are tested for enrichment in every WordNet category
(hypergeometric upper tail: of ``N`` words, ``K`` in the category, the feature fires on ``n``, ``k``
of them in the category). Benjamini-Hochberg adjusts each feature's p-values across the categories
and then the features' best p-values across the features. A feature's label is its category of
smallest adjusted p (ties: the smaller category, the more specific one), with precision ``k / n`` and
recall ``k / K``.

The headline statistic is the fraction of live features with a significant label (adjusted p below
``alpha``). Its null keeps the codes and the categories' sizes and nesting and shuffles which word
carries which set of categories (rows of the membership matrix permuted): what fraction of labels
chance alone gives.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..stats import benjamini_hochberg, bootstrap_ci, null_summary, statistic
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["FeatureLabeler", "enrichment"]


def enrichment(fires: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hypergeometric upper-tail p-values of every (feature, category) pair and the overlaps.

    ``fires``: (n_words, n_features) boolean; ``M``: (n_words, n_categories) boolean. Returns p and k,
    each (n_features, n_categories)."""
    from scipy.stats import hypergeom

    F = fires.astype(np.float64)
    k = F.T @ M.astype(np.float64)  # overlaps
    N = fires.shape[0]
    n = F.sum(0)[:, None]
    K = M.sum(0)[None, :]
    p = np.ones_like(k)
    hit = k > 0  # P(X >= 0) = 1: only overlaps need the tail (most pairs have none)
    p[hit] = hypergeom.sf(k[hit] - 1, N, np.broadcast_to(K, k.shape)[hit], np.broadcast_to(n, k.shape)[hit])
    return np.clip(p, 0.0, 1.0), k


def _bh_rows(P: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg within each row (vectorized)."""
    m = P.shape[1]
    order = np.argsort(P, axis=1)
    ranked = np.take_along_axis(P, order, 1) * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[:, ::-1], axis=1)[:, ::-1]
    out = np.empty_like(P)
    np.put_along_axis(out, order, np.minimum(ranked, 1.0), 1)
    return out


class FeatureLabeler(Analyzer):
    """WordNet labels for SAE features from the words each fires on, against shuffled memberships.

    ``fit(codes, memberships, categories, words=None)``: ``codes`` (n_words, d_sae) SAE codes of words
    (e.g. each word in a neutral template), ``memberships`` (n_words, n_categories) boolean (see
    :func:`geomsteer.wordnet.category_memberships`). A feature is live when it fires on at least
    ``min_fires`` words. ``n_null`` shuffles: 100 by default, because under shuffled memberships the
    fraction is often 0 in every draw, and then p cannot go below 1 / (1 + n_null)."""

    _fit_call = "fit(codes, memberships, categories)"
    _fitted = "statistics_"

    def __init__(self, alpha: float = 0.05, min_fires: int = 3, n_null: int = 100, seed: int = 0) -> None:
        self.alpha = alpha
        self.min_fires = min_fires
        self.n_null = n_null
        self.seed = seed

    def _labels(self, fires: np.ndarray, M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        p, k = enrichment(fires, M)
        q_in = _bh_rows(p)
        sizes = M.sum(0)
        # the smallest adjusted p, ties broken towards the smaller (more specific) category
        best = np.lexsort((np.broadcast_to(sizes, q_in.shape), q_in), axis=1)[:, 0] if q_in.size else np.zeros(0, int)
        rows = np.arange(len(best))
        q_best = benjamini_hochberg(list(q_in[rows, best]))
        return best, np.asarray(q_best, dtype=np.float64), p[rows, best], k[rows, best]

    def fit(self, codes: np.ndarray, memberships: np.ndarray, categories: Sequence[str],
            words: Sequence[str] | None = None) -> "FeatureLabeler":
        codes = np.asarray(codes)
        M = np.asarray(memberships, dtype=bool)
        if codes.ndim != 2 or M.ndim != 2 or codes.shape[0] != M.shape[0]:
            raise DataError(f"codes {codes.shape} and memberships {M.shape} must have one row per word")
        if M.shape[1] != len(categories):
            raise DataError(f"{M.shape[1]} membership columns for {len(categories)} category names: give one name per "
                            "column (geomsteer.wordnet.category_memberships returns both)")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must lie between 0 and 1, got {self.alpha!r}")
        if self.n_null < 2:
            raise ConfigError(f"n_null must be at least 2 shuffles, got {self.n_null}")
        fires = codes > 0
        live = np.flatnonzero(fires.sum(0) >= self.min_fires)
        if len(live) == 0:
            raise DataError(f"no feature fires on {self.min_fires} or more of the {codes.shape[0]} words: nothing to label")
        if M.shape[1] == 0:
            raise DataError("no categories to test: give more words or a smaller minimum category size")
        F = fires[:, live]
        best, q, p, k = self._labels(F, M)
        significant = q < self.alpha
        o = float(significant.mean())
        rng = np.random.default_rng([self.seed, 0x1AB])
        draws = [float((self._labels(F, M[rng.permutation(len(M))])[1] < self.alpha).mean()) for _ in range(self.n_null)]
        self.statistics_ = {"labelled_fraction": statistic(
            o, len(live), nulls={"shuffled_memberships": null_summary(o, draws, "greater")},
            ci95=bootstrap_ci(significant.astype(float), seed=self.seed),
            what=f"fraction of live features whose best WordNet category has BH-adjusted p < {self.alpha:g}")}
        sizes = M.sum(0)
        n_f = F.sum(0)
        self.labels_ = [{"feature": int(f), "label": categories[int(b)], "q_value": float(qq), "p_value": float(pp),
                         "significant": bool(s), "n_fires": int(nf), "n_in_category": int(kk),
                         "category_size": int(sizes[b]), "precision": float(kk / nf), "recall": float(kk / sizes[b]),
                         **({"example_words": [words[i] for i in np.flatnonzero(F[:, j] & M[:, b])[:5]]}
                            if words is not None else {})}
                        for j, (f, b, qq, pp, kk, s, nf) in enumerate(zip(live, best, q, p, k, significant, n_f))]
        self.n_words_, self.n_categories_, self.n_live_ = int(M.shape[0]), int(M.shape[1]), int(len(live))
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(
            analyzer="sae_labels", params=self.get_params(),
            provenance={"n_words": self.n_words_, "n_categories": self.n_categories_, "n_live": self.n_live_},
            metrics={"statistics": self.statistics_,
                     "n_significant": int(sum(r["significant"] for r in self.labels_))},
            tables={"labels": sorted(self.labels_, key=lambda r: r["q_value"])})


class LabelDecomposition(Analyzer):
    """Does a WordNet category's direction at the SAE's layer decompose into a few features, and are they the
    features labelled with that category?

    ``fit(directions, decoder, labels, X, below, live)``: ``directions`` {category: (d,) vector} (e.g. the LDA
    direction of the category's words, in the residual stream), ``decoder`` (d_sae, d), ``labels`` {feature:
    category} of the significantly labelled features, ``X`` (n, d) the words' activations (for the null
    directions, drawn from their covariance), ``below(a, b)`` True when category a is b or under it, ``live``
    the live features. Per category: the fraction of the direction that ``k`` features explain (non-negative
    OMP) against covariance-shaped random directions, and the share of those ``k`` features labelled with the
    category or a category under it against ``k`` random live features."""

    _fit_call = "fit(directions, decoder, labels, X, below, live)"
    _fitted = "metrics_"

    def __init__(self, k: int = 8, n_null: int = 50, seed: int = 0) -> None:
        self.k = k
        self.n_null = n_null
        self.seed = seed

    def fit(self, directions: Mapping[str, np.ndarray], decoder: np.ndarray, labels: Mapping[int, str],
            X: np.ndarray, below: Any, live: Sequence[int]) -> "LabelDecomposition":
        from ..sparse import omp
        from ..steering.nulls import covariance_directions

        if self.k < 1 or self.n_null < 2:
            raise ConfigError(f"k must be at least 1 and n_null at least 2, got k={self.k}, n_null={self.n_null}")
        D = np.asarray(decoder, dtype=np.float64)
        live = np.asarray(live, dtype=np.int64)
        rng = np.random.default_rng([self.seed, 0xDEC])
        R = covariance_directions(np.asarray(X), 1.0, self.n_null, seed=self.seed)
        null_expl = [omp(D, r, self.k, nonneg=True)["explained"][-1] for r in R]
        stats: dict[str, Any] = {}
        rows = []
        for cat, v in directions.items():
            fit = omp(D, np.asarray(v, dtype=np.float64), self.k, nonneg=True)
            expl = float(fit["explained"][-1])
            stats[f"explained_by_{self.k}_features:{cat}"] = statistic(
                expl, 1, nulls={"covariance_directions": null_summary(expl, null_expl, "greater")},
                ci95_reason="one direction", alternative="greater", unit="direction",
                description=f"fraction of {cat}'s direction that {self.k} SAE features explain (non-negative OMP)")
            chosen = [int(f) for f in fit["atoms"]]
            match = np.array([f in labels and below(labels[f], cat) for f in chosen], dtype=float)
            draws = []
            for _ in range(self.n_null):
                pick = rng.choice(live, size=min(len(chosen), len(live)), replace=False)
                draws.append(float(np.mean([int(f) in labels and below(labels[int(f)], cat) for f in pick])))
            n_cat = sum(1 for f, c in labels.items() if below(c, cat))
            stats[f"features_labelled_with_it:{cat}"] = statistic(
                float(match.mean()), len(chosen), nulls={"random_live_features": null_summary(float(match.mean()), draws,
                                                                                               "greater")},
                ci95=bootstrap_ci(match, seed=self.seed) if len(match) > 1 else None, ci95_reason="one feature",
                alternative="greater", unit="feature",
                description=f"share of those features whose WordNet label is {cat} or a category under it")
            rows.append({"category": cat, "explained": expl, "features": chosen,
                         "labels": [labels.get(f) for f in chosen], "match": [bool(m) for m in match],
                         "n_features_labelled_with_it": n_cat})
        self.metrics_ = {"statistics": stats}
        self.rows_ = rows
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(analyzer="label_decomposition", params=self.get_params(), provenance={},
                              metrics=self.metrics_, tables={"decomposition": self.rows_})
