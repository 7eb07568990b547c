"""Erasing a WordNet category at one layer with LEACE (Belrose et al. 2023, the ``concept-erasure`` package) and
measuring what is lost downstream (arrays only; :class:`geomsteer.analyzers.erasure.ErasureAnalyzer` holds the
statistics).

The eraser is fit on words' activations at the layer (the category's words against every other word read)
and applied at that hook to every token after the start token. What it takes is read from the same words at
later layers (a held-out linear probe's AUC for the category, its children and its siblings) and from the
next-token mass on each category's words after prompts whose next token is a noun.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


__all__ = ["fit_eraser", "erasing", "probe_auc", "next_token_logmass"]


def fit_eraser(X: np.ndarray, member: np.ndarray) -> Any:
    """A LEACE eraser (``concept_erasure.LeaceEraser``, float64) removing the binary concept ``member`` from the
    rows ``X``: afterwards no affine function of the rows predicts membership better than a constant."""
    import torch
    from concept_erasure import LeaceEraser

    x = torch.as_tensor(np.asarray(X, dtype=np.float64))
    z = torch.as_tensor(np.asarray(member, dtype=np.float64)).reshape(-1, 1)
    return LeaceEraser.fit(x, z)


@contextlib.contextmanager
def erasing(model: Any, hook: str, eraser: Any | None, start: int = 1) -> Iterator[None]:
    """Apply ``eraser`` at ``hook`` to every position from ``start`` on, for every forward pass in the block
    (nothing when ``eraser`` is None). The hook is removed on exit, also after an exception."""
    if eraser is None:
        yield
        return

    def erase(act, hook):
        out = act.clone()
        x = act[:, start:].double()
        out[:, start:] = eraser(x).to(act.dtype)
        return out

    with model.hooks(fwd_hooks=[(hook, erase)]):
        yield


def probe_auc(X: np.ndarray, train: np.ndarray, test: np.ndarray, negatives: np.ndarray) -> float:
    """Held-out AUC of a linear probe: a shrinkage LDA classifier (scikit-learn, Ledoit-Wolf) fit on the ``train``
    rows against every other of the ``negatives``, scoring the ``test`` rows against the remaining negatives.
    0.5: no linear separation of held-out words (what LEACE guarantees on the data it was fit on)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from ..stats import auc

    X = np.asarray(X, dtype=np.float64)
    neg = np.asarray(negatives)
    neg_fit, neg_test = neg[0::2], neg[1::2]
    Xc = X - X[np.concatenate([train, neg_fit])].mean(0)
    y = np.r_[np.ones(len(train)), np.zeros(len(neg_fit))]
    clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Xc[np.concatenate([train, neg_fit])], y)
    return float(auc(clf.decision_function(Xc[test]), clf.decision_function(Xc[neg_test])))


def next_token_logmass(model: Any, prompts: Sequence[str], sets: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Per prompt, log p(next token in the set) for each named set of token ids (under any active hooks)."""
    import torch

    from ..activations import bos_ids
    from .apply import logits_at_last

    head = bos_ids(model)
    rows = [head + model.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    logp = torch.log_softmax(logits_at_last(model, rows).double(), -1)
    return {k: torch.logsumexp(logp[:, torch.as_tensor(sorted(map(int, v)))], -1).numpy() for k, v in sets.items()}
