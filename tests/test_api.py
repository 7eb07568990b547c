"""The notebook API (``import geomsteer as gs``): every public call, its result objects, and agreement with the CLI."""

import json
import re

import browser
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_model
from test_steering_analyzers import random_sae

import geomsteer as gs
from geomsteer import cli
from geomsteer import steering as S
from geomsteer.saes import SaeDir

HOOK = "blocks.1.hook_resid_post"
STAT_KEYS = {"observed", "ci95", "null", "effect_size", "p_value", "n"}


def _numbers(doc, keys):
    """The numbers of a result.json that do not depend on when or how it was run."""
    return {k: doc[k] for k in keys}


@pytest.fixture(scope="module")
def tiny():
    m = tiny_model(n_layers=2, d_model=16, seed=3)
    m.cfg.model_name = "tiny-api"
    return m


@pytest.fixture(scope="module")
def tiny_sae():
    return SaeDir(None, random_sae(16, 32, HOOK, k=4, seed=1), HOOK, "tiny-api", {})


@pytest.fixture(scope="module")
def tiny_vectors(tiny):
    return gs.steer.compute(tiny, pairs="sentiment", layers=[0, 1])


def test_the_api_names_are_there():
    for name in ("hierarchy", "similarity", "mapper", "cluster", "load_model"):
        assert callable(getattr(gs, name))
    for name in ("compute", "apply", "sweep", "decompose", "propagate"):
        assert callable(getattr(gs.steer, name))
    for name in ("train", "load", "inspect"):
        assert callable(getattr(gs.sae, name))


def test_a_model_that_is_not_a_model_is_refused():
    with pytest.raises(gs.ConfigError, match="expected a model name .* or a TransformerLens model"):
        gs.steer.compute(object())


def test_steer_compute_on_a_passed_model(tiny_vectors, tmp_path):
    v = tiny_vectors
    assert list(v.vectors) == ["blocks.0.hook_resid_post", HOOK] and v[HOOK].vector.shape == (16,)
    assert v.provenance["model"] == "tiny-api" and "passed by the caller" in v.provenance["model_provenance"]["source"]
    df = v.table()
    assert isinstance(df, pd.DataFrame) and list(df["hook"]) == list(v.vectors) and "norm" in df
    assert "steering_compute" in v._repr_html_()
    out = v.save(tmp_path / "vec")
    assert (out / "vectors.safetensors").is_file() and (out / "result.json").is_file()
    with pytest.raises(gs.OutputExistsError, match="already exists"):
        v.save(tmp_path / "vec")


def test_steer_sweep_apply_decompose_propagate_on_the_tiny_model(tiny, tiny_vectors, tiny_sae, tmp_path):
    sw = gs.steer.sweep(tiny, tiny_vectors, hooks=[HOOK], alphas=(-2, 0, 2), n_neutral=2, n_samples=0, n_null=2, max_new_tokens=2)
    st = sw.statistics()
    assert st and all(STAT_KEYS <= set(s) for s in st.values())
    assert set(sw.table()["alpha"]) == {-2.0, 0.0, 2.0}
    tab = sw.statistics_table()
    assert list(tab.columns[:3]) == ["statistic", "observed", "ci95_low"] and len(tab) == len(st)
    html = sw._repr_html_()
    assert "null mean ± sd" in html and ("shuffled labels" in html or "covariance directions" in html)
    assert sw.plot_statistics().axes and sw.plot_dose_response().axes  # matplotlib figures
    assert {"dose_response", "kl", "nulls"} <= set(sw.figures()) and all(f.axes for f in sw.figures().values())

    ap = gs.steer.apply(tiny, tiny_vectors, "The food was", hook=HOOK, alpha=2, max_new_tokens=3)
    assert ap.table()["prompt"].tolist() == ["The food was"]

    dec = gs.steer.decompose(tiny, tiny_vectors, tiny_sae, hook=HOOK, k=4, top=3, n_contexts=0, n_null=2)
    assert "explained_sparse_coding" in dec.statistics()
    assert len(dec.table()) > 0

    prop = gs.steer.propagate(tiny, tiny_vectors, [tiny_sae], hook="blocks.0.hook_resid_post", alphas=(1, 2), n_null=2)
    assert list(prop.metrics["per_layer"]) == [HOOK] and f"features_changed:{HOOK}" in prop.metrics["statistics"]
    out = dec.save(tmp_path / "dec")
    doc = json.loads((out / "result.json").read_text())
    assert doc["metrics"]["statistics"] == json.loads(json.dumps(dec.metrics["statistics"]))
    assert doc["provenance"]["command"] is None  # written from the API, not the command line


def test_mapper_cluster_and_similarity_on_tiny_models(tiny, tiny_sae):
    mp = gs.mapper(tiny, tiny_sae, ["animal.n.01", "plant.n.02"], max_words=200, n_null=2, n_bootstrap=0,
                   eps_scale=1.5, min_samples=3)
    assert mp.provenance["words_used"] > 50 and "nodes" in mp.statistics()
    assert isinstance(mp.table(), pd.DataFrame) and mp.plot_lens().axes
    cl = gs.cluster(tiny, tiny_sae, "animal.n.01,plant.n.02", max_words=200, n_clusters=3, n_shuffles=20)
    assert {"purity", "nmi"} <= set(cl.statistics()) and len(cl.table()) == 3

    other = tiny_model(n_layers=2, d_model=16, seed=4)
    other.cfg.model_name = "tiny-other"
    s = gs.similarity([tiny, other], n_words=120, layers="all", n_permutations=20, scan_permutations=10, k=5,
                      random_baseline=True)
    assert set(s.provenance["layers"]) == {"tiny-api", "tiny-other"}
    assert s.statistics() and isinstance(s.table(), pd.DataFrame)
    assert s.plot_scan().axes
    # the caller's model was copied before it was re-randomized for the baseline
    assert gs.steer.compute(tiny, pairs="sentiment", layers=[1])[HOOK].norm == pytest.approx(
        gs.steer.compute(tiny_model(n_layers=2, d_model=16, seed=3), pairs="sentiment", layers=[1])[HOOK].norm)


def test_words_in_context_and_mapper_of_on_the_tiny_model(tiny, tiny_sae, tmp_path):
    from geomsteer.saes import encode

    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    templates = ["See you on", "The shop is closed on", "It rained on", "We met on", "The party is on",
                 "Classes begin on", "Call me on", "It happened on"]
    X, labels, names = gs.words_in_context(tiny, days, HOOK, templates)
    assert X.shape == (56, 16) and labels[:7] == days and names[0] == "See you on [Monday]"
    with pytest.raises(gs.ConfigError, match="needs words and templates, got 7 word.s. and 0 template"):
        gs.words_in_context(tiny, days, HOOK, [])
    codes = encode(tiny_sae.sae, X)
    m = gs.mapper_of(X, codes, labels, names, n_cubes=2, min_samples=3, eps_scale=2.0, n_null=2, n_bootstrap=0,
                     provenance={"model": "tiny-api", "hook": HOOK, "sae": "random", "description": "7 days x 8"})
    assert "nodes" in m.statistics() and all(line.count(" = ") == 1 for line in m.conclusions())
    assert len(m.conclusions()) == len(m.statistics())
    page = m.graph(height=400)
    assert page._repr_html_().startswith("<iframe srcdoc=") and "height:400px" in page._repr_html_()
    assert page.save(tmp_path / "g.html").read_text() == page.page and "7 days x 8" in page.page
    out = m.save(tmp_path / "m")
    assert "56 rows: 7 days x 8; SAE: `random`." in (out / "report.md").read_text()
    with pytest.raises(gs.ConfigError, match="unknown parameter.s. n_cube; MapperAnalyzer takes"):
        gs.mapper_of(X, codes, labels, names, n_cube=2)


def test_sae_train_load_inspect_on_the_tiny_model(tiny, tmp_path):
    r = gs.sae.train(tiny, HOOK, tokens=2048, d_sae=32, k=4, batch_size=256, eval_tokens=1024, ce_documents=16,
                     context_length=32)
    assert r.sae.cfg.d_sae == 32 and 0 <= r.metrics["dead_fraction"] <= 1
    assert set(r.table()["metric"]) >= {"l0", "fraction_variance_explained"}
    d = r.save(tmp_path / "sae")
    sd = gs.sae.load(d)
    assert sd.hook == HOOK and sd.model == "tiny-api" and sd.d_sae == 32
    card = gs.sae.inspect(sd, 0, n_contexts=3, model=tiny)
    assert "<h1>Feature 0</h1>" in card._repr_html_() and isinstance(card.table(), pd.DataFrame)
    path = card.save(tmp_path / "card.html")
    assert path.read_text().startswith("<!doctype html>")
    v = browser.visit(path, tmp_path / "shots", hover="span[title]")  # a token: its activation on hover
    assert not v.console_errors and not v.requests and v.screenshot.stat().st_size > 5_000
    assert re.fullmatch(r"-?\d+\.\d{3}", v.tooltip), v.tooltip


@pytest.mark.real_model
def test_hierarchy_api_and_cli_write_the_same_numbers(tmp_path):
    # without the nulls (two null-drawing runs took 100 s; the nulls' rendering is tested on a planted tree)
    h = gs.hierarchy("gemma-3-270m", min_tokens=1500, baselines=False)  # fewer categories: a quicker run
    assert h.analyzer.names_ and isinstance(h.table(), pd.DataFrame) and len(h.table()) == len(h.directions)
    name = h.directions.names[0]
    v = h.directions[name]
    assert isinstance(v, np.ndarray) and v.ndim == 1
    with pytest.raises(gs.ConfigError, match="no direction for 'mammal.n.99'"):
        h.directions["mammal.n.99"]
    assert "mammal.n.99" not in h.directions and name in h.directions and h.directions.get("mammal.n.99") is None
    child = next(iter(h.hierarchy.graph.successors("entity.n.01")), None) or h.directions.names[1]
    fig = h.plot_concept_plane("entity.n.01", child)
    assert fig.axes and fig.axes[0].get_title()
    api = json.loads((h.save(tmp_path / "api") / "result.json").read_text())
    assert cli.main(["hierarchy", "--model", "gemma-3-270m", "--min-tokens", "1500", "--no-baselines",
                     "--out", str(tmp_path / "cli")]) == 0
    via_cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    keys = ["metrics", "categories", "simplices", "params", "n_categories"]
    assert _numbers(api, keys) == _numbers(via_cli, keys)
    assert via_cli["command"][:2] == ["geomsteer", "hierarchy"] and api["command"] is None


@pytest.mark.real_model
def test_steer_compute_api_and_cli_write_the_same_numbers(tmp_path):
    m = gs.load_model("gemma-3-270m")
    api = gs.steer.compute(m, pairs="sentiment", layers=[6]).save(tmp_path / "api")
    assert cli.main(["steer", "compute", "--model", "gemma-3-270m", "--layers", "6", "--out", str(tmp_path / "cli")]) == 0
    a, c = (json.loads((d / "result.json").read_text()) for d in (api, tmp_path / "cli"))
    assert a["metrics"] == c["metrics"] and a["params"] == c["params"]
    va, vc = (S.load_vectors(d / "vectors.safetensors") for d in (api, tmp_path / "cli"))
    assert list(va) == list(vc) == ["blocks.6.hook_resid_post"]
    np.testing.assert_array_equal(va["blocks.6.hook_resid_post"].vector, vc["blocks.6.hook_resid_post"].vector)
    np.testing.assert_array_equal(va["blocks.6.hook_resid_post"].pair_differences,
                                  vc["blocks.6.hook_resid_post"].pair_differences)


def test_hierarchy_result_figures_and_conclusions_on_a_planted_tree():
    from conftest import planted

    from geomsteer.analyzers.hierarchy import HierarchyAnalyzer
    from geomsteer.results import HierarchyResult

    gamma, hier = planted()
    a = HierarchyAnalyzer(seed=0, n_null_draws=3, progress=False).fit(gamma, hier)
    h = HierarchyResult(a.result(), {"model": "planted"}, lambda *x: None, a, hier)
    html = h._repr_html_()
    assert "observed [95% CI]" in html and "orthogonality_parent_child" in html and "null mean ± sd" in html
    assert len(h.statistics_table()) == len(h.metrics) and h.statistics_table()["null_draws"].eq(3).all()
    fig = h.plot_orthogonality()
    assert len(fig.axes) == 2 and "parent child" in fig.axes[0].get_title()
    # each null is drawn beside the data: three nulls + the data per panel
    assert len(fig.axes[0].patches) > 0 and len(fig.axes[0].get_legend().get_texts()) == 4
    fig = h.plot_simplex("A1", "A2", "A3")
    assert fig.axes[0].name == "3d" and len(fig.axes[0].collections) == 3
    with pytest.raises(gs.ConfigError, match="expected three categories of this run"):
        h.plot_simplex("A1", "A2", "Z9")
    assert h.plot_cosine().axes
    lines = h.conclusions()
    assert len(lines) == len(h.metrics) and any("heldout auc" in x for x in lines)
    # the planted directions separate held-out tokens beyond every null; a verdict says so
    assert "beyond every null" in next(x for x in lines if x.startswith("heldout auc"))


def test_model_commands_run_in_bfloat16_with_float32_answers(tiny, tiny_vectors, tiny_sae):
    """--dtype bfloat16 on CPU: the same calls on a bfloat16 copy of the tiny model run, record the dtype, and
    agree with float32 to bfloat16's precision (statistics are accumulated in float64 either way)."""
    import copy

    import torch

    half = copy.deepcopy(tiny).to(torch.bfloat16)
    half.cfg.dtype = torch.bfloat16
    vec = gs.steer.compute(half, pairs="sentiment", layers=[1])
    assert vec.provenance["dtype"] == "bfloat16" and tiny_vectors.provenance["dtype"] == "float32"
    cos = float(vec[HOOK].vector @ tiny_vectors[HOOK].vector) / (
        np.linalg.norm(vec[HOOK].vector) * np.linalg.norm(tiny_vectors[HOOK].vector))
    assert cos > 0.99
    kw = dict(hooks=[HOOK], alphas=(-2, 0, 2), n_neutral=2, n_samples=1, n_null=2, max_new_tokens=3)
    a, b = gs.steer.sweep(tiny, tiny_vectors, **kw), gs.steer.sweep(half, tiny_vectors, **kw)
    assert b.provenance["dtype"] == "bfloat16"
    ta, tb = a.table(), b.table()
    for col in ("logodds_shift", "kl_neutral"):
        x, y = ta[col].to_numpy(float), tb[col].to_numpy(float)
        assert np.all(np.isfinite(y)) and np.allclose(x, y, rtol=0.1, atol=0.02), (col, x, y)
    assert gs.steer.apply(half, tiny_vectors, "The food was", hook=HOOK, alpha=2, max_new_tokens=3).table() is not None
    for fn in (gs.steer.decompose, gs.steer.propagate):
        extra = dict(k=4, top=3, n_contexts=0) if fn is gs.steer.decompose else dict(alphas=(1, 2))
        hook = HOOK if fn is gs.steer.decompose else "blocks.0.hook_resid_post"
        sae = tiny_sae if fn is gs.steer.decompose else [tiny_sae]
        r = fn(half, tiny_vectors, sae, hook=hook, n_null=2, **extra)
        assert r.provenance["dtype"] == "bfloat16" and r.statistics()
    mp = gs.mapper(half, tiny_sae, ["animal.n.01", "plant.n.02"], max_words=200, n_null=2, n_bootstrap=0,
                   eps_scale=1.5, min_samples=3)
    assert mp.provenance["dtype"] == "bfloat16" and mp.provenance["words_used"] > 50
    cl = gs.cluster(half, tiny_sae, "animal.n.01,plant.n.02", max_words=200, n_clusters=3, n_shuffles=20)
    assert cl.provenance["dtype"] == "bfloat16" and cl.statistics()
