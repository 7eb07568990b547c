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
    import torch

    hook, v = _checked(model, vector, alpha, hook)
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
             temperature: float = 0.0, seed: int = 0, batch_size: int = 8, kv_cache: bool = True) -> list[str]:
    """Continue each prompt, steered by ``alpha * vector`` at every position after the start token.

    Greedy at ``temperature`` 0, else sampled (seeded). Rows are right-padded and each reads its
    own last token. With ``kv_cache`` (a HookedTransformer) the prompt runs once and each new token
    alone, against the cached keys and values (positions count real tokens, pads are masked);
    ``kv_cache=False`` reruns the whole sequence at every step. Both add the vector to the prompt
    and to every new token alike and give the same tokens (tested token for token). Returns the new
    text of each prompt.
    """
    import torch

    rows, head = _prompt_rows(model, prompts, max_new_tokens)
    cached = kv_cache and _cacheable(model, rows, max_new_tokens)
    offset = [0]  # the absolute position of the first slot of the current input (cached steps)
    if vector is None:
        steer: Any = contextlib.nullcontext()
    elif cached:
        hook, v = _checked(model, vector, alpha, hook)
        steer = _steering_rows(model, {hook: torch.as_tensor(alpha * v, dtype=torch.float32)[None]}, len(head),
                               offset)
    else:
        steer = steering(model, vector, alpha, hook, start=len(head))
    gen = torch.Generator().manual_seed(seed)

    def pick(live: list[int], last: Any) -> list[int]:
        return _pick(last, temperature, gen)

    out: list[str] = []
    with steer:
        for b in range(0, len(rows), batch_size):
            batch = [list(r) for r in rows[b : b + batch_size]]
            new = (_generate_cached(model, batch, max_new_tokens, pick, offset) if cached
                   else _generate_plain(model, batch, max_new_tokens, pick))
            out += [_decode(model, n) for n in new]
    return out


def generate_runs(model: Any, prompts: Sequence[str], runs: Sequence[tuple[Any, float, str | None]],
                  max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0) -> list[list[str]]:
    """:func:`generate` for several steering runs at once: ``runs`` holds ``(vector, alpha, hook)``
    (``vector`` None: unsteered). Returns, per run, what ``generate(model, prompts, max_new_tokens,
    vector, alpha, hook, temperature, seed, batch_size=len(prompts))`` returns.

    With a HookedTransformer every run's rows go through one key-value-cached batch, each row
    steered by its own run (a one-token step costs about the same for 2 rows as for 20: it reads
    every weight once); each run samples with its own generator, as alone. Other models run the
    runs one after another.
    """
    import torch

    rows, head = _prompt_rows(model, prompts, max_new_tokens)
    if not runs or not rows:
        return [[] for _ in runs] if not rows else []
    if not _cacheable(model, rows, max_new_tokens):
        return [generate(model, prompts, max_new_tokens, v, a, h, temperature, seed, max(1, len(prompts)))
                for v, a, h in runs]
    n = len(rows)
    deltas: dict[str, Any] = {}
    for r, (vector, alpha, hook) in enumerate(runs):
        if vector is None:
            continue
        hook, v = _checked(model, vector, alpha, hook)
        d = deltas.setdefault(hook, torch.zeros(n * len(runs), int(model.cfg.d_model)))
        d[r * n : (r + 1) * n] = torch.as_tensor(alpha * v, dtype=torch.float32)
    gens = [torch.Generator().manual_seed(seed) for _ in runs]

    def pick(live: list[int], last: Any) -> list[int]:
        out: list[int] = []
        for r, g in enumerate(gens):  # live rows are in order: each run's rows are contiguous
            mine = [j for j, i in enumerate(live) if i // n == r]
            if mine:
                out += _pick(last[mine], temperature, g)
        return out

    offset = [0]
    with _steering_rows(model, deltas, len(head), offset):
        new = _generate_cached(model, [list(row) for _ in runs for row in rows], max_new_tokens, pick, offset)
    texts = [_decode(model, t) for t in new]
    return [texts[r * n : (r + 1) * n] for r in range(len(runs))]


def _prompt_rows(model: Any, prompts: Sequence[str], max_new_tokens: int) -> tuple[list[list[int]], list[int]]:
    from ..activations import bos_ids

    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be positive, got {max_new_tokens}")
    tok = model.tokenizer
    head = bos_ids(model)
    rows = [head + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n_ctx = int(getattr(model.cfg, "n_ctx", 1 << 30))
    if rows and max(map(len, rows)) + max_new_tokens > n_ctx:
        raise ConfigError(f"a prompt of {max(map(len, rows))} tokens plus {max_new_tokens} new tokens exceeds the "
                          f"model's context of {n_ctx}; shorten the prompt or ask for fewer tokens")
    return rows, head


def _cacheable(model: Any, rows: list[list[int]], max_new_tokens: int) -> bool:
    """A HookedTransformer, and no sequence longer than a sliding attention window (the cache counts
    the window in slots, pads included)."""
    window = getattr(model.cfg, "window_size", None)
    return unembeds_itself(model) and (not isinstance(window, int) or not rows
                                       or max(map(len, rows)) + max_new_tokens <= window)


def _pick(last: Any, temperature: float, gen: Any) -> list[int]:
    import torch

    if temperature > 0:
        return torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen)[:, 0].tolist()
    return last.argmax(-1).tolist()


def _decode(model: Any, new: list[int]) -> str:
    eos = model.tokenizer.eos_token_id
    return model.tokenizer.decode([t for t in new if t != eos], skip_special_tokens=True)


def _generate_plain(model: Any, cur: list[list[int]], max_new_tokens: int, pick: Any) -> list[list[int]]:
    eos = model.tokenizer.eos_token_id
    new: list[list[int]] = [[] for _ in cur]
    live = list(range(len(cur)))
    for _ in range(max_new_tokens):
        for i, t in zip(live, pick(live, logits_at_last(model, [cur[i] for i in live]))):
            cur[i].append(t)
            new[i].append(t)
        live = [i for i in live if new[i][-1] != eos]
        if not live:
            break
    return new


def _generate_cached(model: Any, rows: list[list[int]], max_new_tokens: int, pick: Any,
                     offset: list[int]) -> list[list[int]]:
    """Greedy or sampled continuation of right-padded rows with TransformerLens's key-value cache.

    The prompt slots of a short row hold pads, masked out; the cache's attention mask makes each
    new token's rotary position its row's count of real tokens, as in the unpadded sequence. Rows
    that ended stay in the batch (their outputs are ignored), so that the cache keeps its shape;
    the sampler sees only the live rows, in the order of the cache-free path.
    """
    import torch
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    tok = model.tokenizer
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    n = len(rows)
    lengths = torch.as_tensor([len(r) for r in rows])
    ids = torch.full((n, int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)
    new: list[list[int]] = [[] for _ in rows]
    live = list(range(n))
    with torch.no_grad():
        offset[0] = 0
        resid = model(ids, attention_mask=mask, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
        last = unembed_rows(model, resid[torch.arange(n), lengths - 1])
        for step in range(max_new_tokens):
            for i, t in zip(live, pick(live, last[live])):
                new[i].append(t)
            live = [i for i in live if new[i][-1] != eos]
            if not live or step == max_new_tokens - 1:
                break
            nxt = torch.as_tensor([[r[-1] if r else pad] for r in new])
            offset[0] = int(ids.shape[1]) + step
            resid = model(nxt, attention_mask=torch.ones_like(nxt), past_kv_cache=cache,
                          stop_at_layer=model.cfg.n_layers)
            last = unembed_rows(model, resid[:, -1])
    return new


def _checked(model: Any, vector: SteeringVector | np.ndarray, alpha: float, hook: str | None) -> tuple[str, np.ndarray]:
    """The hook and the plain vector, checked against the model (what :func:`steering` adds)."""
    import math

    from ..hooks import check_hooks

    if isinstance(vector, SteeringVector):
        hook = hook or vector.hook
        v = np.asarray(vector.vector)
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
    return hook, v


@contextlib.contextmanager
def _steering_rows(model: Any, deltas: dict[str, Any], start: int, offset: list[int]) -> Iterator[None]:
    """Add ``deltas[hook]`` (rows, d_model; one row broadcasts) to the activation at each hook at
    every absolute position from ``start`` on, for inputs that begin at the absolute position
    ``offset[0]`` (a key-value-cached generation feeds one new token at a time)."""

    def add(act, hook):
        skip = max(0, start - offset[0])
        if skip >= act.shape[1]:
            return act
        out = act.clone()
        out[:, skip:] += deltas[hook.name].to(act.dtype).to(act.device)[:, None, :]
        return out

    with model.hooks(fwd_hooks=[(h, add) for h in deltas]):
        yield


def final_normed(model: Any, resid: Any) -> Any:
    """Final-residual rows (n, d_model) of a HookedTransformer after its final norm: what the
    unembedding multiplies."""
    if model.cfg.normalization_type is not None:
        return model.ln_final(resid[:, None])[:, 0]
    return resid


def _capped(model: Any, logits: Any) -> Any:
    import torch

    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def log_normalizer(model: Any, resid: Any, p: Any = None, chunk: int = 8192) -> tuple[Any, float | None]:
    """Per final-residual row of a HookedTransformer: the logsumexp of its logits (float64, n),
    and with ``p`` (n, vocab) also sum over rows and tokens of p * logits.

    The vocabulary is taken a chunk at a time (each chunk's logits stay in cache, and the (n, vocab)
    logits are never written): on Gemma 3's 262,144 tokens about 1.4x faster than the full product
    and logsumexp. Agrees with ``torch.logsumexp(unembed_rows(model, resid), -1)`` to float32
    rounding (tested).
    """
    import torch

    with torch.no_grad():
        h = final_normed(model, resid).float()
        Wt, b = model.W_U.T, model.b_U  # (vocab, d): contiguous rows once stored as read
        lse, cross = None, 0.0
        for i in range(0, Wt.shape[0], chunk):
            # in float32 whatever the model's dtype (CPUs without bfloat16 units multiply it slowly)
            z = _capped(model, torch.addmm(b[i : i + chunk, None].float(), Wt[i : i + chunk].float(), h.T))
            part = torch.logsumexp(z, 0).double()
            lse = part if lse is None else torch.logaddexp(lse, part)
            if p is not None:
                # float64 accumulation: a float32 einsum over Gemma's vocabulary was off by 1.7 in
                # 2,116 (a whole KL of 0.3 nats per position is 40 in that sum)
                cross += float((p[:, i : i + chunk] * z.T).sum(dtype=torch.float64))
    return lse, (cross if p is not None else None)


def logits_of(model: Any, resid: Any, ids: Any) -> Any:
    """Logits (float32, m, n, k) of final-residual rows ``resid`` (m, n, d_model) of a
    HookedTransformer at token ids ``ids`` (n, k), row (., i) at ``ids[i]``, without the rest of the
    vocabulary."""
    import torch

    m, n, d = resid.shape
    h = final_normed(model, resid.reshape(m * n, d)).reshape(m, n, d).float()
    z = torch.einsum("mnd,dnk->mnk", h, model.W_U[:, ids].float()) + model.b_U[ids].float()
    return _capped(model, z)


def unembed_rows(model: Any, resid: Any) -> Any:
    """Float32 logits of final-residual rows (n, d_model) of a HookedTransformer."""
    import torch

    h = final_normed(model, resid)
    if h.dtype == torch.float32:
        return _capped(model, h @ model.W_U + model.b_U)
    h, W, b = h.float(), model.W_U, model.b_U  # bfloat16/float16: multiplied in float32, a chunk at a time
    out = torch.empty(h.shape[0], W.shape[1], dtype=torch.float32, device=h.device)
    for i in range(0, W.shape[1], 16384):
        out[:, i : i + 16384] = _capped(model, h @ W[:, i : i + 16384].float() + b[i : i + 16384].float())
    return out
