"""The unembedding (output embedding) matrix of a model, read without running it, and cached."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import _atomic
from .._progress import step
from .load import load_hf_model, load_tokenizer
from .registry import ResolvedModel, resolve
from .gguf import CACHE_FORMAT, MANIFEST, cache_dir


@dataclass(frozen=True)
class Unembedding:
    """A model's unembedding matrix ``gamma`` (vocab, d_model) and its vocabulary."""

    gamma: np.ndarray
    vocab: dict[str, int]
    model: str
    tokenizer_name: str
    provenance: dict
    final_norm_scale: np.ndarray | None = None  # elementwise scale of the final norm, when found

    @property
    def id_to_token(self) -> list[str]:
        out = [""] * self.gamma.shape[0]
        for tok, i in self.vocab.items():
            if i < len(out):
                out[i] = tok
        return out


def load_unembedding(model: str | ResolvedModel, dtype: str = "float32", device: str = "cpu") -> Unembedding:
    """Read the output embedding (unembedding) matrix of a model without running it.

    Rows past the tokenizer's vocabulary (padding some models add to the matrix) are dropped.
    The matrix is returned as float32 (vocab, d_model), unprocessed (no layer-norm folding).
    """
    r = model if isinstance(model, ResolvedModel) else resolve(model)
    key = _unembedding_key(r, dtype) if device == "cpu" else None
    cached = cache_dir() / "unembeddings" / key if key else None
    with step(f"Loading the unembedding of {r.name}"):
        meta = _cached_meta(cached)
        if meta is not None and "tokenizer" in meta and (cached / "vocab.json").is_file():
            # a warm run reads the vocabulary beside the matrix: loading the tokenizer takes ~10 s
            vocab = json.loads((cached / "vocab.json").read_text(encoding="utf-8"))
            tok_name = meta["tokenizer"]
        else:
            tok = load_tokenizer(r)
            vocab = dict(tok.get_vocab())
            tok_name = type(tok).__name__
        if meta is not None:
            gamma = np.load(cached / "gamma.npy", mmap_mode="r")
            scale = np.load(cached / "scale.npy") if (cached / "scale.npy").is_file() else None
            if "tokenizer" not in meta:  # written before the vocabulary was kept: add it
                _save_unembedding(cached, np.asarray(gamma), scale, r, vocab, tok_name)
                gamma = np.load(cached / "gamma.npy", mmap_mode="r")
        else:
            hf = load_hf_model(r, dtype=dtype, device=device)
            W = hf.get_output_embeddings().weight.detach().float().cpu().numpy()
            n = max(vocab.values()) + 1
            gamma = np.ascontiguousarray(W[: min(n, W.shape[0])])
            scale = _final_norm_scale(hf)
            del hf
            if cached is not None:
                _save_unembedding(cached, gamma, scale, r, vocab, tok_name)
    prov = {**r.provenance, "d_model": int(gamma.shape[1]), "vocab_size": int(gamma.shape[0]), "tokenizer": tok_name}
    return Unembedding(gamma, vocab, r.name, tok_name, prov, scale)


def _cached_meta(cached: Path | None) -> dict | None:
    if cached is None or not (cached / "meta.json").is_file():
        return None
    try:
        return json.loads((cached / "meta.json").read_text())
    except ValueError:
        return None


def _unembedding_key(r: ResolvedModel, dtype: str) -> str | None:
    """A cache key for a model's unembedding: its files' checksums (from the model cache's
    manifest) and the dtype. Models outside geomsteer's cache have no manifest and are not cached."""
    manifest = Path(r.path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError):
        return None
    import hashlib

    text = json.dumps({"files": files, "dtype": dtype, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _save_unembedding(final: Path, gamma: np.ndarray, scale: np.ndarray | None, r: ResolvedModel,
                      vocab: dict[str, int], tokenizer_name: str) -> None:
    """Keep the unembedding as .npy and the vocabulary as JSON beside the model cache: a warm run
    maps them instead of loading the model and its tokenizer."""
    with _atomic.staged_dir(final, replace=True) as tmp:
        np.save(tmp / "gamma.npy", gamma)
        if scale is not None:
            np.save(tmp / "scale.npy", scale)
        _atomic.write_text(tmp / "vocab.json", json.dumps(vocab, ensure_ascii=False))
        _atomic.write_text(tmp / "meta.json", json.dumps({"model": r.name, "shape": list(gamma.shape),
                                                          "tokenizer": tokenizer_name}))


def _final_norm_scale(hf: Any) -> np.ndarray | None:
    """The elementwise scale of a Hugging Face model's final layer norm / RMS norm (see :func:`norm_scale`)."""
    import torch

    base = getattr(hf, "base_model", hf)
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm", "final_layernorm")
                 if isinstance(getattr(base, n, None), torch.nn.Module)), None)
    return None if norm is None else norm_scale(norm, hf.get_output_embeddings().weight.shape[1])


def norm_scale(norm: Any, d: int) -> np.ndarray:
    """The elementwise scale of a LayerNorm or RMSNorm module, measured by probing it.

    For a zero-mean, unit-RMS vector v without zeros, a LayerNorm or RMSNorm N gives
    N(v) - N(-v) = 2 v * scale, so scale = (N(v) - N(-v)) / (2 v) whatever the parametrization
    (Gemma's 1 + weight, Llama's weight, GPT-2's LayerNorm).
    """
    import torch

    v = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0)
    if d % 2:
        v[-1] = 0.5  # keep the mean near zero; the formula below divides by v elementwise
        v = v - v.mean()
        v = v / v.pow(2).mean().sqrt()
    p = next(norm.parameters(), None)
    v = v.to(p.dtype if p is not None else torch.float32)
    with torch.no_grad():
        scale = (norm(v[None]) - norm(-v[None]))[0] / (2 * v)
    return scale.float().numpy()


def unembedding_for(model: Any, resolved: ResolvedModel) -> Unembedding:
    """The unembedding of a loaded model: from geomsteer's cache when it holds it, else read from the loaded
    model itself (its ``W_U`` and the probed scale of its final norm), so the model's files are not loaded twice."""
    if resolved.path is not None:
        key = _unembedding_key(resolved, "float32")
        if _cached_meta(cache_dir() / "unembeddings" / key if key else None) is not None or not hasattr(model, "W_U"):
            return load_unembedding(resolved)
    return unembedding_from_model(model, resolved)


def unembedding_from_model(model: Any, resolved: ResolvedModel) -> Unembedding:
    """The unembedding rows (vocab, d_model) and final-norm scale of a TransformerLens model with raw weights."""
    W = model.W_U.detach().float().cpu().numpy().T
    vocab = dict(model.tokenizer.get_vocab())
    gamma = np.ascontiguousarray(W[: min(max(vocab.values()) + 1, W.shape[0])])
    ln = getattr(model, "ln_final", None)
    scale = norm_scale(ln, gamma.shape[1]) if ln is not None and next(ln.parameters(), None) is not None else None
    prov = {**resolved.provenance, "d_model": int(gamma.shape[1]), "vocab_size": int(gamma.shape[0]),
            "tokenizer": type(model.tokenizer).__name__, "unembedding": "read from the loaded model's W_U"}
    return Unembedding(gamma, vocab, resolved.name, type(model.tokenizer).__name__, prov, scale)
