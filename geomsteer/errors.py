"""The exceptions geomsteer raises for bad input.

Every message says what was expected, what arrived, and how to fix it. The CLI prints a
``GeomsteerError`` as one line on stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations

__all__ = [
    "GeomsteerError",
    "ConfigError",
    "DataError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NotFittedError",
    "OutputExistsError",
]


class GeomsteerError(Exception):
    """Base class of every error geomsteer raises on purpose."""


class ConfigError(GeomsteerError, ValueError):
    """A parameter has a value geomsteer cannot use."""


class DataError(GeomsteerError, ValueError):
    """Input data (arrays, files, token sets) are not what was expected."""


class ModelNotFoundError(GeomsteerError, LookupError):
    """A model name is neither a known alias, a local directory nor a GGUF file."""


class ModelUnavailableError(GeomsteerError, LookupError):
    """A known model cannot be loaded here (not cached and the hub cannot be reached)."""


class NotFittedError(GeomsteerError, AttributeError):
    """A learned attribute or result was read before ``fit``."""


class OutputExistsError(GeomsteerError, FileExistsError):
    """An output directory exists and ``force`` was not given."""
