"""The shipped WordNet 3.0 hierarchy and its categories for any tokenizer.

WordNet's noun and verb synsets (lemmas, hypernym edges, glosses, examples) ship in
``geomsteer/data/wordnet/`` (built by ``data/wordnet/build.py`` from Debian's ``wordnet-base``), so
nothing is downloaded and nltk is not needed at run time.

:func:`build_hierarchy` turns WordNet into the categories of Park et al. (2024) for one
tokenizer: a category is a synset together with all its hyponyms (recursively); its tokens are
the single-token word forms of those lemmas (lowercase, Capitalized and plural for nouns; the
regular and irregular conjugations for verbs), written with the tokenizer's word-start marker
(SentencePiece ``▁``, byte-BPE ``Ġ``). Categories with more than ``min_tokens`` tokens are kept;
a category's parent is its nearest kept ancestor; a kept category with exactly one kept child
absorbs that child (single-child chain merging).
"""

from __future__ import annotations

import functools
import gzip
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .errors import ConfigError, DataError
from .types import ConceptHierarchy

__all__ = ["WordNet", "load_wordnet", "data_dir", "detect_word_start", "word_forms", "build_hierarchy", "grouped_words",
           "DEFAULT_GROUPS", "concept_words"]

WORD_START_MARKERS = ("▁", "Ġ", " ")


def data_dir() -> Path:
    """Where the WordNet files are: ``$GEOMSTEER_WORDNET_DIR``, else the copy shipped in the package."""
    env = os.environ.get("GEOMSTEER_WORDNET_DIR")
    if env:
        return Path(env)
    from .resources import data_path

    return data_path("wordnet")


@dataclass(frozen=True)
class Synset:
    name: str
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[str, ...]
    instance_hypernyms: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


class WordNet:
    """Read-only WordNet: synsets by name, hypernym/hyponym edges, irregular inflections."""

    def __init__(self, synsets: Mapping[str, Synset], exceptions: Mapping[tuple[str, str], tuple[str, ...]]):
        self.synsets = dict(synsets)
        # base form -> irregular inflected forms, per part of speech
        self.exceptions = dict(exceptions)
        self._hyponyms: dict[str, list[str]] = defaultdict(list)
        for s in self.synsets.values():
            for h in s.hypernyms:
                self._hyponyms[h].append(s.name)

    def __len__(self) -> int:
        return len(self.synsets)

    def __getitem__(self, name: str) -> Synset:
        try:
            return self.synsets[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self.synsets), n=5)
            hint = f"; close matches: {', '.join(close)}" if close else ""
            raise DataError(
                f"unknown synset {name!r}: expected a WordNet 3.0 name such as 'animal.n.01'{hint}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.synsets

    def all(self, pos: str | None = None) -> list[Synset]:
        return [s for s in self.synsets.values() if pos is None or s.pos == pos]

    def hyponyms(self, name: str) -> list[str]:
        return list(self._hyponyms.get(name, ()))

    def irregular_forms(self, pos: str, base: str) -> tuple[str, ...]:
        return self.exceptions.get((pos, base), ())


@functools.lru_cache(maxsize=2)
def load_wordnet(path: str | None = None) -> WordNet:
    """Load the shipped WordNet (cached per process)."""
    root = Path(path) if path else data_dir()
    syn_file, exc_file = root / "synsets.tsv.gz", root / "exceptions.tsv.gz"
    if not syn_file.is_file():
        raise DataError(
            f"WordNet data not found at {syn_file}: expected the files that data/wordnet/build.py writes; "
            "reinstall geomsteer from its repository or set GEOMSTEER_WORDNET_DIR"
        )
    synsets: dict[str, Synset] = {}
    with gzip.open(syn_file, "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            name, pos, lexname, lemmas, hyper, inst, definition, examples = line.rstrip("\n").split("\t")
            synsets[name] = Synset(
                name, pos, lexname, tuple(lemmas.split("|")), tuple(filter(None, hyper.split("|"))),
                tuple(filter(None, inst.split("|"))), definition, tuple(filter(None, examples.split("|"))),
            )
    exceptions: dict[tuple[str, str], list[str]] = defaultdict(list)
    with gzip.open(exc_file, "rt", encoding="utf-8") as f:
        next(f)
        for line in f:
            pos, inflected, base = line.rstrip("\n").split("\t")
            exceptions[(pos, base)].append(inflected)
    return WordNet(synsets, {k: tuple(v) for k, v in exceptions.items()})


# --------------------------------------------------------------------------------------------
# Word forms and tokenizers

_VOWELS = set("aeiou")


def _plural(w: str) -> str:
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        return w[:-1] + "ies"
    return w + "s"


def _verb_forms(w: str) -> list[str]:
    third = _plural(w)
    if w.endswith("e") and not w.endswith(("ee", "ye", "oe")):
        past, ing = w + "d", w[:-1] + "ing"
    elif w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        past, ing = w[:-1] + "ied", w + "ing"
    elif (len(w) >= 3 and w[-1] not in _VOWELS | set("wxy") and w[-2] in _VOWELS
          and w[-3] not in _VOWELS and len(w) <= 4):
        past, ing = w + w[-1] + "ed", w + w[-1] + "ing"  # stop -> stopped (short CVC words)
    else:
        past, ing = w + "ed", w + "ing"
    return [third, past, ing]


def word_forms(lemma: str, pos: str, wordnet: WordNet | None = None) -> list[str]:
    """The surface forms a lemma is matched by: lowercase, Capitalized, and inflections.

    Nouns add their plural (WordNet's irregular plural where it has one, else the regular
    rule); verbs add the third person, past and -ing forms (irregular ones from WordNet's
    exception list as well). Multi-word lemmas (with ``_``) have no single-word forms.
    """
    if "_" in lemma or not lemma:
        return []
    low = lemma.lower()
    irregular = wordnet.irregular_forms(pos, low) if wordnet is not None else ()
    if pos == "n":
        inflected = list(irregular) if irregular else [_plural(low)]
    elif pos == "v":
        inflected = list(irregular) + _verb_forms(low)
    else:
        raise ConfigError(f"unknown part of speech {pos!r}: expected 'n' (noun) or 'v' (verb)")
    forms: list[str] = []
    for w in [lemma, low, *inflected]:
        for f in (w, w[:1].upper() + w[1:]):
            if f not in forms:
                forms.append(f)
    return forms


def detect_word_start(vocab: Mapping[str, int]) -> str:
    """The marker a tokenizer puts before a word that follows a space: ``▁``, ``Ġ`` or a space."""
    counts = Counter(t[0] for t in vocab if t and t[0] in WORD_START_MARKERS)
    if not counts:
        raise DataError(
            "could not detect the tokenizer's word-start convention: expected tokens that start with "
            "'▁' (SentencePiece), 'Ġ' (byte-level BPE) or a space, found none"
        )
    return counts.most_common(1)[0][0]


# --------------------------------------------------------------------------------------------
# The hierarchy


def build_hierarchy(
    vocab: Mapping[str, int],
    pos: str = "n",
    min_tokens: int = 50,
    tokenizer: str = "",
    wordnet: WordNet | None = None,
    merge_chains: bool = True,
) -> ConceptHierarchy:
    """WordNet categories whose single-token word forms number more than ``min_tokens``.

    Parameters
    ----------
    vocab: token string -> id, as ``tokenizer.get_vocab()`` returns.
    pos: ``"n"`` for nouns, ``"v"`` for verbs.
    min_tokens: keep categories with strictly more tokens than this (Park et al. use 50).

    With the shipped WordNet the tree is kept per process (a few vocabularies): a second call with the
    same vocabulary returns the same object, which callers must not change.
    """
    if pos not in ("n", "v"):
        raise ConfigError(f"unknown part of speech {pos!r}: expected 'n' (noun) or 'v' (verb)")
    if not isinstance(min_tokens, (int, np.integer)) or min_tokens < 1:
        raise ConfigError(f"min_tokens must be a positive integer, got {min_tokens!r}")
    if wordnet is None:  # the shipped WordNet: the same vocabulary gives the same tree, so keep it
        key = (hash(frozenset(vocab.items())), len(vocab), pos, int(min_tokens), tokenizer, merge_chains)
        if key not in _TREES:
            _TREES[key] = _build_hierarchy(vocab, pos, int(min_tokens), tokenizer, load_wordnet(), merge_chains)
            while len(_TREES) > 4:
                _TREES.pop(next(iter(_TREES)))
        return _TREES[key]
    return _build_hierarchy(vocab, pos, int(min_tokens), tokenizer, wordnet, merge_chains)


#: build_hierarchy's trees for the shipped WordNet (a few, most recent last); callers must not change them
_TREES: dict[tuple, ConceptHierarchy] = {}


def _build_hierarchy(vocab: Mapping[str, int], pos: str, min_tokens: int, tokenizer: str, wn: "WordNet",
                     merge_chains: bool) -> ConceptHierarchy:
    import networkx as nx

    marker = detect_word_start(vocab)
    synsets = wn.all(pos)

    # Tokens of each lemma, and coverage of lemmas.
    lemma_tokens: dict[str, frozenset[int]] = {}
    n_multiword = n_single = n_kept = 0
    for s in synsets:
        for lemma in s.lemmas:
            if lemma in lemma_tokens:
                continue
            forms = word_forms(lemma, pos, wn)
            if not forms:
                n_multiword += 1
                lemma_tokens[lemma] = frozenset()
                continue
            n_single += 1
            ids = frozenset(vocab[marker + f] for f in forms if marker + f in vocab)
            n_kept += bool(ids)
            lemma_tokens[lemma] = ids

    # Tokens of each synset's closure (itself and all hyponyms), children before parents.
    children = {s.name: [c for c in wn.hyponyms(s.name)] for s in synsets}
    g_full = nx.DiGraph()
    g_full.add_nodes_from(children)
    g_full.add_edges_from((p, c) for p, cs in children.items() for c in cs)
    closure: dict[str, frozenset[int]] = {}
    for name in reversed(list(nx.topological_sort(g_full))):
        own = set().union(*(lemma_tokens[l] for l in wn.synsets[name].lemmas))
        for c in children[name]:
            own |= closure[c]
        closure[name] = frozenset(own)
    kept = {n for n, t in closure.items() if len(t) > min_tokens}
    if not kept:
        largest = max((len(t) for t in closure.values()), default=0)
        raise ConfigError(
            f"--min-tokens {min_tokens} leaves no category: the largest {('noun', 'verb')[pos == 'v']} category "
            f"has {largest} single tokens for this tokenizer; use a smaller --min-tokens (Park et al. use 50)"
        )

    # Parent = nearest kept ancestor (ties: the smaller category, then the name).
    depth_full = {}
    for name in nx.topological_sort(g_full):
        preds = list(g_full.predecessors(name))
        depth_full[name] = 0 if not preds else 1 + min(depth_full[p] for p in preds)

    tree = nx.DiGraph()
    for name in kept:
        s = wn.synsets[name]
        tree.add_node(name, tokens=np.array(sorted(closure[name]), dtype=np.int64),
                      definition=s.definition, merged=[], lexname=s.lexname)
    for name in kept:
        frontier, seen, parent = [name], {name}, None
        while frontier and parent is None:
            nxt = []
            for n in frontier:
                nxt.extend(p for p in g_full.predecessors(n) if p not in seen)
            seen.update(nxt)
            hits = sorted({p for p in nxt if p in kept}, key=lambda p: (len(closure[p]), p))
            parent = hits[0] if hits else None
            frontier = nxt
        if parent is not None:
            tree.add_edge(parent, name)

    if merge_chains:
        # A kept category with exactly one kept child absorbs it: the child's token set is a subset
        # of the parent's, so the pair carries one concept, not two.
        changed = True
        while changed:
            changed = False
            for node in sorted(tree.nodes, key=lambda n: (depth_full[n], n)):
                if node in tree and tree.out_degree(node) == 1:
                    (child,) = tree.successors(node)
                    tree.nodes[node]["merged"] = tree.nodes[node]["merged"] + [child, *tree.nodes[child]["merged"]]
                    for grandchild in list(tree.successors(child)):
                        tree.add_edge(node, grandchild)
                    tree.remove_node(child)
                    changed = True

    for r in [n for n in tree if tree.in_degree(n) == 0]:
        for n, d in nx.single_source_shortest_path_length(tree, r).items():
            tree.nodes[n]["depth"] = d

    all_tokens = set().union(*(closure[n] for n in tree))
    groups = _lemma_groups(lemma_tokens, all_tokens)
    coverage = {
        "pos": pos,
        "word_start": marker,
        "n_synsets": len(synsets),
        "n_lemmas": len(lemma_tokens),
        "n_lemmas_multiword": n_multiword,
        "n_lemmas_single_word": n_single,
        "n_lemmas_kept": n_kept,
        "n_lemmas_dropped_multitoken": n_single - n_kept,
        "n_categories_over_min_tokens": len(kept),
        "n_categories": tree.number_of_nodes(),
        "n_merged_by_chain_merging": len(kept) - tree.number_of_nodes(),
        "n_edges": tree.number_of_edges(),
        "n_distinct_tokens": len(all_tokens),
        "n_lemma_groups": len(set(groups.values())),
    }
    return ConceptHierarchy(tree, pos, tokenizer, marker, int(min_tokens), coverage, groups)


def _lemma_groups(lemma_tokens: Mapping[str, frozenset[int]], tokens: set[int]) -> dict[int, int]:
    """Token id -> lemma group: the forms of one lemma share a group, and two lemmas that share a
    form (union-find) join theirs, so a split by group never puts one word on both sides."""
    parent = {t: t for t in tokens}

    def find(t: int) -> int:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for ids in lemma_tokens.values():
        ids = [t for t in ids if t in parent]
        for t in ids[1:]:
            a, b = find(ids[0]), find(t)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {t: find(t) for t in tokens}


def lemma_names(names: Iterable[str], wordnet: WordNet | None = None) -> dict[str, str]:
    """A short readable label (first lemma) for each synset name."""
    wn = wordnet or load_wordnet()
    return {n: wn.synsets[n].lemmas[0].replace("_", " ") if n in wn else n for n in names}


# Semantic groups for similarity scans: first match wins, so a more specific category comes first.
DEFAULT_GROUPS = (
    "animal.n.01", "plant.n.02", "person.n.01", "body_part.n.01", "food.n.02", "artifact.n.01",
    "location.n.01", "substance.n.01", "communication.n.02", "feeling.n.01", "act.n.02",
    "time_period.n.01", "organization.n.01",
)


def is_under(child: str, parent: str, wordnet: WordNet | None = None) -> bool:
    """Whether synset ``child`` is ``parent`` or lies under it (hypernyms and instance hypernyms, any path)."""
    wn = wordnet or load_wordnet()
    return parent in _ancestors_cached(wn, child)


@functools.lru_cache(maxsize=65536)
def _ancestors_cached(wn: WordNet, name: str) -> frozenset[str]:
    return frozenset(_ancestors(wn, name))


def path_up(child: str, parent: str, wordnet: WordNet | None = None) -> list[str] | None:
    """The shortest hypernym path between synset ``parent`` and ``child`` under it, listed from ``parent`` down to
    ``child`` (both included), or None when ``child`` is not under ``parent``."""
    wn = wordnet or load_wordnet()
    if child not in wn or not is_under(child, parent, wn):
        return None
    prev: dict[str, str | None] = {child: None}
    frontier = [child]
    while frontier:
        nxt = []
        for s in frontier:
            if s == parent:
                out = [s]
                while prev[out[-1]] is not None:
                    out.append(prev[out[-1]])  # type: ignore[arg-type]
                return out
            syn = wn.synsets[s]
            for h in syn.hypernyms + syn.instance_hypernyms:
                if h not in prev and h in wn:
                    prev[h] = s
                    nxt.append(h)
        frontier = nxt
    return None


def _ancestors(wn: WordNet, name: str) -> set[str]:
    seen: set[str] = set()
    stack = [name]
    while stack:
        s = stack.pop()
        if s in seen or s not in wn:
            continue
        seen.add(s)
        syn = wn.synsets[s]
        stack.extend(syn.hypernyms + syn.instance_hypernyms)
    return seen


def grouped_words(groups: Sequence[str] = DEFAULT_GROUPS, wordnet: WordNet | None = None) -> dict[str, str]:
    """Plain nouns (lower-case letters, 3 or more) mapped to the first group their first sense falls under.

    A word's first sense is the synset ``<word>.n.01`` (WordNet numbers senses by frequency);
    words whose first sense is under none of ``groups`` are left out.
    """
    import re

    wn = wordnet or load_wordnet()
    for g in groups:
        wn[g]  # unknown names raise with close matches
    word = re.compile(r"[a-z]{3,}")
    out: dict[str, str] = {}
    for s in wn.all("n"):
        w, _, sense = s.name.rpartition(".n.")
        if sense != "01" or not word.fullmatch(w):
            continue
        anc = _ancestors(wn, s.name)
        for g in groups:
            if g in anc:
                out[w] = g
                break
    return out


def concept_words(concepts: Sequence[str], wordnet: WordNet | None = None) -> tuple[list[str], list[str], dict]:
    """The plain words (lower-case letters, 3 or more) under each concept, and the concept of each.

    A concept's words are the lemmas of the synset and all its hyponyms. A word found under two
    concepts is ambiguous and left out (counted). Returns (words, concept of each word, counts).
    """
    import re

    wn = wordnet or load_wordnet()
    concepts = list(dict.fromkeys(concepts))
    if not concepts:
        raise DataError("no concepts given: expected WordNet synset names such as animal.n.01,plant.n.02")
    word = re.compile(r"[a-z]{3,}")
    found: dict[str, set[str]] = {}
    for c in concepts:
        wn[c]  # unknown names raise with close matches
        seen, stack, words = set(), [c], set()
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            words.update(lem for lem in wn.synsets[s].lemmas if word.fullmatch(lem))
            stack.extend(wn.hyponyms(s))
        found[c] = words
    owner: dict[str, list[str]] = {}
    for c, ws in found.items():
        for w in ws:
            owner.setdefault(w, []).append(c)
    words = sorted(w for w, cs in owner.items() if len(cs) == 1)
    counts = {"per_concept": {c: sum(owner[w] == [c] for w in found[c]) for c in concepts},
              "ambiguous_dropped": sum(len(cs) > 1 for cs in owner.values())}
    return words, [owner[w][0] for w in words], counts


def category_memberships(words: Sequence[str], min_size: int = 5, max_fraction: float = 0.5,
                         wordnet: WordNet | None = None) -> tuple[list[str], np.ndarray]:
    """The WordNet noun categories of plain words: a word belongs to every ancestor (hypernym closure,
    instance hypernyms included) of its first noun sense ``<word>.n.01``. Categories with fewer than
    ``min_size`` of the words, or more than ``max_fraction`` of them (entity, object: no information),
    are left out. Returns the category names (sorted) and a (n_words, n_categories) boolean matrix;
    a word without a noun sense belongs to nothing."""
    wn = wordnet or load_wordnet()
    anc = [(_ancestors(wn, f"{w}.n.01") if f"{w}.n.01" in wn else set()) for w in words]
    counts: dict[str, int] = defaultdict(int)
    for a in anc:
        for c in a:
            counts[c] += 1
    names = sorted(c for c, n in counts.items() if min_size <= n <= max_fraction * len(words))
    col = {c: j for j, c in enumerate(names)}
    M = np.zeros((len(words), len(names)), dtype=bool)
    for i, a in enumerate(anc):
        for c in a:
            j = col.get(c)
            if j is not None:
                M[i, j] = True
    return names, M
