"""The report of ``geomsteer hierarchy --layers``: result.json, directions.safetensors, report.md and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .common import fmt, fmt_p, pyplot, result_head, save_figure, short_hook, write_report

__all__ = ["write_hierarchy_layers_report", "by_layer_figure", "emergence"]


def write_hierarchy_layers_report(res: Any, provenance: Mapping[str, Any], out: Path, force: bool = False) -> Path:
    return write_report("hierarchy_layers", res, provenance, out, _figures, _markdown, force=force,
                        files={"directions.safetensors": _directions_blob(res, provenance)})


def _directions_blob(res: Any, provenance: Mapping[str, Any]) -> bytes:
    from safetensors.numpy import save

    art = res.artifacts
    tensors = {f"directions.{layer}": np.ascontiguousarray(D, dtype=np.float32)
               for layer, D in art["directions"].items()}
    meta = {"format": "geomsteer.hierarchy_layers.directions/1", "names": json.dumps(list(art["names"])),
            "model": str(provenance.get("model")), "layers": json.dumps(list(art["layers"])),
            "note": "directions.<hook>[i] is category names[i]'s LDA vector at that layer, mapped from the whitened "
                    "activations back into the residual stream (a step that moves the whitened row by the LDA vector)"}
    return save(tensors, metadata=meta)


def emergence(rows: list[Mapping[str, Any]], alpha: float = 0.01) -> dict[str, dict[str, Any]]:
    """Per statistic: the first layer where it stands beyond its most conservative null in the predicted direction
    (Holm-adjusted across layers, p < ``alpha``), and the layer of the largest effect in that direction."""
    from ..analyzers.hierarchy_stats import STATISTICS

    out: dict[str, dict[str, Any]] = {}
    for s in dict.fromkeys(r["statistic"] for r in rows):
        rs = [r for r in rows if r["statistic"] == s]
        alt = STATISTICS[s][1] if s in STATISTICS else "greater"
        sign = -1.0 if alt == "less" else 1.0
        if alt == "two-sided":  # either direction counts: compare sizes
            rs = [{**r, "effect_size": None if r["effect_size"] is None else abs(r["effect_size"])} for r in rs]
        sig = [r["layer"] for r in rs if r["p_holm_across_layers"] is not None and r["p_holm_across_layers"] < alpha
               and r["effect_size"] is not None and sign * r["effect_size"] > 0]
        eff = [(sign * r["effect_size"], r["layer"]) for r in rs if r["effect_size"] is not None]
        out[s] = {"first_layer_beyond_null": sig[0] if sig else None, "n_layers_beyond_null": len(sig),
                  "largest_effect_layer": max(eff)[1] if eff else None,
                  "largest_effect": max(eff)[0] * sign if eff else None}
    return out


def by_layer_figure(doc: Mapping[str, Any]) -> Any:
    """Each statistic by layer: observed with its 95% CI, the most conservative null's mean ± 2 sd."""
    plt = pyplot()
    rows = doc["tables"]["by_layer"]
    stats = list(dict.fromkeys(r["statistic"] for r in rows))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    x = np.arange(len(layers))
    ncol = 3
    nrow = int(np.ceil(len(stats) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 2.8 * nrow), squeeze=False)
    for ax, s in zip(axes.ravel(), stats):
        rs = {r["layer"]: r for r in rows if r["statistic"] == s}

        def col(k):
            return np.array([np.nan if rs[L][k] is None else rs[L][k] for L in layers], dtype=float)

        obs, lo, hi, nm, nsd, ph = (col(k) for k in ("observed", "ci95_low", "ci95_high", "null_mean", "null_sd",
                                                     "p_holm_across_layers"))
        ax.fill_between(x, nm - 2 * nsd, nm + 2 * nsd, color="0.85", label="null mean ± 2 sd")
        ax.plot(x, nm, color="0.5", lw=1)
        ax.fill_between(x, lo, hi, color="C0", alpha=0.2)
        ax.plot(x, obs, "-o", color="C0", ms=3, label="observed [95% CI]")
        sig = np.nan_to_num(ph, nan=1.0) < 0.01
        ax.plot(x[sig], obs[sig], "o", ms=6, mfc="none", color="C3", label="Holm p < 0.01")
        ax.set_title(s.replace("_", " "), fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels([short_hook(L) for L in layers], fontsize=6, rotation=90)
    for ax in axes.ravel()[len(stats):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{doc['provenance'].get('model')}: hierarchy statistics by layer", fontsize=10)
    fig.tight_layout()
    return fig


def _figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    figs: dict[str, Any] = {}
    save_figure(by_layer_figure(doc), fig_dir, "by_layer.png", figs)
    plt = pyplot()
    cats = doc["tables"]["categories"]
    layers = list(doc["metrics"]["layers"])
    if cats:
        A = np.array([[np.nan if c["heldout_auc"][L] is None else c["heldout_auc"][L] for L in layers] for c in cats])
        order = np.argsort([c["depth"] for c in cats], kind="stable")
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(A[order], aspect="auto", cmap="viridis", vmin=0.5, vmax=1.0, interpolation="nearest")
        ax.set(xlabel="layer", ylabel="category (by depth in the tree)", title="held-out AUC per category")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([short_hook(L) for L in layers], fontsize=6, rotation=90)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        save_figure(fig, fig_dir, "heldout_auc_by_category.png", figs)
    return figs


def _markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, pr, t = doc["provenance"], doc["params"], doc["tables"]
    rows = t["by_layer"]
    L = [f"# Hierarchy by layer: {p['model']}", "",
         f"Created {doc['created']}. Command: `{' '.join(p.get('command') or ['(library call)'])}`.", "",
         f"{p['n_categories']} WordNet {pr['pos']} categories (more than {pr['min_tokens']} single tokens each), "
         f"{p['n_tokens_read']} tokens read ({p['rows']}) at {p['n_layers']} layers; held-out tokens are compared "
         f"with {p['n_pool']} {p['pool']}. Inner product: {p['inner_product']}. Estimator {pr['estimator']}, one "
         f"held-out split by lemma (the same at every layer), {pr['n_null_draws']} draws of each null "
         f"({', '.join(n.replace('_', ' ') for n in p['nulls'])}), each keeping the tree's nesting.", "",
         "p is against the most conservative null; Holm adjusts it across the layers of one statistic.", ""]
    em = emergence(rows)
    L += ["## Where each statistic emerges", "",
          "| statistic | first layer beyond the null (Holm p < 0.01) | layers beyond | effect nearest the prediction (layer) |",
          "|---|---|---|---|"]
    for s, e in em.items():
        L.append(f"| {s.replace('_', ' ')} | {e['first_layer_beyond_null'] or 'none'} | {e['n_layers_beyond_null']} | "
                 f"{fmt(e['largest_effect'], 1)} ({e['largest_effect_layer']}) |")
    if "by_layer" in figs:
        L += ["", f"![statistics by layer](figures/{figs['by_layer']})"]
    if "heldout_auc_by_category" in figs:
        L += ["", f"![held-out AUC per category and layer](figures/{figs['heldout_auc_by_category']})"]
    for s in dict.fromkeys(r["statistic"] for r in rows):
        L += ["", f"### {s.replace('_', ' ')}", "",
              "| layer | n | observed [95% CI] | null (most conservative) mean ± sd (draws) | effect size | p | Holm p |",
              "|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["statistic"] == s):
            ci = f" [{fmt(r['ci95_low'])}, {fmt(r['ci95_high'])}]" if r["ci95_low"] is not None else ""
            null = (f"{(r['null'] or '').replace('_', ' ')}: {fmt(r['null_mean'])} ± {fmt(r['null_sd'])} "
                    f"({r['null_draws']})" if r["null"] else "–")
            L.append(f"| {r['layer']} | {r['n']} | {fmt(r['observed'])}{ci} | {null} | {fmt(r['effect_size'], 1)} | "
                     f"{fmt_p(r['p_value'])} | {fmt_p(r['p_holm_across_layers'])} |")
    L += ["", "## Files", "", "`directions.safetensors`: each category's direction at each layer, in the residual "
          "stream's coordinates (`directions.<hook>`, names in the metadata).", "",
          "## Provenance", "", "Model files, hooks, the hierarchy's coverage, timings and package versions are in "
          "`result.json`."]
    return "\n".join(L) + "\n"


def doc_of(res: Any, provenance: Mapping[str, Any]) -> dict[str, Any]:
    from ..types import jsonable

    return jsonable({**result_head("hierarchy_layers", res, provenance), "tables": res.tables})
