"""Score one fact's attributions: MATRICE's language-agnostic attribution (LAA) and the baselines.

Pure tensor math, no model, one fact at a time; each method also selects the fact's neurons
(with :func:`lakn.selection.select_neurons`, or by intersection for ``kn`` / ``amig``). What
compares the facts of a run (specificity, the random control) is :mod:`lakn.selection`.

Inputs for one fact, keyed by language code:

- ``attributions[l]``: ``Float[Tensor, "query layer d_mlp"]``, raw IG attributions per
  paraphrased query (already averaged over answer tokens);
- ``confidence[l]``: ``Float[Tensor, "query"]``, P(y | q) (geometric mean over answer tokens);
- ``entropy[l]``: ``Float[Tensor, "query"]``, next-token entropy / log|V| at the answer position.

MATRICE here is *lakn's formulation* of what the abstract of Cao et al. (2024) describes; the
paper's own uncertainty equations were not available (see docs/method.md §3). Every knob
(query weighting, language weighting, ``beta``, ``gamma``, threshold, top-k) is an explicit
argument and is recorded in :attr:`FactScores.params`.

Example::

    fs = score_fact("matrice", attributions, confidence, entropy, beta=1.0, gamma=1.0)
    fs.lakn[:5]          # [(layer, neuron), ...] by LAA, best first
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ._deprecation import deprecated_names
from .config import CHOICES, check_number
from .hooks import Neuron
from . import selection as _selection
from .selection import as_float32, check_threshold, check_top_k, ranked_neurons, without

__all__ = [
    "FactScores",
    "METHODS",
    "SHARED_KWARGS",
    "WEIGHT_EPS",
    "normalize_by_max",
    "query_weights",
    "language_score",
    "laa_score",
    "matrice",
    "mean_method",
    "kn_method",
    "amig_method",
    "score_fact",
    "validate_fact_inputs",
]

# moved to lakn.selection (scores -> neuron sets)
__getattr__ = deprecated_names(__name__, {name: f"lakn.selection:{name}" for name in (
    "select_neurons", "random_neurons", "reference_sets", "specific_scores", "common_neuron_filter", "use_specific",
    "Reference",
)})

WEIGHT_EPS = 1e-6
"""Floor on unnormalised query / language weights, so they never all vanish (e.g. every query
at maximal entropy, or every confidence underflowing to 0)."""

SHARED_KWARGS = frozenset({"threshold", "top_k"})
"""Keyword arguments every method of :data:`METHODS` accepts (each with its own default)."""

QueryWeighting = Literal["uniform", "confidence", "entropy"]


@dataclass
class FactScores:
    """Scores and neuron sets of one fact.

    - ``laa``: the map used for selection (before specificity): LAA for ``matrice``, the plain
      mean for ``mean``; for ``kn`` / ``amig`` the mean normalised map (for display and ordering).
    - ``per_language``: s_l for ``matrice``; the language's mean normalised map for the others
      (for ``amig``, the normalised map of the one query it uses).
    - ``lakn``: ``(layer, neuron)`` pairs, highest score first.
    - ``language_specific``: per language, its selected neurons that are not LAKNs.
    - ``method`` / ``params``: how the scores were made (recorded with every result).
    """

    laa: Float[Tensor, "layer d_mlp"]
    per_language: dict[str, Float[Tensor, "layer d_mlp"]]
    lakn: list[Neuron]
    language_specific: dict[str, list[Neuron]]
    method: str = "matrice"
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _check_same_languages(attributions: Mapping[str, Tensor], other: Mapping[str, Tensor], name: str) -> None:
    a, b = set(attributions), set(other)
    if a != b:
        raise ValueError(
            f"languages differ between attributions and {name}: "
            f"only in attributions {sorted(a - b)}, only in {name} {sorted(b - a)}"
        )


def validate_fact_inputs(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    confidence: Mapping[str, Float[Tensor, "query"]] | None = None,
    entropy: Mapping[str, Float[Tensor, "query"]] | None = None,
) -> tuple[int, int]:
    """Check one fact's inputs and return its ``(layer, d_mlp)``; raise ``ValueError`` otherwise.

    Checks: non-empty, every map ``[query, layer, d_mlp]`` with at least one query and the same
    ``(layer, d_mlp)`` in every language, and (when given) the same languages and query counts in
    ``confidence`` / ``entropy``, which must be 1-D, finite, and confidence >= 0.
    """
    if not attributions:
        raise ValueError("attributions is empty: need at least one language")
    ref_lang: str | None = None
    ref_shape: tuple[int, int] | None = None
    for lang, attr in attributions.items():
        if not isinstance(attr, Tensor):
            raise ValueError(f"language {lang!r}: attributions must be a torch.Tensor, got {type(attr).__name__}")
        if attr.ndim != 3:
            raise ValueError(
                f"language {lang!r}: attributions must have shape [query, layer, d_mlp], got {tuple(attr.shape)}"
            )
        if attr.shape[0] == 0:
            raise ValueError(f"language {lang!r} has zero queries (attributions shape {tuple(attr.shape)})")
        shape = (int(attr.shape[1]), int(attr.shape[2]))
        if ref_shape is None:
            ref_lang, ref_shape = lang, shape
        elif shape != ref_shape:
            raise ValueError(
                f"language {lang!r}: attributions shape {tuple(attr.shape)} does not match "
                f"[query, {ref_shape[0]}, {ref_shape[1]}] of language {ref_lang!r}"
            )
    for name, per_lang in (("confidence", confidence), ("entropy", entropy)):
        if per_lang is None:
            continue
        _check_same_languages(attributions, per_lang, name)
        for lang, values in per_lang.items():
            n_query = attributions[lang].shape[0]
            if not isinstance(values, Tensor) or values.ndim != 1:
                got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                raise ValueError(f"language {lang!r}: {name} must have shape [query], got {got}")
            if values.shape[0] != n_query:
                raise ValueError(
                    f"language {lang!r}: {name} has {values.shape[0]} queries but attributions has {n_query}"
                )
            if not torch.isfinite(values).all():
                raise ValueError(f"language {lang!r}: {name} has non-finite values")
            if name == "confidence" and (values < 0).any():
                raise ValueError(f"language {lang!r}: confidence must be >= 0 (it is P(y|q))")
    assert ref_shape is not None
    return ref_shape


# --------------------------------------------------------------------------- building blocks


def normalize_by_max(attr: Float[Tensor, "query layer d_mlp"]) -> Float[Tensor, "query layer d_mlp"]:
    """Divide each query's map by its own maximum (docs/method.md §3), in float32.

    A query whose max is <= 0 becomes all zeros: no neuron pushes the answer up, so it carries
    no evidence for any neuron, and dividing by a negative max would flip the sign of every score.

    >>> normalize_by_max(torch.tensor([[[2.0, 1.0]], [[-1.0, -3.0]]])).tolist()
    [[[1.0, 0.5]], [[0.0, 0.0]]]
    """
    if attr.ndim != 3:
        raise ValueError(f"attributions must have shape [query, layer, d_mlp], got {tuple(attr.shape)}")
    attr = as_float32(attr)
    if attr.shape[0] == 0:
        return attr.clone()
    peak = attr.flatten(1).max(dim=1).values  # [query]
    positive = peak > 0
    safe = torch.where(positive, peak, torch.ones_like(peak))
    out = attr / safe[:, None, None]
    return torch.where(positive[:, None, None], out, torch.zeros_like(out))


def query_weights(
    confidence: Float[Tensor, "query"],
    entropy: Float[Tensor, "query"],
    scheme: QueryWeighting,
) -> Float[Tensor, "query"]:
    """Per-query weights within one language, summing to 1 (docs/method.md §3).

    ``"uniform"``: 1/T; ``"confidence"``: w ~ P(y|q); ``"entropy"``: w ~ 1 - H/log|V|. Unnormalised
    weights are floored at :data:`WEIGHT_EPS` so a language never ends up with all-zero weights.

    >>> query_weights(torch.tensor([0.1, 0.1, 0.2]), torch.zeros(3), "confidence").tolist()
    [0.25, 0.25, 0.5]
    """
    if confidence.ndim != 1 or entropy.ndim != 1:
        raise ValueError(
            f"confidence and entropy must have shape [query], got {tuple(confidence.shape)} and {tuple(entropy.shape)}"
        )
    if confidence.shape != entropy.shape:
        raise ValueError(
            f"confidence has {confidence.shape[0]} queries but entropy has {entropy.shape[0]}"
        )
    n = confidence.shape[0]
    if n == 0:
        raise ValueError("zero queries: cannot weight an empty language")
    if scheme == "uniform":
        raw = torch.ones(n, dtype=torch.float32, device=confidence.device)
    elif scheme == "confidence":
        raw = as_float32(confidence).clamp_min(WEIGHT_EPS)
    elif scheme == "entropy":
        raw = (1.0 - as_float32(entropy)).clamp_min(WEIGHT_EPS)
    else:
        raise ValueError(f"unknown query weighting {scheme!r}; known: {', '.join(map(repr, CHOICES['query_weighting']))}")
    return raw / raw.sum()


def language_score(
    A: Float[Tensor, "query layer d_mlp"],
    w: Float[Tensor, "query"],
    beta: float = 1.0,
) -> tuple[Float[Tensor, "layer d_mlp"], Float[Tensor, "layer d_mlp"], Float[Tensor, "layer d_mlp"]]:
    """Language score s_l = mu_l - beta * sigma_l over one language's normalised maps (docs/method.md §3).

    mu_l = sum_q w_q A_q, sigma_l = sqrt(sum_q w_q (A_q - mu_l)^2): a neuron that only some
    paraphrases use has a large spread and is penalised. ``w`` is renormalised to sum 1.
    Returns ``(s_l, mu_l, sigma_l)``.
    """
    check_number("beta", beta)
    if A.ndim != 3:
        raise ValueError(f"A must have shape [query, layer, d_mlp], got {tuple(A.shape)}")
    if w.ndim != 1 or w.shape[0] != A.shape[0]:
        raise ValueError(f"w must have shape [{A.shape[0]}] (one weight per query), got {tuple(w.shape)}")
    if A.shape[0] == 0:
        raise ValueError("zero queries: cannot score an empty language")
    A, w = as_float32(A), as_float32(w)
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError("query weights must be >= 0 with a positive sum")
    w = (w / w.sum())[:, None, None]
    mu = (w * A).sum(0)
    sigma = (w * (A - mu) ** 2).sum(0).clamp_min(0).sqrt()
    return mu - beta * sigma, mu, sigma


def laa_score(
    scores: Mapping[str, Float[Tensor, "layer d_mlp"]],
    weights: Mapping[str, float] | None = None,
    gamma: float = 1.0,
) -> Float[Tensor, "layer d_mlp"]:
    """Language-agnostic attribution LAA = mu - gamma * sigma_x across languages (docs/method.md §3).

    mu = sum_l v_l s_l, sigma_x = sqrt(sum_l v_l (s_l - mu)^2); ``weights`` (v_l) are normalised
    to sum 1, ``None`` means uniform. A neuron strong in one language only gets a large sigma_x.

    >>> laa_score({"en": torch.tensor([[1.0, 0.5]]), "fr": torch.tensor([[1.0, 0.0]])}).tolist()
    [[1.0, 0.0]]
    """
    check_number("gamma", gamma)
    if not scores:
        raise ValueError("scores is empty: need at least one language")
    langs = list(scores)
    shapes = {lang: tuple(scores[lang].shape) for lang in langs}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"language scores must share one [layer, d_mlp] shape, got {shapes}")
    if weights is None:
        v = torch.ones(len(langs), dtype=torch.float32)
    else:
        if set(weights) != set(langs):
            raise ValueError(
                f"language weights must cover exactly the scored languages: only in scores "
                f"{sorted(set(langs) - set(weights))}, only in weights {sorted(set(weights) - set(langs))}"
            )
        v = torch.tensor([float(weights[lang]) for lang in langs], dtype=torch.float32)
        if (v < 0).any() or not torch.isfinite(v).all() or not v.sum() > 0:
            raise ValueError(f"language weights must be finite, >= 0, with a positive sum, got {dict(weights)}")
    s = torch.stack([as_float32(scores[lang]) for lang in langs])
    v = (v / v.sum()).to(s.device)[:, None, None]
    mu = (v * s).sum(0)
    sigma = (v * (s - mu) ** 2).sum(0).clamp_min(0).sqrt()
    return mu - gamma * sigma


def _threshold_mask(attr: Tensor, threshold: float) -> Tensor:
    """Per query: ``Attr >= threshold * max(Attr)`` and ``Attr > 0`` (compared on raw values, so
    the inclusive boundary is not blurred by a division). Shape ``[query, layer, d_mlp]``."""
    peak = attr.flatten(1).max(dim=1).values[:, None, None]
    return (attr >= threshold * peak) & (attr > 0)


# --------------------------------------------------------------------------- methods


def matrice(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    confidence: Mapping[str, Float[Tensor, "query"]],
    entropy: Mapping[str, Float[Tensor, "query"]],
    *,
    query_weighting: QueryWeighting = "confidence",
    language_weighting: Literal["uniform", "confidence"] | Mapping[str, float] = "uniform",
    beta: float = 1.0,
    gamma: float = 1.0,
    threshold: float = 0.2,
    top_k: int | None = None,
) -> FactScores:
    """lakn's MATRICE (docs/method.md §3): uncertainty-weighted language-agnostic attribution.

    Normalise each query by its max, weight queries by ``query_weighting``, score each language
    (s_l = mu_l - beta sigma_l), combine languages (LAA = mu - gamma sigma_x; ``language_weighting``
    ``"confidence"`` uses v_l ~ the language's mean P(y|q), a mapping gives v_l explicitly), then
    select LAKNs at ``threshold`` (and ``top_k``). beta = gamma = 0 with uniform weights is the
    plain mean. Language-specific neurons: s_l >= t * max(s_l), > 0, and not among the LAKNs.

    Example::

        fs = matrice({"en": attr_en, "fr": attr_fr}, conf, ent, beta=1.0, gamma=1.0)
    """
    check_number("beta", beta)
    check_number("gamma", gamma)
    check_threshold(threshold)
    check_top_k(top_k)
    validate_fact_inputs(attributions, confidence, entropy)

    per_language: dict[str, Tensor] = {}
    for lang, attr in attributions.items():
        w = query_weights(confidence[lang], entropy[lang], query_weighting)
        per_language[lang], _, _ = language_score(normalize_by_max(attr), w, beta)

    if isinstance(language_weighting, Mapping):
        v: Mapping[str, float] | None = dict(language_weighting)
    elif language_weighting == "uniform":
        v = None
    elif language_weighting == "confidence":
        v = {lang: max(float(as_float32(confidence[lang]).mean()), WEIGHT_EPS) for lang in attributions}
    else:
        raise ValueError(
            f"unknown language weighting {language_weighting!r}; known: "
            f"{', '.join(map(repr, CHOICES['language_weighting']))}, or a mapping"
        )
    laa = laa_score(per_language, v, gamma)

    lakn = _selection.select_neurons(laa, threshold, top_k)
    specific = {lang: without(_selection.select_neurons(s, threshold), lakn) for lang, s in per_language.items()}
    params = {
        "query_weighting": query_weighting,
        "language_weighting": dict(language_weighting) if isinstance(language_weighting, Mapping) else language_weighting,
        "beta": beta,
        "gamma": gamma,
        "threshold": threshold,
        "top_k": top_k,
    }
    return FactScores(laa, per_language, lakn, specific, method="matrice", params=params)


# matrice-only knobs mean_method tolerates, so one keyword set can drive a matrice/mean comparison.
_MATRICE_ONLY = frozenset({"confidence", "entropy", "query_weighting", "language_weighting", "beta", "gamma"})


def mean_method(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    *,
    threshold: float = 0.2,
    top_k: int | None = None,
    **ignored: Any,
) -> FactScores:
    """Baseline ``mean`` (docs/method.md §5): uniform average of the normalised maps over all queries of all languages.

    MATRICE-only keywords (``confidence``, ``entropy``, ``query_weighting``, ``language_weighting``,
    ``beta``, ``gamma``) are accepted and ignored, so the same settings can drive both methods;
    any other keyword is a ``TypeError``. Language-specific neurons: the language's mean map
    thresholded the same way, minus the LAKNs.

    Example::

        mean_method({"en": attr_en, "fr": attr_fr}, threshold=0.2).lakn
    """
    unknown = sorted(set(ignored) - _MATRICE_ONLY)
    if unknown:
        raise TypeError(f"mean_method got unexpected keyword arguments {unknown}")
    check_threshold(threshold)
    check_top_k(top_k)
    validate_fact_inputs(attributions)
    normed = {lang: normalize_by_max(a) for lang, a in attributions.items()}
    laa = torch.cat(list(normed.values())).mean(0)
    per_language = {lang: a.mean(0) for lang, a in normed.items()}
    lakn = _selection.select_neurons(laa, threshold, top_k)
    specific = {lang: without(_selection.select_neurons(s, threshold), lakn) for lang, s in per_language.items()}
    return FactScores(laa, per_language, lakn, specific, method="mean",
                      params={"threshold": threshold, "top_k": top_k})


def _intersection(laa: Tensor, per_language: dict[str, Tensor], sets: dict[str, Tensor], top_k: int | None,
                  method: str, params: dict[str, Any]) -> FactScores:
    """The set-based baselines' selection: LAKNs are the neurons in every language's set, ordered by
    ``laa``; a language's specific neurons are its set minus the LAKNs, ordered by its own map."""
    common = torch.stack(list(sets.values())).all(0)
    lakn = ranked_neurons(laa, common, top_k)
    specific = {lang: without(ranked_neurons(per_language[lang], m, None), lakn) for lang, m in sets.items()}
    return FactScores(laa, per_language, lakn, specific, method=method, params=params)


def kn_method(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    *,
    threshold: float = 0.2,
    share: float = 0.7,
    top_k: int | None = None,
) -> FactScores:
    """Baseline ``kn`` (Dai et al. 2022; docs/method.md §5): per-query threshold, majority within a language,
    intersection across languages.

    Per query: Attr >= threshold * max (and > 0). A language keeps neurons selected in at least
    ``share`` of its queries; LAKN = intersection over languages, ordered by the mean normalised
    score over all queries (``laa``). Language-specific sets: a language's set minus the LAKNs.
    """
    check_threshold(threshold)
    check_threshold(share, "share")
    check_top_k(top_k)
    validate_fact_inputs(attributions)
    normed = {lang: normalize_by_max(a) for lang, a in attributions.items()}
    per_language = {lang: a.mean(0) for lang, a in normed.items()}
    kept: dict[str, Tensor] = {}
    for lang, attr in attributions.items():
        count = _threshold_mask(as_float32(attr), threshold).sum(0).to(torch.float64)
        # tolerance: share * T is float, e.g. 0.7 * 10 = 7.000000000000001 must admit 7 queries
        kept[lang] = count >= share * attr.shape[0] - 1e-9
    laa = torch.cat(list(normed.values())).mean(0)
    return _intersection(laa, per_language, kept, top_k, "kn", {"threshold": threshold, "share": share, "top_k": top_k})


def amig_method(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    *,
    threshold: float = 0.3,
    query_index: int = 0,
    top_k: int | None = None,
) -> FactScores:
    """Baseline ``amig`` (Chen et al. 2024; docs/method.md §5): one query per language, Attr >= threshold * max,
    LAKN = intersection of the languages' sets.

    The query used is ``query_index``, clamped to the last available query of each language.
    ``per_language`` holds that query's normalised map; ``laa`` their mean (orders the LAKNs).
    """
    check_threshold(threshold)
    check_top_k(top_k)
    if isinstance(query_index, bool) or not isinstance(query_index, int) or query_index < 0:
        raise ValueError(f"query_index must be an int >= 0, got {query_index!r}")
    validate_fact_inputs(attributions)
    per_language: dict[str, Tensor] = {}
    sets: dict[str, Tensor] = {}
    used: dict[str, int] = {}
    for lang, attr in attributions.items():
        q = min(query_index, attr.shape[0] - 1)
        one = as_float32(attr[q : q + 1])
        used[lang] = q
        sets[lang] = _threshold_mask(one, threshold)[0]
        per_language[lang] = normalize_by_max(one)[0]
    laa = torch.stack(list(per_language.values())).mean(0)
    return _intersection(laa, per_language, sets, top_k, "amig",
                         {"threshold": threshold, "query_index": query_index, "query_used": used, "top_k": top_k})


METHODS: dict[str, Callable[..., FactScores]] = {
    "matrice": matrice,
    "mean": mean_method,
    "kn": kn_method,
    "amig": amig_method,
}
"""Scoring methods by name. ``"random"`` is not here: :func:`score_fact` builds it on ``matrice``."""


def _keyword_params(fn: Callable[..., Any]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def score_fact(
    method: str,
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    confidence: Mapping[str, Float[Tensor, "query"]] | None = None,
    entropy: Mapping[str, Float[Tensor, "query"]] | None = None,
    **kwargs: Any,
) -> FactScores:
    """Score one fact with ``method`` (a key of :data:`METHODS`, or ``"random"``).

    Strict about keywords: any keyword the method does not take is a ``TypeError`` naming it;
    :data:`SHARED_KWARGS` (``threshold``, ``top_k``) are accepted by every method.
    ``"random"`` scores with ``matrice`` (same keywords, plus a required ``generator``) and
    replaces the LAKNs by :func:`lakn.selection.random_neurons` matched per layer.

    Example::

        score_fact("kn", attributions, threshold=0.2, share=0.7).lakn
        score_fact("random", attributions, confidence, entropy, generator=torch.Generator().manual_seed(0))
    """
    if method == "random":
        fn: Callable[..., FactScores] = matrice
        allowed = _keyword_params(matrice) | SHARED_KWARGS | {"generator"}
    elif method in METHODS:
        fn = METHODS[method]
        allowed = _keyword_params(fn) | SHARED_KWARGS
    else:
        raise ValueError(f"unknown scoring method {method!r}; known: {sorted([*METHODS, 'random'])}")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"method {method!r} got unexpected keyword arguments {unknown}; it accepts {sorted(allowed)}")

    if fn is matrice:
        if confidence is None or entropy is None:
            raise ValueError(f"method {method!r} needs confidence and entropy")
        generator = kwargs.pop("generator", None)
        scores = matrice(attributions, confidence, entropy, **kwargs)
        if method == "random":
            if not isinstance(generator, torch.Generator):
                raise TypeError("method 'random' needs generator=torch.Generator (seeded, for reproducibility)")
            scores.lakn = _selection.random_neurons(scores.lakn, scores.laa.shape[1], generator)
            scores.method = "random"
            scores.params["generator_seed"] = generator.initial_seed()
        return scores
    # baselines ignore uncertainty, but mismatched inputs are still a caller's bug worth reporting
    validate_fact_inputs(attributions, confidence, entropy)
    return fn(attributions, **kwargs)


