"""Sparse autoencoders: train one on a model's activations, read an SAE directory, inspect a feature."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._progress import say, step
from ..errors import ConfigError
from ..hooks import check_hooks
from ..reports.common import package_versions
from ..results import FeatureCard, SaeResult
from ..saes import SaeDir, read_sae_dir
from ..types import AnalysisResult
from .common import check_output_dir, with_command

__all__ = ["train", "load", "inspect", "label", "split", "held_out_tokens"]


def held_out_tokens(store: Any, hook: str) -> dict[str, np.ndarray]:
    """A store's activations at ``hook`` with each token's id, document and position, all shards joined."""
    parts = list(store.iter_shards([hook, "token_ids", "doc_index", "position"]))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _sorted_in_windows(texts: Sequence[str], window: int) -> list[str]:
    """Documents sorted by length inside consecutive windows: batches pad less, order stays mixed."""
    out: list[str] = []
    for i in range(0, len(texts), window):
        out.extend(sorted(texts[i : i + window], key=len))
    return out


def train(model: Any, hook: str, *, tokens: int = 300_000, d_sae: int = 4096,
                  architecture: str = "topk", k: int = 32, corpus_files: Sequence[str] | None = None,
                  seed: int = 0, batch_size: int = 1024, lr: float = 2e-3, context_length: int = 128,
                  extract_batch: int = 16, eval_tokens: int = 20_000, ce_documents: int = 96, pack: bool = True,
                  epochs: int = 2, out: str | Path | None = None, force: bool = False, device: str = "cpu",
                  dtype: str = "float32", backend: Any = "local", address: str | None = None) -> SaeResult:
    """Extract activations (cached, resumable), train an SAE with SAELens, measure it on held-out text.

    ``model`` is a name or a model from :func:`geomsteer.load_model`. With ``out`` the SAE is also
    written there (SAELens's format plus ``geomsteer.json``), as ``geomsteer sae train`` does;
    otherwise call ``.save(dir)`` on the result. ``device``/``dtype``: where and in what precision the
    model runs (activations are stored in float32, the SAE trains in float32). ``backend="ray"``
    extracts the activation shards on Ray workers that load the model by name (identical shards).
    """
    from .. import activations, corpus, models, saes

    if out is not None:
        check_output_dir(Path(out), force)
    if tokens < batch_size:
        raise ConfigError(f"--tokens {tokens} is smaller than one training batch ({batch_size} tokens); "
                          "ask for more tokens or a smaller --batch-size")
    from ..backend import ModelRef, get_backend

    be = get_backend(backend, address)
    t0 = time.perf_counter()
    model, resolved = models.use_model(model, device=device, dtype=dtype)
    ref = ModelRef(resolved, device, dtype) if resolved.path is not None else None
    if be.name != "local" and ref is None:
        raise ConfigError("backend='ray' loads the model on its workers by name: pass a model name (or a model from "
                          "gs.load_model), not a model object built by hand")
    model_name = resolved.name
    check_hooks(model, [hook])
    with step("Reading the corpus"):
        docs = corpus.text_files(corpus_files) if corpus_files else corpus.wordnet_glosses()
        train_docs, eval_docs = docs.split(0.1)
        train_texts = _sorted_in_windows(train_docs.shuffled(seed).texts, 64 * extract_batch)
        eval_shuffled = eval_docs.shuffled(seed).texts  # the CE sample must not be biased towards short texts
        eval_texts = _sorted_in_windows(eval_shuffled, 64 * extract_batch)
    weights = resolved.provenance.get("gguf_sha256", model_name) if resolved.path is not None else _weights_sha256(model)
    key = hashlib.sha256(json.dumps([activations.STORE_FORMAT, weights,
                                     hook, docs.name,
                                     docs.provenance, seed, context_length, pack], sort_keys=True, default=str)
                         .encode()).hexdigest()[:16]
    root = models.cache_dir() / "activations" / key
    with step(f"Extracting {tokens:,} training tokens at {hook} (cached in {root})"):
        train_store = activations.extract_to_store(
            model, train_texts, [hook], root / f"train-{tokens}", model_name=model_name, corpus_name=docs.name,
            corpus_provenance=docs.provenance, batch_size=extract_batch, context_length=context_length,
            max_tokens=tokens, pack=pack, seed=seed, backend=be, model_ref=ref)
    with step(f"Extracting {eval_tokens:,} held-out tokens"):
        eval_store = activations.extract_to_store(
            model, eval_texts, [hook], root / f"heldout-{eval_tokens}", model_name=model_name,
            corpus_name=docs.name, corpus_provenance=docs.provenance, batch_size=extract_batch,
            context_length=context_length, max_tokens=eval_tokens, pack=pack, seed=seed, backend=be, model_ref=ref)
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
        "model": model_name, "hook": hook, "architecture": architecture, "d_sae": d_sae,
        "k": k if architecture == "topk" else None, "tokens": int(train_store.n_tokens), "seed": seed,
        "lr": lr, "batch_size": batch_size, "epochs": epochs, "context_length": context_length, "packed": pack,
        "ce_documents": ce_documents,
        "corpus": {"name": docs.name, **docs.provenance},
        "activation_stores": {"train": str(train_store.path), "held_out": str(eval_store.path)},
        "model_provenance": resolved.provenance, "device": device, "dtype": dtype, "backend": be.provenance(),
        "seconds": {"extraction": round(t_extract, 1), "training": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "packages": package_versions(),
    }
    say(f"  L0 {metrics['l0']:.1f}, variance explained {metrics['fraction_variance_explained']:.3f}, "
        f"CE loss recovered {metrics['ce_loss_recovered']:.3f} (mean ablation: "
        f"{metrics['ce_loss_recovered_mean_ablation']:.3f}; delta CE {metrics['delta_ce']:.3f} nats), "
        f"dead {metrics['dead_fraction']:.1%}")

    def write(dest, force_, command):
        return saes.save_sae(sae, dest, metrics=metrics, extra=with_command(extra, command), replace=force_)

    res = AnalysisResult(analyzer="sae", params={k: extra[k] for k in ("architecture", "d_sae", "k", "lr", "batch_size",
                                                                       "epochs", "context_length", "packed", "seed")},
                         provenance=extra, metrics=metrics)
    result = SaeResult(res, extra, write, sae)
    if out is not None:
        result.save(out, force)
    return result


def _weights_sha256(model: Any) -> str:
    """A digest of a model's weights (a model passed in has no files to name its activation cache by)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def load(path: str | Path | SaeDir, hook: str | None = None) -> SaeDir:
    """An SAE directory (SAELens's format, with geomsteer.json when geomsteer trained it): the SAE, its hook and
    model, its held-out activations. Errors say what the directory lacks."""
    return read_sae_dir(path, hook=hook)


def inspect(sae: str | Path | SaeDir, feature: int, n_contexts: int = 10, model: Any = None) -> FeatureCard:
    """Top held-out contexts, decoder logit lens and density of one feature (renders as its HTML card).

    ``sae`` is a directory written by ``geomsteer sae train`` or what :func:`load` returned; ``model``
    (optional) is the model it was trained on, for the logit lens (default: loaded from the name the
    SAE records)."""
    from .. import models, saes
    from ..reports import write_feature_card

    sd = read_sae_dir(sae)
    saes.check_feature(sd.sae, feature)
    if not sd.info:
        from ..errors import DataError

        raise DataError(f"{str(sd.path)!r} has no geomsteer.json: expected an SAE written by 'geomsteer sae train', "
                        "which records the model, hook and held-out activations the card needs")
    store = sd.held_out_store()
    hook = sd.hook
    with step(f"Encoding {store.n_tokens:,} held-out tokens"):
        cat = held_out_tokens(store, hook)
        acts = saes.encode(sd.sae, cat[hook])[:, feature]
    if model is not None:
        emb = models.unembedding_for(*models.use_model(model))
    else:
        emb = models.load_unembedding(sd.model)
    id_to_tok = emb.id_to_token
    lens = saes.logit_lens(sd.sae, feature, emb.gamma, norm_scale=emb.final_norm_scale)
    ctx = saes.top_contexts(acts, cat["token_ids"], cat["doc_index"], cat["position"], n=n_contexts)
    firing = acts > 0
    info = sd.info
    card = {
        "feature": feature, "sae": str(sd.path), "model": sd.model, "hook": hook,
        "density": {"fraction": float(firing.mean()), "n_tokens": int(len(acts)),
                    "mean_when_firing": float(acts[firing].mean()) if firing.any() else 0.0,
                    "max": float(acts.max())},
        "contexts": [{**c, "tokens": [(id_to_tok[t], a) for t, a in c["tokens"]]} for c in ctx],
        "logit_lens": {k: [(id_to_tok[t], s) for t, s in v] for k, v in lens.items()},
        "provenance": {"sae_dir": str(sd.path), "held_out_store": str(store.path), "trained": {
            k: info.get(k) for k in ("model", "hook", "architecture", "d_sae", "k", "tokens", "seed")}},
    }
    return FeatureCard(card, lambda path, force, command: write_feature_card(path, card))


def label(sae: str | Path | SaeDir, model: Any = None, *, n_words: int = 4000, template: str = "",
          min_category: int = 10, max_fraction: float = 0.5, min_fires: int = 3, alpha: float = 0.05,
          n_null: int = 100, seed: int = 0, decompose: Sequence[str] | None = None, k: int = 8, device: str = "cpu", dtype: str = "float32") -> Any:
    """WordNet labels for the SAE's features without a language-model judge (what ``geomsteer sae label`` runs).

    ``n_words`` plain WordNet nouns (drawn at random, seeded) are read at the SAE's hook, each after
    ``template`` (default: the word alone after the start token); a feature's label is the WordNet category
    most enriched among the words it fires on (hypergeometric test, Benjamini-Hochberg), with its precision
    and recall; the fraction of live features with a significant label stands beside shuffled memberships.

    Then, for the categories in ``decompose`` (default: the eight most frequent labels), the category's LDA
    direction at the hook (the words' activations whitened by their covariance, mapped back into the residual
    stream) is decomposed into ``k`` features (non-negative OMP): how much they explain against random directions
    from the activations' covariance, and whether they are the features labelled with that category
    (:class:`~geomsteer.analyzers.labels.LabelDecomposition`)."""
    from ..analyzers.labels import FeatureLabeler
    from ..pipelines.concepts import words_in_context
    from ..reports.features import write_features_report
    from ..results import FeatureResult
    from ..wordnet import category_memberships, load_wordnet
    from . import common

    if n_words < 50:
        raise ConfigError(f"--words must be at least 50 to test enrichment, got {n_words}")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must lie between 0 and 1, got {alpha!r}")
    if n_null < 2:
        raise ConfigError(f"--null-draws must be at least 2 shuffles, got {n_null}")
    t0 = time.perf_counter()
    sd = read_sae_dir(sae)
    if not sd.hook:
        from ..errors import DataError

        raise DataError(f"the SAE at {str(sd.path)!r} does not record its hook; expected an SAE written by "
                        "'geomsteer sae train'")
    if model is None:
        if not sd.model:
            raise ConfigError(f"the SAE at {str(sd.path)!r} does not name the model it was trained on: give it "
                              "(--model on the command line, model= from Python)")
        model = sd.model
    wn = load_wordnet()
    words = noun_sample(n_words, seed, wn)
    with step(f"Reading {len(words)} WordNet nouns at {sd.hook}"):
        X, kept, _ = words_in_context(model, words, sd.hook, templates=(template,), device=device, dtype=dtype)
    from .. import saes

    codes = saes.encode(sd.sae, np.asarray(X, dtype=np.float32))
    cats, M = category_memberships(kept, min_size=min_category, max_fraction=max_fraction, wordnet=wn)
    with step(f"Testing {codes.shape[1]} features against {len(cats)} WordNet categories ({n_null} shuffles)"):
        an = FeatureLabeler(alpha=alpha, min_fires=min_fires, n_null=n_null, seed=seed).fit(codes, M, cats, words=kept)
    res = an.result()
    res.params.update({"n_words": n_words, "template": template, "min_category": min_category,
                       "max_fraction": max_fraction, "k": k})
    labelled = {r["feature"]: r["label"] for r in an.labels_ if r["significant"]}
    if decompose is None:
        from collections import Counter

        decompose = [c for c, _ in Counter(labelled.values()).most_common(8)]
    unknown = [c for c in decompose if c not in cats]
    if unknown:
        raise ConfigError(f"--decompose {unknown[0]!r} is not a category of the words read: expected one of the "
                          f"{len(cats)} WordNet categories with at least {min_category} of them, such as "
                          f"{', '.join(cats[:3])}")
    if decompose:
        from ..analyzers.labels import LabelDecomposition
        from ..analyzers.lda import fit_whitening, lda_direction
        from ..wordnet import is_under

        Xf = np.asarray(X, dtype=np.float64)
        wh = fit_whitening(Xf, 1e-6)
        half = wh.inverse()
        G = wh(Xf)
        dirs = {c: lda_direction(G[M[:, cats.index(c)]]) @ half for c in decompose}
        def below(a: str, b: str) -> bool:
            return is_under(a, b, wn)

        live = [r["feature"] for r in an.labels_]
        with step(f"Decomposing {len(dirs)} categories' LDA directions into {k} features"):
            dec = LabelDecomposition(k=k, seed=seed).fit(dirs, sd.sae.W_dec.detach().float().cpu().numpy(), labelled,
                                                         Xf, below, live)
        res.metrics["statistics"].update(dec.metrics_["statistics"])
        res.tables["decomposition"] = dec.rows_
    prov = common.stamp({"sae": str(sd.path), "model": sd.model or str(model), "hook": sd.hook,
                         "n_words_read": len(kept), "words": "plain WordNet nouns (first sense), drawn at random"}, t0)

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_features_report("sae_labels", res, common.with_command(prov, command), out, force=force)

    return FeatureResult(res, prov, write, an)


def noun_sample(n_words: int, seed: int, wordnet: Any = None) -> list[str]:
    """``n_words`` plain WordNet nouns (lowercase letters, three or more; first senses), drawn at random, seeded."""
    import re

    from ..wordnet import load_wordnet

    wn = wordnet or load_wordnet()
    plain = re.compile(r"[a-z]{3,}")
    nouns = sorted({s.name.rpartition(".n.")[0] for s in wn.all("n")
                    if s.name.endswith(".n.01") and plain.fullmatch(s.name.rpartition(".n.")[0])})
    rng = np.random.default_rng([seed, 0x1AB])
    return [str(w) for w in rng.choice(nouns, min(n_words, len(nouns)), replace=False)]


TOKENS_PER_FEATURE = 16


def split(saes: Sequence[Any] | None = None, model: Any = None, *, hook: str | None = None,
          widths: Sequence[int] = (512, 2048, 8192), tokens: int = 150_000, k: int = 32, n_words: int = 4000,
          template: str = "", min_category: int = 10, max_fraction: float = 0.5, min_cos: float = 0.5,
          n_null: int = 1000, seed: int = 0, device: str = "cpu", dtype: str = "float32") -> Any:
    """Feature splitting across SAE widths against WordNet (what ``geomsteer sae split`` runs).

    Either ``saes`` (two or more SAE directories trained at one hook of one model, any order) or ``model`` and
    ``hook``: then an SAE of each of ``widths`` is trained on the same ``tokens`` cached activations (TopK,
    ``k``). Every feature is labelled from ``n_words`` WordNet nouns read at the hook (as :func:`label` does);
    each wide feature is linked to the narrower SAE's feature with the closest decoder direction; the share of
    labelled links whose child label lies at or under the parent's label in WordNet is tested against shuffled
    labels (:class:`~geomsteer.analyzers.splitting.FeatureSplitting`)."""
    import tempfile

    from .. import saes as S
    from ..analyzers.labels import FeatureLabeler
    from ..analyzers.splitting import FeatureSplitting
    from ..reports.features import write_features_report
    from ..results import FeatureResult
    from ..wordnet import category_memberships, is_under, load_wordnet, path_up
    from . import common
    from .concepts import words_in_context

    if n_words < 50:
        raise ConfigError(f"--words must be at least 50 to test enrichment, got {n_words}")
    if not 0 < min_cos < 1:
        raise ConfigError(f"--min-cos must lie between 0 and 1, got {min_cos!r}")
    if n_null < 2:
        raise ConfigError(f"--null-draws must be at least 2 shuffles, got {n_null}")
    t0 = time.perf_counter()
    trained: dict[int, Any] = {}
    files: dict[str, bytes] = {}
    if saes:
        dirs = [read_sae_dir(x) for x in saes]
        if len(dirs) < 2:
            raise ConfigError(f"--sae needs two or more SAE directories of different widths, got {len(dirs)}")
        hooks_ = {d.hook for d in dirs}
        if len(hooks_) != 1 or None in hooks_:
            raise ConfigError(f"the SAEs must read the same hook, got {', '.join(sorted(map(str, hooks_)))}; give SAEs "
                              "trained at one layer")
        hook = dirs[0].hook
        models_ = {d.model for d in dirs if d.model}
        if len(models_) > 1:
            raise ConfigError(f"the SAEs were trained on different models ({', '.join(sorted(models_))}); give SAEs of "
                              "one model")
        if model is None:
            if not models_:
                raise ConfigError("the SAEs do not name their model: give it (--model on the command line, model= from "
                                  "Python)")
            model = next(iter(models_))
        dirs.sort(key=lambda d: int(d.sae.cfg.d_sae))
        widths = [int(d.sae.cfg.d_sae) for d in dirs]
        if len(set(widths)) != len(widths):
            raise ConfigError(f"two SAEs have the same width ({widths}); give SAEs of different widths")
        sae_objs = [d.sae for d in dirs]
        sources = [str(d.path) for d in dirs]
    else:
        if model is None or hook is None:
            raise ConfigError("give either --sae DIR DIR ... (trained SAEs) or --model and --hook (to train one SAE per "
                              "--widths)")
        widths = sorted({int(w) for w in widths})
        if len(widths) < 2 or widths[0] < 2:
            raise ConfigError(f"--widths needs two or more different widths of at least 2, got {list(widths)}")
        need = TOKENS_PER_FEATURE * widths[-1]
        if tokens < need:
            raise ConfigError(f"--tokens {tokens:,} is too few for a {widths[-1]}-feature SAE: expected at least "
                              f"{TOKENS_PER_FEATURE} training tokens per feature ({need:,}); raise --tokens or use "
                              f"narrower --widths")
        if k >= widths[0]:
            raise ConfigError(f"--k {k} must be smaller than the narrowest width {widths[0]}")
        sae_objs, sources = [], []
        for w in widths:
            r = train(model, hook, tokens=tokens, d_sae=w, k=k, seed=seed)
            sae_objs.append(r.sae)
            with tempfile.TemporaryDirectory() as tmp:
                r.save(Path(tmp) / "sae")
                for f in sorted((Path(tmp) / "sae").iterdir()):
                    files[f"saes/{w}/{f.name}"] = f.read_bytes()
            trained[w] = {"metrics": {k_: r.result.metrics.get(k_) for k_ in ("l0", "fraction_variance_explained",
                                                                             "ce_loss_recovered", "dead_fraction")}}
            sources.append(f"trained here (saes/{w} in the output)")
    wn = load_wordnet()
    words = noun_sample(n_words, seed, wn)
    with step(f"Reading {len(words)} WordNet nouns at {hook}"):
        X, kept, _ = words_in_context(model, words, hook, templates=(template,), device=device, dtype=dtype)
    cats, M = category_memberships(kept, min_size=min_category, max_fraction=max_fraction, wordnet=wn)
    labels, codes, fractions = [], [], {}
    for w, sae in zip(widths, sae_objs):
        C = S.encode(sae, np.asarray(X, dtype=np.float32))
        with step(f"Labelling the {w}-feature SAE's features"):
            lab = FeatureLabeler(n_null=20, seed=seed).fit(C, M, cats, words=kept)
        labels.append({r["feature"]: r["label"] for r in lab.labels_ if r["significant"]})
        codes.append(C)
        fractions[str(w)] = lab.statistics_["labelled_fraction"]
    def below(child: str, parent: str) -> bool:
        return is_under(child, parent, wn)

    decoders = [s_.W_dec.detach().float().cpu().numpy() for s_ in sae_objs]
    with step(f"Linking features across widths {', '.join(map(str, widths))} ({n_null} label shuffles)"):
        an = FeatureSplitting(min_cos=min_cos, n_null=n_null, seed=seed).fit(decoders, labels, codes, below,
                                                                           names=[str(w) for w in widths])
    for tr in an.trees_:  # the WordNet subtree beside each split: each child label's path up to the parent's
        tr["wordnet_paths"] = {ch["label"]: path_up(ch["label"], tr["parent_label"], wn)
                               for ch in tr["children"] if ch["label"]}
    res = an.result()
    res.metrics["statistics"].update({f"labelled_fraction:{w}": st for w, st in fractions.items()})
    res.params.update({"widths": widths, "tokens": tokens if not saes else None, "k": k if not saes else None,
                       "n_words": n_words, "template": template, "min_category": min_category,
                       "max_fraction": max_fraction})
    prov = common.stamp({"model": str(model) if isinstance(model, str) else getattr(model.cfg, "model_name", "model"),
                         "hook": hook, "saes": sources, "trained": trained, "n_words_read": len(kept),
                         "n_categories": len(cats),
                         "words": "plain WordNet nouns (first sense), drawn at random"}, t0)

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_features_report("sae_split", res, common.with_command(prov, command), out, force=force,
                                         files=files)

    return FeatureResult(res, prov, write, an)
