"""LayerHierarchyAnalyzer: the hierarchy statistics layer by layer, with the activations' covariance as the
inner product. A layer with a planted hierarchy must stand out; a layer of noise must not."""

import numpy as np
import pytest
from conftest import planted

from geomsteer.analyzers.hierarchy_layers import LayerHierarchyAnalyzer, compact_hierarchy
from geomsteer.errors import DataError
from geomsteer.stats import STAT_KEYS


def _layers(seed=0):
    gamma, h = planted(seed=seed)
    tree = np.unique(np.concatenate([h.tokens(n) for n in h.names]))
    rng = np.random.default_rng(seed + 1)
    others = np.setdiff1d(np.arange(len(gamma)), tree)
    pool = np.sort(rng.choice(others, 500, replace=False))
    ids = np.union1d(tree, pool)
    # A linear map a layer might apply: the statistics use the layer's own covariance, so they do not care.
    A = rng.standard_normal((gamma.shape[1], gamma.shape[1]))
    acts = {"noise": rng.standard_normal((len(ids), gamma.shape[1])).astype(np.float32),
            "planted": (gamma[ids] @ A).astype(np.float32)}
    return acts, ids, h, pool


@pytest.fixture(scope="module")
def fitted():
    acts, ids, h, pool = _layers()
    return LayerHierarchyAnalyzer(n_null_draws=6, seed=0, progress=False).fit(acts, ids, h, pool), acts, ids, h


def test_planted_layer_stands_out_and_the_noise_layer_does_not(fitted):
    a, _, _, _ = fitted
    m = a.metrics_["layers"]
    for name, p, e in (("orthogonality_parent_child", 0.05, -2), ("orthogonality_siblings", 0.05, -2),
                       ("simplex_nearest_vertex", 0.01, 4), ("heldout_projection", 0.01, 3)):
        st = m["planted"][name]
        assert set(STAT_KEYS) <= set(st)
        assert st["p_value"] < p and st["effect_size"] * np.sign(e) > abs(e), (name, st["p_value"], st["effect_size"])
    for name, st in m["noise"].items():
        assert not (st["p_value"] < 0.001 and abs(st["effect_size"]) > 4), (name, st["p_value"], st["effect_size"])
    assert m["planted"]["heldout_auc"]["observed"] > 0.95
    assert 0.35 < m["noise"]["heldout_auc"]["observed"] < 0.65


def test_by_layer_table_has_each_statistic_per_layer_with_holm(fitted):
    a, _, _, _ = fitted
    rows = a.by_layer_
    assert len(rows) == 2 * len(a.metrics_["layers"]["planted"])
    for r in rows:
        if r["p_value"] is not None:
            assert r["p_holm_across_layers"] >= r["p_value"] - 1e-12
    cats = {r["synset"]: r for r in a.categories_}
    assert cats["A1"]["heldout_auc"]["planted"] > 0.9


def test_directions_live_in_the_residual_stream(fitted):
    """A direction mapped back to the activations' coordinates, whitened again, is the LDA vector: its
    projection separates the category's tokens there too."""
    a, acts, ids, h = fitted
    X = acts["planted"].astype(np.float64)
    D = a.directions_["planted"]
    i = a.names_.index("A")
    lut = {int(t): r for r, t in enumerate(ids)}
    inside = np.array([lut[int(t)] for t in h.tokens("A")])
    outside = np.array([lut[int(t)] for t in h.tokens("B")])
    # moving by D[i] in x moves the whitened row by l_i; the whitened metric's dual is Cov^-1
    cov = np.cov(X.T, bias=True)
    w = np.linalg.solve(cov, D[i])
    s_in, s_out = (X[inside] - X.mean(0)) @ w, (X[outside] - X.mean(0)) @ w
    assert s_in.mean() > s_out.mean() + 3 * s_out.std()


def test_layers_invariant_to_an_invertible_map():
    """Whitening by the layer's own covariance: an invertible linear map of the activations changes no statistic."""
    acts, ids, h, pool = _layers(seed=3)
    B = np.random.default_rng(9).standard_normal((acts["planted"].shape[1],) * 2)
    acts2 = {"a": acts["planted"], "b": (acts["planted"].astype(np.float64) @ B).astype(np.float32)}
    a = LayerHierarchyAnalyzer(n_null_draws=2, seed=0, progress=False).fit(acts2, ids, h, pool)
    for s in ("orthogonality_parent_child", "heldout_auc"):
        assert a.metrics_["layers"]["a"][s]["observed"] == pytest.approx(a.metrics_["layers"]["b"][s]["observed"],
                                                                          abs=2e-3)


def test_missing_tokens_and_bad_shapes_say_what_to_fix():
    acts, ids, h, pool = _layers()
    with pytest.raises(DataError, match="was not read"):
        compact_hierarchy(h, ids[5:])
    with pytest.raises(DataError, match="expected .* rows"):
        LayerHierarchyAnalyzer(progress=False).fit({"x": acts["noise"][:-1]}, ids, h, pool)
    with pytest.raises(DataError, match="pool"):
        LayerHierarchyAnalyzer(progress=False).fit(acts, ids, h, np.array([10**6]))
    with pytest.raises(DataError, match="no layers"):
        LayerHierarchyAnalyzer(progress=False).fit({}, ids, h, pool)


# --------------------------------------------------------------------------------------------- the pipeline and CLI


@pytest.fixture(scope="module")
def tiny_dir(tiny_gemma):
    return tiny_gemma


def test_a_random_model_finds_no_hierarchy_at_any_layer(tiny_dir, tmp_path, capsys):
    """Random weights: the words' rows carry no WordNet structure, so no statistic may stand beyond its null."""
    import json

    from geomsteer import cli

    out = tmp_path / "layers"
    assert cli.main(["hierarchy", "--model", tiny_dir, "--layers", "0,1", "--min-tokens", "400", "--null-draws", "4",
                     "--pool", "300", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["geomsteer_result"] == "hierarchy_layers"
    assert list(doc["metrics"]["layers"]) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    for layer, stats in doc["metrics"]["layers"].items():
        for name, st in stats.items():
            assert set(STAT_KEYS) <= set(st)
            assert not (st["p_value"] < 0.001 and abs(st["effect_size"]) > 4), (layer, name, st)
    assert (out / "figures" / "by_layer.png").is_file() and (out / "directions.safetensors").is_file()
    assert "Where each statistic emerges" in (out / "report.md").read_text()
    assert "first layer beyond" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(out / "directions.safetensors"), "np") as f:
        assert f.get_tensor("directions.blocks.1.hook_resid_post").shape == (doc["provenance"]["n_categories"], 16)


def test_api_result_matches_the_command_and_plots(tiny_dir):
    import geomsteer as gs

    r = gs.hierarchy(tiny_dir, layers=[1], min_tokens=400, null_draws=2, n_pool=300)
    assert isinstance(r, gs.results.HierarchyLayersResult)
    df = r.table()
    assert set(df["layer"]) == {"blocks.1.hook_resid_post"} and len(df) == 9
    d = r.directions(1)
    assert d["animal.n.01"].shape == (16,)
    assert set(r.emergence()) == set(df["statistic"])
    fig = r.plot_by_layer()
    assert len(fig.axes) >= 9


@pytest.mark.parametrize("args, message", [
    (["--layers", "7"], "has layers 0..1; got [7]"),
    (["--layers", "x"], "expected 'all', 'every:K'"),
    (["--layers", "0", "--no-baselines"], "drop --no-baselines"),
    (["--layers", "0", "--pool", "10"], "--pool must be at least 50"),
    (["--layers", "0", "--null-draws", "1"], "--null-draws must be at least 2"),
])
def test_bad_layer_arguments_say_how_to_fix_them(tiny_dir, tmp_path, capsys, args, message):
    from geomsteer import cli

    assert cli.main(["hierarchy", "--model", tiny_dir, *args, "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
