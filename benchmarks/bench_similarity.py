"""Speed and memory of streamed linear CKA against a Gram-matrix reference, measured in one run.

    python benchmarks/bench_similarity.py

Targets (issue 6): debiased linear CKA at n = 100,000, d = 896 under 10 s on 2 cores with peak
memory that does not grow with n beyond the inputs; at n = 20,000 at least 50x faster than the
Gram-matrix reference below, with the same value to 1e-6. Printed, not asserted.

Permutation nulls (issue 12): 1,000 shuffles of linear and debiased CKA at n = 1,500, d = 640 vs 896
from one pair of Gram matrices, against calling the plain metric once per shuffle; the RSA null of
re-paired features from one rank matrix against calling rsa() per draw. Same values to 1e-6.

Best-pair nulls (issue 17): RBF CKA, CKNNA and SVCCA re-pairings from kernels, masks and
reductions computed once, against one plain call per draw, at n = 3,000. Analysis parts (issue
17): the float32 Gram product, float32 k-NN sets and shared RSA ranks against the code they
replaced, at n = 3,609. The analyzer's pieces side by side on threads (issue 17) against one
thread, at the default run's size with fewer layers; the same numbers either way.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from geomsteer.metrics import linear_cka, linear_cka_permutations, rsa_permutations


def gram_reference(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA the way Gram-matrix implementations compute it: two n x n kernels."""
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    n = len(X)

    def hsic(K, L):
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        return (np.sum(K * L) + K.sum() * L.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * K.sum(0) @ L.sum(0)) / (n * (n - 3))

    K, L = X @ np.ascontiguousarray(X.T), Y @ np.ascontiguousarray(Y.T)  # gemm: numpy's syrk path crashed at this n
    kl = hsic(K, L)
    kk = hsic(K, K.copy())
    ll = hsic(L, L.copy())
    return kl / np.sqrt(kk * ll)


def make(n: int, d1: int, d2: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 64))
    X = Z @ rng.standard_normal((64, d1)) + rng.standard_normal((n, d1))
    Y = Z @ rng.standard_normal((64, d2)) + rng.standard_normal((n, d2))
    return X, Y


def main() -> None:
    n, d = 100_000, 896
    X, Y = make(n, d, 640)
    tracemalloc.start()
    t = time.perf_counter()
    v = linear_cka(X, Y, debiased=True)
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    inputs = X.nbytes + Y.nbytes
    print(f"debiased linear CKA, n={n:,}, d={d} vs 640: {dt:.2f} s (target < 10 s), value {v:.6f}")
    print(f"  peak memory allocated during the call: {peak / 2**20:.0f} MiB (inputs: {inputs / 2**20:.0f} MiB)")

    n = 20_000
    X, Y = X[:n], Y[:n]
    times = []
    for _ in range(3):  # best of three for the fast path; the reference runs once (it takes ~50 s)
        t = time.perf_counter()
        fast = linear_cka(X, Y, debiased=True)
        times.append(time.perf_counter() - t)
    t_fast = min(times)
    t = time.perf_counter()
    ref = gram_reference(X, Y)
    t_ref = time.perf_counter() - t
    print(f"n={n:,}: streamed {t_fast:.2f} s (best of 3), Gram reference {t_ref:.2f} s, ratio {t_ref / t_fast:.0f}x "
          f"(target >= 50x); |difference| {abs(fast - ref):.2e} (target <= 1e-6)")

    permutation_benchmark()


def permutation_benchmark() -> None:
    n, B = 1500, 1000
    X, Y = make(n, 640, 896, seed=1)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(n) for _ in range(B)]
    t = time.perf_counter()
    fast = linear_cka_permutations(X, Y, perms)
    t_fast = time.perf_counter() - t
    k = 20  # the plain path is timed on a few shuffles and scaled
    t = time.perf_counter()
    ref = [linear_cka(X, Y[p], debiased=True) for p in perms[:k]]
    t_ref = (time.perf_counter() - t) * B / k
    diff = np.abs(np.array(ref) - fast["linear_cka_debiased_null"][:k]).max()
    print(f"{B} shuffles of linear + debiased CKA, n={n}: Gram path {t_fast:.1f} s, plain per-shuffle calls "
          f"{t_ref:.1f} s (debiased only, scaled from {k}), ratio {t_ref / t_fast:.1f}x; max |difference| {diff:.1e}")
    n = 800
    A, Bm = make(n, 640, 896, seed=2)
    perms = [rng.permutation(n) for _ in range(B)]
    t = time.perf_counter()
    _, null = rsa_permutations(A, Bm, perms)
    t_fast = time.perf_counter() - t
    k = 10
    t = time.perf_counter()
    ref = [rsa_reference(A, Bm[p]) for p in perms[:k]]
    t_ref = (time.perf_counter() - t) * B / k
    print(f"{B} re-pairings of RSA, n={n}: rank-matrix path {t_fast:.1f} s, scipy spearmanr per draw {t_ref:.1f} s "
          f"(scaled from {k}), ratio {t_ref / t_fast:.1f}x; max |difference| {np.abs(np.array(ref) - null[:k]).max():.1e}")


def rsa_reference(X: np.ndarray, Y: np.ndarray) -> float:
    """Spearman RSA as the formula reads: upper triangles of 1 - Pearson r, scipy's spearmanr."""
    from scipy.stats import spearmanr

    iu = np.triu_indices(len(X), 1)
    return float(spearmanr((1 - np.corrcoef(X))[iu], (1 - np.corrcoef(Y))[iu])[0])


def paired_best(fast, ref, k: int = 3) -> tuple[float, object, float, object]:
    """Shortest of ``k`` alternating calls of each path (and their last results): on this VM memory
    a process touches for the first time is slow, which would otherwise charge whichever path
    runs first."""
    tf, tr, out_f, out_r = [], [], None, None
    for _ in range(k):
        t = time.perf_counter()
        out_r = ref()
        tr.append(time.perf_counter() - t)
        t = time.perf_counter()
        out_f = fast()
        tf.append(time.perf_counter() - t)
    return min(tf), out_f, min(tr), out_r


def analysis_parts_benchmark() -> None:
    """Three parts of the similarity analysis at the default run's size (n = 3,609; d = 640 and
    896), each against the code it replaced (issue 17), the best of alternating calls: the centred Gram
    product in float32 against float64 rounded to float32; cosine k-NN sets in float32 against
    float64; Spearman RSA ranks from one sort against scipy's rankdata and spearmanr (the observed
    value and the re-randomized model, which share A's ranks)."""
    from geomsteer.metrics import GramSide, debiased_cka_scan, knn_indices, rank_dissimilarities, rsa_ranked
    from geomsteer.metrics import cka as C
    from geomsteer.metrics.common import self_gram

    n = 3609
    X, Y = make(n, 640, 896, seed=6)
    _, R = make(n, 640, 896, seed=7)

    def gram64(M):  # the previous code path
        A = np.asarray(M, dtype=np.float64)
        return self_gram(A - A.mean(0)).astype(np.float32)

    def scan():
        return debiased_cka_scan(GramSide([X]), GramSide([Y]))[0, 0]

    def scan64():
        keep = C._centred_gram
        C._centred_gram = gram64
        try:
            return scan()
        finally:
            C._centred_gram = keep

    t_fast, fast, t_ref, ref = paired_best(scan, scan64)
    print(f"two Gram sides and a debiased CKA, n={n:,}: float32 product {t_fast:.2f} s, float64 product "
          f"{t_ref:.2f} s, ratio {t_fast / t_ref:.2f}; |difference| {abs(fast - ref):.1e}")

    def knn64():
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        S = U @ U.T
        np.fill_diagonal(S, -np.inf)
        return np.argpartition(-S, 9, axis=1)[:, :10]

    t_fast, fast, t_ref, ref = paired_best(lambda: knn_indices(X, 10), knn64)
    same = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(fast, ref)])
    print(f"10-NN sets, n={n:,}: float32 {t_fast:.2f} s, float64 {t_ref:.2f} s, ratio {t_fast / t_ref:.2f}; "
          f"{same:.5f} of the neighbours the same")

    def shared():
        Ra = rank_dissimilarities(X)
        return [rsa_ranked(Ra, rank_dissimilarities(Y))[0], rsa_ranked(Ra, rank_dissimilarities(R))[0]]

    t_fast, fast, t_ref, ref = paired_best(shared, lambda: [rsa_reference(X, Y), rsa_reference(X, R)], k=2)
    print(f"Spearman RSA against two others, n={n:,}: shared ranks {t_fast:.1f} s, scipy {t_ref:.1f} s, ratio "
          f"{t_fast / t_ref:.2f}; max |difference| {np.abs(np.array(fast) - ref).max():.1e}")


def scan_benchmark() -> None:
    """A layer x layer debiased-CKA scan (18 x 24 layers, n = 2,000) from stacked Gram matrices
    against the feature-space cross-products of linear_cka_matrix (reference), plain and shuffled."""
    from geomsteer.metrics import GramSide, debiased_cka_scan, linear_cka_matrix

    n = 2000
    rng = np.random.default_rng(3)
    base = rng.standard_normal((n, 32))
    As = [(base @ rng.standard_normal((32, 640)) + rng.standard_normal((n, 640))).astype(np.float32) for _ in range(18)]
    Bs = [(base @ rng.standard_normal((32, 896)) + rng.standard_normal((n, 896))).astype(np.float32) for _ in range(24)]
    perm = rng.permutation(n)
    t = time.perf_counter()
    A, B = GramSide(As), GramSide(Bs)
    t_prep = time.perf_counter() - t
    t = time.perf_counter()
    fast = [debiased_cka_scan(A, B), debiased_cka_scan(A, B, perm)]
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    ref = [linear_cka_matrix(As, Bs, debiased=True, dtype=np.float32),
           linear_cka_matrix(As, Bs, debiased=True, dtype=np.float32, permutation=perm)]
    t_ref = time.perf_counter() - t
    diff = max(np.abs(f - r).max() for f, r in zip(fast, ref))
    print(f"scan of 18 x 24 layers, n={n:,}, plain + shuffled: Grams {t_prep:.1f} s once, then {t_fast:.1f} s; "
          f"feature-space products {t_ref:.1f} s; ratio {t_ref / (t_prep + t_fast):.1f}x (Grams included); "
          f"max |difference| {diff:.1e}")


def detail_benchmark() -> None:
    """The best-pair metrics whose nulls reuse the observed value's decompositions (issue 17), at the
    default run's size (n = 3,000, d = 640 vs 896) and draw counts, against one plain call per draw."""
    from geomsteer.metrics import cknna, cknna_permutations, rbf_cka, rbf_cka_permutations, svcca, svcca_permutations
    from geomsteer.metrics.geometry import svcca_halves, within_halves

    n = 3000
    X, Y = make(n, 640, 896, seed=4)
    rng = np.random.default_rng(5)
    perms = [rng.permutation(n) for _ in range(20)]
    halves = svcca_halves(n)
    cases = [
        ("RBF CKA", 5, lambda ps: rbf_cka_permutations(X, Y, ps), lambda p: rbf_cka(X, Y[p])),
        ("CKNNA", 5, lambda ps: cknna_permutations(X, Y, ps, 10), lambda p: cknna(X, Y[p], 10)),
        ("SVCCA", 20, lambda ps: (None, svcca_permutations(X, Y, ps)),
         lambda p: svcca(X, Y[within_halves(p, halves)])),
    ]
    for name, draws, fast_fn, plain_fn in cases:
        t = time.perf_counter()
        _, fast = fast_fn(perms[:draws])
        t_fast = time.perf_counter() - t
        k = min(draws, 3)  # the plain path is timed on a few draws and scaled
        t = time.perf_counter()
        ref = [plain_fn(p) for p in perms[:k]]
        t_ref = (time.perf_counter() - t) * draws / k
        print(f"{draws} re-pairings of {name}, n={n:,}: shared decompositions {t_fast:.1f} s, plain call per draw "
              f"{t_ref:.1f} s (scaled from {k}), ratio {t_ref / t_fast:.1f}x; max |difference| "
              f"{np.abs(np.array(ref) - np.asarray(fast)[:k]).max():.1e}")


def threads_benchmark() -> None:
    """SimilarityAnalyzer.fit at the default run's size (n = 3,609, d = 640 vs 896, 1,000 shuffled
    pairings, 200 for the scan maximum, random models, 13 groups) on 6 x 8 layers: its independent
    pieces on two threads (BLAS on one thread each) against everything in one thread (BLAS on two)."""
    from geomsteer.analyzers.similarity import SimilarityAnalyzer
    from geomsteer.types import Activations

    n = 3609
    rng = np.random.default_rng(6)
    base = rng.standard_normal((n, 32))
    labels = [f"w{i}" for i in range(n)]

    def side(d: int, layers: int, name: str) -> list:
        return [Activations((base @ rng.standard_normal((32, d)) + rng.standard_normal((n, d))).astype(np.float32),
                            labels, name, f"blocks.{i}.hook_resid_post", {}) for i in range(layers)]

    a, b, ra, rb = side(640, 6, "A"), side(896, 8, "B"), side(640, 6, "rA"), side(896, 8, "rB")
    groups = [f"g{i % 13}" for i in range(n)]
    out = {}
    for jobs in (1, 2):
        t = time.perf_counter()
        res = SimilarityAnalyzer(n_jobs=jobs).fit(a, b, random_a=ra, random_b=rb, groups=groups).result().to_dict()
        out[jobs] = (time.perf_counter() - t, res)
        res["params"].pop("n_jobs")
    (t1, r1), (t2, r2) = out[1], out[2]
    diff = max(abs(r1["metrics"][m]["observed"] - r2["metrics"][m]["observed"]) for m in r1["metrics"])
    print(f"similarity analysis, n={n:,}, 6 x 8 layers and random models: one thread {t1:.1f} s, two threads "
          f"{t2:.1f} s, ratio {t2 / t1:.2f}; max |difference| of the best pair's metrics {diff:.1e} (BLAS on one "
          "thread or two rounds differently; with the same BLAS threads the numbers are identical, tested)")


if __name__ == "__main__":
    threads_benchmark()
    main()
    scan_benchmark()
    detail_benchmark()
    analysis_parts_benchmark()
