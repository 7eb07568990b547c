"""The feature graph on Gemma 3 270M against a plain reference, measured in the same run.

    python benchmarks/bench_features.py --sae DIR6 DIR9 DIR12 DIR15 [--vector vectors.safetensors]
    python benchmarks/bench_features.py            # random SAEs (the same shapes; timing only)

The target (issue 15): the graph of 32 upstream features at layer 6 against every feature of the SAEs
at 3 later layers, on the 16 sentiment evaluation prompts (and 16 neutral texts), in under 3 minutes on
2 cores: the real ablations, the attribution pass and the null of random features.

Fast path: ``measure_graph`` (each ablation runs only on the rows where its feature fires, many
ablations packed into one forward pass that stops after the last SAE layer; forward-mode attribution
on the same rows). Reference: one ablation at a time through ``intervene`` and ``lab.measure`` (every
row, the whole model), timed on 4 features and scaled to 32. Prints the times, the ratio, and the
largest difference between the two on those 4 features.

Printed, not asserted: these machines are noisy.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", nargs="*", default=None, help="SAE directories at layers 6 and three later layers")
    ap.add_argument("--vector", default=None, help="vectors.safetensors at layer 6 (default: the most frequent features)")
    ap.add_argument("--upstream", type=int, default=32)
    ap.add_argument("--null-draws", type=int, default=50)
    args = ap.parse_args()

    from geomsteer import models
    from geomsteer.corpus import wordnet_glosses
    from geomsteer.interventions import intervene
    from geomsteer.resources import steering_file
    from geomsteer.saes import read_sae_dir
    from geomsteer.steering import load_eval
    from geomsteer.steering.features import FeatureLab, measure_graph

    t = time.perf_counter()
    model = models.load_model("gemma-3-270m")
    print(f"model loaded in {time.perf_counter() - t:.1f} s")
    if args.sae:
        saes = {sd.hook: sd.sae for sd in map(read_sae_dir, args.sae)}
    else:
        import torch
        from sae_lens import TopKSAE, TopKSAEConfig

        saes = {}
        for layer in (6, 9, 12, 15):
            torch.manual_seed(layer)
            cfg = TopKSAEConfig(d_in=640, d_sae=2048, k=32)
            cfg.metadata.hook_name = f"blocks.{layer}.hook_resid_post"
            s = TopKSAE(cfg)
            with torch.no_grad():
                W = torch.randn(2048, 640)
                s.W_dec.copy_(W / W.norm(dim=1, keepdim=True))
                s.W_enc.copy_(s.W_dec.T)
            saes[cfg.metadata.hook_name] = s
    hook = min(saes, key=lambda h: int(h.split(".")[1]))
    items, _ = load_eval(steering_file("sentiment_eval"))
    texts = list(wordnet_glosses(examples=False).shuffled(0))[:16]
    t = time.perf_counter()
    lab = FeatureLab(model, saes, hook, items, texts)
    print(f"clean run ({lab.n_tokens} tokens, SAEs at {', '.join(saes)}): {time.perf_counter() - t:.1f} s")
    if args.vector:
        from geomsteer.sparse import omp
        from geomsteer.steering import load_vectors

        v = load_vectors(args.vector)[hook].vector
        sc = omp(saes[hook].W_dec.detach().double().numpy(), v, 4 * args.upstream)
        feats = [int(a) for a in sc["atoms"] if lab.frequency[int(a)] > 0][: args.upstream]
    else:
        feats = [int(f) for f in np.argsort(-lab.frequency)[: args.upstream]]

    t = time.perf_counter()
    g = measure_graph(lab, feats, n_null=args.null_draws)
    total = time.perf_counter() - t
    secs = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in g.seconds.items())
    print(f"graph, {len(feats)} upstream x {sum(s.cfg.d_sae for h, s in saes.items() if h != hook)} downstream features "
          f"at {len(lab.later)} later layers, {args.null_draws} null features: {total:.1f} s ({secs}); "
          f"target < 180 s: {'met' if total < 180 else 'NOT met'}")

    sample = feats[:4]
    t = time.perf_counter()
    ref = []
    for u in sample:
        with intervene(model, saes[hook], hook, [u], "zero", start=lab.start):
            ref.append(lab.measure(logodds=False, kl=False).mean_change)
    t_ref = (time.perf_counter() - t) / len(sample)
    diff = max(float(np.abs(g.real[h][i] - r[h]).max()) for i, r in enumerate(ref) for h in lab.later)
    t_fast = g.seconds["real_ablations"] / len(feats)
    print(f"real ablation per feature: fast path {t_fast:.2f} s, plain reference (every row, whole model) {t_ref:.2f} s, "
          f"ratio {t_fast / t_ref:.2f}; largest difference {diff:.2e}")


if __name__ == "__main__":
    main()
