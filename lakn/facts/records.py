"""Facts and cloze queries as records: :class:`Fact`, :class:`Query`, a fact's content hash, the context check."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from .errors import FactsError, _quote
from .schema import MAX_QUERY_CHARS, SLOT, read_record

__all__ = ["Query", "Fact", "fact_sha256", "check_context_length"]

# After the slot a causal query may only have closing punctuation.
_TRAILING_OK = re.compile(r"^[\s.。!！?？,，;；:：\"'”’»」』)）]*$")


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
        return cls(**read_record(record, where, max_query_chars))


def fact_sha256(fact: Fact) -> str:
    """SHA-256 (hex) of a fact's content: every field, as canonical JSON (sorted keys, UTF-8).

    Equal facts give equal hashes on every machine; a run folder stores it with each fact's files,
    so a resume notices a fact whose record changed (e.g. a new answer) and recomputes it.
    """
    text = json.dumps(asdict(fact), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
