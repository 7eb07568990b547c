"""The model jobs a backend runs (:meth:`geomsteer.backend.Backend.map_model`): each takes the
loaded model first, then picklable arguments, and returns numpy arrays or plain data."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

__all__ = ["unit_batches", "extract_shard", "shape", "unit_plan", "words_in_text"]


def unit_batches(model: Any, pieces: Sequence[Sequence[int]], hooks: Sequence[str], rule: str, prefix: str,
                 batch_size: int) -> dict[str, np.ndarray]:
    """Representations of already-tokenized units, in the given order and batches
    (:func:`geomsteer.activations.unit_activations` with its tokenizing done by the caller)."""
    from .activations import _unit_rows

    return _unit_rows(model, pieces, hooks, rule, prefix, batch_size, progress=False, description="")


def extract_shard(model: Any, batches: Sequence[dict[str, np.ndarray]], hooks: Sequence[str], out: str, name: str,
                  model_name: str, keep_bos: bool, dtype: str) -> dict[str, Any]:
    """Run the planned batches of one shard and write it (atomically) as ``out/name``; returns its
    manifest entry (with the sha256 of the file written)."""
    from .activations import _write_shard, batch_activations

    fault = os.environ.get("GEOMSTEER_FAULT_KILL_SHARD")  # the tests' injected failure: "dir/shard name:marker"
    if fault:
        shard, marker = fault.split(":", 1)
        if os.path.join(out, name).endswith(shard) and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker process dies as if killed; the backend must retry the job
    acts = [batch_activations(model, b, hooks, keep_bos, dtype) for b in batches]
    return _write_shard(out, name, acts, model_name, int(batches[-1]["doc_end"]))


def shape(model: Any) -> dict[str, int]:
    """The model's layer count, width and vocabulary size."""
    return {"n_layers": int(model.cfg.n_layers), "d_model": int(model.cfg.d_model), "d_vocab": int(model.cfg.d_vocab)}


def unit_plan(model: Any, units: Sequence[str], hooks: Sequence[str], rule: str, prefix: str, max_tokens: int):
    """:func:`geomsteer.activations.unit_plan` (the hooks are checked against the model first)."""
    from .activations import check_hooks, unit_plan as plan

    check_hooks(model, hooks)
    return plan(model, units, rule, prefix, max_tokens)


def words_in_text(model: Any, texts: Sequence[str], hooks: Sequence[str]):
    """:func:`geomsteer.activations.word_activations_in_text` (no progress bar)."""
    from .activations import word_activations_in_text

    return word_activations_in_text(model, texts, hooks, progress=False)
