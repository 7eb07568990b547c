"""Steering vectors: compute them from contrastive pairs, apply them, and measure what they do (``gs.steer``)."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._progress import step
from ..errors import ConfigError, DataError
from ..hooks import check_hooks, layer_of, parse_layers, resid_hook
from ..results import SteeringResult, VectorsResult
from ..steering import DEFAULT_POSITION
from ..types import AnalysisResult
from .common import DEFAULT_SEED, check_null_draws, sae_dirs, stamp, with_command

__all__ = ["compute", "apply", "sweep", "decompose", "propagate", "hierarchy", "erase"]


def _result(kind: str, provenance: dict, res: AnalysisResult, t0: float, files: dict | None = None,
            model: Any = None) -> SteeringResult:
    from ..reports import write_steering_report

    if model is not None:  # where it ran: the loaded model's device and dtype
        from ..models.load import runtime_of

        provenance = {**provenance, **runtime_of(model)}
    provenance = stamp(provenance, t0)

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_steering_report(kind, res, with_command(provenance, command), out, force=force, files=files)

    return SteeringResult(res, provenance, write)


def _vectors(vectors: Any, model_name: str, hooks: Sequence[str] | None = None) -> tuple[dict, dict]:
    """Vectors (a vectors.safetensors path, a ``compute`` result, a SteeringVector or a dict of them) checked
    against the model and the hooks asked for, and their provenance."""
    from .._atomic import sha256_file
    from ..steering import SteeringVector, load_vectors, vectors_bytes

    path = None
    if isinstance(vectors, VectorsResult):
        found = dict(vectors.vectors)
    elif isinstance(vectors, SteeringVector):
        found = {vectors.hook: vectors}
    elif isinstance(vectors, Mapping):
        found = dict(vectors)
    else:
        path = Path(vectors)
        found = load_vectors(path)
    first = next(iter(found.values()))
    if first.model and first.model != model_name:
        where = f"the vectors in {str(path)!r}" if path else "the vectors given"
        raise DataError(f"{where} were computed on {first.model!r}, not {model_name!r}; compute them on {model_name} "
                        f"with 'geomsteer steer compute --model {model_name}'")
    if hooks:
        missing = [h for h in hooks if h not in found]
        if missing:
            where = repr(str(path)) if path else "the vectors given"
            raise DataError(f"{where} holds no vector at {missing[0]}; it has {', '.join(found)}: pick one of those "
                            "with --hook or compute a vector there")
        found = {h: found[h] for h in hooks}
    sha = sha256_file(path) if path else hashlib.sha256(vectors_bytes(found)).hexdigest()
    prov = {"vectors": str(path) if path else None, "vectors_sha256": sha, "vector_data_sha256": first.data_sha256,
            "vector_position": first.position, "vector_method": first.method, "vector_n_pairs": first.n_pairs}
    return found, prov


def _one_hook(vectors: Any, model_name: str, hook: str | None) -> str:
    """The hook of the one vector a step uses: ``hook`` if given (and present), else the only one."""
    found, prov = _vectors(vectors, model_name, [hook] if hook else None)
    if hook is None and len(found) > 1:
        where = repr(prov["vectors"]) if prov["vectors"] else "the vectors given"
        raise ConfigError(f"{where} holds vectors at {', '.join(found)}: choose one with --hook")
    return next(iter(found))


def _model_and_vectors(model: Any, vectors: Any, hooks: Sequence[str] | None, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any, dict, dict]:
    """The loaded model, what it was loaded from, and its vectors (checked against its size and hooks).

    Vectors are read before the model loads, so a bad file fails fast."""
    from .. import models

    name = model if isinstance(model, str) else getattr(models.resolved_of(model), "name", "")
    if isinstance(model, str):
        _vectors(vectors, name, hooks)
    tl, resolved = models.use_model(model, device=device, dtype=dtype)
    found, prov = _vectors(vectors, resolved.name, hooks)
    for h, v in found.items():
        if v.vector.shape != (int(tl.cfg.d_model),):
            where = f" in {prov['vectors']!r}" if prov["vectors"] else ""
            raise DataError(f"the vector at {h}{where} has size {v.vector.shape[0]}, but this model's residual stream "
                            f"has size {tl.cfg.d_model}; use a vector computed on this model")
    check_hooks(tl, list(found))
    return tl, resolved, found, prov


def _eval_items(eval: Any) -> tuple[list, str, str]:
    from ..resources import steering_file
    from ..steering import load_eval

    path = steering_file(eval)
    items, sha = load_eval(path)
    return items, sha, str(path)


def compute(model: Any, pairs: Any = "sentiment", *, layers: Any = "every:3", position: str = DEFAULT_POSITION,
            method: str = "mean_diff", device: str = "cpu", dtype: str = "float32") -> VectorsResult:
    """Steering vectors at several residual layers from contrastive pairs, with how consistent the pairs are
    (what ``geomsteer steer compute`` runs).

    ``pairs`` is a shipped set's name (sentiment, formality, animal_plant) or a JSONL path; ``layers``
    is ``all``, ``every:K``, ``"3,6"`` or a list of layer numbers. ``.save(dir)`` writes vectors.safetensors.
    """
    from .. import models
    from ..resources import steering_file
    from ..steering import METHODS, POSITIONS, compute_vectors, load_pairs, vectors_bytes

    if position not in POSITIONS:
        raise ConfigError(f"unknown --position {position!r}: expected one of {', '.join(POSITIONS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}: expected one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    pairs_path = steering_file(pairs)
    pair_list, sha = load_pairs(pairs_path)
    tl, resolved = models.use_model(model, device=device, dtype=dtype)
    hooks = [resid_hook(layer) for layer in parse_layers(layers, int(tl.cfg.n_layers), resolved.name)]
    check_hooks(tl, hooks)
    with step(f"Reading {len(pair_list)} pairs at {len(hooks)} layers ({position} token rule, {method})"):
        vectors = compute_vectors(tl, pair_list, hooks, position=position, method=method, model_name=resolved.name,
                                  data_sha256=sha)
    per = {h: {"layer": layer_of(h), "norm": v.norm, **v.provenance} for h, v in vectors.items()}
    layers_param = layers if isinstance(layers, str) else ",".join(str(int(x)) for x in layers)
    res = AnalysisResult(analyzer="steering_compute",
                         params={"position": position, "method": method, "layers": layers_param},
                         provenance={}, metrics={"per_hook": per})
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, "pairs": str(pairs_path),
            "pairs_sha256": sha, "n_pairs": len(pair_list), "hooks": hooks}
    base = _result("steering_compute", prov, res, t0, {"vectors.safetensors": vectors_bytes(vectors)}, model=tl)
    return VectorsResult(res, base.provenance, base._writer, vectors)


def apply(model: Any, vectors: Any, prompts: Sequence[str] | str = (), *, hook: str | None = None, alpha: float = 4.0,
          max_new_tokens: int = 32, temperature: float = 0.0, seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> SteeringResult:
    """Generations with and without the vector (and with a random direction of its norm)
    (what ``geomsteer steer apply`` runs). ``prompts`` default to four of the sentiment evaluation prompts."""
    from ..steering import generate, random_direction

    if not math.isfinite(alpha):
        raise ConfigError(f"--alpha must be a finite number, got {alpha!r}")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts) or [it.prompt for it in _eval_items("sentiment_eval")[0][:4]]
    t0 = time.perf_counter()
    name = model if isinstance(model, str) else ""
    tl, resolved, found, vprov = _model_and_vectors(model, vectors, [_one_hook(vectors, name or _name(model), hook)], device, dtype)
    h, sv = next(iter(found.items()))
    rnd = random_direction(sv.vector, seed + 1)
    with step(f"Generating {max_new_tokens} tokens for {len(prompts)} prompt(s), unsteered, steered and random"):
        plain = generate(tl, prompts, max_new_tokens, temperature=temperature, seed=seed)
        steered = generate(tl, prompts, max_new_tokens, sv, alpha, h, temperature=temperature, seed=seed)
        randomly = generate(tl, prompts, max_new_tokens, rnd, alpha, h, temperature=temperature, seed=seed)
    rows = [{"prompt": p, "unsteered": a, "steered": b, "random_direction": c}
            for p, a, b, c in zip(prompts, plain, steered, randomly)]
    res = AnalysisResult(analyzer="steering_apply",
                         params={"hook": h, "alpha": alpha, "max_new_tokens": max_new_tokens,
                                 "temperature": temperature, "seed": seed},
                         provenance={}, metrics={"vector_norm": sv.norm}, tables={"generations": rows})
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, **vprov}
    return _result("steering_apply", prov, res, t0, model=tl)


def _name(model: Any) -> str:
    from .. import models

    r = models.resolved_of(model)
    return r.name if r is not None else ""


def sweep(model: Any, vectors: Any, eval: Any = "sentiment_eval", *, hooks: Sequence[str] | None = None,
          alphas: Sequence[float] = (-4, -2, -1, 0, 1, 2, 4), n_neutral: int = 16, n_random: int = 3,
          n_samples: int = 2, max_new_tokens: int = 24, seed: int = DEFAULT_SEED, n_null: int = 20, device: str = "cpu", dtype: str = "float32") -> SteeringResult:
    """Multiplier x layer grid: target log-odds shift, KL on neutral text, samples, against shuffled-label and
    covariance nulls (what ``geomsteer steer sweep`` runs)."""
    from .._progress import counter
    from ..analyzers.steering import SteeringSweep
    from ..corpus import wordnet_glosses
    from ..steering import NeutralText, target_ids
    from ..steering.experiments import check_alphas, measure_sweep

    alphas = check_alphas(alphas)
    check_null_draws(n_null)
    t0 = time.perf_counter()
    items, eval_sha, eval_path = _eval_items(eval)
    tl, resolved, found, vprov = _model_and_vectors(model, vectors, list(hooks) if hooks else None, device, dtype)
    target_ids(tl, items)  # bad targets fail before the long part
    neutral_texts = list(wordnet_glosses(examples=False).shuffled(seed))[:n_neutral] if n_neutral > 0 else []
    with step(f"Unsteered next-token distributions on {len(neutral_texts)} neutral texts (WordNet glosses)"):
        neutral = NeutralText(tl, neutral_texts, max_tokens=24) if neutral_texts else None
    with counter(f"Sweeping {len(found)} layer(s) x {len(alphas)} multipliers", len(found) * len(alphas),
                 unit="cells") as advance:
        measured = measure_sweep(tl, found, items, neutral, alphas=alphas, n_random=n_random, n_null=n_null,
                                 sample_prompts=[it.prompt for it in items], n_samples=n_samples,
                                 max_new_tokens=max_new_tokens, seed=seed, progress=lambda: advance(1))
    sw = SteeringSweep(seed=seed).fit(measured)
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, **vprov, "eval": eval_path,
            "eval_sha256": eval_sha, "n_prompts": len(items),
            "neutral": {"source": "WordNet glosses (definitions), shuffled", "n_texts": len(neutral_texts),
                        "max_tokens": 24, "seed": seed}}
    return _result("steering_sweep", prov, sw.result(), t0, model=tl)


def _feature_contexts(sd: Any, features: Sequence[int], n: int) -> dict[int, list[str]]:
    """Top held-out contexts of some features, from the store recorded with the SAE (optional: {} without it)."""
    from .. import models, saes
    from .._progress import say
    from ..errors import GeomsteerError
    from .sae import held_out_tokens

    if n < 1 or not features or not sd.info:
        return {}
    try:
        store = sd.held_out_store()
    except GeomsteerError:
        say(f"(no top contexts: the held-out activations of {sd.path} are no longer cached)")
        return {}
    cat = held_out_tokens(store, sd.hook)
    codes = saes.encode(sd.sae, cat[sd.hook])[:, list(features)]
    tok = models.load_tokenizer(sd.model)
    out = {}
    for i, f in enumerate(features):
        ctx = saes.top_contexts(codes[:, i], cat["token_ids"], cat["doc_index"], cat["position"], n=n, window=6)
        out[int(f)] = ["".join((f"[[{s}]]" if j == c["firing"] else s) for j, s in
                               enumerate(tok.decode([t]) for t, _ in c["tokens"])).strip() for c in ctx]
    return out


def decompose(model: Any, vectors: Any, sae: Any, eval: Any = "sentiment_eval", *, hook: str | None = None,
              alpha: float = 4.0, k: int = 32, nonneg: bool = False, top: int = 12, n_contexts: int = 3,
              seed: int = DEFAULT_SEED, n_null: int = 20, device: str = "cpu", dtype: str = "float32") -> SteeringResult:
    """The vector in an SAE's feature space (sparse coding and code differences) and whether that steers, on
    held-out prompts against both nulls (what ``geomsteer steer decompose`` runs)."""
    from .. import models
    from ..analyzers.steering import SteeringDecomposition
    from ..saes import read_sae_dir
    from ..steering.experiments import measure_decomposition

    if not math.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"--alpha must be a finite non-zero number, got {alpha!r}")
    check_null_draws(n_null, allow_zero=False)
    t0 = time.perf_counter()
    items, eval_sha, eval_path = _eval_items(eval)
    sd = read_sae_dir(sae)
    hook = _one_hook(vectors, model if isinstance(model, str) else _name(model), hook or sd.hook)
    if sd.hook and sd.hook != hook:
        raise DataError(f"the SAE at {str(sd.path)!r} was trained at {sd.hook}, but the vector is at {hook}; "
                        "decompose with an SAE trained at the vector's hook")
    tl, resolved, found, vprov = _model_and_vectors(model, vectors, [hook], device, dtype)
    if sd.d_in != tl.cfg.d_model:
        raise DataError(f"the SAE at {str(sd.path)!r} reads vectors of size {sd.d_in}, but {resolved.name} has "
                        f"d_model {tl.cfg.d_model}; use an SAE trained on this model")
    emb = models.unembedding_for(tl, resolved)
    W_U = emb.gamma * (emb.final_norm_scale if emb.final_norm_scale is not None else 1.0)
    with step(f"Decomposing the vector at {hook} into {sd.d_sae} SAE features (sparse coding, code differences "
              f"on half of {len(items)} prompts at multiplier {alpha:g}, steering effects on the other half, "
              f"{n_null} draws of each null)"):
        measured = measure_decomposition(tl, found[hook], sd.sae, items, alpha, k=k, nonneg=nonneg, n_null=n_null,
                                         seed=seed)
    dec = SteeringDecomposition(top=top, seed=seed).fit(measured, unembedding=W_U, vocab=emb.id_to_token)
    with step("Top contexts of the top features (the SAE's held-out tokens)"):
        ctx = _feature_contexts(sd, [r["feature"] for r in dec.features_], n_contexts)
    for r in dec.features_:
        r["top_contexts"] = ctx.get(r["feature"], [])
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, **vprov, "sae": str(sd.path),
            "eval": eval_path, "eval_sha256": eval_sha, "n_prompts": len(items)}
    return _result("steering_decomposition", prov, dec.result(), t0, model=tl)


def propagate(model: Any, vectors: Any, saes: Sequence[Any], eval: Any = "sentiment_eval", *,
              hook: str | None = None, alphas: Sequence[float] = (1, 2, 4), threshold: float = 0.1, top: int = 8,
              seed: int = DEFAULT_SEED, n_null: int = 20, device: str = "cpu", dtype: str = "float32") -> SteeringResult:
    """Steer at the vector's layer; count and name the SAE features that change at each later layer, against
    both nulls (what ``geomsteer steer propagate`` runs). ``saes``: one SAE (directory or loaded) per layer."""
    from .._progress import counter
    from ..analyzers.steering import SteeringPropagation
    from ..steering.experiments import check_alphas, measure_propagation

    alphas = check_alphas(alphas)
    check_null_draws(n_null)
    if not threshold > 0:
        raise ConfigError(f"--threshold must be positive, got {threshold!r}")
    t0 = time.perf_counter()
    items, eval_sha, eval_path = _eval_items(eval)
    by_hook = sae_dirs(saes)
    name = model if isinstance(model, str) else _name(model)
    tl, resolved, found, vprov = _model_and_vectors(model, vectors, [_one_hook(vectors, name, hook)], device, dtype)
    h0, sv = next(iter(found.items()))
    check_hooks(tl, list(by_hook))
    n_passes = 2 * len([a for a in alphas if a != 0]) + n_null * (1 + (sv.pair_differences is not None))
    with counter(f"Steering at {h0}, encoding {len(by_hook)} layer(s) with SAEs ({n_null} draws of each null)", n_passes,
                 unit="passes") as advance:
        measured = measure_propagation(tl, sv, {h: sd.sae for h, sd in by_hook.items()}, items, alphas=alphas,
                                       n_null=n_null, seed=seed, progress=lambda: advance(1))
    prop = SteeringPropagation(threshold=threshold, top=top).fit(measured)
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, **vprov,
            "saes": {h: str(sd.path) for h, sd in by_hook.items()}, "eval": eval_path, "eval_sha256": eval_sha,
            "n_prompts": len(items)}
    return _result("steering_propagation", prov, prop.result(), t0, model=tl)


def _model_and_tree(model: Any, layer: Any, min_tokens: int, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any, str, dict, Any]:
    """The model, what it was loaded from, the residual hook after ``layer`` (checked against the model), its
    vocabulary and the WordNet noun tree for its tokenizer."""
    import numpy as np

    from .. import models
    from ..wordnet import build_hierarchy

    tl, resolved = models.use_model(model, device=device, dtype=dtype)
    n_layers = int(tl.cfg.n_layers)
    if not (isinstance(layer, (int, np.integer)) and 0 <= layer < n_layers):
        raise ConfigError(f"--layer {layer!r}: {resolved.name} has layers 0..{n_layers - 1}; give a block number in "
                          "that range")
    vocab = dict(tl.tokenizer.get_vocab())
    with step("Building the WordNet noun hierarchy for this tokenizer"):
        hier = build_hierarchy(vocab, pos="n", min_tokens=min_tokens, tokenizer=type(tl.tokenizer).__name__)
    return tl, resolved, resid_hook(int(layer)), vocab, hier


def _find_category(hier: Any, name: str) -> str:
    """The tree's node for a synset name (one merged into a node by chain merging maps to that node)."""
    if name in hier.graph:
        return name
    for n in hier.graph:
        if name in hier.graph.nodes[n].get("merged", []):
            return n
    from ..wordnet import load_wordnet

    wn = load_wordnet()
    if name in wn and wn.synsets[name].pos == hier.pos:
        raise ConfigError(f"category {name!r} is too small for this tokenizer: the tree keeps categories with more than "
                          f"{hier.min_tokens} single-token words (--min-tokens), and {name} has fewer; lower "
                          "--min-tokens or choose a larger category")
    close = sorted(n for n in hier.graph if n.split(".")[0] == name.split(".")[0])
    raise ConfigError(f"unknown category {name!r}: expected a WordNet noun synset with more than the minimum number "
                      f"of single tokens for this tokenizer, such as animal.n.01 or mammal.n.01"
                      + (f"; did you mean {', '.join(close[:3])}?" if close else "; lower --min-tokens to keep "
                         "smaller categories"))


def _parse_pair(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in str(text).split(">")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--pair {text!r}: expected PARENT>CHILD, e.g. animal.n.01>mammal.n.01")
    return parts[0], parts[1]


def hierarchy(model: Any, pairs: Sequence[str] = ("animal.n.01>mammal.n.01", "animal.n.01>bird.n.01"), *,
              layer: int = 6, template: str = "Look at the", norms: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
              ref_norm: float = 0.5, target_gain: float = 1.0, min_tokens: int = 50, n_pool: int = 1000,
              n_null: int = 20, seed: int = DEFAULT_SEED, prompts: Sequence[str] | None = None, device: str = "cpu", dtype: str = "float32") -> SteeringResult:
    """Steering along the WordNet hierarchy (what ``geomsteer steer hierarchy`` runs).

    For each ``PARENT>CHILD`` pair, concept vectors at ``layer`` (LDA with the activation covariance, CAA
    mean differences, and at the last layer the unembedding's LDA vectors; see
    :mod:`geomsteer.steering.hierarchy`) are added at ``norms`` (multiples of the words' root-mean-square
    distance from their mean activation at that layer) on prompts whose next token is a noun; measured: the next-token mass on the
    child's tokens, on the parent's other tokens and outside the parent, beside covariance-shaped random
    directions and the same constructions on nested random sets. Also Park et al.'s orthogonality for the CAA
    vectors of every edge of the tree, against nested random sets.
    """
    from .._progress import say
    from ..activations import token_activations
    from ..analyzers.lda import fit_whitening
    from ..analyzers.steer_hierarchy import CaaOrthogonality, HierarchySteering
    from ..steering.hierarchy import (PROMPTS, VECTOR_TYPES, ConceptRows, MassProbe, concept_vectors,
                                      measure_grid, nested_random_rows, unembedding_vectors)
    from ..steering.nulls import covariance_directions
    from ..wordnet import load_wordnet
    from .hierarchy import word_pool

    import numpy as np

    parsed = [_parse_pair(p) for p in ([pairs] if isinstance(pairs, str) else pairs)]
    if not parsed:
        raise ConfigError("no pairs given: expected one or more PARENT>CHILD, e.g. animal.n.01>mammal.n.01")
    norms = sorted({float(x) for x in norms})
    if not norms or any(not (math.isfinite(x) and x > 0) for x in norms):
        raise ConfigError(f"--norms must be positive numbers (multiples of the words' spread), got {norms}")
    if float(ref_norm) not in norms:
        raise ConfigError(f"--ref-norm {ref_norm} must be one of --norms {norms}")
    check_null_draws(n_null, allow_zero=False)
    if not (isinstance(n_pool, int) and n_pool >= 50):
        raise ConfigError(f"--pool must be at least 50 comparison tokens, got {n_pool!r}")
    t0 = time.perf_counter()
    tl, resolved, hook, vocab, hier = _model_and_tree(model, layer, min_tokens, device, dtype)
    n_layers = int(tl.cfg.n_layers)
    import networkx as nx

    nodes = []
    for parent, child in parsed:
        p, c = _find_category(hier, parent), _find_category(hier, child)
        if p == c or c not in nx.descendants(hier.graph, p):
            raise ConfigError(f"--pair {parent}>{child}: {child} is not below {parent} in the tree for this tokenizer "
                              f"(it sits under {hier.parent(c) or 'nothing'}); give a parent and one of its descendants")
        nodes.append((p, c))
    names = hier.names
    tree = np.unique(np.concatenate([hier.tokens(n) for n in names]))
    pool = word_pool(vocab, hier.word_start, n_pool, seed)
    ids = np.union1d(tree, pool)
    row = {int(t): i for i, t in enumerate(ids)}
    tree_rows = np.array([row[int(t)] for t in tree])
    baseline = np.array([row[int(t)] for t in np.setdiff1d(pool, tree)])
    X = token_activations(tl, ids, [hook], template=template,
                          description=f"Reading {len(ids):,} words at {hook}")[hook]
    wh = fit_whitening(X)
    half = wh.inverse()
    # the norm unit: the words' root-mean-square distance from their mean (the residual's own massive,
    # nearly constant dimensions would make its raw norm a unit that breaks the model at a quarter of it)
    scale = float(np.sqrt(np.mean(np.sum((X - X.mean(0, dtype=np.float64)) ** 2, axis=1))))
    lemmas = load_wordnet()
    last = int(layer) == n_layers - 1
    W_U = tl.W_U.detach().float().cpu().numpy() if last else None

    per_pair: dict[str, Any] = {}
    tables: dict[str, Any] = {"curves": [], "matched": []}
    rng = np.random.default_rng([seed, 0x57EE])
    for (parent, child), (p, c) in zip(parsed, nodes):
        key = f"{p.split('.')[0]}>{c.split('.')[0]}"
        rows = ConceptRows(np.array([row[int(t)] for t in hier.tokens(p)]), np.array([row[int(t)] for t in hier.tokens(c)]),
                           baseline)
        real = concept_vectors(X, rows, wh, half)
        if last:
            real.update(unembedding_vectors(W_U, hier.tokens(p), hier.tokens(c)))
        lemma = lemmas[p].lemmas[0].replace("_", " ") if p in lemmas else p.split(".")[0]
        texts = [t.replace("{parent}", lemma) for t in (prompts or PROMPTS)]
        sib = np.setdiff1d(hier.tokens(p), hier.tokens(c))
        probe = MassProbe(tl, texts, hook, hier.tokens(c), sib)
        abs_norms = [x * scale for x in norms]
        nested = {t: [] for t in VECTOR_TYPES}
        for _ in range(n_null):
            for t, v in concept_vectors(X, nested_random_rows(tree_rows, rows, rng), wh, half).items():
                nested[t].append(v)
        rand = covariance_directions(X, 1.0, n_null, seed=int(rng.integers(1 << 31)))
        allv = {**real, **{f"nested:{t}:{i}": v for t in VECTOR_TYPES for i, v in enumerate(nested[t])},
                **{f"random:{i}": v for i, v in enumerate(rand)}}
        with step(f"{key}: {len(allv)} vectors x {len(norms)} norms on {len(texts)} prompts at {hook}"):
            grid = measure_grid(probe, allv, abs_norms)
        clean = grid["clean"]
        nested_m = {t: np.stack([grid[f"nested:{t}:{i}"] for i in range(n_null)]) for t in VECTOR_TYPES}
        rand_m = np.stack([grid[f"random:{i}"] for i in range(n_null)])
        an = HierarchySteering(ref_norm=float(ref_norm), target_gain=target_gain, seed=seed).fit(
            {t: grid[t] for t in real}, clean, nested_m, rand_m, norms)
        per_pair[key] = {**an.metrics_, "parent": p, "child": c, "asked": f"{parent}>{child}",
                         "n_parent_tokens": int(len(rows.parent)), "n_child_tokens": int(len(rows.child)),
                         "norm_unit": scale, "prompts": texts,
                         "cos_between_vectors": {f"{a}|{b}": float(real[a] @ real[b]) for i, a in enumerate(real)
                                                 for b in list(real)[i + 1:]}}
        tables["curves"] += [{"pair": key, **r} for r in an.curves_]
        tables["matched"] += [{"pair": key, **r} for r in an.matched_]
        say(f"  {key}: clean log p(child) {clean[:, 0].mean():.2f}; child gain at {ref_norm} x the norm unit: "
            + ", ".join(f"{t} {an.metrics_['statistics'][f'child_gain:{t}']['observed']:+.2f}" for t in real))

    idx = {n: i for i, n in enumerate(names)}
    sets = [np.array([row[int(t)] for t in hier.tokens(n)]) for n in names]
    edges = np.array([(idx[a], idx[b]) for a, b in hier.graph.edges], dtype=np.int64).reshape(-1, 2)
    with step(f"CAA orthogonality over {len(edges)} edges ({n_null} nested random draws)"):
        orth = CaaOrthogonality(n_null_draws=n_null, seed=seed).fit(
            X, sets, edges, tree_rows, baseline, pairs=np.array([(idx[p], idx[c]) for p, c in nodes]))
    caa = {"statistics": dict(orth.metrics_["statistics"])}
    for k, (p, c) in enumerate(nodes):
        caa["statistics"][f"pair:{p.split('.')[0]}>{c.split('.')[0]}"] = orth.pair_statistic(k)
    metrics = {"pairs": per_pair, "caa_orthogonality": caa}
    res = AnalysisResult(analyzer="steering_hierarchy",
                         params={"pairs": [f"{a}>{b}" for a, b in parsed], "layer": int(layer), "template": template,
                                 "norms": norms, "ref_norm": float(ref_norm), "target_gain": float(target_gain),
                                 "min_tokens": min_tokens, "n_pool": n_pool, "n_null": n_null, "seed": seed},
                         provenance={}, metrics=metrics, tables=tables)
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, "hook": hook,
            "n_words_read": int(len(ids)), "n_baseline_words": int(len(baseline)), "n_categories": len(names),
            "norm_unit": scale, "norms": "multiples of the words' root-mean-square distance from their mean activation "
                                        "at the hook (norm_unit)",
            "nulls": {"nested_random_sets": "the same construction on a random set of the parent's size from the "
                                            "tree's words and a random subset of it of the child's size",
                      "random_directions": "directions drawn from the covariance of the words' activations"}}
    return _result("steering_hierarchy", prov, res, t0, model=tl)


def _null_categories(hier: Any, concept: str, measured: Sequence[str], n: int, rng: Any) -> list[str]:
    """``n`` WordNet categories unrelated to the erased and the measured ones (neither ancestor nor descendant of
    any), nearest in size to the erased category (within x0.5 to x2 when there are enough), in random order."""
    import networkx as nx
    import numpy as np

    related = set()
    for c in [concept, *measured]:
        related |= {c} | nx.ancestors(hier.graph, c) | nx.descendants(hier.graph, c)
    size = len(hier.tokens(concept))
    cand = [x for x in hier.graph if x not in related]
    if len(cand) < 2:
        raise DataError(f"only {len(cand)} WordNet categories are unrelated to {concept} and the categories measured; "
                        "the null needs at least 2: lower --min-tokens to keep more categories")
    near = [x for x in cand if 0.5 <= len(hier.tokens(x)) / size <= 2.0]
    if len(near) < n:
        near = sorted(cand, key=lambda x: abs(np.log(len(hier.tokens(x)) / size)))[: max(n, 2)]
    return [near[i] for i in rng.permutation(len(near))[:n]]


def erase(model: Any, concept: str = "animal.n.01", *, layer: int = 6,
          also: Sequence[str] = ("mammal.n.01", "bird.n.01"), read_layers: Any = None, n_siblings: int = 2,
          n_null: int = 8, template: str = "Look at the", min_tokens: int = 50, n_pool: int = 1000,
          max_per_category: int = 400, n_fit: int = 8000, seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> SteeringResult:
    """Erase a WordNet category at ``layer`` with LEACE and measure what it takes (``geomsteer steer erase``).

    The eraser is fit on ``n_fit`` of the tree's words and ``n_pool`` other words read at the layer, and applied
    there to every token after the start token. Measured for the category, the ``also`` categories (say its
    children) and its ``n_siblings`` largest siblings: a held-out linear probe's AUC at each of ``read_layers``
    (default: the layer and every third after it, and the last) and the next-token log-mass on their words after
    noun prompts; against erasing ``n_null`` unrelated categories of about the same size instead.
    """
    import numpy as np

    from .._progress import counter, say
    from ..activations import bos_ids, token_activations
    from ..analyzers.erasure import ErasureAnalyzer
    from ..analyzers.hierarchy_stats import tree_split
    from ..steering.erasure import erasing, fit_eraser, next_token_logmass, probe_auc
    from ..steering.hierarchy import PROMPTS
    from ..wordnet import load_wordnet
    from .hierarchy import word_pool

    check_null_draws(n_null, allow_zero=False)
    for name, v, low in (("--pool", n_pool, 50), ("--max-per-category", max_per_category, 20), ("--fit-words", n_fit, 200)):
        if not (isinstance(v, int) and v >= low):
            raise ConfigError(f"{name} must be an integer of at least {low}, got {v!r}")
    t0 = time.perf_counter()
    tl, resolved, hook, vocab, hier = _model_and_tree(model, layer, min_tokens, device, dtype)
    n_layers = int(tl.cfg.n_layers)
    if read_layers is None:
        reads = sorted(set(range(int(layer), n_layers, 3)) | {n_layers - 1})
    else:
        reads = parse_layers(read_layers, n_layers, resolved.name)
        if min(reads) < layer:
            raise ConfigError(f"--read-layers {read_layers!r}: erasure at layer {layer} cannot change earlier layers; "
                              f"give layers from {layer} to {n_layers - 1}")
    read_hooks = [resid_hook(x) for x in reads]
    c = _find_category(hier, concept)
    measured = [c] + [x for x in (_find_category(hier, a) for a in also) if x != c]
    par = hier.parent(c)
    if par is not None and n_siblings > 0:
        sibs = sorted((x for x in hier.graph.successors(par) if x != c and x not in measured),
                      key=lambda x: -len(hier.tokens(x)))[:n_siblings]
        measured += sibs
    rng = np.random.default_rng([seed, 0xE5A])
    nulls = _null_categories(hier, c, measured, n_null, rng)
    say(f"  erasing {c} ({len(hier.tokens(c))} tokens) at {hook}; measuring {', '.join(measured)}; null: "
        f"{len(nulls)} unrelated categories of about its size")

    names = hier.names
    tree = np.unique(np.concatenate([hier.tokens(n) for n in names]))
    pool = word_pool(vocab, hier.word_start, n_pool, seed)
    # Each eraser is fit on a sample of the tree's words and the pool, with all of its own category's words added
    # (a category is a small share of a sample: its direction would be estimated from few words).
    sample = np.union1d(np.sort(rng.choice(tree, min(n_fit, len(tree)), replace=False)), pool)
    fit_ids = np.union1d(sample, np.concatenate([hier.tokens(x) for x in [c, *nulls]]))
    Xall = token_activations(tl, fit_ids, [hook], template=template,
                             description=f"Reading {len(fit_ids):,} words at {hook} to fit the erasers")[hook]
    erasers: dict[str, Any] = {"clean": None}
    fit_counts = {}
    for cat in [c, *nulls]:
        rows_fit = np.isin(fit_ids, np.union1d(sample, hier.tokens(cat)))
        member = np.isin(fit_ids[rows_fit], hier.tokens(cat))
        fit_counts[cat] = {"members": int(member.sum()), "rows": int(rows_fit.sum())}
        erasers[cat] = fit_eraser(Xall[rows_fit], member)

    sets = {}
    for cat in measured:
        t = hier.tokens(cat)
        sets[cat] = np.sort(rng.choice(t, min(max_per_category, len(t)), replace=False))
    eval_ids = np.union1d(np.concatenate(list(sets.values())), pool)
    row = {int(t): i for i, t in enumerate(eval_ids)}
    splits, _ = tree_split(list(sets.values()), dict(hier.token_groups or {}), 0.3, rng)
    rows_of = lambda ids: np.array([row[int(t)] for t in ids], dtype=np.int64)  # noqa: E731
    pool_rows = rows_of(pool)
    lemmas = load_wordnet()
    lemma = lemmas[c].lemmas[0].replace("_", " ") if c in lemmas else c.split(".")[0]
    prompts = [p.replace("{parent}", lemma) for p in PROMPTS]
    start = len(bos_ids(tl))
    auc: dict[str, dict[str, dict[str, float]]] = {}
    mass: dict[str, dict[str, np.ndarray]] = {}
    with counter(f"Reading {len(eval_ids):,} words at {len(read_hooks)} layers, clean and with each of "
                 f"{1 + len(nulls)} categories erased", len(erasers), "conditions") as advance:
        for cond, er in erasers.items():
            with erasing(tl, hook, er, start=start):
                acts = token_activations(tl, eval_ids, read_hooks, template=template, progress=False)
                mass[cond] = next_token_logmass(tl, prompts, {cat: hier.tokens(cat) for cat in measured})
            auc[cond] = {}
            for cat, (tr, te) in zip(measured, splits):
                neg = pool_rows[~np.isin(pool, hier.tokens(cat))]
                auc[cond][cat] = {h: probe_auc(acts[h], rows_of(tr), rows_of(te), neg) for h in read_hooks}
            advance(1)
    an = ErasureAnalyzer(seed=seed).fit(auc, mass, c, nulls)
    res = an.result()
    res.params.update({"concept": concept, "layer": int(layer), "also": list(also), "read_layers": reads,
                       "n_siblings": n_siblings, "n_null": n_null, "template": template, "min_tokens": min_tokens,
                       "n_pool": n_pool, "max_per_category": max_per_category, "n_fit": n_fit, "seed": seed})
    import networkx as nx

    below_c = nx.descendants(hier.graph, c)
    roles = {c: "erased"} | {x: ("descendant" if x in below_c else "other") for x in measured[1:]}
    if par is not None:
        roles.update({x: "sibling" for x in hier.graph.successors(par) if x in roles and x != c})
    res.metrics.update({"erased": c, "measured": {x: {"role": roles[x], "n_tokens": int(len(hier.tokens(x))),
                                                      "n_read": int(len(sets[x]))} for x in measured},
                        "null_categories": {x: int(len(hier.tokens(x))) for x in nulls}})
    prov = {"model": resolved.name, "model_provenance": resolved.provenance, "hook": hook, "read_hooks": read_hooks,
            "n_fit_words": int(len(sample)), "fit_rows": fit_counts, "n_eval_words": int(len(eval_ids)),
            "prompts": prompts, "method": "LEACE (concept-erasure's LeaceEraser, affine, float64), applied to every "
                                         "token after the start token",
            "probe": "a shrinkage LDA classifier (Ledoit-Wolf) fit on the category's train words against half of the "
                     "pool words outside it; AUC of its held-out words (split by lemma) against the other half",
            "null": "the same eraser fit for an unrelated WordNet category (neither ancestor nor descendant of any "
                    "measured category) of about the same size"}
    return _result("steering_erasure", prov, res, t0, model=tl)
