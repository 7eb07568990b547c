"""The hierarchy's statistics, measured identically on the data and on every null draw, and the
splits, tree index structures and small helpers they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..types import ConceptHierarchy


# --------------------------------------------------------------------------------------------
# Small pieces


def cos_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ij,ij->i", A, B) / (na * nb)
    return np.where((na > 0) & (nb > 0), out, np.nan)


def _tree_distance_similarity(hierarchy: ConceptHierarchy, names: Sequence[str]) -> np.ndarray:
    """1 / (1 + tree distance) between all categories (0 across separate trees)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    idx = {n: i for i, n in enumerate(names)}
    e = np.array([(idx[p], idx[c]) for p, c in hierarchy.graph.edges], dtype=np.int64).reshape(-1, 2)
    A = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(names), len(names)))
    D = shortest_path(A, directed=False, unweighted=True)
    return np.where(np.isfinite(D), 1.0 / (1.0 + D), 0.0)


def pearson_upper(C: np.ndarray, S: np.ndarray, keep: np.ndarray | None = None) -> float:
    iu = np.triu_indices(len(C), k=1)
    x, y = C[iu], S[iu]
    if keep is not None:
        x, y = x[keep], y[keep]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def unit_cos(L: np.ndarray) -> np.ndarray:
    Ln = L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-300)
    return Ln @ Ln.T


# The statistics, each measured identically on the data and on every null draw:
# name -> (unit, alternative, description). "less" means: closer to 0 than the null (more orthogonal).
STATISTICS: dict[str, tuple[str, str, str]] = {
    "heldout_auc": ("category", "greater",
                    "AUC of held-out tokens (split by lemma) against random vocabulary tokens, both projected on "
                    "the direction fit on the train split; 0.5 = no separation"),
    "heldout_projection": ("category", "greater",
                           "mean normalized projection g(y)·ℓ/‖ℓ‖² of held-out tokens on the train-split direction "
                           "(train tokens give 1 by construction)"),
    "orthogonality_parent_child": ("edge", "less", "|cos(ℓ_parent, ℓ_child − ℓ_parent)| (Park et al. predict 0)"),
    "orthogonality_siblings": ("sibling pair", "less", "|cos(ℓ_parent, ℓ_child1 − ℓ_child0)| (Park et al. predict 0)"),
    "orthogonality_chain": ("chain", "less", "|cos(ℓ_child − ℓ_parent, ℓ_parent − ℓ_grandparent)|"),
    "simplex_nearest_vertex": ("parent", "greater",
                               "fraction of held-out child tokens whose largest barycentric coordinate in the "
                               "children's affine span is their own child (parents with ≥ 3 children)"),
    "simplex_span_auc": ("parent", "greater",
                         "AUC: held-out child tokens lie closer to the children's affine span than random tokens"),
    "simplex_min_singular_value": ("parent", "two-sided",
                                   "smallest nonzero singular value of the centred matrix of the children's vectors "
                                   "(how far the simplex is from degenerate)"),
    "cosine_vs_tree_distance": ("category pair", "greater",
                                "Pearson r between cos(ℓ_w, ℓ_z) and 1/(1 + tree distance), all category pairs"),
}

NULLS: dict[str, str] = {
    "shuffled_tokens": "a random permutation of the whole vocabulary applied to every category: sizes, nesting and "
                       "overlaps kept, meaning gone",
    "nested_random_sets": "a random permutation of the tree's own tokens (the words of this part of speech): the "
                          "same nested sets of the same sizes, filled with the wrong words",
    "random_unembedding": "an i.i.d. Gaussian unembedding, whitened (rows of N(0, I)): the same tree and tokens, a "
                          "model that knows nothing",
}


@dataclass(frozen=True)
class Tree:
    """Index structures of the hierarchy, shared by the observed run and every null draw."""

    names: list[str]
    edges: np.ndarray  # (E, 2) parent, child
    chains: np.ndarray  # (C, 3) grandparent, parent, child
    siblings: np.ndarray  # (S, 3) parent, child0, child1
    simplices: list[tuple[int, np.ndarray]]  # (parent, children) for parents with >= 3 children
    sim: np.ndarray  # 1 / (1 + tree distance)


def build_tree(h: ConceptHierarchy, names: Sequence[str]) -> Tree:
    idx = {n: i for i, n in enumerate(names)}
    edges = sorted(((idx[p], idx[c]) for p, c in h.graph.edges), key=lambda e: (e[1], e[0]))
    chains = [(idx[gp], p, c) for p, c in edges if (gp := h.parent(names[p])) is not None]
    siblings, simplices = [], []
    for p in names:
        kids = sorted((idx[c] for c in h.graph.successors(p)))
        siblings.extend((idx[p], a, b) for i, a in enumerate(kids) for b in kids[i + 1:])
        if len(kids) >= 3:
            simplices.append((idx[p], np.array(kids)))
    return Tree(list(names), np.array(edges, dtype=np.int64).reshape(-1, 2),
                 np.array(chains, dtype=np.int64).reshape(-1, 3), np.array(siblings, dtype=np.int64).reshape(-1, 3),
                 simplices, _tree_distance_similarity(h, names))


def lemma_split(tokens: np.ndarray, groups: Mapping[int, int], test_size: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split a category's tokens into (train, test) with every lemma's forms on one side.

    ``groups`` maps a token id to its lemma group (tokens shared by two lemmas join their groups);
    a token without a group is a group of its own. Groups are taken in random order into the
    test side until it holds ``test_size`` of the tokens; both sides keep at least one token
    (the train side two, for a direction).
    """
    toks = np.asarray(tokens)
    gid = np.array([groups.get(int(t), -1 - int(t)) for t in toks])
    uniq = rng.permutation(np.unique(gid))
    target = max(1, int(round(test_size * len(toks))))
    test_mask = np.zeros(len(toks), dtype=bool)
    for gr in uniq:
        if test_mask.sum() >= target:
            break
        cand = test_mask | (gid == gr)
        if len(toks) - cand.sum() < 2:
            continue
        test_mask = cand
    if not test_mask.any():  # one big group: fall back to tokens
        test_mask[rng.permutation(len(toks))[:target]] = True
    return np.sort(toks[~test_mask]), np.sort(toks[test_mask])


def tree_split(token_sets: Sequence[np.ndarray], groups: Mapping[int, int], test_size: float,
               rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """One held-out split for the whole tree: a random ``test_size`` of the lemma groups is held out
    in every category at once, so the train sets stay nested like the categories (and a word is
    never on the train side of one category and the test side of its parent). A category left
    with no held-out token or fewer than two train tokens is split on its own by
    :func:`lemma_split`. Returns the splits and how many categories needed that.
    """
    used = np.unique(np.concatenate([np.asarray(t) for t in token_sets]))
    gid = np.array([groups.get(int(t), -1 - int(t)) for t in used])
    uniq = rng.permutation(np.unique(gid))
    held = set(uniq[: max(1, int(round(test_size * len(uniq))))].tolist())
    is_test = np.zeros(int(used.max()) + 1, dtype=bool)
    is_test[used] = [x in held for x in gid]
    out, n_local = [], 0
    for toks in token_sets:
        toks = np.asarray(toks)
        te = is_test[toks]
        if te.sum() < 1 or (~te).sum() < 2:
            out.append(lemma_split(toks, groups, test_size, rng))
            n_local += 1
        else:
            out.append((toks[~te], toks[te]))
    return out, n_local




CONTRAST_NOTE = ("contrasts are not nulls: 'euclidean' is the same estimator without the whitening (Park et al. "
                 "expect orthogonality to vanish there), 'mean_estimator' uses mean vectors instead of LDA, and "
                 "'random_parent' pairs each child with a category it is not a subset of, so its cosine is about "
                 "-0.6 whatever the model does")


def summary_value(v: Any) -> float:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 0:
        return float(a)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def pair_bootstrap_ci(C: np.ndarray, S: np.ndarray, seed: int, n_boot: int = 100) -> list[float] | None:
    """Bootstrap over categories of the Pearson r between cosines and tree similarity (pairs of
    distinct original categories only)."""
    k = len(C)
    if k < 4:
        return None
    rng = np.random.default_rng([seed, 0xC05])
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, k, size=k)
        distinct = (idx[:, None] != idx[None, :])[np.triu_indices(k, k=1)]
        vals.append(pearson_upper(C[np.ix_(idx, idx)], S[np.ix_(idx, idx)], keep=distinct))
    vals = np.asarray(vals)
    vals = vals[np.isfinite(vals)]
    if vals.size < 10:
        return None
    return [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


# --------------------------------------------------------------------------------------------
# Pieces of fit


def orthogonality_units(L: np.ndarray, tree: Tree) -> dict[str, np.ndarray]:
    e, ch, sb = tree.edges, tree.chains, tree.siblings
    pc = cos_rows(L[e[:, 0]], L[e[:, 1]] - L[e[:, 0]]) if len(e) else np.array([])
    chain = cos_rows(L[ch[:, 2]] - L[ch[:, 1]], L[ch[:, 1]] - L[ch[:, 0]]) if len(ch) else np.array([])
    sib = cos_rows(L[sb[:, 0]], L[sb[:, 2]] - L[sb[:, 1]]) if len(sb) else np.array([])
    return {"orthogonality_parent_child": np.abs(pc), "orthogonality_siblings": np.abs(sib),
            "orthogonality_chain": np.abs(chain), "_signed": {"parent_child": pc, "siblings": sib, "chain": chain}}


def measure_statistics(L_train: np.ndarray, g: Callable[[np.ndarray], np.ndarray], splits, pool: np.ndarray,
             token_sets, tree: Tree, train_projection: bool = False) -> dict[str, Any]:
    """Every statistic's per-unit values for one set of train-split directions (the data or a null draw).

    All token projections come from two products: the tree's tokens and the random pool against
    every direction at once.
    """
    from ..stats import auc

    o = orthogonality_units(L_train, tree)
    signed = o.pop("_signed")
    k = len(token_sets)
    ids = np.unique(np.concatenate([np.asarray(t) for t in token_sets]))
    G = g(ids)
    P = np.asarray(G @ L_train.T.astype(G.dtype), dtype=np.float64)  # (tokens, categories)
    Gp = g(pool)
    Pp = np.asarray(Gp @ L_train.T.astype(G.dtype), dtype=np.float64)  # (pool, categories)
    Gp = np.asarray(Gp, dtype=np.float64)
    nn = np.einsum("ij,ij->i", L_train, L_train)
    member = np.zeros(max(int(ids.max()), int(pool.max())) + 1, dtype=bool)
    test_proj, train_proj, rand_proj, aucs = (np.full(k, np.nan) for _ in range(4))
    for i, (tr, te) in enumerate(splits):
        if nn[i] == 0 or not np.isfinite(nn[i]):
            continue
        member[token_sets[i]] = True
        pr = Pp[~member[pool], i] / nn[i]
        member[token_sets[i]] = False
        if pr.size == 0:  # every pool token is in the category (a null draw over a small vocabulary)
            continue
        pt = P[np.searchsorted(ids, te), i] / nn[i]
        test_proj[i], rand_proj[i] = pt.mean(), pr.mean()
        if train_projection:
            train_proj[i] = float(P[np.searchsorted(ids, tr), i].mean() / nn[i])
        aucs[i] = auc(pt, pr)
    m = len(tree.simplices)
    nearest, span_auc, min_sv = np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan)
    for j, (p, kids) in enumerate(tree.simplices):
        Lk = L_train[kids]
        sv = np.linalg.svd(Lk - Lk.mean(axis=0), compute_uv=False)
        min_sv[j] = sv[len(kids) - 2] if len(sv) >= len(kids) - 1 else 0.0
        Q, R = np.linalg.qr((Lk[1:] - Lk[0]).T)  # the affine span: Lk[0] + span(Q)
        tests = [splits[c][1] for c in kids]
        X = np.asarray(G[np.searchsorted(ids, np.concatenate(tests))], dtype=np.float64) - Lk[0]
        XQ = X @ Q
        try:
            lam = np.linalg.solve(R, XQ.T)  # barycentric coordinates of the projection, but the first
        except np.linalg.LinAlgError:
            continue
        bary = np.vstack([1.0 - lam.sum(axis=0), lam])
        own = np.repeat(np.arange(len(kids)), [len(t) for t in tests])
        nearest[j] = float((bary.argmax(axis=0) == own).mean())
        member[token_sets[p]] = True
        n_rnd = int((~member[pool]).sum())
        if n_rnd:
            Rr = Gp[~member[pool]] - Lk[0]
            dist_t = np.einsum("ij,ij->i", X, X) - np.einsum("ij,ij->i", XQ, XQ)
            RQ = Rr @ Q
            dist_r = np.einsum("ij,ij->i", Rr, Rr) - np.einsum("ij,ij->i", RQ, RQ)
            span_auc[j] = auc(-dist_t, -dist_r)
        member[token_sets[p]] = False
    C = unit_cos(L_train)
    units = dict(o)
    units.update({"heldout_auc": aucs, "heldout_projection": test_proj, "simplex_nearest_vertex": nearest,
                  "simplex_span_auc": span_auc, "simplex_min_singular_value": min_sv})
    return {"units": units, "scalars": {"cosine_vs_tree_distance": pearson_upper(C, tree.sim)},
            "signed": signed, "train_projection": train_proj, "random_projection": rand_proj, "cos": C}


def map_categories(fn: Callable[[int], np.ndarray], n: int, n_jobs: int, label: str | None,
                    sizes: Sequence[int]) -> np.ndarray:
    """``np.stack([fn(i) for i in range(n)])``, largest categories first, on ``n_jobs`` threads."""
    from .._progress import track
    from .._threads import thread_map

    order = sorted(range(n), key=lambda i: -sizes[i])
    out: list[np.ndarray | None] = [None] * n
    with thread_map(max(1, n_jobs), one_blas_thread=True) as tmap:
        results = tmap.imap(lambda i: (i, fn(i)), order)
        for i, v in (results if label is None else track(results, label, total=n)):
            out[i] = v
    return np.stack(out)  # type: ignore[arg-type]


class RowCache:
    """Whitened rows for a fixed set of token ids, looked up by id."""

    def __init__(self, ids: np.ndarray, rows: np.ndarray):
        self.ids = np.asarray(ids)
        self.rows = rows
        self.index = np.full(int(self.ids.max()) + 1, -1, dtype=np.int64)
        self.index[self.ids] = np.arange(len(self.ids))

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.size and int(ids.max()) >= len(self.index):
            raise KeyError("token id outside the cached rows")
        ix = self.index[ids]
        if (ix < 0).any():
            raise KeyError("token id outside the cached rows")
        return self.rows[ix]


def random_parents(h: ConceptHierarchy, names: Sequence[str], edges, rng) -> list[tuple[int, int]]:
    """For each (parent, child) edge, a random category that is neither an ancestor nor a descendant."""
    import networkx as nx

    idx = {n: i for i, n in enumerate(names)}
    out = []
    for _, c in edges:
        related = {idx[x] for x in nx.ancestors(h.graph, names[c]) | nx.descendants(h.graph, names[c])} | {c}
        candidates = [i for i in range(len(names)) if i not in related]
        if candidates:
            out.append((int(rng.choice(candidates)), int(c)))
    return out
