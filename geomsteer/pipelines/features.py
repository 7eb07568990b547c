"""Causal experiments on SAE features (``gs.features``): dose curves, the feature graph, and steering by
features against the steering vector. What ``geomsteer features intervene | graph | compare`` runs.

Every call takes a model (name or loaded), SAEs (directories written by ``geomsteer sae train``, one per
layer: the intervention hook's and later ones), and either explicit features or a steering vector
whose decomposition supplies them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from .._progress import counter, step
from ..errors import ConfigError, DataError
from ..results import FeatureResult
from ..types import AnalysisResult
from .common import DEFAULT_SEED, sae_dirs, stamp, with_command

__all__ = ["intervene", "graph", "compare", "relations", "lab"]


def lab(model: Any, saes: Any, hook: str | None = None, eval: Any = "sentiment_eval", *, n_neutral: int = 16,
        max_tokens: int = 24, seed: int = DEFAULT_SEED, features: Sequence[int] | None = None, device: str = "cpu", dtype: str = "float32") -> tuple[Any, dict]:
    """A :class:`~geomsteer.steering.features.FeatureLab` (the model, its SAEs, the evaluation prompts and
    neutral texts) and its provenance. ``hook``: where interventions happen (default: the earliest SAE's)."""
    from .. import models
    from ..corpus import wordnet_glosses
    from ..hooks import layer_of
    from ..steering.features import FeatureLab
    from .steer import _eval_items

    by_hook = sae_dirs(saes)
    hook = hook or min(by_hook, key=layer_of)
    if hook not in by_hook:
        raise ConfigError(f"no SAE at {hook}: the SAEs given are at {', '.join(by_hook)}; give an SAE trained at the "
                          "intervention hook")
    if not any(layer_of(h) > layer_of(hook) for h in by_hook):
        raise ConfigError(f"no SAE after {hook}: give SAEs at later layers too (the effects are read there)")
    if n_neutral < 1:
        raise ConfigError(f"--neutral must be a positive number of texts, got {n_neutral}")
    widths = {sd.d_in for sd in by_hook.values()}
    if len(widths) > 1:
        raise DataError("the SAEs read vectors of different sizes (" + ", ".join(
            f"{sd.d_in} at {h}" for h, sd in by_hook.items()) + "); give SAEs trained on one model")
    if features is not None:
        from ..interventions import check_features

        check_features(by_hook[hook].sae, features)
    items, eval_sha, eval_path = _eval_items(eval)
    tl, resolved = models.use_model(model, device=device, dtype=dtype)
    for h, sd in by_hook.items():
        if sd.model and sd.model != resolved.name:
            raise DataError(f"the SAE at {str(sd.path)!r} was trained on {sd.model!r}, not {resolved.name!r}; use SAEs "
                            "trained on this model")
        if sd.d_in != tl.cfg.d_model:
            raise DataError(f"the SAE at {str(sd.path)!r} reads vectors of size {sd.d_in}, but {resolved.name} has "
                            f"d_model {tl.cfg.d_model}; use SAEs trained on this model")
    texts = list(wordnet_glosses(examples=False).shuffled(seed))[:n_neutral]
    with step(f"Clean run: {len(items)} prompts, {len(texts)} neutral texts, SAEs at {len(by_hook)} layers"):
        fl = FeatureLab(tl, {h: sd.sae for h, sd in by_hook.items()}, hook, items, texts, max_tokens=max_tokens)
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, **models.runtime_of(tl),
            "saes": {h: str(sd.path) for h, sd in sorted(by_hook.items(), key=lambda kv: layer_of(kv[0]))},
            "hook": hook, "later_hooks": list(fl.later), "eval": eval_path, "eval_sha256": eval_sha,
            "n_prompts": fl.n_prompts, "n_neutral": fl.n_texts, "n_tokens": fl.n_tokens,
            "neutral": {"source": "WordNet glosses (definitions), shuffled", "max_tokens": max_tokens, "seed": seed}}
    return fl, prov


def _result(kind: str, provenance: dict, res: AnalysisResult, t0: float, files: dict | None = None,
            analyzer: Any = None) -> FeatureResult:
    from ..reports.features import write_features_report

    provenance = stamp(provenance, t0)

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_features_report(kind, res, with_command(provenance, command), out, force=force, files=files)

    return FeatureResult(res, provenance, write, analyzer)


def _features(fl: Any, features: Sequence[int] | None, vectors: Any, k: int, model_name: str) -> tuple[list[int], dict]:
    """Explicit features, or the top ``k`` of the vector's sparse coding over the SAE decoder at the hook that
    fire on the measured tokens (a feature that never fires there cannot be ablated)."""
    from ..sparse import omp
    from .steer import _vectors

    if features is not None:
        feats = [int(f) for f in features]
        if not feats:
            raise ConfigError("no features given: expected one or more SAE feature indices")
        return feats, {"feature_source": "given"}
    if vectors is None:
        raise ConfigError("give --features, or --vectors to take the top features of the vector's decomposition")
    if k < 1:
        raise ConfigError(f"--k must be a positive number of features, got {k}")
    found, vprov = _vectors(vectors, model_name, [fl.hook])
    v = np.asarray(found[fl.hook].vector, dtype=np.float64)
    W = fl.saes[fl.hook].W_dec.detach().double().numpy()
    sc = omp(W, v, min(int(W.shape[0]), 4 * k))
    live = [int(a) for a in sc["atoms"] if fl.frequency[int(a)] > 0][:k]
    if not live:
        raise DataError(f"none of the vector's top {4 * k} decomposition features fire on the measured tokens; give "
                        "--features explicitly")
    return live, {**vprov, "feature_source": f"top {len(live)} live features of the vector's sparse coding "
                                             f"(matching pursuit over {4 * k} atoms)"}


def _name(model: Any) -> str:
    from .steer import _name as name

    return model if isinstance(model, str) else name(model)


def intervene(model: Any, saes: Any, features: Sequence[int] | None = None, *, vectors: Any = None,
              hook: str | None = None, factors: Sequence[float] = (0.0, 0.5, 2.0), k: int = 8,
              eval: Any = "sentiment_eval", n_neutral: int = 16, threshold: float = 0.1, n_null: int = 20,
              seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> FeatureResult:
    """Scale a set of SAE features by each factor (0 ablates, 0.5 dampens, 2 doubles) and measure what changes
    downstream, against frequency-matched random live feature sets (what ``geomsteer features intervene``
    runs). ``features``: indices at ``hook``, or the top ``k`` of ``vectors``' decomposition."""
    from ..analyzers.features import FeatureDose
    from ..steering.features import check_factors, measure_dose

    factors = check_factors(factors)
    _check_common(n_null, threshold)
    t0 = time.perf_counter()
    fl, prov = lab(model, saes, hook or _vector_hook(vectors, model), eval, n_neutral=n_neutral, seed=seed,
                   features=features, device=device, dtype=dtype)
    feats, fprov = _features(fl, features, vectors, k, _name(model))
    with counter(f"Scaling {len(feats)} feature(s) by {', '.join(f'x{a:g}' for a in factors)}, and {n_null} random sets",
                 (1 + n_null) * len(factors), unit="runs") as advance:
        m = measure_dose(fl, feats, factors=factors, n_null=n_null, threshold=threshold, seed=seed,
                         progress=lambda: advance(1))
    an = FeatureDose(seed=seed).fit(m)
    return _result("feature_dose", {**prov, **fprov}, an.result(), t0, analyzer=an)


def graph(model: Any, saes: Any, features: Sequence[int] | None = None, *, vectors: Any = None,
          hook: str | None = None, k: int = 32, eval: Any = "sentiment_eval", n_neutral: int = 16,
          alpha: float = 0.05, threshold: float = 0.1, attribution: bool = True, n_null: int = 50,
          seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> FeatureResult:
    """The feature-to-feature graph: ablate each upstream feature, read every downstream feature at each later
    layer, keep the edges beyond random live features of matched frequency; with the attribution-patching
    estimate checked against the real ablations (what ``geomsteer features graph`` runs). ``.save(dir)``
    also writes ``graph.graphml``."""
    import io

    import networkx as nx

    from ..analyzers.features import FeatureGraph
    from ..steering.features import measure_graph

    _check_common(n_null, threshold)
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must lie between 0 and 1, got {alpha!r}")
    t0 = time.perf_counter()
    fl, prov = lab(model, saes, hook or _vector_hook(vectors, model), eval, n_neutral=n_neutral, seed=seed,
                   features=features, device=device, dtype=dtype)
    feats, fprov = _features(fl, features, vectors, k, _name(model))
    with step(f"Ablating {len(feats)} upstream feature(s) and {n_null} random ones at {fl.hook}; reading "
              f"{len(fl.later)} later layer(s)" + ("; attribution pass" if attribution else "")):
        m = measure_graph(fl, feats, n_null=n_null, attribution=attribution, seed=seed)
    an = FeatureGraph(alpha=alpha, threshold=threshold, seed=seed).fit(m)
    buf = io.BytesIO()
    nx.write_graphml(an.graph(), buf)
    return _result("feature_graph", {**prov, **fprov}, an.result(), t0, {"graph.graphml": buf.getvalue()}, an)


def compare(model: Any, saes: Any, vectors: Any, *, hook: str | None = None, alpha: float = 4.0, k: int = 8,
            eval: Any = "sentiment_eval", n_neutral: int = 16, threshold: float = 0.1, n_null: int = 20,
            seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> FeatureResult:
    """Steer with the vector, with its top-``k`` feature reconstruction and by clamping those features, each at
    the multiplier that matches the vector's target shift; compare side effects against random feature sets
    (what ``geomsteer features compare`` runs)."""
    from ..analyzers.features import FeatureCompare
    from ..steering.features import SCAN, measure_compare
    from .steer import _vectors

    if not math.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"--alpha must be a finite non-zero number, got {alpha!r}")
    if k < 1:
        raise ConfigError(f"--k must be a positive number of features, got {k}")
    _check_common(n_null, threshold)
    t0 = time.perf_counter()
    fl, prov = lab(model, saes, hook or _vector_hook(vectors, model), eval, n_neutral=n_neutral, seed=seed, device=device, dtype=dtype)
    found, vprov = _vectors(vectors, _name(model), [fl.hook])
    with counter(f"Steering by the vector, its {k}-feature reconstruction and clamped features; {n_null} random sets",
                 4 + 2 * len(SCAN) + 2 * n_null, unit="runs") as advance:
        m = measure_compare(fl, found[fl.hook], alpha, k=k, n_null=n_null, threshold=threshold, seed=seed,
                            progress=lambda: advance(1))
    an = FeatureCompare(seed=seed).fit(m)
    return _result("feature_compare", {**prov, **vprov}, an.result(), t0, analyzer=an)


def relations(model: Any, saes: Any, vectors: Any, *, hook: str | None = None, alpha: float = 4.0, top: int = 32,
              n_clusters: int | None = None, eval: Any = "sentiment_eval", n_neutral: int = 16,
              n_perm: int = 1000, seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> FeatureResult:
    """The features the vector changes most at its hook: clustered by decoder cosine and by co-activation, whether
    a cluster's features change together under steering more than random sets do, and whether decoder
    similarity predicts the similarity of two features' effects on the output (what ``geomsteer features
    relations`` runs). ``saes``: the SAE at the vector's hook and at least one later one."""
    from ..analyzers.features import FeatureRelations
    from ..steering.features import measure_relations
    from .steer import _vectors

    if not math.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"--alpha must be a finite non-zero number, got {alpha!r}")
    if top < 3:
        raise ConfigError(f"--top must be at least 3 features to cluster, got {top}")
    t0 = time.perf_counter()
    fl, prov = lab(model, saes, hook or _vector_hook(vectors, model), eval, n_neutral=n_neutral, seed=seed, device=device, dtype=dtype)
    found, vprov = _vectors(vectors, _name(model), [fl.hook])
    with step(f"Steering at {fl.hook} (multiplier {alpha:g}); the {top} most changed features and each one's effect "
              "on the output"):
        m = measure_relations(fl, found[fl.hook], alpha, top=top)
    an = FeatureRelations(n_clusters=n_clusters, n_perm=n_perm, seed=seed).fit(m)
    return _result("feature_relations", {**prov, **vprov}, an.result(), t0, analyzer=an)


def _vector_hook(vectors: Any, model: Any) -> str | None:
    """The hook of the vector (its only one), or None without vectors."""
    if vectors is None:
        return None
    from .steer import _vectors

    found, _ = _vectors(vectors, _name(model))
    if len(found) > 1:
        raise ConfigError(f"the vectors hold several hooks ({', '.join(found)}): choose one with --hook")
    return next(iter(found))


def _check_common(n_null: int, threshold: float) -> None:
    if not isinstance(n_null, int) or n_null < 2:
        raise ConfigError(f"--null-draws must be at least 2 random feature sets, got {n_null!r}: a null needs a mean and "
                          "an sd")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"--threshold must be a positive number, got {threshold!r}")
