"""Steering vectors: the pair format and its errors, position rules, padding, applying and removing hooks."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model

from geomsteer import activations as A
from geomsteer import steering as S
from geomsteer.errors import ConfigError, DataError, OutputExistsError


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("gemma-3-270m", n_layers=2, d_model=16, seed=0)


def write(tmp_path, lines, name="pairs.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_pairs_load_both_forms_and_hash_the_file(tmp_path):
    p = write(tmp_path, [json.dumps({"positive": "I love it.", "negative": "I hate it."}), "",
                         json.dumps({"prompt": "Q? (A) yes (B) no\nAnswer: (", "positive": "A", "negative": "B"})])
    pairs, sha = S.load_pairs(p)
    assert pairs == [S.Pair("I love it.", "I hate it."), S.Pair("A", "B", "Q? (A) yes (B) no\nAnswer: (")]
    assert len(sha) == 64


@pytest.mark.parametrize("lines, message", [
    (['{"positive": "a", "negative": "b"}', '{"positive": "a", "negative": '],
     ":2: malformed JSON (Expecting value at column 31): expected one JSON object per line"),
    (['{"positive": "a"}'], ":1: expected an object with non-empty string fields 'positive' and 'negative'"),
    (['["a", "b"]'], ":1: expected an object with non-empty string fields 'positive' and 'negative', got list"),
    (['{"positive": "a", "negative": "b", "prompt": 3}'], ":1: 'prompt' must be a string, got int"),
    ([""], "holds no pairs: expected at least one JSONL line"),
])
def test_malformed_pair_files(tmp_path, lines, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        S.load_pairs(write(tmp_path, lines))


def _plain(model, text, prompt, hook):
    ids = A._bos(model) + (model.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []) \
        + model.tokenizer(text, add_special_tokens=False)["input_ids"]
    _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=hook)
    return cache[hook][0].double().numpy(), len(ids)


@pytest.mark.parametrize("position", ["last", "mean", "answer"])
def test_vectors_follow_the_position_rule_and_ignore_padding(tiny, position):
    hook = "blocks.1.hook_resid_post"
    pairs = [S.Pair(" good", " bad", "The film was"), S.Pair(" a truly wonderful day", " a dull day", "It was")]
    v = S.compute_vectors(tiny, pairs, [hook], position=position, batch_size=2)[hook]
    diffs = []
    for p in pairs:
        sides = []
        for text in (p.positive, p.negative):
            a, n = _plain(tiny, text, p.prompt, hook)
            n_prompt = len(tiny.tokenizer(p.prompt, add_special_tokens=False)["input_ids"])
            start = {"last": n - 1, "mean": 1, "answer": 1 + n_prompt}[position]
            sides.append(a[start:n].mean(0))
        diffs.append(sides[0] - sides[1])
    np.testing.assert_allclose(v.vector, np.mean(diffs, 0), rtol=1e-4, atol=1e-5)
    assert v.n_pairs == 2 and v.position == position and v.method == "mean_diff"


def test_pca_vector_points_along_the_shared_difference(tiny):
    hook = "blocks.0.hook_resid_post"
    pairs = [S.Pair(f" {w} great", f" {w} awful") for w in ("dog", "day", "film", "meal", "song")]
    mean = S.compute_vectors(tiny, pairs, [hook])[hook].vector
    pca = S.compute_vectors(tiny, pairs, [hook], method="pca")[hook].vector
    assert pca @ mean > 0 and abs(pca @ mean / np.linalg.norm(pca) / np.linalg.norm(mean)) > 0.5


def test_compute_errors(tiny):
    hook = "blocks.0.hook_resid_post"
    with pytest.raises(ConfigError, match="position rule 'answer' reads the answer after a prompt"):
        S.compute_vectors(tiny, [S.Pair("a", "b")], [hook], position="answer")
    with pytest.raises(ConfigError, match="unknown position rule 'first'"):
        S.compute_vectors(tiny, [S.Pair("a", "b")], [hook], position="first")
    with pytest.raises(ConfigError, match="unknown hook 'blocks.9.hook_resid_post'"):
        S.compute_vectors(tiny, [S.Pair("a", "b")], ["blocks.9.hook_resid_post"])


def test_save_and_load_round_trip(tiny, tmp_path):
    hooks = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    vs = S.compute_vectors(tiny, [S.Pair(" yes", " no")], hooks, model_name="tiny", data_sha256="abc")
    path = S.save_vectors(vs, tmp_path / "v.safetensors")
    back = S.load_vectors(path)
    assert set(back) == set(hooks)
    for h in hooks:
        np.testing.assert_array_equal(back[h].vector, vs[h].vector)
        assert (back[h].model, back[h].position, back[h].n_pairs, back[h].data_sha256) == ("tiny", "last", 1, "abc")
    with pytest.raises(OutputExistsError):
        S.save_vectors(vs, path)
    (tmp_path / "x.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataError, match="is not a steering vector file written by geomsteer"):
        S.load_vectors(tmp_path / "x.safetensors")


def test_steering_adds_the_vector_and_always_removes_its_hook(tiny):
    hook = "blocks.0.hook_resid_post"
    ids = torch.tensor([A._bos(tiny) + tiny.tokenizer(" hello there", add_special_tokens=False)["input_ids"]])
    v = np.random.default_rng(0).normal(size=16).astype(np.float32)
    _, clean = tiny.run_with_cache(ids, names_filter=hook)
    with S.steering(tiny, v, 2.0, hook=hook):
        _, steered = tiny.run_with_cache(ids, names_filter=hook)
    np.testing.assert_allclose((steered[hook] - clean[hook])[0].numpy(), np.tile(2 * v, (ids.shape[1], 1)), atol=1e-5)
    with pytest.raises(RuntimeError, match="boom"):
        with S.steering(tiny, v, 1.0, hook=hook):
            raise RuntimeError("boom")
    assert not tiny.hook_dict[hook].fwd_hooks  # removed after the exception
    _, again = tiny.run_with_cache(ids, names_filter=hook)
    torch.testing.assert_close(again[hook], clean[hook])


def test_steering_at_the_last_real_token_of_padded_rows(tiny):
    hook = "blocks.1.hook_resid_post"
    tok = tiny.tokenizer
    rows = [A._bos(tiny) + tok(t, add_special_tokens=False)["input_ids"] for t in (" a b c d", " a")]
    lengths = [len(r) for r in rows]
    ids = torch.full((2, max(lengths)), tok.pad_token_id)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    v = np.ones(16, dtype=np.float32)
    with S.steering(tiny, v, 1.0, hook="blocks.0.hook_resid_post", positions="last", lengths=lengths):
        _, steered = tiny.run_with_cache(ids, attention_mask=mask, names_filter=hook)
    for i, r in enumerate(rows):  # each row as if alone, steered at its own last token
        with S.steering(tiny, v, 1.0, hook="blocks.0.hook_resid_post", positions="last", lengths=[len(r)]):
            _, alone = tiny.run_with_cache(torch.tensor([r]), names_filter=hook)
        np.testing.assert_allclose(steered[hook][i, : len(r)].numpy(), alone[hook][0].numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": float("nan")}, "the multiplier must be a finite number, got nan"),
    ({"alpha": 1.0, "vector": np.ones(8)}, "the steering vector has shape (8,), but blocks.0.hook_resid_post of this "
                                           "model holds vectors of size 16"),
    ({"alpha": 1.0, "hook": "blocks.5.hook_resid_post"}, "unknown hook 'blocks.5.hook_resid_post'"),
])
def test_steering_errors(tiny, kwargs, message):
    args = {"vector": np.ones(16), "hook": "blocks.0.hook_resid_post", **kwargs}
    with pytest.raises((ConfigError, DataError), match=message.replace("(", r"\(").replace(")", r"\)")):
        with S.steering(tiny, args.pop("vector"), args.pop("alpha"), **args):
            pass
