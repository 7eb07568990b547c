"""End-to-end jobs that compose the core modules; the CLI calls these and nothing else does the work.

Each job validates its inputs before any heavy step, reports progress on stderr, and writes its
output directory atomically (never over an existing one without ``force``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._progress import say, step
from .errors import ConfigError

__all__ = ["train_sae_job", "inspect_feature_job", "similarity_job", "parse_layers", "mapper_job", "cluster_job",
           "steer_compute_job", "steer_apply_job", "steer_sweep_job", "steer_decompose_job", "steer_propagate_job"]


def _held_out_tokens(store: Any, hook: str) -> dict[str, np.ndarray]:
    """A store's activations at ``hook`` with each token's id, document and position, all shards joined."""
    parts = list(store.iter_shards([hook, "token_ids", "doc_index", "position"]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _sorted_in_windows(texts: Sequence[str], window: int) -> list[str]:
    """Documents sorted by length inside consecutive windows: batches pad less, order stays mixed."""
    out: list[str] = []
    for i in range(0, len(texts), window):
        out.extend(sorted(texts[i : i + window], key=len))
    return out


def train_sae_job(model_name: str, hook: str, out: Path, *, tokens: int = 300_000, d_sae: int = 4096,
                  architecture: str = "topk", k: int = 32, corpus_files: Sequence[str] | None = None,
                  seed: int = 0, batch_size: int = 1024, lr: float = 2e-3, context_length: int = 128,
                  extract_batch: int = 16, eval_tokens: int = 20_000, ce_documents: int = 96, pack: bool = True,
                  epochs: int = 2,
                  force: bool = False, command: Sequence[str] | None = None) -> dict:
    """Extract activations (cached, resumable), train an SAE with SAELens, measure it on held-out text."""
    from . import activations, corpus, models, reports, saes

    reports.check_output_dir(out, force)
    if tokens < batch_size:
        raise ConfigError(f"--tokens {tokens} is smaller than one training batch ({batch_size} tokens); "
                          "ask for more tokens or a smaller --batch-size")
    t0 = time.perf_counter()
    resolved = models.resolve(model_name)
    model = models.load_model(resolved)
    activations.check_hooks(model, [hook])
    with step("Reading the corpus"):
        docs = corpus.text_files(corpus_files) if corpus_files else corpus.wordnet_glosses()
        train_docs, eval_docs = docs.split(0.1)
        train_texts = _sorted_in_windows(train_docs.shuffled(seed).texts, 64 * extract_batch)
        eval_shuffled = eval_docs.shuffled(seed).texts  # the CE sample must not be biased towards short texts
        eval_texts = _sorted_in_windows(eval_shuffled, 64 * extract_batch)
    key = hashlib.sha256(json.dumps([activations.STORE_FORMAT, resolved.provenance.get("gguf_sha256", model_name),
                                     hook, docs.name,
                                     docs.provenance, seed, context_length, pack], sort_keys=True, default=str)
                         .encode()).hexdigest()[:16]
    root = models.cache_dir() / "activations" / key
    with step(f"Extracting {tokens:,} training tokens at {hook} (cached in {root})"):
        train_store = activations.extract_to_store(
            model, train_texts, [hook], root / f"train-{tokens}", model_name=model_name, corpus_name=docs.name,
            corpus_provenance=docs.provenance, batch_size=extract_batch, context_length=context_length,
            max_tokens=tokens, pack=pack, seed=seed)
    with step(f"Extracting {eval_tokens:,} held-out tokens"):
        eval_store = activations.extract_to_store(
            model, eval_texts, [hook], root / f"heldout-{eval_tokens}", model_name=model_name,
            corpus_name=docs.name, corpus_provenance=docs.provenance, batch_size=extract_batch,
            context_length=context_length, max_tokens=eval_tokens, pack=pack, seed=seed)
    X = train_store.load(hook)
    t_extract = time.perf_counter() - t0
    with step(f"Training a {architecture} SAE (d_sae {d_sae}) on {len(X):,} tokens x {epochs} epochs with SAELens"):
        t1 = time.perf_counter()
        sae = saes.train_sae(X, d_sae=d_sae, architecture=architecture, k=k, total_tokens=epochs * len(X),
                             batch_size=batch_size, lr=lr, seed=seed, hook_name=hook, model_name=model_name)
        t_train = time.perf_counter() - t1
    del X
    with step("Measuring the SAE on held-out text"):
        metrics = saes.sae_metrics(sae, eval_store.load(hook))
        batches = []
        for i in range(0, min(ce_documents, len(eval_shuffled)), 16):
            ids, mask, _ = activations.tokenize(model, eval_shuffled[i : i + 16], context_length)
            batches.append((ids, mask))
        metrics.update(saes.ce_loss_recovered(model, sae, hook, batches))
        metrics["statistics"] = saes.quality_statistics(metrics)
    extra = {
        "geomsteer_result": "sae",
        "command": list(command) if command else None,
        "model": model_name, "hook": hook, "architecture": architecture, "d_sae": d_sae,
        "k": k if architecture == "topk" else None, "tokens": int(train_store.n_tokens), "seed": seed,
        "lr": lr, "batch_size": batch_size, "epochs": epochs, "context_length": context_length, "packed": pack,
        "ce_documents": ce_documents,
        "corpus": {"name": docs.name, **docs.provenance},
        "activation_stores": {"train": str(train_store.path), "held_out": str(eval_store.path)},
        "model_provenance": resolved.provenance,
        "seconds": {"extraction": round(t_extract, 1), "training": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "packages": reports.package_versions(),
    }
    saes.save_sae(sae, out, metrics=metrics, extra=extra, replace=force)
    say(f"  L0 {metrics['l0']:.1f}, variance explained {metrics['fraction_variance_explained']:.3f}, "
        f"CE loss recovered {metrics['ce_loss_recovered']:.3f} (mean ablation: "
        f"{metrics['ce_loss_recovered_mean_ablation']:.3f}; delta CE {metrics['delta_ce']:.3f} nats), "
        f"dead {metrics['dead_fraction']:.1%}")
    return {"metrics": metrics, **extra}


def inspect_feature_job(sae_dir: Path, feature: int, n_contexts: int = 10, out: Path | None = None) -> dict:
    """Top contexts, logit lens and density of one feature of an SAE that ``geomsteer sae train`` wrote."""
    from . import activations, models, reports, saes
    from .errors import DataError

    sae_dir = Path(sae_dir)
    info_path = sae_dir / "geomsteer.json"
    sae = saes.load_sae(sae_dir)
    saes._check_feature(sae, feature)
    if not info_path.is_file():
        raise DataError(f"{str(sae_dir)!r} has no geomsteer.json: expected an SAE written by 'geomsteer sae train', "
                        "which records the model, hook and held-out activations the card needs")
    info = json.loads(info_path.read_text())
    store = activations.ActivationStore(info["activation_stores"]["held_out"])
    hook = info["hook"]
    if store.manifest["d"][hook] != sae.cfg.d_in:
        raise DataError(f"the SAE reads vectors of size {sae.cfg.d_in} but the activations at {hook} have size "
                        f"{store.manifest['d'][hook]}; use an SAE trained on this model and hook")
    with step(f"Encoding {store.n_tokens:,} held-out tokens"):
        cat = _held_out_tokens(store, hook)
        acts = saes.encode(sae, cat[hook])[:, feature]
    emb = models.load_unembedding(info["model"])
    id_to_tok = emb.id_to_token
    lens = saes.logit_lens(sae, feature, emb.gamma, norm_scale=emb.final_norm_scale)
    ctx = saes.top_contexts(acts, cat["token_ids"], cat["doc_index"], cat["position"], n=n_contexts)
    firing = acts > 0
    card = {
        "feature": feature, "sae": str(sae_dir), "model": info["model"], "hook": hook,
        "density": {"fraction": float(firing.mean()), "n_tokens": int(len(acts)),
                    "mean_when_firing": float(acts[firing].mean()) if firing.any() else 0.0,
                    "max": float(acts.max())},
        "contexts": [{**c, "tokens": [(id_to_tok[t], a) for t, a in c["tokens"]]} for c in ctx],
        "logit_lens": {k: [(id_to_tok[t], s) for t, s in v] for k, v in lens.items()},
        "provenance": {"sae_dir": str(sae_dir), "held_out_store": str(store.path), "trained": {
            k: info.get(k) for k in ("model", "hook", "architecture", "d_sae", "k", "tokens", "seed")}},
    }
    path = reports.write_feature_card(out or sae_dir / "cards" / f"feature-{feature}.html", card)
    return {**card, "card": str(path)}


# --------------------------------------------------------------------------------------------
# Cross-model similarity


def _balanced_sample(word_group: dict[str, str], n: int, seed: int) -> list[str]:
    """Up to ``n`` words, as many from each group as the smallest groups allow (seeded)."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[str]] = {}
    for w, g in sorted(word_group.items()):
        by.setdefault(g, []).append(w)
    sizes = sorted(len(v) for v in by.values())
    cap, left, groups_left = 0, n, len(sizes)
    for s in sizes:  # the largest cap such that sum(min(size, cap)) <= n
        if s * groups_left <= left:
            left -= s
            groups_left -= 1
            cap = s
        else:
            cap = left // groups_left
            break
    out: list[str] = []
    for g in sorted(by):
        ws = by[g]
        take = min(len(ws), cap)
        out += [ws[i] for i in sorted(rng.choice(len(ws), take, replace=False))]
    return out


def parse_layers(spec: str, n_layers: int, model_name: str) -> list[int]:
    """``all``, ``every:K`` (0, K, 2K, ... and the last layer) or a comma list such as ``0,6,12``."""
    spec = spec.strip()
    if spec == "all":
        return list(range(n_layers))
    if spec.startswith("every:"):
        try:
            step_ = int(spec[6:])
        except ValueError:
            step_ = 0
        if step_ < 1:
            raise ConfigError(f"--layers {spec!r}: expected every:K with K a positive integer, e.g. every:2")
        return sorted(set(range(0, n_layers, step_)) | {n_layers - 1})
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers {spec!r}: expected 'all', 'every:K' or layer numbers such as 0,6,12") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {spec!r}: {model_name} has layers 0..{n_layers - 1}; got {bad or 'none'}")
    return sorted(set(layers))


def similarity_job(model_names: Sequence[str], out: Path, *, n_words: int = 4000, rule: str = "last",
                   prefix: str = "", max_tokens: int = 3, layers: str = "all", k: int = 10,
                   n_permutations: int = 1000, random_baseline: bool = True, scan_permutations: int = 200,
                   sae_dirs: Sequence[str] | None = None,
                   feature_texts: int = 2000, seed: int = 0, force: bool = False,
                   command: Sequence[str] | None = None) -> dict:
    """Word-aligned layer x layer similarity of two models with baselines, and optional SAE matching."""
    from . import activations, corpus, models, reports, saes
    from .analyzers.similarity import FeatureMatcher, SimilarityAnalyzer
    from .types import Activations
    from .wordnet import DEFAULT_GROUPS, grouped_words

    model_names = list(model_names or [])
    if len(model_names) != 2:
        raise ConfigError(f"a cross-model run needs exactly two models, got {len(model_names)} "
                          f"({', '.join(model_names) or 'none'}); pass --models A B, e.g. --models gemma-3-270m "
                          "qwen2.5-0.5b")
    if rule not in activations.RULES:
        raise ConfigError(f"unknown --rule {rule!r}: expected one of {', '.join(activations.RULES)}")
    if n_words < 4 * k:
        raise ConfigError(f"--words {n_words} is too few for k = {k} neighbours: ask for at least {4 * k}")
    if sae_dirs is not None and len(sae_dirs) != 2:
        raise ConfigError(f"--sae needs one SAE directory per model (2), got {len(sae_dirs)}")
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    resolved = [models.resolve(m) for m in model_names]
    sae_info = []
    if sae_dirs is not None:
        for d in sae_dirs:
            info_path = Path(d) / "geomsteer.json"
            sae = saes.load_sae(d)
            hook = json.loads(info_path.read_text())["hook"] if info_path.is_file() else sae.cfg.metadata.hook_name
            sae_info.append((Path(d), sae, hook))
    word_group = grouped_words(DEFAULT_GROUPS)
    words = _balanced_sample(word_group, n_words, seed)
    texts = []
    if sae_info:
        _, held_out = corpus.wordnet_glosses().split(0.1)
        texts = held_out.shuffled(seed).texts[:feature_texts]

    reps: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    feature_acts: list[np.ndarray] = []
    feature_ok: list[np.ndarray] = []
    layer_lists = []
    for idx, (name, r) in enumerate(zip(model_names, resolved)):
        t_model = time.perf_counter()
        model = models.load_model(r)
        lay = parse_layers(layers, model.cfg.n_layers, name)
        layer_lists.append(lay)
        hooks = [f"blocks.{i}.hook_resid_post" for i in lay]
        if sae_info:
            sd, sae, hook = sae_info[idx]
            if sae.cfg.d_in != model.cfg.d_model:
                raise ConfigError(f"the SAE at {str(sd)!r} reads vectors of size {sae.cfg.d_in}, but {name} has "
                                  f"d_model {model.cfg.d_model}; give the SAEs in the order of --models")
            activations.check_hooks(model, [hook])
        acts, kept, n_tok = activations.unit_activations(model, words, hooks, rule=rule, prefix=prefix,
                                                         max_tokens=max_tokens, description=f"{name}: words")
        reps[name] = {"hooks": hooks, "acts": acts, "kept": kept, "n_tokens": n_tok}
        if sae_info:
            _, sae, hook = sae_info[idx]
            wa, ok = activations.word_activations_in_text(model, texts, [hook],
                                                          description=f"{name}: words in {len(texts)} glosses")
            feature_acts.append(wa[hook])
            feature_ok.append(ok)
        if random_baseline:
            with step(f"Re-randomizing {name} (every weight tensor's entries shuffled, seed {seed})"):
                models.rerandomize(model, seed)
            racts, _, _ = activations.unit_activations(model, words, hooks, rule=rule, prefix=prefix,
                                                       max_tokens=max_tokens,
                                                       description=f"{name} (re-randomized): words")
            reps[name]["random"] = racts
        del model
        seconds[f"model {name}"] = round(time.perf_counter() - t_model, 1)

    kept_both = reps[model_names[0]]["kept"] & reps[model_names[1]]["kept"]
    labels = [w for w, k_ in zip(words, kept_both) if k_]
    if len(labels) < 4 * k:
        raise ConfigError(f"only {len(labels)} words are represented by both models (of {len(words)}); raise "
                          "--max-tokens or --words")

    def side(name: str, key: str) -> list[Activations]:
        rep = reps[name]
        rows = kept_both[rep["kept"]]  # rows of this model's kept words that both models kept
        return [Activations(rep[key][h][rows], labels, name if key == "acts" else f"{name} (re-randomized)", h,
                            {"rule": rule, "prefix": prefix, "max_tokens": max_tokens}) for h in rep["hooks"]]

    a, b = side(model_names[0], "acts"), side(model_names[1], "acts")
    ra = side(model_names[0], "random") if random_baseline else None
    rb = side(model_names[1], "random") if random_baseline else None
    groups = [word_group[w] for w in labels]
    t_fit = time.perf_counter()
    with step("Layer x layer scans, best pairs and semantic groups"):
        analyzer = SimilarityAnalyzer(k=k, n_permutations=n_permutations, scan_permutations=scan_permutations,
                                      seed=seed).fit(
            a, b, random_a=ra, random_b=rb, groups=groups)
    seconds["scans and comparisons"] = round(time.perf_counter() - t_fit, 1)
    matcher = None
    if sae_info:
        ok = feature_ok[0] & feature_ok[1]
        t_match = time.perf_counter()
        with step(f"Matching SAE features on {int(ok.sum()):,} words of shared text"):
            codes = [saes.encode(sae, X[ok]) for (_, sae, _), X in zip(sae_info, feature_acts)]
            dec = [sae.W_dec.detach().cpu().numpy() for _, sae, _ in sae_info]
            matcher = FeatureMatcher(seed=seed).fit(
                codes[0], codes[1], dec[0], dec[1],
                provenance={"saes": [str(d) for d, _, _ in sae_info], "hooks": [h for _, _, h in sae_info],
                            "texts": len(texts), "words_in_text": int(len(ok)), "words_aligned": int(ok.sum()),
                            "words_dropped": int((~ok).sum()), "corpus": "WordNet glosses (held-out split)"})
        seconds["feature matching"] = round(time.perf_counter() - t_match, 1)
    dropped = {name: {"too_many_tokens_or_unknown": int((~reps[name]["kept"]).sum())} for name in model_names}
    provenance = {
        "command": list(command) if command else None,
        "models": {name: r.provenance for name, r in zip(model_names, resolved)},
        "layers": {name: reps[name]["hooks"] for name in model_names},
        "words": {"asked": len(words), "used": len(labels), "dropped_from_both": len(words) - len(labels),
                  "dropped_by_model": dropped, "rule": rule, "prefix": prefix, "max_tokens": max_tokens,
                  "source": "WordNet nouns by first sense, balanced over groups", "groups": list(DEFAULT_GROUPS),
                  "list": labels, "group_of_word": groups},
        "seed": seed, "random_baseline": "every weight tensor's entries shuffled" if random_baseline else None,
        "elapsed_seconds": round(time.perf_counter() - t0, 1), "seconds": seconds,
        "packages": reports.package_versions(),
    }
    with step(f"Writing the report to {out}"):
        reports.write_similarity_report(analyzer, matcher, provenance, out, force=force)
    return {"analyzer": analyzer, "matcher": matcher, "provenance": provenance}


# --------------------------------------------------------------------------------------------
# Clustering and Mapper over WordNet concept words


def _concept_samples(model_name: str, hook: str, sae_dir: Path, concepts: Sequence[str], max_words: int, seed: int,
                     prefix: str, rule: str, max_tokens: int) -> dict:
    """Words under each concept through the model at ``hook`` and the SAE: activations and codes."""
    from . import activations, models, saes
    from .wordnet import concept_words

    words, labels, counts = concept_words(concepts)
    sae_dir = Path(sae_dir)
    sae = saes.load_sae(sae_dir, hook_name=hook)
    resolved = models.resolve(model_name)
    rng = np.random.default_rng(seed)
    per = max(1, max_words // len(counts["per_concept"]))
    lab = np.asarray(labels)
    pick = []
    for c in counts["per_concept"]:
        idx = np.flatnonzero(lab == c)
        pick += sorted(rng.choice(idx, min(per, len(idx)), replace=False).tolist())
    words = [words[i] for i in pick]
    labels = [labels[i] for i in pick]
    model = models.load_model(resolved)
    activations.check_hooks(model, [hook])
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
        "model": model_name, "model_provenance": resolved.provenance, "hook": hook, "sae": str(sae_dir),
        "concepts": list(counts["per_concept"]), "words_per_concept_available": counts["per_concept"],
        "ambiguous_words_dropped": counts["ambiguous_dropped"], "words_asked": len(pick),
        "words_used": len(words), "words_dropped_multitoken": int((~kept).sum()), "rule": rule, "prefix": prefix,
        "max_tokens": max_tokens, "seed": seed,
        "words_used_per_concept": {c: labels.count(c) for c in counts["per_concept"]},
    }
    return {"words": words, "labels": labels, "X": X, "codes": codes, "sae": sae, "model": model,
            "resolved": resolved, "provenance": provenance}


def mapper_job(model_name: str, hook: str, sae_dir: Path, concepts: Sequence[str], out: Path, *,
               max_words: int = 3000, lens: str = "pca", features: Sequence[int] | None = None, n_components: int = 2,
               n_cubes: int = 10, overlap: float = 0.3, min_samples: int = 5, eps_scale: float = 1.0,
               n_bootstrap: int = 5, n_null: int = 20, prefix: str = "", rule: str = "last", max_tokens: int = 3,
               seed: int = 0, force: bool = False, command: Sequence[str] | None = None) -> dict:
    """Mapper over the words of WordNet concepts, lens = the SAE feature space, clustering in activation space."""
    from . import reports
    from .analyzers.topology import MapperAnalyzer

    _check_null_draws(n_null)
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    analyzer = MapperAnalyzer(lens=lens, features=features, n_components=n_components, n_cubes=n_cubes,
                              overlap=overlap, min_samples=min_samples, eps_scale=eps_scale, n_bootstrap=n_bootstrap,
                              n_null=n_null, seed=seed)
    data = _concept_samples(model_name, hook, sae_dir, concepts, max_words, seed, prefix, rule, max_tokens)
    with step(f"Mapper on {len(data['words']):,} words ({lens} lens of the SAE codes, {n_cubes} cubes per dimension, "
              f"{n_bootstrap} bootstrap refits, {n_null} Gaussian surrogates)"):
        analyzer.fit(data["X"], data["codes"], labels=data["labels"], names=data["words"])
    provenance = {**data["provenance"], "command": list(command) if command else None,
                  "elapsed_seconds": round(time.perf_counter() - t0, 1), "packages": reports.package_versions()}
    with step(f"Writing the report to {out}"):
        reports.write_mapper_report(analyzer, provenance, out, force=force)
    return {"analyzer": analyzer, "provenance": provenance}


def cluster_job(model_name: str, hook: str, sae_dir: Path, concepts: Sequence[str], out: Path, *,
                space: str = "codes", n_clusters: int = 8, max_words: int = 3000, min_fires: int = 5,
                n_shuffles: int = 200, prefix: str = "", rule: str = "last", max_tokens: int = 3, seed: int = 0,
                force: bool = False, command: Sequence[str] | None = None) -> dict:
    """k-means over concept words (activations or SAE codes) or over the SAE features they use."""
    from . import models, reports
    from .analyzers.clustering import ClusterAnalyzer

    if space not in ("activations", "codes", "features"):
        raise ConfigError(f"unknown --space {space!r}: expected activations, codes or features")
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    data = _concept_samples(model_name, hook, sae_dir, concepts, max_words, seed, prefix, rule, max_tokens)
    emb = models.load_unembedding(data["resolved"])
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
    provenance = {**data["provenance"], "space": space, "rows": what, "command": list(command) if command else None,
                  "elapsed_seconds": round(time.perf_counter() - t0, 1), "packages": reports.package_versions()}
    with step(f"Writing the report to {out}"):
        reports.write_cluster_report(analyzer, provenance, out, force=force)
    return {"analyzer": analyzer, "provenance": provenance}


# --------------------------------------------------------------------------------------------
# Steering vectors


def _check_null_draws(n: int, allow_zero: bool = True) -> None:
    if not isinstance(n, int) or n < 0 or n == 1 or (n == 0 and not allow_zero):
        raise ConfigError(f"--null-draws must be {'0 (no nulls) or ' if allow_zero else ''}at least 2 draws per null, "
                          f"got {n!r}: a null distribution needs a mean and an sd; 20 is the default")


def _vector_file(path: Path, model_name: str, hooks: Sequence[str] | None = None) -> dict:
    """Vectors from a file, checked against the model name and the hooks asked for (before loading the model)."""
    from .errors import DataError
    from .steering import load_vectors

    vectors = load_vectors(path)
    first = next(iter(vectors.values()))
    if first.model and first.model != model_name:
        raise DataError(f"the vectors in {str(path)!r} were computed on {first.model!r}, not {model_name!r}; compute "
                        f"them on {model_name} with 'geomsteer steer compute --model {model_name}'")
    if hooks:
        missing = [h for h in hooks if h not in vectors]
        if missing:
            raise DataError(f"{str(path)!r} holds no vector at {missing[0]}; it has {', '.join(vectors)}: pick one of "
                            "those with --hook or compute a vector there")
        vectors = {h: vectors[h] for h in hooks}
    return vectors


def _one_vector(path: Path, model_name: str, hook: str | None) -> str:
    """The hook of the one vector a step uses: ``hook`` if given (and in the file), else the file's only one."""
    vectors = _vector_file(path, model_name, [hook] if hook else None)
    if hook is None and len(vectors) > 1:
        raise ConfigError(f"{str(path)!r} holds vectors at {', '.join(vectors)}: choose one with --hook")
    return next(iter(vectors))


def _check_vector_size(vectors: dict, model: Any, path: Path) -> None:
    from .errors import DataError

    for h, v in vectors.items():
        if v.vector.shape != (int(model.cfg.d_model),):
            raise DataError(f"the vector at {h} in {str(path)!r} has size {v.vector.shape[0]}, but this model's residual "
                            f"stream has size {model.cfg.d_model}; use a vector computed on this model")


def _run(kind: str, out: Path, force: bool, command: Sequence[str] | None, t0: float, provenance: dict,
         res: Any, files: dict | None = None) -> dict:
    from . import reports

    provenance = {**provenance, "command": list(command) if command else None,
                  "elapsed_seconds": round(time.perf_counter() - t0, 1), "packages": reports.package_versions()}
    with step(f"Writing the report to {out}"):
        reports.write_steering_report(kind, res, provenance, out, force=force, files=files)
    return {"result": res, "provenance": provenance}


def steer_compute_job(model_name: str, pairs_path: Path, out: Path, *, layers: str = "every:3", position: str = "last",
                      method: str = "mean_diff", force: bool = False, command: Sequence[str] | None = None) -> dict:
    """Steering vectors at several layers from a pair file; report how consistent the pairs are."""
    from . import activations, models, reports
    from .steering import METHODS, POSITIONS, compute_vectors, load_pairs, vectors_bytes
    from .types import AnalysisResult

    if position not in POSITIONS:
        raise ConfigError(f"unknown --position {position!r}: expected one of {', '.join(POSITIONS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown --method {method!r}: expected one of {', '.join(METHODS)}")
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    pairs, sha = load_pairs(pairs_path)
    resolved = models.resolve(model_name)
    model = models.load_model(resolved)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in parse_layers(layers, int(model.cfg.n_layers), model_name)]
    activations.check_hooks(model, hooks)
    with step(f"Reading {len(pairs)} pairs at {len(hooks)} layers ({position} token rule, {method})"):
        vectors = compute_vectors(model, pairs, hooks, position=position, method=method, model_name=model_name,
                                  data_sha256=sha)
    blob = vectors_bytes(vectors)
    per = {h: {"layer": activations._layer_of(h), "norm": v.norm, **v.provenance} for h, v in vectors.items()}
    res = AnalysisResult(analyzer="steering_compute", params={"position": position, "method": method, "layers": layers},
                         provenance={}, metrics={"per_hook": per})
    prov = {"model": model_name, "model_provenance": resolved.provenance, "pairs": str(pairs_path),
            "pairs_sha256": sha, "n_pairs": len(pairs), "hooks": hooks}
    return {**_run("steering_compute", out, force, command, t0, prov, res, {"vectors.safetensors": blob}),
            "vectors": vectors}


def _load_for_vectors(model_name: str, vector_path: Path, hooks: Sequence[str] | None) -> tuple[dict, Any, Any]:
    from . import models

    vectors = _vector_file(vector_path, model_name, hooks)
    resolved = models.resolve(model_name)
    model = models.load_model(resolved)
    _check_vector_size(vectors, model, vector_path)
    from .activations import check_hooks

    check_hooks(model, list(vectors))
    return vectors, model, resolved


def _vector_provenance(vector_path: Path, vectors: dict) -> dict:
    from ._atomic import sha256_file

    first = next(iter(vectors.values()))
    return {"vectors": str(vector_path), "vectors_sha256": sha256_file(Path(vector_path)),
            "vector_data_sha256": first.data_sha256, "vector_position": first.position,
            "vector_method": first.method, "vector_n_pairs": first.n_pairs}


def steer_apply_job(model_name: str, vector_path: Path, out: Path, *, hook: str | None = None, alpha: float = 4.0,
                    prompts: Sequence[str] = (), max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0,
                    force: bool = False, command: Sequence[str] | None = None) -> dict:
    """Generations with and without the vector (and with a random direction of its norm)."""
    import math

    from . import reports
    from .steering import generate, random_direction
    from .types import AnalysisResult

    if not math.isfinite(alpha):
        raise ConfigError(f"--alpha must be a finite number, got {alpha!r}")
    if not prompts:
        raise ConfigError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    vectors, model, resolved = _load_for_vectors(model_name, vector_path, [_one_vector(vector_path, model_name, hook)])
    h, sv = next(iter(vectors.items()))
    rnd = random_direction(sv.vector, seed + 1)
    rows = []
    with step(f"Generating {max_new_tokens} tokens for {len(prompts)} prompt(s), unsteered, steered and random"):
        plain = generate(model, prompts, max_new_tokens, temperature=temperature, seed=seed)
        steered = generate(model, prompts, max_new_tokens, sv, alpha, h, temperature=temperature, seed=seed)
        randomly = generate(model, prompts, max_new_tokens, rnd, alpha, h, temperature=temperature, seed=seed)
    for p, a, b, c in zip(prompts, plain, steered, randomly):
        rows.append({"prompt": p, "unsteered": a, "steered": b, "random_direction": c})
    res = AnalysisResult(analyzer="steering_apply",
                         params={"hook": h, "alpha": alpha, "max_new_tokens": max_new_tokens,
                                 "temperature": temperature, "seed": seed},
                         provenance={}, metrics={"vector_norm": sv.norm}, tables={"generations": rows})
    prov = {"model": model_name, "model_provenance": resolved.provenance, **_vector_provenance(vector_path, vectors)}
    return _run("steering_apply", out, force, command, t0, prov, res)


def _neutral_texts(n: int, seed: int) -> list[str]:
    from .corpus import wordnet_glosses

    return list(wordnet_glosses(examples=False).shuffled(seed))[:n]


def steer_sweep_job(model_name: str, vector_path: Path, eval_path: Path, out: Path, *, hooks: Sequence[str] | None = None,
                    alphas: Sequence[float] = (-4, -2, -1, 0, 1, 2, 4), n_neutral: int = 16, n_random: int = 3, n_samples: int = 2,
                    max_new_tokens: int = 24, seed: int = 0, n_null: int = 20, force: bool = False,
                    command: Sequence[str] | None = None) -> dict:
    """Multiplier x layer grid: target log-odds shift, KL on neutral text, samples; random-direction nulls."""
    from . import reports
    from ._progress import counter
    from .analyzers.steering import SteeringSweep, _check_alphas
    from .steering import NeutralText, load_eval, target_ids

    alphas = _check_alphas(alphas)
    _check_null_draws(n_null)
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    items, eval_sha = load_eval(eval_path)
    vectors, model, resolved = _load_for_vectors(model_name, vector_path, hooks)
    target_ids(model, items)  # bad targets fail before the long part
    neutral_texts = _neutral_texts(n_neutral, seed) if n_neutral > 0 else []
    with step(f"Unsteered next-token distributions on {len(neutral_texts)} neutral texts (WordNet glosses)"):
        neutral = NeutralText(model, neutral_texts, max_tokens=24) if neutral_texts else None
    sweep = SteeringSweep(alphas=alphas, n_random=n_random, n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed,
                          n_null=n_null)
    with counter(f"Sweeping {len(vectors)} layer(s) x {len(alphas)} multipliers", len(vectors) * len(alphas),
                 unit="cells") as advance:
        sweep.fit(model, vectors, items, neutral, sample_prompts=[it.prompt for it in items],
                  progress=lambda: advance(1))
    prov = {"model": model_name, "model_provenance": resolved.provenance, **_vector_provenance(vector_path, vectors),
            "eval": str(eval_path), "eval_sha256": eval_sha, "n_prompts": len(items),
            "neutral": {"source": "WordNet glosses (definitions), shuffled", "n_texts": len(neutral_texts),
                        "max_tokens": 24, "seed": seed}}
    return _run("steering_sweep", out, force, command, t0, prov, sweep.result())


def _feature_contexts(sae_dir: Path, sae: Any, features: Sequence[int], n: int) -> dict[int, list[str]]:
    """Top held-out contexts of some features, from the store recorded in the SAE's geomsteer.json."""
    from . import activations, models, saes

    info_path = Path(sae_dir) / "geomsteer.json"
    if n < 1 or not features or not info_path.is_file():
        return {}
    info = json.loads(info_path.read_text())
    try:
        store = activations.ActivationStore(info["activation_stores"]["held_out"])
    except Exception:  # the cache was cleared: contexts are optional
        say(f"(no top contexts: the held-out activations of {sae_dir} are no longer cached)")
        return {}
    hook = info["hook"]
    cat = _held_out_tokens(store, hook)
    codes = saes.encode(sae, cat[hook])[:, list(features)]
    tok = models.load_tokenizer(info["model"])
    out = {}
    for i, f in enumerate(features):
        ctx = saes.top_contexts(codes[:, i], cat["token_ids"], cat["doc_index"], cat["position"], n=n, window=6)
        out[int(f)] = ["".join((f"[[{s}]]" if j == c["firing"] else s) for j, s in
                               enumerate(tok.decode([t]) for t, _ in c["tokens"])).strip() for c in ctx]
    return out


def steer_decompose_job(model_name: str, vector_path: Path, sae_dir: Path, eval_path: Path, out: Path, *,
                        hook: str | None = None, alpha: float = 4.0, k: int = 32, nonneg: bool = False, top: int = 12,
                        n_contexts: int = 3, seed: int = 0, n_null: int = 20, force: bool = False,
                        command: Sequence[str] | None = None) -> dict:
    """The vector in an SAE's feature space (sparse coding and code differences) and whether that steers."""
    import math

    from . import models, reports, saes
    from .analyzers.steering import SteeringDecomposition
    from .errors import DataError
    from .steering import load_eval

    if not math.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"--alpha must be a finite non-zero number, got {alpha!r}")
    _check_null_draws(n_null, allow_zero=False)
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    items, eval_sha = load_eval(eval_path)
    sae = saes.load_sae(sae_dir)
    sae_hook = sae.cfg.metadata.get("hook_name") if hasattr(sae.cfg, "metadata") else None
    hook = _one_vector(vector_path, model_name, hook or sae_hook)
    if sae_hook and sae_hook != hook:
        raise DataError(f"the SAE at {str(sae_dir)!r} was trained at {sae_hook}, but the vector is at {hook}; "
                        "decompose with an SAE trained at the vector's hook")
    vectors, model, resolved = _load_for_vectors(model_name, vector_path, [hook])
    if sae.cfg.d_in != model.cfg.d_model:
        raise DataError(f"the SAE at {str(sae_dir)!r} reads vectors of size {sae.cfg.d_in}, but {model_name} has "
                        f"d_model {model.cfg.d_model}; use an SAE trained on this model")
    emb = models.load_unembedding(resolved)
    W_U = emb.gamma * (emb.final_norm_scale if emb.final_norm_scale is not None else 1.0)
    dec = SteeringDecomposition(k=k, nonneg=nonneg, top=top, seed=seed, n_null=n_null)
    with step(f"Decomposing the vector at {hook} into {sae.cfg.d_sae} SAE features (sparse coding, code differences "
              f"on half of {len(items)} prompts at multiplier {alpha:g}, steering effects on the other half, "
              f"{n_null} draws of each null)"):
        dec.fit(model, vectors[hook], sae, items, alpha, unembedding=W_U, vocab=emb.id_to_token)
    with step("Top contexts of the top features (the SAE's held-out tokens)"):
        ctx = _feature_contexts(sae_dir, sae, [r["feature"] for r in dec.features_], n_contexts)
    for r in dec.features_:
        r["top_contexts"] = ctx.get(r["feature"], [])
    prov = {"model": model_name, "model_provenance": resolved.provenance, **_vector_provenance(vector_path, vectors),
            "sae": str(sae_dir), "eval": str(eval_path), "eval_sha256": eval_sha, "n_prompts": len(items)}
    return _run("steering_decomposition", out, force, command, t0, prov, dec.result())


def steer_propagate_job(model_name: str, vector_path: Path, sae_dirs: Sequence[Path], eval_path: Path, out: Path, *,
                        hook: str | None = None, alphas: Sequence[float] = (1, 2, 4), threshold: float = 0.1,
                        top: int = 8, seed: int = 0, n_null: int = 20, force: bool = False,
                        command: Sequence[str] | None = None) -> dict:
    """Steer at the vector's layer; count and name the SAE features that change at each later layer."""
    from . import reports, saes
    from .analyzers.steering import SteeringPropagation, _check_alphas
    from .errors import DataError
    from .steering import load_eval

    alphas = _check_alphas(alphas)
    _check_null_draws(n_null)
    reports.check_output_dir(out, force)
    t0 = time.perf_counter()
    items, eval_sha = load_eval(eval_path)
    by_hook: dict[str, Any] = {}
    for d in sae_dirs:
        sae = saes.load_sae(d)
        h = sae.cfg.metadata.get("hook_name") if hasattr(sae.cfg, "metadata") else None
        if not h:
            raise DataError(f"the SAE at {str(d)!r} does not record its hook; expected an SAE written by 'geomsteer sae train'")
        if h in by_hook:
            raise DataError(f"two SAEs were given for {h}; give one SAE per layer")
        by_hook[h] = (sae, str(d))
    vectors, model, resolved = _load_for_vectors(model_name, vector_path, [_one_vector(vector_path, model_name, hook)])
    h0, sv = next(iter(vectors.items()))
    from .activations import check_hooks

    check_hooks(model, list(by_hook))
    prop = SteeringPropagation(alphas=alphas, threshold=threshold, top=top, seed=seed, n_null=n_null)
    from ._progress import counter

    n_passes = 2 * len([a for a in alphas if a != 0]) + n_null * (1 + (sv.pair_differences is not None))
    with counter(f"Steering at {h0}, encoding {len(by_hook)} layer(s) with SAEs ({n_null} draws of each null)", n_passes,
                 unit="passes") as advance:
        prop.fit(model, sv, {h: s for h, (s, _) in by_hook.items()}, items, progress=lambda: advance(1))
    prov = {"model": model_name, "model_provenance": resolved.provenance, **_vector_provenance(vector_path, vectors),
            "saes": {h: d for h, (_, d) in by_hook.items()}, "eval": str(eval_path), "eval_sha256": eval_sha,
            "n_prompts": len(items)}
    return _run("steering_propagation", out, force, command, t0, prov, prop.result())
