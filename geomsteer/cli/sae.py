"""geomsteer sae train | inspect: sparse autoencoders with SAELens."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from ..pipelines import sae as S
from .common import Parser, option, output_args, positive_int, run_and_save, runtime_args


def add_parser(sub: Any) -> None:
    sae = sub.add_parser("sae", help="sparse autoencoders: train with SAELens on a model's activations")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True, parser_class=Parser)
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
    option(tr, "--tokens", S.train, "tokens", "training tokens", type=positive_int)
    option(tr, "--d-sae", S.train, "d_sae", "number of SAE latents", type=positive_int)
    option(tr, "--architecture", S.train, "architecture", "SAELens training architecture",
           choices=["topk", "standard", "jumprelu"])
    option(tr, "--k", S.train, "k", "active latents per token for topk", type=positive_int)
    tr.add_argument("--corpus", nargs="+", metavar="FILE", help=".txt or .jsonl files (default: WordNet glosses)")
    option(tr, "--batch-size", S.train, "batch_size", "training batch in tokens", type=positive_int)
    option(tr, "--lr", S.train, "lr", "learning rate", type=float)
    option(tr, "--epochs", S.train, "epochs", "passes over the training tokens", type=positive_int)
    option(tr, "--context-length", S.train, "context_length", "tokens per document", type=positive_int)
    option(tr, "--eval-tokens", S.train, "eval_tokens",
           "held-out tokens for L0, variance explained, dead features and top contexts", type=positive_int)
    option(tr, "--ce-documents", S.train, "ce_documents",
           "held-out documents for the cross-entropy measures, 16 to a batch", type=positive_int)
    tr.add_argument("--no-pack", action="store_true",
                    help="one document per context (default: pack whole short documents into each context)")
    output_args(tr, "seed for corpus order and training (default: 0)")
    runtime_args(tr, S.train, backend=True)

    ins = sae_sub.add_parser(
        "inspect",
        help="one feature: top-activating contexts, decoder logit lens, density, and an HTML card",
        description=("Print a feature's top-activating held-out contexts (firing token in [brackets]), the tokens "
                     "its decoder direction promotes and suppresses through the unembedding (logit lens), and how "
                     "often it fires; write a self-contained HTML card (default DIR/cards/feature-N.html)."),
    )
    ins.add_argument("sae_dir", type=Path, metavar="DIR", help="an SAE directory written by 'geomsteer sae train'")
    ins.add_argument("--feature", type=int, required=True, help="feature index")
    option(ins, "--contexts", S.inspect, "n_contexts", "how many contexts", type=positive_int)
    ins.add_argument("--html", type=Path, default=None, help="where to write the card (default: DIR/cards/feature-N.html)")

    lb = sae_sub.add_parser(
        "label",
        help="label every feature with the WordNet category enriched among the words it fires on",
        description=("Read plain WordNet nouns at the SAE's hook and label each feature with the WordNet category most "
                     "enriched among the words it fires on (hypergeometric test, Benjamini-Hochberg), with precision "
                     "and recall; no language-model judge. The fraction of live features with a significant label "
                     "stands beside the same fraction with the words' categories shuffled."),
    )
    lb.add_argument("sae_dir", type=Path, metavar="DIR", help="an SAE directory written by 'geomsteer sae train'")
    lb.add_argument("--model", default=None, help="the model (default: the one the SAE records)")
    option(lb, "--words", S.label, "n_words", "WordNet nouns read", type=positive_int)
    option(lb, "--template", S.label, "template", "text before each word ('' reads the word alone)")
    option(lb, "--min-category", S.label, "min_category", "smallest category tested, in words", type=positive_int)
    option(lb, "--alpha", S.label, "alpha", "adjusted p below which a label is significant", type=float)
    option(lb, "--null-draws", S.label, "n_null", "shuffles of the words' categories", type=int)
    lb.add_argument("--decompose", nargs="*", default=None, metavar="SYNSET",
                    help="categories whose LDA direction is decomposed into features (default: the eight most frequent "
                         "labels; none: skip)")
    option(lb, "--k", S.label, "k", "features per decomposition", type=positive_int)
    output_args(lb, "seed for the word draw and the shuffles (default: 0)")
    runtime_args(lb, S.label)

    sp = sae_sub.add_parser(
        "split",
        help="do features split along WordNet's edges across SAE widths?",
        description=("SAEs of growing width at one hook (given with --sae, or trained here with --model, --hook and "
                     "--widths on the same cached activations): every feature gets its WordNet label (as 'sae label'), "
                     "each wide feature is linked to the narrower SAE's feature with the closest decoder direction, and "
                     "the share of labelled links whose child label is the parent's WordNet category or lies under it "
                     "is tested against the wide SAE's labels shuffled. Writes result.json, report.md, figures/ (and "
                     "the SAEs it trained under saes/)."),
    )
    sp.add_argument("--sae", type=Path, nargs="+", default=None, metavar="DIR",
                    help="two or more SAE directories of different widths trained at one hook")
    sp.add_argument("--model", default=None, help="the model (default: the one the SAEs record)")
    sp.add_argument("--hook", default=None, help="where to train, e.g. blocks.6.hook_resid_post (without --sae)")
    option(sp, "--widths", S.split, "widths", "SAE widths to train (without --sae)", type=positive_int, nargs="+")
    option(sp, "--tokens", S.split, "tokens", f"training tokens, at least {S.TOKENS_PER_FEATURE} per feature of the "
           "widest SAE", type=positive_int)
    option(sp, "--k", S.split, "k", "active features per token (TopK)", type=positive_int)
    option(sp, "--words", S.split, "n_words", "WordNet nouns read", type=positive_int)
    option(sp, "--template", S.split, "template", "text before each word ('' reads the word alone)")
    option(sp, "--min-cos", S.split, "min_cos", "decoder cosine below which a wide feature has no parent", type=float)
    option(sp, "--null-draws", S.split, "n_null", "shuffles of the wide SAE's labels", type=int)
    output_args(sp, "seed for the word draw, training and the shuffles (default: 0)")
    runtime_args(sp, S.split)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.sae_command == "inspect":
        return _inspect(args)
    if args.sae_command == "split":
        res = run_and_save(args, argv, lambda: S.split(
            args.sae, args.model, hook=args.hook, widths=args.widths, tokens=args.tokens, k=args.k, n_words=args.words,
            template=args.template, min_cos=args.min_cos, n_null=args.null_draws, seed=args.seed, device=args.device, dtype=args.dtype))
        from .common import null_line

        for r in res.result.tables["links"]:
            print(f"{r['pair']}: {r['n_linked']} of {r['n_wide']} wide features linked, {r['n_split_parents']} narrow "
                  f"features split; {r['n_under_parent_label']} of {r['n_labelled_links']} labelled links under the "
                  "parent's label")
        for name, st in res.metrics["statistics"].items():
            print(f"  {name.replace('_', ' ')}: {null_line(st)}")
        print(f"Report: {Path(args.out) / 'report.md'}")
        return 0
    if args.sae_command == "label":
        res = run_and_save(args, argv, lambda: S.label(
            args.sae_dir, args.model, n_words=args.words, template=args.template, min_category=args.min_category,
            alpha=args.alpha, n_null=args.null_draws, seed=args.seed, decompose=args.decompose, k=args.k, device=args.device, dtype=args.dtype))
        from .common import null_line

        st = res.metrics["statistics"]["labelled_fraction"]
        print(f"{res.metrics['n_significant']} of {res.result.provenance['n_live']} live features labelled; fraction "
              f"{null_line(st)}")
        for name, st in res.metrics["statistics"].items():
            if name != "labelled_fraction":
                print(f"  {name.replace('_', ' ')}: {null_line(st)}")
        for r in res.result.tables["labels"][:10]:
            print(f"  {r['feature']:6d}  {r['label']:<28} p {r['q_value']:.1e}  precision {r['precision']:.2f}  "
                  f"recall {r['recall']:.2f}")
        print(f"Report: {Path(args.out) / 'report.md'}")
        return 0
    res = run_and_save(args, argv, lambda: S.train(
        args.model, args.hook, tokens=args.tokens, d_sae=args.d_sae, architecture=args.architecture, k=args.k,
        corpus_files=args.corpus, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
        context_length=args.context_length, pack=not args.no_pack, epochs=args.epochs, eval_tokens=args.eval_tokens,
        ce_documents=args.ce_documents, device=args.device, dtype=args.dtype, backend=args.backend,
        address=args.address))
    m = res.metrics
    print(f"SAE ({args.architecture}, {args.d_sae} latents) at {args.hook}: L0 {m['l0']:.1f}, variance explained "
          f"{m['fraction_variance_explained']:.3f}, CE loss recovered {m['ce_loss_recovered']:.3f} "
          f"(against mean ablation {m['ce_loss_recovered_mean_ablation']:.3f}; +{m['delta_ce']:.3f} nats/token), "
          f"dead {m['dead_fraction']:.1%}")
    print(f"SAE: {args.out} (load with gs.sae.load or sae_lens.SAE.load_from_disk)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ..reports.common import check_parent_dirs

    html = args.html or Path(args.sae_dir) / "cards" / f"feature-{args.feature}.html"
    check_parent_dirs(html, "--html")
    card = S.inspect(args.sae_dir, args.feature, args.contexts)
    path = card.save(html)
    c = card.card
    d = c["density"]
    print(f"Feature {args.feature} of {args.sae_dir} ({c['model']}, {c['hook']}): fires on "
          f"{d['fraction']:.3%} of {d['n_tokens']:,} held-out tokens, max activation {d['max']:.2f}")
    print("Top contexts:")
    for row in card.result.tables["contexts"]:
        print(f"  {row['activation']:8.2f}  {row['text']}")
    for key, label in (("top", "Promoted"), ("bottom", "Suppressed")):
        toks = ", ".join(repr(t.replace("▁", " ").replace("Ġ", " ")) for t, _ in c["logit_lens"][key])
        print(f"{label} tokens (logit lens): {toks}")
    print(f"Card: {path}")
    return 0
