"""Representational similarity metrics: pure functions of two matrices X (n, d1) and Y (n, d2).

Row i of X and row i of Y describe the same sample (word, context) in two representations
(two models, two layers). Every function accumulates in float64, validates its input with a
message that says what is wrong and how to fix it, and documents its formula, its reference and
its invariances. None prints or mutates its input.

One small module per family: ``cka``, ``knn``, ``geometry`` (SVCCA, Procrustes, RSA, cosine),
``features`` (SAE feature matching), ``common`` (input checks). Linear CKA is computed from
d x d cross-products in O(n d^2) time and O(d^2) memory and streams over batches (:class:`CKAAccumulator`); the other metrics build n x n matrices and are meant for
n up to about 20,000.
"""

from .cka import (
    CKAAccumulator,
    GramSide,
    cka_scan_max_null,
    debiased_cka_scan,
    linear_cka,
    linear_cka_matrix,
    linear_cka_permutations,
    rbf_cka,
    rbf_cka_permutations,
)
from .common import check_k
from .cyclic import cyclic_neighbours
from .features import feature_correlation, match_features, matching_null
from .geometry import (average_ranks, cosine, feature_jaccard, procrustes, rank_dissimilarities, rsa, rsa_permutations,
                       rsa_ranked, svcca, svcca_permutations)
from .knn import cknna, cknna_permutations, knn_indices, knn_jaccard, knn_jaccard_permutations, mutual_knn, mutual_knn_matrix

__all__ = [
    "CKAAccumulator",
    "linear_cka",
    "rbf_cka",
    "rbf_cka_permutations",
    "mutual_knn",
    "cknna",
    "cknna_permutations",
    "svcca",
    "procrustes",
    "rsa",
    "cosine",
    "knn_jaccard",
    "feature_jaccard",
    "linear_cka_matrix",
    "GramSide",
    "debiased_cka_scan",
    "svcca_permutations",
    "knn_jaccard_permutations",
    "knn_indices",
    "mutual_knn_matrix",
    "feature_correlation",
    "match_features",
    "matching_null",
    "linear_cka_permutations",
    "cka_scan_max_null",
    "rsa_permutations",
    "rsa_ranked",
    "rank_dissimilarities",
    "average_ranks",
    "check_k",
    "cyclic_neighbours",
]
