"""The attribution objective F = P(answer token), differentiable, computed lean.

Integrated gradients needs P(y) and dP(y)/dh for every (layer, step) row. Through the model's own
unembedding that costs a [rows, d_vocab] logits tensor plus softmax, one-hot and gradient copies of
the same size (Gemma 3: 262,144 columns per row). :func:`unembed_target_probability` instead takes
the final normalised residual stream and the unembedding matrix and does the unembedding, softmax
and gradient in one sweep over vocabulary tiles; :func:`target_probability` is the lean version for
when only the model's logits are available; :func:`output_target_probability` picks between them.
All take one target per row (docs/method.md §2, §7). The user-facing P(answer) of a query is
:mod:`lakn.probability`.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._deprecation import deprecated_names

__all__ = ["target_probability", "unembed_target_probability", "output_target_probability", "unembedding"]

__getattr__ = deprecated_names(__name__, {"answer_probability": "lakn.objective:output_target_probability"})


class _TargetProbability(torch.autograd.Function):
    """softmax(logits)[r, target_r] with a lean backward, dP/dz = P (onehot - softmax(z)), built in
    one [rows, d_vocab] buffer: autograd's softmax + index would add a zero-filled one-hot
    tensor, a softmax output and a softmax-backward buffer of that size (Gemma 3: 262k columns).
    Used where the model's own logits are needed (the fused objective does not apply)."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=-1)
        prob = (logits.gather(-1, targets[:, None])[:, 0] - lse).exp()
        ctx.save_for_backward(logits, lse, prob, targets)
        return prob

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, lse, prob, targets = ctx.saved_tensors
        scaled = grad * prob
        out = logits.sub(lse[:, None]).exp_().mul_(-scaled[:, None])
        out[torch.arange(len(targets), device=out.device), targets] += scaled
        return out, None


def target_probability(logits: Float[Tensor, "row d_vocab"], target: int | Int[Tensor, "row"],
                       with_stats: bool = False):
    """P(target) per row from logits, differentiable (the IG objective F); ``target`` is one token
    id for every row or one per row. ``with_stats``: return ``(prob, entropy in nats, rank of the
    target)`` per row, as :func:`unembed_target_probability` does."""
    targets = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(logits.shape[0])
    prob = _TargetProbability.apply(logits, targets.contiguous())
    if not with_stats:
        return prob
    log_p = logits.detach().log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    rank = (log_p > log_p.gather(-1, targets[:, None])).sum(-1)
    return prob, entropy, rank


def output_target_probability(out: Tensor, unembed, target: int | Int[Tensor, "row"], with_stats: bool = False):
    """The objective P(target) on what a pass produced: ``out`` is the final residual stream when
    ``unembed`` (from :func:`unembedding`) is given, else the model's logits."""
    if unembed is None:
        return target_probability(out, target, with_stats=with_stats)
    return unembed_target_probability(out, unembed[0], target, unembed[1], with_stats=with_stats)


_LOG_TINY = -80.0  # e^-80 ~ 1.8e-35: relative terms below it are dropped (float32 resolves 6e-8)


def _factor(log_ratio: Tensor) -> Tensor:
    """exp(log_ratio), exactly 0 where it would be below e^-80 (no denormal floats)."""
    return torch.where(log_ratio > _LOG_TINY, log_ratio.exp(), torch.zeros_like(log_ratio))


class _UnembedTargetProbability(torch.autograd.Function):
    """P(target_r) = softmax(h_r W^T + b)[target_r] per row, the unembedding fused into the objective.

    One sweep over the vocabulary in tiles, with an online (running-maximum) softmax: each tile's
    logits are exponentiated in place and, while the tile and its rows of W are still in cache,
    folded into the row's normaliser and into softmax(z) W, which is all the backward needs:
    dP/dh = P (W[target] - softmax(z) W). So W is read once, not twice, and no vocabulary-sized
    buffer outlives its tile: no logits, softmax or one-hot copies. With ``want_stats`` the same
    sweep also gives each row's entropy (nats) and the target's rank (0 = top). Same numbers as the
    model's unembedding + softmax up to float rounding (tested)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, tile: int, want_stats: bool):
        h = hidden.to(weight.dtype)
        acc = torch.promote_types(weight.dtype, torch.float32)  # softmax in at least float32
        need_grad = ctx.needs_input_grad[0]
        n, device = h.shape[0], h.device
        run_max = torch.full((n,), float("-inf"), dtype=acc, device=device)
        run_sum = torch.zeros(n, dtype=acc, device=device)
        # softmax(z) W per row, for the backward (empty when no gradient is wanted)
        mean_row = torch.zeros(n if need_grad else 0, h.shape[1], dtype=acc, device=device)
        z_target = torch.zeros(n, dtype=acc, device=device)
        if want_stats:
            # the target's logit up front, for the rank (its own column is excluded below)
            z_first = (h.to(acc) * weight[targets].to(acc)).sum(-1)
            if bias is not None:
                z_first += bias[targets].to(acc)
            sum_ez = torch.zeros(n, dtype=acc, device=device)
            rank = torch.zeros(n, dtype=torch.long, device=device)
        for start in range(0, weight.shape[0], tile):
            w_tile = weight[start : start + tile]
            z = torch.mm(h, w_tile.T)
            if bias is not None:
                z += bias[start : start + tile]
            z = z.to(acc)
            here = ((targets >= start) & (targets < start + w_tile.shape[0])).nonzero()[:, 0]
            if len(here):
                z_target[here] = z[here, targets[here] - start]
            if want_stats:
                above = z > z_first[:, None]
                above[here, targets[here] - start] = False
                rank += above.sum(-1)
            new_max = torch.maximum(run_max, z.amax(-1))
            keep = _factor(run_max - new_max)  # rescales what earlier tiles accumulated
            if h.device.type != "cpu" or bool((keep != 1).any()):  # (the check would sync a GPU)
                run_sum.mul_(keep)
                if need_grad:
                    mean_row.mul_(keep[:, None])
                if want_stats:
                    sum_ez.mul_(keep)
            # exponentiate relative to the running maximum, so this tile adds without rescaling; terms
            # below e^-80 of it are far under float precision, and flooring them keeps the CPU out
            # of denormal arithmetic (tens of times slower) without changing results
            if want_stats:
                e = (z - new_max[:, None]).clamp_(min=_LOG_TINY).exp_()
                sum_ez.add_((e * z).sum(-1))
            else:
                e = z.sub_(new_max[:, None]).clamp_(min=_LOG_TINY).exp_()
            run_sum.add_(e.sum(-1))
            if need_grad:
                if e.dtype == weight.dtype:
                    mean_row.addmm_(e, w_tile)
                else:
                    mean_row.add_(torch.mm(e.to(weight.dtype), w_tile).to(acc))
            run_max = new_max
        lse = run_max + run_sum.log()
        prob = (z_target - lse).exp()
        if need_grad:
            mean_row /= run_sum[:, None]
        ctx.save_for_backward(weight, prob, targets, mean_row)
        ctx.hidden_dtype = hidden.dtype
        if not want_stats:
            return prob
        entropy = lse - sum_ez / run_sum  # -sum p log p = lse - sum p z
        ctx.mark_non_differentiable(entropy, rank)
        return prob, entropy, rank

    @staticmethod
    def backward(ctx, grad, *unused):
        weight, prob, targets, mean_row = ctx.saved_tensors
        d_hidden = (grad * prob)[:, None] * (weight[targets].to(mean_row.dtype) - mean_row)
        return d_hidden.to(ctx.hidden_dtype), None, None, None, None, None


def unembed_target_probability(
    hidden: Float[Tensor, "row d_model"],
    weight: Float[Tensor, "d_vocab d_model"],
    target: int | Int[Tensor, "row"],
    bias: Float[Tensor, "d_vocab"] | None = None,
    tile: int | None = None,
    with_stats: bool = False,
):
    """P(target) per row from the final (normalised) residual stream, differentiable in ``hidden``:
    the unembedding and softmax in one memory-lean function (see :class:`_UnembedTargetProbability`).
    ``target``: one token id for every row, or one per row. ``with_stats``: return
    ``(prob, entropy in nats, rank of the target)`` per row instead of ``prob``."""
    if hidden.ndim != 2 or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden must have shape [rows, {weight.shape[-1]}], got {tuple(hidden.shape)}")
    targets = torch.as_tensor(target, dtype=torch.long, device=hidden.device).reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(hidden.shape[0])
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"target must be one token id or one per row ({hidden.shape[0]}), got {targets.shape[0]}")
    if targets.numel() and not (0 <= int(targets.min()) and int(targets.max()) < weight.shape[0]):
        raise ValueError(f"target {targets.tolist()} is outside the vocabulary of {weight.shape[0]} tokens")
    if tile is None:  # measured on a 2-core CPU: small tiles stay in cache when many rows share them
        tile = 512 if hidden.shape[0] > 128 else 2048
    return _UnembedTargetProbability.apply(hidden, weight, bias, targets.contiguous(), int(tile), bool(with_stats))


def unembedding(model):
    """(W_U as [d_vocab, d_model], bias or None) when the logits are exactly ln_final's output times
    the unembedding (+ bias); None for models that change the logits afterwards (e.g. Gemma 2's
    final soft-capping) or whose unembedding is not a plain linear map."""
    hf_config = getattr(getattr(model, "original_model", None), "config", None)
    if hf_config is None or getattr(hf_config, "final_logit_softcapping", None):
        return None
    if "ln_final.hook_out" not in getattr(model, "hook_dict", {}):
        return None
    linear = getattr(getattr(model, "unembed", None), "original_component", None)
    weight = getattr(linear, "weight", None)
    if not isinstance(linear, torch.nn.Linear) or weight is None or weight.ndim != 2:
        return None
    bias = linear.bias
    if bias is not None and not bool(bias.detach().any()):
        bias = None
    return weight.detach(), (None if bias is None else bias.detach())
