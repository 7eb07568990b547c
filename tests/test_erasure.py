"""LEACE erasure of a WordNet category: the eraser's guarantee, the probe on planted data, the statistics, and
'geomsteer steer erase' end to end on a tiny model with its messages."""

import json

import numpy as np
import pytest

from geomsteer.analyzers.erasure import ErasureAnalyzer
from geomsteer.errors import DataError
from geomsteer.stats import STAT_KEYS
from geomsteer.steering.erasure import fit_eraser, probe_auc


def _planted(seed=0, n=1500, d=32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    cat = np.arange(0, 300)  # the category, with a planted direction
    other = np.arange(300, 600)  # an unrelated category with its own direction
    X[cat] += 1.5 * rng.standard_normal(d) / np.sqrt(d) * np.sqrt(d)
    X[other] += 1.5 * rng.standard_normal(d)
    return X, cat, other, np.arange(600, n)


def test_leace_leaves_no_difference_of_class_means():
    X, cat, _, _ = _planted()
    member = np.zeros(len(X), dtype=bool)
    member[cat] = True
    import torch

    E = fit_eraser(X, member)(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(E[member].mean(0), E[~member].mean(0), atol=1e-8)
    np.testing.assert_allclose(E.mean(0), X.mean(0), atol=1e-8)  # affine: the overall mean is kept


def test_erasing_a_planted_category_removes_its_probe_and_erasing_another_does_not():
    import torch

    X, cat, other, rest = _planted()
    neg = np.r_[other, rest]  # every non-member: LEACE equalizes the members' mean with theirs
    train, test = cat[:200], cat[200:]
    clean = probe_auc(X, train, test, neg)
    assert clean > 0.95
    m = np.zeros(len(X), dtype=bool)
    m[cat] = True
    erased = probe_auc(fit_eraser(X, m)(torch.as_tensor(X)).numpy(), train, test, neg)
    m2 = np.zeros(len(X), dtype=bool)
    m2[other] = True
    unrelated = probe_auc(fit_eraser(X, m2)(torch.as_tensor(X)).numpy(), train, test, neg)
    assert erased < 0.62 and unrelated > 0.95


def _fake(erased_drop, seed=0):
    rng = np.random.default_rng(seed)
    auc = {"clean": {"a": {"L1": 0.9}}}
    mass = {"clean": {"a": np.full(6, -2.0)}}
    for k in ("x", "n1", "n2", "n3", "n4"):
        drop = erased_drop if k == "x" else 0.01 * rng.standard_normal()
        auc[k] = {"a": {"L1": 0.9 - drop}}
        mass[k] = {"a": -2.0 - (erased_drop if k == "x" else 0.01 * rng.standard_normal(6))}
    return auc, mass


def test_drops_beyond_unrelated_erasures_are_found_and_none_are_not():
    an = ErasureAnalyzer().fit(*_fake(0.3), "x", ["n1", "n2", "n3", "n4"])
    for st in an.metrics_["statistics"].values():
        assert set(STAT_KEYS) <= set(st)
        assert st["p_value"] < 0.01
    an = ErasureAnalyzer().fit(*_fake(0.0, seed=1), "x", ["n1", "n2", "n3", "n4"])
    for st in an.metrics_["statistics"].values():
        assert not st["p_value"] < 0.01
    with pytest.raises(DataError, match="at least 2 erased categories"):
        ErasureAnalyzer().fit(*_fake(0.1), "x", ["n1"])


@pytest.fixture(scope="module")
def tiny_dir(tiny_gemma):
    return tiny_gemma


def test_steer_erase_writes_its_report(tiny_dir, tmp_path, capsys):
    from geomsteer import cli

    out = tmp_path / "er"
    assert cli.main(["steer", "erase", "--model", tiny_dir, "--layer", "0", "--null-draws", "2", "--pool", "200",
                     "--max-per-category", "60", "--fit-words", "400", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["geomsteer_result"] == "steering_erasure" and doc["metrics"]["erased"] == "animal.n.01"
    assert doc["metrics"]["measured"]["mammal.n.01"]["role"] == "descendant"
    assert len(doc["metrics"]["null_categories"]) == 2
    stats = doc["metrics"]["statistics"]
    assert "auc_drop:animal.n.01@blocks.1.hook_resid_post" in stats and "mass_drop:bird.n.01" in stats
    for st in stats.values():
        assert set(STAT_KEYS) <= set(st)
    # at the erased layer the erased category's held-out probe is at chance
    assert stats["auc_drop:animal.n.01@blocks.0.hook_resid_post"]["erased"] < 0.65
    assert (out / "figures" / "erasure_auc.png").is_file()
    assert "what the erasure takes" in (out / "report.md").read_text().lower()
    assert "auc drop" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--layer", "4"], "has layers 0..1"),
    (["--concept", "zzz.n.01"], "unknown category 'zzz.n.01'"),
    (["--concept", "poodle.n.01"], "'poodle.n.01' is too small for this tokenizer"),
    (["--read-layers", "0", "--layer", "1"], "cannot change earlier layers"),
    (["--null-draws", "1"], "--null-draws must be at least 2"),
    (["--fit-words", "10"], "--fit-words must be an integer of at least 200"),
])
def test_bad_erase_input_says_how_to_fix_it(tiny_dir, tmp_path, capsys, args, message):
    from geomsteer import cli

    assert cli.main(["steer", "erase", "--model", tiny_dir, "--layer", "0", *args, "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
