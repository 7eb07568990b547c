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
4. The sweep's sample generations on Gemma 3 270M (2 prompts x 24 tokens, 11 runs: unsteered and
   5 layers x 2 multipliers): ``generate_runs`` (one key-value-cached batch) against ``generate``
   per run with ``kv_cache=False`` (each step reruns the sequence); prints both times, the ratio and
   whether every text is the same.
5. The KL on 16 neutral texts under 2 vectors at layer 6: ``NeutralText.kl_steered`` (prefix
   stored, chunked log-normalizer) against a ``steering`` hook around ``NeutralText.kl``; prints both
   times, the ratio and the largest difference.
6. One forward pass of 16 x 25 tokens and one key-value-cached step of 4 tokens, with the weights
   in TransformerLens's own layout against the layout ``load_model`` stores (``_store_as_read``);
   prints the times, the ratios and whether the outputs are bit-identical.
With 3.: the log-odds alone (no normalizer, what the sweep's null draws read) against the normalized call.

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
    t = time.perf_counter()
    bare = ev(V, 4.0, normalized=False)
    t_bare = time.perf_counter() - t
    print(f"  the log-odds alone (no normalizer, as the sweep's null draws read it): {t_bare:.2f} s, ratio "
          f"{t_bare / t_fast:.2f} of the normalized call; largest difference {np.abs(bare[..., 0] - fast[..., 0]).max():.2e}")


def bench_generation() -> None:
    from geomsteer import models
    from geomsteer import steering as S
    from geomsteer.resources import steering_file

    model = models.load_model("gemma-3-270m")
    items, _ = S.load_eval(steering_file("sentiment_eval"))
    prompts = [it.prompt for it in items[:2]]
    rng = np.random.default_rng(0)
    runs = [(None, 0.0, None)]
    for layer in (3, 6, 9, 12, 15):
        v = rng.standard_normal(640).astype(np.float32)
        v *= 40 / np.linalg.norm(v)
        runs += [(v, -4.0, f"blocks.{layer}.hook_resid_post"), (v, 4.0, f"blocks.{layer}.hook_resid_post")]
    t = time.perf_counter()
    together = S.generate_runs(model, prompts, runs, 24)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    alone = [S.generate(model, prompts, 24, v, a, h, kv_cache=False) for v, a, h in runs]
    t_ref = time.perf_counter() - t
    print(f"sample generations, {len(runs)} runs x {len(prompts)} prompts x 24 tokens: generate_runs {t_fast:.1f} s, "
          f"cache-free generate per run {t_ref:.1f} s, ratio {t_fast / t_ref:.2f}; same texts: {together == alone}")


def bench_neutral_kl() -> None:
    import torch

    from geomsteer import models
    from geomsteer import steering as S
    from geomsteer.corpus import wordnet_glosses

    model = models.load_model("gemma-3-270m")
    neutral = S.NeutralText(model, list(wordnet_glosses(examples=False).shuffled(0))[:16], max_tokens=24)
    hook = "blocks.6.hook_resid_post"
    rng = np.random.default_rng(1)
    V = rng.standard_normal((2, 640)).astype(np.float32)
    V *= 40 / np.linalg.norm(V, axis=1, keepdims=True)
    neutral.kl_steered(model, V[:1], 1.0, hook)  # the stored prefix, computed once per layer
    t = time.perf_counter()
    fast = neutral.kl_steered(model, V, 4.0, hook)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    ref = []
    for v in V:  # the plain formula: full forward, full logits, log-softmax
        total = 0.0
        with S.steering(model, v, 4.0, hook, start=neutral.start):
            for ids, mask, valid, p_ref, _ in neutral.batches:
                logp = torch.log_softmax(S.logits_at(model, ids, mask.long(), valid), -1)
                total += float((p_ref * (torch.log(p_ref) - logp)).nan_to_num().sum(dtype=torch.float64))
        ref.append(total / neutral.n_positions)
    t_ref = time.perf_counter() - t
    print(f"KL on {neutral.n_positions} neutral positions under 2 vectors at {hook}: kl_steered {t_fast:.2f} s, "
          f"plain formula under a steering hook {t_ref:.2f} s, ratio {t_fast / t_ref:.2f}; largest difference "
          f"{np.abs(np.subtract(fast, ref)).max():.2e} (KL {fast[0]:.4f})")


def bench_weight_layout() -> None:
    import torch
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    from geomsteer import models

    model = models.load_model("gemma-3-270m")
    ids = torch.randint(100, 5000, (16, 25), generator=torch.Generator().manual_seed(0))
    step = torch.randint(100, 5000, (4, 1), generator=torch.Generator().manual_seed(1))

    def run():
        with torch.no_grad():
            full = model(ids, stop_at_layer=model.cfg.n_layers)
            cache = TransformerLensKeyValueCache.init_cache(model.cfg, "cpu", 4)
            model(ids[:4], past_kv_cache=cache, attention_mask=torch.ones_like(ids[:4]),
                  stop_at_layer=model.cfg.n_layers)
            t = time.perf_counter()
            out = model(step, past_kv_cache=cache, attention_mask=torch.ones_like(step),
                        stop_at_layer=model.cfg.n_layers)
            return full, out, time.perf_counter() - t

    def timed():
        t = time.perf_counter()
        full, out, t_step = run()
        return full, out, time.perf_counter() - t - t_step, t_step

    stored = min((timed() for _ in range(3)), key=lambda r: r[2])
    saved = {k: p.data for k, p in model.named_parameters()}
    for p in model.parameters():
        p.data = p.data.contiguous()  # TransformerLens's own layout
    try:
        plain = min((timed() for _ in range(3)), key=lambda r: r[2])
    finally:
        for k, p in model.named_parameters():
            p.data = saved[k]
    same = torch.equal(stored[0], plain[0]) and torch.equal(stored[1], plain[1])
    print(f"forward of 16 x 25 tokens: weights stored as read {stored[2]:.2f} s, TransformerLens's layout "
          f"{plain[2]:.2f} s, ratio {stored[2] / plain[2]:.2f}; a cached 4-token step {stored[3] * 1e3:.0f} ms vs "
          f"{plain[3] * 1e3:.0f} ms, ratio {stored[3] / plain[3]:.2f}; bit-identical: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-model", action="store_true", help="skip the real-model benchmark")
    args = ap.parse_args()
    bench_omp()
    if not args.no_model:
        bench_logodds()
        bench_null_vectors()
        bench_generation()
        bench_neutral_kl()
        bench_weight_layout()


if __name__ == "__main__":
    main()
