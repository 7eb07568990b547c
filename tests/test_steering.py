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
    ids = A.bos_ids(model) + (model.tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []) \
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
            start = {"last": n - 1, "mean": 1, "answer": 1 + n_prompt}[position]  # mean: the prompt's tokens too
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
        assert (back[h].model, back[h].position, back[h].n_pairs, back[h].data_sha256) == ("tiny", "mean", 1, "abc")  # the default rule
    with pytest.raises(OutputExistsError):
        S.save_vectors(vs, path)
    (tmp_path / "x.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataError, match="is not a steering vector file written by geomsteer .*: expected the "
                                        "vectors.safetensors that 'geomsteer steer compute' writes"):
        S.load_vectors(tmp_path / "x.safetensors")


def test_steering_adds_the_vector_and_always_removes_its_hook(tiny):
    hook = "blocks.0.hook_resid_post"
    ids = torch.tensor([A.bos_ids(tiny) + tiny.tokenizer(" hello there", add_special_tokens=False)["input_ids"]])
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
    rows = [A.bos_ids(tiny) + tok(t, add_special_tokens=False)["input_ids"] for t in (" a b c d", " a")]
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


# --------------------------------------------------------------------------------------------
# Pair statistics, evaluation prompts, generation, side effects


def test_pair_statistics_known_answers():
    same = np.tile([1.0, 0.0, 0.0], (6, 1))
    s = S.pair_statistics(same)
    assert s["held_out_pair_accuracy"] == 1.0 and s["mean_cosine_with_vector"] == pytest.approx(1.0)
    assert s["mean_pair_difference_norm"] == pytest.approx(1.0)
    assert s["random_sign_norm"] < 0.6  # random signs mostly cancel
    opposite = np.array([[1.0, 0.0], [-1.0, 0.0]] * 3)  # no shared direction: each pair disagrees with the rest
    assert S.pair_statistics(opposite)["held_out_pair_accuracy"] == 0.0


def test_eval_file_and_its_errors(tmp_path):
    p = write(tmp_path, [json.dumps({"prompt": "It was", "positive": " good", "negative": [" bad", " awful"]})], "e.jsonl")
    items, sha = S.load_eval(p)
    assert items == [S.EvalPrompt("It was", (" good",), (" bad", " awful"))] and len(sha) == 64
    for lines, message in [
        (['{"prompt": "x", "positive": [" a"]}'], r"e.jsonl:1: 'negative' must be a non-empty string or list"),
        (['{"positive": [" a"], "negative": [" b"]}'], r"e.jsonl:1: expected an object with a non-empty string 'prompt'"),
        (['{"prompt": "x", "positive": " a", "negative": " b"}', "{oops"], r"e.jsonl:2: malformed JSON"),
        ([""], "holds no prompts"),
    ]:
        with pytest.raises(DataError, match=message):
            S.load_eval(write(tmp_path, lines, "e.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        S.load_eval(tmp_path / "none.jsonl")


def test_targets_must_differ_in_their_first_token(tiny):
    with pytest.raises(DataError, match="positive and negative targets share the first token"):
        S.target_ids(tiny, [S.EvalPrompt("It was", (" good",), (" good",))])


@pytest.mark.parametrize("softcap", [0.0, 3.0])
def test_target_logodds_match_a_plain_computation_and_ignore_padding(tiny, softcap, monkeypatch):
    monkeypatch.setattr(tiny.cfg, "output_logits_soft_cap", softcap)  # the last-position shortcut applies it too
    items = [S.EvalPrompt("The film was", (" good", " great"), (" bad",)),
             S.EvalPrompt("Yesterday the long and dull meeting was", (" good",), (" bad", " awful"))]
    got = S.target_logodds(tiny, items, batch_size=2)
    tok = tiny.tokenizer
    for i, it in enumerate(items):
        ids = torch.tensor([A.bos_ids(tiny) + tok(it.prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(tiny(ids)[0, -1].double(), -1).numpy()
        pos = np.log(sum(np.exp(lp[tok(t, add_special_tokens=False)["input_ids"][0]]) for t in it.positive))
        neg = np.log(sum(np.exp(lp[tok(t, add_special_tokens=False)["input_ids"][0]]) for t in it.negative))
        np.testing.assert_allclose(got[i], [pos - neg, pos, neg], rtol=1e-4, atol=1e-4)


def _greedy_by_hand(model, prompt, n, v=None, alpha=0.0, hook=None):
    """Greedy decoding one full forward pass per token, the vector added after the start token."""
    head = A.bos_ids(model)
    ids = head + model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = []
    for _ in range(n):
        def add(act, hook):
            act = act.clone()
            act[:, len(head):] += torch.as_tensor(alpha * v, dtype=act.dtype)
            return act

        hooks = [(hook, add)] if v is not None else []
        with torch.no_grad():
            logits = model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)
        t = int(logits[0, -1].argmax())
        ids.append(t)
        out.append(t)
    return out


def test_generation_steers_new_tokens_handles_padding_and_removes_its_hook(tiny):
    hook = "blocks.0.hook_resid_post"
    v = np.random.default_rng(1).normal(size=16).astype(np.float32)
    prompts = [" the cat sat on", " a"]  # different lengths: right padding in one batch
    tok = tiny.tokenizer
    batched = S.generate(tiny, prompts, 6, v, 3.0, hook, batch_size=2)
    for p, text in zip(prompts, batched):
        by_hand = _greedy_by_hand(tiny, p, 6, v, 3.0, hook)
        eos = tok.eos_token_id
        expect = tok.decode([t for t in by_hand[: by_hand.index(eos) + 1 if eos in by_hand else None] if t != eos],
                            skip_special_tokens=True)
        assert text == expect
    plain = S.generate(tiny, prompts, 6, batch_size=1)
    for p, text in zip(prompts, plain):
        by_hand = _greedy_by_hand(tiny, p, 6)
        eos = tok.eos_token_id
        assert text == tok.decode([t for t in by_hand[: by_hand.index(eos) + 1 if eos in by_hand else None] if t != eos],
                                  skip_special_tokens=True)
    assert plain != batched  # the vector changes what is generated
    assert not tiny.hook_dict[hook].fwd_hooks
    with pytest.raises(ConfigError, match="exceeds the model's context of 64"):
        S.generate(tiny, prompts, 100, v, 1.0, hook)
    assert not tiny.hook_dict[hook].fwd_hooks  # also after an error


@pytest.mark.parametrize("cap", [0.0, 5.0])  # without a soft cap the cross term is taken through W_U p
def test_neutral_kl_is_zero_unsteered_and_matches_a_plain_computation(tiny, cap):
    old = tiny.cfg.output_logits_soft_cap
    tiny.cfg.output_logits_soft_cap = cap
    try:
        _neutral_kl_against_the_plain_formula(tiny, linear=cap == 0)
    finally:
        tiny.cfg.output_logits_soft_cap = old


def _neutral_kl_against_the_plain_formula(tiny, linear):
    texts = ["a small dog that barks", "the theory of everything and more"]
    neutral = S.NeutralText(tiny, texts, max_tokens=8, batch_size=2)
    assert neutral.linear == linear
    assert neutral.kl(tiny) == pytest.approx(0.0, abs=1e-6)
    V = np.random.default_rng(4).normal(size=(2, 16)).astype(np.float32)
    one_by_one = []
    for v in V:
        with S.steering(tiny, v, 1.5, "blocks.0.hook_resid_post", start=1):
            one_by_one.append(neutral.kl(tiny))
    assert neutral.kl_steered(tiny, V, 1.5, "blocks.0.hook_resid_post") == pytest.approx(one_by_one, rel=1e-4)
    hook = "blocks.0.hook_resid_post"
    v = np.random.default_rng(2).normal(size=16).astype(np.float32)
    with S.steering(tiny, v, 2.0, hook, start=1):
        got = neutral.kl(tiny)
    tok = tiny.tokenizer
    total, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([A.bos_ids(tiny) + tok(t, add_special_tokens=False)["input_ids"][:8]])
        with torch.no_grad():
            p = torch.log_softmax(tiny(ids)[0].double(), -1)
            with S.steering(tiny, v, 2.0, hook, start=1):
                q = torch.log_softmax(tiny(ids)[0].double(), -1)
        kl = (p.exp() * (p - q)).sum(-1)[1:]  # positions after the start token
        total += float(kl.sum())
        count += len(kl)
    assert got == pytest.approx(total / count, rel=1e-4)
    assert got > 0


def test_random_direction_has_the_norm_and_is_seeded():
    v = np.arange(10.0)
    r = S.random_direction(v, 3)
    assert np.linalg.norm(r) == pytest.approx(np.linalg.norm(v), rel=1e-5)
    np.testing.assert_array_equal(r, S.random_direction(v, 3))
    assert abs(r @ v) / np.linalg.norm(v) ** 2 < 0.9


@pytest.mark.parametrize("arch", ["gemma", "qwen"])
def test_cached_generation_gives_the_tokens_of_the_cache_free_path(arch):
    # rows of different lengths in one batch (right padding), a prompt that is only the start token,
    # steered and unsteered, greedy and sampled; Qwen's tokenizer: no BOS, a newline starts the row
    m = tiny_model("gemma-3-270m" if arch == "gemma" else "qwen2.5-0.5b", n_layers=3, seed=4)
    prompts = [" the cat sat on", " a", " one two three four five six", ""]
    v = np.random.default_rng(1).normal(size=16).astype(np.float32)
    for kw in [{}, {"vector": v, "alpha": 3.0, "hook": "blocks.0.hook_resid_post"}, {"temperature": 1.0, "seed": 3},
               {"vector": v, "alpha": 2.0, "hook": "blocks.2.hook_resid_post", "temperature": 0.7}]:
        plain = S.generate(m, prompts, 10, batch_size=3, kv_cache=False, **kw)
        assert S.generate(m, prompts, 10, batch_size=3, **kw) == plain
    assert not any(hp.fwd_hooks for hp in m.hook_dict.values())


def test_runs_generated_together_equal_runs_generated_alone(tiny):
    v = np.random.default_rng(5).normal(size=16).astype(np.float32)
    w = np.random.default_rng(6).normal(size=16).astype(np.float32)
    prompts = [" the cat sat on", " a"]
    runs = [(None, 0.0, None), (v, 3.0, "blocks.0.hook_resid_post"), (w, -2.0, "blocks.1.hook_resid_post"),
            (v, -3.0, "blocks.0.hook_resid_post")]
    for temperature in (0.0, 0.9):
        together = S.generate_runs(tiny, prompts, runs, 8, temperature=temperature, seed=2)
        alone = [S.generate(tiny, prompts, 8, vec, a, h, temperature=temperature, seed=2, kv_cache=False)
                 for vec, a, h in runs]
        assert together == alone
        assert len({tuple(t) for t in together}) == len(runs)  # each run was steered its own way
    with pytest.raises(DataError, match="shape"):
        S.generate_runs(tiny, prompts, [(np.ones(3), 1.0, "blocks.0.hook_resid_post")], 4)


def test_neutral_kl_from_the_stored_prefix_equals_the_plain_path(tiny):
    texts = ["a small dog that barks", "the theory of everything and more", "yes"]
    neutral = S.NeutralText(tiny, texts, max_tokens=8, batch_size=2)
    rng = np.random.default_rng(3)
    V = rng.normal(size=(2, 16)).astype(np.float32)
    for hook in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"):
        for alpha in (-2.0, 1.5):
            plain = []
            for v in V:
                with S.steering(tiny, v, alpha, hook, start=1):
                    plain.append(neutral.kl(tiny))
            assert neutral.kl_steered(tiny, V, alpha, hook) == pytest.approx(plain, rel=1e-4, abs=1e-6)
    assert neutral.kl_steered(tiny, np.zeros((1, 16)), 1.0, "blocks.0.hook_resid_post")[0] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("cap", [0.0, 5.0])
def test_chunked_log_normalizer_and_target_logits_equal_the_full_logits(tiny, cap):
    from geomsteer.steering.apply import log_normalizer, logits_of, unembed_rows

    old = tiny.cfg.output_logits_soft_cap
    tiny.cfg.output_logits_soft_cap = cap
    try:
        resid = torch.randn(5, 16) * 3
        full = unembed_rows(tiny, resid).double()
        p = torch.softmax(torch.randn(5, full.shape[1]), -1)
        lse, pz = log_normalizer(tiny, resid, p, chunk=1000)  # chunks that do not divide the vocabulary
        torch.testing.assert_close(lse, torch.logsumexp(full, -1), rtol=1e-6, atol=1e-5)
        assert pz == pytest.approx(float((p.double() * full).sum()), rel=1e-5)
        ids = torch.tensor([[3, 7], [100, 5], [9, 9], [0, 1], [42, 4]])
        got = logits_of(tiny, resid.reshape(1, 5, 16), ids)[0]
        torch.testing.assert_close(got.double(), full.gather(1, ids), rtol=1e-5, atol=1e-5)
    finally:
        tiny.cfg.output_logits_soft_cap = old
