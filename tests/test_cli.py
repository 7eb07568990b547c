"""The command line: every user-facing error, the interrupt guarantee, and the real end-to-end run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from geomsteer import cli, models
from geomsteer.stats import STAT_KEYS

KNOWN = ", ".join(models.MODELS)


def run_cli(*args):
    """Run geomsteer in a subprocess, as a user would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GEOMSTEER_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "geomsteer", *args], capture_output=True, text=True, env=env, timeout=600)


def test_unknown_model_is_one_line_without_traceback(tmp_path):
    p = run_cli("hierarchy", "--model", "gemma-7", "--out", str(tmp_path / "o"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr == (f"geomsteer: error: unknown model 'gemma-7': expected a known alias ({KNOWN}), a local "
                        "Hugging Face model directory (with config.json) or a .gguf file; the offline models are "
                        "gemma-3-270m, qwen2.5-0.5b\n")
    assert not (tmp_path / "o").exists()


def test_existing_output_without_force_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    # The model does not even exist: the output check comes first, so nothing is loaded.
    assert cli.main(["hierarchy", "--model", "gemma-7", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"geomsteer: error: output directory {str(out)!r} already exists: expected a new directory; "
                   "choose another --out, or pass --force to replace it\n")
    assert (out / "keep.txt").read_text() == "precious"


def test_missing_gguf_path(tmp_path, capsys):
    path = tmp_path / "m.gguf"
    assert cli.main(["hierarchy", "--model", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"geomsteer: error: GGUF file {str(path)!r} does not exist: expected the path "
                                       "of a .gguf model file; check the path\n")


def test_not_a_gguf_file(tmp_path, capsys):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"PK\x03\x04 zip, not gguf")
    assert cli.main(["hierarchy", "--model", str(path), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"geomsteer: error: {str(path)!r} is not a GGUF file: expected the 4-byte "
                                       "magic 'GGUF' at its start; pass a GGUF model file (for example one written "
                                       "by llama.cpp's converter)\n")


def test_uncached_hub_model_while_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert cli.main(["hierarchy", "--model", "pythia-70m", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (
        "geomsteer: error: model 'pythia-70m' (EleutherAI/pythia-70m) is not in the local Hugging Face cache and "
        "HF_HUB_OFFLINE is set; use an offline model (gemma-3-270m, qwen2.5-0.5b), a local model directory, "
        "or a .gguf file\n")


def test_non_positive_min_tokens_is_a_usage_error(tmp_path):
    p = run_cli("hierarchy", "--model", "gemma-3-270m", "--min-tokens", "0", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1] == ("geomsteer hierarchy: error: argument --min-tokens: "
                                       "expected a positive integer, got 0")


def test_help_describes_the_options():
    p = run_cli("hierarchy", "--help")
    assert p.returncode == 0
    for opt in ("--model", "--pos", "--min-tokens", "--seed", "--out", "--force", "--device", "--dtype"):
        assert opt in p.stdout


# ------------------------------------------------------------------------------------------
# Real model (Gemma 3 270M)


@pytest.mark.real_model
def test_min_tokens_that_leaves_no_category(tmp_path, capsys):
    assert cli.main(["hierarchy", "--model", "gemma-3-270m", "--min-tokens", "1000000", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomsteer: error: --min-tokens 1000000 leaves no category: the largest noun category has ")
    assert err.endswith(" single tokens for this tokenizer; use a smaller --min-tokens (Park et al. use 50)\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.real_model
def test_interrupt_leaves_no_half_written_report(tmp_path, capsys, monkeypatch):
    from geomsteer import reports

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(reports.hierarchy, "_hierarchy_figures", interrupted)
    out = tmp_path / "o"
    code = cli.main(["hierarchy", "--model", "gemma-3-270m", "--min-tokens", "400", "--no-baselines", "--out", str(out)])
    assert code == 130
    assert "interrupted; no partial output was left behind" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "gemma"
    # three draws per null keep the suite quick; the statistics and their shape are the same as at the default
    assert cli.main(["hierarchy", "--model", "gemma-3-270m", "--out", str(out), "--seed", "0", "--null-draws", "3"]) == 0
    return out


@pytest.mark.real_model
def test_real_run_writes_the_report(demo_run):
    out = demo_run
    assert sorted(p.name for p in out.iterdir()) == ["directions.safetensors", "figures", "report.md", "result.json"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "concept_plane.png", "heatmap.png", "nulls.png", "orthogonality.png"]
    doc = json.loads((out / "result.json").read_text())
    assert doc["model"] == "gemma-3-270m"
    assert doc["n_categories"] >= 500
    assert doc["provenance"]["packages"]["geomsteer"]
    assert doc["provenance"]["unembedding"]["gguf_sha256"].startswith("a5fd3b62")
    assert doc["provenance"]["split"].startswith("by lemma group")
    m = doc["metrics"]
    for name, st in m.items():
        assert set(STAT_KEYS) <= set(st), name
        assert set(st["null"]) == {"shuffled_tokens", "nested_random_sets", "random_unembedding"}, name
    assert set(m["orthogonality_parent_child"]["contrasts"]) == {"euclidean", "mean_estimator", "random_parent"}
    cats = doc["categories"]
    assert len(cats) == doc["n_categories"]
    row = next(c for c in cats if c["synset"] == "animal.n.01")
    assert row["parent"] is not None and row["n_tokens"] > 500
    for key in ("train_projection", "test_projection", "heldout_auc", "orthogonality_cos"):
        assert isinstance(row[key], float)
    report = (out / "report.md").read_text()
    assert "## Findings against the nulls" in report and "figures/nulls.png" in report
    assert "## Contrasts (not nulls)" in report


@pytest.mark.real_model
def test_real_run_keeps_a_strong_held_out_effect(demo_run):
    m = json.loads((demo_run / "result.json").read_text())["metrics"]
    # Held-out words (split by lemma) separate from random tokens far beyond every nested null,
    # including random nested sets of the same nouns.
    st = m["heldout_auc"]
    assert st["observed"] > 0.9
    assert st["p_value"] < 0.001 and st["effect_size"] > 4
    assert st["observed"] > st["null"]["nested_random_sets"]["mean"] + 0.05


@pytest.mark.real_model
def test_real_run_directions_file(demo_run):
    from safetensors import safe_open

    doc = json.loads((demo_run / "result.json").read_text())
    with safe_open(str(demo_run / "directions.safetensors"), "np") as f:
        meta = f.metadata()
        names = json.loads(meta["names"])
        L, W = f.get_tensor("directions"), f.get_tensor("whitening")
        ids, offsets = f.get_tensor("token_ids"), f.get_tensor("token_offsets")
    assert names == [c["synset"] for c in doc["categories"]]
    assert L.shape == (len(names), 640) and W.shape == (640, 640)
    assert offsets[-1] == len(ids)
    sizes = np.diff(offsets)
    assert sizes.tolist() == [c["n_tokens"] for c in doc["categories"]]
    assert meta["model"] == "gemma-3-270m"


@pytest.mark.real_model
def test_fast_lda_agrees_with_reference_on_gemma_categories(gemma_unembedding):
    from geomsteer.analyzers.hierarchy import fit_whitening, lda_direction, lda_direction_reference
    from geomsteer.wordnet import build_hierarchy

    e = gemma_unembedding
    h = build_hierarchy(e.vocab, "n", 50)
    wh = fit_whitening(e.gamma)
    names = sorted(h.names, key=lambda n: len(h.tokens(n)))
    sample = names[:8] + names[len(names) // 2 : len(names) // 2 + 8] + names[-3:]  # small, middle, largest
    for n in sample:
        G = wh(e.gamma[h.tokens(n)])
        a, b = lda_direction(G), lda_direction_reference(G)
        assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) >= 0.9999, n


def test_unavailable_device(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the message under test is for machines without it")
    assert cli.main(["hierarchy", "--model", "gemma-3-270m", "--device", "cuda", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("geomsteer: error: device 'cuda' is not available: this machine has no CUDA "
                                       "device; use --device cpu\n")


def test_unknown_device(tmp_path, capsys):
    assert cli.main(["hierarchy", "--model", "gemma-3-270m", "--device", "gpu0", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("geomsteer: error: unknown device 'gpu0': expected a torch device such as "
                                       "'cpu', 'cuda' or 'cuda:1'\n")


def test_output_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "o"
    f.write_text("not a directory")
    assert cli.main(["hierarchy", "--model", "gemma-7", "--out", str(f), "--force"]) == 2
    assert capsys.readouterr().err == f"geomsteer: error: --out {str(f)!r} is a file, not a directory; choose another --out\n"
    assert f.read_text() == "not a directory"


def test_one_null_draw_is_refused_before_any_work(tmp_path, capsys):
    assert cli.main(["hierarchy", "--model", "gemma-3-270m", "--null-draws", "1", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "geomsteer: error: --null-draws must be at least 2 (a null needs a spread), got 1; "
        "use --null-draws 2 or more (default 4)")
    assert not (tmp_path / "o").exists()


def test_summary_line_says_undefined_for_missing_values():
    from geomsteer.cli import stat_line as _stat_line

    st = {"observed": None, "ci95": None, "p_value": 0.5, "effect_size": None, "conservative_null": "shuffled_tokens"}
    assert _stat_line(st) == "undefined  effect undefined sd, p 5.0e-01 (shuffled tokens)"
    assert _stat_line({"observed": 0.5, "ci95": [0.4, 0.6], "p_value": None}) == "   0.500 [0.400, 0.600]"
