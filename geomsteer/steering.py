"""Contrastive steering vectors: the pair format, computing vectors, saving them, applying them.

Pairs are JSONL, one object per line: ``{"positive": ..., "negative": ...}`` (two texts), or the
multiple-choice form of contrastive activation addition, ``{"prompt": ..., "positive": "A",
"negative": "B"}``, where each side is ``prompt + answer`` and the vector is read at the answer.

A vector at a hook is the mean over pairs of (positive - negative) activations, read by a
position rule: ``last`` (the last token), ``mean`` (the mean over the text's tokens) or
``answer`` (the mean over the answer's tokens; needs ``prompt``). ``method="pca"`` takes instead
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

__all__ = ["Pair", "load_pairs", "SteeringVector", "compute_vectors", "save_vectors", "load_vectors", "steering",
           "POSITIONS", "METHODS"]

POSITIONS = ("last", "mean", "answer")
METHODS = ("mean_diff", "pca")
FORMAT = "geomsteer.steering/1"


@dataclass(frozen=True)
class Pair:
    positive: str
    negative: str
    prompt: str = ""


def load_pairs(path: str | Path) -> tuple[list[Pair], str]:
    """Pairs from a JSONL file and the file's sha256. Errors name the line and what was expected."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pair file {str(p)!r} does not exist: expected a JSONL file of "
                        '{"positive": ..., "negative": ...} objects')
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

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.vector))


def _side_vectors(model: Any, texts: Sequence[str], prompts: Sequence[str], hooks: Sequence[str], position: str,
                  batch_size: int) -> dict[str, np.ndarray]:
    """One vector per text at each hook, read by the position rule (prompt tokens come first)."""
    from .activations import _bos, _forward_rows, check_hooks

    hooks = check_hooks(model, hooks)
    tok = model.tokenizer
    head = _bos(model)
    d = int(model.cfg.d_model)
    out = {h: np.empty((len(texts), d), dtype=np.float64) for h in hooks}
    for b in range(0, len(texts), batch_size):
        rows, spans = [], []
        for text, prompt in zip(texts[b : b + batch_size], prompts[b : b + batch_size]):
            pids = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
            aids = tok(text, add_special_tokens=False)["input_ids"]
            if not aids:
                raise DataError(f"a text of the pair file tokenizes to nothing: {text!r}")
            ids = head + pids + aids
            start = len(head) + (len(pids) if position == "answer" else 0)
            if position == "mean":
                start = len(head)
            spans.append((start, len(ids)))
            rows.append(ids)
        acts = _forward_rows(model, rows, hooks)
        for h in hooks:
            a = acts[h].double().cpu().numpy()
            for r, (s, e) in enumerate(spans):
                out[h][b + r] = a[r, e - 1] if position == "last" else a[r, s:e].mean(0)
    return out


def compute_vectors(model: Any, pairs: Sequence[Pair], hooks: Sequence[str], position: str = "last",
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
                                {"mean_pair_difference_norm": float(np.linalg.norm(mean))})
    return out


def save_vectors(vectors: Mapping[str, SteeringVector], path: str | Path, replace: bool = False) -> Path:
    """Write vectors (one tensor per hook) and their metadata to a safetensors file, atomically."""
    from safetensors.numpy import save as st_save

    from .errors import OutputExistsError

    path = Path(path)
    if path.exists() and not replace:
        raise OutputExistsError(f"{str(path)!r} already exists: choose another path or pass --force to replace it")
    if not vectors:
        raise DataError("no vectors to save")
    first = next(iter(vectors.values()))
    meta = {"format": FORMAT, "model": first.model, "position": first.position, "method": first.method,
            "n_pairs": str(first.n_pairs), "data_sha256": first.data_sha256,
            "provenance": json.dumps({h: dict(v.provenance) for h, v in vectors.items()})}
    blob = st_save({h: np.ascontiguousarray(v.vector, dtype=np.float32) for h, v in vectors.items()}, metadata=meta)
    _atomic.write_bytes(path, blob)
    return path


def load_vectors(path: str | Path) -> dict[str, SteeringVector]:
    """Vectors saved by :func:`save_vectors`, by hook."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"steering vector file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # not a safetensors file
        raise DataError(f"{str(p)!r} is not a steering vector file written by geomsteer ({type(e).__name__})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{str(p)!r} is not a geomsteer steering vector file (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    prov = json.loads(meta.get("provenance", "{}"))
    return {h: SteeringVector(v, meta["model"], h, meta["position"], meta["method"], int(meta["n_pairs"]),
                              meta.get("data_sha256", ""), prov.get(h, {})) for h, v in tensors.items()}


@contextlib.contextmanager
def steering(model: Any, vector: SteeringVector | np.ndarray, alpha: float, hook: str | None = None,
             positions: str = "all", lengths: Sequence[int] | None = None) -> Iterator[None]:
    """Add ``alpha * v`` to the activation at ``hook`` for every forward pass inside the block.

    ``positions``: ``all`` (every position, new tokens of a generation included) or ``last`` (each
    row's last real token: give ``lengths``, the rows' unpadded lengths). The hook is removed on
    exit, also when the block raises.
    """
    import math

    import torch

    from .activations import check_hooks

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
            return act + dv
        out = act.clone()
        rows = torch.arange(act.shape[0])
        last = torch.as_tensor(lengths, dtype=torch.long) - 1
        out[rows, last] += dv
        return out

    with model.hooks(fwd_hooks=[(hook, add)]):
        yield
