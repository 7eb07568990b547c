"""Interventions on SAE features and directions: exact identities, the hooks' removal, bad input."""

import numpy as np
import pytest
import torch
from conftest import tiny_model
from test_steering_analyzers import random_sae

from geomsteer.errors import ConfigError
from geomsteer.interventions import ablate_direction, intervene

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    m = tiny_model(n_layers=2, d_model=16, seed=5)
    sae = random_sae(16, 32, HOOK, k=4, seed=2)
    ids = m.to_tokens(["The film was good", "A bird in the hand"], padding_side="right")
    with torch.no_grad():
        clean, cache = m.run_with_cache(ids, names_filter=lambda n: n == HOOK)
    return m, sae, ids, clean, cache[HOOK]


def _logits(m, ids):
    with torch.no_grad():
        return m(ids)


def test_interventions_that_change_nothing_leave_the_logits_exactly(setup):
    m, sae, ids, clean, x = setup
    f = sae.encode(x).detach()
    live = int(torch.nonzero(f[0, 1])[0, 0])  # a feature that fires at position 1
    dead = int(torch.nonzero(f.reshape(-1, 32).sum(0) == 0)[0, 0])  # one that never fires on these prompts
    for feats, mode, value in (([live], "scale", 1.0), ([dead], "zero", None), ([dead], "scale", 5.0)):
        with intervene(m, sae, HOOK, feats, mode, value=value):
            assert (_logits(m, ids) - clean).abs().max() <= 1e-4, (feats, mode)
    own = float(f[0, 1, live])
    with intervene(m, sae, HOOK, [live], "clamp", value=own, positions=[1]):
        assert (_logits(m, ids)[0] - clean[0]).abs().max() <= 1e-4


def test_ablating_a_live_feature_changes_the_residual_by_its_decoded_contribution(setup):
    m, sae, ids, clean, x = setup
    f = sae.encode(x).detach()
    live = int(torch.nonzero(f[0, 1])[0, 0])
    with intervene(m, sae, HOOK, [live], "zero"):
        with torch.no_grad():
            _, cache = m.run_with_cache(ids, names_filter=lambda n: n == HOOK)
    changed = cache[HOOK] - x
    # with a TopK SAE another feature may enter the top k; at position 1 the removed contribution dominates
    expected = -f[0, 1, live] * sae.W_dec[live]
    assert torch.nn.functional.cosine_similarity(changed[0, 1], expected.detach(), dim=0) > 0.5
    assert (_logits(m, ids) - clean).abs().max() <= 1e-4  # the hook is gone after the block


def test_add_moves_every_position_along_the_decoder_direction(setup):
    m, sae, ids, clean, x = setup
    with intervene(m, sae, HOOK, [3], "add", value=2.0):
        with torch.no_grad():
            _, cache = m.run_with_cache(ids, names_filter=lambda n: n == HOOK)
    torch.testing.assert_close(cache[HOOK] - x, (2.0 * sae.W_dec[3]).detach().expand_as(x), atol=1e-5, rtol=0)


def test_hooks_are_removed_after_an_exception(setup):
    m, sae, ids, clean, x = setup
    with pytest.raises(RuntimeError, match="inside"):
        with intervene(m, sae, HOOK, [0], "zero"):
            raise RuntimeError("inside")
    assert (_logits(m, ids) - clean).abs().max() == 0
    assert not any(hp.fwd_hooks for hp in m.hook_dict.values())


def test_direction_ablation_removes_the_projection(setup):
    m, sae, ids, clean, x = setup
    d = np.random.default_rng(0).normal(size=16)
    with ablate_direction(m, d, [HOOK]):
        with torch.no_grad():
            _, cache = m.run_with_cache(ids, names_filter=lambda n: n == HOOK)
    u = torch.as_tensor(d / np.linalg.norm(d), dtype=torch.float32)
    assert (cache[HOOK] @ u).abs().max() < 1e-5 and (cache[HOOK] @ u).abs().max() < (x @ u).abs().max()


@pytest.mark.parametrize("kwargs, message", [
    (dict(features=[32], mode="zero"), "feature index 32 is outside the SAE: it has features 0..31"),
    (dict(features=[], mode="zero"), "no features given"),
    (dict(features=[0], mode="scale", value=float("nan")), "the scale intervention needs a finite value"),
    (dict(features=[0], mode="mean"), "mean-ablation needs each feature's mean activation"),
    (dict(features=[0], mode="swap"), "unknown intervention 'swap'"),
])
def test_bad_interventions_say_what_is_expected(setup, kwargs, message):
    m, sae, *_ = setup
    with pytest.raises(ConfigError, match=message):
        with intervene(m, sae, HOOK, **kwargs):
            pass


def test_interventions_reach_the_tokens_a_generation_adds(setup):
    """Generation inside the block is intervened on at every new token (cached generation runs each new token as
    a pass of its own), and an intervention that changes nothing generates exactly the clean text."""
    m, sae, ids, clean, x = setup
    prompt = ids[:1, :4]

    def gen():
        with torch.no_grad():
            return m.generate(prompt, max_new_tokens=6, do_sample=False, use_past_kv_cache=True, verbose=False)

    plain = gen()
    with intervene(m, sae, HOOK, [0, 1, 2], "scale", value=1.0):
        assert torch.equal(gen(), plain)
    seen = []
    with intervene(m, sae, HOOK, [3], "add", value=50.0):
        with m.hooks(fwd_hooks=[(HOOK, lambda a, hook: seen.append(a.shape[1]))]):
            steered = gen()
    assert not torch.equal(steered[:, 4:], plain[:, 4:])
    assert seen[0] == 4 and seen[1:] == [1] * (len(seen) - 1) and len(seen) == 6  # the prompt, then each new token
