"""Facts and their paraphrased cloze queries in many languages: records, loaders, validation.

A fact is (subject, relation, answer) with, per language, the answer's surface form and several
paraphrased cloze queries whose answer slot is marked ``[Y]`` exactly once. One JSON object per
fact, in the format of the RML-LAMA-like development data (``causal_ok`` optional)::

    {"fact_id": "capital_france", "relation": "capital",
     "object": {"en": "Paris", "zh": "巴黎"},
     "queries": {"en": ["The capital of France is [Y]"], "zh": ["法国的首都是[Y]"]}}

``load_facts("demo")`` loads the small demo set the package ships (written by the lakn authors);
``load_facts("fictional")`` the made-up facts no model can know.

Record schema, checked when a record is read (an error names the file, line, fact and field):

- ``fact_id`` (or ``id``): a string (an integer is accepted and read as its decimal string) of
  ASCII letters, digits, ``_``, ``.`` and ``-`` that starts with a letter or digit, holds no
  ``..`` and has at most :data:`MAX_FACT_ID_CHARS` (128) characters
  (:data:`FACT_ID_PATTERN`). Run folders name their per-fact files with
  :func:`safe_file_stem`, never with the id itself.
- ``queries``: ``{lang: [template, ...]}`` (a single string stands for a one-item list); every
  language code is in :data:`LANGUAGES`; every template is a string with exactly one ``[Y]``, at
  most :data:`MAX_QUERY_CHARS` (2,000) characters, at most :data:`MAX_QUERIES_PER_LANGUAGE` (1,000)
  templates per language. Languages per fact are bounded by :data:`LANGUAGES` (55 codes).
- ``object`` (or ``answers``): ``{lang: answer}``, each answer a non-blank string (one answer per
  language; alternatives go to ``other_gold_objects``); every language with queries has one.
- ``subject``: ``{lang: name}``; ``other_gold_objects``: ``{lang: [answer, ...]}``;
  ``relation`` and ``relation_label``: strings. Optional; ``null`` counts as absent.
- ``causal_ok``: ``{lang: [index, ...]}``, integer positions into ``queries[lang]``.
- Answers, subjects, alternatives and relation names have at most :data:`MAX_LABEL_CHARS` (500)
  characters; no string may hold an unpaired UTF-16 surrogate.
- Other keys (e.g. RML-LAMA's ``sub_uri``, ``obj_uri``, ``languages``, ``relation_type``) are
  allowed and ignored.

Files are UTF-8 (a byte-order mark is skipped); a file that is not names the byte offset and line
of the first bad byte. Error messages quote at most about 100 characters of any value. The one
limit that needs a model, a prompt longer than its context window, is checked where queries are
tokenised, with :func:`check_context_length`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import reprlib
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "Fact",
    "Query",
    "LANGUAGES",
    "FactsError",
    "load_facts",
    "check_languages",
    "common_languages",
    "select_facts",
    "SLOT",
    "FACT_ID_PATTERN",
    "FACT_ID_RULE",
    "MAX_FACT_ID_CHARS",
    "MAX_QUERY_CHARS",
    "MAX_QUERIES_PER_LANGUAGE",
    "MAX_LABEL_CHARS",
    "check_fact_id",
    "safe_file_stem",
    "check_context_length",
]

SLOT = "[Y]"
# Supported language codes (ISO 639-1) with their name and main script. The list is what lakn
# validates against; add a code here to use a new language.
LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("Afrikaans", "Latin"), "ar": ("Arabic", "Arabic"), "az": ("Azerbaijani", "Latin"),
    "be": ("Belarusian", "Cyrillic"), "bg": ("Bulgarian", "Cyrillic"), "bn": ("Bengali", "Bengali"),
    "ca": ("Catalan", "Latin"), "cs": ("Czech", "Latin"), "cy": ("Welsh", "Latin"),
    "da": ("Danish", "Latin"), "de": ("German", "Latin"), "el": ("Greek", "Greek"),
    "en": ("English", "Latin"), "es": ("Spanish", "Latin"), "et": ("Estonian", "Latin"),
    "eu": ("Basque", "Latin"), "fa": ("Persian", "Arabic"), "fi": ("Finnish", "Latin"),
    "fr": ("French", "Latin"), "ga": ("Irish", "Latin"), "gl": ("Galician", "Latin"),
    "he": ("Hebrew", "Hebrew"), "hi": ("Hindi", "Devanagari"), "hr": ("Croatian", "Latin"),
    "hu": ("Hungarian", "Latin"), "hy": ("Armenian", "Armenian"), "id": ("Indonesian", "Latin"),
    "it": ("Italian", "Latin"), "ja": ("Japanese", "Kana/Han"), "ka": ("Georgian", "Georgian"),
    "kk": ("Kazakh", "Cyrillic"), "ko": ("Korean", "Hangul"), "lt": ("Lithuanian", "Latin"),
    "lv": ("Latvian", "Latin"), "ms": ("Malay", "Latin"), "nl": ("Dutch", "Latin"),
    "no": ("Norwegian", "Latin"), "pl": ("Polish", "Latin"), "pt": ("Portuguese", "Latin"),
    "ro": ("Romanian", "Latin"), "ru": ("Russian", "Cyrillic"), "sk": ("Slovak", "Latin"),
    "sl": ("Slovenian", "Latin"), "sq": ("Albanian", "Latin"), "sr": ("Serbian", "Cyrillic"),
    "sv": ("Swedish", "Latin"), "sw": ("Swahili", "Latin"), "ta": ("Tamil", "Tamil"),
    "th": ("Thai", "Thai"), "tr": ("Turkish", "Latin"), "uk": ("Ukrainian", "Cyrillic"),
    "ur": ("Urdu", "Arabic"), "vi": ("Vietnamese", "Latin"), "zh": ("Chinese", "Han"),
}
# After the slot a causal query may only have closing punctuation.
_TRAILING_OK = re.compile(r"^[\s.。!！?？,，;；:：\"'”’»」』)）]*$")


MAX_FACT_ID_CHARS = 128
# ASCII only, no path separators, no leading dot or dash: an id is safe to print and to grep; run
# folders still derive file names with safe_file_stem (defence in depth, case-insensitive disks).
FACT_ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_FACT_ID_CHARS - 1}}}")
FACT_ID_RULE = (
    "a fact id uses only ASCII letters, digits, '_', '.' and '-', starts with a letter or digit, "
    f"holds no '..' and has at most {MAX_FACT_ID_CHARS} characters"
)
# Caps checked at load, before any model work (the model's context window is checked later, where
# queries are tokenised: check_context_length). Generous for real data: RML-LAMA's longest
# template has ~100 characters, its most paraphrases per language 32.
MAX_QUERY_CHARS = 2000
MAX_QUERIES_PER_LANGUAGE = 1000
MAX_LABEL_CHARS = 500
_QUOTE_CHARS = 100
_STEM_CHARS = 64
_HASH_CHARS = 16  # 64 bits of SHA-256: distinct ids give distinct stems (collision odds ~n^2 / 2^65)
_DEMO_SETS = {"demo": "demo.jsonl", "fictional": "fictional.jsonl"}


class FactsError(ValueError):
    """Bad fact data or a bad request about it; the message names the file, line, fact and field."""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _QUOTE_CHARS
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 5
_REPR.maxlevel = 3


def _quote(value: Any, limit: int = _QUOTE_CHARS) -> str:
    """``repr(value)`` cut to about ``limit`` characters, one line (a 50 MB string costs nothing)."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        try:
            text = _REPR.repr(value)
        except Exception:  # noqa: BLE001 - a foreign object with a broken __repr__: its type is enough
            text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: max(limit - 3, 1)] + "..."
    if isinstance(value, str) and len(value) > limit:
        text += f" ({len(value):,} characters)"
    return text


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for 'must be X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _got(value: Any) -> str:
    return f"got {_kind(value)}" + ("" if value is None else f" {_quote(value)}")


def check_fact_id(fact_id: Any, where: str = "") -> str:
    """Return ``fact_id`` if it follows :data:`FACT_ID_RULE`, else raise :class:`FactsError`.

    Example: ``check_fact_id("P106_11")`` returns it; ``check_fact_id("../../evil")`` raises.
    """
    at = f"{where}: " if where else ""
    if not isinstance(fact_id, str):
        raise FactsError(f"{at}field 'fact_id' must be a string, {_got(fact_id)}")
    if not (FACT_ID_PATTERN.fullmatch(fact_id) and ".." not in fact_id):
        raise FactsError(f"{at}fact id {_quote(fact_id)} (field 'fact_id') is not allowed: {FACT_ID_RULE}")
    return fact_id


def safe_file_stem(fact_id: str) -> str:
    """A file name (without suffix) for a fact's files in a run folder; no id can leave the folder.

    The id with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_`` (runs of dots too,
    leading dots and dashes dropped, at most 64 characters), then ``-`` and the first 16 hex digits
    of the SHA-256 of the exact id. Stable across runs and machines; distinct ids give distinct
    stems, also on case-insensitive file systems. Works for any non-empty string, so facts built in
    code without the loader's check are safe too.

    Example: ``safe_file_stem("capital_france")`` -> ``"capital_france-<16 hex digits>"``.
    """
    if not isinstance(fact_id, str) or not fact_id:
        raise FactsError(f"a fact id must be a non-empty string, {_got(fact_id)}")
    readable = re.sub(r"[^A-Za-z0-9_.\-]", "_", fact_id[: _STEM_CHARS * 4])
    readable = re.sub(r"\.{2,}", "_", readable).lstrip(".-")[:_STEM_CHARS] or "fact"
    digest = hashlib.sha256(fact_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"{readable}-{digest}"


@dataclass(frozen=True)
class Query:
    """One cloze query: the text before the slot (the prompt) and the answer that fills it.

    ``separator`` is the whitespace the template had before ``[Y]`` (" " in English, "" in
    Chinese), so the answer is scored as the continuation ``separator + answer``.
    """

    template: str
    prompt: str
    answer: str
    separator: str
    language: str

    @property
    def continuation(self) -> str:
        return self.separator + self.answer


@dataclass(frozen=True)
class Fact:
    """A fact with per-language answers and paraphrased cloze templates (``[Y]`` marks the slot)."""

    fact_id: str
    relation: str
    answers: dict[str, str]
    templates: dict[str, tuple[str, ...]]
    subjects: dict[str, str] = field(default_factory=dict)
    relation_label: str = ""
    other_answers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    causal_ok: dict[str, tuple[int, ...]] | None = None

    @property
    def languages(self) -> list[str]:
        return [lang for lang in self.templates if self.templates[lang]]

    def queries(self, language: str, *, causal: bool = True) -> list[Query]:
        """The usable queries of one language.

        For a causal LM the slot must come last (closing punctuation aside): queries listed in
        ``causal_ok`` when the data gives it, else those whose slot is last. A masked LM can use
        every query.
        """
        if language not in self.templates:
            raise FactsError(f"fact {self.fact_id!r} has no queries in language {language!r}")
        answer = self.answers.get(language)
        if not answer or not answer.strip():
            raise FactsError(f"fact {self.fact_id!r} has no answer in language {language!r}")
        out = []
        for i, template in enumerate(self.templates[language]):
            before, after = template.split(SLOT)
            if causal:
                if self.causal_ok is not None and i not in self.causal_ok.get(language, ()):
                    continue
                if not _TRAILING_OK.match(after):
                    continue
            prompt = before.rstrip()
            separator = " " if before != prompt else ""
            out.append(Query(template, prompt, answer, separator, language))
        return out

    @classmethod
    def from_dict(cls, record: dict, where: str = "", *, max_query_chars: int | None = MAX_QUERY_CHARS) -> "Fact":
        """Build and validate a fact from one JSON record (``where`` locates it in errors).

        Every field is type-checked (see the module docstring); ``max_query_chars=None`` lifts the
        cap on template length. Raises :class:`FactsError` naming ``where``, the fact and the field.
        """
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

    def read(self, record: Any) -> Fact:
        if not isinstance(record, dict):
            raise self.fail(None, f"expected a JSON object per fact, {_got(record)}")
        self.read_id(record)
        templates = self.read_queries(record.get("queries"))
        answers = self.read_answers(record, templates)
        return Fact(
            fact_id=self.fact_id,
            relation=self.optional_text(record, "relation"),
            answers=answers,
            templates=templates,
            subjects=self.read_subjects(record.get("subject")),
            relation_label=self.optional_text(record, "relation_label"),
            other_answers=self.read_others(record.get("other_gold_objects")),
            causal_ok=self.read_causal_ok(record.get("causal_ok"), templates),
        )

    def read_id(self, record: dict) -> None:
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
        answers = {}
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


def _short_key(key: str) -> str:
    return key if len(key) <= 20 and key.isprintable() and "'" not in key else _quote(key, 20)


def check_context_length(query: Query, n_tokens: int, n_ctx: int | None, *, fact_id: str | None = None) -> None:
    """Raise :class:`FactsError` when a tokenised query does not fit the model's context window.

    ``n_tokens`` is the length of the token sequence the model will be run on for this query
    (prompt with BOS plus answer tokens); ``n_ctx`` is ``model.cfg.n_ctx`` (``None``: no limit).
    Call it where queries are tokenised, before any attribution, so a long prompt is a one-line
    error and not an out-of-memory crash. Example: ``check_context_length(q, len(ids), model.cfg.n_ctx,
    fact_id=fact.fact_id)``.
    """
    if n_ctx is not None and n_tokens > n_ctx:
        who = f"fact {_quote(fact_id)}, " if fact_id is not None else ""
        raise FactsError(
            f"{who}language {query.language!r}: query {_quote(query.template)} is {n_tokens:,} tokens with its "
            f"answer, more than the model's context window of {n_ctx:,} tokens; shorten or drop the query"
        )


def load_facts(source: str | Path = "demo", *, max_query_chars: int | None = MAX_QUERY_CHARS) -> list[Fact]:
    """Load facts from ``"demo"`` / ``"fictional"`` (shipped sets), a ``.jsonl`` file or a ``.json`` list.

    Example: ``facts = lakn.load_facts("demo")``. Every record is checked against the schema of the
    module docstring; errors name the file, line, fact and field. ``max_query_chars`` caps a
    template's length (default :data:`MAX_QUERY_CHARS`; ``None`` lifts the cap).
    """
    if isinstance(source, str) and source in _DEMO_SETS:
        path = Path(str(files("lakn").joinpath("data", _DEMO_SETS[source])))
    else:
        path = Path(source).expanduser()
    text = _read_text(path)
    if not text.strip():
        raise FactsError(f"facts file {path} is empty")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        records = _json_records(text, path)
    else:
        records = _jsonl_records(text, path)
    if not records:
        raise FactsError(f"facts file {path} holds no facts")
    facts = [Fact.from_dict(r, f"{path}, {place}", max_query_chars=max_query_chars) for r, place in records]
    seen: dict[str, str] = {}
    for fact, (_, place) in zip(facts, records):
        if fact.fact_id in seen:
            raise FactsError(f"{path}: fact id {fact.fact_id!r} appears twice: at {seen[fact.fact_id]} and at {place}")
        seen[fact.fact_id] = place
    return facts


def _read_text(path: Path) -> str:
    if not path.exists():
        raise FactsError(f"facts file not found: {path}")
    if path.is_dir():
        raise FactsError(f"facts file {path} is a folder; expected a .jsonl or .json file")
    if not path.is_file():
        raise FactsError(f"facts file {path} is not a regular file; expected a .jsonl or .json file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FactsError(f"cannot read facts file {path}: {err.strerror or err}") from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        raise FactsError(
            f"facts file {path} is not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset:,} "
            f"(line {line}, byte {column} of the line); save it as UTF-8"
        ) from None


def _json_error(path: Path, err: Exception, line: int | None = None) -> FactsError:
    if isinstance(err, json.JSONDecodeError):
        return FactsError(f"malformed JSON in {path} at line {line or err.lineno}, column {err.colno}: {err.msg}")
    if isinstance(err, RecursionError):
        return FactsError(f"malformed JSON in {path}" + (f" at line {line}" if line else "") + ": nested too deeply")
    return FactsError(f"malformed JSON in {path}" + (f" at line {line}" if line else "") + f": {_quote(str(err))}")


def _jsonl_records(text: str, path: Path) -> list[tuple[Any, str]]:
    records = []
    # split on "\n" only: str.splitlines also breaks at U+2028 and other characters JSON strings may hold
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((json.loads(line), f"line {lineno}"))
        except json.JSONDecodeError as err:
            raise _json_error(path, err, lineno) from None
        except (ValueError, RecursionError) as err:
            raise _json_error(path, err, lineno) from None
    return records


_JSON_WS = re.compile(r"[ \t\n\r]*")


def _json_records(text: str, path: Path) -> list[tuple[Any, str]]:
    """The records of a ``.json`` file: a list (each located by its line) or ``{"facts": [...]}``."""
    try:
        i = _JSON_WS.match(text).end()
        if not text.startswith("[", i):
            data = json.loads(text)
            if isinstance(data, dict) and "facts" in data:
                data = data["facts"]
                if not isinstance(data, list):
                    raise FactsError(f"{path}: field 'facts' must be a list of facts, {_got(data)}")
                return [(r, f"fact #{k + 1}") for k, r in enumerate(data)]
            return [(data, "fact #1")]
        # decode element by element, so each record's error can name its line
        decoder = json.JSONDecoder()
        records: list[tuple[Any, str]] = []
        line, pos = 1, 0
        i = _JSON_WS.match(text, i + 1).end()
        if text.startswith("]", i):
            i += 1
        else:
            while True:
                line, pos = line + text.count("\n", pos, i), i
                record, i = decoder.raw_decode(text, i)
                records.append((record, f"line {line} (fact #{len(records) + 1})"))
                i = _JSON_WS.match(text, i).end()
                if text.startswith(",", i):
                    i = _JSON_WS.match(text, i + 1).end()
                elif text.startswith("]", i):
                    i += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _JSON_WS.match(text, i).end()
        if i != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
        return records
    except (ValueError, RecursionError) as err:
        if isinstance(err, FactsError):
            raise
        raise _json_error(path, err) from None


def check_languages(languages: Iterable[str]) -> list[str]:
    """Validate language codes against :data:`LANGUAGES`; returns them as a list."""
    languages = [str(lang).strip() for lang in languages]
    if not languages:
        raise FactsError("no languages requested")
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise FactsError(
            f"unknown or unsupported language code(s): {_quote_list(unknown)}; supported: {', '.join(sorted(LANGUAGES))}"
        )
    return languages


def _quote_list(values: Sequence[Any], shown: int = 8) -> str:
    """``[v1, v2, ...]`` with each value quoted short and at most ``shown`` of them."""
    more = f", ... ({len(values) - shown} more)" if len(values) > shown else ""
    return "[" + ", ".join(_quote(v, 40) for v in values[:shown]) + more + "]"


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
