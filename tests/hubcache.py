"""Fabricated Hugging Face caches: a hub model's files as snapshot_download leaves them, with random weights.

The commands researchers type first name hub models (``--model gemma-2b``); with no network these
caches let the tests run those paths offline, under ``HF_HOME`` in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

COMMIT = "0" * 40


def snapshot_dir(hf_home: Path, repo_id: str) -> Path:
    """Where a snapshot of ``repo_id`` lives in a cache rooted at ``hf_home`` (refs/main pointing at it)."""
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def fabricate_gemma_2b(hf_home: Path, n_layers: int = 2, hidden: int = 16) -> Path:
    """``google/gemma-2b`` as a small random Gemma (the first architecture) with the Gemma 3 tokenizer."""
    import torch
    import transformers as tf

    from geomsteer import models

    snap = snapshot_dir(hf_home, "google/gemma-2b")
    tok = models.load_tokenizer("gemma-3-270m")
    torch.manual_seed(0)
    m = tf.GemmaForCausalLM(tf.GemmaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256))
    m.save_pretrained(snap)
    tok.save_pretrained(snap)
    return snap


PYTHIA_70M = {  # EleutherAI/pythia-70m's configuration (TransformerLens knows this shape by name)
    "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_size": 512,
    "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 6, "vocab_size": 50304,
    "max_position_embeddings": 2048, "rotary_pct": 0.25, "rotary_emb_base": 10000, "use_parallel_residual": True,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False,
    "initializer_range": 0.02,
}
PYTHIA_TOKENIZER_VOCAB = 50277  # the real tokenizer's size; the embedding is padded to 50304


def train_tokenizer(vocab_size: int):
    """A word-level tokenizer trained here (the ``tokenizers`` library) on WordNet's lemmas and glosses, with
    GPT-NeoX's special token, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from geomsteer import corpus

    tok = Tokenizer(models.WordLevel(unk_token="<|padding|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|padding|>"])
    tok.train_from_iterator(corpus.wordnet_glosses().texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|padding|>", pad_token="<|padding|>")


def fabricate_pythia_70m(hf_home: Path, config: dict | None = None) -> Path:
    """``EleutherAI/pythia-70m`` at its real shape with random weights and a tokenizer trained here."""
    import torch
    import transformers as tf

    snap = snapshot_dir(hf_home, "EleutherAI/pythia-70m")
    cfg = tf.GPTNeoXConfig(**{k: v for k, v in (config or PYTHIA_70M).items() if k not in ("architectures", "model_type")})
    torch.manual_seed(0)
    m = tf.GPTNeoXForCausalLM(cfg)
    m.save_pretrained(snap)
    train_tokenizer(PYTHIA_TOKENIZER_VOCAB).save_pretrained(snap)
    json.loads((snap / "config.json").read_text())  # written and readable
    return snap
