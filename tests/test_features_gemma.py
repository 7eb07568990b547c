"""Feature interventions on Gemma 3 270M with the SAE that 'geomsteer sae train' wrote: exact identities, agreement
with SAELens's own error-term splice, and the attribution estimate against real ablations."""

import numpy as np
import pytest
import torch
from test_steering_analyzers import random_sae

from geomsteer.interventions import intervene
from geomsteer.saes import read_sae_dir

pytestmark = pytest.mark.real_model

HOOK = "blocks.6.hook_resid_post"
PROMPTS = ["The movie was absolutely wonderful and I", "A dog is a kind of"]


@pytest.fixture(scope="module")
def gemma(small_sae):
    from geomsteer import models

    m, _ = models.use_model("gemma-3-270m")
    sae = read_sae_dir(small_sae).sae
    ids = m.to_tokens(PROMPTS, padding_side="right")
    with torch.no_grad():
        clean, cache = m.run_with_cache(ids, names_filter=lambda n: n == HOOK)
        f = sae.encode(cache[HOOK])
    return m, sae, ids, clean, f


def _logits(m, ids):
    with torch.no_grad():
        return m(ids)


def test_interventions_that_change_nothing_leave_gemmas_logits(gemma):
    m, sae, ids, clean, f = gemma
    live = int(torch.nonzero(f[0, 3])[0, 0])
    dead = int(torch.nonzero(f[0].sum(0) == 0)[0, 0])  # zero at every position of the first prompt
    with intervene(m, sae, HOOK, [live], "scale", value=1.0):
        assert (_logits(m, ids) - clean).abs().max() <= 1e-4
    with intervene(m, sae, HOOK, [live], "clamp", value=float(f[0, 3, live]), positions=[3]):
        assert (_logits(m, ids)[0] - clean[0]).abs().max() <= 1e-4
    with intervene(m, sae, HOOK, [dead], "zero"):
        assert (_logits(m, ids)[0] - clean[0]).abs().max() <= 1e-4
    with intervene(m, sae, HOOK, [live], "zero", start=1):
        assert (_logits(m, ids) - clean).abs().max() > 1e-2  # and one that does change something, changes it
    with pytest.raises(RuntimeError, match="inside"):
        with intervene(m, sae, HOOK, [live], "zero"):
            raise RuntimeError("inside")
    assert (_logits(m, ids) - clean).abs().max() == 0


def test_ablation_agrees_with_saelens_error_term_splice(gemma):
    """SAELens's own machinery as the reference: the SAE spliced in with use_error_term reproduces the clean
    logits, and zeroing a feature on its hook_sae_acts_post gives the logits of our intervention."""
    m, sae, ids, clean, f = gemma
    live = int(torch.nonzero(f[1, 4])[0, 0])
    sae.use_error_term = True
    try:
        with torch.no_grad(), m.hooks(fwd_hooks=[(HOOK, lambda x, hook: sae(x))]):
            spliced = m(ids)
        assert (spliced - clean).abs().max() <= 1e-4

        def zero(acts, hook):
            acts[..., live] = 0.0
            return acts

        with torch.no_grad(), sae.hooks(fwd_hooks=[("hook_sae_acts_post", zero)]), \
                m.hooks(fwd_hooks=[(HOOK, lambda x, hook: sae(x))]):
            reference = m(ids)
    finally:
        sae.use_error_term = False
    with intervene(m, sae, HOOK, [live], "zero"):
        ours = _logits(m, ids)
    assert (reference - clean).abs().max() > 1e-2
    assert (ours - reference).abs().max() <= 1e-3


def test_attribution_tracks_real_ablations_on_gemma(gemma):
    from scipy.stats import spearmanr

    from geomsteer.steering.evaluate import EvalPrompt
    from geomsteer.steering.features import FeatureLab, measure_graph

    m, sae, *_ = gemma
    later = "blocks.9.hook_resid_post"
    items = [EvalPrompt("The film was", (" good",), (" bad",)), EvalPrompt("Overall, the meal was", (" great",), (" awful",))]
    lab = FeatureLab(m, {HOOK: sae, later: random_sae(640, 256, later, k=16, seed=3)}, HOOK, items,
                     ["A river is a large natural stream of water.", "The act of moving something."])
    up = [int(u) for u in np.argsort(-lab.frequency)[:6]]
    g = measure_graph(lab, up, n_null=2)
    W, A = g.real[later], g.attribution[later][: len(up)]
    sel = (W != 0) | (A != 0)
    assert np.abs(W).max() > 0 and spearmanr(W[sel], A[sel]).statistic > 0.4
