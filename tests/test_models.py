"""Model resolution, its error messages, the cache's integrity, and loading a real model."""

import json
import re

import numpy as np
import pytest

from geomsteer import _atomic, models
from geomsteer.errors import DataError, ModelNotFoundError, ModelUnavailableError

KNOWN = ", ".join(models.MODELS)


def test_unknown_model_lists_the_aliases():
    msg = (f"unknown model 'gemma-7': expected a known alias ({KNOWN}), a local Hugging Face model directory "
           "(with config.json) or a .gguf file; the offline models are gemma-3-270m, qwen2.5-0.5b")
    with pytest.raises(ModelNotFoundError, match="^" + re.escape(msg) + "$"):
        models.resolve("gemma-7")


def test_uncached_hub_model_offline_fails_fast_and_names_the_offline_models(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = ("model 'gemma-2b' (google/gemma-2b) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
           "use an offline model (gemma-3-270m, qwen2.5-0.5b), a local model directory, or a .gguf file")
    with pytest.raises(ModelUnavailableError, match="^" + re.escape(msg) + "$"):
        models.resolve("gemma-2b")


def test_missing_gguf_file(tmp_path):
    path = tmp_path / "nope.gguf"
    msg = f"GGUF file {str(path)!r} does not exist: expected the path of a .gguf model file; check the path"
    with pytest.raises(ModelNotFoundError, match="^" + re.escape(msg) + "$"):
        models.resolve(str(path))


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("not a model")
    msg = (f"{str(path)!r} is not a GGUF file: expected the 4-byte magic 'GGUF' at its start; "
           "pass a GGUF model file (for example one written by llama.cpp's converter)")
    with pytest.raises(DataError, match="^" + re.escape(msg) + "$"):
        models.resolve(str(path))


def test_directory_without_config(tmp_path):
    msg = (f"directory {str(tmp_path)!r} is not a Hugging Face model directory: expected a config.json in it; "
           "pass a directory written by save_pretrained, an alias, or a .gguf file")
    with pytest.raises(ModelNotFoundError, match="^" + re.escape(msg) + "$"):
        models.resolve(str(tmp_path))


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMSTEER_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


def _fake_entry(path, content=b"weights"):
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(content)
    files = {"model.safetensors": {"size": len(content), "sha256": _atomic.sha256_file(path / "model.safetensors")}}
    (path / models.MANIFEST).write_text(json.dumps({"format": 1, "files": files}))


def test_cache_entry_with_a_changed_file_is_not_used(tmp_path):
    good, bad, partial = tmp_path / "good", tmp_path / "bad", tmp_path / "partial"
    _fake_entry(good)
    _fake_entry(bad)
    (bad / "model.safetensors").write_bytes(b"weighTs")  # same size, different content
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")  # no manifest: an interrupted build
    assert models.gguf._valid_cache(good)
    assert not models.gguf._valid_cache(bad)
    assert not models.gguf._valid_cache(partial)


def test_cache_build_interrupted_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOMSTEER_CACHE", str(tmp_path))

    def make_gguf(dest):
        (dest / "x.gguf").write_bytes(b"GGUF....")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models.build_cache("toy", make_gguf, {})
    assert list((tmp_path / "models").iterdir()) == []


def test_staged_dir_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with _atomic.staged_dir(out) as d:
        (d / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with _atomic.staged_dir(out, replace=True) as d:
            (d / "a.txt").write_text("second, half-written")
            raise RuntimeError("boom")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(FileExistsError):
        with _atomic.staged_dir(out) as d:
            pass


@pytest.mark.real_model
def test_gemma_unembedding(gemma_unembedding):
    e = gemma_unembedding
    assert e.gamma.shape == (262144, 640) and e.gamma.dtype == np.float32
    assert np.isfinite(e.gamma).all()
    assert e.vocab["▁cat"] < 262144 and e.id_to_token[e.vocab["▁cat"]] == "▁cat"
    assert e.provenance["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_a_warm_unembedding_needs_no_tokenizer(gemma_unembedding, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the tokenizer was loaded")

    monkeypatch.setattr(models.unembedding, "load_tokenizer", refuse)  # the cache beside the matrix holds the vocabulary
    again = models.load_unembedding("gemma-3-270m")
    assert again.vocab == gemma_unembedding.vocab and again.tokenizer_name == gemma_unembedding.tokenizer_name
    np.testing.assert_array_equal(again.gamma[:100], gemma_unembedding.gamma[:100])


@pytest.mark.real_model
def test_gemma_loads_into_transformer_lens_with_hf_residuals(gemma_unembedding):
    import torch

    r = models.resolve("gemma-3-270m")
    tl = models.load_model(r)
    assert (tl.cfg.d_model, tl.cfg.n_layers, tl.cfg.d_vocab) == (640, 18, 262144)
    hf = models.load_hf_model(r)
    tok = models.load_tokenizer(r)
    ids = tok("The cat sat on the mat.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = tl.run_with_cache(ids, stop_at_layer=7, names_filter="blocks.6.hook_resid_post")
        hidden = hf(ids, output_hidden_states=True).hidden_states[7]
    resid = cache["blocks.6.hook_resid_post"]
    rel = (resid - hidden).norm() / hidden.norm()
    assert rel < 1e-4
    # The TransformerLens unembedding is the raw one load_unembedding reads.
    np.testing.assert_allclose(tl.W_U.T.detach().numpy(), gemma_unembedding.gamma, atol=0)
    # ... so a loaded model's unembedding is read from it (no second load of the files), final-norm scale included
    from geomsteer.models.unembedding import unembedding_from_model

    own = unembedding_from_model(tl, r)
    np.testing.assert_array_equal(own.gamma, gemma_unembedding.gamma)
    np.testing.assert_allclose(own.final_norm_scale, gemma_unembedding.final_norm_scale, rtol=1e-5, atol=1e-6)
    assert own.vocab == gemma_unembedding.vocab
    # weights stored in the order TransformerLens's forward reads them (the HF agreement above holds with it)
    assert tl.blocks[0].mlp.W_gate.T.is_contiguous() and tl.W_U.T.is_contiguous()
    # TransformerLens's tokenizer is a copy of the cached one (not loaded again from disk) that encodes
    # like the tokenizer it would have loaded (add_bos_token=True), and the cached one is left as it was
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(r.path), add_bos_token=True)
    assert tl.tokenizer is not tok and tok.padding_side == AutoTokenizer.from_pretrained(str(r.path)).padding_side
    for text in ["", "The cat sat on the mat.", " kitten\n\tpurrs"]:
        for special in (True, False):
            assert tl.tokenizer(text, add_special_tokens=special)["input_ids"] == \
                reloaded(text, add_special_tokens=special)["input_ids"]
    assert tl.to_tokens("a b").tolist() == [reloaded("a b")["input_ids"]]
    # generation with the key-value cache gives the tokens of the cache-free path, steered and not
    from geomsteer.steering import generate

    prompts = ["The movie was", "I think the food here is really"]
    v = np.random.default_rng(0).normal(size=640).astype(np.float32)
    v *= 30 / np.linalg.norm(v)
    for kw in ({}, {"vector": v, "alpha": 2.0, "hook": "blocks.6.hook_resid_post"}):
        assert generate(tl, prompts, 8, **kw) == generate(tl, prompts, 8, kv_cache=False, **kw)


@pytest.mark.real_model
def test_local_directory_loads_as_a_transformer_bridge_with_hf_residuals(gemma_unembedding):
    import torch

    path = models.resolve("gemma-3-270m").path
    r = models.resolve(str(path))
    assert r.tl_name is None and r.provenance["source"] == "local-directory"
    bridge = models.load_model(r)
    assert type(bridge).__name__ == "TransformerBridge"
    hf = models.load_hf_model(r)
    ids = models.load_tokenizer(r)("A bird in the hand.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n == "blocks.6.hook_resid_post")
        hidden = hf(ids, output_hidden_states=True).hidden_states[7]
    assert ((cache["blocks.6.hook_resid_post"] - hidden).norm() / hidden.norm()) < 1e-4
    np.testing.assert_array_equal(models.load_unembedding(r).gamma, gemma_unembedding.gamma)


def tiny_gguf(path, seed=0):
    """A one-layer llama GGUF (a 64-token byte-level vocabulary, width 32) whose output matrix is stored in
    Q8_0; returns the path and that matrix as the file's dequantization gives it."""
    import gguf

    V, D, F = 64, 32, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(D)
    w.add_block_count(1)
    w.add_feed_forward_length(F)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(D // 2)
    w.add_vocab_size(V)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    tokens = (letters + list(" .,!?0123456789"))[: V - 1] + ["ab"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * V)
    w.add_token_scores([0.0] * V)
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(seed)

    def tensor(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    out = (rng.standard_normal((V, D)) * 0.1).astype(np.float32)
    q = gguf.quants.quantize(out, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    tensor("token_embd.weight", V, D)
    tensor("output_norm.weight", D)
    for name, shape in (("attn_norm", (D,)), ("attn_q", (D, D)), ("attn_k", (D, D)), ("attn_v", (D, D)),
                        ("attn_output", (D, D)), ("ffn_norm", (D,)), ("ffn_gate", (F, D)), ("ffn_up", (F, D)),
                        ("ffn_down", (D, F))):
        tensor(f"blk.0.{name}.weight", *shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)


def test_gguf_file_is_dequantized_into_the_cache_once(tmp_path, monkeypatch):
    """A GGUF file (here a tiny one written with gguf-py; the real models' files take the same path on first
    use) is dequantized once into the verified cache, never copied there, and reused."""
    from geomsteer import _atomic

    gguf_path, out = tiny_gguf(tmp_path / "tiny.gguf")
    monkeypatch.setenv("GEOMSTEER_CACHE", str(tmp_path / "cache"))
    r = models.resolve(str(gguf_path))
    assert r.path.parent == tmp_path / "cache" / "models"
    assert r.provenance["gguf_sha256"] == _atomic.sha256_file(gguf_path) and r.provenance["source"] == "gguf-file"
    assert not any(p.name.endswith(".partial") for p in r.path.parent.iterdir())
    assert not any(p.suffix == ".gguf" for p in r.path.iterdir())  # the source is not copied into the cache
    again = models.resolve(str(gguf_path))  # second time: the valid entry is reused
    assert again.path == r.path and len(list(r.path.parent.iterdir())) == 1
    np.testing.assert_array_equal(models.load_unembedding(r).gamma, out)  # Q8_0 dequantized exactly
    tok = models.load_tokenizer(r)
    assert tok.convert_tokens_to_ids("ab") == 63 and tok.convert_tokens_to_ids("Z") == 51  # the file's vocabulary


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_final_norm_scale_is_probed_exactly(arch):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
        norm, expected = model.model.norm, lambda w: w
    elif arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32))
        norm, expected = model.transformer.ln_f, lambda w: w
    else:
        model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                                         num_hidden_layers=1, num_attention_heads=2,
                                                         num_key_value_heads=1, head_dim=8))
        norm, expected = model.model.norm, lambda w: 1 + w  # Gemma scales by (1 + weight)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(16))  # a bias must not leak into the scale
    scale = models.unembedding._final_norm_scale(model)
    np.testing.assert_allclose(scale, expected(norm.weight.detach()).numpy(), rtol=1e-4, atol=1e-5)


def test_weights_stored_in_the_order_the_forward_reads_give_bit_identical_outputs():
    import torch
    from conftest import tiny_model

    from geomsteer.models.load import _store_as_read

    m = tiny_model(n_layers=2, seed=3)
    ids = torch.randint(10, 3000, (3, 9))
    with torch.no_grad():
        before = m(ids)
        weights = {k: p.detach().clone() for k, p in m.named_parameters()}
        _store_as_read(m)
        after = m(ids)
    assert torch.equal(before, after)
    for k, p in m.named_parameters():
        assert torch.equal(p, weights[k]) and p.shape == weights[k].shape
    assert m.blocks[0].mlp.W_in.T.is_contiguous() and m.unembed.W_U.T.is_contiguous()
    assert m.blocks[0].attn.W_Q.permute(0, 2, 1).is_contiguous()
