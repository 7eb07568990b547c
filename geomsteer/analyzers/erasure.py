"""What erasing a WordNet category with LEACE takes away, against erasing unrelated categories of the same size.

For the erased category, its children and its siblings: the drop of a held-out linear probe's AUC at each
layer read, and the drop of the next-token log-mass on the category's words. Each drop stands beside the drops
that erasing each null category (an unrelated WordNet category of about the same size, same layer, same
method) causes for the same measured category: what erasing *anything that big* does is the null.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["ErasureAnalyzer"]


class ErasureAnalyzer(Analyzer):
    """``fit(auc, mass, erased, nulls)``: ``auc`` {condition: {category: {layer: AUC}}} and ``mass``
    {condition: {category: (n_prompts,) log-mass}} with condition ``"clean"``, the ``erased`` category and each
    of the ``nulls`` (names of the null categories erased instead)."""

    _fit_call = "fit(auc, mass, erased, nulls)"
    _fitted = "metrics_"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, auc: Mapping[str, Mapping[str, Mapping[str, float]]],
            mass: Mapping[str, Mapping[str, np.ndarray]], erased: str, nulls: Sequence[str]) -> "ErasureAnalyzer":
        from ..stats import bootstrap_ci, null_summary, statistic

        for need in ("clean", erased, *nulls):
            if need not in auc or need not in mass:
                raise DataError(f"no measurements for condition {need!r}: expected 'clean', the erased category and "
                                "each null category")
        if len(nulls) < 2:
            raise DataError(f"the null needs at least 2 erased categories, got {len(nulls)}")
        stats: dict[str, Any] = {}
        rows = []
        for c, by_layer in auc["clean"].items():
            for L, a0 in by_layer.items():
                obs = a0 - auc[erased][c][L]
                draws = [a0 - auc[n][c][L] for n in nulls]
                stats[f"auc_drop:{c}@{L}"] = statistic(
                    obs, 1, nulls={"unrelated_category_erased": null_summary(obs, draws, "greater")},
                    ci95_reason="one held-out probe per category and layer", alternative="greater", unit="probe",
                    description=f"held-out probe AUC of {c} at {L}: clean minus with {erased} erased",
                    clean=a0, erased=auc[erased][c][L])
                for cond in ("clean", erased, *nulls):
                    rows.append({"condition": cond, "category": c, "layer": L, "auc": auc[cond][c][L]})
        for c, m0 in mass["clean"].items():
            per = np.asarray(m0) - np.asarray(mass[erased][c])
            draws = [float((np.asarray(m0) - np.asarray(mass[n][c])).mean()) for n in nulls]
            obs = float(per.mean())
            stats[f"mass_drop:{c}"] = statistic(
                obs, len(per), nulls={"unrelated_category_erased": null_summary(obs, draws, "greater")},
                ci95=bootstrap_ci(per, seed=self.seed), alternative="greater", unit="prompt",
                description=f"mean over prompts of log p(next token is a {c} word): clean minus with {erased} erased",
                clean=float(np.mean(m0)), erased=float(np.mean(mass[erased][c])))
        self.metrics_ = {"statistics": stats}
        self.auc_rows_ = rows
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(analyzer="steering_erasure", params=self.get_params(), provenance={},
                              metrics=self.metrics_, tables={"auc": self.auc_rows_})
