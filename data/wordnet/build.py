"""Rebuild geomsteer's compact WordNet 3.0 data from Debian's ``wordnet-base`` package.

    apt-get install wordnet-base wordnet-sense-index   # files land in /usr/share/wordnet
    python data/wordnet/build.py          # writes geomsteer/data/wordnet/{synsets.tsv.gz,exceptions.tsv.gz,MANIFEST.json}

nltk's WordNet reader needs the dictionary files *copied* (not symlinked) into
``<root>/corpora/wordnet/`` plus a ``lexnames`` table. Debian does not ship ``lexnames``;
this script derives it from the table in WordNet's own ``lexnames(5WN)`` manual page, which
``wordnet-base`` installs. Nothing is downloaded.

Output (gzip with a fixed timestamp, so a rebuild from the same source is byte-identical):

* ``synsets.tsv.gz``: one synset a line (nouns and verbs with their hypernyms; adjectives,
  satellites and adverbs for their glosses), tab-separated, with a header:
  ``synset pos lexname lemmas hypernyms instance_hypernyms definition examples``.
  Lists inside a field are separated by ``|``; names are nltk's (``dog.n.01``).
* ``exceptions.tsv.gz``: WordNet's irregular inflections (``noun.exc``, ``verb.exc``):
  ``pos inflected base``.
* ``MANIFEST.json``: counts and the sha256 of each source file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

SOURCE_FILES = [
    "data.noun", "data.verb", "data.adj", "data.adv",
    "index.noun", "index.verb", "index.adj", "index.adv",
    "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense",
]
POS_CODE = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def lexnames_from_manpage(manpage: Path) -> str:
    """Return the ``lexnames`` file text parsed from the lexnames(5WN) manual page table."""
    opener = gzip.open if manpage.suffix == ".gz" else open
    with opener(manpage, "rt", encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^(\d\d)\t(\w+\.\w+)\s*\t", text, flags=re.M)
    if len(rows) != 45:
        raise SystemExit(f"expected 45 lexicographer files in {manpage}, found {len(rows)}")
    return "".join(f"{num}\t{name}\t{POS_CODE[name.split('.')[0]]}\n" for num, name in rows)


def _clean(text: str) -> str:
    return " ".join(text.replace("|", "/").split())


def build(source: Path, manpage: Path, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpora" / "wordnet"
        corpus.mkdir(parents=True)
        for name in SOURCE_FILES:
            shutil.copyfile(source / name, corpus / name)
        (corpus / "lexnames").write_text(lexnames_from_manpage(manpage))
        import nltk  # nltk only reads corpora that live under a directory on its data path
        from nltk.corpus.reader.wordnet import WordNetCorpusReader

        nltk.data.path.insert(0, tmp)

        wn = WordNetCorpusReader(str(corpus), None)
        counts = {}
        rows = ["synset\tpos\tlexname\tlemmas\thypernyms\tinstance_hypernyms\tdefinition\texamples"]
        for pos in ("n", "v", "a", "r"):  # adjective satellites ("s") come with "a"
            synsets = sorted(wn.all_synsets(pos), key=lambda s: (s.pos(), s.offset()))
            counts[pos] = len(synsets)
            for s in synsets:
                rows.append("\t".join([
                    s.name(), s.pos(), s.lexname(),
                    "|".join(l.name() for l in s.lemmas()),
                    "|".join(sorted(h.name() for h in s.hypernyms())),
                    "|".join(sorted(h.name() for h in s.instance_hypernyms())),
                    _clean(s.definition()),
                    "|".join(_clean(e) for e in s.examples()),
                ]))
    out.mkdir(parents=True, exist_ok=True)
    _write_gz(out / "synsets.tsv.gz", "\n".join(rows) + "\n")
    exc = ["pos\tinflected\tbase"]
    for pos, fname in (("n", "noun.exc"), ("v", "verb.exc")):
        for line in (source / fname).read_text().splitlines():
            inflected, *bases = line.split()
            exc.extend(f"{pos}\t{inflected}\t{b}" for b in bases)
    _write_gz(out / "exceptions.tsv.gz", "\n".join(exc) + "\n")
    manifest = {
        "wordnet_version": "3.0",
        "source": str(source),
        "n_noun_synsets": counts["n"],
        "n_verb_synsets": counts["v"],
        "n_adjective_synsets": counts["a"],
        "n_adverb_synsets": counts["r"],
        "n_exceptions": len(exc) - 1,
        "source_sha256": {n: hashlib.sha256((source / n).read_bytes()).hexdigest() for n in SOURCE_FILES},
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_gz(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(text.encode("utf-8"))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--manpage", type=Path, default=Path("/usr/share/man/man5/lexnames.5WN.gz"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "geomsteer" / "data" / "wordnet")
    a = p.parse_args(argv)
    missing = [n for n in SOURCE_FILES if not (a.source / n).exists()]
    if missing or not a.manpage.exists():
        print(f"error: WordNet files missing under {a.source} ({', '.join(missing) or a.manpage}); "
              "install them with: apt-get install wordnet-base wordnet-sense-index", file=sys.stderr)
        return 1
    print(json.dumps(build(a.source, a.manpage, a.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
