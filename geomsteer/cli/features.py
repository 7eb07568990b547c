"""geomsteer features intervene | graph | compare: causal experiments on SAE features."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any, Sequence

from ..pipelines import features as F
from .common import Parser, null_line, option, output_args, positive_int, run_and_save, runtime_args


def _common(sp: argparse.ArgumentParser, fn: Any, features: bool = True) -> None:
    sp.add_argument("--model", required=True, help="model alias (see 'geomsteer models')")
    sp.add_argument("--sae", type=Path, nargs="+", required=True,
                    help="SAE directories written by 'geomsteer sae train', one per layer: the intervention layer's "
                         "and later ones (the effects are read there)")
    sp.add_argument("--hook", default=None, help="where to intervene (default: the vector's hook, else the earliest "
                                                 "SAE's), e.g. blocks.6.hook_resid_post")
    if features:
        sp.add_argument("--features", type=int, nargs="+", default=None,
                        help="SAE feature indices at --hook (default: the top --k live features of the vector's "
                             "sparse coding over the decoder)")
        sp.add_argument("--vector", type=Path, default=None,
                        help="vectors.safetensors from 'geomsteer steer compute' whose decomposition supplies the "
                             "features")
    else:
        sp.add_argument("--vector", type=Path, required=True, help="vectors.safetensors from 'geomsteer steer compute'")
    option(sp, "--eval", fn, "eval", "held-out prompts with target tokens: a shipped set's name or a JSONL path")
    option(sp, "--neutral", fn, "n_neutral", "neutral texts (WordNet glosses, first 24 tokens) for the KL",
           type=positive_int)
    if "threshold" in inspect.signature(fn).parameters:
        option(sp, "--threshold", fn, "threshold", "a downstream feature changes when its mean |code change| exceeds this "
           "x its layer's mean active code", type=float)
    output_args(sp, "seed for the random feature sets and the neutral texts (default: 0)")
    runtime_args(sp, fn)


def add_parser(sub: Any) -> None:
    fe = sub.add_parser(
        "features",
        help="causal experiments on SAE features: dose curves, the feature graph, feature steering vs the vector",
        description=(
            "Intervene on SAE features at one layer with the SAE's error term kept (an intervention that changes no "
            "feature leaves the model exactly as it was) and read what changes: every SAE feature at each later "
            "layer, the target log-odds on held-out prompts, the KL divergence on neutral text. Nulls: random live "
            "features of matched activation frequency. Each step writes result.json, report.md and figures/ into "
            "--out."
        ),
    )
    fe_sub = fe.add_subparsers(dest="features_command", required=True, parser_class=Parser)

    iv = fe_sub.add_parser("intervene", help="scale features by 0, 0.5, 2, ...: dose curves against random features",
                           description="Scale a set of features together by each factor (0 ablates, 0.5 dampens, 2 "
                                       "doubles) at every position after the start token; the same for random live "
                                       "feature sets of matched frequency. Reports each effect against the random "
                                       "sets, and whether dampening acts like ablation and how doubling compares.")
    _common(iv, F.intervene)
    option(iv, "--factors", F.intervene, "factors", "scale factors", type=float, nargs="+")
    option(iv, "--k", F.intervene, "k", "features taken from the vector's decomposition", type=positive_int)
    option(iv, "--null-draws", F.intervene, "n_null", "random feature sets", type=int)

    gr = fe_sub.add_parser("graph", help="feature-to-feature graph: ablate each upstream feature, read later layers",
                           description="Zero-ablate each upstream feature in turn and read the mean code change of "
                                       "every feature at each later layer with an SAE. Edges are kept against random "
                                       "live features of matched frequency (max-statistic over downstream features). "
                                       "The attribution-patching estimate (gradient x activation, forward mode, the "
                                       "SAE error term as a node) is compared with the real ablations. Writes "
                                       "graph.graphml beside the report.")
    _common(gr, F.graph)
    option(gr, "--k", F.graph, "k", "upstream features taken from the vector's decomposition", type=positive_int)
    option(gr, "--alpha", F.graph, "alpha", "edges kept at this family-wise p-value", type=float)
    gr.add_argument("--no-attribution", action="store_true", help="skip the attribution-patching estimate")
    option(gr, "--null-draws", F.graph, "n_null", "random upstream features ablated for the edge null", type=int)

    co = fe_sub.add_parser("compare", help="steer by features vs by the vector, at matched effect",
                           description="Steer with the vector, with its top-k non-negative feature reconstruction "
                                       "(decoder directions added) and by clamping those features, the last two at the "
                                       "multiplier that matches the vector's target log-odds shift. Compares KL on "
                                       "neutral text, off-target downstream features and prompts moved the wrong way, "
                                       "beside random feature sets given the same coefficients.")
    _common(co, F.compare, features=False)
    rel = fe_sub.add_parser("relations", help="the features a vector changes: clusters, co-change, effects on the output",
                            description="Steer with the vector and take the features whose codes change most at its "
                                        "hook. Cluster them by decoder cosine and by co-activation; test whether a "
                                        "cluster's features change together more than random sets of the same sizes, "
                                        "and whether decoder similarity predicts the similarity of two features' "
                                        "effects on the next-token distribution (permutation nulls).")
    _common(rel, F.relations, features=False)
    option(rel, "--alpha", F.relations, "alpha", "the vector's multiplier", type=float)
    option(rel, "--top", F.relations, "top", "most changed features related", type=positive_int)
    rel.add_argument("--clusters", type=positive_int, default=None, help="clusters (default: a quarter of the features)")
    option(co, "--alpha", F.compare, "alpha", "the vector's multiplier (sets the effect to match)", type=float)
    option(co, "--k", F.compare, "k", "features in the reconstruction", type=positive_int)
    option(co, "--null-draws", F.compare, "n_null", "random feature sets", type=int)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    c = args.features_command
    common = dict(hook=args.hook, eval=args.eval, n_neutral=args.neutral, threshold=getattr(args, "threshold", None),
                  n_null=getattr(args, "null_draws", None), seed=args.seed)
    if c == "intervene":
        res = run_and_save(args, argv, lambda: F.intervene(args.model, args.sae, args.features, vectors=args.vector,
                                                           factors=args.factors, k=args.k, **common, device=args.device, dtype=args.dtype))
        print(res.metrics["verdict"])
    elif c == "graph":
        res = run_and_save(args, argv, lambda: F.graph(args.model, args.sae, args.features, vectors=args.vector,
                                                       k=args.k, alpha=args.alpha,
                                                       attribution=not args.no_attribution, **common, device=args.device, dtype=args.dtype))
        print(f"{res.metrics['n_edges']} edges kept from {len(res.metrics['features'])} upstream features; graph: "
              f"{Path(args.out) / 'graph.graphml'}")
    elif c == "relations":
        res = run_and_save(args, argv, lambda: F.relations(
            args.model, args.sae, args.vector, hook=args.hook, alpha=args.alpha, top=args.top,
            n_clusters=args.clusters, eval=args.eval, n_neutral=args.neutral, seed=args.seed, device=args.device, dtype=args.dtype))
    else:
        res = run_and_save(args, argv, lambda: F.compare(args.model, args.sae, args.vector, alpha=args.alpha, k=args.k,
                                                         **common, device=args.device, dtype=args.dtype))
        for r in res.result.tables["methods"]:
            print(f"{r['method']:>14}: multiplier {r['multiplier']:.3g}{'' if r['matched'] else ' (not matched)'}, "
                  f"shift {r['mean_shift']:+.3f}, KL {r['kl']:.4f}, off-target changed {r['off_target_changed']}")
    for name, st in res.metrics["statistics"].items():
        print(f"  {name.replace('_', ' ')}: {null_line(st)}")
    print(f"Report: {Path(args.out) / 'report.md'}")
    return 0
