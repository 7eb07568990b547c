"""`geomsteer sae train`: its errors, and a small real run on Gemma 3 270M."""

import json

import pytest

from geomsteer import cli


def test_tokens_smaller_than_a_batch(tmp_path, capsys):
    code = cli.main(["sae", "train", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post",
                     "--tokens", "100", "--out", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err == ("geomsteer: error: --tokens 100 is smaller than one training batch (1024 tokens); "
                                       "ask for more tokens or a smaller --batch-size\n")


def test_existing_output_is_refused(tmp_path, capsys):
    (tmp_path / "o").mkdir()
    assert cli.main(["sae", "train", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post",
                     "--out", str(tmp_path / "o")]) == 2
    assert "already exists: expected a new directory" in capsys.readouterr().err


@pytest.mark.real_model
def test_unknown_hook_lists_valid_names(tmp_path, capsys):
    assert cli.main(["sae", "train", "--model", "gemma-3-270m", "--hook", "blocks.40.hook_resid_post",
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomsteer: error: unknown hook 'blocks.40.hook_resid_post' for this model: it has layers "
                          "0..17; valid names are blocks.<layer>.<name> with <name> one of ")
    assert "hook_resid_post" in err and not (tmp_path / "o").exists()


@pytest.mark.real_model
def test_empty_corpus_file(tmp_path, capsys):
    f = tmp_path / "empty.txt"
    f.write_text("\n")
    assert cli.main(["sae", "train", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post",
                     "--corpus", str(f), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"geomsteer: error: corpus file {str(f)!r} holds no text: expected at least one "
                                       "non-empty line\n")


@pytest.mark.real_model
def test_small_real_training_run(small_sae):
    from sae_lens import SAE

    out = small_sae
    info = json.loads((out / "geomsteer.json").read_text())
    m = info["metrics"]
    assert 0 < m["l0"] <= 8
    for key in ("fraction_variance_explained", "dead_fraction", "ce_clean", "ce_sae", "ce_zero_ablation",
                "ce_loss_recovered"):
        assert key in m
    assert m["ce_zero_ablation"] > m["ce_clean"]  # zeroing the residual at layer 6 hurts
    st = m["statistics"]["ce_loss_recovered"]  # the shared shape: an interval over sequences, no null (and why)
    assert st["observed"] == m["ce_loss_recovered"] and st["n"] == 16 and st["ci95"][0] <= st["observed"] <= st["ci95"][1]
    assert st["p_value"] is None and "not a test" in st["p_reason"] and st["null"] == {}
    assert info["hook"] == "blocks.6.hook_resid_post" and info["tokens"] == 4096 and info["ce_documents"] == 16
    sae = SAE.load_from_disk(str(out), device="cpu")
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (640, 128)


@pytest.mark.real_model
def test_inspect_prints_contexts_and_writes_a_card(small_sae, capsys, tmp_path):
    card = tmp_path / "card.html"
    assert cli.main(["sae", "inspect", str(small_sae), "--feature", "0", "--contexts", "3", "--html", str(card)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Feature 0 of {small_sae} (gemma-3-270m, blocks.6.hook_resid_post): fires on ")
    assert "Promoted tokens (logit lens): " in out and "Suppressed tokens (logit lens): " in out
    page = card.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "http" not in page.split("<pre>")[0]
    assert "Decoder logit lens" in page


@pytest.mark.real_model
def test_inspect_feature_out_of_range(small_sae, capsys):
    assert cli.main(["sae", "inspect", str(small_sae), "--feature", "128"]) == 2
    assert capsys.readouterr().err == "geomsteer: error: feature 128 does not exist: this SAE has features 0..127\n"
