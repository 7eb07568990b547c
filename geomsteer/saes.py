"""Sparse autoencoders through SAELens: train on cached activations, save, load, measure.

Training uses SAELens's own ``SAETrainer`` and training SAE classes (TopK by default; standard
and JumpReLU available), fed from geomsteer's activation store. Activations are normalized to
an expected norm of sqrt(d_in) during training (SAELens's ``expected_average_only_in``), and
the factor is folded back into the weights, so the saved SAE reads raw activations. Saved SAEs
are in SAELens's format and load with ``sae_lens.SAE.load_from_disk``.

Quality metrics on held-out activations: L0, fraction of variance explained, and the fraction
of features that never fire (dead); :func:`ce_loss_recovered` splices the SAE into the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

from . import _atomic, _progress
from .errors import ConfigError, DataError, GeomsteerError

__all__ = ["ARCHITECTURES", "SaeDir", "read_sae_dir", "train_sae", "save_sae", "load_sae", "load_pretrained", "encode", "sae_metrics",
           "ce_loss_recovered", "logit_lens", "top_contexts"]

ARCHITECTURES = ("topk", "standard", "jumprelu")


def _classes(architecture: str):
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    table = {"topk": (TopKTrainingSAE, TopKTrainingSAEConfig),
             "standard": (StandardTrainingSAE, StandardTrainingSAEConfig),
             "jumprelu": (JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig)}
    if architecture not in table:
        raise ConfigError(f"unknown SAE architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
    return table[architecture]


def _batches(X: np.ndarray, batch_size: int, seed: int) -> Iterator[Any]:
    """Shuffled minibatches of rows of X, epoch after epoch, as float32 torch tensors."""
    import torch

    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(X))
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield torch.from_numpy(np.ascontiguousarray(X[np.sort(order[i : i + batch_size])], dtype=np.float32))


def train_sae(X: np.ndarray, d_sae: int = 4096, architecture: str = "topk", k: int = 32,
              total_tokens: int | None = None, batch_size: int = 1024, lr: float = 2e-3, seed: int = 0,
              l1_coefficient: float = 5.0, hook_name: str | None = None, model_name: str | None = None,
              aux_loss_coefficient: float = 1.0, progress: bool = True) -> Any:
    """Train an SAE on the rows of ``X`` (n, d_in) with SAELens; returns the trained ``TrainingSAE``.

    ``total_tokens`` defaults to one pass over X. For TopK, ``k`` latents fire per token and the
    auxiliary loss revives dead latents; ``l1_coefficient`` applies to the standard SAE and the
    sparsity coefficient of JumpReLU.
    """
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    X = np.asarray(X)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise DataError(f"expected finite activations of shape (n, d_in), got an array of shape {X.shape}"
                        + ("" if X.ndim != 2 else " with NaN or infinite values"))
    n, d_in = X.shape
    if n < batch_size:
        raise ConfigError(f"training needs at least one batch: got {n} activations for a batch size of {batch_size}; "
                          "extract more tokens or lower the batch size")
    if d_sae < 1 or (architecture == "topk" and not 0 < k <= d_sae):
        raise ConfigError(f"expected d_sae >= 1 and 0 < k <= d_sae, got d_sae={d_sae}, k={k}")
    train_cls, cfg_cls = _classes(architecture)
    torch.manual_seed(seed)
    common = dict(d_in=d_in, d_sae=d_sae, normalize_activations="expected_average_only_in")
    if architecture == "topk":
        cfg = cfg_cls(k=k, aux_loss_coefficient=aux_loss_coefficient, **common)
    elif architecture == "standard":
        cfg = cfg_cls(l1_coefficient=l1_coefficient, **common)
    else:
        cfg = cfg_cls(l0_coefficient=l1_coefficient, **common)
    cfg.metadata.hook_name = hook_name
    cfg.metadata.model_name = model_name
    sae = train_cls(cfg)
    total = int(total_tokens or n)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total, train_batch_size_samples=batch_size, lr=lr, lr_end=lr / 10,
        lr_warm_up_steps=max(1, total // batch_size // 20), lr_decay_steps=total // batch_size // 5, device="cpu",
        n_batches_for_norm_estimate=min(100, max(1, n // batch_size)),
        dead_feature_window=max(1, min(1000, total // batch_size // 4)),
        feature_sampling_window=max(1, min(2000, total // batch_size // 2)),
    )
    # Start the decoder bias at the (normalized) mean activation: residual streams carry a large
    # mean, and with b_dec at zero every token's pre-activations are dominated by it, so the same few
    # latents win and the rest die. SAELens scales inputs by sqrt(d_in) / E|x| during training.
    with torch.no_grad():
        sample = X[np.random.default_rng(seed).choice(n, size=min(n, 50_000), replace=False)].astype(np.float64)
        scale = np.sqrt(d_in) / np.linalg.norm(sample, axis=1).mean()
        sae.b_dec.copy_(torch.as_tensor(sample.mean(0) * scale, dtype=sae.b_dec.dtype))
    trainer = SAETrainer(trainer_cfg, sae, _batches(X, batch_size, seed))
    if progress and not _progress._quiet():
        return trainer.fit()
    # SAETrainer draws its own tqdm bar and takes no switch for it: silence it for this call only.
    import functools

    from sae_lens.training import sae_trainer
    from tqdm.auto import tqdm

    sae_trainer.tqdm = functools.partial(tqdm, disable=True)
    try:
        return trainer.fit()
    finally:
        sae_trainer.tqdm = tqdm


def save_sae(sae: Any, out: str | Path, metrics: dict | None = None, extra: dict | None = None,
             replace: bool = False) -> Path:
    """Save an SAE in SAELens's format (``SAE.load_from_disk`` reads it), with geomsteer's metrics beside it.

    Written atomically; an existing ``out`` is replaced only with ``replace``.
    """
    out = Path(out)
    with _atomic.staged_dir(out, replace=replace) as tmp:
        if hasattr(sae, "save_inference_model"):
            sae.save_inference_model(tmp)
        else:
            sae.save_model(tmp)
        if metrics is not None or extra is not None:
            (tmp / "geomsteer.json").write_text(json.dumps({"metrics": metrics or {}, **(extra or {})}, indent=2))
    return out


def load_sae(path: str | Path, d_in: int | None = None, hook_name: str | None = None) -> Any:
    """Load a SAELens-format SAE from a directory; optionally check it fits ``d_in`` / ``hook_name``."""
    return read_sae_dir(path, hook=hook_name, d_in=d_in).sae


@dataclass(frozen=True)
class SaeDir:
    """An SAE directory: the SAELens SAE and what geomsteer recorded beside it (``geomsteer.json``).

    ``hook`` is where the SAE reads activations; ``model`` the model it was trained on (``None``
    when the directory was not written by ``geomsteer sae train``); ``info`` the whole record.
    """

    path: Path | None
    sae: Any
    hook: str | None
    model: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def metrics(self) -> dict:
        return dict(self.info.get("metrics", {}))

    def held_out_store(self) -> Any:
        """The activation store of held-out tokens the SAE was measured on (for top contexts)."""
        from .activations import ActivationStore

        where = self.info.get("activation_stores", {}).get("held_out")
        if not where:
            raise DataError(f"{str(self.path)!r} has no geomsteer.json with held-out activations: expected an SAE "
                            "written by 'geomsteer sae train', which records the model, hook and held-out tokens")
        try:
            store = ActivationStore(where)
        except GeomsteerError:
            raise DataError(f"the held-out activations of {str(self.path)!r} are no longer cached (at {where}); "
                            "retrain the SAE with 'geomsteer sae train' to rebuild them") from None
        if self.hook not in store.manifest.get("d", {}):
            raise DataError(f"the held-out store {where} has no activations at {self.hook}")
        if store.manifest["d"][self.hook] != self.d_in:
            raise DataError(f"the SAE reads vectors of size {self.d_in} but the activations at {self.hook} have size "
                            f"{store.manifest['d'][self.hook]}; use an SAE trained on this model and hook")
        return store

    def __repr__(self) -> str:
        return (f"SaeDir({str(self.path) if self.path else None!r}, model={self.model!r}, hook={self.hook!r}, d_in={self.d_in}, "
                f"d_sae={self.d_sae})")


def read_sae_dir(path: str | Path | SaeDir, *, hook: str | None = None, d_in: int | None = None) -> SaeDir:
    """The one reader of SAE directories: SAELens's ``cfg.json`` and weights, and ``geomsteer.json`` if present.

    Errors say what the directory lacks. ``hook`` and ``d_in``, when given, are checked against the SAE.
    """
    if isinstance(path, SaeDir):
        found = path
    else:
        p = Path(path)
        if not p.is_dir() or not (p / "cfg.json").is_file():
            raise DataError(f"{str(p)!r} is not an SAE directory: expected SAELens's cfg.json in it (as written by "
                            "'geomsteer sae train' or SAE.save_model)")
        try:
            cfg = json.loads((p / "cfg.json").read_text())
        except ValueError as e:
            raise DataError(f"{str(p / 'cfg.json')!r} is not valid JSON ({e}); expected SAELens's SAE config") from None
        missing = [k for k in ("d_in", "d_sae", "dtype") if k not in cfg] if isinstance(cfg, dict) else ["d_in"]
        if missing:
            raise DataError(f"{str(p / 'cfg.json')!r} lacks {', '.join(repr(m) for m in missing)}: expected the config "
                            "SAELens writes with an SAE (SAE.save_model, or 'geomsteer sae train')")
        from sae_lens import SAE

        try:
            sae = SAE.load_from_disk(str(p), device="cpu")
        except (KeyError, TypeError, ValueError, FileNotFoundError, OSError) as e:
            raise DataError(f"SAELens cannot load the SAE in {str(p)!r} ({type(e).__name__}: {e}); expected a "
                            "directory written by 'geomsteer sae train' or SAE.save_model") from None
        info: dict = {}
        if (p / "geomsteer.json").is_file():
            try:
                info = json.loads((p / "geomsteer.json").read_text())
            except ValueError:
                raise DataError(f"{str(p / 'geomsteer.json')!r} is not valid JSON; it is written by "
                                "'geomsteer sae train'; retrain or remove it") from None
        meta_hook = sae.cfg.metadata.get("hook_name") if hasattr(sae.cfg, "metadata") else None
        found = SaeDir(p, sae, info.get("hook") or meta_hook, info.get("model"), info)
    if d_in is not None and found.d_in != d_in:
        raise DataError(f"the SAE at {str(found.path)!r} reads vectors of size {found.d_in}, but the activations have "
                        f"size {d_in}; use an SAE trained on this model and hook")
    if hook is not None and found.hook and found.hook != hook:
        raise DataError(f"the SAE at {str(found.path)!r} was trained at hook {found.hook!r}, not {hook!r}; use an SAE "
                        "trained at this hook")
    return found


def load_pretrained(release: str, sae_id: str) -> Any:
    """A pretrained SAE from SAELens's registry by release and id (needs the hub or its local cache)."""
    import os

    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device="cpu")
    except ValueError as e:  # SAELens's message for an unknown release or id
        raise DataError(f"SAELens does not know SAE {sae_id!r} in release {release!r}: {e}") from None
    except Exception as e:  # offline, or the files are not cached
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({type(e).__name__})"
        from .errors import ModelUnavailableError

        raise ModelUnavailableError(
            f"pretrained SAE {release}/{sae_id} is not in the local cache and {why}; train one with "
            "'geomsteer sae train' or load a local SAELens directory") from None


def encode(sae: Any, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Feature activations (n, d_sae) of the rows of X."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            out.append(sae.encode(torch.as_tensor(np.asarray(X[i : i + batch_size], dtype=np.float32))).numpy())
    return np.concatenate(out) if out else np.zeros((0, sae.cfg.d_sae), dtype=np.float32)


def sae_metrics(sae: Any, X: np.ndarray, batch_size: int = 8192) -> dict[str, float]:
    """L0, fraction of variance explained and dead-feature fraction on held-out activations X."""
    import torch

    X = np.asarray(X, dtype=np.float32)
    l0 = 0.0
    resid = 0.0
    fired = np.zeros(sae.cfg.d_sae, dtype=bool)
    mean = X.mean(0, dtype=np.float64)
    total = float(((X - mean) ** 2).sum(dtype=np.float64))
    with torch.no_grad():
        for i in range(0, len(X), batch_size):
            x = torch.as_tensor(X[i : i + batch_size])
            f = sae.encode(x)
            r = sae.decode(f)
            active = (f > 0).numpy()
            l0 += float(active.sum())
            fired |= active.any(0)
            resid += float(((r - x) ** 2).sum(dtype=torch.float64))
    return {"l0": l0 / len(X), "fraction_variance_explained": 1.0 - resid / total,
            "dead_fraction": float(1.0 - fired.mean()), "n_tokens": int(len(X))}


def ce_loss_recovered(model: Any, sae: Any, hook: str, token_batches: list[tuple[np.ndarray, np.ndarray]],
                      bos_id: int | None = None, seed: int = 0) -> dict:
    """Cross-entropy with the SAE spliced in at ``hook``, against the clean model and two ablations.

    The SAE replaces the activation at every real position except the start token (``bos_id``;
    default: the model tokenizer's BOS when rows begin with it): the attention sink's huge residual
    is not what an SAE is trained on, and splicing it would charge the SAE for a position it never
    saw. The ablations leave it alone too. Reported, in nats per predicted token:

    - ``ce_clean``, ``ce_sae``, ``delta_ce`` = ce_sae - ce_clean (with a bootstrap 95% interval over
      sequences, ``delta_ce_ci95``);
    - ``ce_zero_ablation`` (the activation set to 0) and ``ce_mean_ablation`` (set to its mean over
      the same real, non-start positions): the floors;
    - ``ce_loss_recovered`` = (CE_zero - CE_sae) / (CE_zero - CE_clean), the usual score, and
      ``ce_loss_recovered_mean_ablation`` against the mean-ablation floor, which is the harder one.

    Only real (unpadded) next-token predictions count.
    """
    import torch

    if bos_id is None:
        tok = getattr(model, "tokenizer", None)
        bos_id = getattr(tok, "bos_token_id", None) if tok is not None else None
    current: dict[str, Any] = {}

    def keep(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Positions to intervene on: real tokens that are not the start token."""
        m = mask.bool().clone()
        if bos_id is not None:
            m &= ids != int(bos_id)
        return m

    from .steering.apply import unembed_rows, unembeds_itself

    fast = unembeds_itself(model)

    def nll_of(t: torch.Tensor, m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Next-token NLL (rows, positions - 1), zero where not ``valid``."""
        if not fast:
            logp = torch.log_softmax(model(t, attention_mask=m.long())[:, :-1].float(), -1)
            return -logp.gather(-1, t[:, 1:, None])[..., 0] * valid
        # A HookedTransformer: unembed only the real positions, a chunk at a time, with a plain product
        # (TransformerLens's Unembed copies the whole unembedding on every call)
        resid = model(t, attention_mask=m.long(), stop_at_layer=model.cfg.n_layers)
        r, c = torch.nonzero(valid, as_tuple=True)
        out = torch.zeros(valid.shape, dtype=torch.float32)
        for i in range(0, len(r), 256):
            rr, cc = r[i : i + 256], c[i : i + 256]
            lg = unembed_rows(model, resid[rr, cc])
            out[rr, cc] = torch.logsumexp(lg, -1) - lg.gather(-1, t[rr, cc + 1][:, None])[:, 0]
        return out

    def run(fwd_hooks) -> tuple[np.ndarray, np.ndarray]:
        totals, counts = [], []
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            for ids, mask in token_batches:
                t = torch.as_tensor(ids)
                m = torch.as_tensor(mask).bool()
                current["sel"] = keep(t, m)
                valid = m[:, 1:] & m[:, :-1]
                nll = nll_of(t, m, valid)
                totals.append(nll.sum(1).double().numpy())
                counts.append(valid.sum(1).numpy())
        return np.concatenate(totals), np.concatenate(counts)

    def replace(fn):
        def hook_fn(act, hook):
            sel = current["sel"].to(act.device)
            out = act.clone()
            out[sel] = fn(act[sel]).to(act.dtype)
            return out
        return hook_fn

    # the mean activation over the positions the interventions touch
    sums: dict[str, Any] = {"s": None, "n": 0}

    def collect(act, hook):
        x = act[current["sel"].to(act.device)].double()
        sums["s"] = x.sum(0) if sums["s"] is None else sums["s"] + x.sum(0)
        sums["n"] += len(x)
        return act

    clean_t, n_tok = run([(hook, collect)])
    mean = (sums["s"] / max(sums["n"], 1)).float() if sums["s"] is not None else None
    sae_t, _ = run([(hook, replace(lambda x: sae.decode(sae.encode(x))))])
    zero_t, _ = run([(hook, replace(torch.zeros_like))])
    mean_t, _ = run([(hook, replace(lambda x: mean.expand_as(x)))]) if mean is not None else (clean_t, n_tok)
    N = max(int(n_tok.sum()), 1)
    clean, spliced, zero, mabl = (float(x.sum()) / N for x in (clean_t, sae_t, zero_t, mean_t))

    def recovered(floor: float) -> float:
        denom = floor - clean
        return (floor - spliced) / denom if abs(denom) > 1e-12 else float("nan")

    rows = n_tok > 0
    cis: dict[str, list[float] | None] = {"delta_ce": None, "ce_loss_recovered": None,
                                          "ce_loss_recovered_mean_ablation": None}
    if rows.sum() >= 2:  # sequences resampled: tokens within a sequence are not independent
        rng = np.random.default_rng([seed, 0xCE])
        idx = rng.integers(0, int(rows.sum()), size=(1000, int(rows.sum())))
        tot = {k: v[rows][idx].sum(1) for k, v in (("clean", clean_t), ("sae", sae_t), ("zero", zero_t), ("mean", mean_t))}
        cnt = n_tok[rows][idx].sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            boots = {"delta_ce": (tot["sae"] - tot["clean"]) / cnt,
                     "ce_loss_recovered": (tot["zero"] - tot["sae"]) / (tot["zero"] - tot["clean"]),
                     "ce_loss_recovered_mean_ablation": (tot["mean"] - tot["sae"]) / (tot["mean"] - tot["clean"])}
        for k, b in boots.items():
            b = b[np.isfinite(b)]
            cis[k] = [float(np.quantile(b, 0.025)), float(np.quantile(b, 0.975))] if b.size else None
    return {"ce_clean": clean, "ce_sae": spliced, "delta_ce": spliced - clean, "delta_ce_ci95": cis["delta_ce"],
            "ce_zero_ablation": zero, "ce_mean_ablation": mabl,
            "ce_loss_recovered": recovered(zero), "ce_loss_recovered_mean_ablation": recovered(mabl),
            "ce_loss_recovered_ci95": cis["ce_loss_recovered"],
            "ce_loss_recovered_mean_ablation_ci95": cis["ce_loss_recovered_mean_ablation"],
            "ce_positions_spliced": int(sums["n"]), "ce_start_token_left_unspliced": bos_id is not None,
            "ce_sequences": int(rows.sum()), "ce_tokens_predicted": N}


def quality_statistics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The headline SAE measures in the shared statistic shape.

    They describe how well the SAE reconstructs; there is no structure to test against a null, so
    each says so in ``p_reason``. Intervals resample sequences (cross-entropy measures)."""
    from .stats import statistic

    reason = ("a reconstruction measure, not a test: the zero- and mean-ablation cross-entropies are its reference "
              "points, not null distributions")
    out = {}
    for key, n_key in (("delta_ce", "ce_sequences"), ("ce_loss_recovered", "ce_sequences"),
                       ("ce_loss_recovered_mean_ablation", "ce_sequences"), ("fraction_variance_explained", "n_tokens"),
                       ("l0", "n_tokens"), ("dead_fraction", "n_tokens")):
        if key not in metrics:
            continue
        ci = metrics.get(f"{key}_ci95")
        why = ("fewer than two sequences to resample" if n_key == "ce_sequences" else
               "measured over held-out tokens that are not independent (neighbours share a document); no interval "
               "is claimed")
        out[key] = statistic(metrics[key], int(metrics.get(n_key) or 0), nulls={}, ci95=ci, ci95_reason=why,
                             alternative="two-sided", p_reason=reason)
    return out


# --------------------------------------------------------------------------------------------
# Feature analysis


def logit_lens(sae: Any, feature: int, W_U: np.ndarray, k: int = 10,
               norm_scale: np.ndarray | None = None) -> dict[str, list[tuple[int, float]]]:
    """Top and bottom tokens of the feature's decoder direction read through the unembedding.

    ``W_U`` is the unembedding (vocab, d_model); the score of token y is
    (W_dec[feature] * norm_scale) . W_U[y], where ``norm_scale`` is the final norm's elementwise
    scale (how the model reads its residual stream before unembedding; omitted when None).
    """
    check_feature(sae, feature)
    w = sae.W_dec.detach().float().numpy()[feature]
    if norm_scale is not None:
        w = w * np.asarray(norm_scale, dtype=np.float32)
    scores = np.asarray(W_U, dtype=np.float32) @ w
    top = np.argsort(-scores)[:k]
    bottom = np.argsort(scores)[:k]
    return {"top": [(int(i), float(scores[i])) for i in top], "bottom": [(int(i), float(scores[i])) for i in bottom]}


def check_feature(sae: Any, feature: int) -> None:
    if not isinstance(feature, (int, np.integer)) or not 0 <= feature < sae.cfg.d_sae:
        raise ConfigError(f"feature {feature!r} does not exist: this SAE has features 0..{sae.cfg.d_sae - 1}")


def top_contexts(acts: np.ndarray, token_ids: np.ndarray, doc_index: np.ndarray, position: np.ndarray,
                 n: int = 10, window: int = 8) -> list[dict]:
    """The ``n`` tokens where a feature fires most, each with ``window`` tokens of context either side.

    ``acts`` (n_tokens,) is the feature's activation on the rows of an activation store whose rows
    carry ``token_ids``, ``doc_index`` and ``position``. Each context lists (token id, activation)
    pairs in order, with the index of the firing token.
    """
    order = np.argsort(-acts)[:n]
    out = []
    key = doc_index.astype(np.int64) * (int(position.max()) + 1) + position
    sort = np.argsort(key)
    for i in order:
        if acts[i] <= 0:
            break
        same = sort[(doc_index[sort] == doc_index[i])]
        pos = position[same]
        keep = same[(pos >= position[i] - window) & (pos <= position[i] + window)]
        out.append({"activation": float(acts[i]), "doc_index": int(doc_index[i]), "position": int(position[i]),
                    "tokens": [(int(token_ids[j]), float(acts[j])) for j in keep],
                    "firing": int(np.nonzero(keep == i)[0][0])})
    return out
