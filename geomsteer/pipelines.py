"""End-to-end jobs that compose the core modules; the CLI calls these and nothing else does the work.

Each job validates its inputs before any heavy step, reports progress on stderr, and writes its
output directory atomically (never over an existing one without ``force``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ._progress import say, step
from .errors import ConfigError

__all__ = ["train_sae_job", "inspect_feature_job"]


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
        f"CE loss recovered {metrics['ce_loss_recovered']:.3f}, dead {metrics['dead_fraction']:.1%}")
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
        parts = list(store.iter_shards([hook, "token_ids", "doc_index", "position"]))
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
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
