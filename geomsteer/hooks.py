"""TransformerLens hook names and layers: converting between them and checking them against a model."""

from __future__ import annotations

from typing import Any, Sequence

from .errors import ConfigError

__all__ = ["resid_hook", "layer_of", "parse_layers", "check_hooks"]


def resid_hook(layer: int) -> str:
    """The residual stream after block ``layer``: ``blocks.<layer>.hook_resid_post``."""
    return f"blocks.{int(layer)}.hook_resid_post"


def layer_of(hook: str) -> int:
    """The block a hook belongs to (``blocks.6.hook_resid_post`` -> 6); -1 for hooks outside the blocks."""
    parts = hook.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else -1


def parse_layers(spec: str | Sequence[int], n_layers: int, model_name: str) -> list[int]:
    """``all``, ``every:K`` (0, K, 2K, ... and the last layer), a comma list such as ``0,6,12``, or a list of ints."""
    if not isinstance(spec, str):
        spec = ",".join(str(int(x)) for x in spec)
    spec = spec.strip()
    if spec == "all":
        return list(range(n_layers))
    if spec.startswith("every:"):
        try:
            step_ = int(spec[6:])
        except ValueError:
            step_ = 0
        if step_ < 1:
            raise ConfigError(f"--layers {spec!r}: expected every:K with K a positive integer, e.g. every:2")
        return sorted(set(range(0, n_layers, step_)) | {n_layers - 1})
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers {spec!r}: expected 'all', 'every:K' or layer numbers such as 0,6,12") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {spec!r}: {model_name} has layers 0..{n_layers - 1}; got {bad or 'none'}")
    return sorted(set(layers))


def check_hooks(model: Any, hooks: str | Sequence[str]) -> list[str]:
    """Validate hook names against the model; the error lists valid names for its layer range."""
    if isinstance(hooks, str):
        hooks = [hooks]
    if not hooks:
        raise ConfigError("no hooks given: expected one or more TransformerLens hook names such as "
                          "'blocks.6.hook_resid_post'")
    valid = set(model.hook_dict)
    bad = [h for h in hooks if h not in valid]
    if bad:
        n_layers = model.cfg.n_layers
        kinds = sorted({h.split(".", 2)[2] for h in valid if h.startswith("blocks.0.") and h.count(".") == 2})
        raise ConfigError(
            f"unknown hook {bad[0]!r} for this model: it has layers 0..{n_layers - 1}; valid names are "
            f"blocks.<layer>.<name> with <name> one of {', '.join(kinds)} (for example "
            f"'blocks.{min(6, n_layers - 1)}.hook_resid_post'), or hook_embed"
        )
    return list(dict.fromkeys(hooks))
