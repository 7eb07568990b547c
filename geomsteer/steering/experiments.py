"""Experiments that run the model with steering vectors and return frozen measurements (arrays only).

The analyzers in :mod:`geomsteer.analyzers.steering` turn these into statistics without touching
the model: a measurement can be saved, inspected or re-analyzed with another seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["SweepCell", "SweepMeasurements", "measure_sweep", "CodeChange", "PropagationMeasurements",
           "measure_propagation", "DecompositionMeasurements", "measure_decomposition", "prompt_activations", "check_alphas", "null_vectors", "DEFAULT_ALPHAS"]

DEFAULT_ALPHAS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """Finite multipliers, sorted, each once."""
    out = [float(a) for a in alphas]
    if not out or not all(np.isfinite(out)):
        raise ConfigError(f"multipliers must be finite numbers, got {list(alphas)!r}; for example --alphas -4 -2 0 2 4")
    return sorted(set(out))


def null_vectors(sv: Any, v: np.ndarray, X: np.ndarray, n_cov: int, n_shuffled: int, seed: int) -> dict[str, Any]:
    """Covariance directions with ``v``'s norm and, when the vector kept its pairs, shuffled-label vectors."""
    from .nulls import covariance_directions, shuffled_label_vectors

    out: dict[str, Any] = {"covariance_directions": covariance_directions(X, float(np.linalg.norm(v)), max(n_cov, 1), seed),
                           "shuffled_labels": None, "note": None}
    if n_shuffled:
        if getattr(sv, "pair_differences", None) is not None:
            out["shuffled_labels"] = shuffled_label_vectors(sv, n_shuffled, seed)
        else:
            out["note"] = ("no shuffled-label null: the vector file carries no pair differences (recompute it with "
                           "'geomsteer steer compute')")
    return out


@dataclass(frozen=True)
class SweepCell:
    """One hook and multiplier: per-prompt shifts (steered minus unsteered) of [log-odds, log p(positive),
    log p(negative)] for the vector, the covariance directions and (at tested multipliers) shuffled-label vectors.
    The null draws beyond the first ``n_random`` covariance directions and the shuffled-label draws
    carry the log-odds alone (the other two columns NaN: their tests read only the log-odds)."""

    hook: str
    alpha: float
    shift: np.ndarray  # (n_prompts, 3)
    covariance: np.ndarray  # (n_directions, n_prompts, 3)
    shuffled: np.ndarray | None  # (n_draws, n_prompts, 3) at the tested multipliers
    tested: bool
    kl: float | None  # KL on neutral text under the vector
    random_kl: float | None  # ... under the first covariance direction


@dataclass(frozen=True)
class SweepMeasurements:
    """What :func:`measure_sweep` measured, with the parameters it used."""

    params: Mapping[str, Any]
    alphas: tuple[float, ...]
    null_alphas: tuple[float, ...]
    base: np.ndarray  # (n_prompts, 3) unsteered
    cells: tuple[SweepCell, ...]
    vector_norms: Mapping[str, float]
    nulls_notes: Mapping[str, str | None]
    samples: tuple[Mapping[str, Any], ...] = ()
    neutral_positions: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)


def _null_alphas(alphas: list[float], null_alphas: Sequence[float] | None) -> list[float]:
    if null_alphas is not None:
        chosen = check_alphas(null_alphas)
        missing = [a for a in chosen if a not in alphas]
        if missing:
            raise ConfigError(f"null multipliers {missing} are not among the sweep's multipliers {alphas}")
        return [a for a in chosen if a != 0]
    return [a for a in {alphas[0], alphas[-1]} if a != 0]


def measure_sweep(model: Any, vectors: Mapping[str, Any], items: Sequence[Any], neutral: Any = None, *,
                  alphas: Sequence[float] = DEFAULT_ALPHAS, n_random: int = 3, n_null: int = 20,
                  null_alphas: Sequence[float] | None = None, sample_prompts: Sequence[str] = (), n_samples: int = 2,
                  max_new_tokens: int = 24, seed: int = 0, batch_size: int = 16,
                  progress: Callable[[], None] | None = None) -> SweepMeasurements:
    """Steer with every vector at every multiplier and read the target log-odds on ``items`` (and the KL on
    ``neutral`` text), beside covariance directions (``n_random`` per cell; ``n_null`` at the tested
    multipliers, by default the most negative and the most positive) and ``n_null`` shuffled-label vectors.
    ``progress`` is called once per cell."""
    from .apply import generate_runs
    from .evaluate import SteeredTargets, target_ids, target_logodds

    alphas = check_alphas(alphas)
    n_random = max(1, int(n_random))
    n_null = int(n_null)
    if not vectors:
        raise DataError("no steering vectors to sweep")
    if not items:
        raise DataError("no evaluation prompts: the sweep measures the target log-odds on held-out prompts")
    if n_null and n_null < 2:
        raise ConfigError(f"n_null must be 0 (no nulls) or at least 2 draws per null, got {n_null}; 20 is the default")
    tested = _null_alphas(alphas, null_alphas) if n_null else []
    ids = target_ids(model, items)
    base = target_logodds(model, items, batch_size, ids)
    prompts = list(sample_prompts)[:n_samples]
    samples: list[dict[str, Any]] = []
    runs: list[tuple[Any, float, str | None]] = []  # generated together at the end, one batch
    if prompts:
        samples.append({"hook": None, "alpha": 0.0, "direction": "unsteered"})
        runs.append((None, 0.0, None))
    cells, norms, notes = [], {}, {}
    for hi, (hook, sv) in enumerate(vectors.items()):
        v = np.asarray(getattr(sv, "vector", sv), dtype=np.float32)
        ev = SteeredTargets(model, items, hook, batch_size, ids)
        nulls = null_vectors(sv, v, ev.X, max(n_random, n_null if tested else 0), n_null if tested else 0,
                             seed + 1000 * hi)
        cov = nulls["covariance_directions"]
        norms[hook], notes[hook] = float(np.linalg.norm(v)), nulls["note"]
        for a in alphas:
            is_tested = a in tested
            both = ev(np.vstack([v[None], cov[:n_random]]), a) - base[None]  # one pass over the vocabulary
            shift, band = both[0], both[1:]
            if is_tested and len(cov) > n_random:  # beyond the figure's band only the log-odds is read
                band = np.concatenate([band, ev(cov[n_random:], a, normalized=False) - base[None]])
            shuffled = None
            if is_tested and nulls["shuffled_labels"] is not None:
                shuffled = ev(nulls["shuffled_labels"], a, normalized=False) - base[None]
            kl = rkl = 0.0 if a == 0 else None
            if a != 0 and neutral is not None:  # one covariance draw: KL is the costly part
                kl, rkl = neutral.kl_steered(model, np.stack([v, cov[0]]), a, hook)
            cells.append(SweepCell(hook, a, shift, band, shuffled, is_tested, kl, rkl))
            if prompts and a != 0 and a in (alphas[0], alphas[-1]):
                samples.append({"hook": hook, "alpha": a, "direction": "vector"})
                runs.append((v, a, hook))
            if progress:
                progress()
    for sample, texts in zip(samples, generate_runs(model, prompts, runs, max_new_tokens, seed=seed)):
        sample["texts"] = texts
    params = {"alphas": alphas, "n_random": n_random, "n_null": n_null,
              "null_alphas": None if null_alphas is None else list(null_alphas), "n_samples": n_samples,
              "max_new_tokens": max_new_tokens, "seed": seed, "batch_size": batch_size}
    return SweepMeasurements(params, tuple(alphas), tuple(tested), base, tuple(cells), norms, notes, tuple(samples),
                             int(getattr(neutral, "n_positions", 0)))


def prompt_activations(model: Any, items_or_texts: Sequence[Any], hooks: Sequence[str], vector: np.ndarray | None,
                       alpha: float, steer_hook: str | None, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Activations at ``hooks`` on every real token after the start token, optionally steered."""
    import contextlib

    from ..activations import bos_ids, forward_rows
    from .apply import steering

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


@dataclass(frozen=True)
class CodeChange:
    """SAE code changes at later layers when one direction is added at one multiplier: per layer, the mean
    and the mean absolute change of every feature over the tokens, and the mean relative residual change."""

    direction: str  # "vector", "random", "shuffled_labels" or "covariance_directions"
    alpha: float
    mean_change: Mapping[str, np.ndarray]  # hook -> (d_sae,)
    mean_abs_change: Mapping[str, np.ndarray]  # hook -> (d_sae,)
    relative_residual_change: Mapping[str, float]


@dataclass(frozen=True)
class PropagationMeasurements:
    """What :func:`measure_propagation` measured, with the parameters it used."""

    params: Mapping[str, Any]
    hook: str
    hooks: tuple[str, ...]  # SAE hooks at or after the steering layer, in layer order
    skipped: tuple[str, ...]  # SAE hooks before it (steering cannot reach them)
    alphas: tuple[float, ...]
    null_alpha: float
    n_tokens: int
    unsteered_mean_codes: Mapping[str, np.ndarray]  # hook -> (d_sae,)
    code_scale: Mapping[str, float]  # hook -> mean non-zero unsteered code
    runs: tuple[CodeChange, ...]  # the vector and one random direction at every multiplier
    null_runs: tuple[CodeChange, ...]  # shuffled-label and covariance vectors at null_alpha
    nulls_note: str | None = None


def measure_propagation(model: Any, vector: Any, saes: Mapping[str, Any], texts: Sequence[Any], *,
                        alphas: Sequence[float] = (1.0, 2.0, 4.0), n_null: int = 20, seed: int = 0,
                        batch_size: int = 16, progress: Callable[[], None] | None = None) -> PropagationMeasurements:
    """Add the vector at its layer and encode the activations at each later layer that has an SAE: per
    multiplier, the vector and one covariance direction; at the multiplier of largest magnitude also
    ``n_null`` shuffled-label vectors and ``n_null`` covariance directions. ``progress`` is called once per pass."""
    from ..hooks import layer_of
    from ..saes import encode

    alphas = [a for a in check_alphas(alphas) if a != 0]
    if not alphas:
        raise ConfigError("give at least one non-zero multiplier")
    n_null = int(n_null)
    v = np.asarray(getattr(vector, "vector", vector), dtype=np.float32)
    hook = getattr(vector, "hook", None)
    if hook is None:
        raise ConfigError("the vector carries no hook: pass a SteeringVector")
    k = layer_of(hook)
    later = sorted((h for h in saes if layer_of(h) >= k), key=layer_of)
    skipped = sorted((h for h in saes if layer_of(h) < k), key=layer_of)
    if not later:
        raise ConfigError(f"no SAE at or after the steering layer ({hook}); give SAEs at later layers")
    for h in later:
        if saes[h].cfg.d_in != v.shape[0]:
            raise DataError(f"the SAE for {h} reads vectors of size {saes[h].cfg.d_in}, the vector has size "
                            f"{v.shape[0]}; use SAEs trained on this model")
    if n_null and n_null < 2:
        raise ConfigError(f"n_null must be 0 (no nulls) or at least 2 draws per null, got {n_null}; 20 is the default")
    hooks_read = later if hook in later else [hook, *later]
    X0 = prompt_activations(model, texts, hooks_read, None, 0.0, None, batch_size)
    nulls = null_vectors(vector, v, X0[hook], max(1, n_null), n_null, seed + 11)
    C0 = {h: encode(saes[h], X0[h]) for h in later}

    def run(name: str, vec: np.ndarray, a: float) -> CodeChange:
        X1 = prompt_activations(model, texts, later, vec, a, hook, batch_size)
        mean, mean_abs, moved = {}, {}, {}
        for h in later:
            d = encode(saes[h], X1[h]).astype(np.float64) - C0[h]
            mean[h], mean_abs[h] = d.mean(0), np.abs(d).mean(0)
            r = np.linalg.norm(X1[h] - X0[h], axis=1) / np.maximum(np.linalg.norm(X0[h], axis=1), 1e-12)
            moved[h] = float(r.mean())
        if progress:
            progress()
        return CodeChange(name, a, mean, mean_abs, moved)

    runs = [run(name, vec, a) for a in alphas for name, vec in (("vector", v), ("random", nulls["covariance_directions"][0]))]
    null_alpha = max(alphas, key=abs)
    null_runs = []
    if n_null:
        for name in ("shuffled_labels", "covariance_directions"):
            if nulls[name] is not None:
                null_runs += [run(name, vec, null_alpha) for vec in nulls[name]]
    params = {"alphas": alphas, "n_null": n_null, "seed": seed, "batch_size": batch_size}
    return PropagationMeasurements(
        params, hook, tuple(later), tuple(skipped), tuple(alphas), null_alpha, int(len(X0[hook])),
        {h: C0[h].astype(np.float64).mean(0) for h in later},
        {h: float(C0[h][C0[h] > 0].mean()) if (C0[h] > 0).any() else 1.0 for h in later},
        tuple(runs), tuple(null_runs), nulls["note"])


@dataclass(frozen=True)
class DecompositionMeasurements:
    """What :func:`measure_decomposition` measured, with the parameters it used.

    Code differences are mean (steered minus unsteered) SAE codes on the fitting half's tokens at
    multiplier ``alpha``; shifts are held-out target log-odds shifts on the scoring half."""

    params: Mapping[str, Any]
    hook: str | None
    alpha: float
    vector: np.ndarray  # (d,) float64
    decoder: np.ndarray  # (d_sae, d) the SAE's decoder directions
    split: Mapping[str, int]  # fit_prompts, score_prompts
    n_tokens: int
    unsteered_mean_codes: np.ndarray  # (d_sae,)
    unsteered_active_mean: float  # mean of the non-zero unsteered codes (0 when none fire)
    code_difference: np.ndarray  # (d_sae,) for the vector
    random_direction: np.ndarray  # (d,) the first covariance direction
    random_code_difference: np.ndarray  # (d_sae,)
    encoder_output: np.ndarray  # (d_sae,) the SAE's encoding of the vector read as an activation
    null_vectors: Mapping[str, np.ndarray]  # name -> (n, d)
    null_code_differences: Mapping[str, np.ndarray]  # name -> (n, d_sae)
    shifts: np.ndarray  # (3, n_score): the vector, its sparse-coding and its code-difference reconstruction
    null_shifts: Mapping[str, np.ndarray]  # name -> (n,) mean held-out shift of each null vector
    nulls_note: str | None = None


def measure_decomposition(model: Any, vector: Any, sae: Any, items: Sequence[Any], alpha: float, *, k: int = 32,
                          nonneg: bool = False, n_null: int = 20, seed: int = 0,
                          batch_size: int = 16) -> DecompositionMeasurements:
    """Split ``items`` in two at random (seeded); on the first half's tokens read the SAE code difference
    that steering by ``alpha`` makes (for the vector, a covariance direction and ``n_null`` draws of each
    null); on the second half score the target log-odds shift of the vector, of its sparse coding over the
    decoder (``k`` atoms, matching pursuit) and of its code-difference reconstruction, and of every null."""
    import torch

    from ..saes import encode
    from ..sparse import omp
    from .evaluate import SteeredTargets

    if k < 1:
        raise ConfigError(f"k must be a positive number of atoms, got {k}")
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
    n_null = int(n_null)
    if n_null < 2:
        raise ConfigError(f"n_null must be at least 2 draws per null, got {n_null}; 20 is the default")
    if len(items) < 2:
        raise DataError(f"the decomposition needs at least 2 evaluation prompts (half fit the code difference, the "
                        f"other half score the reconstructions), got {len(items)}")
    W_dec = sae.W_dec.detach().float().numpy()
    order = np.random.default_rng([seed, 0xDEC]).permutation(len(items))
    fit_items = [items[i] for i in sorted(order[: len(items) // 2])]
    score_items = [items[i] for i in sorted(order[len(items) // 2 :])]

    X0 = prompt_activations(model, fit_items, [hook], None, 0.0, None, batch_size)[hook]
    C0 = encode(sae, X0)
    nulls = null_vectors(vector, v.astype(np.float32), X0, n_null, n_null, seed + 7)
    null_vecs = {name: nulls[name].astype(np.float64) for name in ("shuffled_labels", "covariance_directions")
                 if nulls[name] is not None}
    rnd = null_vecs["covariance_directions"][0]

    def code_difference(vec: np.ndarray) -> np.ndarray:
        return (encode(sae, X0 + alpha * vec.astype(np.float32)) - C0).astype(np.float64).mean(0)

    delta = code_difference(v)
    with torch.no_grad():  # for contrast only: the vector read as if it were an activation
        enc_v = sae.encode(torch.as_tensor(v[None].astype(np.float32))).numpy()[0].astype(np.float64)
    sc = omp(W_dec, v, k, nonneg)
    recon_codes = delta @ W_dec / alpha
    ev = SteeredTargets(model, score_items, hook, batch_size)
    base = ev(v, 0.0)[0][:, 0]
    shifts = ev(np.stack([v, sc["reconstruction"], recon_codes]), alpha)[:, :, 0] - base[None]
    null_shifts = {name: (ev(V, alpha)[:, :, 0] - base[None]).mean(1) for name, V in null_vecs.items()}
    params = {"k": k, "nonneg": nonneg, "n_null": n_null, "seed": seed, "batch_size": batch_size}
    return DecompositionMeasurements(
        params, hook, float(alpha), v, W_dec, {"fit_prompts": len(fit_items), "score_prompts": len(score_items)},
        int(len(X0)), C0.astype(np.float64).mean(0), float(C0[C0 > 0].mean()) if (C0 > 0).any() else 0.0,
        delta, rnd, code_difference(rnd), enc_v, null_vecs,
        {name: np.stack([code_difference(u) for u in V]) for name, V in null_vecs.items()},
        shifts, null_shifts, nulls["note"])
