"""Build an RML-LAMA-style benchmark from a local checkout of mParaRel.

RML-LAMA (Cao et al. 2024) has no public release. Its ingredients are public: mParaRel (Fierro &
Søgaard 2022) carries mLAMA's triples with Wikidata labels in 46 languages and machine-translated,
partly reviewed paraphrases of ParaRel's templates. :func:`build_rml` turns such a checkout into
facts in lakn's format (what :func:`lakn.load_facts` reads) plus a datasheet. The sources are
non-commercial (CC BY-NC-SA 4.0), so lakn ships this builder, not the data::

    report = lakn.build_rml("~/src/mpararel", "data/rml", languages=["en", "fr", "zh", "ru"],
                                min_paraphrases=2, per_relation_cap=50, seed=0)
    facts = lakn.load_facts(report.facts_path)      # data/rml/facts.jsonl (+ DATASHEET.md)

Input layout (``src`` is the checkout, its ``data/mpararel_reviewed`` folder, or any folder that
holds ``patterns/`` and ``tuples/``)::

    patterns/LANG/RELATION.jsonl   {"pattern": "[X] is located in [Y]", "checked-by-human": false}
    tuples/LANG/RELATION.jsonl     {"sub_uri": "Q90", "obj_uri": "Q142", "sub_label": "Paris",
                                    "obj_label": "France", "lineid": 7}

What the builder does, per relation:

- **Languages.** Requested codes are lakn codes (:data:`lakn.facts.LANGUAGES`) or mParaRel folder
  names. ``zh`` (or ``zh-hans``) reads the folder ``zh-hans`` (simplified script). ``zh-hant``
  (traditional script) is used only when asked for by that name, and is then written as lakn's
  ``zh`` (so ``zh`` and ``zh-hant`` cannot both be asked for). A code lakn does not know (e.g.
  mParaRel's Icelandic ``is``) is an error: add it to ``lakn.facts.LANGUAGES`` first; nothing is
  extended silently. ``languages="all"`` takes every folder with a lakn code (zh-hans as zh) and
  lists the folders it left out in the datasheet.
- **Templates.** Whitespace is normalised; a template needs exactly one ``[X]`` and one ``[Y]``;
  empty templates (nothing but slots, spaces and punctuation) and duplicates (the same text up to
  spaces and Unicode compatibility forms: ``,`` and ``，``) are dropped, the first kept. The
  subject label is filled into ``[X]``, ``[Y]`` stays. ``causal_ok`` lists the templates a causal
  LM can use, decided by :meth:`lakn.facts.Fact.queries` (slot last, closing punctuation aside).
- **Facts.** One per (relation, subject): ``fact_id`` is ``RELATION_SUBJECTURI`` (``P17_Q90``;
  characters outside ``[A-Za-z0-9_.-]`` become ``_``). When the tuples give a subject several
  objects, the one on the earliest line (mParaRel's ``lineid``) is the answer and the others go to
  ``other_gold_objects`` (labels per language) and ``other_gold_obj_uris``.
- **Filters.** A language counts for a fact when it has a subject and object label and at least
  ``min_paraphrases`` queries (causal ones only, with ``causal=True``); a fact is kept with at least
  ``min_languages`` such languages (default: all requested) and every ``required_languages``.
  ``per_relation_cap`` then samples that many facts per relation with ``seed`` (same seed, same
  output, whatever other relations are built).
- **Bad input.** A line that is not a JSON object with the expected fields raises
  :class:`RMLError` naming file and line (``on_malformed="raise"``, default) or is skipped and
  counted (``"skip"``). Everything else that is dropped (bad slots, empty or duplicate templates,
  empty labels, too few queries or languages, the cap) is counted by reason, with example
  locations, in the returned :class:`BuildReport` and the datasheet. Nothing is dropped silently.
"""

from .building import build_rml
from .datasheet import LICENSE_NOTE, SOURCES, BuildReport
from .reading import FOLDER_CODES, RELATIONS, RMLError, is_causal, mpararel_languages, resolve_languages

__all__ = ["build_rml", "BuildReport", "is_causal", "RMLError", "mpararel_languages", "resolve_languages",
           "FOLDER_CODES", "RELATIONS", "SOURCES", "LICENSE_NOTE"]
