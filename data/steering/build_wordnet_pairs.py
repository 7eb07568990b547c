"""Write animal_plant.jsonl: contrast pairs from the shipped WordNet (animal.n.01 vs plant.n.02).

Words are the plain lemmas under each synset (geomsteer.wordnet.concept_words) that Gemma 3's
tokenizer reads as one token after a space, a rough proxy for common words. Each pair puts an
animal and a plant word in the same sentence template. Run from the project root:

    .venv/bin/python data/steering/build_wordnet_pairs.py
"""

import json
import random
from pathlib import Path

from geomsteer import models
from geomsteer.wordnet import concept_words

TEMPLATES = [
    "Near the old stone wall I noticed a {}.",
    "The picture in the book showed a {}.",
    "We spent the afternoon looking at the {}.",
    "My grandmother always talked about the {}.",
    "In the morning light there was a {} by the path.",
    "The children drew a {} on the board.",
]
N_PAIRS = 24


def main() -> None:
    tok = models.load_tokenizer("gemma-3-270m")
    words, labels, _ = concept_words(["animal.n.01", "plant.n.02"])
    single = {c: sorted(w for w, lab in zip(words, labels) if lab == c
                        and len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1)
              for c in ("animal.n.01", "plant.n.02")}
    rng = random.Random(0)
    animals = rng.sample(single["animal.n.01"], N_PAIRS)
    plants = rng.sample(single["plant.n.02"], N_PAIRS)
    out = Path(__file__).resolve().parents[2] / "geomsteer" / "data" / "steering" / "animal_plant.jsonl"
    with out.open("w") as f:
        for i, (a, p) in enumerate(zip(animals, plants)):
            t = TEMPLATES[i % len(TEMPLATES)]
            f.write(json.dumps({"positive": t.format(a), "negative": t.format(p)}) + "\n")
    print(f"{out}: {N_PAIRS} pairs from {len(single['animal.n.01'])} animal and {len(single['plant.n.02'])} plant words")


if __name__ == "__main__":
    main()
