"""'geomsteer steer': each bad input's message, and the whole loop through the commands on a tiny local model."""

import json

import numpy as np
import pytest

from geomsteer import cli
from geomsteer import steering as S
from geomsteer.stats import STAT_KEYS


def err(capsys, *argv):
    assert cli.main(list(argv)) == 2
    e = capsys.readouterr().err
    assert "Traceback" not in e and e.startswith("geomsteer: error: ")
    return e.strip()


def vector_file(tmp_path, model="gemma-3-270m", d=640, hooks=("blocks.6.hook_resid_post",)):
    vs = {h: S.SteeringVector(np.ones(d, np.float32), model, h, "mean", "mean_diff", 2, "ab" * 32) for h in hooks}
    return S.save_vectors(vs, tmp_path / f"v-{model}-{d}.safetensors")


def test_pair_file_errors_name_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"positive": "a", "negative": "b"}\n{"positive": "only one side"}\n')
    e = err(capsys, "steer", "compute", "--model", "gemma-3-270m", "--pairs", str(bad), "--out", str(tmp_path / "o"))
    assert e == (f"geomsteer: error: {bad}:2: expected an object with non-empty string fields 'positive' and "
                 "'negative' (and optionally 'prompt')")
    bad.write_text("\n")
    e = err(capsys, "steer", "compute", "--model", "gemma-3-270m", "--pairs", str(bad), "--out", str(tmp_path / "o"))
    assert e == f"geomsteer: error: pair file {str(bad)!r} holds no pairs: expected at least one JSONL line"
    assert not (tmp_path / "o").exists()


def test_vector_errors_before_the_model_loads(tmp_path, capsys):
    qwen = vector_file(tmp_path, model="qwen2.5-0.5b", d=896)
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(qwen), "--out", str(tmp_path / "o"))
    assert e == (f"geomsteer: error: the vectors in {str(qwen)!r} were computed on 'qwen2.5-0.5b', not 'gemma-3-270m'; "
                 "compute them on gemma-3-270m with 'geomsteer steer compute --model gemma-3-270m'")
    f = vector_file(tmp_path)
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(f), "--hook", "blocks.9.hook_resid_post",
            "--out", str(tmp_path / "o"))
    assert e == (f"geomsteer: error: {str(f)!r} holds no vector at blocks.9.hook_resid_post; it has "
                 "blocks.6.hook_resid_post: pick one of those with --hook or compute a vector there")
    e = err(capsys, "steer", "apply", "--model", "gemma-3-270m", "--vector", str(f), "--alpha", "nan", "--prompt", "x",
            "--out", str(tmp_path / "o"))
    assert e == "geomsteer: error: --alpha must be a finite number, got nan"
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(f), "--alphas", "1", "inf",
            "--out", str(tmp_path / "o"))
    assert e == "geomsteer: error: multipliers must be finite numbers, got [1.0, inf]; for example --alphas -4 -2 0 2 4"
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(tmp_path / "none.safetensors"),
            "--out", str(tmp_path / "o"))
    assert e == (f"geomsteer: error: steering vector file {str(tmp_path / 'none.safetensors')!r} does not exist: "
                 "expected the vectors.safetensors that 'geomsteer steer compute' writes")
    two = vector_file(tmp_path, d=32, hooks=("blocks.3.hook_resid_post", "blocks.6.hook_resid_post"))
    e = err(capsys, "steer", "apply", "--model", "gemma-3-270m", "--vector", str(two), "--prompt", "x",
            "--out", str(tmp_path / "o"))
    assert e == (f"geomsteer: error: {str(two)!r} holds vectors at blocks.3.hook_resid_post, blocks.6.hook_resid_post: "
                 "choose one with --hook")
    bad_eval = tmp_path / "e.jsonl"
    bad_eval.write_text('{"prompt": "x", "positive": [" a"]}\n')
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(f), "--eval", str(bad_eval),
            "--out", str(tmp_path / "o"))
    assert e == (f"geomsteer: error: {bad_eval}:1: 'negative' must be a non-empty string or list of non-empty strings, "
                 "got None")
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(f), "--null-draws", "1",
            "--out", str(tmp_path / "o"))
    assert e == ("geomsteer: error: --null-draws must be 0 (no nulls) or at least 2 draws per null, got 1: a null "
                 "distribution needs a mean and an sd; 20 is the default")
    e = err(capsys, "steer", "decompose", "--model", "gemma-3-270m", "--vector", str(f), "--sae", str(tmp_path),
            "--null-draws", "0", "--out", str(tmp_path / "o"))
    assert e == ("geomsteer: error: --null-draws must be at least 2 draws per null, got 0: a null distribution needs "
                 "a mean and an sd; 20 is the default")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A two-layer Gemma 3 architecture with random weights and Gemma's tokenizer, saved as a local model
    directory (what --model accepts besides the names), and a random SAE at its last layer."""
    import torch
    import transformers as tf

    from geomsteer import models, saes
    from test_steering_analyzers import random_sae

    root = tmp_path_factory.mktemp("tiny")
    tok = models.load_tokenizer("gemma-3-270m")
    torch.manual_seed(0)
    m = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=256, sliding_window=64))
    m.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    sae = saes.save_sae(random_sae(16, 32, "blocks.1.hook_resid_post", k=4, seed=1), root / "sae",
                        extra={"hook": "blocks.1.hook_resid_post"})
    return root / "model", sae


def test_steering_loop_through_the_commands(tiny_dir, tmp_path, capsys):
    """Every 'steer' command end to end on a tiny local model: its files, report sections and statistics'
    shape. What the sentiment vector on Gemma 3 270M must show against its nulls is checked on the steering
    notebook's saved results (tests/test_analyses.py)."""
    model, sae = str(tiny_dir[0]), str(tiny_dir[1])
    vec_dir = tmp_path / "vec"
    assert cli.main(["steer", "compute", "--model", model, "--layers", "0,1", "--out", str(vec_dir)]) == 0
    doc = json.loads((vec_dir / "result.json").read_text())
    assert doc["geomsteer_result"] == "steering_compute" and doc["provenance"]["n_pairs"] == 30
    assert (vec_dir / "figures" / "pairs.png").is_file()
    vectors = S.load_vectors(vec_dir / "vectors.safetensors")
    assert list(vectors) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    vf = str(vec_dir / "vectors.safetensors")

    sw = tmp_path / "sweep"
    assert cli.main(["steer", "sweep", "--model", model, "--vector", vf, "--hook", "blocks.1.hook_resid_post",
                     "--alphas", "0", "2", "--neutral", "2", "--samples", "1", "--max-new-tokens", "2",
                     "--null-draws", "2", "--out", str(sw)]) == 0
    doc = json.loads((sw / "result.json").read_text())
    st = doc["metrics"]["per_hook"]["blocks.1.hook_resid_post"]["statistics"]["logodds_shift_at_2"]
    assert set(STAT_KEYS) <= set(st) and st["null"]["shuffled_labels"]["n_draws"] == 2 and st["n"] == 16
    assert doc["provenance"]["command"][1:3] == ["steer", "sweep"]
    report = (sw / "report.md").read_text()
    assert "## Findings against the nulls" in report and "## Samples" in report
    for f in ("nulls.png", "dose_response.png", "kl.png"):
        assert (sw / "figures" / f).is_file()

    dec = tmp_path / "dec"
    assert cli.main(["steer", "decompose", "--model", model, "--vector", vf, "--sae", sae, "--k", "4",
                     "--null-draws", "2", "--out", str(dec)]) == 0
    doc = json.loads((dec / "result.json").read_text())
    assert doc["provenance"]["prompt_split"] == {"fit_prompts": 8, "score_prompts": 8}
    assert all(set(STAT_KEYS) <= set(st) for st in doc["metrics"]["statistics"].values())
    assert len(doc["tables"]["sparse_coding"]["atoms"]) == 4
    assert "Does the reconstruction still steer?" in (dec / "report.md").read_text()
    assert (dec / "figures" / "decomposition.png").is_file()

    prop = tmp_path / "prop"
    assert cli.main(["steer", "propagate", "--model", model, "--vector", vf, "--hook", "blocks.0.hook_resid_post",
                     "--sae", sae, "--alphas", "1", "4", "--null-draws", "2", "--out", str(prop)]) == 0
    doc = json.loads((prop / "result.json").read_text())
    st = doc["metrics"]["statistics"]["features_changed:blocks.1.hook_resid_post"]
    assert st["alpha"] == 4 and st["null"]["shuffled_labels"]["n_draws"] == 2 and set(STAT_KEYS) <= set(st)
    assert (prop / "figures" / "propagation.png").is_file()

    app = tmp_path / "apply"
    assert cli.main(["steer", "apply", "--model", model, "--vector", vf, "--hook", "blocks.1.hook_resid_post",
                     "--alpha", "-4", "--prompt", "The food was", "--max-new-tokens", "5", "--out", str(app)]) == 0
    g = json.loads((app / "result.json").read_text())["tables"]["generations"][0]
    assert g["prompt"] == "The food was" and set(g) == {"prompt", "unsteered", "steered", "random_direction"}
    capsys.readouterr()


@pytest.mark.real_model
def test_errors_that_need_gemma(small_sae, tmp_path, capsys):
    """Errors that need the model: a layer it lacks, a vector of another size, an SAE at another hook."""
    e = err(capsys, "steer", "compute", "--model", "gemma-3-270m", "--layers", "3,40", "--out", str(tmp_path / "x"))
    assert e == "geomsteer: error: --layers '3,40': gemma-3-270m has layers 0..17; got [40]"
    small = vector_file(tmp_path, d=16)
    e = err(capsys, "steer", "sweep", "--model", "gemma-3-270m", "--vector", str(small), "--out", str(tmp_path / "x"))
    assert e == (f"geomsteer: error: the vector at blocks.6.hook_resid_post in {str(small)!r} has size 16, but this "
                 "model's residual stream has size 640; use a vector computed on this model")
    v3 = vector_file(tmp_path, hooks=("blocks.3.hook_resid_post", "blocks.6.hook_resid_post"))
    e = err(capsys, "steer", "decompose", "--model", "gemma-3-270m", "--vector", str(v3), "--hook",
            "blocks.3.hook_resid_post", "--sae", str(small_sae), "--out", str(tmp_path / "x"))
    assert e == (f"geomsteer: error: the SAE at {str(small_sae)!r} was trained at blocks.6.hook_resid_post, but the "
                 "vector is at blocks.3.hook_resid_post; decompose with an SAE trained at the vector's hook")
    assert not (tmp_path / "x").exists()
