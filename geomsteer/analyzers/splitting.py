"""Feature splitting across SAE widths, read against WordNet (``geomsteer sae split``).

SAEs of growing width trained on the same activations: each feature of a wider SAE is linked to the feature
of the next narrower SAE whose decoder direction is closest (cosine at least ``min_cos``); a narrow feature's
linked wide features are its children, and one with two or more children has split. With each feature
labelled by the WordNet category enriched among the words it fires on (:class:`FeatureLabeler`), the test
is whether a child's label lies at or below its parent's label in WordNet more often than when the wide
SAE's labels are shuffled among its labelled features (which keeps the labels and the links, and breaks
only which label sits on which child). Linked pairs should also fire together on the words more than a
narrow feature and a random wide feature do.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["FeatureSplitting", "link_features"]


def link_features(narrow: np.ndarray, wide: np.ndarray, min_cos: float) -> tuple[np.ndarray, np.ndarray]:
    """Each wide decoder row's nearest narrow decoder row by cosine: (parent index, cosine); parent -1 when the
    cosine is below ``min_cos``."""
    A = narrow / np.maximum(np.linalg.norm(narrow, axis=1, keepdims=True), 1e-12)
    B = wide / np.maximum(np.linalg.norm(wide, axis=1, keepdims=True), 1e-12)
    C = B @ A.T
    parent = C.argmax(1)
    cos = C[np.arange(len(B)), parent]
    return np.where(cos >= min_cos, parent, -1), cos


def _corr_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between columns a[:, i] and b[:, i] (0 where a column is constant)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1.0), 0.0)


class FeatureSplitting(Analyzer):
    """Do features split along WordNet's edges?

    ``fit(decoders, labels, codes, below)``: per SAE, narrow to wide, its decoder (d_sae, d); its labels
    ({feature: category} for features with a significant label); its codes on the words (n_words, d_sae);
    ``below(child_category, parent_category)`` is True when the first is the second or lies under it.
    """

    _fit_call = "fit(decoders, labels, codes, below)"
    _fitted = "metrics_"

    def __init__(self, min_cos: float = 0.5, n_null: int = 1000, seed: int = 0):
        self.min_cos = min_cos
        self.n_null = n_null
        self.seed = seed

    def fit(self, decoders: Sequence[np.ndarray], labels: Sequence[Mapping[int, str]], codes: Sequence[np.ndarray],
            below: Callable[[str, str], bool], names: Sequence[str] | None = None) -> "FeatureSplitting":
        from ..stats import bootstrap_ci, null_summary, statistic

        if len(decoders) < 2 or not (len(decoders) == len(labels) == len(codes)):
            raise DataError(f"expected two or more SAEs with a decoder, labels and codes each, got {len(decoders)} "
                            f"decoders, {len(labels)} label sets and {len(codes)} code matrices")
        widths = [int(len(D)) for D in decoders]
        if widths != sorted(widths) or len(set(widths)) != len(widths):
            raise DataError(f"the SAEs must grow in width, narrow first; got widths {widths}")
        names = list(names or [str(w) for w in widths])
        rng = np.random.default_rng([self.seed, 0x5B1])
        stats: dict[str, Any] = {}
        links, trees = [], []
        all_hits, all_draws = [], np.zeros(int(self.n_null))
        for s in range(len(decoders) - 1):
            parent, cos = link_features(np.asarray(decoders[s]), np.asarray(decoders[s + 1]), self.min_cos)
            lab_n, lab_w = labels[s], labels[s + 1]
            kids = np.flatnonzero(parent >= 0)
            units = [(int(j), int(parent[j])) for j in kids if int(j) in lab_w and int(parent[j]) in lab_n]
            hits = np.array([below(lab_w[j], lab_n[i]) for j, i in units], dtype=float)
            strict = np.array([lab_w[j] != lab_n[i] and below(lab_w[j], lab_n[i]) for j, i in units], dtype=float)
            pool = np.array(sorted(lab_w.values()))
            draws, strict_draws = [], []
            for _ in range(int(self.n_null)):
                shuffled = rng.choice(pool, size=len(units), replace=False)
                b = [(below(str(c), lab_n[i]), str(c) != lab_n[i]) for c, (_, i) in zip(shuffled, units)]
                draws.append(float(np.mean([x for x, _ in b])) if len(units) else np.nan)
                strict_draws.append(float(np.mean([x and y for x, y in b])) if len(units) else np.nan)
            key = f"{names[s]}->{names[s + 1]}"
            for name, h, dr, what in (("children_under_parent_label", hits, draws, "is the parent's WordNet category or "
                                       "lies under it"),
                                      ("children_strictly_under_parent_label", strict, strict_draws,
                                       "lies strictly under the parent's WordNet category (a split along an edge)")):
                obs = float(h.mean()) if len(h) else float("nan")
                stats[f"{name}:{key}"] = statistic(
                    obs, len(h), nulls={"shuffled_labels": null_summary(obs, dr, "greater")},
                    ci95=bootstrap_ci(h, seed=self.seed) if len(h) > 1 else None,
                    ci95_reason="fewer than two labelled links", alternative="greater", unit="link",
                    description=f"share of linked (narrow parent, wide child) pairs, both labelled, whose child label "
                                f"{what}")
            all_hits.append(hits)
            all_draws = all_draws + np.nan_to_num(np.array(draws)) * len(hits)
            # co-activation on the words: linked pairs against the same wide features paired with random narrow ones
            Cn, Cw = np.asarray(codes[s], dtype=np.float64), np.asarray(codes[s + 1], dtype=np.float64)
            if len(kids):
                r = _corr_pairs(Cn[:, parent[kids]], Cw[:, kids])
                null_r = [float(_corr_pairs(Cn[:, rng.integers(0, Cn.shape[1], len(kids))], Cw[:, kids]).mean())
                          for _ in range(min(int(self.n_null), 200))]
                stats[f"coactivation_of_links:{key}"] = statistic(
                    float(r.mean()), len(kids), nulls={"random_parents": null_summary(float(r.mean()), null_r, "greater")},
                    ci95=bootstrap_ci(r, seed=self.seed) if len(r) > 1 else None, ci95_reason="one link",
                    alternative="greater", unit="link",
                    description="mean Pearson r over the words between a wide feature's code and its linked parent's")
            n_children = np.bincount(parent[kids], minlength=len(decoders[s])) if len(kids) else np.zeros(len(decoders[s]), int)
            links.append({"pair": key, "n_wide": int(len(parent)), "n_linked": int(len(kids)),
                          "n_split_parents": int((n_children >= 2).sum()), "n_labelled_links": int(len(units)),
                          "n_under_parent_label": int(hits.sum()), "n_strictly_under": int(strict.sum()),
                          "median_cos": float(np.median(cos))})
            for i in np.argsort(-n_children)[:40]:
                if n_children[i] < 2 or int(i) not in lab_n:
                    continue
                ch = [int(j) for j in kids[parent[kids] == i]]
                trees.append({"pair": key, "parent": int(i), "parent_label": lab_n[int(i)], "children": [
                    {"feature": j, "cos": float(cos[j]), "label": lab_w.get(j),
                     "under_parent_label": (below(lab_w[j], lab_n[int(i)]) if j in lab_w else None)} for j in ch]})
        h = np.concatenate(all_hits) if all_hits else np.array([])
        if len(decoders) > 2 and len(h):
            obs = float(h.mean())
            stats["children_under_parent_label:all"] = statistic(
                obs, len(h), nulls={"shuffled_labels": null_summary(obs, all_draws / len(h), "greater")},
                ci95=bootstrap_ci(h, seed=self.seed), alternative="greater", unit="link",
                description="the same share over every consecutive pair of widths")
        self.metrics_ = {"statistics": stats, "widths": widths}
        self.links_ = links
        self.trees_ = trees
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(analyzer="sae_split", params=self.get_params(), provenance={}, metrics=self.metrics_,
                              tables={"links": self.links_, "splits": self.trees_})
