"""Cross-model similarity: word alignment, scans with baselines, feature matching, the report and its errors."""

import json
import re

import browser
import numpy as np
import pytest
import torch
from conftest import tiny_model

from geomsteer import activations as A
from geomsteer import cli, models
from geomsteer.hooks import parse_layers
from geomsteer.pipelines.similarity import balanced_sample
from geomsteer.analyzers.similarity import FeatureMatcher, SimilarityAnalyzer
from geomsteer.errors import ConfigError, DataError, NotFittedError
from geomsteer.stats import STAT_KEYS
from geomsteer.types import Activations


@pytest.fixture(scope="module")
def gemma_tiny():
    return tiny_model("gemma-3-270m", n_layers=3, d_model=16, seed=0)


@pytest.fixture(scope="module")
def qwen_tiny():
    return tiny_model("qwen2.5-0.5b", n_layers=2, d_model=24, seed=1)


WORDS = ["dog", "cat", "elephant", "photosynthesis", "tree", "antidisestablishmentarianism", "car", "hammer"]


# --------------------------------------------------------------------------------------------
# Word-level alignment


@pytest.mark.parametrize("rule", ["last", "mean"])
def test_unit_activations_match_a_plain_forward(gemma_tiny, rule):
    m = gemma_tiny
    hooks = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    acts, kept, n_tok = A.unit_activations(m, WORDS, hooks, rule=rule, prefix="A word:", max_tokens=3,
                                           batch_size=3, progress=False)
    tok = m.tokenizer
    head = A.bos_ids(m) + tok("A word:", add_special_tokens=False)["input_ids"]
    for i in np.flatnonzero(kept):
        ids = tok(" " + WORDS[i], add_special_tokens=False)["input_ids"]
        assert n_tok[i] == len(ids) <= 3
        _, cache = m.run_with_cache(torch.tensor([head + ids]), names_filter=hooks)
        row = int(np.flatnonzero(kept).tolist().index(i))
        for h in hooks:
            span = cache[h][0, len(head):].numpy()
            want = span[-1] if rule == "last" else span.mean(0)
            np.testing.assert_allclose(acts[h][row], want, rtol=1e-4, atol=1e-5)
    assert not kept[WORDS.index("antidisestablishmentarianism")]  # split into more than 3 tokens
    assert acts[hooks[0]].shape == (kept.sum(), 16)


def test_models_without_bos_start_their_rows_with_a_newline(qwen_tiny, gemma_tiny):
    nl = qwen_tiny.tokenizer("\n", add_special_tokens=False)["input_ids"][-1:]
    assert A.bos_ids(qwen_tiny) == nl and A.bos_ids(gemma_tiny) == [gemma_tiny.tokenizer.bos_token_id]
    acts, kept, _ = A.unit_activations(qwen_tiny, ["dog"], ["blocks.0.hook_resid_post"], progress=False)
    ids = nl + qwen_tiny.tokenizer(" dog", add_special_tokens=False)["input_ids"]
    _, cache = qwen_tiny.run_with_cache(torch.tensor([ids]), names_filter="blocks.0.hook_resid_post")
    np.testing.assert_allclose(acts["blocks.0.hook_resid_post"][0], cache["blocks.0.hook_resid_post"][0, -1].numpy(),
                               rtol=1e-4, atol=1e-5)
    out = next(A.iter_activations(qwen_tiny, ["A dog runs."], ["blocks.0.hook_resid_post"]))
    assert out["position"].min() == 1  # the start token is dropped, the text's first token kept


def test_unit_activations_errors(gemma_tiny):
    with pytest.raises(ConfigError, match="unknown position rule 'first': expected one of last, mean"):
        A.unit_activations(gemma_tiny, WORDS, ["blocks.0.hook_resid_post"], rule="first")


def test_words_in_text_align_across_tokenizers(gemma_tiny, qwen_tiny):
    texts = ["The elephant's trunk is long.", "Photosynthesis: plants make sugar from light!", "x"]
    n_words = sum(len(A.text_words(t)) for t in texts)
    assert A.text_words("The elephant's trunk") == [(0, 3), (4, 12), (13, 14), (15, 20)]
    out = {}
    for name, m in (("g", gemma_tiny), ("q", qwen_tiny)):
        acts, ok = A.word_activations_in_text(m, texts, ["blocks.1.hook_resid_post"], batch_size=2, progress=False)
        assert acts["blocks.1.hook_resid_post"].shape[0] == n_words
        out[name] = (acts["blocks.1.hook_resid_post"], ok)
        # the vector of "trunk" (word 3 of text 0) is the residual at the token holding its 'k'
        tok = m.tokenizer
        enc = tok(texts[0], add_special_tokens=False, return_offsets_mapping=True)
        t = next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if s <= 19 < e)
        head = A.bos_ids(m)
        _, cache = m.run_with_cache(torch.tensor([head + enc["input_ids"]]), names_filter="blocks.1.hook_resid_post")
        np.testing.assert_allclose(out[name][0][3], cache["blocks.1.hook_resid_post"][0, len(head) + t].numpy(),
                                   rtol=1e-4, atol=1e-5)
    assert out["g"][1].sum() >= n_words - 1 and out["q"][1].sum() >= n_words - 1


def test_rerandomize_shuffles_each_tensor_reproducibly():
    m1, m2 = tiny_model(n_layers=1, seed=0), tiny_model(n_layers=1, seed=0)
    models.load._KEPT[("kept-for-this-test",)] = m1  # a model kept for reuse is never handed out shuffled
    before = {k: v.clone() for k, v in m1.state_dict().items()}
    models.rerandomize(m1, seed=3)
    models.rerandomize(m2, seed=3)
    assert ("kept-for-this-test",) not in models.load._KEPT
    for name, p in m1.named_parameters():
        assert torch.equal(torch.sort(p.flatten()).values, torch.sort(before[name].flatten()).values)
        assert torch.equal(p, dict(m2.named_parameters())[name])
        if p.numel() > 10 and before[name].std() > 0:
            assert not torch.equal(p, before[name])


def test_rerandomize_draws_only_the_embedding_rows_read():
    from geomsteer.pipelines.similarity import read_rows

    m, full = tiny_model(n_layers=1, seed=0), tiny_model(n_layers=1, seed=0)
    V, d = m.W_E.shape
    with torch.no_grad():  # every entry of the embedding distinct, so a drawn value names its source
        m.W_E.copy_(torch.arange(V * d, dtype=torch.float32).reshape(V, d))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rows = read_rows(m.tokenizer, ["cat", "blue whale"], "")
    assert {m.tokenizer.bos_token_id, m.tokenizer.pad_token_id} <= set(rows.tolist())
    models.rerandomize(m, seed=3, embedding_rows=rows)
    E = m.W_E.detach()
    drawn = E[torch.as_tensor(rows)].flatten()
    assert torch.isfinite(drawn).all() and len(torch.unique(drawn)) == len(drawn)  # distinct entries...
    assert not torch.equal(drawn, before["embed.W_E"][torch.as_tensor(rows)].flatten())  # ...not the rows as they were
    others = np.setdiff1d(np.arange(V), rows)
    assert torch.isnan(E[torch.as_tensor(others)]).all() and torch.isnan(m.W_U).all()
    # taken from the whole matrix: a full shuffle puts entries from everywhere at these positions
    assert (drawn >= len(rows) * d * 50).float().mean() > 0.9
    # every other tensor is shuffled as without rows (same per-tensor generators)
    models.rerandomize(full, seed=3)
    for name, p in m.named_parameters():
        if name not in ("embed.W_E", "unembed.W_U", "unembed.b_U"):
            assert torch.equal(p, dict(full.named_parameters())[name]), name
    with pytest.raises(DataError, match=f"embedding_rows must lie in 0..{V - 1}"):
        models.rerandomize(tiny_model(n_layers=1), embedding_rows=[V])


def test_distinct_draws_are_uniform_ordered_samples():
    from geomsteer.models.load import distinct_draws

    rng = np.random.default_rng(0)
    counts = np.zeros((5, 5))
    for _ in range(10000):
        a, b = distinct_draws(rng, 5, 2)
        counts[a, b] += 1
    assert np.all(np.diag(counts) == 0)
    off = counts[~np.eye(5, dtype=bool)]  # 20 ordered pairs, 500 expected each
    assert ((off - 500) ** 2 / 500).sum() < 45  # chi-square, 19 degrees of freedom: p < 0.001 beyond 43.8
    assert sorted(distinct_draws(rng, 7, 7)) == list(range(7))


# --------------------------------------------------------------------------------------------
# The analyzer


def _acts(Xs, labels, model):
    return [Activations(X, labels, model, f"blocks.{i}.hook_resid_post") for i, X in enumerate(Xs)]


def _planted(n=300, seed=0):
    """Model B's layer 2 is a rotation of model A's layer 1 plus a little noise; the rest is unrelated."""
    rng = np.random.default_rng(seed)
    a = [rng.normal(size=(n, 8)) * np.linspace(1, 4, 8) for _ in range(3)]
    Q = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    b = [rng.normal(size=(n, 8)), rng.normal(size=(n, 8)), a[1] @ Q + 0.05 * rng.normal(size=(n, 8))]
    labels = [f"w{i}" for i in range(n)]
    groups = ["g1"] * (n // 2) + ["g2"] * (n - n // 2)
    return _acts(a, labels, "A"), _acts(b, labels, "B"), _acts([rng.normal(size=(n, 8)) for _ in range(3)],
                                                                labels, "B (random)"), groups


def test_analyzer_finds_the_planted_layer_pair_above_its_baselines():
    a, b, rb, groups = _planted()
    an = SimilarityAnalyzer(k=5, n_permutations=10, top_pairs=2, min_group=100).fit(a, b, random_b=rb, groups=groups)
    best = an.best_pairs_[0]
    assert (best["layer_a"], best["layer_b"]) == ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
    c = best["linear_cka_debiased"]
    assert c["score"] > 0.95 and abs(c["permutation"]["mean"]) < 0.05 and abs(c["random_model"]) < 0.1
    assert c["permutation"]["p_monte_carlo"] == pytest.approx(1 / 11) and c["permutation"]["p_value"] < 1e-3
    assert set(STAT_KEYS) <= set(c["statistic"]) and c["statistic"]["null"]["shuffled_pairing"]["n_draws"] == 10
    mx = an.scan_max_statistic_
    assert (mx["layer_a"], mx["layer_b"]) == ("blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
    assert mx["p_value"] < 0.01 and mx["null"]["max_over_pairs_shuffled"]["n_draws"] == 200
    assert best["procrustes"]["score"] < best["procrustes"]["permutation"]["mean"]
    assert best["mutual_knn"]["score"] > 0.5 > best["mutual_knn"]["permutation"]["mean"]
    scan = an.scans_["cross"]["linear_cka_debiased"]
    assert scan["score"].shape == (3, 3) and np.argmax(scan["score"]) == 1 * 3 + 2
    assert np.abs(scan["permutation"]).max() < 0.1
    assert np.allclose(np.diag(an.scans_["within_a"]["linear_cka_debiased"]["score"]), 1.0)
    assert [g["group"] for g in an.groups_] == ["g1", "g2"] and all(g["n"] == 150 for g in an.groups_)
    assert all(g["linear_cka_debiased"]["score"] > 0.9 for g in an.groups_)
    assert all(g["linear_cka_debiased"]["statistic"]["p_value_bh"] < 0.01 for g in an.groups_)
    res = an.result()
    for name, st in res.metrics.items():
        assert set(STAT_KEYS) <= set(st), name
    res = an.result()
    assert res.tables["best_layer_per_layer_a"][1]["best_layer_b"] == "blocks.2.hook_resid_post"
    json.dumps(res.to_dict())


def test_analyzer_results_do_not_depend_on_the_number_of_threads():
    """The pieces run side by side on threads; every draw is taken in a fixed order before they run,
    so one thread and three give the same numbers, bit for bit (BLAS on one thread in both)."""
    from threadpoolctl import threadpool_limits

    a, b, rb, groups = _planted()
    kw = dict(k=5, n_permutations=10, top_pairs=2, min_group=100, seed=4)
    with threadpool_limits(1):
        one, three = (SimilarityAnalyzer(**kw, n_jobs=j).fit(a, b, random_b=rb, groups=groups).result().to_dict()
                      for j in (1, 3))
    one["params"].pop("n_jobs"), three["params"].pop("n_jobs")
    assert json.dumps(one, sort_keys=True) == json.dumps(three, sort_keys=True)
    assert one["tables"]["groups"] and one["tables"]["best_pairs"][1]["rsa"]["permutation"]["n"] == 10


def test_scan_max_null_in_chunks_equals_one_run():
    from geomsteer import metrics as M
    from geomsteer._threads import thread_map

    rng = np.random.default_rng(5)
    A, B = [rng.normal(size=(40, 5)) for _ in range(2)], [rng.normal(size=(40, 7)) for _ in range(3)]
    perms = [rng.permutation(40) for _ in range(7)]
    obs, maxima = M.cka_scan_max_null(A, B, perms)
    with thread_map(2) as tmap:
        obs2, maxima2 = M.cka_scan_max_null(A, B, perms, map=tmap, chunks=3)
    assert np.array_equal(obs, obs2) and np.array_equal(maxima, maxima2) and len(maxima) == 7


def test_analyzer_input_errors():
    a, b, _, _ = _planted(n=40)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        SimilarityAnalyzer().result()
    other = _acts([x.X[::-1] for x in b], [f"w{i}" for i in range(39, -1, -1)], "B")
    with pytest.raises(DataError, match="describes other samples than a"):
        SimilarityAnalyzer(k=3).fit(a, other)
    with pytest.raises(DataError, match="1 <= k < n"):
        SimilarityAnalyzer(k=40).fit(a, b)
    with pytest.raises(DataError, match="groups must give one label per sample"):
        SimilarityAnalyzer(k=3).fit(a, b, groups=["x"])


def test_matching_unrelated_features_finds_no_more_than_matching_shuffled_samples():
    rng = np.random.default_rng(6)
    n, f = 1500, 40
    codes_a = np.maximum(rng.normal(size=(n, f)) - 1, 0)
    codes_b = np.maximum(rng.normal(size=(n, f)) - 1, 0)  # another model's features, unrelated to A's
    fm = FeatureMatcher(n_random=50, n_random_svcca=5).fit(codes_a, codes_b, rng.normal(size=(f, 8)),
                                                            rng.normal(size=(f, 8)))
    for method in ("greedy", "hungarian"):
        st = fm.matching_[method]["mean_correlation_vs_shuffled_samples"]
        assert st["p_value"] > 0.05 and abs(st["effect_size"]) < 3, (method, st)


def test_feature_matcher_recovers_planted_features_and_beats_random_pairing():
    rng = np.random.default_rng(5)
    n, f, d1, d2 = 3000, 60, 20, 24
    codes_a = np.maximum(rng.normal(size=(n, f)) - 1, 0)
    perm = rng.permutation(f)
    codes_b = codes_a[:, perm] * 1.5 + 0.01 * np.abs(rng.normal(size=(n, f)))
    codes_b[:, 0] = 0.0  # one dead feature
    dec_a = rng.normal(size=(f, d1))
    dec_b = dec_a[perm] @ rng.normal(size=(d1, d2))  # the same directions, seen through another basis
    fm = FeatureMatcher(threshold=0.5, n_random=200, n_random_svcca=10).fit(codes_a, codes_b, dec_a, dec_b)
    h = fm.matching_["hungarian"]
    assert fm.alive_ == (f, f - 1) and h["n_pairs"] == f - 1
    assert h["mean_correlation"] > 0.95 > 0.2 > h["shuffled_samples_mean_correlation"]
    st = h["mean_correlation_vs_shuffled_samples"]  # a distribution of chance matchings, not one draw
    assert st["null"]["shuffled_samples"]["n_draws"] == 20 and st["p_value"] < 1e-3 and st["effect_size"] > 10
    top = fm.top_pairs_[0]
    assert perm[top["feature_b"]] == top["feature_a"]
    row = fm.decoder_similarity_[0]
    # cross-validated SVCCA on 59 pairs (29 to fit): an exact linear map scores about 0.96
    assert row["svcca"]["score"] > 0.9 and row["svcca"]["score"] > row["svcca"]["random_pairing"]["mean"] + 0.5
    assert row["rsa"]["score"] > row["rsa"]["random_pairing"]["mean"] + 0.3
    assert row["rsa"]["statistic"]["null"]["re_paired_matches"]["n_draws"] == 200
    assert row["rsa"]["statistic"]["p_value"] < 0.01 and row["svcca"]["statistic"]["p_value"] < 1e-3
    # the plain RSA formula under one re-pairing agrees with the fast null
    from geomsteer import metrics as M

    p = np.random.default_rng(0).permutation(f - 1)
    obs, null = M.rsa_permutations(dec_a[:f - 1], dec_b[:f - 1], [p])
    assert obs == pytest.approx(M.rsa(dec_a[:f - 1], dec_b[:f - 1]), abs=1e-9)
    assert null[0] == pytest.approx(M.rsa(dec_a[:f - 1], dec_b[:f - 1][p]), abs=1e-9)
    with pytest.raises(DataError, match="decoders must have one row per feature"):
        FeatureMatcher().fit(codes_a, codes_b, dec_a[:5], dec_b)


# --------------------------------------------------------------------------------------------
# The job, the report and the command line (tiny models standing in for the real ones)


@pytest.fixture()
def tiny_models(monkeypatch, gemma_tiny, qwen_tiny):
    fresh = {"gemma-3-270m": lambda: tiny_model("gemma-3-270m", 3, 16, 0),
             "qwen2.5-0.5b": lambda: tiny_model("qwen2.5-0.5b", 2, 24, 1)}
    monkeypatch.setattr(models, "load_model", lambda r, **kw: fresh[r.name]())


def test_parse_layers():
    assert parse_layers("all", 3, "m") == [0, 1, 2]
    assert parse_layers("every:4", 10, "m") == [0, 4, 8, 9]
    assert parse_layers("6, 0", 18, "m") == [0, 6]
    with pytest.raises(ConfigError, match=re.escape("--layers '0,20': m has layers 0..17; got [20]")):
        parse_layers("0,20", 18, "m")
    with pytest.raises(ConfigError, match="expected every:K with K a positive integer"):
        parse_layers("every:0", 18, "m")


def test_balanced_sample_caps_large_groups():
    wg = {f"a{i}": "A" for i in range(100)} | {f"b{i}": "B" for i in range(10)} | {f"c{i}": "C" for i in range(50)}
    words = balanced_sample(wg, 70, seed=0)
    counts = {g: sum(wg[w] == g for w in words) for g in "ABC"}
    assert counts == {"A": 30, "B": 10, "C": 30}
    assert words == balanced_sample(wg, 70, seed=0)


def test_similarity_command_writes_a_complete_report(tiny_models, tmp_path, capsys):
    out = tmp_path / "sim"
    code = cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--words", "300",
                     "--permutations", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "words aligned" in stdout and "best-aligned layer pairs" in stdout
    doc = json.loads((out / "result.json").read_text())
    w = doc["provenance"]["words"]
    assert w["used"] == len(w["list"]) == len(w["group_of_word"]) and w["used"] + w["dropped_from_both"] == w["asked"]
    assert doc["provenance"]["layers"]["gemma-3-270m"] == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert len(doc["scans"]["cross"]["linear_cka_debiased"]["score"]) == 3
    assert len(doc["scans"]["cross"]["linear_cka_debiased"]["random_model"][0]) == 2
    assert "numpy" in doc["provenance"]["packages"] and doc["provenance"]["command"][0] == "geomsteer"
    html = (out / "report.html").read_text()
    assert "<title>" in html and "<svg" in html and not re.search(r"(src|href)=[\"']https?:", html)
    assert re.search(r"<title>gemma-3-270m blocks\.0\.hook_resid_post × qwen2\.5-0\.5b blocks\.1\.hook_resid_post: "
                     r"-?\d\.\d{4}</title>", html)
    v = browser.visit(out / "report.html", tmp_path / "shots", hover="svg.heat rect")  # headless Chromium
    assert not v.console_errors and not v.requests and v.screenshot.stat().st_size > 10_000
    # the first heatmap's first cell: its layers and value
    assert re.fullmatch(r"\S+ blocks\.\d\.hook_resid_post × \S+ blocks\.\d\.hook_resid_post: -?\d\.\d{4}", v.tooltip), v.tooltip
    md = (out / "report.md").read_text()
    for fig in ("cross_linear_cka_debiased.png", "cross_mutual_knn.png", "within_a_linear_cka_debiased.png"):
        assert (out / "figures" / fig).stat().st_size > 1000 and f"figures/{fig}" in md
    # nothing is overwritten without --force
    assert cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--models", "gemma-3-270m"],
     "a cross-model run needs exactly two models, got 1 (gemma-3-270m); pass --models A B, e.g. --models "
     "gemma-3-270m qwen2.5-0.5b"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--words", "20"],
     "--words 20 is too few for k = 10 neighbours: ask for at least 40"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--sae", "x"],
     "--sae needs one SAE directory per model (2), got 1"),
    (["--models", "gemma-3-270m", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_similarity_command_errors(argv, message, tmp_path, capsys):
    assert cli.main(["similarity", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomsteer: error: " + message) and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_similarity_layers_outside_a_model(tiny_models, tmp_path, capsys):
    assert cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--layers", "0,2",
                     "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == ("geomsteer: error: --layers '0,2': qwen2.5-0.5b has layers 0..1; got [2]\n")
    assert not (tmp_path / "o").exists()


def _tiny_sae(path, d_in, hook, seed):
    from geomsteer import saes

    X = np.random.default_rng(seed).normal(size=(2048, d_in)).astype(np.float32)
    sae = saes.train_sae(X, d_sae=32, k=4, batch_size=512, hook_name=hook, progress=False, seed=seed)
    saes.save_sae(sae, path, extra={"hook": hook, "model": "tiny"})
    return path


def test_similarity_with_sae_feature_matching(tiny_models, tmp_path, capsys):
    sa = _tiny_sae(tmp_path / "sa", 16, "blocks.1.hook_resid_post", 0)
    sb = _tiny_sae(tmp_path / "sb", 24, "blocks.0.hook_resid_post", 1)
    out = tmp_path / "sim"
    code = cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--words", "120", "--layers", "0,1",
                     "--permutations", "2", "--no-random-model", "--sae", str(sa), str(sb), "--texts", "40",
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "SAE features: Hungarian mean correlation" in capsys.readouterr().out
    fm = json.loads((out / "result.json").read_text())["feature_matching"]
    p = fm["provenance"]
    assert p["hooks"] == ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"] and p["texts"] == 40
    assert p["words_aligned"] + p["words_dropped"] == p["words_in_text"] and p["words_aligned"] > 200
    assert fm["hungarian"]["n_pairs"] == min(fm["live_features"]) and fm["hungarian"]["distinct_b"] == fm["hungarian"]["n_pairs"]
    assert {r["pairs"] for r in fm["decoder_similarity"]} == {"all one-to-one pairs", "pairs with correlation >= 0.5"}
    assert "SAE feature matching" in (out / "report.md").read_text()
    assert (out / "figures" / "feature_matching.png").is_file()
    # SAEs given in the wrong order do not fit the models
    assert cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--words", "120", "--layers", "0,1",
                     "--sae", str(sb), str(sa), "--out", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err == (f"geomsteer: error: the SAE at {str(sb)!r} reads vectors of size 24, but "
                                       "gemma-3-270m has d_model 16; give the SAEs in the order of --models\n")
    assert cli.main(["similarity", "--models", "gemma-3-270m", "qwen2.5-0.5b", "--sae", str(tmp_path), str(sb),
                     "--out", str(tmp_path / "o3")]) == 2
    assert "is not an SAE directory: expected SAELens's cfg.json in it" in capsys.readouterr().err



def test_best_pair_p_value_of_a_scan_is_calibrated_on_independent_data():
    """Choosing the best of 9 layer pairs and testing it against a per-pair null would reject far
    too often; against the max-statistic null it rejects about 5% of the time at p < 0.05."""
    from geomsteer import metrics as M
    from geomsteer.stats import null_summary

    rejections = 0
    for run in range(200):
        rng = np.random.default_rng(run)
        A = [rng.normal(size=(60, 6)) for _ in range(3)]
        B = [rng.normal(size=(60, 6)) for _ in range(3)]
        perms = [rng.permutation(60) for _ in range(99)]
        obs, maxima = M.cka_scan_max_null(A, B, perms)
        rejections += null_summary(float(np.nanmax(obs)), maxima, "greater")["p_value"] < 0.05
    assert 0.01 <= rejections / 200 <= 0.10, rejections


def test_fast_cka_permutations_agree_with_the_plain_formula():
    from geomsteer import metrics as M

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 10))
    Y = X @ rng.normal(size=(10, 12)) + rng.normal(size=(120, 12))
    perms = [rng.permutation(120) for _ in range(3)]
    r = M.linear_cka_permutations(X, Y, perms)
    assert r["linear_cka"] == pytest.approx(M.linear_cka(X, Y), abs=1e-6)
    assert r["linear_cka_debiased"] == pytest.approx(M.linear_cka(X, Y, debiased=True), abs=1e-6)
    for p, b, u in zip(perms, r["linear_cka_null"], r["linear_cka_debiased_null"]):
        assert b == pytest.approx(M.linear_cka(X, Y[p]), abs=1e-6)
        assert u == pytest.approx(M.linear_cka(X, Y[p], debiased=True), abs=1e-6)
    Bs = [Y, rng.normal(size=(120, 4))]
    for As in ([X, X[:, :5]], [X]):  # the second gathers model A's side, which has fewer layers
        obs, maxima = M.cka_scan_max_null(As, Bs, perms)
        assert obs[0, 0] == pytest.approx(M.linear_cka(X, Y, debiased=True), abs=1e-6)
        for p, mx in zip(perms, maxima):
            assert mx == pytest.approx(max(M.linear_cka(a, b[p], debiased=True) for a in As for b in Bs), abs=1e-6)

