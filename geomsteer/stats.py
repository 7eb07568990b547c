"""One shape for every statistic geomsteer reports, and the small tests that fill it.

Every statistic in every ``result.json`` is a dict::

    {"observed": float, "ci95": [lo, hi] | None, "ci95_reason": str (when ci95 is None),
     "null": {name: {"mean", "sd", "n_draws", "p_value", "effect_size", "p_min", ...}},
     "effect_size": float | None, "p_value": float | None, "p_reason": str (when p_value is None),
     "alternative": "greater" | "less" | "two-sided", "n": int, ...}

``null`` holds only *valid* nulls: baselines that keep everything about the data except the
structure being tested. Each null is a distribution of the same statistic over ``n_draws``
independent draws, summarized by its ``mean`` and ``sd``; ``effect_size`` is
``(observed - mean) / sd``. Two p-values stand beside it:

- ``p_monte_carlo = (1 + #{draws at least as extreme}) / (1 + n_draws)``, exact for any null
  distribution but never below ``p_min = 1 / (1 + n_draws)``;
- ``p_value``, the predictive t-test of the observed value as one more draw from a normal null
  whose mean and sd are estimated from the draws: ``t = (observed - mean) / (sd sqrt(1 + 1/B))``
  with ``B - 1`` degrees of freedom. It can go below ``p_min`` with few draws; it assumes the
  null distribution is close to normal, which holds for means over many units (edges,
  categories, words). With ``B >= 99`` draws, or when every draw is the same value (sd 0), the
  larger of the two is ``p_value``.

The top-level ``p_value`` and ``effect_size`` are the most conservative over the listed nulls:
the largest p-value, and the effect size against that same null (``conservative_null``). A
statistic with no null has ``p_value`` None and says why in ``p_reason``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["ALTERNATIVES", "bootstrap_ci", "monte_carlo_p", "null_summary", "statistic", "holm", "benjamini_hochberg",
           "auc", "STAT_KEYS", "t_predictive_p"]

ALTERNATIVES = ("greater", "less", "two-sided")
STAT_KEYS = ("observed", "ci95", "null", "effect_size", "p_value", "n")


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def bootstrap_ci(values: Sequence[float] | np.ndarray, fn: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of ``fn`` over the units in ``values`` (NaNs dropped).

    Returns None with fewer than two finite units. ``fn(values)`` for the mean is vectorized.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return None
    rng = np.random.default_rng([seed, 0xB007])
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    if fn is np.mean:
        boots = v[idx].mean(axis=1)
    else:
        boots = np.array([fn(v[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return None
    a = (1 - level) / 2
    return [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))]


def monte_carlo_p(observed: float, draws: Sequence[float] | np.ndarray, alternative: str = "greater") -> float | None:
    """``(1 + #{draws at least as extreme as observed}) / (1 + n)``; two-sided doubles the smaller tail."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0 or not math.isfinite(observed):
        return None
    ge = (1 + int((d >= observed).sum())) / (1 + d.size)
    le = (1 + int((d <= observed).sum())) / (1 + d.size)
    if alternative == "greater":
        return float(ge)
    if alternative == "less":
        return float(le)
    return float(min(1.0, 2 * min(ge, le)))


def t_predictive_p(observed: float, mean: float, sd: float, n_draws: int, alternative: str = "greater") -> float | None:
    """p of ``observed`` as one more draw of a normal null estimated from ``n_draws`` draws."""
    from scipy.stats import t as student_t

    if n_draws < 2 or sd is None or not math.isfinite(observed):
        return None
    if sd == 0:
        same = observed == mean
        if alternative == "greater":
            return 1.0 if observed <= mean else 0.0
        if alternative == "less":
            return 1.0 if observed >= mean else 0.0
        return 1.0 if same else 0.0
    t = (observed - mean) / (sd * math.sqrt(1 + 1 / n_draws))
    df = n_draws - 1
    if alternative == "greater":
        return float(student_t.sf(t, df))
    if alternative == "less":
        return float(student_t.cdf(t, df))
    return float(min(1.0, 2 * student_t.sf(abs(t), df)))


def null_summary(observed: float, draws: Sequence[float] | np.ndarray, alternative: str = "greater",
                 note: str | None = None) -> dict[str, Any]:
    """Mean, sd, count, p-values and effect size of ``observed`` against the null ``draws``."""
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    mean = float(d.mean()) if d.size else None
    sd = float(d.std(ddof=1)) if d.size > 1 else None
    eff = None
    if mean is not None and sd is not None and sd > 0 and math.isfinite(observed):
        eff = (observed - mean) / sd
    p_mc = monte_carlo_p(observed, d, alternative)
    p_t = t_predictive_p(observed, mean, sd, d.size, alternative) if mean is not None else None
    p = p_t
    if p is not None and p_mc is not None and (d.size >= 99 or sd == 0):
        p = max(p, p_mc)  # a null with no spread (e.g. a count every draw repeats) gets no t-test below p_min
    out: dict[str, Any] = {"mean": mean, "sd": sd, "n_draws": int(d.size), "p_value": p, "p_monte_carlo": p_mc,
                           "p_min": 1.0 / (1 + d.size) if d.size else None, "effect_size": _finite(eff)}
    if note:
        out["note"] = note
    return out


def statistic(observed: float, n: int, *, nulls: Mapping[str, Mapping[str, Any]] | None = None,
              ci95: Sequence[float] | None = None, ci95_reason: str | None = None,
              alternative: str = "greater", p_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """Assemble the shared shape. ``nulls`` maps a name to :func:`null_summary` output.

    The top-level ``p_value`` is the largest over the nulls (the most conservative), and
    ``effect_size`` is taken against the same null; ``conservative_null`` names it.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    nulls = dict(nulls or {})
    obs = _finite(observed)
    out: dict[str, Any] = {"observed": obs, "ci95": list(ci95) if ci95 is not None else None}
    if ci95 is None:
        out["ci95_reason"] = ci95_reason or "fewer than two units to resample"
    out["null"] = nulls
    scored = [(k, v) for k, v in nulls.items() if v.get("p_value") is not None]
    if scored:
        name, worst = max(scored, key=lambda kv: (kv[1]["p_value"], -abs(kv[1].get("effect_size") or 0.0)))
        out["p_value"] = worst["p_value"]
        out["effect_size"] = worst.get("effect_size")
        out["conservative_null"] = name
    else:
        out["p_value"] = None
        out["effect_size"] = None
        out["p_reason"] = p_reason or "no null distribution was computed"
    out["alternative"] = alternative
    out["n"] = int(n)
    out.update(extra)
    return out


def holm(p: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), None kept in place."""
    idx = [i for i, x in enumerate(p) if x is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: p[i])  # type: ignore[arg-type,return-value]
    out: list[float | None] = [None] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def benjamini_hochberg(p: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), None kept in place."""
    idx = [i for i, x in enumerate(p) if x is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: p[i], reverse=True)  # type: ignore[arg-type,return-value]
    out: list[float | None] = [None] * len(p)
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k
        running = min(running, float(p[i]) * m / rank)  # type: ignore[arg-type]
        out[i] = min(1.0, running)
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half.

    Sorted negatives and two binary searches: O((n_pos + n_neg) log n_neg)."""
    pos = np.asarray(pos, dtype=np.float64).ravel()
    neg = np.sort(np.asarray(neg, dtype=np.float64).ravel())
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left")
    upto = np.searchsorted(neg, pos, side="right")
    return float((below + 0.5 * (upto - below)).sum() / (pos.size * neg.size))
