"""Contrastive steering vectors: the pair format, computing vectors, saving them, applying them.

Pairs are JSONL, one object per line: ``{"positive": ..., "negative": ...}`` (two texts), or the
multiple-choice form of contrastive activation addition, ``{"prompt": ..., "positive": "A",
"negative": "B"}``, where each side is ``prompt + answer`` and the vector is read at the answer.

A vector at a hook is the mean over pairs of (positive - negative) activations, read by a
position rule: ``last`` (the last token), ``mean`` (the mean over every token after the start
token, the prompt's included: the prompt's tokens are the same on both sides, so a prompted pair's
difference is its answer's, scaled by the answer's share of the tokens) or ``answer`` (the mean
over the answer's tokens only; needs ``prompt``). ``method="pca"`` takes instead
the first principal direction of the paired differences (uncentred, so the direction they share
dominates), oriented and scaled by the mean difference's projection on it.

:func:`steering` adds ``alpha * v`` at a hook inside a context manager that removes its hook on
exit, also after an exception.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from . import _atomic
from .errors import ConfigError, DataError

__all__ = ["Pair", "load_pairs", "SteeringVector", "compute_vectors", "vectors_bytes", "save_vectors", "load_vectors", "steering",
           "pair_statistics", "EvalPrompt", "load_eval", "target_ids", "target_logodds", "generate", "NeutralText", "random_direction",
           "POSITIONS", "METHODS", "shuffled_label_vectors", "covariance_directions", "SteeredTargets"]

POSITIONS = ("last", "mean", "answer")
DEFAULT_POSITION = "mean"  # the CLI's and the API's default: every token after BOS, prompt included
METHODS = ("mean_diff", "pca")
FORMAT = "geomsteer.steering/1"
DIFFS = "pair_differences:"  # tensor-name prefix of a hook's per-pair differences in a vector file


@dataclass(frozen=True)
class Pair:
    positive: str
    negative: str
    prompt: str = ""


def load_pairs(path: str | Path) -> tuple[list[Pair], str]:
    """Pairs from a JSONL file and the file's sha256. Errors name the line and what was expected."""
    from .resources import steering_file

    p = steering_file(path)
    if not p.is_file():
        raise DataError(f"pair file {str(p)!r} does not exist: expected a JSONL file of "
                        '{"positive": ..., "negative": ...} objects, or a shipped set: sentiment, formality, '
                        "animal_plant")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"pair file {str(p)!r} is not UTF-8 text") from None
    from .corpus import jsonl_objects

    pairs = []
    for i, obj in jsonl_objects(text, p):
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj.get(k) for k in ("positive", "negative")):
            raise DataError(f"{p}:{i}: expected an object with non-empty string fields 'positive' and 'negative'"
                            + (" (and optionally 'prompt')" if isinstance(obj, dict) else f", got {type(obj).__name__}"))
        prompt = obj.get("prompt", "")
        if not isinstance(prompt, str):
            raise DataError(f"{p}:{i}: 'prompt' must be a string, got {type(prompt).__name__}")
        pairs.append(Pair(obj["positive"], obj["negative"], prompt))
    if not pairs:
        raise DataError(f"pair file {str(p)!r} holds no pairs: expected at least one JSONL line")
    return pairs, hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class SteeringVector:
    """A steering direction at one hook, with what it was computed from."""

    vector: np.ndarray
    model: str
    hook: str
    position: str
    method: str
    n_pairs: int
    data_sha256: str = ""
    provenance: Mapping[str, Any] = field(default_factory=dict)
    #: (n_pairs, d) positive-minus-negative activations, kept to draw the shuffled-label null
    pair_differences: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))


def _side_vectors(model: Any, texts: Sequence[str], prompts: Sequence[str], hooks: Sequence[str], position: str,
                  batch_size: int) -> dict[str, np.ndarray]:
    """One vector per text at each hook, read by the position rule (prompt tokens come first)."""
    from .activations import bos_ids, forward_rows
    from .hooks import check_hooks

    hooks = check_hooks(model, hooks)
    tok = model.tokenizer
    head = bos_ids(model)
    d = int(model.cfg.d_model)
    out = {h: np.empty((len(texts), d), dtype=np.float64) for h in hooks}
    for b in range(0, len(texts), batch_size):
        rows, spans = [], []
        for text, prompt in zip(texts[b : b + batch_size], prompts[b : b + batch_size]):
            pids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            aids = tok(text, add_special_tokens=False)["input_ids"]
            if not aids:
                raise DataError(f"a text of the pair file tokenizes to nothing: {text!r}; give each side some text")
            ids = head + pids + aids
            # "answer": the side's own tokens; "mean": every token after the start token, prompt included
            start = len(head) + (len(pids) if position == "answer" else 0)
            spans.append((start, len(ids)))
            rows.append(ids)
        acts = forward_rows(model, rows, hooks)
        for h in hooks:
            a = acts[h].double().cpu().numpy()
            for r, (s, e) in enumerate(spans):
                out[h][b + r] = a[r, e - 1] if position == "last" else a[r, s:e].mean(0)
    return out


def compute_vectors(model: Any, pairs: Sequence[Pair], hooks: Sequence[str], position: str = DEFAULT_POSITION,
                    method: str = "mean_diff", model_name: str = "", data_sha256: str = "",
                    batch_size: int = 16) -> dict[str, SteeringVector]:
    """A steering vector at each hook from contrastive pairs (difference of means, or first PC)."""
    if position not in POSITIONS:
        raise ConfigError(f"unknown position rule {position!r}: expected one of {', '.join(POSITIONS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    if not pairs:
        raise DataError("no pairs: expected at least one positive/negative pair")
    if position == "answer" and any(not p.prompt for p in pairs):
        raise ConfigError("position rule 'answer' reads the answer after a prompt, but some pairs have no 'prompt'; "
                          "use --position last or mean, or give every pair a prompt")
    if method == "pca" and len(pairs) < 2:
        raise DataError("method 'pca' needs at least 2 pairs")
    prompts = [p.prompt for p in pairs]
    pos = _side_vectors(model, [p.positive for p in pairs], prompts, hooks, position, batch_size)
    neg = _side_vectors(model, [p.negative for p in pairs], prompts, hooks, position, batch_size)
    out = {}
    for h in pos:
        diff = pos[h] - neg[h]
        mean = diff.mean(0)
        if method == "mean_diff":
            v = mean
        else:
            _, _, vt = np.linalg.svd(diff, full_matrices=False)  # uncentred: the shared direction dominates
            u = vt[0] / np.linalg.norm(vt[0])
            proj = float(mean @ u)
            v = u * proj  # the sign of proj turns u towards the mean difference
        out[h] = SteeringVector(v.astype(np.float32), model_name, h, position, method, len(pairs), data_sha256,
                                pair_statistics(diff), diff.astype(np.float32))
    return out


def pair_statistics(diff: np.ndarray, n_flips: int = 200, seed: int = 0) -> dict[str, float]:
    """How consistently the pairs point one way, beside pairs with random signs.

    ``held_out_pair_accuracy``: the share of pairs whose difference has a positive projection on
    the mean difference of the other pairs (leave-one-out; 0.5 by chance).
    ``random_sign_norm``: the norm of the mean difference after flipping each pair's sign at random
    (mean over ``n_flips``), the size a vector has when the pairs share no direction.
    """
    n = len(diff)
    total = diff.sum(0)
    stats = {"mean_pair_difference_norm": float(np.linalg.norm(total / n)), "n_pairs": n}
    if n >= 2:
        loo = (total[None, :] - diff) / (n - 1)
        stats["held_out_pair_accuracy"] = float(np.mean(np.einsum("ij,ij->i", diff, loo) > 0))
        unit = total / max(np.linalg.norm(total), 1e-12)
        stats["mean_cosine_with_vector"] = float(np.mean(diff @ unit / np.maximum(np.linalg.norm(diff, axis=1), 1e-12)))
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_flips, n))
        stats["random_sign_norm"] = float(np.linalg.norm(signs @ diff / n, axis=1).mean())
    return stats


def vectors_bytes(vectors: Mapping[str, SteeringVector]) -> bytes:
    """The safetensors file of some vectors (one tensor per hook) with their metadata."""
    from safetensors.numpy import save as st_save

    if not vectors:
        raise DataError("no vectors to save")
    first = next(iter(vectors.values()))
    meta = {"format": FORMAT, "model": first.model, "position": first.position, "method": first.method,
            "n_pairs": str(first.n_pairs), "data_sha256": first.data_sha256,
            "provenance": json.dumps({h: dict(v.provenance) for h, v in vectors.items()})}
    tensors = {h: np.ascontiguousarray(v.vector, dtype=np.float32) for h, v in vectors.items()}
    tensors.update({DIFFS + h: np.ascontiguousarray(v.pair_differences, dtype=np.float32)
                    for h, v in vectors.items() if v.pair_differences is not None})
    return st_save(tensors, metadata=meta)


def save_vectors(vectors: Mapping[str, SteeringVector], path: str | Path, replace: bool = False) -> Path:
    """Write vectors and their metadata to a safetensors file, atomically."""
    from .errors import OutputExistsError

    path = Path(path)
    if path.exists() and not replace:
        raise OutputExistsError(f"{str(path)!r} already exists: choose another path or pass --force to replace it")
    _atomic.write_bytes(path, vectors_bytes(vectors))
    return path


def load_vectors(path: str | Path) -> dict[str, SteeringVector]:
    """Vectors saved by :func:`save_vectors`, by hook."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"steering vector file {str(p)!r} does not exist: expected the vectors.safetensors that "
                        "'geomsteer steer compute' writes")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file
        raise DataError(f"{str(p)!r} is not a steering vector file written by geomsteer ({type(e).__name__}): expected "
                        "the vectors.safetensors that 'geomsteer steer compute' writes") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{str(p)!r} is not a geomsteer steering vector file (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    prov = json.loads(meta.get("provenance", "{}"))
    from .hooks import layer_of

    diffs = {k[len(DIFFS):]: tensors.pop(k) for k in list(tensors) if k.startswith(DIFFS)}
    tensors = dict(sorted(tensors.items(), key=lambda kv: (layer_of(kv[0]), kv[0])))  # safetensors sorts by name
    return {h: SteeringVector(v, meta["model"], h, meta["position"], meta["method"], int(meta["n_pairs"]),
                              meta.get("data_sha256", ""), prov.get(h, {}), diffs.get(h)) for h, v in tensors.items()}


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

    from .hooks import check_hooks

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


# --------------------------------------------------------------------------------------------
# Evaluation prompts, target tokens, generation, side effects


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt and the next tokens that count as the positive and the negative outcome."""

    prompt: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def load_eval(path: str | Path) -> tuple[list[EvalPrompt], str]:
    """Evaluation prompts from JSONL: ``{"prompt": ..., "positive": [" good", ...], "negative": [...]}``.

    ``positive`` and ``negative`` are target strings (one string or a list); each counts by its
    first token. Returns the prompts and the file's sha256.
    """
    from .resources import steering_file

    p = steering_file(path)
    if not p.is_file():
        raise DataError(f"evaluation file {str(p)!r} does not exist: expected a JSONL file of "
                        '{"prompt": ..., "positive": [...], "negative": [...]} objects, or a shipped set: '
                        "sentiment_eval, animal_plant_eval")
    raw = p.read_bytes()
    from .corpus import jsonl_objects

    items = []
    for i, obj in jsonl_objects(raw.decode("utf-8", errors="replace"), p):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj.get("prompt"):
            raise DataError(f"{p}:{i}: expected an object with a non-empty string 'prompt' and target lists "
                            "'positive' and 'negative'")
        sides = []
        for key in ("positive", "negative"):
            v = obj.get(key)
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not v or not all(isinstance(t, str) and t for t in v):
                raise DataError(f"{p}:{i}: {key!r} must be a non-empty string or list of non-empty strings, "
                                f"got {obj.get(key)!r}")
            sides.append(tuple(v))
        items.append(EvalPrompt(obj["prompt"], sides[0], sides[1]))
    if not items:
        raise DataError(f"evaluation file {str(p)!r} holds no prompts: expected at least one JSONL line")
    return items, hashlib.sha256(raw).hexdigest()


def target_ids(model: Any, items: Sequence[EvalPrompt]) -> list[tuple[list[int], list[int]]]:
    """Per prompt, the first token ids of its positive and negative targets (distinct sets)."""
    tok = model.tokenizer
    cache: dict[str, int] = {}

    def first(t: str) -> int:
        if t not in cache:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            if not ids:
                raise DataError(f"target {t!r} tokenizes to nothing: give targets with at least one token, such as \" good\"")
            cache[t] = ids[0]
        return cache[t]

    out = []
    for it in items:
        pos = sorted({first(t) for t in it.positive})
        neg = sorted({first(t) for t in it.negative})
        both = set(pos) & set(neg)
        if both:
            raise DataError(f"prompt {it.prompt!r}: positive and negative targets share the first token "
                            f"{tok.decode([min(both)])!r}; targets count by their first token, so make them differ there")
        out.append((pos, neg))
    return out


def _logits_at_last(model: Any, rows: Sequence[Sequence[int]]) -> Any:
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
        if not _unembeds_itself(model):
            return model(ids, attention_mask=mask)[where].float()
        return _unembed_rows(model, model(ids, attention_mask=mask, stop_at_layer=model.cfg.n_layers)[where])


def _unembeds_itself(model: Any) -> bool:
    from transformer_lens import HookedTransformer

    return isinstance(model, HookedTransformer)


def target_logodds(model: Any, items: Sequence[EvalPrompt], batch_size: int = 16,
                   ids: Sequence[tuple[list[int], list[int]]] | None = None) -> np.ndarray:
    """Per prompt: (log-odds, log p(positive set), log p(negative set)) of the next token, shape (n, 3).

    A set's log-probability is the logsumexp of its tokens' log-probabilities; the log-odds is
    their difference. Runs under whatever hooks are active (e.g. inside :func:`steering`).
    """
    import torch

    from .activations import bos_ids

    ids = ids if ids is not None else target_ids(model, items)
    head = bos_ids(model)
    tok = model.tokenizer
    out = np.empty((len(items), 3))
    for b in range(0, len(items), batch_size):
        rows = [head + tok(it.prompt, add_special_tokens=False)["input_ids"] for it in items[b : b + batch_size]]
        logp = torch.log_softmax(_logits_at_last(model, rows), -1)
        for r, (pos, neg) in enumerate(ids[b : b + batch_size]):
            lp = float(torch.logsumexp(logp[r, pos], 0))
            ln = float(torch.logsumexp(logp[r, neg], 0))
            out[b + r] = (lp - ln, lp, ln)
    return out


def generate(model: Any, prompts: Sequence[str], max_new_tokens: int = 32,
             vector: SteeringVector | np.ndarray | None = None, alpha: float = 0.0, hook: str | None = None,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 8) -> list[str]:
    """Continue each prompt, steered by ``alpha * vector`` at every position after the start token.

    Greedy at ``temperature`` 0, else sampled (seeded). Each step runs the whole sequence (no key-
    value cache), so the vector reaches the prompt and every new token alike; rows are right-padded
    and each reads its own last token. Returns the new text of each prompt.
    """
    import torch

    from .activations import bos_ids

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
                last = _logits_at_last(model, [cur[i] for i in live])
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


class NeutralText:
    """Token rows of neutral texts and the unsteered model's next-token log-probabilities on them.

    :meth:`kl` is the mean over real positions after the start token of KL(unsteered || current),
    where "current" is the model under whatever hooks are active: the side effect of steering.
    """

    def __init__(self, model: Any, texts: Sequence[str], max_tokens: int = 32, batch_size: int = 8) -> None:
        import torch

        from .activations import bos_ids

        if not texts:
            raise DataError("no neutral texts: expected at least one text to measure side effects on")
        tok = model.tokenizer
        head = bos_ids(model)
        self.start = len(head)
        self.batches = []
        self.n_positions = 0
        for b in range(0, len(texts), batch_size):
            rows = [head + tok(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts[b : b + batch_size]]
            lengths = torch.as_tensor([len(r) for r in rows])
            ids = torch.full((len(rows), int(lengths.max())), tok.pad_token_id or 0, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.as_tensor(r)
            pos = torch.arange(ids.shape[1])[None, :]
            mask = pos < lengths[:, None]
            valid = mask & (pos >= self.start)
            ref = torch.log_softmax(logits_at(model, ids, mask.long(), valid), -1)
            p_ref = ref.exp()
            # KL(p || q) = sum p log p - sum p log q: the first term is fixed, computed once
            self.batches.append((ids, mask, valid, p_ref, float((p_ref * ref).sum(dtype=torch.float64))))
            del ref
            self.n_positions += int(valid.sum())

    def kl(self, model: Any) -> float:
        import torch

        total = 0.0
        for ids, mask, valid, p_ref, neg_entropy in self.batches:
            cur = torch.log_softmax(logits_at(model, ids, mask.long(), valid), -1)
            total += neg_entropy - float((p_ref * cur).sum(dtype=torch.float64))
        return total / max(self.n_positions, 1)


def random_direction(v: np.ndarray, seed: int) -> np.ndarray:
    """An isotropic random direction with the norm of ``v``.

    A contrast for generations only: in an anisotropic residual stream it is off-distribution, so
    the statistics use :func:`shuffled_label_vectors` and :func:`covariance_directions` instead."""
    r = np.random.default_rng(seed).standard_normal(np.asarray(v).shape)
    return (r / np.linalg.norm(r) * np.linalg.norm(v)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Null vectors, and the target log-odds under many vectors at once


def shuffled_label_vectors(vector: SteeringVector, n: int, seed: int = 0) -> np.ndarray:
    """``n`` vectors computed like ``vector`` from its own pairs with labels swapped at random, (n, d).

    Each draw gives every pair a random sign (positive and negative exchanged), then applies the
    vector's method: the mean of the signed differences, or, for ``pca``, the first principal
    direction of the uncentred differences (which sign flips leave unchanged) scaled by the signed
    mean's projection on it. Draws keep the pairs, their number and the method; only the labels'
    agreement is gone.
    """
    D = vector.pair_differences
    if D is None:
        raise DataError(f"the vector at {vector.hook} carries no pair differences, so its shuffled-label null cannot be "
                        "drawn; recompute the vectors with 'geomsteer steer compute' (files written before geomsteer "
                        "0.5 lack them)")
    D = np.asarray(D, dtype=np.float64)
    signs = np.random.default_rng([seed, 0x51C5]).choice([-1.0, 1.0], size=(int(n), len(D)))
    M = signs @ D / len(D)
    if vector.method == "pca":
        u = np.linalg.svd(D, full_matrices=False)[2][0]
        M = (M @ u)[:, None] * u[None, :]
    return M.astype(np.float32)


def covariance_directions(X: np.ndarray, norm: float, n: int, seed: int = 0) -> np.ndarray:
    """``n`` directions drawn from N(0, cov(X)), each scaled to ``norm``, (n, d).

    ``(X - mean)^T g`` with ``g ~ N(0, I)`` over the rows of ``X`` has exactly the rows'
    covariance (up to scale), so the covariance matrix is never formed. In a residual stream with
    a few massive dimensions these directions point where activations actually vary, unlike
    isotropic ones."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) < 2:
        raise DataError(f"covariance directions need at least 2 activation rows, got shape {X.shape}")
    Xc = X - X.mean(0)
    G = np.random.default_rng([seed, 0xC0F]).standard_normal((int(n), len(X)))
    R = G @ Xc
    R *= float(norm) / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-30)
    return R.astype(np.float32)


def _unembed_rows(model: Any, resid: Any) -> Any:
    """Float32 logits of final-residual rows (n, d_model) of a HookedTransformer."""
    import torch

    if model.cfg.normalization_type is not None:
        resid = model.ln_final(resid[:, None])[:, 0]
    logits = resid @ model.W_U + model.b_U
    cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
    return (cap * torch.tanh(logits / cap) if cap > 0 else logits).float()


class SteeredTargets:
    """Target log-odds of evaluation prompts under many steering vectors at one hook.

    ``SteeredTargets(model, items, hook)(vectors, alpha)`` returns an array (m, n_prompts, 3) of
    what :func:`target_logodds` gives under ``steering(model, v, alpha, hook, start=<after the
    start token>)`` for each of the m vectors. For a HookedTransformer and a
    ``blocks.<k>.hook_resid_post`` hook the prompts run up to block k once; each vector is added
    to that residual and only the later blocks run, many vectors to a batch. Other models and
    hooks take the plain path. ``X`` holds the unsteered activations at the hook on the prompts'
    tokens after the start token (for :func:`covariance_directions`).
    """

    def __init__(self, model: Any, items: Sequence[EvalPrompt], hook: str, batch_size: int = 16,
                 ids: Sequence[tuple[list[int], list[int]]] | None = None, max_rows: int = 128) -> None:
        import re

        import torch

        from .activations import bos_ids, forward_rows
        from .hooks import check_hooks

        check_hooks(model, [hook])
        self.model, self.items, self.hook, self.batch_size = model, list(items), hook, batch_size
        self.ids = list(ids) if ids is not None else target_ids(model, items)
        self.head = bos_ids(model)
        tok = model.tokenizer
        self.rows = [self.head + tok(it.prompt, add_special_tokens=False)["input_ids"] for it in self.items]
        m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
        self.fast = bool(m) and _unembeds_itself(model)
        self.max_rows = max(int(max_rows), len(self.rows))
        n = len(self.rows)
        if self.fast:
            self.layer = int(m.group(1))  # type: ignore[union-attr]
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            self.lengths = torch.as_tensor([len(r) for r in self.rows])
            L = int(self.lengths.max())
            ids_t = torch.full((n, L), pad, dtype=torch.long)
            for i, r in enumerate(self.rows):
                ids_t[i, : len(r)] = torch.as_tensor(r)
            self.mask = (torch.arange(L)[None, :] < self.lengths[:, None]).long()
            with torch.no_grad():
                self.resid = model(ids_t, attention_mask=self.mask, stop_at_layer=self.layer + 1)
            acts = self.resid.float().numpy()
        else:
            acts = forward_rows(model, self.rows, [hook])[hook].float().cpu().numpy()
        self.X = np.concatenate([acts[r, len(self.head) : len(row)] for r, row in enumerate(self.rows)])
        width = max(max(len(p), len(q)) for p, q in self.ids)

        def padded(sets: list[list[int]]) -> tuple[Any, Any]:  # ids padded with a repeat, masked out by -inf
            idx = torch.as_tensor([t + [t[0]] * (width - len(t)) for t in sets])
            off = torch.as_tensor([[0.0] * len(t) + [-np.inf] * (width - len(t)) for t in sets], dtype=torch.float64)
            return idx, off

        self.pos, self.pos_off = padded([p for p, _ in self.ids])
        self.neg, self.neg_off = padded([q for _, q in self.ids])

    def __call__(self, vectors: np.ndarray, alpha: float) -> np.ndarray:
        V = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if not self.fast or alpha == 0:
            if alpha == 0:
                base = target_logodds(self.model, self.items, self.batch_size, self.ids)
                return np.repeat(base[None], len(V), axis=0)
            out = []
            for v in V:
                with steering(self.model, v, alpha, self.hook, start=len(self.head)):
                    out.append(target_logodds(self.model, self.items, self.batch_size, self.ids))
            return np.stack(out)
        return self._fast(V, float(alpha))

    def _fast(self, V: np.ndarray, alpha: float) -> np.ndarray:
        import torch

        model, n = self.model, len(self.rows)
        out = np.empty((len(V), n, 3))
        per = max(1, self.max_rows // n)
        start = len(self.head)
        rows = torch.arange(n)
        with torch.no_grad():
            for c in range(0, len(V), per):
                Vc = torch.as_tensor(alpha * V[c : c + per]).to(self.resid.dtype)
                mc = len(Vc)
                r = self.resid.unsqueeze(0).repeat(mc, 1, 1, 1)
                r[:, :, start:, :] += Vc[:, None, None, :]
                r = r.reshape(mc * n, *self.resid.shape[1:])
                res = model(r, start_at_layer=self.layer + 1, stop_at_layer=model.cfg.n_layers,
                            attention_mask=self.mask.repeat(mc, 1))
                last = res.reshape(mc, n, *res.shape[1:])[:, rows, self.lengths - 1]  # (mc, n, d)
                logits = _unembed_rows(model, last.reshape(mc * n, -1)).reshape(mc, n, -1).double()
                lse = torch.logsumexp(logits, -1)
                lp = torch.logsumexp(logits.gather(-1, self.pos.expand(mc, -1, -1)) + self.pos_off, -1) - lse
                ln = torch.logsumexp(logits.gather(-1, self.neg.expand(mc, -1, -1)) + self.neg_off, -1) - lse
                out[c : c + mc] = torch.stack([lp - ln, lp, ln], -1).numpy()
        return out
