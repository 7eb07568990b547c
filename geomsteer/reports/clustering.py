"""The clustering report: result.json, report.md and a figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import _atomic
from .common import as_result, pyplot, category_label, check_output_dir, result_head, statistic_rows, verdict


def write_cluster_report(result: Any, provenance: Mapping[str, Any], out: Path, force: bool = False) -> Path:
    """``result.json``, ``report.md`` and ``figures/clusters.png`` for a ClusterAnalyzer's result."""
    from ..types import jsonable

    check_output_dir(out, force)
    res = as_result(result)
    art = res.artifacts
    doc = jsonable({
        **result_head("clustering", res, provenance),
        "clusters": res.tables["clusters"],
        "assignments": {"names": art["names"], "cluster": art["labels"], "category": art["categories"]},
    })
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        fig = _cluster_figure(art["labels"], art["categories"], tmp / "figures")
        (tmp / "report.md").write_text(_cluster_markdown(doc, fig))
    return Path(out)


def _cluster_figure(labels: Any, categories: Any, fig_dir: Path) -> str | None:
    if categories is None:
        return None
    plt = pyplot()

    cats = sorted(set(categories))
    clusters = sorted(set(np.asarray(labels).tolist()))
    M = np.zeros((len(clusters), len(cats)))
    for c, lab in zip(labels, categories):
        M[clusters.index(c), cats.index(lab)] += 1
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(cats), 1 + 0.35 * len(clusters)))
    ax.imshow(M / M.sum(1, keepdims=True), cmap="Blues", aspect="auto", vmin=0, vmax=1)
    for i in range(len(clusters)):
        for j in range(len(cats)):
            ax.text(j, i, int(M[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cats)), [category_label(c) for c in cats], fontsize=8)
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
        L += [f"- **{k.replace('_', ' ')}**: {verdict(v)}" for k, v in m.items()] + [""]
    if fig:
        L += [f"![clusters](figures/{fig})", ""]
    L += ["## Clusters", "", "| cluster | size | categories | logit lens (promoted tokens) | rows nearest the centroid |",
          "|---|---|---|---|---|"]
    for c in doc["clusters"]:
        cats = ", ".join(f"{category_label(k)} {s:.0%}" for k, s in c.get("categories", []))
        lens = ", ".join(repr(str(t).replace("▁", " ").replace("Ġ", " ")) for t, _ in c.get("logit_lens", [])[:6])
        L.append(f"| {c['cluster']} | {c['size']} | {cats} | {lens} | {', '.join(map(str, c['nearest_centroid'][:6]))} |")
    L += ["", "## Provenance", "", "Model, SAE, word list, assignments and package versions are in `result.json`."]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------------------------
# Steering
