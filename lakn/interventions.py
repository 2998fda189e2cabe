"""Activation interventions: suppress, enhance or set neurons while the model runs.

Context managers over the bridge's own ``model.hooks(...)``, so they compose with any hooks a user
adds (outside or inside the block) and always remove what they added, also when the block raises::

    with lakn.suppress(model, result.neurons("capital_france")):
        lakn.answer_probability(model, fact)          # {lang: [P(answer) per query]}
    with lakn.intervene(model, neurons, factor=3.0, position="last"):
        model.run_with_hooks(tokens, fwd_hooks=[(my_name, my_hook)])

Weight edits (``W_out`` rows) are :mod:`lakn.editing`.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from ._deprecation import deprecated_names
from .hooks import Neuron, Position, neuron_hooks

__all__ = ["intervene", "suppress", "enhance"]

__getattr__ = deprecated_names(__name__, {
    "answer_probability": "lakn.probability:answer_probability",
    **{name: f"lakn.editing:{name}" for name in ("w_out", "Edit", "edit_fact", "inject_fact", "activation_neurons")},
})


@contextlib.contextmanager
def intervene(
    model,
    neurons: Iterable[Neuron],
    *,
    factor: float | None = None,
    value: float | None = None,
    position: Position = "all",
) -> Iterator:
    """Run the model with chosen neurons scaled by ``factor`` or set to ``value`` inside the block.

    ``neurons`` are (layer, neuron) pairs on ``blocks.{layer}.mlp.hook_post``; ``position`` is
    ``"all"``, ``"last"`` or token indices (see :mod:`lakn.hooks`). Built on ``model.hooks``: the
    hooks are removed on exit, exception or not, and hooks the caller added stay.

    Example: ``with lakn.intervene(model, [(3, 7)], factor=0.5): model(tokens)``.
    """
    hooks = neuron_hooks(list(neurons), factor=factor, value=value, position=position)
    with model.hooks(fwd_hooks=hooks):
        yield model


def suppress(model, neurons: Iterable[Neuron], position: Position = "all"):
    """``intervene`` with factor 0: the neurons' activations are zeroed inside the block."""
    return intervene(model, neurons, factor=0.0, position=position)


def enhance(model, neurons: Iterable[Neuron], factor: float = 2.0, position: Position = "all"):
    """``intervene`` with factor 2 (by default): the neurons' activations are doubled inside the block."""
    return intervene(model, neurons, factor=factor, position=position)
