"""Park et al. (2024), hierarchical orthogonality, on the offline models, next to the null baselines.

    python analyses/park2024_hierarchy.py [gemma-3-270m qwen2.5-0.5b ...]

Prints, per model, the number of categories and mean |cos(l_parent, l_child - l_parent)| for the
observed directions and each baseline. geomsteer is imported; this script is never imported by it.
"""

import sys

from geomsteer import models
from geomsteer.analyzers.hierarchy import HierarchyAnalyzer
from geomsteer.types import Directions
from geomsteer.wordnet import build_hierarchy


def main(names):
    for name in names:
        e = models.load_unembedding(name)
        h = build_hierarchy(e.vocab, "n", 50)
        a = HierarchyAnalyzer(seed=0).fit(Directions(e.gamma, e.id_to_token, "unembed", name), h)
        o = a.metrics_["orthogonality_parent_child"]
        row = "  ".join(f"{k}={v['mean_abs']:.3f}" for k, v in o.items())
        print(f"{name}: {len(h)} categories; mean |cos|: {row}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["gemma-3-270m"])
