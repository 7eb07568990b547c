"""Statistics of causal feature experiments (the measurements of :mod:`geomsteer.steering.features`).

- :class:`FeatureDose`: scaling a set of features by 0 (ablation), 0.5 (dampening), 2 (doubling), ...:
  the target log-odds movement, the KL on neutral text and the downstream features changed, each
  against frequency-matched random live feature sets scaled alike; and, as measured ratios, whether
  dampening acts like ablation and how doubling compares with both.
- :class:`FeatureGraph`: the effect of ablating each upstream feature on each downstream feature
  (real ablations), edges kept against a max-statistic null from ablating random live features of
  matched frequency; the attribution-patching estimate and its rank agreement with the real effects.
- :class:`FeatureCompare`: the steering vector, its top-k feature reconstruction and clamping those
  features, at matched target effect: KL on neutral text, off-target downstream features, prompts
  moved the wrong way, against random feature sets given the same coefficients.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..stats import bootstrap_ci, null_summary, statistic
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["FeatureDose", "FeatureGraph", "FeatureCompare", "FeatureRelations"]


def _fmt(a: float) -> str:
    return f"x{a:g}"


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


class FeatureDose(Analyzer):
    """Dose curves of a feature set against frequency-matched random feature sets.

    Per factor: ``abs_shift`` (mean over prompts of |target log-odds shift|), ``kl`` (mean over neutral
    texts), ``changed`` (downstream features whose code change, summed over the tokens per token the set
    fires on, exceeds the threshold x the layer's mean active code; summed over the later layers), each tested one-sided (greater) against the random sets. With 0 among the
    factors, ``ratio`` statistics divide each factor's mean effect by ablation's (CI: the texts or
    prompts resampled together); their null is the same ratio for the random sets (two-sided: do the
    target features respond to dose unlike random ones)."""

    _fit_call = "fit(measure_dose(lab, features, ...))"
    _fitted = "statistics_"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, m: Any) -> "FeatureDose":
        if not hasattr(m, "null_kl"):
            raise DataError(f"expected the measurements of measure_dose, got a {type(m).__name__}")
        stats: dict[str, Any] = {}
        rows = []
        for i, a in enumerate(m.factors):
            obs = {"abs_shift": np.abs(m.shift[i]), "kl": m.kl[i]}
            nul = {"abs_shift": np.abs(m.null_shift[:, i]).mean(1), "kl": m.null_kl[:, i].mean(1)}
            for key, units in obs.items():
                o = float(units.mean())
                stats[f"{key}:{_fmt(a)}"] = statistic(
                    o, len(units), nulls={"random_features": null_summary(o, nul[key], "greater")},
                    ci95=bootstrap_ci(units, seed=self.seed), factor=a,
                    what=("mean over prompts of |target log-odds shift|" if key == "abs_shift"
                          else "mean KL(clean || intervened) over neutral texts"))
            o = float(m.changed[i].sum())
            stats[f"changed:{_fmt(a)}"] = statistic(
                o, m.n_tokens, nulls={"random_features": null_summary(o, m.null_changed[:, i].sum(1), "greater")},
                ci95=None, ci95_reason="one intervened run: tokens are not independent units", factor=a,
                what="downstream SAE features whose |code change| summed over the tokens, per token the set fires on, "
                     "exceeds the threshold x the layer's mean active code; summed over the later layers")
            rows.append({"factor": a, "mean_shift": float(m.shift[i].mean()), "abs_shift": float(np.abs(m.shift[i]).mean()),
                         "kl": float(m.kl[i].mean()), "changed": [int(c) for c in m.changed[i]],
                         "null_abs_shift": float(np.abs(m.null_shift[:, i]).mean()),
                         "null_kl": float(m.null_kl[:, i].mean()),
                         "null_changed": [float(c) for c in m.null_changed[:, i].mean(0)]})
        if 0.0 in m.factors:
            z = m.factors.index(0.0)
            rng = np.random.default_rng([self.seed, 0xD05E])
            for key, per, nper in (("kl", m.kl, m.null_kl), ("abs_shift", np.abs(m.shift), np.abs(m.null_shift))):
                units = per.shape[1]
                for i, a in enumerate(m.factors):
                    if i == z:
                        continue
                    denom = per[z].mean()
                    o = float(per[i].mean() / denom) if denom > 0 else float("nan")
                    idx = rng.integers(0, units, size=(1000, units))
                    boots = per[i][idx].mean(1) / np.maximum(per[z][idx].mean(1), 1e-300)
                    boots = boots[np.isfinite(boots)]
                    ci = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))] if boots.size else None
                    nd = nper[:, i].mean(1) / np.where(nper[:, z].mean(1) > 0, nper[:, z].mean(1), np.nan)
                    stats[f"{key}_ratio:{_fmt(a)}/x0"] = statistic(
                        o, units, nulls={"random_features": null_summary(o, nd, "two-sided")}, ci95=ci,
                        alternative="two-sided", factor=a,
                        what=f"mean {'KL' if key == 'kl' else '|shift|'} at {_fmt(a)} divided by that at x0 (ablation)")
        self.statistics_ = stats
        self.rows_ = rows
        self.m_ = m
        return self

    def verdict(self) -> str:
        """What the ratios say about dampening, ablation and doubling (KL on neutral text)."""
        self.check_fitted()
        s = self.statistics_
        parts = []
        for a, word in ((0.5, "dampening (x0.5)"), (2.0, "doubling (x2)")):
            st = s.get(f"kl_ratio:{_fmt(a)}/x0")
            if st is None or st["observed"] is None:
                continue
            lo, hi = st["ci95"] or (float("nan"), float("nan"))
            rel = "about as strongly as" if lo <= 1 <= hi else ("more strongly than" if lo > 1 else "more weakly than")
            parts.append(f"{word} acts {rel} ablation (KL ratio {st['observed']:.2f}, 95% CI {lo:.2f}-{hi:.2f}; "
                         f"random features {st['null']['random_features']['mean']:.2f})")
        return "; ".join(parts) if parts else "no ablation (x0) among the factors: no ratios"

    def result(self) -> AnalysisResult:
        self.check_fitted()
        m = self.m_
        return AnalysisResult(
            analyzer="feature_dose", params={**dict(m.params), **self.get_params()},
            provenance={"hook": m.hook, "later_hooks": list(m.later), "n_tokens": m.n_tokens},
            metrics={"statistics": self.statistics_, "features": list(m.features),
                     "frequency": [float(x) for x in m.frequency], "factors": list(m.factors),
                     "verdict": self.verdict()},
            tables={"dose": self.rows_, "null_features": m.null_features.tolist()})


class FeatureGraph(Analyzer):
    """Edges from upstream features to downstream features, by real ablation, each with a p-value.

    An edge's weight is the code change of the downstream feature, summed over every measured token, when
    the upstream feature is zero-ablated, per token the upstream feature fires on, and divided by the mean
    non-zero code at the downstream layer: how far one firing moves the downstream feature, in units of a
    typical activation (comparable across layers and across rare and common upstream features).
    Its p-value is a max-statistic test over every downstream feature of every later layer: the share of
    random frequency-matched upstream features whose largest |weight| reaches this edge's |weight|, so
    each upstream feature's edges are corrected for the number of downstream features. ``alpha``: edges
    kept; the ``top`` strongest edges are listed (and drawn) whether kept or not, with their p-values. The attribution estimate is compared with the real effects by Spearman rank
    correlation over the pairs where either is non-zero; its null pairs each upstream feature's
    attribution row with another feature's real row (``n_perm`` permutations)."""

    _fit_call = "fit(measure_graph(lab, features, ...))"
    _fitted = "statistics_"

    def __init__(self, alpha: float = 0.05, threshold: float = 0.1, top: int = 60, n_perm: int = 200,
                 seed: int = 0) -> None:
        self.alpha = alpha
        self.top = top
        self.threshold = threshold
        self.n_perm = n_perm
        self.seed = seed

    def fit(self, m: Any) -> "FeatureGraph":
        if not hasattr(m, "null_real"):
            raise DataError(f"expected the measurements of measure_graph, got a {type(m).__name__}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must lie between 0 and 1, got {self.alpha!r}")
        later = list(m.later)
        # per firing: the summed change over all tokens, per token the upstream feature fires on
        per_up = m.n_tokens / np.maximum(np.asarray(m.fires if m.fires is not None else [m.n_tokens] * len(m.features)), 1)
        per_null = m.n_tokens / np.maximum(np.asarray(m.null_fires if m.null_fires is not None
                                                      else [m.n_tokens] * len(m.null_features)), 1)
        W = np.concatenate([m.real[h] / m.code_scale[h] for h in later], 1) * per_up[:, None]  # (n_up, total)
        N = np.concatenate([m.null_real[h] / m.code_scale[h] for h in later], 1) * per_null[:, None]  # (n_null, total)
        self.per_up_ = per_up
        layer_of = np.concatenate([[i] * m.real[h].shape[1] for i, h in enumerate(later)])
        feat_of = np.concatenate([np.arange(m.real[h].shape[1]) for h in later])
        null_max = np.abs(N).max(1)
        n_null = len(null_max)
        absW = np.abs(W)
        P = (1 + (null_max[None, None, :] >= absW[..., None]).sum(-1)) / (1 + n_null)
        def edge(u: int, d: int) -> dict[str, Any]:
            h = later[layer_of[d]]
            e = {"upstream": int(m.features[u]), "hook": h, "downstream": int(feat_of[d]),
                 "weight": float(W[u, d]), "change": float(m.real[h][u, feat_of[d]]), "p_value": float(P[u, d]),
                 "kept": bool(P[u, d] <= self.alpha)}
            if m.attribution:
                e["attribution"] = float(m.attribution[h][u, feat_of[d]] / m.code_scale[h] * per_up[u])
            return e

        edges = sorted((edge(u, d) for u, d in zip(*np.nonzero((P <= self.alpha) & (absW > 0)))),
                       key=lambda e: -abs(e["weight"]))
        flat = np.argsort(-absW, axis=None)[: self.top]
        top = [edge(int(u), int(d)) for u, d in zip(*np.unravel_index(flat, absW.shape)) if absW[u, d] > 0]
        stats: dict[str, Any] = {}
        strong = (absW > self.threshold).sum(1).astype(float)
        null_strong = (np.abs(N) > self.threshold).sum(1).astype(float)
        o = float(strong.mean())
        stats["strong_edges"] = statistic(
            o, len(strong), nulls={"random_features": null_summary(o, null_strong, "greater")},
            ci95=bootstrap_ci(strong, seed=self.seed),
            what=f"downstream features per upstream feature whose |weight| exceeds {self.threshold:g}")
        total, null_total = absW.sum(1), np.abs(N).sum(1)
        o = float(total.mean())
        stats["total_effect"] = statistic(
            o, len(total), nulls={"random_features": null_summary(o, null_total, "greater")},
            ci95=bootstrap_ci(total, seed=self.seed), what="sum of |weight| over downstream features, per upstream feature")
        o = float(len(edges) / max(1, len(m.features)))
        stats["significant_edges"] = statistic(
            o, len(m.features), nulls={}, ci95=None, ci95_reason="a count over the graph",
            p_reason=f"each edge has its own max-statistic p-value against {n_null} random features; this counts those "
                     f"with p <= {self.alpha:g}",
            what="edges kept per upstream feature")
        agreement = {}
        if m.attribution:
            A = np.concatenate([m.attribution[h][: len(m.features)] / m.code_scale[h] for h in later], 1) * per_up[:, None]
            rho = self._rho(W, A)
            rng = np.random.default_rng([self.seed, 0xA77])
            draws = []
            if len(W) >= 3:
                for _ in range(self.n_perm):
                    perm = rng.permutation(len(W))
                    while len(W) > 1 and (perm == np.arange(len(W))).all():
                        perm = rng.permutation(len(W))
                    draws.append(self._rho(W, A[perm]))
            stats["attribution_spearman"] = statistic(
                rho, int(((W != 0) | (A != 0)).sum()),
                nulls={"shuffled_upstream": null_summary(rho, draws, "greater")} if draws else {},
                ci95=None, ci95_reason="pairs share upstream and downstream features: not independent units",
                what="Spearman correlation of attribution and real ablation over upstream x downstream pairs")
            for i, h in enumerate(later):
                sel = layer_of == i
                agreement[h] = {"spearman": self._rho(W[:, sel], A[:, sel]),
                                "sign_agreement": float(np.mean(np.sign(W[:, sel][absW[:, sel] > self.threshold])
                                                                == np.sign(A[:, sel][absW[:, sel] > self.threshold])))
                                if (absW[:, sel] > self.threshold).any() else None}
            err = np.concatenate([m.attribution[h][-1] / m.code_scale[h] for h in later])
            agreement["error_node_total_effect"] = float(np.abs(err).sum())  # per token (the error is everywhere)
        self.W_, self.P_, self.edges_, self.top_edges_, self.statistics_ = W, P, edges, top, stats
        self.agreement_ = agreement
        self.layer_of_, self.feat_of_ = layer_of, feat_of
        self.m_ = m
        return self

    @staticmethod
    def _rho(W: np.ndarray, A: np.ndarray) -> float:
        sel = (W != 0) | (A != 0)
        return _spearman(W[sel], A[sel])

    def graph(self) -> Any:
        """The kept edges and the ``top`` strongest ones as a networkx DiGraph (nodes ``L<layer>/<feature>``;
        each edge's ``weight``, ``p_value``, ``kept`` and, when measured, ``attribution``)."""
        import networkx as nx

        from ..hooks import layer_of

        self.check_fitted()
        m = self.m_
        G = nx.DiGraph()
        k = layer_of(m.hook)
        for f, fr in zip(m.features, m.frequency):
            G.add_node(f"L{k}/{f}", layer=k, feature=int(f), frequency=float(fr), role="upstream")
        for e in [*self.edges_, *self.top_edges_]:
            L = layer_of(e["hook"])
            node = f"L{L}/{e['downstream']}"
            if node not in G:
                G.add_node(node, layer=L, feature=e["downstream"], role="downstream",
                           mean_code=float(m.mean_codes[e["hook"]][e["downstream"]]))
            G.add_edge(f"L{k}/{e['upstream']}", node, weight=e["weight"], p_value=e["p_value"], kept=e["kept"],
                       **({"attribution": e["attribution"]} if "attribution" in e else {}))
        return G

    def result(self) -> AnalysisResult:
        self.check_fitted()
        m = self.m_
        return AnalysisResult(
            analyzer="feature_graph", params={**dict(m.params), **self.get_params()},
            provenance={"hook": m.hook, "later_hooks": list(m.later), "n_tokens": m.n_tokens,
                        "seconds": dict(m.seconds)},
            metrics={"statistics": self.statistics_, "attribution_agreement": self.agreement_,
                     "features": list(m.features), "frequency": [float(x) for x in m.frequency],
                     "n_edges": len(self.edges_)},
            tables={"edges": self.edges_, "top_edges": self.top_edges_,
                    "null_features": [int(x) for x in m.null_features]})


class FeatureCompare(Analyzer):
    """The vector, its feature reconstruction and clamped features, compared at matched target effect.

    For each method at its matched multiplier: the mean target shift (CI over prompts), the KL on
    neutral text (CI over texts), off-target downstream features changed (summed over later layers),
    the fraction of prompts moved against the target's direction. The feature methods stand beside
    random frequency-matched feature sets given the same coefficients and multiplier. The paired KL
    differences against the vector (per neutral text) are tested by sign flips (two-sided): the
    hypothesis that targeting the features steers with fewer side effects, reported either way."""

    _fit_call = "fit(measure_compare(lab, vector, alpha, ...))"
    _fitted = "statistics_"

    def __init__(self, n_perm: int = 2000, seed: int = 0) -> None:
        self.n_perm = n_perm
        self.seed = seed

    def fit(self, m: Any) -> "FeatureCompare":
        if not hasattr(m, "null_effects"):
            raise DataError(f"expected the measurements of measure_compare, got a {type(m).__name__}")
        target = float(m.matched.get("target", m.effects["vector"].shift.mean()))
        sign = np.sign(target) if target != 0 else 1.0

        def changed(e: Any) -> int:
            return int(sum((e.mean_abs_change[h] > m.threshold * m.code_scale[h]).sum() for h in m.later))

        stats: dict[str, Any] = {}
        rows = []
        for method, e in m.effects.items():
            nulls = m.null_effects.get(method, ())
            wrong = float(np.mean(np.sign(e.shift) == -sign))
            row = {"method": method, "multiplier": m.matched.get(method + "_used", m.alpha if method == "vector" else None),
                   "matched": m.matched.get(method, 1.0) is not None,
                   "mean_shift": float(e.shift.mean()), "kl": float(e.kl.mean()), "off_target_changed": changed(e),
                   "wrong_way_fraction": wrong}
            if nulls:
                row.update({"null_mean_shift": float(np.mean([n.shift.mean() for n in nulls])),
                            "null_kl": float(np.mean([n.kl.mean() for n in nulls])),
                            "null_off_target_changed": float(np.mean([changed(n) for n in nulls]))})
            rows.append(row)
            for key, units, draws, alt in (
                    ("shift", e.shift, [n.shift.mean() for n in nulls], "two-sided"),
                    ("kl", e.kl, [n.kl.mean() for n in nulls], "greater"),
                    ("off_target_changed", None, [changed(n) for n in nulls], "greater")):
                o = float(units.mean()) if units is not None else float(changed(e))
                stats[f"{key}:{method}"] = statistic(
                    o, len(units) if units is not None else m.n_tokens,
                    nulls={"random_features": null_summary(o, draws, alt)} if nulls else {},
                    ci95=bootstrap_ci(units, seed=self.seed) if units is not None else None,
                    ci95_reason="one intervened run: tokens are not independent units",
                    p_reason="the vector is the reference: its nulls are in 'geomsteer steer sweep'",
                    alternative=alt, method=method)
        rng = np.random.default_rng([self.seed, 0xC0])
        base = m.effects["vector"].kl
        for method in ("reconstruction", "clamp"):
            if method not in m.effects:
                continue
            diff = m.effects[method].kl - base
            o = float(diff.mean())
            flips = rng.choice([-1.0, 1.0], size=(self.n_perm, len(diff)))
            draws = (flips * diff[None]).mean(1)
            stats[f"kl_minus_vector:{method}"] = statistic(
                o, len(diff), nulls={"sign_flip": null_summary(o, draws, "two-sided")},
                ci95=bootstrap_ci(diff, seed=self.seed), alternative="two-sided", method=method,
                what="mean over neutral texts of KL(method) - KL(vector), each at matched target shift")
        self.statistics_, self.rows_, self.target_, self.m_ = stats, rows, target, m
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        m = self.m_
        return AnalysisResult(
            analyzer="feature_compare", params={**dict(m.params), **self.get_params()},
            provenance={"hook": m.hook, "later_hooks": list(m.later), "n_tokens": m.n_tokens},
            metrics={"statistics": self.statistics_, "target_shift": self.target_,
                     "vector_shift_at_alpha": m.matched.get("target_at_alpha"),
                     "features": list(m.features), "coefficients": [float(c) for c in m.coefficients],
                     "explained": m.explained, "matched": {k: v for k, v in m.matched.items()}},
            tables={"methods": self.rows_, "scan": dict(m.scan), "null_features": m.null_features.tolist()})


def _upper(M: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(len(M), 1)
    return M[i, j]


def _clusters(similarity: np.ndarray, n_clusters: int) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage

    D = np.clip(1.0 - similarity, 0.0, 2.0)
    return fcluster(linkage(_upper(D), method="average"), n_clusters, criterion="maxclust")


class FeatureRelations(Analyzer):
    """How the features a vector changes relate to each other.

    The features are clustered twice (average linkage, ``n_clusters`` clusters, default a quarter of
    them): by decoder cosine and by co-activation on the corpus. ``co_change:<by>`` is the mean, over
    pairs in the same cluster, of the correlation over tokens of the two features' code changes under
    steering; its null relabels the features at random keeping the cluster sizes (do features of one
    cluster change together more than random sets of the same sizes?). ``decoder_predicts_output`` is
    the Spearman correlation over feature pairs of decoder cosine and the cosine of the two features'
    effects on the next-token log-probabilities; its null permutes the features of one matrix (Mantel)."""

    _fit_call = "fit(measure_relations(lab, vector, alpha, ...))"
    _fitted = "statistics_"

    def __init__(self, n_clusters: int | None = None, n_perm: int = 1000, seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.n_perm = n_perm
        self.seed = seed

    def fit(self, m: Any) -> "FeatureRelations":
        if not hasattr(m, "output_effect"):
            raise DataError(f"expected the measurements of measure_relations, got a {type(m).__name__}")
        M = len(m.features)
        k = self.n_clusters or max(2, M // 4)
        if not 2 <= k < M:
            raise ConfigError(f"n_clusters must lie between 2 and {M - 1} for {M} features, got {k}")
        rng = np.random.default_rng([self.seed, 0x5E1])
        stats: dict[str, Any] = {}
        labels = {}
        for by, S in (("decoder", m.decoder_cosine), ("co_activation", m.co_activation)):
            lab = _clusters(S, k)
            labels[by] = lab

            def within(L: np.ndarray) -> float:
                same = _upper(L[:, None] == L[None, :])
                return float(_upper(m.co_change)[same].mean()) if same.any() else float("nan")

            o = within(lab)
            draws = [within(rng.permutation(lab)) for _ in range(self.n_perm)]
            stats[f"co_change:{by}"] = statistic(
                o, int(_upper(lab[:, None] == lab[None, :]).sum()),
                nulls={"relabelled_features": null_summary(o, draws, "greater")}, ci95=None,
                ci95_reason="pairs share features: not independent units", clustered_by=by, n_clusters=k,
                what=f"mean correlation over tokens of code changes, pairs in one {by} cluster")
        E = m.output_effect.astype(np.float64)
        En = E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)
        eff_cos = En @ En.T
        x = _upper(m.decoder_cosine)
        o = _spearman(x, _upper(eff_cos))
        draws = []
        for _ in range(self.n_perm):
            p = rng.permutation(M)
            draws.append(_spearman(x, _upper(eff_cos[np.ix_(p, p)])))
        stats["decoder_predicts_output"] = statistic(
            o, len(x), nulls={"permuted_features": null_summary(o, draws, "greater")}, ci95=None,
            ci95_reason="pairs share features: not independent units",
            what="Spearman over feature pairs: decoder cosine vs cosine of the effects on next-token log-probabilities")
        self.statistics_, self.labels_, self.effect_cosine_, self.m_ = stats, labels, eff_cos, m
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted()
        m = self.m_
        rows = [{"feature": int(f), "mean_abs_change": float(c), "decoder_cluster": int(self.labels_["decoder"][i]),
                 "co_activation_cluster": int(self.labels_["co_activation"][i])}
                for i, (f, c) in enumerate(zip(m.features, m.mean_abs_change))]
        return AnalysisResult(
            analyzer="feature_relations", params={**dict(m.params), **self.get_params()},
            provenance={"hook": m.hook, "n_tokens": m.n_tokens},
            metrics={"statistics": self.statistics_, "features": list(m.features)},
            tables={"features": rows,
                    "matrices": {"decoder_cosine": m.decoder_cosine.round(4).tolist(),
                                 "co_activation": m.co_activation.round(4).tolist(),
                                 "co_change": m.co_change.round(4).tolist(),
                                 "effect_cosine": self.effect_cosine_.round(4).tolist()}})
