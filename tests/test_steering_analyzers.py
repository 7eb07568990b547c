"""Steering analyses: matching pursuit recovers planted features, decomposition and propagation invariants."""

import numpy as np
import pytest
import torch
from conftest import tiny_model

from geomsteer import steering as S
from geomsteer.steering.evaluate import length_buckets
from geomsteer.analyzers.steering import (
    SteeringDecomposition,
    SteeringPropagation,
    SteeringSweep,
    omp,
)
from geomsteer.errors import ConfigError, DataError, NotFittedError
from geomsteer.steering.experiments import (
    measure_decomposition,
    measure_propagation,
    measure_sweep,
    prompt_activations,
)

ITEMS = [S.EvalPrompt("The film was", (" good", " great"), (" bad",)),
         S.EvalPrompt("Yesterday the meeting was", (" good",), (" bad", " awful")),
         S.EvalPrompt("All in all the trip was", (" good",), (" bad",))]


def random_sae(d_in, d_sae, hook, k=4, seed=0):
    """A TopK SAE with random unit decoder rows and an encoder that is their transpose."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k)
    cfg.metadata.hook_name = hook
    sae = TopKSAE(cfg)
    with torch.no_grad():
        W = torch.randn(d_sae, d_in)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


@pytest.fixture(scope="module")
def wide():
    return tiny_model("gemma-3-270m", n_layers=2, d_model=64, seed=1)


def test_omp_recovers_planted_atoms_and_explains_them_fully():
    rng = np.random.default_rng(0)
    D = rng.standard_normal((96, 64)) * rng.uniform(0.5, 2.0, (96, 1))  # atoms of unequal norm
    planted = {5: 3.0, 17: 2.0, 40: -1.5}
    U = D / np.linalg.norm(D, axis=1, keepdims=True)
    v = sum(c * U[j] for j, c in planted.items())
    res = omp(D, v, k=3)
    assert sorted(res["atoms"]) == sorted(planted)
    np.testing.assert_allclose(dict(zip(res["atoms"], res["coefficients"]))[17], 2.0, atol=1e-8)
    assert res["explained"][-1] == pytest.approx(1.0, abs=1e-10)
    assert np.all(np.diff(res["explained"]) >= -1e-12)  # refitting never loses ground
    np.testing.assert_allclose(res["reconstruction"], v, atol=1e-8)
    # non-negative: a negative planted part cannot be matched, the positive ones are found first
    nn = omp(D, v, k=3, nonneg=True)
    assert np.all(nn["coefficients"] >= 0) and nn["explained"][-1] < 0.99
    assert omp(D, U[5] * 2 + U[17], k=2, nonneg=True)["atoms"] == [5, 17]
    with pytest.raises(DataError, match="cannot decompose a zero vector"):
        omp(D, np.zeros(64), 3)


def test_omp_agrees_with_a_plain_least_squares_on_the_chosen_atoms():
    rng = np.random.default_rng(3)
    D = rng.standard_normal((50, 20))
    v = rng.standard_normal(20)
    res = omp(D, v, k=6)
    U = D[res["atoms"]] / np.linalg.norm(D[res["atoms"]], axis=1, keepdims=True)
    coef, *_ = np.linalg.lstsq(U.T, v, rcond=None)
    np.testing.assert_allclose(res["coefficients"], coef, atol=1e-10)
    # the first atom is the one most correlated with v
    assert res["atoms"][0] == int(np.argmax(np.abs(D @ v) / np.linalg.norm(D, axis=1)))


def test_steered_activations_at_the_steering_hook_are_shifted_exactly(wide):
    hook = "blocks.0.hook_resid_post"
    v = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    X0 = prompt_activations(wide, ITEMS, [hook, "blocks.1.hook_resid_post"], None, 0.0, None, batch_size=2)
    X1 = prompt_activations(wide, ITEMS, [hook, "blocks.1.hook_resid_post"], v, 1.5, hook, batch_size=2)
    np.testing.assert_allclose(X1[hook] - X0[hook], np.tile(1.5 * v, (len(X0[hook]), 1)), rtol=1e-4, atol=1e-4)
    assert not np.allclose(X1["blocks.1.hook_resid_post"], X0["blocks.1.hook_resid_post"])
    assert not wide.hook_dict[hook].fwd_hooks


def test_a_planted_vector_decomposes_back_into_its_features(wide):
    hook = "blocks.1.hook_resid_post"
    sae = random_sae(64, 96, hook, k=4, seed=2)
    W = sae.W_dec.detach().numpy()
    planted = [7, 30, 81]
    v = 4.0 * W[7] + 3.0 * W[30] + 2.0 * W[81]
    vec = S.SteeringVector(v.astype(np.float32), "tiny", hook, "last", "mean_diff", 3)
    emb = (wide.W_U.detach().numpy().T, [f"t{i}" for i in range(wide.cfg.d_vocab)])
    measured = measure_decomposition(wide, vec, sae, ITEMS, alpha=2.0, k=3, seed=0)
    dec = SteeringDecomposition(top=5, seed=0).fit(measured, unembedding=emb[0], vocab=emb[1])
    res = dec.result()
    # statistics from the measurements alone: a refit runs no model and reproduces every number
    assert SteeringDecomposition(top=5, seed=0).fit(measured, emb[0], emb[1]).result().to_dict() == res.to_dict()
    assert sorted(res.tables["sparse_coding"]["atoms"]) == planted
    e = res.metrics["explained_fraction"]
    assert e["sparse_coding"] == pytest.approx(1.0, abs=1e-6)
    assert e["sparse_coding_random_direction"] < 0.6  # three atoms explain little of a random direction
    eff = res.metrics["steering_effect"]
    assert eff["sparse_coding"]["fraction_of_vector"] == pytest.approx(1.0, abs=1e-3)  # the reconstruction is v
    assert eff["vector"]["fraction_of_vector"] == 1.0
    top = {r["feature"] for r in res.tables["features"] if "sparse_coding" in r}
    assert top == set(planted)
    f7 = next(r for r in res.tables["features"] if r["feature"] == 7)
    assert f7["cosine_with_vector"] == pytest.approx(float(W[7] @ v / np.linalg.norm(v)), abs=1e-5)
    # logit lens of a feature: the tokens its decoder direction promotes most
    assert f7["logit_lens"][0][0] == f"t{int(np.argmax(emb[0] @ W[7]))}"
    # the code difference on real tokens: linear in what changed, so steering by a planted feature the
    # encoder reads moves that feature up
    assert res.metrics["codes"]["n_tokens"] > 0
    # against null vectors: three atoms explain the planted vector fully and a covariance direction far less
    st = res.metrics["statistics"]["explained_sparse_coding"]
    assert list(st["null"]) == ["covariance_directions"] and st["null"]["covariance_directions"]["n_draws"] == 20
    assert st["p_value"] < 0.01 and st["null"]["covariance_directions"]["mean"] < 0.6
    # effects are scored on the prompts the code difference was not read on
    assert res.provenance["prompt_split"] == {"fit_prompts": 1, "score_prompts": 2}
    assert res.metrics["statistics"]["steering_effect_vector"]["n"] == 2


def test_decomposition_errors(wide):
    sae = random_sae(64, 32, "blocks.1.hook_resid_post")
    vec = S.SteeringVector(np.ones(64, np.float32), "tiny", "blocks.0.hook_resid_post", "last", "mean_diff", 2)
    with pytest.raises(DataError, match="the steering vector is at blocks.0.hook_resid_post but the SAE was trained at "
                                        "blocks.1.hook_resid_post"):
        measure_decomposition(wide, vec, sae, ITEMS, 1.0)
    small = S.SteeringVector(np.ones(16, np.float32), "tiny", "blocks.1.hook_resid_post", "last", "mean_diff", 2)
    with pytest.raises(DataError, match="the SAE reads vectors of size 64, the steering vector has size 16"):
        measure_decomposition(wide, small, sae, ITEMS, 1.0)
    with pytest.raises(ConfigError, match="finite non-zero number"):
        measure_decomposition(wide, vec, sae, ITEMS, float("inf"))
    with pytest.raises(DataError, match="needs at least 2 evaluation prompts"):
        measure_decomposition(wide, S.SteeringVector(np.ones(64, np.float32), "tiny", "blocks.1.hook_resid_post",
                                                     "last", "mean_diff", 2), sae, ITEMS[:1], 1.0)
    with pytest.raises(NotFittedError):
        SteeringDecomposition().result()
    with pytest.raises(DataError, match="expected the measurements of .*measure_decomposition"):
        SteeringDecomposition().fit({"not": "measurements"})


def test_propagation_counts_nothing_for_a_vanishing_multiplier_and_skips_earlier_layers(wide):
    h0, h1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
    saes = {h0: random_sae(64, 96, h0, seed=3), h1: random_sae(64, 96, h1, seed=4)}
    v = np.random.default_rng(5).standard_normal(64).astype(np.float32) * 3
    vec = S.SteeringVector(v, "tiny", h1, "last", "mean_diff", 2)
    ticks = []
    measured = measure_propagation(wide, vec, saes, ITEMS, alphas=[1e-6, 1.0, 4.0], progress=lambda: ticks.append(1))
    prop = SteeringPropagation(threshold=0.1).fit(measured)
    assert len(ticks) == 6 + 20  # one per multiplier and direction, one per null draw (no pairs: covariance only)
    res = prop.result()
    st = res.metrics["statistics"][f"features_changed:{h1}"]
    assert st["alpha"] == 4.0 and st["alternative"] == "two-sided" and st["null"]["covariance_directions"]["n_draws"] == 20
    assert res.provenance["skipped_earlier_hooks"] == [h0] and res.provenance["sae_hooks"] == [h1]
    changed = res.metrics["per_layer"][h1]["features_changed"]
    assert changed[0] == 0 and changed[-1] > 0
    tracked = res.tables["tracked"][h1]  # the most changed features at the largest multiplier, at every multiplier
    top4 = next(r for r in res.tables["grid"] if r["alpha"] == 4.0 and r["direction"] == "vector")["top_features"]
    assert tracked["features"] == [t["feature"] for t in top4]
    np.testing.assert_allclose([m[-1] for m in tracked["mean_change"]], [t["mean_change"] for t in top4])
    assert max(abs(m[0]) for m in tracked["mean_change"]) < 1e-3
    total = prop.table("vector", "total_abs_change")[0]
    assert total[0] < total[1] < total[2]
    # at the steering layer the residual moves by exactly alpha |v| relative to its size
    X0 = prompt_activations(wide, ITEMS, [h1], None, 0.0, None)[h1]
    grid = {(r["alpha"], r["direction"]): r for r in res.tables["grid"]}
    expect = float(np.mean(4.0 * np.linalg.norm(v) / np.linalg.norm(X0, axis=1)))
    assert grid[(4.0, "vector")]["relative_residual_change"] == pytest.approx(expect, rel=1e-3)
    # steering at layer 0 reaches both SAEs
    vec0 = S.SteeringVector(v, "tiny", h0, "last", "mean_diff", 2)
    res0 = SteeringPropagation().fit(measure_propagation(wide, vec0, saes, ITEMS, alphas=[2.0])).result()
    assert res0.provenance["sae_hooks"] == [h0, h1] and not res0.provenance["skipped_earlier_hooks"]
    with pytest.raises(ConfigError, match="no SAE at or after the steering layer"):
        measure_propagation(wide, vec, {h0: saes[h0]}, ITEMS)
    with pytest.raises(ConfigError, match="multipliers must be finite numbers"):
        measure_propagation(wide, vec, saes, ITEMS, alphas=[float("nan")])


def test_sweep_rows_baseline_and_samples(wide):
    hook = "blocks.1.hook_resid_post"
    rng = np.random.default_rng(6)
    vec = S.SteeringVector(rng.standard_normal(64).astype(np.float32), "tiny", hook, "last", "mean_diff", 2)
    neutral = S.NeutralText(wide, ["a small grey stone", "to run quickly"], max_tokens=6)
    ticks = []
    measured = measure_sweep(wide, {hook: vec}, ITEMS, neutral, alphas=[2.0, -2.0, 0.0], n_random=2, n_samples=1,
                             max_new_tokens=3, sample_prompts=["It was"], progress=lambda: ticks.append(1))
    sw = SteeringSweep().fit(measured)
    assert len(ticks) == 3  # one per cell, for the progress bar
    res = sw.result()
    grid = res.tables["grid"]
    assert [r["alpha"] for r in grid] == [-2.0, 0.0, 2.0]  # sorted
    zero = grid[1]
    assert zero["logodds_shift"] == 0.0 and zero["kl_neutral"] == 0.0
    base = S.target_logodds(wide, ITEMS)
    with S.steering(wide, vec, 2.0, start=1):
        moved = S.target_logodds(wide, ITEMS)
    assert grid[2]["logodds_shift"] == pytest.approx(float((moved - base)[:, 0].mean()), abs=1e-5)
    assert grid[2]["kl_neutral"] > 0 and grid[2]["random_kl_neutral"] > 0
    # the band: covariance directions at the hook, seeded per hook, steered like the vector
    X = prompt_activations(wide, ITEMS, [hook], None, 0.0, None)[hook]
    draws = []
    for u in S.covariance_directions(X, np.linalg.norm(vec.vector), 2, seed=0):
        with S.steering(wide, u, 2.0, hook, start=1):
            draws.append(float((S.target_logodds(wide, ITEMS) - base)[:, 0].mean()))
    assert grid[2]["random_logodds_shift"] == pytest.approx(np.mean(draws), abs=1e-5)
    assert grid[2]["random_logodds_shift_sd"] == pytest.approx(np.std(draws, ddof=1), abs=1e-5)
    assert grid[2]["random_abs_logodds_shift"] == pytest.approx(np.mean(np.abs(draws)), abs=1e-5)
    # this vector carries no pairs: the extreme multipliers are tested against covariance directions only, and say so
    st = res.metrics["per_hook"][hook]["statistics"]
    assert sorted(st) == ["logodds_shift_at_-2", "logodds_shift_at_2"]
    assert set(st["logodds_shift_at_2"]["null"]) == {"covariance_directions"}
    assert st["logodds_shift_at_2"]["null"]["covariance_directions"]["n_draws"] == 20
    assert "no shuffled-label null" in res.metrics["per_hook"][hook]["nulls_note"]
    s = res.metrics["per_hook"][hook]
    assert s["monotone"] == bool(grid[0]["logodds_shift"] < 0 < grid[2]["logodds_shift"])
    assert [x["direction"] for x in res.tables["samples"]] == ["unsteered", "vector", "vector"]
    # the analyzer computes from the measurements alone: refitting runs no model and gives the same table
    again = SteeringSweep(seed=1).fit(measured).result()
    assert again.tables["grid"] == grid and len(ticks) == 3
    assert not wide.hook_dict[hook].fwd_hooks


def test_omp_agrees_with_scikit_learn_on_a_realistic_dictionary():
    from sklearn.linear_model import orthogonal_mp

    rng = np.random.default_rng(4)
    D = rng.standard_normal((512, 80))
    U = D / np.linalg.norm(D, axis=1, keepdims=True)
    v = U[:10].T @ rng.uniform(1, 3, 10) + 0.2 * rng.standard_normal(80)
    ours = omp(D, v, 12)
    ref = orthogonal_mp(U.T, v, n_nonzero_coefs=12)
    assert set(ours["atoms"]) == set(np.flatnonzero(ref))
    np.testing.assert_allclose(dict(zip(ours["atoms"], ours["coefficients"]))[ours["atoms"][0]],
                               ref[ours["atoms"][0]], rtol=1e-8)


# --------------------------------------------------------------------------------------------
# Null vectors for steering


def test_shuffled_label_vectors_flip_pair_signs_and_keep_the_method():
    rng = np.random.default_rng(0)
    D = rng.standard_normal((7, 12)) + 3.0 * rng.standard_normal(12)  # pairs sharing a direction
    sv = S.SteeringVector(D.mean(0).astype(np.float32), "m", "blocks.0.hook_resid_post", "last", "mean_diff", 7,
                          pair_differences=D.astype(np.float32))
    V = S.shuffled_label_vectors(sv, 50, seed=3)
    # every draw is a signed mean of the pairs: solve for the signs and find +-1
    signs = np.linalg.lstsq(D.T / 7, V.T.astype(np.float64), rcond=None)[0]
    np.testing.assert_allclose(np.abs(signs), 1.0, atol=1e-4)
    assert np.linalg.norm(V, axis=1).mean() < 0.6 * np.linalg.norm(sv.vector)  # agreement across pairs is gone
    np.testing.assert_array_equal(V, S.shuffled_label_vectors(sv, 50, seed=3))
    pca = S.SteeringVector(sv.vector, "m", sv.hook, "last", "pca", 7, pair_differences=D.astype(np.float32))
    u = np.linalg.svd(D, full_matrices=False)[2][0]
    P = S.shuffled_label_vectors(pca, 10, seed=3)
    np.testing.assert_allclose(np.abs(P @ u), np.linalg.norm(P, axis=1), rtol=1e-4)  # along the first PC
    with pytest.raises(DataError, match="carries no pair differences"):
        S.shuffled_label_vectors(S.SteeringVector(sv.vector, "m", sv.hook, "last", "mean_diff", 7), 5)


def test_covariance_directions_follow_the_activations_and_keep_the_norm():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((400, 10))
    X[:, 3] *= 30.0  # a massive dimension
    R = S.covariance_directions(X, 5.0, 200, seed=0)
    np.testing.assert_allclose(np.linalg.norm(R, axis=1), 5.0, rtol=1e-5)
    assert np.mean(np.abs(R[:, 3]) / 5.0) > 0.9  # isotropic directions would put ~0.25 there
    C = np.cov(R.T.astype(np.float64))
    assert np.argmax(np.diag(C)) == 3
    with pytest.raises(DataError, match="at least 2 activation rows"):
        S.covariance_directions(X[:1], 1.0, 3)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_resid_pre"])
def test_steered_targets_fast_path_agrees_with_steering_hooks(wide, hook):
    V = np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32)
    items = ITEMS + [S.EvalPrompt("After a long day of travel through the rain and the cold, the hotel was", (" good",),
                                  (" bad",))]  # a long prompt: the short ones run in their own, less padded group
    ev = S.SteeredTargets(wide, items, hook, max_rows=4)  # several chunks
    assert ev.fast == hook.endswith("resid_post")
    assert len(length_buckets(ev.lengths.tolist() if ev.fast else [4, 5, 5, 16])) == 2
    got = ev(V, 3.0)
    for v, g in zip(V, got):
        with S.steering(wide, v, 3.0, hook, start=1):
            np.testing.assert_allclose(g, S.target_logodds(wide, items), atol=2e-4)
    np.testing.assert_allclose(ev(V[:2], 0.0)[1], S.target_logodds(wide, items), atol=1e-6)
    bare = ev(V, 3.0, normalized=False)  # the log-odds without the vocabulary's normalizer: the same column 0
    np.testing.assert_allclose(bare[..., 0], got[..., 0], atol=1e-9 if ev.fast else 0)
    assert np.isnan(bare[..., 1:]).all() if ev.fast else np.array_equal(bare, got)
    assert ev.X.shape == (sum(len(wide.tokenizer(i.prompt, add_special_tokens=False)["input_ids"]) for i in items), 64)


def test_length_buckets_pad_less_and_keep_every_row_once():
    L = [12, 11, 10, 9, 10, 8, 7, 8, 8, 8, 6, 10, 9, 6, 10, 8]  # the sentiment_eval prompts on Gemma 3
    groups = length_buckets(L)
    assert sorted(np.concatenate(groups).tolist()) == list(range(16)) and all(np.all(np.diff(g) > 0) for g in groups)
    padded = sum(len(g) * max(L[i] for i in g) for g in groups)
    assert padded == 160 < 16 * 12 and max(L[i] for i in groups[0]) < min(L[i] for i in groups[1]) + 1
    assert [g.tolist() for g in length_buckets([6, 5, 6])] == [[0, 1, 2]]  # saves under a tenth: one group
    assert [g.tolist() for g in length_buckets([7])] == [[0]]


def _tied(seed=3):
    """A tiny model whose blocks write nothing and whose unembedding is its embedding's transpose:
    the residual is the token's embedding, so the pairs' difference at the last token is
    e(good) - e(bad), and adding it raises the log-odds of ' good' over ' bad' (a planted effect)."""
    m = tiny_model("gemma-3-270m", n_layers=2, d_model=32, seed=seed)
    with torch.no_grad():
        m.W_U.copy_(m.W_E.T)
        for b in m.blocks:
            for w in (b.attn.W_O, b.attn.b_O, b.mlp.W_out, b.mlp.b_out):
                w.zero_()
    return m


WORDS = ["The film", "My day", "That meal", "Our trip", "The book", "His talk", "The show", "Her song",
         "The game", "This city", "The hotel", "The class", "The party", "Your idea", "The weather", "The view",
         "The coffee", "The result", "Their plan", "The music", "The room", "The team", "The news", "The story"]
SENT_ITEMS = [S.EvalPrompt(w + end, (" good",), (" bad",)) for w, end in
              zip(WORDS[:8], [" was", " seemed", " is", " felt", " looked", " was so", " sounded", " was very"])]


def _sweep(model, pairs, seed=0):
    hook = "blocks.1.hook_resid_post"
    vs = S.compute_vectors(model, pairs, [hook], position="last")
    measured = measure_sweep(model, vs, SENT_ITEMS, alphas=[-1.0, 0.0, 1.0], n_random=2, n_samples=0, n_null=20,
                             seed=seed)
    res = SteeringSweep(seed=seed).fit(measured).result()
    return res.metrics["per_hook"][hook]["statistics"]["logodds_shift_at_1"]


def test_a_planted_steering_vector_beats_both_nulls():
    st = _sweep(_tied(), [S.Pair(w + " good", w + " bad") for w in WORDS])
    assert set(st["null"]) == {"shuffled_labels", "covariance_directions"}
    assert st["observed"] > 0 and st["p_value"] < 0.01 and st["effect_size"] > 3
    assert all(n["percentile"] == 100.0 for n in st["null"].values())
    assert st["n"] == len(SENT_ITEMS) and st["ci95"][0] > 0


def test_a_vector_from_shuffled_labels_is_not_significant():
    model = _tied()
    hits = []
    for seed in range(4):
        flip = np.random.default_rng(seed).random(len(WORDS)) < 0.5
        pairs = [S.Pair(w + (" bad" if f else " good"), w + (" good" if f else " bad")) for w, f in zip(WORDS, flip)]
        hits.append(_sweep(model, pairs, seed)["p_value"] < 0.01)
    assert sum(hits) == 0
