"""Maps between two models' residual streams (geomsteer.transfer): planted maps found, shuffled ones not."""

import numpy as np
import pytest

from geomsteer.errors import ConfigError, DataError
from geomsteer.transfer import fit_linear_map, shuffled_maps


def _two_models(n=600, d_a=24, d_b=32, k=10, noise=0.3, seed=0):
    """Two 'models' reading the same k latent features of n words through different bases."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, k)) * np.linspace(3, 1, k)
    Qa = np.linalg.qr(rng.normal(size=(d_a, d_a)))[0][:k]  # (k, d_a) orthonormal rows
    Qb = np.linalg.qr(rng.normal(size=(d_b, d_b)))[0][:k]
    A = Z @ Qa + noise * rng.normal(size=(n, d_a)) + 5.0
    B = 2.0 * Z @ Qb + noise * rng.normal(size=(n, d_b)) - 1.0
    return A, B, Qa, Qb


def _cos(u, v):
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


@pytest.mark.parametrize("method", ["procrustes", "ridge"])
def test_a_planted_map_carries_a_shared_direction_and_a_shuffled_one_does_not(method):
    A, B, Qa, Qb = _two_models()
    m = fit_linear_map(A, B, method)
    assert m.info["heldout_r2"] > 0.9
    for j in (0, 4):  # the direction of latent feature j in A lands on its direction in B
        assert _cos(m.vector(Qa[j]), Qb[j]) > 0.95
    nulls = shuffled_maps(A, B, method, n=10)
    assert max(x.info["heldout_r2"] for x in nulls) < 0.05
    # a shuffled map still carries A's high-variance subspace onto B's (the geometry is kept), but
    # turned at random inside it: the direction lands on its partner no better than by chance
    null_cos = [abs(_cos(x.vector(Qa[0]), Qb[0])) for x in nulls]
    assert np.mean(null_cos) < 0.5 and max(null_cos) < _cos(m.vector(Qa[0]), Qb[0])
    if method == "procrustes":  # a scaled semi-orthogonal map: angles kept, B's scale (2x) found
        s = m.info["scale"]
        np.testing.assert_allclose(m.W @ m.W.T / s**2, np.eye(A.shape[1]), atol=1e-8)
        assert s == pytest.approx(2.0, rel=0.1)


def test_unrelated_models_give_no_map():
    A, _, _, _ = _two_models(seed=1)
    _, B, _, _ = _two_models(seed=2)
    assert fit_linear_map(A, B, "ridge").info["heldout_r2"] < 0.05


def test_bad_inputs_say_what_was_expected():
    A, B, _, _ = _two_models(n=50)
    with pytest.raises(DataError, match=r"same n words, got \(50, 24\) and \(49, 32\)"):
        fit_linear_map(A, B[:49])
    with pytest.raises(ConfigError, match="unknown map 'cca': expected one of procrustes, ridge"):
        fit_linear_map(A, B, "cca")
    with pytest.raises(DataError, match="reads vectors of size 24"):
        fit_linear_map(A, B).vector(np.ones(32))
    B[3, 0] = np.nan
    with pytest.raises(DataError, match="NaN or infinite"):
        fit_linear_map(A, B)


def test_a_vector_carried_by_the_true_map_steers_the_second_model_and_a_shuffled_map_does_not():
    import torch
    from test_steering_analyzers import SENT_ITEMS, _tied

    from geomsteer.transfer import measure_transfer

    B_model = _tied()  # B's residual is the token's embedding; e(good) - e(bad) raises ' good' over ' bad'
    tok = B_model.tokenizer
    E = B_model.W_E.detach().double().numpy()
    good, bad = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" good", " bad"))
    own_b = E[good] - E[bad]
    # model A reads the same words in another basis: A = B Q + noise
    rng = np.random.default_rng(0)
    ids = rng.choice(E.shape[0], 2000, replace=False)
    Q = np.linalg.qr(rng.normal(size=(E.shape[1], E.shape[1])))[0]
    XB = E[ids]
    XA = XB @ Q + 0.01 * rng.normal(size=XB.shape)
    own_a = own_b @ Q
    m = fit_linear_map(XA, XB, "procrustes")
    nulls = shuffled_maps(XA, XB, "procrustes", n=8)
    with torch.no_grad():
        got = measure_transfer(B_model, own_b, {"procrustes": m.vector(own_a)},
                               {"procrustes:shuffled_map": [x.vector(own_a) for x in nulls]},
                               SENT_ITEMS, "blocks.1.hook_resid_post", alpha=1.0, n_random=8)
    st = got.statistics()["procrustes"]
    assert got.shifts["own"].mean() > 1.0  # the planted effect
    assert st["observed"] == pytest.approx(1.0, abs=0.05)  # the transferred vector does what B's own does
    assert st["null"]["shuffled_map"]["mean"] < 0.5 and st["null"]["random"]["mean"] < 0.5
    assert st["p_value"] <= 1 / 9 + 1e-9 and st["ci95"][0] > 0.8
    # the shuffled map's vector, steered as if it were the finding, is not one
    bad_map = measure_transfer(B_model, own_b, {"shuffled": nulls[0].vector(own_a)},
                               {"shuffled:shuffled_map": [x.vector(own_a) for x in nulls[1:]]},
                               SENT_ITEMS, "blocks.1.hook_resid_post", alpha=1.0, n_random=8).statistics()
    assert bad_map["shuffled"]["observed"] < 0.5 and bad_map["shuffled"]["p_value"] > 0.05


def test_transfer_is_reached_from_the_notebook_api_and_checks_its_vectors():
    import geomsteer as gs

    assert gs.transfer.fit_linear_map is fit_linear_map
    with pytest.raises(DataError, match=r"B's own steering vector is zero: expected the vector computed on model B"):
        gs.transfer.measure_transfer(None, np.zeros(4), {}, {}, [], "blocks.0.hook_resid_post", 1.0)


def test_the_ridge_penalty_scan_agrees_with_one_plain_fit_per_penalty():
    from geomsteer.transfer import RIDGE_GRID, _fit, _ridge_scores

    A, B, _, _ = _two_models(n=400, noise=2.0)
    got = _ridge_scores(A[:300], B[:300], A[300:], B[300:])
    for c in RIDGE_GRID:  # the plain form: solve (A_c^T A_c + lam I) W = A_c^T B_c for each penalty
        assert got[c] == pytest.approx(_fit(A[:300], B[:300], "ridge", c).heldout_r2(A[300:], B[300:]), abs=1e-10)
    assert len(set(np.round(list(got.values()), 6))) > 1  # the penalty matters on these data
