"""Integrated gradients of the answer's probability w.r.t. every MLP neuron at the answer position.

For layer l with real activation a and baseline b (zero by default), at the position that
predicts the answer:

    Attr(l, i) = (a_i - b_i) / m * sum_{k=1..m} dF(b + (k/m)(a - b)) / d a_i

with only layer l scaled. Completeness: sum_i Attr(l, i) ~= F(a) - F(b), with an error that
shrinks as m grows; every result carries that error per layer (as captum's convergence delta).

The computation is batched: every (layer, step) pair is one row of a batch, and one hook per
layer interpolates only its own rows, so all layers share forward and backward passes. Memory is
bounded by ``batch_size`` rows, whatever the number of layers and steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Query
from .hooks import MLP_POST, capture_hook, hook_name, interpolation_hook
from .tokens import AnswerStats, EncodedQuery, answer_probabilities, encode_query, last_logits

__all__ = ["QueryAttribution", "integrated_gradients", "step_grid"]

Grid = Literal["right", "linspace"]


@dataclass
class QueryAttribution:
    """Integrated gradients of one query, averaged over its answer tokens."""

    attributions: Float[Tensor, "layer d_mlp"]
    completeness_error: Float[Tensor, "layer"]  # |sum_i Attr - (F(a) - F(b))|, mean over tokens
    stats: AnswerStats  # P(y), entropy and rank of the clean model
    layers: list[int]
    n_answer_tokens: int


def step_grid(steps: int, grid: Grid = "right") -> Tensor:
    """Interpolation coefficients: ``right`` = k/m for k=1..m (lakn), ``linspace`` = linspace(0, 1, m)
    (EleutherAI knowledge-neurons); both weigh each step 1/m."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if grid == "right":
        return torch.arange(1, steps + 1, dtype=torch.float32) / steps
    if grid == "linspace":
        return torch.linspace(0.0, 1.0, steps)
    raise ValueError(f"unknown grid {grid!r}: use 'right' or 'linspace'")


def integrated_gradients(
    model,
    query: Query | EncodedQuery,
    *,
    steps: int = 20,
    layers: Sequence[int] | None = None,
    baseline: Float[Tensor, "layer d_mlp"] | None = None,
    first_token_only: bool = False,
    batch_size: int = 64,
    point: str = MLP_POST,
    grid: Grid = "right",
) -> QueryAttribution:
    """Exact integrated gradients of P(answer) for every neuron of the chosen layers.

    Example: ``attr = integrated_gradients(model, fact.queries("en")[0], steps=20)``;
    ``attr.attributions[l].sum()`` ~= P(y) - P(y | layer l at baseline).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    encoded = encode_query(model, query) if isinstance(query, Query) else query
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1}, got {layers}")
    stats = answer_probabilities(model, encoded)
    n_tokens = 1 if first_token_only else len(encoded.answer)
    total = None
    error = torch.zeros(len(layers))
    for t in range(n_tokens):
        attr_t, err_t = _ig_one_token(
            model, encoded.prefix(t), int(encoded.answer[t]), layers, steps, baseline, batch_size, point, grid
        )
        total = attr_t if total is None else total + attr_t
        error += err_t
    return QueryAttribution(total / n_tokens, error / n_tokens, stats, layers, n_tokens)


def _ig_one_token(model, tokens, target, layers, steps, baseline, batch_size, point, grid):
    device = next(model.parameters()).device
    tokens = tokens[None].to(device)
    # 1. one clean pass: the real activations a at the answer position, and F(a)
    clean: dict[int, Tensor] = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name(l, point), capture_hook(clean, l, -1)) for l in layers]):
        f_clean = last_logits(model, tokens)[0].float().softmax(-1)[target]
    d_mlp = clean[layers[0]].shape[-1]
    if baseline is None:
        base = {l: torch.zeros(d_mlp) for l in layers}
    else:
        if baseline.shape[-1] != d_mlp or baseline.ndim != 2:
            raise ValueError(f"baseline must have shape [layer, {d_mlp}], got {tuple(baseline.shape)}")
        base = {l: baseline[l].float() for l in layers}
    # 2. rows = (layer, alpha); alpha = 0 rows give F(b) for the completeness check
    alphas = torch.cat([torch.zeros(1), step_grid(steps, grid)])
    row_layer = torch.tensor(layers).repeat_interleave(len(alphas))
    row_alpha = alphas.repeat(len(layers))
    grad_sum = {l: torch.zeros(d_mlp) for l in layers}
    f_base = {}
    for start in range(0, len(row_layer), batch_size):
        chunk_layer = row_layer[start : start + batch_size]
        chunk_alpha = row_alpha[start : start + batch_size]
        leaves: dict[int, Tensor] = {}
        fwd_hooks = []
        for l in chunk_layer.unique().tolist():
            rows = (chunk_layer == l).nonzero()[:, 0]
            fn = interpolation_hook(rows, clean[l][0], base[l], chunk_alpha[rows], leaves, l, -1)
            fwd_hooks.append((hook_name(l, point), fn))
        batch = tokens.expand(len(chunk_layer), -1)
        with model.hooks(fwd_hooks=fwd_hooks):
            logits = last_logits(model, batch).float()
        probs = logits.softmax(-1)[:, target]
        keys = list(leaves)
        grads = torch.autograd.grad(probs.sum(), [leaves[k] for k in keys])
        for l, g in zip(keys, grads):
            rows = (chunk_layer == l).nonzero()[:, 0]
            a = chunk_alpha[rows]
            grad_sum[l] += g.detach().float().cpu()[a > 0].sum(0)
            if (a == 0).any():
                f_base[l] = float(probs.detach()[rows[a == 0][0]])
    attr = torch.stack([(clean[l][0].float().cpu() - base[l]) * grad_sum[l] / steps for l in layers])
    error = torch.tensor([abs(float(attr[i].sum()) - (float(f_clean) - f_base[l])) for i, l in enumerate(layers)])
    return attr, error
