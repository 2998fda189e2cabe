"""A shim over Hugging Face internals: let TransformerLens 4's attention bridges use a key/value cache.

The fast exact path runs one clean pass over the prompt into a ``transformers`` ``DynamicCache``
and then only the last position per row (:mod:`lakn.attribution.runners`). These helpers fill that
cache, copy it for many rows and for several queries, and name the model's architecture; they
depend on ``transformers`` 5.x's cache layout (``cache.layers[i].keys / .values``), which is why
they live apart (docs/method.md §7).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..tokens import logits_at, model_device

__all__ = ["architecture", "bridge_kv_cache", "quiet_cache_warning", "prefix_cache", "stacked_cache",
           "indexed_cache"]


def architecture(model) -> str:
    """The Hugging Face architecture name of a bridged model (e.g. ``"LlamaForCausalLM"``)."""
    hf_model = getattr(model, "original_model", model)
    archs = getattr(getattr(hf_model, "config", None), "architectures", None) or []
    return archs[0] if archs else type(hf_model).__name__


@contextmanager
def bridge_kv_cache(model) -> Iterator[None]:
    """Let the bridge's attention read and extend a Hugging Face key/value cache.

    transformers 5.x hands each attention layer its cache as ``cache=``; TransformerLens 4.3's
    attention bridges look only for ``past_key_values=`` / ``layer_past=``, so the cache stays
    empty (docs/method.md §7). For the duration of the block each attention bridge's
    ``_update_kv_cache`` also accepts ``cache=``; nothing else changes and nothing leaks.
    """
    patched = []
    for block in model.blocks:
        attn = block.attn
        original = attn._update_kv_cache

        def update(k, v, _original=original, **kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
                if kwargs.get("cache") is not None:
                    kwargs["past_key_values"] = kwargs["cache"]
            return _original(k, v, **kwargs)

        attn.__dict__["_update_kv_cache"] = update
        patched.append(attn)
    try:
        yield
    finally:
        for attn in patched:
            attn.__dict__.pop("_update_kv_cache", None)


@contextmanager
def quiet_cache_warning() -> Iterator[None]:
    """transformers 5.x warns that ``past_key_values`` is being renamed; the bridge only forwards
    that name, so the warning says nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        yield


def prefix_cache(model, tokens: Tensor):
    """One clean pass over ``tokens[:-1]`` into a Hugging Face key/value cache (batch 1).
    Returns ``(cache or None for a one-token prompt, last token [1, 1])``, or None when the cache
    stays empty (the bridge did not fill it: use the reference)."""
    from transformers import DynamicCache

    tokens = tokens[None].to(model_device(model))
    prefix, last = tokens[:, :-1], tokens[:, -1:]
    if not prefix.shape[1]:
        return None, last
    cache = DynamicCache(config=model.original_model.config)
    with torch.no_grad(), bridge_kv_cache(model), quiet_cache_warning():
        # no position is unembedded: only the cache is wanted (saves a 262k-column matmul on Gemma 3)
        logits_at(model, prefix, torch.zeros(0, dtype=torch.long, device=prefix.device), past_key_values=cache)
    if cache.get_seq_length() != prefix.shape[1]:
        warnings.warn(f"lakn: the key/value cache of {architecture(model)} stayed empty; "
                      "using the reference integrated gradients", stacklevel=4)
        return None
    return cache, last


def stacked_cache(caches):
    """One cache whose batch row q is query q's (batch-1) prompt cache; same lengths required.
    A single cache is returned as it is."""
    if len(caches) == 1:
        return caches[0]
    stacked = copy.copy(caches[0])
    stacked.layers = []
    for parts in zip(*(c.layers for c in caches)):
        new = copy.copy(parts[0])
        new.keys = torch.cat([p.keys for p in parts])
        new.values = torch.cat([p.values for p in parts])
        stacked.layers.append(new)
    return stacked


def indexed_cache(stacked, row_query: Tensor, sizes: Sequence[int]):
    """A copy of a stacked prompt cache whose layer i holds, for each of its ``sizes[i]`` rows,
    the prompt of that row's query: unexpanded views when there is one query, else copies."""
    grown = copy.copy(stacked)
    grown.layers = []
    for layer, n in zip(stacked.layers, sizes):
        new = copy.copy(layer)
        if layer.keys.shape[0] == 1:
            new.keys = layer.keys.expand(n, *layer.keys.shape[1:])
            new.values = layer.values.expand(n, *layer.values.shape[1:])
        else:
            new.keys = layer.keys.index_select(0, row_query[:n])
            new.values = layer.values.index_select(0, row_query[:n])
        grown.layers.append(new)
    return grown
