"""Park et al.'s hierarchical concept directions in one model's unembedding, with their nulls."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from .._progress import say, step
from ..errors import ConfigError
from ..results import HierarchyLayersResult, HierarchyResult
from .common import DEFAULT_SEED

__all__ = ["hierarchy", "hierarchy_layers"]

POS = {"noun": "n", "verb": "v"}


def hierarchy(model: Any, *, pos: str = "noun", min_tokens: int = 50, seed: int = DEFAULT_SEED, null_draws: int = 4,
              baselines: bool = True, device: str = "cpu", dtype: str = "float32",
              layers: str | Sequence[int] | None = None, template: str = "",
              n_pool: int = 1000, backend: Any = "local", address: str | None = None
              ) -> HierarchyResult | HierarchyLayersResult:
    """Directions for every WordNet category in the model's whitened unembedding, tested against nulls
    that keep the tree's nesting (what ``geomsteer hierarchy`` runs).

    ``model`` is a name (see ``geomsteer models``), a local directory or GGUF file, or a model from
    :func:`geomsteer.load_model` (its unembedding is then read from the cache geomsteer keeps).

    With ``layers`` (``"all"``, ``"every:K"``, ``"0,6,12"`` or a list) the same statistics are measured in
    the residual stream after each of those blocks instead (``geomsteer hierarchy --layers``): each of
    the tree's tokens and ``n_pool`` other word tokens is read after ``start + template``, and the
    activations' own covariance takes the place of the causal inner product. Returns a
    :class:`~geomsteer.results.HierarchyLayersResult`.

    ``backend="ray"`` (``address``: a running cluster, else a local Ray instance) runs the category
    map and the null draws as Ray tasks; the numbers equal a local run's.
    """
    if layers is not None:
        if not baselines:
            raise ConfigError("the per-layer hierarchy always draws its nulls: drop --no-baselines (or baselines=False) "
                              "when giving --layers")
        return hierarchy_layers(model, layers=layers, template=template, pos=pos, min_tokens=min_tokens, seed=seed,
                                null_draws=null_draws, n_pool=n_pool, device=device, dtype=dtype, backend=backend,
                                address=address)
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
    from ..backend import get_backend

    be = get_backend(backend, address)
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
    analyzer = HierarchyAnalyzer(seed=seed, baselines=baselines, n_null_draws=null_draws, backend=be).fit(unemb, hier)
    extra = {"min_tokens": min_tokens, "pos": pos, "seed": seed, "null_draws": null_draws, "device": device,
             "dtype": dtype, "backend": be.provenance(),
             "elapsed_seconds": round(time.perf_counter() - t0, 1)}

    res = analyzer.result()

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_hierarchy_report(res, hier, out, force=force, command=command, extra=extra)

    return HierarchyResult(res, {"model": resolved.name, **extra}, write, analyzer, hier)


def word_pool(vocab: dict[str, int], marker: str, n: int, seed: int) -> np.ndarray:
    """``n`` token ids drawn at random (seeded) among the vocabulary's whole words: the word-start marker then
    three or more letters (nouns of the tree included, as the unembedding analysis's pool includes them)."""
    import re

    word = re.compile(re.escape(marker) + r"[A-Za-z]{3,}") if marker else re.compile(r"[A-Za-z]{3,}")
    cand = np.array(sorted(i for t, i in vocab.items() if word.fullmatch(t)), dtype=np.int64)
    if len(cand) == 0:
        raise ConfigError("the tokenizer has no whole-word tokens to compare categories with; expected tokens such as "
                          f"{marker or ''}house")
    rng = np.random.default_rng([seed, 0x9001])
    return np.sort(rng.choice(cand, min(n, len(cand)), replace=False))


def hierarchy_layers(model: Any, *, layers: str | Sequence[int] = "all", template: str = "", pos: str = "noun",
                     min_tokens: int = 50, seed: int = DEFAULT_SEED, null_draws: int = 4,
                     n_pool: int = 1000, device: str = "cpu", dtype: str = "float32", backend: Any = "local",
                     address: str | None = None) -> HierarchyLayersResult:
    """Park et al.'s statistics in the residual stream after each of ``layers`` (``geomsteer hierarchy --layers``);
    see :func:`hierarchy`."""
    from .. import models
    from ..activations import token_activations
    from ..analyzers.hierarchy_layers import LayerHierarchyAnalyzer
    from ..hooks import parse_layers, resid_hook
    from ..reports.hierarchy_layers import write_hierarchy_layers_report
    from ..wordnet import build_hierarchy
    from .common import stamp, with_command

    if pos not in POS:
        raise ConfigError(f"unknown part of speech {pos!r}: expected noun or verb")
    if not isinstance(min_tokens, int) or min_tokens < 1:
        raise ConfigError(f"min_tokens must be a positive integer, got {min_tokens!r}")
    if not isinstance(null_draws, int) or null_draws < 2:
        raise ConfigError(f"--null-draws must be at least 2 (a null needs a spread), got {null_draws}; "
                          "use --null-draws 2 or more (default 4)")
    if not isinstance(n_pool, int) or n_pool < 50:
        raise ConfigError(f"--pool must be at least 50 comparison tokens, got {n_pool!r}")
    models.check_device(device)
    from ..backend import get_backend

    be = get_backend(backend, address)
    t0 = time.perf_counter()
    tl, resolved = models.use_model(model, device=device, dtype=dtype)
    n_layers = int(tl.cfg.n_layers)
    chosen = parse_layers(layers, n_layers, resolved.name)
    hooks = [resid_hook(L) for L in chosen]
    vocab = dict(tl.tokenizer.get_vocab())
    with step(f"Building the WordNet {pos} hierarchy for this tokenizer"):
        hier = build_hierarchy(vocab, pos=POS[pos], min_tokens=min_tokens, tokenizer=type(tl.tokenizer).__name__)
    tree = np.unique(np.concatenate([hier.tokens(n) for n in hier.names]))
    pool = word_pool(vocab, hier.word_start, n_pool, seed)
    ids = np.union1d(tree, pool)
    say(f"  {len(hier)} categories, {len(tree)} distinct tokens, {len(pool)} comparison tokens; layers "
        f"{', '.join(map(str, chosen))}")
    acts = token_activations(tl, ids, hooks, template=template,
                             description=f"Reading {len(ids):,} tokens at {len(hooks)} layers")
    analyzer = LayerHierarchyAnalyzer(seed=seed, n_null_draws=null_draws, backend=be).fit(acts, ids, hier, pool)
    res = analyzer.result()
    res.params.update({"layers": chosen, "template": template, "pos": pos, "min_tokens": min_tokens,
                       "n_pool": n_pool})
    prov = stamp({"model": resolved.name, "model_provenance": resolved.provenance, "hooks": hooks,
                  "device": device, "dtype": dtype, "backend": be.provenance(),
                  "hierarchy": dict(hier.coverage),
                  "rows": f"each token after the start token{' and ' + repr(template) if template else ''}, read at "
                          "the token itself",
                  "pool": "whole-word tokens (word-start marker then 3+ letters) drawn at random"}, t0)

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_hierarchy_layers_report(res, with_command(prov, command), out, force=force)

    return HierarchyLayersResult(res, prov, write, analyzer, hier)
