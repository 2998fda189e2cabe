"""Choosing the facts and languages of a run: the request is checked before any computation."""

from __future__ import annotations

from typing import Sequence

from .errors import FactsError, _quote_list
from .languages import check_languages
from .records import Fact

__all__ = ["common_languages", "select_facts"]


def common_languages(facts: Sequence[Fact], *, causal: bool = True) -> list[str]:
    """Languages in which every fact has at least one usable query, in first-seen order."""
    order: list[str] = []
    for fact in facts:
        for lang in fact.languages:
            if lang not in order:
                order.append(lang)
    return [lang for lang in order if all(_usable(f, lang, causal) for f in facts)]


def _usable(fact: Fact, lang: str, causal: bool) -> bool:
    return lang in fact.templates and bool(fact.queries(lang, causal=causal))


def select_facts(
    facts: Sequence[Fact],
    *,
    languages: Sequence[str] | None = None,
    n_facts: int | None = None,
    fact_ids: Sequence[str] | None = None,
    causal: bool = True,
    drop_incomplete: bool = False,
) -> tuple[list[Fact], list[str]]:
    """Pick the facts and languages of a run, validating the request before any computation.

    With ``languages=None`` the languages every chosen fact can be queried in are used. A fact
    without usable queries in a requested language is an error unless ``drop_incomplete``.
    """
    if not facts:
        raise FactsError("no facts given")
    chosen = list(facts)
    if fact_ids is not None:
        by_id = {f.fact_id: f for f in facts}
        missing = [i for i in fact_ids if i not in by_id]
        if missing:
            raise FactsError(f"unknown fact id(s): {_quote_list(missing)}")
        chosen = [by_id[i] for i in fact_ids]
    if languages is not None:
        languages = check_languages(languages)
        incomplete = [(f.fact_id, lang) for f in chosen for lang in languages if not _usable(f, lang, causal)]
        if incomplete and not drop_incomplete:
            shown = ", ".join(f"{fid} ({lang})" for fid, lang in incomplete[:8])
            more = f" and {len(incomplete) - 8} more" if len(incomplete) > 8 else ""
            kind = "causal " if causal else ""
            raise FactsError(
                f"{len(incomplete)} fact/language pair(s) have no usable {kind}queries: {shown}{more}; "
                "choose other languages or drop those facts (drop_incomplete=True, CLI --drop-incomplete)"
            )
        bad = {fid for fid, _ in incomplete}
        chosen = [f for f in chosen if f.fact_id not in bad]
    if n_facts is not None:
        if n_facts < 1:
            raise FactsError(f"the number of facts must be at least 1, got {n_facts}")
        if n_facts > len(chosen):
            raise FactsError(f"asked for {n_facts} facts but the data holds only {len(chosen)} usable facts")
        chosen = chosen[:n_facts]
    if not chosen:
        raise FactsError("no fact is usable in the requested languages")
    if languages is None:
        languages = common_languages(chosen, causal=causal)
        if not languages:
            raise FactsError("the chosen facts share no language with usable queries")
    return chosen, list(languages)
