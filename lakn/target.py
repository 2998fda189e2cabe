"""The closed-form edit's target: the residual change at the key position that makes the new answer likely.

:func:`find_target` finds one ``delta`` (d_model) by a few Adam steps, as ROME and MEMIT do;
:func:`find_targets` finds a batch's targets together, each exactly as alone, with their queries and
pivot prompts (:mod:`lakn.pivot`) sharing the forward and backward passes. :func:`lakn.edit_fact`
and :func:`lakn.edit_facts` map the keys to these targets (:mod:`lakn.closed_form`, docs/method.md §8.3).
"""

from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .keys import _by_length, activations_until
from .pivot import Pivot, _adder, lens_cross_entropy
from .tokens import EncodedQuery, logits_at, model_device

__all__ = ["find_target", "find_targets"]


def find_target(
    model,
    layer: int,
    encoded: Sequence[EncodedQuery],
    *,
    steps: int = 20,
    lr: float = 0.5,
    decay: float = 0.05,
    positions: Sequence[int] | None = None,
    pivot: Pivot | None = None,
) -> tuple[Float[Tensor, "d_model"], list[float]]:
    """The residual ``delta`` that, added to ``blocks.{layer}.mlp.hook_out`` at ``positions[i]`` of
    query ``i`` (default: its last prompt position; nowhere else), maximises the mean teacher-forced log-probability of
    the queries' answers: ``steps`` Adam steps (learning rate ``lr``) on
    ``mean_q NLL_q(answer) + decay * ||delta||^2 / mean_q ||out_q||^2`` (``out_q`` the clean MLP
    output there: the penalty is scale-free), plus, with a :class:`~lakn.pivot.Pivot`, its weight
    times the cross-entropy of its token under the logit lens of its prompts (other languages,
    ``delta`` added at their key positions; :mod:`lakn.pivot`). Returns ``delta`` (float32, on the
    CPU) and the mean NLL of the answers before each step. :func:`find_targets` finds several at once."""
    return find_targets(model, layer, [encoded], steps=steps, lr=lr, decay=decay,
                        positions=None if positions is None else [positions], pivots=[pivot])[0]


_TARGET_ROWS = 16
"""Sequences per forward pass of :func:`find_targets` (each keeps its answers' logits: 16 x 262k
floats per answer token for Gemma 3)."""


def find_targets(
    model,
    layer: int,
    encoded: Sequence[Sequence[EncodedQuery]],
    *,
    steps: int = 20,
    lr: float = 0.5,
    decay: float = 0.05,
    positions: Sequence[Sequence[int] | None] | None = None,
    pivots: Sequence[Pivot | None] | None = None,
) -> list[tuple[Float[Tensor, "d_model"], list[float]]]:
    """:func:`find_target` for several targets at once: target ``g`` is found on its own queries
    ``encoded[g]`` (with ``positions[g]`` and ``pivots[g]``), as alone (up to rounding), but every target's
    queries and pivot prompts share the forward and backward passes (sequences of one length run
    together; a forward pass reads every weight once, so on a CPU one sequence at a time is
    memory-bound). Adam's steps are per coordinate and each target's loss sees only its own delta,
    so the targets stay independent. Returns ``(delta, history)`` per target."""
    if not encoded:
        raise ValueError("no targets to find")
    n = len(encoded)
    positions = [None] * n if positions is None else list(positions)
    pivots = [None] * n if pivots is None else list(pivots)
    if len(positions) != n or len(pivots) != n:
        raise ValueError(f"{n} targets with {len(positions)} position lists and {len(pivots)} pivots")
    rows = []  # (target, tokens, position, answer): every query of every target
    for g, (queries, where, pivot) in enumerate(zip(encoded, positions, pivots)):
        if not queries:
            raise ValueError("no queries to find the target on")
        if pivot is not None and pivot.layer <= int(layer):
            raise ValueError(f"the pivot layer {pivot.layer} must come after the edited layer {layer}")
        if any(e.masked for e in queries):
            raise ValueError("the closed-form target needs a causal LM (answers after the prompt)")
        where = [len(e.prompt) - 1 for e in queries] if where is None else list(where)
        if len(where) != len(queries):
            raise ValueError(f"{len(where)} target positions for {len(queries)} queries")
        bad = [int(p) for p, e in zip(where, queries) if not 0 <= int(p) < len(e.prompt)]
        if bad:
            raise IndexError(f"target position(s) {bad} outside the prompts")
        rows += [(g, torch.cat([e.prompt, e.answer[:-1]]), int(p), e.answer) for e, p in zip(queries, where)]
    device = model_device(model)
    point = f"blocks.{int(layer)}.mlp.hook_out"
    counts = torch.bincount(torch.as_tensor([r[0] for r in rows]), minlength=n).double()
    chunks = [[rows[i] for i in members[s:s + _TARGET_ROWS]]
              for members in _by_length([r[1] for r in rows]).values() for s in range(0, len(members), _TARGET_ROWS)]
    norms = torch.zeros(n, dtype=torch.float64)  # the clean MLP output's squared norm at each position
    for chunk in chunks:
        out = activations_until(model, torch.stack([r[1] for r in chunk]), [point])[point]
        at = out[torch.arange(len(chunk)), torch.as_tensor([r[2] for r in chunk], device=out.device)]
        norms.index_add_(0, torch.as_tensor([r[0] for r in chunk]), at.float().norm(dim=-1).double().cpu() ** 2)
    scale = (norms / counts).clamp_min(1e-12).float().to(device)
    lens = [(j, p, pos, pv.token, pv.weight / len(pv.prompts), pv.layer)  # pivot rows, by pivot layer and length
            for j, pv in enumerate(pivots) if pv is not None and pv.prompts and pv.weight > 0
            for p, pos in zip(pv.prompts, pv.positions)]
    lens.sort(key=lambda r: (r[5], int(r[1].shape[-1])))
    lens_chunks = []  # padded batches of one pivot layer
    for _, at_layer in groupby(lens, key=lambda r: r[5]):
        same = list(at_layer)
        lens_chunks += [same[s:s + 2 * _TARGET_ROWS] for s in range(0, len(same), 2 * _TARGET_ROWS)]
    delta = torch.zeros(n, int(model.cfg.d_model), device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    histories: list[list[float]] = [[] for _ in range(n)]
    with torch.enable_grad():
        for _ in range(int(steps)):
            optimiser.zero_grad()
            nll = torch.zeros(n, dtype=torch.float64)
            for chunk in chunks:  # the answers' teacher-forced NLL: mean over each target's queries
                owner = torch.as_tensor([r[0] for r in chunk])
                tokens = torch.stack([r[1] for r in chunk]).to(device)
                onehot = torch.zeros(len(chunk), tokens.shape[1], 1, device=device)
                onehot[torch.arange(len(chunk)), torch.as_tensor([r[2] for r in chunk])] = 1.0
                keep = max(len(r[3]) for r in chunk)
                with model.hooks(fwd_hooks=[(point, _adder(onehot * delta[owner.to(device)][:, None, :]))]):
                    logits = logits_at(model, tokens, keep).float()
                losses = torch.stack([torch.nn.functional.cross_entropy(logits[i, keep - len(r[3]):], r[3].to(device))
                                      for i, r in enumerate(chunk)])
                (losses / counts[owner].to(device, losses.dtype)).sum().backward()
                nll.index_add_(0, owner, losses.detach().double().cpu())
            for pivot_rows in lens_chunks:  # the pivot term: its weight x the mean lens cross-entropy
                owner = torch.as_tensor([r[0] for r in pivot_rows])
                ce = lens_cross_entropy(model, [r[1] for r in pivot_rows], [r[2] for r in pivot_rows],
                                        torch.as_tensor([r[3] for r in pivot_rows]), pivot_rows[0][5], point,
                                        delta[owner.to(device)])
                share = torch.as_tensor([r[4] for r in pivot_rows], device=ce.device, dtype=ce.dtype)
                (ce * share).sum().backward()
            (decay * (delta**2).sum(-1) / scale).sum().backward()
            for history, value in zip(histories, (nll / counts).tolist()):
                history.append(value)
            optimiser.step()
    final = delta.detach().float().cpu()
    return [(final[g].clone(), histories[g]) for g in range(n)]
