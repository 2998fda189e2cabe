"""First-order ablation effects: what zeroing each MLP neuron at every position does to the answer.

One forward and backward pass per batch of queries: a zero "leaf" is added to every layer's
``blocks.{l}.mlp.hook_post`` at every position, and the first answer token's log-probability is
differentiated with respect to the leaves. For neuron (l, i) of query q::

    total[q, l, i] = sum_t a_t * d log P(y_1) / d a_t
    ctr[q, l, i]   = sum_t a_t * d/d a_t [log P(y_1) - logsumexp_{c in C} log P(c)]

Zeroing the neuron (a -> 0 at all positions) changes log P(y_1) by about ``-total`` (first order);
``ctr`` is the same for the contrast of the answer against its competitors C, the clean top tokens
other than y_1 (a neuron that lifts every likely token alike scores ~0 there). Causal LMs only.
Used by the causal selection (:mod:`lakn.causal`, docs/method.md §4.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..hooks import hook_name
from ..objective import unembedding
from ..tokens import EncodedQuery, logits_at, model_device

__all__ = ["EffectMaps", "effect_maps", "EFFECT_KEYS"]

EFFECT_KEYS = ("total", "ctr", "log_p", "entropy", "rank", "first_token")
"""The tensors of :class:`EffectMaps`, as stored in a run folder (``facts/<stem>.effects.safetensors``)."""


@dataclass
class EffectMaps:
    """First-order zeroing effects of one set of queries (one row per query, in the order given).

    ``total`` / ``ctr``: ``[query, layer, d_mlp]`` (see the module docstring); ``log_p``: log P(y_1)
    of the clean model; ``entropy``: next-token entropy / log|V| at the answer position; ``rank``:
    y_1's rank (0 = top-1); ``first_token``: the id of y_1.
    """

    total: Float[Tensor, "query layer d_mlp"]
    ctr: Float[Tensor, "query layer d_mlp"]
    log_p: Float[Tensor, " query"]
    entropy: Float[Tensor, " query"]
    rank: Int[Tensor, " query"]
    first_token: Int[Tensor, " query"]

    def tensors(self) -> dict[str, Tensor]:
        """The stored form: maps in float16 (small run folders), statistics in float32 / int64."""
        return {"total": self.total.to(torch.float16), "ctr": self.ctr.to(torch.float16),
                "log_p": self.log_p.float(), "entropy": self.entropy.float(),
                "rank": self.rank.long(), "first_token": self.first_token.long()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "EffectMaps":
        missing = [k for k in EFFECT_KEYS if k not in tensors]
        if missing:
            raise KeyError(f"effect maps lack {missing}")
        out = cls(**{k: tensors[k] for k in EFFECT_KEYS})
        n = out.total.shape[0]
        if out.total.ndim != 3 or out.ctr.shape != out.total.shape or any(
                t.shape != (n,) for t in (out.log_p, out.entropy, out.rank, out.first_token)):
            raise ValueError(f"effect maps of inconsistent shapes: total {tuple(out.total.shape)}, "
                             f"ctr {tuple(out.ctr.shape)}, log_p {tuple(out.log_p.shape)}")
        return out

    def __len__(self) -> int:
        return int(self.total.shape[0])


def _log_probs(model, tokens: Tensor, last: Tensor, hooks: list) -> Float[Tensor, "batch d_vocab"]:
    """log softmax of the next-token logits at each row's ``last`` position, with ``hooks`` on
    (the unembedding applied to that position only when the model allows it)."""
    rows = torch.arange(len(last), device=tokens.device)
    unembed = unembedding(model)
    if unembed is None:
        with model.hooks(fwd_hooks=hooks):
            logits = model(tokens)[rows, last]
    else:
        final: dict[str, Tensor] = {}
        grab = ("ln_final.hook_out", lambda x, hook=None: final.setdefault("h", x))
        with model.hooks(fwd_hooks=[*hooks, grab]):
            logits_at(model, tokens, torch.zeros(0, dtype=torch.long, device=tokens.device))
        weight, bias = unembed
        logits = final["h"][rows, last] @ weight.T.to(final["h"].dtype)
        if bias is not None:
            logits = logits + bias
    return logits.float().log_softmax(-1)


def effect_maps(
    model,
    encoded: Sequence[EncodedQuery],
    *,
    competitors: int = 20,
    batch_size: int | None = None,
    layers: Sequence[int] | None = None,
) -> EffectMaps:
    """First-order effects of zeroing each neuron at all positions on the first answer token.

    Args:
        encoded: the queries (prompt + answer ids, :func:`lakn.tokens.encode_query`); causal LMs only.
        competitors: |C|, the clean top tokens other than y_1 that ``ctr`` contrasts against (>= 1).
        batch_size: queries per pass (default 16); results do not depend on it.
        layers: the layers to compute (default all; the others stay zero).

    Returns an :class:`EffectMaps` with one row per query, in the order given.
    """
    if isinstance(competitors, bool) or not isinstance(competitors, int) or competitors < 1:
        raise ValueError(f"competitors must be a whole number >= 1, got {competitors!r}")
    if any(e.masked for e in encoded):
        raise ValueError("effect maps need a causal LM (the answer is predicted after the prompt); "
                         "this query is a masked-LM query")
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    vocab = int(model.cfg.d_vocab)
    if competitors >= vocab:
        raise ValueError(f"competitors must be below the vocabulary size {vocab}, got {competitors}")
    layer_list = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    n = len(encoded)
    total = torch.zeros(n, n_layers, d_mlp)
    ctr = torch.zeros(n, n_layers, d_mlp)
    log_p, entropy = torch.zeros(n), torch.zeros(n)
    rank, first = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    if n == 0:
        return EffectMaps(total, ctr, log_p, entropy, rank, first)
    device = model_device(model)
    order = sorted(range(n), key=lambda i: len(encoded[i].prompt))  # similar lengths share a pass
    size = batch_size or 16
    for start in range(0, n, size):
        chunk = order[start:start + size]
        prompts = [encoded[i].prompt for i in chunk]
        width = max(len(p) for p in prompts)
        # right-padded with the row's first token: a causal model's last real position never sees it
        tokens = torch.stack([torch.cat([p, p[:1].expand(width - len(p))]) for p in prompts]).to(device)
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        target = torch.tensor([int(encoded[i].answer[0]) for i in chunk], device=device)
        leaves: dict[int, Tensor] = {}
        acts: dict[int, Tensor] = {}

        def leaf_hook(layer: int):
            def hook(act: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
                acts[layer] = act.detach()
                leaves[layer] = torch.zeros_like(act).requires_grad_(True)
                return act + leaves[layer]
            return hook

        with torch.enable_grad():
            lp = _log_probs(model, tokens, last, [(hook_name(l), leaf_hook(l)) for l in layer_list])
            rows = torch.arange(len(chunk), device=device)
            lpt = lp[rows, target]
            grads = torch.autograd.grad(lpt.sum(), [leaves[l] for l in layer_list], retain_graph=True)
            clean = lp.detach()
            top = clean.topk(competitors + 1, dim=-1).indices
            others = torch.stack([row[row != t][:competitors] for row, t in zip(top, target)])
            contrast = lpt - torch.logsumexp(lp.gather(1, others), dim=-1)
            cgrads = torch.autograd.grad(contrast.sum(), [leaves[l] for l in layer_list])
        idx = torch.tensor(chunk)
        for j, l in enumerate(layer_list):
            # padded positions get zero gradient (nothing real attends to them)
            total[idx, l] = (acts[l] * grads[j]).sum(1).float().cpu()
            ctr[idx, l] = (acts[l] * cgrads[j]).sum(1).float().cpu()
        probs = clean.exp()
        ent = -(probs * clean).nan_to_num(0.0).sum(-1) / torch.log(torch.tensor(float(vocab)))
        log_p[idx] = lpt.detach().float().cpu()
        entropy[idx] = ent.float().cpu()
        rank[idx] = (clean > lpt.detach()[:, None]).sum(-1).cpu()
        first[idx] = target.cpu()
        del lp, grads, cgrads, leaves, acts
    return EffectMaps(total, ctr, log_p, entropy, rank, first)
