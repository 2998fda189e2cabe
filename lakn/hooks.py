"""TransformerLens hook factories on MLP neurons (``blocks.{layer}.mlp.hook_post``, docs/method.md §1).

Every factory returns a plain TL hook function ``(activation, hook) -> activation``, so lakn's
hooks go into ``model.run_with_hooks(fwd_hooks=[...])`` or ``model.hooks(...)`` beside a user's
own. ``neuron_hooks`` groups (layer, neuron) pairs into one hook per layer.

Positions: ``"all"``, ``"last"`` (the answer position of a causal prompt; with left padding it is
the last column) or an int / list of ints.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "HookFn",
    "Neuron",
    "Position",
    "hook_name",
    "scale_hook",
    "set_hook",
    "add_hook",
    "capture_hook",
    "interpolation_hook",
    "neuron_hooks",
    "group_by_layer",
]

HookFn = Callable[[Tensor, object], Tensor]
Neuron = tuple[int, int]
"""A neuron as ``(layer, index)`` into ``blocks.{layer}.mlp.hook_post`` (defined here only)."""
Position = Union[str, int, Sequence[int]]
MLP_POST = "mlp.hook_post"


def hook_name(layer: int, point: str = MLP_POST) -> str:
    """TransformerLens name of a layer's neuron activation, e.g. ``blocks.3.mlp.hook_post``."""
    return f"blocks.{int(layer)}.{point}"


def _pos_index(position: Position):
    if isinstance(position, str):
        if position == "all":
            return slice(None)
        if position == "last":
            return -1
        raise ValueError(f"unknown position {position!r}: use 'all', 'last', an int or a list of ints")
    if isinstance(position, int):
        return position
    return list(position)


def _neuron_index(neurons: Sequence[int] | Tensor, d_mlp: int) -> Tensor:
    idx = torch.as_tensor(list(neurons) if not isinstance(neurons, Tensor) else neurons, dtype=torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= d_mlp):
        raise IndexError(f"neuron index out of range for d_mlp={d_mlp}: {idx.tolist()}")
    return idx


def scale_hook(neurons: Sequence[int] | Tensor, factor: float, position: Position = "all") -> HookFn:
    """Multiply chosen neurons by ``factor`` (0 suppresses, 2 enhances).

    Example: ``model.run_with_hooks(toks, fwd_hooks=[(hook_name(5), scale_hook([7, 9], 0.0))])``.
    """
    pos = _pos_index(position)

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        idx = _neuron_index(neurons, activation.shape[-1]).to(activation.device)
        out = activation.clone()
        out[:, pos, idx] = activation[:, pos, idx] * factor
        return out

    return hook


def set_hook(
    neurons: Sequence[int] | Tensor, values: float | Float[Tensor, "n"], position: Position = "all"
) -> HookFn:
    """Set chosen neurons to fixed values (a scalar, or one value per neuron)."""
    pos = _pos_index(position)

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        idx = _neuron_index(neurons, activation.shape[-1]).to(activation.device)
        vals = torch.as_tensor(values, dtype=activation.dtype, device=activation.device)
        if vals.ndim == 1 and vals.shape[0] != idx.shape[0]:
            raise ValueError(f"set_hook got {vals.shape[0]} values for {idx.shape[0]} neurons")
        out = activation.clone()
        out[:, pos, idx] = vals.expand_as(out[:, pos, idx])
        return out

    return hook


def add_hook(vector: Float[Tensor, "d_mlp"], position: Position = "all") -> HookFn:
    """Add a vector to the whole neuron activation of a layer (e.g. a steering direction)."""
    pos = _pos_index(position)

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        if vector.shape != activation.shape[-1:]:
            raise ValueError(f"add_hook vector has shape {tuple(vector.shape)}, expected ({activation.shape[-1]},)")
        out = activation.clone()
        out[:, pos] = activation[:, pos] + vector.to(activation)
        return out

    return hook


def capture_hook(store: dict, key, position: Position = "all") -> HookFn:
    """Store a detached copy of the activation in ``store[key]`` and leave it unchanged.

    Key by layer index rather than ``hook.name``: in the bridge ``hook_post`` is an alias and
    ``hook.name`` is the resolved name (``mlp.out.hook_in``).
    """
    pos = _pos_index(position)

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        store[key] = activation[:, pos].detach().clone()
        return activation

    return hook


def interpolation_hook(
    rows: Tensor,
    clean: Float[Tensor, "d_mlp"],
    baseline: Float[Tensor, "d_mlp"],
    alphas: Float[Tensor, "rows"],
    leaves: dict,
    key,
    position: int = -1,
) -> HookFn:
    """Integrated-gradients path: at ``position`` of batch rows ``rows`` put ``b + alpha (a - b)``.

    The interpolated activations are a fresh leaf tensor stored in ``leaves[key]`` so gradients
    are taken with respect to it (the bridge hands hooks reshaped views, on which
    ``retain_grad`` is unreliable).
    """

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        a = clean.to(activation)
        b = baseline.to(activation)
        leaf = (b + alphas.to(activation)[:, None] * (a - b)).detach().requires_grad_(True)
        leaves[key] = leaf
        out = activation.clone()
        out[rows.to(activation.device), position] = leaf
        return out

    return hook


def group_by_layer(neurons: Iterable[Neuron]) -> dict[int, list[int]]:
    """{layer: [neuron, ...]} from (layer, neuron) pairs, sorted and de-duplicated."""
    grouped: dict[int, set[int]] = defaultdict(set)
    for item in neurons:
        try:
            if isinstance(item, (str, bytes)):
                raise TypeError
            layer, neuron = item
            grouped[int(layer)].add(int(neuron))
        except (TypeError, ValueError):
            raise TypeError(f"neurons must be (layer, neuron) pairs of integers, got {item!r}; for a whole layer "
                            "use lakn.editing.layer_neurons(model, [layer])") from None
    return {layer: sorted(idx) for layer, idx in sorted(grouped.items())}


def neuron_hooks(
    neurons: Iterable[Neuron],
    *,
    factor: float | None = None,
    value: float | None = None,
    position: Position = "all",
    point: str = MLP_POST,
) -> list[tuple[str, HookFn]]:
    """One ``(hook_name, hook_fn)`` per layer that scales (``factor``) or sets (``value``) neurons.

    Example: ``model.run_with_hooks(toks, fwd_hooks=neuron_hooks([(3, 7), (5, 1)], factor=0.0))``.
    """
    if (factor is None) == (value is None):
        raise ValueError("give exactly one of factor= or value=")
    hooks = []
    for layer, idx in group_by_layer(neurons).items():
        if factor is not None:
            fn = scale_hook(idx, factor, position)
        else:
            assert value is not None  # exactly one of the two is given
            fn = set_hook(idx, value, position)
        hooks.append((hook_name(layer, point), fn))
    return hooks
