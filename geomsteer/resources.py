"""Files that ship inside the package: WordNet and the steering sets (read through importlib.resources)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["data_path", "steering_file", "read_steering_file", "STEERING_SETS"]

STEERING_SETS = ("sentiment", "formality", "animal_plant", "sentiment_eval", "animal_plant_eval")


def data_path(*parts: str) -> Path:
    """A path under the package's ``data/`` directory (installed wheels and source checkouts alike)."""
    root = resources.files("geomsteer").joinpath("data", *parts)
    return Path(os.fspath(root))  # geomsteer installs as plain files (no zip), so this is a real path


def steering_file(name: str | os.PathLike) -> Path:
    """A steering set: a shipped name (``sentiment``, ``sentiment_eval``, ``sentiment.jsonl``) or a file path.

    A path is returned as given (the readers say what is wrong with it)."""
    text = os.fspath(name)
    stem = text[:-6] if text.endswith(".jsonl") else text
    if stem in STEERING_SETS and not Path(text).is_file():
        return data_path("steering", f"{stem}.jsonl")
    return Path(text)


def read_steering_file(name: str | os.PathLike, kind: str, shape: str, shipped: str) -> tuple[Path, bytes]:
    """The path and bytes of a steering set (see :func:`steering_file`); a missing file says what was expected."""
    from .errors import DataError

    p = steering_file(name)
    if not p.is_file():
        raise DataError(f"{kind} file {str(p)!r} does not exist: expected a JSONL file of {shape} objects, or a "
                        f"shipped set: {shipped}")
    return p, p.read_bytes()
