"""Cross-model similarity: the same WordNet nouns through two models, layer x layer, with nulls."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from .._progress import step
from ..errors import ConfigError, DataError
from ..hooks import check_hooks, parse_layers, resid_hook
from ..reports.common import package_versions
from ..results import SimilarityResult
from .common import DEFAULT_SEED, with_command

__all__ = ["similarity", "balanced_sample"]


def balanced_sample(word_group: dict[str, str], n: int, seed: int) -> list[str]:
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


def similarity(models: Sequence[Any], *, n_words: int = 4000, rule: str = "last",
                   prefix: str = "", max_tokens: int = 3, layers: str = "all", k: int = 10,
                   n_permutations: int = 1000, random_baseline: bool = True, scan_permutations: int = 200,
                   sae: Sequence[Any] | None = None,
                   feature_texts: int = 2000, seed: int = DEFAULT_SEED, device: str = "cpu",
                   dtype: str = "float32", backend: Any = "local", address: str | None = None,
                   batch_size: int = 256) -> SimilarityResult:
    """Word-aligned layer x layer similarity of two models with baselines, and optional SAE matching
    (what ``geomsteer similarity`` runs).

    ``models`` are two names or models from :func:`geomsteer.load_model` (a loaded model is copied
    before it is re-randomized for the baseline); ``sae`` one SAE directory (or :func:`geomsteer.sae.load`
    result) per model. ``device``/``dtype``: where and in what precision the models run (the statistics
    are computed in float64 whatever the dtype). ``backend="ray"`` (``address``: a running cluster)
    reads the words on Ray workers that load each model by name, a batch-aligned share of the
    words each, and computes every metric of the best pairs and the groups (with its permutation
    null) as Ray tasks; the results equal a local run's.
    """
    from .. import activations, corpus, saes
    from .. import models as M
    from ..analyzers.similarity import FeatureMatcher, SimilarityAnalyzer
    from ..reports import write_similarity_report
    from ..types import Activations
    from ..wordnet import DEFAULT_GROUPS, grouped_words

    sae_dirs = sae
    given = list(models or [])
    model_names = [m if isinstance(m, str) else type(m).__name__ for m in given]
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
    from ..backend import ModelRef, get_backend

    be = get_backend(backend, address)
    M.check_device(device)
    t0 = time.perf_counter()
    resolved = [M.resolve(m) if isinstance(m, str) else M.use_model(m)[1] for m in given]
    model_names = [r.name for r in resolved]
    if be.name != "local" and any(r.path is None for r in resolved):
        raise ConfigError("backend='ray' loads each model on its workers by name: pass model names (or models from "
                          "gs.load_model), not model objects built by hand")
    if model_names[0] == model_names[1]:
        model_names = [f"{n} ({i})" for i, n in enumerate(model_names, 1)]  # two runs of one model stay apart
    sae_info = []
    if sae_dirs is not None:
        for d in sae_dirs:
            sd = saes.read_sae_dir(d)
            if not sd.hook:
                raise ConfigError(f"the SAE at {str(sd.path)!r} does not record its hook; expected an SAE written by "
                                  "'geomsteer sae train'")
            sae_info.append((sd.path, sd.sae, sd.hook))
    word_group = grouped_words(DEFAULT_GROUPS)
    words = balanced_sample(word_group, n_words, seed)
    # only the words both tokenizers represent are read (tokenizing is cheap; a forward pass is not)
    from types import SimpleNamespace

    toks = [M.load_tokenizer(r) if isinstance(m, str) else m.tokenizer for m, r in zip(given, resolved)]
    kept_each = [activations.unit_plan(SimpleNamespace(tokenizer=t), words, rule, prefix, max_tokens)[2] for t in toks]
    asked = words
    words = [w for w, k0, k1 in zip(words, *kept_each) if k0 and k1]
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
        if be.name != "local":
            reps[name], fa = _read_on_backend(be, ModelRef(r, device, dtype), toks[idx], name, words, layers, rule, prefix,
                                              max_tokens, sae_info[idx] if sae_info else None, texts,
                                              seed if random_baseline else None, batch_size)
            layer_lists.append([int(h.split(".")[1]) for h in reps[name]["hooks"]])
            if fa is not None:
                feature_acts.append(fa[0])
                feature_ok.append(fa[1])
            seconds[f"model {name}"] = round(time.perf_counter() - t_model, 1)
            continue
        model = M.load_model(r, device=device, dtype=dtype) if isinstance(given[idx], str) else given[idx]
        lay = parse_layers(layers, model.cfg.n_layers, name)
        layer_lists.append(lay)
        hooks = [resid_hook(i) for i in lay]
        if sae_info:
            _check_sae(sae_info[idx], model.cfg.d_model, name)
            check_hooks(model, [sae_info[idx][2]])
        acts, kept, n_tok = activations.unit_activations(model, words, hooks, rule=rule, prefix=prefix,
                                                         max_tokens=max_tokens, batch_size=batch_size,
                                                         description=f"{name}: words")
        reps[name] = {"hooks": hooks, "acts": acts, "kept": kept, "n_tokens": n_tok}
        if sae_info:
            _, sae, hook = sae_info[idx]
            wa, ok = activations.word_activations_in_text(model, texts, [hook],
                                                          description=f"{name}: words in {len(texts)} glosses")
            feature_acts.append(wa[hook])
            feature_ok.append(ok)
        if random_baseline:
            with step(f"Re-randomizing {name} (every weight tensor's entries shuffled, seed {seed})"):
                if not isinstance(given[idx], str):
                    import copy

                    model = copy.deepcopy(model)  # the caller's model stays as it was
                M.rerandomize(model, seed, embedding_rows=read_rows(toks[idx], words, prefix))
            racts, _, _ = activations.unit_activations(model, words, hooks, rule=rule, prefix=prefix,
                                                       max_tokens=max_tokens, batch_size=batch_size,
                                                       description=f"{name} (re-randomized): words")
            _check_finite(racts, name)
            reps[name]["random"] = racts
        del model
        seconds[f"model {name}"] = round(time.perf_counter() - t_model, 1)

    kept_both = reps[model_names[0]]["kept"] & reps[model_names[1]]["kept"]
    labels = [w for w, k_ in zip(words, kept_both) if k_]
    if len(labels) < 4 * k:
        raise ConfigError(f"only {len(labels)} words are represented by both models (of {len(asked)}); raise "
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
            a, b, random_a=ra, random_b=rb, groups=groups, backend=be)
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
    dropped = {name: {"too_many_tokens_or_unknown": int((~ke).sum())} for name, ke in zip(model_names, kept_each)}
    provenance = {
        "models": {name: r.provenance for name, r in zip(model_names, resolved)},
        "layers": {name: reps[name]["hooks"] for name in model_names},
        "words": {"asked": len(asked), "used": len(labels), "dropped_from_both": len(asked) - len(labels),
                  "dropped_by_model": dropped, "rule": rule, "prefix": prefix, "max_tokens": max_tokens,
                  "source": "WordNet nouns by first sense, balanced over groups", "groups": list(DEFAULT_GROUPS),
                  "list": labels, "group_of_word": groups},
        "seed": seed, "device": device, "dtype": dtype, "backend": be.provenance(), "random_baseline": "every weight tensor's entries shuffled" if random_baseline else None,
        "elapsed_seconds": round(time.perf_counter() - t0, 1), "seconds": seconds,
        "packages": package_versions(),
    }

    res = analyzer.result()
    matching = matcher.result() if matcher is not None else None

    def write(out, force, command):
        with step(f"Writing the report to {out}"):
            return write_similarity_report(res, matching, with_command(provenance, command), out, force=force)

    return SimilarityResult(res, provenance, write, analyzer, matcher)


def read_rows(tokenizer: Any, words: Sequence[str], prefix: str) -> np.ndarray:
    """The token ids a word pass can read: every word's tokens, the prefix's, both context starts
    (the BOS and a newline) and the padding (a padded slot's value is multiplied by an attention
    weight of 0, which keeps a NaN); the re-randomized model draws only these embedding rows."""
    from types import SimpleNamespace

    from ..activations import unit_plan

    pieces = unit_plan(SimpleNamespace(tokenizer=tokenizer), list(words), "last", prefix, 1)[0]
    ids = [t for p in pieces for t in p]
    ids += tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    ids += tokenizer("\n", add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    ids.append(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return np.unique(np.asarray(ids, dtype=np.int64))


def _check_sae(info: tuple, d_model: int, name: str) -> None:
    sd, sae, _ = info
    if sae.cfg.d_in != d_model:
        raise ConfigError(f"the SAE at {str(sd)!r} reads vectors of size {sae.cfg.d_in}, but {name} has "
                          f"d_model {d_model}; give the SAEs in the order of --models")


def _read_on_backend(be: Any, ref: Any, tokenizer: Any, name: str, words: list[str], layers: Any, rule: str, prefix: str,
                     max_tokens: int, sae_info: tuple | None, texts: list[str], random_seed: int | None,
                     batch_size: int):
    """One model's words (and its re-randomized copy's, and its SAE hook in text) on a backend's workers."""
    from dataclasses import replace

    from .. import activations

    with be.model_pool(ref) as pool:
        shape = pool.run("shape")
        hooks = [resid_hook(i) for i in parse_layers(layers, shape["n_layers"], name)]
        fa = None
        if sae_info:
            _check_sae(sae_info, shape["d_model"], name)
            wa, ok = pool.run("words_in_text", texts, [sae_info[2]])
            fa = (wa[sae_info[2]], ok)
        acts, kept, n_tok = activations.unit_activations_pool(pool, words, hooks, rule, prefix, max_tokens,
                                                              batch_size, description=f"{name}: words ({be.name})")
    rep = {"hooks": hooks, "acts": acts, "kept": kept, "n_tokens": n_tok}
    if random_seed is not None:
        rows = tuple(read_rows(tokenizer, words, prefix).tolist())
        with be.model_pool(replace(ref, rerandomize_seed=random_seed, rerandomize_rows=rows)) as pool:
            rep["random"] = activations.unit_activations_pool(
                pool, words, hooks, rule, prefix, max_tokens, batch_size,
                description=f"{name} (re-randomized): words ({be.name})")[0]
        _check_finite(rep["random"], name)
    return rep, fa


def _check_finite(acts: dict[str, np.ndarray], name: str) -> None:
    bad = [h for h, X in acts.items() if not np.isfinite(X).all()]
    if bad:
        raise DataError(f"the re-randomized {name} gave non-finite activations at {bad[0]} (and {len(bad) - 1} more "
                        "hooks): a word pass read an embedding row that read_rows did not list; this is a bug in "
                        "geomsteer, please report it with the command line")
