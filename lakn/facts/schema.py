"""The record schema: one JSON object per fact, checked field by field (errors name the place, fact and field).

:func:`read_record` turns a record into the keyword arguments of :class:`lakn.facts.Fact`; the
schema itself is described in :mod:`lakn.facts`.
"""

from __future__ import annotations

from typing import Any

from .errors import FactsError, _got, _kind, _quote, _short_key
from .ids import FACT_ID_PATTERN, FACT_ID_RULE
from .languages import LANGUAGES

__all__ = ["SLOT", "MAX_QUERY_CHARS", "MAX_QUERIES_PER_LANGUAGE", "MAX_LABEL_CHARS", "read_record"]

SLOT = "[Y]"
# Caps checked at load, before any model work (the model's context window is checked later, where
# queries are tokenised: check_context_length). Generous for real data: RML-LAMA's longest
# template has ~100 characters, its most paraphrases per language 32.
MAX_QUERY_CHARS = 2000
MAX_QUERIES_PER_LANGUAGE = 1000
MAX_LABEL_CHARS = 500


def read_record(record: Any, where: str = "", max_query_chars: int | None = MAX_QUERY_CHARS) -> dict[str, Any]:
    """Check one record; returns the fields of a :class:`~lakn.facts.Fact` (raises :class:`FactsError`)."""
    return _RecordReader(where, max_query_chars).read(record)


class _RecordReader:
    """Checks one record; every error names where it is, the fact and the field."""

    def __init__(self, where: str, max_query_chars: int | None):
        self.where = where
        self.max_query_chars = max_query_chars
        self.fact_id: str | None = None

    def fail(self, field_name: str | None, problem: str) -> FactsError:
        parts = [self.where] if self.where else []
        head = f"fact {_quote(self.fact_id)}" if self.fact_id is not None else "a fact"
        if field_name:
            head += f", field {field_name}"
        parts.append(f"{head}: {problem}")
        return FactsError(": ".join(parts))

    def text(self, value: Any, name: str, *, limit: int | None, blank_ok: bool = True) -> str:
        """A string field: type, length, blank, valid Unicode."""
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, {_got(value)}")
        if limit is not None and len(value) > limit:
            raise self.fail(name, f"is {len(value):,} characters long, more than the limit of {limit:,}: "
                                  f"{_quote(value)}")
        if not blank_ok and not value.strip():
            raise self.fail(name, f"must be a non-empty string, got {'an empty string' if not value else 'only whitespace'} "
                                  f"{_quote(value)}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise self.fail(name, f"holds an unpaired surrogate {_quote(value[err.start])} at character {err.start} "
                                  f"(not valid Unicode): {_quote(value)}") from None
        return value

    def mapping(self, value: Any, name: str, what: str, example: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(name, f"must be an object keyed by language with {what} (e.g. {example}), {_got(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(name, f"language keys must be strings, got {_kind(key)} {_quote(key)}")
        return value

    def read(self, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise self.fail(None, f"expected a JSON object per fact, {_got(record)}")
        fact_id = self.read_id(record)
        templates = self.read_queries(record.get("queries"))
        answers = self.read_answers(record, templates)
        return dict(
            fact_id=fact_id,
            relation=self.optional_text(record, "relation"),
            answers=answers,
            templates=templates,
            subjects=self.read_subjects(record.get("subject")),
            relation_label=self.optional_text(record, "relation_label"),
            other_answers=self.read_others(record.get("other_gold_objects")),
            causal_ok=self.read_causal_ok(record.get("causal_ok"), templates),
        )

    def read_id(self, record: dict) -> str:
        key = "fact_id" if record.get("fact_id") is not None else "id"
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise self.fail(None, "has no 'fact_id'")
        if not isinstance(value, str):
            raise self.fail(f"'{key}'", f"must be a string, {_got(value)}")
        self.fact_id = value = value.strip()
        if not (FACT_ID_PATTERN.fullmatch(value) and ".." not in value):
            raise self.fail(f"'{key}'", f"not an allowed fact id: {FACT_ID_RULE}")
        return value

    def read_queries(self, queries: Any) -> dict[str, tuple[str, ...]]:
        if not isinstance(queries, dict) or not queries:
            raise self.fail("'queries'", "must be a non-empty object keyed by language "
                                         f"(e.g. {{\"en\": [\"The capital of France is [Y]\"]}}), {_got(queries)}")
        self.mapping(queries, "'queries'", "lists of templates", '{"en": ["... [Y]"]}')
        unknown = [lang for lang in queries if lang not in LANGUAGES]
        if unknown:
            shown = ", ".join(_quote(lang, 20) for lang in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise self.fail("'queries'", f"unknown language code(s) [{shown}]; supported: {', '.join(sorted(LANGUAGES))}")
        templates: dict[str, tuple[str, ...]] = {}
        for lang, texts in queries.items():
            name = f"'queries.{lang}'"
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list):
                raise self.fail(name, f"must be a list of strings, {_got(texts)}")
            if len(texts) > MAX_QUERIES_PER_LANGUAGE:
                raise self.fail(name, f"has {len(texts):,} queries, more than the limit of {MAX_QUERIES_PER_LANGUAGE:,}")
            for i, text in enumerate(texts):
                self.text(text, f"'queries.{lang}[{i}]'", limit=self.max_query_chars)
                n = text.count(SLOT)
                if n != 1:
                    what = "has no answer slot [Y]" if n == 0 else f"has {n} answer slots [Y] (needs exactly one)"
                    raise self.fail(f"'queries.{lang}[{i}]'", f"language {lang!r}: query {_quote(text)} {what}")
            templates[lang] = tuple(texts)
        return templates

    def read_answers(self, record: dict, templates: dict) -> dict[str, str]:
        key = "object" if "object" in record or "answers" not in record else "answers"
        value = record.get(key)
        if not isinstance(value, dict) or not value:
            raise self.fail(f"'{key}'", "must be a non-empty object keyed by language with one answer each "
                                        f"(e.g. {{\"en\": \"Paris\"}}), {_got(value)}")
        self.mapping(value, f"'{key}'", "one answer each", '{"en": "Paris"}')
        answers: dict[str, str] = {}
        for lang, answer in value.items():
            name = f"'{key}.{_short_key(lang)}'"
            if isinstance(answer, list):
                raise self.fail(name, f"must be one answer (a non-empty string), {_got(answer)}; "
                                      "list alternative answers under 'other_gold_objects'")
            answers[lang] = self.text(answer, name, limit=MAX_LABEL_CHARS, blank_ok=False).strip()
        for lang in templates:
            if lang not in answers:
                raise self.fail(f"'{key}'", f"queries in {lang!r} but no answer ('{key}') in {lang!r}")
        return answers

    def optional_text(self, record: dict, key: str) -> str:
        value = record.get(key)
        return "" if value is None else self.text(value, f"'{key}'", limit=MAX_LABEL_CHARS)

    def read_subjects(self, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        self.mapping(value, "'subject'", "the subject's name in each", '{"en": "France"}')
        return {lang: self.text(v, f"'subject.{_short_key(lang)}'", limit=MAX_LABEL_CHARS) for lang, v in value.items()}

    def read_others(self, value: Any) -> dict[str, tuple[str, ...]]:
        if value is None:
            return {}
        self.mapping(value, "'other_gold_objects'", "lists of alternative answers", '{"en": ["Lutetia"]}')
        out = {}
        for lang, alts in value.items():
            name = f"'other_gold_objects.{_short_key(lang)}'"
            if not isinstance(alts, list):
                raise self.fail(name, f"must be a list of alternative answers, {_got(alts)}")
            if len(alts) > MAX_QUERIES_PER_LANGUAGE:
                raise self.fail(name, f"has {len(alts):,} answers, more than the limit of {MAX_QUERIES_PER_LANGUAGE:,}")
            out[lang] = tuple(self.text(a, f"{name[:-1]}[{i}]'", limit=MAX_LABEL_CHARS, blank_ok=False)
                              for i, a in enumerate(alts))
        return out

    def read_causal_ok(self, value: Any, templates: dict) -> dict[str, tuple[int, ...]] | None:
        if value is None:
            return None
        self.mapping(value, "'causal_ok'", "lists of query indices", '{"en": [0, 2]}')
        out = {}
        for lang, idx in value.items():
            name = f"'causal_ok.{_short_key(lang)}'"
            if lang not in templates:
                raise self.fail(name, f"language {_quote(lang, 20)} has no queries in this fact")
            if not isinstance(idx, list):
                raise self.fail(name, f"must be a list of query indices (integers), {_got(idx)}")
            n = len(templates[lang])
            for j, i in enumerate(idx):
                if not isinstance(i, int) or isinstance(i, bool):
                    raise self.fail(f"{name[:-1]}[{j}]'", f"language {lang!r}: must be a query index (an integer), {_got(i)}")
                if not 0 <= i < n:
                    raise self.fail(f"{name[:-1]}[{j}]'", f"language {lang!r}: query index {i} is out of range "
                                                          f"(the fact has {n} {lang!r} queries, indices 0 to {n - 1})")
            out[lang] = tuple(idx)
        return out

