"""geomsteer steer compute | apply | sweep | decompose | propagate | hierarchy | erase: steering vectors and what they do."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..pipelines import steer as S
from .common import Parser, null_line, option, output_args, positive_int, run_and_save, runtime_args


def _common(sp: argparse.ArgumentParser, vector: bool = True) -> None:
    sp.add_argument("--model", required=True, help="model alias (see 'geomsteer models')")
    if vector:
        sp.add_argument("--vector", type=Path, required=True,
                        help="vectors.safetensors written by 'geomsteer steer compute'")
        sp.add_argument("--hook", default=None,
                        help="which of the file's vectors (e.g. blocks.6.hook_resid_post); needed when it holds several")
    output_args(sp, "seed for random directions and sampling (default: 0)")
    runtime_args(sp, S.compute)


def _null_arg(sp: argparse.ArgumentParser, fn: Any, where: str) -> None:
    option(sp, "--null-draws", fn, "n_null", f"draws of each null {where}: vectors from the same pairs with shuffled "
           "labels, and random directions from the activation covariance with the vector's norm", type=int)


def _eval_arg(sp: argparse.ArgumentParser, fn: Any) -> None:
    option(sp, "--eval", fn, "eval", "held-out prompts with 'positive'/'negative' target tokens: a shipped set's name "
           "(sentiment_eval, animal_plant_eval) or a JSONL path")


def add_parser(sub: Any) -> None:
    st = sub.add_parser(
        "steer",
        help="steering vectors: compute, apply, sweep, decompose into SAE features, propagate through layers",
        description=(
            "Contrastive steering vectors (difference of mean activations of positive and negative prompts) and what "
            "they do. Each step writes result.json, report.md and figures/ into --out. Shipped sets, "
            "passed by name: sentiment, formality, animal_plant (pairs) and sentiment_eval, animal_plant_eval "
            "(held-out prompts with target tokens); --pairs and --eval also take a path to your own JSONL file."
        ),
    )
    st_sub = st.add_subparsers(dest="steer_command", required=True, parser_class=Parser)

    sc = st_sub.add_parser("compute", help="vectors at several layers from a JSONL file of contrastive pairs",
                           description="Difference of mean activations (or first principal component of the paired "
                                       "differences) at residual-stream layers, with leave-one-out pair accuracy and a "
                                       "random-sign baseline. Writes vectors.safetensors, result.json, report.md, figures/.")
    _common(sc, vector=False)
    option(sc, "--pairs", S.compute, "pairs", "a shipped set's name (sentiment, formality, animal_plant) or a JSONL "
           "path with pairs {\"positive\": ..., \"negative\": ...} or {\"prompt\", \"positive\": \"A\", "
           "\"negative\": \"B\"}")
    option(sc, "--layers", S.compute, "layers", "all, every:K, or a list such as 3,6,9")
    option(sc, "--position", S.compute, "position", "token read: last; mean over every token after the start token "
           "(a pair's 'prompt' included: it is the same on both sides, so it scales a prompted pair's difference "
           "down); or answer, the mean over the answer after 'prompt' only", choices=["last", "mean", "answer"])
    option(sc, "--method", S.compute, "method", "difference of means or first principal component",
           choices=["mean_diff", "pca"])

    sa = st_sub.add_parser("apply", help="generate with and without the vector",
                           description="Continue prompts unsteered, steered (multiplier x vector added at every "
                                       "position after the start token, new tokens included) and with a random "
                                       "direction of the vector's norm.")
    _common(sa)
    option(sa, "--alpha", S.apply, "alpha", "multiplier", type=float)
    sa.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    sa.add_argument("--prompts", type=Path, default=None, help="a text file with one prompt per line")
    option(sa, "--max-new-tokens", S.apply, "max_new_tokens", "tokens to generate", type=positive_int)
    option(sa, "--temperature", S.apply, "temperature", "0 for greedy", type=float)

    sw = st_sub.add_parser("sweep", help="multiplier x layer grid: target log-odds, KL on neutral text, samples",
                           description="For every vector in the file (or --hook) and every multiplier: the shift of "
                                       "the target log-odds on held-out prompts, the KL divergence from the unsteered "
                                       "model on neutral WordNet glosses, and sample generations; each beside a random "
                                       "direction of the same norm. Dose-response and KL figures.")
    _common(sw)
    _eval_arg(sw, S.sweep)
    option(sw, "--alphas", S.sweep, "alphas", "multipliers", type=float, nargs="+")
    option(sw, "--neutral", S.sweep, "n_neutral", "neutral texts (WordNet glosses, first 24 tokens) for the KL "
           "divergence; 0 skips it", type=int)
    option(sw, "--random", S.sweep, "n_random", "random directions per cell, drawn from the activation covariance "
           "with the vector's norm: the band of the figure (KL for the first)", type=positive_int)
    _null_arg(sw, S.sweep, "at the most negative and the most positive multiplier")
    option(sw, "--samples", S.sweep, "n_samples", "prompts to generate from at the extreme multipliers", type=int)
    option(sw, "--max-new-tokens", S.sweep, "max_new_tokens", "tokens to generate per sample", type=positive_int)

    sd = st_sub.add_parser("decompose", help="the vector in an SAE's feature space, and whether that still steers",
                           description="(a) Orthogonal matching pursuit of the vector over the SAE's decoder "
                                       "directions; (b) the mean difference of SAE codes between steered and unsteered "
                                       "activations on the evaluation prompts. Reports the fraction of the vector each "
                                       "explains (beside a random direction), the steering effect of each "
                                       "reconstruction as a fraction of the vector's, and the top features with their "
                                       "logit lens and top contexts.")
    _common(sd)
    _eval_arg(sd, S.decompose)
    sd.add_argument("--sae", type=Path, required=True, help="SAE directory trained at the vector's hook")
    option(sd, "--alpha", S.decompose, "alpha", "multiplier for code differences and effects", type=float)
    option(sd, "--k", S.decompose, "k", "features for the sparse coding", type=positive_int)
    sd.add_argument("--nonneg", action="store_true", help="non-negative sparse coding (features only added)")
    option(sd, "--top", S.decompose, "top", "features listed from each method", type=positive_int)
    option(sd, "--contexts", S.decompose, "n_contexts", "top contexts per listed feature", type=int)
    _null_arg(sd, S.decompose, "(explained fractions, and steering effects on the held-out half of the prompts)")

    sp = st_sub.add_parser("propagate", help="steer at layer k, watch SAE features change at each later layer",
                           description="Add the vector at its layer and encode the activations at each later layer "
                                       "that has an SAE. Per layer and multiplier: how many features change beyond the "
                                       "threshold (off-target spread; a random direction gives the null count) and the "
                                       "most changed features. Heatmap figure.")
    _common(sp)
    _eval_arg(sp, S.propagate)
    sp.add_argument("--sae", type=Path, nargs="+", required=True, help="SAE directories, one per layer")
    option(sp, "--alphas", S.propagate, "alphas", "multipliers", type=float, nargs="+")
    option(sp, "--threshold", S.propagate, "threshold", "a feature changes when its mean |code change| exceeds this "
           "x the layer's mean active code", type=float)
    option(sp, "--top", S.propagate, "top", "most changed features listed per layer", type=positive_int)
    _null_arg(sp, S.propagate, "at the multiplier of largest magnitude")

    sh = st_sub.add_parser(
        "hierarchy", help="steer along the WordNet hierarchy (parent, child minus parent) and test CAA orthogonality",
        description="For each PARENT>CHILD pair: unit concept vectors at --layer (LDA with the activation covariance, "
                    "CAA mean differences of WordNet words, and at the last layer the unembedding's LDA vectors) added "
                    "at --norms x the words' spread, on prompts whose next token is a noun. Measured: the change in "
                    "next-token mass on the child's tokens, the parent's other tokens and outside the parent, against "
                    "random directions from the activation covariance and the same constructions on nested random "
                    "sets; at a matched gain on the child, where the rest of the mass goes. Also Park et al.'s "
                    "orthogonality cos(v_parent, v_child - v_parent) for the CAA vectors of every edge of the tree. "
                    "Writes result.json, report.md and figures/.")
    sh.add_argument("--model", required=True, help="model alias (see 'geomsteer models'), local directory or .gguf")
    output_args(sh, "seed for the pool, nested random sets and random directions (default: 0)")
    runtime_args(sh, S.hierarchy)
    option(sh, "--pair", S.hierarchy, "pairs", "PARENT>CHILD synsets (quote them: the shell reads >)", nargs="+")
    option(sh, "--layer", S.hierarchy, "layer", "block whose residual output is steered", type=int)
    option(sh, "--template", S.hierarchy, "template", "text before each word when reading the words")
    option(sh, "--norms", S.hierarchy, "norms", "step sizes, as multiples of the words' root-mean-square distance "
           "from their mean activation", type=float, nargs="+")
    option(sh, "--ref-norm", S.hierarchy, "ref_norm", "the norm (one of --norms) at which vectors meet their nulls",
           type=float)
    option(sh, "--target-gain", S.hierarchy, "target_gain", "gain in log p(child) (nats) at which vectors are "
           "compared with each other", type=float)
    option(sh, "--min-tokens", S.hierarchy, "min_tokens", "keep categories with more than this many single tokens",
           type=positive_int)
    option(sh, "--pool", S.hierarchy, "n_pool", "whole-word tokens read beside the tree's (those outside the tree are "
           "the contrastive vectors' negatives)", type=positive_int)
    option(sh, "--null-draws", S.hierarchy, "n_null", "draws of each null (nested random sets, random directions)",
           type=int)

    se = st_sub.add_parser(
        "erase", help="erase a WordNet category at a layer with LEACE and measure what it takes downstream",
        description="Fit a LEACE eraser (concept-erasure, Belrose et al. 2023) for a WordNet category on words' "
                    "activations at --layer and apply it there to every token. Measured for the category, the --also "
                    "categories and its largest siblings: a held-out linear probe's AUC at later layers and the "
                    "next-token mass on their words, clean and erased, against erasing unrelated categories of about "
                    "the same size. Writes result.json, report.md and figures/.")
    se.add_argument("--model", required=True, help="model alias (see 'geomsteer models'), local directory or .gguf")
    output_args(se, "seed for word samples, the held-out split and the null categories (default: 0)")
    runtime_args(se, S.erase)
    option(se, "--concept", S.erase, "concept", "the WordNet synset to erase")
    option(se, "--layer", S.erase, "layer", "block whose residual output is erased", type=int)
    option(se, "--also", S.erase, "also", "more categories to measure (say its children)", nargs="*")
    option(se, "--read-layers", S.erase, "read_layers", "layers read (default: the layer, every third after it, and "
           "the last)")
    option(se, "--siblings", S.erase, "n_siblings", "largest siblings measured", type=int)
    option(se, "--null-draws", S.erase, "n_null", "unrelated categories erased for the null", type=int)
    option(se, "--template", S.erase, "template", "text before each word when reading the words")
    option(se, "--min-tokens", S.erase, "min_tokens", "keep categories with more than this many single tokens",
           type=positive_int)
    option(se, "--pool", S.erase, "n_pool", "whole-word tokens read beside the tree's", type=positive_int)
    option(se, "--max-per-category", S.erase, "max_per_category", "words read per measured category", type=int)
    option(se, "--fit-words", S.erase, "n_fit", "tree words the erasers are fit on", type=int)


def _read_prompts(args: argparse.Namespace) -> list[str]:
    from ..errors import DataError

    prompts = list(args.prompt or [])
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise DataError(f"--prompts {str(args.prompts)!r} does not exist: expected a text file, one prompt per line")
        prompts += [ln for ln in args.prompts.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    return prompts


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    c = args.steer_command
    if c == "compute":
        res = run_and_save(args, argv, lambda: S.compute(args.model, args.pairs, layers=args.layers,
                                                         position=args.position, method=args.method, device=args.device, dtype=args.dtype))
        for h, s in res.metrics["per_hook"].items():
            print(f"{h}: norm {s['norm']:.2f} (random signs {s.get('random_sign_norm', float('nan')):.2f}), "
                  f"held-out pair accuracy {s.get('held_out_pair_accuracy', float('nan')):.2f}")
        print(f"Vectors: {Path(args.out) / 'vectors.safetensors'}; report: {Path(args.out) / 'report.md'}")
    elif c == "apply":
        prompts = _read_prompts(args)
        res = run_and_save(args, argv, lambda: S.apply(
            args.model, args.vector, prompts, hook=args.hook, alpha=args.alpha, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, seed=args.seed, device=args.device, dtype=args.dtype))
        for g in res.result.tables["generations"]:
            print(f"{g['prompt']}\n  unsteered: {g['unsteered'].strip()}\n  steered:   {g['steered'].strip()}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    elif c == "sweep":
        res = run_and_save(args, argv, lambda: S.sweep(
            args.model, args.vector, args.eval, hooks=[args.hook] if args.hook else None, alphas=args.alphas,
            n_neutral=args.neutral, n_random=args.random, n_samples=args.samples, max_new_tokens=args.max_new_tokens,
            seed=args.seed, n_null=args.null_draws, device=args.device, dtype=args.dtype))
        for h, s in res.metrics["per_hook"].items():
            print(f"{h}: log-odds shift at the largest multiplier {s['shift_at_max_alpha']:+.3f} (random direction "
                  f"{s['random_shift_at_max_alpha']:+.3f}), Spearman {s['spearman_alpha_shift']:.2f}, "
                  f"{'monotone' if s['monotone'] else 'not monotone'}")
            for name, st in s["statistics"].items():
                print(f"  {name.replace('_', ' ')}: {null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    elif c == "decompose":
        res = run_and_save(args, argv, lambda: S.decompose(
            args.model, args.vector, args.sae, args.eval, hook=args.hook, alpha=args.alpha, k=args.k,
            nonneg=args.nonneg, top=args.top, n_contexts=args.contexts, seed=args.seed, n_null=args.null_draws, device=args.device, dtype=args.dtype))
        m = res.metrics
        e, eff = m["explained_fraction"], m["steering_effect"]
        print(f"Explained: sparse coding {e['sparse_coding']:.3f} (random direction "
              f"{e['sparse_coding_random_direction']:.3f}), code difference {e['code_difference']:.3f}")
        print(f"Steering effect as a fraction of the vector's: sparse coding {eff['sparse_coding']['fraction_of_vector']:.2f}, "
              f"code difference {eff['code_difference']['fraction_of_vector']:.2f}, random "
              f"{eff['random']['fraction_of_vector']:.2f}")
        for name, st in m["statistics"].items():
            print(f"  {name.replace('_', ' ')}: {null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    elif c == "hierarchy":
        res = run_and_save(args, argv, lambda: S.hierarchy(
            args.model, args.pair, layer=args.layer, template=args.template, norms=args.norms, ref_norm=args.ref_norm,
            target_gain=args.target_gain, min_tokens=args.min_tokens, n_pool=args.pool, n_null=args.null_draws,
            seed=args.seed, device=args.device, dtype=args.dtype))
        for key, pm in res.metrics["pairs"].items():
            print(f"{key}:")
            for name, st in pm["statistics"].items():
                if name.startswith("child"):
                    print(f"  {name.replace('_', ' ')}: {null_line(st)}")
        for name, st in res.metrics["caa_orthogonality"]["statistics"].items():
            print(f"{name.replace('_', ' ')}: {null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    elif c == "erase":
        res = run_and_save(args, argv, lambda: S.erase(
            args.model, args.concept, layer=args.layer, also=args.also, read_layers=args.read_layers,
            n_siblings=args.siblings, n_null=args.null_draws, template=args.template, min_tokens=args.min_tokens,
            n_pool=args.pool, max_per_category=args.max_per_category, n_fit=args.fit_words, seed=args.seed, device=args.device, dtype=args.dtype))
        for name, st in res.metrics["statistics"].items():
            print(f"  {name.replace('_', ' ')}: clean {st['clean']:.3f}, erased {st['erased']:.3f}; {null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    else:
        res = run_and_save(args, argv, lambda: S.propagate(
            args.model, args.vector, args.sae, args.eval, hook=args.hook, alphas=args.alphas,
            threshold=args.threshold, top=args.top, seed=args.seed, n_null=args.null_draws, device=args.device, dtype=args.dtype))
        stats = res.metrics["statistics"]
        for h, s in res.metrics["per_layer"].items():
            st = stats.get(f"features_changed:{h}")
            print(f"{h}: features changed {s['features_changed']} (random {s['features_changed_random']})"
                  + (f"; at {st['alpha']:g}: {null_line(st)}" if st else ""))
        print(f"Report: {Path(args.out) / 'report.md'}")
    return 0
