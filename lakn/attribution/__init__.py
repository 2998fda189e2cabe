"""Integrated gradients of the answer's probability w.r.t. every MLP neuron at the answer position.

For layer l with real activation a and baseline b (zero by default), at the position that
predicts the answer:

    Attr(l, i) = (a_i - b_i) / m * sum_{k=1..m} dF(b + (k/m)(a - b)) / d a_i

with only layer l scaled (docs/method.md §2). Completeness: sum_i Attr(l, i) ~= F(a) - F(b), with
an error that shrinks as m grows; every result carries that error per layer (as captum's
convergence delta).

Ways to compute it (``attribution=``):

- ``"reference"``: every (layer, step) pair is one row of a batch that recomputes the whole
  sequence; one hook per layer interpolates only its own rows. Simple, works for any model.
- ``"fast"`` (exact, the default for verified causal LMs): in a causal LM, scaling layer l at the
  last position changes nothing at earlier positions, so one clean pass over the prompt fills a
  key/value cache and every (layer, step) row then runs only the last position, attending to the
  cached keys and values, with the backward pass through that one position. Same hook point,
  same numbers as ``"reference"`` up to float rounding (tested on GPT-2, LLaMA, Gemma 3, BLOOM).
- ``"approx"``: activation x gradient, ``(a - b) * dF/da`` at the real activations, for all
  layers from ONE forward and backward pass. It is integrated gradients with a single step
  (m = 1) and is an approximation: use it to screen, then run exact IG where it matters
  (:func:`coarse_to_fine`). Its agreement with exact IG is measured in ``benchmarks/README.md``.
  It skips the completeness check unless asked (``completeness=True``: one more row per layer).

Models with a post-MLP normalisation (Gemma 2/3's ``post_feedforward_layernorm``) are
scale-invariant in the MLP activation, so IG from a zero baseline equals ``H_m * (a * dF/da)``
and the completeness check fails by design (docs/method.md §6).

The subpackage: this module is the public API; :mod:`~lakn.attribution.exact` and
:mod:`~lakn.attribution.approx` hold the row arithmetic, :mod:`~lakn.attribution.runners` the
passes they run, :mod:`~lakn.attribution.kv_cache` the key/value-cache shim and
:mod:`~lakn.attribution.memory` the chunk-size model (``batch_size=None``).
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .._deprecation import deprecated_names, warn_renamed
from ..config import IG_ATTRIBUTIONS
from ..facts import Query
from ..hooks import MLP_POST
from ..models import is_masked_lm
from ..probability import AnswerStats, answer_stats
from ..tokens import EncodedQuery, encode_query
from . import memory
from .approx import approx_batch, approx_one_token
from .exact import Grid, fast_batch, ig_one_token, step_grid, suffix_ig
from .kv_cache import architecture
from .runners import FastMismatch, FastRunner, ReferenceRunner

__all__ = [
    "QueryAttribution",
    "integrated_gradients",
    "attribute_queries",
    "coarse_to_fine",
    "step_grid",
    "fast_path_supported",
    "MODES",
    "Attribution",
    "FAST_VERIFIED_ARCHITECTURES",
    "SUFFIX_VERIFIED_ARCHITECTURES",
]

__getattr__ = deprecated_names(__name__, {
    "memory_estimate": "lakn.attribution.memory:memory_estimate",
    "auto_batch_size": "lakn.attribution.memory:auto_batch_size",
    "CHUNK_MEMORY_GIB": "lakn.attribution.memory:CHUNK_MEMORY_GIB",
    "Mode": "lakn.attribution:Attribution",
})

MODES = IG_ATTRIBUTIONS
"""The values of ``attribution=`` (from :mod:`lakn.config`)."""
Attribution = Literal["auto", "fast", "reference", "approx"]

# Families whose fast path is checked against the reference in tests/test_attribution.py.
# Anything else runs the reference loop under attribution="auto" (attribution="fast" can still be
# forced; a runtime check against the full forward then falls back to the reference on a mismatch).
FAST_VERIFIED_ARCHITECTURES = frozenset(
    {"GPT2LMHeadModel", "LlamaForCausalLM", "Gemma3ForCausalLM", "BloomForCausalLM"}
)
# Families where the fast path branches rows off one clean row inside the pass (suffix_ig): their
# blocks take any batch size per layer. BLOOM is not among them (its ALiBi bias is built once for
# the input batch), so it runs the per-row fast path.
SUFFIX_VERIFIED_ARCHITECTURES = frozenset({"GPT2LMHeadModel", "LlamaForCausalLM", "Gemma3ForCausalLM"})


@dataclass
class QueryAttribution:
    """Integrated gradients of one query, averaged over its answer tokens."""

    attributions: Float[Tensor, "layer d_mlp"]
    completeness_error: Float[Tensor, "layer"]  # |sum_i Attr - (F(a) - F(b))|, mean over tokens
    stats: AnswerStats  # P(y), entropy and rank of the clean model
    layers: list[int]
    n_answer_tokens: int
    attribution: str = "reference"  # how it was computed: "reference", "fast", "approx" or "coarse-to-fine(...)"

    @property
    def mode(self) -> str:
        """Deprecated name of :attr:`attribution`."""
        warn_renamed("QueryAttribution.mode", "QueryAttribution.attribution")
        return self.attribution


def fast_path_supported(model) -> bool:
    """True when ``attribution="auto"`` uses the single-position fast path: a causal LM of a verified
    family (``FAST_VERIFIED_ARCHITECTURES``) whose attention bridges accept a key/value cache."""
    if is_masked_lm(model) or architecture(model) not in FAST_VERIFIED_ARCHITECTURES:
        return False
    blocks = getattr(model, "blocks", None)
    if not blocks:
        return False
    return all(hasattr(getattr(b, "attn", None), "_update_kv_cache") for b in blocks)


def _attribution_arg(attribution: str, mode: str | None) -> str:
    """``attribution=``, or the deprecated ``mode=`` spelling of it."""
    if mode is None:
        return attribution
    warn_renamed("the mode= argument", "attribution=", stacklevel=4)
    return mode


def _check_args(model, steps: int, batch_size: int | None, attribution: str, grid: Grid, layers,
                baseline) -> list[int]:
    """Validate integrated-gradient arguments; returns the layers to attribute (all by default)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if attribution not in MODES:
        raise ValueError(f"unknown attribution {attribution!r}: use one of {MODES}")
    step_grid(steps, grid)  # validates grid
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    if not layers or len(set(layers)) != len(layers) or any(not 0 <= l < n_layers for l in layers):
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1} without repeats, got {layers}")
    if baseline is not None and (baseline.ndim != 2 or tuple(baseline.shape) != (n_layers, int(model.cfg.d_mlp))):
        raise ValueError(f"baseline must have shape [n_layers={n_layers}, d_mlp={int(model.cfg.d_mlp)}], "
                         f"got {tuple(baseline.shape)}")
    return layers


def _approx_results(model, encoded, layers, **kwargs) -> list[QueryAttribution]:
    return [QueryAttribution(attr, error, stats, layers, n, "approx")
            for attr, error, stats, n in approx_batch(model, encoded, layers=layers, **kwargs)]


def integrated_gradients(
    model,
    query: Query | EncodedQuery,
    *,
    steps: int = 20,
    layers: Sequence[int] | None = None,
    baseline: Float[Tensor, "layer d_mlp"] | None = None,
    first_token_only: bool = False,
    batch_size: int | None = None,
    point: str = MLP_POST,
    grid: Grid = "right",
    attribution: str = "auto",
    completeness: bool | None = None,
    mode: str | None = None,
) -> QueryAttribution:
    """Integrated gradients of P(answer) for every neuron of the chosen layers.

    ``baseline`` has one row per layer of the model (``[n_layers, d_mlp]``; zero if None).
    ``batch_size`` is the chunk size: rows (layer, step) per forward/backward pass; it bounds
    memory and never changes the result (None: about 1 GiB a chunk, see
    :func:`lakn.attribution.memory.auto_batch_size`). ``attribution``: ``"auto"`` (fast exact path
    where verified, else reference), ``"fast"``, ``"reference"`` or ``"approx"`` (activation x
    gradient, one pass; ``steps`` and ``grid`` are ignored), see the module docstring; ``mode`` is
    its deprecated name. ``completeness``: also run each layer at its baseline to report the
    completeness error (default: yes for exact IG, where it costs one row in m + 1; no for
    ``"approx"``, where those rows would be most of the cost); when skipped, ``completeness_error`` is NaN.

    Example: ``attr = integrated_gradients(model, fact.queries("en")[0], steps=20)``;
    ``attr.attributions[l].sum()`` ~= P(y) - P(y | layer l at baseline).
    """
    attribution = _attribution_arg(attribution, mode)
    layers = _check_args(model, steps, batch_size, attribution, grid, layers, baseline)
    encoded = encode_query(model, query) if isinstance(query, Query) else query
    if attribution == "fast" and encoded.masked:
        raise ValueError("attribution='fast' is for causal LMs; a masked LM sees every position, "
                         "use 'reference' or 'auto'")
    n_tokens = 1 if first_token_only else len(encoded.answer)
    approx = attribution == "approx"
    check = (not approx) if completeness is None else bool(completeness)
    if approx and not encoded.masked and not check:
        # one full pass per answer token gives the gradient and, from the same pass, the answer's
        # statistics (no statistics pass, no cache pass); shared with attribute_queries
        return _approx_results(model, [encoded], layers, baseline=baseline, first_token_only=first_token_only,
                               point=point, batch_size=batch_size)[0]
    fast = attribution == "fast" or (attribution in ("auto", "approx") and fast_path_supported(model))
    stats = answer_stats(model, encoded)
    total: Tensor | None = None
    error = torch.zeros(len(layers))
    used = "approx" if approx else ("fast" if fast else "reference")
    one = approx_one_token if approx else ig_one_token
    n_rows = len(layers) * (1 if approx else steps + 1) + 1
    for t in range(n_tokens):
        tokens, position = encoded.step(t)
        target = int(encoded.answer[t])
        result = None
        if fast:
            chunk = batch_size or memory.auto_batch_size(model, len(tokens), n_rows)
            run = FastRunner.prepare(model, tokens, float(stats.token_probs[t]))
            fn = suffix_ig if not approx and architecture(model) in SUFFIX_VERIFIED_ARCHITECTURES else one
            try:
                result = None if run is None else fn(run, target, layers, steps, baseline, chunk, point, grid, check)
            except FastMismatch as err:
                warnings.warn(str(err), stacklevel=2)
            if result is None:
                fast, used = False, ("approx" if approx else "reference")
        if result is None:
            chunk = batch_size or memory.auto_batch_size(model, len(tokens), n_rows, full_sequence=True)
            ref = ReferenceRunner(model, tokens, position if encoded.masked else None)
            result = one(ref, target, layers, steps, baseline, chunk, point, grid, check)
        attr_t, err_t = result
        total = attr_t if total is None else total + attr_t
        error += err_t
    assert total is not None  # n_tokens >= 1
    return QueryAttribution(total / n_tokens, error / n_tokens, stats, layers, n_tokens, used)


def attribute_queries(model, queries: Sequence[Query | EncodedQuery], **options: Any) -> list[QueryAttribution]:
    """:func:`integrated_gradients` for several queries (same arguments), sharing passes between
    queries where that pays: ``attribution="approx"`` on a causal LM runs the rows of all queries
    (one per answer token) together, right-padded (a causal LM's real positions never see the
    padding, so no mask or position shift is needed), with ``batch_size`` rows (sequences) per pass.
    The exact fast path lets the (query, answer token) inputs of equal length share passes, as many
    as the chunk holds beside their (layer, step) rows (equal lengths need no padding, so the cached
    prompts need no mask). The reference loop and masked LMs run query by query. Same results as
    calling :func:`integrated_gradients` on each query (tested). The keyword arguments are
    :func:`integrated_gradients`' own (the same names and defaults; any other is a ``TypeError``)."""
    bound = _IG_SIGNATURE.bind(model, None, **options)
    bound.apply_defaults()
    opt = bound.arguments
    attribution = _attribution_arg(opt["attribution"], opt["mode"])
    steps, layers, baseline, first_token_only, batch_size, point, grid, completeness = (
        opt[k] for k in ("steps", "layers", "baseline", "first_token_only", "batch_size", "point", "grid", "completeness"))
    layers = _check_args(model, steps, batch_size, attribution, grid, layers, baseline)
    encoded = [encode_query(model, q) if isinstance(q, Query) else q for q in queries]
    if attribution == "approx" and not is_masked_lm(model) and not completeness:
        return _approx_results(model, encoded, layers, baseline=baseline, first_token_only=first_token_only,
                               point=point, batch_size=batch_size)
    kwargs: dict[str, Any] = dict(steps=steps, layers=layers, baseline=baseline, first_token_only=first_token_only,
                  batch_size=batch_size, point=point, grid=grid, completeness=completeness)
    out: list[QueryAttribution | None] = [None] * len(encoded)
    suffix = (not is_masked_lm(model) and architecture(model) in SUFFIX_VERIFIED_ARCHITECTURES
              and (attribution == "fast" or (attribution == "auto" and fast_path_supported(model))))
    if suffix and len(encoded) > 1:
        stats = [answer_stats(model, e) for e in encoded]
        parts = fast_batch(model, encoded, stats, **kwargs)
        out = [None if p is None else QueryAttribution(p[0], p[1], s, layers, 1 if first_token_only else len(e.answer),
                                                       "fast")
               for p, s, e in zip(parts, stats, encoded)]
    # single queries, other attributions and anything the shared fast path handed back (with its warning)
    return [o if o is not None else integrated_gradients(model, e, attribution=attribution, **kwargs)
            for o, e in zip(out, encoded)]


_IG_SIGNATURE = inspect.signature(integrated_gradients)
# help(attribute_queries) shows integrated_gradients' keywords, which are the ones it takes
attribute_queries.__signature__ = _IG_SIGNATURE.replace(  # type: ignore[attr-defined]
    parameters=[p if p.name != "query" else p.replace(name="queries", annotation="Sequence[Query | EncodedQuery]") for p in _IG_SIGNATURE.parameters.values()],
    return_annotation="list[QueryAttribution]")


def coarse_to_fine(
    model,
    query: Query | EncodedQuery,
    *,
    refine_layers: int = 4,
    steps: int = 20,
    **kwargs,
) -> QueryAttribution:
    """Screen every layer with ``attribution="approx"``, then run exact IG on the ``refine_layers``
    layers holding the largest approximate attributions; other layers keep the approximation.

    An approximation as a whole (the layer ranking comes from activation x gradient); its
    ``completeness_error`` is exact for the refined layers. ``kwargs`` go to
    :func:`integrated_gradients` (not ``attribution`` or ``layers``).
    """
    if refine_layers < 1:
        raise ValueError(f"refine_layers must be at least 1, got {refine_layers}")
    coarse = integrated_gradients(model, query, steps=steps, attribution="approx", **kwargs)
    peak = coarse.attributions.max(dim=1).values
    order = peak.argsort(descending=True)[:refine_layers]
    chosen = sorted(coarse.layers[int(i)] for i in order)
    fine = integrated_gradients(model, query, steps=steps, layers=chosen, **kwargs)
    attributions = coarse.attributions.clone()
    error = coarse.completeness_error.clone()
    for j, l in enumerate(chosen):
        i = coarse.layers.index(l)
        attributions[i] = fine.attributions[j]
        error[i] = fine.completeness_error[j]
    return QueryAttribution(attributions, error, coarse.stats, coarse.layers, coarse.n_answer_tokens,
                            f"coarse-to-fine({fine.attribution}:{','.join(map(str, chosen))})")
