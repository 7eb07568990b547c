"""What a steering vector does and what it is made of.

- :class:`SteeringSweep`: multiplier x layer grid on held-out prompts. The shift of the target
  log-odds (and of each target set's log-probability), the KL divergence from the unsteered model
  on neutral text (side effects), sample generations; each beside a random direction of the
  same norm at the same multiplier.
- :class:`SteeringDecomposition`: the vector in an SAE's feature space, two ways (Mayne et al.
  2024 show that encoding the vector as if it were an activation misleads): (a) sparse coding of
  the vector over the decoder directions (orthogonal matching pursuit, optionally non-negative),
  (b) the mean difference of SAE codes between steered and unsteered activations on real
  prompts. Each reports the fraction of the vector it explains (beside the same for a random
  direction) and whether its reconstruction still steers (its log-odds shift over the vector's).
- :class:`SteeringPropagation`: steer at layer k, encode the activations at each later layer that
  has an SAE, and count per layer and multiplier the features that change beyond a threshold
  (off-target spread), with the most changed features; a random direction gives the null count.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError, NotFittedError
from ..types import AnalysisResult

__all__ = ["SteeringSweep", "SteeringDecomposition", "SteeringPropagation", "omp", "DEFAULT_ALPHAS"]

DEFAULT_ALPHAS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)


def _check_alphas(alphas: Sequence[float]) -> list[float]:
    out = [float(a) for a in alphas]
    if not out or not all(np.isfinite(out)):
        raise ConfigError(f"multipliers must be finite numbers, got {list(alphas)!r}; for example --alphas -4 -2 0 2 4")
    return sorted(set(out))


def _layer(hook: str) -> int:
    from ..activations import _layer_of

    return _layer_of(hook)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------------------
# Sweep


class SteeringSweep:
    """Dose-response of steering vectors over multipliers and layers, beside random directions.

    ``fit(model, vectors, items, neutral=None, sample_prompts=())``: ``vectors`` maps hooks to
    :class:`~geomsteer.steering.SteeringVector`; ``items`` are
    :class:`~geomsteer.steering.EvalPrompt`; ``neutral`` a :class:`~geomsteer.steering.NeutralText`.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_ALPHAS, n_random: int = 3, n_samples: int = 2,
                 max_new_tokens: int = 24, seed: int = 0, batch_size: int = 16) -> None:
        self.alphas = alphas
        self.n_random = max(1, int(n_random))
        self.n_samples = n_samples
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size

    def get_params(self) -> dict[str, Any]:
        return {"alphas": list(self.alphas), "n_random": self.n_random, "n_samples": self.n_samples, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "batch_size": self.batch_size}

    def fit(self, model: Any, vectors: Mapping[str, Any], items: Sequence[Any], neutral: Any = None,
            sample_prompts: Sequence[str] = (), progress: Callable[[], None] | None = None) -> "SteeringSweep":
        from ..activations import _bos
        from ..steering import generate, random_direction, steering, target_ids, target_logodds

        alphas = _check_alphas(self.alphas)
        if not vectors:
            raise DataError("no steering vectors to sweep")
        if not items:
            raise DataError("no evaluation prompts: the sweep measures the target log-odds on held-out prompts")
        start = len(_bos(model))
        ids = target_ids(model, items)
        base = target_logodds(model, items, self.batch_size, ids)
        rows, samples, summary = [], [], {}
        prompts = list(sample_prompts)[: self.n_samples]
        if prompts:
            samples.append({"hook": None, "alpha": 0.0, "direction": "unsteered",
                            "texts": generate(model, prompts, self.max_new_tokens, seed=self.seed)})
        for hi, (hook, sv) in enumerate(vectors.items()):
            v = np.asarray(getattr(sv, "vector", sv), dtype=np.float32)
            rnds = [random_direction(v, self.seed + 1000 + 100 * hi + i) for i in range(self.n_random)]
            for a in alphas:
                row: dict[str, Any] = {"hook": hook, "layer": _layer(hook), "alpha": a}
                draws = []
                for i, vec in enumerate([v] + rnds):
                    if a == 0:
                        s, kl = base, 0.0
                    else:
                        with steering(model, vec, a, hook, start=start):
                            s = target_logodds(model, items, self.batch_size, ids)
                            kl = neutral.kl(model) if neutral is not None and i <= 1 else None
                    d = s - base
                    if i == 0:
                        row["logodds_shift"] = float(d[:, 0].mean())
                        row["logodds_shift_sem"] = float(d[:, 0].std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
                        row["logp_positive_shift"] = float(d[:, 1].mean())
                        row["logp_negative_shift"] = float(d[:, 2].mean())
                        row["kl_neutral"] = kl
                        row["prompts_moved_with_sign"] = float(np.mean(np.sign(d[:, 0]) == np.sign(a))) if a else None
                    else:
                        draws.append(d.mean(0))
                        if i == 1:
                            row["random_kl_neutral"] = kl  # one draw: KL is the costly part
                D = np.array(draws)
                row["random_logodds_shift"] = float(D[:, 0].mean())
                row["random_logodds_shift_sd"] = float(D[:, 0].std(ddof=1)) if len(D) > 1 else 0.0
                row["random_abs_logodds_shift"] = float(np.abs(D[:, 0]).mean())
                row["random_logp_positive_shift"] = float(D[:, 1].mean())
                row["random_logp_negative_shift"] = float(D[:, 2].mean())
                rows.append(row)
                if prompts and a != 0 and a in (alphas[0], alphas[-1]):
                    samples.append({"hook": hook, "alpha": a, "direction": "vector",
                                    "texts": generate(model, prompts, self.max_new_tokens, v, a, hook, seed=self.seed)})
                if progress:
                    progress()
            mine = [r for r in rows if r["hook"] == hook]
            shifts = [r["logodds_shift"] for r in mine]
            top = mine[-1]
            summary[hook] = {
                "layer": _layer(hook), "vector_norm": float(np.linalg.norm(v)),
                "spearman_alpha_shift": _spearman(alphas, shifts),
                "monotone": bool(np.all(np.diff(shifts) > 0)),
                "shift_at_max_alpha": top["logodds_shift"], "random_shift_at_max_alpha": top["random_logodds_shift"],
                "random_abs_shift_at_max_alpha": top["random_abs_logodds_shift"],
                "kl_at_max_alpha": top["kl_neutral"], "random_kl_at_max_alpha": top["random_kl_neutral"],
            }
        self.rows_, self.samples_, self.summary_ = rows, samples, summary
        self.baseline_ = {"logodds_mean": float(base[:, 0].mean()), "logp_positive_mean": float(base[:, 1].mean()),
                          "logp_negative_mean": float(base[:, 2].mean()), "n_prompts": len(items),
                          "neutral_positions": getattr(neutral, "n_positions", 0)}
        self.alphas_ = alphas
        return self

    def result(self) -> AnalysisResult:
        if not hasattr(self, "rows_"):
            raise NotFittedError("this SteeringSweep is not fitted yet: call fit(model, vectors, items) first")
        return AnalysisResult(analyzer="steering_sweep", params=self.get_params(), provenance={},
                              metrics={"per_hook": self.summary_, "unsteered": self.baseline_},
                              tables={"grid": self.rows_, "samples": self.samples_})


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

    from ..activations import _bos, _forward_rows
    from ..steering import steering

    tok = model.tokenizer
    head = _bos(model)
    texts = [getattr(t, "prompt", t) for t in items_or_texts]
    out: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    ctx = (steering(model, vector, alpha, steer_hook, start=len(head)) if vector is not None and alpha != 0
           else contextlib.nullcontext())
    with ctx:
        for b in range(0, len(texts), batch_size):
            rows = [head + tok(t, add_special_tokens=False)["input_ids"] for t in texts[b : b + batch_size]]
            acts = _forward_rows(model, rows, hooks)
            for h in hooks:
                a = acts[h].float().cpu().numpy()
                for r, row in enumerate(rows):
                    out[h].append(a[r, len(head) : len(row)])
    return {h: np.concatenate(v) for h, v in out.items()}


class SteeringDecomposition:
    """A steering vector in an SAE's feature space: sparse coding and steered-minus-unsteered codes.

    ``fit(model, vector, sae, items, alpha, unembedding=None, vocab=None)``: ``vector`` a
    :class:`~geomsteer.steering.SteeringVector` at the SAE's hook; ``items`` evaluation prompts
    (the codes are read on their tokens, and the reconstructions' steering effect on their target
    log-odds at multiplier ``alpha``); ``unembedding`` (vocab, d_model, the final norm's scale
    folded in) and ``vocab`` give each top feature's logit lens.
    """

    def __init__(self, k: int = 32, nonneg: bool = False, top: int = 12, n_random: int = 5, seed: int = 0,
                 batch_size: int = 16) -> None:
        self.k = k
        self.n_random = max(1, int(n_random))
        self.nonneg = nonneg
        self.top = top
        self.seed = seed
        self.batch_size = batch_size

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "nonneg": self.nonneg, "top": self.top, "n_random": self.n_random, "seed": self.seed}

    def fit(self, model: Any, vector: Any, sae: Any, items: Sequence[Any], alpha: float,
            unembedding: np.ndarray | None = None, vocab: Sequence[str] | None = None) -> "SteeringDecomposition":
        import torch

        from ..activations import _bos
        from ..saes import encode
        from ..steering import random_direction, steering, target_ids, target_logodds

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
        W_dec = sae.W_dec.detach().float().numpy()
        rnd = random_direction(v, self.seed + 7).astype(np.float64)

        # (a) sparse coding over the decoder directions (the vector is a difference: no decoder bias)
        sc = omp(W_dec, v, self.k, self.nonneg)
        sc_rnd = omp(W_dec, rnd, self.k, self.nonneg)

        # (b) steered minus unsteered codes on the prompts' tokens
        X0 = _prompt_activations(model, items, [hook], None, 0.0, None, self.batch_size)[hook]
        C0 = encode(sae, X0)
        C1 = encode(sae, X0 + alpha * v.astype(np.float32))
        Cr = encode(sae, X0 + alpha * rnd.astype(np.float32))
        delta = (C1 - C0).astype(np.float64).mean(0)
        delta_r = (Cr - C0).astype(np.float64).mean(0)
        recon_codes = delta @ W_dec / alpha
        recon_codes_r = delta_r @ W_dec / alpha
        with torch.no_grad():  # for contrast only: the vector read as if it were an activation
            enc_v = sae.encode(torch.as_tensor(v[None].astype(np.float32))).numpy()[0].astype(np.float64)
        recon_enc = enc_v @ W_dec

        # (c) do the reconstructions still steer?
        start = len(_bos(model))
        ids = target_ids(model, items)
        base = target_logodds(model, items, self.batch_size, ids)[:, 0]

        def shift(vec: np.ndarray) -> float:
            with steering(model, vec.astype(np.float32), alpha, hook, start=start):
                return float((target_logodds(model, items, self.batch_size, ids)[:, 0] - base).mean())

        full = shift(v)
        randoms = [shift(rnd)] + [shift(random_direction(v, self.seed + 8 + i).astype(np.float64))
                                  for i in range(self.n_random - 1)]
        effects = {"vector": full, "sparse_coding": shift(sc["reconstruction"]), "code_difference": shift(recon_codes),
                   "random": float(np.mean(randoms))}
        self.effects_ = {k: {"logodds_shift": e, "fraction_of_vector": e / full if full else float("nan")}
                         for k, e in effects.items()}
        self.effects_["random"].update({"n": len(randoms), "sd": float(np.std(randoms, ddof=1)) if len(randoms) > 1
                                        else 0.0, "mean_abs": float(np.mean(np.abs(randoms)))})
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
        if not hasattr(self, "features_"):
            raise NotFittedError("this SteeringDecomposition is not fitted yet: call fit(model, vector, sae, items, alpha)")
        return AnalysisResult(
            analyzer="steering_decomposition", params=self.get_params(),
            provenance={"hook": self.hook_, "alpha": self.alpha_, "vector_norm": self.norm_},
            metrics={"explained_fraction": self.explained_, "steering_effect": self.effects_,
                     "codes": self.code_stats_},
            tables={"features": self.features_, "explained_curve": self.curve_, "sparse_coding": self.sparse_coding_,
                    "vector_logit_lens": self.vector_lens_},
        )


# --------------------------------------------------------------------------------------------
# Propagation through later layers


class SteeringPropagation:
    """Which SAE features change at each later layer when the vector is added at layer k.

    ``fit(model, vector, saes, texts)``: ``saes`` maps hooks to SAEs (those before the vector's
    layer are skipped: steering cannot reach them); ``texts`` are prompts (strings or
    :class:`~geomsteer.steering.EvalPrompt`) whose tokens after the start token are encoded. A
    feature changes when its mean absolute code change exceeds ``threshold`` times the mean
    non-zero unsteered code at that layer. Each multiplier also runs a random direction of the
    vector's norm: its count is the null for off-target spread.
    """

    def __init__(self, alphas: Sequence[float] = (1.0, 2.0, 4.0), threshold: float = 0.1, top: int = 8,
                 seed: int = 0, batch_size: int = 16) -> None:
        self.alphas = alphas
        self.threshold = threshold
        self.top = top
        self.seed = seed
        self.batch_size = batch_size

    def get_params(self) -> dict[str, Any]:
        return {"alphas": list(self.alphas), "threshold": self.threshold, "top": self.top, "seed": self.seed}

    def fit(self, model: Any, vector: Any, saes: Mapping[str, Any], texts: Sequence[Any],
            progress: Callable[[], None] | None = None) -> "SteeringPropagation":
        from ..saes import encode
        from ..steering import random_direction

        alphas = [a for a in _check_alphas(self.alphas) if a != 0]
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
        rnd = random_direction(v, self.seed + 11)
        X0 = _prompt_activations(model, texts, later, None, 0.0, None, self.batch_size)
        C0 = {h: encode(saes[h], X0[h]) for h in later}
        scale = {h: float(C0[h][C0[h] > 0].mean()) if (C0[h] > 0).any() else 1.0 for h in later}
        rows = []
        means: dict[tuple[str, float], np.ndarray] = {}
        for a in alphas:
            for name, vec in (("vector", v), ("random", rnd)):
                X1 = _prompt_activations(model, texts, later, vec, a, hook, self.batch_size)
                for h in later:
                    d = encode(saes[h], X1[h]).astype(np.float64) - C0[h]
                    mean_abs = np.abs(d).mean(0)
                    changed = mean_abs > self.threshold * scale[h]
                    moved = np.linalg.norm(X1[h] - X0[h], axis=1) / np.maximum(np.linalg.norm(X0[h], axis=1), 1e-12)
                    row = {"hook": h, "layer": _layer(h), "alpha": a, "direction": name,
                           "features_changed": int(changed.sum()), "total_abs_change": float(mean_abs.sum()),
                           "relative_residual_change": float(moved.mean())}
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
        if not hasattr(self, "rows_"):
            raise NotFittedError("this SteeringPropagation is not fitted yet: call fit(model, vector, saes, texts)")
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
                        "n_tokens": self.n_tokens_},
            metrics={"per_layer": per_layer, "alphas": self.alphas_},
            tables={"grid": self.rows_, "tracked": self.tracked_},
        )
