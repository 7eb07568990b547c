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
# # Do two language models represent words alike? Gemma 3 270M vs Qwen2.5 0.5B
#
# The same WordNet nouns (balanced over semantic groups) are read by both models; each word's
# residual at every scanned layer of one model is compared with the other's by debiased linear
# CKA, mutual k-NN overlap, cross-validated SVCCA, RSA and orthogonal Procrustes. Every score
# stands beside the same score with the words' pairing shuffled between the models; the best
# layer pair is tested against the maximum over the whole scan under shuffling (so that picking
# the best of many pairs is paid for). Then the two models' SAE features are matched by their
# activations on shared text, against shuffled texts.

# %% tags=["parameters"]
models = ["gemma-3-270m", "qwen2.5-0.5b"]
n_words = 800  # words read by both models
layers = "every:3"
n_permutations = 100  # shuffled pairings at the best pairs and in the groups
scan_permutations = 100  # shuffled pairings of the whole scan (max-statistic null)
random_baseline = False  # also compare re-randomized models (adds about 2 min per model on 2 cores)
saes = [None, None]  # one SAE directory per model; None trains one at sae_layers
sae_layers = [6, 12]
sae_tokens = 10_000  # the training budget of each SAE trained here
sae_eval_tokens = 2048  # held-out tokens its reconstruction is scored on
sae_width = 512
feature_texts = 200  # WordNet glosses the SAE features are compared on
out = None  # a directory to save every result in; None keeps them in memory
seed = 0

# %%
import tempfile
from pathlib import Path

import geomsteer as gs

saved = Path(out) if out else None
loaded = [gs.load_model(m) for m in models]

# %% [markdown]
# ## An SAE per model (trained here when none is given)

# %%
sae_dirs = []
for name, model, given, layer in zip(models, loaded, saes, sae_layers):
    if given is None:
        given = (saved or Path(tempfile.mkdtemp())) / f"sae-{name}"
        trained = gs.sae.train(model, hook=f"blocks.{layer}.hook_resid_post", tokens=sae_tokens, d_sae=sae_width,
                               k=16, seed=seed, out=given, eval_tokens=sae_eval_tokens, ce_documents=8)
        display(trained)  # noqa: F821 (Jupyter's display)
    sae_dirs.append(given)

# %%
s = gs.similarity(loaded, n_words=n_words, layers=layers, n_permutations=n_permutations,
                  scan_permutations=scan_permutations, random_baseline=random_baseline, sae=sae_dirs,
                  feature_texts=feature_texts, seed=seed)
if saved:
    s.save(saved / "similarity")
s

# %% [markdown]
# ## The layer × layer scan beside its null
# Debiased CKA for every pair of scanned layers, and the mean over shuffled pairings of the words.

# %%
fig = s.plot_scan()

# %% [markdown]
# ## The best layer pairs, with intervals and nulls
# Each metric at the best pair: its 95% interval (words resampled), the shuffled-pairing null, the
# effect size and p; `best_pair_max_statistic` tests the best pair against the best of every
# shuffled scan. Then the five best pairs by debiased CKA, each metric's score.

# %%
s.statistics_table()

# %%
best = s.table("best_pairs")
best[["layer_a", "layer_b"] + [c for c in best.columns if c.endswith(".score")]].head(5)

# %% [markdown]
# ## Semantic groups
# Within each WordNet group (animals, artifacts, foods, ...), the same comparison at the best pair.

# %%
s.table("groups").head(12)

# %% [markdown]
# ## Matched SAE features
# Each feature of one SAE is paired with the feature of the other whose activations on the same
# words of shared text correlate most (greedily, and one-to-one by the Hungarian method). The
# reference is the same matching after one shuffle of the words: a single draw, not a null
# distribution, so read it as a scale, not as a test. Then the matched pairs' decoder directions
# are compared (RSA and SVCCA) against the same features re-paired at random.

# %%
import pandas as pd

fm = s.matcher.result()
pd.DataFrame([{"matching": m, **fm.metrics[m]} for m in ("greedy", "hungarian")])

# %%
pd.DataFrame(fm.tables["top_pairs"][:10])

# %%
pd.json_normalize(fm.tables["decoder_similarity"])

# %% [markdown]
# ## What holds
# Generated from the statistics above (p < 0.01 against every null).

# %%
for line in s.conclusions():
    print(line)
