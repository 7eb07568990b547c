"""The steering reports (compute, apply, sweep, decompose, propagate): result.json, report.md, figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .common import category_label, write_report, fmt, pyplot, result_head, save_figure, short_hook, statistic_rows, verdict


def write_steering_report(kind: str, res: Any, provenance: Mapping[str, Any], out: Path, force: bool = False,
                          files: Mapping[str, bytes] | None = None) -> Path:
    """``result.json``, ``report.md``, ``figures/`` (and any extra ``files``) for a ``geomsteer steer`` step."""

    return write_report(kind, res, provenance, out, *_STEERING[kind], force=force, files=files)



def steering_figures(kind: str, res: Any, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The report's figures for a steering step, as open matplotlib figures (name -> Figure)."""
    from ..types import jsonable

    figures = _STEERING[kind][0]
    doc = jsonable({**result_head(kind, res, provenance), "tables": res.tables})
    return figures(doc, None) if figures else {}


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


def _compute_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
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
    save_figure(fig, fig_dir, "pairs.png", figs)
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
        L.append(f"| {h} | {fmt(s['norm'], 2)} | {fmt(s.get('random_sign_norm'), 2)} | "
                 f"{fmt(s.get('held_out_pair_accuracy'))} | {fmt(s.get('mean_cosine_with_vector'))} |")
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
    L += [f"- **{k.replace('_', ' ')}**: {verdict(st)}" for k, st in stats.items()] + [""]
    return L


def _sweep_null_figure(doc: Mapping[str, Any], fig_dir: Path | None, figs: dict[str, Any]) -> None:
    tested = [r for r in doc["tables"]["grid"] if r.get("null_shifts")]
    if not tested:
        return
    plt = pyplot()
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
    ax.set_xticks(range(len(tested)), [f"{short_hook(r['hook'])}\n×{r['alpha']:g}" for r in tested], fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set(ylabel="log-odds shift × sign of the multiplier")
    ax.set_title("the vector's shift among its null vectors' shifts", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, fig_dir, "nulls.png", figs)


def _sweep_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
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
                ax.errorbar(a, y, yerr=[r["logodds_shift_sem"] for r in rows], fmt="o-", color=c, label=short_hook(h),
                            capsize=2)
            else:
                ax.plot(a, y, "o-", color=c, label=short_hook(h))
            ax.plot(a, [r["random_" + key] for r in rows], ":", color=c, alpha=0.8)
            if key == "logodds_shift":
                mu = np.array([r["random_logodds_shift"] for r in rows])
                sd = np.array([r["random_logodds_shift_sd"] for r in rows])
                ax.fill_between(a, mu - sd, mu + sd, color=c, alpha=0.08, lw=0)
        ax.axhline(0, color="black", lw=0.5)
        ax.set(xlabel="multiplier", ylabel=ylabel)
        ax.set_title("solid: steering vector; dotted (band: ± sd): covariance directions of the same norm", fontsize=9)
        ax.legend(fontsize=8, title="layer", title_fontsize=8)
        save_figure(fig, fig_dir, name, figs)
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
    stats = {f"{short_hook(h)} {k}": st for h, s in m["per_hook"].items() for k, st in s.get("statistics", {}).items()}
    note = next((s.get("nulls_note") for s in m["per_hook"].values() if s.get("nulls_note")), None)
    L += _findings(stats, note)
    if "nulls" in figs:
        L += [f"![nulls](figures/{figs['nulls']})", ""]
    L += ["## Per layer", "",
          "| hook | vector norm | Spearman (multiplier, shift) | monotone | shift at max | random: mean (mean \\|shift\\|) "
          "| KL at max | random KL |", "|---|---|---|---|---|---|---|---|"]
    for h, s in m["per_hook"].items():
        L.append(f"| {h} | {fmt(s['vector_norm'], 1)} | {fmt(s['spearman_alpha_shift'])} | "
                 f"{'yes' if s['monotone'] else 'no'} | {fmt(s['shift_at_max_alpha'])} | "
                 f"{fmt(s['random_shift_at_max_alpha'])} ({fmt(s['random_abs_shift_at_max_alpha'])}) | "
                 f"{fmt(s['kl_at_max_alpha'])} | {fmt(s['random_kl_at_max_alpha'])} |")
    for key, title in (("dose_response", "Dose-response"), ("kl", "Side effects")):
        if key in figs:
            L += ["", f"![{title}](figures/{figs[key]})"]
    L += ["", "## Grid", "",
          "| hook | multiplier | log-odds shift ± sem | random ± sd | log p(pos) shift | log p(neg) shift | prompts moved "
          "with the sign | KL | random KL |", "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["tables"]["grid"]:
        L.append(f"| {r['hook']} | {r['alpha']:g} | {fmt(r['logodds_shift'])} ± {fmt(r['logodds_shift_sem'])} | "
                 f"{fmt(r['random_logodds_shift'])} ± {fmt(r['random_logodds_shift_sd'])} | {fmt(r['logp_positive_shift'])} | "
                 f"{fmt(r['logp_negative_shift'])} | {fmt(r['prompts_moved_with_sign'], 2)} | "
                 f"{fmt(r['kl_neutral'], 4)} | {fmt(r['random_kl_neutral'], 4)} |")
    if doc["tables"]["samples"]:
        L += ["", f"## Samples ({pr['max_new_tokens']} tokens, greedy)", ""]
        for s in doc["tables"]["samples"]:
            who = "unsteered" if s["hook"] is None else f"{s['hook']}, multiplier {s['alpha']:g}"
            L += [f"**{who}**", ""] + [f"- {_cell(t)}" for t in s["texts"]] + [""]
    return _tail(L)


def _tokens(pairs: Sequence[Any], n: int = 6) -> str:
    return ", ".join(repr(str(t).replace("▁", " ").replace("Ġ", " ")) for t, _ in list(pairs)[:n])


def _decompose_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
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
    save_figure(fig, fig_dir, "decomposition.png", figs)
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
          f"| sparse coding ({pr['k']} features) | {fmt(e['sparse_coding'])} | {fmt(e['sparse_coding_random_direction'])} |",
          f"| code difference | {fmt(e['code_difference'])} | {fmt(e['code_difference_random_direction'])} |",
          f"| encoder output of v, best rescaling (not a decomposition) | {fmt(e['encoder_output_not_a_decomposition'])} | |",
          "",
          f"Features whose mean code changes by more than 1% of the mean active code: {c['features_changed']} "
          f"(a covariance direction: {c['features_changed_random']}).", "",
          "## Does the reconstruction still steer?", "",
          "| added at the hook | log-odds shift | fraction of the vector's shift |", "|---|---|---|"]
    for k in ("vector", "sparse_coding", "code_difference"):
        L.append(f"| {k.replace('_', ' ')} | {fmt(eff[k]['logodds_shift'])} | {fmt(eff[k]['fraction_of_vector'])} |")
    r = eff["random"]
    L.append(f"| covariance directions of the vector's norm (mean ± sd of {r.get('n', 1)}) | {fmt(r['logodds_shift'])} ± "
             f"{fmt(r.get('sd', 0.0))} | {fmt(r['fraction_of_vector'])} |")
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


def _propagate_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
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
            labels.append(f"{short_hook(h)} f{f}")
    figs: dict[str, str] = {}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, max(3.2, 0.22 * len(labels) + 1)),
                                 gridspec_kw={"width_ratios": [1, 1.2]})
    im = a1.imshow(M, cmap="viridis", aspect="auto")
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            a1.text(j, i, f"{int(M[i, j])}\n({int(R[i, j])})", ha="center", va="center", fontsize=7,
                    color="white" if M[i, j] < M.max() / 2 else "black")
    a1.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    a1.set_yticks(range(len(hooks)), [short_hook(h) for h in hooks])
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
    save_figure(fig, fig_dir, "propagation.png", figs)
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
    stats = {k.split(":")[0] + " " + short_hook(k.split(":", 1)[1]): st for k, st in m.get("statistics", {}).items()}
    L += _findings(stats, p.get("nulls_note"))
    L += ["| SAE layer | " + " | ".join(f"changed at {a:g} (random)" for a in m["alphas"])
          + " | Spearman (multiplier, total change) |", "|---" * (len(m["alphas"]) + 2) + "|"]
    for h, s in m["per_layer"].items():
        cells = " | ".join(f"{c} ({r})" for c, r in zip(s["features_changed"], s["features_changed_random"]))
        L.append(f"| {h} | {cells} | {fmt(s['spearman_alpha_changed'])} |")
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


# --------------------------------------------------------------------------------------------- hierarchy


def _hierarchy_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    curves = doc["tables"]["curves"]
    pairs = list(doc["metrics"]["pairs"])
    figs: dict[str, Any] = {}
    if not pairs:
        return figs
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, key in zip(axes[0], pairs):
        pm = doc["metrics"]["pairs"][key]
        for i, t in enumerate(dict.fromkeys(r["vector"] for r in curves if r["pair"] == key)):
            rs = [r for r in curves if r["pair"] == key and r["vector"] == t]
            style = dict(color="0.5", ls="--") if t.startswith("random") else dict(color=f"C{i}")
            ax.plot([0] + [r["norm"] for r in rs], [0] + [r["child_gain"] for r in rs], marker="o", ms=3, label=t,
                    **{"ls": "-", **style})
        st = pm["statistics"]
        for i, t in enumerate(k.split(":", 1)[1] for k in st if k.startswith("child_gain:")):
            nd = st[f"child_gain:{t}"]["null"].get("nested_random_sets")
            if nd and nd["mean"] is not None:
                ax.errorbar([pm["ref_norm"] * (1 + 0.03 * i)], [nd["mean"]], yerr=[2 * (nd["sd"] or 0)], fmt="x",
                            color=f"C{i}", capsize=3)
        ax.axhline(doc["metrics"]["pairs"][key]["target_gain"], color="k", lw=0.5, ls=":")
        ax.set(xlabel="norm (x the words' spread)", ylabel="change in log p(child tokens)",
               title=f"{key} (x: nested random sets, mean ± 2 sd)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, fig_dir, "child_gain.png", figs)
    return figs


def _hierarchy_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, pr, m = doc["provenance"], doc["params"], doc["metrics"]
    L = _steer_title(doc, "along the WordNet hierarchy")
    L += [f"Vectors at {p['hook']} from {p['n_words_read']} words read after {pr['template']!r} ({p['n_categories']} "
          f"categories; {p['n_baseline_words']} words outside the tree are the contrastive vectors' negatives). "
          f"Each vector has unit norm and is added at every prompt token after the start token, at norms "
          f"{', '.join(map(str, pr['norms']))} x {fmt(p['norm_unit'], 1)} (the words' root-mean-square distance from "
          f"their mean activation); nulls compare at {pr['ref_norm']} x. Nulls: {p['nulls']['nested_random_sets']} (nested random sets), and "
          f"{p['nulls']['random_directions']} (random directions).", ""]
    for key, pm in m["pairs"].items():
        c = pm["clean"]
        L += [f"## {key} ({pm['parent']} → {pm['child']})", "",
              f"{pm['n_parent_tokens']} parent tokens, {pm['n_child_tokens']} child tokens; {len(pm['prompts'])} prompts "
              f"(e.g. {pm['prompts'][0]!r}). Unsteered: log p(child) {c['log_p_child']:.2f}, log p(parent's other "
              f"words) {c['log_p_siblings']:.2f}, log p(outside the parent) {c['log_p_outside']:.2f}.", ""]
        L += statistic_rows(pm["statistics"], list(pm["statistics"])) + [""]
        L += [f"- **{k.replace('_', ' ')}**: {verdict(st)}" for k, st in pm["statistics"].items()
              if k.startswith("child_gain") or k.startswith("child_share")] + [""]
        L += [f"At a matched gain of {pm['target_gain']:g} nat in log p(child) (interpolated along the norms):", "",
              "| vector | norm reaching it | change in log p(parent's other words) | change in log p(outside) | "
              "change in log p(child)/p(parent) |", "|---|---|---|---|---|"]
        for r in (r for r in doc["tables"]["matched"] if r["pair"] == key):
            L.append(f"| {r['vector']} | {fmt(r['norm_at_target'], 2) if r['norm_at_target'] is not None else 'not reached'} "
                     f"| {fmt(r['siblings_change'], 2)} | {fmt(r['outside_change'], 2)} | {fmt(r['child_share_gain'], 2)} |")
        L += ["", "Cosines between the vectors: " + ", ".join(f"{k.replace('|', ' · ')} {v:+.2f}"
                                                          for k, v in pm["cos_between_vectors"].items()), ""]
    if "child_gain" in figs:
        L += [f"![child gain](figures/{figs['child_gain']})", ""]
    caa = m["caa_orthogonality"]["statistics"]
    L += ["## Do CAA vectors obey Park et al.'s orthogonality?", "",
          "cos(v_parent, v_child − v_parent) with v_w = mean activation of w's words − mean of words outside the tree "
          "(Park et al. predict 0), over every edge of the tree and for each pair, against nested random sets.", ""]
    L += statistic_rows(caa, list(caa)) + [""]
    L += [f"- **{k.replace('_', ' ')}**: {verdict(st)}" for k, st in caa.items()]
    return _tail(L)


# --------------------------------------------------------------------------------------------- erasure


def _erasure_figures(doc: Mapping[str, Any], fig_dir: Path | None) -> dict[str, Any]:
    plt = pyplot()
    m, rows = doc["metrics"], doc["tables"]["auc"]
    cats = list(m["measured"])
    erased, nulls = m["erased"], list(m["null_categories"])
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    x = np.arange(len(layers))
    fig, axes = plt.subplots(1, len(cats), figsize=(3.6 * len(cats), 3.4), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cats):
        def curve(cond):
            by = {r["layer"]: r["auc"] for r in rows if r["category"] == c and r["condition"] == cond}
            return np.array([by[L] for L in layers])
        N = np.stack([curve(n) for n in nulls])
        mu, sd = N.mean(0), N.std(0, ddof=1)
        ax.fill_between(x, mu - 2 * sd, mu + 2 * sd, color="0.85", label="unrelated category erased (± 2 sd)")
        ax.plot(x, curve("clean"), "-o", ms=3, color="C0", label="clean")
        ax.plot(x, curve(erased), "-o", ms=3, color="C3", label=f"{category_label(erased)} erased")
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_title(f"{category_label(c)} ({m['measured'][c]['role']})", fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels([short_hook(L) for L in layers], fontsize=7)
    axes[0][0].set_ylabel("held-out probe AUC")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    figs: dict[str, Any] = {}
    save_figure(fig, fig_dir, "erasure_auc.png", figs)
    return figs


def _erasure_markdown(doc: Mapping[str, Any], figs: Mapping[str, str]) -> str:
    p, pr, m = doc["provenance"], doc["params"], doc["metrics"]
    L = _steer_title(doc, f"with {category_label(m['erased'])} erased")
    fr = p["fit_rows"][m["erased"]]
    L += [f"{m['erased']} erased at {p['hook']} with {p['method']}; eraser fit on {fr['rows']} words read after "
          f"{pr['template']!r} ({fr['members']} of them in the category: a sample of {p['n_fit_words']} words plus all "
          "the category's own). Measured: "
          + ", ".join(f"{c} ({v['role']}, {v['n_read']} of {v['n_tokens']} words)" for c, v in m["measured"].items())
          + f". Probe: {p['probe']}. Next-token mass after {len(p['prompts'])} prompts (e.g. {p['prompts'][0]!r}). "
          f"Null: {p['null']}: " + ", ".join(f"{c} ({n})" for c, n in m["null_categories"].items()) + ".", ""]
    if "erasure_auc" in figs:
        L += [f"![probe AUC](figures/{figs['erasure_auc']})", ""]
    st = m["statistics"]
    L += ["## What the erasure takes, against erasing an unrelated category", ""]
    L += statistic_rows(st, list(st)) + [""]
    L += ["| measured | clean | erased | |", "|---|---|---|---|"]
    for k, v in st.items():
        L.append(f"| {k} | {fmt(v.get('clean'))} | {fmt(v.get('erased'))} | {verdict(v)} |")
    return _tail(L)


_STEERING = {
    "steering_compute": (_compute_figures, _compute_markdown),
    "steering_apply": (None, _apply_markdown),
    "steering_sweep": (_sweep_figures, _sweep_markdown),
    "steering_decomposition": (_decompose_figures, _decompose_markdown),
    "steering_propagation": (_propagate_figures, _propagate_markdown),
    "steering_hierarchy": (_hierarchy_figures, _hierarchy_markdown),
    "steering_erasure": (_erasure_figures, _erasure_markdown),
}
