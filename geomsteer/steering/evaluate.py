"""Evaluating steering: held-out prompts with target tokens, their log-odds (also under many vectors at
once), and the side effect on neutral text."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .apply import (final_normed, logits_at, logits_at_last, logits_of, log_normalizer, steering, unembed_rows,
                    unembeds_itself)


# --------------------------------------------------------------------------------------------
# Evaluation prompts, target tokens, generation, side effects


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt and the next tokens that count as the positive and the negative outcome."""

    prompt: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


def load_eval(path: str | Path) -> tuple[list[EvalPrompt], str]:
    """Evaluation prompts from JSONL: ``{"prompt": ..., "positive": [" good", ...], "negative": [...]}``.

    ``positive`` and ``negative`` are target strings (one string or a list); each counts by its
    first token. Returns the prompts and the file's sha256.
    """
    from ..resources import read_steering_file

    p, raw = read_steering_file(path, "evaluation", '{"prompt": ..., "positive": [...], "negative": [...]}',
                                "sentiment_eval, animal_plant_eval")
    from ..corpus import jsonl_objects

    items = []
    for i, obj in jsonl_objects(raw.decode("utf-8", errors="replace"), p):
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj.get("prompt"):
            raise DataError(f"{p}:{i}: expected an object with a non-empty string 'prompt' and target lists "
                            "'positive' and 'negative'")
        sides = []
        for key in ("positive", "negative"):
            v = obj.get(key)
            v = [v] if isinstance(v, str) else v
            if not isinstance(v, list) or not v or not all(isinstance(t, str) and t for t in v):
                raise DataError(f"{p}:{i}: {key!r} must be a non-empty string or list of non-empty strings, "
                                f"got {obj.get(key)!r}")
            sides.append(tuple(v))
        items.append(EvalPrompt(obj["prompt"], sides[0], sides[1]))
    if not items:
        raise DataError(f"evaluation file {str(p)!r} holds no prompts: expected at least one JSONL line")
    return items, hashlib.sha256(raw).hexdigest()


def target_ids(model: Any, items: Sequence[EvalPrompt]) -> list[tuple[list[int], list[int]]]:
    """Per prompt, the first token ids of its positive and negative targets (distinct sets)."""
    tok = model.tokenizer
    cache: dict[str, int] = {}

    def first(t: str) -> int:
        if t not in cache:
            ids = tok(t, add_special_tokens=False)["input_ids"]
            if not ids:
                raise DataError(f"target {t!r} tokenizes to nothing: give targets with at least one token, such as \" good\"")
            cache[t] = ids[0]
        return cache[t]

    out = []
    for it in items:
        pos = sorted({first(t) for t in it.positive})
        neg = sorted({first(t) for t in it.negative})
        both = set(pos) & set(neg)
        if both:
            raise DataError(f"prompt {it.prompt!r}: positive and negative targets share the first token "
                            f"{tok.decode([min(both)])!r}; targets count by their first token, so make them differ there")
        out.append((pos, neg))
    return out


def target_logodds(model: Any, items: Sequence[EvalPrompt], batch_size: int = 16,
                   ids: Sequence[tuple[list[int], list[int]]] | None = None) -> np.ndarray:
    """Per prompt: (log-odds, log p(positive set), log p(negative set)) of the next token, shape (n, 3).

    A set's log-probability is the logsumexp of its tokens' log-probabilities; the log-odds is
    their difference. Runs under whatever hooks are active (e.g. inside :func:`steering`).
    """
    import torch

    from ..activations import bos_ids

    ids = ids if ids is not None else target_ids(model, items)
    head = bos_ids(model)
    tok = model.tokenizer
    out = np.empty((len(items), 3))
    for b in range(0, len(items), batch_size):
        rows = [head + tok(it.prompt, add_special_tokens=False)["input_ids"] for it in items[b : b + batch_size]]
        logp = torch.log_softmax(logits_at_last(model, rows), -1)
        for r, (pos, neg) in enumerate(ids[b : b + batch_size]):
            lp = float(torch.logsumexp(logp[r, pos], 0))
            ln = float(torch.logsumexp(logp[r, neg], 0))
            out[b + r] = (lp - ln, lp, ln)
    return out


def _pulled_back(model: Any, p: Any, chunk: int = 8192) -> tuple[Any, float]:
    """(W_U p per row (rows, d_model), sum over rows of b_U . p): each vocabulary chunk's product in
    float32, the chunks summed in float64 (the same numbers enter the unsteered and the steered
    cross terms, so an unchanged model still gives a KL of exactly 0)."""
    import torch

    with torch.no_grad():
        Wt, b = model.W_U.T, model.b_U  # (vocab, d)
        up = torch.zeros(len(p), Wt.shape[1], dtype=torch.float64)
        pb = 0.0
        for i in range(0, Wt.shape[0], chunk):
            pc = p[:, i : i + chunk].float()
            up += (pc @ Wt[i : i + chunk].float()).double()
            pb += float((pc.double() @ b[i : i + chunk].double()).sum())
    return up, pb


class NeutralText:
    """Token rows of neutral texts and the unsteered model's next-token log-probabilities on them.

    :meth:`kl` is the mean over real positions after the start token of KL(unsteered || current),
    where "current" is the model under whatever hooks are active: the side effect of steering.

    On a HookedTransformer without a logit soft cap, sum_v p_v z_v (p the unsteered distribution, z
    the current logits) is linear in the final-normed residual h: h . (W_U p) + b_U . p, so W_U p is
    taken once per position (vocabulary chunks summed in float64) and only the log-normalizer of the current logits reads the
    vocabulary, for many vectors' rows at once.
    """

    def __init__(self, model: Any, texts: Sequence[str], max_tokens: int = 32, batch_size: int = 8) -> None:
        import torch

        from ..activations import bos_ids

        if not texts:
            raise DataError("no neutral texts: expected at least one text to measure side effects on")
        tok = model.tokenizer
        head = bos_ids(model)
        self.start = len(head)
        self.batches = []
        self.n_positions = 0
        self._prefix: dict[int, list[Any]] = {}  # layer -> residual after that block, per batch
        self.linear = unembeds_itself(model) and not (getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0) > 0
        every = [head + tok(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in texts]
        every.sort(key=len)  # rows of like length share a batch: less padding (the KL is a mean over positions)
        for b in range(0, len(every), batch_size):
            rows = every[b : b + batch_size]
            lengths = torch.as_tensor([len(r) for r in rows])
            ids = torch.full((len(rows), int(lengths.max())), tok.pad_token_id or 0, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.as_tensor(r)
            pos = torch.arange(ids.shape[1])[None, :]
            mask = pos < lengths[:, None]
            valid = mask & (pos >= self.start)
            # KL(p || q) = sum p log p - sum p log q: the first term is fixed, computed once (from the same
            # forward pass as p), with the formula of the second (:meth:`_cross`), so that an unchanged model gives 0
            final = self._final(model, ids, mask, valid)
            p_ref = torch.softmax(unembed_rows(model, final) if unembeds_itself(model) else final, -1)
            ref = _pulled_back(model, p_ref) if self.linear else p_ref
            batch = (ids, mask, valid, ref)
            self.batches.append((*batch, self._cross_of(model, final, ref)))
            self.n_positions += int(valid.sum())

    def kl(self, model: Any) -> float:

        total = 0.0
        for ids, mask, valid, ref, neg_entropy in self.batches:
            total += neg_entropy - self._cross(model, (ids, mask, valid, ref))
        return total / max(self.n_positions, 1)

    @staticmethod
    def _final(model: Any, ids: Any, mask: Any, valid: Any) -> Any:
        """At the valid positions: final residual rows (a HookedTransformer) or float32 logits (other models)."""
        import torch

        if not unembeds_itself(model):
            return logits_at(model, ids, mask.long(), valid)
        with torch.no_grad():
            return model(ids, attention_mask=mask.long(), stop_at_layer=model.cfg.n_layers)[valid]

    def _cross_of(self, model: Any, final: Any, ref: Any, lse: Any = None) -> float:
        """sum over positions of sum_v p_v log q_v, q from :meth:`_final`'s rows; ``ref`` is p, or
        (W_U p, b_U . p summed) when :attr:`linear`; ``lse``: the rows' log-normalizers if known."""
        import torch

        if self.linear:
            Up, pb = ref
            with torch.no_grad():
                pz = float((final_normed(model, final).double() * Up).sum()) + pb
            if lse is None:
                lse = log_normalizer(model, final)[0]
            return pz - float(lse.sum())
        if unembeds_itself(model):
            lse, pz = log_normalizer(model, final, ref)
            return pz - float(lse.sum())
        return float((ref * torch.log_softmax(final, -1)).sum(dtype=torch.float64))

    def _cross(self, model: Any, batch: Sequence[Any]) -> float:
        """sum over the batch's positions of sum_v p_v log q_v under the model as it runs now."""
        ids, mask, valid, ref = batch[:4]
        return self._cross_of(model, self._final(model, ids, mask, valid), ref)

    def kl_steered(self, model: Any, vectors: np.ndarray, alpha: float, hook: str) -> list[float]:
        """:meth:`kl` under ``steering(model, v, alpha, hook, start=<after the start token>)`` for each
        row v of ``vectors``.

        For a HookedTransformer and a ``blocks.<k>.hook_resid_post`` hook the texts run up to block k
        once per k (kept for later calls; run with no hooks active), each vector is added to that
        residual and only the later blocks run; the log-normalizers of every vector's rows are then
        taken in one pass over the vocabulary. Other models and hooks take the plain path.
        """
        import re

        import torch

        V = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
        if not (m and unembeds_itself(model)):
            out = []
            for v in V:
                with steering(model, v, alpha, hook, start=self.start):
                    out.append(self.kl(model))
            return out
        layer = int(m.group(1))
        if layer not in self._prefix:
            with torch.no_grad():
                self._prefix[layer] = [model(ids, attention_mask=mask.long(), stop_at_layer=layer + 1)
                                       for ids, mask, *_ in self.batches]
        finals = []  # (vector, batch) -> final residual rows at the valid positions
        with torch.no_grad():
            for v in V:
                for resid, (ids, mask, valid, *_) in zip(self._prefix[layer], self.batches):
                    r = resid.clone()
                    r[:, self.start:] += torch.as_tensor(alpha * v).to(r.dtype)
                    res = model(r, start_at_layer=layer + 1, stop_at_layer=model.cfg.n_layers,
                                attention_mask=mask.long())
                    finals.append(res[valid])
            lses = None
            if self.linear:  # one pass over the vocabulary for every vector's rows
                lses = torch.split(log_normalizer(model, torch.cat(finals))[0], [len(f) for f in finals])
        out, k = [], 0
        for _ in V:
            total = 0.0
            for ids, mask, valid, ref, neg_entropy in self.batches:
                total += neg_entropy - self._cross_of(model, finals[k], ref, None if lses is None else lses[k])
                k += 1
            out.append(total / max(self.n_positions, 1))
        return out


class SteeredTargets:
    """Target log-odds of evaluation prompts under many steering vectors at one hook.

    ``SteeredTargets(model, items, hook)(vectors, alpha)`` returns an array (m, n_prompts, 3) of
    what :func:`target_logodds` gives under ``steering(model, v, alpha, hook, start=<after the
    start token>)`` for each of the m vectors. For a HookedTransformer and a
    ``blocks.<k>.hook_resid_post`` hook the prompts run up to block k once; each vector is added
    to that residual and only the later blocks run, many vectors to a batch. Other models and
    hooks take the plain path. ``X`` holds the unsteered activations at the hook on the prompts'
    tokens after the start token (for :func:`covariance_directions`).
    """

    def __init__(self, model: Any, items: Sequence[EvalPrompt], hook: str, batch_size: int = 16,
                 ids: Sequence[tuple[list[int], list[int]]] | None = None, max_rows: int = 128) -> None:
        import re

        import torch

        from ..activations import bos_ids, forward_rows
        from ..hooks import check_hooks

        check_hooks(model, [hook])
        self.model, self.items, self.hook, self.batch_size = model, list(items), hook, batch_size
        self.ids = list(ids) if ids is not None else target_ids(model, items)
        self.head = bos_ids(model)
        tok = model.tokenizer
        self.rows = [self.head + tok(it.prompt, add_special_tokens=False)["input_ids"] for it in self.items]
        m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook)
        self.fast = bool(m) and unembeds_itself(model)
        self.max_rows = max(int(max_rows), len(self.rows))
        n = len(self.rows)
        if self.fast:
            self.layer = int(m.group(1))  # type: ignore[union-attr]
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            self.lengths = torch.as_tensor([len(r) for r in self.rows])
            L = int(self.lengths.max())
            ids_t = torch.full((n, L), pad, dtype=torch.long)
            for i, r in enumerate(self.rows):
                ids_t[i, : len(r)] = torch.as_tensor(r)
            self.mask = (torch.arange(L)[None, :] < self.lengths[:, None]).long()
            with torch.no_grad():
                self.resid = model(ids_t, attention_mask=self.mask, stop_at_layer=self.layer + 1)
            acts = self.resid.float().numpy()
        else:
            acts = forward_rows(model, self.rows, [hook])[hook].float().cpu().numpy()
        self.X = np.concatenate([acts[r, len(self.head) : len(row)] for r, row in enumerate(self.rows)])
        width = max(max(len(p), len(q)) for p, q in self.ids)

        def padded(sets: list[list[int]]) -> tuple[Any, Any]:  # ids padded with a repeat, masked out by -inf
            idx = torch.as_tensor([t + [t[0]] * (width - len(t)) for t in sets])
            off = torch.as_tensor([[0.0] * len(t) + [-np.inf] * (width - len(t)) for t in sets], dtype=torch.float64)
            return idx, off

        self.pos, self.pos_off = padded([p for p, _ in self.ids])
        self.neg, self.neg_off = padded([q for _, q in self.ids])

    def __call__(self, vectors: np.ndarray, alpha: float, normalized: bool = True) -> np.ndarray:
        """``normalized=False``: the log-odds alone (column 0), columns 1 and 2 NaN. The log-odds
        needs only the target tokens' logits (the log-normalizer cancels), so on the fast path the
        vocabulary is not read; null draws that only count their log-odds save that product."""
        V = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if not self.fast or alpha == 0:
            if alpha == 0:
                base = target_logodds(self.model, self.items, self.batch_size, self.ids)
                return np.repeat(base[None], len(V), axis=0)
            out = []
            for v in V:
                with steering(self.model, v, alpha, self.hook, start=len(self.head)):
                    out.append(target_logodds(self.model, self.items, self.batch_size, self.ids))
            return np.stack(out)
        return self._fast(V, float(alpha), normalized)

    def _fast(self, V: np.ndarray, alpha: float, normalized: bool = True) -> np.ndarray:
        import torch

        model, n = self.model, len(self.rows)
        out = np.empty((len(V), n, 3))
        start = len(self.head)
        pending = []  # rows whose log-normalizer is taken at the end, in one pass over the vocabulary
        with torch.no_grad():
            for idx in length_buckets(self.lengths.tolist()):  # prompts of like length together: less padding
                nb, L = len(idx), int(self.lengths[idx].max())
                resid, mask, lengths = self.resid[idx, :L], self.mask[idx, :L], self.lengths[idx]
                pos, pos_off, neg, neg_off = self.pos[idx], self.pos_off[idx], self.neg[idx], self.neg_off[idx]
                per = max(1, self.max_rows // nb)
                for c in range(0, len(V), per):
                    Vc = torch.as_tensor(alpha * V[c : c + per]).to(resid.dtype)
                    mc = len(Vc)
                    r = resid.unsqueeze(0).repeat(mc, 1, 1, 1)
                    r[:, :, start:, :] += Vc[:, None, None, :]
                    res = model(r.reshape(mc * nb, L, -1), start_at_layer=self.layer + 1,
                                stop_at_layer=model.cfg.n_layers, attention_mask=mask.repeat(mc, 1))
                    last = res.reshape(mc, nb, L, -1)[:, torch.arange(nb), lengths - 1]  # (mc, nb, d)
                    lp = torch.logsumexp(logits_of(model, last, pos).double() + pos_off, -1)
                    ln = torch.logsumexp(logits_of(model, last, neg).double() + neg_off, -1)
                    out[c : c + mc, idx, 0] = (lp - ln).numpy()
                    if normalized:
                        out[c : c + mc, idx, 1] = lp.numpy()
                        out[c : c + mc, idx, 2] = ln.numpy()
                        pending.append((slice(c, c + mc), idx, last.reshape(mc * nb, -1)))
                    else:
                        out[c : c + mc, idx, 1:] = np.nan
            if pending:
                lse = log_normalizer(model, torch.cat([h for *_, h in pending]))[0].numpy()
                k = 0
                for rows, idx, h in pending:
                    part = lse[k : k + len(h)].reshape(rows.stop - rows.start, len(idx))
                    k += len(h)
                    out[rows, idx, 1] -= part
                    out[rows, idx, 2] -= part
        return out


def length_buckets(lengths: Sequence[int]) -> list[np.ndarray]:
    """Indices of rows grouped so that padding each group to its longest row pads less: the split
    of the rows sorted by length into a shorter and a longer run that pads least, used when it
    saves at least a tenth of the padded tokens (else one group of all rows). Each group in order."""
    L = np.asarray(lengths)
    order = np.argsort(L, kind="stable")
    s = L[order]
    n = len(s)
    full = n * int(s[-1]) if n else 0
    cost, cut = full, n
    for k in range(1, n):
        c = k * int(s[k - 1]) + (n - k) * int(s[-1])
        if c < cost:
            cost, cut = c, k
    if n < 2 or cost > 0.9 * full:
        return [np.arange(n)]
    return [np.sort(order[:cut]), np.sort(order[cut:])]
