"""The Mapper report: result.json, report.md, figures and an interactive mapper.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import _atomic
from .common import as_result, pyplot, category_label, check_output_dir, fmt, result_head, save_figure, statistic_rows, verdict


_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf"]


def _layout(art: Mapping[str, Any], seed: int) -> dict[str, tuple[float, float]]:
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(art["node_ids"])
    for a, bs in art["graph"]["links"].items():
        g.add_edges_from((a, b) for b in bs)
    pos = nx.spring_layout(g, seed=seed, iterations=200)
    return {k: (float(x), float(y)) for k, (x, y) in pos.items()}


def write_mapper_report(result: Any, provenance: Mapping[str, Any], out: Path, force: bool = False) -> Path:
    """``result.json``, ``report.md``, ``figures/*.png`` and a self-contained interactive ``mapper.html``
    for a MapperAnalyzer's result (its declared artifacts: graph, node ids, names, labels, lens, persistence)."""
    check_output_dir(out, force)
    res, art, doc, pos = _mapper_doc(result, provenance)
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        figs = _mapper_figures(res, pos, tmp / "figures")
        (tmp / "report.md").write_text(_mapper_markdown(doc, figs))
        (tmp / "mapper.html").write_text(_mapper_html(art, doc, pos))
    return Path(out)


def _mapper_doc(result: Any, provenance: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any], dict, dict]:
    from ..types import jsonable

    res = as_result(result)
    art = res.artifacts
    g = art["graph"]
    doc = jsonable({
        **result_head("mapper", res, provenance),
        "nodes": res.tables["nodes"],
        "graph": {"nodes": g["nodes"], "links": g["links"]},
        "samples": {"names": art["names"], "labels": art["labels"], "lens": art["lens"]},
    })
    return res, art, doc, _layout(art, res.params["seed"])


def mapper_page(result: Any, provenance: Mapping[str, Any]) -> str:
    """The self-contained interactive page that ``mapper.html`` holds, as a string."""
    _, art, doc, pos = _mapper_doc(result, provenance)
    return _mapper_html(art, doc, pos)


def _category_colors(labels: Sequence[str]) -> dict[str, str]:
    cats = sorted(set(labels))
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(cats)}


def _mapper_figures(res: Any, pos: Mapping[str, tuple[float, float]], fig_dir: Path) -> dict[str, str]:
    plt = pyplot()
    art = res.artifacts

    colors = _category_colors(art["labels"])
    figs = {}
    # the lens, coloured by category
    fig, ax = plt.subplots(figsize=(6, 5))
    lens = art["lens"]
    y = lens[:, 1] if lens.shape[1] > 1 else np.zeros(len(lens))
    for c, col in colors.items():
        idx = [i for i, lab in enumerate(art["labels"]) if lab == c]
        ax.scatter(lens[idx, 0], y[idx], s=4, alpha=0.5, color=col, label=category_label(c))
    ax.set_xlabel("lens 1")
    ax.set_ylabel("lens 2" if lens.shape[1] > 1 else "")
    ax.set_title(f"{res.params['lens']} lens of the SAE codes", fontsize=10)
    ax.legend(fontsize=7, markerscale=3)
    save_figure(fig, fig_dir, "lens.png", figs, "lens")
    # the graph, nodes as pies of their categories' shares
    fig, ax = plt.subplots(figsize=(7, 6))
    for a_, bs in art["graph"]["links"].items():
        for b in bs:
            ax.plot([pos[a_][0], pos[b][0]], [pos[a_][1], pos[b][1]], color="#bbb", lw=0.7, zorder=1)
    sizes = {k: len(v) for k, v in art["graph"]["nodes"].items()}
    smax = max(sizes.values())
    for k, members in art["graph"]["nodes"].items():
        shares = {}
        for i in members:
            shares[art["labels"][i]] = shares.get(art["labels"][i], 0) + 1
        dom = max(shares, key=shares.get)
        ax.scatter(*pos[k], s=20 + 280 * np.sqrt(sizes[k] / smax), color=colors[dom], edgecolor="k", lw=0.4,
                   alpha=0.4 + 0.6 * shares[dom] / len(members), zorder=2)
    for c, col in colors.items():
        ax.scatter([], [], color=col, label=category_label(c))
    ax.legend(fontsize=7, title="dominant category", title_fontsize=7)
    ax.set_axis_off()
    m = res.metrics
    ax.set_title(f"Mapper graph: {m['kmapper_graph']['nodes']} nodes, {m['kmapper_graph']['edges']} edges; "
                 f"nerve Betti {m['gudhi_nerve']['betti'][:3]}", fontsize=9)
    save_figure(fig, fig_dir, "graph.png", figs, "graph")
    # persistence diagram
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    pts = art["persistence"]
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
    save_figure(fig, fig_dir, "persistence.png", figs, "persistence")
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
                f"{k.replace('_', ' ')} ({fmt(stats[k]['observed'], 0)} vs {fmt(stats[k]['null']['gaussian_surrogate']['mean'], 1)})"
                for k in beyond) + ".")
        else:
            L.append("**The topology is not distinguishable from the null**: a Gaussian cloud with the same covariance "
                     "gives the same graph statistics under this cover and clusterer (every p >= 0.01). Read the graph "
                     "as a picture of the cover, not as structure in the representation.")
    if "node_purity" in stats:
        L.append(f"Node purity: {verdict(stats['node_purity'])}.")
    return L + [""]


def _samples_lines(p: Mapping[str, Any]) -> list[str]:
    if "words_used" not in p:  # rows given to mapper_of: the caller's own description
        return [f"{p['rows']:,} rows: {p.get('description') or '(no description given)'}; SAE: `{p['sae']}`."]
    return [
        f"{p['words_used']:,} words under {', '.join(p['concepts'])} (of {p['words_asked']:,} sampled; "
        f"{p['words_dropped_multitoken']:,} split into more than {p['max_tokens']} tokens dropped; "
        f"{p['ambiguous_words_dropped']:,} words under two concepts left out). Per concept: "
        + ", ".join(f"{category_label(c)} {n:,}" for c, n in p["words_used_per_concept"].items()) + ".",
        f"Each word is read as BOS + {p['prefix']!r} + ' ' + word; its activation is the {p['rule']} token at "
        f"{p['hook']}; its SAE code comes from `{p['sae']}`."]


def _mapper_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m = doc["provenance"], doc["metrics"]
    kg, nerve, st = m["kmapper_graph"], m["gudhi_nerve"], m["stability"]
    L = [f"# Mapper: {p['model']} at {p['hook']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         "## Samples", "", *_samples_lines(p), "",
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
        cats = ", ".join(f"{category_label(c)} {s:.0%}" for c, s in r["categories"])
        feats = ", ".join(f"{f} ({v:.2f})" for f, v in r["top_features"][:4])
        L.append(f"| {r['node']} | {r['size']} | {cats} | {feats} | {', '.join(r['examples'][:6])} |")
    L += ["", "## Provenance", "", "Model, SAE, word list, lens values and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


def _mapper_html(art: Mapping[str, Any], doc: Mapping[str, Any], pos: Mapping[str, tuple[float, float]]) -> str:
    """A self-contained page: SVG graph, hover tooltips, colour by category, click to list members."""
    import html

    cats = sorted(set(art["labels"]))
    colors = _category_colors(art["labels"])
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    W, H, pad = 900, 640, 30

    def sx(x):
        return pad + (x - min(xs)) / ((max(xs) - min(xs)) or 1) * (W - 2 * pad)

    def sy(y):
        return pad + (y - min(ys)) / ((max(ys) - min(ys)) or 1) * (H - 2 * pad)

    smax = max(len(v) for v in art["graph"]["nodes"].values())
    nodes = []
    for r in doc["nodes"]:
        members = art["graph"]["nodes"][r["node"]]
        shares = {c: 0 for c in cats}
        for i in members:
            shares[art["labels"][i]] += 1
        nodes.append({
            "id": r["node"], "x": round(sx(pos[r["node"]][0]), 1), "y": round(sy(pos[r["node"]][1]), 1),
            "r": round(4 + 14 * np.sqrt(len(members) / smax), 1), "size": len(members),
            "shares": {c: v / len(members) for c, v in shares.items()},
            "features": r["top_features"], "words": [art["names"][i] for i in members[:200]],
        })
    edges = [[a_, b] for a_, bs in art["graph"]["links"].items() for b in bs]
    data = json.dumps({"nodes": nodes, "edges": edges, "cats": cats, "colors": colors})
    data = data.replace("</", "<\\/")  # never close the script element early
    m = doc["metrics"]
    p = doc["provenance"]
    title = f"Mapper · {p['model']} · {p['hook']}"
    what = (f"{p['words_used']:,} words under {', '.join(p['concepts'])}" if "words_used" in p
            else f"{p['rows']:,} rows: {p.get('description') or '(no description given)'}")
    options = "".join(f'<option value="{html.escape(c)}">share of {html.escape(category_label(c))}</option>' for c in cats)
    legend = "".join(f'<span><i style="background:{colors[c]}"></i>{html.escape(category_label(c))}</span>' for c in cats)
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
<p>{html.escape(what)}; lens: {html.escape(str(doc['params']['lens']))}
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
