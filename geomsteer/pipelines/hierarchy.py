"""Park et al.'s hierarchical concept directions in one model's unembedding, with their nulls."""

from __future__ import annotations

import time
from typing import Any

from .._progress import say, step
from ..errors import ConfigError
from ..results import HierarchyResult
from .common import DEFAULT_SEED

__all__ = ["hierarchy"]

POS = {"noun": "n", "verb": "v"}


def hierarchy(model: Any, *, pos: str = "noun", min_tokens: int = 50, seed: int = DEFAULT_SEED, null_draws: int = 4,
              baselines: bool = True, device: str = "cpu", dtype: str = "float32") -> HierarchyResult:
    """Directions for every WordNet category in the model's whitened unembedding, tested against nulls
    that keep the tree's nesting (what ``geomsteer hierarchy`` runs).

    ``model`` is a name (see ``geomsteer models``), a local directory or GGUF file, or a model from
    :func:`geomsteer.load_model` (its unembedding is then read from the cache geomsteer keeps).
    """
    from .. import models
    from ..analyzers.hierarchy import HierarchyAnalyzer
    from ..reports import write_hierarchy_report
    from ..types import Directions
    from ..wordnet import build_hierarchy

    if pos not in POS:
        raise ConfigError(f"unknown part of speech {pos!r}: expected noun or verb")
    if not isinstance(min_tokens, int) or min_tokens < 1:
        raise ConfigError(f"min_tokens must be a positive integer, got {min_tokens!r}")
    if baselines and (not isinstance(null_draws, int) or null_draws < 2):
        raise ConfigError(f"--null-draws must be at least 2 (a null needs a spread), got {null_draws}; "
                          "use --null-draws 2 or more (default 4)")
    models.check_device(device)
    t0 = time.perf_counter()
    if isinstance(model, (str, models.ResolvedModel)) or hasattr(model, "__fspath__"):
        resolved = model if isinstance(model, models.ResolvedModel) else models.resolve(str(model))
        emb = models.load_unembedding(resolved, dtype=dtype, device=device)  # the model itself is never run
    else:
        tl, resolved = models.use_model(model)
        emb = models.unembedding_for(tl, resolved)
    with step(f"Building the WordNet {pos} hierarchy for this tokenizer"):
        hier = build_hierarchy(emb.vocab, pos=POS[pos], min_tokens=min_tokens, tokenizer=emb.tokenizer_name)
    say(f"  {len(hier)} categories, {hier.coverage['n_distinct_tokens']} distinct tokens, "
        f"{hier.coverage['n_lemmas_dropped_multitoken']} lemmas dropped as multi-token")
    unemb = Directions(emb.gamma, emb.id_to_token, "unembed", resolved.name, emb.provenance)
    analyzer = HierarchyAnalyzer(seed=seed, baselines=baselines, n_null_draws=null_draws).fit(unemb, hier)
    extra = {"min_tokens": min_tokens, "pos": pos, "seed": seed, "null_draws": null_draws,
             "elapsed_seconds": round(time.perf_counter() - t0, 1)}

    res = analyzer.result()

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_hierarchy_report(res, hier, out, force=force, command=command, extra=extra)

    return HierarchyResult(res, {"model": resolved.name, **extra}, write, analyzer, hier)
