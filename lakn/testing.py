"""Tiny models built from a config, for tests and examples: no weights are downloaded.

``tiny_model("gemma3")`` builds a 2-layer Gemma-3-shaped model with random (seeded) weights and a
small byte-level BPE tokenizer trained in memory on a multilingual corpus, and boots it as a
``TransformerBridge``. The same four families the paper's models belong to are available:
GPT-2/mGPT (``gpt2``), LLaMA (``llama``, gated MLP), BLOOM (``bloom``) and Gemma 3 (``gemma3``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from .models import bridge_from_hf

__all__ = ["tiny_tokenizer", "tiny_model", "tiny_hf_model", "save_tiny_model", "active_hook_count", "ARCHITECTURES", "MASKED_ARCHITECTURES"]

ARCHITECTURES = ("gpt2", "llama", "gemma3", "bloom")
MASKED_ARCHITECTURES = ("bert",)

_CORPUS = [
    "The capital of France is Paris. Paris is the capital city of France.",
    "La capitale de la France est Paris. Berlin est la capitale de l'Allemagne.",
    "Die Hauptstadt von Deutschland ist Berlin. Madrid ist die Hauptstadt von Spanien.",
    "La capital de España es Madrid. Roma es la capital de Italia.",
    "Столица Франции — Париж. Москва — столица России.",
    "法国的首都是巴黎。日本的首都是东京。",
    "フランスの首都はパリです。日本の首都は東京です。",
    "عاصمة فرنسا هي باريس. عاصمة مصر هي القاهرة.",
    "Tokyo, Rome, Cairo, Moscow, Madrid, Berlin, London, Ottawa, Canberra, Lisbon.",
]


@lru_cache(maxsize=None)
def _tokenizer_object(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    tok.post_processor = TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return tok


def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer (any script encodes) trained in memory; prepends ``<bos>``."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer_object(vocab_size),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        mask_token="<mask>",
        add_bos_token=True,
    )
    tok.init_kwargs["name_or_path"] = "lakn-tiny"
    tok.padding_side = "left"
    return tok


def _config(architecture: str, vocab: int, n_layers: int, d_model: int, d_mlp: int, n_heads: int):
    from transformers import BertConfig, BloomConfig, Gemma3TextConfig, GPT2Config, LlamaConfig

    special: dict[str, Any] = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg: Any
    if architecture == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                         n_inner=d_mlp, **special)
        cfg.architectures = ["GPT2LMHeadModel"]
    elif architecture == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                          num_attention_heads=n_heads, num_key_value_heads=1, max_position_embeddings=256, **special)
        cfg.architectures = ["LlamaForCausalLM"]
    elif architecture == "gemma3":
        cfg = Gemma3TextConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp,
                               num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=1,
                               head_dim=d_model // n_heads, max_position_embeddings=256, sliding_window=64,
                               **special)
        cfg.architectures = ["Gemma3ForCausalLM"]
    elif architecture == "bloom":
        # BLOOM's MLP width is fixed at 4 x hidden size
        cfg = BloomConfig(vocab_size=vocab, hidden_size=d_model, n_layer=n_layers, n_head=n_heads, **special)
        cfg.architectures = ["BloomForCausalLM"]
    elif architecture == "bert":
        cfg = BertConfig(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
                         intermediate_size=d_mlp, max_position_embeddings=256, pad_token_id=0)
        cfg.architectures = ["BertForMaskedLM"]
    else:
        raise ValueError(
            f"unknown tiny architecture {architecture!r}; choose from {ARCHITECTURES + MASKED_ARCHITECTURES}"
        )
    return cfg


def tiny_hf_model(
    architecture: str = "gemma3",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    d_mlp: int = 64,
    n_heads: int = 2,
    seed: int = 0,
    weight_scale: float = 1.0,
):
    """The Hugging Face model and tokenizer behind :func:`tiny_model`, not yet booted."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    tokenizer = tiny_tokenizer()
    cfg = _config(architecture, len(tokenizer), n_layers, d_model, d_mlp, n_heads)
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if architecture in MASKED_ARCHITECTURES else AutoModelForCausalLM
    hf_model = auto.from_config(cfg, dtype=torch.float32)
    if weight_scale != 1.0:
        with torch.no_grad():
            for param in hf_model.parameters():
                if param.ndim >= 2:
                    param.mul_(weight_scale)
    return hf_model.eval(), tokenizer


def tiny_model(
    architecture: str = "gemma3",
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    **kwargs,
):
    """A small randomly initialised LM booted as a ``TransformerBridge`` (CPU, float32): a causal
    LM of :data:`ARCHITECTURES`, or a masked LM (``"bert"``).

    ``kwargs``: ``n_layers``, ``d_model``, ``d_mlp``, ``n_heads``, ``seed``, ``weight_scale``.
    ``weight_scale`` multiplies the initial weights: random models at the default scale put
    almost uniform probability on every token, so tests of attribution raise it to get
    non-trivial answer probabilities.
    """
    hf_model, tokenizer = tiny_hf_model(architecture, **kwargs)
    hf_model.to(device=device, dtype=dtype)
    return bridge_from_hf(hf_model, tokenizer, name=f"tiny-{architecture}", device=device, dtype=dtype)


def active_hook_count(model) -> int:
    """Number of forward and backward hooks attached to the model's hook points (aliases counted once)."""
    points = {id(hp): hp for hp in model.hook_dict.values()}.values()
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) + len(hp._backward_pre_hooks) for hp in points)


def save_tiny_model(folder, architecture: str = "llama", **kwargs):
    """Write a tiny model and its tokenizer as a Hugging Face folder (for ``load_model(folder)``
    and command-line tests); returns the Hugging Face model."""
    hf_model, tokenizer = tiny_hf_model(architecture, **kwargs)
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf_model
