"""Causal, specificity-seeking selection (``specificity="causal"``, docs/method.md §4.5).

Attribution says which neurons the answer *uses*; other facts may use them as much. This selection
compares causal effects instead: per neuron, the first-order effect of zeroing it on the fact's own
queries (:func:`lakn.attribution.effects.effect_maps`, the competitor contrast ``ctr``) minus the
damage zeroing it would do to the reference facts' queries (their ``total`` log-P effect):

1. reference damage of fact f (:func:`reference_damage`): for every reference fact g, the mean
   ``total`` over g's queries that the model answers (rank of y_1 < 10) and whose first answer token
   differs from f's in that language, clamped at 0; split by relation (same as f / other);
   ``D = lam_same * mean_same + lam_other * mean_other`` (a missing group adds 0);
2. contrast maps ``ctr_q - D`` for every query q of f, scored per fact by the run's method exactly
   as attributions are (:func:`lakn.scoring.score_fact`: per-language maps, confidence P(y_1),
   entropy; a tiny threshold), and the best ``top_k`` neurons with a positive score kept.

Selection needs every fact's maps, so it runs once all facts are done (:func:`causal_sets`); a
finished causal run can be selected again with other weights or another method (:func:`reselect`)::

    result = lakn.localize(model, facts, specificity="causal", attribution="approx")
    sets = lakn.causal.reselect(result, method="kn", lam_same=2.0, top_k=40)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from .attribution.effects import EffectMaps
from .config import RunConfig, check_number
from .hooks import Neuron
from .results import FactRecord, LocalizationResult, RunFolderError
from .scoring import METHODS, score_fact
from .selection import finalize, random_control, reference_sets

__all__ = ["ANSWERED_RANK", "SCORE_THRESHOLD", "fact_effects", "check_effects", "reference_damage",
           "contrast_inputs", "causal_scores", "causal_sets", "causal_finalize", "reselect"]

ANSWERED_RANK = 10
"""A reference query counts (is "answered") when its first answer token ranks below this."""
SCORE_THRESHOLD = 1e-9
"""The scoring threshold of the causal selection: every positive score is a candidate; ``top_k`` cuts."""


def fact_effects(record: FactRecord) -> EffectMaps:
    """The effect maps stored with a fact (maps as float32); a ValueError naming the fact when it has
    none (the run was not made with ``specificity="causal"``) or when they do not match its queries."""
    if not record.effects:
        raise ValueError(f"fact {record.fact_id!r} has no effect maps: the run was not made with "
                         "specificity='causal' (localize again with specificity='causal')")
    maps = EffectMaps.from_tensors(dict(record.effects))
    if len(maps) != len(record.queries):
        raise ValueError(f"fact {record.fact_id!r}: {len(maps)} rows of effect maps for {len(record.queries)} queries")
    return EffectMaps(maps.total.float(), maps.ctr.float(), maps.log_p.float(), maps.entropy.float(),
                      maps.rank.long(), maps.first_token.long())


def check_effects(record: FactRecord, path: Path, shape: tuple[int, int]) -> None:
    """On resume: a causal run's fact must carry effect maps of its queries with the run's
    ``[layer, d_mlp]`` shape; else a :class:`RunFolderError` naming ``path`` (the fact is recomputed)."""
    try:
        maps = fact_effects(record)
    except (KeyError, ValueError) as err:
        raise RunFolderError(f"{path}: {str(err)[:160]}") from None
    if tuple(maps.total.shape[1:]) != tuple(shape):
        raise RunFolderError(f"{path}: effect maps of shape {tuple(maps.total.shape[1:])}, expected {tuple(shape)}")


def _languages(record: FactRecord) -> list[str]:
    return [str(q["language"]) for q in record.queries]


def _first_tokens(record: FactRecord, maps: EffectMaps) -> dict[str, set[int]]:
    """{language: the fact's first answer token ids there}."""
    out: dict[str, set[int]] = {}
    for lang, tok in zip(_languages(record), maps.first_token.tolist()):
        out.setdefault(lang, set()).add(int(tok))
    return out


class _References:
    """Each reference fact's maps, read once, and its mean damage over all answered queries (reused
    for every target that shares no first answer token with it)."""

    def __init__(self, records: Mapping[str, FactRecord], answered_rank: int):
        self.records = records
        self.answered_rank = answered_rank
        self._maps: dict[str, EffectMaps] = {}
        self._mean: dict[str, Tensor | None] = {}

    def maps(self, fid: str) -> EffectMaps:
        if fid not in self._maps:
            self._maps[fid] = fact_effects(self.records[fid])
        return self._maps[fid]

    def damage(self, fid: str, exclude: Mapping[str, set[int]]) -> Tensor | None:
        """Mean ``total`` of g's answered queries whose first token is not f's (per language), >= 0;
        None when no query is left."""
        maps = self.maps(fid)
        answered = maps.rank < self.answered_rank
        clash = torch.tensor([int(t) in exclude.get(lang, ()) for lang, t in
                              zip(_languages(self.records[fid]), maps.first_token.tolist())], dtype=torch.bool)
        keep = answered & ~clash
        if not bool(clash.any()):
            if fid not in self._mean:
                self._mean[fid] = maps.total[answered].mean(0).clamp_min(0) if bool(answered.any()) else None
            return self._mean[fid]
        return maps.total[keep].mean(0).clamp_min(0) if bool(keep.any()) else None


def reference_damage(
    target: FactRecord,
    references: Sequence[FactRecord],
    *,
    lam_same: float = 4.0,
    lam_other: float = 1.0,
    answered_rank: int = ANSWERED_RANK,
    _cache: _References | None = None,
) -> Float[Tensor, "layer d_mlp"]:
    """D = lam_same * mean_same + lam_other * mean_other of the reference facts' damage (step 1 of
    the module docstring): a neuron whose zeroing lowers other facts' answers is penalised, more so
    for facts of the target's own relation (relation-level neurons). A group with no fact adds 0."""
    own = fact_effects(target)
    exclude = _first_tokens(target, own)
    cache = _cache or _References({r.fact_id: r for r in references}, answered_rank)
    sums = {True: torch.zeros(own.total.shape[1:]), False: torch.zeros(own.total.shape[1:])}
    counts = {True: 0, False: 0}
    for ref in references:
        d = cache.damage(ref.fact_id, exclude)
        if d is None:
            continue
        same = ref.relation == target.relation
        sums[same] += d
        counts[same] += 1
    out = torch.zeros(own.total.shape[1:])
    for same, lam in ((True, lam_same), (False, lam_other)):
        if counts[same]:
            out += float(lam) * sums[same] / counts[same]
    return out


def contrast_inputs(record: FactRecord, damage: Float[Tensor, "layer d_mlp"]):
    """The per-language inputs of :func:`lakn.scoring.score_fact` for the causal selection:
    ``{lang: ctr_q - D}`` (stacked per query), ``{lang: P(y_1)}`` and ``{lang: entropy}``."""
    maps = fact_effects(record)
    langs = _languages(record)
    attributions, confidence, entropy = {}, {}, {}
    for lang in dict.fromkeys(langs):
        idx = torch.tensor([i for i, l in enumerate(langs) if l == lang])
        attributions[lang] = maps.ctr[idx] - damage
        confidence[lang] = maps.log_p[idx].exp()
        entropy[lang] = maps.entropy[idx]
    return attributions, confidence, entropy


def _check(method: str, lam_same: float, lam_other: float, top_k: int | None) -> None:
    if method not in (*METHODS, "random"):
        raise ValueError(f"unknown scoring method {method!r}; known: {sorted([*METHODS, 'random'])}")
    check_number("lam_same", lam_same)
    check_number("lam_other", lam_other)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a whole number >= 1 or None, got {top_k!r}")


def causal_scores(
    record: FactRecord,
    damage: Float[Tensor, "layer d_mlp"],
    *,
    method: str = "matrice",
    top_k: int | None = 80,
    **method_kwargs,
) -> tuple[list[Neuron], Float[Tensor, "layer d_mlp"]]:
    """One fact's causal LAKNs (best first, at most ``top_k``, positive scores only) and the map
    that ranked them (the method's LAA of the contrast maps). ``random`` scores as ``matrice``
    (the caller draws the control)."""
    attributions, confidence, entropy = contrast_inputs(record, damage)
    scores = score_fact("matrice" if method == "random" else method, attributions, confidence, entropy,
                        threshold=SCORE_THRESHOLD, top_k=top_k, **method_kwargs)
    return list(scores.lakn), scores.laa


def causal_sets(
    records: Mapping[str, FactRecord],
    *,
    method: str = "matrice",
    lam_same: float = 4.0,
    lam_other: float = 1.0,
    top_k: int | None = 80,
    reference: str | Mapping[str, Sequence[str]] = "others",
    answered_rank: int = ANSWERED_RANK,
    **method_kwargs,
) -> tuple[dict[str, list[Neuron]], dict[str, Tensor]]:
    """``({fact_id: LAKNs}, {fact_id: score map})`` of the causal selection over the facts of a run;
    each fact's references are the other facts as ``reference`` picks them
    (:func:`lakn.selection.reference_sets`). ``random`` gives matrice's sets (draw the control after)."""
    _check(method, lam_same, lam_other, top_k)
    relations = {fid: rec.relation for fid, rec in records.items()}
    refs = reference_sets(list(records), relations, reference)
    cache = _References(records, answered_rank)
    chosen: dict[str, list[Neuron]] = {}
    scores: dict[str, Tensor] = {}
    for fid, rec in records.items():
        damage = reference_damage(rec, [records[g] for g in refs[fid]], lam_same=lam_same, lam_other=lam_other,
                                  answered_rank=answered_rank, _cache=cache)
        chosen[fid], scores[fid] = causal_scores(rec, damage, method=method, top_k=top_k, **method_kwargs)
    return chosen, scores


def causal_finalize(config: RunConfig, records: Mapping[str, FactRecord]) -> LocalizationResult:
    """The cross-fact step of a ``specificity="causal"`` localisation: :func:`causal_sets` with the
    run's weights, then :func:`lakn.selection.finalize` (common-neuron filter, random control,
    language-specific sets), ``selection == "causal"``."""
    chosen, scores = causal_sets(records, method=config.method, lam_same=config.causal_same_weight,
                                 lam_other=config.causal_other_weight, top_k=config.causal_top_k,
                                 reference=config.reference, **config.method_kwargs)
    return finalize(config, records, chosen=chosen, chosen_scores=scores)


def reselect(
    result: LocalizationResult,
    *,
    method: str = "matrice",
    lam_same: float = 4.0,
    lam_other: float = 1.0,
    top_k: int = 80,
) -> dict[str, list[Neuron]]:
    """Select again from a finished causal run (its stored effect maps; no model needed):
    ``{fact_id: LAKNs, best first}`` for ``method`` with these weights and this count.

    The run's ``reference`` option and, for the run's own method, its method keywords are used.
    ``random`` gives the seeded control matched per layer to matrice's sets. A result not made with
    ``specificity="causal"`` is a ValueError saying so.
    """
    config = result.run_config
    if config.specificity != "causal" or any(not rec.effects for rec in result.records.values()):
        raise ValueError(f"reselect needs the result of a causal run (specificity='causal'); this one was made with "
                         f"specificity={config.specificity!r}" + ("" if config.specificity != "causal" else
                                                                  " and some facts lack their effect maps"))
    kwargs = dict(config.method_kwargs) if method == config.method else {}
    chosen, _ = causal_sets(result.records, method=method, lam_same=lam_same, lam_other=lam_other, top_k=top_k,
                            reference=config.reference, **kwargs)
    if method == "random":
        chosen = {fid: random_control(chosen[fid], result.d_mlp, config.seed, i) for i, fid in enumerate(chosen)}
    return chosen
