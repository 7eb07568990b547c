"""The hierarchy report: result.json, directions.safetensors, report.md and figures."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import _atomic
from .common import as_result, category_label, check_output_dir, fmt, fmt_p, package_versions, pyplot, statistic_rows, verdict


def write_hierarchy_report(result: Any, hierarchy: Any, out: Path, force: bool = False,
                           command: Sequence[str] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``result.json``, ``directions.safetensors``, ``report.md`` and ``figures/*.png`` to ``out``."""
    check_output_dir(out, force)
    res = as_result(result)
    art = res.artifacts
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc = {
        "geomsteer_result": "hierarchy",
        "created": created,
        "command": list(command) if command else None,
        "model": art["model"],
        "n_categories": len(art["names"]),
        "params": res.params,
        "provenance": {**res.provenance, **(extra or {}), "packages": package_versions(),
                       "platform": platform.platform()},
        "metrics": res.metrics,
        "categories": res.tables["categories"],
        "simplices": res.tables["simplices"],
    }
    from ..types import jsonable

    doc = jsonable(doc)  # arrays to lists, NaN to null
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        _write_directions(res, hierarchy, tmp / "directions.safetensors")
        figures = _hierarchy_figures(res, hierarchy, tmp / "figures")
        (tmp / "report.md").write_text(_hierarchy_markdown(doc, figures))
    return Path(out)


def _write_directions(res: Any, h: Any, path: Path) -> None:
    art = res.artifacts
    from safetensors.numpy import save_file

    sets = art["token_ids"]
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in sets])
    tensors = {
        "directions": np.ascontiguousarray(art["directions"].vectors, dtype=np.float32),
        "mean_directions": np.ascontiguousarray(art["mean_directions"].vectors, dtype=np.float32),
        "whitening": np.ascontiguousarray(art["whitening"].W, dtype=np.float64),
        "unembedding_mean": np.ascontiguousarray(art["whitening"].mean, dtype=np.float64),
        "token_ids": np.concatenate(sets).astype(np.int64),
        "token_offsets": offsets,
    }
    meta = {
        "format": "geomsteer.hierarchy.directions/1",
        "names": json.dumps(list(art["names"])),
        "parents": json.dumps([h.parent(n) for n in art["names"]]),
        "model": str(art["model"]),
        "space": art["directions"].space,
        "estimator": str(art["estimator"]),
        "note": "directions[i] is category names[i] in the whitened space g(y) = (gamma(y) - unembedding_mean) "
                "@ whitening; its tokens are token_ids[token_offsets[i]:token_offsets[i+1]]",
    }
    save_file(tensors, str(path), metadata=meta)


def _hierarchy_figures(res: Any, h: Any, fig_dir: Path) -> dict[str, str]:
    art = res.artifacts
    plt = pyplot()

    figs: dict[str, str] = {}

    # 1. Each statistic against its null draws.
    from ..analyzers.hierarchy import STATISTICS

    stats = [k for k in STATISTICS if k in res.metrics]
    colors = {"shuffled_tokens": "tab:blue", "nested_random_sets": "tab:orange", "random_unembedding": "tab:green"}
    ncol = 3
    nrow = -(-len(stats) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(12, 3.1 * nrow), squeeze=False)
    for ax, k in zip(axes.ravel(), stats):
        st = res.metrics[k]
        for null, draws in art["null_draws"].get(k, {}).items():
            v = np.asarray(draws, dtype=np.float64)
            v = v[np.isfinite(v)]
            if v.size:
                ax.plot(v, np.full(v.size, float(list(colors).index(null)) if null in colors else 0.0), "|",
                        color=colors.get(null, "grey"), ms=12, label=null.replace("_", " "))
        if st["observed"] is not None:
            ax.axvline(st["observed"], color="black", lw=2, label="observed")
            if st["ci95"]:
                ax.axvspan(*st["ci95"], color="black", alpha=0.12)
        ax.set_yticks([])
        ax.set_title(k.replace("_", " "), fontsize=9)
        p = st.get("p_value")
        ax.set_xlabel(f"p {fmt_p(p)}, effect {fmt(st.get('effect_size'), 1)} sd", fontsize=8)
    for ax in axes.ravel()[len(stats):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle("Observed (black line, shaded 95% bootstrap interval) against each null's draws (ticks)")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(fig_dir / "nulls.png", dpi=110)
    plt.close(fig)
    figs["nulls"] = "figures/nulls.png"

    # 2. Per-edge orthogonality and per-category held-out AUC, observed against the pooled null draws.
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    bins = np.linspace(-1, 1, 81)
    panels = [("parent_child", "cos(ℓ_parent, ℓ_child − ℓ_parent)"), ("siblings", "cos(ℓ_parent, ℓ_child1 − ℓ_child0)")]
    for ax, (key, xlabel) in zip(axes[:2], panels):
        v = np.asarray(art["signed"][key])
        ax.hist(v[np.isfinite(v)], bins=bins, histtype="step", density=True, color="black", lw=1.8, label="observed")
        for null, sv in art["null_signed"].items():
            w = np.asarray(sv[key])
            ax.hist(w[np.isfinite(w)], bins=bins, histtype="step", density=True, color=colors.get(null, "grey"),
                    label=null.replace("_", " "))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    axes[0].set_title("Hierarchical orthogonality, per edge")
    axes[1].set_title("Sibling differences, per pair")
    series = [("observed", art["observed_units"]["heldout_auc"], "black")]
    series += [(n.replace("_", " "), u["heldout_auc"], colors.get(n, "grey")) for n, u in art["null_units"].items()]
    ab = np.linspace(0, 1, 51)
    for name, v, c in series:
        v = np.asarray(v)
        axes[2].hist(v[np.isfinite(v)], bins=ab, histtype="step", density=True, color=c, label=name,
                     lw=1.8 if c == "black" else 1)
    axes[2].axvline(0.5, color="grey", lw=0.5)
    axes[2].set_xlabel("AUC: held-out tokens vs random tokens, per category")
    axes[2].set_title("Held-out projection (split by lemma)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(fig_dir / "orthogonality.png", dpi=120)
    plt.close(fig)
    figs["orthogonality"] = "figures/orthogonality.png"

    # 3. Cosine matrix ordered by the tree, beside 1 / (1 + tree distance).
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    im0 = axes[0].imshow(art["cosine_matrix"], cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axes[0].set_title("cos(ℓ_w, ℓ_z), categories in tree order")
    fig.colorbar(im0, ax=axes[0], fraction=0.046)
    im1 = axes[1].imshow(art["tree_similarity"], cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title("1 / (1 + tree distance)")
    fig.colorbar(im1, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    r = res.metrics["cosine_vs_tree_distance"]["observed"]
    fig.suptitle(f"Pearson correlation of the two (upper triangles, train-split directions): {fmt(r)}")
    fig.tight_layout()
    fig.savefig(fig_dir / "heatmap.png", dpi=120)
    plt.close(fig)
    figs["heatmap"] = "figures/heatmap.png"

    # 4. Park et al. Figure 2 style: animal / mammal / bird / plant in a 2-D plane.
    path = _concept_plane(res, h, fig_dir, plt)
    if path:
        figs["concept_plane"] = path
    return figs


_PLANE = [("animal.n.01", "mammal.n.01"), ("animal.n.01", "bird.n.01"), ("organism.n.01", "animal.n.01")]
_PLANE_GROUPS = ["mammal.n.01", "bird.n.01", "fish.n.01", "reptile.n.01", "plant.n.02", "animal.n.01"]


def _concept_plane(res: Any, h: Any, fig_dir: Path, plt: Any) -> str | None:
    art = res.artifacts
    idx = {n: i for i, n in enumerate(art["names"])}
    pair = next(((x, y) for x, y in _PLANE if x in idx and y in idx), None)
    if pair is None:
        return None
    fig = concept_plane_figure(res, h, pair[0], pair[1], [n for n in _PLANE_GROUPS if n in idx])
    if fig is None:
        return None
    fig.savefig(fig_dir / "concept_plane.png", dpi=120)
    plt.close(fig)
    return "figures/concept_plane.png"


def concept_plane_figure(res: Any, h: Any, parent: str, child: str, groups: Sequence[str]) -> Any:
    """Tokens of ``groups`` and their category vectors in the plane of ℓ_parent and ℓ_child − ℓ_parent.

    The parent's tokens are drawn first and the other groups' on top of them."""
    from ..errors import ConfigError

    plt = pyplot()
    art = res.artifacts
    idx = {n: i for i, n in enumerate(art["names"])}
    unknown = [n for n in (parent, child, *groups) if n not in idx]
    if unknown:
        raise ConfigError(f"{unknown[0]!r} is not one of the {len(idx)} categories of this run; pick names from "
                          ".directions (e.g. {})".format(", ".join(list(idx)[:4])))
    L = art["directions"].vectors.astype(np.float64)
    base, vec = L[idx[parent]], L[idx[child]]
    e1 = base / np.linalg.norm(base)
    diff = vec - base
    e2 = diff - (diff @ e1) * e1
    if np.linalg.norm(e2) == 0:
        raise ConfigError(f"ℓ_{child} − ℓ_{parent} is parallel to ℓ_{parent}: the plane is degenerate")
    e2 /= np.linalg.norm(e2)
    groups = list(dict.fromkeys(groups))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colors = plt.get_cmap("tab10")
    shown: set[int] = set()
    ordered = sorted(groups, key=lambda n: n == parent)  # the parent last: its tokens include the children's
    for k, n in enumerate(ordered[::-1]):
        toks = np.array([t for t in h.tokens(n) if t not in shown], dtype=np.int64)
        if n != parent:
            shown.update(toks.tolist())
        if not len(toks):
            continue
        G = art["embed"](toks)
        ax.scatter(G @ e1, G @ e2, s=4, alpha=0.5, color=colors(k % 10), label=f"{category_label(n)} ({len(toks)})")
    for n in groups:
        v = L[idx[n]]
        ax.annotate("", xy=(v @ e1, v @ e2), xytext=(0, 0), arrowprops=dict(arrowstyle="->", lw=1.8))
        ax.text(v @ e1, v @ e2, " ℓ_" + category_label(n), fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"along ℓ_{category_label(parent)}")
    ax.set_ylabel(f"along ℓ_{category_label(child)} − ℓ_{category_label(parent)} (orthogonalized)")
    ax.set_title("Tokens and category vectors in the causal inner product")
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    return fig


def _hierarchy_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    from ..analyzers.hierarchy import NULLS, STATISTICS

    m = doc["metrics"]
    prov = doc["provenance"]
    cov = prov.get("hierarchy", {})
    keys = [k for k in STATISTICS if k in m]
    n_draws = doc["params"].get("n_null_draws")
    lines = [
        f"# Hierarchical concept directions: {doc['model']}",
        "",
        f"Created {doc['created']} by geomsteer {prov['packages'].get('geomsteer', '?')}."
        + (f" Command: `{' '.join(doc['command'])}`" if doc.get("command") else ""),
        "",
        "Method: Park, Choe, Jiang, Veitch (2024), *The Geometry of Categorical and Hierarchical Concepts "
        "in Large Language Models* (arXiv 2406.01506): whitened unembedding (causal inner product), "
        "LDA directions with Ledoit-Wolf shrinkage. Orthogonality and simplices also appear for nonsense "
        "categories and random unembeddings, so every statistic stands beside null distributions that keep "
        "the tree's nesting.",
        "",
        "## Findings against the nulls",
        "",
    ]
    lines += statistic_rows(m, keys)
    lines += [
        "",
        f"Each null: {n_draws} independent draws; *effect size* = (observed − null mean) / null sd and *p* are "
        "taken against the most conservative null (the largest p). p is the predictive t-test of the observed "
        "value as one more draw from a normal null fitted to the draws; the Monte Carlo p of each null (never "
        f"below {fmt_p(1 / (1 + n_draws)) if n_draws else '–'}) is in result.json. 95% intervals: bootstrap over "
        "the units (categories, edges, sibling pairs, parents). All statistics use directions fit to the "
        "training lemmas, for the data and every null draw alike.",
        "",
    ]
    for k in keys:
        lines.append(f"- **{k.replace('_', ' ')}**: {verdict(m[k])}. {STATISTICS[k][2]}.")
    lines += ["", "Nulls (each keeps every child a subset of its parent):", ""]
    lines += [f"- *{k.replace('_', ' ')}*: {v}." for k, v in NULLS.items() if any(k in m[s]["null"] for s in keys)]
    if "nulls" in figs:
        lines += ["", f"![nulls]({figs['nulls']})"]
    con_rows = [k for k in keys if m[k].get("contrasts")]
    if con_rows:
        lines += ["", "## Contrasts (not nulls)", "",
                  "| statistic | observed | Euclidean inner product | mean estimator | random parent (unnested) |",
                  "|---|---|---|---|---|"]
        for k in con_rows:
            c = m[k]["contrasts"]
            lines.append(f"| {k.replace('_', ' ')} | {fmt(m[k]['observed'])} | {fmt(c.get('euclidean'))} | "
                         f"{fmt(c.get('mean_estimator'))} | {fmt(c.get('random_parent'))} |")
        lines += ["", m[con_rows[0]].get("contrasts_note", "") + "."]
    lines += [
        "",
        "## Categories",
        "",
        f"- {doc['n_categories']} WordNet {'noun' if cov.get('pos') == 'n' else 'verb'} categories with more than "
        f"{doc['params'].get('min_tokens', prov.get('min_tokens', '?'))} single tokens "
        f"({cov.get('n_categories_over_min_tokens', '?')} before merging {cov.get('n_merged_by_chain_merging', '?')} "
        "single-child chains).",
        f"- Word-start marker `{cov.get('word_start', '?')}`; lemmas: {cov.get('n_lemmas', '?')}, "
        f"multi-word {cov.get('n_lemmas_multiword', '?')}, single-word {cov.get('n_lemmas_single_word', '?')}, "
        f"kept (some form is one token) {cov.get('n_lemmas_kept', '?')}, dropped as multi-token "
        f"{cov.get('n_lemmas_dropped_multitoken', '?')}; distinct tokens {cov.get('n_distinct_tokens', '?')} in "
        f"{cov.get('n_lemma_groups', '?')} lemma groups.",
        f"- Held-out split: {prov.get('split', '?')} ({doc['params'].get('test_size')} of the lemma groups); "
        f"{prov.get('n_categories_split_on_their_own', 0)} categories split on their own. Train tokens project to "
        "1 by construction; that is not a result.",
    ]
    if "orthogonality" in figs:
        lines += ["", f"![orthogonality]({figs['orthogonality']})"]
    if "heatmap" in figs:
        lines += ["", "## Cosine similarity against tree distance", "", f"![heatmap]({figs['heatmap']})"]
    if "concept_plane" in figs:
        lines += ["", "## Animal, mammal, bird, plant", "", f"![concept plane]({figs['concept_plane']})"]
    lines += [
        "",
        "## Files",
        "",
        "- `result.json`: every statistic in one shape (observed, ci95, null, effect_size, p_value, n), the "
        "per-category and per-simplex tables, parameters and provenance.",
        "- `directions.safetensors`: LDA and mean directions (all tokens), the whitening matrix and mean, each "
        "category's token ids (`token_ids`, `token_offsets`); category names in the metadata.",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps({k: v for k, v in prov.items() if k != "hierarchy"}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# SAE feature cards


def orthogonality_figure(res: Any, statistics: Sequence[str] = ("orthogonality_parent_child",
                                                                 "orthogonality_siblings")) -> Any:
    """Histograms of each orthogonality statistic's units (|cos| per edge or sibling pair) on the data and
    under every null; Park et al. predict the data's mass near 0, the nulls say what 'near' means here."""
    plt = pyplot()
    art = res.artifacts
    stats = [s for s in statistics if s in art["observed_units"]]
    fig, axes = plt.subplots(1, len(stats), figsize=(5.5 * len(stats), 3.8), squeeze=False)
    for ax, s in zip(axes[0], stats):
        obs = np.asarray(art["observed_units"][s], dtype=float)
        bins = np.linspace(0, max(0.3, float(np.nanmax(obs)) if obs.size else 0.3), 31)
        for null, units in art["null_units"].items():
            ax.hist(np.asarray(units[s], dtype=float), bins=bins, density=True, histtype="step", lw=1.5,
                    label=f"{null.replace('_', ' ')} (null)")
        ax.hist(obs, bins=bins, density=True, alpha=0.45, color="black", label=f"{art['model']} (n={obs.size})")
        st = res.metrics.get(s, {})
        ax.set_title(f"{s.replace('_', ' ')}: mean {fmt(st.get('observed'))}, p {fmt_p(st.get('p_value'))}",
                     fontsize=9)
        ax.set_xlabel("|cos|")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def simplex_figure(res: Any, h: Any, children: Sequence[str], held_out: bool = True) -> Any:
    """Three sibling categories' vectors and their (held-out) tokens in the 3-D span of the three vectors."""
    from ..errors import ConfigError

    plt = pyplot()
    art = res.artifacts
    idx = {n: i for i, n in enumerate(art["names"])}
    children = list(children)
    missing = [c for c in children if c not in idx]
    if len(children) != 3 or missing:
        raise ConfigError(f"expected three categories of this run, got {children} (not in it: {missing or 'none'})")
    L = art["directions"].vectors.astype(np.float64)
    V = np.stack([L[idx[c]] for c in children])
    Q, _ = np.linalg.qr(V.T)  # an orthonormal basis of the three vectors' span
    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="3d")
    for k, c in enumerate(children):
        toks = art["splits"][idx[c]][1] if held_out else art["token_ids"][idx[c]]
        P = art["embed"](np.asarray(toks, dtype=np.int64)) @ Q
        ax.scatter(P[:, 0], P[:, 1], P[:, 2], s=4, alpha=0.4, color=f"C{k}",
                   label=f"{category_label(c)} ({'held out' if held_out else 'all'}: {len(toks)})")
    T = V @ Q
    tri = np.vstack([T, T[:1]])
    ax.plot(tri[:, 0], tri[:, 1], tri[:, 2], color="black", lw=1.5)
    for k, c in enumerate(children):
        ax.text(*T[k], " ℓ_" + category_label(c), fontsize=9)
    ax.set_title("A sibling simplex in the causal inner product", fontsize=10)
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    return fig


def cosine_figure(res: Any, h: Any) -> Any:
    """The categories' cosine matrix in tree order beside their tree similarity 1/(1 + tree distance)."""
    plt = pyplot()
    art = res.artifacts
    idx = {n: i for i, n in enumerate(art["names"])}
    order = [idx[n] for n in h.names if n in idx]  # depth-first preorder: subtrees are blocks
    C = np.asarray(art["cosine_matrix"])[np.ix_(order, order)]
    S = np.asarray(art["tree_similarity"])[np.ix_(order, order)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    im0 = axes[0].imshow(C, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axes[0].set_title("cos(ℓ_w, ℓ_z), categories in tree order", fontsize=10)
    fig.colorbar(im0, ax=axes[0], fraction=0.046)
    im1 = axes[1].imshow(S, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title("1 / (1 + tree distance)", fontsize=10)
    fig.colorbar(im1, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xlabel("category")
        ax.set_ylabel("category")
    st = res.metrics.get("cosine_vs_tree_distance", {})
    fig.suptitle(f"{art['model']}: Pearson r {fmt(st.get('observed'))}, p {fmt_p(st.get('p_value'))}", fontsize=10)
    fig.tight_layout()
    return fig


def conclusions(res: Any) -> list[str]:
    """One line per statistic: what it measures, and whether it stands beyond every null."""
    from ..analyzers.hierarchy import STATISTICS

    out = []
    for k, st in res.metrics.items():
        what = STATISTICS.get(k, ("", "", ""))[2]
        out.append(f"{k.replace('_', ' ')} = {fmt(st.get('observed'))}: {verdict(st)}" + (f" [{what}]" if what else ""))
    return out
