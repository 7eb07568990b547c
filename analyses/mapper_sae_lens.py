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
# # Mapper with an SAE's feature space as the lens; and do days and months form loops?
#
# Mapper (Singh, Mémoli, Carlsson 2007) covers a lens (here: the top principal components of the
# words' SAE codes) with overlapping cubes, clusters the activations inside each cube, and links
# clusters that share words. Its graph is compared with the graphs of Gaussian surrogates (same
# mean and covariance as the activations and the lens, nothing else) and its nodes' purity with
# shuffled concept labels.
#
# Engels et al. (2024, "Not all language model features are linear") report that the days of the
# week and the months of the year are represented on circles. The second half asks whether Mapper
# finds the loop on this model (first Betti number 1, against its null), and, with a simpler
# statistic, whether each day's nearest neighbour is the day before or after.

# %% tags=["parameters"]
model_name = "gemma-3-270m"
layer = 3  # the residual layer read (and the SAE's)
sae = None  # an SAE directory trained at blocks.{layer}.hook_resid_post; None trains one below
sae_tokens = 40_000  # the training budget (tokens) when sae is None
sae_width = 512
sae_k = 16
concepts = ["animal.n.01", "plant.n.02", "artifact.n.01"]
max_words = 1500
n_cubes = 8
n_null = 10  # Gaussian surrogates
out = None  # a directory to save every result in; None keeps them in memory
seed = 0

# %%
import tempfile
from pathlib import Path

import numpy as np

import geomsteer as gs
from geomsteer.metrics import cyclic_neighbours
from geomsteer.saes import encode

hook = f"blocks.{layer}.hook_resid_post"
model = gs.load_model(model_name)
saved = Path(out) if out else None


def keep(result, name):
    """Save a result under `out` (never over an earlier run: save refuses an existing directory)."""
    if saved:
        result.save(saved / name)
    return result


# %%
if sae is None:
    sae_dir = (saved or Path(tempfile.mkdtemp())) / "sae"
    trained = gs.sae.train(model, hook=hook, tokens=sae_tokens, d_sae=sae_width, k=sae_k, seed=seed, out=sae_dir,
                           eval_tokens=4096, ce_documents=16)
    display(trained)  # noqa: F821 (Jupyter's display)
    sae = sae_dir
sae_loaded = gs.sae.load(sae)
assert sae_loaded.hook == hook, f"the SAE is at {sae_loaded.hook}; set layer to match it"

# %% [markdown]
# ## Concept words: the Mapper graph against Gaussian surrogates
# Hover a node for its size, its concepts and example words; the colour menu shows one concept's share.

# %%
m = keep(gs.mapper(model, sae_loaded, concepts, max_words=max_words, n_cubes=n_cubes, n_null=n_null, seed=seed),
         "mapper")
m

# %%
m.graph()

# %%
fig = m.plot_lens()

# %% [markdown]
# ## Clusters of the same words (k-means on the SAE codes) against shuffled labels

# %%
c = keep(gs.cluster(model, sae_loaded, concepts, max_words=max_words, n_clusters=len(concepts) * 2, seed=seed),
         "clusters")
c

# %%
c.table().head(8)

# %% [markdown]
# ## Days and months in context
# Each name is read after 20 short templates ("Let's meet on Monday"); the row is the residual at
# the name's last token.

# %%
days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
day_templates = ["Let's meet on", "The shop is closed on", "I was born on a", "The deadline is next",
                 "It rained all day on", "We will travel on", "My favourite day is", "The meeting was moved to",
                 "See you on", "The party is on", "Every week, on", "The report is due on", "She called me last",
                 "The game starts on", "They arrived on", "Our flight leaves on", "The market opens on",
                 "He works late on", "Classes begin on", "The concert is this"]
month_templates = ["The festival is in", "I was born in", "The term ends in", "It snowed a lot in", "We moved here in",
                   "The deadline is in", "Sales peak in", "The trip is planned for", "She started the job in",
                   "The season opens in", "Prices rose in", "The report covers", "Every year in",
                   "The garden blooms in", "They married in", "The lease ends in", "Exams take place in",
                   "The budget is due in", "Birds migrate in", "The museum reopens in"]
cycles = {}
for name, words, templates in (("days", days, day_templates), ("months", months, month_templates)):
    X, labels, names = gs.words_in_context(model, words, hook, templates)
    cycles[name] = (words, X, labels, names, encode(sae_loaded.sae, X))
    print(f"{name}: {len(X)} rows of {X.shape[1]} dimensions")

# %% [markdown]
# ### Does Mapper find the loop?
# The lens is the top two principal components of the SAE codes. The first Betti number of the
# nerve (and the count of independent cycles of the graph) is compared with Gaussian surrogates.
# With few rows, a coarse cover (4 cubes per dimension) and a wider clustering radius than the
# default (2.5 x the median 10th-neighbour distance, so that neighbouring names can join).

# %%
loops = {}
for name, (words, X, labels, names, codes) in cycles.items():
    loops[name] = keep(gs.mapper_of(X, codes, labels, names, n_cubes=4, eps_scale=2.5, n_null=n_null, seed=seed,
                                    provenance={"model": model_name, "hook": hook, "sae": str(sae_loaded.path),
                                                "description": f"{len(words)} {name} after {len(X) // len(words)} "
                                                               "templates"}),
                       f"mapper_{name}")
    display(loops[name])  # noqa: F821

# %%
loops["days"].graph(height=560)

# %% [markdown]
# ### Are neighbours in the cycle nearest? (the centroid of each name, against shuffled cycles)
# The share of names whose nearest other centroid is the one before or after it in the cycle;
# the null keeps the centroids and shuffles which name sits where (chance: 2/(k-1)).

# %%
order = {}
for name, (words, X, labels, names, codes) in cycles.items():
    st = cyclic_neighbours(X, labels, words, seed=seed)
    order[name] = st
    null = st["null"]["shuffled_cycle"]
    print(f"{name}: {st['observed']:.2f} [{st['ci95'][0]:.2f}, {st['ci95'][1]:.2f}] of names have a cycle "
          f"neighbour nearest; shuffled cycles {null['mean']:.2f} ± {null['sd']:.2f} ({null['n_draws']} draws), "
          f"p {st['p_value']:.3g}")
    print("   nearest:", ", ".join(f"{a[:3]}→{b[:3]}" for a, b in st["nearest"].items()))

# %%
from geomsteer.reports.common import pyplot  # noqa: E402

plt = pyplot()
fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
for ax, (name, (words, X, labels, names, codes)) in zip(axes, cycles.items()):
    lab = np.asarray(labels)
    C = np.stack([X[lab == w].mean(0) for w in words])
    mu = C.mean(0)
    _, _, Vt = np.linalg.svd(C - mu, full_matrices=False)
    P, Pc = (X - mu) @ Vt[:2].T, (C - mu) @ Vt[:2].T
    for i, w in enumerate(words):
        ax.scatter(*P[lab == w].T, s=8, alpha=0.35, color=plt.cm.hsv(i / len(words)))
        ax.annotate(w[:3], Pc[i], fontsize=9, weight="bold")
    ax.plot(*np.vstack([Pc, Pc[:1]]).T, "k-", lw=0.8, alpha=0.6)
    ax.set(title=f"{name}: the centroids' top two principal components", xlabel="PC 1", ylabel="PC 2")
fig.tight_layout()

# %% [markdown]
# ## What holds
# Generated from the statistics above (p < 0.01 against every null).

# %%
for name, res in (("concept words, Mapper", m), ("concept words, k-means", c),
                  ("days, Mapper", loops["days"]), ("months, Mapper", loops["months"])):
    print(f"{name}:")
    for line in res.conclusions():
        print("  " + line)
for name, st in order.items():
    beyond = st["p_value"] is not None and st["p_value"] < 0.01
    print(f"{name}, nearest centroid is a cycle neighbour: {st['observed']:.2f} vs chance {st['chance']:.2f}: "
          + ("beyond the shuffled cycles" if beyond else "NOT distinguishable from shuffled cycles")
          + f" (p {st['p_value']:.3g})")
for name, res in loops.items():
    b1 = res.metrics["gudhi_nerve"]["betti"][1]
    print(f"{name}: Mapper's nerve has first Betti number {b1}"
          + (" (one loop)" if b1 == 1 else " (no single loop)"))
