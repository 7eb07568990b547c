"""SAE training through SAELens on a planted dictionary, saving/loading, metrics, and errors."""

import re

import numpy as np
import pytest

from geomsteer import saes
from geomsteer.errors import ConfigError, DataError


def planted_dictionary(seed=0, d_in=32, n_feat=64, n=60000, active=3):
    rng = np.random.default_rng(seed)
    D = rng.standard_normal((n_feat, d_in))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    codes = np.zeros((n, n_feat))
    rows = np.repeat(np.arange(n), active)
    cols = np.concatenate([rng.choice(n_feat, active, replace=False) for _ in range(n)])
    codes[rows, cols] = rng.uniform(1, 3, n * active)
    X = codes @ D + 0.01 * rng.standard_normal((n, d_in))
    return X.astype(np.float32), D


@pytest.fixture(scope="module")
def trained():
    X, D = planted_dictionary()
    # Twice as many latents as planted directions: an overcomplete TopK SAE finds each of them.
    sae = saes.train_sae(X[:50000], d_sae=128, k=3, total_tokens=300_000, batch_size=512, lr=3e-3, progress=False)
    return sae, X[50000:], D


def test_topk_sae_recovers_a_planted_dictionary(trained):
    sae, held_out, D = trained
    m = saes.sae_metrics(sae, held_out)
    assert m["l0"] == pytest.approx(3.0)
    assert m["fraction_variance_explained"] > 0.9
    assert (1 - m["dead_fraction"]) * 128 >= 0.9 * 64  # at least ~one live latent per planted direction
    W = sae.W_dec.detach().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    best = (D @ W.T).max(axis=1)
    assert (best > 0.9).mean() >= 0.9  # planted directions have a decoder row within ~25 degrees
    assert np.median(best) > 0.99


def test_saved_sae_loads_with_saelens_and_encodes_the_same(trained, tmp_path):
    from sae_lens import SAE

    sae, held_out, _ = trained
    path = saes.save_sae(sae, tmp_path / "sae", metrics={"l0": 3.0})
    loaded = SAE.load_from_disk(str(path), device="cpu")
    np.testing.assert_allclose(saes.encode(loaded, held_out[:200]), saes.encode(sae, held_out[:200]), atol=1e-4)
    assert (path / "geomsteer.json").is_file()
    with pytest.raises(FileExistsError):
        saes.save_sae(sae, path)


def test_sae_of_the_wrong_width_is_refused(trained, tmp_path):
    sae, _, _ = trained
    path = saes.save_sae(sae, tmp_path / "sae")
    with pytest.raises(DataError, match=re.escape(f"the SAE at {str(path)!r} reads vectors of size 32, but the "
                                                  "activations have size 640; use an SAE trained on this model and hook")):
        saes.load_sae(path, d_in=640)
    with pytest.raises(DataError, match=re.escape(f"{str(tmp_path)!r} is not an SAE directory: expected SAELens's "
                                                  "cfg.json in it")):
        saes.load_sae(tmp_path)


def test_training_input_errors():
    X = np.zeros((100, 8), dtype=np.float32)
    with pytest.raises(ConfigError, match=re.escape("training needs at least one batch: got 100 activations for a batch "
                                                    "size of 1024; extract more tokens or lower the batch size")):
        saes.train_sae(X)
    with pytest.raises(ConfigError, match=re.escape("unknown SAE architecture 'gated': expected one of topk, standard, "
                                                    "jumprelu")):
        saes.train_sae(X, architecture="gated", batch_size=10)
    X[0, 0] = np.nan
    with pytest.raises(DataError, match=re.escape("expected finite activations of shape (n, d_in), got an array of "
                                                  "shape (100, 8) with NaN or infinite values")):
        saes.train_sae(X, batch_size=10)


@pytest.mark.parametrize("architecture", ["standard", "jumprelu"])
def test_other_architectures_train(architecture):
    X, _ = planted_dictionary(n=8000)
    sae = saes.train_sae(X, d_sae=64, architecture=architecture, total_tokens=40_000, batch_size=500, lr=1e-3,
                         l1_coefficient=0.1, progress=False)
    m = saes.sae_metrics(sae, X[:2000])
    assert np.isfinite(m["fraction_variance_explained"]) and m["fraction_variance_explained"] > 0.3


class _FakeSAE:
    """encode/decode stand-ins: identity (a perfect SAE) or zero (as bad as ablation)."""

    def __init__(self, perfect):
        self.perfect = perfect

    def encode(self, x):
        return x if self.perfect else x * 0

    def decode(self, f):
        return f


def test_ce_loss_recovered_is_one_for_a_perfect_sae_and_zero_for_ablation():
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, n_ctx=16, d_vocab=50, act_fn="relu", seed=1)
    model = HookedTransformer(cfg).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (4, 12))
    mask = np.ones_like(ids, dtype=bool)
    mask[1, 8:] = False  # padding must not count
    batches = [(ids, mask)]
    perfect = saes.ce_loss_recovered(model, _FakeSAE(True), "blocks.0.hook_resid_post", batches)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-6)
    assert perfect["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    zero = saes.ce_loss_recovered(model, _FakeSAE(False), "blocks.0.hook_resid_post", batches)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert all(len(hp.fwd_hooks) == 0 for hp in model.hook_dict.values())
    with torch.no_grad():
        logits = model(torch.as_tensor(ids))
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.as_tensor(ids)[:, 1:, None])[..., 0]
    valid = torch.as_tensor(mask[:, 1:] & mask[:, :-1])
    assert perfect["ce_clean"] == pytest.approx(float(-logp[valid].mean()), rel=1e-5)
    assert perfect["delta_ce"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_loss_recovered_ci95"] == pytest.approx([0.0, 0.0], abs=1e-6)  # every resample gives the same 0
    st = saes.quality_statistics({**zero, "l0": 3.0, "n_tokens": 10})
    assert st["ce_loss_recovered"]["ci95"] == zero["ce_loss_recovered_ci95"] and st["l0"]["ci95"] is None
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero_ablation"], abs=1e-9)  # an SAE that outputs 0 is ablation
    assert np.isfinite(zero["ce_mean_ablation"]) and zero["ce_mean_ablation"] != zero["ce_zero_ablation"]


def test_ce_loss_recovered_leaves_the_start_token_unspliced():
    """With two-token rows the only prediction is made at the start token, so an SAE that destroys
    everything costs nothing when the start token is left alone, and a lot when it is not."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, n_ctx=16, d_vocab=50, act_fn="relu", seed=2)
    model = HookedTransformer(cfg).eval()
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 50, (6, 2))
    ids[:, 0] = 0  # the start token
    batches = [(ids, np.ones_like(ids, dtype=bool))]
    kept = saes.ce_loss_recovered(model, _FakeSAE(False), "blocks.0.hook_resid_post", batches, bos_id=0)
    assert kept["ce_sae"] == pytest.approx(kept["ce_clean"], abs=1e-6) and kept["ce_positions_spliced"] == 6
    spliced = saes.ce_loss_recovered(model, _FakeSAE(False), "blocks.0.hook_resid_post", batches, bos_id=99)
    assert abs(spliced["ce_sae"] - spliced["ce_clean"]) > 1e-3 and spliced["ce_positions_spliced"] == 12
    lo, hi = spliced["delta_ce_ci95"]
    assert lo <= spliced["delta_ce"] <= hi


def test_top_contexts_known_answer():
    # Two documents; the feature fires most on doc 1, position 3.
    doc = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    pos = np.array([1, 2, 3, 1, 2, 3, 4, 5])
    tok = np.arange(8) + 100
    acts = np.array([0, 0.5, 0, 0, 0.1, 2.0, 0.3, 0], dtype=np.float32)
    ctx = saes.top_contexts(acts, tok, doc, pos, n=5, window=1)
    assert [c["activation"] for c in ctx] == [2.0, 0.5, pytest.approx(0.3), pytest.approx(0.1)]  # zeros never listed
    assert ctx[0]["tokens"] == [(104, pytest.approx(0.1)), (105, 2.0), (106, pytest.approx(0.3))]
    assert ctx[0]["firing"] == 1 and ctx[0]["doc_index"] == 1 and ctx[0]["position"] == 3


def test_logit_lens_known_answer(trained):
    import copy

    import torch

    sae = copy.deepcopy(trained[0])  # the fixture is shared: edit a copy
    W_U = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
    with torch.no_grad():
        sae.W_dec[7] = torch.as_tensor(W_U[11] - W_U[23])
    lens = saes.logit_lens(sae, 7, W_U, k=3)
    assert lens["top"][0][0] == 11 and lens["bottom"][0][0] == 23
    with pytest.raises(ConfigError, match=re.escape("feature 128 does not exist: this SAE has features 0..127")):
        saes.logit_lens(sae, 128, W_U)


def test_pretrained_sae_offline_says_what_to_do(monkeypatch, tmp_path):
    from geomsteer.errors import ModelUnavailableError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelUnavailableError, match=re.escape(
            "pretrained SAE gemma-scope-2b-pt-res-canonical/layer_6/width_16k/canonical is not in the local cache and "
            "HF_HUB_OFFLINE is set; train one with 'geomsteer sae train' or load a local SAELens directory")):
        saes.load_pretrained("gemma-scope-2b-pt-res-canonical", "layer_6/width_16k/canonical")


def test_quiet_training_leaves_no_global_state_behind():
    import os

    from sae_lens.training import sae_trainer
    from tqdm.auto import tqdm

    env = dict(os.environ)
    X, _ = planted_dictionary(n=3000)
    saes.train_sae(X, d_sae=16, k=2, total_tokens=3000, batch_size=500, progress=False)
    assert dict(os.environ) == env
    assert sae_trainer.tqdm is tqdm
