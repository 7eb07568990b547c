"""Statistics of a cross-model transfer (``geomsteer transfer``): maps, transferred vectors and matched
features' word-level effects, each in the shared statistic shape."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..stats import bootstrap_ci, null_summary, statistic
from ..types import AnalysisResult
from .base import Analyzer

__all__ = ["TransferAnalyzer", "spearman"]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties) of two equal-length vectors."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


class TransferAnalyzer(Analyzer):
    """Turns the measurements of :func:`geomsteer.pipelines.transfer.transfer` into statistics.

    - ``maps.<method>.heldout_r2``: the fraction of B's variance on held-out words a map predicts,
      against maps fitted on shuffled word pairs;
    - ``transfer.<vector>``: B's target log-odds shift under the transferred vector as a fraction of
      B's own vector's, against random directions and vectors carried by shuffled maps (or
      recomposed through shuffled matchings);
    - ``effects.<ablate|add>.effect_similarity``: the mean over the matched pairs of the Pearson r of
      the two models' word-level effects, against the same features re-paired at random
      (``n_permutations`` draws) and against B's words shuffled. An ablation acts only where its
      feature fires, and matched features fire together, so re-pairing also breaks co-firing; the
      ablation's own control keeps it: B's feature activations removed at the same positions along
      random directions (``effects["ablate_random_directions"]``);
    - ``effects.<ablate|add>.downstream_similarity`` (with downstream SAEs): the same comparison of what
      each intervention changes in the matched features of a later layer (at every word), against
      re-paired interventions, the downstream features re-paired, and for ablation random directions
      removed at the same positions;
    - ``effects.add.correlation_predicts_effect``: Spearman's rho between activation correlation and
      effect similarity over every (A feature, B feature) pair of the chosen features, against A's
      features re-paired (asked of the added features only: for ablation, co-firing would answer it).
    """

    _fit_call = "fit(measured, maps=..., ...)"
    _fitted = "metrics_"

    def __init__(self, n_permutations: int = 1000, seed: int = 0):
        self.n_permutations = n_permutations
        self.seed = seed

    def fit(self, measured: Any, *, maps: Mapping[str, Any], null_r2: Mapping[str, np.ndarray],
            scan: Sequence[float], scan_hooks: Sequence[str], hooks: tuple[str, str], route: Mapping[str, Any] | None = None,
            effects: Mapping[str, Any] | None = None, matching: Mapping[str, Any] | None = None) -> "TransferAnalyzer":
        from ..transfer import effect_similarity, shuffled_word_similarity

        rng = np.random.default_rng(self.seed)
        hook_a, hook_b = hooks
        best = int(np.nanargmax(scan))
        m: dict[str, Any] = {
            "layers": {"a": hook_a, "b": hook_b, "best_b_by_debiased_cka": scan_hooks[best],
                       "debiased_cka_at_b": float(scan[list(scan_hooks).index(hook_b)]),
                       "debiased_cka_best": float(scan[best])},
            "maps": {}, "transfer": measured.statistics(),
        }
        for method, mp in maps.items():
            r2 = float(mp.info["heldout_r2"])
            extra = {k: mp.info[k] for k in ("scale", "ridge_fraction") if k in mp.info}
            m["maps"][method] = {"heldout_r2": statistic(
                r2, int(mp.info["heldout_words"]), nulls={"shuffled_pairs": null_summary(r2, null_r2[method])},
                ci95_reason="one held-out split", unit="held-out R^2 of B's activations", **extra)}
        tables: dict[str, Any] = {
            "scan": [{"hook_b": h, "debiased_cka": float(c)} for h, c in zip(scan_hooks, scan)],
            "vectors": [{"vector": "own", "mean_shift": float(measured.shifts["own"].mean()), "fraction": 1.0,
                         "kl": measured.kl.get("own")}]
                       + [{"vector": name, "mean_shift": st["mean_shift"], "fraction": st["observed"],
                           "ci95": st["ci95"], "p_value": st["p_value"], "kl": measured.kl.get(name),
                           "norm_before_rescaling": st.get("mapped_norm")}
                          for name, st in m["transfer"].items()]
                       + [{"vector": f"null: {name.replace('_', ' ').replace(':', ', ')}", "kl": float(np.mean(v)),
                           "kl_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n_vectors": int(len(v))}
                          for name, v in getattr(measured, "null_kl", {}).items()],
        }
        artifacts: dict[str, Any] = {"null_shifts": dict(measured.null_shifts),
                                     "shifts": dict(measured.shifts), "base_shift": float(measured.shifts["own"].mean())}
        if route is not None:
            m["feature_route"] = {"atoms": int(len(route["atoms"])), "explained_by_atoms": route["explained"],
                                  "coefficient_mass_matched": route["kept_fraction"]}
            if matching is not None:
                corr_of = {int(a): float(c) for a, c in zip(matching["ia"], matching["corr"])}
                tables["route_atoms"] = [{"feature_a": int(a), "coefficient": float(c), "feature_b": int(b),
                                          "match_correlation": corr_of.get(int(a))}
                                         for a, c, b in zip(route["atoms"], route["coefficients"], route["partners"])]
        if matching is not None and "downstream" in matching:
            dm = matching["downstream"]
            m["downstream"] = {"hooks": list(dm["hooks"]), "pairs": int(len(dm["correlation"])),
                               "mean_correlation": float(np.mean(dm["correlation"])),
                               "min_correlation": float(np.min(dm["correlation"]))}
        if matching is not None:
            corr, top = np.asarray(matching["corr"]), int(matching["top"])
            obs, obs_top = float(corr.mean()), float(corr[:top].mean())
            m["matching"] = {
                "n_pairs": int(len(corr)), "pairs_above_0.5": int((corr >= 0.5).sum()),
                "mean_correlation": statistic(obs, len(corr), nulls={"shuffled_words": null_summary(
                    obs, matching["chance"])}, ci95_reason="pairs come from one matching of all features",
                    unit="mean activation correlation of the Hungarian pairs"),
                "top_mean_correlation": statistic(obs_top, min(top, len(corr)), nulls={"shuffled_words": null_summary(
                    obs_top, matching["chance_top"])}, ci95_reason="pairs come from one matching of all features",
                    unit=f"mean activation correlation of the {top} best pairs")}
        if effects is not None:
            m["effects"] = {}
            Cact = np.asarray(effects["activation_correlation"], dtype=np.float64)
            n = len(effects["features_a"])
            rows = [{"feature_a": int(a), "feature_b": int(b), "activation_correlation": float(c)}
                    for a, b, c in zip(effects["features_a"], effects["features_b"], effects["correlation"])]
            for mode in ("ablate", "add"):
                Ea, Eb = effects[mode]
                S, cols = effect_similarity(Ea, Eb)
                diag = np.diagonal(S).copy()
                obs = float(np.nanmean(diag))
                perms = [rng.permutation(n) for _ in range(self.n_permutations)]
                repaired = np.array([np.nanmean(S[np.arange(n), p]) for p in perms])
                words = shuffled_word_similarity(Ea[:, cols], Eb[:, cols], min(self.n_permutations, 200),
                                                 seed=self.seed + 1)
                nulls = {"re_paired": null_summary(obs, repaired), "shuffled_words": null_summary(obs, words)}
                if mode == "ablate" and effects.get("ablate_random_directions"):
                    draws = []
                    for Er in effects["ablate_random_directions"]:
                        Sr, _ = effect_similarity(Ea, Er)
                        draws.append(np.nanmean(np.diagonal(Sr)))
                    nulls["random_direction_same_positions"] = null_summary(obs, draws)
                m["effects"][mode] = {"effect_similarity": statistic(
                    obs, int(np.isfinite(diag).sum()), ci95=bootstrap_ci(diag, seed=self.seed), nulls=nulls,
                    unit="mean Pearson r of the word-level effects of matched pairs", n_words=int(cols.sum()))}
                for r, sv in zip(rows, diag):
                    r[f"effect_similarity_{mode}"] = None if not np.isfinite(sv) else float(sv)
                artifacts[f"effect_similarity_{mode}"] = S
                artifacts[f"shuffled_words_{mode}"] = words
                artifacts[f"re_paired_{mode}"] = repaired
                # per-pair scores of the three groups: matched, unmatched (every other pairing of the same
                # features), and matched with B's words shuffled (20 shuffles pooled)
                from ..transfer import _row_corr

                wrng = np.random.default_rng([self.seed, 0x5EED])
                shuffled_pairs = np.concatenate([np.diagonal(_row_corr(
                    Ea[:, cols], Eb[:, cols][:, wrng.permutation(int(cols.sum()))])) for _ in range(20)])
                artifacts[f"shuffled_word_pairs_{mode}"] = shuffled_pairs
                for group, vals in (("matched", diag), ("unmatched", S[~np.eye(n, dtype=bool)]),
                                    ("shuffled words", shuffled_pairs)):
                    v = vals[np.isfinite(vals)]
                    tables.setdefault("effect_distributions", []).append(
                        {"intervention": mode, "pairs": group, "n": int(len(v)),
                         "mean": float(v.mean()) if len(v) else None,
                         **{f"q{q}": (float(np.percentile(v, q)) if len(v) else None) for q in (10, 50, 90)}})
                if f"{mode}_downstream" in effects:
                    m["effects"][mode]["downstream_similarity"] = self._downstream(
                        effects, mode, perms, rng, rows, artifacts)
                if mode == "ablate":
                    # ablation acts where a feature fires, so activation correlation (co-firing) predicts
                    # ablation effects by construction: only the added features are asked this
                    continue
                flat = np.isfinite(S) & np.isfinite(Cact)
                rho = spearman(Cact[flat], S[flat])
                rho_null = []
                for p in perms[: min(self.n_permutations, 500)]:
                    Sp = S[p]
                    ok = np.isfinite(Sp) & np.isfinite(Cact)
                    rho_null.append(spearman(Cact[ok], Sp[ok]))
                m["effects"][mode]["correlation_predicts_effect"] = statistic(
                    rho, int(flat.sum()), nulls={"re_paired": null_summary(rho, rho_null)}, ci95_reason=(
                        "pairs share features, so they are not independent units to resample"),
                    unit="Spearman rho of activation correlation and effect similarity over all pairs of the chosen "
                         "features")
            artifacts["activation_correlation"] = Cact
            tables["pairs"] = rows
        self.metrics_, self.tables_, self.artifacts_ = m, tables, artifacts
        return self

    def _downstream(self, effects: Mapping[str, Any], mode: str, perms: Sequence[np.ndarray],
                    rng: np.random.Generator, rows: list[dict], artifacts: dict) -> dict[str, Any]:
        """Mean over the matched pairs of the Pearson r of what they change downstream (the K matched downstream
        features at every word), against re-paired interventions, the downstream features re-paired, and
        (ablation) random directions removed at the same positions."""
        from ..transfer import downstream_similarity

        Da, Db = effects[f"{mode}_downstream"]
        n, K = len(Da), Da.shape[2]
        S = downstream_similarity(Da, Db)
        diag = np.diagonal(S).copy()
        obs = float(np.nanmean(diag))
        nulls = {"re_paired": null_summary(obs, [np.nanmean(S[np.arange(n), p]) for p in perms])}
        draws = [np.nanmean(np.diagonal(downstream_similarity(Da, Db, rng.permutation(K))))
                 for _ in range(min(self.n_permutations, 200))]
        nulls["shuffled_downstream_matching"] = null_summary(obs, draws)
        if mode == "ablate" and effects.get("ablate_downstream_random_directions"):
            nulls["random_direction_same_positions"] = null_summary(obs, [
                np.nanmean(np.diagonal(downstream_similarity(Da, Dr)))
                for Dr in effects["ablate_downstream_random_directions"]])
        for r, sv in zip(rows, diag):
            r[f"downstream_similarity_{mode}"] = None if not np.isfinite(sv) else float(sv)
        artifacts[f"downstream_similarity_{mode}"] = S
        return statistic(obs, int(np.isfinite(diag).sum()), ci95=bootstrap_ci(diag, seed=self.seed), nulls=nulls,
                         unit=f"mean Pearson r of the changes of {K} matched downstream features (every word)",
                         downstream_pairs=K)

    def result(self) -> AnalysisResult:
        self.check_fitted()
        return AnalysisResult(analyzer="transfer", params=self.get_params(), provenance={}, metrics=self.metrics_,
                              tables=self.tables_, artifacts=self.artifacts_)
