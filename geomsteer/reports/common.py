"""Shared by every report: output checks, package versions, number formats, the statistics table, figures."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import OutputExistsError


_PACKAGES = ["geomsteer", "numpy", "scipy", "scikit-learn", "torch", "transformers", "transformer-lens",
             "sae-lens", "networkx", "safetensors", "matplotlib"]


def check_parent_dirs(out: Path, option: str = "--out") -> None:
    """Refuse an output path that sits under an existing file (``runs/x.json/out``)."""
    for parent in Path(out).parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{option} {str(out)!r} is under {str(parent)!r}, which is a file, not a "
                                        f"directory; choose an {option} whose parent directories are directories")
            break


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to touch an existing output directory unless ``force``, or a path under a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {str(out)!r} is a file, not a directory; choose another --out")
    if out.exists() and not force:
        raise OutputExistsError(
            f"output directory {str(out)!r} already exists: expected a new directory; "
            "choose another --out, or pass --force to replace it"
        )
    check_parent_dirs(out)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, (float, np.floating)):
        return "nan" if not np.isfinite(x) else f"{x:.{nd}f}"
    return str(x)


# --------------------------------------------------------------------------------------------
# Hierarchy


def category_label(name: str) -> str:
    return name.split(".")[0].replace("_", " ")


def fmt_p(p: Any) -> str:
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
        obs = fmt(st.get("observed")) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")
        cells = []
        for n in nulls:
            nd = st.get("null", {}).get(n)
            cells.append(f"{fmt(nd['mean'])} ± {fmt(nd['sd'])} ({nd['n_draws']})" if nd else "–")
        alt = {"greater": ">", "less": "<", "two-sided": "≠"}.get(st.get("alternative", ""), "")
        rows.append(f"| {k.replace('_', ' ')} ({alt} null) | {st.get('n')} | {obs} | " + " | ".join(cells)
                    + f" | {fmt(st.get('effect_size'), 1)} | {fmt_p(st.get('p_value'))} |")
    return rows


def verdict(st: Mapping[str, Any], alpha: float = 0.01) -> str:
    p, e = st.get("p_value"), st.get("effect_size")
    if p is None:
        return "no null computed"
    null = st.get("conservative_null", "").replace("_", " ")
    if p < alpha:
        return f"beyond every null (p {fmt_p(p)}, effect {fmt(e, 1)} sd against {null})"
    alt = st.get("alternative")
    if e is not None and abs(e) > 2 and ((alt == "less" and e > 0) or (alt == "greater" and e < 0)):
        side = "further from 0" if alt == "less" else "lower"
        return (f"**the opposite of the prediction**: {side} than the {null} null (effect {fmt(e, 1)} sd, "
                f"p {fmt_p(p)} for the predicted direction)")
    return f"**not distinguishable** from the {null} null (p {fmt_p(p)}, effect {fmt(e, 1)} sd)"


def save_figure(fig: Any, fig_dir: Path | None, name: str, figs: dict[str, Any], key: str | None = None) -> None:
    """Save a matplotlib figure as figures/<name>, close it, and record it under ``key``.

    With ``fig_dir=None`` the figure itself is recorded, open (a result object drawing it in a notebook)."""
    import matplotlib.pyplot as plt

    if fig_dir is None:
        figs[key or name.rsplit(".", 1)[0]] = fig
        return
    fig.savefig(fig_dir / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    figs[key or name.rsplit(".", 1)[0]] = name


# --------------------------------------------------------------------------------------------
# Similarity


def short_hook(h: str) -> str:
    parts = h.split(".")
    return f"L{parts[1]}" if len(parts) > 2 and parts[0] == "blocks" else h


def result_head(kind: str, res: Any, provenance: Mapping[str, Any]) -> dict[str, Any]:
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
def pyplot():
    """matplotlib.pyplot, headless (Agg) unless a Jupyter kernel runs (its inline backend then shows figures)."""

    import matplotlib

    if "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def as_result(x: Any) -> Any:
    """The AnalysisResult a report reads: given as is, or taken from a fitted analyzer's ``result()``."""
    return x.result() if hasattr(x, "result") and callable(x.result) else x


def write_report(kind: str, res: Any, provenance: Mapping[str, Any], out: Path, figures: Any, markdown: Any, *,
                 force: bool = False, files: Mapping[str, bytes] | None = None) -> Path:
    """``result.json``, ``report.md``, ``figures/`` and any extra ``files``, staged and renamed into ``out``.

    ``figures(doc, fig_dir)`` draws and returns {name: file}; ``markdown(doc, figs)`` the report's text."""
    import json

    from .. import _atomic
    from ..types import jsonable

    check_output_dir(out, force)
    doc = jsonable({**result_head(kind, res, provenance), "tables": res.tables})
    with _atomic.staged_dir(Path(out), replace=force) as tmp:
        (tmp / "figures").mkdir()
        for name, blob in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(blob)
        (tmp / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
        figs = figures(doc, tmp / "figures") if figures else {}
        (tmp / "report.md").write_text(markdown(doc, figs))
    return Path(out)
