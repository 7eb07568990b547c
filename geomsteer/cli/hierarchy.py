"""geomsteer hierarchy: Park et al.'s hierarchical concept directions with null baselines."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..pipelines.hierarchy import hierarchy
from .common import default, option, output_args, positive_int, run_and_save, runtime_args, stat_line


def add_parser(sub: Any) -> None:
    h = sub.add_parser(
        "hierarchy",
        help="hierarchical concept directions from WordNet (Park et al. 2024), with null baselines",
        description=(
            "Estimate a direction for every WordNet category in the model's whitened unembedding "
            "(causal inner product) and test Park et al.'s predictions: held-out projection (split by "
            "lemma), hierarchical and sibling orthogonality, sibling simplices, cosine vs tree distance. "
            "Each statistic stands beside null distributions that keep the tree's nesting (shuffled "
            "tokens, random nested token sets, random unembeddings) with a bootstrap interval, effect "
            "size and p-value; Euclidean, mean-estimator and random-parent contrasts are listed apart. "
            "Writes result.json, directions.safetensors, report.md and figures/ into --out."
        ),
    )
    h.add_argument("--model", required=True,
                   help="model alias (see 'geomsteer models'), local Hugging Face directory, or .gguf file")
    option(h, "--pos", hierarchy, "pos", "WordNet part of speech", choices=["noun", "verb"])
    option(h, "--min-tokens", hierarchy, "min_tokens", "keep categories with more than this many single tokens",
           type=positive_int)
    output_args(h, f"seed for splits, shuffles and random baselines (default: {default(hierarchy, 'seed')})")
    option(h, "--null-draws", hierarchy, "null_draws",
           "draws of each null distribution (about 4 s each on 2 cores; p-values use a t-test on the draws, so they "
           "can go below 1/(draws+1))", type=positive_int)
    h.add_argument("--no-baselines", action="store_true", help="skip the nulls and contrasts (faster; not for reporting)")
    g = h.add_argument_group(
        "inside the model (--layers)",
        "With --layers the statistics are measured in the residual stream after each chosen block instead of the "
        "unembedding: every token of the tree and --pool other word tokens are read after the start token and "
        "--template, and each layer's activation covariance is the inner product. Writes result.json (statistics "
        "by layer, Holm-adjusted across layers), directions.safetensors (each category's direction at each "
        "layer), report.md and figures/.")
    g.add_argument("--layers", default=None,
                   help="'all', 'every:K' or block numbers such as 0,6,12 (default: the unembedding, no layers)")
    option(g, "--template", hierarchy, "template", "text between the start token and each word")
    option(g, "--pool", hierarchy, "n_pool", "whole-word tokens held-out words are compared with", type=positive_int)
    runtime_args(h, hierarchy, backend=True)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    r = run_and_save(args, argv, lambda: hierarchy(
        args.model, pos=args.pos, min_tokens=args.min_tokens, seed=args.seed, null_draws=args.null_draws,
        baselines=not args.no_baselines, device=args.device, dtype=args.dtype, layers=args.layers,
        template=args.template, n_pool=args.pool, backend=args.backend, address=args.address))
    if args.layers is not None:
        em = r.emergence()
        print(f"{len(r.analyzer.names_)} categories at {len(r.analyzer.layers_)} layers; per statistic, the first layer "
              "beyond the most conservative null (Holm across layers, p < 0.01) and the largest effect:")
        for s, e in em.items():
            print(f"  {s:<28} first {e['first_layer_beyond_null'] or 'none':<26} in {e['n_layers_beyond_null']} layers; "
                  f"largest effect {e['largest_effect'] if e['largest_effect'] is None else round(e['largest_effect'], 1)}"
                  f" at {e['largest_effect_layer']}")
        print(f"Report: {Path(args.out) / 'report.md'}")
        return 0
    print(f"{len(r.analyzer.names_)} categories; statistic: observed [95% CI], effect size and p against the most "
          "conservative null")
    for k, st in r.metrics.items():
        print(f"  {k:<28} {stat_line(st)}")
    print(f"Report: {Path(args.out) / 'report.md'}")
    return 0
