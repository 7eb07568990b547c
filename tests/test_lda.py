"""The estimators of Park et al.: known answers, invariants, and fast path == reference."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import ledoit_wolf_shrinkage as sk_shrinkage

from geomsteer.analyzers.hierarchy import (
    fit_whitening,
    lda_direction,
    lda_direction_reference,
    ledoit_wolf_shrinkage,
    mean_direction,
)


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("n,d", [(10, 40), (40, 40), (41, 40), (300, 40), (5, 3)])
def test_shrinkage_matches_scikit_learn(n, d):
    X = np.random.default_rng(n * d).standard_normal((n, d)) * np.linspace(0.1, 3, d) + 1.5
    s, mu = ledoit_wolf_shrinkage(X)
    assert s == pytest.approx(sk_shrinkage(X), rel=1e-9, abs=1e-12)
    Xc = X - X.mean(0)
    assert mu == pytest.approx(np.trace(Xc.T @ Xc / n) / d)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 90), d=st.integers(2, 60), seed=st.integers(0, 10_000), shift=st.floats(0.0, 3.0))
def test_fast_lda_agrees_with_reference(n, d, seed, shift):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * rng.uniform(0.2, 2.0, d) + shift * rng.standard_normal(d)
    fast, ref = lda_direction(X), lda_direction_reference(X)
    if np.linalg.norm(ref) < 1e-12:
        assert np.linalg.norm(fast) < 1e-8
        return
    assert cos(fast, ref) >= 0.9999
    assert np.linalg.norm(fast) == pytest.approx(np.linalg.norm(ref), rel=1e-6)


def test_lda_of_two_gaussians_is_parallel_to_sigma_inverse_delta():
    # Category ~ N(delta, Sigma) against a background centred at 0 with the same covariance:
    # the LDA direction is Sigma^-1 delta (shrinkage vanishes as n grows).
    rng = np.random.default_rng(0)
    d, n = 12, 200_000
    A = rng.standard_normal((d, d))
    Sigma = A @ A.T / d + 0.1 * np.eye(d)
    delta = rng.standard_normal(d)
    X = rng.multivariate_normal(delta, Sigma, size=n)
    expected = np.linalg.solve(Sigma, delta)
    got = lda_direction(X)
    assert cos(got, expected) > 0.999
    # l = (u . mu) u: the projection of the mean onto the direction is preserved.
    u = got / np.linalg.norm(got)
    assert got @ u == pytest.approx(X.mean(0) @ u)
    # The mean estimator is not Sigma^-1 delta when Sigma is anisotropic.
    assert cos(mean_direction(X), expected) < 0.99


def test_rank_deficient_inputs_give_finite_results():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((30, 3))
    X = np.hstack([base, base, np.zeros((30, 4))])  # rank 3 in 10 dimensions, constant columns
    for v in (lda_direction(X), lda_direction_reference(X)):
        assert np.isfinite(v).all()
    assert cos(lda_direction(X), lda_direction_reference(X)) > 0.9999
    dup = np.repeat(rng.standard_normal((1, 8)), 5, axis=0)  # all rows equal: zero covariance
    assert np.isfinite(lda_direction(dup)).all()
    gamma = np.hstack([rng.standard_normal((500, 4)), np.zeros((500, 2))]).astype(np.float32)
    wh = fit_whitening(gamma)
    assert wh.n_floored == 2
    assert np.isfinite(wh.W).all() and np.isfinite(wh(gamma)).all()


def test_float32_and_float64_inputs_agree():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((70, 30)) + 0.7
    a, b = lda_direction(X.astype(np.float32)), lda_direction(X.astype(np.float32).astype(np.float64))
    # float32 input keeps float32 products (the null draws use it for speed); the solve is float64
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert cos(lda_direction(X.astype(np.float32)), lda_direction(X)) > 0.99999
    big = rng.standard_normal((300, 20)) + 0.3  # n > d: the chunked d x d path
    assert cos(lda_direction(big.astype(np.float32)), lda_direction(big)) > 0.99999
    gamma = rng.standard_normal((400, 16))
    w32, w64 = fit_whitening(gamma.astype(np.float32)), fit_whitening(gamma)
    np.testing.assert_allclose(w32.W, w64.W, rtol=1e-5, atol=1e-6)


def test_whitening_gives_identity_covariance_and_is_symmetric():
    rng = np.random.default_rng(3)
    gamma = rng.standard_normal((5000, 20)) @ rng.standard_normal((20, 20)) + 4.0
    wh = fit_whitening(gamma, chunk=777)  # chunking must not change the answer
    g = wh(gamma)
    np.testing.assert_allclose(g.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(g.T @ g / len(g), np.eye(20), atol=1e-8)
    np.testing.assert_allclose(wh.W, wh.W.T, atol=1e-12)


def test_lda_rejects_a_single_token():
    from geomsteer.errors import DataError

    with pytest.raises(DataError, match=r"expected a category's \(n, d\) token matrix with n >= 2, got shape \(1, 5\)"):
        lda_direction(np.ones((1, 5)))
