"""One module per job: load -> measure -> analyze -> a result object (the notebook API and the CLI call these).

Each job validates its inputs before any heavy step and reports progress on stderr; nothing is
written until ``.save(dir)`` is called on its result (atomically, never over an existing
directory without ``force``).
"""

from . import features, sae, steer
from .concepts import cluster, mapper, mapper_of, words_in_context
from .hierarchy import hierarchy
from .similarity import similarity

__all__ = ["hierarchy", "similarity", "mapper", "cluster", "steer", "sae", "features", "mapper_of", "words_in_context"]
