"""Steering along the WordNet hierarchy: concept vectors, the mass probe, the statistics (planted and noise), the
CAA orthogonality test, and 'geomsteer steer hierarchy' end to end on a tiny model with its messages."""

import json

import numpy as np
import pytest
from conftest import tiny_model

from geomsteer.analyzers.steer_hierarchy import CaaOrthogonality, HierarchySteering, interpolate_at
from geomsteer.errors import DataError
from geomsteer.stats import STAT_KEYS
from geomsteer.steering.hierarchy import ConceptRows, MassProbe, concept_vectors, nested_random_rows
from geomsteer.steering.nulls import covariance_directions


def test_concept_vectors_recover_planted_parent_and_child_offsets():
    rng = np.random.default_rng(0)
    d = 24
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    X = 0.1 * rng.standard_normal((600, d))
    parent, child, baseline = np.arange(0, 300), np.arange(0, 100), np.arange(300, 600)
    X[parent] += a
    X[child] += b
    v = concept_vectors(X, ConceptRows(parent, child, baseline))
    ab = a + b / 3  # a third of the parent's words are the child's
    assert v["caa_parent"] @ (ab / np.linalg.norm(ab)) > 0.99
    assert v["caa_child_minus_parent"] @ (b / np.linalg.norm(b)) > 0.99
    for k in v:
        assert np.linalg.norm(v[k]) == pytest.approx(1.0, abs=1e-5)
    r = nested_random_rows(np.arange(300), ConceptRows(parent, child, baseline), np.random.default_rng(1))
    assert len(r.parent) == 300 and len(r.child) == 100 and set(r.child) <= set(r.parent)


def test_interpolation_finds_where_a_curve_reaches_the_target():
    assert interpolate_at([1, 2, 4], [0.5, 1.5, 3.0], 1.0) == pytest.approx(1.5)
    assert interpolate_at([1, 2], [-1.0, -2.0], 1.0) is None
    assert interpolate_at([1, 2], [2.0, 3.0], 1.0) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def toy():
    """A tiny random model whose unembedding gives the 'child' tokens a planted direction u."""
    import torch

    m = tiny_model(n_layers=2, d_model=32, seed=3)
    rng = np.random.default_rng(0)
    child = np.arange(1000, 1040)
    siblings = np.arange(2000, 2080)
    u = rng.standard_normal(32).astype(np.float32)
    u /= np.linalg.norm(u)
    with torch.no_grad():
        m.unembed.W_U[:, child] += 6.0 * torch.as_tensor(u)[:, None]
    prompts = ["Out in the field I saw a", "She pointed at the", "The children were looking at the",
               "Next to the house there was a", "He told me a story about a", "In the book there was a picture of a"]
    probe = MassProbe(m, prompts, "blocks.1.hook_resid_post", child, siblings)
    return m, probe, u


def _masses(probe, vectors, norms):
    return np.stack([np.stack([probe(np.atleast_2d(v), s)[0] for s in norms]) for v in vectors])


def test_planted_child_direction_moves_mass_to_the_child_and_a_random_one_does_not(toy):
    m, probe, u = toy
    norms = [1.0, 2.0, 4.0]
    clean = probe(np.zeros((1, 32), dtype=np.float32), 0.0)[0]
    rand = covariance_directions(probe.X, 1.0, 16, seed=1)
    null = _masses(probe, rand, norms)
    other = covariance_directions(probe.X, 1.0, 16, seed=2)
    nested = {"planted": _masses(probe, other, norms)}
    real = {"planted": _masses(probe, [u], norms)[0]}
    an = HierarchySteering(ref_norm=2.0, target_gain=1.0).fit(real, clean, nested, null, norms)
    st = an.metrics_["statistics"]["child_gain:planted"]
    assert set(STAT_KEYS) <= set(st)
    assert st["observed"] > 1.0 and st["p_value"] < 0.01 and st["effect_size"] > 3
    assert an.metrics_["statistics"]["child_share_gain:planted"]["observed"] > 0.5
    row = next(r for r in an.matched_ if r["vector"] == "planted")
    assert row["norm_at_target"] is not None and row["norm_at_target"] <= 2.0
    # the noise test: a covariance direction in the place of the planted one finds nothing
    fake = {"planted": _masses(probe, covariance_directions(probe.X, 1.0, 1, seed=99), norms)[0]}
    an = HierarchySteering(ref_norm=2.0).fit(fake, clean, nested, null, norms)
    st = an.metrics_["statistics"]["child_gain:planted"]
    assert not (st["p_value"] < 0.01 and st["effect_size"] > 3), st


def test_bad_reference_norm_is_refused(toy):
    with pytest.raises(DataError, match="not one of the measured norms"):
        HierarchySteering(ref_norm=3.0).fit({}, np.zeros((2, 3)), {}, np.zeros((0, 1, 2, 3)), [1.0, 2.0])


def _orth_data(structured: bool, seed: int = 0):
    """Tree words P (child C inside it) and Q; baseline words outside the tree. Structured: C's rows are a + b
    and P's other rows a - b/4 (P's mean is a), b orthogonal to a, Q's rows 3a: C - P is orthogonal to P's
    vector, while random nested sets mix P and Q and put their offsets along a."""
    rng = np.random.default_rng(seed)
    d = 32
    a = rng.standard_normal(d)
    b = rng.standard_normal(d)
    b -= (b @ a) / (a @ a) * a
    X = 0.3 * rng.standard_normal((900, d))
    P, C, Q, base = np.arange(0, 300), np.arange(0, 60), np.arange(300, 600), np.arange(600, 900)
    if structured:
        X[P] += a
        X[C] += b
        X[P[60:]] -= b / 4
        X[Q] += 3 * a
    return X, [P, C], np.array([[0, 1]]), np.arange(600), base


def test_caa_orthogonality_finds_a_planted_orthogonal_child_and_not_noise():
    X, sets, edges, tree, base = _orth_data(True)
    o = CaaOrthogonality(n_null_draws=20, seed=0).fit(X, sets, edges, tree, base, pairs=np.array([[0, 1]]))
    st = o.metrics_["statistics"]["caa_orthogonality_parent_child"]
    assert set(STAT_KEYS) <= set(st)
    assert st["observed"] < 0.05 and st["p_value"] < 0.01 and st["effect_size"] < -3
    assert o.pair_statistic(0)["observed"] == pytest.approx(st["observed"])
    X, sets, edges, tree, base = _orth_data(False, seed=1)
    st = CaaOrthogonality(n_null_draws=20, seed=0).fit(X, sets, edges, tree, base).metrics_["statistics"][
        "caa_orthogonality_parent_child"]
    assert not (st["p_value"] < 0.01 and st["effect_size"] < -3), st


def test_caa_vectors_match_a_plain_mean_difference():
    X, sets, _, _, base = _orth_data(True)
    V = CaaOrthogonality.vectors(X.astype(np.float32), sets, base)
    for i, s in enumerate(sets):
        np.testing.assert_allclose(V[i], X[s].mean(0) - X[base].mean(0), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_dir(tiny_gemma):
    return tiny_gemma


def test_steer_hierarchy_writes_its_report(tiny_dir, tmp_path, capsys):
    from geomsteer import cli

    out = tmp_path / "sh"
    assert cli.main(["steer", "hierarchy", "--model", tiny_dir, "--layer", "1", "--null-draws", "2",
                     "--pool", "200", "--norms", "1", "--ref-norm", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["geomsteer_result"] == "steering_hierarchy"
    pairs = doc["metrics"]["pairs"]
    assert set(pairs) == {"animal>mammal", "animal>bird"}
    # the last layer adds the unembedding's vectors
    assert "child_gain:unembed_child_minus_parent" in pairs["animal>mammal"]["statistics"]
    for st in [*pairs["animal>bird"]["statistics"].values(), *doc["metrics"]["caa_orthogonality"]["statistics"].values()]:
        assert set(STAT_KEYS) <= set(st)
    assert (out / "figures" / "child_gain.png").is_file()
    assert "CAA vectors obey" in (out / "report.md").read_text()
    assert "caa orthogonality" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--pair", "animal.n.01"], "expected PARENT>CHILD"),
    (["--pair", "animal.n.01>zzz.n.01"], "unknown category 'zzz.n.01'"),
    (["--pair", "animal.n.01>poodle.n.01"], "'poodle.n.01' is too small for this tokenizer"),
    (["--pair", "mammal.n.01>animal.n.01"], "is not below mammal.n.01"),
    (["--layer", "5"], "has layers 0..1"),
    (["--norms", "1", "2", "--ref-norm", "3"], "--ref-norm 3.0 must be one of --norms"),
    (["--norms", "-1"], "--norms must be positive"),
    (["--null-draws", "0"], "--null-draws must be at least 2"),
])
def test_bad_steer_hierarchy_input_says_how_to_fix_it(tiny_dir, tmp_path, capsys, args, message):
    from geomsteer import cli

    assert cli.main(["steer", "hierarchy", "--model", tiny_dir, "--layer", "1", *args, "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
