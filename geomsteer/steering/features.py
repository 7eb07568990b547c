"""Causal experiments on SAE features: what an intervention at one layer changes downstream.

:class:`FeatureLab` holds a model, SAEs at an upstream hook and at later hooks, evaluation prompts
with target tokens and neutral texts, and the clean run's references. Under any intervention (the
context managers of :mod:`geomsteer.interventions`, or a steering vector) ``lab.measure()`` reads

- the change of every SAE feature at each later hook that has an SAE (mean over the measured
  tokens: the prompts' and the neutral texts' tokens after the start token),
- the shift of the target log-odds on each evaluation prompt,
- the KL divergence from the clean model on each neutral text (mean over its positions).

The ``measure_*`` functions run the three experiments of ``geomsteer features`` and return frozen
measurements (arrays only); :mod:`geomsteer.analyzers.features` turns them into statistics.

Nulls (DESIGN: random live features of the same activation frequency): :func:`matched_features`
draws, for each target feature, a feature that fires on the measured tokens with a nearby
frequency (the ``window`` nearest in frequency rank), never a target.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..interventions import check_features

__all__ = ["FeatureLab", "Effect", "matched_features", "DoseMeasurements", "measure_dose", "GraphMeasurements",
           "measure_graph", "CompareMeasurements", "measure_compare", "RelationMeasurements", "measure_relations",
           "DEFAULT_FACTORS", "ERROR_NODE"]

DEFAULT_FACTORS = (0.0, 0.5, 2.0)
ERROR_NODE = -1  # the SAE error term as an upstream node of the attribution graph


class _Stop(Exception):
    pass


@dataclass(frozen=True)
class Effect:
    """What one intervention changed: per prompt, per neutral text, per downstream feature."""

    shift: np.ndarray | None  # (n_prompts,) target log-odds shift
    kl: np.ndarray | None  # (n_texts,) KL(clean || intervened), mean over each text's positions
    mean_change: Mapping[str, np.ndarray]  # hook -> (d_sae,) mean signed code change over the tokens
    mean_abs_change: Mapping[str, np.ndarray]  # hook -> (d_sae,)


def _sae_hook(sae: Any) -> str | None:
    meta = getattr(sae.cfg, "metadata", None)
    return getattr(meta, "hook_name", None) if meta is not None else None


class FeatureLab:
    """A model, its SAEs and the texts every feature intervention is measured on.

    ``saes`` maps hooks to SAEs; ``hook`` (one of them) is where interventions happen, and every SAE at
    a later layer is read. ``items`` are evaluation prompts (:class:`~geomsteer.steering.EvalPrompt`);
    ``neutral`` are texts for the side effect, cut to ``max_tokens`` tokens.
    """

    def __init__(self, model: Any, saes: Mapping[str, Any], hook: str, items: Sequence[Any], neutral: Sequence[str],
                 *, max_tokens: int = 24) -> None:
        import torch

        from ..activations import bos_ids
        from ..hooks import check_hooks, layer_of
        from .apply import unembeds_itself
        from .evaluate import target_ids

        if hook not in saes:
            raise ConfigError(f"no SAE at the intervention hook {hook}; the SAEs given are at {', '.join(saes) or 'none'}")
        self.hooked = unembeds_itself(model)  # a HookedTransformer stops early and unembeds only what is read
        d = int(model.cfg.d_model)
        for h, sae in saes.items():
            if int(sae.cfg.d_in) != d:
                raise DataError(f"the SAE for {h} reads vectors of size {sae.cfg.d_in}, but this model's residual "
                                f"stream has size {d}; use SAEs trained on this model")
            at = _sae_hook(sae)
            if at and at != h:
                raise DataError(f"the SAE given for {h} was trained at {at}; give each SAE at its own hook")
        check_hooks(model, list(saes))
        if not items:
            raise DataError("no evaluation prompts: the target log-odds are read on held-out prompts")
        if not neutral:
            raise DataError("no neutral texts: the side effect (KL) is read on neutral text")
        self.model, self.saes, self.hook = model, dict(saes), hook
        k = layer_of(hook)
        self.later = sorted((h for h in saes if layer_of(h) > k), key=layer_of)
        if not self.later:
            raise ConfigError(f"no SAE after the intervention hook {hook}: give SAEs at later layers too")
        self.items = list(items)
        self.ids = target_ids(model, self.items)
        head = bos_ids(model)
        self.start = len(head)
        tok = model.tokenizer
        rows_a = [head + tok(it.prompt, add_special_tokens=False)["input_ids"] for it in self.items]
        rows_b = [head + tok(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in neutral]
        rows_b = [r for r in rows_b if len(r) > self.start]
        if not rows_b:
            raise DataError("the neutral texts hold no tokens after the start token: give texts with at least one word")
        self.n_prompts, self.n_texts = len(rows_a), len(rows_b)
        self._a = self._batch(rows_a)
        self._b = self._batch(rows_b)
        self.n_layers_run = max(layer_of(h) for h in self.later) + 1
        with torch.no_grad():
            acts, last = self._run(self._a, [hook, *self.later], final=True)
            self.base_logodds = self._logodds(last)
            acts_b, logp = self._run(self._b, [hook, *self.later], final=True, all_positions=True)
        self.ref_p = logp.exp()  # (n_valid_b, vocab): KL(p || q) = sum p log p - sum p log q, the first term fixed
        self.ref_plogp = (self.ref_p * logp).sum(-1, dtype=torch.float64)
        del logp
        # the row of every measured token, prompts' then neutral texts' (as x[valid] orders them)
        self._b_text = self._b["valid"].nonzero()[:, 0]
        self._row_of_token = torch.cat([self._a["valid"].nonzero()[:, 0], self._b_text])
        self.codes0 = {h: self._encode(h, acts[h], acts_b[h]) for h in [hook, *self.later]}
        self.n_tokens = int(self.codes0[hook].shape[0])
        c = self.codes0[hook]
        self.frequency = (c > 0).float().mean(0).numpy().astype(np.float64)  # upstream features, on these tokens
        self.code_scale = {h: float(v[v > 0].mean()) if bool((v > 0).any()) else 1.0
                           for h, v in self.codes0.items()}

    # ------------------------------------------------------------------ batches and passes
    def _batch(self, rows: list[list[int]]) -> dict[str, Any]:
        import torch

        tok = self.model.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        lengths = torch.as_tensor([len(r) for r in rows])
        ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.as_tensor(r)
        pos = torch.arange(ids.shape[1])[None, :]
        mask = pos < lengths[:, None]
        return {"ids": ids, "mask": mask.long(), "valid": mask & (pos >= self.start), "lengths": lengths}

    def _run(self, batch: dict, hooks: Sequence[str], final: bool = False,
             all_positions: bool = False) -> tuple[dict[str, Any], Any]:
        """Residuals at ``hooks`` and (``final``) the logits at each row's last token, or log-probabilities at
        every valid position (``all_positions``)."""
        import torch

        from .apply import unembed_rows

        model = self.model
        got: dict[str, Any] = {}
        last_hook = max(hooks, key=lambda h: int(h.split(".")[1])) if hooks else None

        def saver(name: str):
            def save(x, hook):
                got[name] = x
                if not final and name == last_hook:
                    raise _Stop
            return save

        ids, mask = batch["ids"], batch["mask"]
        out = None
        with model.hooks(fwd_hooks=[(h, saver(h)) for h in hooks]):
            try:
                res = self._forward(ids, mask, final)
            except _Stop:
                res = None
        if final and res is not None:
            where = (batch["valid"] if all_positions else
                     (torch.arange(batch["ids"].shape[0]), batch["lengths"] - 1))
            out = unembed_rows(model, res[where]) if self.hooked else res[where].float()
            if all_positions:
                out = torch.log_softmax(out, -1)
        return got, out

    def _forward(self, ids: Any, mask: Any, final: bool) -> Any:
        """The final residual (HookedTransformer) or the logits (other models); without ``final`` a
        HookedTransformer stops after the last SAE layer (other models stop when its hook raises)."""
        if not self.hooked:
            return self.model(ids, attention_mask=mask)
        return self.model(ids, attention_mask=mask, stop_at_layer=self.model.cfg.n_layers if final else self.n_layers_run)

    def _encode(self, h: str, xa: Any, xb: Any) -> Any:
        import torch

        sae = self.saes[h]
        X = torch.cat([xa[self._a["valid"]], xb[self._b["valid"]]])
        return sae.encode(X.to(sae.W_dec.dtype)).detach()

    def _logodds(self, last_logits: Any) -> np.ndarray:
        import torch

        logp = torch.log_softmax(last_logits.double(), -1)
        out = np.empty(len(self.ids))
        for r, (pos, neg) in enumerate(self.ids):
            out[r] = float(torch.logsumexp(logp[r, pos], 0) - torch.logsumexp(logp[r, neg], 0))
        return out

    # ------------------------------------------------------------------ measuring under active hooks
    def measure(self, logodds: bool = True, kl: bool = True, codes: bool = True) -> Effect:
        """What the hooks active now change (the clean run is the reference); ``codes=False`` reads only the
        target log-odds (and the KL), not the later SAEs."""
        import torch

        read = self.later if codes else []
        with torch.no_grad():
            acts, last = self._run(self._a, read, final=logodds)
            acts_b, logp = self._run(self._b, read, final=kl, all_positions=True) if (codes or kl) else ({}, None)
        shift = self._logodds(last) - self.base_logodds if logodds else None
        kls = None
        if kl:
            per = self.ref_plogp - (self.ref_p * logp).sum(-1, dtype=torch.float64)
            kls = (torch.zeros(self.n_texts, dtype=torch.float64).index_add_(0, self._b_text, per)
                   / torch.bincount(self._b_text, minlength=self.n_texts).double()).numpy()
        mean, mean_abs = {}, {}
        for h in read:
            dc = (self._encode(h, acts[h], acts_b[h]) - self.codes0[h]).double()
            mean[h], mean_abs[h] = dc.mean(0).numpy(), dc.abs().mean(0).numpy()
        return Effect(shift, kls, mean, mean_abs)

    # ------------------------------------------------------------------ many single-feature edits at once
    def rows_firing(self, feature: int) -> tuple[Any, Any]:
        """The rows of the prompts' and of the neutral batch on which an upstream feature fires (after the
        start token): the only rows its ablation can change."""
        import torch

        fires = self.codes0[self.hook][:, feature] > 0
        n_a = int(self._a["valid"].sum())
        return (torch.unique(self._row_of_token[:n_a][fires[:n_a]]),
                torch.unique(self._row_of_token[n_a:][fires[n_a:]]))

    def replicated(self, deltas: Callable[..., Any], n: int, *, dual: bool = False,
                   rows: Callable[[int], tuple[Any, Any]] | None = None, max_rows: int = 128) -> dict[str, np.ndarray]:
        """Mean code change at each later hook for ``n`` edits of the upstream residual, each edit on its own
        copy of the rows it can change (``rows(j)``: row indices into the prompts' and the neutral batch;
        default every row), packed ``max_rows`` rows to a forward pass. ``deltas(x, f, err, j)`` gives the
        change of edit ``j`` (``f`` the upstream codes, ``err`` the SAE error). ``dual``: the change is a
        forward-mode tangent instead (first order: gradient x change, the attribution-patching estimate).
        Returns hook -> (n, d_sae) signed means over all the measured tokens (unchanged rows count as 0)."""
        import torch
        import torch.autograd.forward_ad as fwAD

        sae = self.saes[self.hook]
        sums = {h: torch.zeros(n, int(self.saes[h].cfg.d_sae), dtype=torch.float64) for h in self.later}
        for which, batch in enumerate((self._a, self._b)):
            every = torch.arange(batch["ids"].shape[0])
            jobs = [(j, torch.as_tensor(r, dtype=torch.long)) for j in range(n)
                    for r in [rows(j)[which] if rows else every] if len(r)]
            first_token = torch.cumsum(batch["valid"].sum(1), 0) - batch["valid"].sum(1)
            offset = 0 if which == 0 else int(self._a["valid"].sum())
            passes: list[list] = [[]]
            for job in jobs:
                if passes[-1] and sum(len(r) for _, r in passes[-1]) + len(job[1]) > max_rows:
                    passes.append([])
                passes[-1].append(job)
            for group in (g for g in passes if g):
                sel = torch.cat([r for _, r in group])
                bounds = np.cumsum([0] + [len(r) for _, r in group])
                valid = batch["valid"][sel]
                counts = valid.sum(1)
                tok_bounds = np.concatenate([[0], np.cumsum(counts.numpy())])[bounds]

                def edit(x, hook):
                    xs = x[:, self.start:]
                    f = sae.encode(xs.to(sae.W_dec.dtype))
                    err = xs - sae.decode(f).to(x.dtype)
                    d = torch.zeros_like(x)
                    for g, (j, _) in enumerate(group):
                        lo, hi = bounds[g], bounds[g + 1]
                        d[lo:hi, self.start:] = deltas(xs[lo:hi], f[lo:hi], err[lo:hi], j)
                    return fwAD.make_dual(x, d) if dual else x + d

                got: dict[str, Any] = {}

                def reader(name: str):
                    def read(x, hook):
                        s = self.saes[name]
                        X = x[valid]
                        if dual:
                            t = fwAD.unpack_dual(s.encode(X.to(s.W_dec.dtype))).tangent
                            got[name] = torch.zeros(X.shape[0], int(s.cfg.d_sae)) if t is None else t.detach()
                        else:
                            # the clean codes of the same tokens: each row's tokens are contiguous in codes0
                            idx = torch.cat([offset + first_token[r] + torch.arange(int(batch["valid"][r].sum()))
                                             for r in sel.tolist()])
                            got[name] = s.encode(X.to(s.W_dec.dtype)).detach() - self.codes0[name][idx]
                        if name == self.later[-1]:
                            raise _Stop
                    return read

                ctx = fwAD.dual_level() if dual else contextlib.nullcontext()
                with torch.no_grad(), ctx, self.model.hooks(
                        fwd_hooks=[(self.hook, edit)] + [(h, reader(h)) for h in self.later]):
                    try:
                        self._forward(batch["ids"][sel], batch["mask"][sel], False)
                    except _Stop:
                        pass
                for h in self.later:
                    G = got[h].double()
                    for g, (j, _) in enumerate(group):
                        sums[h][j] += G[tok_bounds[g] : tok_bounds[g + 1]].sum(0)
        return {h: (v / self.n_tokens).numpy() for h, v in sums.items()}


def matched_features(frequency: np.ndarray, targets: Sequence[int], n_draws: int, seed: int,
                     window: int = 20, exclude: Sequence[int] = ()) -> np.ndarray:
    """``n_draws`` sets of live features, each feature drawn from the ``window`` live non-target features
    nearest in activation frequency to its target (a frequency-matched null), none of ``exclude``; a set
    repeats no feature. Shape (n_draws, len(targets))."""
    freq = np.asarray(frequency, dtype=np.float64)
    targets = [int(t) for t in targets]
    banned = set(targets) | {int(e) for e in exclude}
    cand = np.array([i for i in np.flatnonzero(freq > 0) if i not in banned])
    if len(cand) < len(targets):
        raise DataError(f"only {len(cand)} other features fire on the measured tokens; a frequency-matched null needs "
                        f"at least {len(targets)}: measure on more text or use fewer features")
    order = cand[np.argsort(freq[cand], kind="stable")]
    sorted_freq = freq[order]
    rng = np.random.default_rng([seed, 0xFEA7])
    w = max(1, min(int(window), len(order)))
    out = np.empty((n_draws, len(targets)), dtype=np.int64)
    for i in range(n_draws):
        chosen: set[int] = set()
        for j, t in enumerate(targets):
            p = int(np.searchsorted(sorted_freq, freq[t]))
            lo = max(0, min(p - w // 2, len(order) - w))
            pool = [int(x) for x in order[lo : lo + w] if int(x) not in chosen]
            if not pool:
                pool = [int(x) for x in order if int(x) not in chosen]
            pick = pool[int(rng.integers(len(pool)))]
            chosen.add(pick)
            out[i, j] = pick
    return out


def _changed(e: Effect, lab: FeatureLab, threshold: float, per: float = 1.0) -> list[int]:
    """Per later hook, the features whose mean |code change| (times ``per``) exceeds ``threshold`` x the
    layer's mean active code."""
    return [int((per * e.mean_abs_change[h] > threshold * lab.code_scale[h]).sum()) for h in lab.later]


# ------------------------------------------------------------------------------------------
# Dose: scale a set of features, and frequency-matched random sets


@dataclass(frozen=True)
class DoseMeasurements:
    """Scaling the target features (and each random set) by each factor at the intervention hook."""

    params: Mapping[str, Any]
    hook: str
    later: tuple[str, ...]
    features: tuple[int, ...]
    frequency: np.ndarray  # (len(features),) on the measured tokens
    factors: tuple[float, ...]
    shift: np.ndarray  # (n_factors, n_prompts)
    kl: np.ndarray  # (n_factors, n_texts)
    changed: np.ndarray  # (n_factors, n_later) features changed beyond threshold x code scale
    null_features: np.ndarray  # (n_null, len(features))
    null_shift: np.ndarray  # (n_null, n_factors, n_prompts)
    null_kl: np.ndarray  # (n_null, n_factors, n_texts)
    null_changed: np.ndarray  # (n_null, n_factors, n_later)
    n_tokens: int


def check_factors(factors: Sequence[float]) -> list[float]:
    out = [float(f) for f in factors]
    if not out or not all(np.isfinite(out)):
        raise ConfigError(f"scale factors must be finite numbers, got {list(factors)!r}; for example --factors 0 0.5 2")
    if 1.0 in out:
        raise ConfigError("a factor of 1 changes nothing; leave it out")
    return sorted(set(out))


def measure_dose(lab: FeatureLab, features: Sequence[int], *, factors: Sequence[float] = DEFAULT_FACTORS,
                 n_null: int = 20, threshold: float = 0.1, seed: int = 0,
                 progress: Callable[[], None] | None = None) -> DoseMeasurements:
    """Scale ``features`` (together) by each factor at the lab's hook, and ``n_null`` frequency-matched random
    feature sets likewise; read every effect. ``progress`` is called once per intervention."""
    from ..interventions import intervene

    sae = lab.saes[lab.hook]
    feats = check_features(sae, features)
    factors = check_factors(factors)
    if n_null < 2:
        raise ConfigError(f"n_null must be at least 2 random feature sets, got {n_null}; 20 is the default")
    null_feats = matched_features(lab.frequency, feats, n_null, seed)

    def run(fs: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # a downstream change counts per token the set fires on (the scaling changes nothing elsewhere)
        fire = int((lab.codes0[lab.hook][:, list(fs)] > 0).any(1).sum())
        per = lab.n_tokens / max(fire, 1)
        sh, kl, ch = [], [], []
        for a in factors:
            with intervene(lab.model, sae, lab.hook, fs, "scale", value=a, start=lab.start):
                e = lab.measure()
            sh.append(e.shift)
            kl.append(e.kl)
            ch.append(_changed(e, lab, threshold, per))
            if progress:
                progress()
        return np.array(sh), np.array(kl), np.array(ch)

    shift, kl, changed = run(feats)
    nulls = [run(list(r)) for r in null_feats]
    params = {"factors": factors, "n_null": n_null, "threshold": threshold, "seed": seed}
    return DoseMeasurements(params, lab.hook, tuple(lab.later), tuple(feats), lab.frequency[feats], tuple(factors),
                            shift, kl, changed, null_feats, np.stack([n[0] for n in nulls]),
                            np.stack([n[1] for n in nulls]), np.stack([n[2] for n in nulls]), lab.n_tokens)


# ------------------------------------------------------------------------------------------
# Graph: ablate each upstream feature; real effects and the attribution estimate


@dataclass(frozen=True)
class GraphMeasurements:
    """Code change of every downstream feature (mean over the measured tokens) when each upstream feature is
    zero-ablated; the tokens each upstream feature fires on."""

    params: Mapping[str, Any]
    hook: str
    later: tuple[str, ...]
    features: tuple[int, ...]
    frequency: np.ndarray
    real: Mapping[str, np.ndarray]  # hook -> (n_up, d_sae) real ablation
    attribution: Mapping[str, np.ndarray]  # hook -> (n_up + 1, d_sae): the features, then the error node
    null_features: np.ndarray  # (n_null,)
    null_real: Mapping[str, np.ndarray]  # hook -> (n_null, d_sae)
    code_scale: Mapping[str, float]
    mean_codes: Mapping[str, np.ndarray]  # hook -> (d_sae,) clean mean code of each downstream feature
    seconds: Mapping[str, float] = field(default_factory=dict)
    n_tokens: int = 0
    fires: np.ndarray | None = None  # (n_up,) tokens on which each upstream feature fires
    null_fires: np.ndarray | None = None  # (n_null,)


def _ablation_deltas(sae: Any, feats: Sequence[int]) -> Callable[..., Any]:
    W = sae.W_dec.detach()

    def delta(x, f, err, j):
        u = feats[j]
        if u == ERROR_NODE:
            return -err
        return (-f[..., u, None] * W[u]).to(x.dtype)

    return delta


def measure_graph(lab: FeatureLab, features: Sequence[int], *, n_null: int = 50, attribution: bool = True,
                  seed: int = 0) -> GraphMeasurements:
    """Zero-ablate each upstream feature (one at a time) and read the mean code change of every feature at
    each later hook; the same for ``n_null`` frequency-matched random live features (the edge null); and
    the forward-mode attribution estimate (gradient x activation) for every upstream feature and the SAE
    error term."""
    import time

    sae = lab.saes[lab.hook]
    feats = check_features(sae, features)
    if n_null < 2:
        raise ConfigError(f"n_null must be at least 2 random features, got {n_null}; 50 is the default")
    # n_null distinct random live features, each matched in frequency to an upstream feature drawn at random
    live_others = int(sum(1 for f in np.flatnonzero(lab.frequency > 0) if int(f) not in feats))
    if n_null > live_others:
        raise DataError(f"only {live_others} other features fire on the measured tokens, fewer than the {n_null} "
                        "random features asked for: ask for fewer null draws")
    rng = np.random.default_rng([seed, 0x6A])
    like = [feats[int(i)] for i in rng.integers(len(feats), size=n_null)]
    null_feats = matched_features(lab.frequency, like, 1, seed, exclude=feats)[0]

    def fires(fs: Sequence[int]) -> np.ndarray:
        return (lab.codes0[lab.hook][:, [int(f) for f in fs]] > 0).sum(0).numpy().astype(np.int64)

    t = time.perf_counter()
    real = lab.replicated(_ablation_deltas(sae, feats), len(feats), rows=lambda j: lab.rows_firing(feats[j]))
    t_real = time.perf_counter() - t
    t = time.perf_counter()
    null_real = lab.replicated(_ablation_deltas(sae, list(null_feats)), len(null_feats),
                               rows=lambda j: lab.rows_firing(int(null_feats[j])))
    t_null = time.perf_counter() - t
    attr: dict[str, np.ndarray] = {}
    t_attr = 0.0
    if attribution:
        t = time.perf_counter()
        every = (np.arange(lab.n_prompts), np.arange(lab.n_texts))
        attr = lab.replicated(_ablation_deltas(sae, [*feats, ERROR_NODE]), len(feats) + 1, dual=True,
                              rows=lambda j: lab.rows_firing(feats[j]) if j < len(feats) else every)
        t_attr = time.perf_counter() - t
    params = {"n_null": n_null, "attribution": attribution, "seed": seed}
    return GraphMeasurements(params, lab.hook, tuple(lab.later), tuple(feats), lab.frequency[feats], real, attr,
                             np.asarray(null_feats), null_real, dict(lab.code_scale),
                             {h: lab.codes0[h].double().mean(0).numpy() for h in lab.later},
                             {"real_ablations": t_real, "null_ablations": t_null, "attribution": t_attr},
                             lab.n_tokens, fires(feats), fires(null_feats))


# ------------------------------------------------------------------------------------------
# Compare: the vector, its top-k feature reconstruction, clamping those features, at matched effect


@dataclass(frozen=True)
class CompareMeasurements:
    """Three ways to steer, each at the multiplier that matches one target shift: the vector's at ``alpha``, or,
    when a feature method cannot reach that, the largest shift every method reaches (the vector scaled down)."""

    params: Mapping[str, Any]
    hook: str
    later: tuple[str, ...]
    alpha: float
    features: tuple[int, ...]
    coefficients: np.ndarray  # (k,) non-negative: alpha * v ~ sum_i c_i d_i
    explained: float  # fraction of |alpha v|^2 the k atoms explain
    scan: Mapping[str, Any]  # method -> {"multipliers": [...], "shift": [...]}
    matched: Mapping[str, Any]  # method -> multiplier found (None: not reached), "<method>_used", "target"
    effects: Mapping[str, Effect]  # method -> effect at its matched multiplier
    null_features: np.ndarray  # (n_null, k)
    null_effects: Mapping[str, tuple[Effect, ...]]  # method -> random feature sets at the method's multiplier
    threshold: float
    code_scale: Mapping[str, float]
    n_tokens: int


SCAN = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _feature_steer(lab: FeatureLab, method: str, feats: Sequence[int], coefs: np.ndarray, m: float) -> Any:
    from ..interventions import intervene
    from .apply import steering

    sae = lab.saes[lab.hook]
    if method == "reconstruction":
        r = (np.asarray(coefs, dtype=np.float32) @ sae.W_dec.detach().float().numpy()[list(feats)])
        return steering(lab.model, r, float(m), lab.hook, start=lab.start)
    return intervene(lab.model, sae, lab.hook, feats, "clamp", value=float(m) * np.asarray(coefs), start=lab.start)


def measure_compare(lab: FeatureLab, vector: Any, alpha: float, *, k: int = 8, n_null: int = 20,
                    threshold: float = 0.1, seed: int = 0, scan: Sequence[float] = SCAN,
                    progress: Callable[[], None] | None = None) -> CompareMeasurements:
    """Steer with ``alpha * v``; decompose ``alpha * v`` over the decoder (non-negative matching pursuit, ``k``
    atoms); steer by adding the reconstruction and by clamping those features to their coefficients, each
    scaled by a multiplier found by scanning ``scan`` and interpolating to the vector's mean target shift;
    read every effect at the matched multipliers, and for ``n_null`` frequency-matched random feature
    sets given the same coefficients at the same multipliers."""
    from ..sparse import omp
    from .apply import steering

    sae = lab.saes[lab.hook]
    v = np.asarray(getattr(vector, "vector", vector), dtype=np.float64)
    if v.shape != (int(lab.model.cfg.d_model),):
        raise DataError(f"the vector has size {v.shape[0]}, the model's residual stream {lab.model.cfg.d_model}")
    if not np.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"the multiplier must be a finite non-zero number, got {alpha!r}")
    if k < 1:
        raise ConfigError(f"k must be a positive number of features, got {k}")
    if n_null < 2:
        raise ConfigError(f"n_null must be at least 2 random feature sets, got {n_null}; 20 is the default")
    W = sae.W_dec.detach().double().numpy()
    sc = omp(W, alpha * v, k, True)
    feats = [int(i) for i in sc["atoms"]]
    # omp's coefficients are on unit atoms: in the features' own units (activations) divide by the decoder norms
    coefs = np.asarray(sc["coefficients"], dtype=np.float64) / np.linalg.norm(W[feats], axis=1)
    keep = coefs > 0
    feats, coefs = [f for f, kp in zip(feats, keep) if kp], coefs[keep]
    if not feats:
        raise DataError("non-negative matching pursuit found no feature with a positive coefficient for this vector")
    recon = coefs @ W[feats]
    explained = float(1 - np.sum((alpha * v - recon) ** 2) / np.sum((alpha * v) ** 2))

    def tick():
        if progress:
            progress()

    def shift_of(method: str, m: float) -> float:
        if method == "vector":
            ctx = steering(lab.model, v.astype(np.float32), float(m) * float(alpha), lab.hook, start=lab.start)
        else:
            ctx = _feature_steer(lab, method, feats, coefs, m)
        with ctx:
            out = float(lab.measure(kl=False, codes=False).shift.mean())
        tick()
        return out

    # the vector's effect at alpha is the target; the feature methods are scanned for it. When a method cannot
    # reach it (steering breaks down first), the target becomes the largest effect every method reaches, and
    # the vector is scaled down to it as well: the comparison is always at one matched effect.
    target = shift_of("vector", 1.0)
    scans = {}
    for method in ("reconstruction", "clamp"):
        scans[method] = {"multipliers": [float(m) for m in scan], "shift": [shift_of(method, m) for m in scan]}
    sign = 1.0 if target >= 0 else -1.0
    reach = min(max(sign * np.array(sc["shift"])) for sc in scans.values())
    matched: dict[str, Any] = {"vector": 1.0, "target_at_alpha": target}
    if reach < abs(target):
        fractions = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
        scans["vector"] = {"multipliers": [f * float(alpha) for f in fractions],
                           "shift": [shift_of("vector", f) for f in fractions[:-1]] + [target]}
        target = sign * float(reach)
        matched["vector"] = _interpolate(fractions, scans["vector"]["shift"], target)
    matched["target"] = target
    effects = {}
    for method in ("vector", "reconstruction", "clamp"):
        if method != "vector":
            matched[method] = _interpolate(scans[method]["multipliers"], scans[method]["shift"], target)
        m = matched[method]
        if m is None:  # the vector's own scan starts above the target: use its smallest multiplier
            m = 0.125 if method == "vector" else float(scan[0])
        matched[method + "_used"] = float(m) * (float(alpha) if method == "vector" else 1.0)
        if method == "vector":
            ctx = steering(lab.model, v.astype(np.float32), float(m) * float(alpha), lab.hook, start=lab.start)
        else:
            ctx = _feature_steer(lab, method, feats, coefs, m)
        with ctx:
            effects[method] = lab.measure()
        tick()
    null_feats = matched_features(lab.frequency, feats, n_null, seed)
    null_effects = {}
    for method in ("reconstruction", "clamp"):
        out = []
        for r in null_feats:
            with _feature_steer(lab, method, list(r), coefs, matched[method + "_used"]):
                out.append(lab.measure())
            tick()
        null_effects[method] = tuple(out)
    params = {"alpha": alpha, "k": k, "n_null": n_null, "threshold": threshold, "seed": seed, "scan": list(scan)}
    return CompareMeasurements(params, lab.hook, tuple(lab.later), float(alpha), tuple(feats), coefs, explained,
                               scans, matched, effects, null_feats, null_effects, threshold, dict(lab.code_scale),
                               lab.n_tokens)


def _interpolate(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x at which the piecewise-linear curve through (xs, ys) reaches ``target`` (None if never)."""
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if (y0 - target) * (y1 - target) <= 0 and y0 != y1:
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    if ys and ys[0] == target:
        return float(xs[0])
    return None


# ------------------------------------------------------------------------------------------
# Relations: the features a vector changes, their clusters, and their effects on the output


@dataclass(frozen=True)
class RelationMeasurements:
    """The features a steering vector changes most at its own hook, how they relate, and what each does."""

    params: Mapping[str, Any]
    hook: str
    features: tuple[int, ...]  # the vector's most changed features (mean |code change| over the tokens)
    mean_abs_change: np.ndarray  # (M,)
    co_change: np.ndarray  # (M, M) correlation over tokens of the features' code changes under steering
    decoder_cosine: np.ndarray  # (M, M)
    co_activation: np.ndarray  # (M, M) correlation over tokens of the clean codes
    output_effect: np.ndarray  # (M, vocab) mean change of next-token log-probabilities when each feature is added
    n_tokens: int


def _corr(X: np.ndarray) -> np.ndarray:
    X = X - X.mean(0)
    sd = np.sqrt((X**2).sum(0))
    C = (X.T @ X) / np.outer(np.where(sd > 0, sd, 1.0), np.where(sd > 0, sd, 1.0))
    C[sd == 0, :] = 0.0
    C[:, sd == 0] = 0.0
    return C


def measure_relations(lab: FeatureLab, vector: Any, alpha: float, *, top: int = 32) -> RelationMeasurements:
    """Steer with ``alpha * v`` and re-encode the residual at the hook: the ``top`` features whose codes change
    most, the correlation of their changes over the tokens, their decoder cosines and clean co-activation;
    then add each feature's decoder direction, scaled to its mean active code, and read the mean change of the
    next-token log-probabilities on the evaluation prompts (each feature's effect on the output)."""
    import torch

    from .apply import steering

    if top < 2:
        raise ConfigError(f"relations need at least 2 features, got top={top}")
    if not np.isfinite(alpha) or alpha == 0:
        raise ConfigError(f"the multiplier must be a finite non-zero number, got {alpha!r}")
    sae = lab.saes[lab.hook]
    v = np.asarray(getattr(vector, "vector", vector), dtype=np.float32)
    with torch.no_grad():
        with steering(lab.model, v, float(alpha), lab.hook, start=lab.start):
            acts, _ = lab._run(lab._a, [lab.hook])
            acts_b, _ = lab._run(lab._b, [lab.hook])
        steered = lab._encode(lab.hook, acts[lab.hook], acts_b[lab.hook]).double().numpy()
    clean = lab.codes0[lab.hook].double().numpy()
    dC = steered - clean
    score = np.abs(dC).mean(0)
    feats = [int(f) for f in np.argsort(-score)[:top] if score[f] > 0]
    if len(feats) < 2:
        raise DataError("the vector changes fewer than 2 SAE features at its hook: nothing to relate")
    W = sae.W_dec.detach().double().numpy()[feats]
    U = W / np.linalg.norm(W, axis=1, keepdims=True)
    effects = []
    with torch.no_grad():
        base = torch.log_softmax(lab._run(lab._a, [lab.hook], final=True)[1].double(), -1)
    for f in feats:
        col = clean[:, f]
        scale = float(col[col > 0].mean()) if (col > 0).any() else float(lab.code_scale[lab.hook])
        with torch.no_grad(), steering(lab.model, W[feats.index(f)].astype(np.float32), scale, lab.hook, start=lab.start):
            logp = torch.log_softmax(lab._run(lab._a, [lab.hook], final=True)[1].double(), -1)
        effects.append((logp - base).mean(0).numpy())
    return RelationMeasurements({"alpha": float(alpha), "top": top}, lab.hook, tuple(feats), score[feats],
                                _corr(dC[:, feats]), U @ U.T, _corr(clean[:, feats]), np.stack(effects).astype(np.float32),
                                lab.n_tokens)
