"""Words under WordNet concepts read at one hook and encoded by an SAE: Mapper complexes and clusters."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from .._progress import step
from ..errors import ConfigError
from ..hooks import check_hooks
from ..results import ClusterResult, MapperResult
from .common import DEFAULT_SEED, check_null_draws, stamp, with_command

__all__ = ["mapper", "cluster", "concept_samples", "words_in_context", "mapper_of", "DEFAULT_CONCEPTS"]

DEFAULT_CONCEPTS = ("animal.n.01", "plant.n.02", "artifact.n.01")


def concept_samples(model: Any, hook: str | None, sae: Any, concepts: Sequence[str], max_words: int, seed: int,
                    prefix: str, rule: str, max_tokens: int, device: str = "cpu", dtype: str = "float32") -> dict:
    """Words under each concept through the model at ``hook`` and the SAE: activations and codes.

    ``hook`` defaults to the SAE's; ``sae`` is a directory or :func:`geomsteer.sae.load` result."""
    from .. import activations, models, saes
    from ..wordnet import concept_words

    if isinstance(concepts, str):
        concepts = [c.strip() for c in concepts.split(",") if c.strip()]
    if not concepts:
        raise ConfigError("no concepts: expected WordNet synsets such as animal.n.01,plant.n.02")
    words, labels, counts = concept_words(concepts)
    sd = saes.read_sae_dir(sae, hook=hook)
    hook = hook or sd.hook
    if not hook:
        raise ConfigError(f"the SAE at {str(sd.path)!r} does not record its hook: pass hook='blocks.L.hook_resid_post'")
    sae_dir, sae = sd.path, sd.sae
    rng = np.random.default_rng(seed)
    per = max(1, max_words // len(counts["per_concept"]))
    lab = np.asarray(labels)
    pick = []
    for c in counts["per_concept"]:
        idx = np.flatnonzero(lab == c)
        pick += sorted(rng.choice(idx, min(per, len(idx)), replace=False).tolist())
    words = [words[i] for i in pick]
    labels = [labels[i] for i in pick]
    model, resolved = models.use_model(model, device=device, dtype=dtype)
    model_name = resolved.name
    check_hooks(model, [hook])
    if sae.cfg.d_in != model.cfg.d_model:
        raise ConfigError(f"the SAE at {str(sae_dir)!r} reads vectors of size {sae.cfg.d_in}, but {model_name} has "
                          f"d_model {model.cfg.d_model}; use an SAE trained on this model")
    acts, kept, _ = activations.unit_activations(model, words, [hook], rule=rule, prefix=prefix, max_tokens=max_tokens,
                                                 description=f"{model_name}: concept words")
    words = [w for w, k in zip(words, kept) if k]
    labels = [c for c, k in zip(labels, kept) if k]
    X = acts[hook]
    with step(f"Encoding {len(X):,} words with the SAE"):
        codes = saes.encode(sae, X)
    provenance = {
        "model": model_name, "model_provenance": resolved.provenance, **models.runtime_of(model),
        "hook": hook, "sae": str(sae_dir),
        "concepts": list(counts["per_concept"]), "words_per_concept_available": counts["per_concept"],
        "ambiguous_words_dropped": counts["ambiguous_dropped"], "words_asked": len(pick),
        "words_used": len(words), "words_dropped_multitoken": int((~kept).sum()), "rule": rule, "prefix": prefix,
        "max_tokens": max_tokens, "seed": seed,
        "words_used_per_concept": {c: labels.count(c) for c in counts["per_concept"]},
    }
    return {"words": words, "labels": labels, "X": X, "codes": codes, "sae": sae, "model": model,
            "resolved": resolved, "provenance": provenance}


def mapper(model: Any, sae: Any, concepts: Sequence[str] | str = DEFAULT_CONCEPTS, *, hook: str | None = None,
           max_words: int = 3000, lens: str = "pca", features: Sequence[int] | None = None, n_components: int = 2,
           n_cubes: int = 10, overlap: float = 0.3, min_samples: int = 5, eps_scale: float = 1.0,
           n_bootstrap: int = 5, n_null: int = 20, prefix: str = "", rule: str = "last", max_tokens: int = 3,
           seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> MapperResult:
    """Mapper over the words of WordNet concepts, lens = the SAE feature space, clustering in activation space
    (what ``geomsteer mapper`` runs). ``model``: a name or loaded model; ``sae``: a directory or loaded SAE."""
    from ..analyzers.topology import MapperAnalyzer
    from ..reports import write_mapper_report

    check_null_draws(n_null)
    t0 = time.perf_counter()
    analyzer = MapperAnalyzer(lens=lens, features=features, n_components=n_components, n_cubes=n_cubes,
                              overlap=overlap, min_samples=min_samples, eps_scale=eps_scale, n_bootstrap=n_bootstrap,
                              n_null=n_null, seed=seed)
    data = concept_samples(model, hook, sae, concepts, max_words, seed, prefix, rule, max_tokens, device=device, dtype=dtype)
    with step(f"Mapper on {len(data['words']):,} words ({lens} lens of the SAE codes, {n_cubes} cubes per dimension, "
              f"{n_bootstrap} bootstrap refits, {n_null} Gaussian surrogates)"):
        analyzer.fit(data["X"], data["codes"], labels=data["labels"], names=data["words"])
    provenance = stamp(data["provenance"], t0)

    res = analyzer.result()

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_mapper_report(res, with_command(provenance, command), out, force=force)

    return MapperResult(res, provenance, write, analyzer)


def cluster(model: Any, sae: Any, concepts: Sequence[str] | str = DEFAULT_CONCEPTS, *, hook: str | None = None,
            space: str = "codes", n_clusters: int = 8, max_words: int = 3000, min_fires: int = 5,
            n_shuffles: int = 200, prefix: str = "", rule: str = "last", max_tokens: int = 3,
            seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> ClusterResult:
    """k-means over concept words (activations or SAE codes) or over the SAE features they use
    (what ``geomsteer cluster`` runs). ``model``: a name or loaded model; ``sae``: a directory or loaded SAE."""
    from .. import models
    from ..analyzers.clustering import ClusterAnalyzer
    from ..reports import write_cluster_report

    if space not in ("activations", "codes", "features"):
        raise ConfigError(f"unknown --space {space!r}: expected activations, codes or features")
    t0 = time.perf_counter()
    data = concept_samples(model, hook, sae, concepts, max_words, seed, prefix, rule, max_tokens, device=device, dtype=dtype)
    emb = models.unembedding_for(data["model"], data["resolved"])
    W_U = emb.gamma * (emb.final_norm_scale if emb.final_norm_scale is not None else 1.0)
    vocab = emb.id_to_token
    labels, names = data["labels"], data["words"]
    if space == "features":
        codes = data["codes"]
        fires = (codes > 0).sum(0)
        feats = np.flatnonzero(fires >= min_fires)
        if len(feats) < 2:
            raise ConfigError(f"only {len(feats)} SAE features fire on at least {min_fires} of the words; lower "
                              "--min-fires or use more words")
        concept_list = list(data["provenance"]["concepts"])
        lab = np.asarray(labels)
        mean_by = np.stack([codes[lab == c][:, feats].mean(0) for c in concept_list])
        labels = [concept_list[i] for i in mean_by.argmax(0)]  # the concept a feature fires on most
        names = [f"feature {f}" for f in feats]
        X = data["sae"].W_dec.detach().cpu().numpy()[feats]
        analyzer = ClusterAnalyzer(n_clusters=n_clusters, normalize=True, n_shuffles=n_shuffles, seed=seed)
        what = f"{len(feats)} SAE decoder directions (features firing on >= {min_fires} words)"
    else:
        X = data["X"] if space == "activations" else data["codes"]
        analyzer = ClusterAnalyzer(n_clusters=n_clusters, n_shuffles=n_shuffles, seed=seed)
        what = f"{len(X)} words ({'residual activations' if space == 'activations' else 'SAE codes'})"
    decoder = data["sae"].W_dec.detach().cpu().numpy() if space == "codes" else None  # codes map back to residuals
    with step(f"k-means ({n_clusters} clusters) on {what}"):
        analyzer.fit(X, labels=labels, names=names, unembedding=W_U, vocab=vocab, decoder=decoder, what=what)
    provenance = stamp({**data["provenance"], "space": space, "rows": what}, t0)

    res = analyzer.result()

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_cluster_report(res, with_command(provenance, command), out, force=force)

    return ClusterResult(res, provenance, write, analyzer)


def words_in_context(model: Any, words: Sequence[str], hook: str, templates: Sequence[str] = ("",), *,
                     rule: str = "last", max_tokens: int = 3, device: str = "cpu", dtype: str = "float32") -> tuple[np.ndarray, list[str], list[str]]:
    """Each word read after each template (``"<template> <word>"``) at ``hook``: rows (n, d), the word of each
    row and a name ``"<template> [<word>]"`` per row. Words the tokenizer splits into more than
    ``max_tokens`` tokens are left out."""
    from .. import activations, models

    if not list(words) or not list(templates):
        raise ConfigError(f"words_in_context needs words and templates, got {len(list(words))} word(s) and "
                          f"{len(list(templates))} template(s); a template may be '' (the word alone)")
    tl, resolved = models.use_model(model, device=device, dtype=dtype)
    check_hooks(tl, [hook])
    X, labels, names = [], [], []
    for t in templates:
        acts, kept, _ = activations.unit_activations(tl, list(words), [hook], rule=rule, prefix=t,
                                                     max_tokens=max_tokens, progress=False)
        used = [w for w, k in zip(words, kept) if k]
        X.append(acts[hook])
        labels += used
        names += [f"{t} [{w}]".strip() for w in used]
    if not labels:
        raise ConfigError(f"every word is split into more than {max_tokens} tokens by {resolved.name}'s tokenizer; "
                          "raise max_tokens")
    return np.concatenate(X), labels, names


def mapper_of(X: Any, codes: Any, labels: Sequence[str] | None = None, names: Sequence[str] | None = None, *,
              provenance: dict | None = None, **params: Any) -> MapperResult:
    """Mapper over any rows and their SAE codes (tokens in context, say), with the same nulls and report as
    :func:`mapper`; ``params`` are :class:`~geomsteer.analyzers.topology.MapperAnalyzer`'s. ``provenance``
    should name the ``model``, ``hook``, ``sae`` and give a ``description`` of the rows; the report shows them."""
    from ..analyzers.topology import MapperAnalyzer
    from ..reports import write_mapper_report

    known = set(MapperAnalyzer().get_params())
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"mapper_of got unknown parameter(s) {', '.join(unknown)}; MapperAnalyzer takes "
                          f"{', '.join(sorted(known))}")
    t0 = time.perf_counter()
    analyzer = MapperAnalyzer(**params)
    X = np.asarray(X)
    with step(f"Mapper on {len(X):,} rows ({analyzer.n_null} Gaussian surrogates)"):
        analyzer.fit(X, codes, labels=labels, names=names)
    prov = stamp({"model": "(given)", "hook": "(given)", "sae": "(given)", "description": "", **(provenance or {}),
                  "rows": len(X)}, t0)
    res = analyzer.result()

    def write(out, force, command):
        return write_mapper_report(res, with_command(prov, command), out, force=force)

    return MapperResult(res, prov, write, analyzer)
