"""geomsteer: the geometry and topology of language-model representations.

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
from .types import Activations, AnalysisResult, ConceptHierarchy, Directions

__version__ = "0.1.0"

__all__ = [
    "__version__",
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
