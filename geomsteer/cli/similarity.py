"""geomsteer similarity: cross-model similarity of word representations, layer x layer, with nulls."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..pipelines.similarity import similarity
from .common import default, option, output_args, positive_int, run_and_save, runtime_args


def add_parser(sub: Any) -> None:
    sm = sub.add_parser(
        "similarity",
        help="cross-model similarity of word representations, layer x layer, with null baselines",
        description=(
            "Read the same WordNet nouns through two models (aligned at the word level, whatever the "
            "tokenizers), then scan every layer pair with debiased linear CKA and mutual k-NN, each cell "
            "beside a shuffled-pairing baseline and the same layers of the re-randomized model (every "
            "weight tensor's entries shuffled). The best-aligned pairs get every metric (CKA, RBF CKA, "
            "mutual k-NN, CKNNA, k-NN Jaccard, SVCCA, Procrustes, RSA) with permutation distributions, and "
            "each WordNet group is compared on its own. With --sae, SAE features of the two models are "
            "matched by activation correlation on shared text (greedy and Hungarian) and the paired "
            "decoders compared with SVCCA and RSA beside random pairings. Writes result.json, report.md, "
            "figures/ and a self-contained interactive report.html into --out."
        ),
    )
    sm.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                    help="exactly two model aliases (see 'geomsteer models'), e.g. gemma-3-270m qwen2.5-0.5b")
    option(sm, "--words", similarity, "n_words", "how many WordNet nouns to sample, balanced over semantic groups",
           type=positive_int)
    option(sm, "--rule", similarity, "rule", "a word's representation: its last token or the mean of its tokens",
           choices=["last", "mean"])
    sm.add_argument("--prefix", default=default(similarity, "prefix"),
                    help="text read before each word (default: none, just BOS)")
    option(sm, "--max-tokens", similarity, "max_tokens", "drop a word that a model splits into more tokens than this",
           type=positive_int)
    option(sm, "--layers", similarity, "layers", "residual layers to scan in each model: all, every:K, or a list "
           "such as 0,6,12")
    option(sm, "--k", similarity, "k", "neighbours for the k-NN metrics", type=positive_int)
    option(sm, "--permutations", similarity, "n_permutations",
           "shuffled pairings for linear CKA, debiased CKA, mutual k-NN and k-NN Jaccard at the best pairs and in "
           "each group (SVCCA, Procrustes and RSA take at most 20, RBF CKA and CKNNA at most 5)", type=positive_int)
    option(sm, "--scan-permutations", similarity, "scan_permutations",
           "shuffled pairings for the max-statistic null of the best layer pair (on at most 1,000 words)",
           type=positive_int)
    sm.add_argument("--no-random-model", action="store_true",
                    help="skip the re-randomized-model baseline (faster; not for reporting)")
    sm.add_argument("--sae", nargs="+", default=None, metavar="DIR",
                    help="one SAE directory per model, in the order of --models, to match features across models")
    option(sm, "--texts", similarity, "feature_texts", "held-out WordNet glosses read for SAE feature matching",
           type=positive_int)
    output_args(sm, "seed for the word sample, shuffles and re-randomization")
    runtime_args(sm, similarity, backend=True)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    res = run_and_save(args, argv, lambda: similarity(
        args.models, n_words=args.words, rule=args.rule, prefix=args.prefix, max_tokens=args.max_tokens,
        layers=args.layers, k=args.k, n_permutations=args.permutations, scan_permutations=args.scan_permutations,
        random_baseline=not args.no_random_model, sae=args.sae, feature_texts=args.texts, seed=args.seed,
        device=args.device, dtype=args.dtype, backend=args.backend, address=args.address))
    a, m = res.analyzer, res.matcher
    w = res.provenance["words"]
    print(f"{w['used']:,} words aligned ({w['dropped_from_both']:,} dropped); best-aligned layer pairs by debiased CKA:")
    for bp in a.best_pairs_:
        c = bp["linear_cka_debiased"]
        rnd = c.get("random_model")
        print(f"  {bp['layer_a']} x {bp['layer_b']}: {c['score']:.3f} (shuffled {c['permutation']['mean']:.3f}"
              + (f", re-randomized model {rnd:.3f}" if rnd is not None else "") + ")")
    if m is not None:
        h = m.matching_["hungarian"]
        print(f"SAE features: Hungarian mean correlation {h['mean_correlation']:.3f} "
              f"(samples shuffled {h['shuffled_samples_mean_correlation']:.3f})")
    print(f"Report: {Path(args.out) / 'report.md'} and {Path(args.out) / 'report.html'}")
    return 0
