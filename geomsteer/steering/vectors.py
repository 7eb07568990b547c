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

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import _atomic
from ..errors import ConfigError, DataError


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
    from ..resources import read_steering_file

    p, raw = read_steering_file(path, "pair", '{"positive": ..., "negative": ...}', "sentiment, formality, animal_plant")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"pair file {str(p)!r} is not UTF-8 text") from None
    from ..corpus import jsonl_objects

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
    from ..activations import bos_ids, forward_rows
    from ..hooks import check_hooks

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
    from ..errors import OutputExistsError

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
    from ..hooks import layer_of

    diffs = {k[len(DIFFS):]: tensors.pop(k) for k in list(tensors) if k.startswith(DIFFS)}
    tensors = dict(sorted(tensors.items(), key=lambda kv: (layer_of(kv[0]), kv[0])))  # safetensors sorts by name
    return {h: SteeringVector(v, meta["model"], h, meta["position"], meta["method"], int(meta["n_pairs"]),
                              meta.get("data_sha256", ""), prov.get(h, {}), diffs.get(h)) for h, v in tensors.items()}
