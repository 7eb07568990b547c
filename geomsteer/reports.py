"""The only code that writes result files and draws figures.

A report directory is built in a temporary directory beside its destination and renamed into
place when complete, so an interrupt leaves either the previous directory or nothing, never a
half-written ``result.json``. An existing directory is replaced only with ``force=True``.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import _atomic
from .errors import OutputExistsError

__all__ = ["check_output_dir", "package_versions", "write_hierarchy_report", "write_similarity_report",
           "write_mapper_report", "write_cluster_report"]

_PACKAGES = ["geomsteer", "numpy", "scipy", "scikit-learn", "torch", "transformers", "transformer-lens",
             "sae-lens", "networkx", "safetensors", "matplotlib"]


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to touch an existing output directory unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} is a file, not a directory; choose another --out")
    if out.exists() and not force:
        raise OutputExistsError(
            f"output directory {str(out)!r} already exists: expected a new directory; "
            "choose another --out, or pass --force to replace it"
        )


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def _fmt(x: Any, nd: int = 3) -> str:
    if isinstance(x, (float, np.floating)):
        return "nan" if not np.isfinite(x) else f"{x:.{nd}f}"
    return str(x)


# --------------------------------------------------------------------------------------------
# Hierarchy


def write_hierarchy_report(analyzer: Any, hierarchy: Any, out: Path, force: bool = False,
                           command: Sequence[str] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``result.json``, ``directions.safetensors``, ``report.md`` and ``figures/*.png`` to ``out``."""
    check_output_dir(out, force)
    res = analyzer.result()
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    doc = {
        "geomsteer_result": "hierarchy",
        "created": created,
        "command": list(command) if command else None,
        "model": analyzer.model_,
        "n_categories": len(analyzer.names_),
        "params": res.params,
        "provenance": {**res.provenance, **(extra or {}), "packages": package_versions(),
                       "platform": platform.platform()},
        "metrics": res.metrics,
        "categories": res.tables["categories"],
        "simplices": res.tables["simplices"],
    }
    from .types import _jsonable

    doc = _jsonable(doc)  # arrays to lists, NaN to null
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        _write_directions(analyzer, hierarchy, tmp / "directions.safetensors")
        figures = _hierarchy_figures(analyzer, hierarchy, tmp / "figures")
        (tmp / "report.md").write_text(_hierarchy_markdown(doc, figures, analyzer))
    return Path(out)


def _write_directions(a: Any, h: Any, path: Path) -> None:
    from safetensors.numpy import save_file

    sets = a.token_ids_
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in sets])
    tensors = {
        "directions": np.ascontiguousarray(a.directions_.vectors, dtype=np.float32),
        "mean_directions": np.ascontiguousarray(a.mean_directions_.vectors, dtype=np.float32),
        "whitening": np.ascontiguousarray(a.whitening_.W, dtype=np.float64),
        "unembedding_mean": np.ascontiguousarray(a.whitening_.mean, dtype=np.float64),
        "token_ids": np.concatenate(sets).astype(np.int64),
        "token_offsets": offsets,
    }
    meta = {
        "format": "geomsteer.hierarchy.directions/1",
        "names": json.dumps(list(a.names_)),
        "parents": json.dumps([h.parent(n) for n in a.names_]),
        "model": str(a.model_),
        "space": a.directions_.space,
        "estimator": str(a.estimator),
        "note": "directions[i] is category names[i] in the whitened space g(y) = (gamma(y) - unembedding_mean) "
                "@ whitening; its tokens are token_ids[token_offsets[i]:token_offsets[i+1]]",
    }
    save_file(tensors, str(path), metadata=meta)


def _label(name: str) -> str:
    return name.split(".")[0].replace("_", " ")


def _hierarchy_figures(a: Any, h: Any, fig_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}

    # 1. Each statistic against its null draws.
    from .analyzers.hierarchy import STATISTICS

    stats = [k for k in STATISTICS if k in a.metrics_]
    colors = {"shuffled_tokens": "tab:blue", "nested_random_sets": "tab:orange", "random_unembedding": "tab:green"}
    ncol = 3
    nrow = -(-len(stats) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(12, 3.1 * nrow), squeeze=False)
    for ax, k in zip(axes.ravel(), stats):
        st = a.metrics_[k]
        for null, draws in a.null_draws_.get(k, {}).items():
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
        ax.set_xlabel(f"p {_p(p)}, effect {_fmt(st.get('effect_size'), 1)} sd", fontsize=8)
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
        v = np.asarray(a.signed_[key])
        ax.hist(v[np.isfinite(v)], bins=bins, histtype="step", density=True, color="black", lw=1.8, label="observed")
        for null, sv in a.null_signed_.items():
            w = np.asarray(sv[key])
            ax.hist(w[np.isfinite(w)], bins=bins, histtype="step", density=True, color=colors.get(null, "grey"),
                    label=null.replace("_", " "))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    axes[0].set_title("Hierarchical orthogonality, per edge")
    axes[1].set_title("Sibling differences, per pair")
    series = [("observed", a.observed_units_["heldout_auc"], "black")]
    series += [(n.replace("_", " "), u["heldout_auc"], colors.get(n, "grey")) for n, u in a.null_units_.items()]
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
    im0 = axes[0].imshow(a.cosine_matrix_, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    axes[0].set_title("cos(ℓ_w, ℓ_z), categories in tree order")
    fig.colorbar(im0, ax=axes[0], fraction=0.046)
    im1 = axes[1].imshow(a.tree_similarity_, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title("1 / (1 + tree distance)")
    fig.colorbar(im1, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    r = a.metrics_["cosine_vs_tree_distance"]["observed"]
    fig.suptitle(f"Pearson correlation of the two (upper triangles, train-split directions): {_fmt(r)}")
    fig.tight_layout()
    fig.savefig(fig_dir / "heatmap.png", dpi=120)
    plt.close(fig)
    figs["heatmap"] = "figures/heatmap.png"

    # 4. Park et al. Figure 2 style: animal / mammal / bird / plant in a 2-D plane.
    path = _concept_plane(a, h, fig_dir, plt)
    if path:
        figs["concept_plane"] = path
    return figs


_PLANE = [("animal.n.01", "mammal.n.01"), ("animal.n.01", "bird.n.01"), ("organism.n.01", "animal.n.01")]
_PLANE_GROUPS = ["mammal.n.01", "bird.n.01", "fish.n.01", "reptile.n.01", "plant.n.02", "animal.n.01"]


def _concept_plane(a: Any, h: Any, fig_dir: Path, plt: Any) -> str | None:
    idx = {n: i for i, n in enumerate(a.names_)}
    pair = next(((x, y) for x, y in _PLANE if x in idx and y in idx), None)
    if pair is None:
        return None
    L = a.directions_.vectors.astype(np.float64)
    base, child = L[idx[pair[0]]], L[idx[pair[1]]]
    e1 = base / np.linalg.norm(base)
    diff = child - base
    e2 = diff - (diff @ e1) * e1
    if np.linalg.norm(e2) == 0:
        return None
    e2 /= np.linalg.norm(e2)
    groups = [n for n in _PLANE_GROUPS if n in idx]
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colors = plt.get_cmap("tab10")
    shown: set[int] = set()
    for k, n in enumerate(groups[::-1]):
        toks = np.array([t for t in h.tokens(n) if t not in shown], dtype=np.int64)
        if n != "animal.n.01":
            shown.update(toks.tolist())
        if not len(toks):
            continue
        G = a.embed_(toks)
        ax.scatter(G @ e1, G @ e2, s=4, alpha=0.5, color=colors(k), label=f"{_label(n)} ({len(toks)})")
    for n in groups:
        v = L[idx[n]]
        ax.annotate("", xy=(v @ e1, v @ e2), xytext=(0, 0), arrowprops=dict(arrowstyle="->", lw=1.8))
        ax.text(v @ e1, v @ e2, " ℓ_" + _label(n), fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel(f"along ℓ_{_label(pair[0])}")
    ax.set_ylabel(f"along ℓ_{_label(pair[1])} − ℓ_{_label(pair[0])} (orthogonalized)")
    ax.set_title("Tokens and category vectors in the causal inner product")
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(fig_dir / "concept_plane.png", dpi=120)
    plt.close(fig)
    return "figures/concept_plane.png"


def _p(p: Any) -> str:
    if p is None:
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def statistic_rows(metrics: Mapping[str, Any], keys: Sequence[str]) -> list[str]:
    """Markdown rows: statistic, n, observed [95% CI], each null's mean ± sd (draws), effect size, p."""
    nulls: list[str] = []
    for k in keys:
        for nm in metrics[k].get("null", {}):
            if nm not in nulls:
                nulls.append(nm)
    head = "| statistic | n | observed [95% CI] | " + " | ".join(
        f"null: {n.replace('_', ' ')} mean ± sd (draws)" for n in nulls) + " | effect size | p |"
    rows = [head, "|" + "---|" * (5 + len(nulls))]
    for k in keys:
        st = metrics[k]
        ci = st.get("ci95")
        obs = _fmt(st.get("observed")) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
        cells = []
        for n in nulls:
            nd = st.get("null", {}).get(n)
            cells.append(f"{_fmt(nd['mean'])} ± {_fmt(nd['sd'])} ({nd['n_draws']})" if nd else "–")
        alt = {"greater": ">", "less": "<", "two-sided": "≠"}.get(st.get("alternative", ""), "")
        rows.append(f"| {k.replace('_', ' ')} ({alt} null) | {st.get('n')} | {obs} | " + " | ".join(cells)
                    + f" | {_fmt(st.get('effect_size'), 1)} | {_p(st.get('p_value'))} |")
    return rows


def _verdict(st: Mapping[str, Any], alpha: float = 0.01) -> str:
    p, e = st.get("p_value"), st.get("effect_size")
    if p is None:
        return "no null computed"
    null = st.get("conservative_null", "").replace("_", " ")
    if p < alpha:
        return f"beyond every null (p {_p(p)}, effect {_fmt(e, 1)} sd against {null})"
    alt = st.get("alternative")
    if e is not None and abs(e) > 2 and ((alt == "less" and e > 0) or (alt == "greater" and e < 0)):
        side = "further from 0" if alt == "less" else "lower"
        return (f"**the opposite of the prediction**: {side} than the {null} null (effect {_fmt(e, 1)} sd, "
                f"p {_p(p)} for the predicted direction)")
    return f"**not distinguishable** from the {null} null (p {_p(p)}, effect {_fmt(e, 1)} sd)"


def _hierarchy_markdown(doc: Mapping[str, Any], figs: Mapping[str, str], a: Any) -> str:
    from .analyzers.hierarchy import NULLS, STATISTICS

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
        f"below {_p(1 / (1 + n_draws)) if n_draws else '–'}) is in result.json. 95% intervals: bootstrap over "
        "the units (categories, edges, sibling pairs, parents). All statistics use directions fit to the "
        "training lemmas, for the data and every null draw alike.",
        "",
    ]
    for k in keys:
        lines.append(f"- **{k.replace('_', ' ')}**: {_verdict(m[k])}. {STATISTICS[k][2]}.")
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
            lines.append(f"| {k.replace('_', ' ')} | {_fmt(m[k]['observed'])} | {_fmt(c.get('euclidean'))} | "
                         f"{_fmt(c.get('mean_estimator'))} | {_fmt(c.get('random_parent'))} |")
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


def _tok_html(text: str) -> str:
    import html

    return html.escape(text.replace("▁", " ").replace("Ġ", " ").replace("\n", "⏎"))


def write_feature_card(path: Path, card: Mapping[str, Any]) -> Path:
    """A self-contained HTML page for one SAE feature: contexts with the firing token marked,
    logit-lens tokens, activation density. No scripts, no network."""
    import html

    maxact = max([c["activation"] for c in card["contexts"]] or [1.0])
    ctx_rows = []
    for c in card["contexts"]:
        spans = []
        for j, (tok, act) in enumerate(c["tokens"]):
            alpha = max(0.0, min(1.0, act / maxact)) if maxact > 0 else 0.0
            style = f"background: rgba(255,140,0,{alpha:.2f});" + (" outline: 2px solid #c00;" if j == c["firing"] else "")
            spans.append(f'<span style="{style}" title="{act:.3f}">{_tok_html(tok)}</span>')
        ctx_rows.append(f'<tr><td class="num">{c["activation"]:.2f}</td><td class="ctx">{"".join(spans)}</td></tr>')
    lens = lambda rows: "".join(f"<li><code>{_tok_html(t)}</code> <span class='num'>{s:+.3f}</span></li>" for t, s in rows)  # noqa: E731
    d = card["density"]
    prov = html.escape(json.dumps(card["provenance"], indent=2))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Feature {card['feature']} · {html.escape(card['sae'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; }} td {{ padding: 0.25em 0.6em; border-bottom: 1px solid #eee; vertical-align: top; }}
.num {{ font-variant-numeric: tabular-nums; text-align: right; color: #555; }}
.ctx span {{ white-space: pre; font-family: ui-monospace, monospace; }}
.cols {{ display: flex; gap: 3em; }} code {{ background: #f4f4f4; padding: 0 0.2em; }}
pre {{ background: #f8f8f8; padding: 1em; overflow: auto; font-size: 0.8em; }}
</style></head><body>
<h1>Feature {card['feature']}</h1>
<p>SAE <code>{html.escape(card['sae'])}</code> on <code>{html.escape(card['model'])}</code> at
<code>{html.escape(card['hook'])}</code>. Fires on {d['fraction']:.3%} of {d['n_tokens']:,} held-out tokens;
mean activation when firing {d['mean_when_firing']:.3f}, max {d['max']:.3f}.</p>
<h2>Top-activating contexts</h2>
<p>Shading is the feature's activation on each token; the outlined token is the maximum.</p>
<table>{''.join(ctx_rows) or '<tr><td>The feature never fires on the held-out tokens.</td></tr>'}</table>
<h2>Decoder logit lens</h2>
<div class="cols"><div><h3>Promoted tokens</h3><ol>{lens(card['logit_lens']['top'])}</ol></div>
<div><h3>Suppressed tokens</h3><ol>{lens(card['logit_lens']['bottom'])}</ol></div></div>
<h2>Provenance</h2><pre>{prov}</pre>
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_text(path, page)
    return path


def _save(fig: Any, fig_dir: Path, name: str, figs: dict[str, str], key: str | None = None) -> None:
    """Save a matplotlib figure as figures/<name>, close it, and record it under ``key``."""
    import matplotlib.pyplot as plt

    fig.savefig(fig_dir / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    figs[key or name.rsplit(".", 1)[0]] = name


# --------------------------------------------------------------------------------------------
# Similarity


def _short_hook(h: str) -> str:
    parts = h.split(".")
    return f"L{parts[1]}" if len(parts) > 2 and parts[0] == "blocks" else h


def write_similarity_report(analyzer: Any, matcher: Any, provenance: Mapping[str, Any], out: Path,
                            force: bool = False) -> Path:
    """Write ``result.json``, ``report.md``, ``figures/*.png`` and a self-contained ``report.html``."""
    from .types import _jsonable

    check_output_dir(out, force)
    res = analyzer.result()
    models = list(provenance.get("layers", {}))
    doc = {
        "geomsteer_result": "similarity",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "models": models,
        "params": res.params,
        "provenance": {**provenance, "platform": platform.platform()},
        "metrics_at_best_pair": res.metrics,
        "best_pair_max_statistic": res.metrics.get("best_pair_max_statistic"),
        "best_layer_per_layer_a": res.tables["best_layer_per_layer_a"],
        "best_pairs": res.tables["best_pairs"],
        "groups": res.tables["groups"],
        "scans": res.artifacts["scans"],
        "feature_matching": None,
    }
    if matcher is not None:
        fm = matcher.result()
        doc["feature_matching"] = {"params": fm.params, "provenance": fm.provenance, **fm.metrics,
                                   "decoder_similarity": fm.tables["decoder_similarity"],
                                   "top_pairs": fm.tables["top_pairs"]}
    doc = _jsonable(doc)
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        figs = _similarity_figures(analyzer, matcher, models, tmp / "figures")
        (tmp / "report.md").write_text(_similarity_markdown(doc, figs))
        (tmp / "report.html").write_text(_similarity_html(doc))
    return Path(out)


def _similarity_figures(a: Any, matcher: Any, models: Sequence[str], fig_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}
    names = {"a": models[0] if models else "A", "b": models[1] if len(models) > 1 else "B"}
    for metric, title in (("linear_cka_debiased", "debiased linear CKA"), ("mutual_knn", f"mutual {a.k}-NN")):
        for key, scan in a.scans_.items():
            e = scan[metric]
            panels = [("observed", e["score"]), ("shuffled pairing", e["permutation"])]
            if "random_model" in e:
                panels.append(("re-randomized " + (names["b"] if key == "cross" else names[key[-1]]),
                               e["random_model"]))
            vmax = max(float(np.nanmax(p[1])) for p in panels)
            vmin = min(0.0, min(float(np.nanmin(p[1])) for p in panels))
            fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
            for ax, (label, mat) in zip(axes[0], panels):
                im = ax.imshow(mat, origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="viridis")
                ax.set_title(label, fontsize=9)
                rows, cols = scan["rows"], scan["cols"]
                ax.set_yticks(range(len(rows)), [_short_hook(h) for h in rows], fontsize=6)
                ax.set_xticks(range(len(cols)), [_short_hook(h) for h in cols], fontsize=6, rotation=90)
                side_r = "a" if key in ("cross", "within_a") else "b"
                side_c = "b" if key in ("cross", "within_b") else "a"
                ax.set_ylabel(names[side_r], fontsize=8)
                ax.set_xlabel(names[side_c], fontsize=8)
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
            fig.suptitle(f"{title}: {key.replace('_', ' ')}", fontsize=10)
            _save(fig, fig_dir, f"{key}_{metric}.png", figs)
    if a.groups_:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(a.groups_)), 3.6))
        x = np.arange(len(a.groups_))
        obs = [g["linear_cka_debiased"]["score"] or 0 for g in a.groups_]
        null = [g["linear_cka_debiased"]["permutation"]["mean"] or 0 for g in a.groups_]
        rnd = [g["linear_cka_debiased"].get("random_model") or 0 for g in a.groups_]
        ax.bar(x - 0.27, obs, 0.27, label="observed")
        ax.bar(x, rnd, 0.27, label=f"re-randomized {names['b']}")
        ax.bar(x + 0.27, null, 0.27, label="shuffled pairing")
        ax.set_xticks(x, [f"{_label(g['group'])}\n(n={g['n']})" for g in a.groups_], fontsize=7, rotation=45, ha="right")
        ax.set_ylabel("debiased linear CKA")
        ax.set_title(f"Within one WordNet group at {_short_hook(a.groups_[0]['layer_a'])} x "
                     f"{_short_hook(a.groups_[0]['layer_b'])}", fontsize=10)
        ax.legend(fontsize=7)
        _save(fig, fig_dir, "groups.png", figs, "groups")
    if matcher is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.linspace(-0.2, 1, 49)
        ax.hist(matcher.correlations_, bins=bins, alpha=0.7, label="Hungarian pairs")
        ax.hist(matcher.shuffled_correlations_["hungarian"], bins=bins, alpha=0.7, label="same, samples shuffled")
        ax.set_xlabel("activation correlation of matched features")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8)
        _save(fig, fig_dir, "feature_matching.png", figs, "feature_matching")
    return figs


def _similarity_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    prov = doc["provenance"]
    w = prov["words"]
    models = doc["models"]
    L = [f"# Cross-model similarity: {' vs '.join(models)}", ""]
    L += [f"Created {doc['created']}. Command: `{' '.join(prov.get('command') or ['(library call)'])}`.", ""]
    L += ["## Samples", "",
          f"{w['used']:,} words represented by both models (of {w['asked']:,} asked; {w['dropped_from_both']:,} "
          f"dropped from both sides). A word is read as start token + prefix {w['prefix']!r} + ' ' + word (start: BOS, "
          f"or a newline for a model without one), and its "
          f"representation is the {w['rule']} token of the word; a word split into more than {w['max_tokens']} "
          "tokens by a model is not represented by it. Dropped by model: "
          + "; ".join(f"{m}: {v['too_many_tokens_or_unknown']:,}" for m, v in w["dropped_by_model"].items()) + ".",
          f"Words: {w['source']}. Seed {prov['seed']}. Re-randomized baseline: {prov['random_baseline']}.",
          "Time (s): " + ", ".join(f"{k} {v}" for k, v in prov.get("seconds", {}).items())
          + f"; total {prov.get('elapsed_seconds')}.", ""]
    mx = doc.get("best_pair_max_statistic")
    if mx:
        nd = mx["null"]["max_over_pairs_shuffled"]
        L += ["## Is the best layer pair better than chance?", "",
              f"The best pair ({mx['layer_a']} x {mx['layer_b']}) is the maximum of {mx['n_layer_pairs']} layer pairs, "
              f"so it is tested against the maximum over all pairs when {models[1]}'s samples are shuffled (the same "
              f"shuffle for every pair; {nd['n_draws']} shuffles on {mx['n']} samples): debiased CKA "
              f"{_fmt(mx['observed'])} against a null maximum of {_fmt(nd['mean'])} ± {_fmt(nd['sd'])}, effect "
              f"{_fmt(mx['effect_size'], 1)} sd, p {_fmt(mx['p_value'])} (never below {_fmt(nd['p_min'])}).", ""]
    L += ["## Best-aligned layer pairs", "",
          "Every metric at the pairs with the highest debiased linear CKA, beside its shuffled-pairing null: "
          f"{doc['params']['n_permutations']} shuffles for linear CKA, debiased CKA and mutual k-NN (on at most 1,500 "
          "samples), 20 for k-NN Jaccard, SVCCA and Procrustes, 5 for RBF CKA, CKNNA and RSA. p is the larger of the "
          "Monte Carlo p and a t-test against the shuffles with 99 or more draws, the t-test alone with fewer (see "
          f"the statistics guide). The same layer of re-randomized {models[1]} is shown beside it. These pairs were "
          "chosen as the best of the scan: read their p-values with the max-statistic test above.", ""]
    for bp in doc["best_pairs"]:
        L += [f"### {bp['layer_a']} ({models[0]}) x {bp['layer_b']} ({models[1]}), n = {bp['n']}", "",
              "| metric | observed | shuffled pairing (mean ± sd) | p | re-randomized model |", "|---|---|---|---|---|"]
        for name, e in bp.items():
            if not isinstance(e, dict) or "score" not in e:
                continue
            if e.get("score") is None:
                L.append(f"| {name} | undefined{' (' + e['error'] + ')' if e.get('error') else ''} | | | |")
                continue
            perm = e["permutation"]
            arrow = "" if e.get("higher_is_more_similar", True) else " (distance: lower is closer)"
            L.append(f"| {name}{arrow} | {_fmt(e['score'])} | {_fmt(perm['mean'])} ± {_fmt(perm['sd'])} | "
                     f"{_fmt(perm['p'])} | {_fmt(e.get('random_model'))} |")
        L.append("")
    L += ["### Best layer of the second model for each layer of the first", "",
          f"| {models[0]} | best {models[1]} layer | debiased CKA | shuffled | re-randomized |", "|---|---|---|---|---|"]
    for r in doc["best_layer_per_layer_a"]:
        L.append(f"| {r['layer_a']} | {r['best_layer_b']} | {_fmt(r['cka_debiased'])} | {_fmt(r['shuffled'])} | "
                 f"{_fmt(r.get('random_model'))} |")
    L.append("")
    L += ["## Layer x layer scans", ""]
    for key, fname in figs.items():
        if key.startswith(("cross", "within")):
            L += [f"![{key}](figures/{fname})", ""]
    if doc["groups"]:
        g0 = doc["groups"][0]
        L += ["## Semantic subspaces", "",
              f"The words of one WordNet group at a time, at {g0['layer_a']} x {g0['layer_b']}.", "",
              "p is adjusted across groups by Benjamini-Hochberg (per metric).", "",
              "| group | n | debiased CKA | shuffled | p (BH) | re-randomized | mutual k-NN | shuffled | p (BH) | SVCCA | "
              "shuffled |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]

        def bh(e):
            return _fmt(e.get("statistic", {}).get("p_value_bh"))

        for g in doc["groups"]:
            c, m, s = g["linear_cka_debiased"], g["mutual_knn"], g["svcca"]
            L.append(f"| {g['group']} | {g['n']} | {_fmt(c.get('score'))} | {_fmt(c['permutation']['mean'])} | {bh(c)} | "
                     f"{_fmt(c.get('random_model'))} | {_fmt(m.get('score'))} | {_fmt(m['permutation']['mean'])} | "
                     f"{bh(m)} | {_fmt(s.get('score'))} | {_fmt(s['permutation']['mean'])} |")
        L += ["", f"![groups](figures/{figs['groups']})", ""]
    fm = doc.get("feature_matching")
    if fm:
        p = fm["provenance"]
        L += ["## SAE feature matching (Lan et al. 2024)", "",
              f"SAEs {', '.join(f'`{s}`' for s in p['saes'])} at {', '.join(p['hooks'])}; activations on "
              f"{p['words_aligned']:,} words of {p['texts']:,} held-out WordNet glosses (last token of each word; "
              f"{p['words_dropped']:,} words dropped). Live features: {fm['live_features'][0]:,} and "
              f"{fm['live_features'][1]:,}.", "",
              "| matching | pairs | mean correlation | same matching, samples shuffled | share >= threshold |",
              "|---|---|---|---|---|"]
        for m in ("greedy", "hungarian"):
            e = fm[m]
            L.append(f"| {m} | {e['n_pairs']:,} | {_fmt(e['mean_correlation'])} | "
                     f"{_fmt(e['shuffled_samples_mean_correlation'])} | {_fmt(e['fraction_above_threshold'])} |")
        L += ["", "Paired decoder directions, beside random pairings of live features:", "",
              "| pairs | n | SVCCA | random pairing | RSA | random pairing |", "|---|---|---|---|---|---|"]
        for r in fm["decoder_similarity"]:
            if "svcca" not in r:
                L.append(f"| {r['pairs']} | {r['n']} | {r.get('note', '')} | | | |")
                continue
            L.append(f"| {r['pairs']} | {r['n']} | {_fmt(r['svcca']['score'])} | "
                     f"{_fmt(r['svcca']['random_pairing']['mean'])} ± {_fmt(r['svcca']['random_pairing']['sd'])} | "
                     f"{_fmt(r['rsa']['score'])} | {_fmt(r['rsa']['random_pairing']['mean'])} ± "
                     f"{_fmt(r['rsa']['random_pairing']['sd'])} |")
        L += ["", f"![feature matching](figures/{figs['feature_matching']})", ""]
    L += ["## Provenance", "", "Models, hooks, the full word list and package versions are in `result.json` "
          "(`provenance`).", "", "| package | version |", "|---|---|"]
    L += [f"| {k} | {v} |" for k, v in prov.get("packages", {}).items()]
    return "\n".join(L) + "\n"


def _svg_heatmap(mat: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], title: str,
                 vmin: float, vmax: float, row_label: str, col_label: str) -> str:
    """An SVG heatmap; each cell's native tooltip gives its layers and value (no scripts needed)."""
    import html

    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    cell = max(8, min(22, 420 // max(len(rows), len(cols), 1)))
    left, top = 52, 24
    w, h = left + cell * len(cols) + 10, top + cell * len(rows) + 44
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" class="heat">',
           f'<text x="{left}" y="14" font-size="12">{html.escape(title)}</text>']
    for i, r in enumerate(rows):
        y = top + cell * (len(rows) - 1 - i)  # first layer at the bottom, as in the PNGs
        out.append(f'<text x="{left - 4}" y="{y + cell * 0.7:.1f}" font-size="9" text-anchor="end">{_short_hook(r)}</text>')
        for j, c in enumerate(cols):
            v = mat[i][j]
            if v is None:
                color, label = "#ccc", "n/a"
            else:
                t = 0.0 if vmax <= vmin else (v - vmin) / (vmax - vmin)
                rgba = cmap(min(1.0, max(0.0, t)))
                color = "#%02x%02x%02x" % tuple(int(255 * x) for x in rgba[:3])
                label = f"{v:.4f}"
            out.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell}" height="{cell}" fill="{color}">'
                       f'<title>{html.escape(row_label)} {html.escape(r)} × {html.escape(col_label)} '
                       f'{html.escape(c)}: {label}</title></rect>')
    for j, c in enumerate(cols):
        x = left + cell * j + cell * 0.7
        out.append(f'<text x="{x:.1f}" y="{top + cell * len(rows) + 4}" font-size="9" '
                   f'transform="rotate(90 {x:.1f} {top + cell * len(rows) + 4})">{_short_hook(c)}</text>')
    out.append("</svg>")
    return "".join(out)


def _similarity_html(doc: Mapping[str, Any]) -> str:
    import html

    models = doc["models"]
    names = {"a": models[0], "b": models[1] if len(models) > 1 else models[0]}
    parts = []
    for key, scan in doc["scans"].items():
        r_side = "a" if key in ("cross", "within_a") else "b"
        c_side = "b" if key in ("cross", "within_b") else "a"
        for metric in ("linear_cka_debiased", "mutual_knn"):
            e = scan[metric]
            panels = [("observed", e["score"]), ("shuffled pairing", e["permutation"])]
            if e.get("random_model") is not None:
                panels.append((f"re-randomized {names[c_side]}", e["random_model"]))
            vals = [v for _, m in panels for row in m for v in row if v is not None]
            vmin, vmax = min(0.0, min(vals)), max(vals)
            svgs = "".join(_svg_heatmap(m, scan["rows"], scan["cols"], label, vmin, vmax, names[r_side], names[c_side])
                           for label, m in panels)
            parts.append(f"<h3>{html.escape(metric.replace('_', ' '))}: {html.escape(key.replace('_', ' '))} "
                         f"({html.escape(names[r_side])} × {html.escape(names[c_side])})</h3>"
                         f"<p class='scale'>colour scale {vmin:.3f} … {vmax:.3f}; hover a cell for its value</p>"
                         f"<div class='row'>{svgs}</div>")
    best = []
    for bp in doc["best_pairs"]:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_fmt(e['score'])}</td><td>{_fmt(e['permutation']['mean'])} ± "
            f"{_fmt(e['permutation']['sd'])}</td><td>{_fmt(e['permutation']['p'])}</td>"
            f"<td>{_fmt(e.get('random_model'))}</td></tr>"
            for k, e in bp.items() if isinstance(e, dict) and e.get("score") is not None)
        best.append(f"<h3>{html.escape(bp['layer_a'])} × {html.escape(bp['layer_b'])} (n = {bp['n']})</h3>"
                    "<table><tr><th>metric</th><th>observed</th><th>shuffled pairing</th><th>p</th>"
                    f"<th>re-randomized model</th></tr>{rows}</table>")
    groups = ""
    if doc["groups"]:
        rows = "".join(
            f"<tr><td>{html.escape(g['group'])}</td><td>{g['n']}</td>"
            f"<td>{_fmt(g['linear_cka_debiased'].get('score'))}</td>"
            f"<td>{_fmt(g['linear_cka_debiased']['permutation']['mean'])}</td>"
            f"<td>{_fmt(g['linear_cka_debiased'].get('random_model'))}</td>"
            f"<td>{_fmt(g['mutual_knn'].get('score'))}</td><td>{_fmt(g['mutual_knn']['permutation']['mean'])}</td></tr>"
            for g in doc["groups"])
        groups = ("<h2>Semantic subspaces</h2><table><tr><th>group</th><th>n</th><th>debiased CKA</th><th>shuffled</th>"
                  f"<th>re-randomized</th><th>mutual k-NN</th><th>shuffled</th></tr>{rows}</table>")
    fm = doc.get("feature_matching")
    fm_html = ""
    if fm:
        rows = "".join(f"<tr><td>{m}</td><td>{fm[m]['n_pairs']}</td><td>{_fmt(fm[m]['mean_correlation'])}</td>"
                       f"<td>{_fmt(fm[m]['shuffled_samples_mean_correlation'])}</td></tr>" for m in ("greedy", "hungarian"))
        dec = "".join(
            f"<tr><td>{html.escape(r['pairs'])}</td><td>{r['n']}</td><td>{_fmt(r['svcca']['score'])}</td>"
            f"<td>{_fmt(r['svcca']['random_pairing']['mean'])}</td><td>{_fmt(r['rsa']['score'])}</td>"
            f"<td>{_fmt(r['rsa']['random_pairing']['mean'])}</td></tr>"
            for r in fm["decoder_similarity"] if "svcca" in r)
        fm_html = ("<h2>SAE feature matching</h2><table><tr><th>matching</th><th>pairs</th><th>mean correlation</th>"
                   f"<th>samples shuffled</th></tr>{rows}</table><h3>Paired decoders</h3><table><tr><th>pairs</th>"
                   f"<th>n</th><th>SVCCA</th><th>random pairing</th><th>RSA</th><th>random pairing</th></tr>{dec}</table>")
    prov = html.escape(json.dumps({k: v for k, v in doc["provenance"].items() if k != "words"}
                                  | {"words": {k: v for k, v in doc["provenance"]["words"].items()
                                               if k not in ("list", "group_of_word")}}, indent=2))
    w = doc["provenance"]["words"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Similarity: {html.escape(' vs '.join(models))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ padding: 0.2em 0.6em; border-bottom: 1px solid #eee; text-align: right; font-variant-numeric: tabular-nums; }}
td:first-child, th:first-child {{ text-align: left; }}
.row {{ display: flex; flex-wrap: wrap; gap: 1em; }} .scale {{ color: #666; font-size: 0.85em; }}
svg.heat rect:hover {{ stroke: #e00; stroke-width: 2; }}
pre {{ background: #f8f8f8; padding: 1em; overflow: auto; font-size: 0.8em; }}
</style></head><body>
<h1>Cross-model similarity: {html.escape(' vs '.join(models))}</h1>
<p>{w['used']:,} words represented by both models ({w['dropped_from_both']:,} of {w['asked']:,} dropped);
rule: {html.escape(w['rule'])} token of the word. Created {html.escape(doc['created'])}.</p>
<h2>Best-aligned layer pairs</h2>{''.join(best)}
<h2>Layer × layer scans</h2>{''.join(parts)}
{groups}{fm_html}
<h2>Provenance</h2><pre>{prov}</pre>
</body></html>
"""


def _head(kind: str, res: Any, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every analyzer's result.json starts with."""
    return {
        "geomsteer_result": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": res.params,
        "provenance": {**provenance, **res.provenance, "platform": platform.platform()},
        "metrics": res.metrics,
    }


# --------------------------------------------------------------------------------------------
# Mapper and clustering

_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def _layout(analyzer: Any) -> dict[str, tuple[float, float]]:
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(analyzer.node_ids_)
    for a, bs in analyzer.graph_["links"].items():
        g.add_edges_from((a, b) for b in bs)
    pos = nx.spring_layout(g, seed=analyzer.seed, iterations=200)
    return {k: (float(x), float(y)) for k, (x, y) in pos.items()}


def write_mapper_report(analyzer: Any, provenance: Mapping[str, Any], out: Path, force: bool = False) -> Path:
    """``result.json``, ``report.md``, ``figures/*.png`` and a self-contained interactive ``mapper.html``."""
    from .types import _jsonable

    check_output_dir(out, force)
    res = analyzer.result()
    g = analyzer.graph_
    doc = _jsonable({
        **_head("mapper", res, provenance),
        "nodes": res.tables["nodes"],
        "graph": {"nodes": g["nodes"], "links": g["links"]},
        "samples": {"names": analyzer.names_, "labels": analyzer.labels_, "lens": analyzer.lens_},
    })
    pos = _layout(analyzer)
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        figs = _mapper_figures(analyzer, pos, tmp / "figures")
        (tmp / "report.md").write_text(_mapper_markdown(doc, figs))
        (tmp / "mapper.html").write_text(_mapper_html(analyzer, doc, pos))
    return Path(out)


def _category_colors(labels: Sequence[str]) -> dict[str, str]:
    cats = sorted(set(labels))
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(cats)}


def _mapper_figures(a: Any, pos: Mapping[str, tuple[float, float]], fig_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _category_colors(a.labels_)
    figs = {}
    # the lens, coloured by category
    fig, ax = plt.subplots(figsize=(6, 5))
    lens = a.lens_
    y = lens[:, 1] if lens.shape[1] > 1 else np.zeros(len(lens))
    for c, col in colors.items():
        idx = [i for i, lab in enumerate(a.labels_) if lab == c]
        ax.scatter(lens[idx, 0], y[idx], s=4, alpha=0.5, color=col, label=_label(c))
    ax.set_xlabel("lens 1")
    ax.set_ylabel("lens 2" if lens.shape[1] > 1 else "")
    ax.set_title(f"{a.lens} lens of the SAE codes", fontsize=10)
    ax.legend(fontsize=7, markerscale=3)
    _save(fig, fig_dir, "lens.png", figs, "lens")
    # the graph, nodes as pies of their categories' shares
    fig, ax = plt.subplots(figsize=(7, 6))
    for a_, bs in a.graph_["links"].items():
        for b in bs:
            ax.plot([pos[a_][0], pos[b][0]], [pos[a_][1], pos[b][1]], color="#bbb", lw=0.7, zorder=1)
    sizes = {k: len(v) for k, v in a.graph_["nodes"].items()}
    smax = max(sizes.values())
    for k, members in a.graph_["nodes"].items():
        shares = {}
        for i in members:
            shares[a.labels_[i]] = shares.get(a.labels_[i], 0) + 1
        dom = max(shares, key=shares.get)
        ax.scatter(*pos[k], s=20 + 280 * np.sqrt(sizes[k] / smax), color=colors[dom], edgecolor="k", lw=0.4,
                   alpha=0.4 + 0.6 * shares[dom] / len(members), zorder=2)
    for c, col in colors.items():
        ax.scatter([], [], color=col, label=_label(c))
    ax.legend(fontsize=7, title="dominant category", title_fontsize=7)
    ax.set_axis_off()
    m = a.result().metrics
    ax.set_title(f"Mapper graph: {m['kmapper_graph']['nodes']} nodes, {m['kmapper_graph']['edges']} edges; "
                 f"nerve Betti {m['gudhi_nerve']['betti'][:3]}", fontsize=9)
    _save(fig, fig_dir, "graph.png", figs, "graph")
    # persistence diagram
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pts = a.persistence_
    finite = [d for _, (b, d) in pts if np.isfinite(d)] + [b for _, (b, d) in pts]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    top = hi + 0.1 * (hi - lo + 1e-9)
    for dim, mk in ((0, "o"), (1, "^"), (2, "s")):
        bd = [(b, d if np.isfinite(d) else top) for k, (b, d) in pts if k == dim]
        if bd:
            ax.scatter(*zip(*bd), marker=mk, label=f"H{dim}", alpha=0.7)
    ax.plot([lo, top], [lo, top], color="#888", lw=0.7)
    ax.axhline(top, color="#888", ls=":", lw=0.7)
    ax.set_xlabel("birth (node filter value)")
    ax.set_ylabel("death (dotted line: never)")
    ax.set_title("Persistence of the nerve (lower-star filtration)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, fig_dir, "persistence.png", figs, "persistence")
    return figs


GRAPH_STATISTICS = ("nodes", "edges", "components", "large_components", "cycles", "nerve_betti_1")


def _mapper_findings(stats: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """The graph against Gaussian surrogates and node purity against shuffled labels, with a verdict."""
    L = ["## Findings against the nulls", ""]
    graph = [k for k in GRAPH_STATISTICS if k in stats]
    if not stats:
        return L + ["No null was computed (null draws set to 0 and fewer than two labels).", ""]
    if graph:
        n = stats[graph[0]]["null"]["gaussian_surrogate"]["n_draws"]
        L += [f"Null for the graph: {n} Gaussian surrogates, each n samples from a Gaussian with the mean and "
              "covariance of the activations and the lens jointly, through the same lens clipping, cover "
              f"({params['n_cubes']} cubes, overlap {params['overlap']}) and clusterer with the same radius rule. "
              "They keep every first and second moment and no other structure. Null for node purity: the same graph "
              "with the samples' labels shuffled.", ""]
    L += statistic_rows(stats, graph + [k for k in stats if k not in graph]) + [""]
    if graph:
        beyond = [k for k in graph if (stats[k].get("p_value") is not None and stats[k]["p_value"] < 0.01)]
        if beyond:
            L.append("The graph differs from the Gaussian surrogates in: " + ", ".join(
                f"{k.replace('_', ' ')} ({_fmt(stats[k]['observed'], 0)} vs {_fmt(stats[k]['null']['gaussian_surrogate']['mean'], 1)})"
                for k in beyond) + ".")
        else:
            L.append("**The topology is not distinguishable from the null**: a Gaussian cloud with the same covariance "
                     "gives the same graph statistics under this cover and clusterer (every p >= 0.01). Read the graph "
                     "as a picture of the cover, not as structure in the representation.")
    if "node_purity" in stats:
        L.append(f"Node purity: {_verdict(stats['node_purity'])}.")
    return L + [""]


def _mapper_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m = doc["provenance"], doc["metrics"]
    kg, nerve, st = m["kmapper_graph"], m["gudhi_nerve"], m["stability"]
    L = [f"# Mapper: {p['model']} at {p['hook']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         "## Samples", "",
         f"{p['words_used']:,} words under {', '.join(p['concepts'])} (of {p['words_asked']:,} sampled; "
         f"{p['words_dropped_multitoken']:,} split into more than {p['max_tokens']} tokens dropped; "
         f"{p['ambiguous_words_dropped']:,} words under two concepts left out). Per concept: "
         + ", ".join(f"{_label(c)} {n:,}" for c, n in p["words_used_per_concept"].items()) + ".",
         f"Each word is read as BOS + {p['prefix']!r} + ' ' + word; its activation is the {p['rule']} token at "
         f"{p['hook']}; its SAE code comes from `{p['sae']}`.", "",
         "## Method", "",
         f"Lens: {doc['params']['lens']} of the SAE codes ({doc['params']['n_components']} components"
         + (f", features {doc['params']['features']}" if doc["params"]["lens"] == "features" else "") + "). Cover: "
         f"{doc['params']['n_cubes']} cubes per dimension, overlap {doc['params']['overlap']}. Clustering in activation "
         f"space: DBSCAN with min_samples {doc['params']['min_samples']} and eps {p['eps']:.4g} "
         f"(= {doc['params']['eps_scale']} x the median distance to the {doc['params']['eps_k']}th neighbour).", "",
         ]
    L += _mapper_findings(m.get("statistics", {}), doc["params"])
    L += ["## The graph", "",
         "| | value |", "|---|---|",
         f"| kmapper graph | {kg['nodes']} nodes, {kg['edges']} edges, {kg['samples_covered']:,} samples covered |",
         f"| graph components / independent cycles | {kg['components']} / {kg['cycles']} |",
         f"| gudhi nerve Betti numbers (b0, b1, b2) | {', '.join(str(b) for b in nerve['betti'][:3])} |",
         f"| nerve simplices by dimension | {', '.join(f'{k}: {v}' for k, v in nerve['simplices_by_dimension'].items())} |",
         ]
    if st.get("n"):
        L.append(f"| bootstrap stability ({st['n']} refits on {st['fraction']:.0%} subsamples) | same graph Betti numbers "
                 f"in {st['same_graph_betti']:.0%}; node Jaccard mean {st['node_jaccard_mean']:.3f} "
                 f"(min {st['node_jaccard_min']:.3f}) |")
    sec = p.get("seconds", {})
    L.append("| time (s) | " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in sec.items()) + " |")
    L += ["", "The interactive graph is `mapper.html` (self-contained: open it in a browser; hover a node for its "
          "categories, top SAE features and words; colour by any category).", "",
          f"![graph](figures/{figs['graph']})", "", f"![lens](figures/{figs['lens']})", "",
          f"![persistence](figures/{figs['persistence']})", "", "## Largest nodes", "",
          "| node | size | categories | top SAE features (mean activation) | words |", "|---|---|---|---|---|"]
    for r in sorted(doc["nodes"], key=lambda r: -r["size"])[:20]:
        cats = ", ".join(f"{_label(c)} {s:.0%}" for c, s in r["categories"])
        feats = ", ".join(f"{f} ({v:.2f})" for f, v in r["top_features"][:4])
        L.append(f"| {r['node']} | {r['size']} | {cats} | {feats} | {', '.join(r['examples'][:6])} |")
    L += ["", "## Provenance", "", "Model, SAE, word list, lens values and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


def _mapper_html(a: Any, doc: Mapping[str, Any], pos: Mapping[str, tuple[float, float]]) -> str:
    """A self-contained page: SVG graph, hover tooltips, colour by category, click to list members."""
    import html

    cats = sorted(set(a.labels_))
    colors = _category_colors(a.labels_)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    W, H, pad = 900, 640, 30

    def sx(x):
        return pad + (x - min(xs)) / ((max(xs) - min(xs)) or 1) * (W - 2 * pad)

    def sy(y):
        return pad + (y - min(ys)) / ((max(ys) - min(ys)) or 1) * (H - 2 * pad)

    smax = max(len(v) for v in a.graph_["nodes"].values())
    nodes = []
    for r in doc["nodes"]:
        members = a.graph_["nodes"][r["node"]]
        shares = {c: 0 for c in cats}
        for i in members:
            shares[a.labels_[i]] += 1
        nodes.append({
            "id": r["node"], "x": round(sx(pos[r["node"]][0]), 1), "y": round(sy(pos[r["node"]][1]), 1),
            "r": round(4 + 14 * np.sqrt(len(members) / smax), 1), "size": len(members),
            "shares": {c: v / len(members) for c, v in shares.items()},
            "features": r["top_features"], "words": [a.names_[i] for i in members[:200]],
        })
    edges = [[a_, b] for a_, bs in a.graph_["links"].items() for b in bs]
    data = json.dumps({"nodes": nodes, "edges": edges, "cats": cats, "colors": colors})
    data = data.replace("</", "<\\/")  # never close the script element early
    m = doc["metrics"]
    p = doc["provenance"]
    title = f"Mapper · {p['model']} · {p['hook']}"
    options = "".join(f'<option value="{html.escape(c)}">share of {html.escape(_label(c))}</option>' for c in cats)
    legend = "".join(f'<span><i style="background:{colors[c]}"></i>{html.escape(_label(c))}</span>' for c in cats)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
#wrap {{ display: flex; gap: 1.5em; align-items: flex-start; }}
svg {{ border: 1px solid #ddd; background: #fff; }}
circle {{ stroke: #333; stroke-width: 0.6; cursor: pointer; }} circle:hover {{ stroke: #e00; stroke-width: 2; }}
line {{ stroke: #bbb; stroke-width: 1; }}
#tip {{ position: fixed; pointer-events: none; background: #fffbe8; border: 1px solid #cca; padding: 0.4em 0.6em;
        font-size: 0.8em; max-width: 28em; display: none; }}
#side {{ width: 26em; font-size: 0.85em; }} .legend span {{ margin-right: 1em; }}
.legend i {{ display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{p['words_used']:,} words under {html.escape(', '.join(p['concepts']))}; lens: {html.escape(str(doc['params']['lens']))}
of the SAE codes ({html.escape(p['sae'])}). {m['kmapper_graph']['nodes']} nodes, {m['kmapper_graph']['edges']} edges;
nerve Betti numbers {html.escape(str(m['gudhi_nerve']['betti'][:3]))}.</p>
<p>Colour: <select id="colour"><option value="">dominant category</option>{options}</select>
<span class="legend">{legend}</span></p>
<div id="wrap"><svg id="g" width="{W}" height="{H}"></svg>
<div id="side"><b>Click a node</b> to list its words here.</div></div>
<div id="tip"></div>
<script>
const D = {data};
const svg = document.getElementById("g"), tip = document.getElementById("tip"), side = document.getElementById("side");
const NS = "http://www.w3.org/2000/svg", byId = {{}};
D.nodes.forEach(n => byId[n.id] = n);
function esc(s) {{ return String(s).replace(/[&<>"]/g, c => ({{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}})[c]); }}
D.edges.forEach(([a, b]) => {{
  const l = document.createElementNS(NS, "line");
  l.setAttribute("x1", byId[a].x); l.setAttribute("y1", byId[a].y);
  l.setAttribute("x2", byId[b].x); l.setAttribute("y2", byId[b].y); svg.appendChild(l);
}});
function dominant(n) {{ return D.cats.reduce((a, c) => n.shares[c] > n.shares[a] ? c : a, D.cats[0]); }}
function describe(n) {{
  const cats = D.cats.filter(c => n.shares[c] > 0).sort((a, b) => n.shares[b] - n.shares[a])
    .map(c => esc(c) + " " + (100 * n.shares[c]).toFixed(0) + "%").join(", ");
  const feats = n.features.map(([f, v]) => f + " (" + v.toFixed(2) + ")").join(", ");
  return "<b>" + esc(n.id) + "</b>: " + n.size + " words<br>categories: " + cats +
         "<br>top SAE features: " + (feats || "none") + "<br>words: " + n.words.slice(0, 12).map(esc).join(", ");
}}
const circles = D.nodes.map(n => {{
  const c = document.createElementNS(NS, "circle");
  c.setAttribute("cx", n.x); c.setAttribute("cy", n.y); c.setAttribute("r", n.r);
  c.addEventListener("mousemove", e => {{ tip.innerHTML = describe(n); tip.style.display = "block";
    tip.style.left = (e.clientX + 14) + "px"; tip.style.top = (e.clientY + 10) + "px"; }});
  c.addEventListener("mouseleave", () => tip.style.display = "none");
  c.addEventListener("click", () => side.innerHTML = describe(n) + "<hr>all words: " + n.words.map(esc).join(", "));
  svg.appendChild(c); return [n, c];
}});
function paint() {{
  const by = document.getElementById("colour").value;
  circles.forEach(([n, c]) => {{
    if (!by) {{ c.setAttribute("fill", D.colors[dominant(n)]); c.setAttribute("fill-opacity", 0.35 + 0.65 * n.shares[dominant(n)]); }}
    else {{ c.setAttribute("fill", D.colors[by]); c.setAttribute("fill-opacity", 0.05 + 0.95 * n.shares[by]); }}
  }});
}}
document.getElementById("colour").addEventListener("change", paint); paint();
</script>
</body></html>
"""


def write_cluster_report(analyzer: Any, provenance: Mapping[str, Any], out: Path, force: bool = False) -> Path:
    """``result.json``, ``report.md`` and ``figures/clusters.png`` for a :class:`ClusterAnalyzer`."""
    from .types import _jsonable

    check_output_dir(out, force)
    res = analyzer.result()
    doc = _jsonable({
        **_head("clustering", res, provenance),
        "clusters": res.tables["clusters"],
        "assignments": {"names": analyzer.names_, "cluster": analyzer.labels_,
                        "category": analyzer.categories_},
    })
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        fig = _cluster_figure(analyzer, tmp / "figures")
        (tmp / "report.md").write_text(_cluster_markdown(doc, fig))
    return Path(out)


def _cluster_figure(a: Any, fig_dir: Path) -> str | None:
    if a.categories_ is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(set(a.categories_))
    clusters = sorted(set(a.labels_.tolist()))
    M = np.zeros((len(clusters), len(cats)))
    for c, lab in zip(a.labels_, a.categories_):
        M[clusters.index(c), cats.index(lab)] += 1
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(cats), 1 + 0.35 * len(clusters)))
    ax.imshow(M / M.sum(1, keepdims=True), cmap="Blues", aspect="auto", vmin=0, vmax=1)
    for i in range(len(clusters)):
        for j in range(len(cats)):
            ax.text(j, i, int(M[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cats)), [_label(c) for c in cats], fontsize=8)
    ax.set_yticks(range(len(clusters)), [f"cluster {c}" for c in clusters], fontsize=7)
    ax.set_title("rows per cluster and category (shade: share of the cluster)", fontsize=9)
    fig.savefig(fig_dir / "clusters.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "clusters.png"


def _cluster_markdown(doc: Mapping[str, Any], fig: str | None) -> str:
    p, m = doc["provenance"], doc["metrics"]
    L = [f"# Clustering: {p['model']} at {p['hook']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         f"Rows: {p['rows']}, from {p['words_used']:,} words under {', '.join(p['concepts'])}. "
         f"Estimator: {doc['params']['estimator']}.", ""]
    if m:
        L += ["## Findings against the nulls", "",
              f"Null: the same clusters with the categories shuffled over the rows ({doc['params']['n_shuffles']} draws). "
              "Intervals: rows resampled with their cluster and category, the clustering held fixed.", ""]
        L += statistic_rows(m, list(m)) + [""]
        L += [f"- **{k.replace('_', ' ')}**: {_verdict(v)}" for k, v in m.items()] + [""]
    if fig:
        L += [f"![clusters](figures/{fig})", ""]
    L += ["## Clusters", "", "| cluster | size | categories | logit lens (promoted tokens) | rows nearest the centroid |",
          "|---|---|---|---|---|"]
    for c in doc["clusters"]:
        cats = ", ".join(f"{_label(k)} {s:.0%}" for k, s in c.get("categories", []))
        lens = ", ".join(repr(str(t).replace("▁", " ").replace("Ġ", " ")) for t, _ in c.get("logit_lens", [])[:6])
        L.append(f"| {c['cluster']} | {c['size']} | {cats} | {lens} | {', '.join(map(str, c['nearest_centroid'][:6]))} |")
    L += ["", "## Provenance", "", "Model, SAE, word list, assignments and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------
# Steering


def write_steering_report(kind: str, res: Any, provenance: Mapping[str, Any], out: Path, force: bool = False,
                          files: Mapping[str, bytes] | None = None) -> Path:
    """``result.json``, ``report.md``, ``figures/`` (and any extra ``files``) for a ``geomsteer steer`` step."""
    from .types import _jsonable

    check_output_dir(out, force)
    doc = _jsonable({**_head(kind, res, provenance), "tables": res.tables})
    figures, markdown = _STEERING[kind]
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        for name, blob in (files or {}).items():
            (tmp / name).write_bytes(blob)
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        figs = figures(doc, tmp / "figures") if figures else {}
        (tmp / "report.md").write_text(markdown(doc, figs))
    return Path(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steer_title(doc: Mapping[str, Any], what: str) -> list[str]:
    p = doc["provenance"]
    L = [f"# Steering {what}: {p['model']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", ""]
    if p.get("vectors"):
        L += [f"Vectors: `{p['vectors']}` (sha256 {p['vectors_sha256'][:12]}; {p['vector_method']}, "
              f"{p['vector_position']} token, {p['vector_n_pairs']} pairs with data sha256 "
              f"{p['vector_data_sha256'][:12]}).", ""]
    if p.get("eval"):
        L += [f"Evaluation prompts: `{p['eval']}` ({p['n_prompts']} prompts, sha256 {p['eval_sha256'][:12]}).", ""]
    return L


def _tail(L: list[str]) -> str:
    L += ["", "## Provenance", "", "Model files and hashes, inputs, timings and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


def _compute_figures(doc: Mapping[str, Any], fig_dir: Path) -> dict[str, str]:
    plt = _plt()
    per = doc["metrics"]["per_hook"]
    hooks = list(per)
    x = [per[h]["layer"] for h in hooks]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.plot(x, [per[h]["norm"] for h in hooks], "o-", label="vector")
    a1.plot(x, [per[h].get("random_sign_norm", np.nan) for h in hooks], "o--", color="grey", label="pairs with random signs")
    a1.set(xlabel="layer", ylabel="norm", title="mean pair difference")
    a1.legend(fontsize=8)
    a2.plot(x, [per[h].get("held_out_pair_accuracy", np.nan) for h in hooks], "o-")
    a2.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    a2.set(xlabel="layer", ylabel="share of pairs", ylim=(0, 1.05), title="held-out pairs on the vector's side")
    a2.legend(fontsize=8)
    figs: dict[str, str] = {}
    _save(fig, fig_dir, "pairs.png", figs)
    return figs


def _compute_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, per = doc["provenance"], doc["metrics"]["per_hook"]
    L = _steer_title(doc, "vectors")
    L += [f"Pairs: `{p['pairs']}` ({p['n_pairs']} pairs, sha256 {p['pairs_sha256'][:12]}). Position rule "
          f"`{doc['params']['position']}`, method `{doc['params']['method']}`. Vectors: `vectors.safetensors` "
          "(load with `geomsteer.steering.load_vectors`).", "",
          "Held-out pair accuracy: the share of pairs whose difference points the way of the other pairs' mean "
          "(leave-one-out; chance 0.5). Random-sign norm: the norm the mean difference has when each pair's sign is "
          "flipped at random (pairs sharing no direction).", "",
          "| hook | norm | random-sign norm | held-out pair accuracy | mean cosine of a pair with the vector |",
          "|---|---|---|---|---|"]
    for h, s in per.items():
        L.append(f"| {h} | {_fmt(s['norm'], 2)} | {_fmt(s.get('random_sign_norm'), 2)} | "
                 f"{_fmt(s.get('held_out_pair_accuracy'))} | {_fmt(s.get('mean_cosine_with_vector'))} |")
    if "pairs" in figs:
        L += ["", f"![pairs](figures/{figs['pairs']})"]
    return _tail(L)


def _apply_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    pr = doc["params"]
    L = _steer_title(doc, "generations")
    L += [f"Vector at {pr['hook']} (norm {doc['metrics']['vector_norm']:.2f}) added at multiplier {pr['alpha']:g} to every "
          f"position after the start token, new tokens included; {pr['max_new_tokens']} new tokens, "
          + ("greedy." if not pr["temperature"] else f"temperature {pr['temperature']:g}, seed {pr['seed']}.")
          + " The random direction has the vector's norm.", ""]
    for g in doc["tables"]["generations"]:
        L += [f"## {g['prompt']}", "", "| | continuation |", "|---|---|"]
        for k in ("unsteered", "steered", "random_direction"):
            L.append(f"| {k.replace('_', ' ')} | {_cell(g[k])} |")
        L.append("")
    return _tail(L)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ").strip()


STEERING_NULLS = ("Nulls: vectors computed from the same pairs with each pair's labels swapped at random (shuffled labels, "
                  "steered exactly like the vector), and random directions drawn from the activation covariance at the "
                  "hook with the vector's norm (covariance directions). p is the most conservative over the nulls.")


def _findings(stats: Mapping[str, Any], note: str | None = None) -> list[str]:
    """The 'Findings against the nulls' section: the shared table and one verdict per statistic."""
    if not stats:
        return ["## Findings against the nulls", "", "No null was drawn (null draws set to 0).", ""]
    L = ["## Findings against the nulls", "", STEERING_NULLS + (f" Note: {note}." if note else ""), ""]
    L += statistic_rows(stats, list(stats)) + [""]
    L += [f"- **{k.replace('_', ' ')}**: {_verdict(st)}" for k, st in stats.items()] + [""]
    return L


def _sweep_null_figure(doc: Mapping[str, Any], fig_dir: Path, figs: dict[str, str]) -> None:
    tested = [r for r in doc["tables"]["grid"] if r.get("null_shifts")]
    if not tested:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(tested) + 2), 3.6))
    rng = np.random.default_rng(0)
    for i, r in enumerate(tested):
        sign = 1.0 if r["alpha"] > 0 else -1.0
        for j, (name, draws) in enumerate(sorted(r["null_shifts"].items())):
            x = i + (j - 0.5) * 0.3 + rng.uniform(-0.06, 0.06, len(draws))
            ax.plot(x, sign * np.asarray(draws), "o", ms=3, alpha=0.6, color=f"C{j + 1}",
                    label=name.replace("_", " ") if i == 0 else None)
        ax.plot([i - 0.35, i + 0.35], [sign * r["logodds_shift"]] * 2, "-", color="C0", lw=2.5,
                label="steering vector" if i == 0 else None)
    ax.set_xticks(range(len(tested)), [f"{_short_hook(r['hook'])}\n×{r['alpha']:g}" for r in tested], fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set(ylabel="log-odds shift × sign of the multiplier")
    ax.set_title("the vector's shift among its null vectors' shifts", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, fig_dir, "nulls.png", figs)


def _sweep_figures(doc: Mapping[str, Any], fig_dir: Path) -> dict[str, str]:
    plt = _plt()
    grid = doc["tables"]["grid"]
    hooks = list(dict.fromkeys(r["hook"] for r in grid))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    figs: dict[str, str] = {}
    for key, ylabel, name in (("logodds_shift", "shift in log-odds (positive vs negative targets)", "dose_response.png"),
                              ("kl_neutral", "KL(unsteered || steered) on neutral text, nats/token", "kl.png")):
        if key == "kl_neutral" and all(r["kl_neutral"] is None for r in grid):
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for i, h in enumerate(hooks):
            rows = [r for r in grid if r["hook"] == h]
            a = [r["alpha"] for r in rows]
            y = np.array([r[key] for r in rows], dtype=float)
            c = colors[i % len(colors)]
            if key == "logodds_shift":
                ax.errorbar(a, y, yerr=[r["logodds_shift_sem"] for r in rows], fmt="o-", color=c, label=_short_hook(h),
                            capsize=2)
            else:
                ax.plot(a, y, "o-", color=c, label=_short_hook(h))
            ax.plot(a, [r["random_" + key] for r in rows], ":", color=c, alpha=0.8)
            if key == "logodds_shift":
                mu = np.array([r["random_logodds_shift"] for r in rows])
                sd = np.array([r["random_logodds_shift_sd"] for r in rows])
                ax.fill_between(a, mu - sd, mu + sd, color=c, alpha=0.08, lw=0)
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="multiplier", ylabel=ylabel)
        ax.set_title("solid: steering vector; dotted (band: ± sd): covariance directions of the same norm", fontsize=9)
        ax.legend(fontsize=8, title="layer", title_fontsize=8)
        _save(fig, fig_dir, name, figs)
    _sweep_null_figure(doc, fig_dir, figs)
    return figs


def _sweep_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    m, pr = doc["metrics"], doc["params"]
    u = m["unsteered"]
    L = _steer_title(doc, "sweep")
    L += [f"The vector is added at every position after the start token. Target log-odds: log p(positive targets) - "
          f"log p(negative targets) for the next token (each set's probability summed over its tokens); unsteered mean "
          f"{u['logodds_mean']:.3f} over {u['n_prompts']} prompts. Side effects: mean KL divergence of the steered "
          f"from the unsteered next-token distribution over {u['neutral_positions']} positions of neutral text. Every "
          f"cell has {pr['n_random']} random directions from the activation covariance, with the vector's norm, beside "
          "it (their mean shift ± sd and mean absolute shift; KL for the first).", ""]
    stats = {f"{_short_hook(h)} {k}": st for h, s in m["per_hook"].items() for k, st in s.get("statistics", {}).items()}
    note = next((s.get("nulls_note") for s in m["per_hook"].values() if s.get("nulls_note")), None)
    L += _findings(stats, note)
    if "nulls" in figs:
        L += [f"![nulls](figures/{figs['nulls']})", ""]
    L += ["## Per layer", "",
          "| hook | vector norm | Spearman (multiplier, shift) | monotone | shift at max | random: mean (mean \\|shift\\|) "
          "| KL at max | random KL |", "|---|---|---|---|---|---|---|---|"]
    for h, s in m["per_hook"].items():
        L.append(f"| {h} | {_fmt(s['vector_norm'], 1)} | {_fmt(s['spearman_alpha_shift'])} | "
                 f"{'yes' if s['monotone'] else 'no'} | {_fmt(s['shift_at_max_alpha'])} | "
                 f"{_fmt(s['random_shift_at_max_alpha'])} ({_fmt(s['random_abs_shift_at_max_alpha'])}) | "
                 f"{_fmt(s['kl_at_max_alpha'])} | {_fmt(s['random_kl_at_max_alpha'])} |")
    for key, title in (("dose_response", "Dose-response"), ("kl", "Side effects")):
        if key in figs:
            L += ["", f"![{title}](figures/{figs[key]})"]
    L += ["", "## Grid", "",
          "| hook | multiplier | log-odds shift ± sem | random ± sd | log p(pos) shift | log p(neg) shift | prompts moved "
          "with the sign | KL | random KL |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["tables"]["grid"]:
        L.append(f"| {r['hook']} | {r['alpha']:g} | {_fmt(r['logodds_shift'])} ± {_fmt(r['logodds_shift_sem'])} | "
                 f"{_fmt(r['random_logodds_shift'])} ± {_fmt(r['random_logodds_shift_sd'])} | {_fmt(r['logp_positive_shift'])} | "
                 f"{_fmt(r['logp_negative_shift'])} | {_fmt(r['prompts_moved_with_sign'], 2)} | "
                 f"{_fmt(r['kl_neutral'], 4)} | {_fmt(r['random_kl_neutral'], 4)} |")
    if doc["tables"]["samples"]:
        L += ["", f"## Samples ({pr['max_new_tokens']} tokens, greedy)", ""]
        for s in doc["tables"]["samples"]:
            who = "unsteered" if s["hook"] is None else f"{s['hook']}, multiplier {s['alpha']:g}"
            L += [f"**{who}**", ""] + [f"- {_cell(t)}" for t in s["texts"]] + [""]
    return _tail(L)


def _tokens(pairs: Sequence[Any], n: int = 6) -> str:
    return ", ".join(repr(str(t).replace("▁", " ").replace("Ġ", " ")) for t, _ in list(pairs)[:n])


def _decompose_figures(doc: Mapping[str, Any], fig_dir: Path) -> dict[str, str]:
    plt = _plt()
    curve = doc["tables"]["explained_curve"]
    figs: dict[str, str] = {}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(range(1, len(curve["vector"]) + 1), curve["vector"], "o-", ms=3, label="steering vector")
    a1.plot(range(1, len(curve["random"]) + 1), curve["random"], "o:", ms=3, color="grey", label="covariance direction")
    a1.set(xlabel="SAE features (matching pursuit steps)", ylabel="fraction of |v|² explained", ylim=(0, 1))
    a1.legend(fontsize=8)
    a1.set_title("sparse coding over decoder directions", fontsize=9)
    eff = doc["metrics"]["steering_effect"]
    keys = ["vector", "sparse_coding", "code_difference", "random"]
    a2.bar(range(len(keys)), [eff[k]["logodds_shift"] for k in keys], color=["C0", "C1", "C2", "grey"])
    a2.set_xticks(range(len(keys)), ["vector", "sparse\ncoding", "code\ndifference", "random"], fontsize=8)
    a2.set(ylabel="log-odds shift")
    a2.set_title(f"steering effect at multiplier {doc['provenance']['alpha']:g}", fontsize=9)
    _save(fig, fig_dir, "decomposition.png", figs)
    return figs


def _decompose_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m, pr = doc["provenance"], doc["metrics"], doc["params"]
    e, eff, c = m["explained_fraction"], m["steering_effect"], m["codes"]
    L = _steer_title(doc, "vector decomposed into SAE features")
    L += [f"SAE: `{p['sae']}`. Vector at {p['hook']}, norm {p['vector_norm']:.2f}; multiplier {p['alpha']:g}.", "",
          f"(a) Sparse coding: {'non-negative ' if pr['nonneg'] else ''}orthogonal matching pursuit over the unit decoder "
          f"directions, {pr['k']} features. (b) Code difference: mean over {c['n_tokens']} prompt tokens of "
          "SAE(x + αv) - SAE(x), mapped back through the decoder and divided by α. Reading the vector itself through "
          "the encoder is shown only for contrast: it is not a decomposition (Mayne et al. 2024)."
          + (f" The code difference is read on {p['prompt_split']['fit_prompts']} prompts; every steering effect is "
             f"scored on the other {p['prompt_split']['score_prompts']}." if p.get("prompt_split") else ""), ""]
    L += _findings(m.get("statistics", {}), p.get("nulls_note"))
    L += ["## How much of the vector each explains", "",
          "| decomposition | fraction of \\|v\\|² explained | same for a covariance direction |", "|---|---|---|",
          f"| sparse coding ({pr['k']} features) | {_fmt(e['sparse_coding'])} | {_fmt(e['sparse_coding_random_direction'])} |",
          f"| code difference | {_fmt(e['code_difference'])} | {_fmt(e['code_difference_random_direction'])} |",
          f"| encoder output of v, best rescaling (not a decomposition) | {_fmt(e['encoder_output_not_a_decomposition'])} | |",
          "",
          f"Features whose mean code changes by more than 1% of the mean active code: {c['features_changed']} "
          f"(a covariance direction: {c['features_changed_random']}).", "",
          "## Does the reconstruction still steer?", "",
          "| added at the hook | log-odds shift | fraction of the vector's shift |", "|---|---|---|"]
    for k in ("vector", "sparse_coding", "code_difference"):
        L.append(f"| {k.replace('_', ' ')} | {_fmt(eff[k]['logodds_shift'])} | {_fmt(eff[k]['fraction_of_vector'])} |")
    r = eff["random"]
    L.append(f"| covariance directions of the vector's norm (mean ± sd of {r.get('n', 1)}) | {_fmt(r['logodds_shift'])} ± "
             f"{_fmt(r.get('sd', 0.0))} | {_fmt(r['fraction_of_vector'])} |")
    if "decomposition" in figs:
        L += ["", f"![decomposition](figures/{figs['decomposition']})"]
    L += ["", f"The vector's own logit lens: {_tokens(doc['tables']['vector_logit_lens'], 8)}.", "",
          "## Top features", "",
          "| feature | sparse-coding rank, coefficient | code change (mean, unsteered mean) | cosine with v | logit lens | "
          "top contexts |", "|---|---|---|---|---|---|"]
    for r in doc["tables"]["features"]:
        s, d = r.get("sparse_coding"), r.get("code_difference")
        sc = f"#{s['rank'] + 1}, {s['coefficient']:.2f}" if s else ""
        cd = f"{d['mean_change']:+.3f} ({d['mean_unsteered']:.3f})" if d else ""
        ctx = "<br>".join(_cell(t) for t in r.get("top_contexts", []))
        L.append(f"| {r['feature']} | {sc} | {cd} | {r['cosine_with_vector']:.3f} | {_cell(_tokens(r['logit_lens']))} | "
                 f"{ctx} |")
    return _tail(L)


def _propagate_figures(doc: Mapping[str, Any], fig_dir: Path) -> dict[str, str]:
    plt = _plt()
    grid = doc["tables"]["grid"]
    hooks = doc["provenance"]["sae_hooks"]
    alphas = doc["metrics"]["alphas"]
    M = np.zeros((len(hooks), len(alphas)))
    R = np.zeros_like(M)
    for r in grid:
        (M if r["direction"] == "vector" else R)[hooks.index(r["hook"]), alphas.index(r["alpha"])] = r["features_changed"]
    top_a = alphas[-1]
    rows, labels = [], []
    for h in hooks:
        t = doc["tables"]["tracked"][h]
        for f, vals in list(zip(t["features"], t["mean_change"]))[:5]:
            rows.append(vals)
            labels.append(f"{_short_hook(h)} f{f}")
    figs: dict[str, str] = {}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, max(3.2, 0.22 * len(labels) + 1)),
                                 gridspec_kw={"width_ratios": [1, 1.2]})
    im = a1.imshow(M, cmap="viridis", aspect="auto")
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            a1.text(j, i, f"{int(M[i, j])}\n({int(R[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if M[i, j] < M.max() / 2 else "black")
    a1.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    a1.set_yticks(range(len(hooks)), [_short_hook(h) for h in hooks])
    a1.set(xlabel="multiplier", ylabel="SAE layer")
    a1.set_title("features changed beyond the threshold\n(a covariance direction in brackets)", fontsize=9)
    fig.colorbar(im, ax=a1, shrink=0.8)
    if rows:
        A = np.array(rows, dtype=float)
        lim = np.nanmax(np.abs(A)) or 1.0
        im2 = a2.imshow(A, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        a2.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        a2.set_yticks(range(len(labels)), labels, fontsize=7)
        a2.set(xlabel="multiplier")
        a2.set_title(f"mean code change of each layer's most changed features (at {top_a:g})", fontsize=9)
        fig.colorbar(im2, ax=a2, shrink=0.8)
    else:
        a2.axis("off")
    fig.tight_layout()
    _save(fig, fig_dir, "propagation.png", figs)
    return figs


def _propagate_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m, pr = doc["provenance"], doc["metrics"], doc["params"]
    L = _steer_title(doc, "propagation")
    L += [f"Steered at {p['hook']} (every position after the start token) and encoded at each later layer with an "
          f"SAE, over {p['n_tokens']} prompt tokens. A feature changes when its mean absolute code change exceeds "
          f"{pr['threshold']:g} x the layer's mean active code. Each multiplier also runs one random direction from "
          "the activation covariance with the vector's norm (in brackets); the nulls below are drawn at multiplier "
          f"{p.get('null_alpha', m['alphas'][-1]):g}."
          + (f" SAEs before the steering layer were skipped: {', '.join(p['skipped_earlier_hooks'])}."
             if p.get("skipped_earlier_hooks") else ""), ""]
    stats = {k.split(":")[0] + " " + _short_hook(k.split(":", 1)[1]): st for k, st in m.get("statistics", {}).items()}
    L += _findings(stats, p.get("nulls_note"))
    L += ["| SAE layer | " + " | ".join(f"changed at {a:g} (random)" for a in m["alphas"])
          + " | Spearman (multiplier, total change) |", "|---" * (len(m["alphas"]) + 2) + "|"]
    for h, s in m["per_layer"].items():
        cells = " | ".join(f"{c} ({r})" for c, r in zip(s["features_changed"], s["features_changed_random"]))
        L.append(f"| {h} | {cells} | {_fmt(s['spearman_alpha_changed'])} |")
    if "propagation" in figs:
        L += ["", f"![propagation](figures/{figs['propagation']})"]
    top_a = m["alphas"][-1]
    L += ["", f"## Most changed features at multiplier {top_a:g}", "",
          "| SAE layer | residual moved (relative) | features (mean change; unsteered mean) |", "|---|---|---|"]
    for r in doc["tables"]["grid"]:
        if r["direction"] == "vector" and r["alpha"] == top_a:
            feats = ", ".join(f"{t['feature']} ({t['mean_change']:+.2f}; {t['mean_unsteered']:.2f})"
                              for t in r["top_features"])
            L.append(f"| {r['hook']} | {r['relative_residual_change']:.3f} | {feats} |")
    return _tail(L)


_STEERING = {
    "steering_compute": (_compute_figures, _compute_markdown),
    "steering_apply": (None, _apply_markdown),
    "steering_sweep": (_sweep_figures, _sweep_markdown),
    "steering_decomposition": (_decompose_figures, _decompose_markdown),
    "steering_propagation": (_propagate_figures, _propagate_markdown),
}
