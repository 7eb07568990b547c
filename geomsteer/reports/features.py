"""Reports of ``geomsteer features intervene | graph | compare``: result.json, report.md, figures/ (and the
graph as GraphML)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .common import fmt, fmt_p, pyplot, result_head, save_figure, short_hook, statistic_rows, write_report

__all__ = ["write_features_report", "feature_figures"]


def write_features_report(kind: str, res: Any, provenance: Mapping[str, Any], out: Path, force: bool = False,
                          files: Mapping[str, bytes] | None = None) -> Path:
    return write_report(kind, res, provenance, out, *_KINDS[kind], force=force, files=files)


def feature_figures(kind: str, res: Any, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The report's figures as open matplotlib figures (name -> Figure)."""
    from ..types import jsonable

    doc = jsonable({**result_head(kind, res, provenance), "tables": res.tables})
    return _KINDS[kind][0](doc, None)


def _title(doc: Mapping[str, Any], what: str) -> list[str]:
    p = doc["provenance"]
    L = [f"# Feature {what}: {p['model']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         f"Interventions at {p['hook']} (every position after the start token, the SAE's error term kept); SAEs read at "
         f"{', '.join(p['later_hooks'])}. Measured on {p['n_prompts']} evaluation prompts (`{p['eval']}`, target "
         f"log-odds) and {p['n_neutral']} neutral texts (WordNet glosses, KL), {p['n_tokens']} tokens in all.", ""]
    if p.get("vectors"):
        L += [f"Vector: `{p['vectors']}` (sha256 {p['vectors_sha256'][:12]}).", ""]
    return L


def _tail(L: list[str]) -> str:
    L += ["", "## Provenance", "", "SAE directories, model files and hashes, inputs, timings and package versions are "
          "in `result.json`."]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------- dose


def _dose_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    rows = doc["tables"]["dose"]
    st = doc["metrics"]["statistics"]
    x = [r["factor"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, label in zip(axes, ("abs_shift", "kl", "changed"),
                              ("mean |target log-odds shift|", "KL on neutral text", "downstream features changed")):
        obs = [st[f"{key}:x{a:g}"]["observed"] for a in x]
        mean = np.array([st[f"{key}:x{a:g}"]["null"]["random_features"]["mean"] for a in x])
        sd = np.array([st[f"{key}:x{a:g}"]["null"]["random_features"]["sd"] or 0.0 for a in x])
        ax.plot(x, obs, "o-", label="target features")
        ax.fill_between(x, mean - sd, mean + sd, color="grey", alpha=0.3, label="random features (mean ± sd)")
        ax.plot(x, mean, "--", color="grey")
        ax.axvline(1, color="k", lw=0.5)
        ax.set(xlabel="scale factor", title=label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    figs: dict[str, Any] = {}
    save_figure(fig, fig_dir, "dose.png", figs)
    return figs


def _dose_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    m, t = doc["metrics"], doc["tables"]
    L = _title(doc, "dose (dampen, ablate, amplify)")
    L += [f"Target features: {', '.join(f'{f} ({fr:.1%})' for f, fr in zip(m['features'], m['frequency']))} (share of "
          f"tokens each fires on), scaled together by {', '.join(f'x{a:g}' for a in m['factors'])}. Null: "
          f"{len(t['null_features'])} sets of random live features, each matched to a target's activation frequency.",
          "", f"**{m['verdict'][0].upper() + m['verdict'][1:]}.**", ""]
    keys = list(m["statistics"])
    L += statistic_rows(m["statistics"], keys)
    if "dose" in figs:
        L += ["", f"![dose](figures/{figs['dose']})"]
    L += ["", "| factor | mean shift | mean abs shift (random) | KL (random) | changed per later layer (random) |",
          "|---|---|---|---|---|"]
    for r in t["dose"]:
        L.append(f"| x{r['factor']:g} | {fmt(r['mean_shift'])} | {fmt(r['abs_shift'])} ({fmt(r['null_abs_shift'])}) | "
                 f"{fmt(r['kl'], 4)} ({fmt(r['null_kl'], 4)}) | "
                 f"{', '.join(str(c) for c in r['changed'])} ({', '.join(f'{c:.1f}' for c in r['null_changed'])}) |")
    return _tail(L)


# --------------------------------------------------------------------------------------------- graph


def _graph_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    edges = doc["tables"].get("top_edges", doc["tables"]["edges"])
    figs: dict[str, Any] = {}
    ups = [int(f) for f in doc["metrics"]["features"]]
    downs = list(dict.fromkeys((e["hook"], e["downstream"]) for e in edges))[:40]
    if downs:
        M = np.full((len(ups), len(downs)), np.nan)
        col = {d: j for j, d in enumerate(downs)}
        for e in edges:
            j = col.get((e["hook"], e["downstream"]))
            if j is not None:
                M[ups.index(e["upstream"]), j] = e["weight"]
        lim = float(np.nanmax(np.abs(M))) or 1.0
        fig, ax = plt.subplots(figsize=(min(14, 2 + 0.28 * len(downs)), min(10, 1.5 + 0.25 * len(ups))))
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(downs)))
        ax.set_xticklabels([f"{short_hook(h)}/{f}" for h, f in downs], rotation=90, fontsize=6)
        ax.set_yticks(range(len(ups)))
        ax.set_yticklabels([str(u) for u in ups], fontsize=6)
        for e in edges:
            j = col.get((e["hook"], e["downstream"]))
            if j is not None and e.get("kept"):
                ax.add_patch(plt.Rectangle((j - 0.5, ups.index(e["upstream"]) - 0.5), 1, 1, fill=False, lw=1.2))
        ax.set(xlabel="downstream feature (the strongest edges)", ylabel="upstream feature (ablated)",
               title="code change per upstream firing / layer's mean active code (boxed: beyond the null)")
        fig.colorbar(im, ax=ax, shrink=0.7)
        fig.tight_layout()
        save_figure(fig, fig_dir, "heatmap.png", figs)
        fig = _draw_graph(doc, plt)
        save_figure(fig, fig_dir, "graph.png", figs)
    if any("attribution" in e for e in edges):
        fig, ax = plt.subplots(figsize=(4.2, 4))
        w = np.array([e["weight"] for e in edges])
        a = np.array([e["attribution"] for e in edges])
        ax.scatter(w, a, s=8, alpha=0.6)
        lim = float(max(np.abs(w).max(), np.abs(a).max()))
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.5)
        rho = doc["metrics"]["statistics"].get("attribution_spearman", {}).get("observed")
        ax.set(xlabel="real ablation", ylabel="attribution (gradient x activation)",
               title=f"strongest edges; Spearman over all pairs {fmt(rho, 2)}")
        fig.tight_layout()
        save_figure(fig, fig_dir, "attribution.png", figs)
    return figs


def _draw_graph(doc: Mapping[str, Any], plt: Any) -> Any:
    edges = doc["tables"].get("top_edges", doc["tables"]["edges"])[:120]
    layers = sorted({int(doc["provenance"]["hook"].split(".")[1])} | {int(e["hook"].split(".")[1]) for e in edges})
    nodes: dict[str, tuple[int, int]] = {}
    for u in doc["metrics"]["features"]:
        nodes.setdefault(f"L{layers[0]}/{u}", (layers[0], int(u)))
    for e in edges:
        nodes.setdefault(f"L{e['hook'].split('.')[1]}/{e['downstream']}", (int(e["hook"].split(".")[1]), e["downstream"]))
    by_layer: dict[int, list[str]] = {}
    for n, (L, _) in nodes.items():
        by_layer.setdefault(L, []).append(n)
    pos = {}
    for L, ns in by_layer.items():
        for i, n in enumerate(ns):
            pos[n] = (layers.index(L), (i + 0.5) / len(ns))
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(layers), 6))
    lim = max((abs(e["weight"]) for e in edges), default=1.0)
    for e in edges:
        a = pos[f"L{layers[0]}/{e['upstream']}"]
        b = pos[f"L{e['hook'].split('.')[1]}/{e['downstream']}"]
        ax.plot([a[0], b[0]], [a[1], b[1]], color="C3" if e["weight"] > 0 else "C0",
                lw=0.3 + 2.5 * abs(e["weight"]) / lim, alpha=0.8 if e.get("kept", True) else 0.5,
                ls="-" if e.get("kept", True) else ":")
    for n, (x, y) in pos.items():
        ax.plot([x], [y], "o", color="k", ms=3)
        if len(by_layer[nodes[n][0]]) <= 40:
            ax.text(x + 0.03, y, n.split("/")[1], fontsize=5, va="center")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([f"layer {L}" for L in layers])
    ax.set_yticks([])
    ax.set_title("strongest edges (solid: beyond the null, dotted: not; red: ablation raises the downstream "
                 "feature, blue: lowers it)", fontsize=9)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    return fig


def _graph_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    m, t, pr, p = doc["metrics"], doc["tables"], doc["params"], doc["provenance"]
    L = _title(doc, "graph")
    L += [f"Each of {len(m['features'])} upstream features ({p.get('feature_source', 'given')}) zero-ablated in turn; "
          "an edge's weight is the downstream feature's code change summed over the tokens, per token the upstream "
          "feature fires on, in units of its layer's mean active code. "
          f"Edge p-values: max-statistic over all downstream features, against {pr['n_null']} random live features of "
          f"matched frequency, each ablated alike; edges with p <= {pr['alpha']:g} are kept: {m['n_edges']} edges. "
          f"`graph.graphml` holds them and the {pr['top']} strongest edges, kept or not (attribute `kept`).", ""]
    L += statistic_rows(m["statistics"], [k for k, v in m["statistics"].items() if v.get("null")])
    ag = m.get("attribution_agreement") or {}
    if ag:
        L += ["", "Attribution patching (forward mode: gradient x the ablation's change, the SAE error term as one more "
              "node) against the real ablations, per layer:", "", "| layer | Spearman | sign agreement (strong edges) |",
              "|---|---|---|"]
        for h, v in ag.items():
            if isinstance(v, Mapping):
                L.append(f"| {h} | {fmt(v['spearman'])} | {fmt(v['sign_agreement'])} |")
        L += ["", f"Error node: total |effect| {fmt(ag.get('error_node_total_effect'))} (weights summed over downstream "
              "features, attribution estimate)."]
    secs = p.get("seconds") or {}
    if secs:
        L += ["", "Time: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in secs.items()) + "."]
    for key, title in (("graph", "graph"), ("heatmap", "heatmap"), ("attribution", "attribution")):
        if key in figs:
            L += ["", f"![{title}](figures/{figs[key]})"]
    L += ["", "## Strongest edges", "", "| upstream | downstream | weight | attribution | p | kept |",
          "|---|---|---|---|---|---|"]
    for e in t.get("top_edges", t["edges"])[:30]:
        L.append(f"| {e['upstream']} | {short_hook(e['hook'])}/{e['downstream']} | {e['weight']:+.3f} | "
                 f"{fmt(e.get('attribution'))} | {fmt_p(e['p_value'])} | {'yes' if e.get('kept') else 'no'} |")
    return _tail(L)


# --------------------------------------------------------------------------------------------- compare


def _compare_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    rows = doc["tables"]["methods"]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    names = [r["method"] for r in rows]
    for ax, key, label in zip(axes[:3], ("mean_shift", "kl", "off_target_changed"),
                              ("target log-odds shift", "KL on neutral text", "off-target features changed")):
        ax.bar(range(len(rows)), [r[key] for r in rows], color=["C0", "C1", "C2"][: len(rows)])
        for i, r in enumerate(rows):
            if f"null_{key}" in r:
                ax.plot([i - 0.4, i + 0.4], [r[f"null_{key}"]] * 2, color="k", lw=1.5,
                        label="random features" if i == 1 else None)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(label, fontsize=9)
    axes[1].legend(fontsize=7)
    scan = doc["tables"]["scan"]
    for method, s in scan.items():
        x = np.abs(s["multipliers"]) if method == "vector" else s["multipliers"]
        axes[3].plot(x, s["shift"], "o-", label=method + (" (|multiplier|)" if method == "vector" else ""))
    axes[3].axhline(doc["metrics"]["target_shift"], color="k", ls="--", lw=1, label="matched shift")
    axes[3].set(xlabel="multiplier", title="matching the vector's effect")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    figs: dict[str, Any] = {}
    save_figure(fig, fig_dir, "compare.png", figs)
    return figs


def _na(x: Any, nd: int = 3) -> str:
    return "–" if x is None else fmt(x, nd)


def _compare_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    m, t, pr = doc["metrics"], doc["tables"], doc["params"]
    L = _title(doc, "steering against the vector")
    at_alpha = m.get("vector_shift_at_alpha")
    if at_alpha is not None and abs(at_alpha - m["target_shift"]) > 1e-9:
        L += [f"**The feature methods cannot reach the vector's shift at multiplier {pr['alpha']:g} "
              f"({fmt(at_alpha)}): steering breaks down first. All three are compared at the largest shift every "
              f"method reaches, {fmt(m['target_shift'])}, the vector scaled down to it.**", ""]
    L += [f"Target shift of the log-odds: {fmt(m['target_shift'])} (the vector at multiplier {pr['alpha']:g}: "
          f"{fmt(at_alpha if at_alpha is not None else m['target_shift'])}). The vector's "
          f"non-negative sparse coding over the SAE decoder ({len(m['features'])} features: "
          f"{', '.join(str(f) for f in m['features'])}) explains {fmt(m['explained'])} of |alpha v|^2. "
          "*reconstruction* adds those features' decoder directions with their coefficients; *clamp* sets the "
          "features to their coefficients (error term kept); each is scaled to match the vector's shift. Null: "
          f"{len(t['null_features'])} sets of random live features of matched frequency, given the same coefficients "
          "and multiplier.", ""]
    L += ["| method | multiplier | matched | mean shift (random) | KL (random) | off-target changed (random) | "
          "wrong way |", "|---|---|---|---|---|---|---|"]
    for r in t["methods"]:
        L.append(f"| {r['method']} | {fmt(r['multiplier'])} | {'yes' if r['matched'] else '**no**'} | "
                 f"{fmt(r['mean_shift'])} ({_na(r.get('null_mean_shift'))}) | {fmt(r['kl'], 4)} "
                 f"({_na(r.get('null_kl'), 4)}) | {r['off_target_changed']} ({_na(r.get('null_off_target_changed'), 1)}) | "
                 f"{r['wrong_way_fraction']:.0%} |")
    L += [""]
    L += statistic_rows(m["statistics"], list(m["statistics"]))
    if "compare" in figs:
        L += ["", f"![compare](figures/{figs['compare']})"]
    return _tail(L)


# --------------------------------------------------------------------------------------------- relations


def _relations_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    mats = doc["tables"]["matrices"]
    order = np.argsort([r["decoder_cluster"] for r in doc["tables"]["features"]], kind="stable")
    names = [str(doc["tables"]["features"][i]["feature"]) for i in order]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    for ax, key, title in zip(axes, ("decoder_cosine", "co_activation", "co_change", "effect_cosine"),
                              ("decoder cosine", "co-activation (clean)", "co-change under steering",
                               "cosine of output effects")):
        M = np.asarray(mats[key])[np.ix_(order, order)]
        im = ax.imshow(M, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=90, fontsize=5)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=5)
    fig.colorbar(im, ax=axes, shrink=0.7)
    figs: dict[str, Any] = {}
    save_figure(fig, fig_dir, "relations.png", figs)
    return figs


def _relations_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    m, t, pr = doc["metrics"], doc["tables"], doc["params"]
    L = _title(doc, "relations")
    L += [f"The {len(m['features'])} features whose codes change most at the hook when the vector is added at "
          f"multiplier {pr['alpha']:g}, ordered by decoder cluster in the figure.", ""]
    L += statistic_rows(m["statistics"], list(m["statistics"]))
    if "relations" in figs:
        L += ["", f"![relations](figures/{figs['relations']})"]
    L += ["", "| feature | mean abs change | decoder cluster | co-activation cluster |", "|---|---|---|---|"]
    for r in t["features"]:
        L.append(f"| {r['feature']} | {fmt(r['mean_abs_change'])} | {r['decoder_cluster']} | {r['co_activation_cluster']} |")
    return _tail(L)


# --------------------------------------------------------------------------------------------- SAE labels


def _labels_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    rows = doc["tables"]["labels"]
    sig = [r for r in rows if r["significant"]]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([r["recall"] for r in rows if not r["significant"]], [r["precision"] for r in rows if not r["significant"]],
               s=6, color="0.7", label="not significant")
    ax.scatter([r["recall"] for r in sig], [r["precision"] for r in sig], s=8, color="C0", label="significant label")
    ax.set(xlabel="recall (share of the category the feature fires on)",
           ylabel="precision (share of its words in the category)", title="each live feature's best category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs: dict[str, Any] = {}
    save_figure(fig, fig_dir, "labels.png", figs)
    return figs


def _labels_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m, pr, t = doc["provenance"], doc["metrics"], doc["params"], doc["tables"]
    L = [f"# SAE feature labels from WordNet: {p['model']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         f"SAE `{p['sae']}` at {p['hook']}. {p['n_words_read']} plain WordNet nouns read at the hook (template "
         f"{pr['template']!r}); {p['n_live']} features fire on at least {pr['min_fires']} of them; "
         f"{p['n_categories']} WordNet categories with at least {pr['min_category']} of the words and at most "
         f"{pr['max_fraction']:.0%} of them. Label: the category most enriched among a feature's words "
         f"(hypergeometric test, Benjamini-Hochberg across categories, then across features). "
         f"{m['n_significant']} features get a significant label (adjusted p < {pr['alpha']:g}).", ""]
    L += statistic_rows(m["statistics"], list(m["statistics"]))
    if "labels" in figs:
        L += ["", f"![labels](figures/{figs['labels']})"]
    if t.get("decomposition"):
        L += ["", f"## Category directions in features (k = {pr.get('k')})", "",
              "Each category's LDA direction at the hook (the words' activations whitened by their covariance, mapped "
              "back into the residual stream), decomposed into features by non-negative OMP; ✓ marks a feature "
              "labelled with the category or a category under it.", "",
              "| category | explained | features (label) | features labelled with it, in all |", "|---|---|---|---|"]
        for r in t["decomposition"]:
            L.append(f"| {r['category']} | {r['explained']:.2f} | " + ", ".join(
                f"{f} ({lb or '–'}){' ✓' if ok else ''}" for f, lb, ok in zip(r["features"], r["labels"], r["match"]))
                + f" | {r['n_features_labelled_with_it']} |")
    L += ["", "| feature | label | adjusted p | fires on | in category | category size | precision | recall | words |",
          "|---|---|---|---|---|---|---|---|---|"]
    for r in t["labels"][:60]:
        L.append(f"| {r['feature']} | {r['label']} | {fmt_p(r['q_value'])} | {r['n_fires']} | {r['n_in_category']} | "
                 f"{r['category_size']} | {r['precision']:.2f} | {r['recall']:.2f} | "
                 f"{', '.join(r.get('example_words', []))} |")
    L += ["", "## Provenance", "", "The SAE, model, word draw, timings and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


def _split_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    st = doc["metrics"]["statistics"]
    keys = [k for k in st if k.startswith("children_under_parent_label:")
            or k.startswith("children_strictly_under_parent_label:")]
    figs: dict[str, Any] = {}
    if keys:
        fig, ax = plt.subplots(figsize=(1.6 * len(keys) + 2, 3.2))
        x = np.arange(len(keys))
        obs = [st[k]["observed"] if st[k]["observed"] is not None else np.nan for k in keys]
        nd = [st[k]["null"]["shuffled_labels"] for k in keys]
        ax.bar(x, obs, color="C0", label="observed")
        ax.errorbar(x, [n["mean"] if n["mean"] is not None else np.nan for n in nd],
                    yerr=[2 * (n["sd"] or 0) for n in nd], fmt="o", color="k", capsize=4, label="shuffled labels ± 2 sd")
        ax.set_xticks(x)
        ax.set_xticklabels([("strictly " if "strictly" in k else "") + k.split(":", 1)[1] for k in keys], fontsize=7)
        ax.set(ylabel="share of links", title="child label at (or strictly) under the parent's label")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, fig_dir, "splitting.png", figs)
    # the splits with the most children under the parent's label, each above its WordNet subtree
    def score(t):  # children strictly under the parent's label first, then at or under it
        under = [c for c in t["children"] if c["under_parent_label"]]
        return (-sum(c["label"] != t["parent_label"] for c in under), -len(under))

    trees = sorted(doc["tables"]["splits"], key=score)[:4]
    if trees:
        fig, axes = plt.subplots(2, len(trees), figsize=(4.2 * len(trees), 7.0), squeeze=False,
                                 gridspec_kw={"hspace": 0.35})
        for ax, wax, t in zip(axes[0], axes[1], trees):
            ax.axis("off")
            ax.set_title("feature split (green: label at or under the parent's)", fontsize=7)
            ax.text(0.5, 0.95, f"{t['pair'].split('->')[0]}#{t['parent']}\n{t['parent_label']}", ha="center", va="top",
                    fontsize=8, bbox=dict(boxstyle="round", fc="#dde"))
            kids = t["children"][:8]
            for j, ch in enumerate(kids):
                xj = (j + 0.5) / len(kids)
                ok = ch["under_parent_label"]
                ax.plot([0.5, xj], [0.78, 0.42], color="0.6", lw=0.8)
                ax.text(xj, 0.4, f"#{ch['feature']}\n{ch['label'] or '(no label)'}\ncos {ch['cos']:.2f}", ha="center",
                        va="top", fontsize=6, rotation=30,
                        bbox=dict(boxstyle="round", fc={True: "#cfc", False: "#fcc", None: "#eee"}[ok]))
            _wordnet_subtree(wax, t)
            wax.set_title("WordNet, from the parent's label down", fontsize=7)
        save_figure(fig, fig_dir, "split_trees.png", figs)
    return figs


def _wordnet_subtree(ax: Any, tree: Mapping[str, Any]) -> None:
    """The WordNet paths from a split's parent label down to its children's labels, drawn as a tree by depth."""
    ax.axis("off")
    paths = [p for p in (tree.get("wordnet_paths") or {}).values() if p]
    if not paths:
        ax.text(0.5, 0.5, "no child label under the parent's", ha="center", va="center", fontsize=7, color="0.4")
        return
    depth: dict[str, int] = {}
    edges = set()
    for p in paths:  # p runs from the parent label down to the child label
        for d, node in enumerate(p):
            depth[node] = min(depth.get(node, d), d)
        edges.update(zip(p[:-1], p[1:]))
    levels: dict[int, list[str]] = {}
    for node, d in sorted(depth.items(), key=lambda kv: kv[1]):
        levels.setdefault(d, []).append(node)
    top = max(levels)
    pos = {n: ((i + 0.5) / len(ns), 0.9 - 0.8 * d / max(top, 1)) for d, ns in levels.items() for i, n in enumerate(ns)}
    leaves = {p[-1] for p in paths}
    for a, b in edges:
        ax.plot([pos[a][0], pos[b][0]], [pos[a][1], pos[b][1]], color="0.6", lw=0.8)
    for n, (x, y) in pos.items():
        ax.text(x, y, n.split(".")[0].replace("_", " "), ha="center", va="center", fontsize=6,
                bbox=dict(boxstyle="round", fc="#cfc" if n in leaves and n != paths[0][0] else "#eef"))


def _split_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m, pr, t = doc["provenance"], doc["metrics"], doc["params"], doc["tables"]
    L = [f"# SAE feature splitting against WordNet: {p['model']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         f"SAEs of widths {', '.join(map(str, m['widths']))} at {p['hook']} ({'; '.join(p['saes'])}). Features labelled "
         f"from {p['n_words_read']} WordNet nouns read at the hook (template {pr['template']!r}; {p['n_categories']} "
         f"categories; hypergeometric test, Benjamini-Hochberg). Each wide feature is linked to the next narrower SAE's "
         f"feature with the closest decoder direction when their cosine is at least {pr['min_cos']}. Null: the wide "
         "SAE's labels shuffled among its labelled features (labels and links kept).", ""]
    L += statistic_rows(m["statistics"], list(m["statistics"]))
    for k in ("splitting", "split_trees"):
        if k in figs:
            L += ["", f"![{k}](figures/{figs[k]})"]
    L += ["", "| widths | wide features | linked | narrow features that split | labelled links | child at or under "
          "parent label | strictly under | median cos |", "|---|---|---|---|---|---|---|---|"]
    for r in t["links"]:
        L.append(f"| {r['pair']} | {r['n_wide']} | {r['n_linked']} | {r['n_split_parents']} | {r['n_labelled_links']} | "
                 f"{r['n_under_parent_label']} | {r.get('n_strictly_under', '–')} | {r['median_cos']:.2f} |")
    L += ["", "## Splits (labelled parents with two or more children)", ""]
    for tr in t["splits"][:20]:
        L.append(f"- {tr['pair']} feature {tr['parent']} ({tr['parent_label']}): " + ", ".join(
            f"{c['feature']} {c['label'] or '(no label)'}{' ✓' if c['under_parent_label'] else ''}"
            for c in tr["children"]))
    L += ["", "## Provenance", "", "The SAEs, model, word draw, timings and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


_KINDS = {
    "feature_dose": (_dose_figures, _dose_markdown),
    "feature_graph": (_graph_figures, _graph_markdown),
    "feature_compare": (_compare_figures, _compare_markdown),
    "feature_relations": (_relations_figures, _relations_markdown),
    "sae_labels": (_labels_figures, _labels_markdown),
    "sae_split": (_split_figures, _split_markdown),
}
