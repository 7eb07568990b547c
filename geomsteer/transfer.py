"""Maps between two models' residual streams, fitted on word-aligned activations (issue 18, part 2).

A steering vector of model A lives in A's residual basis. To try it on model B it has to be carried
into B's basis; :func:`fit_linear_map` fits that map on the same words read by both models
(:func:`geomsteer.activations.unit_activations` aligns words across tokenizers), centred on each
side:

- ``"procrustes"``: the scaled semi-orthogonal map W = s U V^T from the SVD of A_c^T B_c
  (orthogonal Procrustes, Schönemann 1966; for unequal widths W keeps the min(d_a, d_b) shared
  directions), with s the least-squares scale trace(S) / ||A_c||_F^2. It preserves angles, so a
  direction keeps its relation to every other direction of A.
- ``"ridge"``: W = (A_c^T A_c + lam I)^-1 A_c^T B_c, the ridge regression of B on A, with lam chosen
  among a grid by held-out error.

A map is only worth using if it predicts held-out words better than a map fitted on shuffled
word pairs: :meth:`LinearMap.heldout_r2` and :func:`shuffled_maps` give that comparison.
Vectors (differences of activations) are mapped without the means: ``map.vector(v) = v @ W``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, DataError

__all__ = ["LinearMap", "fit_linear_map", "shuffled_maps", "measure_transfer", "TransferMeasurements", "METHODS",
           "feature_route", "WordEffects", "effect_similarity", "shuffled_word_similarity", "downstream_similarity",
           "run"]

METHODS = ("procrustes", "ridge")
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # fractions of the mean eigenvalue of A_c^T A_c / n


@dataclass
class LinearMap:
    """``B ≈ (A - mean_a) @ W + mean_b``: a map from model A's residuals to model B's."""

    W: np.ndarray  # (d_a, d_b)
    mean_a: np.ndarray
    mean_b: np.ndarray
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def vector(self, v: np.ndarray) -> np.ndarray:
        """A direction (a steering vector, a decoder row) of A carried into B's basis."""
        v = np.asarray(v, dtype=np.float64)
        if v.shape[-1] != self.W.shape[0]:
            raise DataError(f"the map reads vectors of size {self.W.shape[0]} (model A's d_model), got {v.shape[-1]}")
        return v @ self.W

    def predict(self, A: np.ndarray) -> np.ndarray:
        return (np.asarray(A, dtype=np.float64) - self.mean_a) @ self.W + self.mean_b

    def heldout_r2(self, A: np.ndarray, B: np.ndarray) -> float:
        """Fraction of B's variance (about B's mean on these rows) that the map predicts."""
        B = np.asarray(B, dtype=np.float64)
        resid = B - self.predict(A)
        total = B - B.mean(0)
        return float(1.0 - np.sum(resid * resid) / np.sum(total * total))


def _check(A: Any, B: Any) -> tuple[np.ndarray, np.ndarray]:
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or len(A) != len(B):
        raise DataError(f"expected activations of shapes (n, d_a) and (n, d_b) on the same n words, got {A.shape} "
                        f"and {B.shape}; align the words of both models first (geomsteer.activations.unit_activations)")
    if len(A) < 8:
        raise DataError(f"a map needs at least 8 aligned words, got {len(A)}")
    if not (np.isfinite(A).all() and np.isfinite(B).all()):
        raise DataError("the activations hold NaN or infinite values; drop those words from both sides first")
    return A, B


def fit_linear_map(A: Any, B: Any, method: str = "procrustes", *, heldout: float = 0.2, seed: int = 0) -> LinearMap:
    """Fit a map from A's activations to B's on the same words (rows). ``heldout`` of the words
    (seeded) are kept out of the fit to choose ridge's penalty and to report the held-out R^2; the
    returned map is then refitted on every word."""
    if method not in METHODS:
        raise ConfigError(f"unknown map {method!r}: expected one of {', '.join(METHODS)}")
    if not 0 < heldout < 1:
        raise ConfigError(f"heldout must be a fraction between 0 and 1, got {heldout!r}")
    A, B = _check(A, B)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(A))
    n_test = max(2, int(round(heldout * len(A))))
    test, train = order[:n_test], order[n_test:]
    lam = None
    if method == "ridge":
        scores = _ridge_scores(A[train], B[train], A[test], B[test])
        lam = max(scores, key=scores.get)
        r2 = scores[lam]
    else:
        r2 = _fit(A[train], B[train], method, lam).heldout_r2(A[test], B[test])
    m = _fit(A, B, method, lam)
    m.info.update({"n_words": len(A), "heldout_words": int(n_test), "heldout_r2": r2, "seed": seed})
    if lam is not None:
        m.info["ridge_fraction"] = lam
    return m


def _fit(A: np.ndarray, B: np.ndarray, method: str, lam: float | None) -> LinearMap:
    ma, mb = A.mean(0), B.mean(0)
    Ac, Bc = A - ma, B - mb
    if method == "procrustes":
        U, S, Vt = np.linalg.svd(Ac.T @ Bc, full_matrices=False)
        scale = float(S.sum() / np.sum(Ac * Ac))
        return LinearMap(scale * (U @ Vt), ma, mb, method, {"scale": scale})
    G = Ac.T @ Ac
    penalty = float(lam) * np.trace(G) / G.shape[0]
    W = np.linalg.solve(G + penalty * np.eye(G.shape[0]), Ac.T @ Bc)
    return LinearMap(W, ma, mb, method, {"penalty": penalty})


def _ridge_scores(A: np.ndarray, B: np.ndarray, At: np.ndarray, Bt: np.ndarray) -> dict[float, float]:
    """Held-out R^2 of the ridge map at every penalty of the grid, from one eigendecomposition of A_c^T A_c:
    W(lam) = V diag(1 / (e + lam)) V^T A_c^T B_c, the same maps :func:`_fit` solves for one at a time."""
    ma, mb = A.mean(0), B.mean(0)
    Ac = A - ma
    G = Ac.T @ Ac
    e, V = np.linalg.eigh(G)
    Z = V.T @ (Ac.T @ (B - mb))
    P = (At - ma) @ V
    R = Bt - mb
    total = float(np.sum((Bt - Bt.mean(0)) ** 2))
    out = {}
    for c in RIDGE_GRID:
        pen = float(c) * np.trace(G) / G.shape[0]
        resid = R - P @ (Z / (e + pen)[:, None])
        out[c] = float(1.0 - np.sum(resid * resid) / total)
    return out


def shuffled_maps(A: Any, B: Any, method: str = "procrustes", n: int = 20, seed: int = 0) -> list[LinearMap]:
    """Maps fitted with B's words shuffled against A's (``n`` seeded draws): the null for a map,
    which keeps both sides' geometry and loses only which word is which."""
    A, B = _check(A, B)
    rng = np.random.default_rng(seed)
    return [fit_linear_map(A, B[rng.permutation(len(B))], method, seed=seed + 1 + i) for i in range(n)]


@dataclass
class TransferMeasurements:
    """Target log-odds shifts in model B under B's own vector, the transferred vectors and nulls."""

    alpha: float
    norm: float  # every vector is steered at this norm (B's own vector's), so effects compare
    shifts: dict[str, np.ndarray]  # name -> per-prompt shift of the target log-odds (steered - unsteered)
    null_shifts: dict[str, np.ndarray]  # null name -> mean shift per draw
    mapped_norms: dict[str, float]  # each transferred vector's norm before rescaling
    kl: dict[str, float] = field(default_factory=dict)  # name -> neutral-text KL, when texts were given
    null_kl: dict[str, np.ndarray] = field(default_factory=dict)  # null name -> KL of (up to n_kl of) its vectors

    def statistics(self) -> dict[str, Any]:
        """Per transferred vector: its mean shift as a fraction of B's own vector's, in the shared
        statistic shape, against random directions and vectors carried by shuffled maps (both
        expressed as the same fraction)."""
        from .stats import null_summary, statistic

        own = self.shifts["own"]
        base = float(own.mean())
        if base == 0:
            raise DataError("B's own vector does not move the target log-odds at this multiplier (mean shift 0), so "
                            "no fraction of it can be taken; steer with a larger alpha")
        out = {}
        for name, s in self.shifts.items():
            if name == "own":
                continue
            frac = float(s.mean()) / base
            nulls = {k: null_summary(frac, v / base, "greater") for k, v in self.null_shifts.items()
                     if k.startswith(name + ":") or k == "random"}
            ci = _ratio_ci(s, own)
            out[name] = statistic(frac, len(s), nulls={k.split(":")[-1]: v for k, v in nulls.items()}, ci95=ci,
                                  alternative="greater", unit="fraction of B's own vector's log-odds shift",
                                  mean_shift=float(s.mean()), own_mean_shift=base,
                                  mapped_norm=self.mapped_norms.get(name))
        return out


def measure_transfer(model_b: Any, own: np.ndarray, transferred: dict[str, np.ndarray],
                     null_vectors: dict[str, list[np.ndarray]], items: Any, hook: str, alpha: float,
                     n_random: int = 20, seed: int = 0, neutral: Any = None, n_kl: int = 5) -> TransferMeasurements:
    """Steer model B at ``hook`` with its own vector, each transferred vector and each null vector
    (``null_vectors["<name>:shuffled_map"]``: a transferred vector's shuffled-map draws), every one
    rescaled to the norm of B's own vector, plus ``n_random`` random directions; measure the shift of
    the target log-odds on ``items`` (evaluation prompts) against the unsteered model, and the
    neutral-text KL (a :class:`~geomsteer.steering.evaluate.NeutralText`) when given, also of the first
    ``n_kl`` random directions and of each null's first ``n_kl`` vectors."""
    from .steering.evaluate import SteeredTargets

    own = np.asarray(own, dtype=np.float64)
    norm = float(np.linalg.norm(own))
    if norm == 0:
        raise DataError("B's own steering vector is zero: expected the vector computed on model B (gs.steer.compute) "
                        "at the same hook")
    d = len(own)

    def at_norm(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (d,):
            raise DataError(f"a transferred vector must have B's d_model ({d}), got shape {v.shape}; carry A's vector "
                            "into B with a map fitted from A to B (fit_linear_map(A_acts, B_acts).vector(v))")
        n = np.linalg.norm(v)
        return v * (norm / n) if n > 0 else v

    rng = np.random.default_rng(seed)
    randoms = [at_norm(rng.normal(size=d)) for _ in range(n_random)]
    named = {"own": own, **{k: at_norm(v) for k, v in transferred.items()}}
    st = SteeredTargets(model_b, items, hook)
    base = st(np.zeros((1, d)), 0.0)[0, :, 0]
    V = np.stack(list(named.values()))
    got = st(V, alpha)[:, :, 0] - base
    shifts = dict(zip(named, got))
    null_shifts = {"random": (st(np.stack(randoms), alpha)[:, :, 0] - base).mean(1)}
    for k, vs in null_vectors.items():
        null_shifts[k] = (st(np.stack([at_norm(v) for v in vs]), alpha)[:, :, 0] - base).mean(1)
    kl, null_kl = {}, {}
    if neutral is not None:  # the side effect, of the vectors and of (up to n_kl of) each null's
        kl = dict(zip(named, neutral.kl_steered(model_b, V.astype(np.float32), alpha, hook)))
        null_kl["random"] = np.asarray(neutral.kl_steered(model_b, np.stack(randoms[:n_kl]).astype(np.float32),
                                                          alpha, hook))
        for k_, vs in null_vectors.items():
            null_kl[k_] = np.asarray(neutral.kl_steered(
                model_b, np.stack([at_norm(v) for v in vs[:n_kl]]).astype(np.float32), alpha, hook))
    return TransferMeasurements(float(alpha), norm, shifts, null_shifts,
                                {k: float(np.linalg.norm(v)) for k, v in transferred.items()}, kl, null_kl)


def _ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap interval of mean(num) / mean(den) over prompts resampled in pairs."""
    n = len(num)
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    d = den[idx].mean(1)
    r = np.where(d != 0, num[idx].mean(1) / np.where(d != 0, d, 1), np.nan)
    r = r[np.isfinite(r)]
    return [float(np.percentile(r, 2.5)), float(np.percentile(r, 97.5))] if len(r) > 1 else None


# --------------------------------------------------------------------------------------------
# The feature route: decompose in A's SAE, recompose with B's matched decoder rows


def feature_route(v: Any, decoder_a: Any, decoder_b: Any, match_a: Any, match_b: Any, *, k: int = 32,
                  n_null: int = 20, seed: int = 0) -> dict[str, Any]:
    """Carry A's vector into B through matched SAE features.

    ``v`` is sparse-coded over A's decoder rows (orthogonal matching pursuit, ``k`` unit atoms); each
    atom that has a partner in the matching (``match_a[i]`` pairs with ``match_b[i]``) is replaced by
    its partner's unit decoder row in B with the same coefficient, the rest are dropped. The null,
    ``n_null`` shuffled matchings: the same atoms and coefficients recomposed with the matched B
    features dealt out at random among A's matched features.
    Returns {"vector", "null_vectors", "atoms", "coefficients", "partners", "explained", "kept_fraction"}.
    """
    from .sparse import omp

    v = np.asarray(v, dtype=np.float64)
    Da, Db = np.asarray(decoder_a, dtype=np.float64), np.asarray(decoder_b, dtype=np.float64)
    if Da.shape[1] != v.shape[0]:
        raise DataError(f"A's SAE reads vectors of size {Da.shape[1]}, the vector has size {v.shape[0]}; use the "
                        "SAE trained on model A at the vector's hook")
    match_a, match_b = np.asarray(match_a, dtype=np.int64), np.asarray(match_b, dtype=np.int64)
    if len(match_a) != len(match_b) or not len(match_a):
        raise DataError(f"the matching must pair features one to one, got {len(match_a)} features of A and "
                        f"{len(match_b)} of B; match them first (geomsteer.metrics.match_features)")
    Ub = Db / np.maximum(np.linalg.norm(Db, axis=1, keepdims=True), 1e-12)
    code = omp(Da, v, k)
    atoms, coefs = np.asarray(code["atoms"], dtype=np.int64), np.asarray(code["coefficients"], dtype=np.float64)
    where = {int(a): i for i, a in enumerate(match_a)}
    slot = np.array([where.get(int(a), -1) for a in atoms], dtype=np.int64)
    kept = slot >= 0
    partners = np.where(kept, match_b[np.maximum(slot, 0)], -1)

    def recompose(b_of_slot: np.ndarray) -> np.ndarray:
        return (coefs[kept, None] * Ub[b_of_slot[slot[kept]]]).sum(0) if kept.any() else np.zeros(Db.shape[1])

    rng = np.random.default_rng(seed)
    nulls = [recompose(match_b[rng.permutation(len(match_b))]) for _ in range(int(n_null))]
    mass = float(np.abs(coefs).sum())
    return {"vector": recompose(match_b), "null_vectors": nulls, "atoms": atoms, "coefficients": coefs,
            "partners": partners, "explained": float(code["explained"][-1]) if code["explained"] else 0.0,
            "kept_fraction": float(np.abs(coefs[kept]).sum() / mass) if mass > 0 else 0.0}


# --------------------------------------------------------------------------------------------
# Matched features, intervened on in both models: word-level effects on shared text


class WordEffects:
    """How intervening on SAE features at ``hook`` changes one model's log-probability of each word of
    shared texts.

    Words are the runs of letters and digits of each text (:func:`geomsteer.activations.text_words`),
    numbered over all texts as in :func:`~geomsteer.activations.word_activations_in_text`, so two
    models with different tokenizers number the same words alike. A word's log-probability is the
    sum of the log-probabilities of its segment's tokens: those after the token that ends the
    previous word, up to the token that ends this one (the text between two words, then the word).
    A word is measured (:attr:`ok`) when its end and the previous word's end fall at token ends of
    their own. Interventions act on every position after the start token:

    - ``"ablate"``: the feature's contribution is removed, x - f_j(x) d_j (the SAE's error kept);
    - ``"add"``: ``alpha`` times the feature's typical activation (``scale``) along its decoder row.
    """

    def __init__(self, model: Any, sae: Any, hook: str, texts: Sequence[str], *, context_length: int = 64,
                 batch_size: int = 16, progress: bool = True, description: str = "Clean pass over the texts",
                 downstream: tuple[Any, str, Sequence[int]] | None = None) -> None:
        import torch

        from ._progress import counter
        from .activations import bos_ids, text_words
        from .hooks import check_hooks

        check_hooks(model, [hook])
        for s_ in [sae] + ([downstream[0]] if downstream else []):
            if int(s_.cfg.d_in) != int(model.cfg.d_model):
                raise DataError(f"the SAE reads vectors of size {s_.cfg.d_in}, but this model's residual stream has "
                                f"size {model.cfg.d_model}; use an SAE trained on this model")
        self.downstream = None
        if downstream is not None:
            from .hooks import layer_of

            d_sae, d_hook, d_feats = downstream
            check_hooks(model, [d_hook])
            if layer_of(d_hook) <= layer_of(hook):
                raise ConfigError(f"the downstream SAE's hook {d_hook} is not after the intervention hook {hook}; "
                                  "give an SAE at a later layer")
            self.downstream = (d_sae, d_hook, [int(f) for f in d_feats])
        if not texts:
            raise DataError("no texts to measure effects on: give at least one text with words")
        self.model, self.sae, self.hook = model, sae, hook
        self.batch_size, self.progress = int(batch_size), progress
        tok = model.tokenizer
        head = list(bos_ids(model))
        self.start = len(head)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        spans = [text_words(t) for t in texts]
        self.n_words = sum(len(s) for s in spans)
        self.text_of_word = np.repeat(np.arange(len(texts)), [len(s) for s in spans])
        self.rows: list[list[int]] = []
        self.ok = np.zeros(self.n_words, dtype=bool)
        self.seg = np.zeros((self.n_words, 2), dtype=np.int64)  # first and last position of each word's segment
        enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        w0 = 0
        for ids, offs, sp in zip(enc["input_ids"], enc["offset_mapping"], spans):
            ids = head + list(ids)[: context_length - len(head)]
            offs = np.asarray(offs[: len(ids) - len(head)], dtype=np.int64).reshape(-1, 2)
            self.rows.append(ids)
            last = np.full(len(sp), -1, dtype=np.int64)  # the token holding each word's last character
            for w, (_, e) in enumerate(sp):
                t = int(np.searchsorted(offs[:, 1], e, side="left"))
                if t < len(offs) and offs[t, 0] <= e - 1 < offs[t, 1]:
                    last[w] = t
            for w in range(len(sp)):
                prev = last[w - 1] if w else -1
                clean = last[w] >= 0 and (w == 0 or prev >= 0) and last[w] != prev
                clean = clean and (w + 1 == len(sp) or last[w + 1] != last[w])
                first = self.start + prev + 1
                if clean and first >= 1:
                    self.ok[w0 + w] = True
                    self.seg[w0 + w] = (first, self.start + last[w])
            w0 += len(sp)
        W = self.sae.W_dec.detach()
        self._W = W
        with torch.no_grad(), counter(description, len(self.rows), "texts", enabled=progress) as advance:
            self.base, fired, self.base_down = self._word_logp([(r, -1) for r in range(len(self.rows))], None,
                                                               advance=advance)
        # fired[r, j]: feature j is active somewhere after the start token of text r (clean run)
        self.fires = fired
        if self.downstream is not None:  # each downstream feature's typical activation on these words
            B = self.base_down[self.ok]
            on = (B > 0).sum(0)
            self.down_scale = np.where(on > 0, B.sum(0) / np.maximum(on, 1), 1.0)

    # ------------------------------------------------------------------ passes
    def _word_logp(self, jobs: Sequence[tuple[int, int]], mode: str | None, feats: Sequence[int] = (),
                   D: Any = None, amount: Any = None, advance: Any = None) -> tuple[np.ndarray, Any]:
        """Per job (text row, i): every word's log-probability under intervention i, NaN for words of other
        texts. Intervention i ablates feature ``feats[i]``'s activation along ``D[i]`` (``"ablate"``) or adds
        ``amount[i] * D[i]`` (``"add"``). The clean pass (``mode`` None) also returns which features fire
        per text."""
        import torch

        sae, W, start = self.sae, self._W, self.start
        out = np.full((len(jobs), self.n_words), np.nan)
        fired = np.zeros((len(self.rows), W.shape[0]), dtype=bool) if mode is None else None
        down = None
        if self.downstream is not None:
            d_sae, d_hook, d_feats = self.downstream
            down = np.full((len(jobs), self.n_words, len(d_feats)), np.nan)
        for b in range(0, len(jobs), self.batch_size):
            chunk = jobs[b : b + self.batch_size]
            rows = [self.rows[r] for r, _ in chunk]
            L = max(len(r) for r in rows)
            ids = torch.full((len(rows), L), self.pad, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.as_tensor(r)
            lengths = torch.as_tensor([len(r) for r in rows])
            mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
            which = [i for _, i in chunk]
            seen: dict[str, Any] = {}

            def hook_fn(x: Any, hook: Any = None) -> Any:
                tail = x[:, start:]
                if mode is None:
                    codes = sae.encode(tail.to(W.dtype))
                    seen["fired"] = ((codes > 0) & mask[:, start:, None].bool()).any(1)
                    return x
                Dc = D[which].to(x.dtype)  # (B, d)
                if mode == "ablate":
                    f = torch.as_tensor([feats[i] for i in which])
                    codes = sae.encode(tail.to(W.dtype))
                    a = codes.gather(-1, f[:, None, None].expand(-1, tail.shape[1], 1)).to(x.dtype)
                    x[:, start:] = tail - a * Dc[:, None, :]
                else:
                    x[:, start:] = tail + amount[which].to(x.dtype)[:, None, None] * Dc[:, None, :]
                return x

            hooks = [(self.hook, hook_fn)]
            if down is not None:
                def read_down(x: Any, hook: Any = None) -> Any:
                    seen["down"] = d_sae.encode(x.to(d_sae.W_dec.dtype))[..., d_feats].detach()
                    return x

                hooks.append((d_hook, read_down))
            with self.model.hooks(fwd_hooks=hooks):
                logits = self.model(ids, attention_mask=mask)
            logits = logits[:, :-1].float()
            lp = (logits.gather(-1, ids[:, 1:, None])[..., 0] - torch.logsumexp(logits, -1)).double().numpy()
            del logits
            for i, (r, _) in enumerate(chunk):
                words = np.flatnonzero((self.text_of_word == r) & self.ok)
                cum = np.concatenate([[0.0], np.cumsum(lp[i])])  # cum[p]: the sum of lp over positions 1..p
                out[b + i, words] = cum[self.seg[words, 1]] - cum[self.seg[words, 0] - 1]
                if down is not None:  # the downstream codes at each word's last token
                    down[b + i, words] = seen["down"][i, self.seg[words, 1]].double().numpy()
                if fired is not None:
                    fired[r] = seen["fired"][i].numpy()
            if advance is not None:
                advance(len(chunk))
        if mode is None:
            base_down = np.nansum(down, 0) if down is not None else None
            return np.where(self.ok, np.nansum(out, 0), np.nan), fired, base_down
        return out, None, down

    def effects(self, features: Sequence[int], mode: str, *, alpha: float = 1.0, scale: Any = None,
                directions: Any = None, description: str | None = None) -> np.ndarray:
        """See :meth:`effects_downstream`; this returns only the word log-probability changes."""
        return self.effects_downstream(features, mode, alpha=alpha, scale=scale, directions=directions,
                                       description=description)[0]

    def effects_downstream(self, features: Sequence[int], mode: str, *, alpha: float = 1.0, scale: Any = None,
                           directions: Any = None, description: str | None = None
                           ) -> tuple[np.ndarray, np.ndarray | None]:
        """(len(features), n_words): the change of every measured word's log-probability when each feature
        is intervened on alone (NaN where a word is not measured). Ablating a feature changes nothing in a
        text where it never fires, so only the texts where it fires are run (elsewhere the change is 0).

        ``scale`` (one per SAE feature): a feature's typical activation, what ``"add"`` multiplies by
        ``alpha``. ``directions`` (len(features), d_model), when given, replace the features' decoder rows
        (the same positions and amounts, another direction: a control).

        With a ``downstream`` SAE, also returns (len(features), n_words, len(downstream features)): the change
        of each listed downstream feature at each word's last token, in units of that feature's typical
        activation on these words (0 where the intervention cannot reach, NaN for unmeasured words)."""
        import torch

        from ._progress import counter

        if mode not in ("ablate", "add"):
            raise ConfigError(f"unknown intervention {mode!r}: expected 'ablate' or 'add'")
        feats = [int(f) for f in features]
        n = int(self._W.shape[0])
        bad = [f for f in feats if not 0 <= f < n]
        if bad:
            raise DataError(f"feature {bad[0]} is not in this SAE (it has {n} features, 0 to {n - 1})")
        amount = None
        if mode == "add":
            if scale is None:
                raise ConfigError("adding a feature needs its typical activation (scale), one per SAE feature")
            if not np.isfinite(alpha):
                raise ConfigError(f"alpha must be finite, got {alpha!r}")
            amount = torch.as_tensor(alpha * np.asarray(scale, dtype=np.float64)[feats])
        D = self._W[feats] if directions is None else torch.as_tensor(np.asarray(directions, dtype=np.float32))
        if D.shape != (len(feats), self._W.shape[1]):
            raise DataError(f"expected one direction of size {self._W.shape[1]} per feature ({len(feats)}), got "
                            f"{tuple(D.shape)}")
        jobs = [(r, i) for i, f in enumerate(feats) for r in range(len(self.rows)) if mode == "add" or self.fires[r, f]]
        out = np.where(self.ok, 0.0, np.nan)[None].repeat(len(feats), 0)
        with torch.no_grad(), counter(description or f"{mode} {len(feats)} features", len(jobs), "texts",
                                      enabled=self.progress) as advance:
            got, _, down = self._word_logp(jobs, mode, feats, D, amount, advance)
        dout = None
        if down is not None:
            dout = np.where(self.ok[:, None], 0.0, np.nan)[None].repeat(len(feats), 0).repeat(down.shape[2], 2)
        for j, ((r, i), row) in enumerate(zip(jobs, got)):
            words = np.flatnonzero((self.text_of_word == r) & self.ok)
            out[i, words] = row[words] - self.base[words]
            if dout is not None:
                dout[i, words] = (down[j, words] - self.base_down[words]) / self.down_scale
        return out, dout


def effect_similarity(effects_a: np.ndarray, effects_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation of every feature of A's word effects with every feature of B's, over the words
    both models measure: an (n_a, n_b) matrix (NaN where an effect is constant), and the column mask used."""
    Ea, Eb = np.asarray(effects_a, dtype=np.float64), np.asarray(effects_b, dtype=np.float64)
    if Ea.shape[1] != Eb.shape[1]:
        raise DataError(f"the two models' effects must be on the same words, got {Ea.shape[1]} and {Eb.shape[1]}")
    cols = np.isfinite(Ea).all(0) & np.isfinite(Eb).all(0)
    if cols.sum() < 3:
        raise DataError(f"only {int(cols.sum())} words are measured in both models; use more or longer texts")
    return _row_corr(Ea[:, cols], Eb[:, cols]), cols


def _row_corr(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    Xc, Yc = X - X.mean(1, keepdims=True), Y - Y.mean(1, keepdims=True)
    nx, ny = np.linalg.norm(Xc, axis=1), np.linalg.norm(Yc, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (Xc @ Yc.T) / np.outer(np.where(nx > 0, nx, np.nan), np.where(ny > 0, ny, np.nan))


def downstream_similarity(down_a: np.ndarray, down_b: np.ndarray, order_b: np.ndarray | None = None) -> np.ndarray:
    """Pearson r of every intervention of A against every intervention of B over what they change
    downstream: (n_a, n_words, K) and (n_b, n_words, K) code changes of K matched downstream feature
    pairs (column k of A's partner is column k of B's), flattened over the words both measure and the
    K features. ``order_b`` re-pairs B's downstream features (the shuffled-matching null)."""
    Da, Db = np.asarray(down_a, dtype=np.float64), np.asarray(down_b, dtype=np.float64)
    if order_b is not None:
        Db = Db[:, :, order_b]
    if Da.shape[1:] != Db.shape[1:]:
        raise DataError(f"the downstream changes must be on the same words and matched features, got {Da.shape[1:]} "
                        f"and {Db.shape[1:]}")
    X, Y = Da.reshape(len(Da), -1), Db.reshape(len(Db), -1)
    cols = np.isfinite(X).all(0) & np.isfinite(Y).all(0)
    return _row_corr(X[:, cols], Y[:, cols])


def shuffled_word_similarity(Ea: np.ndarray, Eb: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Mean diagonal effect similarity with B's words shuffled against A's (``n`` draws): (n,)."""
    rng = np.random.default_rng(seed)
    out = np.empty(n)
    for i in range(n):
        d = np.diagonal(_row_corr(Ea, Eb[:, rng.permutation(Eb.shape[1])]))
        out[i] = np.nanmean(d) if np.isfinite(d).any() else np.nan
    return out


def run(models: Sequence[Any], **kwargs: Any) -> Any:
    """The whole cross-model experiment, what ``geomsteer transfer`` runs: see
    :func:`geomsteer.pipelines.transfer.transfer` for the arguments. Returns a result object
    (``.statistics()``, ``.table()``, ``.figures()``, ``.save(dir)``)."""
    from .pipelines.transfer import transfer

    return transfer(models, **kwargs)
