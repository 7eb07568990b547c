"""Causal interventions on SAE features and on directions, inside a context manager that always removes its hooks.

An intervention on features keeps the SAE's error term: at the hook the residual ``x`` becomes
``x + decode(f') - decode(f)``, where ``f = encode(x)`` and ``f'`` is ``f`` with the chosen features
changed. An intervention that changes no feature therefore leaves the residual, and everything
downstream, exactly as it was (the difference of two equal decodes is exactly zero).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ConfigError
from .hooks import check_hooks

__all__ = ["MODES", "intervene", "ablate_direction", "check_features"]

MODES = ("zero", "mean", "clamp", "scale", "add")


def check_features(sae: Any, features: Sequence[int]) -> list[int]:
    """The features as ints, each once, each inside the SAE; a message that says what is wrong otherwise."""
    feats = [int(f) for f in features]
    if not feats:
        raise ConfigError("no features given: expected one or more SAE feature indices")
    d_sae = int(sae.cfg.d_sae)
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise ConfigError(f"feature index {bad[0]} is outside the SAE: it has features 0..{d_sae - 1}")
    if len(set(feats)) != len(feats):
        raise ConfigError(f"feature indices repeat: {feats}; give each feature once")
    return feats


def _check(sae: Any, features: Sequence[int], mode: str, value: float | None, means: Any) -> list[int]:
    feats = check_features(sae, features)
    d_sae = int(sae.cfg.d_sae)
    if mode not in MODES:
        raise ConfigError(f"unknown intervention {mode!r}: expected one of {', '.join(MODES)}")
    if mode in ("clamp", "scale", "add"):
        vals = np.atleast_1d(np.asarray(value if value is not None else np.nan, dtype=np.float64))
        if vals.size not in (1, len(feats)) or not np.isfinite(vals).all():
            raise ConfigError(f"the {mode} intervention needs a finite value (one number, or one per feature: "
                              f"{len(feats)}), got {value!r}")
    if mode == "mean" and (means is None or len(means) != d_sae):
        raise ConfigError(f"mean-ablation needs each feature's mean activation (d_sae = {d_sae} values), got "
                          f"{'none' if means is None else len(means)}")
    return feats


@contextlib.contextmanager
def intervene(model: Any, sae: Any, hook: str, features: Sequence[int], mode: str = "zero", *,
              value: Any = None, means: Any = None, positions: Sequence[int] | None = None,
              start: int = 0) -> Iterator[Any]:
    """Change SAE features at ``hook`` in every forward pass (and generation) inside the block.

    ``mode``: ``zero`` (ablate), ``mean`` (set to ``means[f]``), ``clamp`` (set to ``value``), ``scale``
    (multiply by ``value``: 0, 0.5, 2, ...), ``add`` (add ``value`` times the feature's decoder direction,
    the SAE's own encoding untouched); ``value`` is one number or one per feature. ``positions``: token
    positions to change, indexed within each forward pass (default: every position from ``start`` on, so
    generation inside the block changes every new token too; with cached generation each new token is a
    pass of its own; ``start=1`` leaves the context-start token, the attention sink, alone). The hooks are
    removed on exit, also after an exception."""
    import torch

    check_hooks(model, [hook])
    feats = _check(sae, features, mode, value, means)
    idx = torch.as_tensor(feats, dtype=torch.long)
    W_dec = sae.W_dec.detach()
    vals = None
    if mode in ("clamp", "scale", "add"):
        vals = torch.as_tensor(np.broadcast_to(np.asarray(value, dtype=np.float32), (len(feats),)).copy())

    def hook_fn(x: Any, hook: Any = None) -> Any:
        sel = slice(start, None) if positions is None else list(positions)
        xs = x[:, sel]
        if mode == "add":
            delta = (vals.to(W_dec.dtype) @ W_dec[idx]).to(x.dtype)
            out = x.clone()
            out[:, sel] = xs + delta
            return out
        f = sae.encode(xs.to(W_dec.dtype))
        g = f.clone()
        if mode == "zero":
            g[..., idx] = 0.0
        elif mode == "mean":
            g[..., idx] = torch.as_tensor(np.asarray(means, dtype=np.float32)[feats], dtype=g.dtype)
        elif mode == "clamp":
            g[..., idx] = vals.to(g.dtype)
        else:  # scale
            g[..., idx] = g[..., idx] * vals.to(g.dtype)
        out = x.clone()
        out[:, sel] = xs + (sae.decode(g) - sae.decode(f)).to(x.dtype)
        return out

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, hook_fn)]):
        yield model


@contextlib.contextmanager
def ablate_direction(model: Any, direction: Any, hooks: Sequence[str] | str) -> Iterator[Any]:
    """Project ``direction`` out of the residual at each of ``hooks`` (Arditi et al. 2024's directional
    ablation: ``x - (x . u) u`` with ``u`` the unit direction), in every forward pass inside the block."""
    import torch

    hooks = check_hooks(model, hooks)
    u = torch.as_tensor(np.asarray(direction, dtype=np.float32)).flatten()
    if u.numel() != int(model.cfg.d_model) or not torch.isfinite(u).all() or float(u.norm()) == 0:
        raise ConfigError(f"the direction must be {model.cfg.d_model} finite numbers, not all zero; got "
                          f"{u.numel()} values")
    u = u / u.norm()

    def hook_fn(x: Any, hook: Any = None) -> Any:
        v = u.to(x.dtype)
        return x - (x @ v)[..., None] * v

    with torch.no_grad(), model.hooks(fwd_hooks=[(h, hook_fn) for h in hooks]):
        yield model
