"""Functional equivalence across two models (``geomsteer transfer``, ``gs.transfer.run``).

Two questions, on the same shared text read by both models:

1. Does a steering vector of model A steer model B once carried into B's residual basis? A's
   vector at A's hook is carried to B's hook by linear maps fitted on word-aligned activations
   (scaled orthogonal Procrustes and ridge) and, given an SAE per model, through matched SAE
   features (decompose in A's SAE, recompose with B's matched decoder rows). B is steered with
   each at the norm of its own vector; the target log-odds shift is reported as a fraction of B's
   own vector's shift, against random directions and against vectors carried by maps fitted on
   shuffled word pairs (or recomposed through shuffled matchings).
2. Given an SAE per model: do features matched by activation correlation do the same thing? For
   the best-matched pairs, each feature is ablated, and added along its decoder row, in its own
   model; the change in every shared word's log-probability is compared across the models
   (Pearson r over the words both models measure), against the same features re-paired at
   random and against the words shuffled; and whether activation correlation predicts effect
   similarity (Spearman over every pair of the chosen features).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np

from .._progress import step
from ..errors import ConfigError, DataError
from ..hooks import check_hooks, parse_layers, resid_hook
from .common import DEFAULT_SEED, check_null_draws, stamp, with_command

__all__ = ["transfer"]

MIN_WORDS = 8  # a text read for the word-level effects holds at least this many words


def _layer(value: Any, n_layers: int, name: str, what: str) -> int:
    lay = parse_layers(str(value), n_layers, name)
    if len(lay) != 1:
        raise ConfigError(f"{what} takes one layer of {name}, got {value!r}")
    return lay[0]


def transfer(models: Sequence[Any], *, sae: Sequence[Any] | None = None, layer_a: int | None = None,
             layer_b: int | str | None = "best", pairs: Any = "sentiment", eval: Any = "sentiment_eval",
             alpha: float = 4.0, texts: int = 1000, scan_texts: int = 200, effect_texts: int = 16, n_pairs: int = 16,
             effect_alpha: float = 4.0, k: int = 32, n_null: int = 20, direction_draws: int = 10,
             downstream_sae: Sequence[Any] | None = None, downstream_pairs: int = 64, n_permutations: int = 1000,
             seed: int = DEFAULT_SEED, device: str = "cpu", dtype: str = "float32") -> Any:
    """Carry A's steering vector into B and test whether matched SAE features act alike (what
    ``geomsteer transfer`` runs).

    ``models``: two names or loaded models (A, then B). ``sae``: one SAE directory per model; their
    hooks fix the layers (A's vector is computed at A's SAE hook, B is steered at B's). Without SAEs,
    ``layer_a`` (default: a third of A's depth) and ``layer_b`` (a number, or ``"best"``: B's layer
    whose debiased CKA with A's layer is highest on the scan words) choose them, and only the
    linear maps run. ``pairs``/``eval``: the contrastive pairs both vectors are computed from and the
    evaluation prompts B is steered on; ``alpha`` the multiplier (every vector at the norm of B's own).
    ``texts`` held-out WordNet glosses give the word-aligned activations (maps, matching); the first
    ``scan_texts`` of them the layer scan; ``effect_texts`` further glosses the word-level effects of
    the ``n_pairs`` best-matched feature pairs, each added at ``effect_alpha`` times its typical
    activation. ``k`` atoms code A's vector in A's SAE; ``n_null`` draws of the random-direction,
    shuffled-map and shuffled-matching nulls; ``n_permutations`` re-pairings and word shuffles;
    ``direction_draws`` draws of the ablation control (B's features' amounts removed at the same
    positions along random directions). ``downstream_sae``: one SAE per model at a later layer; the
    ``downstream_pairs`` best-matched pairs of its features are read under every intervention, and the
    two models' changes compared as the word effects are.
    """
    from .. import corpus, saes
    from .. import models as M
    from ..activations import word_activations_in_text
    from ..analyzers.transfer import TransferAnalyzer
    from ..metrics import linear_cka
    from ..results import TransferResult
    from ..steering import compute_vectors, load_pairs
    from ..steering.evaluate import NeutralText
    from ..transfer import (WordEffects, feature_route, fit_linear_map, measure_transfer, shuffled_maps)
    from .steer import _eval_items

    given = list(models or [])
    if len(given) != 2:
        names = [m if isinstance(m, str) else type(m).__name__ for m in given]
        raise ConfigError(f"a transfer needs exactly two models, A then B, got {len(given)} ({', '.join(names) or 'none'})"
                          "; pass --models A B, e.g. --models gemma-3-270m qwen2.5-0.5b")
    if sae is not None and len(sae) != 2:
        raise ConfigError(f"--sae needs one SAE directory per model (2: A's then B's), got {len(sae)}")
    if downstream_sae is not None and (sae is None or len(downstream_sae) != 2):
        raise ConfigError("--downstream-sae needs --sae, and one SAE directory per model (2: A's then B's), got "
                          f"{len(downstream_sae)}")
    if not math.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"--alpha must be a finite non-zero number, got {alpha!r}")
    if not math.isfinite(effect_alpha) or effect_alpha == 0:
        raise ConfigError(f"--effect-alpha must be a finite non-zero number, got {effect_alpha!r}")
    check_null_draws(n_null, allow_zero=False)
    if sae is not None and (layer_a is not None or layer_b not in (None, "best")):
        raise ConfigError("--layer-a and --layer-b choose the layers without --sae; with --sae each SAE's hook is its "
                          "model's layer: drop --layer-a/--layer-b, or give SAEs trained at the layers you want")
    for name, v, low in (("--texts", texts, 20), ("--scan-texts", scan_texts, 10), ("--effect-texts", effect_texts, 2),
                         ("--pairs-tested", n_pairs, 4), ("--k", k, 1), ("--permutations", n_permutations, 20),
                         ("--direction-draws", direction_draws, 2), ("--downstream-pairs", downstream_pairs, 4)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"{name} must be an integer of at least {low}, got {v!r}")
    if scan_texts > texts:
        raise ConfigError(f"--scan-texts ({scan_texts}) are the first of the --texts ({texts}): give at most as many")
    t0 = time.perf_counter()
    resolved = [M.resolve(m) if isinstance(m, str) else M.use_model(m)[1] for m in given]
    names = [r.name for r in resolved]
    if names[0] == names[1]:
        names = [f"{n} ({i})" for i, n in enumerate(names, 1)]
    sds = [saes.read_sae_dir(d) for d in sae] if sae is not None else None
    downs = [saes.read_sae_dir(d) for d in downstream_sae] if downstream_sae is not None else None
    if sds:
        for sd in sds + (downs or []):
            if not sd.hook:
                raise ConfigError(f"the SAE at {str(sd.path)!r} does not record its hook; expected an SAE written by "
                                  "'geomsteer sae train'")
    pair_list, pairs_sha = load_pairs(_pairs_path(pairs))
    items, eval_sha, eval_path = _eval_items(eval)
    _, held_out = corpus.wordnet_glosses().split(0.1)
    pool = held_out.shuffled(seed).texts
    from ..activations import text_words

    map_texts = list(pool[:texts])
    rest = [t for t in pool[texts:] if len(text_words(t)) >= MIN_WORDS]
    eff_texts, neutral = rest[:effect_texts], rest[effect_texts : effect_texts + 16]
    seconds: dict[str, float] = {}

    # ---- model A: its vector and its words
    t = time.perf_counter()
    A = M.load_model(resolved[0], device=device, dtype=dtype) if isinstance(given[0], str) else given[0]
    if sds:
        hook_a = sds[0].hook
        _check_sae(sds[0], A, names[0])
    else:
        hook_a = resid_hook(_layer(layer_a if layer_a is not None else int(A.cfg.n_layers) // 3, int(A.cfg.n_layers),
                                   names[0], "--layer-a"))
    check_hooks(A, [hook_a])
    with step(f"{names[0]}: the {_set_name(pairs)} vector at {hook_a} ({len(pair_list)} pairs)"):
        v_a = compute_vectors(A, pair_list, [hook_a], model_name=names[0], data_sha256=pairs_sha)[hook_a].vector
    Xa, down_a, ok_a = _words(A, names[0], map_texts, hook_a, downs[0] if downs else None)
    seconds[f"model {names[0]}"] = round(time.perf_counter() - t, 1)

    # ---- model B: the layer scan, its words and its own vector
    t = time.perf_counter()
    B = M.load_model(resolved[1], device=device, dtype=dtype) if isinstance(given[1], str) else given[1]
    n_b = int(B.cfg.n_layers)
    scan_hooks = [resid_hook(i) for i in range(n_b)]
    Sb, ok_s = word_activations_in_text(B, map_texts[:scan_texts], scan_hooks,
                                        description=f"{names[1]}: words in {scan_texts} glosses, every layer")
    rows = np.flatnonzero(ok_s & ok_a[: len(ok_s)])
    if len(rows) < 50:
        raise DataError(f"only {len(rows)} words of the scan texts are read by both models; raise --scan-texts")
    scan = [float(linear_cka(Xa[rows], Sb[h][rows], debiased=True)) for h in scan_hooks]
    best = int(np.nanargmax(scan))
    if sds:
        hook_b = sds[1].hook
        _check_sae(sds[1], B, names[1])
    elif layer_b in (None, "best"):
        hook_b = scan_hooks[best]
    else:
        hook_b = resid_hook(_layer(layer_b, n_b, names[1], "--layer-b"))
    check_hooks(B, [hook_b])
    # the scan texts were read at every layer already: only the rest are read again
    Xb, down_b, ok_b = _words(B, names[1], map_texts[scan_texts:], hook_b, downs[1] if downs else None)
    Xb = np.concatenate([Sb[hook_b], Xb])
    if down_b is not None:
        down_b = np.concatenate([Sb[downs[1].hook], down_b])
    ok_b = np.concatenate([ok_s, ok_b])
    with step(f"{names[1]}: its own {_set_name(pairs)} vector at {hook_b}"):
        v_b = compute_vectors(B, pair_list, [hook_b], model_name=names[1], data_sha256=pairs_sha)[hook_b].vector
    seconds[f"model {names[1]}"] = round(time.perf_counter() - t, 1)

    # ---- maps on the aligned words, and the vectors they carry
    aligned = ok_a & ok_b
    if aligned.sum() < 100:
        raise DataError(f"only {int(aligned.sum())} words are read by both models; raise --texts")
    XA, XB = Xa[aligned].astype(np.float64), Xb[aligned].astype(np.float64)
    t = time.perf_counter()
    maps, nulls_r2, transferred, null_vectors = {}, {}, {}, {}
    with step(f"Fitting maps {hook_a} -> {hook_b} on {int(aligned.sum()):,} aligned words ({n_null} shuffled-pair "
              "maps each)"):
        for method in ("procrustes", "ridge"):
            maps[method] = fit_linear_map(XA, XB, method, seed=seed)
            sh = shuffled_maps(XA, XB, method, n=n_null, seed=seed)
            nulls_r2[method] = np.array([m.info["heldout_r2"] for m in sh])
            transferred[f"linear_{method}"] = maps[method].vector(v_a)
            null_vectors[f"linear_{method}:shuffled_map"] = [m.vector(v_a) for m in sh]
    seconds["maps"] = round(time.perf_counter() - t, 1)

    matching = route = None
    if sds:
        t = time.perf_counter()
        with step(f"Matching SAE features on {int(aligned.sum()):,} aligned words"):
            from ..metrics import feature_correlation, match_features

            ca = saes.encode(sds[0].sae, Xa[aligned])
            cb = saes.encode(sds[1].sae, Xb[aligned])
            C = feature_correlation(ca, cb)
            ia, ib, corr = match_features(C, "hungarian")
        with step(f"The same matching on shuffled words ({n_null} draws)"):
            from ..metrics import matching_null

            chance = matching_null(ca, cb, n_null, seed=seed, top=n_pairs)
            scale_a = _typical(ca)
            scale_b = _typical(cb)
        Da = sds[0].sae.W_dec.detach().float().numpy()
        Db = sds[1].sae.W_dec.detach().float().numpy()
        route = feature_route(v_a, Da, Db, ia, ib, k=k, n_null=n_null, seed=seed)
        transferred["features"] = route["vector"]
        null_vectors["features:shuffled_matching"] = route["null_vectors"]
        matching = {"C": C, "ia": ia, "ib": ib, "corr": corr, "chance": chance["hungarian"],
                    "chance_top": chance["hungarian_top"], "top": n_pairs}
        seconds["matching"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    with step(f"Steering {names[1]} at {hook_b} on {len(items)} prompts: its own vector, {len(transferred)} "
              f"transferred, {n_null} random directions and {n_null} null vectors each"):
        nt = NeutralText(B, neutral)
        measured = measure_transfer(B, v_b, transferred, null_vectors, items, hook_b, alpha, n_random=n_null,
                                    seed=seed, neutral=nt)
    seconds["steering"] = round(time.perf_counter() - t, 1)

    effects = None
    if sds:
        t = time.perf_counter()
        dsa = dsb = None
        if downs:
            with step(f"Matching the downstream SAEs' features ({downs[0].hook}, {downs[1].hook})"):
                C_down = feature_correlation(saes.encode(downs[0].sae, down_a[aligned]),
                                             saes.encode(downs[1].sae, down_b[aligned]))
                da_, db_, dcorr = match_features(C_down, "hungarian")
                da_, db_, dcorr = da_[:downstream_pairs], db_[:downstream_pairs], dcorr[:downstream_pairs]
            dsa, dsb = (downs[0].sae, downs[0].hook, da_), (downs[1].sae, downs[1].hook, db_)
            matching["downstream"] = {"hooks": [downs[0].hook, downs[1].hook], "features_a": da_,
                                      "features_b": db_, "correlation": dcorr}
        wa = WordEffects(A, sds[0].sae, hook_a, eff_texts, description=f"{names[0]}: clean pass", downstream=dsa)
        wb = WordEffects(B, sds[1].sae, hook_b, eff_texts, description=f"{names[1]}: clean pass", downstream=dsb)
        ia, ib, corr = matching["ia"], matching["ib"], matching["corr"]
        fires = (wa.fires[:, ia].sum(0) >= 2) & (wb.fires[:, ib].sum(0) >= 2)
        chosen = np.flatnonzero(fires)[:n_pairs]
        if len(chosen) < 4:
            raise DataError(f"only {len(chosen)} matched feature pairs fire in at least 2 of the {len(eff_texts)} effect "
                            "texts in both models; raise --effect-texts")
        fa, fb = ia[chosen], ib[chosen]
        effects = {"features_a": fa, "features_b": fb, "correlation": corr[chosen],
                   "activation_correlation": matching["C"][np.ix_(fa, fb)]}
        for mode in ("ablate", "add"):
            ea, da = wa.effects_downstream(fa, mode, alpha=effect_alpha, scale=scale_a,
                                           description=f"{names[0]}: {mode} {len(fa)} features")
            eb, db = wb.effects_downstream(fb, mode, alpha=effect_alpha, scale=scale_b,
                                           description=f"{names[1]}: {mode} {len(fb)} features")
            effects[mode] = (ea, eb)
            if downs:
                effects[f"{mode}_downstream"] = (da, db)
        # ablation acts only where a feature fires, and matched features fire together: the control removes
        # the same amounts at the same positions of B along random directions of the decoder rows' norms
        rng = np.random.default_rng([seed, 0xAB1A7E])
        norms = np.linalg.norm(Db[fb], axis=1)
        effects["ablate_random_directions"] = []
        for d in range(direction_draws):
            R = rng.normal(size=(len(fb), Db.shape[1]))
            R *= (norms / np.linalg.norm(R, axis=1))[:, None]
            er, dr = wb.effects_downstream(fb, "ablate", directions=R, description=f"{names[1]}: random directions "
                                           f"at the same positions ({d + 1}/{direction_draws})")
            effects["ablate_random_directions"].append(er)
            if downs:
                effects.setdefault("ablate_downstream_random_directions", []).append(dr)
        seconds["feature effects"] = round(time.perf_counter() - t, 1)

    an = TransferAnalyzer(n_permutations=n_permutations, seed=seed).fit(
        measured, maps=maps, null_r2=nulls_r2, scan=scan, scan_hooks=scan_hooks, hooks=(hook_a, hook_b),
        route=route, effects=effects, matching=matching)
    provenance = {
        "models": {n: r.provenance for n, r in zip(names, resolved)}, "model_a": names[0], "model_b": names[1],
        "hooks": {"a": hook_a, "b": hook_b}, "saes": [_where(sd) for sd in sds] if sds else None,
        "downstream_saes": [_where(sd) for sd in downs] if downs else None,
        "pairs": str(_pairs_path(pairs)), "pairs_sha256": pairs_sha, "n_pairs": len(pair_list),
        "eval": eval_path, "eval_sha256": eval_sha, "n_prompts": len(items),
        "texts": {"corpus": "WordNet glosses (held-out split), shuffled by the seed", "maps": len(map_texts),
                  "scan": scan_texts, "effects": len(eff_texts), "neutral": len(neutral),
                  "words_aligned": int(aligned.sum()), "words_read": int(len(aligned))},
        "vector_norms": {"a": float(np.linalg.norm(v_a)), "b": float(np.linalg.norm(v_b))},
        "settings": {"alpha": alpha, "effect_alpha": effect_alpha, "k": k, "n_null": n_null, "direction_draws": direction_draws,
                     "downstream_pairs": downstream_pairs if downs else None,
                     "pairs_tested": n_pairs, "layer_b": "SAE hook" if sds else layer_b},
        "seed": seed, "device": device, "dtype": dtype, "seconds": seconds,
    }
    provenance = stamp(provenance, t0)
    res = an.result()

    def write(out, force, command):
        from ..reports.transfer import write_transfer_report

        with step(f"Writing the report to {out}"):
            return write_transfer_report(res, with_command(provenance, command), out, force=force)

    return TransferResult(res, provenance, write, an)


def _set_name(pairs: Any) -> str:
    from pathlib import Path

    return Path(str(pairs)).stem


def _pairs_path(pairs: Any) -> Any:
    from ..resources import steering_file

    return steering_file(pairs)


def _words(model: Any, name: str, texts: Sequence[str], hook: str, down: Any) -> tuple[Any, Any, Any]:
    """Every word of ``texts`` at ``hook`` and at the downstream SAE's hook (``down``, or None)."""
    from ..activations import word_activations_in_text

    if down is not None:
        _check_sae(down, model, name)
    hooks = [hook] + ([down.hook] if down is not None else [])
    X, ok = word_activations_in_text(model, texts, hooks, description=f"{name}: words in {len(texts)} glosses")
    return X[hook], (X[down.hook] if down is not None else None), ok


def _where(sd: Any) -> str:
    return str(sd.path) if sd.path is not None else f"(an SAE in memory at {sd.hook})"


def _check_sae(sd: Any, model: Any, name: str) -> None:
    if int(sd.d_in) != int(model.cfg.d_model):
        raise DataError(f"the SAE at {str(sd.path)!r} reads vectors of size {sd.d_in}, but {name} has d_model "
                        f"{model.cfg.d_model}; give the SAEs in the order of --models (A's, then B's)")


def _typical(codes: np.ndarray) -> np.ndarray:
    """Each feature's mean activation where it fires (1 for a feature that never fires)."""
    c = np.asarray(codes, dtype=np.float64)
    on = (c > 0).sum(0)
    return np.where(on > 0, c.sum(0) / np.maximum(on, 1), 1.0)
