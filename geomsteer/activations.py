"""Activation extraction and the on-disk activation store.

:func:`iter_activations` runs a TransformerLens model (``HookedTransformer`` or
``TransformerBridge``) over documents in batches and yields the activations at one or several
hooks from a single forward pass that stops right after the last hook it needs (no later
layers, no logits). Documents are tokenized as the model expects (BOS prepended when the model
prepends it), truncated to ``context_length``, right-padded; padding never reaches the output,
and the context-start position (BOS, or a newline for models that prepend no BOS: see
``bos_ids``) is dropped unless ``keep_bos`` (its residual is an outlier that would dominate
statistics).

:func:`extract_to_store` writes them as safetensors shards with a manifest (model, hooks, dtype,
tokenizer, BOS rule, context length, corpus, token counts, each shard's sha256). Shards and the
manifest are written atomically; an interrupted extraction resumes after its last complete shard,
and a shard whose checksum fails is reported and extracted again. :class:`ActivationStore` reads
a store back and verifies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import _atomic
from ._progress import counter, say
from .hooks import check_hooks, layer_of
from .errors import ConfigError, DataError

__all__ = ["check_hooks", "tokenize", "iter_activations", "unit_activations", "text_words", "word_activations_in_text", "extract_to_store", "ActivationStore"]

STORE_FORMAT = "geomsteer.activations/3"
MANIFEST = "manifest.json"


class _StopForward(Exception):
    """Raised from the last needed hook to end the forward pass early."""


def bos_ids(model: Any) -> list[int]:
    """The context-start token every row begins with; outputs drop its position unless ``keep_bos``.

    The model's BOS when it prepends one (Gemma). A model that prepends none (Qwen2.5) makes its
    first position an attention sink whatever the token (Qwen2.5 at blocks.8: residual norm about
    1,900 there against about 17 elsewhere), so its rows start with a newline token, which takes
    that role and is dropped like a BOS. Prepending Qwen's ``<|endoftext|>`` instead removes the
    sink and breaks the model (mean NLL 5.2 against 1.4 nats per token on a test sentence).
    """
    tok = model.tokenizer
    if getattr(model.cfg, "default_prepend_bos", True) and tok.bos_token_id is not None:
        return [tok.bos_token_id]
    return tok("\n", add_special_tokens=False)["input_ids"][-1:]


def tokenize(model: Any, texts: Sequence[str], context_length: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Token ids (batch, pos) right-padded, a mask of non-padding tokens, and whether BOS was prepended."""
    docs = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ids, _, lengths, _ = _rows(model, docs, context_length, pack=False, n_rows=len(docs))
    return ids, np.arange(ids.shape[1])[None, :] < lengths[:, None], bool(bos_ids(model))


def _rows(model: Any, docs: Sequence[list[int]], context_length: int, pack: bool, n_rows: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Up to ``n_rows`` rows of token ids built from the tokenized documents at the front of ``docs``.

    Returns ids (rows, width), the document of each token (-1 for BOS, separators and padding),
    each row's length, and how many documents were used. Unpacked: one document a row. Packed:
    whole documents fill each row, separated by a newline token; a document longer than a row is
    truncated in a row of its own.
    """
    head = bos_ids(model)
    sep = model.tokenizer("\n", add_special_tokens=False)["input_ids"][-1:] if pack else []
    rows: list[list[int]] = []
    owner: list[list[int]] = []
    used = 0
    while used < len(docs):
        ids = list(docs[used][: context_length - len(head)])
        if pack and rows and len(rows[-1]) + len(sep) + len(ids) <= context_length:
            rows[-1] += sep + ids
            owner[-1] += [-1] * len(sep) + [used] * len(ids)
        elif len(rows) < n_rows:
            rows.append(head + ids)
            owner.append([-1] * len(head) + [used] * len(ids))
        else:
            break
        used += 1
    width = max(1, max((len(r) for r in rows), default=1))
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    ids_arr = np.full((len(rows), width), pad, dtype=np.int64)
    doc_arr = np.full((len(rows), width), -1, dtype=np.int64)
    for i, (r, o) in enumerate(zip(rows, owner)):
        ids_arr[i, : len(r)] = r
        doc_arr[i, : len(o)] = o
    return ids_arr, doc_arr, np.array([len(r) for r in rows], dtype=np.int64), used


def _forward(model: Any, ids: np.ndarray, mask: np.ndarray, hooks: Sequence[str], head: Any = None
             ) -> dict[str, Any]:
    """The activations at ``hooks`` for a batch of token ids, the pass stopped after the last hook.

    ``head``: a :class:`_HeadCache` whose tokens every row continues (``ids`` then holds only
    what follows them; the head's keys and values are read from the cache, not recomputed).
    """
    import torch

    last = max(hooks, key=layer_of)
    captured: dict[str, Any] = {}

    def saver(name: str):
        # keyed by the name asked for: a TransformerBridge calls its hooks by their canonical names
        # (blocks.N.hook_out for blocks.N.hook_resid_post)
        def save(act, hook):
            captured[name] = act.detach()
            if len(captured) == len(hooks) and name == last:
                raise _StopForward

        return save

    tokens = torch.as_tensor(ids, device=getattr(model.cfg, "device", "cpu"))
    attn = torch.as_tensor(mask, device=tokens.device).long()
    kwargs = {"attention_mask": attn} if head is None else head.inputs(attn)
    with torch.no_grad(), model.hooks(fwd_hooks=[(h, saver(h)) for h in hooks]):
        try:
            model(tokens, return_type=None, **kwargs)
        except _StopForward:
            pass
    missing = [h for h in hooks if h not in captured]
    if missing:
        raise DataError(f"the forward pass never reached hook {missing[0]!r}; check the hook name")
    return captured


class _HeadCache:
    """The keys and values of a token prefix that every row of a batch begins with, computed once.

    Word and token reads put the same context start (and template) before every unit; with a
    key-value cache the prefix runs once and each batch continues it, which removes its share of
    the work (a third of a word pass of two-token words after a BOS). A HookedTransformer takes
    TransformerLens's cache, frozen so that a batch reads it without appending to it. A
    TransformerBridge takes a Hugging Face ``DynamicCache`` per batch, given to its attention
    layers as ``layer_past`` with explicit positions and a 4-D mask (the bridge's attention reads
    no cache under the ``cache`` name that transformers 5 passes). :meth:`of` checks the cached
    path against the plain pass on one row before using it, and falls back to the plain pass
    when they differ.
    """

    def __init__(self, model: Any, head: Sequence[int]):
        import torch
        from transformer_lens import HookedTransformer

        self.n = len(head)
        self.hooked = isinstance(model, HookedTransformer)
        # the head runs as 16 equal rows and row 0 is kept: a one-row product takes a kernel whose
        # rounding depends on where the weights lie in memory (a deep copy of the model differed)
        rows = 16
        ids = torch.as_tensor([list(head)] * rows, device=model.cfg.device)
        with torch.no_grad():
            if self.hooked:
                from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

                cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, rows)
                model(ids, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
                self._kv = [(e.past_keys[:1], e.past_values[:1]) for e in cache.entries]
                self._mask = cache.previous_attention_mask[:1]
            else:
                from transformers import DynamicCache

                cache = DynamicCache(config=model.original_model.config)
                model(ids, return_type=None, layer_past=cache, use_cache=False)
                self._kv = [(layer.keys[:1], layer.values[:1]) for layer in cache.layers]
                self._config = model.original_model.config

    @classmethod
    def of(cls, model: Any, head: Sequence[int], row: Sequence[int], hooks: Sequence[str]) -> "_HeadCache | None":
        """A cache for ``head``, or None where the plain pass must run: no head, a model that is not
        a HookedTransformer or TransformerBridge, rows that would pass a sliding attention window,
        or a cached pass that differs from the plain one on ``row`` (one unit's tokens) at ``hooks``."""
        from transformer_lens import HookedTransformer
        from transformer_lens.model_bridge import TransformerBridge

        window = getattr(model.cfg, "window_size", None)
        if (not head or not isinstance(model, (HookedTransformer, TransformerBridge))
                or (isinstance(window, int) and len(head) + len(row) > window)):
            return None
        try:
            cache = cls(model, head)
            ids = np.asarray([list(row)], dtype=np.int64)
            got = _forward(model, ids, np.ones(ids.shape, bool), hooks, head=cache)
            ids = np.asarray([list(head) + list(row)], dtype=np.int64)
            want = _forward(model, ids, np.ones(ids.shape, bool), hooks)
        except Exception:  # an interface this version does not have: the plain pass is always right
            return None
        for h in hooks:
            w, g = want[h][:, len(head):].float(), got[h].float()
            if g.shape != w.shape or not bool(((g - w).abs() <= 1e-3 + 1e-3 * w.abs().max()).all()):
                return None
        return cache

    def inputs(self, mask: Any) -> dict[str, Any]:
        """The forward pass's keyword arguments for a batch of rows that continue the head, given
        their (rows, new tokens) attention mask."""
        import torch

        n, w = mask.shape
        if self.hooked:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
            from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

            entries = [TransformerLensKeyValueCacheEntry(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), frozen=True)
                       for k, v in self._kv]
            return {"attention_mask": mask,
                    "past_kv_cache": TransformerLensKeyValueCache(entries, self._mask.expand(n, -1), frozen=True)}
        from transformers import DynamicCache

        cache = DynamicCache(config=self._config)
        for i, (k, v) in enumerate(self._kv):
            cache.update(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), i)
        seen = torch.cat([torch.ones(n, self.n, dtype=torch.bool, device=mask.device), mask.bool()], 1)
        causal = torch.ones(w, self.n + w, dtype=torch.bool, device=mask.device).tril(diagonal=self.n)
        dtype = self._kv[0][0].dtype
        full = torch.where(causal[None] & seen[:, None, :], torch.zeros((), dtype=dtype),
                           torch.full((), torch.finfo(dtype).min, dtype=dtype))[:, None]
        positions = torch.arange(self.n, self.n + w, device=mask.device)[None].expand(n, -1)
        return {"attention_mask": full, "layer_past": cache, "position_ids": positions, "use_cache": False}


def forward_rows(model: Any, rows: Sequence[Sequence[int]], hooks: Sequence[str]) -> dict[str, Any]:
    """Right-pad token-id rows into one batch and run :func:`_forward` on it."""
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.full((len(rows), int(lengths.max())), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return _forward(model, ids, np.arange(ids.shape[1])[None, :] < lengths[:, None], hooks)


def plan_batches(model: Any, texts: Sequence[str], batch_size: int = 16, context_length: int = 128,
                 pack: bool = False, keep_bos: bool = False, max_tokens: int | None = None) -> Iterator[dict[str, Any]]:
    """The batches :func:`iter_activations` runs, without running them: per batch ``ids`` (rows,
    width), ``doc`` (each token's document, -1 for start, separators and padding), ``lengths``,
    ``doc_start``/``doc_end`` (documents consumed so far before and after it), ``n_tokens`` (the
    tokens it yields) and ``cut`` (yield only the first ``cut`` tokens: ``max_tokens`` reached).

    Planning is cheap (tokenizing only), so a backend can cut the batches into shards before any
    forward pass and a distributed run computes exactly the batches a local run does.
    """
    if batch_size < 1 or context_length < 2:
        raise ConfigError(f"batch_size must be positive and context_length at least 2, got {batch_size} and "
                          f"{context_length}")
    head = bos_ids(model)
    tokenized: list[list[int]] = []  # documents tokenized ahead, in chunks (fast tokenizers batch well)
    offset = start = 0
    total = 0
    while start < len(texts):
        need = batch_size * (context_length if pack else 1)
        if len(tokenized) - (start - offset) < need and offset + len(tokenized) < len(texts):
            tokenized = tokenized[start - offset :]
            offset = start
            chunk = list(texts[offset + len(tokenized) : offset + len(tokenized) + max(need, 1024)])
            tokenized += model.tokenizer(chunk, add_special_tokens=False)["input_ids"]
        ids, doc, lengths, used = _rows(model, tokenized[start - offset :], context_length, pack, batch_size)
        n = int((doc >= 0).sum()) + (len(ids) if head and keep_bos else 0)
        cut = None
        if max_tokens is not None and total + n >= max_tokens:
            cut, n = max_tokens - total, max_tokens - total
        total += n
        yield {"ids": ids, "doc": doc, "lengths": lengths, "doc_start": start, "doc_end": start + used,
               "n_tokens": n, "cut": cut}
        start += used
        if cut is not None:
            return


def batch_activations(model: Any, batch: dict[str, Any], hooks: Sequence[str], keep_bos: bool = False,
                      dtype: str = "float32") -> dict[str, np.ndarray]:
    """Run one planned batch (:func:`plan_batches`): ``{hook: (n_tokens, d), "token_ids", "doc_index",
    "position"}`` for its real tokens, in row order."""
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None:
        raise ConfigError(f"unknown dtype {dtype!r}: expected float32 or float16")
    ids, doc, lengths = batch["ids"], batch["doc"], batch["lengths"]
    head = bos_ids(model)
    acts = _forward(model, ids, np.arange(ids.shape[1])[None, :] < lengths[:, None], hooks)
    keep = doc >= 0
    if head and keep_bos:
        keep[:, 0] = True
    rows, cols = np.nonzero(keep)
    out: dict[str, Any] = {h: acts[h].float().cpu().numpy()[rows, cols].astype(np_dtype) for h in hooks}
    out["token_ids"] = ids[rows, cols]
    d = doc[rows, cols]
    if head and keep_bos:  # a row's BOS counts with the row's first document
        first = np.array([r[r >= 0][0] if (r >= 0).any() else 0 for r in doc])
        d = np.where(d < 0, first[rows], d)
    out["doc_index"] = (d + batch["doc_start"]).astype(np.int64)
    out["position"] = cols.astype(np.int64)
    if batch.get("cut") is not None:
        out = {k: v[: batch["cut"]] for k, v in out.items()}
    return out


def iter_activations(model: Any, texts: Sequence[str], hooks: Sequence[str], batch_size: int = 16,
                     context_length: int = 128, keep_bos: bool = False, dtype: str = "float32",
                     pack: bool = False) -> Iterator[dict[str, Any]]:
    """Yield, per batch, ``{hook: (n_tokens, d), "token_ids", "doc_index", "position", "docs_done"}``.

    Only real tokens appear (no padding; no BOS unless ``keep_bos``; no packing separators).
    ``doc_index`` counts documents from 0 in the order given, ``position`` is the token's place in
    its row, and ``docs_done`` (an int) how many documents the batches so far have consumed. With
    ``pack``, rows of ``batch_size`` hold as many whole documents as fit in ``context_length``
    tokens (fewer, wider forward passes for short documents; tokens then also see the documents
    before them in their row, as in SAELens's packed training data).
    """
    hooks = check_hooks(model, hooks)
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"unknown dtype {dtype!r}: expected float32 or float16")
    for batch in plan_batches(model, texts, batch_size, context_length, pack, keep_bos):
        out = batch_activations(model, batch, hooks, keep_bos, dtype)
        out["docs_done"] = batch["doc_end"]
        yield out


# --------------------------------------------------------------------------------------------
# One vector per unit (word or sentence), for comparing models with different tokenizers

RULES = ("last", "mean")


def unit_activations(model: Any, units: Sequence[str], hooks: Sequence[str], rule: str = "last",
                     prefix: str = "", max_tokens: int = 3, batch_size: int = 64,
                     progress: bool = True, description: str = "Reading units") -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One vector per unit (a word, or a sentence) at each hook, whatever the tokenizer.

    Each unit is read as ``start + prefix + " " + unit`` (start: the BOS, or a newline for models
    that prepend no BOS); its representation at a hook is the
    residual at the unit's last token (``rule="last"``) or the mean over its tokens
    (``rule="mean"``). A unit that the tokenizer splits into more than ``max_tokens`` tokens, or
    into none, or that contains the unknown token, is not represented (for words, a long split
    means the model sees fragments rather than a word).

    Returns ``({hook: (n_kept, d) float32}, kept (n,) bool, n_tokens (n,) int)``; rows follow the
    order of the kept units.
    """
    hooks = check_hooks(model, hooks)
    pieces, n_tok, kept, order = unit_plan(model, units, rule, prefix, max_tokens)
    rows = _unit_rows(model, [pieces[i] for i in order], hooks, rule, prefix, batch_size, progress, description)
    row_of = np.empty(len(units), dtype=np.int64)  # back to the order of the units
    row_of[order] = np.arange(len(order))
    inv = row_of[np.flatnonzero(kept)]
    return {h: X[inv] for h, X in rows.items()}, kept, n_tok


def unit_activations_pool(pool: Any, units: Sequence[str], hooks: Sequence[str], rule: str = "last",
                          prefix: str = "", max_tokens: int = 3, batch_size: int = 64, batches_per_job: int = 4,
                          description: str = "Reading units") -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`unit_activations` on a backend's model workers (:meth:`geomsteer.backend.Backend.model_pool`).

    The units are tokenized and ordered once, then cut into jobs of ``batches_per_job`` whole
    batches, so each forward pass holds the units a local run puts in it (the same numbers).
    """
    pieces, n_tok, kept, order = pool.run("unit_plan", list(units), list(hooks), rule, prefix, max_tokens)
    ordered = [pieces[i] for i in order]
    size = batch_size * max(1, batches_per_job)
    jobs = [("unit_batches", (ordered[i : i + size], list(hooks), rule, prefix, batch_size), {})
            for i in range(0, len(ordered), size)]
    parts = pool.map(jobs, description)
    rows = {h: np.concatenate([p[h] for p in parts]) if parts else np.empty((0, 0), np.float32) for h in hooks}
    row_of = np.empty(len(units), dtype=np.int64)
    row_of[order] = np.arange(len(order))
    inv = row_of[np.flatnonzero(kept)]
    return {h: X[inv] for h, X in rows.items()}, kept, n_tok


def unit_plan(model: Any, units: Sequence[str], rule: str, prefix: str, max_tokens: int
              ) -> tuple[list[list[int]], np.ndarray, np.ndarray, np.ndarray]:
    """Tokenize units for :func:`unit_activations`: (token ids of each, their counts, which are kept,
    the kept units' order of reading, by length so that similar lengths share a batch)."""
    if rule not in RULES:
        raise ConfigError(f"unknown position rule {rule!r}: expected one of {', '.join(RULES)}")
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be at least 1, got {max_tokens}")
    tok = model.tokenizer
    pieces = [list(p) for p in tok([" " + u for u in units], add_special_tokens=False)["input_ids"]] if len(units) else []
    unk = tok.unk_token_id
    n_tok = np.array([len(p) for p in pieces], dtype=np.int64)
    kept = (n_tok >= 1) & (n_tok <= max_tokens)
    if unk is not None:
        kept &= np.array([unk not in p for p in pieces], dtype=bool)
    order = np.flatnonzero(kept)
    order = order[np.argsort(n_tok[order], kind="stable")]
    return pieces, n_tok, kept, order


def _unit_rows(model: Any, pieces: Sequence[Sequence[int]], hooks: Sequence[str], rule: str, prefix: str,
               batch_size: int, progress: bool, description: str) -> dict[str, np.ndarray]:
    """Each tokenized unit's vector, in the order given, ``batch_size`` units a forward pass."""
    tok = model.tokenizer
    head = bos_ids(model) + (tok(prefix, add_special_tokens=False)["input_ids"] if prefix else [])
    n_tok = np.array([len(p) for p in pieces], dtype=np.int64)
    d = int(model.cfg.d_model)
    out = {h: np.empty((len(pieces), d), dtype=np.float32) for h in hooks}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    cached = _HeadCache.of(model, head, max(pieces, key=len), hooks) if len(pieces) else None
    lead = [] if cached else head  # the tokens each row carries itself
    start = len(lead)
    with counter(description, len(pieces), "units", enabled=progress) as advance:
        for b in range(0, len(pieces), batch_size):
            idx = np.arange(b, min(b + batch_size, len(pieces)))
            lengths = n_tok[idx]
            width = start + int(lengths.max())
            ids = np.full((len(idx), width), pad, dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, : start + lengths[r]] = lead + list(pieces[i])
            mask = np.arange(width)[None, :] < (start + lengths)[:, None]
            acts = _forward(model, ids, mask, hooks, head=cached)
            for h in hooks:
                a = acts[h].float().cpu().numpy()
                if rule == "last":
                    v = a[np.arange(len(idx)), start + lengths - 1]
                else:
                    span = (np.arange(width)[None, :] >= start) & mask
                    v = (a * span[:, :, None]).sum(1) / lengths[:, None]
                out[h][b : b + len(idx)] = v
            advance(len(idx))
    return out


def token_activations(model: Any, token_ids: Sequence[int], hooks: Sequence[str], template: str = "",
                      batch_size: int = 256, progress: bool = True,
                      description: str = "Reading tokens") -> dict[str, np.ndarray]:
    """Each token's residual at ``hooks`` when it follows ``start + template`` (one forward pass per batch).

    Token ids are taken as they are (a WordNet hierarchy's tokens are single-token words, the
    word-start marker included), so every row has the same length and nothing is padded. Returns
    ``{hook: (n, d) float32}`` in the order of ``token_ids``.
    """
    hooks = check_hooks(model, hooks)
    ids_in = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    vocab = int(model.cfg.d_vocab)
    if ids_in.size and (ids_in.min() < 0 or ids_in.max() >= vocab):
        raise DataError(f"token ids must lie in 0..{vocab - 1} for this model, got ids from {ids_in.min()} to "
                        f"{ids_in.max()}; take them from the same model's tokenizer")
    tok = model.tokenizer
    head = bos_ids(model) + (tok(template, add_special_tokens=False)["input_ids"] if template else [])
    d = int(model.cfg.d_model)
    out = {h: np.empty((len(ids_in), d), dtype=np.float32) for h in hooks}
    cached = _HeadCache.of(model, head, ids_in[:1].tolist(), hooks) if len(ids_in) else None
    lead = [] if cached else head
    with counter(description, len(ids_in), "tokens", enabled=progress) as advance:
        for b in range(0, len(ids_in), batch_size):
            chunk = ids_in[b : b + batch_size]
            ids = np.empty((len(chunk), len(lead) + 1), dtype=np.int64)
            ids[:, :-1] = lead
            ids[:, -1] = chunk
            acts = _forward(model, ids, np.ones(ids.shape, dtype=bool), hooks, head=cached)
            for h in hooks:
                out[h][b : b + len(chunk)] = acts[h][:, -1].float().cpu().numpy()
            advance(len(chunk))
    return out


_WORD = None


def text_words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words (runs of letters and digits) of ``text``."""
    import re

    global _WORD
    if _WORD is None:
        _WORD = re.compile(r"[^\W_]+")
    return [m.span() for m in _WORD.finditer(text)]


def word_activations_in_text(model: Any, texts: Sequence[str], hooks: Sequence[str], batch_size: int = 16,
                             context_length: int = 128, progress: bool = True,
                             description: str = "Reading words in context") -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The residual at the last token of every word of every text, so that two tokenizers align.

    Words are the runs of letters and digits of each text (:func:`text_words`), numbered in order
    over all texts. A word's representation is the token that holds its last character. Returns
    ``({hook: (n_words, d) float32}, represented (n_words,) bool)``: a word is not represented
    when its text was truncated before it (``context_length``) or when the token holding its end
    also holds the next word's end (one token for two words). Rows of unrepresented words are 0.
    """
    hooks = check_hooks(model, hooks)
    tok = model.tokenizer
    head = bos_ids(model)
    spans = [text_words(t) for t in texts]
    n_words = sum(len(s) for s in spans)
    first = np.concatenate([[0], np.cumsum([len(s) for s in spans])]).astype(np.int64)
    d = int(model.cfg.d_model)
    out = {h: np.zeros((n_words, d), dtype=np.float32) for h in hooks}
    ok = np.zeros(n_words, dtype=bool)
    with counter(description, len(texts), "texts", enabled=progress) as advance:
        for b in range(0, len(texts), batch_size):
            chunk = list(texts[b : b + batch_size])
            enc = tok(chunk, add_special_tokens=False, return_offsets_mapping=True)
            rows, where = [], []  # where: (row, position, global word index)
            for r, (ids, offs) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
                ids = list(head) + list(ids)[: context_length - len(head)]
                offs = np.asarray(offs[: len(ids) - len(head)], dtype=np.int64).reshape(-1, 2)
                rows.append(ids)
                ends = offs[:, 1]
                starts = offs[:, 0]
                prev = -1
                for w, (_, e) in enumerate(spans[b + r]):
                    # the token holding character e - 1
                    t = int(np.searchsorted(ends, e, side="left"))
                    if t >= len(offs) or not (starts[t] <= e - 1 < ends[t]):
                        continue
                    if t == prev:  # this token also ended the previous word: ambiguous for both
                        where = [x for x in where if x[2] != first[b + r] + w - 1]
                        continue
                    prev = t
                    where.append((r, len(head) + t, int(first[b + r] + w)))
            acts = forward_rows(model, rows, hooks)
            if where:
                rr, pp, ww = (np.array(v) for v in zip(*where))
                for h in hooks:
                    out[h][ww] = acts[h].float().cpu().numpy()[rr, pp]
                ok[ww] = True
            advance(len(chunk))
    return out, ok


# --------------------------------------------------------------------------------------------
# The store


def _config(model_name: str, model: Any, hooks: Sequence[str], context_length: int, keep_bos: bool, dtype: str,
            corpus_name: str, corpus_provenance: dict, n_documents: int) -> dict:
    tok = model.tokenizer
    return {
        "format": STORE_FORMAT,
        "model": model_name,
        "hooks": list(hooks),
        "d": {h: int(model.cfg.d_model) for h in hooks},
        "dtype": dtype,
        "tokenizer": type(tok).__name__,
        "vocab_size": int(len(tok)),
        "context_start": bos_ids(model),
        "keep_bos": keep_bos,
        "context_length": context_length,
        "corpus": corpus_name,
        "corpus_provenance": corpus_provenance,
        "n_documents": n_documents,
    }


def extract_to_store(model: Any, texts: Sequence[str], hooks: Sequence[str], out: str | Path, *,
                     model_name: str, corpus_name: str = "texts", corpus_provenance: dict | None = None,
                     batch_size: int = 16, context_length: int = 128, max_tokens: int | None = None,
                     shard_tokens: int = 65536, keep_bos: bool = False, dtype: str = "float32",
                     pack: bool = False, seed: int | None = None, progress: bool = True,
                     backend: Any = None, model_ref: Any = None) -> "ActivationStore":
    """Extract activations of ``texts`` into shards under ``out``, resuming a previous extraction.

    ``seed`` is recorded in the manifest (the seed that ordered ``texts``, if any). With a
    ``backend`` (:mod:`geomsteer.backend`) and the ``model_ref`` its workers load, the shards are
    computed by the backend's model workers: the batches are planned here first (tokenizing only)
    and cut into shards exactly as a local run cuts them, so every shard holds the same tokens and
    the same numbers (tested: identical files). Shards come back in order; the manifest grows one
    complete shard at a time, so an interrupted run resumes after its last complete shard.
    """
    from .backend import get_backend

    hooks = check_hooks(model, hooks)
    if dtype not in ("float32", "float16"):
        raise ConfigError(f"unknown dtype {dtype!r}: expected float32 or float16")
    out = Path(out)
    cfg = _config(model_name, model, hooks, context_length, keep_bos, dtype, corpus_name,
                  corpus_provenance or {}, len(texts))
    cfg["packed"] = pack
    cfg["seed"] = seed
    manifest = _resume_manifest(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    done_docs = manifest["shards"][-1]["doc_end"] if manifest["shards"] else 0
    n_tokens = sum(s["n_tokens"] for s in manifest["shards"])
    if manifest.get("complete"):
        return ActivationStore(out)
    if done_docs and progress:
        say(f"Resuming {out}: {len(manifest['shards'])} complete shard(s), {n_tokens:,} tokens")
    left = None if max_tokens is None else max(0, max_tokens - n_tokens)
    shards = _plan_shards(model, texts, done_docs, batch_size, context_length, pack, keep_bos, left, shard_tokens)
    first = len(manifest["shards"])
    names = [f"shard-{first + i:05d}.safetensors" for i in range(len(shards))]
    be = get_backend(backend)
    total = sum(b["n_tokens"] for sh in shards for b in sh)
    if be.name != "local" and model_ref is None:
        raise ConfigError("a distributed extraction needs the model's name (a model_ref its workers can load); "
                          "pass the model by name")
    with counter(f"Extracting {', '.join(hooks)}", n_tokens + total, "tokens", enabled=progress) as advance:
        advance(n_tokens)
        # one path for both backends: the local pool runs the same shard jobs on the model given here
        with be.model_pool(model_ref, loaded=model) as pool:
            entries = pool.imap([("extract_shard", (sh, hooks, str(out), name, model_name, keep_bos, dtype), {})
                                 for sh, name in zip(shards, names)])
            for _ in _record(entries, manifest, out, advance):
                pass
    manifest["complete"] = True
    manifest["n_tokens"] = sum(s["n_tokens"] for s in manifest["shards"])
    _atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return ActivationStore(out)


def _plan_shards(model, texts, done_docs, batch_size, context_length, pack, keep_bos, max_tokens, shard_tokens
                 ) -> list[list[dict[str, Any]]]:
    """The remaining documents' batches (:func:`plan_batches`), grouped into shards of at least
    ``shard_tokens`` tokens (the last may be smaller); document indices count from the first text."""
    shards: list[list[dict[str, Any]]] = []
    buf: list[dict[str, Any]] = []
    n = 0
    if max_tokens == 0:
        return shards
    for bt in plan_batches(model, texts[done_docs:], batch_size, context_length, pack, keep_bos, max_tokens):
        bt["doc_start"] += done_docs
        bt["doc_end"] += done_docs
        buf.append(bt)
        n += bt["n_tokens"]
        if n >= shard_tokens or bt["cut"] is not None:
            shards.append(buf)
            buf, n = [], 0
    if buf:
        shards.append(buf)
    return shards


def _write_shard(out: str | Path, name: str, batches: Sequence[dict[str, np.ndarray]], model_name: str,
                 doc_end: int) -> dict[str, Any]:
    """Write one shard atomically (a temporary file renamed into place); its manifest entry."""
    from safetensors.numpy import save_file

    out = Path(out)
    tensors = {k: np.ascontiguousarray(np.concatenate([b[k] for b in batches])) for k in batches[0]}
    tmp = out / f".{name}.tmp"
    # one metadata key: safetensors writes a metadata map in a per-process random order, and a shard
    # must be the same bytes whichever process wrote it
    save_file(tensors, str(tmp), metadata={"geomsteer": json.dumps({"format": STORE_FORMAT, "model": model_name})})
    sha = _atomic.sha256_file(tmp)
    tmp.replace(out / name)
    return {"file": name, "n_tokens": int(len(tensors["token_ids"])),
            "doc_start": int(tensors["doc_index"].min()) if len(tensors["doc_index"]) else 0,
            "doc_end": int(doc_end), "sha256": sha}


def _record(entries, manifest: dict, out: Path, advance) -> Iterator[dict[str, Any]]:
    """Append each finished shard to the manifest, in order, and write the manifest after each."""
    for e in entries:
        manifest["shards"].append(e)
        manifest["n_tokens"] = sum(s["n_tokens"] for s in manifest["shards"])
        _atomic.write_text(out / MANIFEST, json.dumps(manifest, indent=2))
        advance(e["n_tokens"])
        yield e


def _resume_manifest(out: Path, cfg: dict) -> dict:
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{str(out)!r} exists and is not an activation store (no {MANIFEST}); choose another directory")
        return {**cfg, "shards": [], "n_tokens": 0, "complete": False}
    old = json.loads(path.read_text())
    diff = [k for k in cfg if k != "corpus_provenance" and old.get(k) != cfg[k]]
    if diff:
        k = diff[0]
        raise DataError(f"{str(out)!r} holds activations of another configuration ({k}: {old.get(k)!r} there, "
                        f"{cfg[k]!r} now); choose another directory or delete it")
    good = []
    for s in old["shards"]:
        f = out / s["file"]
        if not f.exists() or _atomic.sha256_file(f) != s["sha256"]:
            say(f"shard {s['file']} in {out} is missing or corrupt (sha256 mismatch); extracting again from there")
            break
        good.append(s)
    old["shards"] = good
    old["complete"] = bool(old.get("complete")) and len(good) == len(json.loads(path.read_text())["shards"])
    for stray in out.glob(".shard-*.tmp"):
        stray.unlink()
    return old


@dataclass
class ActivationStore:
    """A directory of activation shards with their manifest."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        m = self.path / MANIFEST
        if not m.is_file():
            raise DataError(f"{str(self.path)!r} is not an activation store: expected a {MANIFEST} in it")
        self.manifest = json.loads(m.read_text())
        if self.manifest.get("format") != STORE_FORMAT:
            raise DataError(f"{str(self.path)!r} has format {self.manifest.get('format')!r}, expected {STORE_FORMAT!r}")

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    def verify(self) -> None:
        """Raise a DataError naming the first shard whose sha256 does not match the manifest."""
        for s in self.manifest["shards"]:
            f = self.path / s["file"]
            if not f.is_file():
                raise DataError(f"shard {s['file']} of {str(self.path)!r} is missing; extract again to restore it")
            if _atomic.sha256_file(f) != s["sha256"]:
                raise DataError(f"shard {s['file']} of {str(self.path)!r} is corrupt (sha256 mismatch); extract "
                                "again into the same directory to replace it")

    def iter_shards(self, keys: Sequence[str] | None = None, verify: bool = True) -> Iterator[dict[str, np.ndarray]]:
        from safetensors.numpy import load_file

        for s in self.manifest["shards"]:
            f = self.path / s["file"]
            if verify and (not f.is_file() or _atomic.sha256_file(f) != s["sha256"]):
                raise DataError(f"shard {s['file']} of {str(self.path)!r} is corrupt or missing (sha256 mismatch); "
                                "extract again into the same directory to replace it")
            data = load_file(str(f))
            yield {k: data[k] for k in (keys or data)}

    def load(self, hook: str) -> np.ndarray:
        """All activations at ``hook`` as one (n_tokens, d) array."""
        if hook not in self.hooks:
            raise DataError(f"hook {hook!r} is not in this store: it holds {', '.join(self.hooks)}")
        return np.concatenate([s[hook] for s in self.iter_shards([hook])])
