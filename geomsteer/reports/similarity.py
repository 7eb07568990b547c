"""The cross-model similarity report: result.json, report.md, figures and a self-contained report.html."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import _atomic
from .common import as_result, pyplot, category_label, check_output_dir, fmt, fmt_p, save_figure, short_hook


def write_similarity_report(result: Any, matching: Any, provenance: Mapping[str, Any], out: Path,
                            force: bool = False) -> Path:
    """Write ``result.json``, ``report.md``, ``figures/*.png`` and a self-contained ``report.html`` from a
    SimilarityAnalyzer's result and, when SAE features were matched, a FeatureMatcher's (or ``None``)."""
    from ..types import jsonable

    check_output_dir(out, force)
    res = as_result(result)
    fm = as_result(matching) if matching is not None else None
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
    if fm is not None:
        doc["feature_matching"] = {"params": fm.params, "provenance": fm.provenance, **fm.metrics,
                                   "decoder_similarity": fm.tables["decoder_similarity"],
                                   "top_pairs": fm.tables["top_pairs"]}
    doc = jsonable(doc)
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        figs = _similarity_figures(res, fm, models, tmp / "figures")
        (tmp / "report.md").write_text(_similarity_markdown(doc, figs))
        (tmp / "report.html").write_text(_similarity_html(doc))
    return Path(out)


def _similarity_figures(res: Any, fm: Any, models: Sequence[str], fig_dir: Path) -> dict[str, str]:
    plt = pyplot()
    groups = res.tables["groups"]

    figs: dict[str, str] = {}
    names = {"a": models[0] if models else "A", "b": models[1] if len(models) > 1 else "B"}
    for metric, title in (("linear_cka_debiased", "debiased linear CKA"), ("mutual_knn", f"mutual {res.params['k']}-NN")):
        for key, scan in res.artifacts["scans"].items():
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
                ax.set_yticks(range(len(rows)), [short_hook(h) for h in rows], fontsize=6)
                ax.set_xticks(range(len(cols)), [short_hook(h) for h in cols], fontsize=6, rotation=90)
                side_r = "a" if key in ("cross", "within_a") else "b"
                side_c = "b" if key in ("cross", "within_b") else "a"
                ax.set_ylabel(names[side_r], fontsize=8)
                ax.set_xlabel(names[side_c], fontsize=8)
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
            fig.suptitle(f"{title}: {key.replace('_', ' ')}", fontsize=10)
            save_figure(fig, fig_dir, f"{key}_{metric}.png", figs)
    if groups:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups)), 3.6))
        x = np.arange(len(groups))
        obs = [g["linear_cka_debiased"]["score"] or 0 for g in groups]
        null = [g["linear_cka_debiased"]["permutation"]["mean"] or 0 for g in groups]
        rnd = [g["linear_cka_debiased"].get("random_model") or 0 for g in groups]
        ax.bar(x - 0.27, obs, 0.27, label="observed")
        ax.bar(x, rnd, 0.27, label=f"re-randomized {names['b']}")
        ax.bar(x + 0.27, null, 0.27, label="shuffled pairing")
        ax.set_xticks(x, [f"{category_label(g['group'])}\n(n={g['n']})" for g in groups], fontsize=7, rotation=45, ha="right")
        ax.set_ylabel("debiased linear CKA")
        ax.set_title(f"Within one WordNet group at {short_hook(groups[0]['layer_a'])} x "
                     f"{short_hook(groups[0]['layer_b'])}", fontsize=10)
        ax.legend(fontsize=7)
        save_figure(fig, fig_dir, "groups.png", figs, "groups")
    if fm is not None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        bins = np.linspace(-0.2, 1, 49)
        ax.hist(fm.artifacts["correlations"], bins=bins, alpha=0.7, label="Hungarian pairs")
        chance = np.asarray(fm.artifacts["shuffled_correlations"]["hungarian"])  # one mean per shuffled draw
        ax.axvspan(chance.mean() - 2 * chance.std(), chance.mean() + 2 * chance.std(), color="C1", alpha=0.3)
        ax.axvline(chance.mean(), color="C1", label=f"mean of the same matching, samples shuffled ({len(chance)} draws, "
                   "± 2 sd)")
        ax.set_xlabel("activation correlation of matched features")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8)
        save_figure(fig, fig_dir, "feature_matching.png", figs, "feature_matching")
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
              f"{fmt(mx['observed'])} against a null maximum of {fmt(nd['mean'])} ± {fmt(nd['sd'])}, effect "
              f"{fmt(mx['effect_size'], 1)} sd, p {fmt(mx['p_value'])} (never below {fmt(nd['p_min'])}).", ""]
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
            L.append(f"| {name}{arrow} | {fmt(e['score'])} | {fmt(perm['mean'])} ± {fmt(perm['sd'])} | "
                     f"{fmt(perm['p'])} | {fmt(e.get('random_model'))} |")
        L.append("")
    L += ["### Best layer of the second model for each layer of the first", "",
          f"| {models[0]} | best {models[1]} layer | debiased CKA | shuffled | re-randomized |", "|---|---|---|---|---|"]
    for r in doc["best_layer_per_layer_a"]:
        L.append(f"| {r['layer_a']} | {r['best_layer_b']} | {fmt(r['cka_debiased'])} | {fmt(r['shuffled'])} | "
                 f"{fmt(r.get('random_model'))} |")
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
            return fmt(e.get("statistic", {}).get("p_value_bh"))

        for g in doc["groups"]:
            c, m, s = g["linear_cka_debiased"], g["mutual_knn"], g["svcca"]
            L.append(f"| {g['group']} | {g['n']} | {fmt(c.get('score'))} | {fmt(c['permutation']['mean'])} | {bh(c)} | "
                     f"{fmt(c.get('random_model'))} | {fmt(m.get('score'))} | {fmt(m['permutation']['mean'])} | "
                     f"{bh(m)} | {fmt(s.get('score'))} | {fmt(s['permutation']['mean'])} |")
        L += ["", f"![groups](figures/{figs['groups']})", ""]
    fm = doc.get("feature_matching")
    if fm:
        p = fm["provenance"]
        L += ["## SAE feature matching (Lan et al. 2024)", "",
              f"SAEs {', '.join(f'`{s}`' for s in p['saes'])} at {', '.join(p['hooks'])}; activations on "
              f"{p['words_aligned']:,} words of {p['texts']:,} held-out WordNet glosses (last token of each word; "
              f"{p['words_dropped']:,} words dropped). Live features: {fm['live_features'][0]:,} and "
              f"{fm['live_features'][1]:,}.", "",
              "| matching | pairs | mean correlation | same matching, samples shuffled: mean ± sd (draws) | p | "
              "share >= threshold |",
              "|---|---|---|---|---|---|"]
        for m in ("greedy", "hungarian"):
            e = fm[m]
            st = e.get("mean_correlation_vs_shuffled_samples") or {}
            nl = (st.get("null") or {}).get("shuffled_samples") or {}
            L.append(f"| {m} | {e['n_pairs']:,} | {fmt(e['mean_correlation'])} | "
                     f"{fmt(e['shuffled_samples_mean_correlation'])} ± {fmt(nl.get('sd'))} ({nl.get('n_draws', '–')}) | "
                     f"{fmt_p(st.get('p_value'))} | {fmt(e['fraction_above_threshold'])} |")
        L += ["", "Paired decoder directions, beside random pairings of live features:", "",
              "| pairs | n | SVCCA | random pairing | RSA | random pairing |", "|---|---|---|---|---|---|"]
        for r in fm["decoder_similarity"]:
            if "svcca" not in r:
                L.append(f"| {r['pairs']} | {r['n']} | {r.get('note', '')} | | | |")
                continue
            L.append(f"| {r['pairs']} | {r['n']} | {fmt(r['svcca']['score'])} | "
                     f"{fmt(r['svcca']['random_pairing']['mean'])} ± {fmt(r['svcca']['random_pairing']['sd'])} | "
                     f"{fmt(r['rsa']['score'])} | {fmt(r['rsa']['random_pairing']['mean'])} ± "
                     f"{fmt(r['rsa']['random_pairing']['sd'])} |")
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
        out.append(f'<text x="{left - 4}" y="{y + cell * 0.7:.1f}" font-size="9" text-anchor="end">{short_hook(r)}</text>')
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
                   f'transform="rotate(90 {x:.1f} {top + cell * len(rows) + 4})">{short_hook(c)}</text>')
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
            f"<tr><td>{html.escape(k)}</td><td>{fmt(e['score'])}</td><td>{fmt(e['permutation']['mean'])} ± "
            f"{fmt(e['permutation']['sd'])}</td><td>{fmt(e['permutation']['p'])}</td>"
            f"<td>{fmt(e.get('random_model'))}</td></tr>"
            for k, e in bp.items() if isinstance(e, dict) and e.get("score") is not None)
        best.append(f"<h3>{html.escape(bp['layer_a'])} × {html.escape(bp['layer_b'])} (n = {bp['n']})</h3>"
                    "<table><tr><th>metric</th><th>observed</th><th>shuffled pairing</th><th>p</th>"
                    f"<th>re-randomized model</th></tr>{rows}</table>")
    groups = ""
    if doc["groups"]:
        rows = "".join(
            f"<tr><td>{html.escape(g['group'])}</td><td>{g['n']}</td>"
            f"<td>{fmt(g['linear_cka_debiased'].get('score'))}</td>"
            f"<td>{fmt(g['linear_cka_debiased']['permutation']['mean'])}</td>"
            f"<td>{fmt(g['linear_cka_debiased'].get('random_model'))}</td>"
            f"<td>{fmt(g['mutual_knn'].get('score'))}</td><td>{fmt(g['mutual_knn']['permutation']['mean'])}</td></tr>"
            for g in doc["groups"])
        groups = ("<h2>Semantic subspaces</h2><table><tr><th>group</th><th>n</th><th>debiased CKA</th><th>shuffled</th>"
                  f"<th>re-randomized</th><th>mutual k-NN</th><th>shuffled</th></tr>{rows}</table>")
    fm = doc.get("feature_matching")
    fm_html = ""
    if fm:
        rows = "".join(f"<tr><td>{m}</td><td>{fm[m]['n_pairs']}</td><td>{fmt(fm[m]['mean_correlation'])}</td>"
                       f"<td>{fmt(fm[m]['shuffled_samples_mean_correlation'])}</td></tr>" for m in ("greedy", "hungarian"))
        dec = "".join(
            f"<tr><td>{html.escape(r['pairs'])}</td><td>{r['n']}</td><td>{fmt(r['svcca']['score'])}</td>"
            f"<td>{fmt(r['svcca']['random_pairing']['mean'])}</td><td>{fmt(r['rsa']['score'])}</td>"
            f"<td>{fmt(r['rsa']['random_pairing']['mean'])}</td></tr>"
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
