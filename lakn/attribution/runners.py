"""Runners: "run ``n_rows`` copies of the query's answer position with these hooks".

Every integrated-gradient path is written against a runner, so the same row arithmetic serves the
full recomputation (:class:`ReferenceRunner`, any model) and the single-position fast path
(:class:`FastRunner`, causal LMs: only the last token runs, against a copy of the prompt's
key/value cache). Both return the logits at the answer position, ``[n_rows, d_vocab]``, and check
the clean probability against the full forward (:meth:`Runner.check_clean`). Also here: the
bookkeeping every path shares (baselines, the completeness error) and :func:`final_pass`, the
forward that hands the objective the final residual stream instead of logits where it can.
"""

from __future__ import annotations

import copy

import torch
from jaxtyping import Float
from torch import Tensor

from ..tokens import last_logits, logits_at, model_device
from .kv_cache import architecture, bridge_kv_cache, prefix_cache, quiet_cache_warning

__all__ = ["Runner", "ReferenceRunner", "FastRunner", "FastMismatch", "final_pass", "baselines",
           "completeness_error", "FAST_CHECK_TOL"]

# |P_fast(y) - P_full(y)| allowed on the clean pass before the fast path is distrusted
FAST_CHECK_TOL = 1e-4


class FastMismatch(RuntimeError):
    """The fast path's clean probability disagrees with the full forward."""


class Runner:
    """What every runner has: the model, the answer position (``-1``: the last), and ``p_full``,
    P(y) from the full forward when known (the clean pass is checked against it)."""

    position: int = -1

    def __init__(self, model, p_full: float | None = None):
        self.model = model
        self.p_full = p_full
        self.model_name = architecture(model)

    def __call__(self, n_rows: int, fwd_hooks) -> Float[Tensor, "row d_vocab"]:
        raise NotImplementedError

    def check_clean(self, f_clean: float) -> None:
        """Raise :class:`FastMismatch` when the clean P(y) of this runner is off the full forward's."""
        if self.p_full is not None and abs(f_clean - self.p_full) > FAST_CHECK_TOL * max(1.0, self.p_full):
            raise FastMismatch(f"lakn: the fast path of {self.model_name} gives P(y) {f_clean:.6g} against "
                               f"{self.p_full:.6g} from the full forward; using the reference integrated gradients")


class ReferenceRunner(Runner):
    """Full recomputation of the whole sequence; logits at ``position`` (None: the last token, for
    causal LMs; a mask position for masked LMs, which see every position)."""

    def __init__(self, model, tokens: Tensor, position: int | None = None):
        super().__init__(model)
        self.tokens = tokens[None].to(model_device(model))
        self.logit_position = position
        self.position = -1 if position is None else position

    def __call__(self, n_rows: int, fwd_hooks) -> Float[Tensor, "row d_vocab"]:
        with self.model.hooks(fwd_hooks=fwd_hooks):
            if self.logit_position is None:
                return last_logits(self.model, self.tokens.expand(n_rows, -1)).float()
            return self.model(self.tokens.expand(n_rows, -1))[:, self.logit_position].float()


class FastRunner(Runner):
    """Each call runs only the last token, for ``n_rows`` rows, against a copy of the prompt's
    key/value cache (:func:`~lakn.attribution.kv_cache.prefix_cache`). Build it with
    :meth:`prepare`, which gives None (use the reference) when the cache stays empty."""

    def __init__(self, model, cache, last: Tensor, p_full: float | None = None):
        super().__init__(model, p_full)
        self.cache, self.last = cache, last

    @classmethod
    def prepare(cls, model, tokens: Tensor, p_full: float | None = None) -> "FastRunner | None":
        prepared = prefix_cache(model, tokens)
        if prepared is None:
            return None
        cache, last = prepared
        return cls(model, cache, last, p_full)

    def __call__(self, n_rows: int, fwd_hooks) -> Float[Tensor, "row d_vocab"]:
        kwargs = {}
        if self.cache is not None:
            rows_cache = copy.deepcopy(self.cache)
            rows_cache.batch_repeat_interleave(n_rows)
            kwargs["past_key_values"] = rows_cache
        with bridge_kv_cache(self.model), quiet_cache_warning(), self.model.hooks(fwd_hooks=fwd_hooks):
            return last_logits(self.model, self.last.expand(n_rows, -1), **kwargs).float()


def final_pass(model, tokens, hooks, unembed, position: Tensor | None = None, **kwargs) -> Tensor:
    """Run the model with ``hooks`` and return, at each row's ``position`` (None: the last), what
    the objective needs: the final residual stream (ln_final's output) when ``unembed`` is given,
    so that the objective unembeds it itself and the model unembeds nothing; else the logits."""
    final: dict[str, Tensor] = {}
    if unembed is not None:
        hooks = [*hooks, ("ln_final.hook_out", lambda x, hook=None: final.setdefault("h", x))]
    with model.hooks(fwd_hooks=hooks):
        if unembed is not None:
            logits_at(model, tokens, torch.zeros(0, dtype=torch.long, device=tokens.device), **kwargs)
        elif position is None:
            return last_logits(model, tokens, **kwargs).float()
        else:
            out = model(tokens, **kwargs)
    rows = None if position is None else torch.arange(len(position), device=position.device)
    if unembed is not None:
        return final["h"][:, -1] if position is None else final["h"][rows, position]
    return out[rows, position].float()


def baselines(baseline: Tensor | None, layers, d_mlp: int) -> dict[int, Tensor]:
    """The baseline activation b of each layer (zero when ``baseline`` is None), float32 on the CPU."""
    if baseline is None:
        return {l: torch.zeros(d_mlp) for l in layers}
    if baseline.shape[-1] != d_mlp:
        raise ValueError(f"baseline must have shape [n_layers, {d_mlp}], got {tuple(baseline.shape)}")
    return {l: baseline[l].detach().float().cpu() for l in layers}


def completeness_error(attr, layers, f_clean: float, f_base: dict | None) -> Float[Tensor, "layer"]:
    """|sum_i Attr(l, i) - (F(a) - F(b_l))| per layer; NaN when F(b) was not computed."""
    if f_base is None:
        return torch.full((len(layers),), float("nan"))
    return torch.tensor([abs(float(attr[i].sum()) - (f_clean - f_base[l])) for i, l in enumerate(layers)])
