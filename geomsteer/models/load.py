"""Loading: tokenizers, Hugging Face and TransformerLens models, models passed in by the caller, re-randomization."""

from __future__ import annotations

import functools
import os
import weakref
from typing import Any, Sequence

import numpy as np

from .._progress import step
from ..errors import ConfigError, DataError
from .gguf import quiet_transformers
from .registry import ResolvedModel, resolve


# --------------------------------------------------------------------------------------------
# Loading


@functools.lru_cache(maxsize=4)
def _tokenizer_at(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(model: str | ResolvedModel):
    """The Hugging Face tokenizer of a model (cached per process)."""
    r = model if isinstance(model, ResolvedModel) else resolve(model)
    return _tokenizer_at(str(r.path))


def load_hf_model(model: str | ResolvedModel, dtype: str = "float32", device: str = "cpu"):
    """The Hugging Face causal LM, loaded from the resolved local directory."""
    from transformers import AutoModelForCausalLM

    r = model if isinstance(model, ResolvedModel) else resolve(model)
    torch_dtype = _torch_dtype(dtype)
    check_device(device)
    quiet_transformers()
    hf = AutoModelForCausalLM.from_pretrained(str(r.path), dtype=torch_dtype)
    return hf.to(device).eval()


def check_device(device: str) -> str:
    """Validate a torch device string against what this machine has."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: expected a torch device such as 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} is not available: this machine has no CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} is not available: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s); use an index below that")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available on this machine; use --device cpu")
    return device


def _torch_dtype(dtype: str):
    import torch

    table = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}: expected one of {', '.join(table)}")
    return table[dtype]


def load_model(model: str | ResolvedModel, device: str = "cpu", dtype: str = "float32") -> Any:
    """A TransformerLens model with the model's raw weights (no layer-norm folding or centering).

    Registry models load as ``HookedTransformer`` under TransformerLens's official name; local
    directories, GGUF files and ``qwen2.5-0.5b`` (whose config TransformerLens would fetch from the
    hub) load as a ``TransformerBridge`` booted from the local directory. Neither computes logits unless asked:
    use ``stop_at_layer`` / ``run_with_cache(names_filter=...)`` for residuals.
    """
    r = model if isinstance(model, ResolvedModel) else resolve(model)
    check_device(device)
    key = (str(r.path), r.tl_name, device, dtype)
    if os.environ.get("GEOMSTEER_KEEP_MODELS") and key in _KEPT:
        tl = _KEPT[key]
        tl.reset_hooks()
        return tl
    tok = load_tokenizer(r)
    with step(f"Loading {r.name} into TransformerLens"):
        if r.tl_name is not None:
            from transformer_lens import HookedTransformer

            hf = load_hf_model(r, dtype=dtype)
            try:
                tl = HookedTransformer.from_pretrained_no_processing(
                    r.tl_name, hf_model=hf, tokenizer=_for_transformer_lens(tok), device=device, dtype=dtype
                )
            except (RuntimeError, ValueError, KeyError, AssertionError, IndexError) as e:
                raise DataError(_mismatch_message(r, hf, e)) from None
            del hf
            _store_as_read(tl)
        else:
            from transformer_lens.model_bridge import TransformerBridge

            tl = TransformerBridge.boot_transformers(str(r.path), device=device, dtype=_torch_dtype(dtype), tokenizer=tok)
    tl.eval()
    _RESOLVED[tl] = r
    if os.environ.get("GEOMSTEER_KEEP_MODELS"):
        _KEPT[key] = tl
    return tl


def _for_transformer_lens(tok: Any) -> Any:
    """The tokenizer to hand to TransformerLens, which loads it again from disk with
    ``add_bos_token=True`` unless it says it adds the BOS itself (2.4 s for Gemma 3's). A tokenizer
    that already starts every encoding with its BOS encodes the same either way (tested), so it gets
    a shallow copy marked as adding it. The copy shares the original's state, so only a tokenizer
    that TransformerLens will not change (it sets a missing pad or EOS token) is handed over this way."""
    import copy

    if tok.bos_token_id is None or tok("")["input_ids"][:1] != [tok.bos_token_id]:
        return tok
    if tok.pad_token is None or tok.eos_token is None:
        return tok
    marked = copy.copy(tok)
    marked.init_kwargs = {**tok.init_kwargs, "add_bos_token": True}
    return marked


def _store_as_read(tl: Any) -> None:
    """Store a HookedTransformer's projection weights in the memory order its forward reads them.

    TransformerLens transposes and copies the MLP, attention and unembedding weights on every call
    (``W.T.contiguous()``, ``rearrange(...).contiguous()``): for Gemma 3 270M that copied about
    270 MB per forward pass, which dominated one-token generation steps. Each weight keeps its shape
    and values; only its strides change, so that those copies become no-ops. The forward pass reads
    the same memory as before and its results are bit-identical (tested).
    """

    def reorder(p: Any, order: tuple[int, ...]) -> None:
        if p is None or p.dim() != len(order):
            return
        inverse = [order.index(i) for i in range(len(order))]
        p.data = p.data.permute(*order).contiguous().permute(*inverse)

    for block in getattr(tl, "blocks", []):
        mlp, attn = getattr(block, "mlp", None), getattr(block, "attn", None)
        for name in ("W_in", "W_gate", "W_out"):  # F.linear(x, W.T.contiguous())
            reorder(getattr(mlp, name, None), (1, 0))
        for name in ("W_Q", "W_K", "W_V", "_W_K", "_W_V"):  # "h d_model d_head -> (h d_head) d_model"
            if isinstance(getattr(type(attn), name, None), property):
                continue  # grouped-query attention derives W_K/W_V from _W_K/_W_V
            reorder(getattr(attn, name, None), (0, 2, 1))
        reorder(getattr(attn, "W_O", None), (2, 0, 1))  # "h d_head d_model -> d_model (h d_head)"
    reorder(getattr(getattr(tl, "unembed", None), "W_U", None), (1, 0))  # F.linear(x, W_U.T.contiguous())


def _mismatch_message(r: ResolvedModel, hf: Any, error: Exception) -> str:
    """Why TransformerLens could not take the cached weights: its own configuration for the name against the files'."""
    have = {"layers": getattr(hf.config, "num_hidden_layers", "?"), "d_model": getattr(hf.config, "hidden_size", "?"),
            "vocabulary": getattr(hf.config, "vocab_size", "?")}
    want: dict[str, Any] = {}
    try:
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config

        cfg = get_pretrained_model_config(r.tl_name)
        want = {"layers": cfg.n_layers, "d_model": cfg.d_model, "vocabulary": cfg.d_vocab}
    except Exception:  # TransformerLens cannot even build its configuration for the name
        pass
    shape = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
    theirs = f" (TransformerLens expects {shape(want)}; the files have {shape(have)})" if want else \
        f" (the files have {shape(have)})"
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return (f"the weights of {r.name!r} in {r.path} do not match TransformerLens's configuration for {r.tl_name}"
            f"{theirs}: {first}. The cached snapshot is not that model: delete it and download {r.hf_id} again, or "
            f"pass the directory itself as --model {r.path} (loaded as a TransformerBridge from its own config.json)")


# The model name and files behind every model load_model returned, so that a loaded model can be
# passed wherever a name is accepted (its provenance and unembedding are still known).
_RESOLVED: "weakref.WeakKeyDictionary[Any, ResolvedModel]" = weakref.WeakKeyDictionary()


def resolved_of(model: Any) -> ResolvedModel | None:
    """What ``model`` was loaded from, if :func:`load_model` loaded it."""
    try:
        return _RESOLVED.get(model)
    except TypeError:  # not weak-referenceable: not a model geomsteer loaded
        return None


def runtime_of(model: Any) -> dict[str, str]:
    """Where a loaded model runs: ``{"device": ..., "dtype": ...}`` of its weights, for provenance."""
    p = next(iter(model.parameters()), None)
    device = getattr(model.cfg, "device", None) or (p.device if p is not None else "cpu")
    dtype = p.dtype if p is not None else getattr(model.cfg, "dtype", "float32")
    return {"device": str(device), "dtype": str(dtype).replace("torch.", "")}


def use_model(model: Any, device: str = "cpu", dtype: str = "float32") -> tuple[Any, ResolvedModel]:
    """A loaded model and what it was loaded from, given a name (loads it) or a model object.

    A model :func:`load_model` returned keeps its name and files; any other TransformerLens model
    (``HookedTransformer`` or ``TransformerBridge`` with a tokenizer) is used as it is and named by
    its ``cfg.model_name``, its provenance saying it was passed in."""
    if isinstance(model, (str, os.PathLike, ResolvedModel)):
        r = model if isinstance(model, ResolvedModel) else resolve(os.fspath(model))
        return load_model(r, device=device, dtype=dtype), r
    r = resolved_of(model)
    if r is None:
        cfg = getattr(model, "cfg", None)
        if cfg is None or getattr(model, "tokenizer", None) is None or not hasattr(model, "hook_dict"):
            raise ConfigError(f"expected a model name (see 'geomsteer models') or a TransformerLens model with a "
                              f"tokenizer, got a {type(model).__name__}; load one with gs.load_model(name)")
        name = str(getattr(cfg, "model_name", "") or type(model).__name__)
        r = ResolvedModel(name=name, path=None, hf_id=None, tl_name=None, provenance={
            "source": "a model object passed by the caller (not loaded by geomsteer)", "model_name": name,
            "n_layers": int(cfg.n_layers), "d_model": int(cfg.d_model)})
        _RESOLVED[model] = r
    return model, r


# With GEOMSTEER_KEEP_MODELS set (the test suite sets it), load_model keeps each loaded model for
# the rest of the process and hands the same object out again (hooks reset); rerandomize drops a
# model it shuffles from here, so a shuffled model is never handed out as the trained one.
_KEPT: dict[tuple, Any] = {}


def rerandomize(model: Any, seed: int = 0, embedding_rows: Sequence[int] | None = None) -> Any:
    """Shuffle the entries of every weight tensor of ``model`` in place; returns the model.

    The re-randomized-model baseline: the same architecture, tokenizer and per-tensor weight
    distributions (so every layer keeps its scale: embeddings, norm gains and projections stay in
    the numeric range the architecture expects), with every learned structure destroyed. Tied
    tensors are shuffled once. Each tensor has its own generator, seeded from ``seed`` and the
    tensor's place in ``named_parameters()``, so two tensors are shuffled at a time with the same
    result.

    ``embedding_rows``: for a caller that reads only these tokens (the word passes of
    ``similarity``), only these rows of the token embedding are drawn, as distinct entries of the
    whole matrix taken uniformly at random, which is what a full shuffle puts at those positions;
    every other row, and the unembedding, are set to NaN so that a pass reading them shows it.
    This skips shuffling the embedding matrices (a third of the parameters of Gemma 3 270M).
    """
    import torch

    for k in [k for k, m in _KEPT.items() if m is model]:
        del _KEPT[k]
    embed, unembed = _embedding_tensors(model) if embedding_rows is not None else (None, ())
    if embedding_rows is not None and embed is None:
        raise ConfigError(f"embedding_rows needs a model whose token embedding geomsteer can find, got a "
                          f"{type(model).__name__}; call rerandomize(model, seed) without it")
    rows = np.unique(np.asarray([] if embedding_rows is None else embedding_rows, dtype=np.int64).reshape(-1))
    if embedding_rows is not None and (rows.min(initial=0) < 0 or rows.max(initial=0) >= embed.shape[0]):
        raise DataError(f"embedding_rows must lie in 0..{embed.shape[0] - 1}, got {rows.min()}..{rows.max()}; take "
                        "them from this model's tokenizer")
    params = list(model.named_parameters())  # lists a shared tensor once

    def shuffle(i: int, p: Any) -> None:
        gen_seed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        if p is embed:
            vals = distinct_draws(np.random.default_rng(gen_seed), p.numel(), len(rows) * p.shape[1])
            picked = p.data.reshape(-1)[torch.as_tensor(vals)].reshape(len(rows), p.shape[1])
            p.data.fill_(float("nan"))
            p.data[torch.as_tensor(rows)] = picked
            return
        if any(p is u for u in unembed):
            p.data.fill_(float("nan"))
            return
        flat = p.data.reshape(-1)
        perm = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(gen_seed))
        p.data.copy_(flat[perm].reshape(p.shape))

    from concurrent.futures import ThreadPoolExecutor

    order = sorted(range(len(params)), key=lambda i: -params[i][1].numel())  # largest first
    with torch.no_grad(), ThreadPoolExecutor(max_workers=2) as pool:
        for f in [pool.submit(shuffle, i, params[i][1]) for i in order]:
            f.result()
    return model


def distinct_draws(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """``k`` distinct integers of ``0..n-1`` in random order, uniformly: draws with replacement,
    a repeat of an earlier draw thrown away (the first ``k`` of a uniformly shuffled ``arange(n)``
    have this distribution). Fast when ``k`` is much smaller than ``n``."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot draw {k} distinct integers below {n}")
    out = np.empty(0, dtype=np.int64)
    while len(out) < k:
        drawn = np.concatenate([out, rng.integers(0, n, size=int((k - len(out)) * 1.1) + 16)])
        _, first = np.unique(drawn, return_index=True)
        out = drawn[np.sort(first)]  # each value where it first came, in the order drawn
    return out[:k]


def _embedding_tensors(model: Any) -> tuple[Any, tuple]:
    """The token-embedding parameter and the unembedding's parameters (weight, bias) of a
    HookedTransformer or a TransformerBridge; (None, ()) when not found."""
    if hasattr(model, "original_model"):  # TransformerBridge: the Hugging Face model's own modules
        hf = model.original_model
        emb, out = hf.get_input_embeddings(), hf.get_output_embeddings()
        return (getattr(emb, "weight", None),
                tuple(t for t in (getattr(out, "weight", None), getattr(out, "bias", None)) if t is not None))
    embed, unembed = getattr(model, "embed", None), getattr(model, "unembed", None)
    return (getattr(embed, "W_E", None),
            tuple(t for t in (getattr(unembed, "W_U", None), getattr(unembed, "b_U", None)) if t is not None))
