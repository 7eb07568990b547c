"""HierarchyAnalyzer on planted data with known answers, and its contract."""

import numpy as np
import pytest
from conftest import make_hierarchy, planted

from geomsteer.analyzers.hierarchy import HierarchyAnalyzer
from geomsteer.errors import ConfigError, DataError, NotFittedError
from geomsteer.stats import STAT_KEYS
from geomsteer.types import Directions


@pytest.fixture(scope="module")
def fitted():
    gamma, h = planted(seed=0)
    return HierarchyAnalyzer(seed=0, n_random_tokens=500, n_null_draws=8, progress=False).fit(gamma, h), gamma, h


def test_every_statistic_has_the_shared_shape(fitted):
    a, _, _ = fitted
    for name, st in a.metrics_.items():
        assert set(STAT_KEYS) <= set(st), name
        assert set(st["null"]) == {"shuffled_tokens", "nested_random_sets", "random_unembedding"}, name
        for nd in st["null"].values():
            assert nd["n_draws"] == 8 and nd["sd"] is not None and nd["p_min"] == pytest.approx(1 / 9)
        assert st["ci95"] is None or st["ci95"][0] <= st["observed"] <= st["ci95"][1] + 1e-12, name
        assert st["n"] > 0


def test_planted_hierarchy_is_more_orthogonal_than_every_nested_null(fitted):
    a, _, _ = fitted
    o = a.metrics_["orthogonality_parent_child"]
    assert o["n"] == 8 and o["alternative"] == "less"
    assert o["observed"] < 0.05
    assert o["p_value"] < 0.05 and o["effect_size"] < -2
    s = a.metrics_["orthogonality_siblings"]
    assert s["n"] == 7  # root: 1 pair, A and B: 3 each
    assert all(s["observed"] < nd["mean"] for nd in s["null"].values())
    assert s["null"]["shuffled_tokens"]["p_value"] < 0.01 and s["null"]["random_unembedding"]["p_value"] < 0.01
    # The unnested 'random parent' is a contrast, not a null: its cosine is large whatever the model does.
    assert o["contrasts"]["random_parent"] > 0.3
    assert "random_parent" not in o["null"]


def test_planted_held_out_tokens_and_simplices_beat_every_null(fitted):
    a, _, _ = fitted
    for name in ("heldout_auc", "simplex_nearest_vertex", "simplex_span_auc"):
        st = a.metrics_[name]
        assert st["p_value"] < 0.01 and st["effect_size"] > 4, name
    assert a.metrics_["heldout_auc"]["observed"] > 0.95
    assert all(row["train_projection"] == pytest.approx(1.0, abs=1e-9) for row in a.categories_)
    # chance is 1/k but it is not the null: the nulls' own nearest-vertex rates are
    assert a.simplices_[0]["chance_one_over_k"] == pytest.approx(1 / 3)


def test_random_unembedding_with_a_planted_tree_finds_nothing():
    gamma, h = planted(seed=0)
    noise = np.random.default_rng(7).standard_normal(gamma.shape).astype(np.float32)
    a = HierarchyAnalyzer(seed=1, n_random_tokens=500, n_null_draws=8, progress=False).fit(noise, h)
    for name, st in a.metrics_.items():
        assert not (st["p_value"] < 0.001 and abs(st["effect_size"]) > 4), (name, st["p_value"], st["effect_size"])


def test_held_out_split_keeps_each_lemma_on_one_side():
    from geomsteer.analyzers.hierarchy_stats import tree_split

    gamma, h = planted(seed=0)
    sets = [h.tokens(n) for n in h.names]
    groups = {int(t): int(t) // 3 for t in np.unique(np.concatenate(sets))}  # lemmas of three forms
    splits, n_local = tree_split(sets, groups, 0.3, np.random.default_rng(0))
    assert n_local == 0
    train_groups = {groups[int(t)] for tr, _ in splits for t in tr}
    test_groups = {groups[int(t)] for _, te in splits for t in te}
    assert not train_groups & test_groups
    # one split for the tree: a child's train tokens are inside its parent's train tokens
    idx = {n: i for i, n in enumerate(h.names)}
    for p, c in h.graph.edges:
        assert set(splits[idx[c]][0]) <= set(splits[idx[p]][0])


def test_lemma_split_of_one_category():
    from geomsteer.analyzers.hierarchy_stats import lemma_split

    toks = np.arange(40)
    groups = {t: t // 4 for t in range(40)}
    tr, te = lemma_split(toks, groups, 0.3, np.random.default_rng(0))
    assert len(te) == 12 and len(tr) == 28
    assert not {t // 4 for t in tr} & {t // 4 for t in te}


def test_same_seed_same_result_and_inputs_untouched():
    gamma, h = planted(seed=3)
    before = gamma.copy()
    r1 = HierarchyAnalyzer(seed=5, n_random_tokens=300, progress=False).fit(gamma, h).result().to_dict()
    r2 = HierarchyAnalyzer(seed=5, n_random_tokens=300, progress=False, n_jobs=1).fit(gamma, h).result().to_dict()
    np.testing.assert_array_equal(gamma, before)
    r1["params"].pop("n_jobs"), r2["params"].pop("n_jobs")
    r1["provenance"].pop("seconds"), r2["provenance"].pop("seconds")  # wall-clock times differ
    assert r1 == r2


def test_directions_input_carries_model_name_into_the_result():
    gamma, h = planted(seed=1)
    d = Directions(gamma, [str(i) for i in range(len(gamma))], "unembed", "toy-model", {"source": "test"})
    a = HierarchyAnalyzer(baselines=False, n_random_tokens=200, progress=False).fit(d, h)
    res = a.result()
    assert res.provenance["model"] == "toy-model"
    assert a.directions_.model == "toy-model" and a.directions_.vectors.shape == (9, gamma.shape[1])
    assert res.metrics["heldout_auc"]["null"] == {} and res.metrics["heldout_auc"]["p_value"] is None
    assert res.metrics["heldout_auc"]["p_reason"].startswith("nulls skipped")
    assert len(res.tables["categories"]) == 9
    assert res.to_json()  # serializable


def test_result_before_fit_says_what_to_do():
    with pytest.raises(NotFittedError, match=r"^this HierarchyAnalyzer is not fitted yet: call fit\(unembedding, hierarchy\) first$"):
        HierarchyAnalyzer().result()


def test_unknown_estimator_is_rejected_with_the_choices():
    gamma, h = planted()
    with pytest.raises(ConfigError, match=r"^unknown estimator 'pca': expected one of lda, lda_reference, mean$"):
        HierarchyAnalyzer(estimator="pca").fit(gamma, h)


def test_too_few_null_draws_are_rejected():
    gamma, h = planted()
    with pytest.raises(ConfigError, match=r"^n_null_draws must be an integer >= 2 \(a null needs a spread\), got 1; "
                                         r"pass n_null_draws=2 or more \(the CLI's default is 4\)$"):
        HierarchyAnalyzer(n_null_draws=1).fit(gamma, h)


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


@pytest.mark.real_model
def test_random_gaussian_unembedding_with_the_real_wordnet_tree_is_not_a_finding(gemma_unembedding):
    """The review's case: today's report would show orthogonality and simplices as findings here."""
    from geomsteer.wordnet import build_hierarchy

    e = gemma_unembedding
    h = build_hierarchy(e.vocab, "n", 50)
    noise = np.random.default_rng(0).standard_normal((len(e.gamma), 64)).astype(np.float32)
    a = HierarchyAnalyzer(seed=0, n_null_draws=5, progress=False).fit(noise, h)
    for name, st in a.metrics_.items():
        assert not (st["p_value"] < 0.001 and abs(st["effect_size"]) > 4), (name, st["p_value"], st["effect_size"])
    # the statistics that used to look like findings sit inside their nulls
    assert a.metrics_["simplex_nearest_vertex"]["p_value"] > 0.01
    assert a.metrics_["heldout_auc"]["p_value"] > 0.01


def test_report_is_written_with_and_without_nulls(tmp_path):
    from geomsteer import reports

    gamma, h = planted(seed=4)
    for baselines in (False, True):
        a = HierarchyAnalyzer(baselines=baselines, n_random_tokens=300, progress=False).fit(gamma, h)
        out = tmp_path / str(baselines)
        reports.write_hierarchy_report(a, h, out)
        assert sorted(p.name for p in (out / "figures").iterdir()) == ["heatmap.png", "nulls.png", "orthogonality.png"]
        text = (out / "report.md").read_text()
        assert ("## Contrasts (not nulls)" in text) == baselines
        assert ("no null computed" in text) == (not baselines)
