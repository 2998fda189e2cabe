"""Approximate attribution: activation x gradient, (a - b) * dF/da at the real activations.

It is integrated gradients with a single step (m = 1), for every layer from ONE forward and
backward pass: use it to screen, then run exact IG where it matters (``coarse_to_fine``). Many
causal-LM queries share right-padded passes (:func:`approx_batch`).
"""

from __future__ import annotations

from typing import Sequence, cast

import torch
from jaxtyping import Float
from torch import Tensor

from .. import objective
from ..hooks import hook_name, interpolation_hook
from ..objective import target_probability
from ..probability import AnswerStats
from ..tokens import EncodedQuery, model_device
from .memory import auto_batch_size
from .runners import Runner, baselines, completeness_error, final_pass

__all__ = ["gradient_hook", "approx_one_token", "approx_batch"]


def gradient_hook(leaves: dict, clean: dict, key, position: int | Tensor = -1):
    """Add a zero leaf at each row's ``position`` (one index for every row, or one per row): its
    gradient is dF/da with every path intact, later layers included. Records the real
    activations a there (``[batch, d_mlp]``)."""

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        rows = torch.arange(activation.shape[0], device=activation.device)
        at = position if isinstance(position, Tensor) else torch.full_like(rows, position)
        a = activation[rows, at]
        clean[key] = a.detach()
        leaves[key] = torch.zeros_like(a).requires_grad_(True)
        out = activation.clone()
        out[rows, at] = a + leaves[key]
        return out

    return hook


def approx_one_token(run: Runner, target: int, layers: list[int], steps: int, baseline: Tensor | None,
                     batch_size: int, point: str, grid: str, completeness: bool = False) -> tuple[Tensor, Tensor]:
    """Activation x gradient: (a - b) * dF/da at the real activations, all layers in one pass."""
    leaves: dict[int, Tensor] = {}
    clean: dict[int, Tensor] = {}
    prob = target_probability(run(1, [(hook_name(l, point), gradient_hook(leaves, clean, l, run.position))
                                      for l in layers]), target)
    f_clean = float(prob[0].detach())
    run.check_clean(f_clean)
    grads = torch.autograd.grad(prob[0], [leaves[l] for l in layers])
    clean = {l: a[0] for l, a in clean.items()}
    d_mlp = clean[layers[0]].shape[-1]
    base = baselines(baseline, layers, d_mlp)
    attr = torch.stack([(clean[l].float().cpu() - base[l]) * g[0].float().cpu() for l, g in zip(layers, grads)])
    if not completeness:
        return attr, completeness_error(attr, layers, f_clean, None)
    # F(b) per layer (forward only, one row per layer) for the completeness error
    f_base = {}
    with torch.no_grad():
        for start in range(0, len(layers), batch_size):
            chunk = layers[start : start + batch_size]
            hooks = [(hook_name(l, point), interpolation_hook(torch.tensor([j]), clean[l], base[l], torch.zeros(1),
                                                               {}, l, run.position)) for j, l in enumerate(chunk)]
            p = run(len(chunk), hooks).softmax(-1)[:, target]
            f_base.update({l: float(p[j]) for j, l in enumerate(chunk)})
    return attr, completeness_error(attr, layers, f_clean, f_base)


def approx_batch(model, encoded: Sequence[EncodedQuery], *, layers, baseline, first_token_only, point,
                 batch_size) -> list[tuple[Tensor, Tensor, AnswerStats, int]]:
    """Activation x gradient for many causal-LM queries: one row per (query, answer token), the
    input prompt + answer[:t] right-padded to the longest row of its pass; a zero leaf added at
    each row's own last position of every layer gives dP/da there. P, entropy and rank come from
    the same pass (rows of later answer tokens only add P(y_t) when ``first_token_only``).
    Arguments validated by the caller."""
    d_mlp = int(model.cfg.d_mlp)
    base = baselines(baseline, layers, d_mlp)
    device = model_device(model)
    unembed = objective.unembedding(model)
    rows = [(qi, t) for qi, e in enumerate(encoded) for t in range(len(e.answer))]
    rows.sort(key=lambda r: len(encoded[r[0]].prompt) + r[1])  # similar lengths share a pass
    attr: dict[tuple[int, int], Tensor] = {}
    log_p, entropy, rank = {}, {}, {}
    longest = max((len(encoded[qi].prompt) + t for qi, t in rows), default=1)
    size = batch_size or auto_batch_size(model, longest, len(rows), full_sequence=True)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        inputs = [encoded[qi].step(t)[0] for qi, t in chunk]
        length = max(len(x) for x in inputs)
        tokens = torch.stack([torch.cat([x, x[:1].expand(length - len(x))]) for x in inputs]).to(device)
        pos = torch.tensor([len(x) - 1 for x in inputs], device=device)
        targets = torch.tensor([int(encoded[qi].answer[t]) for qi, t in chunk], device=device)
        leaves: dict[int, Tensor] = {}
        clean: dict[int, Tensor] = {}
        hooks = [(hook_name(l, point), gradient_hook(leaves, clean, l, pos)) for l in layers]
        out = final_pass(model, tokens, hooks, unembed, pos)
        p, ent, rk = objective.output_target_probability(out, unembed, targets, with_stats=True)
        weight = torch.tensor([1.0 if (t == 0 or not first_token_only) else 0.0 for _, t in chunk], device=device)
        grads = torch.autograd.grad((p * weight).sum(), [leaves[l] for l in layers])
        for j, (qi, t) in enumerate(chunk):
            log_p[qi, t], entropy[qi, t], rank[qi, t] = float(p[j].detach().log()), float(ent[j]), int(rk[j])
            if weight[j]:
                attr[qi, t] = torch.stack([(clean[l][j].float().cpu() - base[l]) * grads[i][j].float().cpu()
                                           for i, l in enumerate(layers)])
        del p, out, grads  # free this pass's graph before the next
    results = []
    for qi, e in enumerate(encoded):
        n_tokens = 1 if first_token_only else len(e.answer)
        stats = AnswerStats.from_log_probs(torch.tensor([log_p[qi, t] for t in range(len(e.answer))]),
                                           entropy[qi, 0], rank[qi, 0], int(model.cfg.d_vocab))
        total = cast(Tensor, sum(attr[qi, t] for t in range(n_tokens))) / n_tokens
        error = completeness_error(total, layers, float(stats.token_probs[0]), None)  # not computed: NaN
        results.append((total, error, stats, n_tokens))
    return results
