"""Bad input a new user tries: one clear line on stderr, exit status 2, no traceback, nothing written."""

import json

import pytest

from geomsteer import cli

COMMANDS = {
    "hierarchy": ["hierarchy", "--model", "gemma-3-270m"],
    "similarity": ["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b"],
    "mapper": ["mapper", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae", "nowhere"],
    "cluster": ["cluster", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae", "nowhere"],
    "steer compute": ["steer", "compute", "--model", "gemma-3-270m"],
    "steer sweep": ["steer", "sweep", "--model", "gemma-3-270m", "--vector", "v.safetensors"],
    "sae train": ["sae", "train", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_out_under_an_existing_file(name, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    out = f / "run"
    assert cli.main([*COMMANDS[name], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (f"geomsteer: error: --out {str(out)!r} is under {str(f)!r}, which is a file, not a directory; "
                   "choose an --out whose parent directories are directories\n")
    assert f.read_text() == "keep me"


def _sae_dir(tmp_path, cfg):
    d = tmp_path / "sae"
    d.mkdir()
    (d / "cfg.json").write_text(json.dumps(cfg))
    return d


def test_sae_inspect_with_a_config_that_lacks_fields(tmp_path, capsys):
    d = _sae_dir(tmp_path, {"d_in": 640, "d_sae": 128})
    assert cli.main(["sae", "inspect", str(d), "--feature", "0"]) == 2
    assert capsys.readouterr().err == (
        f"geomsteer: error: {str(d / 'cfg.json')!r} lacks 'dtype': expected the config SAELens writes with an SAE "
        "(SAE.save_model, or 'geomsteer sae train')\n")


def test_sae_config_that_is_not_json(tmp_path, capsys):
    d = tmp_path / "sae"
    d.mkdir()
    (d / "cfg.json").write_text("{not json")
    assert cli.main(["mapper", "--model", "gemma-3-270m", "--hook", "blocks.6.hook_resid_post", "--sae", str(d),
                     "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"geomsteer: error: {str(d / 'cfg.json')!r} is not valid JSON (") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_sae_directory_without_weights(tmp_path, capsys):
    d = _sae_dir(tmp_path, {"d_in": 640, "d_sae": 128, "dtype": "float32", "architecture": "topk", "k": 8})
    assert cli.main(["sae", "inspect", str(d), "--feature", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"geomsteer: error: SAELens cannot load the SAE in {str(d)!r} (") and err.count("\n") == 1
    assert "expected a directory written by 'geomsteer sae train' or SAE.save_model" in err


@pytest.mark.real_model
def test_inspect_card_under_an_existing_file(small_sae, tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    assert cli.main(["sae", "inspect", str(small_sae), "--feature", "0", "--html", str(f / "card.html")]) == 2
    assert capsys.readouterr().err == (
        f"geomsteer: error: --html {str(f / 'card.html')!r} is under {str(f)!r}, which is a file, not a directory; "
        "choose an --html whose parent directories are directories\n")
