"""Mapper (kmapper graph + gudhi nerve) and clustering: known answers, invariances, errors, the commands."""

import json
import re

import browser
import networkx as nx
import numpy as np
import pytest

from geomsteer import cli
from geomsteer.analyzers.clustering import ClusterAnalyzer, purity
from geomsteer.analyzers.topology import MapperAnalyzer, adaptive_eps
from geomsteer.errors import ConfigError, DataError, NotFittedError


LOW_D = {"eps_scale": 1.5, "min_samples": 3}  # the defaults are set for activations (hundreds of dimensions)


def circle(n=1000, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 2 * np.pi, n)
    return np.c_[np.cos(t), np.sin(t)] + noise * rng.normal(size=(n, 2))


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    return np.r_[rng.normal(size=(300, 5)), rng.normal(size=(300, 5)) + 10]


def as_nx(graph):
    g = nx.Graph()
    g.add_nodes_from(graph["nodes"])
    g.add_edges_from((a, b) for a, bs in graph["links"].items() for b in bs)
    return g


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("components", [1, 2])
def test_noisy_circle_has_one_component_and_one_loop_in_both_backends(seed, components):
    X = circle(seed=seed)
    m = MapperAnalyzer(**LOW_D, n_components=components, n_cubes=10 if components == 1 else 6, n_bootstrap=0, n_null=0).fit(X, X)
    assert m.betti_[:2] == [1, 1]  # gudhi: the nerve, higher simplices included
    b0, b1 = m.graph_betti_  # kmapper: the graph's components and independent cycles
    assert b0 == 1 and (b1 == 1 if components == 1 else b1 >= 1)
    if components == 2:  # the 2-D cover's graph has many small cycles; the nerve fills them with triangles
        assert m.n_simplices_[2] > 0


def test_two_separated_blobs_give_two_components():
    X = blobs()
    m = MapperAnalyzer(**LOW_D, n_components=1, n_bootstrap=0, n_null=0).fit(X, X)
    assert m.graph_betti_[0] == 2 and m.betti_[0] == 2
    # no node mixes the two blobs
    assert all(len({i // 300 for i in v}) == 1 for v in m.graph_["nodes"].values())


def test_default_parameters_give_the_same_graph_at_any_scale():
    X = circle(seed=3)
    graphs = [MapperAnalyzer(**LOW_D, n_bootstrap=0, n_null=0).fit(X * s, X * s).graph_ for s in (0.05, 1.0, 50.0)]
    assert graphs[0]["nodes"] == graphs[1]["nodes"] == graphs[2]["nodes"]
    assert adaptive_eps(X * 50, 10) == pytest.approx(50 * adaptive_eps(X, 10))


def test_permuting_samples_gives_an_isomorphic_graph():
    X = circle(seed=4)
    perm = np.random.default_rng(0).permutation(len(X))
    g1 = MapperAnalyzer(**LOW_D, n_bootstrap=0, n_null=0).fit(X, X)
    g2 = MapperAnalyzer(**LOW_D, n_bootstrap=0, n_null=0).fit(X[perm], X[perm])
    assert nx.is_isomorphic(as_nx(g1.graph_), as_nx(g2.graph_))
    members1 = sorted(sorted(v) for v in g1.graph_["nodes"].values())
    members2 = sorted(sorted(perm[v].tolist()) for v in g2.graph_["nodes"].values())
    assert members1 == members2  # the same clusters of the same samples


def test_bootstrap_stability_and_result():
    X = circle(seed=5)
    m = MapperAnalyzer(**LOW_D, n_components=1, n_bootstrap=4, n_null=0).fit(X, X, labels=["top" if y > 0 else "bottom" for y in X[:, 1]])
    st = m.stability_
    assert st["n"] == 4 and 0.5 < st["node_jaccard_mean"] <= 1 and 0 <= st["same_graph_betti"] <= 1
    res = m.result()
    json.dumps(res.to_dict())
    assert res.metrics["gudhi_nerve"]["betti"][:2] == [1, 1]
    rows = res.tables["nodes"]
    assert sum(r["size"] for r in rows) >= len(X) and all(r["categories"][0][1] >= 0.5 for r in rows)
    # persistence: the loop never dies
    assert any(d == 1 and not np.isfinite(death) for d, (_, death) in m.persistence_)


def test_features_lens_reads_the_chosen_columns():
    X = circle(seed=6)
    codes = np.c_[np.zeros(len(X)), X[:, 0], np.ones(len(X))]
    m = MapperAnalyzer(**LOW_D, lens="features", features=[1], n_bootstrap=0, lens_clip=0, n_null=0).fit(X, codes)
    np.testing.assert_array_equal(m.lens_[:, 0], X[:, 0])
    assert m.betti_[:2] == [1, 1]


def test_a_few_extreme_samples_do_not_collapse_the_cover():
    X = circle(seed=7)
    X[:5] *= 200  # five samples far out, like tokens with huge residual norms
    m = MapperAnalyzer(**LOW_D, n_components=1, n_bootstrap=0, n_null=0).fit(X, X)
    assert m.betti_[:2] == [1, 1] and len(m.graph_["nodes"]) >= 15
    bare = MapperAnalyzer(**LOW_D, n_components=1, n_bootstrap=0, lens_clip=0, n_null=0).fit(X, X)  # without clipping
    assert len(bare.graph_["nodes"]) <= 3 and bare.betti_[1] == 0


def test_mapper_errors():
    X = circle(n=200)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        MapperAnalyzer().result()
    with pytest.raises(DataError, match=re.escape(
            "too few samples for the cover: 200 samples over 10^2 cubes leave about 3.4 per cube, fewer than "
            "min_samples = 5; use at most 6 cubes per dimension, or more samples")):
        MapperAnalyzer(min_samples=5, n_null=0).fit(X, X)
    with pytest.raises(DataError, match=r"Mapper found no node: .* raise eps_scale \(e.g. --eps-scale 0.002\)"):
        MapperAnalyzer(n_components=1, eps_scale=0.001, min_samples=10, n_bootstrap=0, n_null=0).fit(X, X)
    with pytest.raises(DataError, match=r"Mapper found a single node: .* use more cubes \(e.g. --cubes 2\)"):
        MapperAnalyzer(n_components=1, n_cubes=1, eps_scale=100, n_bootstrap=0, n_null=0).fit(X, X)
    with pytest.raises(ConfigError, match="lens 'features' needs SAE feature indices in 0..1, got \\[5\\]"):
        MapperAnalyzer(lens="features", features=[5], n_null=0).fit(X, X)
    with pytest.raises(ConfigError, match="unknown lens 'tsne'"):
        MapperAnalyzer(lens="tsne", n_null=0).fit(X, X)
    with pytest.raises(DataError, match="for the same samples"):
        MapperAnalyzer(n_null=0).fit(X, X[:10])
    with pytest.raises(ConfigError, match="n_null must be 0 \\(no null\\) or at least 2 Gaussian surrogates, got 1"):
        MapperAnalyzer(n_null=1).fit(X, X)


def test_a_gaussian_cloud_is_not_distinguishable_from_its_surrogates():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))  # correlated, but Gaussian
    labels = rng.choice(["a", "b", "c"], len(X)).tolist()
    m = MapperAnalyzer(n_components=1, n_cubes=8, n_bootstrap=0, n_null=20, seed=1).fit(X, X, labels=labels)
    st = m.result().metrics["statistics"]
    assert set(st) == {"nodes", "edges", "components", "large_components", "cycles", "nerve_betti_1", "node_purity"}
    assert all(st[k]["p_value"] >= 0.01 for k in st)
    assert st["cycles"]["null"]["gaussian_surrogate"]["n_draws"] == 20


def test_planted_clusters_and_planted_labels_beat_their_nulls():
    rng = np.random.default_rng(8)
    X = np.concatenate([rng.normal(size=(150, 5)) + 8 * i for i in range(3)])  # three blobs on a line
    labels = [f"blob {i}" for i in range(3) for _ in range(150)]
    m = MapperAnalyzer(n_components=1, n_cubes=8, n_bootstrap=0, n_null=99, seed=2).fit(X, X, labels=labels)
    st = m.result().metrics["statistics"]
    # a Gaussian with the same covariance fills the gaps; its tails break into small pieces, not into large ones
    assert st["large_components"]["observed"] == 3 and st["large_components"]["null"]["gaussian_surrogate"]["mean"] < 1.5
    assert st["large_components"]["p_value"] < 0.011  # Monte Carlo, (1 + 0) / (1 + 99): no t-test on a null with sd 0
    assert st["node_purity"]["p_value"] < 0.001 and st["node_purity"]["observed"] == 1.0
    # the bootstrap refits the lens on each resample
    boot = MapperAnalyzer(**LOW_D, n_components=1, n_cubes=8, n_bootstrap=3, n_null=0).fit(X, X, labels=labels)
    assert boot.stability_["node_jaccard_mean"] > 0.5 and "cycles" not in boot.statistics_


# --------------------------------------------------------------------------------------------
# Clustering


def test_kmeans_recovers_a_planted_mixture_and_beats_shuffled_labels():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 20)) * 4
    y = np.repeat(np.arange(4), 150)
    X = centers[y] + rng.normal(size=(600, 20))
    a = ClusterAnalyzer(n_clusters=4, n_shuffles=10).fit(X, labels=[f"c{i}" for i in y])
    assert a.scores_["adjusted_rand"]["observed"] >= 0.9
    shuffled = {k: v["null"]["shuffled_labels"] for k, v in a.scores_.items()}
    assert a.scores_["purity"]["observed"] > 0.9 > shuffled["purity"]["mean"] + 0.4
    assert abs(shuffled["adjusted_rand"]["mean"]) < 0.02
    assert shuffled["nmi"]["p_monte_carlo"] == pytest.approx(1 / 11) and a.scores_["nmi"]["p_value"] < 1e-6
    lo, hi = a.scores_["adjusted_rand"]["ci95"]
    assert lo <= a.scores_["adjusted_rand"]["observed"] <= hi and a.scores_["nmi"]["n"] == 600
    # shuffled categories: the same clustering finds nothing
    noise = ClusterAnalyzer(n_clusters=4, n_shuffles=50, n_bootstrap=0).fit(
        X, labels=[f"c{i}" for i in np.random.default_rng(1).permutation(y)])
    assert all(v["p_value"] > 0.01 for v in noise.scores_.values()) and noise.scores_["nmi"]["ci95"] is None
    assert sorted(c["size"] for c in a.clusters_) == [150] * 4
    assert all(c["categories"][0][1] > 0.9 for c in a.clusters_)


def test_any_sklearn_clusterer_and_the_logit_lens_label():
    from sklearn.cluster import AgglomerativeClustering

    rng = np.random.default_rng(1)
    X = np.r_[rng.normal(size=(50, 3)) + [10, 0, 0], rng.normal(size=(50, 3)) - [10, 0, 0]]
    W_U = np.eye(3)  # token i reads coordinate i
    a = ClusterAnalyzer(AgglomerativeClustering(2)).fit(X, unembedding=W_U, vocab=["x", "y", "z"])
    tops = sorted(c["logit_lens"][0][0] for c in a.clusters_)
    assert tops == ["x", "x"] or set(tops) <= {"x", "y", "z"}
    first = {c["cluster"]: c["logit_lens"][0] for c in a.clusters_}
    signs = sorted(np.sign(X[a.labels_ == k, 0].mean()) for k in first)
    assert signs == [-1, 1]
    pos_cluster = next(k for k in first if X[a.labels_ == k, 0].mean() > 0)
    assert first[pos_cluster][0] == "x"  # the cluster at +x promotes token x
    assert a.result().metrics == {}


def test_purity_and_clustering_errors():
    assert purity(["a", "a", "b", "b"], [0, 0, 0, 1]) == 0.75
    with pytest.raises(DataError, match="same non-zero length"):
        purity(["a"], [0, 1])
    with pytest.raises(ConfigError, match=re.escape("n_clusters must be between 2 and the number of rows (3), got 5")):
        ClusterAnalyzer(n_clusters=5).fit(np.eye(3))
    with pytest.raises(NotFittedError):
        ClusterAnalyzer().result()


# --------------------------------------------------------------------------------------------
# The commands


@pytest.mark.parametrize("argv, message", [
    (["--concepts", "animal.n.01,plantt.n.02"], "unknown synset 'plantt.n.02': expected a WordNet 3.0 name such as "
                                                "'animal.n.01'; close matches: plant.n.02"),
    (["--concepts", " , "], "--concepts ' , ': expected comma-separated WordNet synsets"),
    (["--lens", "tsne"], "--lens 'tsne': expected pca, umap, or features:I,J"),
])
def test_mapper_command_input_errors(argv, message, tmp_path, capsys):
    code = cli.main(["mapper", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae",
                     str(tmp_path), *argv, "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("geomsteer: error: " + message) and "Traceback" not in err


def test_mapper_command_null_draws_must_make_a_distribution(tmp_path, capsys):
    assert cli.main(["mapper", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae",
                     str(tmp_path), "--null-draws", "1", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("geomsteer: error: --null-draws must be 0 (no nulls) or at least 2 draws per "
                                       "null, got 1: a null distribution needs a mean and an sd; 20 is the default\n")


def test_mapper_command_refuses_a_directory_that_is_not_an_sae(tmp_path, capsys):
    assert cli.main(["mapper", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae",
                     str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is not an SAE directory: expected SAELens's cfg.json in it" in capsys.readouterr().err


@pytest.mark.real_model
def test_mapper_and_cluster_on_gemma(small_sae, tmp_path, capsys):
    out = tmp_path / "m"
    code = cli.main(["mapper", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae",
                     str(small_sae), "--words", "600", "--bootstrap", "2", "--null-draws", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "result.json").read_text())
    st = doc["metrics"]["statistics"]
    assert st["cycles"]["null"]["gaussian_surrogate"]["n_draws"] == 4 and "node_purity" in st
    assert doc["metrics"]["kmapper_graph"]["nodes"] > 1 and len(doc["metrics"]["gudhi_nerve"]["betti"]) >= 3
    assert set(doc["provenance"]["words_used_per_concept"]) == {"animal.n.01", "plant.n.02", "artifact.n.01"}
    html = (out / "mapper.html").read_text()
    assert "<svg" in html and "plant.n.02" in html and not re.search(r"(src|href)=[\"']https?:", html)
    for f in ("graph.png", "lens.png", "persistence.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    # a SAE trained at another hook is refused
    assert cli.main(["mapper", "--model", "gemma-3-270m", "--hook", "blocks.3.hook_resid_post", "--sae",
                     str(small_sae), "--out", str(tmp_path / "m2")]) == 2
    assert capsys.readouterr().err.startswith(
        f"geomsteer: error: the SAE at {str(small_sae)!r} was trained at hook 'blocks.6.hook_resid_post', "
        "not 'blocks.3.hook_resid_post'")
    for space in ("codes", "features"):
        o = tmp_path / f"c-{space}"
        assert cli.main(["cluster", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae",
                         str(small_sae), "--words", "600", "--space", space, "--clusters", "4",
                         "--out", str(o)]) == 0
        doc = json.loads((o / "result.json").read_text())
        assert {"purity", "nmi", "adjusted_rand"} <= set(doc["metrics"])
        assert all(len(c["logit_lens"]) == 8 for c in doc["clusters"])
    assert "purity" in capsys.readouterr().out


def _prov(n):
    return {"model": "toy", "hook": "blocks.0.hook_resid_post", "sae": "none", "concepts": ["top", "bottom"],
            "words_used": n, "words_asked": n, "words_dropped_multitoken": 0, "max_tokens": 3,
            "ambiguous_words_dropped": 0, "words_used_per_concept": {"top": n // 2, "bottom": n - n // 2},
            "prefix": "", "rule": "last", "rows": f"{n} points"}


def test_mapper_and_cluster_reports_are_complete_and_never_overwritten(tmp_path):
    from geomsteer import reports
    from geomsteer.errors import OutputExistsError

    X = circle(seed=8)
    labels = ["top" if y > 0 else "bottom" for y in X[:, 1]]
    m = MapperAnalyzer(**LOW_D, n_components=1, n_bootstrap=1, n_null=4).fit(X, X, labels=labels, names=[f"p{i}" for i in range(len(X))])
    out = reports.write_mapper_report(m, _prov(len(X)), tmp_path / "m")
    doc = json.loads((out / "result.json").read_text())
    assert doc["metrics"]["gudhi_nerve"]["betti"][:2] == [1, 1] and len(doc["samples"]["lens"]) == len(X)
    html = (out / "mapper.html").read_text()
    assert not re.search(r"(src|href)=[\"']https?:", html) and '"cats": ["bottom", "top"]' in html
    v = browser.visit(out / "mapper.html", tmp_path / "shots", hover="svg circle", tooltip="#tip")
    assert not v.console_errors and not v.requests and v.screenshot.stat().st_size > 10_000
    assert re.match(r"cube\d+_cluster\d+: \d+ words\ncategories: (top|bottom) \d+%", v.tooltip), v.tooltip
    assert "| gudhi nerve Betti numbers (b0, b1, b2) | 1, 1, 0 |" in (out / "report.md").read_text()
    for f in ("graph.png", "lens.png", "persistence.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    with pytest.raises(OutputExistsError, match="already exists"):
        reports.write_mapper_report(m, _prov(len(X)), out)
    a = ClusterAnalyzer(n_clusters=2, n_shuffles=5).fit(X, labels=labels, names=[f"p{i}" for i in range(len(X))])
    out = reports.write_cluster_report(a, _prov(len(X)), tmp_path / "c")
    md = (out / "report.md").read_text()
    assert "| purity (> null) | 1000 |" in md and "## Findings against the nulls" in md
    assert (out / "figures" / "clusters.png").is_file()
    md = (tmp_path / "m" / "report.md").read_text()
    assert "## Findings against the nulls" in md and "| large components (> null) |" in md
    assert json.loads((out / "result.json").read_text())["metrics"]["purity"]["observed"] > 0.6


def test_umap_lens_runs_and_keeps_the_circle_connected():
    X = circle(n=600)
    m = MapperAnalyzer(**LOW_D, lens="umap", n_components=2, n_cubes=6, n_bootstrap=0, n_null=0).fit(X, X)
    assert m.lens_.shape == (600, 2) and m.betti_[0] == 1 and len(m.graph_["nodes"]) > 5
