"""Frozen values passed between geomsteer's stages. Stages return new objects; none mutates its input."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Activations", "Directions", "ConceptHierarchy", "AnalysisResult"]


@dataclass(frozen=True)
class Activations:
    """Activations ``X`` (n, d) read at one TransformerLens hook, one label per row."""

    X: np.ndarray
    labels: Sequence[str]
    model: str
    hook: str
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Directions:
    """``vectors`` (k, d) named by ``names`` in a space such as ``"unembed"`` or ``"resid:<hook>"``."""

    vectors: np.ndarray
    names: Sequence[str]
    space: str
    model: str
    provenance: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConceptHierarchy:
    """A tree of WordNet categories and the token ids of each category for one tokenizer.

    ``graph`` is a networkx DiGraph with edges parent -> child; each node (a synset name) has
    attributes ``tokens`` (sorted int64 array of token ids), ``lemmas`` (the lemma forms
    matched), ``merged`` (synsets folded into it by single-child chain merging), ``depth``
    and ``definition``. ``coverage`` counts lemmas kept and dropped. ``token_groups`` maps a
    token id to its lemma group (all forms of a lemma, and of lemmas sharing a form, share a
    group), so held-out splits can keep dog, Dog and dogs on one side.
    """

    graph: Any
    pos: str
    tokenizer: str
    word_start: str
    min_tokens: int
    coverage: Mapping[str, Any]
    token_groups: Mapping[int, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Category names in a topological order (depth-first preorder from the roots)."""
        import networkx as nx

        roots = sorted(n for n in self.graph if self.graph.in_degree(n) == 0)
        order: list[str] = []
        for r in roots:
            order.extend(nx.dfs_preorder_nodes(self.graph, r, sort_neighbors=sorted))
        return order

    def tokens(self, name: str) -> np.ndarray:
        return self.graph.nodes[name]["tokens"]

    def parent(self, name: str) -> str | None:
        preds = list(self.graph.predecessors(name))
        return preds[0] if preds else None

    def __len__(self) -> int:
        return self.graph.number_of_nodes()


def jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass(frozen=True)
class AnalysisResult:
    """What an analyzer found: its parameters, input provenance, metrics, tables and artifacts.

    ``metrics`` maps a statistic to a dict in which the observed value sits beside its
    baselines. ``tables`` maps a name to a list of row dicts. ``to_json`` keeps every number a
    report shows (non-finite floats become ``null``).
    """

    analyzer: str
    params: Mapping[str, Any]
    provenance: Mapping[str, Any]
    metrics: Mapping[str, Any]
    tables: Mapping[str, list] = field(default_factory=dict)
    artifacts: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return jsonable({
            "analyzer": self.analyzer,
            "params": self.params,
            "provenance": self.provenance,
            "metrics": self.metrics,
            "tables": self.tables,
        })

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)
