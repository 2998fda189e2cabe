"""Turn integrated-gradient attributions into neuron sets: MATRICE LAA, specificity, baselines.

Pure tensor math, no model. One fact at a time, except the fact-specificity helpers
(:func:`specific_scores`, :func:`common_neuron_filter`) which compare the facts of a run.

Inputs for one fact, keyed by language code:

- ``attributions[l]``: ``Float[Tensor, "query layer d_mlp"]``, raw IG attributions per
  paraphrased query (already averaged over answer tokens);
- ``confidence[l]``: ``Float[Tensor, "query"]``, P(y | q) (geometric mean over answer tokens);
- ``entropy[l]``: ``Float[Tensor, "query"]``, next-token entropy / log|V| at the answer position.

MATRICE here is *lakn's formulation* of what the abstract of Cao et al. (2024) describes; the
paper's own uncertainty equations were not available (see ``method.md`` section 3). Every knob
(query weighting, language weighting, ``beta``, ``gamma``, threshold, top-k) is an explicit
argument and is recorded in :attr:`FactScores.params`.

Example::

    fs = score_fact("matrice", attributions, confidence, entropy, beta=1.0, gamma=1.0)
    fs.lakn[:5]          # [(layer, neuron), ...] by LAA, best first
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "FactScores",
    "Neuron",
    "METHODS",
    "SHARED_KWARGS",
    "WEIGHT_EPS",
    "normalize_by_max",
    "query_weights",
    "language_score",
    "laa_score",
    "select_neurons",
    "matrice",
    "mean_method",
    "kn_method",
    "amig_method",
    "random_neurons",
    "score_fact",
    "validate_fact_inputs",
    "reference_sets",
    "specific_scores",
    "common_neuron_filter",
    "use_specific",
]

Neuron = tuple[int, int]
"""A neuron as ``(layer, index)`` into ``blocks.{layer}.mlp.hook_post``."""

WEIGHT_EPS = 1e-6
"""Floor on unnormalised query / language weights, so they never all vanish (e.g. every query
at maximal entropy, or every confidence underflowing to 0)."""

SHARED_KWARGS = frozenset({"threshold", "top_k"})
"""Keyword arguments every method of :data:`METHODS` accepts (each with its own default)."""

QueryWeighting = Literal["uniform", "confidence", "entropy"]
Reference = Literal["others", "other_relations", "same_relation"]


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


def _check_threshold(threshold: float, name: str = "threshold") -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {threshold!r}")


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def _check_nonneg(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


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
                shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                raise ValueError(f"language {lang!r}: {name} must have shape [query], got {shape}")
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


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32)


# --------------------------------------------------------------------------- building blocks


def normalize_by_max(attr: Float[Tensor, "query layer d_mlp"]) -> Float[Tensor, "query layer d_mlp"]:
    """Divide each query's map by its own maximum (method.md 3.1), in float32.

    A query whose max is <= 0 becomes all zeros: no neuron pushes the answer up, so it carries
    no evidence for any neuron, and dividing by a negative max would flip the sign of every score.

    >>> normalize_by_max(torch.tensor([[[2.0, 1.0]], [[-1.0, -3.0]]])).tolist()
    [[[1.0, 0.5]], [[0.0, 0.0]]]
    """
    if attr.ndim != 3:
        raise ValueError(f"attributions must have shape [query, layer, d_mlp], got {tuple(attr.shape)}")
    attr = _f32(attr)
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
    """Per-query weights within one language, summing to 1 (method.md 3.2).

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
        raw = _f32(confidence).clamp_min(WEIGHT_EPS)
    elif scheme == "entropy":
        raw = (1.0 - _f32(entropy)).clamp_min(WEIGHT_EPS)
    else:
        raise ValueError(f"unknown query weighting {scheme!r}; known: 'uniform', 'confidence', 'entropy'")
    return raw / raw.sum()


def language_score(
    A: Float[Tensor, "query layer d_mlp"],
    w: Float[Tensor, "query"],
    beta: float = 1.0,
) -> tuple[Float[Tensor, "layer d_mlp"], Float[Tensor, "layer d_mlp"], Float[Tensor, "layer d_mlp"]]:
    """Language score s_l = mu_l - beta * sigma_l over one language's normalised maps (method.md 3.3).

    mu_l = sum_q w_q A_q, sigma_l = sqrt(sum_q w_q (A_q - mu_l)^2): a neuron that only some
    paraphrases use has a large spread and is penalised. ``w`` is renormalised to sum 1.
    Returns ``(s_l, mu_l, sigma_l)``.
    """
    _check_nonneg(beta, "beta")
    if A.ndim != 3:
        raise ValueError(f"A must have shape [query, layer, d_mlp], got {tuple(A.shape)}")
    if w.ndim != 1 or w.shape[0] != A.shape[0]:
        raise ValueError(f"w must have shape [{A.shape[0]}] (one weight per query), got {tuple(w.shape)}")
    if A.shape[0] == 0:
        raise ValueError("zero queries: cannot score an empty language")
    A, w = _f32(A), _f32(w)
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
    """Language-agnostic attribution LAA = mu - gamma * sigma_x across languages (method.md 3.4).

    mu = sum_l v_l s_l, sigma_x = sqrt(sum_l v_l (s_l - mu)^2); ``weights`` (v_l) are normalised
    to sum 1, ``None`` means uniform. A neuron strong in one language only gets a large sigma_x.

    >>> laa_score({"en": torch.tensor([[1.0, 0.5]]), "fr": torch.tensor([[1.0, 0.0]])}).tolist()
    [[1.0, 0.0]]
    """
    _check_nonneg(gamma, "gamma")
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
    s = torch.stack([_f32(scores[lang]) for lang in langs])
    v = (v / v.sum()).to(s.device)[:, None, None]
    mu = (v * s).sum(0)
    sigma = (v * (s - mu) ** 2).sum(0).clamp_min(0).sqrt()
    return mu - gamma * sigma


def _ranked(score: Tensor, mask: Tensor, top_k: int | None) -> list[Neuron]:
    """Neurons where ``mask`` holds, by ``score`` descending (ties: lower layer/index first)."""
    d_mlp = score.shape[1]
    flat_idx = mask.flatten().nonzero().flatten()
    if flat_idx.numel() == 0:
        return []
    vals = score.flatten()[flat_idx]
    order = torch.sort(vals, descending=True, stable=True).indices
    flat_idx = flat_idx[order]
    if top_k is not None:
        flat_idx = flat_idx[:top_k]
    return [(int(i) // d_mlp, int(i) % d_mlp) for i in flat_idx.tolist()]


def select_neurons(
    score: Float[Tensor, "layer d_mlp"],
    threshold: float = 0.2,
    top_k: int | None = None,
) -> list[Neuron]:
    """Neurons with ``score >= threshold * max(score)`` and ``score > 0``, best first (method.md 3.5).

    Inclusive at the boundary; capped at ``top_k`` when given; empty when ``max(score) <= 0``.

    >>> select_neurons(torch.tensor([[1.0, 0.1], [0.5, -1.0]]), threshold=0.2)
    [(0, 0), (1, 0)]
    """
    _check_threshold(threshold)
    _check_top_k(top_k)
    if score.ndim != 2:
        raise ValueError(f"score must have shape [layer, d_mlp], got {tuple(score.shape)}")
    score = _f32(score)
    if score.numel() == 0:
        return []
    peak = score.max()
    if not peak > 0:
        return []
    mask = (score >= threshold * peak) & (score > 0)
    return _ranked(score, mask, top_k)


def _minus(neurons: list[Neuron], exclude: list[Neuron]) -> list[Neuron]:
    drop = set(exclude)
    return [n for n in neurons if n not in drop]


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
    """lakn's MATRICE (method.md 3.1-3.5): uncertainty-weighted language-agnostic attribution.

    Normalise each query by its max, weight queries by ``query_weighting``, score each language
    (s_l = mu_l - beta sigma_l), combine languages (LAA = mu - gamma sigma_x; ``language_weighting``
    ``"confidence"`` uses v_l ~ the language's mean P(y|q), a mapping gives v_l explicitly), then
    select LAKNs at ``threshold`` (and ``top_k``). beta = gamma = 0 with uniform weights is the
    plain mean. Language-specific neurons: s_l >= t * max(s_l), > 0, and not among the LAKNs.

    Example::

        fs = matrice({"en": attr_en, "fr": attr_fr}, conf, ent, beta=1.0, gamma=1.0)
    """
    _check_nonneg(beta, "beta")
    _check_nonneg(gamma, "gamma")
    _check_threshold(threshold)
    _check_top_k(top_k)
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
        v = {lang: max(float(_f32(confidence[lang]).mean()), WEIGHT_EPS) for lang in attributions}
    else:
        raise ValueError(
            f"unknown language weighting {language_weighting!r}; known: 'uniform', 'confidence', or a mapping"
        )
    laa = laa_score(per_language, v, gamma)

    lakn = select_neurons(laa, threshold, top_k)
    specific = {lang: _minus(select_neurons(s, threshold), lakn) for lang, s in per_language.items()}
    params = {
        "query_weighting": query_weighting,
        "language_weighting": dict(v) if isinstance(language_weighting, Mapping) else language_weighting,
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
    """Baseline ``mean``: uniform average of the normalised maps over all queries of all languages.

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
    _check_threshold(threshold)
    _check_top_k(top_k)
    validate_fact_inputs(attributions)
    normed = {lang: normalize_by_max(a) for lang, a in attributions.items()}
    laa = torch.cat(list(normed.values())).mean(0)
    per_language = {lang: a.mean(0) for lang, a in normed.items()}
    lakn = select_neurons(laa, threshold, top_k)
    specific = {lang: _minus(select_neurons(s, threshold), lakn) for lang, s in per_language.items()}
    return FactScores(laa, per_language, lakn, specific, method="mean",
                      params={"threshold": threshold, "top_k": top_k})


def kn_method(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    *,
    threshold: float = 0.2,
    share: float = 0.7,
    top_k: int | None = None,
) -> FactScores:
    """Baseline ``kn`` (Dai et al. 2022): per-query threshold, majority within a language,
    intersection across languages.

    Per query: Attr >= threshold * max (and > 0). A language keeps neurons selected in at least
    ``share`` of its queries; LAKN = intersection over languages, ordered by the mean normalised
    score over all queries (``laa``). Language-specific sets: a language's set minus the LAKNs.
    """
    _check_threshold(threshold)
    _check_threshold(share, "share")
    _check_top_k(top_k)
    validate_fact_inputs(attributions)
    normed = {lang: normalize_by_max(a) for lang, a in attributions.items()}
    per_language = {lang: a.mean(0) for lang, a in normed.items()}
    kept: dict[str, Tensor] = {}
    for lang, attr in attributions.items():
        count = _threshold_mask(_f32(attr), threshold).sum(0).to(torch.float64)
        # tolerance: share * T is float, e.g. 0.7 * 10 = 7.000000000000001 must admit 7 queries
        kept[lang] = count >= share * attr.shape[0] - 1e-9
    laa = torch.cat(list(normed.values())).mean(0)
    common = torch.stack(list(kept.values())).all(0)
    lakn = _ranked(laa, common, top_k)
    specific = {lang: _minus(_ranked(per_language[lang], m, None), lakn) for lang, m in kept.items()}
    return FactScores(laa, per_language, lakn, specific, method="kn",
                      params={"threshold": threshold, "share": share, "top_k": top_k})


def amig_method(
    attributions: Mapping[str, Float[Tensor, "query layer d_mlp"]],
    *,
    threshold: float = 0.3,
    query_index: int = 0,
    top_k: int | None = None,
) -> FactScores:
    """Baseline ``amig`` (Chen et al. 2024): one query per language, Attr >= threshold * max,
    LAKN = intersection of the languages' sets.

    The query used is ``query_index``, clamped to the last available query of each language.
    ``per_language`` holds that query's normalised map; ``laa`` their mean (orders the LAKNs).
    """
    _check_threshold(threshold)
    _check_top_k(top_k)
    if isinstance(query_index, bool) or not isinstance(query_index, int) or query_index < 0:
        raise ValueError(f"query_index must be an int >= 0, got {query_index!r}")
    validate_fact_inputs(attributions)
    per_language: dict[str, Tensor] = {}
    sets: dict[str, Tensor] = {}
    used: dict[str, int] = {}
    for lang, attr in attributions.items():
        q = min(query_index, attr.shape[0] - 1)
        one = _f32(attr[q : q + 1])
        used[lang] = q
        sets[lang] = _threshold_mask(one, threshold)[0]
        per_language[lang] = normalize_by_max(one)[0]
    laa = torch.stack(list(per_language.values())).mean(0)
    common = torch.stack(list(sets.values())).all(0)
    lakn = _ranked(laa, common, top_k)
    specific = {lang: _minus(_ranked(per_language[lang], m, None), lakn) for lang, m in sets.items()}
    return FactScores(laa, per_language, lakn, specific, method="amig",
                      params={"threshold": threshold, "query_index": query_index,
                              "query_used": used, "top_k": top_k})


def random_neurons(reference: Sequence[Neuron], d_mlp: int, generator: torch.Generator) -> list[Neuron]:
    """The ``random`` control: as many neurons as ``reference``, with the same count per layer,
    drawn without replacement within each layer. Sorted by (layer, index).

    >>> len(random_neurons([(0, 3), (0, 5), (2, 1)], d_mlp=8, generator=torch.Generator().manual_seed(0)))
    3
    """
    if len(set(reference)) != len(reference):
        raise ValueError("reference neurons contain duplicates")
    for layer, i in reference:
        if layer < 0 or not 0 <= i < d_mlp:
            raise ValueError(f"reference neuron {(layer, i)} is out of range for d_mlp={d_mlp}")
    per_layer = Counter(layer for layer, _ in reference)
    out: list[Neuron] = []
    for layer in sorted(per_layer):
        n = per_layer[layer]
        if n > d_mlp:
            raise ValueError(f"layer {layer}: cannot draw {n} distinct neurons from d_mlp={d_mlp}")
        picked = torch.randperm(d_mlp, generator=generator)[:n].sort().values
        out.extend((layer, int(i)) for i in picked.tolist())
    return out


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
    replaces the LAKNs by :func:`random_neurons` matched per layer.

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
            scores.lakn = random_neurons(scores.lakn, scores.laa.shape[1], generator)
            scores.method = "random"
            scores.params["generator_seed"] = generator.initial_seed()
        return scores
    # baselines ignore uncertainty, but mismatched inputs are still a caller's bug worth reporting
    validate_fact_inputs(attributions, confidence, entropy)
    return fn(attributions, **kwargs)


# --------------------------------------------------------------------------- fact specificity


def reference_sets(
    fact_ids: Sequence[str],
    relation_by_fact: Mapping[str, str],
    reference: Reference | Mapping[str, Sequence[str]] = "others",
) -> dict[str, list[str]]:
    """Reference facts of each fact (method.md 3.6).

    ``"others"``: every other fact; ``"other_relations"``: facts of other relations (keeps
    relation-level neurons); ``"same_relation"``: other facts of the same relation (isolates the
    fact's own neurons); a mapping gives each fact's reference ids explicitly (every fact must be
    a key; ``[]`` is allowed; a fact may not reference itself).

    >>> reference_sets(["a", "b", "c"], {"a": "r1", "b": "r1", "c": "r2"}, "same_relation")
    {'a': ['b'], 'b': ['a'], 'c': []}
    """
    ids = list(fact_ids)
    if isinstance(reference, Mapping):
        missing = [f for f in ids if f not in reference]
        if missing:
            raise ValueError(f"reference mapping has no entry for facts {missing}")
        known = set(ids)
        out: dict[str, list[str]] = {}
        for f in ids:
            refs = list(reference[f])
            unknown = [g for g in refs if g not in known]
            if unknown:
                raise ValueError(f"fact {f!r}: unknown reference facts {unknown}")
            if f in refs:
                raise ValueError(f"fact {f!r} lists itself as a reference fact")
            out[f] = refs
        return out
    if reference == "others":
        return {f: [g for g in ids if g != f] for f in ids}
    if reference in ("other_relations", "same_relation"):
        missing = [f for f in ids if f not in relation_by_fact]
        if missing:
            raise ValueError(f"reference {reference!r} needs a relation for every fact; missing {missing}")
        same = reference == "same_relation"
        return {
            f: [g for g in ids if g != f and (relation_by_fact[g] == relation_by_fact[f]) == same]
            for f in ids
        }
    raise ValueError(
        f"unknown reference {reference!r}; known: 'others', 'other_relations', 'same_relation', or a mapping"
    )


def specific_scores(
    laa_by_fact: Mapping[str, Float[Tensor, "layer d_mlp"]],
    relation_by_fact: Mapping[str, str],
    reference: Reference | Mapping[str, Sequence[str]] = "others",
) -> dict[str, Float[Tensor, "layer d_mlp"]]:
    """Fact-specific score LAA(f) - mean_g max(LAA(g), 0) over f's reference facts g (method.md 3.6).

    Subtracts what other facts' answers also use (generic neurons); only positive LAA of g is
    subtracted, so a neuron another fact merely avoids is not rewarded. A fact with an empty
    reference keeps its raw LAA. See :func:`reference_sets` for ``reference``.

    >>> s = specific_scores({"a": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([[0.0, 1.0]])}, {})
    >>> s["a"].tolist(), s["b"].tolist()
    ([[1.0, 0.0]], [[-1.0, 0.0]])
    """
    if not laa_by_fact:
        return {}
    shapes = {f: tuple(t.shape) for f, t in laa_by_fact.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"every fact's LAA must share one [layer, d_mlp] shape, got {shapes}")
    refs = reference_sets(list(laa_by_fact), relation_by_fact, reference)
    positive = {f: _f32(t).clamp_min(0) for f, t in laa_by_fact.items()}
    out: dict[str, Tensor] = {}
    for f, t in laa_by_fact.items():
        raw = _f32(t)
        if refs[f]:
            out[f] = raw - torch.stack([positive[g] for g in refs[f]]).mean(0)
        else:
            out[f] = raw.clone()
    return out


def common_neuron_filter(
    neurons_by_fact: Mapping[str, Sequence[Neuron]],
    max_fraction: float,
) -> dict[str, list[Neuron]]:
    """Drop neurons selected for more than ``max_fraction`` of the facts (generic neurons).

    Order within each fact is kept. ``max_fraction=1`` keeps everything.

    >>> common_neuron_filter({"a": [(0, 1), (0, 2)], "b": [(0, 1)], "c": [(0, 3)]}, 0.5)
    {'a': [(0, 2)], 'b': [], 'c': [(0, 3)]}
    """
    if not (isinstance(max_fraction, (int, float)) and 0.0 <= float(max_fraction) <= 1.0):
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction!r}")
    n_facts = len(neurons_by_fact)
    counts = Counter(n for neurons in neurons_by_fact.values() for n in set(map(tuple, neurons)))
    # tolerance so that e.g. 0.5 of 4 facts keeps a neuron selected for exactly 2
    common = {n for n, c in counts.items() if c > max_fraction * n_facts + 1e-9}
    return {f: [tuple(n) for n in neurons if tuple(n) not in common] for f, neurons in neurons_by_fact.items()}


def use_specific(n_reference: int, min_reference: int = 5) -> bool:
    """Default rule of method.md 3.6: select LAKNs by the specific score when the reference holds
    at least ``min_reference`` facts, else by the raw LAA.

    >>> use_specific(4), use_specific(5)
    (False, True)
    """
    if n_reference < 0 or min_reference < 0:
        raise ValueError(f"n_reference and min_reference must be >= 0, got {n_reference}, {min_reference}")
    return n_reference >= min_reference
