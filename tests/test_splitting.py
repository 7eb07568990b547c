"""Feature splitting across SAE widths against WordNet: linking, the planted split, noise, and 'geomsteer sae split'
on a tiny model with its messages."""

import json

import numpy as np
import pytest

from geomsteer.analyzers.splitting import FeatureSplitting, link_features
from geomsteer.errors import DataError
from geomsteer.stats import STAT_KEYS

TREE = {"mammal": "animal", "bird": "animal", "fish": "animal", "tool": "artifact", "car": "artifact",
        "house": "artifact", "animal": None, "artifact": None}


def below(child, parent):
    while child is not None:
        if child == parent:
            return True
        child = TREE[child]
    return False


def _planted(seed=0, n_parent=40, split=True):
    """A narrow SAE of 2 x n_parent features; the wide SAE splits each into two children near its decoder row.
    Parents alternate animal/artifact labels; planted children carry a category under their parent's label."""
    rng = np.random.default_rng(seed)
    d = 64
    N = rng.standard_normal((2 * n_parent, d))
    W = np.repeat(N, 2, axis=0) + 0.3 * rng.standard_normal((4 * n_parent, d))
    lab_n = {i: ("animal" if i % 2 == 0 else "artifact") for i in range(2 * n_parent)}
    kids = {"animal": ["mammal", "bird", "fish"], "artifact": ["tool", "car", "house"]}
    lab_w = {}
    for j in range(4 * n_parent):
        parent_label = lab_n[j // 2]
        other = "artifact" if parent_label == "animal" else "animal"
        lab_w[j] = rng.choice(kids[parent_label if split else (parent_label, other)[rng.integers(2)]])
    codes = [rng.random((200, 2 * n_parent)), rng.random((200, 4 * n_parent))]
    codes[1] = 0.5 * codes[1] + np.repeat(codes[0], 2, axis=1)  # children fire with their parent
    return [N, W], [lab_n, lab_w], codes


def test_links_find_each_wide_rows_nearest_narrow_row():
    rng = np.random.default_rng(1)
    N = rng.standard_normal((5, 16))
    W = np.vstack([N[3] + 0.01, -N[0], rng.standard_normal(16)])
    parent, cos = link_features(N, W, 0.9)
    assert parent[0] == 3 and cos[0] > 0.99
    assert parent[1] == -1 and parent[2] == -1


def test_a_planted_split_along_wordnet_is_found_and_random_labels_are_not():
    dec, labels, codes = _planted()
    a = FeatureSplitting(n_null=300, seed=0).fit(dec, labels, codes, below, names=["n", "w"])
    st = a.metrics_["statistics"]["children_under_parent_label:n->w"]
    assert set(STAT_KEYS) <= set(st)
    assert st["observed"] == 1.0 and st["p_value"] < 0.01
    strict = a.metrics_["statistics"]["children_strictly_under_parent_label:n->w"]
    assert strict["observed"] == 1.0 and strict["p_value"] < 0.01  # the planted children are all below, none equal
    co = a.metrics_["statistics"]["coactivation_of_links:n->w"]
    assert co["observed"] > 0.5 and co["p_value"] < 0.01
    assert a.links_[0]["n_split_parents"] == 80 and a.trees_
    dec, labels, codes = _planted(seed=2, split=False)
    stats = FeatureSplitting(n_null=300, seed=0).fit(dec, labels, codes, below).metrics_["statistics"]
    for name in ("children_under_parent_label:80->160", "children_strictly_under_parent_label:80->160"):
        assert not stats[name]["p_value"] < 0.01, (name, stats[name])


def test_features_that_fire_independently_are_not_coactive():
    dec, labels, _ = _planted(seed=3)
    rng = np.random.default_rng(4)
    codes = [rng.random((200, len(dec[0]))), rng.random((200, len(dec[1])))]  # no firing shared with a parent
    st = FeatureSplitting(n_null=200, seed=0).fit(dec, labels, codes, below).metrics_["statistics"][
        "coactivation_of_links:80->160"]
    assert set(STAT_KEYS) <= set(st) and not st["p_value"] < 0.01, st


def test_wordnet_paths_run_from_the_parent_label_down():
    from geomsteer.wordnet import is_under, load_wordnet, path_up

    wn = load_wordnet()
    p = path_up("dog.n.01", "animal.n.01")
    assert p[0] == "animal.n.01" and p[-1] == "dog.n.01" and len(p) >= 3  # the shortest: via domestic animal
    for up, down in zip(p[:-1], p[1:]):  # each step is a hypernym edge
        assert up in wn.synsets[down].hypernyms + wn.synsets[down].instance_hypernyms
    assert path_up("animal.n.01", "dog.n.01") is None and not is_under("animal.n.01", "dog.n.01")
    assert is_under("dog.n.01", "dog.n.01") and path_up("dog.n.01", "dog.n.01") == ["dog.n.01"]


def test_widths_must_grow():
    dec, labels, codes = _planted()
    with pytest.raises(DataError, match="grow in width"):
        FeatureSplitting().fit(dec[::-1], labels[::-1], codes[::-1], below)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_gemma):
    from test_steering_analyzers import random_sae

    from geomsteer import saes

    root = tmp_path_factory.mktemp("tiny_split")
    model = tiny_gemma
    h = "blocks.1.hook_resid_post"
    dirs = [str(saes.save_sae(random_sae(16, w, h, k=4, seed=w), root / f"sae{w}", extra={"hook": h, "model": model}))
            for w in (24, 8)]
    return model, dirs


def test_sae_split_writes_its_report(tiny, tmp_path, capsys):
    from geomsteer import cli

    model, dirs = tiny
    out = tmp_path / "split"
    assert cli.main(["sae", "split", "--sae", *dirs, "--model", model, "--words", "300", "--null-draws", "50",
                     "--min-cos", "0.2", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["geomsteer_result"] == "sae_split" and doc["metrics"]["widths"] == [8, 24]
    for st in doc["metrics"]["statistics"].values():
        assert set(STAT_KEYS) <= set(st)
    assert "labelled_fraction:8" in doc["metrics"]["statistics"]
    assert "feature splitting" in (out / "report.md").read_text().lower()
    assert "wide features linked" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--widths", "512", "8192", "--tokens", "1000"],
     "--tokens 1,000 is too few for a 8192-feature SAE"),
    (["--model", "gemma-3-270m", "--widths", "512", "1024"], "give either --sae"),
    (["--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--widths", "512"], "two or more different"),
    (["--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--widths", "16", "64", "--k", "32"],
     "--k 32 must be smaller"),
    (["--min-cos", "2"], "--min-cos must lie between 0 and 1"),
])
def test_bad_split_input_says_how_to_fix_it(tmp_path, capsys, args, message):
    from geomsteer import cli

    assert cli.main(["sae", "split", *args, "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_sae_split_refuses_saes_of_one_width(tiny, tmp_path, capsys):
    from geomsteer import cli

    model, dirs = tiny
    assert cli.main(["sae", "split", "--sae", dirs[0], dirs[0], "--model", model, "--out", str(tmp_path / "o")]) != 0
    assert "same width" in capsys.readouterr().err
