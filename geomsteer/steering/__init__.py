"""Steering vectors: compute them (``vectors``), apply them (``apply``), evaluate them (``evaluate``),
draw their nulls (``nulls``), and run the experiments that measure them on a model (``experiments``).

Everything that runs a model for steering lives here; the analyzers in
``geomsteer.analyzers.steering`` turn the measurements into statistics.
"""

from .apply import generate, generate_runs, logits_at, logits_at_last, steering, unembed_rows, unembeds_itself
from .evaluate import EvalPrompt, NeutralText, SteeredTargets, load_eval, target_ids, target_logodds
from .nulls import covariance_directions, random_direction, shuffled_label_vectors
from .vectors import (
    DEFAULT_POSITION,
    DIFFS,
    FORMAT,
    METHODS,
    POSITIONS,
    Pair,
    SteeringVector,
    compute_vectors,
    load_pairs,
    load_vectors,
    pair_statistics,
    save_vectors,
    vectors_bytes,
)

__all__ = ["Pair", "load_pairs", "SteeringVector", "compute_vectors", "vectors_bytes", "save_vectors", "load_vectors",
           "steering", "pair_statistics", "EvalPrompt", "load_eval", "target_ids", "target_logodds", "generate", "generate_runs",
           "NeutralText", "random_direction", "POSITIONS", "METHODS", "DEFAULT_POSITION", "FORMAT", "DIFFS",
           "shuffled_label_vectors", "covariance_directions", "SteeredTargets", "logits_at", "logits_at_last",
           "unembed_rows", "unembeds_itself"]
