"""Keys of the closed-form edit: where a prompt's neuron activations are read, and which neurons carry them.

- :func:`activations_until` / :func:`post_activations` / :func:`prompt_keys`: activations at hook
  points (``blocks.{l}.mlp.hook_post`` for keys) of prompts, the forward stopped after the last one asked for;
- :func:`subject_position` / :func:`key_position` / :data:`KEY_POSITIONS`: the subject's last token
  (ROME / MEMIT's key) or the last prompt token;
- :func:`key_prompts`: a fact's prompts in some languages with their key positions;
- :func:`context_keys`: the activations at every other position of those prompts (kept unchanged);
  :func:`keys_and_context`: both from one forward pass;
- :func:`key_neurons`: the neurons of a layer the fact's keys lean on most against the preserved keys.

:mod:`lakn.closed_form` and :func:`lakn.edit_fact` use them; they are usable alone.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .facts import Fact, FactsError, Query
from .hooks import Neuron, hook_name
from .tokens import model_device

__all__ = ["KEY_POSITIONS", "activations_until", "post_activations", "prompt_keys", "subject_position", "key_position", "key_prompts",
           "context_keys", "keys_and_context", "key_neurons"]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the last needed layer has run."""


def activations_until(model, tokens: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """The activations of ``tokens`` at the hook points ``names`` (given in forward order), without
    gradients; the forward stops once the last of them has run (nothing after it is computed)."""
    if not names:
        raise ValueError("no hook points given")
    store: dict[str, Tensor] = {}
    last = names[-1]

    def make(name: str):
        def hook(act, hook=None):
            store[name] = act.detach()
            if name == last:
                raise _Stop
            return act

        return hook

    try:
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, make(n)) for n in names]):
            model(tokens.to(model_device(model)))
    except _Stop:
        pass
    missing = [n for n in names if n not in store]
    if missing:
        raise RuntimeError(f"the forward pass did not reach {missing}")
    return store


def post_activations(model, tokens: Tensor, layers: Iterable[int]) -> dict[int, Float[Tensor, "batch pos d_mlp"]]:
    """Neuron activations (``blocks.{l}.mlp.hook_post``) of ``tokens`` at ``layers``, without
    gradients; the forward stops after the last of the layers (no unembedding)."""
    wanted = sorted({int(l) for l in layers})
    if not wanted:
        raise ValueError("no layers given")
    store = activations_until(model, tokens, [hook_name(l) for l in wanted])
    return {l: store[hook_name(l)] for l in wanted}


def prompt_keys(
    model, prompts: Sequence[Tensor], by_layer: dict[int, list[int]], positions: Sequence[int] | None = None
) -> dict[int, Float[Tensor, "q n"]]:
    """Keys: the activations of ``by_layer[l]``'s neurons at ``positions[i]`` of prompt ``i`` (default:
    its last position), float64 ``[len(prompts), n_l]`` per layer (prompts of equal length run as
    one batch)."""
    if positions is None:
        positions = [int(p.shape[-1]) - 1 for p in prompts]
    return _read_keys(model, prompts, by_layer, positions, context=False)[0]


def context_keys(
    model, prompts: Sequence[Tensor], by_layer: dict[int, list[int]], positions: Sequence[int]
) -> dict[int, Float[Tensor, "c n"]]:
    """The activations of ``by_layer[l]``'s neurons at every position of each prompt *but* its key
    position ``positions[i]`` (float64, the prompts' rows one after another): the closed-form edit
    asks its rows to change nothing there, so the fact's own prompts change at the key alone."""
    return keys_and_context(model, prompts, by_layer, positions)[1]


def keys_and_context(
    model, prompts: Sequence[Tensor], by_layer: dict[int, list[int]], positions: Sequence[int]
) -> tuple[dict[int, Float[Tensor, "q n"]], dict[int, Float[Tensor, "c n"]]]:
    """:func:`prompt_keys` and :func:`context_keys` of the same prompts from one forward pass."""
    keys, context = _read_keys(model, prompts, by_layer, positions, context=True)
    assert context is not None
    return keys, context


def _read_keys(model, prompts: Sequence[Tensor], by_layer: dict[int, list[int]], positions: Sequence[int],
               context: bool) -> tuple[dict[int, Tensor], dict[int, Tensor] | None]:
    if len(positions) != len(prompts):
        raise ValueError(f"{len(positions)} key positions for {len(prompts)} prompts")
    for i, (p, pos) in enumerate(zip(prompts, positions)):
        if not 0 <= int(pos) < int(p.shape[-1]):
            raise IndexError(f"key position {pos} outside prompt {i} of {int(p.shape[-1])} tokens")
    out = {l: torch.zeros(len(prompts), len(idx), dtype=torch.float64) for l, idx in by_layer.items()}
    parts: dict[int, list[Tensor]] = {l: [Tensor()] * len(prompts) for l in by_layer}
    for length, members in _by_length(prompts).items():
        for start in range(0, len(members), 32):
            chunk = members[start:start + 32]
            acts = post_activations(model, torch.stack([prompts[i] for i in chunk]), by_layer)
            where = torch.as_tensor([int(positions[i]) for i in chunk])
            for layer, idx in by_layer.items():
                a = acts[layer][..., torch.as_tensor(idx, device=acts[layer].device)]
                out[layer][chunk] = a[torch.arange(len(chunk)), where.to(a.device)].double().cpu()
                if context:
                    for row, i in enumerate(chunk):
                        parts[layer][i] = a[row, torch.arange(length, device=a.device) != int(positions[i])].double().cpu()
    if not context:
        return out, None
    return out, {l: torch.cat(rows) if rows else torch.zeros(0, len(by_layer[l]), dtype=torch.float64)
                 for l, rows in parts.items()}


def _subject_end(prompt: str, subject: str) -> int | None:
    """The character index just after ``subject`` in ``prompt``: an exact match, else a
    case-insensitive one, else the longest prefix of the subject (at least 60% of it, 2+
    characters) that occurs, so an inflected form counts ("Франции" for "Франция")."""
    subject = subject.strip()
    if not subject:
        return None
    for hay, needle in ((prompt, subject), (prompt.casefold(), subject.casefold())):
        at = hay.find(needle)
        if at >= 0 and len(hay) == len(prompt):
            return at + len(needle)
    shortest = max(2, -(-len(subject) * 3 // 5))
    for n in range(len(subject) - 1, shortest - 1, -1):
        at = prompt.find(subject[:n])
        if at >= 0:
            return at + n
    return None


def subject_position(model, prompt: str, subject: str, tokens: Tensor | None = None) -> int | None:
    """The index, in ``model.to_tokens(prompt)[0]``, of the token holding the subject's last
    character (the "subject's last token" of ROME / MEMIT), or ``None`` when the subject is not
    in the prompt (``tokens``: the prompt's ids when the caller has them). The key at this token
    is the subject's, not the relation template's, so other facts of the relation have other keys."""
    end = _subject_end(prompt, subject)
    if end is None:
        return None
    tokens = model.to_tokens(prompt)[0] if tokens is None else tokens
    bos = 0
    try:
        enc = model.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False)
        offsets = enc["offset_mapping"]
        bos = len(tokens) - len(enc["input_ids"])
        if bos < 0 or tokens[bos:].tolist() != list(enc["input_ids"]):
            raise ValueError("the tokenizer's ids differ from model.to_tokens")
        for i, (_, stop) in enumerate(offsets):
            if stop >= end:
                return bos + i
        return len(tokens) - 1
    except (NotImplementedError, KeyError, ValueError, TypeError):  # no offsets (slow tokenizer)
        return min(len(model.to_tokens(prompt[:end])[0]), len(tokens)) - 1


def _by_length(seqs: Sequence[Tensor]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(int(s.shape[-1]), []).append(i)
    return groups


KEY_POSITIONS = ("subject", "last")
"""Where the closed-form edit reads its keys and adds its target (method.md §8.3): the subject's last
token (default, as ROME / MEMIT: other facts of the relation keep their keys) or the last prompt token."""


def key_position(model, query: Query, tokens: Tensor, fact: Fact, position: str) -> int | None:
    """The key position of one query: its last prompt token, or its subject's last token (None
    when the fact names no subject in the query's language or the prompt does not contain it)."""
    if position == "last":
        return int(tokens.shape[-1]) - 1
    subject = fact.subjects.get(query.language)
    return None if not subject else subject_position(model, query.prompt, subject, tokens)


def key_prompts(model, fact: Fact, languages: Sequence[str], max_queries: int | None,
                position: str = "last") -> tuple[list[Tensor], list[str], list[int]]:
    """Token ids of the fact's query prompts in ``languages`` (at most ``max_queries`` each) with
    their key positions; with ``position="subject"`` prompts whose subject is not found are left out."""
    prompts, langs, positions = [], [], []
    for lang in languages:
        for q in fact.queries(lang, causal=True)[:max_queries]:
            if not q.prompt.strip():
                raise FactsError(f"query {q.template!r} ({lang}) has no text before the answer slot")
            tokens = model.to_tokens(q.prompt)[0].cpu()
            pos = key_position(model, q, tokens, fact, position)
            if pos is not None:
                prompts.append(tokens)
                langs.append(lang)
                positions.append(pos)
    if not prompts and position == "last":
        raise FactsError(f"fact {fact.fact_id!r} has no causal query in {list(languages)} "
                         f"(max_queries={max_queries}) to read keys from")
    if not prompts:
        raise FactsError(f"fact {fact.fact_id!r}: no query in {list(languages)} contains the fact's subject "
                         f"(given in {sorted(fact.subjects)}); give it a 'subject' or use position='last'")
    return prompts, langs, positions


def _key_languages(fact: Fact, new_answers: Mapping[str, str], language: str,
                   key_languages: Sequence[str] | None) -> list[str]:
    if key_languages is None:
        langs = [language] + [l for l in new_answers if l != language and l in fact.templates]
    else:
        langs = list(dict.fromkeys(key_languages))
        unknown = [l for l in langs if l not in fact.templates]
        if unknown:
            raise FactsError(f"key language(s) {unknown} unknown for fact {fact.fact_id!r}: it has queries in "
                             f"{sorted(fact.templates)}")
        if not langs:
            raise ValueError("key_languages is empty")
    return langs


def key_neurons(model, fact: Fact, layer: int, k: int, moment: Float[Tensor, "d_mlp d_mlp"], languages: Sequence[str],
                *, max_queries: int | None = 2, position: str = "subject") -> list[Neuron]:
    """The ``k`` neurons of ``layer`` that ``fact``'s keys lean on most against the preserved keys,
    best first: score ``min over languages of mean_q k_qi^2 / C_ii`` (languages with no key prompt
    are left out, with a warning) (``moment``: the layer's
    preserved second moment, e.g. ``lakn.preservation(model, [layer])[layer]``).

    Why: the closed-form solve pays ``lam C_ii dW_i^2`` for changing neuron ``i``'s row and reaches
    the fact through ``k_i``, so a neuron strong on the fact's keys in *every* language and weak on
    preserved text is where the edit is cheap and local (a smaller set than the whole layer)."""
    if position not in KEY_POSITIONS:
        raise ValueError(f"unknown key position {position!r}; choose from {KEY_POSITIONS}")
    d_mlp = int(model.cfg.d_mlp)
    if not 0 < int(k) <= d_mlp:
        raise ValueError(f"k must be in 1..{d_mlp} (d_mlp), got {k}")
    if tuple(moment.shape) != (d_mlp, d_mlp):
        raise ValueError(f"the second moment is {tuple(moment.shape)}, layer {layer} has d_mlp={d_mlp}")
    if not 0 <= int(layer) < int(model.cfg.n_layers):
        raise IndexError(f"layer {layer} out of range for a model with {model.cfg.n_layers} layers")
    unknown = [l for l in languages if l not in fact.templates]
    if unknown or not languages:
        raise FactsError(f"key language(s) {unknown or '(none given)'} unknown for fact {fact.fact_id!r}: it has "
                         f"queries in {sorted(fact.templates)}")
    prompts, langs, positions = key_prompts(model, fact, languages, max_queries, position)
    left_out = [l for l in languages if l not in langs]
    if left_out:
        warnings.warn(f"fact {fact.fact_id!r}: no key prompt in {left_out} (no causal query, or the subject is not "
                      "in them); the score's min runs over the other languages", stacklevel=2)
    keys = prompt_keys(model, prompts, {int(layer): list(range(d_mlp))}, positions)[int(layer)]
    c = moment.diagonal().double().clamp_min(1e-12)
    per_lang = [(keys[[i for i, l in enumerate(langs) if l == lang]] ** 2).mean(0) / c for lang in dict.fromkeys(langs)]
    score = torch.stack(per_lang).min(0).values
    return [(int(layer), int(i)) for i in score.argsort(descending=True)[: int(k)].tolist()]
