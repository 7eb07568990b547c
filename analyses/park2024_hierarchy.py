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
# # Park et al. (2024): hierarchical concept directions, against nulls that keep the hierarchy
#
# Park, Choe, Jiang and Veitch (2024) estimate a direction ℓ_w for every WordNet category w in the
# model's unembedding, in the causal inner product (the unembedding whitened), and predict that
# ℓ_parent is orthogonal to ℓ_child − ℓ_parent and that siblings form a simplex. A 2025 critique
# showed that both also appear for random categories and random unembeddings. Here every statistic
# stands beside three nulls that keep the tree's nesting (shuffled tokens, nested random sets of the
# same words, a random Gaussian unembedding): a prediction *holds* only where the real model differs
# from all three.
#
# Change the parameters below and rerun: any model alias from `geomsteer models` (or, with a hub
# cache, a Hugging Face name such as `google/gemma-2b`).

# %% tags=["parameters"]
models = ["gemma-3-270m", "qwen2.5-0.5b"]
min_tokens = 50  # keep categories with more than this many single tokens
null_draws = 4  # draws of each null distribution
seed = 0

# %%
import geomsteer as gs

results = {m: gs.hierarchy(m, min_tokens=min_tokens, null_draws=null_draws, seed=seed) for m in models}

# %% [markdown]
# ## The statistics and their nulls
# Each table row: the observed value with its bootstrap interval, the most conservative null's
# mean ± sd over its draws, the effect size in null sds and the p-value.

# %%
for m, h in results.items():
    display(h)  # noqa: F821 (Jupyter's display)

# %% [markdown]
# ## The concept plane (Park et al.'s Figure 2 style)
# Tokens of animal categories in the plane of ℓ_animal and ℓ_mammal − ℓ_animal. Categories absent
# at this `min_tokens` are left out.

# %%
first = results[models[0]]
wanted = ["bird.n.01", "fish.n.01", "reptile.n.01", "plant.n.02"]
shown = [c for c in wanted if c in first.directions]
if "animal.n.01" in first.directions and "mammal.n.01" in first.directions:
    fig = first.plot_concept_plane("animal.n.01", "mammal.n.01", *shown)
else:  # a coarse tree: the first parent with a child
    parent = next(n for n in first.directions if list(first.hierarchy.graph.successors(n)))
    fig = first.plot_concept_plane(parent, next(iter(first.hierarchy.graph.successors(parent))))

# %% [markdown]
# ## A sibling simplex in 3-D
# Three siblings' vectors (the triangle) and their held-out tokens, in the span of the three vectors.

# %%
graph = first.hierarchy.graph
trio = next((kids for p in first.directions
             for kids in [[c for c in graph.successors(p) if c in first.directions]] if len(kids) >= 3), None)
if {"mammal.n.01", "bird.n.01", "fish.n.01"} <= set(first.directions):
    trio = ["mammal.n.01", "bird.n.01", "fish.n.01"]
print("siblings:", trio[:3])
fig = first.plot_simplex(*trio[:3])

# %% [markdown]
# ## Orthogonality against the nulls
# |cos(ℓ_parent, ℓ_child − ℓ_parent)| per edge and |cos(ℓ_parent, ℓ_child1 − ℓ_child0)| per sibling pair,
# on the model (filled) and under each null (lines).

# %%
for m, h in results.items():
    fig = h.plot_orthogonality()
    fig.suptitle(m)

# %% [markdown]
# ## Cosines in tree order, beside tree distance

# %%
for m, h in results.items():
    fig = h.plot_cosine()

# %% [markdown]
# ## What holds against the nulls
# Generated from the numbers above: "beyond every null" means p < 0.01 against the most
# conservative null; otherwise the line says which null the model cannot be told apart from.

# %%
for m, h in results.items():
    print(f"{m} ({len(h.directions)} categories):")
    for line in h.conclusions():
        print("  -", line)
