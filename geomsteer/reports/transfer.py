"""The report of ``geomsteer transfer``: result.json, report.md, figures/ and arrays.npz."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .common import fmt, pyplot, save_figure, short_hook, statistic_rows, verdict, write_report

__all__ = ["write_transfer_report", "transfer_figures"]


def write_transfer_report(res: Any, provenance: Mapping[str, Any], out: Path, force: bool = False) -> Path:
    """Write the report of a TransferAnalyzer's result; ``arrays.npz`` holds the per-prompt shifts, the null
    draws and the effect-similarity matrices behind the figures."""
    buf = io.BytesIO()
    arrays = {}
    for k, v in res.artifacts.items():
        if isinstance(v, Mapping):
            arrays.update({f"{k}/{kk}": np.asarray(vv) for kk, vv in v.items()})
        else:
            arrays[k] = np.asarray(v)
    np.savez_compressed(buf, **arrays)
    return write_report("transfer", res, provenance, Path(out), lambda doc, d: transfer_figures(res, d),
                        _markdown, force=force, files={"arrays.npz": buf.getvalue()})


def transfer_figures(res: Any, fig_dir: Path | None) -> dict[str, Any]:
    """transfer (fractions of B's own shift with the nulls), scan (CKA by B layer) and, with features,
    effects (matched vs re-paired vs shuffled words) and correlation_vs_effect."""
    plt = pyplot()
    figs: dict[str, Any] = {}
    m, art = res.metrics, res.artifacts
    base = art["base_shift"]
    names = list(m["transfer"])
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 3.8))
    for i, name in enumerate(names):
        st = m["transfer"][name]
        for j, (null, draws) in enumerate((k, v) for k, v in art["null_shifts"].items()
                                          if k == "random" or k.startswith(name + ":")):
            x = i + (-0.22 if null == "random" else 0.22)
            ax.plot(np.full(len(draws), x), np.asarray(draws) / base, "o", ms=3, alpha=0.5,
                    color="0.6" if null == "random" else "C1",
                    label=("random directions" if null == "random" else "shuffled map / matching") if i == 0 else None)
        ci = st.get("ci95") or [st["observed"], st["observed"]]
        ax.errorbar([i], [st["observed"]], yerr=[[st["observed"] - ci[0]], [ci[1] - st["observed"]]], fmt="s",
                    color="C0", ms=8, capsize=4, label="transferred [95% CI]" if i == 0 else None)
    ax.axhline(1.0, color="C2", lw=1, ls="--", label="B's own vector")
    ax.axhline(0.0, color="0.3", lw=0.5)
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_ylabel("target log-odds shift / B's own")
    ax.set_title("A's vector carried into B", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, fig_dir, "transfer.png", figs)

    scan = res.tables["scan"]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(range(len(scan)), [r["debiased_cka"] for r in scan], "o-")
    hb = m["layers"]["b"]
    at = [r["hook_b"] for r in scan].index(hb)
    ax.plot([at], [scan[at]["debiased_cka"]], "s", color="C3", ms=9, label=f"B's hook ({short_hook(hb)})")
    ax.set_xticks(range(len(scan)), [short_hook(r["hook_b"]) for r in scan], fontsize=7, rotation=90)
    ax.set_ylabel("debiased CKA")
    ax.set_title(f"A's {short_hook(m['layers']['a'])} against each layer of B", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, fig_dir, "scan.png", figs)

    if "effects" in m:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, mode in zip(axes, ("ablate", "add")):
            S = np.asarray(art[f"effect_similarity_{mode}"])
            off = S[~np.eye(len(S), dtype=bool)]
            bins = np.linspace(-1, 1, 41)
            ax.hist(off[np.isfinite(off)], bins=bins, density=True, color="0.7", label="unmatched (re-paired) pairs")
            d = np.diagonal(S)
            ax.hist(d[np.isfinite(d)], bins=bins, density=True, alpha=0.6, color="C0", label="matched pairs")
            if f"shuffled_word_pairs_{mode}" in art:
                w = np.asarray(art[f"shuffled_word_pairs_{mode}"])
                ax.hist(w[np.isfinite(w)], bins=bins, density=True, histtype="step", color="C1", lw=1.5,
                        label="matched pairs, words shuffled")
            else:  # results written before the per-pair shuffles were kept
                ax.axvline(float(np.nanmean(art[f"shuffled_words_{mode}"])), color="C1", ls="--",
                           label="shuffled words (mean)")
            st = m["effects"][mode]["effect_similarity"]
            ax.axvline(st["observed"], color="C0", lw=2)
            ax.set_xlabel("effect similarity (Pearson r over words)")
            ax.set_title(f"{mode}: matched mean {fmt(st['observed'])}", fontsize=10)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, fig_dir, "effects.png", figs)

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        C = np.asarray(art["activation_correlation"])
        for ax, mode in zip(axes, ("ablate", "add")):
            S = np.asarray(art[f"effect_similarity_{mode}"])
            off = ~np.eye(len(S), dtype=bool)
            ax.plot(C[off], S[off], ".", color="0.6", ms=3, label="unmatched pairs")
            ax.plot(np.diagonal(C), np.diagonal(S), "o", color="C0", ms=5, label="matched pairs")
            st = m["effects"][mode].get("correlation_predicts_effect")
            ax.set_xlabel("activation correlation")
            ax.set_ylabel("effect similarity")
            ax.set_title(f"{mode}: Spearman rho {fmt(st['observed'])}" if st else
                         f"{mode} (acts where features fire: co-firing shapes this)", fontsize=10)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, fig_dir, "correlation_vs_effect.png", figs)
    return figs


def _markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, m = doc["provenance"], doc["metrics"]
    lay = m["layers"]
    out = [f"# Transfer: {p['model_a']} -> {p['model_b']}", "",
           f"A's `{Path(str(p['pairs'])).stem}` vector at {lay['a']} carried into {p['model_b']} at {lay['b']} "
           f"(debiased CKA with A's layer {fmt(lay['debiased_cka_at_b'])}; B's best layer by that measure is "
           f"{lay['best_b_by_debiased_cka']}, {fmt(lay['debiased_cka_best'])}). Words aligned across the tokenizers: "
           f"{p['texts']['words_aligned']:,} in {p['texts']['maps']:,} held-out WordNet glosses.", ""]
    out += ["## Maps between the residual streams", "",
            *statistic_rows({f"{k} held-out R^2": v["heldout_r2"] for k, v in m["maps"].items()},
                            [f"{k} held-out R^2" for k in m["maps"]]), ""]
    out += ["## A's vector steering B", "",
            f"B is steered at multiplier {fmt(p['settings']['alpha'], 2)} with every vector at the norm of its "
            "own; each number is the target log-odds shift as a fraction of what B's own vector does.", "",
            *statistic_rows(m["transfer"], list(m["transfer"])), ""]
    for name, st in m["transfer"].items():
        out.append(f"- **{name.replace('_', ' ')}**: {fmt(st['observed'])} of B's own shift, {verdict(st)}.")
    out.append("")
    if "transfer" in figs:
        out += [f"![transfer](figures/{figs['transfer']})", ""]
    kl = [r for r in doc["tables"]["vectors"] if r.get("kl") is not None]
    if kl:
        out += ["Side effect on neutral text (mean KL from the unsteered B, nats per token; for a null, the mean "
                "± sd over its first vectors): "
                + ", ".join(f"{r['vector'].replace('_', ' ')} {fmt(r['kl'], 4)}"
                            + (f" ± {fmt(r['kl_sd'], 4)} ({r['n_vectors']})" if r.get("kl_sd") is not None else "")
                            for r in kl) + ".", ""]
    if "feature_route" in m:
        fr = m["feature_route"]
        out += [f"The feature route codes A's vector with {fr['atoms']} atoms of A's SAE (explaining "
                f"{fmt(fr['explained_by_atoms'])} of its squared norm); {fmt(fr['coefficient_mass_matched'])} of the "
                "coefficient mass falls on features with a partner in B.", ""]
    if "matching" in m:
        mt = m["matching"]
        out += ["## Matching the SAE features", "",
                f"Hungarian matching of the two SAEs' features on their activations over the aligned words: "
                f"{mt['n_pairs']:,} pairs, {mt['pairs_above_0.5']:,} with correlation of at least 0.5; beside the "
                "same matching with the words shuffled:", "",
                *statistic_rows({"all pairs, mean correlation": mt["mean_correlation"],
                                 "best pairs, mean correlation": mt["top_mean_correlation"]},
                                ["all pairs, mean correlation", "best pairs, mean correlation"]), ""]
    if "effects" in m:
        e = m["effects"]
        out += ["## Matched features, intervened on in both models", "",
                f"{len(doc['tables']['pairs'])} best-matched pairs (Hungarian matching on activation correlation), each "
                f"feature ablated and added in its own model; the change of each shared word's log-probability "
                f"compared across the models ({e['ablate']['effect_similarity'].get('n_words')} words).", "",
                *statistic_rows({f"{mode} {k.replace('_', ' ')}": e[mode][k] for mode in e for k in e[mode]},
                                [f"{mode} {k.replace('_', ' ')}" for mode in e for k in e[mode]]), ""]
        for mode in e:
            for k, st in e[mode].items():
                out.append(f"- **{mode}, {k.replace('_', ' ')}**: {fmt(st['observed'])}, {verdict(st)}.")
        out.append("")
        dist = doc["tables"].get("effect_distributions", [])
        if dist:
            out += ["Per-pair effect similarity by group (quantiles over pairs):", "",
                    "| intervention | pairs | n | mean | 10% | median | 90% |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['intervention']} | {r['pairs']} | {r['n']} | {fmt(r['mean'])} | {fmt(r['q10'])} | "
                    f"{fmt(r['q50'])} | {fmt(r['q90'])} |" for r in dist]
            out.append("")
        for key in ("effects", "correlation_vs_effect"):
            if key in figs:
                out += [f"![{key}](figures/{figs[key]})", ""]
    out += ["Arrays behind the figures: `arrays.npz`. Provenance (models, SAEs, texts, seeds, times): `result.json`.", ""]
    return "\n".join(out)
