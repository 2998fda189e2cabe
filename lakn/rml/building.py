"""Turn an mParaRel checkout into facts in lakn's format: :func:`build_rml` (see :mod:`lakn.rml`)."""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from .._version import __version__
from .datasheet import BuildReport, write_atomic
from .reading import (FOLDER_CODES, RELATIONS, SLOT_X, MTuple, RMLError, Tally, data_root, is_causal,
                      mpararel_languages, read_patterns, read_tuples, relation_key, resolve_languages)

__all__ = ["build_rml"]

_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


def build_rml(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    languages: Sequence[str] | str,
    relations: Sequence[str] | None = None,
    min_languages: int | None = None,
    min_paraphrases: int = 2,
    causal: bool = True,
    required_languages: Sequence[str] | None = None,
    per_relation_cap: int | None = None,
    seed: int = 0,
    human_checked_only: bool = False,
    on_malformed: Literal["raise", "skip"] = "raise",
    overwrite: bool = False,
) -> BuildReport:
    """Build RML-LAMA-style facts from an mParaRel checkout and write them with a datasheet.

    Args:
        src: the mParaRel checkout (or its ``data/mpararel_reviewed`` folder).
        out: a folder (writes ``facts.jsonl``, ``DATASHEET.md``, ``build.json`` in it) or a
            ``.jsonl`` file (writes ``NAME.DATASHEET.md`` and ``NAME.build.json`` beside it).
        languages: lakn codes or mParaRel folder names (``zh`` = ``zh-hans``; ``zh-hant`` is written
            as ``zh``), or ``"all"``. Output languages keep this order.
        relations: relation ids (``P17``...); default every relation with files in a chosen language.
        min_languages: languages a fact needs (default: all requested languages).
        min_paraphrases: queries a (fact, language) needs to count.
        causal: count only causal queries (slot last) towards ``min_paraphrases``; every query is
            written either way, ``causal_ok`` says which are causal.
        required_languages: languages every kept fact must have (on top of ``min_languages``).
        per_relation_cap: at most this many facts per relation, a seeded sample (default: all).
        seed: the sample's seed; the same inputs and seed give the same file.
        human_checked_only: keep only templates with ``checked-by-human: true``.
        on_malformed: ``"raise"`` (an :class:`RMLError` naming file:line) or ``"skip"`` (count it).
        overwrite: replace an existing facts file.

    Returns a :class:`BuildReport` (counts, skipped items by reason, paths written).
    Example: ``build_rml("mpararel", "data/rml", languages="en,fr,zh", per_relation_cap=50)``.
    """
    if on_malformed not in ("raise", "skip"):
        raise RMLError(f"on_malformed must be 'raise' or 'skip', got {on_malformed!r}")
    if min_paraphrases < 1:
        raise RMLError(f"min_paraphrases must be at least 1, got {min_paraphrases}")
    if per_relation_cap is not None and per_relation_cap < 1:
        raise RMLError(f"per_relation_cap must be at least 1, got {per_relation_cap}")
    root = data_root(src)
    chosen, left_out = resolve_languages(languages, mpararel_languages(root))
    codes = list(chosen)
    if min_languages is None:
        min_languages = len(codes)
    if not 1 <= min_languages <= len(codes):
        raise RMLError(f"min_languages must be between 1 and the {len(codes)} requested languages, got {min_languages}")
    required = [] if required_languages is None else [str(x).strip() for x in required_languages if str(x).strip()]
    required = [FOLDER_CODES.get(x, x) for x in required]
    missing_req = [x for x in required if x not in chosen]
    if missing_req:
        raise RMLError(f"required language(s) {missing_req} are not among the requested languages {codes}")

    facts_path, sheet_path, build_path = _out_paths(out)
    if facts_path.exists() and not overwrite:
        raise RMLError(f"{facts_path} exists; pass overwrite=True (--overwrite) to replace it")

    # relations: those with both files in at least one chosen language
    present: dict[str, set[str]] = defaultdict(set)
    for code, folder in chosen.items():
        for kind in ("patterns", "tuples"):
            d = root / kind / folder
            for f in d.glob("*.jsonl"):
                present[f.stem].add(f"{kind}/{code}")
    usable = sorted((r for r, kinds in present.items()
                     if any(f"patterns/{c}" in kinds and f"tuples/{c}" in kinds for c in codes)), key=relation_key)
    if relations is None:
        rels = usable
    else:
        rels = [str(r).strip() for r in (relations.split(",") if isinstance(relations, str) else relations)]
        rels = [r for r in rels if r]
        unknown = [r for r in rels if r not in usable]
        if unknown:
            raise RMLError(f"relation(s) {unknown} have no patterns and tuples in the chosen languages {codes}; "
                           f"available: {', '.join(usable)}")
        rels = sorted(dict.fromkeys(rels), key=relation_key)
    if not rels:
        raise RMLError(f"no relation has both patterns and tuples in the chosen languages {codes} under {root}")

    tally = Tally()
    records: list[dict] = []
    per_relation: dict[str, dict] = {}
    for rel in rels:
        kept = _build_relation(root, rel, chosen, tally, on_malformed=on_malformed, human_checked_only=human_checked_only,
                               min_paraphrases=min_paraphrases, causal=causal, min_languages=min_languages,
                               required=required)
        candidates = kept.pop("_candidates")
        facts = kept["facts"]
        if per_relation_cap is not None and len(facts) > per_relation_cap:
            rng = random.Random(f"lakn-rml:{seed}:{rel}")
            sample = set(rng.sample(range(len(facts)), per_relation_cap))
            for i, f in enumerate(facts):
                if i not in sample:
                    tally.add("fact over per_relation_cap (not sampled)", f["fact_id"])
            facts = [f for i, f in enumerate(facts) if i in sample]
        label, rtype = RELATIONS.get(rel, ("", ""))
        per_relation[rel] = {"label": label, "type": rtype, "candidates": candidates, "facts": len(facts),
                             "languages_per_fact": (sum(len(f["languages"]) for f in facts) / len(facts)) if facts else 0.0}
        records.extend(facts)

    ids = Counter(r["fact_id"] for r in records)
    clash = [i for i, n in ids.items() if n > 1]
    if clash:  # only possible when sanitising made two ids equal
        raise RMLError(f"fact ids {clash[:5]} are not unique after replacing characters outside [A-Za-z0-9_.-]")
    if not records:
        raise RMLError(
            f"no fact survived the filters (languages {codes}, min_languages={min_languages}, "
            f"min_paraphrases={min_paraphrases}, causal={causal}); skipped: {dict(tally.counts)}"
        )

    per_language = {c: {"facts": 0, "queries": 0, "causal_queries": 0, "min_queries": 0, "max_queries": 0,
                        "facts_with_causal": 0} for c in codes}
    for r in records:
        for c in r["languages"]:
            s = per_language[c]
            nq, nc = len(r["queries"][c]), len(r["causal_ok"][c])
            s["min_queries"] = nq if s["facts"] == 0 else min(s["min_queries"], nq)
            s["max_queries"] = max(s["max_queries"], nq)
            s["facts"] += 1
            s["queries"] += nq
            s["causal_queries"] += nc
            s["facts_with_causal"] += int(nc > 0)
    report = BuildReport(
        facts_path=str(facts_path), datasheet_path=str(sheet_path),
        source={"path": str(root), "commit": _git_commit(Path(src).expanduser())},
        parameters={"languages": codes, "relations": relations if relations is None else rels,
                    "min_languages": min_languages, "min_paraphrases": min_paraphrases, "causal": causal,
                    "required_languages": required, "per_relation_cap": per_relation_cap, "seed": seed,
                    "human_checked_only": human_checked_only, "on_malformed": on_malformed,
                    "lakn_version": __version__},
        languages=dict(chosen), relations=rels, n_facts=len(records), per_language=per_language,
        per_relation=per_relation, skipped=dict(tally.counts), examples={k: v for k, v in tally.examples.items()
                                                                           if k in tally.counts},
        left_out_folders=left_out,
        n_queries=sum(s["queries"] for s in per_language.values()),
        n_causal_queries=sum(s["causal_queries"] for s in per_language.values()),
        built_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    facts_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(facts_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_atomic(sheet_path, report.datasheet())
    report.save(build_path)
    return report


def _build_relation(root: Path, rel: str, chosen: Mapping[str, str], tally: Tally, *, on_malformed: str,
                    human_checked_only: bool, min_paraphrases: int, causal: bool, min_languages: int,
                    required: Sequence[str]) -> dict:
    """The fact records of one relation (before the cap), in order of their answer's line."""
    templates: dict[str, list[str]] = {}
    tuples: dict[str, dict[str, list[MTuple]]] = {}
    for code, folder in chosen.items():
        pf, tf = root / "patterns" / folder / f"{rel}.jsonl", root / "tuples" / folder / f"{rel}.jsonl"
        if not pf.is_file() or not tf.is_file():
            which = "patterns" if not pf.is_file() else "tuples"
            tally.add(f"relation without a {which} file in a language", f"{which}/{folder}/{rel}.jsonl")
            continue
        pats = read_patterns(pf, root, tally, on_malformed, human_checked_only)
        tups = read_tuples(tf, root, tally, on_malformed)
        if not pats:
            tally.add("relation with no usable template in a language", f"patterns/{folder}/{rel}.jsonl")
            continue
        templates[code], tuples[code] = pats, tups

    # the answer of a subject: its pair on the earliest line (mParaRel's lineid is shared by languages)
    first_line: dict[str, dict[str, int]] = defaultdict(dict)  # sub -> obj -> lineid
    for tups in tuples.values():
        for sub, ts in tups.items():
            for tup in ts:
                prev = first_line[sub].get(tup.obj_uri)
                first_line[sub][tup.obj_uri] = tup.lineid if prev is None else min(prev, tup.lineid)
    subjects = sorted(first_line, key=lambda s: (min(first_line[s].values()), s))
    facts = []
    for sub in subjects:
        objs = sorted(first_line[sub], key=lambda o: (first_line[sub][o], o))
        obj, others = objs[0], objs[1:]
        fact_id = _SAFE_ID.sub("_", f"{rel}_{sub}")
        rec_langs, subject, answer, queries, causal_ok, other_labels = [], {}, {}, {}, {}, {}
        for code in chosen:
            if code not in tuples:
                continue
            by_obj = {u.obj_uri: u for u in tuples[code].get(sub, [])}
            t = by_obj.get(obj)
            if t is None:
                continue  # no label for this answer in this language (natural absence, not an error)
            qs = [p.replace(SLOT_X, t.sub_label) for p in templates[code]]
            ok = [i for i, q in enumerate(qs) if is_causal(q)]
            if (len(ok) if causal else len(qs)) < min_paraphrases:
                kind = "causal queries" if causal else "queries"
                tally.add(f"(fact, language) with fewer than min_paraphrases {kind}", f"{fact_id} ({code})")
                continue
            rec_langs.append(code)
            subject[code], answer[code], queries[code], causal_ok[code] = t.sub_label, t.obj_label, qs, ok
            labels = [by_obj[o].obj_label for o in others if o in by_obj and by_obj[o].obj_label != t.obj_label]
            if labels:
                other_labels[code] = list(dict.fromkeys(labels))
        if len(rec_langs) < min_languages:
            tally.add("fact with fewer than min_languages languages", f"{fact_id} (languages: {len(rec_langs)})")
            continue
        lacking = [c for c in required if c not in rec_langs]
        if lacking:
            tally.add("fact without a required language", f"{fact_id} (lacks {', '.join(lacking)})")
            continue
        label, rtype = RELATIONS.get(rel, ("", ""))
        record: dict[str, Any] = {"fact_id": fact_id, "relation": rel}
        if label:
            record["relation_label"], record["relation_type"] = label, rtype
        record.update({"sub_uri": sub, "obj_uri": obj, "languages": rec_langs, "subject": subject, "object": answer})
        if other_labels:
            record["other_gold_objects"] = other_labels
            record["other_gold_obj_uris"] = others
        record.update({"queries": queries, "causal_ok": causal_ok})
        facts.append(record)
    return {"facts": facts, "_candidates": len(subjects)}


# --------------------------------------------------------------------------- output


def _out_paths(out: str | os.PathLike) -> tuple[Path, Path, Path]:
    out = Path(out).expanduser()
    if out.suffix == ".jsonl":
        return out, out.with_name(out.stem + ".DATASHEET.md"), out.with_name(out.stem + ".build.json")
    if out.exists() and not out.is_dir():
        raise RMLError(f"output {out} exists and is not a folder; give a folder or a .jsonl path")
    return out / "facts.jsonl", out / "DATASHEET.md", out / "build.json"


def _git_commit(src: Path) -> str | None:
    """The checkout's commit, read from .git without running git (None when unknown)."""
    for cand in (src, *src.parents):
        git = cand / ".git"
        if git.is_dir():
            try:
                head = (git / "HEAD").read_text().strip()
                if head.startswith("ref: "):
                    ref = head[5:]
                    f = git / ref
                    if f.is_file():
                        return f.read_text().strip()
                    packed = git / "packed-refs"
                    if packed.is_file():
                        for line in packed.read_text().splitlines():
                            if line.endswith(" " + ref):
                                return line.split()[0]
                    return None
                return head
            except OSError:
                return None
    return None

