"""Which facts does the model know? Rank and probability of the answer for every query, and a filter.

A small model knows few facts (about a third of the RML-LAMA-like queries on Gemma 3 270M), and
localising or evaluating facts the model does not know measures noise. :func:`select_known`
scores every (fact, language, query) once and returns a :class:`KnownTable`; the table turns into
the facts and queries to keep::

    model = lakn.load_model()
    facts = lakn.load_facts("data/rml/facts.jsonl")
    table = lakn.known.select_known(model, facts, languages=["en", "fr", "zh"], top_k=10)
    table.save("data/rml/known.jsonl")                       # lakn data known DATA --out FILE
    known = table.filter_facts(facts, min_languages=3)      # facts restricted to known queries
    result = lakn.localize(model, known, languages=["en", "fr", "zh"])

A query is *known* when the rank of its answer's first token is below ``top_k`` (rank 0 = the
model's top prediction; ``rule="rank"``, the default), or when the full answer's probability
(teacher forced, geometric mean over its tokens) is at least ``min_prob`` (``rule="prob"``), or
both (``rule="both"``).

**File format** (``.jsonl``, the default): the first line is a header
``{"kind": "KnownTable", "format": 1, "config": {...}}`` (model, data, top_k, languages, causal,
lakn version, counts, queries that could not be encoded), then one JSON object per query with
the columns of :data:`COLUMNS`. ``.csv`` holds the same rows, with the header as a first line
``# lakn KnownTable {json}``. ``query_index`` indexes ``fact.templates[language]`` (the order in
the facts file) and ``query`` repeats the template, so a table applied to other data is refused.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._version import __version__
from .facts import Fact, FactsError, Query, check_languages
from .probability import answer_stats, batch_answer_probability
from .tokens import EncodedQuery, encode_query

__all__ = ["select_known", "KnownTable", "KnownTableError", "COLUMNS", "RULES", "batch_answer_stats", "filter_known"]

FORMAT = 1
RULES = ("rank", "prob", "both")
COLUMNS = {
    "fact_id": "the fact's id",
    "relation": "the fact's relation",
    "language": "language code of the query",
    "query_index": "index of the query in fact.templates[language]",
    "query": "the query template ([Y] marks the answer slot)",
    "answer": "the answer the query is scored against",
    "answer_tokens": "number of answer tokens",
    "first_token": "the answer's first token (decoded)",
    "first_token_rank": "rank of the answer's first token among all tokens at the answer position (0 = top)",
    "first_token_prob": "probability of the answer's first token",
    "answer_prob": "probability of the full answer, teacher forced, geometric mean over its tokens",
    "known": "first_token_rank < top_k (the table's top_k)",
}
_INT_COLUMNS = ("query_index", "answer_tokens", "first_token_rank")
_FLOAT_COLUMNS = ("first_token_prob", "answer_prob")


class KnownTableError(FactsError):
    """A bad known-fact table or a table that does not fit the facts it is applied to."""


# --------------------------------------------------------------------------- batched scoring


def batch_answer_stats(
    model, encoded: Sequence[EncodedQuery], *, batch_size: int = 16, full_answer: bool = True
) -> tuple[Float[Tensor, "query"], Int[Tensor, "query"], Float[Tensor, "query"]]:
    """Probability and rank of each query's first answer token, and the full answer's probability.

    Built on :func:`lakn.probability.batch_answer_probability` (right-padded batches, only the
    positions that predict answer tokens unembedded): one pass over the prompts alone gives the
    first token's probability and rank; with ``full_answer`` a second, teacher-forced pass scores
    the answers of more than one token (a one-token answer's probability is its first token's).
    ``full_answer=False`` sets the answer's probability to the first token's. Masked LMs are scored
    per query with :func:`lakn.probability.answer_stats`. Equal to ``answer_stats`` (``token_probs[0]``,
    ``rank``, ``probability``); a test checks it.

    Returns ``(first_token_prob, first_token_rank, answer_prob)``, each of shape ``[query]``.
    """
    n = len(encoded)
    if n == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0)
    if any(e.masked for e in encoded):
        first_p, ranks, full_p = torch.zeros(n), torch.zeros(n, dtype=torch.long), torch.zeros(n)
        for i, e in enumerate(encoded):
            stats = answer_stats(model, e)
            first_p[i], ranks[i] = float(stats.token_probs[0]), stats.rank
            full_p[i] = stats.probability if full_answer else float(stats.token_probs[0])
        return first_p, ranks, full_p
    first_p, ranks = batch_answer_probability(model, encoded, batch_size=batch_size, first_token_only=True)
    full_p = first_p.clone()
    multi = [i for i, e in enumerate(encoded) if len(e.answer) > 1]
    if full_answer and multi:
        full_p[torch.tensor(multi)], _ = batch_answer_probability(model, [encoded[i] for i in multi],
                                                                  batch_size=batch_size)
    return first_p, ranks, full_p


# --------------------------------------------------------------------------- the table


@dataclass
class KnownTable:
    """One row per scored (fact, language, query) (columns: :data:`COLUMNS`) and how it was made.

    ``config`` holds ``model``, ``data``, ``top_k``, ``languages``, ``causal``, ``lakn_version``,
    ``n_facts``, ``n_queries``, ``seconds`` and ``skipped`` (queries that could not be encoded,
    with the reason). ``known`` in each row applies the table's own ``top_k``; the methods below
    take another ``top_k`` or ``min_prob`` to re-threshold without re-running the model.
    """

    rows: list[dict]
    config: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def top_k(self) -> int:
        return int(self.config.get("top_k", 10))

    @property
    def languages(self) -> list[str]:
        return list(dict.fromkeys(r["language"] for r in self.rows))

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(COLUMNS))

    # ----------------------------------------------------------------- which queries are known

    def is_known(self, row: dict, *, rule: str = "rank", top_k: int | None = None, min_prob: float | None = None) -> bool:
        """Whether one row counts as known under ``rule`` (``rank``, ``prob`` or ``both``)."""
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        k = self.top_k if top_k is None else int(top_k)
        by_rank = row["first_token_rank"] < k
        if rule == "rank":
            return by_rank
        if min_prob is None:
            raise ValueError(f"rule {rule!r} needs min_prob (the full answer's probability threshold)")
        by_prob = row["answer_prob"] >= float(min_prob)
        return by_prob if rule == "prob" else (by_rank and by_prob)

    def known_queries(self, **rule) -> set[tuple[str, str, int]]:
        """``{(fact_id, language, query_index)}`` of the known queries (``rule``, ``top_k``, ``min_prob``)."""
        return {(r["fact_id"], r["language"], int(r["query_index"])) for r in self.rows if self.is_known(r, **rule)}

    def known_languages(self, *, min_queries: int = 1, languages: Sequence[str] | None = None,
                        **rule) -> dict[str, list[str]]:
        """``{fact_id: [languages]}``: the languages in which a fact has at least ``min_queries``
        known queries (every fact of the table is a key, possibly with an empty list)."""
        counts: dict[str, dict[str, int]] = {}
        wanted = None if languages is None else set(languages)
        for r in self.rows:
            per = counts.setdefault(r["fact_id"], {})
            if wanted is not None and r["language"] not in wanted:
                continue
            per.setdefault(r["language"], 0)
            per[r["language"]] += int(self.is_known(r, **rule))
        return {fid: [lang for lang, n in per.items() if n >= min_queries] for fid, per in counts.items()}

    def known_fact_ids(self, *, min_languages: int | None = 1, languages: Sequence[str] | None = None,
                       min_queries: int = 1, **rule) -> list[str]:
        """Facts known in at least ``min_languages`` of ``languages`` (default: the table's), each
        with at least ``min_queries`` known queries; ``min_languages=None`` means all of them.
        In table order. ``rule``: ``rule=``, ``top_k=``, ``min_prob=`` as in :meth:`is_known`."""
        langs = list(languages) if languages is not None else self.languages
        need = len(langs) if min_languages is None else int(min_languages)
        if need < 1:
            raise ValueError(f"min_languages must be at least 1, got {need}")
        per = self.known_languages(min_queries=min_queries, languages=langs, **rule)
        return [fid for fid, ls in per.items() if len(ls) >= need]

    def filter_facts(self, facts: Sequence[Fact], *, min_languages: int | None = 1,
                     languages: Sequence[str] | None = None, min_queries: int = 1, restrict_queries: bool = True,
                     **rule) -> list[Fact]:
        """The facts to keep: those of :meth:`known_fact_ids`, in the order given.

        With ``restrict_queries`` (default) each kept fact holds only its known queries, and only
        in the languages where it is known (``causal_ok`` re-indexed); otherwise kept facts are
        returned whole (e.g. to evaluate held-out paraphrases). Facts the table has no rows for
        are dropped. A row whose template differs from the fact's (another data file) is an error.
        """
        keep = set(self.known_fact_ids(min_languages=min_languages, languages=languages,
                                       min_queries=min_queries, **rule))
        by_fact: dict[str, dict[str, list[dict]]] = {}
        for r in self.rows:
            by_fact.setdefault(r["fact_id"], {}).setdefault(r["language"], []).append(r)
        langs_known = self.known_languages(min_queries=min_queries, languages=languages, **rule)
        out = []
        for fact in facts:
            rows = by_fact.get(fact.fact_id)
            if rows is None:
                continue
            for lang, rs in rows.items():
                for r in rs:
                    have = fact.templates.get(lang, ())
                    i = int(r["query_index"])
                    if i >= len(have) or have[i] != r["query"]:
                        raise KnownTableError(
                            f"known table row for fact {fact.fact_id!r} ({lang}, query {i}) is {r['query']!r} but the "
                            f"fact's query there is {have[i] if i < len(have) else None!r}: the table was "
                            f"made from other data ({self.config.get('data') or 'unknown'})"
                        )
            if fact.fact_id not in keep:
                continue
            if not restrict_queries:
                out.append(fact)
                continue
            known = {(r["language"], int(r["query_index"])) for rs in rows.values() for r in rs if self.is_known(r, **rule)}
            templates: dict[str, tuple[str, ...]] = {}
            causal_ok: dict[str, tuple[int, ...]] = {}
            for lang in langs_known[fact.fact_id]:
                idx = sorted(i for (l, i) in known if l == lang)
                templates[lang] = tuple(fact.templates[lang][i] for i in idx)
                if fact.causal_ok is not None:
                    old = set(fact.causal_ok.get(lang, ()))
                    causal_ok[lang] = tuple(j for j, i in enumerate(idx) if i in old)
            out.append(Fact(fact_id=fact.fact_id, relation=fact.relation,
                            answers={l: a for l, a in fact.answers.items() if l in templates},
                            templates=templates, subjects={l: s for l, s in fact.subjects.items() if l in templates},
                            relation_label=fact.relation_label,
                            other_answers={l: a for l, a in fact.other_answers.items() if l in templates},
                            causal_ok=causal_ok if fact.causal_ok is not None else None))
        return out

    def summary(self, **rule):
        """Per language: queries scored, known, share known, facts with a known query, mean P(answer)."""
        import pandas as pd

        rows = []
        for lang in self.languages:
            rs = [r for r in self.rows if r["language"] == lang]
            known = [r for r in rs if self.is_known(r, **rule)]
            rows.append({"language": lang, "queries": len(rs), "known": len(known),
                         "share_known": len(known) / len(rs) if rs else math.nan,
                         "facts": len({r["fact_id"] for r in rs}),
                         "facts_known": len({r["fact_id"] for r in known}),
                         "mean_answer_prob": sum(r["answer_prob"] for r in rs) / len(rs) if rs else math.nan})
        return pd.DataFrame(rows)

    # ----------------------------------------------------------------- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.jsonl`` (header line + one row per line) or ``.csv`` (``# lakn KnownTable {json}`` + CSV)."""
        path = Path(path)
        header = {"kind": "KnownTable", "format": FORMAT, "config": self.config}
        if path.suffix == ".csv":
            buf = io.StringIO()
            buf.write("# lakn KnownTable " + json.dumps(header, ensure_ascii=False) + "\n")
            writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: (repr(r[k]) if isinstance(r[k], float) else r[k]) for k in COLUMNS})
            text = buf.getvalue()
        else:
            text = json.dumps(header, ensure_ascii=False) + "\n" + "".join(
                json.dumps({k: r[k] for k in COLUMNS}, ensure_ascii=False) + "\n" for r in self.rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KnownTable":
        """Read a table written by :meth:`save`; errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise KnownTableError(f"known table not found: {path}")
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines:
            raise KnownTableError(f"known table {path} is empty")
        first = lines[0]
        if first.startswith("# lakn KnownTable "):
            header = _json(first[len("# lakn KnownTable "):], path, 1)
            reader = csv.DictReader(lines[1:])
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise KnownTableError(f"{path}:2: CSV header lacks column(s) {missing}")
            rows = [_typed(r, path, n) for n, r in enumerate(reader, start=3)]
        else:
            header = _json(first, path, 1)
            rows = [_typed(_json(line, path, n), path, n) for n, line in enumerate(lines[1:], start=2) if line.strip()]
        if not isinstance(header, dict) or header.get("kind") != "KnownTable":
            raise KnownTableError(f"{path}:1: not a lakn known table (expected a header with kind 'KnownTable')")
        if int(header.get("format", 0)) > FORMAT:
            raise KnownTableError(f"{path}: format {header.get('format')} is newer than this lakn reads ({FORMAT})")
        return cls(rows=rows, config=header.get("config", {}))


def _json(text: str, path: Path, lineno: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise KnownTableError(f"{path}:{lineno}: malformed JSON (column {err.colno}: {err.msg})") from err


def _typed(row, path: Path, lineno: int) -> dict:
    if not isinstance(row, dict):
        raise KnownTableError(f"{path}:{lineno}: expected a JSON object per row")
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise KnownTableError(f"{path}:{lineno}: row lacks column(s) {missing}")
    try:
        out = {c: row[c] for c in COLUMNS}
        for c in _INT_COLUMNS:
            out[c] = int(out[c])
        for c in _FLOAT_COLUMNS:
            out[c] = float(out[c])
        if isinstance(out["known"], str):
            out["known"] = out["known"].strip().lower() == "true"
        out["known"] = bool(out["known"])
    except (TypeError, ValueError) as err:
        raise KnownTableError(f"{path}:{lineno}: bad value ({err})") from err
    return out


def filter_known(
    facts: Sequence[Fact],
    table: KnownTable | str | os.PathLike,
    *,
    languages: Sequence[str] | None = None,
    min_languages: int | None = 1,
    min_queries: int = 1,
    restrict_queries: bool = True,
    rule: str = "rank",
    top_k: int | None = None,
    min_prob: float | None = None,
) -> list[Fact]:
    """Keep the facts a known-fact table (``lakn data known``) says the model knows.

    Args:
        facts: the facts to filter (the data the table was made from, or a subset of it).
        table: a :class:`KnownTable` or the path of its file (``.jsonl`` or ``.csv``).
        languages: the languages that count (default: the table's).
        min_languages: a fact is kept when it is known in at least this many of ``languages``
            (``None``: in all of them).
        min_queries: known queries a (fact, language) needs to count as known.
        restrict_queries: each kept fact holds only its known queries, in the languages where it
            is known (``causal_ok`` renumbered); ``False`` keeps the kept facts whole.
        rule, top_k, min_prob: when a query is known (:meth:`KnownTable.is_known`): ``"rank"``
            (first answer token ranks below ``top_k``, default the table's), ``"prob"`` (full answer's
            probability at least ``min_prob``) or ``"both"``.

    Returns the kept facts in the order given; facts the table has no rows for are dropped.
    Raises :class:`KnownTableError` when the file is bad or the table was made from other data
    (a row's query differs from the fact's). Example:
    ``facts = filter_known(load_facts("data/rml/facts.jsonl"), "data/rml/known.jsonl")``.
    """
    if not isinstance(table, KnownTable):
        table = KnownTable.load(table)
    return table.filter_facts(facts, languages=languages, min_languages=min_languages, min_queries=min_queries,
                              restrict_queries=restrict_queries, rule=rule, top_k=top_k, min_prob=min_prob)


# --------------------------------------------------------------------------- scoring facts


def _query_indices(fact: Fact, lang: str, causal: bool) -> list[tuple[int, Query]]:
    """(index into fact.templates[lang], Query) of the usable queries, in order."""
    queries = fact.queries(lang, causal=causal)
    out, j = [], 0
    for i, template in enumerate(fact.templates[lang]):
        if j < len(queries) and queries[j].template == template:
            out.append((i, queries[j]))
            j += 1
    return out


def select_known(
    model,
    facts: Sequence[Fact],
    *,
    languages: Sequence[str] | None = None,
    top_k: int = 10,
    max_queries: int | None = None,
    batch_size: int = 16,
    full_answer: bool = True,
    causal: bool | None = None,
    data: str = "",
    progress: bool = False,
) -> KnownTable:
    """Score every (fact, language, query): rank and probability of the answer's first token and
    the full answer's probability, in batches (see :func:`batch_answer_stats`).

    Args:
        languages: languages to score (default: each fact's own); a fact lacking one is skipped there.
        top_k: a query is known when its first answer token ranks below ``top_k`` (the ``known`` column).
        max_queries: at most this many queries per (fact, language), the first ones (default: all).
        full_answer: also score the full answer (teacher forced); ``False`` is faster and sets
            ``answer_prob`` to the first token's probability.
        causal: use only queries whose slot comes last (default: unless the model is a masked LM).
        data: where the facts came from (recorded in the table's config).

    Queries that cannot be encoded (an answer that tokenises to nothing) are listed in
    ``config["skipped"]``, not scored. Example: ``select_known(model, facts, top_k=10).save("known.jsonl")``.
    """
    from .models import is_masked_lm, model_name

    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if languages is not None:
        languages = check_languages(languages)
    if causal is None:
        causal = not is_masked_lm(model)
    t0 = time.perf_counter()
    meta: list[dict] = []
    encoded: list[EncodedQuery] = []
    skipped: list[dict] = []
    for fact in facts:
        for lang in (languages if languages is not None else fact.languages):
            if lang not in fact.templates or not fact.answers.get(lang):
                continue
            for i, query in _query_indices(fact, lang, causal)[:max_queries]:
                try:
                    enc = encode_query(model, query)
                except FactsError as err:
                    skipped.append({"fact_id": fact.fact_id, "language": lang, "query_index": i, "reason": str(err)})
                    continue
                meta.append({"fact_id": fact.fact_id, "relation": fact.relation, "language": lang,
                             "query_index": i, "query": query.template, "answer": query.answer,
                             "answer_tokens": int(len(enc.answer)),
                             "first_token": model.tokenizer.decode(enc.answer[:1])})
                encoded.append(enc)
    step = max(batch_size * 8, 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(encoded), desc="lakn data known", unit="query")
    rows: list[dict] = []
    for start in range(0, len(encoded), step):
        part = encoded[start : start + step]
        first_p, ranks, full_p = batch_answer_stats(model, part, batch_size=batch_size, full_answer=full_answer)
        if bar is not None:
            bar.update(len(part))
        for j in range(len(part)):
            rank = int(ranks[j])
            rows.append({**meta[start + j], "first_token_rank": rank, "first_token_prob": float(first_p[j]),
                         "answer_prob": float(full_p[j]), "known": rank < top_k})
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    config = {
        "model": model_name(model), "data": str(data), "top_k": int(top_k),
        "languages": list(languages) if languages is not None else None, "causal": bool(causal),
        "max_queries": max_queries, "full_answer": bool(full_answer), "batch_size": int(batch_size),
        "n_facts": len({m["fact_id"] for m in meta}), "n_queries": len(rows),
        "n_known": sum(r["known"] for r in rows), "seconds": round(seconds, 3),
        "queries_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
        "skipped": skipped, "lakn_version": __version__,
    }
    return KnownTable(rows=rows, config=config)
