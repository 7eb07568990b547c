"""What every analyzer shares (scikit-learn's estimator contract): parameters from ``__init__``,
a clear error before ``fit``, and a ``repr`` that shows the parameters that differ from the defaults."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import NotFittedError

__all__ = ["Analyzer"]


class Analyzer:
    """Base of the analyzers: ``__init__`` stores parameters only; ``fit`` validates and returns ``self``;
    learned state ends in ``_``; ``result()`` before ``fit`` raises :class:`NotFittedError`.

    Subclasses set ``_fit_call`` (how ``fit`` is called, for the error message), ``_fitted`` (an
    attribute that exists once fitted) and optionally ``_not_params`` (``__init__`` arguments that do
    not change the numbers, such as ``progress``)."""

    _fit_call = "fit(...)"
    _fitted = "result_"
    _not_params: tuple[str, ...] = ()

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items()
                if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in cls._not_params]

    def get_params(self) -> dict[str, Any]:
        """The parameters given to ``__init__`` (tuples as lists, as they appear in result.json)."""
        return {n: (list(v) if isinstance(v, tuple) else v) for n in self._param_names()
                for v in [getattr(self, n)]}

    def check_fitted(self, attribute: str | None = None) -> None:
        if not hasattr(self, attribute or self._fitted):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call {self._fit_call} first")

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        shown = []
        for n in self._param_names():
            v = getattr(self, n)
            d = sig.parameters[n].default
            try:
                same = v == d
                same = bool(same) if not hasattr(same, "all") else bool(same.all())
            except Exception:  # arrays of different shapes and the like
                same = False
            if not same:
                shown.append(f"{n}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)})"
