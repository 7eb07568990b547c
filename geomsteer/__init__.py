"""geomsteer: the geometry and topology of language-model representations.

The notebook API (the command line calls the same functions)::

    import geomsteer as gs
    h = gs.hierarchy("gemma-3-270m")          # a result object; shows its statistics in Jupyter
    h.table(); h.directions["mammal.n.01"]; h.plot_concept_plane("animal.n.01", "mammal.n.01")
    m = gs.load_model("gemma-3-270m")         # load once, pass it wherever a model name goes
    v = gs.steer.compute(m, pairs="sentiment", layers=[6, 12]); gs.steer.sweep(m, v)
    sae = gs.sae.train(m, hook="blocks.6.hook_resid_post", tokens=300_000)
    gs.features.graph(m, ["runs/sae6", "runs/sae9"], vectors=v)   # ablate features, read later layers
    gs.mapper(m, sae.save("runs/sae")), gs.cluster(...), gs.similarity(["gemma-3-270m", "qwen2.5-0.5b"])
    h.save("runs/h")                          # writes exactly what 'geomsteer hierarchy --out runs/h' writes

Importing geomsteer is light: torch, transformer_lens, sae_lens, kmapper, gudhi, umap and
matplotlib are imported only where they are used.
"""

from .errors import (
    ConfigError,
    DataError,
    GeomsteerError,
    ModelNotFoundError,
    ModelUnavailableError,
    NotFittedError,
    OutputExistsError,
)
from . import transfer
from .pipelines import cluster, features, hierarchy, mapper, mapper_of, sae, similarity, steer, words_in_context
from .types import Activations, AnalysisResult, ConceptHierarchy, Directions

__version__ = "0.1.0"


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    """Load a model once (TransformerLens, raw weights) to pass to every call in place of its name."""
    from .models import load_model as _load

    return _load(name, device=device, dtype=dtype)


__all__ = [
    "__version__",
    "hierarchy",
    "similarity",
    "mapper",
    "cluster",
    "mapper_of",
    "words_in_context",
    "steer",
    "sae",
    "features",
    "transfer",
    "load_model",
    "Activations",
    "AnalysisResult",
    "ConceptHierarchy",
    "Directions",
    "GeomsteerError",
    "ConfigError",
    "DataError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NotFittedError",
    "OutputExistsError",
]
