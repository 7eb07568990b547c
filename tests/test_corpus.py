"""The offline corpus, user text files, the fixed held-out split, and their errors."""

import re

import pytest

from geomsteer.corpus import Corpus, hf_dataset, text_files, wordnet_glosses
from geomsteer.errors import DataError, ModelUnavailableError


def test_wordnet_glosses_cover_all_of_wordnet():
    c = wordnet_glosses()
    assert c.provenance["n_glosses"] == 117659  # every WordNet 3.0 synset
    assert c.provenance["n_examples"] > 40000
    assert "dog: a member of the genus Canis (probably descended from the common wolf) that has been domesticated " \
           "by man since prehistoric times; occurs in many breeds" in c.texts
    assert len(wordnet_glosses(pos=("n",), examples=False)) == 82115


def test_split_is_fixed_by_the_texts_and_disjoint():
    c = Corpus(tuple(f"document number {i}" for i in range(5000)), "toy")
    train, test = c.split(0.1)
    assert not set(train) & set(test) and len(train) + len(test) == 5000
    assert 400 < len(test) < 600
    train2, test2 = c.shuffled(seed=3).split(0.1)
    assert set(test2) == set(test)  # the same held-out documents whatever the order
    grown = Corpus(c.texts + ("one more",), "toy")
    assert set(test) <= set(grown.split(0.1)[1])


def test_shuffle_is_deterministic_and_keeps_documents():
    c = Corpus(tuple(str(i) for i in range(100)), "toy")
    assert c.shuffled(1).texts == c.shuffled(1).texts != c.shuffled(2).texts
    assert sorted(c.shuffled(1)) == sorted(c)


def test_text_and_jsonl_files(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    (tmp_path / "b.jsonl").write_text('{"text": "from json"}\n\n{"text": "again", "id": 2}\n')
    c = text_files([tmp_path / "a.txt", tmp_path / "b.jsonl"])
    assert c.texts == ("first line", "second line", "from json", "again")
    assert [f["n_documents"] for f in c.provenance["files"]] == [2, 2]


def test_file_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=re.escape(f"corpus file {str(empty)!r} holds no text: expected at least one "
                                                  "non-empty line")):
        text_files([empty])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=re.escape(f"{bad}:2: malformed JSON (Expecting value at column 10): expected "
                                                  "one JSON object per line")):
        text_files([bad])
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=re.escape(f"{nofield}:1: expected a JSON object with a string field 'text', "
                                                  "got dict without it")):
        text_files([nofield])
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=re.escape(f"corpus file {str(missing)!r} does not exist")):
        text_files([missing])
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match=re.escape(f"corpus file {str(binary)!r} is not UTF-8 text (byte 0)")):
        text_files([binary])


def test_hf_dataset_offline_says_what_to_use_instead():
    with pytest.raises(ModelUnavailableError, match=re.escape(
            "dataset 'wikitext' cannot be streamed: HF_HUB_OFFLINE is set; use the offline corpus (WordNet glosses) "
            "or your own .txt/.jsonl files")):
        hf_dataset("wikitext")
