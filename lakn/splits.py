"""Honest splits: what localisation may see, and the labelled queries evaluation measures on.

Queries the localisation saw are ``seen``; other paraphrases in the localisation languages are
``heldout_paraphrase``; languages the localisation never saw are ``heldout_language``.

Example::

    split = lakn.split_facts(facts, holdout_share=0.5, holdout_languages=["de"], seed=0)
    result = lakn.localize(model, split.localization, languages=["en", "fr", "es"])
    queries = evaluation_queries(model, facts, result=result)      # [EvalQuery(..., split=...), ...]
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import torch

from .facts import Fact, FactsError
from .results import LocalizationResult
from .tokens import EncodedQuery, encode_query

__all__ = ["SPLITS", "Split", "split_facts", "EvalQuery", "evaluation_queries"]

SPLITS = ("seen", "heldout_paraphrase", "heldout_language")


@dataclass
class Split:
    """Facts cut into what localisation may see and what evaluation measures on.

    ``localization`` holds new :class:`Fact` objects with only the localisation templates (pass
    them to :func:`lakn.localize`); ``evaluation`` holds the held-out templates (held-out
    paraphrases of every language, and every template of a held-out language).
    """

    localization: list[Fact]
    evaluation: list[Fact]
    holdout_languages: list[str]
    holdout_share: float
    seed: int


def _subset(fact: Fact, keep: dict[str, list[int]]) -> Fact:
    templates = {lang: tuple(fact.templates[lang][i] for i in idx) for lang, idx in keep.items() if idx}
    causal_ok = None
    if fact.causal_ok is not None:  # indices refer to template positions: renumber them
        causal_ok = {lang: tuple(j for j, i in enumerate(idx) if i in fact.causal_ok.get(lang, ()))
                     for lang, idx in keep.items() if idx}
    return Fact(fact.fact_id, fact.relation, dict(fact.answers), templates, dict(fact.subjects),
                fact.relation_label, dict(fact.other_answers), causal_ok)


def split_facts(
    facts: Sequence[Fact],
    *,
    holdout_share: float = 0.5,
    holdout_languages: Sequence[str] = (),
    seed: int = 0,
    causal: bool = True,
) -> Split:
    """Deterministically split each fact's paraphrases into localisation and evaluation queries.

    Per (fact, language) the usable templates are shuffled with a generator seeded by ``seed``,
    the fact id and the language, and ``round(holdout_share * n)`` of them are held out (at least
    one is kept for localisation and, when there are two or more, at least one is held out).
    Every template of a ``holdout_languages`` language goes to evaluation.

    >>> split = split_facts(facts, holdout_share=0.5, holdout_languages=["de"], seed=0)
    """
    if not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"holdout_share must be in [0, 1), got {holdout_share}")
    held_langs = list(holdout_languages)
    loc, ev = [], []
    for fact in facts:
        keep_loc: dict[str, list[int]] = {}
        keep_ev: dict[str, list[int]] = {}
        for lang in fact.languages:
            usable = [i for i, t in enumerate(fact.templates[lang])
                      if any(q.template == t for q in fact.queries(lang, causal=causal))]
            if lang in held_langs:
                keep_ev[lang] = usable
                continue
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}|{fact.fact_id}|{lang}".encode()))
            order = [usable[i] for i in torch.randperm(len(usable), generator=g).tolist()]
            n_out = round(holdout_share * len(order))
            if len(order) >= 2 and holdout_share > 0:
                n_out = min(max(n_out, 1), len(order) - 1)
            else:
                n_out = 0
            keep_ev[lang] = sorted(order[:n_out])
            keep_loc[lang] = sorted(order[n_out:])
        loc.append(_subset(fact, keep_loc))
        ev.append(_subset(fact, keep_ev))
    return Split(loc, ev, held_langs, holdout_share, seed)


# --------------------------------------------------------------------------- evaluation queries


@dataclass(frozen=True)
class EvalQuery:
    """One query to measure on, with where it stands in the split."""

    fact_id: str
    relation: str
    language: str
    prompt: str
    answer: str
    split: str  # seen / heldout_paraphrase / heldout_language
    encoded: EncodedQuery


def evaluation_queries(
    model,
    facts: Sequence[Fact],
    *,
    result: LocalizationResult | None = None,
    languages: Sequence[str] | None = None,
    max_queries: int | None = 3,
    causal: bool = True,
) -> list[EvalQuery]:
    """The queries to measure: every usable query of ``facts`` in ``languages`` (default: all the
    facts' languages), at most ``max_queries`` per (fact, language, split), labelled by split.

    With a ``result``, a query is ``seen`` when the localisation attributed it (same language and
    prompt), ``heldout_paraphrase`` when its language was localised but not the query, else
    ``heldout_language``. Without one every query counts as ``seen``.
    """
    seen: dict[str, set[tuple[str, str]]] = {}
    loc_langs: set[str] = set()
    if result is not None:
        loc_langs = set(result.languages)
        seen = {fid: {(r["language"], r["prompt"]) for r in rec.queries} for fid, rec in result.records.items()}
    out: list[EvalQuery] = []
    for fact in facts:
        for lang in languages or fact.languages:
            if lang not in fact.templates or not fact.answers.get(lang):
                continue
            counts: dict[str, int] = {}
            for q in fact.queries(lang, causal=causal):
                if result is None:
                    split = "seen"
                elif (lang, q.prompt) in seen.get(fact.fact_id, set()):
                    split = "seen"
                elif lang in loc_langs:
                    split = "heldout_paraphrase"
                else:
                    split = "heldout_language"
                if max_queries is not None and counts.get(split, 0) >= max_queries:
                    continue
                try:
                    enc = encode_query(model, q)
                except FactsError:
                    continue
                counts[split] = counts.get(split, 0) + 1
                out.append(EvalQuery(fact.fact_id, fact.relation, lang, q.prompt, q.answer, split, enc))
    return out
