"""The closed-form edit end to end: target-and-key groups, the pivot layer, the solve and its re-solves.

:func:`lakn.edit_fact`, :func:`lakn.edit_facts` and :func:`lakn.inject_fact` build one
:class:`_Group` per target (a fact's queries with their new answers, and the prompts whose keys must
map to it; :func:`_fact_groups` splits an edit's target languages into groups that share its target)
and hand them to :func:`_closed_form`, which finds each target (:func:`lakn.target.find_targets`,
with the pivot term of :mod:`lakn.pivot`), solves the rows layer by layer (:func:`lakn.closed_form.solve_rows`)
and solves again with heavier keys for the facts that do not take (docs/method.md §8.3).
:func:`_in_chunks` runs it chunk by chunk for ``edit_facts(..., chunk_size=N)``, each later solve
holding the earlier chunks' keys in place (``held``, ``CHUNK_HOLD``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from .config import check_number
from .facts import Fact, FactsError
from .keys import KEY_POSITIONS, key_position, key_prompts, keys_and_context, prompt_keys
from .models import is_masked_lm
from .pivot import PIVOT_WEIGHT, Pivot, pivot_layer
from .probability import top1_tokens
from .tokens import EncodedQuery, encode_query
from .weights import Edit, _summed


def _encoded(model, fact: Fact, language: str, max_queries: int | None) -> list[EncodedQuery]:
    causal = not is_masked_lm(model)
    queries = fact.queries(language, causal=causal)[:max_queries]
    if not queries:
        raise FactsError(f"fact {fact.fact_id!r} has no usable queries in {language!r} to edit with")
    return [encode_query(model, q) for q in queries]


def _group(model, name: str, target_fact: Fact, key_fact: Fact, languages: Sequence[str], key_languages: Sequence[str],
           max_queries: int | None, position: str) -> "_Group":
    """One closed-form target: ``target_fact``'s queries in ``languages`` (answers: the new ones;
    one delta for all) and ``key_fact``'s prompts in ``key_languages``, each with its key position.
    Re-solves and ``missed`` count the first language's queries (the edit language's): asked to take
    every query of six languages at once, every re-solve missed and the kept one took nothing
    (docs/results.md run 16)."""
    if position not in KEY_POSITIONS:
        raise ValueError(f"unknown key position {position!r}; choose from {KEY_POSITIONS}")
    if position == "subject" and not key_fact.subjects:
        warnings.warn(f"fact {key_fact.fact_id!r} names no subject: keys at the last prompt token", stacklevel=4)
        position = "last"
    targets, n_checked = [], 0
    for language in languages:
        queries = target_fact.queries(language, causal=True)[:max_queries]
        encoded = _encoded(model, target_fact, language, max_queries)
        where = [key_position(model, q, e.prompt, target_fact, position) for q, e in zip(queries, encoded)]
        found = [(e, p) for e, p in zip(encoded, where) if p is not None]
        if not found:
            subject = target_fact.subjects.get(language)
            what = f"contains the fact's subject {subject!r}" if subject else "has a subject: the fact names none in it"
            raise FactsError(f"fact {target_fact.fact_id!r}: no {language} query {what}; give it a 'subject' or "
                             "use position='last'")
        targets += found
        n_checked = n_checked or len(found)
    prompts, prompt_languages, positions = key_prompts(model, key_fact, key_languages, max_queries, position)
    return _Group(name, [e for e, _ in targets], [p for _, p in targets], prompts, positions, list(key_languages),
                  list(languages), prompt_languages, n_checked)


def _fact_groups(model, fact: Fact, edited: Fact, targets: Sequence[str], key_languages: Sequence[str],
                 max_queries: int | None, position: str, per_language: bool) -> list["_Group"]:
    """The closed-form groups of one edit: one target, found on every target language's queries, that
    every key language's prompts take. ``per_language``: the same target, but the prompts of each
    other target language that is a key language are a group of their own, checked on that
    language's queries, so that the re-solves weigh its keys apart; a solve that misses the edit
    language is never preferred. The key languages stay those given (the lead keeps the rest; with
    none left for it, one group)."""
    split = [l for l in targets[1:] if l in key_languages] if per_language else []
    keys = [l for l in key_languages if l not in split]
    if not split or not keys:
        return [_group(model, fact.fact_id, edited, fact, targets, key_languages, max_queries, position)]
    lead = _group(model, fact.fact_id, edited, fact, targets, keys, max_queries, position)
    groups = [lead]
    for lang in split:
        group = _group(model, f"{fact.fact_id}:{lang}", edited, fact, [lang], [lang], max_queries, position)
        group.lead, group.primary = lead, False
        groups.append(group)
    return groups


@dataclass
class _Group:
    """One target of a closed-form solve: the queries its delta is found on and the prompts whose
    keys must map to ``gain x delta``."""

    name: str
    targets: list[EncodedQuery]
    target_positions: list[int]
    prompts: list[Tensor]
    key_positions: list[int]
    key_languages: list[str]
    target_languages: list[str] = field(default_factory=list)
    prompt_languages: list[str] = field(default_factory=list)
    n_checked: int | None = None  # the first targets (the first language's) that must take; None: all
    lead: "_Group | None" = None  # the group (of the same solve) whose target this one's keys take; None: its own
    primary: bool = True  # False: a solve that misses it is preferred only among those that miss no more primaries

    @property
    def checked(self) -> list[EncodedQuery]:
        """The target queries whose new answer must be top-1: re-solves and ``missed`` count these."""
        return self.targets if self.n_checked is None else self.targets[: self.n_checked]

    def pivot(self, layer: int, weight: float) -> Pivot | None:
        """The pivot term of this group's target (:mod:`lakn.pivot`): its key prompts in the languages
        that have no target, read at ``layer`` for the first target language's new answer token."""
        others = [i for i, l in enumerate(self.prompt_languages) if l not in self.target_languages]
        if not others or not self.targets or weight <= 0:
            return None
        return Pivot([self.prompts[i] for i in others], [self.key_positions[i] for i in others],
                     int(self.targets[0].answer[0]), layer, weight)


RETRIES = 6
"""Re-solves of a closed-form edit whose new answer is not yet top-1 on some group's target queries."""
RETRY_BOOST = 2.0
"""How much more such a group's keys count in each re-solve (as if its λ were divided by it). With
``RETRIES`` the largest weight is 2^6 = 64, as 4^3 was before: the finer steps overshoot the weight a
fact needs by at most 2x, which kept .07 more other-relation answers in a batch of 50 at the same
reliability and changed nothing on single edits (docs/results.md run 10)."""
CONTEXT_WEIGHT = 4.0
"""Weight of a fact's context keys (its key prompts' other positions, mapped to no change) per unit
of its key weight: without them heavier keys leak the target into the rest of the prompt and the
fact takes less, not more. 4 made the hard counterfactuals take (docs/results.md run 9)."""


def _hits(model, groups: Sequence["_Group"], by_layer: dict[int, list[int]], rows: Tensor) -> list[int]:
    """Per group, how many of its checked target queries rank the new answer's first token top-1 with the row
    change ``rows`` applied (then removed); the queries of every group run together, in batches."""
    trial = Edit(model, by_layer, {}, {next(iter(by_layer)): rows}, [], method="trial", active=False)
    trial.redo()
    try:
        return _current_hits(model, groups)
    finally:
        trial.undo()


def _current_hits(model, groups: Sequence["_Group"]) -> list[int]:
    """Per group, how many of its checked target queries rank the new answer's first token top-1 on the model
    as it is; the queries of every group run together, in batches."""
    queries = [(j, e) for j, g in enumerate(groups) for e in g.checked]
    tops = top1_tokens(model, [e for _, e in queries], batch_size=32)
    hits = [0] * len(groups)
    for (j, e), top in zip(queries, tops):
        hits[j] += int(top == int(e.answer[0]))
    return hits


def _group_keys(model, groups: Sequence["_Group"], by_layer: dict[int, list[int]],
                context: bool) -> tuple[list[Tensor], list[Tensor]]:
    """Each group's keys and context keys (none without ``context``) at the one layer of ``by_layer``;
    every group's prompts are read together (one forward pass per length, not per group)."""
    (layer,) = by_layer
    if not groups:
        return [], []
    prompts = [p for g in groups for p in g.prompts]
    positions = [pos for g in groups for pos in g.key_positions]
    if context:
        k, c = keys_and_context(model, prompts, by_layer, positions)
    else:
        k, c = prompt_keys(model, prompts, by_layer, positions), {layer: torch.zeros(0, len(by_layer[layer]),
                                                                                      dtype=torch.float64)}
    keys = list(k[layer].split([len(g.prompts) for g in groups]))
    sizes = [sum(int(p.shape[-1]) - 1 for p in g.prompts) if context else 0 for g in groups]
    return keys, list(c[layer].split(sizes))


def _pivot_at(model, pivot: int | str | None, target_layer: int, groups: Sequence["_Group"]) -> int | None:
    """The pivot layer of a closed-form edit: None (off), ``"auto"`` (:func:`lakn.pivot.pivot_layer` for
    the first target language; None when no layer lies between the edit and the last), or a layer."""
    if pivot is None or not any(set(g.prompt_languages) - set(g.target_languages) for g in groups):
        return None
    if pivot == "auto":
        return pivot_layer(model, target_layer, groups[0].target_languages[0])
    if isinstance(pivot, bool) or not isinstance(pivot, int):
        raise ValueError(f"pivot must be 'auto', a layer or None, got {pivot!r}")
    if not target_layer < pivot < int(model.cfg.n_layers):
        raise ValueError(f"the pivot layer {pivot} must lie after the edited layer {target_layer} and before "
                         f"{model.cfg.n_layers}")
    return int(pivot)


def _closed_form(model, groups: Sequence[_Group], by_layer: dict[int, list[int]], *, preserve, lam: float, position: str,
                 gain: float, null_space: float | None, target_steps: int, target_lr: float = 0.5,
                 target_decay: float = 0.05, ridge: float = 1e-6, pivot: int | str | None = "auto",
                 pivot_weight: float = PIVOT_WEIGHT, retries: int = RETRIES, retry_boost: float = RETRY_BOOST,
                 context_weight: float = CONTEXT_WEIGHT, label: str = "",
                 held: Sequence[tuple[_Group, float]] = ()) -> Edit:
    from .closed_form import preservation_for, solve_rows
    from .target import find_targets

    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    check_number("retry_boost", retry_boost, 1, strict=True)
    check_number("pivot_weight", pivot_weight, 0)
    check_number("context_weight", context_weight, 0)
    if is_masked_lm(model):
        raise ValueError("the closed-form edit needs a causal LM (the key is the last prompt position); "
                         "use method='gradient' for a masked LM")
    layers = sorted(by_layer)
    d_mlp = int(model.cfg.d_mlp)
    pres = preservation_for(model, preserve, layers, frozenset(g.name.split(':')[0] for g in groups))
    for layer in layers:
        if pres[layer].shape != (d_mlp, d_mlp):
            raise ValueError(f"the layer-{layer} covariance is {tuple(pres[layer].shape)}, this model's layers have "
                             f"d_mlp={d_mlp}: the preservation was built for another model")
    target_layer = layers[-1]
    pivot_at = _pivot_at(model, pivot, target_layer, groups)
    # MEMIT's spreading: the layers are solved in order, each on the model with the earlier layers'
    # updates applied; layer i's target is found again there, and its rows take 1/(layers left) of it
    deltas, histories, n_keys = [], [], 0
    weights = [1.0] * len(groups)
    solves, still_missed, released = 0, [], []
    out: dict[int, Tensor] = {}
    applied: list[Edit] = []
    try:
        for i, layer in enumerate(layers):
            idx = by_layer[layer]
            share = gain / (len(layers) - i)
            owners = [g for g in groups if g.lead is None]  # groups that find a target; the others take their lead's
            own = find_targets(model, layer, [g.targets for g in owners], steps=target_steps, lr=target_lr,
                               decay=target_decay, positions=[g.target_positions for g in owners],
                               pivots=[None if pivot_at is None else g.pivot(pivot_at, pivot_weight) for g in owners])
            found = [own[_owner(owners, g)] for g in groups]
            if layer == target_layer:
                deltas, histories = [d for d, _ in found], [h for _, h in own]  # histories: one per target found
            with_keys = [j for j, g in enumerate(groups) if g.prompts]
            keys, contexts = _group_keys(model, [groups[j] for j in with_keys], {layer: idx}, context_weight > 0)
            # held: earlier edits' keys and context keys, kept where those edits put them (residual 0)
            held_keys, held_contexts = _group_keys(model, [g for g, _ in held], {layer: idx}, context_weight > 0)
            held_w = torch.cat([torch.full((len(k),), float(w)) for k, (_, w) in zip(held_keys, held)]
                               + [torch.full((len(c),), context_weight * float(w))
                                  for c, (_, w) in zip(held_contexts, held)]) if held else torch.zeros(0)
            residuals = [share * found[j][0].double()[None].expand(len(groups[j].prompts), -1) for j in with_keys]
            if not keys:
                raise ValueError("no key prompts for the closed-form solve")
            n_keys = sum(len(k) for k in keys)
            attempts = int(retries) + 1 if layer == target_layer else 1
            best: tuple | None = None  # (missed groups, hits, rows, key weights) of the solve that misses fewest
            d_model = residuals[0].shape[1]
            all_keys = torch.cat(keys + contexts + held_keys + held_contexts)
            all_residuals = torch.cat(residuals + [torch.zeros(len(c), d_model, dtype=torch.float64)
                                                   for c in contexts + held_keys + held_contexts])
            checked = [groups[j] for j in with_keys]

            def solve(key_weights: list[float]) -> Tensor:  # context keys weigh context_weight x their key weight
                w = torch.cat([torch.full((len(k),), key_weights[j]) for j, k in zip(with_keys, keys)]
                              + [torch.full((len(c),), context_weight * key_weights[j])
                                 for j, c in zip(with_keys, contexts)] + [held_w])
                return solve_rows(all_keys, all_residuals, pres.restricted(layer, idx), lam=lam,
                                  null_space=null_space, ridge=ridge, weights=w).float()

            def check(rows: Tensor) -> tuple[list[int], list[int]]:  # per group its hits; the groups missed
                hits = _hits(model, checked, {layer: idx}, rows)
                return hits, [j for j, (g, h) in enumerate(zip(checked, hits)) if h < len(g.checked)]

            def score(missed: list[int]) -> tuple[int, int]:  # fewer primary groups missed first, then fewer in all
                return sum(checked[j].primary for j in missed), len(missed)

            for attempt in range(attempts):
                out[layer] = solve(weights)
                if layer != target_layer:
                    break
                hits, missed = check(out[layer])
                solves += 1
                if best is None or score(missed) < score(best[0]):  # on a tie the earlier, stiffer solve
                    best = (missed, hits, out[layer], list(weights))
                if not missed or attempt == attempts - 1:
                    break
                for j in missed:  # their keys count retry_boost times more in the next solve
                    weights[with_keys[j]] *= retry_boost
            if best is not None:  # heavier keys that took no more facts would cost locality for nothing
                missed, hits, out[layer], weights = best
                # the same holds per group: those that took none of their queries at a heavier weight
                # go back to weight 1, and that solve is kept if it misses no more groups (the same rule)
                hopeless = [j for j in missed if hits[j] == 0 and weights[with_keys[j]] != 1.0]
                if hopeless:
                    lighter = list(weights)
                    for j in hopeless:
                        lighter[with_keys[j]] = 1.0
                    rows = solve(lighter)
                    _, lighter_missed = check(rows)
                    solves += 1
                    if score(lighter_missed) <= score(missed):
                        out[layer], weights, missed = rows, lighter, lighter_missed
                        released = [groups[with_keys[j]].name for j in hopeless]
                still_missed = [groups[with_keys[j]].name for j in missed]
            if layer != target_layer:  # the next layers are solved with this one applied
                step = Edit(model, {layer: idx}, {}, {layer: out[layer]}, [], method="spreading step", active=False)
                step.redo()
                applied.append(step)
    finally:
        for step in reversed(applied):
            step.undo()
    steps = max((len(h) for h in histories), default=0)
    history = [sum(h[i] for h in histories if i < len(h)) / sum(1 for h in histories if i < len(h))
               for i in range(steps)]
    langs = sorted({l for g in groups for l in g.key_languages})
    tlangs = sorted({l for g in groups for l in g.target_languages})
    info = dict(key_languages=langs, target_languages=tlangs, n_keys=n_keys, target_layer=target_layer,
                layers=layers, position=position,
                targets=deltas, target_norms=[float(d.norm()) for d in deltas], target_history=histories,
                groups=[g.name for g in groups], preservation=pres.source, n_preserved_tokens=pres.n_tokens,
                lam=lam, gain=gain, null_space=null_space, pivot_layer=pivot_at, pivot_weight=pivot_weight,
                key_weights=weights, solves=solves, missed=still_missed, released=released, retries=retries,
                retry_boost=retry_boost, context_weight=context_weight,
                n_context_keys=sum(len(c) for c in contexts), n_held_keys=sum(len(k) for k in held_keys),
                n_held_context_keys=sum(len(c) for c in held_contexts))
    edit = Edit(model, by_layer, {}, out, history, method=_method_name(info, label), active=False, info=info)
    edit.redo()
    return edit


def _owner(owners: Sequence[_Group], group: _Group) -> int:
    """The index in ``owners`` of the group whose target ``group`` takes (itself, or its lead)."""
    lead = group.lead or group
    for i, g in enumerate(owners):
        if g is lead:
            return i
    raise ValueError(f"group {group.name!r} takes the target of {lead.name!r}, which is not in the same solve")


def _method_name(info: dict[str, Any], label: str) -> str:
    """A closed-form edit's description, from its ``info``: λ, gain, null space, key and target
    languages, pivot term, context keys, then ``label``."""
    tlangs = info["target_languages"]
    return (f"closed_form λ={info['lam']:g} gain={info['gain']:g}"
            + (f" null_space={info['null_space']:g}" if info["null_space"] else "")
            + f" keys={','.join(info['key_languages'])}" + (f" targets={','.join(tlangs)}" if len(tlangs) > 1 else "")
            + (f" pivot=L{info['pivot_layer']}x{info['pivot_weight']:g}" if info["pivot_layer"] is not None else "")
            + (f" context={info['context_weight']:g}" if info["context_weight"] > 0 else "")
            + (f" {label}" if label else ""))


CHUNK_HOLD = 16.0  # how many times their kept key weight an earlier chunk's keys weigh in later chunks' solves:
# at 1 the later chunks undid half of the first chunk's edits, at 16 a tenth (results.md run 15)


def _chunk_size(value) -> int:
    """``chunk_size`` as an int >= 1 (numpy integers too), else ValueError naming it."""
    import operator

    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool) or n < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {value!r}")
    return n


def _in_chunks(model, facts: Sequence[Fact], per_fact: Sequence[Sequence[_Group]], by_layer: dict[int, list[int]],
               chunk_size: int, *, position: str, options: dict[str, Any]) -> Edit:
    """:func:`edit_facts` in chunks of ``chunk_size`` facts (``per_fact``: each fact's groups), each one solve
    on the model the earlier chunks edited. The earlier chunks stay put in two ways: their keys and
    context keys join each later solve with residual 0, weighing ``CHUNK_HOLD`` times the key weights
    they were kept with, and their query prompts (2 per language of the batch's key languages) join
    the preserved keys. The held keys are read again for every later solve: their rows grow with the
    facts edited before (fine for tens of facts; a running sum of ``w k k^T`` would bound them).
    Returns one applied edit holding every chunk's deltas; ``info["missed"]`` is checked at the end."""
    from .closed_form import preservation, preservation_for

    layers = sorted(by_layer)
    groups = [g for gs in per_fact for g in gs]
    languages = list(dict.fromkeys(l for g in groups for l in g.key_languages))
    kept = preservation_for(model, options["preserve"], layers, frozenset(f.fact_id for f in facts))
    chunks: list[Edit] = []
    held: list[tuple[_Group, float]] = []
    try:
        for start in range(0, len(per_fact), chunk_size):
            these = per_fact[start:start + chunk_size]  # this chunk's facts' groups
            part = [g for gs in these for g in gs]
            chunks.append(_closed_form(model, part, by_layer, **{**options, "preserve": kept}, position=position,
                                       label=f"batch={len(these)}", held=held))
            held += [(g, CHUNK_HOLD * w) for g, w in zip(part, chunks[-1].info["key_weights"]) if g.prompts]
            if start + chunk_size < len(per_fact):
                kept = kept.merged(preservation(model, layers, texts=[], facts=list(facts[start:start + chunk_size]),
                                                languages=languages, max_queries=2, cache=False))  # used once
    finally:
        for e in reversed(chunks):
            e.undo()
    parts: list[dict[str, Any]] = [dict(facts=[f.fact_id for f in facts[i * chunk_size:(i + 1) * chunk_size]],
                                        groups=e.info["groups"], solves=e.info["solves"],
                                        key_weights=e.info["key_weights"],
                                        missed=e.info["missed"], released=e.info["released"],
                                        n_held_keys=e.info["n_held_keys"], n_held_context_keys=e.info["n_held_context_keys"])
                                   for i, e in enumerate(chunks)]
    langs = sorted({l for e in chunks for l in e.info["key_languages"]})
    tlangs = sorted({l for e in chunks for l in e.info["target_languages"]})
    info = dict(chunks[-1].info, chunk_size=chunk_size, chunks=parts, groups=[g for p in parts for g in p["groups"]],
                key_languages=langs, target_languages=tlangs,
                solves=sum(p["solves"] for p in parts), key_weights=[w for p in parts for w in p["key_weights"]],
                released=[r for p in parts for r in p["released"]],
                targets=[t for e in chunks for t in e.info["targets"]],
                target_norms=[t for e in chunks for t in e.info["target_norms"]],
                target_history=[h for e in chunks for h in e.info["target_history"]],
                n_keys=sum(e.info["n_keys"] for e in chunks), n_context_keys=sum(e.info["n_context_keys"] for e in chunks),
                n_held_keys=sum(p["n_held_keys"] for p in parts),
                n_held_context_keys=sum(p["n_held_context_keys"] for p in parts),
                preservation=chunks[0].info["preservation"], n_preserved_tokens=chunks[0].info["n_preserved_tokens"])
    edit = _summed(model, chunks, _method_name(info, f"batch={len(facts)} chunks={chunk_size}"), info)
    try:  # missed at the end: the later chunks may undo a fact
        hits = _current_hits(model, groups)
    except BaseException:
        edit.undo()
        raise
    edit.info["missed"] = [g.name for g, h in zip(groups, hits) if h < len(g.checked)]
    return edit
