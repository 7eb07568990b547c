"""HierarchyAnalyzer on planted data with known answers, and its contract."""

import numpy as np
import pytest
from conftest import make_hierarchy, planted

from geomsteer.analyzers.hierarchy import HierarchyAnalyzer
from geomsteer.errors import ConfigError, DataError, NotFittedError
from geomsteer.types import Directions


@pytest.fixture(scope="module")
def fitted():
    gamma, h = planted(seed=0)
    return HierarchyAnalyzer(seed=0, n_random_tokens=500, progress=False).fit(gamma, h), gamma, h


def test_planted_hierarchy_is_orthogonal_and_random_parents_are_not(fitted):
    a, _, _ = fitted
    o = a.metrics_["orthogonality_parent_child"]
    assert o["lda"]["n"] == 8
    assert o["lda"]["mean_abs"] < 0.15
    # A child paired with an unrelated category is far from orthogonal (cos ~ -|l_r| / |l_c - l_r|).
    assert o["random_parent"]["mean"] < -0.3
    assert o["random_parent"]["mean_abs"] > 3 * o["lda"]["mean_abs"]


def test_planted_projection_separates_categories_and_shuffling_destroys_it(fitted):
    a, _, _ = fitted
    p = a.metrics_["projection"]
    assert p["observed"]["train_mean"] == pytest.approx(1.0, abs=1e-9)  # by construction
    assert p["observed"]["test_mean"] > 0.8
    assert abs(p["observed"]["random_mean"]) < 0.25
    assert abs(p["shuffled_tokens"]["test_mean"]) < 0.3
    assert p["observed"]["test_mean"] - p["shuffled_tokens"]["test_mean"] > 0.6


def test_planted_siblings_form_a_simplex(fitted):
    a, _, _ = fitted
    s = a.metrics_["simplex"]["observed"]
    assert s["n_parents"] == 2
    assert s["fraction_affinely_independent"] == 1.0
    assert s["nearest_vertex_accuracy"] > 0.9
    assert s["chance_accuracy"] == pytest.approx(1 / 3)


def test_cosines_follow_tree_distance_on_planted_data(fitted):
    a, _, _ = fitted
    heat = a.metrics_["cosine_vs_tree_distance"]
    assert heat["observed"]["pearson"] > 0.5
    assert a.cosine_matrix_.shape == (9, 9)
    np.testing.assert_allclose(np.diag(a.cosine_matrix_), 1.0, atol=1e-12)


def test_every_statistic_has_its_baselines(fitted):
    a, _, _ = fitted
    m = a.metrics_
    for key in ("shuffled_tokens", "random_categories", "euclidean", "random_unembedding", "random_parent", "lda"):
        assert key in m["orthogonality_parent_child"]
    for key in ("observed", "shuffled_tokens", "random_unembedding"):
        assert key in m["projection"]
    for key in ("observed", "shuffled_tokens", "random_categories", "euclidean", "random_unembedding"):
        assert key in m["cosine_vs_tree_distance"]
    assert "shuffled_tokens" in m["simplex"]["baselines"]


def test_same_seed_same_result_and_inputs_untouched():
    gamma, h = planted(seed=3)
    before = gamma.copy()
    r1 = HierarchyAnalyzer(seed=5, n_random_tokens=300, progress=False).fit(gamma, h).result().to_dict()
    r2 = HierarchyAnalyzer(seed=5, n_random_tokens=300, progress=False, n_jobs=1).fit(gamma, h).result().to_dict()
    np.testing.assert_array_equal(gamma, before)
    r1["params"].pop("n_jobs"), r2["params"].pop("n_jobs")
    assert r1 == r2


def test_directions_input_carries_model_name_into_the_result():
    gamma, h = planted(seed=1)
    d = Directions(gamma, [str(i) for i in range(len(gamma))], "unembed", "toy-model", {"source": "test"})
    a = HierarchyAnalyzer(baselines=False, n_random_tokens=200, progress=False).fit(d, h)
    res = a.result()
    assert res.provenance["model"] == "toy-model"
    assert a.directions_.model == "toy-model" and a.directions_.vectors.shape == (9, gamma.shape[1])
    assert "shuffled_tokens" not in res.metrics["projection"]
    assert len(res.tables["categories"]) == 9
    assert res.to_json()  # serializable


def test_result_before_fit_says_what_to_do():
    with pytest.raises(NotFittedError, match=r"^this HierarchyAnalyzer is not fitted yet: call fit\(unembedding, hierarchy\) first$"):
        HierarchyAnalyzer().result()


def test_unknown_estimator_is_rejected_with_the_choices():
    gamma, h = planted()
    with pytest.raises(ConfigError, match=r"^unknown estimator 'pca': expected one of lda, lda_reference, mean$"):
        HierarchyAnalyzer(estimator="pca").fit(gamma, h)


def test_bad_test_size_is_rejected():
    gamma, h = planted()
    with pytest.raises(ConfigError, match=r"^test_size must be a float strictly between 0 and 1, got 1.5$"):
        HierarchyAnalyzer(test_size=1.5).fit(gamma, h)


def test_hierarchy_from_another_tokenizer_is_rejected():
    gamma, h = planted()
    with pytest.raises(DataError, match=r"^the hierarchy names token id \d+ but the unembedding has 100 rows; "
                                        r"build the hierarchy with the same model's tokenizer$"):
        HierarchyAnalyzer().fit(gamma[:100], h)


def test_tiny_categories_are_rejected():
    gamma, _ = planted()
    h = make_hierarchy([("p", "c")], {"p": [1, 2, 3, 4, 5], "c": [1, 2]})
    with pytest.raises(DataError, match=r"^categories need at least 4 tokens for a train/test split; c has 2; "):
        HierarchyAnalyzer().fit(gamma, h)


def test_mean_estimator_runs_and_differs_from_lda():
    gamma, h = planted(seed=2)
    lda = HierarchyAnalyzer(baselines=False, n_random_tokens=200, progress=False).fit(gamma, h)
    mean = HierarchyAnalyzer(estimator="mean", baselines=False, n_random_tokens=200, progress=False).fit(gamma, h)
    assert not np.allclose(lda.directions_.vectors, mean.directions_.vectors)
    np.testing.assert_allclose(mean.directions_.vectors, lda.mean_directions_.vectors, rtol=1e-6)


def test_category_table_matches_the_directions(fitted):
    a, _, h = fitted
    idx = {n: i for i, n in enumerate(a.names_)}
    L = a.directions_.vectors.astype(np.float64)
    for row in a.categories_:
        if row["parent"] is None:
            assert np.isnan(row["orthogonality_cos"])
            continue
        lp, lc = L[idx[row["parent"]]], L[idx[row["synset"]]]
        expected = lp @ (lc - lp) / np.linalg.norm(lp) / np.linalg.norm(lc - lp)
        assert row["orthogonality_cos"] == pytest.approx(expected, abs=1e-5)
        assert row["n_train"] + row["n_test"] == row["n_tokens"] == len(h.tokens(row["synset"]))
