"""How many (layer, step) rows fit in one pass: the memory model of integrated gradients.

Memory is bounded by ``batch_size`` rows (the chunk size), whatever the number of layers and
steps; results do not depend on it. The default (None) fits a chunk into about
``CHUNK_MEMORY_GIB`` (:func:`auto_batch_size`).
"""

from __future__ import annotations

__all__ = ["CHUNK_MEMORY_GIB", "memory_estimate", "auto_batch_size"]

# batch_size=None: rows per pass chosen so the chunk's activations stay under this (auto_batch_size)
CHUNK_MEMORY_GIB = 1.0


def memory_estimate(
    *,
    n_params: float,
    n_layers: int,
    d_model: int,
    d_mlp: int,
    d_vocab: int,
    n_kv_heads: int,
    d_head: int,
    prompt_len: int = 24,
    batch_size: int = 64,
    weight_bytes: int = 2,
    act_bytes: int = 4,
) -> dict[str, float]:
    """Rough peak memory (GiB) of the fast exact path, from what the code keeps alive per chunk.

    An estimate, not a measurement: weights; per row the copied key/value cache of the prompt;
    activations saved for the backward pass of one position through every layer (about
    6 x d_model + 3 x d_mlp values a layer); and two float32 vocabulary tiles of the fused
    objective (at most 2048 columns each; no full-vocabulary buffer). Example (Llama-3-8B, bfloat16, chunk 64):
    ``memory_estimate(n_params=8.0e9, n_layers=32, d_model=4096, d_mlp=14336, d_vocab=128256,
    n_kv_heads=8, d_head=128)``.
    """
    gib = 1024**3
    weights = n_params * weight_bytes
    kv = batch_size * n_layers * 2 * n_kv_heads * d_head * prompt_len * weight_bytes
    saved = batch_size * n_layers * (6 * d_model + 3 * d_mlp) * act_bytes
    logits = batch_size * 2 * min(d_vocab, 2048) * 4
    out = {"weights": weights / gib, "kv_cache": kv / gib, "activations": saved / gib, "logits": logits / gib}
    out["total"] = sum(out.values())
    return out


def auto_batch_size(model, prompt_len: int, n_rows: int, *, full_sequence: bool = False) -> int:
    """Rows per pass for ``batch_size=None``: as many as keep one chunk's activations, key/value
    copies and vocabulary buffer (:func:`memory_estimate` without the weights) within
    ``CHUNK_MEMORY_GIB``, at least 16 (or ``n_rows`` if fewer) and at most ``n_rows``.
    ``full_sequence``: each row recomputes the whole prompt (the reference loop)."""
    cfg = model.cfg
    elt = next(model.parameters()).element_size()
    per_row = memory_estimate(
        n_params=0, n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), d_mlp=int(cfg.d_mlp),
        d_vocab=int(cfg.d_vocab), n_kv_heads=int(cfg.n_heads), d_head=int(cfg.d_head), prompt_len=prompt_len,
        batch_size=1, weight_bytes=elt, act_bytes=max(elt, 4))
    if full_sequence:  # every position's activations; the model's own logits, softmax and gradient
        gib = 1024**3
        rows = per_row["activations"] * prompt_len + 3 * int(cfg.d_vocab) * 4 / gib
    else:
        rows = per_row["kv_cache"] + per_row["logits"] + per_row["activations"]
    fit = int(CHUNK_MEMORY_GIB / max(rows, 1e-12))
    return max(1, min(n_rows, max(16, fit)))
