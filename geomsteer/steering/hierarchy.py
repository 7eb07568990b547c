"""Steering along the WordNet hierarchy: concept vectors for a parent and a child category at one layer, and
the next-token mass they move onto the child, the rest of the parent and everything else (arrays only; the
statistics are :class:`geomsteer.analyzers.steer_hierarchy.HierarchySteering`'s).

Vectors, each of unit norm, at a hook:

- ``lda_parent`` and ``lda_child_minus_parent``: Park et al.'s LDA vectors of the two categories estimated on
  the words' activations whitened by the activations' covariance (as ``geomsteer hierarchy --layers`` does),
  mapped back into the residual stream (a step of ``Cov^(1/2) l``);
- ``caa_parent`` (the parent's words minus words outside the tree) and ``caa_child_minus_parent`` (the
  child's words minus the parent's other words): contrastive mean differences, as CAA builds from pairs;
- at the last layer, ``unembed_parent`` and ``unembed_child_minus_parent``: the LDA vectors in the whitened
  unembedding (the causal inner product) mapped into the residual stream: with ``g(y) = W (gamma(y) - mean)``
  a residual step ``W l`` raises every token's logit by ``l . g(y)``.

Nulls: the same constructions on nested random sets (a random set of the parent's size from the tree's words
and a random subset of it of the child's size: nesting and sizes kept, meaning gone), and directions drawn
from the activations' own covariance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..analyzers.lda import Whitening, fit_whitening, lda_direction

__all__ = ["PROMPTS", "VECTOR_TYPES", "ConceptRows", "concept_vectors", "nested_random_rows", "MassProbe"]

#: Prompts whose next token is a noun; ``{parent}`` becomes the parent category's first lemma.
PROMPTS = (
    "My favourite {parent} is the",
    "The {parent} I remember best is the",
    "In the book there was a picture of a",
    "Out in the field I saw a",
    "She pointed at the",
    "He told me a story about a",
    "The children were looking at the",
    "Next to the house there was a",
)

VECTOR_TYPES = ("lda_parent", "lda_child_minus_parent", "caa_parent", "caa_child_minus_parent")
UNEMBED_TYPES = ("unembed_parent", "unembed_child_minus_parent")


@dataclass(frozen=True)
class ConceptRows:
    """Row indices (into the activations read) of a parent category, its child, and the baseline words
    (outside the tree) that contrastive vectors subtract."""

    parent: np.ndarray
    child: np.ndarray
    baseline: np.ndarray


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n if n > 0 and np.isfinite(n) else np.zeros_like(v)).astype(np.float32)


def concept_vectors(X: np.ndarray, rows: ConceptRows, wh: Whitening | None = None,
                    half: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The four activation-space vectors (unit norm) of a parent and child category; see the module.

    ``wh`` (the rows' whitening) and ``half`` (its ``inverse()``) can be given to reuse them across calls."""
    X = np.asarray(X)
    if wh is None:
        wh = fit_whitening(X)
    if half is None:
        half = wh.inverse()
    siblings = np.setdiff1d(rows.parent, rows.child)
    lp = lda_direction(wh(X[rows.parent]))
    lc = lda_direction(wh(X[rows.child]))
    m_parent, m_child = X[rows.parent].mean(0, dtype=np.float64), X[rows.child].mean(0, dtype=np.float64)
    m_others = X[rows.baseline].mean(0, dtype=np.float64)
    m_sib = X[siblings].mean(0, dtype=np.float64) if len(siblings) else m_parent
    return {"lda_parent": _unit(lp @ half), "lda_child_minus_parent": _unit((lc - lp) @ half),
            "caa_parent": _unit(m_parent - m_others), "caa_child_minus_parent": _unit(m_child - m_sib)}


def unembedding_vectors(W_U: np.ndarray, parent_ids: np.ndarray, child_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Park et al.'s parent and child-minus-parent LDA vectors in the whitened unembedding, as residual steps.

    ``W_U`` is the model's (d, vocab) unembedding as it multiplies the final normalized residual."""
    gamma = np.asarray(W_U).T
    wh = fit_whitening(gamma)
    lp = lda_direction(wh(gamma[parent_ids]))
    lc = lda_direction(wh(gamma[child_ids]))
    return {"unembed_parent": _unit(wh.W @ lp), "unembed_child_minus_parent": _unit(wh.W @ (lc - lp))}


def nested_random_rows(tree_rows: np.ndarray, rows: ConceptRows, rng: np.random.Generator) -> ConceptRows:
    """A random set of the parent's size from the tree's rows and a random subset of it of the child's size."""
    parent = np.sort(rng.choice(tree_rows, size=len(rows.parent), replace=False))
    child = np.sort(rng.choice(parent, size=len(rows.child), replace=False))
    return ConceptRows(parent, child, rows.baseline)


class MassProbe:
    """Next-token log-mass of a child category, the parent's other words and everything outside the parent, on
    prompts, under many steering vectors at one hook (many vectors to a forward pass on a HookedTransformer).

    ``probe(V, norm)`` returns (m, n_prompts, 3): log p(child), log p(parent minus child), log p(outside)."""

    def __init__(self, model: Any, prompts: Sequence[str], hook: str, child_ids: Sequence[int],
                 sibling_ids: Sequence[int]):
        from .evaluate import EvalPrompt, SteeredTargets

        items = [EvalPrompt(p, ("x",), ("y",)) for p in prompts]
        ids = [(sorted(map(int, child_ids)), sorted(map(int, sibling_ids)))] * len(items)
        self.targets = SteeredTargets(model, items, hook, ids=ids)
        self.X = self.targets.X

    def __call__(self, V: np.ndarray, norm: float) -> np.ndarray:
        r = self.targets(np.atleast_2d(V), float(norm))
        lc, ls = r[..., 1], r[..., 2]
        lpar = np.logaddexp(lc, ls)
        outside = np.log(np.clip(-np.expm1(lpar), 1e-300, None))
        return np.stack([lc, ls, outside], -1)


def measure_grid(probe: MassProbe, vectors: Mapping[str, np.ndarray], norms: Sequence[float]) -> dict[str, np.ndarray]:
    """Each named vector's masses at each norm: {name: (n_norms, n_prompts, 3)}; ``"clean"``: (n_prompts, 3)."""
    names = list(vectors)
    V = np.stack([vectors[n] for n in names]) if names else np.zeros((0, 0))
    out = {n: np.empty((len(norms), len(probe.targets.rows), 3)) for n in names}
    for j, s in enumerate(norms):
        r = probe(V, s)
        for i, n in enumerate(names):
            out[n][j] = r[i]
    out["clean"] = probe(np.zeros((1, probe.X.shape[1]), dtype=np.float32), 0.0)[0]
    return out
