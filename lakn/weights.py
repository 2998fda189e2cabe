"""Where a neuron writes, and the reversible handle of a weight edit.

Neuron i of layer l is input i of the MLP output matrix W_out; its row is what it writes to the
residual stream (:func:`w_out` finds that weight in any bridge model). An :class:`Edit` adds deltas to
some rows and restores them bit for bit with ``undo()``; :meth:`Edit.hooks` give the same change as
TransformerLens hooks, without touching the weights. :mod:`lakn.editing` computes the deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Fact, FactsError
from .hooks import MLP_POST, Neuron, capture_hook, group_by_layer, hook_name

__all__ = ["w_out", "Edit", "layer_neurons", "activation_neurons"]


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
    info: dict[str, Any] = field(default_factory=dict)
    """What the method recorded (closed form: key languages, number of keys, residual norms...)."""

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

    def hooks(self) -> list[tuple[str, Callable[..., Tensor]]]:
        """TransformerLens hooks that add this edit's output change without touching the weights:
        at each edited layer, capture ``hook_post[..., neurons]`` and add ``act @ delta`` to
        ``blocks.{l}.mlp.hook_out``. Use them while the edit is undone (with it applied they add
        the change a second time)::

            edit.undo()
            with model.hooks(fwd_hooks=edit.hooks()):
                logits = model(tokens)   # the same logits as with the weight edit applied
        """
        deltas = {l: d.detach() for l, d in self.deltas.items()}
        return _delta_hooks(deltas, self.neurons_by_layer)

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


def layer_neurons(model, layers: Iterable[int]) -> list[Neuron]:
    """Every neuron of ``layers`` (the "whole layer" set of a closed-form edit)."""
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    out = []
    for layer in layers:
        if not 0 <= int(layer) < n_layers:
            raise IndexError(f"layer {layer} out of range for a model with {n_layers} layers")
        out += [(int(layer), i) for i in range(d_mlp)]
    return out


def activation_neurons(
    model, fact: Fact, languages: Sequence[str], k: int = 20, *, exclude_layers: Sequence[int] = ()
) -> list[Neuron]:
    """LAKN-style neurons for a fact the model does not know (so attribution has nothing to find):
    the ``k`` neurons whose activation at the answer position is large in *every* language.

    Score of (l, i): min over languages of the language's mean |activation| divided by that
    layer's mean |activation| (so no layer dominates by scale). Best first.
    """
    from .models import is_masked_lm
    from .tokens import encode_query, model_device

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


def _summed(model, edits: Sequence[Edit], method: str, info: dict) -> Edit:
    """One applied Edit whose deltas are the sums of ``edits``' deltas (which must be undone)."""
    by_layer = group_by_layer(n for e in edits for n in e.neurons)
    d_model = next(iter(edits[0].deltas.values())).shape[1]
    deltas = {l: torch.zeros(len(idx), d_model) for l, idx in by_layer.items()}
    for e in edits:
        for layer, idx in e.neurons_by_layer.items():
            where = torch.as_tensor([by_layer[layer].index(i) for i in idx])
            deltas[layer].index_add_(0, where, e.deltas[layer].float().cpu())
    history = [float(sum(h)) / len(h) for h in zip(*(e.history for e in edits))] if edits else []
    edit = Edit(model, by_layer, {}, deltas, history, method=method, active=False, info=info)
    edit.redo()
    return edit
