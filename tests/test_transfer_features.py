"""Matched SAE features intervened on in two models (geomsteer.transfer.WordEffects) and the whole
transfer run (gs.transfer.run / geomsteer transfer) on toy models: a rotated copy of a model, whose
features are the original's in another basis, is found functionally equivalent; an unrelated model
is not."""

import json

import numpy as np
import pytest
import torch

from geomsteer.errors import ConfigError, DataError
from geomsteer.saes import SaeDir
from geomsteer.transfer import WordEffects, effect_similarity, feature_route

HOOK = "blocks.0.hook_resid_post"
DOWN = "blocks.1.hook_resid_post"
TEXTS = ["The cat sat on the mat and looked at the dog.", "A small house stood by the river, near old trees.",
         "She wrote a letter to her friend about the long summer.", "Rain fell on the quiet town all night long."]


def _embedding_model(d, seed, tokenizer="gemma-3-270m"):
    """Two blocks that write nothing, no positional embedding, no normalization: the residual at every
    position and layer is its token's embedding, and the logits are that embedding times the unembedding."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from geomsteer import models

    tok = models.load_tokenizer(tokenizer)
    cfg = HookedTransformerConfig(n_layers=2, d_model=d, d_head=4, n_heads=d // 4, n_ctx=64, d_vocab=len(tok),
                                  act_fn="relu", normalization_type=None, seed=seed,
                                  default_prepend_bos=tokenizer != "qwen2.5-0.5b")
    m = HookedTransformer(cfg)
    m.set_tokenizer(tok, default_padding_side="right")
    m.eval()
    with torch.no_grad():
        for b in m.blocks:
            for w in (b.attn.W_O, b.attn.b_O, b.mlp.W_out, b.mlp.b_out):
                w.zero_()
        m.W_pos.zero_()
        m.W_U.copy_(m.W_E.T)
        m.b_U.zero_()
    return m


def _sae(W, k=4, hook=HOOK):
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=W.shape[1], d_sae=W.shape[0], k=k)
    cfg.metadata.hook_name = hook
    s = TopKSAE(cfg)
    with torch.no_grad():
        s.W_dec.copy_(W)
        s.W_enc.copy_(W.T)
        s.b_enc.zero_()
        s.b_dec.zero_()
    return s


def _unit_rows(rng, n, d):
    W = torch.as_tensor(rng.normal(size=(n, d)), dtype=torch.float32)
    return W / W.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def pair():
    """A; B = A in another basis (E_B = E_A Q, W_U,B = Q^T W_U,A: the same logits); B's SAE holds A's
    features turned by Q, in another order; C, an unrelated model with random features of its own."""
    d_a, d_b, f = 24, 40, 32
    A, B, C = _embedding_model(d_a, 0), _embedding_model(d_b, 0), _embedding_model(d_b, 7)
    rng = np.random.default_rng(1)
    Q = torch.as_tensor(np.linalg.qr(rng.normal(size=(d_b, d_b)))[0][:d_a], dtype=torch.float32)
    with torch.no_grad():
        B.W_E.copy_(A.W_E @ Q)
        B.W_U.copy_(Q.T @ A.W_U)
    Wa = _unit_rows(rng, f, d_a)
    perm = rng.permutation(f)
    sae_a, sae_b, sae_c = _sae(Wa), _sae((Wa @ Q)[perm]), _sae(_unit_rows(rng, f, d_b))
    Wd = _unit_rows(rng, 24, d_a)  # features of a later layer, also turned by Q in B
    down = {"A": _sae(Wd, hook=DOWN), "B": _sae((Wd @ Q)[rng.permutation(24)], hook=DOWN),
            "C": _sae(_unit_rows(rng, 24, d_b), hook=DOWN)}
    return {"A": A, "B": B, "C": C, "Q": Q.numpy(), "sae_a": sae_a, "sae_b": sae_b, "sae_c": sae_c, "down": down,
            "partner": np.argsort(perm)}  # feature i of A is feature partner[i] of B


def test_a_word_log_probability_is_the_sum_of_its_segment_tokens(pair):
    A = pair["A"]
    we = WordEffects(A, pair["sae_a"], HOOK, TEXTS[:2], progress=False)
    tok = A.tokenizer
    text = TEXTS[0]
    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(A(torch.as_tensor([ids]))[0].double(), -1)
    words = np.flatnonzero((we.text_of_word == 0) & we.ok)
    assert len(words) >= 8  # most words of a plain sentence are measured
    for w in words:
        first, last = we.seg[w]
        want = sum(float(lp[p - 1, ids[p]]) for p in range(first, last + 1))
        assert we.base[w] == pytest.approx(want, abs=1e-4)
    # segments tile the text: each starts right after the previous word's end
    assert all(we.seg[w + 1, 0] == we.seg[w, 1] + 1 for w in words[:-1] if w + 1 in set(words))
    # two tokenizers number the same words alike
    q = _embedding_model(16, 0, "qwen2.5-0.5b")
    wq = WordEffects(q, _sae(_unit_rows(np.random.default_rng(0), 8, 16)), HOOK, TEXTS[:2], progress=False)
    assert wq.n_words == we.n_words and (wq.ok & we.ok).sum() >= 0.8 * we.ok.sum()


def test_an_intervention_that_changes_nothing_measures_zero(pair):
    we = WordEffects(pair["A"], pair["sae_a"], HOOK, TEXTS, progress=False)
    silent = int(np.flatnonzero(~we.fires.any(0))[0]) if (~we.fires.any(0)).any() else None
    feats = [0, 1]
    E = we.effects(feats, "add", alpha=0.0, scale=np.ones(32))
    assert np.nanmax(np.abs(E)) < 1e-6 and np.isnan(E[:, ~we.ok]).all()
    if silent is not None:  # a feature that never fires: its ablation runs no text and changes nothing
        assert np.nanmax(np.abs(we.effects([silent], "ablate"))) == 0.0
    E = we.effects(feats, "add", alpha=2.0, scale=np.ones(32))
    assert np.nanmax(np.abs(E)) > 1e-3
    with pytest.raises(ConfigError, match="unknown intervention 'scale': expected 'ablate' or 'add'"):
        we.effects(feats, "scale")
    with pytest.raises(DataError, match=r"feature 99 is not in this SAE \(it has 32 features, 0 to 31\)"):
        we.effects([99], "ablate")
    with pytest.raises(ConfigError, match="needs its typical activation"):
        we.effects(feats, "add")


def test_matched_features_of_a_rotated_copy_have_the_same_effects(pair):
    wa = WordEffects(pair["A"], pair["sae_a"], HOOK, TEXTS, progress=False)
    wb = WordEffects(pair["B"], pair["sae_b"], HOOK, TEXTS, progress=False)
    wc = WordEffects(pair["C"], pair["sae_c"], HOOK, TEXTS, progress=False)
    np.testing.assert_allclose(wa.base, wb.base, atol=1e-4)  # the same logits in another basis
    feats = np.arange(12)
    for mode in ("add", "ablate"):
        Ea = wa.effects(feats, mode, alpha=3.0, scale=np.ones(32))
        S, _ = effect_similarity(Ea, wb.effects(pair["partner"][feats], mode, alpha=3.0, scale=np.ones(32)))
        d = np.diagonal(S)
        assert np.nanmin(d) > 0.999
        assert np.nanmean(S[~np.eye(12, dtype=bool)]) < 0.3  # other features do other things
        # an unrelated model's features do not act like A's
        Sc, _ = effect_similarity(Ea, wc.effects(feats, mode, alpha=3.0, scale=np.ones(32)))
        assert abs(np.nanmean(np.diagonal(Sc))) < 0.3


def test_the_feature_route_carries_a_vector_through_the_matching_and_a_shuffled_matching_does_not(pair):
    rng = np.random.default_rng(3)
    Da = pair["sae_a"].W_dec.detach().numpy().astype(np.float64)
    Db = pair["sae_b"].W_dec.detach().numpy().astype(np.float64)
    coef = rng.normal(size=5)
    v = coef @ Da[:5]
    got = feature_route(v, Da, Db, np.arange(32), pair["partner"], k=8, n_null=10)
    want = v @ pair["Q"]
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert got["explained"] > 0.999 and got["kept_fraction"] == pytest.approx(1.0)
    assert cos(got["vector"], want) > 0.999
    assert max(abs(cos(u, want)) for u in got["null_vectors"]) < cos(got["vector"], want) - 0.2
    # an atom with no partner is dropped
    part = feature_route(v, Da, Db, np.arange(1, 32), pair["partner"][1:], k=8, n_null=2)
    assert part["kept_fraction"] < 1.0 and -1 in part["partners"].tolist()
    with pytest.raises(DataError, match="pair features one to one, got 3 features of A and 2 of B"):
        feature_route(v, Da, Db, np.arange(3), np.arange(2))


def _run(pair, b, sae_b, tmp_path, **kw):
    import geomsteer as gs

    return gs.transfer.run([pair["A"], pair[b]], sae=[SaeDir(None, pair["sae_a"], HOOK), SaeDir(None, sae_b, HOOK)],
                           downstream_sae=[SaeDir(None, pair["down"]["A"], DOWN), SaeDir(None, pair["down"][b], DOWN)],
                           downstream_pairs=12, texts=40, scan_texts=10, effect_texts=4, n_pairs=8, n_null=4, direction_draws=5,
                           n_permutations=100, **kw)


def test_a_rotated_copy_is_found_functionally_equivalent_end_to_end(pair, tmp_path, capsys):
    res = _run(pair, "B", pair["sae_b"], tmp_path)
    m = res.result.metrics
    assert m["maps"]["procrustes"]["heldout_r2"]["observed"] > 0.999
    assert m["maps"]["procrustes"]["heldout_r2"]["p_value"] < 0.01
    for name in ("linear_procrustes", "linear_ridge", "features"):
        assert m["transfer"][name]["observed"] == pytest.approx(1.0, abs=0.02)
    for mode in ("ablate", "add"):
        for key in ("effect_similarity", "downstream_similarity"):
            st = m["effects"][mode][key]
            assert st["observed"] > 0.99 and st["p_value"] < 0.01, (mode, key, st)
    assert m["downstream"]["pairs"] == 12 and m["downstream"]["min_correlation"] > 0.99
    assert set(m["effects"]["add"]["downstream_similarity"]["null"]) == {"re_paired", "shuffled_downstream_matching"}
    assert set(m["effects"]["ablate"]["effect_similarity"]["null"]) == {"re_paired", "shuffled_words",
                                                                         "random_direction_same_positions"}
    assert "correlation_predicts_effect" not in m["effects"]["ablate"]
    assert m["effects"]["add"]["correlation_predicts_effect"]["observed"] > 0.3
    kl = {r["vector"]: r for r in res.result.tables["vectors"]}  # the side effect of the vectors and the nulls
    assert kl["null: random"]["n_vectors"] == 4 and kl["null: features, shuffled matching"]["kl"] > 0
    assert kl["features"]["kl"] == pytest.approx(kl["own"]["kl"], rel=1e-3)  # the same vector, the same KL
    assert m["matching"]["top_mean_correlation"]["observed"] > 0.99 and m["matching"]["mean_correlation"]["p_value"] < 0.01
    for st in res.statistics().values():  # the shared shape
        assert {"observed", "ci95", "null", "effect_size", "p_value", "n"} <= set(st)
        for null in st["null"].values():
            assert {"mean", "sd", "n_draws"} <= set(null)
    out = res.save(tmp_path / "run")
    from geomsteer.cli.transfer import print_summary

    capsys.readouterr()
    print_summary(res, out)  # what 'geomsteer transfer' prints after writing the report
    printed = capsys.readouterr().out
    assert "ablate, matched-pair downstream similarity" in printed and "add, activation correlation predicts" in printed
    assert "ablate, activation correlation" not in printed and printed.endswith(f"Report: {out / 'report.md'}\n")
    doc = json.loads((out / "result.json").read_text())
    assert doc["geomsteer_result"] == "transfer" and doc["provenance"]["hooks"] == {"a": HOOK, "b": HOOK}
    assert {"transfer.png", "scan.png", "effects.png", "correlation_vs_effect.png"} <= {
        p.name for p in (out / "figures").iterdir()}
    assert (out / "arrays.npz").is_file() and "## Matched features" in (out / "report.md").read_text()


def test_an_unrelated_model_is_not_found_functionally_equivalent(pair, tmp_path):
    m = _run(pair, "C", pair["sae_c"], tmp_path).result.metrics
    assert m["maps"]["ridge"]["heldout_r2"]["observed"] < 0.1
    for mode in ("ablate", "add"):
        for key in ("effect_similarity", "downstream_similarity"):
            st = m["effects"][mode][key]
            assert st["p_value"] > 0.05, (mode, key, st)
    st = m["transfer"]["features"]
    assert st["p_value"] > 0.05


@pytest.mark.parametrize("args,message", [
    (["--models", "gemma-3-270m"], "a transfer needs exactly two models, A then B, got 1 (gemma-3-270m); pass "
                                   "--models A B, e.g. --models gemma-3-270m qwen2.5-0.5b"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--sae", "x"],
     "--sae needs one SAE directory per model (2: A's then B's), got 1"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--texts", "100", "--scan-texts", "200"],
     "--scan-texts (200) are the first of the --texts (100): give at most as many"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--alpha", "0"], "--alpha must be a finite non-zero number, got 0.0"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--null-draws", "1"], "--null-draws must be at least 2 draws"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--sae", "a", "b", "--layer-a", "3"],
     "--layer-a and --layer-b choose the layers without --sae"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--downstream-sae", "a", "b"], "--downstream-sae needs --sae"),
    (["--models", "gemma-3-270m", "qwen2.5-0.5b", "--sae", "nowhere-a", "nowhere-b"],
     "'nowhere-a' is not an SAE directory: expected SAELens's cfg.json in it"),
])
def test_transfer_bad_input_gets_one_line_and_writes_nothing(args, message, tmp_path, capsys):
    from geomsteer import cli

    out = tmp_path / "out"
    assert cli.main(["transfer", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geomsteer: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_transfer_layer_b_takes_a_number_or_best(capsys):
    from geomsteer import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["transfer", "--models", "a", "b", "--layer-b", "last", "--out", "x"])
    assert e.value.code == 2
    assert "expected a layer number (0 or more) or best, got 'last'" in capsys.readouterr().err
