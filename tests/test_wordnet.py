"""The shipped WordNet and the hierarchy built from it for a tokenizer."""

import networkx as nx
import pytest

from geomsteer.errors import ConfigError, DataError
from geomsteer.wordnet import build_hierarchy, detect_word_start, load_wordnet, word_forms


@pytest.fixture(scope="module")
def wn():
    return load_wordnet()


def test_shipped_wordnet_has_all_noun_and_verb_synsets(wn):
    assert len(wn.all("n")) == 82115  # WordNet 3.0, as nltk reports it
    assert len(wn.all("v")) == 13767
    dog = wn["dog.n.01"]
    assert dog.hypernyms == ("canine.n.02", "domestic_animal.n.01")  # sorted by name
    assert "dog" in dog.lemmas and dog.definition.startswith("a member of the genus Canis")
    assert dog.examples == ("the dog barked all night",)
    assert "dog.n.01" in wn.hyponyms("canine.n.02")
    assert wn["paris.n.01"].instance_hypernyms == ("national_capital.n.01",)


def test_unknown_synset_suggests_close_matches(wn):
    with pytest.raises(DataError, match=r"^unknown synset 'animl.n.01': expected a WordNet 3.0 name such as "
                                        r"'animal.n.01'; close matches: animal.n.01"):
        wn["animl.n.01"]


@pytest.mark.parametrize("lemma,pos,expected", [
    ("dog", "n", ["dog", "Dog", "dogs", "Dogs"]),
    ("berry", "n", ["berry", "Berry", "berries", "Berries"]),
    ("box", "n", ["box", "Box", "boxes", "Boxes"]),
    ("mouse", "n", ["mouse", "Mouse", "mice", "Mice"]),  # WordNet's irregular plural
    ("Paris", "n", ["Paris", "paris", "Parises", "parises"][:2] + ["parises", "Parises"]),
])
def test_noun_forms(wn, lemma, pos, expected):
    assert sorted(word_forms(lemma, pos, wn)) == sorted(set(expected))


def test_verb_forms_include_regular_and_irregular_conjugations(wn):
    forms = word_forms("run", "v", wn)
    for f in ("run", "Run", "runs", "ran", "running"):
        assert f in forms
    forms = word_forms("bake", "v", wn)
    for f in ("bakes", "baked", "baking"):
        assert f in forms
    assert "tried" in word_forms("try", "v", wn)
    assert "stopped" in word_forms("stop", "v", wn)


def test_multiword_lemmas_have_no_single_word_forms(wn):
    assert word_forms("hot_dog", "n", wn) == []


def test_word_start_convention_is_detected():
    assert detect_word_start({"▁the": 0, "▁cat": 1, "s": 2}) == "▁"
    assert detect_word_start({"Ġthe": 0, "Ġcat": 1, "s": 2, "▁": 3}) == "Ġ"
    with pytest.raises(DataError, match="could not detect the tokenizer's word-start convention"):
        detect_word_start({"a": 0, "b": 1})


def _toy_vocab(wn, root, marker="Ġ"):
    """Every single-word form under ``root`` as one token, plus a few unrelated tokens."""
    words = set()
    stack = [root]
    while stack:
        s = stack.pop()
        stack.extend(wn.hyponyms(s))
        for lemma in wn[s].lemmas:
            words.update(word_forms(lemma, "n", wn))
    vocab = {marker + w: i for i, w in enumerate(sorted(words))}
    vocab.update({"Ġthe": len(vocab), "ing": len(vocab) + 1})
    return vocab


def test_hierarchy_for_a_byte_bpe_vocab(wn):
    vocab = _toy_vocab(wn, "carnivore.n.01")
    h = build_hierarchy(vocab, "n", min_tokens=20, wordnet=wn, tokenizer="toy")
    g = h.graph
    assert h.word_start == "Ġ"
    # carnivore.n.01 is kept, as a node or folded into the upper end of a single-child chain.
    merged = {m for n in g for m in g.nodes[n]["merged"]}
    assert "carnivore.n.01" in set(g) | merged
    assert [n for n in g if g.in_degree(n) == 0] == ["entity.n.01"]
    (dog,) = [n for n in g if n == "dog.n.01" or "dog.n.01" in g.nodes[n]["merged"]]
    assert nx.is_forest(g) and nx.is_directed_acyclic_graph(g)
    for p, c in g.edges:
        assert set(h.tokens(c)) <= set(h.tokens(p))  # a parent's tokens include its children's
        assert len(h.tokens(c)) > 20
    for n in g:
        assert g.out_degree(n) != 1  # single-child chains are merged
    # "dog.n.01" holds its own forms and those of its hyponyms (e.g. puppies).
    dog_tokens = set(h.tokens(dog))
    assert vocab["Ġdog"] in dog_tokens and vocab["ĠDogs"] in dog_tokens and vocab["Ġpuppies"] in dog_tokens
    assert all(vocab["Ġthe"] not in set(h.tokens(n)) for n in g)
    cov = h.coverage
    assert cov["n_lemmas_kept"] + cov["n_lemmas_dropped_multitoken"] == cov["n_lemmas_single_word"]
    assert cov["n_categories"] == len(h) and h.names[0] == h.names[0]


def test_parent_is_the_nearest_kept_ancestor(wn):
    vocab = _toy_vocab(wn, "carnivore.n.01")
    h = build_hierarchy(vocab, "n", min_tokens=20, wordnet=wn, merge_chains=False)
    for p, c in h.graph.edges:
        # p is a WordNet ancestor of c, and no kept synset lies strictly between them.
        paths = [[c]]
        found = False
        while paths and not found:
            nxt = []
            for path in paths:
                for hyper in wn[path[-1]].hypernyms:
                    if hyper == p:
                        found = True
                        assert all(x not in h.graph for x in path[1:])
                    nxt.append(path + [hyper])
            paths = nxt
        assert found


def test_min_tokens_that_leaves_nothing_says_how_large_the_largest_is(wn):
    vocab = _toy_vocab(wn, "canine.n.02")
    with pytest.raises(ConfigError, match=r"^--min-tokens 100000 leaves no category: the largest noun category has "
                                          r"\d+ single tokens for this tokenizer; use a smaller --min-tokens "
                                          r"\(Park et al. use 50\)$"):
        build_hierarchy(vocab, "n", min_tokens=100000, wordnet=wn)


def test_bad_part_of_speech(wn):
    with pytest.raises(ConfigError, match=r"^unknown part of speech 'a': expected 'n' \(noun\) or 'v' \(verb\)$"):
        build_hierarchy({"▁a": 0}, "a", wordnet=wn)
