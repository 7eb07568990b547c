"""Steering hot paths against plain references, measured in the same run.

    python benchmarks/bench_steering.py [--no-model]

1. Matching pursuit of a 640-d vector over 4096 decoder directions, 32 atoms: geomsteer's
   ``omp`` against scikit-learn's ``orthogonal_mp`` (reference), same atoms asked; prints both
   times, their ratio, and whether the chosen atoms agree.
2. Target log-odds on Gemma 3 270M (vocabulary 262,144): unembedding only each prompt's last
   position against the full forward pass that unembeds every position (same batches); prints the times, the
   ratio and the largest difference. Skipped with --no-model.
3. Null vectors on Gemma 3 270M: the target log-odds of 16 prompts under 20 vectors at layer 6,
   through ``SteeredTargets`` (the prompts run to the layer once, then the later blocks for many
   vectors to a batch) against a ``steering`` hook around ``target_logodds`` per vector
   (reference); prints both times, the ratio and the largest difference. Skipped with --no-model.

Printed, not asserted: these machines are noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_omp() -> None:
    from sklearn.linear_model import orthogonal_mp

    from geomsteer.sparse import omp

    rng = np.random.default_rng(0)
    D = rng.standard_normal((4096, 640))
    U = D / np.linalg.norm(D, axis=1, keepdims=True)
    v = U[rng.choice(4096, 20, replace=False)].T @ rng.uniform(1, 3, 20) + 0.3 * rng.standard_normal(640)
    ours = omp(D, v, 32)
    t_ours = best_of(lambda: omp(D, v, 32))
    ref = orthogonal_mp(U.T, v, n_nonzero_coefs=32)
    t_ref = best_of(lambda: orthogonal_mp(U.T, v, n_nonzero_coefs=32))
    same = set(ours["atoms"]) == set(np.flatnonzero(ref))
    print(f"omp, 32 of 4096 atoms in 640-d: geomsteer {t_ours * 1e3:.1f} ms, scikit-learn orthogonal_mp "
          f"{t_ref * 1e3:.1f} ms, ratio {t_ours / t_ref:.2f}; same atoms: {same}; explained {ours['explained'][-1]:.3f}")


def bench_logodds() -> None:
    from geomsteer import models
    from geomsteer import steering as S
    from geomsteer.resources import steering_file

    model = models.load_model("gemma-3-270m")
    items, _ = S.load_eval(steering_file("sentiment_eval"))
    ids = S.target_ids(model, items)
    fast = S.target_logodds(model, items, ids=ids)
    t_fast = best_of(lambda: S.target_logodds(model, items, ids=ids))

    def full():  # the same batches through the whole forward pass, every position unembedded
        from geomsteer.steering import apply as SA

        shortcut = SA.unembeds_itself
        SA.unembeds_itself = lambda m: False
        try:
            return S.target_logodds(model, items, ids=ids)[:, 0]
        finally:
            SA.unembeds_itself = shortcut

    ref = full()
    t_ref = best_of(full)
    print(f"target log-odds, {len(items)} prompts on gemma-3-270m: last-position unembedding {t_fast:.2f} s, full "
          f"forward (same batches) {t_ref:.2f} s, ratio {t_fast / t_ref:.2f}; largest difference "
          f"{np.abs(fast[:, 0] - ref).max():.2e}")


def bench_null_vectors() -> None:
    from geomsteer import models
    from geomsteer import steering as S
    from geomsteer.resources import steering_file

    model = models.load_model("gemma-3-270m")
    items, _ = S.load_eval(steering_file("sentiment_eval"))
    hook = "blocks.6.hook_resid_post"
    ev = S.SteeredTargets(model, items, hook)
    V = S.covariance_directions(ev.X, 60.0, 20, seed=0)
    t = time.perf_counter()
    fast = ev(V, 4.0)
    t_fast = time.perf_counter() - t

    def plain():
        out = []
        for v in V:
            with S.steering(model, v, 4.0, hook, start=len(ev.head)):
                out.append(S.target_logodds(model, items, ids=ev.ids))
        return np.stack(out)

    t = time.perf_counter()
    ref = plain()
    t_ref = time.perf_counter() - t
    print(f"target log-odds of {len(items)} prompts under {len(V)} vectors at {hook}: SteeredTargets {t_fast:.2f} s, "
          f"a steering hook per vector {t_ref:.2f} s, ratio {t_fast / t_ref:.2f}; largest difference "
          f"{np.abs(fast - ref).max():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-model", action="store_true", help="skip the real-model benchmark")
    args = ap.parse_args()
    bench_omp()
    if not args.no_model:
        bench_logodds()
        bench_null_vectors()


if __name__ == "__main__":
    main()
