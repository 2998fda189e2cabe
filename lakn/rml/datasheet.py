"""What a build made and dropped (:class:`BuildReport`), and the datasheet written next to the data."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..facts import LANGUAGES

__all__ = ["BuildReport", "SOURCES", "LICENSE_NOTE", "write_atomic"]

SOURCES = """\
- **mParaRel**: Fierro, C. & Søgaard, A. (2022). *Factual Consistency of Multilingual Pretrained
  Language Models.* Findings of ACL 2022. https://github.com/coastalcph/mpararel (templates
  machine-translated from ParaRel, partly reviewed by humans; triples and labels from mLAMA).
- **mLAMA**: Kassner, N., Dufter, P. & Schütze, H. (2021). *Multilingual LAMA: Investigating
  Knowledge in Multilingual Pretrained Language Models.* EACL 2021. (CC BY-NC-SA 4.0)
- **ParaRel**: Elazar, Y. et al. (2021). *Measuring and Improving Consistency in Pretrained
  Language Models.* TACL 9. (MIT)
- **LAMA / T-REx**: Petroni, F. et al. (2019). *Language Models as Knowledge Bases?* EMNLP 2019;
  Elsahar, H. et al. (2018). *T-REx: A Large Scale Alignment of Natural Language with Knowledge
  Base Triples.* LREC 2018.
- **Wikidata**: Vrandečić, D. & Krötzsch, M. (2014). *Wikidata: a free collaborative
  knowledgebase.* CACM 57(10). (labels CC0)
- The benchmark shape follows RML-LAMA: Cao, Y. et al. (2024). *One Mind, Many Tongues: A Deep Dive
  into Language-Agnostic Knowledge Neurons in Large Language Models.* (no public release)
"""

LICENSE_NOTE = """\
The sources are licensed for non-commercial use: mLAMA (triples and labels) is CC BY-NC-SA 4.0,
ParaRel's templates are MIT, Wikidata labels are CC0. Treat this data set as **CC BY-NC-SA 4.0**
(research, non-commercial, share alike, with attribution to the works above). This is why lakn
ships the builder (`lakn.rml.build_rml`, `lakn data build`) and not the data: build it from your
own mParaRel checkout and do not redistribute it under other terms.
"""


@dataclass
class BuildReport:
    """What :func:`build_rml` built and everything it dropped, by reason (also the datasheet's content).

    ``per_language[code]`` holds ``facts``, ``queries``, ``causal_queries``, ``min_queries``,
    ``max_queries`` (queries per fact) and ``facts_with_causal``; ``per_relation[rel]`` holds
    ``label``, ``type``, ``facts`` (kept), ``candidates`` (subjects seen), ``languages_per_fact``.
    ``skipped`` counts dropped items by reason; ``examples`` gives up to 5 locations per reason
    (``file:line`` or fact id and language).
    """

    facts_path: str
    datasheet_path: str
    source: dict
    parameters: dict
    languages: dict[str, str]  # lakn code -> mParaRel folder
    relations: list[str]
    n_facts: int = 0
    per_language: dict[str, dict] = field(default_factory=dict)
    per_relation: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    left_out_folders: list[str] = field(default_factory=list)
    n_queries: int = 0
    n_causal_queries: int = 0
    built_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BuildReport":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [f"{self.n_facts} facts, {len(self.relations)} relations, languages "
                 f"{', '.join(f'{c} ({f})' if c != f else c for c, f in self.languages.items())}; "
                 f"{self.n_queries} queries ({self.n_causal_queries} causal)"]
        if self.skipped:
            lines.append("skipped: " + "; ".join(f"{n} {reason}" for reason, n in self.skipped.items()))
        lines.append(f"written: {self.facts_path}, {self.datasheet_path}")
        return "\n".join(lines)

    def datasheet(self) -> str:
        """The datasheet (Markdown) written next to the data."""
        p = self.parameters
        langs = list(self.languages)
        out = [
            "# RML-LAMA-style facts built from mParaRel",
            "",
            f"Built by `lakn.rml.build_rml` (lakn {p.get('lakn_version', '?')}) on {self.built_at} from "
            f"`{self.source.get('path')}`" + (f" (git commit {self.source['commit']})" if self.source.get("commit")
                                              else " (git commit unknown)") + ".",
            f"File: `{Path(self.facts_path).name}`, one fact per line in lakn's format "
            "(`lakn.load_facts(path)`): fact_id, relation, relation_label, relation_type, sub_uri, obj_uri, "
            "languages, subject, object, queries (subject filled in, `[Y]` is the answer slot), causal_ok "
            "(indices of the queries whose slot comes last, closing punctuation aside), and "
            "other_gold_objects / other_gold_obj_uris where a subject has several objects.",
            "",
            "## Build parameters",
            "",
            "| parameter | value |",
            "| --- | --- |",
        ]
        for k, v in p.items():
            out.append(f"| {k} | {_md(json.dumps(v, ensure_ascii=False))} |")
        out += ["", "Languages (lakn code ← mParaRel folder): "
                + ", ".join(f"{c} ← {f}" for c, f in self.languages.items()) + "."]
        if self.left_out_folders:
            out.append(f"mParaRel folders left out (no lakn language code, or a second script of one): "
                       f"{', '.join(self.left_out_folders)}.")
        out += ["", "## Facts x languages x paraphrases", "",
                f"**{self.n_facts} facts** over {len(self.relations)} relations; {self.n_queries} queries, "
                f"{self.n_causal_queries} of them usable by a causal LM.", "",
                "| language | name | script | facts | queries | queries per fact (min–max) | causal queries "
                "per fact | facts with a causal query |",
                "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |"]
        for code in langs:
            s = self.per_language.get(code, {})
            n = s.get("facts", 0)
            name, script = LANGUAGES.get(code, ("?", "?"))
            mean = s.get("queries", 0) / n if n else 0.0
            cmean = s.get("causal_queries", 0) / n if n else 0.0
            span = f"{mean:.1f} ({s.get('min_queries', 0)}–{s.get('max_queries', 0)})" if n else "—"
            out.append(f"| {code} | {name} | {script} | {n} | {s.get('queries', 0)} | {span} | {cmean:.1f} | "
                       f"{s.get('facts_with_causal', 0)} |")
        out += ["", "| relation | label | type | subjects seen | facts kept | languages per fact |",
                "| --- | --- | --- | ---: | ---: | ---: |"]
        for rel in self.relations:
            r = self.per_relation.get(rel, {})
            out.append(f"| {rel} | {_md(r.get('label', ''))} | {r.get('type', '')} | {r.get('candidates', 0)} | "
                       f"{r.get('facts', 0)} | {r.get('languages_per_fact', 0.0):.1f} |")
        out += ["", "## Skipped, and why", ""]
        if not self.skipped:
            out.append("Nothing was skipped.")
        else:
            out += ["| reason | count | examples |", "| --- | ---: | --- |"]
            for reason, n in self.skipped.items():
                ex = ", ".join(f"`{_md(e)}`" for e in self.examples.get(reason, []))
                out.append(f"| {_md(reason)} | {n} | {ex} |")
        out += ["", "## Sources", "", SOURCES, "## License", "", LICENSE_NOTE,
                "## Known flaws", "",
                "- Templates of most languages are machine translated (some are wrong or ungrammatical);",
                "  `checked-by-human` marks the reviewed ones (`human_checked_only=True` keeps only those).",
                "- Labels are raw Wikidata labels; answers are often several tokens long.",
                "- In languages whose word order puts the object before the verb (ja, ko, tr, fa, ...) few",
                "  templates end with the slot, so a causal LM has few queries there.",
                "- A small model knows only some of these facts: filter them first (`lakn.known.select_known`).",
                ""]
        return "\n".join(out)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

