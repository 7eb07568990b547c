"""Causal interventions on SAE features and on directions, inside a context manager that always removes its hooks.

An intervention on features keeps the SAE's error term: at the hook the residual ``x`` becomes
``x + decode(f') - decode(f)``, where ``f = encode(x)`` and ``f'`` is ``f`` with the chosen features
changed. An intervention that changes no feature therefore leaves the residual, and everything
downstream, exactly as it was (the difference of two equal decodes is exactly zero).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ConfigError
from .hooks import check_hooks

__all__ = ["MODES", "intervene", "ablate_direction"]

MODES = ("zero", "mean", "clamp", "scale", "add")


def _check(sae: Any, features: Sequence[int], mode: str, value: float | None, means: Any) -> list[int]:
    feats = [int(f) for f in features]
    if not feats:
        raise ConfigError("no features given: expected one or more SAE feature indices")
    d_sae = int(sae.cfg.d_sae)
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise ConfigError(f"feature index {bad[0]} is outside the SAE: it has features 0..{d_sae - 1}")
    if mode not in MODES:
        raise ConfigError(f"unknown intervention {mode!r}: expected one of {', '.join(MODES)}")
    if mode in ("clamp", "scale", "add") and (value is None or not math.isfinite(float(value))):
        raise ConfigError(f"the {mode} intervention needs a finite value, got {value!r}")
    if mode == "mean" and (means is None or len(means) != d_sae):
        raise ConfigError(f"mean-ablation needs each feature's mean activation (d_sae = {d_sae} values), got "
                          f"{'none' if means is None else len(means)}")
    return feats


@contextlib.contextmanager
def intervene(model: Any, sae: Any, hook: str, features: Sequence[int], mode: str = "zero", *,
              value: float | None = None, means: Any = None, positions: Sequence[int] | None = None) -> Iterator[Any]:
    """Change SAE features at ``hook`` in every forward pass (and generation) inside the block.

    ``mode``: ``zero`` (ablate), ``mean`` (set to ``means[f]``), ``clamp`` (set to ``value``), ``scale``
    (multiply by ``value``: 0, 0.5, 2, ...), ``add`` (add ``value`` times the feature's decoder direction,
    the SAE's own encoding untouched). ``positions``: token positions to change, indexed within each forward
    pass (default: all, so generation inside the block changes every new token too; with cached generation
    each new token is a pass of its own). The hooks are removed on exit, also after an exception."""
    import torch

    check_hooks(model, [hook])
    feats = _check(sae, features, mode, value, means)
    idx = torch.as_tensor(feats, dtype=torch.long)
    W_dec = sae.W_dec.detach()

    def hook_fn(x: Any, hook: Any = None) -> Any:
        sel = slice(None) if positions is None else list(positions)
        xs = x[:, sel]
        if mode == "add":
            delta = float(value) * W_dec[idx].sum(0).to(x.dtype)
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
            g[..., idx] = float(value)
        else:  # scale
            g[..., idx] = g[..., idx] * float(value)
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
