"""geomsteer mapper and geomsteer cluster: concept words read at one hook and encoded by an SAE."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from ..pipelines.concepts import DEFAULT_CONCEPTS, cluster, mapper
from .common import concepts_list, null_line, option, output_args, positive_int, run_and_save, runtime_args


def _concept_args(sp: argparse.ArgumentParser, fn: Any) -> None:
    sp.add_argument("--model", required=True, help="model alias (see 'geomsteer models')")
    sp.add_argument("--hook", required=True, help="TransformerLens hook name, e.g. blocks.6.hook_resid_post")
    sp.add_argument("--sae", type=Path, required=True,
                    help="SAE directory trained at --hook (as written by 'geomsteer sae train')")
    sp.add_argument("--concepts", default=",".join(DEFAULT_CONCEPTS),
                    help=f"comma-separated WordNet synsets whose words are the samples (default: {','.join(DEFAULT_CONCEPTS)})")
    option(sp, "--words", fn, "max_words", "at most this many words, shared equally among the concepts",
           type=positive_int)
    option(sp, "--rule", fn, "rule", "a word's activation: its last token or the mean of its tokens",
           choices=["last", "mean"])
    sp.add_argument("--prefix", default="", help="text read before each word (default: none, just BOS)")
    output_args(sp, "seed for the word sample and the random parts (default: 0)")
    runtime_args(sp, fn)


def add_parsers(sub: Any) -> None:
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
    _concept_args(mp, mapper)
    option(mp, "--lens", mapper, "lens", "pca, umap, or features:I,J (chosen SAE features)")
    option(mp, "--components", mapper, "n_components", "lens dimensions for pca/umap", type=positive_int)
    option(mp, "--cubes", mapper, "n_cubes", "cubes per lens dimension", type=positive_int)
    option(mp, "--overlap", mapper, "overlap", "overlap of neighbouring cubes, 0..1", type=float)
    option(mp, "--min-samples", mapper, "min_samples", "DBSCAN min_samples", type=positive_int)
    option(mp, "--eps-scale", mapper, "eps_scale", "DBSCAN radius in units of the median distance to the 10th "
           "neighbour", type=float)
    option(mp, "--bootstrap", mapper, "n_bootstrap", "refits (lens and graph) on 80% subsamples for stability",
           type=int)
    option(mp, "--null-draws", mapper, "n_null", "Gaussian surrogates with the data's covariance, run through the "
           "same cover and clusterer: the null for the graph's statistics; 0 skips them", type=int)

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
    _concept_args(cl, cluster)
    option(cl, "--space", cluster, "space", "what to cluster", choices=["activations", "codes", "features"])
    option(cl, "--clusters", cluster, "n_clusters", "k-means clusters", type=positive_int)
    option(cl, "--min-fires", cluster, "min_fires", "with --space features: keep features firing on at least this "
           "many words", type=positive_int)


def lens_option(text: str) -> tuple[str, list[int] | None]:
    if text in ("pca", "umap"):
        return text, None
    if text.startswith("features:"):
        try:
            return "features", [int(x) for x in text[9:].split(",") if x.strip()]
        except ValueError:
            pass
    raise ConfigError(f"--lens {text!r}: expected pca, umap, or features:I,J with SAE feature indices, e.g. features:12,40")


def run_mapper(args: argparse.Namespace, argv: Sequence[str]) -> int:
    lens, features = lens_option(args.lens)
    concepts = concepts_list(args.concepts)
    res = run_and_save(args, argv, lambda: mapper(
        args.model, args.sae, concepts, hook=args.hook, max_words=args.words, lens=lens, features=features,
        n_components=args.components, n_cubes=args.cubes, overlap=args.overlap, min_samples=args.min_samples,
        eps_scale=args.eps_scale, n_bootstrap=args.bootstrap, n_null=args.null_draws, prefix=args.prefix,
        rule=args.rule, seed=args.seed, device=args.device, dtype=args.dtype))
    m = res.metrics
    kg, st = m["kmapper_graph"], m["stability"]
    print(f"Mapper graph: {kg['nodes']} nodes, {kg['edges']} edges, {kg['components']} component(s); nerve Betti "
          f"numbers {m['gudhi_nerve']['betti'][:3]}"
          + (f"; bootstrap: same Betti numbers in {st['same_graph_betti']:.0%}, node Jaccard {st['node_jaccard_mean']:.2f}"
             if st.get("n") else ""))
    for name, stat in m["statistics"].items():
        print(f"  {name.replace('_', ' ')}: {null_line(stat)}")
    print(f"Report: {Path(args.out) / 'report.md'}; interactive graph: {Path(args.out) / 'mapper.html'}")
    return 0


def run_cluster(args: argparse.Namespace, argv: Sequence[str]) -> int:
    concepts = concepts_list(args.concepts)
    res = run_and_save(args, argv, lambda: cluster(
        args.model, args.sae, concepts, hook=args.hook, space=args.space, n_clusters=args.clusters,
        max_words=args.words, min_fires=args.min_fires, prefix=args.prefix, rule=args.rule, seed=args.seed, device=args.device, dtype=args.dtype))
    print(f"{res.provenance['rows']}:")
    for name, stat in res.analyzer.scores_.items():
        print(f"  {name.replace('_', ' ')}: {null_line(stat)}")
    print(f"Report: {Path(args.out) / 'report.md'}")
    return 0
