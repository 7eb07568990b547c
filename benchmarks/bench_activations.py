"""Extraction throughput at blocks.6.hook_resid_post on Gemma 3 270M against a bare TransformerLens forward.

    python benchmarks/bench_activations.py [--docs 400] [--batch 16] [--context 64]

Target (issue 4): geomsteer's extraction >= 90% of the throughput of ``model(tokens,
stop_at_layer=7)`` on the same token batches. Printed as a ratio, not asserted.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GEOMSTEER_QUIET", "1")


def main() -> None:
    import torch

    from geomsteer import activations as A
    from geomsteer import models
    from geomsteer.corpus import wordnet_glosses

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=64)
    a = p.parse_args()
    torch.set_grad_enabled(False)
    m = models.load_model("gemma-3-270m")
    texts = list(wordnet_glosses().shuffled(0).texts[: a.docs])
    hook = "blocks.6.hook_resid_post"
    batches = [A.tokenize(m, texts[i : i + a.batch], a.context) for i in range(0, len(texts), a.batch)]
    n_tok = sum(int(mask.sum()) for _, mask, _ in batches)
    list(A.iter_activations(m, texts[: a.batch], [hook], a.batch, a.context))  # warm-up

    def bare() -> float:
        t = time.perf_counter()
        for ids, mask, _ in batches:
            m(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask).long(), stop_at_layer=7)
        return time.perf_counter() - t

    def ours() -> float:
        t = time.perf_counter()
        for _ in A.iter_activations(m, texts, [hook], a.batch, a.context):
            pass
        return time.perf_counter() - t

    t_bare = min(bare(), bare())
    t_ours = min(ours(), ours())
    print(f"{len(texts)} WordNet glosses, {n_tok:,} real tokens, batch {a.batch}, context {a.context}")
    print(f"bare TransformerLens forward (stop_at_layer=7): {n_tok / t_bare:8.0f} tokens/s")
    print(f"geomsteer iter_activations at {hook}:  {n_tok / t_ours:8.0f} tokens/s")
    print(f"ratio: {t_bare / t_ours:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
