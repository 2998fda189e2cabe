"""Integrated gradients of the answer's probability w.r.t. every MLP neuron at the answer position.

For layer l with real activation a and baseline b (zero by default), at the position that
predicts the answer:

    Attr(l, i) = (a_i - b_i) / m * sum_{k=1..m} dF(b + (k/m)(a - b)) / d a_i

with only layer l scaled. Completeness: sum_i Attr(l, i) ~= F(a) - F(b), with an error that
shrinks as m grows; every result carries that error per layer (as captum's convergence delta).

Three ways to compute it (``mode=``):

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
  (``coarse_to_fine``). Its agreement with exact IG is measured in ``benchmarks/README.md``.
  It skips the completeness check unless asked (``completeness=True``: one more row per layer).

Models with a post-MLP normalisation (Gemma 2/3's ``post_feedforward_layernorm``) are
scale-invariant in the MLP activation: F(alpha a) = F(a) for alpha > 0 (up to the norm's eps).
From a zero baseline the gradient is then homogeneous of degree -1 and IG equals
``H_m * (a * dF/da)`` exactly (H_m the m-th harmonic number): the per-layer sums are ~0 and the
completeness check against F(a) - F(0) fails by design, because the path jumps at alpha = 0.

The fast path's objective P(y) unembeds ln_final's output itself, tile by tile over the
vocabulary (:func:`lakn.objective.unembed_target_probability`), so neither the forward nor the backward holds
logits, softmax or gradient copies of the vocabulary. :func:`attribute_queries` attributes many
queries; in ``"approx"`` their rows share right-padded passes.

Memory is bounded by ``batch_size`` rows (the chunk size), whatever the number of layers and
steps; results do not depend on it. The default (None) fits a chunk into about
``CHUNK_MEMORY_GIB`` (:func:`auto_batch_size`).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Query
from . import objective
from .hooks import MLP_POST, capture_hook, hook_name, interpolation_hook
from .objective import target_probability
from .tokens import AnswerStats, EncodedQuery, answer_probabilities, encode_query, last_logits, logits_at

__all__ = [
    "QueryAttribution",
    "integrated_gradients",
    "attribute_queries",
    "coarse_to_fine",
    "step_grid",
    "fast_path_supported",
    "MODES",
    "FAST_VERIFIED_ARCHITECTURES",
    "auto_batch_size",
    "memory_estimate",
    "CHUNK_MEMORY_GIB",
]

Grid = Literal["right", "linspace"]
Mode = Literal["auto", "fast", "reference", "approx"]
MODES = ("auto", "fast", "reference", "approx")

# Families whose fast path is checked against the reference in tests/test_attribution.py.
# Anything else runs the reference loop under mode="auto" (mode="fast" can still be forced;
# a runtime check against the full forward then falls back to the reference on a mismatch).
FAST_VERIFIED_ARCHITECTURES = frozenset(
    {"GPT2LMHeadModel", "LlamaForCausalLM", "Gemma3ForCausalLM", "BloomForCausalLM"}
)
# Families where the fast path branches rows off one clean row inside the pass (_suffix_ig): their
# blocks take any batch size per layer. BLOOM is not among them (its ALiBi bias is built once for
# the input batch), so it runs the per-row fast path.
SUFFIX_VERIFIED_ARCHITECTURES = frozenset({"GPT2LMHeadModel", "LlamaForCausalLM", "Gemma3ForCausalLM"})
# batch_size=None: rows per pass chosen so the chunk's activations stay under this (auto_batch_size)
CHUNK_MEMORY_GIB = 1.0
# |P_fast(y) - P_full(y)| allowed on the clean pass before the fast path is distrusted
_FAST_CHECK_TOL = 1e-4


@dataclass
class QueryAttribution:
    """Integrated gradients of one query, averaged over its answer tokens."""

    attributions: Float[Tensor, "layer d_mlp"]
    completeness_error: Float[Tensor, "layer"]  # |sum_i Attr - (F(a) - F(b))|, mean over tokens
    stats: AnswerStats  # P(y), entropy and rank of the clean model
    layers: list[int]
    n_answer_tokens: int
    mode: str = "reference"  # how it was computed: "reference", "fast" or "approx"


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


def _architecture(model) -> str:
    hf_model = getattr(model, "original_model", model)
    archs = getattr(getattr(hf_model, "config", None), "architectures", None) or []
    return archs[0] if archs else type(hf_model).__name__


def fast_path_supported(model) -> bool:
    """True when ``mode="auto"`` uses the single-position fast path: a causal LM of a verified
    family (``FAST_VERIFIED_ARCHITECTURES``) whose attention bridges accept a key/value cache."""
    from .models import is_masked_lm

    if is_masked_lm(model) or _architecture(model) not in FAST_VERIFIED_ARCHITECTURES:
        return False
    blocks = getattr(model, "blocks", None)
    return bool(blocks) and all(hasattr(getattr(b, "attn", None), "_update_kv_cache") for b in blocks)


def _check_args(model, steps: int, batch_size: int | None, mode: str, grid: str, layers, baseline) -> list[int]:
    """Validate integrated-gradient arguments; returns the layers to attribute (all by default)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {MODES}")
    step_grid(steps, grid)  # validates grid
    return _check_layers(model, layers, baseline)


def _check_layers(model, layers, baseline) -> list[int]:
    """The layers to attribute (all by default), validated with the baseline's shape."""
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(l) for l in layers]
    if not layers or len(set(layers)) != len(layers) or any(not 0 <= l < n_layers for l in layers):
        raise ValueError(f"layers must be a non-empty subset of 0..{n_layers - 1} without repeats, got {layers}")
    if baseline is not None and (baseline.ndim != 2 or tuple(baseline.shape) != (n_layers, int(model.cfg.d_mlp))):
        raise ValueError(f"baseline must have shape [n_layers={n_layers}, d_mlp={int(model.cfg.d_mlp)}], "
                         f"got {tuple(baseline.shape)}")
    return layers


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
    mode: Mode = "auto",
    completeness: bool | None = None,
) -> QueryAttribution:
    """Integrated gradients of P(answer) for every neuron of the chosen layers.

    ``baseline`` has one row per layer of the model (``[n_layers, d_mlp]``; zero if None).
    ``batch_size`` is the chunk size: rows (layer, step) per forward/backward pass; it bounds
    memory and never changes the result (None: :func:`auto_batch_size`, about 1 GiB a chunk). ``mode``: ``"auto"`` (fast exact path where verified,
    else reference), ``"fast"``, ``"reference"`` or ``"approx"`` (activation x gradient, one pass;
    ``steps`` and ``grid`` are ignored), see the module docstring. ``completeness``: also run
    each layer at its baseline to report the completeness error (default: yes for exact IG, where
    it costs one row in m + 1; no for ``"approx"``, where those rows would be most of the cost);
    when skipped, ``completeness_error`` is NaN.

    Example: ``attr = integrated_gradients(model, fact.queries("en")[0], steps=20)``;
    ``attr.attributions[l].sum()`` ~= P(y) - P(y | layer l at baseline).
    """
    layers = _check_args(model, steps, batch_size, mode, grid, layers, baseline)
    encoded = encode_query(model, query) if isinstance(query, Query) else query
    if mode == "fast" and encoded.masked:
        raise ValueError("mode='fast' is for causal LMs; a masked LM sees every position, use 'reference' or 'auto'")
    n_tokens = 1 if first_token_only else len(encoded.answer)
    check = (mode != "approx") if completeness is None else bool(completeness)
    if mode == "approx" and not encoded.masked and not check:
        # one full pass per answer token gives the gradient and, from the same pass, the answer's
        # statistics (no statistics pass, no cache pass); shared with attribute_queries
        return _approx_batch(model, [encoded], layers=layers, baseline=baseline, first_token_only=first_token_only,
                             point=point, batch_size=batch_size)[0]
    fast = mode == "fast" or (mode in ("auto", "approx") and fast_path_supported(model))
    stats = answer_probabilities(model, encoded)
    total = None
    error = torch.zeros(len(layers))
    used = "approx" if mode == "approx" else ("fast" if fast else "reference")
    one = _approx_one_token if mode == "approx" else _ig_one_token
    n_rows = len(layers) * (1 if mode == "approx" else steps + 1) + 1
    for t in range(n_tokens):
        tokens, position = encoded.step(t)
        target = int(encoded.answer[t])
        result = None
        if fast:
            chunk = batch_size or auto_batch_size(model, len(tokens), n_rows)
            run = _fast_runner(model, tokens, float(stats.token_probs[t]))
            fn = _suffix_ig if mode != "approx" and _architecture(model) in SUFFIX_VERIFIED_ARCHITECTURES else one
            try:
                result = None if run is None else fn(run, target, layers, steps, baseline, chunk, point, grid, check)
            except _FastMismatch as err:
                warnings.warn(str(err), stacklevel=2)
            if result is None:
                fast, used = False, ("approx" if mode == "approx" else "reference")
        if result is None:
            chunk = batch_size or auto_batch_size(model, len(tokens), n_rows, full_sequence=True)
            run = _reference_runner(model, tokens, position if encoded.masked else None)
            result = one(run, target, layers, steps, baseline, chunk, point, grid, check)
        attr_t, err_t = result
        total = attr_t if total is None else total + attr_t
        error += err_t
    return QueryAttribution(total / n_tokens, error / n_tokens, stats, layers, n_tokens, used)


def attribute_queries(
    model,
    queries: Sequence[Query | EncodedQuery],
    *,
    steps: int = 20,
    layers: Sequence[int] | None = None,
    baseline: Float[Tensor, "layer d_mlp"] | None = None,
    first_token_only: bool = False,
    batch_size: int | None = None,
    point: str = MLP_POST,
    grid: Grid = "right",
    mode: Mode = "auto",
    completeness: bool | None = None,
) -> list[QueryAttribution]:
    """:func:`integrated_gradients` for several queries (same arguments), sharing passes between
    queries where that pays: ``mode="approx"`` on a causal LM runs the rows of all queries (one per
    answer token) together, right-padded (a causal LM's real positions never see the padding, so no
    mask or position shift is needed), with ``batch_size`` rows (sequences) per pass. The exact
    fast path lets the (query, answer token) inputs of equal length share passes, as many as the
    chunk holds beside their (layer, step) rows (equal lengths need no padding, so the cached
    prompts need no mask). The reference loop and masked LMs run query by query. Same results as
    calling :func:`integrated_gradients` on each query (tested)."""
    from .models import is_masked_lm

    layers = _check_args(model, steps, batch_size, mode, grid, layers, baseline)
    encoded = [encode_query(model, q) if isinstance(q, Query) else q for q in queries]
    if mode == "approx" and not is_masked_lm(model) and not completeness:
        return _approx_batch(model, encoded, layers=layers, baseline=baseline, first_token_only=first_token_only,
                             point=point, batch_size=batch_size)
    kwargs = dict(steps=steps, layers=layers, baseline=baseline, first_token_only=first_token_only,
                  batch_size=batch_size, point=point, grid=grid, completeness=completeness)
    out: list[QueryAttribution | None] = [None] * len(encoded)
    suffix = (not is_masked_lm(model) and _architecture(model) in SUFFIX_VERIFIED_ARCHITECTURES
              and (mode == "fast" or (mode == "auto" and fast_path_supported(model))))
    if suffix and len(encoded) > 1:
        out = _fast_batch(model, encoded, **kwargs)
    # single queries, other modes and anything the shared fast path handed back (with its warning)
    return [o if o is not None else integrated_gradients(model, e, mode=mode, **kwargs) for o, e in zip(out, encoded)]


def _fast_batch(model, encoded: Sequence[EncodedQuery], *, steps, layers, baseline, first_token_only, batch_size,
                point, grid, completeness) -> list[QueryAttribution | None]:
    """Exact fast-path IG for several causal-LM queries (arguments validated by the caller): the
    (query, answer token) inputs of equal length share passes (:func:`_suffix_ig_group`), as many
    per pass as the chunk holds. None for a query whose group could not take the fast path (the
    caller runs it on its own)."""
    check = True if completeness is None else bool(completeness)
    stats = [answer_probabilities(model, e) for e in encoded]
    n_tokens = [1 if first_token_only else len(e.answer) for e in encoded]
    groups: dict[int, list[tuple[int, int]]] = {}
    for qi, e in enumerate(encoded):
        for t in range(n_tokens[qi]):
            groups.setdefault(len(e.step(t)[0]), []).append((qi, t))
    rows = len(layers) * len(_alphas(steps, grid, check)[0])  # rows of one query token
    parts: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
    failed: set[int] = set()
    for length, members in groups.items():
        chunk = batch_size or auto_batch_size(model, length, len(members) * (rows + 1))
        size = max(1, chunk // (rows + 1))  # query tokens sharing a pass
        for start in range(0, len(members), size):
            group = members[start : start + size]
            runs = [_fast_runner(model, encoded[qi].step(t)[0], float(stats[qi].token_probs[t])) for qi, t in group]
            if any(r is None for r in runs):
                failed.update(qi for qi, _ in group)
                continue
            try:
                results = _suffix_ig_group(runs, [int(encoded[qi].answer[t]) for qi, t in group], layers, steps,
                                           baseline, max(chunk, len(group) + 1), point, grid, check)
            except _FastMismatch:
                failed.update(qi for qi, _ in group)
                continue
            parts.update(zip(group, results))
    out: list[QueryAttribution | None] = []
    for qi, e in enumerate(encoded):
        if qi in failed:
            out.append(None)
            continue
        attr = sum(parts[qi, t][0] for t in range(n_tokens[qi])) / n_tokens[qi]
        error = sum(parts[qi, t][1] for t in range(n_tokens[qi])) / n_tokens[qi]
        out.append(QueryAttribution(attr, error, stats[qi], layers, n_tokens[qi], "fast"))
    return out


def _approx_batch(model, encoded: Sequence[EncodedQuery], *, layers, baseline, first_token_only, point,
                  batch_size) -> list[QueryAttribution]:
    """Activation x gradient for many causal-LM queries: one row per (query, answer token), the
    input prompt + answer[:t] right-padded to the longest row of its pass; a zero leaf added at
    each row's own last position of every layer gives dP/da there. P, entropy and rank come from
    the same pass (rows of later answer tokens only add P(y_t) when ``first_token_only``).
    Arguments validated by the caller."""
    d_mlp = int(model.cfg.d_mlp)
    base = _baselines(baseline, layers, d_mlp)
    device = _device(model)
    unembed = objective.unembedding(model)
    rows = [(qi, t) for qi, e in enumerate(encoded) for t in range(len(e.answer))]
    rows.sort(key=lambda r: len(encoded[r[0]].prompt) + r[1])  # similar lengths share a pass
    attr: dict[tuple[int, int], Tensor] = {}
    log_p, entropy, rank = {}, {}, {}
    longest = max((len(encoded[qi].prompt) + t for qi, t in rows), default=1)
    size = batch_size or auto_batch_size(model, longest, len(rows), full_sequence=True)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        inputs = [encoded[qi].step(t)[0] for qi, t in chunk]
        length = max(len(x) for x in inputs)
        tokens = torch.stack([torch.cat([x, x[:1].expand(length - len(x))]) for x in inputs]).to(device)
        pos = torch.tensor([len(x) - 1 for x in inputs], device=device)
        targets = torch.tensor([int(encoded[qi].answer[t]) for qi, t in chunk], device=device)
        leaves: dict[int, Tensor] = {}
        clean: dict[int, Tensor] = {}
        hooks = [(hook_name(l, point), _gradient_hook(leaves, clean, l, pos)) for l in layers]
        out = _final_pass(model, tokens, hooks, unembed, pos)
        p, ent, rk = objective.answer_probability(out, unembed, targets, with_stats=True)
        weight = torch.tensor([1.0 if (t == 0 or not first_token_only) else 0.0 for _, t in chunk], device=device)
        grads = torch.autograd.grad((p * weight).sum(), [leaves[l] for l in layers])
        for j, (qi, t) in enumerate(chunk):
            log_p[qi, t], entropy[qi, t], rank[qi, t] = float(p[j].detach().log()), float(ent[j]), int(rk[j])
            if weight[j]:
                attr[qi, t] = torch.stack([(clean[l][j].float().cpu() - base[l]) * grads[i][j].float().cpu()
                                           for i, l in enumerate(layers)])
        del p, out, grads  # free this pass's graph before the next
    results = []
    for qi, e in enumerate(encoded):
        n_tokens = 1 if first_token_only else len(e.answer)
        stats = AnswerStats.from_log_probs(torch.tensor([log_p[qi, t] for t in range(len(e.answer))]),
                                           entropy[qi, 0], rank[qi, 0], int(model.cfg.d_vocab))
        total = sum(attr[qi, t] for t in range(n_tokens)) / n_tokens
        error = _completeness_error(total, layers, stats.token_probs[0], None)  # not computed: NaN
        results.append(QueryAttribution(total, error, stats, layers, n_tokens, "approx"))
    return results


def coarse_to_fine(
    model,
    query: Query | EncodedQuery,
    *,
    refine_layers: int = 4,
    steps: int = 20,
    **kwargs,
) -> QueryAttribution:
    """Screen every layer with ``mode="approx"``, then run exact IG on the ``refine_layers``
    layers holding the largest approximate attributions; other layers keep the approximation.

    An approximation as a whole (the layer ranking comes from activation x gradient); its
    ``completeness_error`` is exact for the refined layers. ``kwargs`` go to
    :func:`integrated_gradients` (not ``mode`` or ``layers``).
    """
    if refine_layers < 1:
        raise ValueError(f"refine_layers must be at least 1, got {refine_layers}")
    coarse = integrated_gradients(model, query, steps=steps, mode="approx", **kwargs)
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
                            f"coarse-to-fine({fine.mode}:{','.join(map(str, chosen))})")


# --- runners: "run n rows of the query's last position with these hooks" ----------------------


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _reference_runner(model, tokens, position: int | None = None):
    """Full recomputation of the whole sequence; logits at ``position`` (None: the last token,
    for causal LMs; a mask position for masked LMs, which see every position)."""
    tokens = tokens[None].to(_device(model))

    def run(n_rows: int, fwd_hooks) -> Float[Tensor, "row d_vocab"]:
        with model.hooks(fwd_hooks=fwd_hooks):
            if position is None:
                return last_logits(model, tokens.expand(n_rows, -1)).float()
            return model(tokens.expand(n_rows, -1))[:, position].float()

    run.position = -1 if position is None else position
    return run


@contextmanager
def _bridge_kv_cache(model):
    """Let the bridge's attention read and extend a Hugging Face key/value cache.

    transformers 5.x hands each attention layer its cache as ``cache=``; TransformerLens 4.3's
    attention bridges look only for ``past_key_values=`` / ``layer_past=``, so the cache stays
    empty (method.md section 6). For the duration of the block each attention bridge's
    ``_update_kv_cache`` also accepts ``cache=``; nothing else changes and nothing leaks.
    """
    patched = []
    for block in model.blocks:
        attn = block.attn
        original = attn._update_kv_cache

        def update(k, v, _original=original, **kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
                if kwargs.get("cache") is not None:
                    kwargs["past_key_values"] = kwargs["cache"]
            return _original(k, v, **kwargs)

        attn.__dict__["_update_kv_cache"] = update
        patched.append(attn)
    try:
        yield
    finally:
        for attn in patched:
            attn.__dict__.pop("_update_kv_cache", None)


@contextmanager
def _quiet_cache_warning():
    """transformers 5.x warns that ``past_key_values`` is being renamed; the bridge only forwards
    that name, so the warning says nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        yield


def _prefix_cache(model, tokens):
    """One clean pass over ``tokens[:-1]`` into a Hugging Face key/value cache (batch 1).
    Returns ``(cache or None for a one-token prompt, last token [1, 1])``, or None when the cache
    stays empty (the bridge did not fill it: use the reference)."""
    from transformers import DynamicCache

    tokens = tokens[None].to(_device(model))
    prefix, last = tokens[:, :-1], tokens[:, -1:]
    if not prefix.shape[1]:
        return None, last
    cache = DynamicCache(config=model.original_model.config)
    with torch.no_grad(), _bridge_kv_cache(model), _quiet_cache_warning():
        # no position is unembedded: only the cache is wanted (saves a 262k-column matmul on Gemma 3)
        logits_at(model, prefix, torch.zeros(0, dtype=torch.long, device=prefix.device), past_key_values=cache)
    if cache.get_seq_length() != prefix.shape[1]:
        warnings.warn(f"lakn: the key/value cache of {_architecture(model)} stayed empty; "
                      "using the reference integrated gradients", stacklevel=4)
        return None
    return cache, last


def _fast_runner(model, tokens, p_full: float | None = None):
    """Each call runs only the last token, for ``n_rows`` rows, against a copy of the prompt's
    key/value cache (:func:`_prefix_cache`). Returns None (use the reference) when the cache stays
    empty; a clean probability that disagrees with ``p_full`` raises :class:`_FastMismatch`."""
    prepared = _prefix_cache(model, tokens)
    if prepared is None:
        return None
    cache, last = prepared

    def run(n_rows: int, fwd_hooks) -> Float[Tensor, "row d_vocab"]:
        kwargs = {}
        if cache is not None:
            rows_cache = copy.deepcopy(cache)
            rows_cache.batch_repeat_interleave(n_rows)
            kwargs["past_key_values"] = rows_cache
        with _bridge_kv_cache(model), _quiet_cache_warning(), model.hooks(fwd_hooks=fwd_hooks):
            return last_logits(model, last.expand(n_rows, -1), **kwargs).float()

    run.p_full = p_full
    run.model_name = _architecture(model)
    run.position = -1
    run.model, run.cache, run.last = model, cache, last
    return run


def _suffix_ig(run, target, layers, steps, baseline, batch_size, point, grid, completeness=True):
    """:func:`_suffix_ig_group` for one query token."""
    return _suffix_ig_group([run], [target], layers, steps, baseline, batch_size, point, grid, completeness)[0]


def _suffix_ig_group(runs, targets, layers, steps, baseline, batch_size, point, grid, completeness=True):
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
    :func:`_ig_one_token` on the per-row runner (tested). Returns (attr, error) per query token.
    """
    model = runs[0].model
    n_queries = len(runs)
    n_layers = model.cfg.n_layers
    alphas, in_sum = _alphas(steps, grid, completeness)
    plan = [(l, q, k) for l in sorted(layers) for q in range(n_queries) for k in range(len(alphas))]
    per_chunk = max(1, batch_size - n_queries)  # the clean rows ride along in every chunk
    base = _baselines(baseline, layers, int(model.cfg.d_mlp))
    clean: list[dict[int, Tensor]] = [{} for _ in runs]
    grad_sum: list[dict[int, Tensor]] = [{} for _ in runs]
    f_base: list[dict[int, float]] = [{} for _ in runs]
    f_clean: list[float] | None = None
    unembed = objective.unembedding(model)
    device = runs[0].last.device
    last = torch.cat([r.last for r in runs])  # [queries, 1]
    caches = [r.cache for r in runs]
    stacked = None if caches[0] is None else _stacked_cache(caches)
    first = None if n_queries == 1 else _block0_inputs(model, last, stacked)
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
            kwargs["past_key_values"] = _indexed_cache(stacked, torch.tensor(row_query, device=device), sizes)
        with _bridge_kv_cache(model), _quiet_cache_warning():
            out = _final_pass(model, last[:1], hooks, unembed, **kwargs)
        if out.shape[0] != sizes[-1]:
            raise _FastMismatch(f"lakn: the batch did not grow as planned in {runs[0].model_name}")
        # P(y) of every row; rows < n_queries are the clean rows (zero gradient: only later rows are summed)
        probs = objective.answer_probability(out, unembed, torch.tensor([targets[q] for q in row_query], device=device))
        if f_clean is None:
            f_clean = [float(p) for p in probs[:n_queries].detach()]
            for run, f in zip(runs, f_clean):
                _check_clean(run, f)
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
    results = []
    for q in range(n_queries):
        attr = torch.stack([(clean[q][l] - base[l]) * grad_sum[q][l] / steps for l in layers])
        results.append((attr, _completeness_error(attr, layers, f_clean[q], f_base[q] if completeness else None)))
    return results


def _final_pass(model, tokens, hooks, unembed, position: Tensor | None = None, **kwargs) -> Tensor:
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


class _Stop(Exception):
    """Ends a forward pass early from a hook."""


def _block0_inputs(model, last, stacked) -> Tensor:
    """What block 0 receives for each query's last token (embedding, plus position embedding
    where the model has one), computed by the model itself with the queries' stacked caches
    (for the positions); the pass stops there."""
    got = {}

    def stop(resid, hook=None):
        got["resid"] = resid.detach()
        raise _Stop

    kwargs = {}
    if stacked is not None:
        kwargs["past_key_values"] = _indexed_cache(stacked, torch.arange(len(last), device=last.device),
                                                   [len(last)] * len(stacked.layers))
    try:
        with torch.no_grad(), _bridge_kv_cache(model), _quiet_cache_warning(), model.hooks(fwd_hooks=[("blocks.0.hook_in", stop)]):
            logits_at(model, last, torch.zeros(0, dtype=torch.long, device=last.device), **kwargs)
    except _Stop:
        pass
    if "resid" not in got:
        raise _FastMismatch("lakn: block 0's input could not be captured")
    return got["resid"]


def _stacked_cache(caches):
    """One cache whose batch row q is query q's (batch-1) prompt cache; same lengths required.
    A single cache is returned as it is."""
    if len(caches) == 1:
        return caches[0]
    stacked = copy.copy(caches[0])
    stacked.layers = []
    for parts in zip(*(c.layers for c in caches)):
        new = copy.copy(parts[0])
        new.keys = torch.cat([p.keys for p in parts])
        new.values = torch.cat([p.values for p in parts])
        stacked.layers.append(new)
    return stacked


def _indexed_cache(stacked, row_query, sizes: Sequence[int]):
    """A copy of a stacked prompt cache whose layer i holds, for each of its ``sizes[i]`` rows,
    the prompt of that row's query: unexpanded views when there is one query, else copies."""
    grown = copy.copy(stacked)
    grown.layers = []
    for layer, n in zip(stacked.layers, sizes):
        new = copy.copy(layer)
        if layer.keys.shape[0] == 1:
            new.keys = layer.keys.expand(n, *layer.keys.shape[1:])
            new.values = layer.values.expand(n, *layer.values.shape[1:])
        else:
            new.keys = layer.keys.index_select(0, row_query[:n])
            new.values = layer.values.index_select(0, row_query[:n])
        grown.layers.append(new)
    return grown


class _FastMismatch(RuntimeError):
    """The fast path's clean probability disagrees with the full forward."""


def _check_clean(run, f_clean: float) -> None:
    p_full = getattr(run, "p_full", None)
    if p_full is not None and abs(f_clean - p_full) > _FAST_CHECK_TOL * max(1.0, p_full):
        raise _FastMismatch(f"lakn: the fast path of {run.model_name} gives P(y) {f_clean:.6g} against "
                            f"{p_full:.6g} from the full forward; using the reference integrated gradients")


def _clean_pass(run, target: int, layers, point):
    """Real activations at the answer position (per layer, [d_mlp]) and F(a)."""
    clean: dict[int, Tensor] = {}
    with torch.no_grad():
        probs = run(1, [(hook_name(l, point), capture_hook(clean, l, run.position)) for l in layers])[0].softmax(-1)
    f_clean = float(probs[target])
    _check_clean(run, f_clean)
    return {l: clean[l][0] for l in layers}, f_clean


def _baselines(baseline, layers, d_mlp):
    if baseline is None:
        return {l: torch.zeros(d_mlp) for l in layers}
    if baseline.shape[-1] != d_mlp:
        raise ValueError(f"baseline must have shape [n_layers, {d_mlp}], got {tuple(baseline.shape)}")
    return {l: baseline[l].detach().float().cpu() for l in layers}


def _alphas(steps: int, grid: Grid, completeness: bool) -> tuple[Tensor, Tensor]:
    """Row coefficients of one layer and which rows enter the Riemann sum. With the completeness
    check, row 0 is alpha = 0 (the baseline, giving F(b)): an extra row for the "right" grid,
    the grid's own first step for "linspace" (which already starts at alpha = 0)."""
    grid_alphas = step_grid(steps, grid)
    if not completeness or grid == "linspace":
        return grid_alphas, torch.ones(steps, dtype=torch.bool)
    return torch.cat([torch.zeros(1), grid_alphas]), torch.arange(steps + 1) > 0


def _completeness_error(attr, layers, f_clean: float, f_base: dict | None) -> Float[Tensor, "layer"]:
    """|sum_i Attr(l, i) - (F(a) - F(b_l))| per layer; NaN when F(b) was not computed."""
    if f_base is None:
        return torch.full((len(layers),), float("nan"))
    return torch.tensor([abs(float(attr[i].sum()) - (f_clean - f_base[l])) for i, l in enumerate(layers)])


def _ig_one_token(run, target, layers, steps, baseline, batch_size, point, grid, completeness=True):
    # 1. one clean pass: the real activations a at the answer position, and F(a)
    clean, f_clean = _clean_pass(run, target, layers, point)
    d_mlp = clean[layers[0]].shape[-1]
    base = _baselines(baseline, layers, d_mlp)
    # 2. rows = (layer, step); step 0 of each layer is alpha = 0, the baseline, giving F(b) for
    # the completeness check (with grid="linspace" alpha = 0 is also a real step: kept apart)
    alphas, in_sum = _alphas(steps, grid, completeness)
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
    return attr, _completeness_error(attr, layers, f_clean, f_base if completeness else None)


def _gradient_hook(leaves: dict, clean: dict, key, position: int | Tensor = -1):
    """Add a zero leaf at each row's ``position`` (one index for every row, or one per row): its
    gradient is dF/da with every path intact, later layers included. Records the real
    activations a there (``[batch, d_mlp]``)."""

    def hook(activation: Float[Tensor, "batch pos d_mlp"], hook=None) -> Tensor:
        rows = torch.arange(activation.shape[0], device=activation.device)
        at = position if isinstance(position, Tensor) else torch.full_like(rows, position)
        a = activation[rows, at]
        clean[key] = a.detach()
        leaves[key] = torch.zeros_like(a).requires_grad_(True)
        out = activation.clone()
        out[rows, at] = a + leaves[key]
        return out

    return hook


def _approx_one_token(run, target, layers, steps, baseline, batch_size, point, grid, completeness=False):
    """Activation x gradient: (a - b) * dF/da at the real activations, all layers in one pass."""
    leaves: dict[int, Tensor] = {}
    clean: dict[int, Tensor] = {}
    prob = target_probability(run(1, [(hook_name(l, point), _gradient_hook(leaves, clean, l, run.position))
                                      for l in layers]), target)
    f_clean = float(prob[0].detach())
    _check_clean(run, f_clean)
    grads = torch.autograd.grad(prob[0], [leaves[l] for l in layers])
    clean = {l: a[0] for l, a in clean.items()}
    d_mlp = clean[layers[0]].shape[-1]
    base = _baselines(baseline, layers, d_mlp)
    attr = torch.stack([(clean[l].float().cpu() - base[l]) * g[0].float().cpu() for l, g in zip(layers, grads)])
    if not completeness:
        return attr, _completeness_error(attr, layers, f_clean, None)
    # F(b) per layer (forward only, one row per layer) for the completeness error
    f_base = {}
    with torch.no_grad():
        for start in range(0, len(layers), batch_size):
            chunk = layers[start : start + batch_size]
            hooks = [(hook_name(l, point), interpolation_hook(torch.tensor([j]), clean[l], base[l], torch.zeros(1),
                                                               {}, l, run.position)) for j, l in enumerate(chunk)]
            p = run(len(chunk), hooks).softmax(-1)[:, target]
            f_base.update({l: float(p[j]) for j, l in enumerate(chunk)})
    return attr, _completeness_error(attr, layers, f_clean, f_base)


def memory_estimate(
    *,
    n_params: float,
    n_layers: int,
    d_model: int,
    d_mlp: int,
    d_vocab: int,
    n_kv_heads: int,
    d_head: int,
    prompt_len: int = 24,
    batch_size: int = 64,
    weight_bytes: int = 2,
    act_bytes: int = 4,
) -> dict[str, float]:
    """Rough peak memory (GiB) of the fast exact path, from what the code keeps alive per chunk.

    An estimate, not a measurement: weights; per row the copied key/value cache of the prompt;
    activations saved for the backward pass of one position through every layer (about
    6 x d_model + 3 x d_mlp values a layer); and two float32 vocabulary tiles of the fused
    objective (at most 2048 columns each; no full-vocabulary buffer). Example (Llama-3-8B, bfloat16, chunk 64):
    ``memory_estimate(n_params=8.0e9, n_layers=32, d_model=4096, d_mlp=14336, d_vocab=128256,
    n_kv_heads=8, d_head=128)``.
    """
    gib = 1024**3
    weights = n_params * weight_bytes
    kv = batch_size * n_layers * 2 * n_kv_heads * d_head * prompt_len * weight_bytes
    saved = batch_size * n_layers * (6 * d_model + 3 * d_mlp) * act_bytes
    logits = batch_size * 2 * min(d_vocab, 2048) * 4
    out = {"weights": weights / gib, "kv_cache": kv / gib, "activations": saved / gib, "logits": logits / gib}
    out["total"] = sum(out.values())
    return out


def auto_batch_size(model, prompt_len: int, n_rows: int, *, full_sequence: bool = False) -> int:
    """Rows per pass for ``batch_size=None``: as many as keep one chunk's activations, key/value
    copies and vocabulary buffer (:func:`memory_estimate` without the weights) within
    ``CHUNK_MEMORY_GIB``, at least 16 (or ``n_rows`` if fewer) and at most ``n_rows``.
    ``full_sequence``: each row recomputes the whole prompt (the reference loop)."""
    cfg = model.cfg
    elt = next(model.parameters()).element_size()
    per_row = memory_estimate(
        n_params=0, n_layers=int(cfg.n_layers), d_model=int(cfg.d_model), d_mlp=int(cfg.d_mlp),
        d_vocab=int(cfg.d_vocab), n_kv_heads=int(cfg.n_heads), d_head=int(cfg.d_head), prompt_len=prompt_len,
        batch_size=1, weight_bytes=elt, act_bytes=max(elt, 4))
    if full_sequence:  # every position's activations; the model's own logits, softmax and gradient
        gib = 1024**3
        rows = per_row["activations"] * prompt_len + 3 * int(cfg.d_vocab) * 4 / gib
    else:
        rows = per_row["kv_cache"] + per_row["logits"] + per_row["activations"]
    fit = int(CHUNK_MEMORY_GIB / max(rows, 1e-12))
    return max(1, min(n_rows, max(16, fit)))
