"""'geomsteer features intervene | graph | compare' end to end on a tiny local model, and their messages."""

import json

import networkx as nx
import pytest

from geomsteer import cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A three-layer Gemma 3 architecture with random weights and Gemma's tokenizer as a local model directory,
    random SAEs at each layer, and a sentiment vector at layer 0."""
    import torch
    import transformers as tf
    from test_steering_analyzers import random_sae

    from geomsteer import models, saes

    root = tmp_path_factory.mktemp("tiny_features")
    tok = models.load_tokenizer("gemma-3-270m")
    torch.manual_seed(0)
    m = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=256, sliding_window=64))
    m.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    dirs = []
    for layer in range(3):
        h = f"blocks.{layer}.hook_resid_post"
        dirs.append(str(saes.save_sae(random_sae(16, 40, h, k=6, seed=layer), root / f"sae{layer}", extra={"hook": h})))
    wide = str(saes.save_sae(random_sae(32, 8, "blocks.1.hook_resid_post", k=2), root / "wide",
                             extra={"hook": "blocks.1.hook_resid_post"}))
    assert cli.main(["steer", "compute", "--model", str(root / "model"), "--layers", "0", "--out", str(root / "vec")]) == 0
    return str(root / "model"), dirs, wide, str(root / "vec" / "vectors.safetensors")


def test_the_three_commands_write_their_reports(tiny, tmp_path, capsys):
    model, dirs, _, vec = tiny
    base = ["--model", model, "--sae", *dirs, "--neutral", "3"]
    out = tmp_path / "dose"
    assert cli.main(["features", "intervene", *base, "--vector", vec, "--k", "2", "--null-draws", "3",
                     "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["geomsteer_result"] == "feature_dose" and doc["provenance"]["hook"] == "blocks.0.hook_resid_post"
    assert doc["provenance"]["later_hooks"] == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert "vector's sparse coding" in doc["provenance"]["feature_source"]
    for st in doc["metrics"]["statistics"].values():
        assert set(st) >= {"observed", "ci95", "null", "effect_size", "p_value", "n"}
    assert "kl_ratio:x0.5/x0" in doc["metrics"]["statistics"] and (out / "figures" / "dose.png").is_file()
    assert "ablation" in capsys.readouterr().out

    out = tmp_path / "graph"
    assert cli.main(["features", "graph", *base, "--features", "1", "2", "3", "--null-draws", "4",
                     "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["metrics"]["features"] == [1, 2, 3] and doc["provenance"]["feature_source"] == "given"
    assert "attribution_spearman" in doc["metrics"]["statistics"]
    G = nx.read_graphml(out / "graph.graphml")
    assert {"L0/1", "L0/2", "L0/3"} <= set(G.nodes)
    kept = [e for e in G.edges(data=True) if e[2]["kept"]]
    assert len(kept) == doc["metrics"]["n_edges"] and G.number_of_edges() >= min(60, len(doc["tables"]["top_edges"]))
    assert "## Strongest edges" in (out / "report.md").read_text()

    out = tmp_path / "compare"
    assert cli.main(["features", "compare", *base, "--vector", vec, "--k", "3", "--null-draws", "3",
                     "--alpha", "8", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    methods = {r["method"]: r for r in doc["tables"]["methods"]}
    assert set(methods) == {"vector", "reconstruction", "clamp"} and methods["vector"]["multiplier"] == 8
    assert "kl_minus_vector:clamp" in doc["metrics"]["statistics"]
    assert "| method | multiplier | matched |" in (out / "report.md").read_text()

    out = tmp_path / "relations"
    assert cli.main(["features", "relations", *base, "--vector", vec, "--top", "8", "--out", str(out)]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert set(doc["metrics"]["statistics"]) == {"co_change:decoder", "co_change:co_activation", "decoder_predicts_output"}
    assert (out / "figures" / "relations.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["intervene", "--features", "40"], "feature index 40 is outside the SAE: it has features 0..39"),
    (["intervene", "--features", "1", "--factors", "0", "inf"], "scale factors must be finite numbers"),
    (["intervene", "--features", "1", "--factors", "1"], "a factor of 1 changes nothing"),
    (["intervene"], "give --features, or --vector"),
    (["graph", "--features", "1", "--hook", "blocks.2.hook_resid_post"], "no SAE after blocks.2.hook_resid_post"),
    (["graph", "--features", "1", "--null-draws", "1"], "at least 2 random feature sets"),
    (["graph", "--features", "1", "--hook", "blocks.1.hook_resid_post", "--sae-swap"], "no SAE at blocks.1"),
    (["intervene", "--features", "1", "--wide"], "the SAEs read vectors of different sizes (16 at blocks.0"),
    (["intervene", "--features", "1", "1"], "feature indices repeat"),
    (["relations", "--vector", "VEC", "--top", "2"], "--top must be at least 3"),
])
def test_bad_input_gets_a_message_and_no_traceback(tiny, tmp_path, capsys, args, message):
    model, dirs, wide, vec = tiny
    args = [vec if a == "VEC" else a for a in args]
    saes = list(dirs)
    if "--sae-swap" in args:
        args = [a for a in args if a != "--sae-swap"]
        saes = [dirs[0], dirs[2]]
    if "--wide" in args:
        args = [a for a in args if a != "--wide"]
        saes = [dirs[0], wide]
    code = cli.main(["features", args[0], "--model", model, "--sae", *saes, *args[1:], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
