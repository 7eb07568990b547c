"""Causal feature experiments: the lab's measurements, attribution against real ablation, the statistics on
noise and on planted effects, reports and bad input (tiny models; Gemma in test_features_gemma.py)."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from test_steering_analyzers import random_sae

from geomsteer.analyzers.features import FeatureCompare, FeatureDose, FeatureGraph, FeatureRelations
from geomsteer.errors import ConfigError, DataError
from geomsteer.interventions import intervene
from geomsteer.steering.evaluate import EvalPrompt
from geomsteer.steering.features import (
    CompareMeasurements,
    DoseMeasurements,
    Effect,
    FeatureLab,
    GraphMeasurements,
    RelationMeasurements,
    _ablation_deltas,
    matched_features,
    measure_compare,
    measure_dose,
    measure_graph,
    measure_relations,
)

H = [f"blocks.{i}.hook_resid_post" for i in range(3)]
ITEMS = [EvalPrompt("The film was", (" good",), (" bad",)), EvalPrompt("I think it is", (" great",), (" awful",)),
         EvalPrompt("Overall the meal was", (" good",), (" bad",))]
NEUTRAL = ["A bird in the hand is worth two in the bush.", "Water boils at a hundred degrees.",
           "The river runs to the sea.", "A word of three letters."]


@pytest.fixture(scope="module")
def lab():
    m = tiny_model(n_layers=3, d_model=16, seed=5)
    saes = {h: random_sae(16, 48, h, k=4, seed=i) for i, h in enumerate(H)}
    return FeatureLab(m, saes, H[0], ITEMS, NEUTRAL)


def test_the_clean_run_measures_nothing_and_frequencies_are_shares_of_tokens(lab):
    e = lab.measure()
    assert np.abs(e.shift).max() <= 1e-5 and np.abs(e.kl).max() <= 1e-6
    assert all(np.abs(v).max() <= 1e-5 for v in e.mean_abs_change.values())
    assert lab.later == H[1:] and lab.frequency.shape == (48,)
    assert 0 < lab.frequency.max() <= 1 and lab.n_tokens == lab.codes0[H[0]].shape[0]


def test_batched_real_ablations_equal_one_ablation_at_a_time(lab):
    live = [int(f) for f in np.flatnonzero(lab.frequency > 0)[:3]]
    batched = lab.replicated(_ablation_deltas(lab.saes[H[0]], live), len(live), max_rows=5)
    sparse = lab.replicated(_ablation_deltas(lab.saes[H[0]], live), len(live), rows=lambda j: lab.rows_firing(live[j]))
    for j, u in enumerate(live):
        with intervene(lab.model, lab.saes[H[0]], H[0], [u], "zero", start=lab.start):
            e = lab.measure(logodds=False, kl=False)
        for h in lab.later:
            np.testing.assert_allclose(batched[h][j], e.mean_change[h], atol=1e-5)
            np.testing.assert_allclose(sparse[h][j], e.mean_change[h], atol=1e-5)


def _linear_lab():
    """A model linear in its residual stream (no normalization, attention that cannot depend on the
    input, no MLP output) read by ReLU SAEs whose units never switch off: attribution is exact."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from geomsteer import models

    tok = models.load_tokenizer("gemma-3-270m")
    cfg = HookedTransformerConfig(n_layers=3, d_model=16, d_head=4, n_heads=4, n_ctx=64, d_vocab=len(tok),
                                  act_fn="relu", normalization_type=None, default_prepend_bos=True, seed=3)
    m = HookedTransformer(cfg)
    m.set_tokenizer(tok, default_padding_side="right")
    with torch.no_grad():
        for b in m.blocks:
            b.attn.W_Q.zero_()
            b.attn.W_K.zero_()
            b.mlp.W_in.zero_()
            b.mlp.b_in.fill_(-1.0)  # relu(-1) = 0: the MLP adds only its bias
    m.eval()
    saes = {H[0]: random_sae(16, 24, H[0], k=6, seed=1)}
    for i, h in enumerate(H[1:]):
        torch.manual_seed(10 + i)
        c = StandardSAEConfig(d_in=16, d_sae=20)
        c.metadata.hook_name = h
        s = StandardSAE(c)
        with torch.no_grad():
            s.W_enc.copy_(torch.randn(16, 20) * 0.1)
            s.b_enc.fill_(50.0)  # every unit stays on: the encoder is affine on these inputs
        saes[h] = s
    return FeatureLab(m, saes, H[0], ITEMS, NEUTRAL)


def test_attribution_equals_the_real_effect_on_a_linear_model():
    lab = _linear_lab()
    live = [int(f) for f in np.flatnonzero(lab.frequency > 0)[:4]]
    g = measure_graph(lab, live, n_null=3)
    for h in lab.later:
        assert np.abs(g.real[h]).max() > 1e-3
        assert (lab.codes0[h] > 0).all()
        np.testing.assert_allclose(g.attribution[h][: len(live)], g.real[h], atol=1e-3 * np.abs(g.real[h]).max())
    # the error node's estimate is the effect of removing the SAE's error term, also exact here
    err = lab.replicated(lambda x, f, e, j: -e, 1)
    for h in lab.later:
        np.testing.assert_allclose(g.attribution[h][-1], err[h][0], atol=1e-3 * max(np.abs(err[h]).max(), 1e-6))


def test_matched_features_share_the_targets_frequencies_and_never_repeat_a_target():
    freq = np.linspace(0, 1, 101)
    freq[[3, 4]] = 0.0
    draws = matched_features(freq, [10, 90], 50, seed=0, window=6)
    assert draws.shape == (50, 2)
    assert not np.isin(draws, [10, 90, 0, 3, 4]).any()  # never a target, never a dead feature
    assert np.abs(freq[draws[:, 0]] - freq[10]).max() <= 0.04 and np.abs(freq[draws[:, 1]] - freq[90]).max() <= 0.04
    assert (draws[:, 0] != draws[:, 1]).all()
    assert not np.isin(matched_features(freq, [10], 30, seed=1, window=4, exclude=[9, 11]), [9, 11]).any()
    with pytest.raises(DataError, match="other features fire"):
        matched_features(np.array([0.0, 0.5, 0.0]), [1], 2, seed=0)


# ------------------------------------------------------------------------------------------ statistics


def _dose(rng, planted: float) -> DoseMeasurements:
    factors = (0.0, 0.5, 2.0)
    n_null, n_p, n_t = 30, 12, 16
    null_shift = rng.normal(0, 0.1, (n_null, 3, n_p))
    null_kl = np.abs(rng.normal(0.01, 0.003, (n_null, 3, n_t)))
    shift = rng.normal(0, 0.1, (3, n_p)) + planted
    kl = np.abs(rng.normal(0.01, 0.003, (3, n_t))) + planted * 0.05
    return DoseMeasurements({}, H[0], tuple(H[1:]), (1, 2), np.array([0.1, 0.2]), factors, shift, kl,
                            np.array([[3, 2]] * 3) + int(planted * 10), np.zeros((n_null, 2), int), null_shift, null_kl,
                            rng.poisson(3, (n_null, 3, 2)), 200)


def test_dose_statistics_find_nothing_in_noise_and_find_a_planted_effect():
    rng = np.random.default_rng(0)
    quiet = FeatureDose().fit(_dose(rng, 0.0)).statistics_
    for k in ("abs_shift:x0", "kl:x0", "kl:x2"):
        assert quiet[k]["p_value"] > 0.01, k
    loud = FeatureDose().fit(_dose(rng, 1.0)).statistics_
    for k in ("abs_shift:x0", "kl:x0", "kl:x2", "changed:x0"):
        assert loud[k]["p_value"] < 0.01, k
        assert set(loud[k]) >= {"observed", "ci95", "null", "effect_size", "p_value", "n"}


def test_dose_ratios_are_measured_not_assumed():
    rng = np.random.default_rng(1)
    m = _dose(rng, 0.0)
    kl = m.kl.copy()
    kl[1] = kl[0]  # dampening exactly like ablation
    kl[2] = kl[0] / 10  # doubling ten times weaker
    an = FeatureDose().fit(DoseMeasurements(**{**m.__dict__, "kl": kl}))
    r_half, r_double = an.statistics_["kl_ratio:x0.5/x0"], an.statistics_["kl_ratio:x2/x0"]
    assert r_half["observed"] == pytest.approx(1.0) and r_half["ci95"][0] <= 1 <= r_half["ci95"][1]
    assert r_double["observed"] == pytest.approx(0.1) and r_double["ci95"][1] < 1
    assert "dampening (x0.5) acts about as strongly as ablation" in an.verdict()
    assert "doubling (x2) acts more weakly than ablation" in an.verdict()


def _graph(rng, planted: bool) -> GraphMeasurements:
    n_up, n_null, d = 6, 40, 30
    real = {h: rng.normal(0, 0.01, (n_up, d)) for h in H[1:]}
    null = {h: rng.normal(0, 0.01, (n_null, d)) for h in H[1:]}
    if planted:
        real[H[1]][0, 5] = 1.0
        real[H[2]][3, 7] = -0.8
    attribution = {h: np.vstack([real[h] + rng.normal(0, 0.002, real[h].shape), rng.normal(0, 0.01, (1, d))])
                   for h in H[1:]}
    return GraphMeasurements({"n_null": n_null}, H[0], tuple(H[1:]), tuple(range(100, 100 + n_up)), np.full(n_up, 0.1),
                             real, attribution, np.arange(n_null), null, {h: 1.0 for h in H[1:]},
                             {h: np.ones(d) for h in H[1:]}, {}, 100)


def test_graph_keeps_planted_edges_only_and_checks_attribution_against_shuffled_rows():
    rng = np.random.default_rng(2)
    g = FeatureGraph(alpha=0.05).fit(_graph(rng, True))
    kept = {(e["upstream"], e["hook"], e["downstream"]) for e in g.edges_}
    assert {(100, H[1], 5), (103, H[2], 7)} <= kept and len(kept) <= 4
    assert g.top_edges_[0]["weight"] == pytest.approx(1.0) and g.top_edges_[0]["kept"]
    assert len(g.top_edges_) == 60 and not all(e["kept"] for e in g.top_edges_)
    assert g.statistics_["attribution_spearman"]["p_value"] < 0.01
    G = g.graph()
    assert G.has_edge("L0/100", "L1/5") and G["L0/103"]["L2/7"]["weight"] == pytest.approx(-0.8)
    quiet = FeatureGraph(alpha=0.05).fit(_graph(rng, False))
    assert len(quiet.edges_) <= 2  # about alpha x upstream features by the max-statistic
    assert quiet.statistics_["total_effect"]["p_value"] > 0.01


def _compare(rng, kl_gap: float) -> CompareMeasurements:
    n_p, n_t = 10, 16

    def eff(shift, kl):
        return Effect(rng.normal(shift, 0.2, n_p), np.abs(rng.normal(kl, 0.002, n_t)), {H[1]: np.zeros(4)},
                      {H[1]: np.zeros(4)})

    effects = {"vector": eff(2.0, 0.05), "reconstruction": eff(2.0, 0.05 - kl_gap), "clamp": eff(2.0, 0.05)}
    nulls = {m: tuple(eff(0.0, 0.01) for _ in range(20)) for m in ("reconstruction", "clamp")}
    return CompareMeasurements({}, H[0], (H[1],), 4.0, (1, 2), np.array([1.0, 0.5]), 0.6, {}, {
        "reconstruction": 1.0, "reconstruction_used": 1.0, "clamp": 1.2, "clamp_used": 1.2}, effects,
        np.zeros((20, 2), int), nulls, 0.1, {H[1]: 1.0}, 100)


def test_compare_tests_paired_side_effects_by_sign_flips():
    rng = np.random.default_rng(3)
    same = FeatureCompare().fit(_compare(rng, 0.0)).statistics_
    assert same["kl_minus_vector:reconstruction"]["p_value"] > 0.01
    less = FeatureCompare().fit(_compare(rng, 0.02)).statistics_
    assert less["kl_minus_vector:reconstruction"]["p_value"] < 0.01
    assert less["kl_minus_vector:reconstruction"]["observed"] < 0
    assert less["shift:reconstruction"]["p_value"] < 0.01  # the chosen features steer, random ones do not
    assert same["kl_minus_vector:clamp"]["p_value"] > 0.01


def _relations(rng, planted: bool) -> RelationMeasurements:
    M, n_tok = 16, 400
    centers = rng.normal(size=(4, 32))
    group = np.repeat(np.arange(4), 4)
    W = centers[group] + 0.3 * rng.normal(size=(M, 32))  # four groups of similar decoder directions
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    drivers = rng.normal(size=(n_tok, 4))
    change = (drivers[:, group] if planted else rng.normal(size=(n_tok, M))) + 0.5 * rng.normal(size=(n_tok, M))
    effect = W @ rng.normal(size=(32, 500)) if planted else rng.normal(size=(M, 500))
    cc = np.corrcoef(change.T)
    return RelationMeasurements({}, H[0], tuple(range(M)), np.ones(M), cc, U @ U.T, np.corrcoef(rng.normal(size=(M, 50))),
                                effect, n_tok)


def test_relations_find_planted_groups_and_nothing_in_noise():
    rng = np.random.default_rng(4)
    loud = FeatureRelations(n_clusters=4, n_perm=300).fit(_relations(rng, True)).statistics_
    assert loud["co_change:decoder"]["p_value"] < 0.01 and loud["decoder_predicts_output"]["p_value"] < 0.01
    quiet = FeatureRelations(n_clusters=4, n_perm=300).fit(_relations(rng, False)).statistics_
    assert quiet["co_change:decoder"]["p_value"] > 0.01 and quiet["decoder_predicts_output"]["p_value"] > 0.01
    assert quiet["co_change:co_activation"]["p_value"] > 0.01  # co-activation here is unrelated to the changes
    with pytest.raises(ConfigError, match="n_clusters must lie between 2 and 15"):
        FeatureRelations(n_clusters=16).fit(_relations(rng, False))


# ------------------------------------------------------------------------------------------ end to end (tiny)


def test_measurements_run_end_to_end_on_a_tiny_model(lab):
    live = [int(f) for f in np.flatnonzero(lab.frequency > 0)[:2]]
    d = measure_dose(lab, live, n_null=3)
    assert d.shift.shape == (3, len(ITEMS)) and d.null_kl.shape == (3, 3, len(NEUTRAL))
    assert FeatureDose().fit(d).result().metrics["statistics"]["kl:x0"]["null"]["random_features"]["n_draws"] == 3
    v = lab.saes[H[0]].W_dec[live[0]].detach().numpy() * 3
    c = measure_compare(lab, v, 2.0, k=2, n_null=3)
    assert c.features[0] == live[0] and c.explained > 0.99
    assert set(c.effects) == {"vector", "reconstruction", "clamp"}
    # the reconstruction of a vector that is one decoder direction is the vector: it matches at multiplier 1
    assert c.matched["reconstruction"] == pytest.approx(1.0, abs=0.05)
    r = measure_relations(lab, v, 2.0, top=6)
    assert len(r.features) >= 2 and r.output_effect.shape[0] == len(r.features)
    np.testing.assert_allclose(np.diag(r.decoder_cosine), 1.0, atol=1e-6)
    assert FeatureRelations(n_clusters=2, n_perm=20).fit(r).result().tables["features"][0]["feature"] == r.features[0]


def test_bad_input_is_refused_with_a_message(lab):
    sae = lab.saes[H[0]]
    with pytest.raises(ConfigError, match="outside the SAE: it has features 0..47"):
        measure_dose(lab, [48], n_null=3)
    with pytest.raises(ConfigError, match="no features given"):
        measure_graph(lab, [], n_null=3)
    with pytest.raises(ConfigError, match="finite numbers"):
        measure_dose(lab, [1], factors=[0, float("inf")], n_null=3)
    with pytest.raises(ConfigError, match="at least 2"):
        measure_dose(lab, [1], n_null=1)
    with pytest.raises(ConfigError, match="no SAE after the intervention hook"):
        FeatureLab(lab.model, {H[2]: lab.saes[H[2]]}, H[2], ITEMS, NEUTRAL)
    with pytest.raises(ConfigError, match="no SAE at the intervention hook"):
        FeatureLab(lab.model, {H[1]: lab.saes[H[1]]}, H[0], ITEMS, NEUTRAL)
    wide = random_sae(32, 8, H[1], k=2)
    with pytest.raises(DataError, match="reads vectors of size 32"):
        FeatureLab(lab.model, {H[0]: sae, H[1]: wide}, H[0], ITEMS, NEUTRAL)
    with pytest.raises(DataError, match="was trained at blocks.1"):
        FeatureLab(lab.model, {H[0]: sae, H[2]: lab.saes[H[1]]}, H[0], ITEMS, NEUTRAL)
    with pytest.raises(ConfigError, match="finite value"):
        with intervene(lab.model, sae, H[0], [1], "scale", value=float("nan")):
            pass


def test_reports_hold_the_shared_statistic_shape_and_the_graphml(lab, tmp_path):
    from geomsteer.pipelines.features import _result

    live = [int(f) for f in np.flatnonzero(lab.frequency > 0)[:3]]
    an = FeatureGraph().fit(measure_graph(lab, live, n_null=4))
    prov = {"model": "tiny", "hook": H[0], "later_hooks": H[1:], "eval": "x", "n_prompts": 3, "n_neutral": 4,
            "n_tokens": lab.n_tokens}
    import io

    import networkx as nx

    buf = io.BytesIO()
    nx.write_graphml(an.graph(), buf)
    res = _result("feature_graph", prov, an.result(), 0.0, {"graph.graphml": buf.getvalue()}, an)
    out = res.save(tmp_path / "g")
    doc = json.loads((out / "result.json").read_text())
    for st in doc["metrics"]["statistics"].values():
        assert set(st) >= {"observed", "ci95", "null", "effect_size", "p_value", "n"}
    assert nx.read_graphml(out / "graph.graphml").number_of_nodes() >= len(live)
    assert "# Feature graph: tiny" in (out / "report.md").read_text()
    with pytest.raises(Exception, match="exists"):
        res.save(tmp_path / "g")
