# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A steering vector, what SAE features it is made of, and what it changes downstream
#
# A steering vector is the mean difference of the residual stream between contrastive prompts
# (here: positive vs negative sentiment). This notebook computes one, measures how strongly it
# steers against two nulls (vectors from the same pairs with shuffled labels, and random
# directions drawn from the activations' covariance, both at the vector's norm), decomposes it
# into the features of a sparse autoencoder, shows what those features read, and follows the
# steering to a later layer.
#
# Every number below comes with its null. A small SAE trained in the notebook explains less
# than a large pretrained one would; with a hub cache, pass `sae=` a directory written by
# `geomsteer sae train` or SAELens.

# %% tags=["parameters"]
model_name = "gemma-3-270m"
pairs = "sentiment"  # shipped contrastive pairs (sentiment, formality, animal_plant) or a JSONL path
layer = 6  # decompose the vector here
earlier_layer = 3  # steer here and follow the change to `layer`
sae = None  # an SAE directory trained at blocks.{layer}.hook_resid_post; None trains one below
sae_tokens = 40_000  # the training budget (tokens) when sae is None
sae_width = 512
sae_k = 16
alphas = (-4, -2, 0, 2, 4)
n_neutral = 8  # neutral texts for the KL cost of steering
n_null = 8  # draws of each null
decompose_k = 16  # SAE features in the sparse code of the vector
out = None  # a directory to save every result in; None keeps them in memory
seed = 0

# %%
import tempfile
from pathlib import Path

import geomsteer as gs

hook = f"blocks.{layer}.hook_resid_post"
model = gs.load_model(model_name)
saved = Path(out) if out else None


def keep(result, name):
    """Save a result under `out` (never over an earlier run: save refuses an existing directory)."""
    if saved:
        result.save(saved / name)
    return result


# %% [markdown]
# ## The vector
# Mean difference of the pairs' residuals at two layers, with the share of held-out pairs that
# fall on the vector's side and the norm a vector from randomly signed pairs would have.

# %%
vectors = keep(gs.steer.compute(model, pairs=pairs, layers=[earlier_layer, layer]), "vectors")
vectors.table()

# %% [markdown]
# ## Does it steer? The dose response against its nulls
# The shift of the log-odds of positive over negative target words on held-out prompts, for each
# multiplier; the band is the covariance directions' mean ± sd.

# %%
sweep = keep(gs.steer.sweep(model, vectors, hooks=[hook], alphas=alphas, n_neutral=n_neutral, n_samples=1,
                            max_new_tokens=12, n_null=n_null, seed=seed), "sweep")
sweep

# %%
figures = sweep.figures()  # dose response, KL on neutral text, the vector among its null draws

# %%
sweep.table("samples").head(6)

# %% [markdown]
# ## An SAE at the vector's layer
# Trained here when none is given (budget: `sae_tokens`); its held-out variance explained and
# cross-entropy recovered say how far to trust what follows.

# %%
if sae is None:
    sae_dir = (saved or Path(tempfile.mkdtemp())) / "sae"
    trained = gs.sae.train(model, hook=hook, tokens=sae_tokens, d_sae=sae_width, k=sae_k, seed=seed, out=sae_dir,
                           eval_tokens=4096, ce_documents=16)
    display(trained)  # noqa: F821 (Jupyter's display)
    sae = sae_dir
sae_loaded = gs.sae.load(sae)

# %% [markdown]
# ## The vector in the SAE's features
# Matching pursuit over the decoder directions (`k` atoms) and the difference of the SAE codes
# between the steered and unsteered prompts; each is compared with a covariance direction of the
# same norm. Then: does the reconstruction from those features still steer?

# %%
dec = keep(gs.steer.decompose(model, vectors, sae_loaded, hook=hook, k=decompose_k, n_null=n_null, seed=seed),
           "decomposition")
dec

# %%
figures = dec.figures()

# %% [markdown]
# ## What the top features read
# Each top feature's held-out contexts (the firing token in brackets) and the tokens its decoder
# direction promotes in the logit lens.

# %%
top = dec.table("features").head(8)
top[[c for c in ("feature", "weight", "code_difference", "logit_lens", "top_contexts") if c in top.columns]]

# %%
for f in top["feature"].head(2):
    display(gs.sae.inspect(sae_loaded, feature=int(f), n_contexts=5, model=model))  # noqa: F821

# %% [markdown]
# ## Downstream: steering at an earlier layer, SAE features changed at the later one
# The vector at `earlier_layer` is added with each multiplier; the SAE at `layer` counts the
# features whose mean code moves beyond the threshold, against the same counts for the nulls.

# %%
prop = keep(gs.steer.propagate(model, vectors, [sae_loaded], hook=f"blocks.{earlier_layer}.hook_resid_post",
                               alphas=[a for a in alphas if a > 0], n_null=n_null, seed=seed), "propagation")
prop

# %%
figures = prop.figures()

# %% [markdown]
# ## What holds
# Generated from the statistics above: a finding is stated only where it beats every null at p < 0.01.

# %%
for name, res in (("sweep", sweep), ("decomposition", dec), ("propagation", prop)):
    print(f"{name}:")
    for line in res.conclusions():
        print("  " + line)
