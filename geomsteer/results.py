"""What the notebook API returns: one result object per analysis, the same numbers the CLI writes.

Every result has ``.table()`` (pandas DataFrames), ``.statistics()`` (each statistic in the shared
shape: observed, ci95, null, effect size, p-value, n), ``plot_*`` methods that return matplotlib
figures, ``_repr_html_`` (a compact summary with the nulls, shown by Jupyter) and ``.save(dir)``,
which writes exactly what the command line writes for the same arguments.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .types import AnalysisResult

__all__ = ["Result", "AnalyzerResult", "HierarchyResult", "SimilarityResult", "MapperResult", "ClusterResult", "SteeringResult",
           "VectorsResult", "HierarchyLayersResult", "SaeResult", "FeatureCard", "CategoryDirections", "find_statistics"]

Writer = Callable[[Path, bool, Sequence[str] | None], Path]


def _is_statistic(v: Any) -> bool:
    return isinstance(v, Mapping) and "observed" in v and "null" in v


def find_statistics(tree: Any, prefix: str = "") -> dict[str, dict]:
    """Every statistic (a dict with ``observed`` and ``null``) in a nested metrics tree, by its path
    (a ``statistics`` level adds nothing to the path)."""
    if _is_statistic(tree):
        return {prefix or "statistic": dict(tree)}
    out: dict[str, dict] = {}
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            name = prefix if k == "statistics" else (f"{prefix}.{k}" if prefix else str(k))
            out.update(find_statistics(v, name))
    return out


def _num(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return format(float(x), spec)


class Result:
    """An analysis's numbers, where they came from, and how to write them as the CLI does."""

    kind = "result"
    default_table: str | None = None

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer):
        self.result = result
        self.provenance = dict(provenance)
        self._writer = writer

    # -- numbers ---------------------------------------------------------------------------
    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.result.metrics

    @property
    def params(self) -> Mapping[str, Any]:
        return self.result.params

    def statistics(self) -> dict[str, dict]:
        """Each statistic in the shared shape, keyed by where it sits in the metrics."""
        return find_statistics(self.result.metrics)

    def table(self, name: str | None = None) -> Any:
        """A table as a pandas DataFrame: ``name`` is one of :attr:`tables` (default: the main one) or
        ``"statistics"`` (one row per statistic with its most conservative null)."""
        import pandas as pd

        name = name or self.default_table or "statistics"
        if name == "statistics":
            return self.statistics_table()
        if name not in self.result.tables:
            from .errors import ConfigError

            raise ConfigError(f"no table {name!r}: this result has {', '.join(['statistics', *self.tables])}")
        rows = self.result.tables[name]
        if isinstance(rows, Mapping):
            rows = [{"key": k, **(v if isinstance(v, Mapping) else {"value": v})} for k, v in rows.items()]
        return pd.json_normalize(list(rows), max_level=1) if rows else pd.DataFrame()

    @property
    def tables(self) -> list[str]:
        return list(self.result.tables)

    def conclusions(self, alpha: float = 0.01) -> list[str]:
        """One line per statistic: its value and whether it stands beyond every null (p < ``alpha``), is not
        distinguishable from one, or goes the opposite way."""
        from .reports.common import fmt, verdict

        return [f"{name} = {fmt(st.get('observed'))}: {verdict(st, alpha).replace('**', '')}"
                for name, st in self.statistics().items()]

    def statistics_table(self) -> Any:
        """One row per statistic: observed, 95% CI, its most conservative null (mean, sd, draws), effect size, p, n."""
        import pandas as pd

        rows = []
        for name, st in self.statistics().items():
            null_name = st.get("conservative_null") or next(iter(st.get("null") or {}), None)
            null = (st.get("null") or {}).get(null_name, {}) if null_name else {}
            ci = st.get("ci95") or [None, None]
            rows.append({"statistic": name, "observed": st.get("observed"), "ci95_low": ci[0], "ci95_high": ci[1],
                         "null": null_name, "null_mean": null.get("mean"), "null_sd": null.get("sd"),
                         "null_draws": null.get("n_draws"), "effect_size": st.get("effect_size"),
                         "p_value": st.get("p_value"), "n": st.get("n")})
        return pd.DataFrame(rows, columns=["statistic", "observed", "ci95_low", "ci95_high", "null", "null_mean",
                                           "null_sd", "null_draws", "effect_size", "p_value", "n"])

    # -- writing ---------------------------------------------------------------------------
    def save(self, out: str | Path, force: bool = False, command: Sequence[str] | None = None) -> Path:
        """Write what the CLI writes (result.json, report.md, figures/, ...) into ``out``.

        ``out`` must not exist unless ``force``; it is written in a temporary directory and renamed
        into place, so an interrupt leaves nothing half-written."""
        from .reports.common import check_output_dir

        check_output_dir(Path(out), force)
        return self._writer(Path(out), force, command)

    # -- display ---------------------------------------------------------------------------
    def summary_lines(self) -> list[str]:
        return []

    def plot_statistics(self, max_rows: int = 30) -> Any:
        """Each statistic against its most conservative null: observed value, null mean ± 2 sd, 95% CI."""
        from .reports.common import pyplot

        plt = pyplot()
        df = self.statistics_table().head(max_rows)
        fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(df), 2) + 1))
        y = np.arange(len(df))[::-1]
        for yi, (_, r) in zip(y, df.iterrows()):
            if r["null_mean"] is not None and np.isfinite(r["null_mean"] or np.nan):
                sd = r["null_sd"] if r["null_sd"] is not None and np.isfinite(r["null_sd"]) else 0.0
                ax.plot([r["null_mean"] - 2 * sd, r["null_mean"] + 2 * sd], [yi, yi], color="0.7", lw=6,
                        solid_capstyle="butt", label="null mean ± 2 sd" if yi == y[0] else None)
            if r["ci95_low"] is not None and np.isfinite(r["ci95_low"] or np.nan):
                ax.plot([r["ci95_low"], r["ci95_high"]], [yi, yi], color="C0", lw=1.5)
            if r["observed"] is not None:
                ax.plot([r["observed"]], [yi], "o", color="C0", label="observed [95% CI]" if yi == y[0] else None)
        ax.set_yticks(y)
        ax.set_yticklabels([str(s) for s in df["statistic"]], fontsize=8)
        ax.set_title(f"{self.kind}: statistics against their most conservative null")
        if len(df):
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        head = f"<b>geomsteer {html.escape(self.kind)}</b>"
        lines = "".join(f"<div>{html.escape(s)}</div>" for s in self.summary_lines())
        df = self.statistics_table()
        if len(df):
            cells = []
            for _, r in df.iterrows():
                ci = (f"[{_num(r['ci95_low'])}, {_num(r['ci95_high'])}]" if r["ci95_low"] is not None
                      and r["ci95_high"] is not None else "")
                null = (f"{html.escape(str(r['null']).replace('_', ' '))}: {_num(r['null_mean'])} ± "
                        f"{_num(r['null_sd'])} ({_num(r['null_draws'])})" if r["null"] else "no null")
                cells.append(f"<tr><td style='text-align:left'>{html.escape(str(r['statistic']))}</td>"
                             f"<td>{_num(r['observed'])} {ci}</td><td>{null}</td><td>{_num(r['effect_size'], '+.2f')}</td>"
                             f"<td>{_num(r['p_value'], '.2g')}</td><td>{_num(r['n'])}</td></tr>")
            table = ("<table><thead><tr><th>statistic</th><th>observed [95% CI]</th><th>null mean ± sd (draws)</th>"
                     "<th>effect (sd)</th><th>p</th><th>n</th></tr></thead><tbody>" + "".join(cells)
                     + "</tbody></table>")
        else:
            table = "<div><i>no statistics with nulls in this result</i></div>"
        tables = ", ".join(["statistics", *self.tables])
        return (f"<div class='geomsteer-result'>{head}{lines}{table}<div style='color:#666;font-size:85%'>"
                f".table(name) for {html.escape(tables)}; .save(dir) writes the CLI's report</div></div>")

    def __repr__(self) -> str:
        lines = [f"<geomsteer {self.kind}>", *("  " + s for s in self.summary_lines())]
        for name, st in list(self.statistics().items())[:12]:
            null_name = st.get("conservative_null") or next(iter(st.get("null") or {}), None)
            null = (st.get("null") or {}).get(null_name, {}) if null_name else {}
            lines.append(f"  {name}: {_num(st.get('observed'))} vs {null_name or 'no null'} {_num(null.get('mean'))}"
                         f" ± {_num(null.get('sd'))}, p {_num(st.get('p_value'), '.2g')}")
        return "\n".join(lines)


class HierarchyResult(Result):
    """Park et al.'s hierarchy analysis of one model's unembedding (``gs.hierarchy``)."""

    kind = "hierarchy"
    default_table = "categories"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, analyzer: Any,
                 hierarchy: Any):
        super().__init__(result, provenance, writer)
        self.analyzer = analyzer
        self.hierarchy = hierarchy

    @property
    def directions(self) -> "CategoryDirections":
        """Category name -> its direction (numpy vector) in the whitened unembedding space."""
        art = self.result.artifacts
        return CategoryDirections(art["names"], art["directions"].vectors)

    def summary_lines(self) -> list[str]:
        p = self.provenance
        return [f"{p.get('model')}: {len(self.analyzer.names_)} WordNet categories ({p.get('pos', 'noun')}s with more "
                f"than {p.get('min_tokens')} single tokens), seed {p.get('seed')}, {p.get('null_draws')} draws per null"]

    def plot_concept_plane(self, parent: str = "animal.n.01", child: str = "mammal.n.01", *others: str) -> Any:
        """Tokens of ``child``, ``others`` and ``parent`` in the plane of ℓ_parent and ℓ_child − ℓ_parent."""
        from .reports.hierarchy import concept_plane_figure

        return concept_plane_figure(self.result, self.hierarchy, parent, child, [child, *others, parent])

    def plot_orthogonality(self) -> Any:
        """|cos| per edge and per sibling pair on the data beside each null's distribution."""
        from .reports.hierarchy import orthogonality_figure

        return orthogonality_figure(self.result)

    def plot_simplex(self, a: str, b: str, c: str, held_out: bool = True) -> Any:
        """Three sibling categories' vectors and their held-out tokens in the 3-D span of the vectors."""
        from .reports.hierarchy import simplex_figure

        return simplex_figure(self.result, self.hierarchy, [a, b, c], held_out)

    def plot_cosine(self) -> Any:
        """The cosine matrix of the category vectors in tree order, beside tree similarity."""
        from .reports.hierarchy import cosine_figure

        return cosine_figure(self.result, self.hierarchy)

    def conclusions(self) -> list[str]:
        """One line per statistic: its value and whether it stands beyond every null (p < 0.01)."""
        from .reports.hierarchy import conclusions

        return conclusions(self.result)


class HierarchyLayersResult(Result):
    """Park et al.'s statistics at each layer of the residual stream (``gs.hierarchy(model, layers=...)``)."""

    kind = "hierarchy_layers"
    default_table = "by_layer"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, analyzer: Any,
                 hierarchy: Any):
        super().__init__(result, provenance, writer)
        self.analyzer = analyzer
        self.hierarchy = hierarchy

    def directions(self, layer: int | str) -> "CategoryDirections":
        """Category name -> its direction at ``layer`` (a block number or hook name), in the residual stream."""
        from .hooks import resid_hook

        key = resid_hook(layer) if isinstance(layer, (int, np.integer)) else str(layer)
        art = self.result.artifacts
        if key not in art["directions"]:
            from .errors import ConfigError

            raise ConfigError(f"no layer {layer!r} in this result: it has {', '.join(art['directions'])}")
        return CategoryDirections(art["names"], art["directions"][key])

    def emergence(self, alpha: float = 0.01) -> dict[str, dict[str, Any]]:
        """Per statistic: the first layer beyond its most conservative null (Holm across layers) and the layer of
        its largest effect."""
        from .reports.hierarchy_layers import emergence

        return emergence(self.result.tables["by_layer"], alpha)

    def plot_by_layer(self) -> Any:
        """Each statistic by layer beside its most conservative null (mean ± 2 sd)."""
        from .reports.hierarchy_layers import by_layer_figure, doc_of

        return by_layer_figure(doc_of(self.result, self.provenance))

    def summary_lines(self) -> list[str]:
        p = self.result.provenance
        return [f"{self.provenance.get('model')}: {p.get('n_categories')} WordNet categories at {p.get('n_layers')} "
                f"layers, {p.get('n_tokens_read')} tokens read"]


class CategoryDirections(Mapping):
    """Read-only mapping from a category's name to its direction vector."""

    def __init__(self, names: Sequence[str], vectors: np.ndarray):
        self._index = {n: i for i, n in enumerate(names)}
        self.names = list(names)
        self.vectors = vectors

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._index:
            from .errors import ConfigError

            near = [n for n in self.names if n.split(".")[0] == str(name).split(".")[0]][:5]
            raise ConfigError(f"no direction for {name!r}: expected one of the {len(self.names)} categories"
                              + (f", e.g. {', '.join(near)}" if near else " (see .names)"))
        return np.asarray(self.vectors[self._index[name]])

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def get(self, name: str, default: Any = None) -> Any:
        return self[name] if name in self._index else default

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"<{len(self)} directions of size {self.vectors.shape[1]}: {', '.join(self.names[:4])}, ...>"


class SimilarityResult(Result):
    """Word-aligned cross-model similarity (``gs.similarity``)."""

    kind = "similarity"
    default_table = "best_pairs"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, analyzer: Any,
                 matcher: Any = None):
        super().__init__(result, provenance, writer)
        self.analyzer = analyzer
        self.matcher = matcher

    def statistics(self) -> dict[str, dict]:
        out = find_statistics(self.result.metrics)
        if self.matcher is not None:
            out.update({f"features.{k}": v for k, v in find_statistics(self.matcher.result().metrics).items()})
        return out

    def summary_lines(self) -> list[str]:
        w = self.provenance.get("words", {})
        return [f"{' vs '.join(self.provenance.get('layers', {}))}: {w.get('used', 0):,} words aligned "
                f"({w.get('dropped_from_both', 0):,} dropped)"]

    def plot_scan(self, metric: str = "linear_cka_debiased", scan: str = "cross") -> Any:
        """Layer x layer heatmap of one scanned metric (``scan``: cross, within_a or within_b)."""
        from .errors import ConfigError
        from .reports.common import pyplot

        scans = self.result.artifacts["scans"]
        if scan not in scans or metric not in scans[scan]:
            have = {k: list(v) for k, v in scans.items()}
            raise ConfigError(f"no {scan} scan of {metric!r}: the scans are {have}")
        from .reports.common import short_hook

        S = scans[scan][metric]
        panels = [("observed", S["score"])] + [(f"null: {k.replace('_', ' ')}", S[k]) for k in ("permutation",
                                                                                               "random_model") if k in S]
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.4), squeeze=False)
        lo = min(np.nanmin(np.asarray(M, dtype=float)) for _, M in panels)
        hi = max(np.nanmax(np.asarray(M, dtype=float)) for _, M in panels)
        models = list(self.provenance.get("layers", {}))
        layers = self.result.provenance.get("layers", {})
        for ax, (title, M) in zip(axes[0], panels):
            im = ax.imshow(np.asarray(M, dtype=float), origin="lower", aspect="auto", cmap="viridis", vmin=lo, vmax=hi)
            if scan == "cross" and len(models) == 2:
                ax.set_xlabel(f"{models[1]} layer")
                ax.set_ylabel(f"{models[0]} layer")
                la, lb = layers.get("a"), layers.get("b")
                if la and lb:
                    ax.set_xticks(range(len(lb)), [short_hook(h) for h in lb], fontsize=7)
                    ax.set_yticks(range(len(la)), [short_hook(h) for h in la], fontsize=7)
            ax.set_title(f"{metric.replace('_', ' ')}, {scan.replace('_', ' ')}: {title}", fontsize=9)
        fig.colorbar(im, ax=list(axes[0]), label=metric)
        return fig


class TransferResult(Result):
    """A steering vector carried from model A into model B, and matched SAE features intervened on in both
    (``gs.transfer.run``)."""

    kind = "transfer"
    default_table = "vectors"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, analyzer: Any = None):
        super().__init__(result, provenance, writer)
        self.analyzer = analyzer

    def figures(self) -> dict[str, Any]:
        """The figures the saved report holds (name -> matplotlib Figure)."""
        from .reports.transfer import transfer_figures

        return transfer_figures(self.result, None)

    def summary_lines(self) -> list[str]:
        p, lay = self.provenance, self.result.metrics.get("layers", {})
        return [f"{p.get('model_a')} {lay.get('a')} -> {p.get('model_b')} {lay.get('b')} "
                f"(B's best layer by debiased CKA: {lay.get('best_b_by_debiased_cka')})"]


class AnalyzerResult(Result):
    """A result that keeps the fitted analyzer it came from (``.analyzer``), for its report and plots."""

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, analyzer: Any):
        super().__init__(result, provenance, writer)
        self.analyzer = analyzer


class MapperResult(AnalyzerResult):
    """A Mapper complex of concept words with the SAE feature space as filter (``gs.mapper``)."""

    kind = "mapper"
    default_table = "nodes"

    def graph(self, height: int = 680) -> "HtmlPage":
        """The interactive Mapper graph (what mapper.html holds) to show inline in Jupyter: hover a node for
        its size, concepts and examples."""
        from .reports.topology import mapper_page

        return HtmlPage(mapper_page(self.result, self.provenance), height)

    def plot_lens(self) -> Any:
        """The lens (the first two dimensions), one point per word, coloured by its concept."""
        from .reports.common import category_label, pyplot

        plt = pyplot()
        art = self.result.artifacts
        lens, labels = np.asarray(art["lens"]), list(art["labels"])
        y = lens[:, 1] if lens.shape[1] > 1 else np.zeros(len(lens))
        fig, ax = plt.subplots(figsize=(6, 5))
        for c in sorted(set(labels)):
            idx = [i for i, lab in enumerate(labels) if lab == c]
            ax.scatter(lens[idx, 0], y[idx], s=4, alpha=0.5, label=category_label(c))
        ax.set_xlabel("lens 1")
        ax.set_ylabel("lens 2" if lens.shape[1] > 1 else "")
        ax.set_title(f"{self.params.get('lens')} lens of the SAE codes")
        ax.legend(fontsize=7, markerscale=3)
        fig.tight_layout()
        return fig

    def summary_lines(self) -> list[str]:
        kg = self.metrics.get("kmapper_graph", {})
        return [f"{self.provenance.get('words_used', 0):,} words at {self.provenance.get('hook')}: {kg.get('nodes')} "
                f"nodes, {kg.get('edges')} edges, {kg.get('components')} component(s)"]


class HtmlPage:
    """A self-contained HTML page shown inline in Jupyter (in an iframe, so its script and style stay its own)."""

    def __init__(self, page: str, height: int = 680):
        self.page = page
        self.height = height

    def _repr_html_(self) -> str:
        import html

        return (f'<iframe srcdoc="{html.escape(self.page, quote=True)}" style="width:100%;height:{self.height}px;'
                'border:1px solid #ddd"></iframe>')

    def save(self, path: str | Path) -> Path:
        """Write the page to ``path`` (a file; written whole or not at all)."""
        from . import _atomic

        _atomic.write_text(Path(path), self.page)
        return Path(path)


class ClusterResult(AnalyzerResult):
    """k-means of concept words or SAE features scored against WordNet (``gs.cluster``)."""

    kind = "cluster"
    default_table = "clusters"

    def summary_lines(self) -> list[str]:
        return [f"{self.provenance.get('rows')} at {self.provenance.get('hook')}"]


class SteeringResult(Result):
    """A steering step: apply, sweep, decompose or propagate (``gs.steer.*``)."""

    kind = "steering"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer):
        super().__init__(result, provenance, writer)
        self.kind = result.analyzer
        self.default_table = {"steering_apply": "generations", "steering_sweep": "grid",
                              "steering_decomposition": "features", "steering_propagation": "grid",
                              "steering_hierarchy": "matched", "steering_erasure": "auc"}.get(
            result.analyzer)

    def plot_dose_response(self) -> Any:
        """For a sweep: the target log-odds shift against the multiplier at each hook, with the random
        directions' mean ± sd as a band."""
        from .errors import ConfigError
        from .reports.common import pyplot, short_hook

        if self.result.analyzer != "steering_sweep":
            raise ConfigError(f"plot_dose_response needs a sweep (gs.steer.sweep), this is {self.result.analyzer}")
        plt = pyplot()
        grid = self.result.tables["grid"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for h in dict.fromkeys(r["hook"] for r in grid):
            rows = [r for r in grid if r["hook"] == h]
            a = [r["alpha"] for r in rows]
            ax.errorbar(a, [r["logodds_shift"] for r in rows], yerr=[r["logodds_shift_sem"] for r in rows], fmt="o-",
                        label=short_hook(h))
            mean = np.array([r["random_logodds_shift"] for r in rows])
            sd = np.array([r["random_logodds_shift_sd"] for r in rows])
            ax.fill_between(a, mean - sd, mean + sd, alpha=0.2)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("multiplier")
        ax.set_ylabel("shift of the target log-odds")
        ax.set_title("dose response (band: covariance directions, mean ± sd)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def figures(self) -> dict[str, Any]:
        """The figures the saved report holds (name -> matplotlib Figure): the dose response, KL and nulls of a
        sweep, the explained fraction and steering effects of a decomposition, the layer x multiplier counts
        of a propagation."""
        from .reports.steering import steering_figures

        return steering_figures(self.result.analyzer, self.result, self.provenance)

    def summary_lines(self) -> list[str]:
        p = self.provenance
        return [f"{p.get('model')}, vector {p.get('vectors') or '(in memory)'}"
                + (f", {p.get('n_prompts')} prompts" if p.get("n_prompts") else "")]


class FeatureResult(Result):
    """A causal feature experiment: dose curves, the feature graph, steering by features, or the relations
    of the features a vector changes (``gs.features.*``)."""

    kind = "features"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, analyzer: Any = None):
        super().__init__(result, provenance, writer)
        self.kind = result.analyzer
        self.analyzer = analyzer
        self.default_table = {"feature_dose": "dose", "feature_graph": "edges", "feature_compare": "methods",
                              "feature_relations": "features", "sae_labels": "labels"}.get(
            result.analyzer)

    def figures(self) -> dict[str, Any]:
        """The figures the saved report holds (name -> matplotlib Figure)."""
        from .reports.features import feature_figures

        return feature_figures(self.result.analyzer, self.result, self.provenance)

    def graph(self) -> Any:
        """For a graph: the kept edges as a networkx DiGraph (what graph.graphml holds)."""
        from .errors import ConfigError

        if self.result.analyzer != "feature_graph" or self.analyzer is None:
            raise ConfigError(f"graph() needs a feature graph (gs.features.graph), this is {self.result.analyzer}")
        return self.analyzer.graph()

    def summary_lines(self) -> list[str]:
        p, m = self.provenance, self.result.metrics
        lines = [f"{p.get('model')}, interventions at {p.get('hook')}, read at {', '.join(p.get('later_hooks', []))}"
                 if p.get("later_hooks") else f"{p.get('model')}, SAE at {p.get('hook')}"]
        if m.get("verdict"):
            lines.append(m["verdict"])
        return lines


class VectorsResult(Result):
    """Steering vectors at several layers (``gs.steer.compute``); ``.vectors`` maps hook -> SteeringVector."""

    kind = "steering_compute"
    default_table = "per_hook"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, vectors: dict):
        super().__init__(result, provenance, writer)
        self.vectors = vectors

    def table(self, name: str | None = None) -> Any:
        import pandas as pd

        if (name or self.default_table) == "per_hook":
            return pd.DataFrame([{"hook": h, **{k: v for k, v in s.items() if not isinstance(v, (dict, list))}}
                                 for h, s in self.metrics["per_hook"].items()])
        return super().table(name)

    def __getitem__(self, hook: str) -> Any:
        return self.vectors[hook]

    def summary_lines(self) -> list[str]:
        return [f"{len(self.vectors)} vector(s) on {self.provenance.get('model')} from {self.provenance.get('n_pairs')} "
                f"pairs: " + ", ".join(f"{h} (norm {v.norm:.1f})" for h, v in self.vectors.items())]


class SaeResult(Result):
    """A trained SAE and its held-out quality (``gs.sae.train``); ``.sae`` is the SAELens SAE."""

    kind = "sae"

    def __init__(self, result: AnalysisResult, provenance: Mapping[str, Any], writer: Writer, sae: Any):
        super().__init__(result, provenance, writer)
        self.sae = sae

    def table(self, name: str | None = None) -> Any:
        import pandas as pd

        if name in (None, "metrics"):
            return pd.DataFrame([{"metric": k, "value": v} for k, v in self.metrics.items()
                                 if isinstance(v, (int, float))])
        return super().table(name)

    def summary_lines(self) -> list[str]:
        m, p = self.metrics, self.provenance
        return [f"{p.get('architecture')} SAE, {p.get('d_sae')} latents at {p.get('hook')} of {p.get('model')}: "
                f"L0 {_num(m.get('l0'))}, variance explained {_num(m.get('fraction_variance_explained'))}, "
                f"CE loss recovered {_num(m.get('ce_loss_recovered'))}, dead {_num(m.get('dead_fraction'))}"]


class FeatureCard(Result):
    """One SAE feature: density, top contexts, logit lens (``gs.sae.inspect``); renders as its HTML card."""

    kind = "feature"
    default_table = "contexts"

    def __init__(self, card: Mapping[str, Any], writer: Writer):
        res = AnalysisResult(analyzer="feature", params={"feature": card["feature"]}, provenance=card["provenance"],
                             metrics={"density": card["density"]},
                             tables={"contexts": [{"activation": c["activation"], "text": _context_text(c)}
                                                  for c in card["contexts"]],
                                     "logit_lens": [{"direction": k, "token": t, "score": s}
                                                    for k, v in card["logit_lens"].items() for t, s in v]})
        super().__init__(res, card["provenance"], writer)
        self.card = dict(card)

    def save(self, out: str | Path, force: bool = False, command: Sequence[str] | None = None) -> Path:
        """Write the card as a self-contained HTML file at ``out`` (a file path; a card there is replaced)."""
        return self._writer(Path(out), force, command)

    def _repr_html_(self) -> str:
        from .reports import card_html

        return card_html(self.card)

    def summary_lines(self) -> list[str]:
        d = self.card["density"]
        return [f"feature {self.card['feature']} of {self.card['sae']} ({self.card['hook']}): fires on "
                f"{d['fraction']:.3%} of {d['n_tokens']:,} held-out tokens, max {d['max']:.2f}"]


def _context_text(c: Mapping[str, Any]) -> str:
    text = "".join((f"[{t}]" if j == c["firing"] else t) for j, (t, _) in enumerate(c["tokens"]))
    return text.replace("▁", " ").replace("Ġ", " ").strip()
