"""From scores to neuron sets: the selection rule, fact specificity and the random control.

Pure tensor math over score maps and neuron lists (docs/method.md §4):

- :func:`select_neurons`: ``score >= t * max(score)`` and ``> 0``, best first (every method's rule);
- specificity across the facts of a run: :func:`reference_sets`, :func:`specific_scores`
  (LAA(f) - mean_g max(LAA(g), 0)), :func:`use_specific`, :func:`common_neuron_filter`;
- the ``random`` control: :func:`random_neurons` (matched per layer) drawn with
  :func:`seeded_generator` (the one seed formula: item ``i`` of a run seeded ``s``);
- run-level sets: :func:`finalize` (a localisation's records -> :class:`LocalizationResult`),
  :func:`neuron_sets` (methods + random, for the change-rate experiment) and :func:`editing_sets`
  (equal-size LAKN / language-specific / random sets, for editing).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal, Union

import torch
from jaxtyping import Float
from torch import Tensor

from .config import CHOICES, RunConfig
from .hooks import Neuron
from .results import FactRecord, LocalizationResult

__all__ = [
    "select_neurons",
    "ranked_neurons",
    "random_neurons",
    "seeded_generator",
    "random_control",
    "reference_sets",
    "specific_scores",
    "common_neuron_filter",
    "use_specific",
    "finalize",
    "neuron_sets",
    "editing_sets",
]

Reference = Union[Literal["others", "other_relations", "same_relation"], str]


def check_threshold(threshold: float, name: str = "threshold") -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < float(threshold) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {threshold!r}")


def check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")



def as_float32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32)



def ranked_neurons(score: Tensor, mask: Tensor, top_k: int | None) -> list[Neuron]:
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
    """Neurons with ``score >= threshold * max(score)`` and ``score > 0``, best first (docs/method.md §4).

    Inclusive at the boundary; capped at ``top_k`` when given; empty when ``max(score) <= 0``.

    >>> select_neurons(torch.tensor([[1.0, 0.1], [0.5, -1.0]]), threshold=0.2)
    [(0, 0), (1, 0)]
    """
    check_threshold(threshold)
    check_top_k(top_k)
    if score.ndim != 2:
        raise ValueError(f"score must have shape [layer, d_mlp], got {tuple(score.shape)}")
    score = as_float32(score)
    if score.numel() == 0:
        return []
    peak = score.max()
    if not peak > 0:
        return []
    mask = (score >= threshold * peak) & (score > 0)
    return ranked_neurons(score, mask, top_k)



def without(neurons: list[Neuron], exclude: list[Neuron]) -> list[Neuron]:
    drop = set(exclude)
    return [n for n in neurons if n not in drop]



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




def reference_sets(
    fact_ids: Sequence[str],
    relation_by_fact: Mapping[str, str],
    reference: Reference | Mapping[str, Sequence[str]] = "others",
) -> dict[str, list[str]]:
    """Reference facts of each fact (docs/method.md §4).

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
    names = ", ".join(repr(r) for r in CHOICES["reference"])
    raise ValueError(f"unknown reference {reference!r}; known: {names}, or a mapping")


def specific_scores(
    laa_by_fact: Mapping[str, Float[Tensor, "layer d_mlp"]],
    relation_by_fact: Mapping[str, str],
    reference: Reference | Mapping[str, Sequence[str]] = "others",
) -> dict[str, Float[Tensor, "layer d_mlp"]]:
    """Fact-specific score LAA(f) - mean_g max(LAA(g), 0) over f's reference facts g (docs/method.md §4).

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
    positive = {f: as_float32(t).clamp_min(0) for f, t in laa_by_fact.items()}
    out: dict[str, Tensor] = {}
    for f, t in laa_by_fact.items():
        raw = as_float32(t)
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
    return {f: [(n[0], n[1]) for n in map(tuple, neurons) if n not in common] for f, neurons in neurons_by_fact.items()}


def use_specific(n_reference: int, min_reference: int = 5) -> bool:
    """Default rule of docs/method.md §4: select LAKNs by the specific score when the reference holds
    at least ``min_reference`` facts, else by the raw LAA.

    >>> use_specific(4), use_specific(5)
    (False, True)
    """
    if n_reference < 0 or min_reference < 0:
        raise ValueError(f"n_reference and min_reference must be >= 0, got {n_reference}, {min_reference}")
    return n_reference >= min_reference


def seeded_generator(seed: int, index: int) -> torch.Generator:
    """The generator of item ``index`` (a fact, a target) of a run seeded with ``seed``: every
    random draw of lakn (controls, samples) uses this one formula, so runs repeat exactly."""
    return torch.Generator().manual_seed(seed * 100_003 + index)


def random_control(reference: Sequence[Neuron], d_mlp: int, seed: int, index: int) -> list[Neuron]:
    """The ``random`` control of item ``index``: :func:`random_neurons` matched per layer to
    ``reference``, drawn with :func:`seeded_generator`."""
    return random_neurons(reference, d_mlp, seeded_generator(seed, index))


# --------------------------------------------------------------------------- run-level sets


def finalize(config: RunConfig, records: Mapping[str, FactRecord], *,
             chosen: Mapping[str, Sequence[Neuron]] | None = None,
             chosen_scores: Mapping[str, Float[Tensor, "layer d_mlp"]] | None = None) -> LocalizationResult:
    """The cross-fact step of a localisation: fact-specific scores (per ``config.specificity``),
    the common-neuron filter, the random control and the language-specific sets.

    ``chosen`` (with the maps that ranked them, ``chosen_scores``) replaces the specificity step by
    sets selected elsewhere: the causal selection (:func:`lakn.causal.causal_sets`), ``selection="causal"``."""
    method, threshold, top_k = config.method, config.threshold, config.top_k
    lakn = {fid: list(rec.lakn) for fid, rec in records.items()}
    language_specific = {fid: dict(rec.language_specific) for fid, rec in records.items()}
    specific: dict = {}
    sets_given = method in ("kn", "amig")  # these methods select sets directly, not by a score
    selection = "sets" if sets_given else "raw"
    if chosen is not None:
        lakn = {fid: [(int(l), int(i)) for l, i in chosen[fid]] for fid in records}
        specific = dict(chosen_scores or {})
        selection = "causal"
    elif not sets_given and config.specificity != "raw":
        relations = {fid: rec.relation for fid, rec in records.items()}
        refs = reference_sets(list(records), relations, config.reference)
        if config.specificity == "specific" or use_specific(min(len(r) for r in refs.values()), config.min_reference):
            specific = specific_scores({fid: rec.laa for fid, rec in records.items()}, relations, config.reference)
            selection = "specific"
            lakn = {fid: select_neurons(specific[fid], threshold, top_k) for fid in records}
    if config.common_fraction is not None:
        lakn = common_neuron_filter(lakn, config.common_fraction)
    if method == "random":
        lakn = {fid: random_control(lakn[fid], config.d_mlp, config.seed, i) for i, fid in enumerate(records)}
    if not sets_given:
        for fid, rec in records.items():
            kept = set(lakn[fid])
            language_specific[fid] = {
                lang: [n for n in select_neurons(s, threshold, top_k) if n not in kept]
                for lang, s in rec.per_language.items()
            }
    return LocalizationResult(config.to_dict(), dict(records), lakn, language_specific, selection, specific)


def neuron_sets(
    results: Mapping[str, LocalizationResult],
    *,
    random_like: str | None = "matrice",
    seed: int = 0,
) -> dict[str, dict[str, list[Neuron]]]:
    """{method: {fact_id: LAKNs}} from localisation results, plus ``random``: as many random
    neurons as ``random_like``'s LAKNs, matched per layer (:func:`random_control`), unless a
    ``random`` result is given already."""
    sets = {name: {fid: list(r.lakn[fid]) for fid in r.fact_ids} for name, r in results.items()}
    if random_like is not None and "random" not in sets:
        source = results.get(random_like) or next(iter(results.values()))
        sets["random"] = {fid: random_control(source.lakn[fid], source.d_mlp, seed, i)
                          for i, fid in enumerate(source.fact_ids)}
    return sets


def editing_sets(
    result: LocalizationResult, *, language: str = "en", n: int | None = None, seed: int = 0
) -> dict[str, dict[str, list[Neuron]]]:
    """Neuron sets of equal size per fact for editing: ``lakn`` (the best ``n`` LAKNs, default all),
    ``language_specific`` (the ``n`` best neurons by ``language``'s own score s_l that are not
    LAKNs: the selected language-specific set first, then the next by s_l, so the size always
    matches) and ``random`` (matched per layer to the LAKNs used)."""
    out: dict[str, dict[str, list[Neuron]]] = {"lakn": {}, "language_specific": {}, "random": {}}
    for i, fid in enumerate(result.fact_ids):
        lakns = list(result.lakn[fid])
        size = len(lakns) if n is None else min(n, len(lakns))
        per_lang = result.records[fid].per_language
        if size == 0 or language not in per_lang:
            continue
        chosen = set(lakns)
        selected = [x for x in result.language_specific.get(fid, {}).get(language, []) if x not in chosen]
        ranked = [x for x in select_neurons(per_lang[language], 1e-9, size + len(lakns) + len(selected))
                  if x not in chosen and x not in selected]
        specific = (selected + ranked)[:size]
        if len(specific) < size:
            continue
        out["lakn"][fid] = lakns[:size]
        out["language_specific"][fid] = specific
        out["random"][fid] = random_control(lakns[:size], result.d_mlp, seed, i)
    return out
