"""Statistics of steering along the WordNet hierarchy (``geomsteer steer hierarchy``).

:class:`HierarchySteering`: for a parent and a child category, how much each concept vector moves the
next-token mass onto the child at a reference norm, beside covariance-shaped random directions and the
same construction on nested random sets; and at a matched gain on the child, where the rest of the mass
goes (the parent's other words, everything outside the parent).

:class:`CaaOrthogonality`: Park et al.'s orthogonality cos(v_parent, v_child - v_parent) for contrastive
(CAA) vectors of every parent-child edge of the tree, against the same vectors on nested random sets
(the tree's words permuted: sizes and nesting kept).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["HierarchySteering", "CaaOrthogonality", "interpolate_at"]

_QUANTITIES = {
    "child_gain": ("greater", "mean over prompts of the change in log p(child's tokens) at the reference norm"),
    "child_share_gain": ("greater", "mean change in log [p(child) / p(parent)]: the parent's mass moving onto the "
                                    "child"),
    "parent_gain": ("greater", "mean change in log p(parent's tokens)"),
}


def _quantity(masses: np.ndarray, clean: np.ndarray, q: str) -> np.ndarray:
    """Per prompt change of a quantity; ``masses`` (..., P, 3) of log p(child), log p(siblings), log p(outside)."""
    def value(m):
        lc, ls = m[..., 0], m[..., 1]
        lpar = np.logaddexp(lc, ls)
        return {"child_gain": lc, "child_share_gain": lc - lpar, "parent_gain": lpar}[q]
    return value(masses) - value(clean)


def interpolate_at(norms: Sequence[float], values: Sequence[float], target: float) -> float | None:
    """The smallest norm where a curve starting at (0, 0) first reaches ``target`` (linear between points)."""
    xs = [0.0, *map(float, norms)]
    ys = [0.0, *map(float, values)]
    for i in range(1, len(xs)):
        if ys[i] >= target > ys[i - 1] or (ys[i] >= target and i == 1):
            if ys[i] == ys[i - 1]:
                return xs[i]
            return xs[i - 1] + (target - ys[i - 1]) * (xs[i] - xs[i - 1]) / (ys[i] - ys[i - 1])
    return None


class HierarchySteering(Analyzer):
    """Statistics of one parent -> child steering experiment.

    Parameters
    ----------
    ref_norm: the norm (an entry of the measured norms) at which vectors are compared with their nulls.
    target_gain: the gain in log p(child) (nats) at which vectors are compared with each other.
    seed: for the bootstrap over prompts.

    ``fit(real, clean, nested, random, norms)``: ``real`` {vector type: (n_norms, n_prompts, 3)} masses
    (log p(child), log p(parent's other words), log p(outside)), ``clean`` (n_prompts, 3) unsteered,
    ``nested`` {vector type: (draws, n_norms, n_prompts, 3)} the same construction on nested random sets,
    ``random`` (draws, n_norms, n_prompts, 3) covariance-shaped random directions.
    """

    _fit_call = "fit(real, clean, nested, random, norms)"
    _fitted = "metrics_"

    def __init__(self, ref_norm: float = 1.0, target_gain: float = 1.0, seed: int = 0):
        self.ref_norm = ref_norm
        self.target_gain = target_gain
        self.seed = seed

    def fit(self, real: Mapping[str, np.ndarray], clean: np.ndarray, nested: Mapping[str, np.ndarray],
            random: np.ndarray, norms: Sequence[float]) -> "HierarchySteering":
        from ..stats import bootstrap_ci, null_summary, statistic

        norms = [float(x) for x in norms]
        if float(self.ref_norm) not in norms:
            raise DataError(f"ref_norm {self.ref_norm} is not one of the measured norms {norms}")
        j = norms.index(float(self.ref_norm))
        clean = np.asarray(clean)
        stats: dict[str, Any] = {}
        for t, M in real.items():
            for q, (alt, desc) in _QUANTITIES.items():
                per = _quantity(M[j], clean, q)
                obs = float(per.mean())
                nulls = {}
                if t in nested and len(nested[t]):
                    nulls["nested_random_sets"] = null_summary(obs, _quantity(nested[t][:, j], clean, q).mean(-1), alt)
                if random is not None and len(random):
                    nulls["random_directions"] = null_summary(obs, _quantity(random[:, j], clean, q).mean(-1), alt)
                stats[f"{q}:{t}"] = statistic(obs, len(per), nulls=nulls, ci95=bootstrap_ci(per, seed=self.seed),
                                              alternative=alt, description=f"{desc}; vector {t}",
                                              unit="prompt")
        curves, matched = [], []
        for t, M in [*real.items(), ("random_directions (mean)", np.asarray(random).mean(0) if len(random) else None)]:
            if M is None:
                continue
            g = [float(_quantity(M[k], clean, "child_gain").mean()) for k in range(len(norms))]
            sib = [float((M[k][:, 1] - clean[:, 1]).mean()) for k in range(len(norms))]
            out = [float((M[k][:, 2] - clean[:, 2]).mean()) for k in range(len(norms))]
            share = [float(_quantity(M[k], clean, "child_share_gain").mean()) for k in range(len(norms))]
            for k, s in enumerate(norms):
                curves.append({"vector": t, "norm": s, "child_gain": g[k], "siblings_change": sib[k],
                               "outside_change": out[k], "child_share_gain": share[k]})
            at = interpolate_at(norms, g, float(self.target_gain))
            row: dict[str, Any] = {"vector": t, "norm_at_target": at}
            for name, ys in (("siblings_change", sib), ("outside_change", out), ("child_share_gain", share)):
                row[name] = None if at is None else float(np.interp(at, [0.0, *norms], [0.0, *ys]))
            matched.append(row)
        self.metrics_ = {"statistics": stats, "ref_norm": float(self.ref_norm), "target_gain": float(self.target_gain),
                         "clean": {"log_p_child": float(clean[:, 0].mean()), "log_p_siblings": float(clean[:, 1].mean()),
                                   "log_p_outside": float(clean[:, 2].mean())}}
        self.curves_ = curves
        self.matched_ = matched
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(analyzer="steer_hierarchy", params=self.get_params(), provenance={},
                              metrics=self.metrics_, tables={"curves": self.curves_, "matched": self.matched_})


class CaaOrthogonality(Analyzer):
    """|cos(v_parent, v_child - v_parent)| of contrastive vectors over the tree's edges, against nested random sets.

    ``fit(X, token_sets, edges, tree_rows, baseline)``: ``X`` (rows, d) activations; ``token_sets`` each
    category's rows; ``edges`` (E, 2) parent and child indices into ``token_sets``; ``tree_rows`` the rows the
    nested null permutes (the tree's words); ``baseline`` rows of words outside the tree. A category's vector
    is the mean of its rows minus the mean of the baseline rows (one shared negative set, so
    ``v_child - v_parent`` is the child's mean minus the parent's).
    """

    _fit_call = "fit(X, token_sets, edges, tree_rows, baseline)"
    _fitted = "metrics_"

    def __init__(self, n_null_draws: int = 20, seed: int = 0):
        self.n_null_draws = n_null_draws
        self.seed = seed

    @staticmethod
    def vectors(X: np.ndarray, token_sets: Sequence[np.ndarray], baseline: np.ndarray) -> np.ndarray:
        """Each category's mean row minus the mean of the ``baseline`` rows (words outside the tree)."""
        from scipy.sparse import csr_matrix

        lens = np.array([len(s) for s in token_sets])
        M = csr_matrix((np.ones(int(lens.sum())), (np.repeat(np.arange(len(token_sets)), lens),
                                                    np.concatenate(token_sets))), shape=(len(token_sets), len(X)))
        inside = np.asarray(M @ X, dtype=np.float64) / lens[:, None]
        return inside - X[baseline].mean(0, dtype=np.float64)

    @staticmethod
    def cosines(V: np.ndarray, edges: np.ndarray) -> np.ndarray:
        from .hierarchy_stats import cos_rows

        return cos_rows(V[edges[:, 0]], V[edges[:, 1]] - V[edges[:, 0]])

    def fit(self, X: np.ndarray, token_sets: Sequence[np.ndarray], edges: np.ndarray,
            tree_rows: np.ndarray, baseline: np.ndarray, pairs: np.ndarray | None = None) -> "CaaOrthogonality":
        """``pairs`` (optional, (k, 2) ancestor and descendant indices): also measured, each against its own
        draws (:meth:`pair_statistic`), outside the mean over edges."""
        from ..stats import bootstrap_ci, null_summary, statistic

        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        if len(edges) == 0:
            raise DataError("the tree has no parent-child edges to test; lower --min-tokens")
        n_edges = len(edges)
        extra = np.asarray(pairs if pairs is not None else [], dtype=np.int64).reshape(-1, 2)
        edges = np.concatenate([edges, extra])
        X = np.asarray(X, dtype=np.float32)
        baseline = np.asarray(baseline, dtype=np.int64)
        if len(baseline) < 2:
            raise DataError("the contrastive vectors need at least 2 baseline words outside the tree; raise --pool")
        cos = self.cosines(self.vectors(X, token_sets, baseline), edges)
        obs = float(np.nanmean(np.abs(cos[:n_edges])))
        rng = np.random.default_rng([self.seed, 0xCAA])
        tree_rows = np.asarray(tree_rows, dtype=np.int64)
        lut = np.arange(len(X))
        draws, draw_cos = [], []
        for _ in range(int(self.n_null_draws)):
            lut[tree_rows] = tree_rows[rng.permutation(len(tree_rows))]
            c = self.cosines(self.vectors(X, [lut[s] for s in token_sets], baseline), edges)
            draws.append(float(np.nanmean(np.abs(c[:n_edges]))))
            draw_cos.append(c)
            lut[tree_rows] = tree_rows
        self.n_edges_ = n_edges
        self.cos_ = cos
        self.null_cos_ = np.array(draw_cos)
        self.metrics_ = {"statistics": {"caa_orthogonality_parent_child": statistic(
            obs, int(np.isfinite(cos[:n_edges]).sum()), nulls={"nested_random_sets": null_summary(obs, draws, "less")},
            ci95=bootstrap_ci(np.abs(cos[:n_edges][np.isfinite(cos[:n_edges])]), seed=self.seed), alternative="less", unit="edge",
            description="mean over the tree's edges of |cos(v_parent, v_child - v_parent)| for contrastive vectors "
                        "(a category's words minus words outside the tree); Park et al. predict 0")}}
        return self

    def pair_statistic(self, k: int) -> dict[str, Any]:
        """The k-th extra pair's |cos| against the same pair's cosines on the nested random sets."""
        from ..stats import null_summary, statistic

        self.check_fitted()
        i = self.n_edges_ + k
        obs = float(abs(self.cos_[i]))
        return statistic(obs, 1, nulls={"nested_random_sets": null_summary(obs, np.abs(self.null_cos_[:, i]), "less")},
                         ci95_reason="one edge", alternative="less", unit="edge",
                         description="|cos(v_parent, v_child - v_parent)| of this pair's contrastive vectors",
                         signed_cos=float(self.cos_[i]))

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(analyzer="caa_orthogonality", params=self.get_params(), provenance={},
                              metrics=self.metrics_, tables={})
