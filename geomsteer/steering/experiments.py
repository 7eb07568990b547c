"""Experiments that run the model with steering vectors and return frozen measurements (arrays only).

The analyzers in :mod:`geomsteer.analyzers.steering` turn these into statistics without touching
the model: a measurement can be saved, inspected or re-analyzed with another seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["SweepCell", "SweepMeasurements", "measure_sweep", "check_alphas", "null_vectors", "DEFAULT_ALPHAS"]

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
    log p(negative)] for the vector, the covariance directions and (at tested multipliers) shuffled-label vectors."""

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
    n_random: int = 3
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
    from ..activations import bos_ids
    from .apply import generate, steering
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
    start = len(bos_ids(model))
    ids = target_ids(model, items)
    base = target_logodds(model, items, batch_size, ids)
    prompts = list(sample_prompts)[:n_samples]
    samples = []
    if prompts:
        samples.append({"hook": None, "alpha": 0.0, "direction": "unsteered",
                        "texts": generate(model, prompts, max_new_tokens, seed=seed)})
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
            shift = ev(v, a)[0] - base
            band = ev(cov if is_tested else cov[:n_random], a) - base[None]
            shuffled = None
            if is_tested and nulls["shuffled_labels"] is not None:
                shuffled = ev(nulls["shuffled_labels"], a) - base[None]
            kl = rkl = 0.0 if a == 0 else None
            if a != 0 and neutral is not None:
                with steering(model, v, a, hook, start=start):
                    kl = neutral.kl(model)
                with steering(model, cov[0], a, hook, start=start):
                    rkl = neutral.kl(model)  # one draw: KL is the costly part
            cells.append(SweepCell(hook, a, shift, band, shuffled, is_tested, kl, rkl))
            if prompts and a != 0 and a in (alphas[0], alphas[-1]):
                samples.append({"hook": hook, "alpha": a, "direction": "vector",
                                "texts": generate(model, prompts, max_new_tokens, v, a, hook, seed=seed)})
            if progress:
                progress()
    params = {"alphas": alphas, "n_random": n_random, "n_null": n_null,
              "null_alphas": None if null_alphas is None else list(null_alphas), "n_samples": n_samples,
              "max_new_tokens": max_new_tokens, "seed": seed, "batch_size": batch_size}
    return SweepMeasurements(params, tuple(alphas), tuple(tested), base, tuple(cells), norms, notes, tuple(samples),
                             int(getattr(neutral, "n_positions", 0)), n_random)
