"""The pivot term of the closed-form edit's target: other languages' prompts read through the logit lens.

A multilingual LM passes its answer through a middle that speaks one language: the logit lens of
the last position of a French or Russian prompt ranks the *English* answer first at Gemma 3 270M's
layers 12-16, and only the last layer turns it into the prompt's own language (docs/results.md
run 8; the "English pivot" of Wendler et al. 2024). A target found on the edit language's answer
alone moves that language's output and little else (results run 6). The pivot term asks the
target for what the other languages share: with the target added at their key position, the
logit lens at the pivot layer of their prompts should name the new answer's first token *in the
edit language*. It needs the other languages' prompts, never their answers.

- :func:`lens_logits` / :func:`lens_ranks`: the logit lens of a layer's residual stream;
- :func:`pivot_layer`: the layer where the model pivots, measured once per model on lakn's demo
  facts (the layer after the edit where the other languages' prompts rank the edit language's
  answer highest);
- :class:`Pivot` and :func:`pivot_loss`: the term :func:`lakn.target.find_targets` adds
  (:func:`lens_cross_entropy`: per prompt, each with its own delta, so several targets share a batch).
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .keys import _Stop, activations_until
from .tokens import model_device

__all__ = ["Pivot", "lens_cross_entropy", "lens_logits", "lens_ranks", "pivot_layer", "pivot_loss", "PIVOT_WEIGHT"]

PIVOT_WEIGHT = 1.0
"""The pivot term's default weight beside the edit language's NLL (docs/method.md §8.3)."""


def lens_logits(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """The logit lens: a residual stream vector through the final norm and the unembedding."""
    return model.unembed(model.ln_final(resid))


def lens_ranks(model, prompts: Sequence[Int[Tensor, "pos"]], token: int,
               layers: Sequence[int] | None = None) -> Int[Tensor, "prompt layer"]:
    """The rank (0 = top) of ``token`` in the logit lens of each prompt's last position at ``layers``
    (default: every layer). The last positions of every prompt and layer go through the unembedding
    together, a few hundred rows at a time: one row at a time reads the whole unembedding matrix
    (for Gemma 3, 262k x 640) once per row, which made the lens memory-bound."""
    layers = list(range(int(model.cfg.n_layers))) if layers is None else [int(l) for l in layers]
    names = [f"blocks.{l}.hook_resid_post" for l in sorted(set(layers))]  # in forward order
    with torch.no_grad():
        rows = []
        for p in prompts:
            store = activations_until(model, p[None], names)
            rows.append(torch.stack([store[f"blocks.{l}.hook_resid_post"][0, -1] for l in layers]))
        if not rows:
            return torch.zeros(0, len(layers), dtype=torch.long)
        resid = torch.stack(rows).flatten(0, 1)  # (prompt layer) d_model
        ranks = []
        for chunk in resid.split(_LENS_ROWS):
            logits = lens_logits(model, chunk).float()
            ranks.append((logits > logits[:, int(token), None]).sum(-1).cpu())
    return torch.cat(ranks).view(len(prompts), len(layers))


_LENS_ROWS = 256
"""Rows per unembedding call of :func:`lens_ranks` (256 x 262k float32 logits: 268 MB)."""


_LAYERS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def pivot_layer(model, after: int, language: str = "en", *, n_facts: int = 24) -> int | None:
    """The pivot layer of ``model`` for edits in ``language`` at layer ``after``: among the layers
    after ``after`` and before the last, the one where the logit lens of lakn's demo facts' prompts
    in the *other* languages (first causal query of each, the first ``n_facts`` facts) ranks the
    ``language`` answer's first token best (lowest median rank; the deeper layer on a tie). None
    when no layer lies between ``after`` and the last. Measured once per model, language and layer
    ``after``; only the candidate layers go through the lens."""
    n_layers = int(model.cfg.n_layers)
    candidates = list(range(int(after) + 1, n_layers - 1))
    if not candidates:
        return None
    memo = _LAYERS.setdefault(model, {})
    key = (language, int(n_facts), tuple(candidates))
    if key not in memo:
        memo[key] = _median_ranks(model, language, n_facts, candidates)
    ranks = memo[key]
    if ranks is None:
        return None
    return max(zip(candidates, ranks.tolist()), key=lambda c: (-c[1], c[0]))[0]


def _median_ranks(model, language: str, n_facts: int, layers: list[int]) -> Tensor | None:
    """Median over the demo prompts of the ``language`` answer's lens rank at each of ``layers``."""
    from .facts import FactsError, load_facts
    from .tokens import encode_query

    rows = []
    for fact in load_facts("demo")[:n_facts]:
        if language not in fact.templates or not fact.answers.get(language):
            continue
        try:
            token = int(encode_query(model, fact.queries(language, causal=True)[0]).answer[0])
            prompts = [model.to_tokens(qs[0].prompt)[0].cpu() for lang in fact.languages if lang != language
                       for qs in [fact.queries(lang, causal=True)] if qs]
        except (FactsError, IndexError):
            continue
        if prompts:
            rows.append(lens_ranks(model, prompts, token, layers).float())
    if not rows:
        warnings.warn(f"no demo fact has an answer in {language!r}: no pivot layer", stacklevel=3)
        return None
    return torch.cat(rows).median(0).values


@dataclass
class Pivot:
    """Prompts of other languages whose last position, with the target added at ``positions``, the
    logit lens at ``layer`` should read as ``token`` (the new answer's first token in the edit
    language); ``weight`` scales the term beside the edit language's NLL."""

    prompts: list[Tensor]
    positions: list[int]
    token: int
    layer: int
    weight: float = PIVOT_WEIGHT

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.positions):
            raise ValueError(f"{len(self.positions)} pivot positions for {len(self.prompts)} prompts")
        for i, (p, pos) in enumerate(zip(self.prompts, self.positions)):
            if not 0 <= int(pos) < int(p.shape[-1]):
                raise IndexError(f"pivot position {pos} outside prompt {i} of {int(p.shape[-1])} tokens")
        if not self.weight >= 0:
            raise ValueError(f"the pivot weight must be >= 0, got {self.weight}")


def pivot_loss(model, pivot: Pivot, point: str, delta: Float[Tensor, "d_model"]) -> Tensor:
    """Mean over ``pivot.prompts`` of the cross-entropy of ``pivot.token`` under the logit lens at
    ``pivot.layer`` of the last position, with ``delta`` added to ``point`` at ``pivot.positions``;
    differentiable in ``delta``. The prompts run as one batch (:func:`lens_cross_entropy`)."""
    n = len(pivot.prompts)
    tokens = torch.full((n,), int(pivot.token), dtype=torch.long)
    return lens_cross_entropy(model, pivot.prompts, pivot.positions, tokens, pivot.layer, point,
                              delta[None].expand(n, -1)).mean()


def lens_cross_entropy(model, prompts: Sequence[Int[Tensor, "pos"]], positions: Sequence[int],
                       tokens: Int[Tensor, "prompt"] | Sequence[int], layer: int, point: str,
                       deltas: Float[Tensor, "prompt d_model"]) -> Float[Tensor, "prompt"]:
    """Per prompt, the cross-entropy of ``tokens[i]`` under the logit lens at ``layer`` of its last
    position, with ``deltas[i]`` added to ``point`` at ``positions[i]`` (differentiable in
    ``deltas``). The prompts run as one batch, right-padded with their own last token: a causal LM's
    positions never see what follows them, so the padding changes nothing."""
    device = model_device(model)
    if not prompts:
        raise ValueError("no prompts to read through the logit lens")
    lengths = [int(p.shape[-1]) for p in prompts]
    tokens = torch.as_tensor(tokens)
    if not (len(positions) == len(tokens) == len(deltas) == len(prompts)):
        raise ValueError(f"{len(prompts)} prompts with {len(positions)} positions, {len(tokens)} tokens and "
                         f"{len(deltas)} deltas")
    for i, (pos, n) in enumerate(zip(positions, lengths)):
        if not 0 <= int(pos) < n:  # a position in the padding would add its delta where it changes nothing
            raise IndexError(f"position {pos} outside prompt {i} of {n} tokens")
    batch = torch.stack([torch.cat([p, p[-1:].expand(max(lengths) - n)]) for p, n in zip(prompts, lengths)])
    rows = torch.arange(len(lengths), device=device)
    where = torch.zeros(len(lengths), max(lengths), 1, device=device)
    where[rows, torch.as_tensor(list(positions), device=device)] = 1.0
    last = torch.as_tensor(lengths, device=device) - 1
    per_row = deltas.to(device)[:, None, :]

    add = _adder(where * per_row)
    store: dict[str, Tensor] = {}

    def grab(x, hook=None):
        store["x"] = x[rows, last]
        raise _Stop

    try:
        with model.hooks(fwd_hooks=[(point, add), (f"blocks.{int(layer)}.hook_resid_post", grab)]):
            model(batch.to(device))
    except _Stop:
        pass
    logits = lens_logits(model, store["x"]).float()
    return torch.nn.functional.cross_entropy(logits, tokens.to(device), reduction="none")


def _adder(change: Tensor):
    """A hook adding ``change`` (broadcast to the activation) to it."""
    return lambda out, hook=None: out + change.to(out.dtype)
