"""The model registry: aliases, where each comes from, the cache directory, and resolving a name."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


from .. import _atomic
from .._progress import step
from ..errors import DataError, ModelNotFoundError, ModelUnavailableError
from .gguf import OFFLINE_SOURCES, build_cache, cache_provenance, is_gguf




@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: ``hf_id`` names the model on the hub and in TransformerLens."""

    alias: str
    hf_id: str
    source: str  # "hub", or the name of an offline source in OFFLINE_SOURCES
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


@dataclass(frozen=True)
class ResolvedModel:
    """A model name resolved to a local Hugging Face directory, with its provenance."""

    name: str  # what the user asked for
    path: Path  # a Hugging Face model directory on disk
    hf_id: str | None  # the hub id or None for a local model
    tl_name: str | None  # TransformerLens's official name, when it has one
    provenance: dict = field(default_factory=dict)


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
            path = build_cache(spec.alias, OFFLINE_SOURCES[spec.source],
                                {"alias": spec.alias, "hf_id": spec.hf_id, "source": spec.source})
            prov = cache_provenance(path)
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

        path = build_cache(key, copy, {"source": "gguf-file", "gguf_path": str(p.resolve())})
        return ResolvedModel(name, path, None, None, {"model": name, **cache_provenance(path)})
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"directory {name!r} is not a Hugging Face model directory: expected a config.json in it; "
                "pass a directory written by save_pretrained, an alias, or a .gguf file"
            )
        return ResolvedModel(name, p.resolve(), None, None, {"model": name, "source": "local-directory",
                                                             "path": str(p.resolve())})
    raise ModelNotFoundError(_unknown_model_message(name))
