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

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..types import AnalysisResult
from ..steering.experiments import DEFAULT_ALPHAS, check_alphas, null_vectors
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
        n_random = m.n_random
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


def omp(D: np.ndarray, v: np.ndarray, k: int, nonneg: bool = False) -> dict[str, Any]:
    """Orthogonal matching pursuit of ``v`` over the rows of ``D`` (atoms), up to ``k`` atoms.

    Atoms are scaled to unit norm for the greedy choice (the atom most correlated with the
    residual; with ``nonneg`` the most positively correlated, and coefficients constrained to be
    non-negative by NNLS). After each choice the coefficients of all chosen atoms are refitted by
    least squares. Returns the chosen atom indices in order, their coefficients on the unit atoms,
    and the explained fraction ``1 - |residual|^2 / |v|^2`` after each step.
    """
    from scipy.optimize import nnls

    D = np.asarray(D, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    norms = np.linalg.norm(D, axis=1)
    if D.ndim != 2 or D.shape[1] != v.shape[0]:
        raise DataError(f"atoms of shape {D.shape} do not fit a vector of size {v.shape[0]}")
    U = D / np.where(norms > 0, norms, 1.0)[:, None]
    vv = float(v @ v)
    if vv == 0:
        raise DataError("cannot decompose a zero vector")
    chosen: list[int] = []
    coef = np.zeros(0)
    explained: list[float] = []
    r = v.copy()
    for _ in range(min(k, D.shape[0])):
        c = U @ r
        c[chosen] = 0.0
        c[norms == 0] = 0.0
        j = int(np.argmax(c)) if nonneg else int(np.argmax(np.abs(c)))
        if (c[j] <= 1e-12) if nonneg else (abs(c[j]) <= 1e-12):
            break
        chosen.append(j)
        A = U[chosen].T
        coef = nnls(A, v)[0] if nonneg else np.linalg.lstsq(A, v, rcond=None)[0]
        r = v - A @ coef
        explained.append(1.0 - float(r @ r) / vv)
    return {"atoms": chosen, "coefficients": coef, "explained": explained,
            "reconstruction": (U[chosen].T @ coef) if chosen else np.zeros_like(v)}


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


def _prompt_activations(model: Any, items_or_texts: Sequence[Any], hooks: Sequence[str], vector: np.ndarray | None,
                        alpha: float, steer_hook: str | None, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Activations at ``hooks`` on every real token after the start token, optionally steered."""
    import contextlib

    from ..activations import bos_ids, forward_rows
    from ..steering import steering

    tok = model.tokenizer
    head = bos_ids(model)
    texts = [getattr(t, "prompt", t) for t in items_or_texts]
    out: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    ctx = (steering(model, vector, alpha, steer_hook, start=len(head)) if vector is not None and alpha != 0
           else contextlib.nullcontext())
    with ctx:
        for b in range(0, len(texts), batch_size):
            rows = [head + tok(t, add_special_tokens=False)["input_ids"] for t in texts[b : b + batch_size]]
            acts = forward_rows(model, rows, hooks)
            for h in hooks:
                a = acts[h].float().cpu().numpy()
                for r, row in enumerate(rows):
                    out[h].append(a[r, len(head) : len(row)])
    return {h: np.concatenate(v) for h, v in out.items()}


class SteeringDecomposition(Analyzer):
    """A steering vector in an SAE's feature space: sparse coding and steered-minus-unsteered codes.

    ``fit(model, vector, sae, items, alpha, unembedding=None, vocab=None)``: ``vector`` a
    :class:`~geomsteer.steering.SteeringVector` at the SAE's hook; ``items`` evaluation prompts
    (split in two at random: the code difference is read on one half's tokens, and every steering
    effect is scored on the other half's target log-odds at multiplier ``alpha``); ``unembedding`` (vocab, d_model, the final norm's scale
    folded in) and ``vocab`` give each top feature's logit lens.
    """

    _fit_call = "fit(model, vector, sae, items, alpha)"
    _fitted = "features_"

    def __init__(self, k: int = 32, nonneg: bool = False, top: int = 12, n_null: int = 20, seed: int = 0,
                 batch_size: int = 16) -> None:
        self.k = k
        self.n_null = int(n_null)
        self.nonneg = nonneg
        self.top = top
        self.seed = seed
        self.batch_size = batch_size

    def fit(self, model: Any, vector: Any, sae: Any, items: Sequence[Any], alpha: float,
            unembedding: np.ndarray | None = None, vocab: Sequence[str] | None = None) -> "SteeringDecomposition":
        import torch

        from ..saes import encode
        from ..stats import null_summary, statistic
        from ..steering import SteeredTargets

        if self.k < 1:
            raise ConfigError(f"k must be a positive number of atoms, got {self.k}")
        if not np.isfinite(alpha) or alpha == 0:
            raise ConfigError(f"the multiplier must be a finite non-zero number, got {alpha!r}")
        v = np.asarray(getattr(vector, "vector", vector), dtype=np.float64)
        hook = getattr(vector, "hook", None)
        if sae.cfg.d_in != v.shape[0]:
            raise DataError(f"the SAE reads vectors of size {sae.cfg.d_in}, the steering vector has size {v.shape[0]}; "
                            "use an SAE trained on this model")
        sae_hook = (getattr(sae.cfg, "metadata", None) and sae.cfg.metadata.get("hook_name")) or None
        if hook and sae_hook and sae_hook != hook:
            raise DataError(f"the steering vector is at {hook} but the SAE was trained at {sae_hook}; decompose with "
                            "an SAE trained at the vector's hook")
        hook = hook or sae_hook
        if self.n_null < 2:
            raise ConfigError(f"n_null must be at least 2 draws per null, got {self.n_null}; 20 is the default")
        if len(items) < 2:
            raise DataError(f"the decomposition needs at least 2 evaluation prompts (half fit the code difference, the "
                            f"other half score the reconstructions), got {len(items)}")
        W_dec = sae.W_dec.detach().float().numpy()
        order = np.random.default_rng([self.seed, 0xDEC]).permutation(len(items))
        fit_items = [items[i] for i in sorted(order[: len(items) // 2])]
        score_items = [items[i] for i in sorted(order[len(items) // 2 :])]

        # (b) steered minus unsteered codes on the fitting prompts' tokens
        X0 = _prompt_activations(model, fit_items, [hook], None, 0.0, None, self.batch_size)[hook]
        C0 = encode(sae, X0)
        nulls = null_vectors(vector, v.astype(np.float32), X0, self.n_null, self.n_null, self.seed + 7)
        null_vecs = {k: nulls[k].astype(np.float64) for k in ("shuffled_labels", "covariance_directions")
                     if nulls[k] is not None}
        rnd = null_vecs["covariance_directions"][0]

        def code_difference(vec: np.ndarray) -> np.ndarray:
            return (encode(sae, X0 + alpha * vec.astype(np.float32)) - C0).astype(np.float64).mean(0)

        # (a) sparse coding over the decoder directions (the vector is a difference: no decoder bias)
        sc = omp(W_dec, v, self.k, self.nonneg)
        sc_rnd = omp(W_dec, rnd, self.k, self.nonneg)
        delta = code_difference(v)
        delta_r = code_difference(rnd)
        recon_codes = delta @ W_dec / alpha
        recon_codes_r = delta_r @ W_dec / alpha
        with torch.no_grad():  # for contrast only: the vector read as if it were an activation
            enc_v = sae.encode(torch.as_tensor(v[None].astype(np.float32))).numpy()[0].astype(np.float64)
        recon_enc = enc_v @ W_dec
        null_explained: dict[str, dict[str, list[float]]] = {"sparse_coding": {}, "code_difference": {}}
        for name, V in null_vecs.items():
            null_explained["sparse_coding"][name] = [(omp(W_dec, u, self.k, self.nonneg)["explained"] or [0.0])[-1]
                                                     for u in V]
            null_explained["code_difference"][name] = [_explained(u, code_difference(u) @ W_dec / alpha) for u in V]

        # (c) do the reconstructions still steer? Scored on the prompts the code difference was not fitted on
        ev = SteeredTargets(model, score_items, hook, self.batch_size)
        base = ev(v, 0.0)[0][:, 0]
        shifts = ev(np.stack([v, sc["reconstruction"], recon_codes]), alpha)[:, :, 0] - base[None]
        null_shifts = {name: (ev(V, alpha)[:, :, 0] - base[None]).mean(1) for name, V in null_vecs.items()}
        full = float(shifts[0].mean())
        effects = {"vector": full, "sparse_coding": float(shifts[1].mean()), "code_difference": float(shifts[2].mean()),
                   "random": float(null_shifts["covariance_directions"].mean())}
        self.effects_ = {k: {"logodds_shift": e, "fraction_of_vector": e / full if full else float("nan")}
                         for k, e in effects.items()}
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
                obs, 1, nulls={k: {**null_summary(obs, d), "percentile": float(100 * np.mean(np.asarray(d) < obs))}
                               for k, d in null_explained[name].items()},
                ci95=None, ci95_reason="one vector: no units to resample", alternative="greater",
                what=f"fraction of |v|^2 the {name.replace('_', ' ')} reconstruction explains")
        self.split_ = {"fit_prompts": len(fit_items), "score_prompts": len(score_items)}
        self.nulls_note_ = nulls["note"]
        self.explained_ = {
            "sparse_coding": sc["explained"][-1] if sc["explained"] else 0.0,
            "sparse_coding_random_direction": sc_rnd["explained"][-1] if sc_rnd["explained"] else 0.0,
            "code_difference": _explained(v, recon_codes),
            "code_difference_random_direction": _explained(rnd, recon_codes_r),
            # the best any rescaling of it does: cos^2 between v and the decoded encoder output
            "encoder_output_not_a_decomposition": float((recon_enc @ v) ** 2 / max((recon_enc @ recon_enc) * (v @ v), 1e-300)),
        }
        self.curve_ = {"vector": sc["explained"], "random": sc_rnd["explained"]}
        thr = 0.01 * float(C0[C0 > 0].mean()) if (C0 > 0).any() else 0.0
        self.code_stats_ = {"n_tokens": int(len(X0)), "features_changed": int((np.abs(delta) > thr).sum()),
                            "features_changed_random": int((np.abs(delta_r) > thr).sum()), "threshold": thr}
        scale = np.linalg.norm(W_dec, axis=1)
        feats: dict[int, dict[str, Any]] = {}
        for rank, (j, c) in enumerate(zip(sc["atoms"], sc["coefficients"])):
            feats.setdefault(int(j), {})["sparse_coding"] = {"rank": rank, "coefficient": float(c),
                                                              "code_units": float(c / scale[j]) if scale[j] else 0.0}
        for rank, j in enumerate(np.argsort(-np.abs(delta))[: self.top]):
            feats.setdefault(int(j), {})["code_difference"] = {"rank": rank, "mean_change": float(delta[j]),
                                                                "mean_unsteered": float(C0[:, j].mean())}
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
        self.hook_, self.alpha_, self.norm_ = hook, float(alpha), float(np.linalg.norm(v))
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted("features_")
        return AnalysisResult(
            analyzer="steering_decomposition", params=self.get_params(),
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

    ``fit(model, vector, saes, texts)``: ``saes`` maps hooks to SAEs (those before the vector's
    layer are skipped: steering cannot reach them); ``texts`` are prompts (strings or
    :class:`~geomsteer.steering.EvalPrompt`) whose tokens after the start token are encoded. A
    feature changes when its mean absolute code change exceeds ``threshold`` times the mean
    non-zero unsteered code at that layer. Each multiplier also runs one random direction drawn
    from the activation covariance at the vector's hook, with the vector's norm. At the
    multiplier of largest magnitude, the counts are tested against ``n_null`` shuffled-label
    vectors and ``n_null`` covariance directions (two-sided: a vector may spread more or less
    than its nulls).
    """

    _fit_call = "fit(model, vector, saes, texts)"
    _fitted = "rows_"

    def __init__(self, alphas: Sequence[float] = (1.0, 2.0, 4.0), threshold: float = 0.1, top: int = 8,
                 seed: int = 0, batch_size: int = 16, n_null: int = 20) -> None:
        self.alphas = alphas
        self.n_null = int(n_null)
        self.threshold = threshold
        self.top = top
        self.seed = seed
        self.batch_size = batch_size

    def fit(self, model: Any, vector: Any, saes: Mapping[str, Any], texts: Sequence[Any],
            progress: Callable[[], None] | None = None) -> "SteeringPropagation":
        from ..saes import encode

        alphas = [a for a in check_alphas(self.alphas) if a != 0]
        if not alphas:
            raise ConfigError("give at least one non-zero multiplier")
        if not (self.threshold > 0):
            raise ConfigError(f"the threshold must be positive, got {self.threshold!r}")
        v = np.asarray(getattr(vector, "vector", vector), dtype=np.float32)
        hook = getattr(vector, "hook", None)
        if hook is None:
            raise ConfigError("the vector carries no hook: pass a SteeringVector")
        k = _layer(hook)
        later = sorted((h for h in saes if _layer(h) >= k), key=_layer)
        self.skipped_ = sorted((h for h in saes if _layer(h) < k), key=_layer)
        if not later:
            raise ConfigError(f"no SAE at or after the steering layer ({hook}); give SAEs at later layers")
        for h in later:
            if saes[h].cfg.d_in != v.shape[0]:
                raise DataError(f"the SAE for {h} reads vectors of size {saes[h].cfg.d_in}, the vector has size "
                                f"{v.shape[0]}; use SAEs trained on this model")
        if self.n_null and self.n_null < 2:
            raise ConfigError(f"n_null must be 0 (no nulls) or at least 2 draws per null, got {self.n_null}; 20 is the default")
        hooks_read = later if hook in later else [hook, *later]
        X0 = _prompt_activations(model, texts, hooks_read, None, 0.0, None, self.batch_size)
        nulls = null_vectors(vector, v, X0[hook], max(1, self.n_null), self.n_null, self.seed + 11)
        rnd = nulls["covariance_directions"][0]
        C0 = {h: encode(saes[h], X0[h]) for h in later}
        scale = {h: float(C0[h][C0[h] > 0].mean()) if (C0[h] > 0).any() else 1.0 for h in later}

        def measure(vec: np.ndarray, a: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
            X1 = _prompt_activations(model, texts, later, vec, a, hook, self.batch_size)
            out, diffs = {}, {}
            for h in later:
                d = encode(saes[h], X1[h]).astype(np.float64) - C0[h]
                mean_abs = np.abs(d).mean(0)
                moved = np.linalg.norm(X1[h] - X0[h], axis=1) / np.maximum(np.linalg.norm(X0[h], axis=1), 1e-12)
                out[h] = {"features_changed": int((mean_abs > self.threshold * scale[h]).sum()),
                          "total_abs_change": float(mean_abs.sum()), "relative_residual_change": float(moved.mean())}
                diffs[h] = d
            return out, diffs

        rows = []
        means: dict[tuple[str, float], np.ndarray] = {}
        for a in alphas:
            for name, vec in (("vector", v), ("random", rnd)):
                measured, diffs = measure(vec, a)
                for h in later:
                    d = diffs[h]
                    mean_abs = np.abs(d).mean(0)
                    row = {"hook": h, "layer": _layer(h), "alpha": a, "direction": name, **measured[h]}
                    if name == "vector":
                        mean = d.mean(0)
                        means[(h, a)] = mean
                        order = np.argsort(-mean_abs)[: self.top]
                        row["top_features"] = [{"feature": int(j), "mean_change": float(mean[j]),
                                                "mean_abs_change": float(mean_abs[j]),
                                                "mean_unsteered": float(C0[h][:, j].mean())} for j in order]
                    rows.append(row)
                if progress:
                    progress()
        # the vector's spread against null vectors at the multiplier of largest magnitude
        self.null_alpha_ = max(alphas, key=abs)
        self.statistics_: dict[str, Any] = {}
        if self.n_null:
            from ..stats import null_summary, statistic

            obs = {r["hook"]: r for r in rows if r["direction"] == "vector" and r["alpha"] == self.null_alpha_}
            draws: dict[str, dict[str, dict[str, list[float]]]] = {h: {"features_changed": {}, "total_abs_change": {}}
                                                                    for h in later}
            for name in ("shuffled_labels", "covariance_directions"):
                if nulls[name] is None:
                    continue
                for vec in nulls[name]:
                    measured, _ = measure(vec, self.null_alpha_)
                    for h in later:
                        for key in ("features_changed", "total_abs_change"):
                            draws[h][key].setdefault(name, []).append(measured[h][key])
                    if progress:
                        progress()
            for h in later:
                for key in ("features_changed", "total_abs_change"):
                    o = float(obs[h][key])
                    self.statistics_[f"{key}:{h}"] = statistic(
                        o, len(X0[hook]),
                        nulls={k: {**null_summary(o, d, "two-sided"), "percentile": float(100 * np.mean(np.asarray(d) < o))}
                               for k, d in draws[h][key].items()},
                        ci95=None, ci95_reason="one steered run: tokens are not independent units",
                        alternative="two-sided", hook=h, alpha=self.null_alpha_,
                        what=("SAE features whose mean |code change| exceeds the threshold" if key == "features_changed"
                              else "sum over features of the mean |code change|"))
        self.nulls_note_ = nulls["note"]
        self.rows_ = rows
        # each layer's most changed features at the largest multiplier, followed across all multipliers
        self.tracked_ = {}
        for h in later:
            top_rows = next(r for r in rows if r["hook"] == h and r["direction"] == "vector" and r["alpha"] == alphas[-1])
            feats = [t["feature"] for t in top_rows["top_features"]]
            self.tracked_[h] = {"features": feats,
                                "mean_change": [[float(means[(h, a)][f]) for a in alphas] for f in feats]}
        self.scale_ = scale
        self.hook_, self.hooks_, self.alphas_ = hook, later, alphas
        self.n_tokens_ = int(len(next(iter(X0.values()))))
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
            analyzer="steering_propagation", params=self.get_params(),
            provenance={"hook": self.hook_, "sae_hooks": self.hooks_, "skipped_earlier_hooks": self.skipped_,
                        "n_tokens": self.n_tokens_, "null_alpha": self.null_alpha_, "nulls_note": self.nulls_note_},
            metrics={"per_layer": per_layer, "alphas": self.alphas_, "statistics": self.statistics_},
            tables={"grid": self.rows_, "tracked": self.tracked_},
        )
