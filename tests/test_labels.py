"""Offline WordNet auto-labels for SAE features: planted labels come back, noise gets none."""

import numpy as np
import pytest

from geomsteer.analyzers.labels import FeatureLabeler, enrichment
from geomsteer.errors import ConfigError, DataError


def _words_and_categories(rng, n_words=400, n_cats=12):
    """Nested categories: six parents of ~66 words, each split into two children."""
    parent = rng.integers(0, 6, n_words)
    child = parent * 2 + rng.integers(0, 2, n_words)
    M = np.zeros((n_words, 6 + n_cats), dtype=bool)
    M[np.arange(n_words), parent] = True
    M[np.arange(n_words), 6 + child] = True
    names = [f"parent{i}" for i in range(6)] + [f"child{i}" for i in range(n_cats)]
    return M, names, parent, child


def test_enrichment_is_the_hypergeometric_tail():
    from scipy.stats import hypergeom

    fires = np.zeros((20, 1), dtype=bool)
    fires[:6, 0] = True
    M = np.zeros((20, 1), dtype=bool)
    M[:8, 0] = True
    p, k = enrichment(fires, M)
    assert k[0, 0] == 6 and p[0, 0] == pytest.approx(hypergeom.sf(5, 20, 8, 6))


def test_planted_features_get_their_categories_back_and_the_most_specific_one():
    rng = np.random.default_rng(0)
    M, names, parent, child = _words_and_categories(rng)
    codes = np.zeros((len(M), 40))
    for f in range(12):  # features 0..11 fire on child category f (most of it)
        on = np.flatnonzero(child == f)
        codes[on[: int(0.8 * len(on))], f] = 1.0
    for f in range(12, 18):  # features 12..17 fire on a whole parent category
        codes[parent == f - 12, f] = 1.0
    codes[:, 18:] = rng.random((len(M), 22)) < 0.08  # noise features
    lab = FeatureLabeler(n_null=120).fit(codes, M, names, words=[f"w{i}" for i in range(len(M))])
    got = {r["feature"]: r for r in lab.labels_}
    for f in range(12):
        assert got[f]["label"] == f"child{f}" and got[f]["significant"] and got[f]["precision"] == 1.0
    for f in range(12, 18):
        assert got[f]["label"] == f"parent{f - 12}" and got[f]["recall"] == 1.0
    assert sum(got[f]["significant"] for f in range(18, 40)) <= 2
    st = lab.statistics_["labelled_fraction"]
    assert st["p_value"] < 0.01 and st["observed"] > 0.4
    assert got[0]["example_words"] and lab.result().tables["labels"][0]["q_value"] <= 1e-6


def test_random_features_get_no_more_labels_than_shuffled_memberships():
    rng = np.random.default_rng(1)
    M, names, *_ = _words_and_categories(rng)
    codes = (rng.random((len(M), 60)) < 0.1).astype(float)
    st = FeatureLabeler(n_null=20).fit(codes, M, names).statistics_["labelled_fraction"]
    assert st["observed"] <= 0.1 and st["p_value"] > 0.01


def test_bad_input_says_what_was_expected():
    rng = np.random.default_rng(2)
    M, names, *_ = _words_and_categories(rng)
    with pytest.raises(DataError, match="one row per word"):
        FeatureLabeler().fit(np.zeros((3, 4)), M, names)
    with pytest.raises(DataError, match="no feature fires on 3 or more"):
        FeatureLabeler().fit(np.zeros((len(M), 4)), M, names)
    with pytest.raises(ConfigError, match="n_null must be at least 2"):
        FeatureLabeler(n_null=1).fit(np.ones((len(M), 4)), M, names)


def test_wordnet_memberships_follow_the_hypernym_closure():
    from geomsteer.wordnet import category_memberships

    names, M = category_memberships(["dog", "cat", "horse", "elm", "pine", "xyzzy"], min_size=2, max_fraction=0.8)
    col = {n: j for j, n in enumerate(names)}
    assert M[0, col["mammal.n.01"]] and M[1, col["mammal.n.01"]] and not M[3, col["mammal.n.01"]]
    assert M[3, col["tree.n.01"]] and M[4, col["tree.n.01"]]
    assert not M[5].any()  # no noun sense: no category
    assert "entity.n.01" not in col  # five of six words: above max_fraction


def test_sae_label_command_on_a_tiny_model(tmp_path, capsys):
    """'geomsteer sae label' end to end on a tiny local model and a random SAE: the files, the statistic's shape,
    and a message for bad input."""
    import json

    import torch
    import transformers as tf
    from test_steering_analyzers import random_sae

    from geomsteer import cli, models, saes

    tok = models.load_tokenizer("gemma-3-270m")
    torch.manual_seed(0)
    m = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=32))
    m.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    sae = saes.save_sae(random_sae(16, 24, "blocks.0.hook_resid_post", k=4), tmp_path / "sae",
                        extra={"hook": "blocks.0.hook_resid_post"})
    out = tmp_path / "labels"
    assert cli.main(["sae", "label", str(sae), "--model", str(tmp_path / "model"), "--words", "300",
                     "--min-category", "5", "--null-draws", "5", "--decompose", "animal.n.01", "--k", "3",
                     "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    st = doc["metrics"]["statistics"]["labelled_fraction"]
    assert set(st) >= {"observed", "ci95", "null", "effect_size", "p_value", "n"}
    assert doc["tables"]["labels"] and (out / "figures" / "labels.png").is_file()
    dec = doc["metrics"]["statistics"]["explained_by_3_features:animal.n.01"]
    assert set(dec) >= {"observed", "ci95", "null", "effect_size", "p_value", "n"}
    assert doc["tables"]["decomposition"][0]["category"] == "animal.n.01"
    assert "Category directions in features" in (out / "report.md").read_text()
    assert "live features labelled" in capsys.readouterr().out
    assert cli.main(["sae", "label", str(sae), "--model", str(tmp_path / "model"), "--words", "10",
                     "--out", str(tmp_path / "o")]) == 2
    assert "--words must be at least 50" in capsys.readouterr().err
    assert cli.main(["sae", "label", str(sae), "--model", str(tmp_path / "model"), "--words", "300",
                     "--decompose", "zzz.n.01", "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert "--decompose 'zzz.n.01' is not a category of the words read" in err and "Traceback" not in err


def test_a_direction_built_from_labelled_features_decomposes_into_them_and_noise_does_not():
    from geomsteer.analyzers.labels import LabelDecomposition

    rng = np.random.default_rng(0)
    d, n_feat = 48, 120
    D = rng.standard_normal((n_feat, d))
    labels = {f: ("cat" if f < 6 else "other") for f in range(60)}  # features 0..5 carry the label
    X = rng.standard_normal((500, d))
    planted = D[:3].sum(0) + 0.5 * D[3]
    noise = rng.standard_normal(d)
    below = lambda a, b: a == b  # noqa: E731
    a = LabelDecomposition(k=4, n_null=40, seed=0).fit({"cat": planted, "noise": noise}, D, labels, X, below,
                                                        list(range(n_feat)))
    st = a.metrics_["statistics"]
    assert st["explained_by_4_features:cat"]["observed"] > 0.99 and st["explained_by_4_features:cat"]["p_value"] < 0.01
    assert st["features_labelled_with_it:cat"]["observed"] == 1.0
    assert st["features_labelled_with_it:cat"]["p_value"] < 0.01
    assert not st["explained_by_4_features:noise"]["p_value"] < 0.01
    assert sorted(a.rows_[0]["features"]) == [0, 1, 2, 3]
