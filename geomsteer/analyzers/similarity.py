"""Representational similarity between two models (or the layers of one), beside null baselines.

:class:`SimilarityAnalyzer` takes the representations of the same samples (words aligned across
tokenizers by :func:`geomsteer.activations.unit_activations`) at several layers of model A and of
model B, and computes:

- layer x layer scans of debiased linear CKA and mutual k-NN alignment, across the two models
  and within each one, with a shuffled-pairing baseline for every cell and a re-randomized-model
  baseline (the same architecture with every weight tensor's entries shuffled);
- every metric of :mod:`geomsteer.metrics` at the best-aligned layer pairs, each with a
  permutation distribution (``n_permutations`` shuffled pairings) and the re-randomized model;
- the same at the best pair restricted to one semantic group (WordNet category) at a time.

:class:`FeatureMatcher` pairs the SAE features of two models by activation correlation on shared
text (greedy and Hungarian, Lan et al. 2024, arXiv 2410.06981) and compares the paired decoder
directions with SVCCA and RSA beside a random-pairing baseline.

Both follow the scikit-learn contract: ``__init__`` stores parameters, ``fit`` validates and
returns ``self``, ``result()`` returns an :class:`~geomsteer.types.AnalysisResult`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..errors import ConfigError, DataError
from ..types import Activations, AnalysisResult
from .base import Analyzer

__all__ = ["SimilarityAnalyzer", "FeatureMatcher", "DETAIL_METRICS"]

# name -> (function of X, Y, higher is more similar)
DETAIL_METRICS: dict[str, tuple[Any, bool]] = {
    "linear_cka": (lambda X, Y, k: M.linear_cka(X, Y), True),
    "linear_cka_debiased": (lambda X, Y, k: M.linear_cka(X, Y, debiased=True), True),
    "rbf_cka": (lambda X, Y, k: M.rbf_cka(X, Y), True),
    "mutual_knn": (lambda X, Y, k: M.mutual_knn(X, Y, k), True),
    "knn_jaccard": (lambda X, Y, k: M.knn_jaccard(X, Y, k), True),
    "cknna": (lambda X, Y, k: M.cknna(X, Y, k), True),
    "svcca": (lambda X, Y, k: M.svcca(X, Y), True),
    "procrustes": (lambda X, Y, k: M.procrustes(X, Y), False),
    "rsa": (lambda X, Y, k: M.rsa(X, Y), True),
}
SCAN_METRICS = ("linear_cka_debiased", "mutual_knn")
# metrics with a fast permutation path (Gram matrices, neighbour sets): n_permutations shuffles each
FAST_METRICS = frozenset({"linear_cka", "linear_cka_debiased", "mutual_knn"})
# metrics that build several n x n matrices per call: at most this many shuffles each
GRAM_METRICS = frozenset({"rbf_cka", "cknna"})
MAX_GRAM_SHUFFLES = 5
# SVCCA, Procrustes and RSA (from one rank matrix): at most this many shuffles each; k-NN Jaccard
# relabels its neighbour sets and gets all n_permutations
MAX_OTHER_SHUFFLES = 20
# permutation tests on Gram matrices use at most this many samples (a seeded subsample, recorded)
PERMUTATION_MAX_SAMPLES = 1500


def _check_side(acts: Sequence[Activations], name: str) -> list[Activations]:
    acts = list(acts)
    if not acts:
        raise DataError(f"{name}: expected one Activations per layer, got none")
    labels = list(acts[0].labels)
    for a in acts:
        if not isinstance(a, Activations):
            raise DataError(f"{name}: expected geomsteer.types.Activations, got {type(a).__name__}")
        if list(a.labels) != labels:
            raise DataError(f"{name}: the layers must describe the same samples in the same order; {a.hook} differs "
                            f"from {acts[0].hook}")
    return acts


def _summary(observed: float, null: np.ndarray, higher: bool) -> dict[str, Any]:
    """The null's mean, sd and count, and the p-value of :func:`geomsteer.stats.null_summary`."""
    from ..stats import null_summary

    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not len(null):
        return {"mean": None, "sd": None, "p": None, "n": 0, "n_draws": 0}
    ns = null_summary(float(observed), null, "greater" if higher else "less")
    return {**ns, "sd": ns["sd"] if ns["sd"] is not None else 0.0, "p": ns["p_value"], "n": int(len(null))}


def _stat(entry: Mapping[str, Any], n: int, **extra: Any) -> dict[str, Any]:
    """The shared statistic shape for one metric's entry (observed, shuffled-pairing null, random model)."""
    from ..stats import statistic

    nulls = {}
    if entry.get("permutation", {}).get("n"):
        nulls["shuffled_pairing"] = {k: v for k, v in entry["permutation"].items() if k not in ("p", "n")}
    contrasts = {"random_model": entry["random_model"]} if entry.get("random_model") is not None else {}
    return statistic(entry["score"], n, nulls=nulls, ci95=None,
                     ci95_reason="not computed: resampling words repeats rows, which biases kernel metrics",
                     alternative="greater" if entry.get("higher_is_more_similar", True) else "less",
                     contrasts=contrasts, **extra)


class SimilarityAnalyzer(Analyzer):
    """Layer x layer similarity of two models (or one) with shuffled-pairing and random-model nulls.

    Parameters: ``k`` neighbours for the k-NN metrics; ``n_permutations`` shuffled pairings for
    linear CKA, debiased CKA, mutual k-NN and k-NN Jaccard at the best pairs and in each group (from
    Gram matrices and neighbour sets; the CKAs and mutual k-NN on at most 1,500 samples); SVCCA,
    Procrustes and RSA take at most 20, and 5 for RBF CKA and CKNNA, which build n x n matrices per
    call; the scans show one shuffled
    pairing per cell); ``scan_permutations`` shuffled pairings for the max-statistic null of the
    best pair (on at most ``scan_max_samples`` samples); ``top_pairs`` how many best-aligned cross-model layer pairs get every metric;
    ``min_group`` the smallest semantic group compared on its own; ``detail_max_samples`` caps
    the samples given to the metrics that build n x n matrices (a seeded subsample, recorded);
    ``n_jobs`` threads run the independent pieces side by side (default: every core; the results
    do not depend on it).
    """

    _fit_call = "fit(a, b, ...)"
    _fitted = "scans_"

    def __init__(self, k: int = 10, n_permutations: int = 1000, top_pairs: int = 3, min_group: int = 50,
                 detail_max_samples: int = 3000, scan_permutations: int = 200, scan_max_samples: int = 1000,
                 seed: int = 0, n_jobs: int | None = None):
        self.k = k
        self.n_permutations = n_permutations
        self.scan_permutations = scan_permutations
        self.scan_max_samples = scan_max_samples
        self.top_pairs = top_pairs
        self.min_group = min_group
        self.detail_max_samples = detail_max_samples
        self.seed = seed
        self.n_jobs = n_jobs

    # ----------------------------------------------------------------------------------------

    def fit(self, a: Sequence[Activations], b: Sequence[Activations] | None = None,
            random_a: Sequence[Activations] | None = None, random_b: Sequence[Activations] | None = None,
            groups: Sequence[str] | None = None, backend: Any = None) -> "SimilarityAnalyzer":
        """Compare the layers of ``a`` with those of ``b`` (and each with itself).

        ``random_a``/``random_b`` are the same samples through the re-randomized models (same
        layers); ``groups`` gives each sample's semantic group ("" for none). ``backend``: a
        :class:`geomsteer.backend.RayBackend` runs every metric of the best pairs and the groups
        (each with its permutation null) as Ray tasks; the numbers equal a local run's.
        """
        if self.k < 1 or self.n_permutations < 1 or self.top_pairs < 1 or self.scan_permutations < 1:
            raise ConfigError(f"k, n_permutations, scan_permutations and top_pairs must be positive, got {self.k}, "
                              f"{self.n_permutations}, {self.scan_permutations} and {self.top_pairs}")
        a = _check_side(a, "a")
        sides = {"a": a}
        if b is not None:
            sides["b"] = _check_side(b, "b")
        for name, r in (("a", random_a), ("b", random_b)):
            if r is not None:
                if name not in sides:
                    raise DataError("random_b given without b")
                sides["random_" + name] = _check_side(r, "random_" + name)
                if [x.hook for x in sides["random_" + name]] != [x.hook for x in sides[name]]:
                    raise DataError(f"random_{name} must have the same layers as {name}")
        labels = list(a[0].labels)
        for name, acts in sides.items():
            if list(acts[0].labels) != labels:
                raise DataError(f"{name} describes other samples than a (or in another order): align the words "
                                "of both models first (unit_activations drops a word from both sides)")
        n = len(labels)
        M.check_k(self.k, n, "mutual k-NN")
        if n < 4:
            raise DataError(f"similarity needs at least 4 aligned samples, got {n}")
        if groups is not None and len(groups) != n:
            raise DataError(f"groups must give one label per sample ({n}), got {len(groups)}")
        rng = np.random.default_rng(self.seed)
        self.n_samples_ = n
        self.layers_ = {name: [x.hook for x in acts] for name, acts in sides.items()}
        self.models_ = {name: acts[0].model for name, acts in sides.items()}
        X = {name: [np.asarray(x.X) for x in acts] for name, acts in sides.items()}
        from .._threads import thread_map

        # independent pieces (a layer's neighbours or Gram, a scan, a metric's null) run side by side on
        # threads; each computes what it would alone, and every draw comes from rng in a fixed order
        with thread_map(self.n_jobs) as tmap:
            reps = [(name, i) for name, Xs in X.items() for i in range(len(Xs))]
            found = tmap(lambda r: M.knn_indices(X[r[0]][r[1]], self.k), reps)
            knn = {name: [found[reps.index((name, i))] for i in range(len(Xs))] for name, Xs in X.items()}
            # every layer's centred Gram matrix once: each scan is then one product of the stacked Grams
            # (n^2 per layer pair instead of n x d_a x d_b), a shuffled scan one gather of the smaller side
            grams = {name: M.GramSide(Xs, tmap) for name, Xs in X.items()}
            perm = rng.permutation(n)

            def scan_of(job: tuple[str, str, str, bool]) -> np.ndarray:
                metric, P, Q, shuffled = job
                pp = perm if shuffled else None
                if metric == "linear_cka_debiased":
                    return M.debiased_cka_scan(grams[P], grams[Q], pp)
                return M.mutual_knn_matrix(knn[P], knn[Q], permutation=pp)

            pairs = [("a", "a")] + ([("a", "b"), ("b", "b")] if "b" in X else [])
            jobs = [(metric, p, q, False) for p, q in pairs for metric in SCAN_METRICS]
            jobs += [(metric, p, q, True) for p, q in pairs for metric in SCAN_METRICS]
            jobs += [(metric, p, "random_" + q, False) for p, q in pairs for metric in SCAN_METRICS
                     if "random_" + q in X]
            done = dict(zip(jobs, tmap(scan_of, jobs)))
            self.scans_: dict[str, dict[str, Any]] = {}
            for p, q in pairs:
                key = "cross" if p != q else f"within_{p}"
                scan: dict[str, Any] = {"rows": self.layers_[p], "cols": self.layers_[q]}
                for metric in SCAN_METRICS:
                    entry = {"score": done[(metric, p, q, False)], "permutation": done[(metric, p, q, True)]}
                    if "random_" + q in X:
                        entry["random_model"] = done[(metric, p, "random_" + q, False)]
                    scan[metric] = entry
                self.scans_[key] = scan
            grams.clear()  # 4 bytes x n^2 per layer: not needed beyond the scans

            self.scan_max_statistic_ = self._scan_max_statistic(X, rng, tmap) if "b" in X else None
            # the draws of every best pair and group first (in this order), then all their metrics at once
            plans = self._best_pair_plans(X, rng)
            group_plans = self._group_plans(X, groups, rng, plans) if groups is not None and "b" in X else []
            tasks = [t for plan in plans + group_plans for t in plan["tasks"]]
            tasks.sort(key=lambda t: -t[1])  # the longest first: the workers finish together
            keys = [key for key, _ in tasks]
            shared = {plan["tag"]: {f: plan[f] for f in _TASK_FIELDS if f in plan} for plan in plans + group_plans}
            label = (f"All metrics at the {len(plans)} best layer pair(s) and {len(group_plans)} group(s) "
                     f"({self.n_permutations} shuffled pairings each)")
            results = {}
            if keys and backend is not None and getattr(backend, "name", "local") != "local":
                results = dict(zip(keys, backend.map(_run_task, keys, shared, label)))
            elif keys:
                from .._progress import track

                it = tmap.imap(lambda key: _run_task(shared, key), keys)
                for key, value in zip(keys, track(it, label, total=len(keys))):
                    results[key] = value
            self.best_pairs_ = [{"layer_a": pl["layer_a"], "layer_b": pl["layer_b"],
                                 **self._assemble(pl, results)} for pl in plans]
            self.groups_ = self._groups(group_plans, results)
        return self

    def _scan_max_statistic(self, X: Mapping[str, list[np.ndarray]], rng: np.random.Generator,
                            tmap: Any = None) -> dict[str, Any]:
        """Is the best cross-model layer pair better than the best pair of a scan with no correspondence?

        The best pair is chosen as the maximum over all pairs, so its null is the maximum over all
        pairs under one shuffled pairing of the samples, applied to every pair at once (on a seeded
        subsample of at most ``scan_max_samples`` samples, the observed maximum taken there too).
        """
        from .._progress import step
        from ..stats import null_summary, statistic

        n = self.n_samples_
        m = min(n, self.scan_max_samples)
        sub = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
        perms = [rng.permutation(m) for _ in range(self.scan_permutations)]
        with step(f"Max-statistic null of the scan: {len(perms)} shuffled pairings x "
                  f"{len(X['a'])} x {len(X['b'])} layer pairs on {m} samples"):
            obs, maxima = M.cka_scan_max_null([x[sub] for x in X["a"]], [y[sub] for y in X["b"]], perms, map=tmap,
                                              chunks=self.n_jobs or os.cpu_count() or 1)
        i, j = np.unravel_index(int(np.nanargmax(obs)), obs.shape)
        best = float(obs[i, j])
        return statistic(best, m, nulls={"max_over_pairs_shuffled": null_summary(best, maxima, "greater")},
                         ci95=None, ci95_reason="a maximum over layer pairs has no simple resampling interval",
                         alternative="greater", layer_a=self.layers_["a"][i], layer_b=self.layers_["b"][j],
                         metric="linear_cka_debiased", n_layer_pairs=int(obs.size),
                         description="the best cross-model layer pair's debiased CKA against the maximum over all "
                                     "layer pairs when the samples of model B are shuffled (one shuffle for "
                                     "every pair)")

    def _pair_plan(self, Xa: np.ndarray, Xb: np.ndarray, rb: np.ndarray | None, rng: np.random.Generator,
                   names: Sequence[str], tag: tuple) -> dict[str, Any]:
        """The draws for one layer pair's metrics (taken from ``rng`` now, in a fixed order) and the
        independent tasks that compute them: ``(key, cost)``, ``key`` the ``tag`` and ``"fast"`` or a metric
        name (run by :func:`_run_task` on the plan's arrays)."""
        n = len(Xa)
        if n > self.detail_max_samples:
            keep = np.sort(rng.choice(n, self.detail_max_samples, replace=False))
            Xa, Xb = Xa[keep], Xb[keep]
            rb = rb[keep] if rb is not None else None
            n = len(Xa)
        k = min(self.k, n - 1)
        perms = [rng.permutation(n) for _ in range(self.n_permutations)]
        plan: dict[str, Any] = {"n": n, "k": k, "names": list(names), "tag": tag, "Xa": Xa, "Xb": Xb, "rb": rb,
                                "perms": perms, "tasks": []}
        if any(x in FAST_METRICS for x in names):
            m = min(n, PERMUTATION_MAX_SAMPLES)
            sub = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
            plan["sub"], plan["sperms"] = sub, [rng.permutation(m) for _ in range(self.n_permutations)]
            plan["km"] = min(self.k, m - 1)
            plan["tasks"].append((tag + ("fast",), m * m * len(plan["sperms"]) / 4e5))
        for name in names:
            cost = {"rbf_cka": 3, "cknna": 4, "rsa": 4, "svcca": 3, "procrustes": 3}.get(name, 1) * (n / 3000) ** 2
            plan["tasks"].append((tag + (name,), cost))
        return plan

    def _assemble(self, plan: Mapping[str, Any], results: Mapping[tuple, Any]) -> dict[str, Any]:
        """One layer pair's entries (score, permutation null, random model, statistic) from its tasks' results."""
        n, k, Xa, Xb, perms = plan["n"], plan["k"], plan["Xa"], plan["Xb"], plan["perms"]
        out: dict[str, Any] = {"n": n, "k": k}
        fast = results.get(plan["tag"] + ("fast",), {})
        for name in plan["names"]:
            fn, higher = DETAIL_METRICS[name]
            r = results[plan["tag"] + (name,)]
            if "error" in r:
                out[name] = {"score": None, "error": r["error"]}
                continue
            obs, null = r["score"], r["null"]
            if name in FAST_METRICS and f"{name}_null" in fast:
                null = fast[f"{name}_null"]
                # the null was drawn on a subsample; compare it with the observed value on the same samples
                obs_sub = fast[name]
                perm = _summary(obs_sub, null, higher)
                perm["observed_on_permutation_samples"] = float(obs_sub)
                perm["permutation_samples"] = fast["permutation_samples"]
            else:
                if null is None:  # a fast null that could not be computed: one call per draw
                    cap = MAX_GRAM_SHUFFLES if name in GRAM_METRICS else MAX_OTHER_SHUFFLES
                    null = np.array([fn(Xa, Xb[pp], k) for pp in perms[:cap]])
                perm = _summary(obs, null, higher)
            entry = {"score": obs, "higher_is_more_similar": higher, "permutation": perm}
            if plan["rb"] is not None:
                entry["random_model"] = r["random_model"]
            entry["statistic"] = _stat(entry, n)
            out[name] = entry
        return out

    def _best_pair_plans(self, X: Mapping[str, list[np.ndarray]], rng: np.random.Generator) -> list[dict[str, Any]]:
        if "b" not in X:
            return []
        S = self.scans_["cross"]["linear_cka_debiased"]["score"]
        flat = np.argsort(-S, axis=None)[: self.top_pairs]
        plans = []
        for idx in flat:
            i, j = np.unravel_index(idx, S.shape)
            rb = X["random_b"][j] if "random_b" in X else None
            plan = self._pair_plan(X["a"][i], X["b"][j], rb, rng, list(DETAIL_METRICS), ("pair", int(i), int(j)))
            plans.append({**plan, "layer_a": self.layers_["a"][i], "layer_b": self.layers_["b"][j]})
        return plans

    def _group_plans(self, X: Mapping[str, list[np.ndarray]], groups: Sequence[str], rng: np.random.Generator,
                     best: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if not best:
            return []
        i, j = self.layers_["a"].index(best[0]["layer_a"]), self.layers_["b"].index(best[0]["layer_b"])
        g = np.asarray(groups, dtype=object)
        plans = []
        for name in sorted(set(g.tolist()) - {""}):
            idx = np.flatnonzero(g == name)
            if len(idx) < self.min_group:
                continue
            rb = X["random_b"][j][idx] if "random_b" in X else None
            plan = self._pair_plan(X["a"][i][idx], X["b"][j][idx], rb, rng,
                                   ["linear_cka_debiased", "mutual_knn", "svcca"], ("group", name))
            plans.append({**plan, "group": name, "layer_a": best[0]["layer_a"], "layer_b": best[0]["layer_b"]})
        return plans

    def _groups(self, plans: Sequence[Mapping[str, Any]], results: Mapping[tuple, Any]) -> list[dict[str, Any]]:
        out = [{"group": pl["group"], "layer_a": pl["layer_a"], "layer_b": pl["layer_b"], **self._assemble(pl, results)}
               for pl in plans]
        # several groups are tested at once: Benjamini-Hochberg across groups, per metric
        from ..stats import benjamini_hochberg

        for metric in ("linear_cka_debiased", "mutual_knn", "svcca"):
            ps = [g.get(metric, {}).get("statistic", {}).get("p_value") for g in out]
            for g, q in zip(out, benjamini_hochberg(ps)):
                if metric in g and "statistic" in g[metric]:
                    g[metric]["statistic"]["p_value_bh"] = q
        return out

    # ----------------------------------------------------------------------------------------

    def result(self) -> AnalysisResult:
        self.check_fitted("scans_")
        metrics: dict[str, Any] = {}
        if self.best_pairs_:
            top = self.best_pairs_[0]
            for name in DETAIL_METRICS:
                e = top.get(name, {})
                if e.get("score") is not None:
                    metrics[name] = {**e["statistic"], "layers": [top["layer_a"], top["layer_b"]]}
        if getattr(self, "scan_max_statistic_", None) is not None:
            metrics["best_pair_max_statistic"] = self.scan_max_statistic_
        rows = []
        if "cross" in self.scans_:
            S = self.scans_["cross"]["linear_cka_debiased"]
            for i, la in enumerate(self.layers_["a"]):
                j = int(np.argmax(S["score"][i]))
                row = {"layer_a": la, "best_layer_b": self.layers_["b"][j], "cka_debiased": S["score"][i, j],
                       "shuffled": S["permutation"][i, j]}
                if "random_model" in S:
                    row["random_model"] = S["random_model"][i, j]
                rows.append(row)
        return AnalysisResult(
            analyzer="similarity",
            params=self.get_params(),
            provenance={"models": self.models_, "layers": self.layers_, "n_samples": self.n_samples_},
            metrics=metrics,
            tables={"best_layer_per_layer_a": rows, "best_pairs": self.best_pairs_, "groups": self.groups_},
            artifacts={"scans": self.scans_},
        )


# what a best-pair or group task reads of its plan (shipped once to Ray workers)
_TASK_FIELDS = ("Xa", "Xb", "rb", "perms", "k", "sub", "sperms", "km")


def _run_task(shared: Mapping[tuple, Mapping[str, Any]], key: tuple) -> Any:
    """One task of a layer pair or group: ``key`` is the plan's tag and ``"fast"`` or a metric name."""
    d = shared[key[:-1]]
    if key[-1] == "fast":
        return _fast_nulls(d["Xa"][d["sub"]], d["Xb"][d["sub"]], d["sperms"], d["km"])
    return _metric(key[-1], d["Xa"], d["Xb"], d["rb"], d["perms"], d["k"])


def _fast_nulls(Xa: np.ndarray, Xb: np.ndarray, perms: Sequence[np.ndarray], k: int) -> dict[str, Any]:
    """Linear CKA (both forms) and mutual k-NN on a subsample, with their permutation nulls from
    the two Gram matrices and the two neighbour searches."""
    try:
        fast = M.linear_cka_permutations(Xa, Xb, perms)
    except DataError as e:
        fast = {"error": str(e)}
    na, nb = M.knn_indices(Xa, k), M.knn_indices(Xb, k)
    fast["mutual_knn"] = float(M.mutual_knn_matrix([na], [nb])[0, 0])
    fast["mutual_knn_null"] = np.array([M.mutual_knn_matrix([na], [nb], permutation=pp)[0, 0] for pp in perms])
    fast["permutation_samples"] = len(Xa)
    return fast


def _metric(name: str, Xa: np.ndarray, Xb: np.ndarray, rb: np.ndarray | None, perms: Sequence[np.ndarray],
            k: int) -> dict[str, Any]:
    """One metric at one layer pair: its score, its null where the metric has its own permutation
    path (``None`` for the fast metrics, whose null comes from :func:`_fast_nulls`), and the
    re-randomized model's score; ``{"error": ...}`` when the metric is undefined on these data."""
    fn, _ = DETAIL_METRICS[name]
    cap = MAX_GRAM_SHUFFLES if name in GRAM_METRICS else MAX_OTHER_SHUFFLES
    null = random_model = None
    try:
        # the metrics whose permutation path reuses the decompositions of the observed value
        if name == "svcca":  # both sides' reductions are shared by every draw
            both = M.svcca_permutations(Xa, Xb, [None, *perms[:cap]])
            obs, null = float(both[0]), both[1:]
        elif name == "rsa":  # the ranks are taken once; every draw permutes the rank matrix
            ranks_a = M.rank_dissimilarities(Xa)
            obs, null = M.rsa_permutations(Xa, Xb, perms[:cap], ranks_x=ranks_a)
            if rb is not None:  # the re-randomized model against the same ranks of A
                random_model = M.rsa_permutations(Xa, rb, [], ranks_x=ranks_a)[0]
        elif name == "rbf_cka":  # both kernels once; every draw permutes L
            obs, null = M.rbf_cka_permutations(Xa, Xb, perms[:cap])
        elif name == "cknna":  # kernels and neighbour masks once; every draw permutes Y's
            obs, null = M.cknna_permutations(Xa, Xb, perms[:cap], k)
        else:
            obs = fn(Xa, Xb, k)
    except DataError as e:
        return {"error": str(e)}
    if name == "knn_jaccard":  # the neighbour sets are found once; every draw relabels them
        null = M.knn_jaccard_permutations(Xa, Xb, perms, k)[1]
    elif null is None and name not in FAST_METRICS:
        null = np.array([fn(Xa, Xb[pp], k) for pp in perms[:cap]])
    if rb is not None and random_model is None:
        random_model = fn(Xa, rb, k)
    return {"score": obs, "null": null, "random_model": random_model}


class FeatureMatcher(Analyzer):
    """Match the SAE features of two models by activation correlation; compare paired decoders.

    ``fit(codes_a, codes_b, decoder_a, decoder_b)``: codes are SAE activations (n, f) of the
    same n samples (aligned words or tokens), decoders (f, d) the SAEs' decoder directions.
    Features that never vary on the samples are left out. For the one-to-one (Hungarian) pairs,
    and for those whose correlation reaches ``threshold``, SVCCA and RSA of the paired decoder
    rows are compared with the same features re-paired at random among themselves (``n_random``
    draws for RSA, from one rank matrix; ``n_random_svcca`` for SVCCA, re-paired within its halves);
    the matched correlations are compared with the matching redone on shuffled samples
    (``n_shuffles`` draws: ``<method>.mean_correlation_vs_shuffled_samples``).
    """

    _fit_call = "fit(codes_a, codes_b, decoder_a, decoder_b)"
    _fitted = "matching_"

    def __init__(self, threshold: float = 0.5, n_random: int = 1000, max_pairs: int = 2000, seed: int = 0,
                 n_random_svcca: int = 100, n_shuffles: int = 20):
        self.threshold = threshold
        self.n_shuffles = n_shuffles
        self.n_random = n_random
        self.n_random_svcca = n_random_svcca
        self.max_pairs = max_pairs
        self.seed = seed

    def fit(self, codes_a, codes_b, decoder_a, decoder_b, provenance: Mapping[str, Any] | None = None
            ) -> "FeatureMatcher":
        A, B = np.asarray(codes_a), np.asarray(codes_b)
        Da, Db = np.asarray(decoder_a, dtype=np.float64), np.asarray(decoder_b, dtype=np.float64)
        if A.ndim != 2 or B.ndim != 2 or len(A) != len(B):
            raise DataError(f"expected codes of shapes (n, f1) and (n, f2) on the same samples, got {A.shape} and "
                            f"{B.shape}")
        if Da.shape[0] != A.shape[1] or Db.shape[0] != B.shape[1]:
            raise DataError(f"decoders must have one row per feature: codes have {A.shape[1]} and {B.shape[1]} "
                            f"features, decoders {Da.shape} and {Db.shape}")
        if self.n_random < 1:
            raise ConfigError(f"n_random must be positive, got {self.n_random}")
        rng = np.random.default_rng(self.seed)
        C = M.feature_correlation(A, B)
        self.alive_ = (int((~np.isnan(C).all(1)).sum()), int((~np.isnan(C).all(0)).sum()))
        out: dict[str, Any] = {"n_samples": len(A), "features": [A.shape[1], B.shape[1]],
                               "live_features": list(self.alive_)}
        pairs = {}
        for method in ("greedy", "hungarian"):
            ia, ib, corr = M.match_features(C, method)
            pairs[method] = (ia, ib, corr)
            out[method] = {"n_pairs": len(ia), "mean_correlation": float(corr.mean()),
                           "median_correlation": float(np.median(corr)),
                           "fraction_above_threshold": float((corr >= self.threshold).mean()),
                           "distinct_b": int(len(np.unique(ib)))}
        from ..stats import null_summary, statistic

        # the same matching on shuffled samples (n_shuffles draws): what correlation does matching find by chance?
        chance = M.matching_null(A, B, self.n_shuffles, seed=self.seed + 1, methods=("greedy", "hungarian"))
        self.shuffled_correlations_ = {}
        for method in ("greedy", "hungarian"):
            obs = out[method]["mean_correlation"]
            out[method]["shuffled_samples_mean_correlation"] = float(chance[method].mean())
            out[method]["mean_correlation_vs_shuffled_samples"] = statistic(
                obs, out[method]["n_pairs"], nulls={"shuffled_samples": null_summary(obs, chance[method])},
                ci95_reason="pairs come from one matching of all features; not resampled")
            self.shuffled_correlations_[method] = chance[method]
        ia, ib, corr = pairs["hungarian"]
        self.decoder_similarity_ = []
        for label, sel in (("all one-to-one pairs", np.ones(len(ia), bool)),
                           (f"pairs with correlation >= {self.threshold}", corr >= self.threshold)):
            pa, pb = ia[sel], ib[sel]
            if len(pa) > self.max_pairs:
                keep = rng.choice(len(pa), self.max_pairs, replace=False)
                pa, pb = pa[keep], pb[keep]
            row: dict[str, Any] = {"pairs": label, "n": int(len(pa))}
            if len(pa) < 10:
                row["note"] = "fewer than 10 pairs: not compared"
                self.decoder_similarity_.append(row)
                continue
            # the null re-pairs the matched features among themselves (same features, wrong partners)
            perms = [rng.permutation(len(pa)) for _ in range(self.n_random)]
            obs, null = M.rsa_permutations(Da[pa], Db[pb], perms)
            row["rsa"] = {"score": float(obs), "random_pairing": _summary(obs, null, True)}
            obs = M.svcca(Da[pa], Db[pb])
            null = M.svcca_permutations(Da[pa], Db[pb], perms[: self.n_random_svcca])
            row["svcca"] = {"score": float(obs), "random_pairing": _summary(obs, null, True)}
            for name in ("svcca", "rsa"):
                e = row[name]
                e["statistic"] = _stat({"score": e["score"], "permutation": e["random_pairing"]}, len(pa))
                e["statistic"]["null"] = {"re_paired_matches": e["statistic"]["null"].pop("shuffled_pairing")}
            self.decoder_similarity_.append(row)
        self.matching_ = out
        self.top_pairs_ = [{"feature_a": int(x), "feature_b": int(y), "correlation": float(c)}
                           for x, y, c in zip(ia[:50], ib[:50], corr[:50])]
        self.correlations_ = corr
        self.provenance_ = dict(provenance or {})
        return self

    def result(self) -> AnalysisResult:
        self.check_fitted("matching_")
        return AnalysisResult(
            analyzer="feature_matching",
            params=self.get_params(),
            provenance=self.provenance_,
            metrics=self.matching_,
            tables={"decoder_similarity": self.decoder_similarity_, "top_pairs": self.top_pairs_},
            artifacts={"correlations": np.asarray(self.correlations_),
                       "shuffled_correlations": dict(self.shuffled_correlations_)},
        )
