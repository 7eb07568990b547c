"""Time of a Mapper run on 20,000 samples with a 4096-feature SAE lens, split by stage.

    python benchmarks/bench_mapper.py [--sae DIR]

Target (issue 7): under 2 minutes on a 2-core CPU, reporting the split (lens, cover + clustering,
nerve, HTML). With --sae (a directory from 'geomsteer sae train'), the samples are the SAE's own
20,000 held-out activations and their codes; without it, synthetic data of the same shapes
(640-d activations from a mixture, TopK-32 codes over 4096 random features). Also reports the
bootstrap time (5 refits). Printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from geomsteer.analyzers.topology import MapperAnalyzer


def synthetic(n: int = 20_000, d: int = 640, f: int = 4096, k: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, d)) * 20
    X = (centers[rng.integers(0, 12, n)] + rng.normal(size=(n, d)) * 8).astype(np.float32)
    pre = X @ rng.normal(size=(d, f)).astype(np.float32) / np.sqrt(d)
    thresh = -np.partition(-pre, k - 1, axis=1)[:, k - 1 : k]
    codes = np.where(pre >= thresh, np.maximum(pre, 0), 0).astype(np.float32)
    return X, codes, "synthetic"


def from_sae(sae_dir: Path):
    from geomsteer import activations, saes

    info = json.loads((sae_dir / "geomsteer.json").read_text())
    X = activations.ActivationStore(info["activation_stores"]["held_out"]).load(info["hook"])[:20_000]
    return X, saes.encode(saes.load_sae(sae_dir), X), f"held-out activations of {sae_dir}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sae", type=Path, default=None)
    args = p.parse_args()
    X, codes, what = from_sae(args.sae) if args.sae else synthetic()
    labels = [f"group {i % 3}" for i in range(len(X))]
    print(f"Mapper on {len(X):,} samples ({what}): activations {X.shape}, SAE lens input {codes.shape}")
    t0 = time.perf_counter()
    m = MapperAnalyzer(n_bootstrap=5).fit(X, codes, labels=labels, names=[str(i) for i in range(len(X))])
    total = time.perf_counter() - t0
    from geomsteer import reports

    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        reports.write_mapper_report(m, {"model": "benchmark", "hook": "n/a", "sae": str(args.sae), "concepts": [],
                                        "words_used": len(X), "words_asked": len(X), "words_dropped_multitoken": 0,
                                        "max_tokens": 0, "ambiguous_words_dropped": 0, "words_used_per_concept": {},
                                        "prefix": "", "rule": "n/a"}, Path(tmp) / "out")
        t_html = time.perf_counter() - t1
    s = m.seconds_
    r = m.result().metrics
    print(f"  lens (PCA of the codes)     {s['lens']:6.1f} s")
    print(f"  cover + DBSCAN clustering   {s['cover_and_clustering']:6.1f} s")
    print(f"  nerve (gudhi) + persistence {s['nerve']:6.1f} s")
    print(f"  report + HTML + figures     {t_html:6.1f} s")
    print(f"  bootstrap (5 refits)        {s['bootstrap']:6.1f} s")
    print(f"  total                       {total + t_html:6.1f} s (target < 120 s); without the bootstrap "
          f"{total + t_html - s['bootstrap']:.1f} s")
    print(f"  graph: {r['kmapper_graph']['nodes']} nodes, {r['kmapper_graph']['edges']} edges; nerve Betti "
          f"{r['gudhi_nerve']['betti'][:3]}")


if __name__ == "__main__":
    main()
