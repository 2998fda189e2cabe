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
tokenised, with :func:`check_context_length` (:func:`lakn.localize` calls it before any attribution).

The package's modules, each one idea: :mod:`~lakn.facts.errors` (:class:`FactsError`, short
quoting), :mod:`~lakn.facts.languages`, :mod:`~lakn.facts.ids` (the safe-id rule, run-folder file
names), :mod:`~lakn.facts.schema` (the record checks), :mod:`~lakn.facts.records` (:class:`Fact`,
:class:`Query`, :func:`fact_sha256`), :mod:`~lakn.facts.loading` (files) and
:mod:`~lakn.facts.select` (the facts and languages of a run). Every public name is importable
from ``lakn.facts``.
"""

from __future__ import annotations

from .errors import FactsError, _quote  # noqa: F401 - _quote: re-exported for tests
from .ids import FACT_ID_PATTERN, FACT_ID_RULE, MAX_FACT_ID_CHARS, check_fact_id, safe_file_stem
from .languages import LANGUAGES, check_languages
from .loading import DEMO_SETS, data_path, data_sha256, load_facts
from .records import Fact, Query, check_context_length, fact_sha256
from .schema import MAX_LABEL_CHARS, MAX_QUERIES_PER_LANGUAGE, MAX_QUERY_CHARS, SLOT
from .select import common_languages, select_facts

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
    "fact_sha256",
    "data_path",
    "data_sha256",
    "DEMO_SETS",
]

