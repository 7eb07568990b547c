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

from typing import Any, Mapping, Sequence

import numpy as np

from .. import metrics as M
from ..errors import ConfigError, DataError, NotFittedError
from ..types import Activations, AnalysisResult

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
# metrics that build several n x n matrices per call: at most this many shuffles each
GRAM_METRICS = frozenset({"rbf_cka", "cknna", "rsa"})
MAX_GRAM_SHUFFLES = 5


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
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not len(null):
        return {"mean": None, "sd": None, "p": None, "n": 0}
    extreme = (null >= observed) if higher else (null <= observed)
    return {"mean": float(null.mean()), "sd": float(null.std(ddof=1)) if len(null) > 1 else 0.0,
            "p": float((1 + extreme.sum()) / (1 + len(null))), "n": int(len(null))}


class SimilarityAnalyzer:
    """Layer x layer similarity of two models (or one) with shuffled-pairing and random-model nulls.

    Parameters: ``k`` neighbours for the k-NN metrics; ``n_permutations`` shuffled pairings for
    the detailed comparisons (at most 5 for RBF CKA, CKNNA and RSA, which build n x n matrices;
    the scans use one shuffled pairing per cell, the same for every cell); ``top_pairs`` how many best-aligned cross-model layer pairs get every metric;
    ``min_group`` the smallest semantic group compared on its own; ``detail_max_samples`` caps
    the samples given to the metrics that build n x n matrices (a seeded subsample, recorded).
    """

    def __init__(self, k: int = 10, n_permutations: int = 20, top_pairs: int = 3, min_group: int = 50,
                 detail_max_samples: int = 3000, seed: int = 0):
        self.k = k
        self.n_permutations = n_permutations
        self.top_pairs = top_pairs
        self.min_group = min_group
        self.detail_max_samples = detail_max_samples
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"k": self.k, "n_permutations": self.n_permutations, "top_pairs": self.top_pairs,
                "min_group": self.min_group, "detail_max_samples": self.detail_max_samples, "seed": self.seed}

    # ----------------------------------------------------------------------------------------

    def fit(self, a: Sequence[Activations], b: Sequence[Activations] | None = None,
            random_a: Sequence[Activations] | None = None, random_b: Sequence[Activations] | None = None,
            groups: Sequence[str] | None = None) -> "SimilarityAnalyzer":
        """Compare the layers of ``a`` with those of ``b`` (and each with itself).

        ``random_a``/``random_b`` are the same samples through the re-randomized models (same
        layers); ``groups`` gives each sample's semantic group ("" for none).
        """
        if self.k < 1 or self.n_permutations < 1 or self.top_pairs < 1:
            raise ConfigError(f"k, n_permutations and top_pairs must be positive, got {self.k}, "
                              f"{self.n_permutations} and {self.top_pairs}")
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
        M._check_k(self.k, n, "mutual k-NN")
        if n < 4:
            raise DataError(f"similarity needs at least 4 aligned samples, got {n}")
        if groups is not None and len(groups) != n:
            raise DataError(f"groups must give one label per sample ({n}), got {len(groups)}")
        rng = np.random.default_rng(self.seed)
        self.n_samples_ = n
        self.layers_ = {name: [x.hook for x in acts] for name, acts in sides.items()}
        self.models_ = {name: acts[0].model for name, acts in sides.items()}
        X = {name: [np.asarray(x.X) for x in acts] for name, acts in sides.items()}
        knn = {name: [M.knn_indices(x, self.k) for x in Xs] for name, Xs in X.items()}
        # every layer centred once; the scans' d x d products run in float32 (sums stay float64)
        prep = {name: [M._prepare(x, name, np.float32) for x in Xs] for name, Xs in X.items()}
        perm = rng.permutation(n)

        pairs = [("a", "a")] + ([("a", "b"), ("b", "b")] if "b" in X else [])
        self.scans_: dict[str, dict[str, Any]] = {}
        for p, q in pairs:
            key = "cross" if p != q else f"within_{p}"
            scan: dict[str, Any] = {"rows": self.layers_[p], "cols": self.layers_[q]}
            rq = "random_" + q
            for metric in SCAN_METRICS:
                if metric == "linear_cka_debiased":
                    f = lambda P, Q, perm=None: M._cka_prepared(prep[P], prep[Q], True, perm)
                else:
                    f = lambda P, Q, perm=None: M.mutual_knn_matrix(knn[P], knn[Q], permutation=perm)
                entry = {"score": f(p, q), "permutation": f(p, q, perm)}
                if rq in X:
                    entry["random_model"] = f(p, rq)
                scan[metric] = entry
            self.scans_[key] = scan

        self.best_pairs_ = self._best_pairs(X, rng)
        self.groups_ = self._groups(X, groups, rng) if groups is not None and "b" in X else []
        return self

    def _pair_detail(self, Xa: np.ndarray, Xb: np.ndarray, ra: np.ndarray | None, rb: np.ndarray | None,
                     rng: np.random.Generator, names: Sequence[str]) -> dict[str, Any]:
        n = len(Xa)
        if n > self.detail_max_samples:
            keep = np.sort(rng.choice(n, self.detail_max_samples, replace=False))
            Xa, Xb = Xa[keep], Xb[keep]
            rb = rb[keep] if rb is not None else None
            n = len(Xa)
        k = min(self.k, n - 1)
        perms = [rng.permutation(n) for _ in range(self.n_permutations)]
        out: dict[str, Any] = {"n": n, "k": k}
        for name in names:
            fn, higher = DETAIL_METRICS[name]
            try:
                obs = fn(Xa, Xb, k)
            except DataError as e:
                out[name] = {"score": None, "error": str(e)}
                continue
            use = perms[:MAX_GRAM_SHUFFLES] if name in GRAM_METRICS else perms
            null = np.array([fn(Xa, Xb[pp], k) for pp in use])
            entry = {"score": obs, "higher_is_more_similar": higher, "permutation": _summary(obs, null, higher)}
            if rb is not None:
                entry["random_model"] = fn(Xa, rb, k)
            out[name] = entry
        return out

    def _best_pairs(self, X: Mapping[str, list[np.ndarray]], rng: np.random.Generator) -> list[dict[str, Any]]:
        if "b" not in X:
            return []
        S = self.scans_["cross"]["linear_cka_debiased"]["score"]
        flat = np.argsort(-S, axis=None)[: self.top_pairs]
        out = []
        for idx in flat:
            i, j = np.unravel_index(idx, S.shape)
            rb = X["random_b"][j] if "random_b" in X else None
            from .._progress import step

            with step(f"All metrics at {self.layers_['a'][i]} x {self.layers_['b'][j]} "
                      f"({self.n_permutations} shuffled pairings each)"):
                detail = self._pair_detail(X["a"][i], X["b"][j], None, rb, rng, list(DETAIL_METRICS))
            out.append({"layer_a": self.layers_["a"][i], "layer_b": self.layers_["b"][j], **detail})
        return out

    def _groups(self, X: Mapping[str, list[np.ndarray]], groups: Sequence[str],
                rng: np.random.Generator) -> list[dict[str, Any]]:
        if not self.best_pairs_:
            return []
        best = self.best_pairs_[0]
        i, j = self.layers_["a"].index(best["layer_a"]), self.layers_["b"].index(best["layer_b"])
        g = np.asarray(groups, dtype=object)
        out = []
        for name in sorted(set(g.tolist()) - {""}):
            idx = np.flatnonzero(g == name)
            if len(idx) < self.min_group:
                continue
            rb = X["random_b"][j][idx] if "random_b" in X else None
            d = self._pair_detail(X["a"][i][idx], X["b"][j][idx], None, rb, rng,
                                  ["linear_cka_debiased", "mutual_knn", "svcca"])
            out.append({"group": name, "layer_a": best["layer_a"], "layer_b": best["layer_b"], **d})
        return out

    # ----------------------------------------------------------------------------------------

    def result(self) -> AnalysisResult:
        if not hasattr(self, "scans_"):
            raise NotFittedError("this SimilarityAnalyzer is not fitted yet: call fit(a, b, ...) first")
        metrics: dict[str, Any] = {}
        if self.best_pairs_:
            top = self.best_pairs_[0]
            for name in DETAIL_METRICS:
                e = top.get(name, {})
                if e.get("score") is not None:
                    metrics[name] = {"observed": e["score"], "permutation_mean": e["permutation"]["mean"],
                                     "permutation_p": e["permutation"]["p"],
                                     "random_model": e.get("random_model"),
                                     "layers": [top["layer_a"], top["layer_b"]]}
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


class FeatureMatcher:
    """Match the SAE features of two models by activation correlation; compare paired decoders.

    ``fit(codes_a, codes_b, decoder_a, decoder_b)``: codes are SAE activations (n, f) of the
    same n samples (aligned words or tokens), decoders (f, d) the SAEs' decoder directions.
    Features that never vary on the samples are left out. For the one-to-one (Hungarian) pairs,
    and for those whose correlation reaches ``threshold``, SVCCA and RSA of the paired decoder
    rows are compared with ``n_random`` random pairings of live features; the matched
    correlations are compared with the matching redone on shuffled samples.
    """

    def __init__(self, threshold: float = 0.5, n_random: int = 10, max_pairs: int = 2000, seed: int = 0):
        self.threshold = threshold
        self.n_random = n_random
        self.max_pairs = max_pairs
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "n_random": self.n_random, "max_pairs": self.max_pairs,
                "seed": self.seed}

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
        # the same matching on shuffled samples: what correlation does matching find by chance?
        Cs = M.feature_correlation(A, B[rng.permutation(len(B))])
        self.shuffled_correlations_ = {}
        for method in ("greedy", "hungarian"):
            _, _, corr = M.match_features(Cs, method)
            out[method]["shuffled_samples_mean_correlation"] = float(corr.mean())
            self.shuffled_correlations_[method] = corr
        ia, ib, corr = pairs["hungarian"]
        live_a, live_b = np.flatnonzero(~np.isnan(C).all(1)), np.flatnonzero(~np.isnan(C).all(0))
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
            for name, fn in (("svcca", M.svcca), ("rsa", M.rsa)):
                obs = fn(Da[pa], Db[pb])
                null = np.array([fn(Da[rng.choice(live_a, len(pa), replace=False)],
                                    Db[rng.choice(live_b, len(pa), replace=False)]) for _ in range(self.n_random)])
                row[name] = {"score": float(obs), "random_pairing": _summary(obs, null, True)}
            self.decoder_similarity_.append(row)
        self.matching_ = out
        self.top_pairs_ = [{"feature_a": int(x), "feature_b": int(y), "correlation": float(c)}
                           for x, y, c in zip(ia[:50], ib[:50], corr[:50])]
        self.correlations_ = corr
        self.provenance_ = dict(provenance or {})
        return self

    def result(self) -> AnalysisResult:
        if not hasattr(self, "matching_"):
            raise NotFittedError("this FeatureMatcher is not fitted yet: call fit(codes_a, codes_b, decoder_a, "
                                 "decoder_b) first")
        return AnalysisResult(
            analyzer="feature_matching",
            params=self.get_params(),
            provenance=self.provenance_,
            metrics=self.matching_,
            tables={"decoder_similarity": self.decoder_similarity_, "top_pairs": self.top_pairs_},
        )
