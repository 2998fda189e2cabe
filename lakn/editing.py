"""Weight edits through the neurons: change, teach or undo a fact by training ``W_out`` rows.

An edit changes only the rows of the MLP output matrix W_out that belong to the chosen neurons
(neuron i of layer l is input i of W_out; the row it writes to the residual stream). It returns
an :class:`Edit` handle that restores the original rows bit for bit with ``undo()`` or at the end
of a ``with`` block::

    with lakn.edit_fact(model, fact, {"en": "Rome", "fr": "Rome"}, neurons, language="en"):
        lakn.answer_probability(model, fact)   # answered under the edit
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Fact, FactsError, Query
from .hooks import MLP_POST, Neuron, capture_hook, group_by_layer, hook_name
from .models import is_masked_lm
from .tokens import EncodedQuery, encode_query, last_logits, logits_at, model_device

__all__ = ["w_out", "Edit", "edit_fact", "inject_fact", "activation_neurons"]


# Names of the MLP output projection in Hugging Face decoder layers, for models the bridge does
# not expose as ``blocks[l].mlp.out``.
_OUT_NAMES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "fc_out", "wo", "dense_out")


def _original(bridge_module):
    """The Hugging Face module a bridge component wraps (None when it wraps none)."""
    for name in ("original_component", "_original_component"):
        module = getattr(bridge_module, name, None)
        if module is not None:
            return module
    return None


def w_out(model, layer: int) -> tuple[torch.nn.Parameter, int]:
    """The Hugging Face weight that maps layer ``layer``'s neurons to the residual stream, and the
    dimension of that weight that indexes neurons.

    ``torch.nn.Linear`` (LLaMA, Gemma, BLOOM) stores ``[d_model, d_mlp]``: neuron dimension 1.
    GPT-2's ``Conv1D`` stores the transpose ``[d_mlp, d_model]``: neuron dimension 0. The
    parameter is the one the forward uses, so writing into it changes the model.

    Example: ``W, dim = w_out(model, 3); W.select(dim, 7)`` is neuron 7's output row (d_model).
    """
    n_layers = int(model.cfg.n_layers)
    if not 0 <= int(layer) < n_layers:
        raise IndexError(f"layer {layer} out of range for a model with {n_layers} layers")
    module = None
    mlp = model.blocks[int(layer)].mlp
    out = getattr(mlp, "out", None)
    if out is not None:
        module = _original(out)
    if module is None or not hasattr(module, "weight"):
        hf_mlp = _original(mlp)
        for name in _OUT_NAMES:
            if hf_mlp is not None and hasattr(getattr(hf_mlp, name, None), "weight"):
                module = getattr(hf_mlp, name)
                break
    if module is None or not hasattr(module, "weight"):
        raise TypeError(f"cannot find the MLP output weight of layer {layer} in {type(mlp).__name__}")
    weight = module.weight
    d_mlp = int(model.cfg.d_mlp)
    if type(module).__name__ == "Conv1D":  # GPT-2 family: y = x @ W, W is [d_mlp, d_model]
        dim = 0
    elif isinstance(module, torch.nn.Linear):  # y = x @ W.T, W is [d_model, d_mlp]
        dim = 1
    else:  # unknown module: go by shape
        dims = [i for i, s in enumerate(weight.shape) if s == d_mlp]
        if len(dims) != 1:
            raise TypeError(f"cannot tell the neuron dimension of {type(module).__name__} weight {tuple(weight.shape)}")
        dim = dims[0]
    if weight.shape[dim] != d_mlp:
        raise TypeError(f"layer {layer} output weight {tuple(weight.shape)} has no dimension of size d_mlp={d_mlp}")
    return weight, dim


def _rows(weight: Tensor, dim: int, idx: Tensor) -> Tensor:
    """The neurons' output rows as ``[n, d_model]`` (a copy)."""
    return weight.detach().index_select(dim, idx).clone() if dim == 0 else weight.detach().index_select(dim, idx).T.clone()


def _write_rows(weight: Tensor, dim: int, idx: Tensor, rows: Float[Tensor, "n d_model"]) -> None:
    with torch.no_grad():
        if dim == 0:
            weight[idx] = rows.to(weight)
        else:
            weight[:, idx] = rows.T.to(weight)


# --------------------------------------------------------------------------- weight edits


def _stack(model) -> list["Edit"]:
    """The edits applied to ``model``'s weights, in the order they were applied (the last on top); kept
    in the model's ``__dict__``, so a model and its edits are freed together."""
    return model.__dict__.setdefault("_lakn_edits", [])


@dataclass(eq=False)
class Edit:
    """A reversible change of some W_out rows. ``undo()`` (or leaving a ``with`` block) writes the
    saved original rows back, so the weights are bit-identical to before the edit.

    Edits of one model may overlap (share rows) and be undone in any order: the edits applied
    after this one are taken off first (each writes back the rows it saved, newest first), this
    one's rows are restored, and the later ones are applied again on top (each saving the rows it
    now changes). Undoing them all, in any order, restores the original weights bit for bit.
    Weights changed by other code between edits are not tracked.

    ``deltas[layer]`` is ``[n, d_model]``: what was added to the rows of ``neurons_by_layer[layer]``.
    ``history`` holds the answer's NLL per step and ``locality_history`` the KL term (empty
    without ``preserve`` prompts).
    """

    model: object
    neurons_by_layer: dict[int, list[int]]
    original: dict[int, Tensor]
    deltas: dict[int, Tensor]
    history: list[float] = field(default_factory=list)
    method: str = "gradient"
    active: bool = True
    locality_history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.active:  # made applied (as edit_fact makes it): on top of the model's stack
            _stack(self.model).append(self)

    def undo(self) -> None:
        """Restore the rows this edit changed (idempotent), keeping every other active edit applied."""
        if not self.active:
            return
        stack = _stack(self.model)
        later = stack[stack.index(self) + 1:] if self in stack else []
        for edit in reversed(later):
            edit._restore()
        self._restore()
        self.active = False
        if self in stack:
            stack.remove(self)
        for edit in later:
            edit._apply()

    def redo(self) -> None:
        """Apply the edit again after an ``undo`` (on top of the edits active now)."""
        if self.active:
            return
        self._apply()
        self.active = True
        _stack(self.model).append(self)

    def _restore(self) -> None:
        """Write the rows saved when this edit was (last) applied."""
        for layer, idx in self.neurons_by_layer.items():
            weight, dim = w_out(self.model, layer)
            _write_rows(weight, dim, torch.as_tensor(idx, device=weight.device), self.original[layer])

    def _apply(self) -> None:
        """Save the current rows, then write them plus the delta."""
        for layer, idx in self.neurons_by_layer.items():
            weight, dim = w_out(self.model, layer)
            index = torch.as_tensor(idx, device=weight.device)
            self.original[layer] = _rows(weight, dim, index)
            _write_rows(weight, dim, index, self.original[layer].to(weight) + self.deltas[layer].to(weight))

    @property
    def neurons(self) -> list[Neuron]:
        return [(l, i) for l, idx in self.neurons_by_layer.items() for i in idx]

    def __enter__(self) -> "Edit":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()


def _delta_hooks(deltas: dict[int, Tensor], by_layer: dict[int, list[int]], point: str = MLP_POST):
    """Hooks equivalent to adding ``deltas[l]`` to the W_out rows of ``by_layer[l]``: the MLP output
    gains ``act[..., idx] @ delta``. Used while optimising so gradients reach only the deltas."""
    store: dict = {}
    hooks: list[tuple[str, Callable[..., Tensor]]] = []
    for layer, idx in by_layer.items():
        index = torch.as_tensor(idx)

        def capture(act, hook=None, layer=layer, index=index):
            store[layer] = act[..., index.to(act.device)]
            return act

        def add(out, hook=None, layer=layer):
            return out + store.pop(layer) @ deltas[layer].to(out)

        hooks.append((hook_name(layer, point), capture))
        hooks.append((f"blocks.{layer}.mlp.hook_out", add))
    return hooks


def _nll(model, encoded: Sequence[EncodedQuery], reduce: bool = True) -> Tensor:
    """Negative log-likelihood of the answers (teacher forced, mean over each answer's tokens),
    differentiable; the mean over queries, or one value per query with ``reduce=False``."""
    device = model_device(model)
    losses = []
    for enc in encoded:
        tokens = torch.cat([enc.prompt, enc.answer[:-1]])[None].to(device)
        # the last len(answer) positions predict the answer tokens: unembed only those
        logits = logits_at(model, tokens, len(enc.answer))[0].float()
        losses.append(torch.nn.functional.cross_entropy(logits, enc.answer.to(device)))
    per_query = torch.stack(losses)
    return per_query.mean() if reduce else per_query


def _next_token_log_probs(model, prompts: Sequence[Tensor]) -> Float[Tensor, "n d_vocab"]:
    """log P(next token | prompt) at each prompt's last position, differentiable."""
    device = model_device(model)
    return torch.cat([last_logits(model, p[None].to(device)).float().log_softmax(-1) for p in prompts])


def edit_fact(
    model,
    fact: Fact,
    new_answers: Mapping[str, str],
    neurons: Iterable[Neuron],
    *,
    language: str = "en",
    steps: int = 10,
    lr: float = 0.5,
    weight_decay: float = 1e-3,
    max_queries: int | None = None,
    preserve: Sequence[Query | EncodedQuery | Tensor] = (),
    locality_weight: float = 1.0,
    target_prob: float | None = None,
) -> Edit:
    """Change ``fact``'s answer to ``new_answers[language]`` by training only the W_out rows of
    ``neurons``, on the fact's queries in ``language`` alone.

    Method: up to ``steps`` Adam steps (not a closed form) on a per-row additive delta, minimising
    the teacher-forced NLL of the new answer, plus ``locality_weight`` x the mean KL divergence
    between the original and the edited next-token distribution on the ``preserve`` prompts
    (other facts' queries or any prompts: what the edit should leave alone, as in ROME/MEMIT's
    KL term), plus ``weight_decay * ||delta||^2``. With ``target_prob`` it stops early once every
    edit query gives the new answer at least that probability (geometric mean over its tokens),
    which keeps the change small. During optimisation the delta acts through hooks (the same as
    the changed rows), then it is written into the weights. Other languages' answers in
    ``new_answers`` are only used by the metrics.

    Returns a reversible :class:`Edit`::

        with lakn.edit_fact(model, fact, {"en": "Rome", "fr": "Rome"}, neurons, language="en"):
            lakn.answer_probability(model, fact)   # answered under the edit
        # weights restored here
    """
    if language not in new_answers:
        raise FactsError(f"new_answers has no answer in the edit language {language!r}")
    if target_prob is not None and not 0 < target_prob < 1:
        raise ValueError(f"target_prob must be in (0, 1), got {target_prob}")
    if locality_weight < 0:
        raise ValueError(f"locality_weight must be >= 0, got {locality_weight}")
    causal = not is_masked_lm(model)
    edited = Fact(fact.fact_id, fact.relation, {**fact.answers, **dict(new_answers)}, fact.templates,
                  fact.subjects, fact.relation_label, fact.other_answers, fact.causal_ok)
    queries = edited.queries(language, causal=causal)[:max_queries]
    if not queries:
        raise FactsError(f"fact {fact.fact_id!r} has no usable queries in {language!r} to edit with")
    encoded = [encode_query(model, q) for q in queries]
    prompts = [p if isinstance(p, Tensor) else (encode_query(model, p) if isinstance(p, Query) else p).prompt
               for p in preserve]
    return _train_rows(model, encoded, neurons, steps=steps, lr=lr, weight_decay=weight_decay, preserve=prompts,
                       locality_weight=locality_weight, target_prob=target_prob)


def _train_rows(model, encoded, neurons, *, steps, lr, weight_decay, preserve=(), locality_weight=1.0,
                target_prob=None) -> Edit:
    by_layer = group_by_layer(neurons)
    if not by_layer:
        raise ValueError("no neurons to edit")
    if preserve and is_masked_lm(model):
        raise ValueError("preserve prompts (the locality term) need a causal LM")
    original, deltas = {}, {}
    for layer, idx in by_layer.items():
        weight, dim = w_out(model, layer)
        original[layer] = _rows(weight, dim, torch.as_tensor(idx, device=weight.device))
        deltas[layer] = torch.zeros_like(original[layer], dtype=torch.float32, requires_grad=True)
    reference = None
    if preserve and locality_weight > 0:
        with torch.no_grad():
            reference = _next_token_log_probs(model, preserve)
    optimiser = torch.optim.Adam(list(deltas.values()), lr=lr)
    history, locality = [], []
    stop = None if target_prob is None else -torch.log(torch.tensor(float(target_prob)))
    with torch.enable_grad(), model.hooks(fwd_hooks=_delta_hooks(deltas, by_layer)):
        for _ in range(steps):
            optimiser.zero_grad()
            per_query = _nll(model, encoded, reduce=False)
            loss = per_query.mean()
            if stop is not None and bool((per_query.detach() <= stop).all()):
                break
            total = loss + weight_decay * sum((d**2).sum() for d in deltas.values())
            if reference is not None:
                log_p = _next_token_log_probs(model, preserve)
                kl = torch.nn.functional.kl_div(log_p, reference, log_target=True, reduction="batchmean")
                total = total + locality_weight * kl
                locality.append(float(kl.detach()))
            total.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    deltas = {l: d.detach() for l, d in deltas.items()}
    for layer, idx in by_layer.items():
        weight, dim = w_out(model, layer)
        _write_rows(weight, dim, torch.as_tensor(idx, device=weight.device),
                    original[layer].to(weight) + deltas[layer].to(weight))
    method = f"adam x{len(history)}" + (f" + KL x{locality_weight:g} on {len(preserve)} prompts" if reference is not None else "")
    return Edit(model, by_layer, original, deltas, history, method=method, locality_history=locality)


def activation_neurons(
    model, fact: Fact, languages: Sequence[str], k: int = 20, *, exclude_layers: Sequence[int] = ()
) -> list[Neuron]:
    """LAKN-style neurons for a fact the model does not know (so attribution has nothing to find):
    the ``k`` neurons whose activation at the answer position is large in *every* language.

    Score of (l, i): min over languages of the language's mean |activation| divided by that
    layer's mean |activation| (so no layer dominates by scale). Best first.
    """
    causal = not is_masked_lm(model)
    n_layers = int(model.cfg.n_layers)
    per_lang = []
    for lang in languages:
        acts = []
        for q in fact.queries(lang, causal=causal):
            enc = encode_query(model, q)
            store: dict = {}
            hooks = [(hook_name(l), capture_hook(store, l, position="last")) for l in range(n_layers)]
            with torch.no_grad():
                model.run_with_hooks(enc.prompt[None].to(model_device(model)), fwd_hooks=hooks)
            acts.append(torch.stack([store[l][0].float().abs().cpu() for l in range(n_layers)]))
        if acts:
            a = torch.stack(acts).mean(0)
            per_lang.append(a / a.mean(-1, keepdim=True).clamp_min(1e-12))
    if not per_lang:
        raise FactsError(f"fact {fact.fact_id!r} has no usable queries in {list(languages)}")
    score = torch.stack(per_lang).min(0).values
    for layer in exclude_layers:
        score[layer] = -1
    top = score.flatten().topk(k).indices
    d_mlp = score.shape[1]
    return [(int(i) // d_mlp, int(i) % d_mlp) for i in top]


def inject_fact(
    model,
    fact: Fact,
    *,
    language: str = "en",
    neurons: Iterable[Neuron] | None = None,
    languages: Sequence[str] | None = None,
    k: int = 20,
    steps: int = 20,
    lr: float = 0.5,
    weight_decay: float = 1e-3,
    preserve: Sequence[Query | EncodedQuery | Tensor] = (),
    locality_weight: float = 1.0,
    target_prob: float | None = None,
) -> Edit:
    """Teach a (fictional) fact through ``neurons`` using only its ``language`` queries.

    Without ``neurons`` they are chosen by :func:`activation_neurons` over ``languages`` (default:
    the fact's languages): neurons active on the subject in every language, the LAKN-style
    choice for a fact with no attribution yet. Training is :func:`edit_fact`'s (Adam on the
    neurons' W_out rows, with its optional locality term on ``preserve`` prompts and early stop
    at ``target_prob``). Returns a reversible :class:`Edit`.
    """
    if neurons is None:
        neurons = activation_neurons(model, fact, languages or fact.languages, k)
    return edit_fact(model, fact, {language: fact.answers[language]}, neurons, language=language,
                     steps=steps, lr=lr, weight_decay=weight_decay, preserve=preserve,
                     locality_weight=locality_weight, target_prob=target_prob)

