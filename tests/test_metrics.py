"""Similarity metrics: agreement with plain Gram-matrix formulas, invariances, known answers, errors."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ortho_group

from geomsteer import metrics as M
from geomsteer.errors import DataError
from geomsteer.stats import STAT_KEYS


def gram_cka(X, Y, debiased=False):
    """Kornblith et al.'s CKA written plainly with n x n kernels (biased or Song et al.'s unbiased HSIC)."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    K, L = X @ X.T, Y @ Y.T
    n = len(K)

    def hsic(K, L):
        if not debiased:
            H = np.eye(n) - 1 / n
            return np.trace(K @ H @ L @ H)
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        return (np.trace(K @ L) + K.sum() * L.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * K.sum(0) @ L.sum(0)) / (n * (n - 3))

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def data(seed, n=120, d1=20, d2=15, shared=5):
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, shared))
    X = Z @ rng.standard_normal((shared, d1)) + 0.5 * rng.standard_normal((n, d1))
    Y = Z @ rng.standard_normal((shared, d2)) + 0.5 * rng.standard_normal((n, d2))
    return X, Y


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_streamed_cka_equals_gram_formula(debiased, offset):
    X, Y = data(0)
    X = X + offset  # a large mean (as in residual streams) must not cost precision
    expected = gram_cka(X - offset, Y, debiased)
    assert M.linear_cka(X, Y, debiased=debiased, batch_size=17) == pytest.approx(expected, abs=1e-9)


def test_accumulator_merge_equals_one_pass():
    X, Y = data(1, n=300)
    one = M.CKAAccumulator(20, 15).update(X, Y)
    parts = [M.CKAAccumulator(20, 15).update(X[i:j], Y[i:j]) for i, j in [(0, 50), (50, 51), (51, 300)]]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for debiased in (False, True):
        assert merged.value(debiased) == pytest.approx(one.value(debiased), abs=1e-12)
    with pytest.raises(DataError, match="cannot merge accumulators with different shifts"):
        one.merge(M.CKAAccumulator(20, 15, shift_x=np.ones(20)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_cka_invariances(seed, scale):
    X, Y = data(seed, n=60, d1=8, d2=6, shared=3)
    Q = ortho_group.rvs(8, random_state=seed)
    perm = np.random.default_rng(seed).permutation(60)
    for deb in (False, True):
        base = M.linear_cka(X, Y, debiased=deb)
        assert M.linear_cka(X @ Q, Y, debiased=deb) == pytest.approx(base, abs=1e-8)
        assert M.linear_cka(scale * X + 3.0, Y, debiased=deb) == pytest.approx(base, abs=1e-8)
        assert M.linear_cka(X[perm], Y[perm], debiased=deb) == pytest.approx(base, abs=1e-8)
    assert M.linear_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-10)


def test_cka_changes_under_a_general_invertible_map():
    X, Y = data(2)
    A = np.diag(np.linspace(0.1, 10, 20)) + 0.3 * np.random.default_rng(0).standard_normal((20, 20))
    assert abs(M.linear_cka(X @ A, Y) - M.linear_cka(X, Y)) > 0.01


def test_debiased_cka_of_independent_data_is_near_zero_and_biased_is_not():
    rng = np.random.default_rng(3)
    X, Y = rng.standard_normal((200, 300)), rng.standard_normal((200, 300))
    assert abs(M.linear_cka(X, Y, debiased=True)) < 0.02
    assert M.linear_cka(X, Y) > 0.4  # the bias of the plain estimator when d >> n


def test_rbf_cka_is_one_for_rotated_copies_and_lower_for_noise():
    X, Y = data(4)
    Q = ortho_group.rvs(20, random_state=4)
    assert M.rbf_cka(X, 5 * X @ Q + 1) == pytest.approx(1.0, abs=1e-10)
    rng = np.random.default_rng(4)
    assert M.rbf_cka(X, rng.standard_normal((120, 20))) < 0.5


def test_knn_metrics_known_answers_and_invariances():
    X, Y = data(5)
    Q = ortho_group.rvs(20, random_state=5)
    assert M.mutual_knn(X, 2.0 * X @ Q, k=5) == 1.0
    assert M.knn_jaccard(X, 2.0 * X @ Q, k=5) == 1.0
    perm = np.random.default_rng(5).permutation(120)
    assert M.mutual_knn(X[perm], Y[perm], k=5) == pytest.approx(M.mutual_knn(X, Y, k=5))
    rng = np.random.default_rng(6)
    R1, R2 = rng.standard_normal((400, 10)), rng.standard_normal((400, 10))
    assert M.mutual_knn(R1, R2, k=10) < 0.1  # chance is k / (n - 1) = 0.025
    j, m = M.knn_jaccard(X, Y, k=5), M.mutual_knn(X, Y, k=5)
    assert j <= m  # |A∩B| / |A∪B| <= |A∩B| / k


def test_cknna_is_one_for_identical_structure_and_lower_for_noise():
    X, _ = data(7)
    Q = ortho_group.rvs(20, random_state=7)
    assert M.cknna(X, 3 * X @ Q, k=10) == pytest.approx(1.0, abs=1e-9)
    rng = np.random.default_rng(7)
    assert M.cknna(X, rng.standard_normal((120, 20)), k=10) < 0.5


def test_svcca_invariant_to_rotation_scale_and_translation():
    X, Y = data(8)
    Q = ortho_group.rvs(20, random_state=1)
    assert M.svcca(X, Y) == pytest.approx(M.svcca(3 * X @ Q + 1, 2 * Y - 5), abs=1e-8)
    assert M.svcca(X, X @ Q) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("n", [100, 300, 1000, 3000])
def test_svcca_scores_independent_data_near_zero_and_a_noisy_rotation_near_one(n):
    # In-sample SVCCA gave 0.984, 0.946, 0.688, 0.395 for independent 640-d Gaussians at these n.
    rng = np.random.default_rng(n)
    X, Y = rng.standard_normal((n, 640)), rng.standard_normal((n, 640))
    assert abs(M.svcca(X, Y)) < 0.1
    Q = ortho_group.rvs(640, random_state=n)
    assert M.svcca(X, X @ Q + 0.1 * rng.standard_normal((n, 640))) > 0.9


def test_procrustes_zero_for_similar_shapes_and_symmetric():
    X, Y = data(9, d2=20)
    Q = ortho_group.rvs(20, random_state=9)
    assert M.procrustes(X, 7 * X @ Q - 2) == pytest.approx(0.0, abs=1e-6)
    assert M.procrustes(X, Y) == pytest.approx(M.procrustes(Y, X), abs=1e-12)
    assert 0 < M.procrustes(X, Y) <= np.sqrt(2)


def test_rsa_known_answer_and_invariances():
    X, Y = data(10)
    assert M.rsa(X, 3 * X) == pytest.approx(1.0)
    perm = np.random.default_rng(10).permutation(120)
    assert M.rsa(X[perm], Y[perm]) == pytest.approx(M.rsa(X, Y), abs=1e-12)
    with pytest.raises(DataError, match=r"^X has 1 constant row\(s\) \(e.g. row 0\): the correlation distance is "
                                        r"undefined for them; drop those samples from X and Y$"):
        Z = X.copy()
        Z[0] = 1.0
        M.rsa(Z, Y)


def test_cosine_and_feature_jaccard():
    A = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(M.cosine(A, 2 * A), [1.0, 1.0])
    np.testing.assert_allclose(M.cosine(A, np.array([[0.0, 1.0], [-1.0, -1.0]])), [0.0, -1.0])
    a = np.array([0, 1, 2, 0, 3.0])
    assert M.feature_jaccard(a, a) == 1.0
    assert M.feature_jaccard(a, np.array([1, 1, 0, 0, 0.0])) == pytest.approx(1 / 4)
    J = M.feature_jaccard(np.stack([a, a], 1), np.stack([a, np.zeros(5)], 1))
    assert J[0, 0] == 1.0 and J[1, 1] == 0.0 and J.shape == (2, 2)
    assert np.isnan(M.feature_jaccard(np.zeros(5), np.zeros(5)))


def test_error_messages():
    X, Y = data(11)
    with pytest.raises(DataError, match=re.escape("X and Y must have the same number of rows (one per sample), got 120 "
                                                  "and 119; align the samples of the two representations first")):
        M.linear_cka(X, Y[:-1])
    Xn = X.copy()
    Xn[3, 2] = np.nan
    with pytest.raises(DataError, match=re.escape("X has NaN or infinite values in 1 row(s): expected finite numbers; "
                                                  "drop or impute those rows (in both X and Y) first")):
        M.svcca(Xn, Y)
    with pytest.raises(DataError, match=re.escape("debiased linear CKA needs at least 4 samples, got 3")):
        M.linear_cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(DataError, match=re.escape("mutual k-NN needs 1 <= k < n (the number of samples), got k=120 "
                                                  "with n=120; use a smaller k or more samples")):
        M.mutual_knn(X, Y, k=120)
    with pytest.raises(DataError, match=re.escape("Y is constant (every column has a single value), so linear CKA is "
                                                  "undefined; check that the representation was extracted correctly")):
        M.linear_cka(X, np.ones_like(Y))
    with pytest.raises(DataError, match=re.escape("expected X as a 2-D array (n samples, d features), got shape (120,)")):
        M.rsa(X[:, 0], Y)


# --------------------------------------------------------------------------------------------
# Scans and feature matching


def _layers(seed=0, n=120):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 12))
    return rng, [base @ rng.normal(size=(12, d)) + 0.3 * rng.normal(size=(n, d)) for d in (10, 16, 7)]


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_pairwise_linear_cka(debiased):
    rng, As = _layers()
    Bs = [As[1] @ np.linalg.qr(rng.normal(size=(16, 16)))[0], rng.normal(size=(120, 5))]
    got = M.linear_cka_matrix(As, Bs, debiased=debiased)
    want = np.array([[M.linear_cka(a, b, debiased=debiased) for b in Bs] for a in As])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert got[1, 0] == pytest.approx(1.0)  # a rotation of the same layer
    np.testing.assert_allclose(M.linear_cka_matrix(As, Bs, debiased=debiased, dtype=np.float32), want, atol=1e-5)
    perm = rng.permutation(120)
    got = M.linear_cka_matrix(As, Bs, debiased=debiased, permutation=perm)
    want = np.array([[M.linear_cka(a, b[perm], debiased=debiased) for b in Bs] for a in As])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gram_scan_equals_pairwise_debiased_cka_also_reshuffled():
    rng, As = _layers(3)
    Bs = [As[1] @ np.linalg.qr(rng.normal(size=(16, 16)))[0], rng.normal(size=(120, 5))]
    A, B = M.GramSide(As), M.GramSide(Bs)
    want = np.array([[M.linear_cka(a, b, debiased=True) for b in Bs] for a in As])
    np.testing.assert_allclose(M.debiased_cka_scan(A, B), want, atol=1e-5)  # float32 Grams
    perm = rng.permutation(120)
    want = np.array([[M.linear_cka(a, b[perm], debiased=True) for b in Bs] for a in As])
    for X, Y in ((A, B), (B, A)):  # either side gathered (the one with fewer layers)
        got = M.debiased_cka_scan(X, Y, perm)
        np.testing.assert_allclose(got, want if X is A else np.array(
            [[M.linear_cka(b, a[perm], debiased=True) for a in As] for b in Bs]), atol=1e-5)
    with pytest.raises(DataError, match="different samples"):
        M.debiased_cka_scan(A, M.GramSide([np.ones((50, 3)) + rng.normal(size=(50, 3))]))


def test_knn_jaccard_permutations_equal_plain_calls():
    rng, As = _layers(4)
    perms = [rng.permutation(120) for _ in range(3)]
    obs, null = M.knn_jaccard_permutations(As[0], As[1], perms, k=6)
    assert obs == pytest.approx(M.knn_jaccard(As[0], As[1], 6))
    np.testing.assert_allclose(null, [M.knn_jaccard(As[0], As[1][p], 6) for p in perms])


def test_mutual_knn_matrix_equals_pairwise_mutual_knn():
    rng, As = _layers(1)
    na = [M.knn_indices(a, 6) for a in As]
    perm = rng.permutation(120)
    for p in (None, perm):
        got = M.mutual_knn_matrix(na, na, permutation=p)
        want = np.array([[M.mutual_knn(a, b if p is None else b[p], 6) for b in As] for a in As])
        np.testing.assert_allclose(got, want)
    assert np.allclose(np.diag(M.mutual_knn_matrix(na, na)), 1.0)


def test_scan_errors():
    with pytest.raises(DataError, match="same number of rows"):
        M.linear_cka_matrix([np.ones((5, 2))], [np.ones((6, 2))])
    with pytest.raises(DataError, match="rearrangement of 0..4"):
        M.linear_cka_matrix([np.eye(5)], [np.eye(5)], permutation=[0, 0, 1, 2, 3])
    with pytest.raises(DataError, match="1 <= k < n"):
        M.knn_indices(np.eye(5), 5)


def test_feature_correlation_matches_corrcoef_and_marks_dead_features():
    rng = np.random.default_rng(2)
    A = np.maximum(rng.normal(size=(500, 6)), 0)
    B = np.maximum(rng.normal(size=(500, 4)), 0)
    A[:, 3] = 0.0  # dead
    C = M.feature_correlation(A, B, batch_size=64)
    live = [0, 1, 2, 4, 5]
    want = np.corrcoef(A[:, live].T, B.T)[: len(live), len(live):]
    np.testing.assert_allclose(C[live], want, atol=1e-10)
    assert np.isnan(C[3]).all()


def test_hungarian_matching_recovers_a_planted_pairing():
    rng = np.random.default_rng(3)
    A = np.maximum(rng.normal(size=(2000, 30)), 0)
    perm = rng.permutation(30)
    B = A[:, perm] * rng.uniform(0.5, 2, 30) + 0.05 * rng.normal(size=(2000, 30))
    C = M.feature_correlation(A, B)
    ia, ib, corr = M.match_features(C, "hungarian")
    assert len(set(ib.tolist())) == 30 and (perm[ib] == ia).all()
    assert corr.min() > 0.9 and np.all(np.diff(corr) <= 0)
    ga, gb, _ = M.match_features(C, "greedy")
    assert (gb == np.nanargmax(C[ga], axis=1)).all()
    with pytest.raises(DataError, match="unknown matching method 'best'"):
        M.match_features(C, "best")
    with pytest.raises(DataError, match="no live features"):
        M.match_features(np.full((3, 3), np.nan))


def _cknna_reference(X, Y, k):
    """Huh et al.'s definition written out plainly: unit rows, top-k masks, unbiased HSIC with full products."""
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    K, L = X @ X.T, Y @ Y.T
    n = len(K)

    def topk_mask(G):
        H = G.copy()
        np.fill_diagonal(H, -np.inf)
        order = np.argsort(-H, axis=1)[:, :k]
        Mk = np.zeros((n, n))
        for i in range(n):
            Mk[i, order[i]] = 1.0
        return Mk

    def hsic(A, B):
        A, B = A.copy(), B.copy()
        np.fill_diagonal(A, 0)
        np.fill_diagonal(B, 0)
        v = (A * B.T).sum() + A.sum() * B.sum() / ((n - 1) * (n - 2)) - 2 * (A @ B).sum() / (n - 2)
        return v / (n * (n - 3))

    MK, ML = topk_mask(K), topk_mask(L)
    Mm = MK * ML
    return hsic(Mm * K, Mm * L) / np.sqrt(hsic(MK * K, MK * K) * hsic(ML * L, ML * L))


def test_cknna_agrees_with_the_reference_definition():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 16)) + 2.0
    Y = X @ rng.normal(size=(16, 20)) + 0.5 * rng.normal(size=(200, 20))
    assert M.cknna(X, Y, 8) == pytest.approx(_cknna_reference(X, Y, 8), abs=1e-6)


def test_a_few_huge_rows_barely_move_cknna_and_mutual_knn():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 16))
    Y = X @ rng.normal(size=(16, 20)) + 0.5 * rng.normal(size=(400, 20))
    Yb = Y.copy()
    Yb[rng.choice(400, 4, replace=False)] *= 30  # 1% of the rows, 30 times the norm
    assert abs(M.cknna(X, Yb, 8) - M.cknna(X, Y, 8)) < 0.02
    assert abs(M.mutual_knn(X, Yb, 8) - M.mutual_knn(X, Y, 8)) < 0.02
    assert M.cknna(X, Y, 8) > 0.3


def _cycle_data(k, seed, planted, per=12):
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(k)]
    if planted:  # centroids on a circle in a random plane of 20 dimensions
        basis = np.linalg.qr(rng.normal(size=(20, 2)))[0]
        t = 2 * np.pi * np.arange(k) / k
        centres = np.c_[np.cos(t), np.sin(t)] @ basis.T * 3
    else:
        centres = rng.normal(size=(k, 20))
    X = np.concatenate([c + rng.normal(size=(per, 20)) for c in centres])
    return X, [n for n in names for _ in range(per)], names


def test_cyclic_neighbours_finds_a_planted_circle():
    st = M.cyclic_neighbours(*_cycle_data(12, 0, True), n_permutations=500, n_bootstrap=50)
    assert st["observed"] == 1.0 and st["p_value"] < 0.01 and st["null"]["shuffled_cycle"]["n_draws"] == 500
    assert st["nearest"]["c0"] in ("c1", "c11") and st["ci95"][0] > st["chance"]
    assert set(STAT_KEYS) <= set(st)


def test_cyclic_neighbours_on_unordered_centroids_is_calibrated():
    """Random centroids: the null's mean is chance, 2/(k-1), and p < 0.05 about 5% of the time or less."""
    ps, means = [], []
    for seed in range(60):
        st = M.cyclic_neighbours(*_cycle_data(7, seed, False), n_permutations=300, n_bootstrap=0)
        ps.append(st["p_value"])
        means.append(st["null"]["shuffled_cycle"]["mean"])
    assert abs(np.mean(means) - 2 / 6) < 0.02
    assert np.mean(np.array(ps) < 0.05) <= 0.12
    with pytest.raises(DataError, match="at least 4 categories"):
        M.cyclic_neighbours(np.zeros((3, 2)), ["a", "b", "c"], ["a", "b", "c"])


def test_svcca_permutations_equal_svcca_on_the_repaired_samples():
    from geomsteer.metrics.geometry import svcca_halves, within_halves

    rng = np.random.default_rng(5)
    n = 120
    X = rng.normal(size=(n, 12))
    Y = X @ rng.normal(size=(12, 9)) + 0.5 * rng.normal(size=(n, 9))
    perms = [rng.permutation(n) for _ in range(4)]
    fast = M.svcca_permutations(X, Y, [None, *perms])
    halves = svcca_halves(n)
    plain = [M.svcca(X, Y)] + [M.svcca(X, Y[within_halves(p, halves)]) for p in perms]
    assert np.allclose(fast, plain, atol=1e-9)
    for p in perms:  # a re-pairing within the halves: each half maps onto itself
        q = within_halves(p, halves)
        assert sorted(q) == list(range(n)) and all(set(q[h]) == set(h) for h in halves)
    assert fast[0] > 0.8 and np.abs(fast[1:]).max() < 0.3  # planted vs re-paired


def test_rbf_cka_permutations_equal_the_plain_metric():
    rng = np.random.default_rng(6)
    X, Y = rng.normal(size=(60, 5)), rng.normal(size=(60, 7))
    perms = [rng.permutation(60) for _ in range(3)]
    obs, null = M.rbf_cka_permutations(X, Y, perms)
    assert np.isclose(obs, M.rbf_cka(X, Y), atol=1e-12)
    assert np.allclose(null, [M.rbf_cka(X, Y[p]) for p in perms], atol=1e-10)


def test_cknna_permutations_equal_the_plain_metric():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 6))
    Y = X @ rng.normal(size=(6, 4)) + 0.3 * rng.normal(size=(50, 4))
    perms = [rng.permutation(50) for _ in range(3)]
    obs, null = M.cknna_permutations(X, Y, perms, k=5)
    assert np.isclose(obs, M.cknna(X, Y, k=5), atol=1e-12)
    assert np.allclose(null, [M.cknna(X, Y[p], k=5) for p in perms], atol=1e-10)
    assert obs > null.max()


def test_rsa_from_shared_ranks_matches_scipy_with_ties_and_re_pairings():
    from scipy.stats import rankdata, spearmanr

    from geomsteer.metrics import average_ranks, rank_dissimilarities, rsa_permutations, rsa_ranked

    rng = np.random.default_rng(0)
    v = rng.integers(0, 30, 500).astype(float)  # many ties
    np.testing.assert_allclose(average_ranks(v), rankdata(v))
    n = 120
    X = rng.normal(size=(n, 12))
    Y = X @ rng.normal(size=(12, 20)) + 2 * rng.normal(size=(n, 20))
    Z = rng.normal(size=(n, 20))
    iu = np.triu_indices(n, 1)
    plain = lambda P, Q: spearmanr((1 - np.corrcoef(P))[iu], (1 - np.corrcoef(Q))[iu])[0]  # noqa: E731
    perms = [rng.permutation(n) for _ in range(3)]
    obs, null = rsa_permutations(X, Y, perms)
    assert obs == pytest.approx(plain(X, Y), abs=1e-12) and obs > 0.3  # a shared structure is found
    np.testing.assert_allclose(null, [plain(X, Y[p]) for p in perms], atol=1e-12)
    Ra = rank_dissimilarities(X)
    assert rsa_ranked(Ra, rank_dissimilarities(Z))[0] == pytest.approx(plain(X, Z), abs=1e-12)
    assert abs(rsa_ranked(Ra, rank_dissimilarities(Z))[0]) < 0.05  # independent data: nothing
    with pytest.raises(DataError, match="two square rank matrices of one size"):
        rsa_ranked(Ra, Ra[:5, :5])
