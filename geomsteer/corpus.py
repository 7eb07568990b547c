"""Text to run models on: WordNet's glosses offline, a user's files, or a Hugging Face dataset.

A :class:`Corpus` is an immutable sequence of documents with provenance. Its held-out split is
fixed by the documents themselves (a hash of each text), so it does not move when the corpus is
shuffled, re-ordered or grown; :meth:`Corpus.shuffled` is deterministic for a seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import DataError, ModelUnavailableError

__all__ = ["Corpus", "wordnet_glosses", "text_files", "hf_dataset"]


@dataclass(frozen=True)
class Corpus:
    """Documents (``texts``) with a ``name`` and ``provenance``."""

    texts: tuple[str, ...]
    name: str
    provenance: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def shuffled(self, seed: int = 0) -> "Corpus":
        """The same documents in an order fixed by ``seed``."""
        order = np.random.default_rng(seed).permutation(len(self.texts))
        return Corpus(tuple(self.texts[i] for i in order), self.name, {**self.provenance, "shuffle_seed": seed})

    def split(self, held_out: float = 0.1) -> tuple["Corpus", "Corpus"]:
        """(train, held-out): a document is held out when a hash of its text falls below ``held_out``.

        The assignment depends on the text alone, so it is the same for every order, seed and
        superset of the corpus; duplicate texts land on the same side.
        """
        if not 0.0 < held_out < 1.0:
            raise DataError(f"held_out must be a fraction strictly between 0 and 1, got {held_out!r}")
        train, test = [], []
        for t in self.texts:
            h = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
            (test if h < held_out else train).append(t)
        prov = {**self.provenance, "held_out": held_out}
        return (Corpus(tuple(train), self.name, {**prov, "part": "train"}),
                Corpus(tuple(test), self.name, {**prov, "part": "held_out"}))


def wordnet_glosses(pos: Sequence[str] = ("n", "v", "a", "s", "r"), examples: bool = True) -> Corpus:
    """WordNet 3.0's definitions (and example sentences) as documents, from the shipped data.

    Each gloss becomes "lemma: definition" (the lemma gives the definition a subject, as a
    dictionary entry reads); each example sentence is its own document.
    """
    from .wordnet import load_wordnet

    wn = load_wordnet()
    texts: list[str] = []
    n_gloss = 0
    for s in wn.all():
        if s.pos not in pos:
            continue
        texts.append(f"{s.lemmas[0].replace('_', ' ')}: {s.definition}")
        n_gloss += 1
        if examples:
            texts.extend(e for e in s.examples if e)
    return Corpus(tuple(texts), "wordnet-glosses",
                  {"source": "WordNet 3.0 (data/wordnet)", "pos": list(pos), "n_glosses": n_gloss,
                   "n_examples": len(texts) - n_gloss})


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"corpus file {str(path)!r} does not exist: expected a readable .txt or .jsonl file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"corpus file {str(path)!r} is not UTF-8 text (byte {e.start}): expected a .txt or .jsonl "
                        "file; convert it to UTF-8") from None
    except OSError as e:
        raise DataError(f"corpus file {str(path)!r} cannot be read ({e.strerror}): check its permissions") from None


def jsonl_objects(content: str, path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a malformed line raises with its number."""
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}): expected one JSON "
                            "object per line") from None


def text_files(paths: Iterable[str | os.PathLike], text_field: str = "text") -> Corpus:
    """Documents from ``.txt`` files (one document per non-empty line) and ``.jsonl`` files
    (one JSON object per line, its ``text_field`` the document)."""
    texts: list[str] = []
    files = []
    for p in map(Path, paths):
        content = _read_text(p)
        before = len(texts)
        if p.suffix == ".jsonl":
            for lineno, obj in jsonl_objects(content, p):
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise DataError(f"{p}:{lineno}: expected a JSON object with a string field {text_field!r}, "
                                    f"got {type(obj).__name__}{' without it' if isinstance(obj, dict) else ''}")
                texts.append(obj[text_field])
        elif p.suffix in (".txt", ""):
            texts.extend(line.strip() for line in content.splitlines() if line.strip())
        else:
            raise DataError(f"corpus file {str(p)!r} has suffix {p.suffix!r}: expected .txt or .jsonl")
        if len(texts) == before:
            raise DataError(f"corpus file {str(p)!r} holds no text: expected at least one non-empty line")
        files.append({"path": str(p.resolve()), "sha256": hashlib.sha256(content.encode("utf-8")).hexdigest(),
                      "n_documents": len(texts) - before})
    if not files:
        raise DataError("no corpus files given: expected at least one .txt or .jsonl path")
    return Corpus(tuple(texts), "files", {"source": "files", "files": files})


def hf_dataset(name: str, split: str = "train", text_field: str = "text", max_documents: int = 100_000,
               config: str | None = None) -> Corpus:
    """Up to ``max_documents`` documents of a Hugging Face dataset, streamed (the hub must be reachable)."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise ModelUnavailableError(
            f"dataset {name!r} cannot be streamed: HF_HUB_OFFLINE is set; use the offline corpus "
            "(WordNet glosses) or your own .txt/.jsonl files")
    try:
        from datasets import load_dataset

        ds = load_dataset(name, config, split=split, streaming=True)
        texts = []
        for row in ds:
            if len(texts) >= max_documents:
                break
            if text_field not in row:
                raise DataError(f"dataset {name!r} has no field {text_field!r}: its fields are {', '.join(row)}; "
                                "pass the right text_field")
            texts.append(str(row[text_field]))
    except DataError:
        raise
    except Exception as e:  # network errors, unknown datasets
        raise ModelUnavailableError(
            f"dataset {name!r} cannot be streamed ({type(e).__name__}): the hub could not be reached or the "
            "dataset does not exist; use the offline corpus (WordNet glosses) or your own .txt/.jsonl files") from None
    return Corpus(tuple(texts), name, {"source": "huggingface", "dataset": name, "config": config, "split": split,
                                       "text_field": text_field})
