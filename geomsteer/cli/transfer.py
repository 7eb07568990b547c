"""geomsteer transfer: carry a steering vector from one model into another, and test whether matched SAE
features act alike in both."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..pipelines.transfer import transfer
from .common import default, null_line, option, output_args, positive_int, run_and_save, runtime_args


def _layer_b(text: str) -> Any:
    if text == "best":
        return text
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a layer number (0 or more) or best, got {text!r}")
    return v


def add_parser(sub: Any) -> None:
    tp = sub.add_parser(
        "transfer",
        help="carry model A's steering vector into model B (linear maps, matched SAE features) and test whether "
             "matched features act alike",
        description=(
            "Read the same held-out WordNet glosses through two models (words aligned across the tokenizers). "
            "Model A's steering vector is carried into model B by maps fitted on the aligned words (scaled "
            "orthogonal Procrustes and ridge) and, with --sae, through matched SAE features (sparse-coded in A's "
            "SAE, recomposed with B's matched decoder rows); B is steered with each at the norm of its own vector "
            "and the target log-odds shift is reported as a fraction of B's own, beside random directions and "
            "vectors carried by shuffled maps or shuffled matchings. With --sae, the best-matched feature pairs "
            "are ablated and added in their own models and the change of every shared word's log-probability "
            "(and, with --downstream-sae, of matched features at a later layer) compared across the models, "
            "beside re-paired features, shuffled words and, for ablation, random directions removed at the same "
            "positions. Writes result.json, "
            "report.md, figures/ and arrays.npz into --out."
        ),
    )
    tp.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                    help="two model aliases, A (the vector's source) then B, e.g. gemma-3-270m qwen2.5-0.5b")
    tp.add_argument("--sae", nargs="+", default=None, metavar="DIR",
                    help="one SAE directory per model (A's, then B's); their hooks fix the layers")
    tp.add_argument("--downstream-sae", nargs="+", default=None, metavar="DIR",
                    help="with --sae: one SAE per model at a later layer (A's, then B's); the best-matched pairs of "
                         "their features are read under every intervention and the two models' changes compared")
    option(tp, "--downstream-pairs", transfer, "downstream_pairs", "best-matched downstream feature pairs read",
           type=positive_int)
    tp.add_argument("--layer-a", type=int, default=None,
                    help="A's layer without --sae (default: a third of A's depth)")
    tp.add_argument("--layer-b", type=_layer_b, default=default(transfer, "layer_b"),
                    help="B's layer without --sae: a number, or best (the highest debiased CKA with A's layer on "
                         "the scan words; default)")
    option(tp, "--pairs", transfer, "pairs", "contrastive pairs both vectors are computed from: a shipped set "
           "(sentiment, formality, animal_plant) or a JSONL file")
    option(tp, "--eval", transfer, "eval", "evaluation prompts B is steered on (shipped set or JSONL)")
    option(tp, "--alpha", transfer, "alpha", "steering multiplier; every vector is scaled to the norm of B's own",
           type=float)
    option(tp, "--texts", transfer, "texts", "held-out WordNet glosses read for the maps and the feature matching",
           type=positive_int)
    option(tp, "--scan-texts", transfer, "scan_texts", "of those, the glosses read at every layer of B for the "
           "layer scan", type=positive_int)
    option(tp, "--effect-texts", transfer, "effect_texts", "further glosses on which matched features are "
           "intervened on", type=positive_int)
    option(tp, "--pairs-tested", transfer, "n_pairs", "best-matched feature pairs intervened on", type=positive_int)
    option(tp, "--effect-alpha", transfer, "effect_alpha", "a feature is added at this many times its typical "
           "activation", type=float)
    option(tp, "--k", transfer, "k", "atoms coding A's vector in A's SAE (feature route)", type=positive_int)
    option(tp, "--null-draws", transfer, "n_null", "draws of the random-direction, shuffled-map and shuffled-matching "
           "nulls", type=int)
    option(tp, "--direction-draws", transfer, "direction_draws", "draws of the ablation control: B's feature "
           "activations removed at the same positions along random directions", type=positive_int)
    option(tp, "--permutations", transfer, "n_permutations", "re-pairings and word shuffles of the effect "
           "similarity", type=positive_int)
    output_args(tp, "seed for the text sample, the held-out split of the maps and every null")
    runtime_args(tp, transfer)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    res = run_and_save(args, argv, lambda: transfer(
        args.models, sae=args.sae, layer_a=args.layer_a, layer_b=args.layer_b, pairs=args.pairs, eval=args.eval,
        alpha=args.alpha, texts=args.texts, scan_texts=args.scan_texts, effect_texts=args.effect_texts,
        n_pairs=args.pairs_tested, effect_alpha=args.effect_alpha, k=args.k, n_null=args.null_draws, direction_draws=args.direction_draws,
        downstream_sae=args.downstream_sae, downstream_pairs=args.downstream_pairs,
        n_permutations=args.permutations, seed=args.seed, device=args.device, dtype=args.dtype))
    print_summary(res, Path(args.out))
    return 0


def print_summary(res: Any, out: Path) -> None:
    """The lines the command prints after writing its report."""
    m = res.result.metrics
    print(f"{res.provenance['model_a']} {m['layers']['a']} -> {res.provenance['model_b']} {m['layers']['b']} "
          f"(best layer of B by debiased CKA: {m['layers']['best_b_by_debiased_cka']})")
    for method, st in m["maps"].items():
        print(f"  map {method}: held-out R^2 {null_line(st['heldout_r2'])}")
    for name, st in m["transfer"].items():
        print(f"  {name}: fraction of B's own shift {null_line(st)}")
    for mode, e in m.get("effects", {}).items():
        print(f"  {mode}, matched-pair effect similarity {null_line(e['effect_similarity'])}")
        if "downstream_similarity" in e:
            print(f"  {mode}, matched-pair downstream similarity {null_line(e['downstream_similarity'])}")
        if "correlation_predicts_effect" in e:
            print(f"  {mode}, activation correlation predicts it (Spearman) "
                  f"{null_line(e['correlation_predicts_effect'])}")
    print(f"Report: {out / 'report.md'}")
