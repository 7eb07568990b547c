"""Park et al. (2024), hierarchical orthogonality, on the offline models, next to the null baselines.

    python analyses/park2024_hierarchy.py [gemma-3-270m qwen2.5-0.5b ...]

Prints, per model, each statistic with its 95% interval, each nested null's mean and sd, and the
effect size and p-value against the most conservative null. geomsteer is imported; this script is
never imported by it.
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
        print(f"{name}: {len(h)} categories")
        for k, st in a.metrics_.items():
            nulls = "  ".join(f"{n}={v['mean']:.3f}±{v['sd']:.3f}" for n, v in st["null"].items())
            print(f"  {k:<28} {st['observed']:.3f}  {nulls}  effect {st['effect_size']:+.1f} sd, p {st['p_value']:.1e}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["gemma-3-270m"])
