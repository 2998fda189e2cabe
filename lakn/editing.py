"""Weight edits through the neurons: change, teach or undo a fact through ``W_out`` rows.

An edit changes only the rows of the MLP output matrix W_out that belong to the chosen neurons
(neuron i of layer l is input i of W_out; the row it writes to the residual stream). Methods
(:data:`EDIT_METHODS`): ``closed_form`` (default; the constrained least-squares update of
:mod:`lakn.closed_form`, docs/method.md §8.3), ``gradient`` (Adam steps, §8.1) and
``kn_embedding`` (Dai et al.'s knowledge-neuron edit). It returns an :class:`Edit` handle that
restores the original rows bit for bit with ``undo()`` or at the end of a ``with`` block, and
whose :meth:`Edit.hooks` give the same change as TransformerLens hooks::

    with lakn.edit_fact(model, fact, {"en": "Rome", "fr": "Rome"}, neurons, language="en"):
        lakn.answer_probability(model, fact)   # answered under the edit
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .config import check_number
from .facts import Fact, FactsError
from .hooks import Neuron, group_by_layer
from .closed_form import _codes, _known_targets, _preserve_prompts, _target_languages
from .closed_form_edit import (CONTEXT_WEIGHT, RETRIES, RETRY_BOOST, _chunk_size, _closed_form, _encoded, _fact_groups,
                               _group, _in_chunks)
from .keys import _key_languages
from .models import is_masked_lm
from .pivot import PIVOT_WEIGHT
from .tokens import EncodedQuery, last_logits, logits_at, model_device
from .translate import EXAMPLES as TRANSLATION_EXAMPLES
from .translate import translate_answer, use_translation
from .weights import Edit, _delta_hooks, _rows, _summed, _write_rows, activation_neurons, layer_neurons, w_out

__all__ = ["w_out", "Edit", "edit_fact", "edit_facts", "inject_fact", "activation_neurons", "layer_neurons",
           "EDIT_METHODS"]

EDIT_METHODS = ("closed_form", "gradient", "kn_embedding")
"""The ways :func:`edit_fact` computes the change of the rows (docs/method.md §8)."""


def _nll(model, encoded: Sequence[EncodedQuery], reduce: bool = True) -> Tensor:
    """Negative log-likelihood of the answers (teacher forced, mean over each answer's tokens),
    differentiable; the mean over queries, or one value per query with ``reduce=False``."""
    device = model_device(model)
    losses = []
    for enc in encoded:
        tokens = torch.cat([enc.prompt, enc.answer[:-1]])[None].to(device)
        # the last len(answer) positions predict the answer tokens: unembed only those
        logits = logits_at(model, tokens, len(enc.answer))[0].float()
        losses.append(torch.nn.functional.cross_entropy(logits, enc.answer.to(device)))
    per_query = torch.stack(losses)
    return per_query.mean() if reduce else per_query


def _next_token_log_probs(model, prompts: Sequence[Tensor]) -> Float[Tensor, "n d_vocab"]:
    """log P(next token | prompt) at each prompt's last position, differentiable."""
    device = model_device(model)
    return torch.cat([last_logits(model, p[None].to(device)).float().log_softmax(-1) for p in prompts])


def _with_answers(fact: Fact, new_answers: Mapping[str, str]) -> Fact:
    return Fact(fact.fact_id, fact.relation, {**fact.answers, **dict(new_answers)}, fact.templates,
                fact.subjects, fact.relation_label, fact.other_answers, fact.causal_ok)


def _check_options(method: str, lam: float, gain: float, null_space: float | None) -> None:
    if method not in EDIT_METHODS:
        raise ValueError(f"unknown edit method {method!r}; choose from {EDIT_METHODS}")
    check_number("lam", lam)
    if not math.isfinite(gain):
        raise ValueError(f"gain must be finite, got {gain!r}")
    if null_space is not None and not 0 < null_space < 1:
        raise ValueError(f"null_space must be in (0, 1) (an eigenvalue fraction), got {null_space!r}")


def _neuron_layers(model, neurons: Iterable[Neuron]) -> dict[int, list[int]]:
    by_layer = group_by_layer(neurons)
    if not by_layer:
        raise ValueError("no neurons to edit")
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    for layer, idx in by_layer.items():
        if not 0 <= layer < n_layers:
            raise IndexError(f"layer {layer} out of range for a model with {n_layers} layers")
        if idx[0] < 0 or idx[-1] >= d_mlp:
            raise IndexError(f"neuron index out of range for d_mlp={d_mlp} in layer {layer}: {idx[0]}..{idx[-1]}")
    return by_layer


LAM = 1e6  # the closed-form edit's default weight of the preserved keys: stiff, and the re-solves (retries)
# loosen it for the facts that do not take (results.md run 8)
INJECT_LAM = 1e5  # injection's: a new name needs a looser start than the largest key weight (64) gives
# from 1e6 (results.md run 10: recall in the trained languages .78 at 1e6, .95 at 1e5)


def _unembedding(model) -> Tensor:
    W_U = getattr(model, "W_U", None)
    if W_U is None:
        raise TypeError("the model exposes no unembedding W_U for the knowledge-neuron edit")
    return W_U.detach()


def _kn_embedding(model, pairs: Sequence[tuple[int | None, int]], by_layer: dict[int, list[int]],
                  kn_scale: float, label: str = "") -> Edit:
    """Dai et al.'s edit: every chosen neuron's row gains ``kn_scale * sum (E[new] - E[old])``
    over ``pairs`` of (old, new) first answer tokens (E: the unembedding column; old may be None)."""
    W_U = _unembedding(model).float()
    change = torch.zeros(W_U.shape[0])
    for old, new in pairs:
        change += W_U[:, new].cpu()
        if old is not None:
            change -= W_U[:, old].cpu()
    deltas = {l: (kn_scale * change)[None].expand(len(idx), -1).clone() for l, idx in by_layer.items()}
    edit = Edit(model, by_layer, {}, deltas, [], method=f"kn_embedding λ={kn_scale:g}" + (f" {label}" if label else ""),
                active=False, info=dict(kn_scale=kn_scale, tokens=[list(p) for p in pairs]))
    edit.redo()
    return edit


def _check_flag(name: str, value) -> bool:
    """``value`` if it is True or False, else a TypeError naming the option ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _targets(model, fact: Fact, answers: Mapping[str, str], language: str, target_languages: Sequence[str] | None,
             key_languages: Sequence[str], translate: bool,
             memo: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """The languages an edit's target is found on (the edit language first) and the new answers it
    reads there. ``translate``: the model's own translations of the edit language's answer
    (:func:`lakn.translate_answer`, round trip checked) stand in for every other target language's
    (default: the key languages with translation examples); ``memo`` keeps them per (answer, languages)
    across a batch.
    Otherwise the answers given (:func:`_target_languages`)."""
    if not translate:
        return _target_languages(fact, answers, language, target_languages), dict(answers)
    want = _known_targets(fact, _codes([], key_languages if target_languages is None else target_languages))
    # languages with no usable query (e.g. the slot not last, for a causal LM) cannot carry a target,
    # nor, by default, key languages lakn has no translation examples for (named ones must have them)
    probe = _with_answers(fact, {l: answers[language] for l in want})
    usable = tuple(l for l in want if l != language and probe.queries(l, causal=not is_masked_lm(model))
                   and (target_languages is not None or l in TRANSLATION_EXAMPLES))
    memo = {} if memo is None else memo
    key = (answers[language], usable)
    if key not in memo:
        memo[key] = translate_answer(model, answers[language], usable, source=language)
    words = memo[key]
    return [language, *words], {**answers, **words}


def _first_token(model, fact: Fact, language: str) -> int:
    return int(_encoded(model, fact, language, 1)[0].answer[0])


def edit_fact(
    model,
    fact: Fact,
    new_answers: Mapping[str, str],
    neurons: Iterable[Neuron],
    *,
    language: str = "en",
    method: str = "closed_form",
    key_languages: Sequence[str] | None = None,
    target_languages: Sequence[str] | None = None,
    position: str = "subject",
    preserve: Any = None,
    lam: float = LAM,
    gain: float = 1.0,
    null_space: float | None = None,
    target_steps: int = 20,
    max_queries: int | None = None,
    steps: int = 10,
    lr: float = 0.5,
    weight_decay: float = 1e-3,
    locality_weight: float = 1.0,
    target_prob: float | None = None,
    target_lr: float = 0.5,
    target_decay: float = 0.05,
    ridge: float = 1e-6,
    pivot: int | str | None = "auto",
    pivot_weight: float = PIVOT_WEIGHT,
    retries: int = RETRIES,
    retry_boost: float = RETRY_BOOST,
    context_weight: float = CONTEXT_WEIGHT,
    kn_scale: float = 1.0,
    translate: bool | str = "auto",
    per_language: bool = True,
) -> Edit:
    """Change ``fact``'s answer to ``new_answers[language]`` through the W_out rows of ``neurons``.

    ``method="closed_form"`` (default, docs/method.md §8.3): a residual ``delta`` is found once by
    ``target_steps`` Adam steps (``target_lr``; L2 penalty ``target_decay``) so that, added to the
    MLP output of the last edited layer at the key position of the ``language`` queries, the new
    answer is likely; the keys are the neurons' activations at the key position of the fact's
    queries in every ``key_languages`` language (default: the edit language and every other
    language of ``new_answers`` the fact has queries in). The key position (``position``,
    :mod:`lakn.keys`) is the subject's last token (default) or ``"last"``, the last prompt token;
    :func:`lakn.key_neurons` picks a smaller set than a whole layer. The rows' change is the
    least-squares map of every key to ``gain * delta`` that keeps the preserved keys'
    output (``preserve``: a :class:`~lakn.closed_form.Preservation`; ``None``: the covariance of
    lakn's generic text and of every query prompt of lakn's demo facts but the edited ones, built
    once per set of texts and cached; a sequence of prompts: their tokens added to it; a sequence
    of other facts: their query prompts, 2 per language, added, which buys most locality,
    docs/results.md run 7) unchanged
    up to ``lam``: ``dW = (K K^T + lam C_SS)^{-1} K R``, in the null space of ``C_SS`` with
    ``null_space``. Neurons of several layers are solved layer by layer (MEMIT's spreading): each
    layer on the model with the earlier layers' update, its own target found there, its rows
    taking 1/(layers left) of it. Causal LMs only.

    ``pivot`` (closed form): the target also asks, for every key language without a target, that
    the logit lens at the pivot layer of those prompts names the new answer's first token in the
    edit language (:mod:`lakn.pivot`; weight ``pivot_weight``): the edit language's answer is all
    it needs, and it carries the edit to the other languages (docs/results.md run 8). ``"auto"``
    (default): :func:`lakn.pivot.pivot_layer`; a layer; or None (the target of the edit language
    alone). ``retries``: while the new answer is not top-1 on a group's checked queries (a fact's
    edit-language queries, or a language group's own, ``per_language``), solve again with that
    group's keys counting ``retry_boost`` times more (at most ``retries`` times; 0: one solve). The
    solve that misses the fewest edit-language groups, then the fewest groups, is kept (the earliest
    on a tie: heavier keys that take nothing more only cost locality); the groups that took none of
    their queries in the kept solve at a weight above 1 are solved again at weight 1, and that solve
    is kept if it misses no more (``info["released"]``). ``info["groups"]`` names the groups
    (``fact_id``, ``fact_id:lang``), ``info["missed"]`` those still missed, ``info["solves"]``
    counts the solves.

    ``method="gradient"`` (§8.1): up to ``steps`` Adam steps on the rows (``lr``, ``weight_decay``)
    minimising the new answer's NLL on the ``language`` queries, plus ``locality_weight`` x the KL
    on the ``preserve`` prompts; ``target_prob`` stops early.

    ``method="kn_embedding"`` (Dai et al. 2022): each neuron's row gains
    ``kn_scale * (E[new] - E[old])``, E the unembedding column of the first answer token.

    ``target_languages`` (closed_form, gradient): find the target (train the rows) on the new
    answers of these languages as well as ``language``'s (default: ``language`` alone, an edit in
    one language; experiments/target_transfer.py measures why more may be needed).
    ``translate`` (closed_form, gradient): the target is found on the edit language's new answer and
    on the model's own translations of it into ``target_languages`` (default: the key languages
    :data:`lakn.translate.EXAMPLES` has), kept where the model translates them back
    (:func:`lakn.translate_answer`); the other languages' answers in ``new_answers`` are not read.
    An edit that names its new answer in one language thus gets a target that is not that
    language's alone (docs/results.md run 16). Languages with no usable query are left out.
    ``"auto"`` (default): True for the closed form when ``target_languages`` is None and the edit
    language has translation examples, else False (the gradient and embedding edits, the peers, keep
    their published forms). It costs a few generations per new answer and key language, and an edit
    whose keys are in the edit language alone translates nothing; ``translate=False`` is the
    edit-language target alone (docs/results.md runs 14 and 19).
    ``per_language`` (closed form, with either; default True): the keys of each other target
    language that is a key language are a group of the solve of their own, mapped to the same
    target and checked on that language's queries, so the re-solves weigh a language's keys more
    while its queries miss (a solve that misses the edit language is never preferred);
    ``info["groups"]`` / ``info["missed"]`` name them ``fact_id:lang``. With ``translate`` it raised
    fr / es / de generality from .63 / .56 / .59 to .72 / .78 / .75 at the same locality
    (docs/results.md run 17). False: one group per fact, whose re-solves check the edit language's
    queries only.
    ``max_queries`` caps the queries used per language. Other languages' answers in
    ``new_answers`` are otherwise only used by the metrics. Returns a reversible :class:`Edit`::

        with lakn.edit_fact(model, fact, {"en": "Rome", "fr": "Rome"}, neurons, language="en"):
            lakn.answer_probability(model, fact)   # answered under the edit
        # weights restored here
    """
    _check_options(method, lam, gain, null_space)
    if language not in new_answers:
        raise FactsError(f"new_answers has no answer in the edit language {language!r}")
    if target_prob is not None and not 0 < target_prob < 1:
        raise ValueError(f"target_prob must be in (0, 1), got {target_prob}")
    if locality_weight < 0:
        raise ValueError(f"locality_weight must be >= 0, got {locality_weight}")
    by_layer = _neuron_layers(model, neurons)
    langs = _key_languages(fact, new_answers, language, key_languages)
    translate = use_translation(translate, model, method, language, target_languages)
    if translate and method == "kn_embedding":
        raise ValueError("method='kn_embedding' edits through the edit language's answer token only; "
                         "translate is for closed_form and gradient")
    _check_flag("per_language", per_language)
    targets, answers = _targets(model, fact, new_answers, language, target_languages, langs, translate)
    edited = _with_answers(fact, answers)
    if method == "closed_form":
        groups = _fact_groups(model, fact, edited, targets, langs, max_queries, position, per_language)
        edit = _closed_form(model, groups, by_layer, preserve=preserve, lam=lam, position=position, gain=gain,
                            null_space=null_space, target_steps=target_steps, target_lr=target_lr,
                            target_decay=target_decay, ridge=ridge, pivot=pivot, pivot_weight=pivot_weight,
                            retries=retries, retry_boost=retry_boost, context_weight=context_weight)
        return _translated(edit, {fact.fact_id: (targets, answers)}, language, translate)
    if method == "kn_embedding":
        if len(targets) > 1:
            raise ValueError("method='kn_embedding' edits through the edit language's answer token only; "
                             "target_languages is for closed_form and gradient")
        pair = (_first_token(model, fact, language), _first_token(model, edited, language))
        return _kn_embedding(model, [pair], by_layer, kn_scale)
    if preserve is not None and not isinstance(preserve, Sequence):
        raise TypeError("method='gradient' takes preserve prompts (queries or token ids), not "
                        f"{type(preserve).__name__}")
    encoded = [e for l in targets for e in _encoded(model, edited, l, max_queries)]
    prompts = _preserve_prompts(model, preserve or (), language)
    edit = _train_rows(model, encoded, [(l, i) for l, idx in by_layer.items() for i in idx],
                       steps=steps, lr=lr, weight_decay=weight_decay, preserve=prompts,
                       locality_weight=locality_weight, target_prob=target_prob)
    return _translated(edit, {fact.fact_id: (targets, answers)}, language, translate)


def _translated(edit: Edit, found: Mapping[str, tuple[list[str], dict[str, str]]], language: str,
                translate: bool) -> Edit:
    """Record in ``edit.info["translations"]`` the model's translations each fact's target read."""
    if translate:
        edit.info["translations"] = {fid: {l: answers[l] for l in targets if l != language}
                                     for fid, (targets, answers) in found.items()}
    return edit


_CLOSED_FORM_OPTIONS = frozenset({"preserve", "lam", "gain", "null_space", "target_steps", "target_lr", "target_decay",
                                  "ridge", "pivot", "pivot_weight", "retries", "retry_boost",
                                  "context_weight"})
"""The options of the closed form that :func:`edit_facts` and :func:`inject_fact` pass to its solve."""

_OPTIONS = _CLOSED_FORM_OPTIONS | frozenset({"steps", "lr", "weight_decay", "locality_weight", "target_prob",
                                             "kn_scale", "translate", "per_language"})
"""The keyword options of :func:`edit_fact` that :func:`edit_facts` and :func:`inject_fact` pass on."""


def edit_facts(
    model,
    facts: Sequence[Fact],
    new_answers: Mapping[str, Mapping[str, str]],
    neurons: Iterable[Neuron] | Mapping[str, Iterable[Neuron]],
    *,
    language: str = "en",
    method: str = "closed_form",
    key_languages: Sequence[str] | None = None,
    target_languages: Sequence[str] | None = None,
    position: str = "subject",
    max_queries: int | None = None,
    chunk_size: int | None = None,
    **options,
) -> Edit:
    """Edit many facts at once: ``new_answers[fact_id]`` is ``{lang: answer}`` as in :func:`edit_fact`.

    ``closed_form``: one solve per layer for all facts, each fact with its own target ``delta``
    (found on the clean model) and its own keys, stacked: ``dW = (K K^T + lam C)^{-1} K R`` with
    ``K``, ``R`` holding every fact's keys and residuals. ``neurons`` may be one set or a set per
    fact id; a solve needs one set of rows, so per-fact sets are merged into their union.
    ``gradient`` / ``kn_embedding``: each fact is edited alone (on the clean model, each through
    its own set) and the edit holds the sum of their deltas. Options: those of :func:`edit_fact`.
    Returns one reversible :class:`Edit`.

    ``chunk_size`` (closed form; fewer than the facts): solve the facts in chunks of that many, in
    order, each chunk (its targets too) on the model the earlier chunks edited, which stay put: their
    keys and context keys join every later solve with residual 0 at ``CHUNK_HOLD`` times their kept
    key weight, and their query prompts join the preserved keys (AlphaEdit's sequential setting;
    docs/method.md §8.3, results.md run 15). The edit holds the chunks' summed deltas;
    ``info["missed"]`` names the groups missed at the end, ``info["chunks"]`` each chunk's facts,
    groups, solves, key weights, the groups missed and released at its own solve and its held keys.
    """
    facts = list(facts)
    if not facts:
        raise ValueError("no facts to edit")
    ids = [f.fact_id for f in facts]
    if len(set(ids)) != len(ids):
        raise ValueError("edit_facts got the same fact twice")
    missing = [i for i in ids if i not in new_answers]
    if missing:
        raise FactsError(f"new_answers has no entry for fact(s) {missing}")
    if isinstance(neurons, Mapping):
        absent = [i for i in ids if i not in neurons]
        if absent:
            raise ValueError(f"no neurons given for fact(s) {absent}")
        sets = {i: list(neurons[i]) for i in ids}
    else:
        shared = list(neurons)
        sets = {i: shared for i in ids}
    lam, gain, null_space = options.get("lam", LAM), options.get("gain", 1.0), options.get("null_space")
    _check_options(method, lam, gain, null_space)
    if chunk_size is not None:
        chunk_size = _chunk_size(chunk_size)
        if method != "closed_form":
            raise ValueError(f"chunk_size is an option of the closed form; method {method!r} edits each fact alone")
        if is_masked_lm(model):  # before any chunk's preserved keys are built
            raise ValueError("the closed-form edit needs a causal LM; chunk_size has no meaning for a masked LM")
    if method == "closed_form":
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"edit_facts got unknown option(s) {sorted(unknown)}")
        by_layer = _neuron_layers(model, [n for s in sets.values() for n in s])
        per_fact: list[list] = []  # each fact's closed-form groups (one, or one per language)
        found = {}
        memo: dict = {}  # a batch's translations, one per (answer, languages)
        per_language = _check_flag("per_language", options.get("per_language", True))
        translate = use_translation(options.get("translate", "auto"), model, method, language, target_languages,
                                    len(facts))
        for fact in facts:
            answers = new_answers[fact.fact_id]
            if language not in answers:
                raise FactsError(f"new_answers[{fact.fact_id!r}] has no answer in the edit language {language!r}")
            langs = _key_languages(fact, answers, language, key_languages)
            targets, answers = _targets(model, fact, answers, language, target_languages, langs, translate, memo)
            per_fact.append(_fact_groups(model, fact, _with_answers(fact, answers), targets, langs,
                                         max_queries, position, per_language))
            found[fact.fact_id] = (targets, answers)
        kw = {k: v for k, v in options.items() if k in _CLOSED_FORM_OPTIONS}
        kw.setdefault("preserve", None)
        kw.setdefault("target_steps", 20)
        kw.update(lam=lam, gain=gain, null_space=null_space)
        if chunk_size is not None and chunk_size < len(facts):
            edit = _in_chunks(model, facts, per_fact, by_layer, chunk_size, position=position, options=kw)
        else:
            edit = _closed_form(model, [g for gs in per_fact for g in gs], by_layer, label=f"batch={len(facts)}",
                                position=position, **kw)
        return _translated(edit, found, language, translate)
    singles: list[Edit] = []
    try:
        for fact in facts:
            e = edit_fact(model, fact, new_answers[fact.fact_id], sets[fact.fact_id], language=language,
                          method=method, key_languages=key_languages, target_languages=target_languages,
                          position=position, max_queries=max_queries,
                          **options)
            e.undo()
            singles.append(e)
    finally:
        for e in singles:
            e.undo()
    return _summed(model, singles, f"{singles[0].method} summed over batch={len(facts)}",
                   dict(facts=ids, methods=[e.method for e in singles]))


def _train_rows(model, encoded, neurons, *, steps, lr, weight_decay, preserve=(), locality_weight=1.0,
                target_prob=None) -> Edit:
    by_layer = group_by_layer(neurons)
    if not by_layer:
        raise ValueError("no neurons to edit")
    if preserve and is_masked_lm(model):
        raise ValueError("preserve prompts (the locality term) need a causal LM")
    original, deltas = {}, {}
    for layer, idx in by_layer.items():
        weight, dim = w_out(model, layer)
        original[layer] = _rows(weight, dim, torch.as_tensor(idx, device=weight.device))
        deltas[layer] = torch.zeros_like(original[layer], dtype=torch.float32, requires_grad=True)
    reference = None
    if preserve and locality_weight > 0:
        with torch.no_grad():
            reference = _next_token_log_probs(model, preserve)
    optimiser = torch.optim.Adam(list(deltas.values()), lr=lr)
    history, locality = [], []
    stop = None if target_prob is None else -torch.log(torch.tensor(float(target_prob)))
    with torch.enable_grad(), model.hooks(fwd_hooks=_delta_hooks(deltas, by_layer)):
        for _ in range(steps):
            optimiser.zero_grad()
            per_query = _nll(model, encoded, reduce=False)
            loss = per_query.mean()
            if stop is not None and bool((per_query.detach() <= stop).all()):
                break
            total = loss + weight_decay * sum((d**2).sum() for d in deltas.values())
            if reference is not None:
                log_p = _next_token_log_probs(model, preserve)
                kl = torch.nn.functional.kl_div(log_p, reference, log_target=True, reduction="batchmean")
                total = total + locality_weight * kl
                locality.append(float(kl.detach()))
            total.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    deltas = {l: d.detach() for l, d in deltas.items()}
    for layer, idx in by_layer.items():
        weight, dim = w_out(model, layer)
        _write_rows(weight, dim, torch.as_tensor(idx, device=weight.device),
                    original[layer].to(weight) + deltas[layer].to(weight))
    method = f"adam x{len(history)}" + (f" + KL x{locality_weight:g} on {len(preserve)} prompts" if reference is not None else "")
    return Edit(model, by_layer, original, deltas, history, method=method, locality_history=locality)


def inject_fact(
    model,
    fact: Fact,
    *,
    languages: Sequence[str] = ("en",),
    neurons: Iterable[Neuron] | None = None,
    method: str = "closed_form",
    k: int = 20,
    language: str | None = None,
    neuron_languages: Sequence[str] | None = None,
    key_languages: Sequence[str] | None = None,
    position: str = "subject",
    max_queries: int | None = None,
    **options,
) -> Edit:
    """Teach a (fictional) fact through ``neurons`` using only its queries in ``languages``
    (``language="xx"`` is the older spelling of ``languages=("xx",)``).

    Without ``neurons`` they are chosen by :func:`activation_neurons` over ``neuron_languages``
    (default: all the fact's languages): neurons active at the answer position in every
    language, the LAKN-style choice for a fact with no attribution yet.

    ``closed_form`` (default): one target ``delta`` per training language (found on that
    language's queries with its own answer), the keys of that language's prompts mapped to
    ``gain * delta`` in one solve (options as :func:`edit_fact`'s, but ``lam`` defaults to
    ``INJECT_LAM``, 1e5: a new name needs a looser solve than an edit). ``key_languages``: languages
    whose prompts (never their answers) give keys too, mapped to the first training language's
    target, which the pivot term (:mod:`lakn.pivot`) then finds for them as well. ``gradient``: Adam on the
    rows with the queries of every training language (default ``steps`` 20; ``preserve``
    prompts, ``locality_weight``, ``target_prob`` as in :func:`edit_fact`). ``kn_embedding``: each
    row gains ``kn_scale * E[answer]`` per training language. Returns a reversible :class:`Edit`.
    """
    if language is not None:
        languages = (language,)
    languages = list(dict.fromkeys(languages))
    if not languages:
        raise ValueError("no training languages given")
    unknown = [l for l in languages if l not in fact.templates or l not in fact.answers]
    if unknown:
        raise FactsError(f"fact {fact.fact_id!r} has no queries or answer in {unknown} (it has {sorted(fact.templates)})")
    if neurons is None:
        neurons = activation_neurons(model, fact, list(neuron_languages or fact.languages), k)
    unknown_opts = set(options) - _OPTIONS
    if unknown_opts:
        raise TypeError(f"inject_fact got unknown option(s) {sorted(unknown_opts)}")
    edit_only = sorted(k for k, off in (("translate", (False, "auto")), ("per_language", (False,)))
                       if options.get(k, False) not in off)
    if edit_only:  # an injection's target is each training language's own, from the fact's answers there
        raise ValueError(f"{edit_only} are options of edit_fact; inject_fact trains on the answers of `languages`")
    lam, gain, null_space = options.get("lam", INJECT_LAM), options.get("gain", 1.0), options.get("null_space")
    _check_options(method, lam, gain, null_space)
    if key_languages and method != "closed_form":
        raise ValueError(f"key_languages needs method='closed_form' (its keys); {method!r} has none")
    by_layer = _neuron_layers(model, neurons)
    if method == "closed_form":
        kw = {key: v for key, v in options.items() if key in _CLOSED_FORM_OPTIONS}
        kw.setdefault("preserve", None)
        kw.setdefault("target_steps", 20)
        kw.update(lam=lam, gain=gain, null_space=null_space)
        extra = [l for l in dict.fromkeys(key_languages or ()) if l not in languages]
        unknown = [l for l in extra if l not in fact.templates]
        if unknown:
            raise FactsError(f"key language(s) {unknown} unknown for fact {fact.fact_id!r}: it has queries in "
                             f"{sorted(fact.templates)}")
        groups = [_group(model, f"{fact.fact_id}:{lang}", fact, fact, [lang], [lang] + (extra if i == 0 else []),
                         max_queries, position) for i, lang in enumerate(languages)]
        return _closed_form(model, groups, by_layer, label="inject", position=position, **kw)
    if method == "kn_embedding":
        pairs = [(None, _first_token(model, fact, lang)) for lang in languages]
        return _kn_embedding(model, pairs, by_layer, float(options.get("kn_scale", 1.0)), label="inject")
    preserve = options.get("preserve") or ()
    if not isinstance(preserve, Sequence):
        raise TypeError("method='gradient' takes preserve prompts (queries or token ids)")
    encoded = [e for lang in languages for e in _encoded(model, fact, lang, max_queries)]
    prompts = _preserve_prompts(model, preserve, languages[0])
    return _train_rows(model, encoded, [(l, i) for l, idx in by_layer.items() for i in idx],
                       steps=options.get("steps", 20), lr=options.get("lr", 0.5),
                       weight_decay=options.get("weight_decay", 1e-3), preserve=prompts,
                       locality_weight=options.get("locality_weight", 1.0), target_prob=options.get("target_prob"))
