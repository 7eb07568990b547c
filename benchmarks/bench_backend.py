"""Extraction on the Ray backend against the local path, measured in one run, on the same batches.

    python benchmarks/bench_backend.py [--docs 600] [--workers 2]

Writes the same activation store twice (Gemma 3 270M, blocks.6.hook_resid_post, WordNet glosses):
once in this process (torch on all cores) and once on a local Ray instance with ``--workers``
single-threaded model actors. Prints tokens per second of each, their ratio, and whether the
shards are byte-identical (they must be: the batches are planned before any forward pass). Also
prints the per-token cost the scaling plan in docs/scaling.md is built on. Not asserted.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GEOMSTEER_QUIET", "1")


def main() -> None:
    from geomsteer import activations as A
    from geomsteer import models
    from geomsteer.backend import LocalBackend, ModelRef, get_backend
    from geomsteer.corpus import wordnet_glosses

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=600)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    r = models.resolve("gemma-3-270m")
    model = models.load_model(r)
    texts = wordnet_glosses().texts[: a.docs]
    hook = ["blocks.6.hook_resid_post"]
    kw = dict(model_name="gemma-3-270m", batch_size=16, context_length=64, shard_tokens=2048, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        local = A.extract_to_store(model, texts, hook, Path(tmp) / "local", backend=LocalBackend(), **kw)
        t_local = time.perf_counter() - t
        be = get_backend("ray", num_cpus=a.workers, workers=a.workers)
        with be.model_pool(ModelRef(r)) as pool:  # start the actors and load the model before timing
            pool.map([("shape", (), {})] * a.workers)
            t = time.perf_counter()
            remote = A.extract_to_store(model, texts, hook, Path(tmp) / "ray", backend=be, model_ref=ModelRef(r), **kw)
            t_ray = time.perf_counter() - t
        same = [s["sha256"] for s in local.manifest["shards"]] == [s["sha256"] for s in remote.manifest["shards"]]
        n = local.n_tokens
    print(f"{n:,} tokens at {hook[0]} (Gemma 3 270M, batches of 16 x 64 tokens, {len(local.manifest['shards'])} shards)")
    print(f"  local (torch on {os.cpu_count()} cores): {t_local:.1f} s, {n / t_local:,.0f} tokens/s")
    print(f"  ray ({a.workers} single-threaded actors, model already loaded): {t_ray:.1f} s, {n / t_ray:,.0f} tokens/s; "
          f"ratio local/ray time {t_local / t_ray:.2f}x")
    print(f"  shards byte-identical: {same}")
    print(f"  per token to block 6 of 18: {t_local / n * 1e3:.2f} ms here; {7 * 2 * 5.5e6 / 1e9:.3f} GFLOP "
          "(2 x 5.5M non-embedding parameters per block x 7 blocks)")


if __name__ == "__main__":
    main()
