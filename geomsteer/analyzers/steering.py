"""What a steering vector does and what it is made of.

- :class:`SteeringSweep`: multiplier x layer grid on held-out prompts. The shift of the target
  log-odds (and of each target set's log-probability), the KL divergence from the unsteered model
  on neutral text (side effects), sample generations; each beside null vectors.
- :class:`SteeringDecomposition`: the vector in an SAE's feature space, two ways (Mayne et al.
  2024 show that encoding the vector as if it were an activation misleads): (a) sparse coding of
  the vector over the decoder directions (orthogonal matching pursuit, optionally non-negative),
  (b) the mean difference of SAE codes between steered and unsteered activations on real
  prompts. Each reports the fraction of the vector it explains and whether its reconstruction
  still steers on prompts the decomposition was not fitted on, both against null vectors.
- :class:`SteeringPropagation`: steer at layer k, encode the activations at each later layer that
  has an SAE, and count per layer and multiplier the features that change beyond a threshold
  (off-target spread), with the most changed features, against null vectors.

The nulls (DESIGN: a null keeps everything but the structure tested): vectors computed from the
same pairs with shuffled labels (a random sign per pair), steered exactly like the vector, and
random directions drawn from the activation covariance at the hook with the vector's norm
(isotropic directions are off-distribution in a residual stream with massive dimensions).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..types import AnalysisResult
from ..steering.experiments import DEFAULT_ALPHAS
from ..sparse import omp
from .base import Analyzer

__all__ = ["SteeringSweep", "SteeringDecomposition", "SteeringPropagation", "omp", "DEFAULT_ALPHAS"]

def _layer(hook: str) -> int:
    from ..hooks import layer_of

    return layer_of(hook)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------------------
# Sweep


class SteeringSweep(Analyzer):
    """Dose-response statistics of steering vectors over multipliers and layers, beside null vectors.

    ``fit(measurements)`` takes what :func:`geomsteer.steering.experiments.measure_sweep` measured
    (the model is not touched here). Every cell has random directions drawn from the activation
    covariance at the hook (the band of the dose-response figure). At the tested multipliers (by
    default the most negative and the most positive) the shift is tested against two null
    distributions: vectors computed from the same pairs with shuffled labels (steered exactly like
    the vector) and covariance directions with the vector's norm. ``seed`` drives the bootstrap.
    """

    _fit_call = "fit(measure_sweep(model, vectors, items, ...))"
    _fitted = "rows_"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, measurements: Any) -> "SteeringSweep":
        m = measurements
        if not hasattr(m, "cells"):
            raise DataError(f"expected the measurements of geomsteer.steering.experiments.measure_sweep, got a "
                            f"{type(m).__name__}")
        n_random = m.params["n_random"]
        rows, summary = [], {}
        hooks = list(dict.fromkeys(c.hook for c in m.cells))
        for hook in hooks:
            stats: dict[str, Any] = {}
            mine = [c for c in m.cells if c.hook == hook]
            for c in mine:
                d, band, a = c.shift, c.covariance, c.alpha
                row: dict[str, Any] = {"hook": hook, "layer": _layer(hook), "alpha": a}
                row["logodds_shift"] = float(d[:, 0].mean())
                row["logodds_shift_sem"] = float(d[:, 0].std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
                row["logp_positive_shift"] = float(d[:, 1].mean())
                row["logp_negative_shift"] = float(d[:, 2].mean())
                row["kl_neutral"] = c.kl
                row["prompts_moved_with_sign"] = float(np.mean(np.sign(d[:, 0]) == np.sign(a))) if a else None
                D = band[:n_random].mean(1)
                row["random_logodds_shift"] = float(D[:, 0].mean())
                row["random_logodds_shift_sd"] = float(D[:, 0].std(ddof=1)) if len(D) > 1 else 0.0
                row["random_abs_logodds_shift"] = float(np.abs(D[:, 0]).mean())
                row["random_logp_positive_shift"] = float(D[:, 1].mean())
                row["random_logp_negative_shift"] = float(D[:, 2].mean())
                row["random_kl_neutral"] = c.random_kl
                if c.tested:
                    draws = {"covariance_directions": band.mean(1)[:, 0]}
                    if c.shuffled is not None:
                        draws["shuffled_labels"] = c.shuffled.mean(1)[:, 0]
                    stats[f"logodds_shift_at_{a:g}"] = _shift_statistic(d[:, 0], draws, a, self.seed)
                    row["null_shifts"] = {k: [float(x) for x in x_] for k, x_ in draws.items()}
                rows.append(row)
            mine_rows = [r for r in rows if r["hook"] == hook]
            shifts = [r["logodds_shift"] for r in mine_rows]
            top = mine_rows[-1]
            summary[hook] = {
                "layer": _layer(hook), "vector_norm": m.vector_norms[hook],
                "spearman_alpha_shift": _spearman([r["alpha"] for r in mine_rows], shifts),
                "monotone": bool(np.all(np.diff(shifts) > 0)),
                "shift_at_max_alpha": top["logodds_shift"], "random_shift_at_max_alpha": top["random_logodds_shift"],
                "random_abs_shift_at_max_alpha": top["random_abs_logodds_shift"],
                "kl_at_max_alpha": top["kl_neutral"], "random_kl_at_max_alpha": top["random_kl_neutral"],
                "statistics": stats, "nulls_note": m.nulls_notes.get(hook),
            }
        base = m.base
        self.rows_, self.samples_, self.summary_ = rows, [dict(s) for s in m.samples], summary
        self.baseline_ = {"logodds_mean": float(base[:, 0].mean()), "logp_positive_mean": float(base[:, 1].mean()),
                          "logp_negative_mean": float(base[:, 2].mean()), "n_prompts": int(len(base)),
                          "neutral_positions": m.neutral_positions}
        self.alphas_ = list(m.alphas)
        self.null_alphas_ = list(m.null_alphas)
        self.measured_with_ = dict(m.params)
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted("rows_")
        return AnalysisResult(analyzer="steering_sweep", params={**self.measured_with_, **self.get_params()},
                              provenance={"null_alphas": self.null_alphas_},
                              metrics={"per_hook": self.summary_, "unsteered": self.baseline_},
                              tables={"grid": self.rows_, "samples": self.samples_})


def _shift_statistic(per_prompt: np.ndarray, draws: Mapping[str, np.ndarray], alpha: float, seed: int) -> dict[str, Any]:
    """The mean log-odds shift, signed so that steering the intended way is positive, against null draws."""
    from ..stats import bootstrap_ci, null_summary, statistic

    sign = 1.0 if alpha > 0 else -1.0
    x = sign * np.asarray(per_prompt, dtype=np.float64)
    obs = float(x.mean())
    nulls = {k: {**null_summary(obs, sign * np.asarray(d), "greater"),
                 "percentile": float(100 * np.mean(sign * np.asarray(d) < obs))} for k, d in draws.items()}
    return statistic(obs, len(x), nulls=nulls, ci95=bootstrap_ci(x, seed=seed), alternative="greater", alpha=alpha,
                     what="mean shift of the target log-odds on the evaluation prompts, times the multiplier's sign")


# --------------------------------------------------------------------------------------------
# Decomposition into SAE features


def _explained(target: np.ndarray, approx: np.ndarray) -> float:
    t = np.asarray(target, dtype=np.float64)
    r = t - np.asarray(approx, dtype=np.float64)
    return 1.0 - float(r @ r) / float(t @ t)


def _lens_tokens(direction: np.ndarray, W_U: np.ndarray | None, vocab: Sequence[str] | None, k: int = 8) -> list:
    if W_U is None or vocab is None:
        return []
    scores = np.asarray(W_U, dtype=np.float32) @ np.asarray(direction, dtype=np.float32)
    top = np.argsort(-scores)[:k]
    return [(vocab[i], float(scores[i])) for i in top]


class SteeringDecomposition(Analyzer):
    """A steering vector in an SAE's feature space: sparse coding and steered-minus-unsteered codes.

    ``fit(measurements, unembedding=None, vocab=None)`` takes what
    :func:`geomsteer.steering.experiments.measure_decomposition` measured (the model and SAE are not
    touched here: the sparse coding runs on the decoder matrix it recorded). ``unembedding``
    (vocab, d_model, the final norm's scale folded in) and ``vocab`` give each top feature's logit
    lens; ``top`` features are listed from each method; ``seed`` drives the bootstrap.
    """

    _fit_call = "fit(measure_decomposition(model, vector, sae, items, alpha, ...))"
    _fitted = "features_"

    def __init__(self, top: int = 12, seed: int = 0) -> None:
        self.top = top
        self.seed = seed

    def fit(self, measurements: Any, unembedding: np.ndarray | None = None,
            vocab: Sequence[str] | None = None) -> "SteeringDecomposition":
        from ..stats import null_summary, statistic

        m = measurements
        if not hasattr(m, "null_code_differences"):
            raise DataError(f"expected the measurements of geomsteer.steering.experiments.measure_decomposition, got a "
                            f"{type(m).__name__}")
        k, nonneg, alpha = int(m.params["k"]), bool(m.params["nonneg"]), m.alpha
        v, W_dec, rnd = m.vector, m.decoder, m.random_direction
        sc = omp(W_dec, v, k, nonneg)
        sc_rnd = omp(W_dec, rnd, k, nonneg)
        delta, delta_r = m.code_difference, m.random_code_difference
        recon_codes = delta @ W_dec / alpha
        recon_codes_r = delta_r @ W_dec / alpha
        recon_enc = m.encoder_output @ W_dec
        null_explained: dict[str, dict[str, list[float]]] = {"sparse_coding": {}, "code_difference": {}}
        for name, V in m.null_vectors.items():
            null_explained["sparse_coding"][name] = [(omp(W_dec, u, k, nonneg)["explained"] or [0.0])[-1] for u in V]
            null_explained["code_difference"][name] = [_explained(u, du @ W_dec / alpha)
                                                       for u, du in zip(V, m.null_code_differences[name])]

        # (c) do the reconstructions still steer? Scored on the prompts the code difference was not fitted on
        shifts, null_shifts = m.shifts, m.null_shifts
        full = float(shifts[0].mean())
        effects = {"vector": full, "sparse_coding": float(shifts[1].mean()), "code_difference": float(shifts[2].mean()),
                   "random": float(null_shifts["covariance_directions"].mean())}
        self.effects_ = {name: {"logodds_shift": e, "fraction_of_vector": e / full if full else float("nan")}
                         for name, e in effects.items()}
        cd = null_shifts["covariance_directions"]
        self.effects_["random"].update({"n": len(cd), "sd": float(np.std(cd, ddof=1)), "mean_abs": float(np.mean(np.abs(cd))),
                                        "kind": "covariance directions with the vector's norm"})
        self.statistics_ = {}
        for i, name in enumerate(("vector", "sparse_coding", "code_difference")):
            st = _shift_statistic(shifts[i], null_shifts, alpha, self.seed)
            st["what"] = (f"held-out mean log-odds shift of the {name.replace('_', ' ')}"
                          + (" reconstruction" if i else "") + ", times the multiplier's sign")
            self.statistics_[f"steering_effect_{name}"] = st
        for name, obs in (("sparse_coding", sc["explained"][-1] if sc["explained"] else 0.0),
                          ("code_difference", _explained(v, recon_codes))):
            self.statistics_[f"explained_{name}"] = statistic(
                obs, 1, nulls={n: {**null_summary(obs, d), "percentile": float(100 * np.mean(np.asarray(d) < obs))}
                               for n, d in null_explained[name].items()},
                ci95=None, ci95_reason="one vector: no units to resample", alternative="greater",
                what=f"fraction of |v|^2 the {name.replace('_', ' ')} reconstruction explains")
        self.split_ = dict(m.split)
        self.nulls_note_ = m.nulls_note
        self.explained_ = {
            "sparse_coding": sc["explained"][-1] if sc["explained"] else 0.0,
            "sparse_coding_random_direction": sc_rnd["explained"][-1] if sc_rnd["explained"] else 0.0,
            "code_difference": _explained(v, recon_codes),
            "code_difference_random_direction": _explained(rnd, recon_codes_r),
            # the best any rescaling of it does: cos^2 between v and the decoded encoder output
            "encoder_output_not_a_decomposition": float((recon_enc @ v) ** 2 / max((recon_enc @ recon_enc) * (v @ v), 1e-300)),
        }
        self.curve_ = {"vector": sc["explained"], "random": sc_rnd["explained"]}
        thr = 0.01 * m.unsteered_active_mean
        self.code_stats_ = {"n_tokens": m.n_tokens, "features_changed": int((np.abs(delta) > thr).sum()),
                            "features_changed_random": int((np.abs(delta_r) > thr).sum()), "threshold": thr}
        scale = np.linalg.norm(W_dec, axis=1)
        feats: dict[int, dict[str, Any]] = {}
        for rank, (j, c) in enumerate(zip(sc["atoms"], sc["coefficients"])):
            feats.setdefault(int(j), {})["sparse_coding"] = {"rank": rank, "coefficient": float(c),
                                                              "code_units": float(c / scale[j]) if scale[j] else 0.0}
        for rank, j in enumerate(np.argsort(-np.abs(delta))[: self.top]):
            feats.setdefault(int(j), {})["code_difference"] = {"rank": rank, "mean_change": float(delta[j]),
                                                                "mean_unsteered": float(m.unsteered_mean_codes[j])}
        table = []
        for j, info in feats.items():
            sc_i = info.get("sparse_coding", {})
            if sc_i.get("rank", 0) >= self.top and "code_difference" not in info:
                continue
            table.append({"feature": j, **info, "cosine_with_vector": float(W_dec[j] @ v / (scale[j] * np.linalg.norm(v)))
                          if scale[j] else 0.0, "logit_lens": _lens_tokens(W_dec[j], unembedding, vocab)})
        table.sort(key=lambda r: -abs(r.get("sparse_coding", {}).get("coefficient", 0.0)))
        self.features_ = table
        self.sparse_coding_ = {"atoms": [int(a) for a in sc["atoms"]], "coefficients": [float(c) for c in sc["coefficients"]]}
        self.vector_lens_ = _lens_tokens(v, unembedding, vocab)
        self.hook_, self.alpha_, self.norm_ = m.hook, float(alpha), float(np.linalg.norm(v))
        self.measured_with_ = dict(m.params)
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted("features_")
        return AnalysisResult(
            analyzer="steering_decomposition", params={**self.measured_with_, **self.get_params()},
            provenance={"hook": self.hook_, "alpha": self.alpha_, "vector_norm": self.norm_, "prompt_split": self.split_,
                        "nulls_note": self.nulls_note_},
            metrics={"explained_fraction": self.explained_, "steering_effect": self.effects_,
                     "codes": self.code_stats_, "statistics": self.statistics_},
            tables={"features": self.features_, "explained_curve": self.curve_, "sparse_coding": self.sparse_coding_,
                    "vector_logit_lens": self.vector_lens_},
        )


# --------------------------------------------------------------------------------------------
# Propagation through later layers


class SteeringPropagation(Analyzer):
    """Which SAE features change at each later layer when the vector is added at layer k.

    ``fit(measurements)`` takes what :func:`geomsteer.steering.experiments.measure_propagation`
    measured (the model and SAEs are not touched here). A feature changes when its mean absolute
    code change exceeds ``threshold`` times the mean non-zero unsteered code at that layer. Each
    multiplier also ran one random direction drawn from the activation covariance at the vector's
    hook, with the vector's norm. At the multiplier of largest magnitude, the counts are tested
    against shuffled-label vectors and covariance directions (two-sided: a vector may spread more
    or less than its nulls). ``top`` features are listed per layer.
    """

    _fit_call = "fit(measure_propagation(model, vector, saes, texts, ...))"
    _fitted = "rows_"

    def __init__(self, threshold: float = 0.1, top: int = 8) -> None:
        self.threshold = threshold
        self.top = top

    def _counts(self, run: Any, h: str, scale: float) -> dict[str, Any]:
        mean_abs = run.mean_abs_change[h]
        return {"features_changed": int((mean_abs > self.threshold * scale).sum()),
                "total_abs_change": float(mean_abs.sum()), "relative_residual_change": run.relative_residual_change[h]}

    def fit(self, measurements: Any) -> "SteeringPropagation":
        m = measurements
        if not hasattr(m, "null_runs"):
            raise DataError(f"expected the measurements of geomsteer.steering.experiments.measure_propagation, got a "
                            f"{type(m).__name__}")
        if not (self.threshold > 0):
            raise ConfigError(f"the threshold must be positive, got {self.threshold!r}")
        later, alphas, scale = list(m.hooks), list(m.alphas), dict(m.code_scale)
        rows = []
        means: dict[tuple[str, float], np.ndarray] = {}
        for run in m.runs:
            for h in later:
                row = {"hook": h, "layer": _layer(h), "alpha": run.alpha, "direction": run.direction,
                       **self._counts(run, h, scale[h])}
                if run.direction == "vector":
                    mean, mean_abs = run.mean_change[h], run.mean_abs_change[h]
                    means[(h, run.alpha)] = mean
                    order = np.argsort(-mean_abs)[: self.top]
                    row["top_features"] = [{"feature": int(j), "mean_change": float(mean[j]),
                                            "mean_abs_change": float(mean_abs[j]),
                                            "mean_unsteered": float(m.unsteered_mean_codes[h][j])} for j in order]
                rows.append(row)
        # the vector's spread against null vectors at the multiplier of largest magnitude
        self.null_alpha_ = m.null_alpha
        self.statistics_: dict[str, Any] = {}
        if m.null_runs:
            from ..stats import null_summary, statistic

            obs = {r["hook"]: r for r in rows if r["direction"] == "vector" and r["alpha"] == m.null_alpha}
            draws: dict[str, dict[str, dict[str, list[float]]]] = {h: {"features_changed": {}, "total_abs_change": {}}
                                                                    for h in later}
            for run in m.null_runs:
                for h in later:
                    counts = self._counts(run, h, scale[h])
                    for key in ("features_changed", "total_abs_change"):
                        draws[h][key].setdefault(run.direction, []).append(counts[key])
            for h in later:
                for key in ("features_changed", "total_abs_change"):
                    o = float(obs[h][key])
                    self.statistics_[f"{key}:{h}"] = statistic(
                        o, m.n_tokens,
                        nulls={k: {**null_summary(o, d, "two-sided"), "percentile": float(100 * np.mean(np.asarray(d) < o))}
                               for k, d in draws[h][key].items()},
                        ci95=None, ci95_reason="one steered run: tokens are not independent units",
                        alternative="two-sided", hook=h, alpha=m.null_alpha,
                        what=("SAE features whose mean |code change| exceeds the threshold" if key == "features_changed"
                              else "sum over features of the mean |code change|"))
        self.nulls_note_ = m.nulls_note
        self.rows_ = rows
        # each layer's most changed features at the largest multiplier, followed across all multipliers
        self.tracked_ = {}
        for h in later:
            top_rows = next(r for r in rows if r["hook"] == h and r["direction"] == "vector" and r["alpha"] == alphas[-1])
            feats = [t["feature"] for t in top_rows["top_features"]]
            self.tracked_[h] = {"features": feats,
                                "mean_change": [[float(means[(h, a)][f]) for a in alphas] for f in feats]}
        self.scale_ = scale
        self.hook_, self.hooks_, self.alphas_, self.skipped_ = m.hook, later, alphas, list(m.skipped)
        self.n_tokens_ = m.n_tokens
        self.measured_with_ = dict(m.params)
        return self

    def table(self, direction: str = "vector", key: str = "features_changed") -> np.ndarray:
        """(layers, alphas) matrix of ``key`` for the vector or the random direction."""
        M = np.zeros((len(self.hooks_), len(self.alphas_)))
        for r in self.rows_:
            if r["direction"] == direction:
                M[self.hooks_.index(r["hook"]), self.alphas_.index(r["alpha"])] = r[key]
        return M

    def result(self) -> AnalysisResult:
        self.check_fitted("rows_")
        per_layer = {}
        for h in self.hooks_:
            mine = [r for r in self.rows_ if r["hook"] == h and r["direction"] == "vector"]
            rnd = [r for r in self.rows_ if r["hook"] == h and r["direction"] == "random"]
            per_layer[h] = {"features_changed": [r["features_changed"] for r in mine],
                            "features_changed_random": [r["features_changed"] for r in rnd],
                            "spearman_alpha_changed": _spearman(self.alphas_, [r["total_abs_change"] for r in mine]),
                            "code_scale": self.scale_[h]}
        return AnalysisResult(
            analyzer="steering_propagation", params={**self.measured_with_, **self.get_params()},
            provenance={"hook": self.hook_, "sae_hooks": self.hooks_, "skipped_earlier_hooks": self.skipped_,
                        "n_tokens": self.n_tokens_, "null_alpha": self.null_alpha_, "nulls_note": self.nulls_note_},
            metrics={"per_layer": per_layer, "alphas": self.alphas_, "statistics": self.statistics_},
            tables={"grid": self.rows_, "tracked": self.tracked_},
        )
