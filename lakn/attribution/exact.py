"""Exact integrated gradients on a runner: the per-row loop and the branching single-position path.

For layer l with real activation a and baseline b, at the position that predicts the answer,
Attr(l, i) = (a_i - b_i) / m * sum_k dF(b + alpha_k (a - b)) / d a_i (docs/method.md §2). Rows are
(layer, step) pairs, run ``batch_size`` at a time:

- :func:`ig_one_token`: every row runs the whole model (reference runner) or the last position
  (fast runner); one hook per layer interpolates only its own rows;
- :func:`suffix_ig_group`: the fast path's rows branch off one clean row at their layer's input,
  so the blocks below a row's layer run once per pass; several query tokens of equal input length
  share the passes (:func:`fast_batch`).
"""

from __future__ import annotations

from typing import Literal, Sequence, cast

import torch
from torch import Tensor

from .. import objective
from ..hooks import capture_hook, hook_name, interpolation_hook
from ..objective import target_probability
from ..probability import AnswerStats
from ..tokens import EncodedQuery, logits_at
from .kv_cache import bridge_kv_cache, indexed_cache, quiet_cache_warning, stacked_cache
from .memory import auto_batch_size
from .runners import FastMismatch, FastRunner, Runner, baselines, completeness_error, final_pass

__all__ = ["Grid", "step_grid", "row_alphas", "clean_pass", "ig_one_token", "suffix_ig", "suffix_ig_group", "fast_batch"]

Grid = Literal["right", "linspace"]


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


def row_alphas(steps: int, grid: Grid, completeness: bool) -> tuple[Tensor, Tensor]:
    """Row coefficients of one layer and which rows enter the Riemann sum. With the completeness
    check, row 0 is alpha = 0 (the baseline, giving F(b)): an extra row for the "right" grid,
    the grid's own first step for "linspace" (which already starts at alpha = 0)."""
    grid_alphas = step_grid(steps, grid)
    if not completeness or grid == "linspace":
        return grid_alphas, torch.ones(steps, dtype=torch.bool)
    return torch.cat([torch.zeros(1), grid_alphas]), torch.arange(steps + 1) > 0


def clean_pass(run, target: int, layers, point):
    """Real activations at the answer position (per layer, [d_mlp]) and F(a)."""
    clean: dict[int, Tensor] = {}
    with torch.no_grad():
        probs = run(1, [(hook_name(l, point), capture_hook(clean, l, run.position)) for l in layers])[0].softmax(-1)
    f_clean = float(probs[target])
    run.check_clean(f_clean)
    return {l: clean[l][0] for l in layers}, f_clean


def ig_one_token(run: Runner, target: int, layers: list[int], steps: int, baseline: Tensor | None, batch_size: int,
                 point: str, grid: Grid, completeness: bool = True) -> tuple[Tensor, Tensor]:
    """Exact IG of one answer token, every (layer, step) row run by ``run`` (any runner)."""
    # 1. one clean pass: the real activations a at the answer position, and F(a)
    clean, f_clean = clean_pass(run, target, layers, point)
    d_mlp = clean[layers[0]].shape[-1]
    base = baselines(baseline, layers, d_mlp)
    # 2. rows = (layer, step); step 0 of each layer is alpha = 0, the baseline, giving F(b) for
    # the completeness check (with grid="linspace" alpha = 0 is also a real step: kept apart)
    alphas, in_sum = row_alphas(steps, grid, completeness)
    row_layer = torch.tensor(layers).repeat_interleave(len(alphas))
    row_alpha = alphas.repeat(len(layers))
    row_is_base = ((torch.arange(len(row_layer)) % len(alphas)) == 0) & completeness
    row_in_sum = in_sum.repeat(len(layers))
    grad_sum = {l: torch.zeros(d_mlp) for l in layers}
    f_base = {}
    for start in range(0, len(row_layer), batch_size):
        chunk_layer = row_layer[start : start + batch_size]
        chunk_alpha = row_alpha[start : start + batch_size]
        chunk_base = row_is_base[start : start + batch_size]
        chunk_in_sum = row_in_sum[start : start + batch_size]
        leaves: dict[int, Tensor] = {}
        fwd_hooks = []
        for l in chunk_layer.unique().tolist():
            rows = (chunk_layer == l).nonzero()[:, 0]
            fn = interpolation_hook(rows, clean[l], base[l], chunk_alpha[rows], leaves, l, run.position)
            fwd_hooks.append((hook_name(l, point), fn))
        probs = target_probability(run(len(chunk_layer), fwd_hooks), target)
        keys = list(leaves)
        grads = torch.autograd.grad(probs.sum(), [leaves[k] for k in keys])
        for l, g in zip(keys, grads):
            rows = (chunk_layer == l).nonzero()[:, 0]
            is_base = chunk_base[rows]
            grad_sum[l] += g.detach().float().cpu()[chunk_in_sum[rows]].sum(0)
            if is_base.any():
                f_base[l] = float(probs.detach()[rows[is_base][0]])
    attr = torch.stack([(clean[l].float().cpu() - base[l]) * grad_sum[l] / steps for l in layers])
    return attr, completeness_error(attr, layers, f_clean, f_base if completeness else None)


def suffix_ig(run: FastRunner, target: int, layers: list[int], steps: int, baseline: Tensor | None,
              batch_size: int, point: str, grid: Grid, completeness: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`suffix_ig_group` for one query token."""
    return suffix_ig_group([run], [target], layers, steps, baseline, batch_size, point, grid, completeness)[0]


def suffix_ig_group(runs: Sequence[FastRunner], targets: Sequence[int], layers: list[int], steps: int,
                    baseline: Tensor | None, batch_size: int, point: str, grid: Grid,
                    completeness: bool = True) -> list[tuple[Tensor, Tensor]]:
    """Exact IG where each row runs only the layers its scaling can change, for one or more
    query tokens whose inputs have the same length (so they share passes without padding).

    One forward pass per chunk starts with one clean row per query token (its last token against
    its prompt's cache). At the input of each chunk layer l, the rows of l (one per query token
    and step) branch off as copies of their clean row, and at l's neuron hook their activation is
    set to b + alpha (a - b), a taken from the clean row in the same pass. So the blocks below l
    run once for the whole chunk instead of once per row, and the backward pass of a row stops
    at its layer. Rows of every query, layer and step share the batched matmuls above their
    branch point; each layer's key/value cache holds the prompt rows the batch has there
    (unexpanded views of one prompt's cache for a single query). Same numbers as
    :func:`ig_one_token` on the per-row runner (tested). Returns (attr, error) per query token.
    """
    model = runs[0].model
    n_queries = len(runs)
    n_layers = model.cfg.n_layers
    alphas, in_sum = row_alphas(steps, grid, completeness)
    plan = [(l, q, k) for l in sorted(layers) for q in range(n_queries) for k in range(len(alphas))]
    per_chunk = max(1, batch_size - n_queries)  # the clean rows ride along in every chunk
    base = baselines(baseline, layers, int(model.cfg.d_mlp))
    clean: list[dict[int, Tensor]] = [{} for _ in runs]
    grad_sum: list[dict[int, Tensor]] = [{} for _ in runs]
    f_base: list[dict[int, float]] = [{} for _ in runs]
    f_clean: list[float] | None = None
    unembed = objective.unembedding(model)
    device = runs[0].last.device
    last = torch.cat([r.last for r in runs])  # [queries, 1]
    caches = [r.cache for r in runs]
    stacked = None if caches[0] is None else stacked_cache(caches)
    first = None if n_queries == 1 else block0_inputs(model, last, stacked)
    for start in range(0, len(plan), per_chunk):
        chunk = plan[start : start + per_chunk]
        counts: dict[int, list[tuple[int, int]]] = {}
        for l, q, k in chunk:
            counts.setdefault(l, []).append((q, k))
        row_query = list(range(n_queries))  # the query of every row, in batch order
        sizes = []
        for i in range(n_layers):
            row_query += [q for q, _ in counts.get(i, ())]
            sizes.append(len(row_query))
        offsets, at = {}, n_queries
        for l in sorted(counts):
            offsets[l] = at
            at += len(counts[l])
        leaves: dict[int, Tensor] = {}
        # several queries: the pass runs query 0's last token (so the model's attention mask is
        # for one row and broadcasts over every row) and block 0 receives all clean rows
        hooks = [] if first is None else [("blocks.0.hook_in", lambda resid, hook=None: first.to(resid))]
        for l, qk in counts.items():
            qs = torch.tensor([q for q, _ in qk], device=device)
            ks = torch.tensor([k for _, k in qk])

            def branch(resid, hook=None, qs=qs):
                return torch.cat([resid, resid.detach().index_select(0, qs)])

            def interpolate(act, hook=None, l=l, qs=qs, ks=ks, qk=qk):
                a = act[:n_queries, -1].detach()
                for q in range(n_queries):
                    clean[q][l] = a[q].float().cpu()
                b = base[l].to(act)
                leaf = (b + alphas[ks].to(act)[:, None] * (a.index_select(0, qs) - b)).detach().requires_grad_(True)
                leaves[l] = leaf
                out = act.clone()
                out[offsets[l] : offsets[l] + len(qk), -1] = leaf
                return out

            hooks += [(f"blocks.{l}.hook_in", branch), (hook_name(l, point), interpolate)]
        kwargs = {}
        if stacked is not None:
            kwargs["past_key_values"] = indexed_cache(stacked, torch.tensor(row_query, device=device), sizes)
        with bridge_kv_cache(model), quiet_cache_warning():
            out = final_pass(model, last[:1], hooks, unembed, **kwargs)
        if out.shape[0] != sizes[-1]:
            raise FastMismatch(f"lakn: the batch did not grow as planned in {runs[0].model_name}")
        # P(y) of every row; rows < n_queries are the clean rows (zero gradient: only later rows are summed)
        probs = objective.output_target_probability(out, unembed, torch.tensor([targets[q] for q in row_query], device=device))
        if f_clean is None:
            f_clean = [float(p) for p in probs[:n_queries].detach()]
            for run, f in zip(runs, f_clean):
                run.check_clean(f)
        keys = sorted(leaves)
        grads = torch.autograd.grad(probs[n_queries:].sum(), [leaves[l] for l in keys])
        for l, g in zip(keys, grads):
            g = g.detach().float().cpu()
            for j, (q, k) in enumerate(counts[l]):
                if in_sum[k]:
                    grad_sum[q][l] = g[j] + grad_sum[q].get(l, 0.0)
                if completeness and k == 0:
                    f_base[q][l] = float(probs[offsets[l] + j].detach())
        del probs, out, grads  # free this chunk's graph before the next
    assert f_clean is not None  # the plan has at least one chunk
    results = []
    for q in range(n_queries):
        attr = torch.stack([(clean[q][l] - base[l]) * grad_sum[q][l] / steps for l in layers])
        results.append((attr, completeness_error(attr, layers, f_clean[q], f_base[q] if completeness else None)))
    return results


class _Stop(Exception):
    """Ends a forward pass early from a hook."""


def block0_inputs(model, last, stacked) -> Tensor:
    """What block 0 receives for each query's last token (embedding, plus position embedding
    where the model has one), computed by the model itself with the queries' stacked caches
    (for the positions); the pass stops there."""
    got = {}

    def stop(resid, hook=None):
        got["resid"] = resid.detach()
        raise _Stop

    kwargs = {}
    if stacked is not None:
        kwargs["past_key_values"] = indexed_cache(stacked, torch.arange(len(last), device=last.device),
                                                   [len(last)] * len(stacked.layers))
    try:
        with torch.no_grad(), bridge_kv_cache(model), quiet_cache_warning(), model.hooks(fwd_hooks=[("blocks.0.hook_in", stop)]):
            logits_at(model, last, torch.zeros(0, dtype=torch.long, device=last.device), **kwargs)
    except _Stop:
        pass
    if "resid" not in got:
        raise FastMismatch("lakn: block 0's input could not be captured")
    return got["resid"]


def fast_batch(model, encoded: Sequence[EncodedQuery], stats: Sequence[AnswerStats], *, steps, layers, baseline,
               first_token_only, batch_size, point, grid, completeness) -> list[tuple[Tensor, Tensor] | None]:
    """Exact fast-path IG for several causal-LM queries (arguments validated by the caller): the
    (query, answer token) inputs of equal length share passes (:func:`suffix_ig_group`), as many
    per pass as the chunk holds. None for a query whose group could not take the fast path (the
    caller runs it on its own)."""
    check = True if completeness is None else bool(completeness)
    n_tokens = [1 if first_token_only else len(e.answer) for e in encoded]
    groups: dict[int, list[tuple[int, int]]] = {}
    for qi, e in enumerate(encoded):
        for t in range(n_tokens[qi]):
            groups.setdefault(len(e.step(t)[0]), []).append((qi, t))
    rows = len(layers) * len(row_alphas(steps, grid, check)[0])  # rows of one query token
    parts: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    failed: set[int] = set()
    for length, members in groups.items():
        chunk = batch_size or auto_batch_size(model, length, len(members) * (rows + 1))
        size = max(1, chunk // (rows + 1))  # query tokens sharing a pass
        for start in range(0, len(members), size):
            group = members[start : start + size]
            prepared = [FastRunner.prepare(model, encoded[qi].step(t)[0], float(stats[qi].token_probs[t]))
                        for qi, t in group]
            runs = [r for r in prepared if r is not None]
            if len(runs) < len(group):
                failed.update(qi for qi, _ in group)
                continue
            try:
                results = suffix_ig_group(runs, [int(encoded[qi].answer[t]) for qi, t in group], layers, steps,
                                           baseline, max(chunk, len(group) + 1), point, grid, check)
            except FastMismatch:
                failed.update(qi for qi, _ in group)
                continue
            parts.update(zip(group, results))
    out: list[tuple[Tensor, Tensor] | None] = []
    for qi, e in enumerate(encoded):
        if qi in failed:
            out.append(None)
            continue
        attr = cast(Tensor, sum(parts[qi, t][0] for t in range(n_tokens[qi]))) / n_tokens[qi]
        error = cast(Tensor, sum(parts[qi, t][1] for t in range(n_tokens[qi]))) / n_tokens[qi]
        out.append((attr, error))
    return out
