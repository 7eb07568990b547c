"""Applying a vector: the steering context manager, forward passes read at the last token, generation."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .vectors import SteeringVector


@contextlib.contextmanager
def steering(model: Any, vector: SteeringVector | np.ndarray, alpha: float, hook: str | None = None,
             positions: str = "all", lengths: Sequence[int] | None = None, start: int = 0) -> Iterator[None]:
    """Add ``alpha * v`` to the activation at ``hook`` for every forward pass inside the block.

    ``positions``: ``all`` (every position from ``start`` on, new tokens of a generation included;
    ``start=1`` leaves the context-start token, the attention sink, alone) or ``last`` (each row's
    last real token: give ``lengths``, the rows' unpadded lengths). The hook is removed on exit,
    also when the block raises.
    """
    import math

    import torch

    from ..hooks import check_hooks

    if isinstance(vector, SteeringVector):
        hook = hook or vector.hook
        v = vector.vector
    else:
        v = np.asarray(vector)
    if hook is None:
        raise ConfigError("no hook given for a plain array: pass hook='blocks.<layer>.hook_resid_post'")
    check_hooks(model, [hook])
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ConfigError(f"the multiplier must be a finite number, got {alpha!r}")
    d = int(model.cfg.d_model)
    if v.shape != (d,):
        raise DataError(f"the steering vector has shape {v.shape}, but {hook} of this model holds vectors of size {d}; "
                        "use a vector computed on this model")
    if positions not in ("all", "last"):
        raise ConfigError(f"unknown positions {positions!r}: expected 'all' or 'last'")
    if positions == "last" and lengths is None:
        raise ConfigError("positions 'last' needs the rows' unpadded lengths")
    delta = torch.as_tensor(alpha * v, dtype=torch.float32)

    def add(act, hook):
        dv = delta.to(act.dtype).to(act.device)
        if positions == "all":
            if start <= 0:
                return act + dv
            out = act.clone()
            out[:, start:] += dv
            return out
        out = act.clone()
        rows = torch.arange(act.shape[0])
        last = torch.as_tensor(lengths, dtype=torch.long) - 1
        out[rows, last] += dv
        return out

    with model.hooks(fwd_hooks=[(hook, add)]):
        yield


def logits_at_last(model: Any, rows: Sequence[Sequence[int]]) -> Any:
    """Float32 logits (n, vocab) at each right-padded row's last real token."""
    import torch

    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    lengths = torch.as_tensor([len(r) for r in rows])
    ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return logits_at(model, ids, mask, (torch.arange(len(rows)), lengths - 1))


def logits_at(model: Any, ids: Any, mask: Any, where: Any) -> Any:
    """Float32 logits (n, vocab) at the positions ``where`` (an index tuple or boolean mask) of a batch.

    For a HookedTransformer only those positions are normalized and unembedded, with a plain
    product: TransformerLens's ``Unembed`` copies the whole (d_model, vocab) matrix on every call
    (670 MB for Gemma 3), which dominated one-token generation steps.
    """
    import torch

    with torch.no_grad():
        if not unembeds_itself(model):
            return model(ids, attention_mask=mask)[where].float()
        return unembed_rows(model, model(ids, attention_mask=mask, stop_at_layer=model.cfg.n_layers)[where])


def unembeds_itself(model: Any) -> bool:
    from transformer_lens import HookedTransformer

    return isinstance(model, HookedTransformer)


def generate(model: Any, prompts: Sequence[str], max_new_tokens: int = 32,
             vector: SteeringVector | np.ndarray | None = None, alpha: float = 0.0, hook: str | None = None,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 8) -> list[str]:
    """Continue each prompt, steered by ``alpha * vector`` at every position after the start token.

    Greedy at ``temperature`` 0, else sampled (seeded). Each step runs the whole sequence (no key-
    value cache), so the vector reaches the prompt and every new token alike; rows are right-padded
    and each reads its own last token. Returns the new text of each prompt.
    """
    import torch

    from ..activations import bos_ids

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}")
    tok = model.tokenizer
    head = bos_ids(model)
    eos = tok.eos_token_id
    rows = [head + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n_ctx = int(getattr(model.cfg, "n_ctx", 1 << 30))
    if rows and max(map(len, rows)) + max_new_tokens > n_ctx:
        raise ConfigError(f"a prompt of {max(map(len, rows))} tokens plus {max_new_tokens} new tokens exceeds the "
                          f"model's context of {n_ctx}; shorten the prompt or ask for fewer tokens")
    steer = (steering(model, vector, alpha, hook, start=len(head)) if vector is not None
             else contextlib.nullcontext())
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = []
    with steer:
        for b in range(0, len(rows), batch_size):
            cur = [list(r) for r in rows[b : b + batch_size]]
            new: list[list[int]] = [[] for _ in cur]
            live = list(range(len(cur)))
            for _ in range(max_new_tokens):
                last = logits_at_last(model, [cur[i] for i in live])
                if temperature > 0:
                    nxt = torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen)[:, 0]
                else:
                    nxt = last.argmax(-1)
                for i, t in zip(live, nxt.tolist()):
                    cur[i].append(t)
                    new[i].append(t)
                live = [i for i in live if new[i][-1] != eos]
                if not live:
                    break
            out += [tok.decode([t for t in n if t != eos], skip_special_tokens=True) for n in new]
    return out


def unembed_rows(model: Any, resid: Any) -> Any:
    """Float32 logits of final-residual rows (n, d_model) of a HookedTransformer."""
    import torch

    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid[:, None])[:, 0]
    logits = resid @ model.W_U + model.b_U
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    return (cap * torch.tanh(logits / cap) if cap > 0 else logits).float()
