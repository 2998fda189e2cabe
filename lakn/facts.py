"""Facts and their paraphrased cloze queries in many languages: records, loaders, validation.

A fact is (subject, relation, answer) with, per language, the answer's surface form and several
paraphrased cloze queries whose answer slot is marked ``[Y]`` exactly once. One JSON object per
fact, in the format of the RML-LAMA-like development data (``causal_ok`` optional)::

    {"fact_id": "capital_france", "relation": "capital",
     "object": {"en": "Paris", "zh": "巴黎"},
     "queries": {"en": ["The capital of France is [Y]"], "zh": ["法国的首都是[Y]"]}}

``load_facts("demo")`` loads the small demo set the package ships (written by the lakn authors).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Sequence

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


class FactsError(ValueError):
    """Bad fact data or a bad request about it; the message names the fact, language and problem."""


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
    def from_dict(cls, record: dict, where: str = "") -> "Fact":
        """Build and validate a fact from one JSON record (``where`` locates it in errors)."""
        at = f" ({where})" if where else ""
        if not isinstance(record, dict):
            raise FactsError(f"expected a JSON object per fact{at}, got {type(record).__name__}")
        fact_id = str(record.get("fact_id") or record.get("id") or "").strip()
        if not fact_id:
            raise FactsError(f"a fact has no 'fact_id'{at}")
        answers = record.get("object", record.get("answers"))
        queries = record.get("queries")
        for key, value in (("object", answers), ("queries", queries)):
            if not isinstance(value, dict) or not value:
                raise FactsError(f"fact {fact_id!r}{at}: '{key}' must be a non-empty object keyed by language")
        templates: dict[str, tuple[str, ...]] = {}
        for lang, texts in queries.items():
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list):
                raise FactsError(f"fact {fact_id!r}{at}: queries[{lang!r}] must be a list of strings")
            for text in texts:
                n = str(text).count(SLOT)
                if n != 1:
                    what = "has no answer slot [Y]" if n == 0 else f"has {n} answer slots [Y] (needs exactly one)"
                    raise FactsError(f"fact {fact_id!r}{at}, language {lang!r}: query {text!r} {what}")
            templates[lang] = tuple(str(t) for t in texts)
        unknown = sorted(set(templates) - set(LANGUAGES))
        if unknown:
            raise FactsError(
                f"fact {fact_id!r}{at}: unknown language code(s) {unknown}; supported: {', '.join(sorted(LANGUAGES))}"
            )
        for lang in templates:
            if not str(answers.get(lang, "")).strip():
                raise FactsError(f"fact {fact_id!r}{at}: queries in {lang!r} but no answer ('object') in {lang!r}")
        causal_ok = record.get("causal_ok")
        if causal_ok is not None:
            causal_ok = {lang: tuple(int(i) for i in idx) for lang, idx in causal_ok.items()}
        others = record.get("other_gold_objects") or {}
        return cls(
            fact_id=fact_id,
            relation=str(record.get("relation", "")),
            answers={lang: str(a).strip() for lang, a in answers.items()},
            templates=templates,
            subjects={k: str(v) for k, v in (record.get("subject") or {}).items()},
            relation_label=str(record.get("relation_label", "")),
            other_answers={k: tuple(v) for k, v in others.items()} if isinstance(others, dict) else {},
            causal_ok=causal_ok,
        )


def load_facts(source: str | Path = "demo") -> list[Fact]:
    """Load facts from ``"demo"`` (the shipped set), a ``.jsonl`` file or a ``.json`` list.

    Example: ``facts = lakn.load_facts("demo")``. Errors name the file and line.
    """
    if str(source) == "demo":
        path = Path(str(files("lakn").joinpath("data", "demo.jsonl")))
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise FactsError(f"facts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise FactsError(f"facts file {path} is empty")
    records: list[tuple[dict, str]] = []
    stripped = text.lstrip()
    if path.suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise FactsError(f"malformed JSON in {path} at line {err.lineno}, column {err.colno}: {err.msg}") from err
        if isinstance(data, dict):
            data = data.get("facts", [data])
        records = [(r, f"{path.name}, fact #{i + 1}") for i, r in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((json.loads(line), f"{path.name}, line {lineno}"))
            except json.JSONDecodeError as err:
                raise FactsError(f"malformed JSON in {path} at line {lineno}, column {err.colno}: {err.msg}") from err
    if not records:
        raise FactsError(f"facts file {path} holds no facts")
    facts = [Fact.from_dict(r, where) for r, where in records]
    seen: set[str] = set()
    for fact in facts:
        if fact.fact_id in seen:
            raise FactsError(f"fact id {fact.fact_id!r} appears twice in {path}")
        seen.add(fact.fact_id)
    return facts


def check_languages(languages: Iterable[str]) -> list[str]:
    """Validate language codes against :data:`LANGUAGES`; returns them as a list."""
    languages = [str(lang).strip() for lang in languages]
    if not languages:
        raise FactsError("no languages requested")
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise FactsError(
            f"unknown or unsupported language code(s): {unknown}; supported: {', '.join(sorted(LANGUAGES))}"
        )
    return languages


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
            raise FactsError(f"unknown fact id(s): {missing}")
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
