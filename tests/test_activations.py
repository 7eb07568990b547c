"""Activation extraction and the shard store, on a tiny TransformerLens model with a real tokenizer."""

import json
import re

import numpy as np
import pytest
import torch

from geomsteer import activations as A
from geomsteer import models
from geomsteer.errors import ConfigError, DataError

TEXTS = ["The cat sat on the mat.", "A dog.", "Birds fly south in winter, and some never come back.",
         "Plants need light.", "x", "Fish swim in the sea and in rivers.", "Trees grow slowly.",
         "An elephant never forgets.", "The mouse ran.", "Rain falls."]


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer HookedTransformer with random weights and Gemma 3's tokenizer (no download)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = models.load_tokenizer("gemma-3-270m")
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, n_ctx=64, d_vocab=len(tok),
                                  act_fn="relu", default_prepend_bos=True, seed=0)
    m = HookedTransformer(cfg)
    m.set_tokenizer(tok, default_padding_side="right")
    m.eval()
    return m


def test_batched_extraction_equals_one_document_at_a_time(tiny):
    hooks = ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]
    batched = list(A.iter_activations(tiny, TEXTS, hooks, batch_size=4, context_length=32))
    single = list(A.iter_activations(tiny, TEXTS, hooks, batch_size=1, context_length=32))
    cat = lambda parts, k: np.concatenate([p[k] for p in parts])  # noqa: E731
    for k in hooks + ["token_ids", "doc_index", "position"]:
        np.testing.assert_allclose(cat(batched, k), cat(single, k), rtol=1e-4, atol=1e-4)
    tok = tiny.tokenizer
    n_real = sum(len(tok(t, add_special_tokens=False)["input_ids"][:31]) for t in TEXTS)
    assert len(cat(batched, "token_ids")) == n_real  # no pad, no BOS
    assert tok.pad_token_id not in set(cat(batched, "token_ids").tolist()) or n_real == 0
    assert cat(batched, "position").min() == 1


def test_bos_kept_on_request_and_matches_a_plain_forward(tiny):
    out = next(A.iter_activations(tiny, TEXTS[:3], ["blocks.0.hook_resid_post"], batch_size=3, keep_bos=True))
    assert out["position"].min() == 0 and (out["token_ids"][out["position"] == 0] == tiny.tokenizer.bos_token_id).all()
    ids = torch.tensor([[tiny.tokenizer.bos_token_id] + tiny.tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]])
    _, cache = tiny.run_with_cache(ids, names_filter="blocks.0.hook_resid_post")
    np.testing.assert_allclose(out["blocks.0.hook_resid_post"][out["doc_index"] == 2],
                               cache["blocks.0.hook_resid_post"][0].numpy(), rtol=1e-4, atol=1e-5)


def test_forward_stops_after_the_last_needed_hook(tiny):
    calls = []
    handle = tiny.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    unembed = tiny.unembed.register_forward_hook(lambda *a: calls.append("logits"))
    try:
        list(A.iter_activations(tiny, TEXTS, ["blocks.0.hook_resid_post"], batch_size=5))
    finally:
        handle.remove()
        unembed.remove()
    assert calls == []
    assert all(len(hp.fwd_hooks) == 0 for hp in tiny.hook_dict.values())  # hooks removed afterwards


def test_unknown_hook_lists_the_valid_names(tiny):
    with pytest.raises(ConfigError, match=r"^unknown hook 'blocks\.7\.hook_resid_post' for this model: it has layers "
                                          r"0\.\.1; valid names are blocks\.<layer>\.<name> with <name> one of .*"
                                          r"hook_resid_post.*\(for example 'blocks\.1\.hook_resid_post'\), or hook_embed$"):
        A.check_hooks(tiny, ["blocks.7.hook_resid_post"])


def test_store_round_trip_and_manifest(tiny, tmp_path):
    hooks = ["blocks.0.hook_resid_post"]
    store = A.extract_to_store(tiny, TEXTS, hooks, tmp_path / "s", model_name="tiny", batch_size=2,
                               shard_tokens=20, progress=False)
    m = store.manifest
    assert m["complete"] and len(m["shards"]) >= 2 and m["model"] == "tiny" and m["context_start"] == [tiny.tokenizer.bos_token_id]
    assert m["keep_bos"] is False and m["context_length"] == 128 and m["n_documents"] == len(TEXTS)
    assert m["seed"] is None and m["packed"] is False and m["format"] == "geomsteer.activations/3"
    expected = np.concatenate([b[hooks[0]] for b in A.iter_activations(tiny, TEXTS, hooks, batch_size=2)])
    np.testing.assert_allclose(store.load(hooks[0]), expected, rtol=1e-5, atol=1e-6)
    assert store.n_tokens == len(expected)
    store.verify()


def test_interrupted_extraction_resumes_without_redoing_shards(tiny, tmp_path, monkeypatch):
    hooks = ["blocks.1.hook_resid_post"]
    out = tmp_path / "s"
    real_forward, calls = A._forward, []

    def interrupted_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(A, "_forward", interrupted_forward)
    with pytest.raises(KeyboardInterrupt):
        A.extract_to_store(tiny, TEXTS, hooks, out, model_name="tiny", batch_size=2, shard_tokens=1, progress=False)
    monkeypatch.setattr(A, "_forward", real_forward)
    first = json.loads((out / "manifest.json").read_text())
    assert not first["complete"] and len(first["shards"]) == 3
    mtimes = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in first["shards"]}
    store = A.extract_to_store(tiny, TEXTS, hooks, out, model_name="tiny", batch_size=2, shard_tokens=1, progress=False)
    assert store.manifest["complete"]
    for f, t in mtimes.items():
        assert (out / f).stat().st_mtime_ns == t  # finished shards were not redone
    full = A.extract_to_store(tiny, TEXTS, hooks, tmp_path / "ref", model_name="tiny", batch_size=2,
                              shard_tokens=1, progress=False)
    np.testing.assert_allclose(store.load(hooks[0]), full.load(hooks[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([s["doc_index"] for s in store.iter_shards(["doc_index"])]),
                                  np.concatenate([s["doc_index"] for s in full.iter_shards(["doc_index"])]))
    assert not list(out.glob(".*.tmp"))


def test_packed_rows_hold_whole_documents_and_drop_separators(tiny):
    hooks = ["blocks.0.hook_resid_post"]
    packed = list(A.iter_activations(tiny, TEXTS, hooks, batch_size=2, context_length=24, pack=True))
    plain = list(A.iter_activations(tiny, TEXTS, hooks, batch_size=2, context_length=24))
    cat = lambda parts, k: np.concatenate([p[k] for p in parts])  # noqa: E731
    # The same tokens of the same documents, in the same order; fewer forward passes.
    np.testing.assert_array_equal(cat(packed, "token_ids"), cat(plain, "token_ids"))
    np.testing.assert_array_equal(cat(packed, "doc_index"), cat(plain, "doc_index"))
    assert len(packed) < len(plain) and packed[-1]["docs_done"] == len(TEXTS)
    sep = tiny.tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    assert sep not in set(cat(packed, "token_ids").tolist()) or "\n" in "".join(TEXTS)
    # The first document of each row sees only BOS before it: its activations match the plain run.
    first_doc = cat(packed, "doc_index") == 0
    np.testing.assert_allclose(cat(packed, hooks[0])[first_doc], cat(plain, hooks[0])[cat(plain, "doc_index") == 0],
                               rtol=1e-4, atol=1e-5)


def test_corrupt_shard_is_detected_and_reextracted(tiny, tmp_path):
    hooks = ["blocks.0.hook_resid_post"]
    out = tmp_path / "s"
    store = A.extract_to_store(tiny, TEXTS, hooks, out, model_name="tiny", batch_size=2, shard_tokens=10, progress=False)
    good = store.load(hooks[0])
    shard = out / store.manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=re.escape(f"shard {shard.name} of {str(out)!r} is corrupt (sha256 mismatch); "
                                                  "extract again into the same directory to replace it")):
        A.ActivationStore(out).verify()
    repaired = A.extract_to_store(tiny, TEXTS, hooks, out, model_name="tiny", batch_size=2, shard_tokens=10,
                                  progress=False)
    repaired.verify()
    np.testing.assert_allclose(repaired.load(hooks[0]), good)


def test_store_of_another_configuration_is_refused(tiny, tmp_path):
    out = tmp_path / "s"
    A.extract_to_store(tiny, TEXTS[:2], ["blocks.0.hook_resid_post"], out, model_name="tiny", progress=False)
    with pytest.raises(DataError, match=re.escape(f"{str(out)!r} holds activations of another configuration (hooks: "
                                                  "['blocks.0.hook_resid_post'] there, ['blocks.1.hook_resid_post'] "
                                                  "now); choose another directory or delete it")):
        A.extract_to_store(tiny, TEXTS[:2], ["blocks.1.hook_resid_post"], out, model_name="tiny", progress=False)


def test_max_tokens_caps_the_store(tiny, tmp_path):
    store = A.extract_to_store(tiny, TEXTS, ["blocks.0.hook_resid_post"], tmp_path / "s", model_name="tiny",
                               batch_size=3, max_tokens=25, progress=False)
    assert store.n_tokens == 25 and store.load("blocks.0.hook_resid_post").shape == (25, 16)


@pytest.mark.real_model
def test_gemma_extraction_matches_a_plain_forward():
    m = models.load_model("gemma-3-270m")
    out = next(A.iter_activations(m, TEXTS[:4], ["blocks.6.hook_resid_post"], batch_size=4))
    ids = torch.tensor([[m.tokenizer.bos_token_id] + m.tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]])
    _, cache = m.run_with_cache(ids, names_filter="blocks.6.hook_resid_post", stop_at_layer=7)
    ref = cache["blocks.6.hook_resid_post"][0, 1:].numpy()
    got = out["blocks.6.hook_resid_post"][out["doc_index"] == 1]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


# --------------------------------------------------------------------------------------------
# The context start read once (a key-value cache) gives what the plain pass gives

WORDS = ["cat", "dog", "elephant", "photosynthesis", "a", "run", "blue whale", "x", "sea"]


def _rotary(tokenizer, prepend_bos):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = models.load_tokenizer(tokenizer)
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, n_ctx=64, d_vocab=len(tok),
                                  act_fn="relu", default_prepend_bos=prepend_bos, seed=1,
                                  positional_embedding_type="rotary", rotary_dim=4)
    m = HookedTransformer(cfg)
    m.set_tokenizer(tok, default_padding_side="right")
    return m.eval()


@pytest.mark.parametrize("which", ["hooked, Gemma tokenizer", "hooked rotary, Qwen tokenizer (newline start)",
                                   "TransformerBridge (Gemma 3)"])
def test_head_cache_gives_the_plain_pass(which, tiny_gemma, monkeypatch):
    if which.startswith("TransformerBridge"):
        model = models.load_model(models.resolve(tiny_gemma))
        assert type(model).__name__ == "TransformerBridge"
    elif "Qwen" in which:
        model = _rotary("qwen2.5-0.5b", prepend_bos=False)
    else:
        model = _rotary("gemma-3-270m", prepend_bos=True)
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    head = A.bos_ids(model) + model.tokenizer(" The", add_special_tokens=False)["input_ids"]
    assert A._HeadCache.of(model, head, [100, 200], hooks) is not None  # the cached path is the one taken
    ids = [int(p[0]) for p in model.tokenizer([" " + w for w in WORDS], add_special_tokens=False)["input_ids"]]

    def run():
        return (A.unit_activations(model, WORDS, hooks, rule="mean", prefix=" The", max_tokens=4, batch_size=4,
                                   progress=False),
                A.unit_activations(model, WORDS, hooks, max_tokens=4, batch_size=4, progress=False),
                A.token_activations(model, ids, hooks, template=" The", batch_size=4, progress=False))

    cached = run()
    monkeypatch.setattr(A._HeadCache, "of", classmethod(lambda cls, *a: None))
    plain = run()
    for (c_mean, kept, _), (p_mean, kept2, _) in [(cached[0], plain[0]), (cached[1], plain[1])]:
        assert np.array_equal(kept, kept2) and kept.sum() >= 7
        for h in hooks:
            np.testing.assert_allclose(c_mean[h], p_mean[h], rtol=1e-4, atol=1e-5)
    for h in hooks:
        np.testing.assert_allclose(cached[2][h], plain[2][h], rtol=1e-4, atol=1e-5)


def test_head_cache_that_disagrees_with_the_plain_pass_is_not_used(monkeypatch):
    model = _rotary("gemma-3-270m", prepend_bos=True)
    hooks = ["blocks.1.hook_resid_post"]
    with monkeypatch.context() as plain:
        plain.setattr(A._HeadCache, "of", classmethod(lambda cls, *a: None))
        want = A.unit_activations(model, WORDS, hooks, batch_size=4, progress=False)[0]
    # a cache whose rows forget the head (as a library version that ignores the cache would)
    monkeypatch.setattr(A._HeadCache, "inputs", lambda self, mask: {"attention_mask": mask})
    assert A._HeadCache.of(model, A.bos_ids(model), [100], hooks) is None
    got = A.unit_activations(model, WORDS, hooks, batch_size=4, progress=False)[0]
    np.testing.assert_array_equal(got[hooks[0]], want[hooks[0]])

