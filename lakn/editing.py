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
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Fact, FactsError
from .hooks import Neuron, group_by_layer
from .closed_form import _preserve_prompts, _target_languages
from .keys import KEY_POSITIONS, _key_languages, key_position, key_prompts, prompt_keys
from .models import is_masked_lm
from .pivot import PIVOT_WEIGHT, Pivot, pivot_layer
from .tokens import EncodedQuery, encode_query, last_logits, logits_at, model_device
from .weights import Edit, _delta_hooks, _rows, _write_rows, activation_neurons, layer_neurons, w_out

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
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
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


def _encoded(model, fact: Fact, language: str, max_queries: int | None) -> list[EncodedQuery]:
    causal = not is_masked_lm(model)
    queries = fact.queries(language, causal=causal)[:max_queries]
    if not queries:
        raise FactsError(f"fact {fact.fact_id!r} has no usable queries in {language!r} to edit with")
    return [encode_query(model, q) for q in queries]


def _group(model, name: str, target_fact: Fact, key_fact: Fact, languages: Sequence[str], key_languages: Sequence[str],
           max_queries: int | None, position: str) -> "_Group":
    """One closed-form target: ``target_fact``'s queries in ``languages`` (answers: the new ones;
    one delta for all) and ``key_fact``'s prompts in ``key_languages``, each with its key position."""
    if position not in KEY_POSITIONS:
        raise ValueError(f"unknown key position {position!r}; choose from {KEY_POSITIONS}")
    if position == "subject" and not key_fact.subjects:
        warnings.warn(f"fact {key_fact.fact_id!r} names no subject: keys at the last prompt token", stacklevel=4)
        position = "last"
    targets = []
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
    prompts, prompt_languages, positions = key_prompts(model, key_fact, key_languages, max_queries, position)
    return _Group(name, [e for e, _ in targets], [p for _, p in targets], prompts, positions, list(key_languages),
                  list(languages), prompt_languages)


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

    def pivot(self, layer: int, weight: float) -> Pivot | None:
        """The pivot term of this group's target (:mod:`lakn.pivot`): its key prompts in the languages
        that have no target, read at ``layer`` for the first target language's new answer token."""
        others = [i for i, l in enumerate(self.prompt_languages) if l not in self.target_languages]
        if not others or not self.targets or weight <= 0:
            return None
        return Pivot([self.prompts[i] for i in others], [self.key_positions[i] for i in others],
                     int(self.targets[0].answer[0]), layer, weight)


RETRIES = 3
"""Re-solves of a closed-form edit whose new answer is not yet top-1 on some group's target queries."""
RETRY_BOOST = 4.0
"""How much more such a group's keys count in each re-solve (as if its λ were divided by it)."""


def _missed(model, groups: Sequence["_Group"], by_layer: dict[int, list[int]], rows: Tensor) -> list[int]:
    """The indices of the groups whose new answer's first token is not top-1 on every one of their
    target queries with the row change ``rows`` applied (then removed)."""
    trial = Edit(model, by_layer, {}, {next(iter(by_layer)): rows}, [], method="trial", active=False)
    trial.redo()
    try:
        with torch.no_grad():
            return [j for j, g in enumerate(groups)
                    if not all(int(last_logits(model, e.prompt[None])[0].argmax()) == int(e.answer[0]) for e in g.targets)]
    finally:
        trial.undo()


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
                 pivot_weight: float = PIVOT_WEIGHT, retries: int = RETRIES, label: str = "") -> Edit:
    from .closed_form import find_target, preservation_for, solve_rows

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
    out: dict[int, Tensor] = {}
    applied: list[Edit] = []
    try:
        for i, layer in enumerate(layers):
            idx = by_layer[layer]
            share = gain / (len(layers) - i)
            keys, residuals = [], []
            for group in groups:
                delta, history = find_target(model, layer, group.targets, steps=target_steps, lr=target_lr,
                                             decay=target_decay, positions=group.target_positions,
                                             pivot=None if pivot_at is None else group.pivot(pivot_at, pivot_weight))
                if layer == target_layer:
                    deltas.append(delta)
                    histories.append(history)
                if group.prompts:
                    keys.append(prompt_keys(model, group.prompts, {layer: idx}, group.key_positions)[layer])
                    residuals.append(share * delta.double()[None].expand(len(group.prompts), -1))
            if not keys:
                raise ValueError("no key prompts for the closed-form solve")
            n_keys = sum(len(k) for k in keys)
            with_keys = [j for j, g in enumerate(groups) if g.prompts]
            for attempt in range(int(retries) + 1 if layer == target_layer else 1):
                w = torch.cat([torch.full((len(k),), weights[j]) for j, k in zip(with_keys, keys)])
                out[layer] = solve_rows(torch.cat(keys), torch.cat(residuals), pres.restricted(layer, idx), lam=lam,
                                        null_space=null_space, ridge=ridge, weights=w).float()
                if layer != target_layer or attempt == retries:
                    break
                missed = _missed(model, [groups[j] for j in with_keys], {layer: idx}, out[layer])
                if not missed:
                    break
                for j in missed:  # their keys count RETRY_BOOST times more in the next solve
                    weights[with_keys[j]] *= RETRY_BOOST
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
    method = (f"closed_form λ={lam:g} gain={gain:g}" + (f" null_space={null_space:g}" if null_space else "")
              + f" keys={','.join(langs)}" + (f" targets={','.join(tlangs)}" if len(tlangs) > 1 else "")
              + (f" pivot=L{pivot_at}x{pivot_weight:g}" if pivot_at is not None else "")
              + (f" {label}" if label else ""))
    info = dict(key_languages=langs, target_languages=tlangs, n_keys=n_keys, target_layer=target_layer,
                layers=layers, position=position,
                targets=deltas, target_norms=[float(d.norm()) for d in deltas], target_history=histories,
                groups=[g.name for g in groups], preservation=pres.source, n_preserved_tokens=pres.n_tokens,
                lam=lam, gain=gain, null_space=null_space, pivot_layer=pivot_at, pivot_weight=pivot_weight,
                key_weights=weights)
    edit = Edit(model, by_layer, {}, out, history, method=method, active=False, info=info)
    edit.redo()
    return edit


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
    kn_scale: float = 1.0,
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
    alone). ``retries``: while the new answer is not top-1 on the target queries, solve again with
    their keys counting 4x more (at most ``retries`` times; 0: one solve).

    ``method="gradient"`` (§8.1): up to ``steps`` Adam steps on the rows (``lr``, ``weight_decay``)
    minimising the new answer's NLL on the ``language`` queries, plus ``locality_weight`` x the KL
    on the ``preserve`` prompts; ``target_prob`` stops early.

    ``method="kn_embedding"`` (Dai et al. 2022): each neuron's row gains
    ``kn_scale * (E[new] - E[old])``, E the unembedding column of the first answer token.

    ``target_languages`` (closed_form, gradient): find the target (train the rows) on the new
    answers of these languages as well as ``language``'s (default: ``language`` alone, an edit in
    one language; experiments/target_transfer.py measures why more may be needed).
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
    edited = _with_answers(fact, new_answers)
    targets = _target_languages(fact, new_answers, language, target_languages)
    if method == "closed_form":
        langs = _key_languages(fact, new_answers, language, key_languages)
        group = _group(model, fact.fact_id, edited, fact, targets, langs, max_queries, position)
        return _closed_form(model, [group], by_layer, preserve=preserve, lam=lam, position=position, gain=gain,
                            null_space=null_space, target_steps=target_steps, target_lr=target_lr,
                            target_decay=target_decay, ridge=ridge, pivot=pivot, pivot_weight=pivot_weight,
                            retries=retries)
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
    return _train_rows(model, encoded, [(l, i) for l, idx in by_layer.items() for i in idx],
                       steps=steps, lr=lr, weight_decay=weight_decay, preserve=prompts,
                       locality_weight=locality_weight, target_prob=target_prob)


_CLOSED_FORM_OPTIONS = frozenset({"preserve", "lam", "gain", "null_space", "target_steps", "target_lr", "target_decay",
                                  "ridge", "pivot", "pivot_weight", "retries"})
"""The options of the closed form that :func:`edit_facts` and :func:`inject_fact` pass to its solve."""

_OPTIONS = _CLOSED_FORM_OPTIONS | frozenset({"steps", "lr", "weight_decay", "locality_weight", "target_prob",
                                             "kn_scale"})
"""The keyword options of :func:`edit_fact` that :func:`edit_facts` and :func:`inject_fact` pass on."""


def _summed(model, edits: Sequence[Edit], method: str, info: dict) -> Edit:
    """One applied Edit whose deltas are the sums of ``edits``' deltas (which must be undone)."""
    by_layer = group_by_layer(n for e in edits for n in e.neurons)
    d_model = next(iter(edits[0].deltas.values())).shape[1]
    deltas = {l: torch.zeros(len(idx), d_model) for l, idx in by_layer.items()}
    for e in edits:
        for layer, idx in e.neurons_by_layer.items():
            where = torch.as_tensor([by_layer[layer].index(i) for i in idx])
            deltas[layer].index_add_(0, where, e.deltas[layer].float().cpu())
    history = [float(sum(h)) / len(h) for h in zip(*(e.history for e in edits))] if edits else []
    edit = Edit(model, by_layer, {}, deltas, history, method=method, active=False, info=info)
    edit.redo()
    return edit


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
    per_fact = isinstance(neurons, Mapping)
    if per_fact:
        assert isinstance(neurons, Mapping)
        absent = [i for i in ids if i not in neurons]
        if absent:
            raise ValueError(f"no neurons given for fact(s) {absent}")
        sets = {i: list(neurons[i]) for i in ids}
    else:
        shared = list(neurons)
        sets = {i: shared for i in ids}
    lam, gain, null_space = options.get("lam", LAM), options.get("gain", 1.0), options.get("null_space")
    _check_options(method, lam, gain, null_space)
    if method == "closed_form":
        unknown = set(options) - _OPTIONS
        if unknown:
            raise TypeError(f"edit_facts got unknown option(s) {sorted(unknown)}")
        by_layer = _neuron_layers(model, [n for s in sets.values() for n in s])
        groups = []
        for fact in facts:
            answers = new_answers[fact.fact_id]
            if language not in answers:
                raise FactsError(f"new_answers[{fact.fact_id!r}] has no answer in the edit language {language!r}")
            langs = _key_languages(fact, answers, language, key_languages)
            targets = _target_languages(fact, answers, language, target_languages)
            groups.append(_group(model, fact.fact_id, _with_answers(fact, answers), fact, targets, langs,
                                 max_queries, position))
        kw = {k: v for k, v in options.items() if k in _CLOSED_FORM_OPTIONS}
        kw.setdefault("preserve", None)
        kw.setdefault("target_steps", 20)
        kw.update(lam=lam, gain=gain, null_space=null_space)
        return _closed_form(model, groups, by_layer, label=f"batch={len(facts)}", position=position, **kw)
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
    ``gain * delta`` in one solve (options as :func:`edit_fact`'s). ``key_languages``: languages
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
    lam, gain, null_space = options.get("lam", LAM), options.get("gain", 1.0), options.get("null_space")
    _check_options(method, lam, gain, null_space)
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
