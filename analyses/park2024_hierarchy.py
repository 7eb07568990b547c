"""Park et al. (2024), hierarchical orthogonality, on the offline models, next to the null baselines.

    python analyses/park2024_hierarchy.py [gemma-3-270m qwen2.5-0.5b ...]

Prints, per model, each statistic with its 95% interval, its most conservative null's mean and
sd, and the effect size and p-value. geomsteer is imported; this script is never imported by it.
"""

import sys

import geomsteer as gs


def main(names):
    for name in names:
        h = gs.hierarchy(name, seed=0)
        print(f"{name}: {len(h.directions)} categories")
        print(h.statistics_table().to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main(sys.argv[1:] or ["gemma-3-270m"])
