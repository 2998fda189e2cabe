"""Reading an mParaRel checkout: its layout, language folders, relations, patterns and tuples files.

Every malformed line raises :class:`RMLError` naming file and line, or (``on_malformed="skip"``) is
counted in a :class:`Tally`; everything else a reader drops is counted there too, by reason.
"""

from __future__ import annotations

import json
import os
import re
import string
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from ..facts import LANGUAGES, Fact, FactsError

__all__ = ["RMLError", "FOLDER_CODES", "RELATIONS", "SLOT_X", "SLOT_Y", "Tally", "data_root", "mpararel_languages",
           "resolve_languages", "relation_key", "is_causal", "read_patterns", "read_tuples", "MTuple"]

SLOT_X, SLOT_Y = "[X]", "[Y]"
# mParaRel folder names that differ from lakn's codes. zh-hant maps to zh only when asked for by name.
FOLDER_CODES: dict[str, str] = {"zh-hans": "zh", "zh-hant": "zh"}
_DEFAULT_FOLDER = {"zh": "zh-hans"}  # which folder a lakn code reads when several map to it
# Labels and cardinality of the 41 T-REx relations of LAMA / mLAMA (English Wikidata property labels).
RELATIONS: dict[str, tuple[str, str]] = {
    "P19": ("place of birth", "N-1"), "P20": ("place of death", "N-1"), "P279": ("subclass of", "N-1"),
    "P37": ("official language", "N-1"), "P413": ("position played on team / speciality", "N-1"),
    "P449": ("original broadcaster", "N-1"), "P47": ("shares border with", "N-M"),
    "P138": ("named after", "N-1"), "P364": ("original language of film or TV show", "N-1"),
    "P463": ("member of", "N-M"), "P101": ("field of work", "N-M"), "P106": ("occupation", "N-M"),
    "P527": ("has part", "N-M"), "P530": ("diplomatic relation", "N-M"), "P176": ("manufacturer", "N-1"),
    "P27": ("country of citizenship", "N-M"), "P407": ("language of work or name", "N-1"),
    "P30": ("continent", "N-1"), "P178": ("developer", "N-1"), "P1376": ("capital of", "1-1"),
    "P131": ("located in the administrative territorial entity", "N-1"),
    "P1412": ("languages spoken, written or signed", "N-M"), "P108": ("employer", "N-M"),
    "P136": ("genre", "N-1"), "P17": ("country", "N-1"), "P39": ("position held", "N-M"),
    "P264": ("record label", "N-1"), "P276": ("location", "N-1"), "P937": ("work location", "N-M"),
    "P140": ("religion", "N-1"), "P1303": ("instrument", "N-M"), "P127": ("owned by", "N-1"),
    "P103": ("native language", "N-1"), "P190": ("twinned administrative body", "N-M"),
    "P1001": ("applies to jurisdiction", "N-1"), "P31": ("instance of", "N-1"),
    "P495": ("country of origin", "N-1"), "P159": ("headquarters location", "N-1"), "P36": ("capital", "1-1"),
    "P740": ("location of formation", "N-1"), "P361": ("part of", "N-1"),
}
_TUPLE_KEYS = ("sub_uri", "obj_uri", "sub_label", "obj_label")
_EXAMPLES = 5  # example locations kept per skip reason


class RMLError(FactsError):
    """Bad mParaRel input or a bad build request; the message names the file and line or the option."""


# --------------------------------------------------------------------------- languages and layout


def data_root(src: str | os.PathLike) -> Path:
    """The folder holding ``patterns/`` and ``tuples/`` (the checkout, data/ or mpararel_reviewed/)."""
    src = Path(src).expanduser()
    for cand in (src, src / "mpararel_reviewed", src / "data" / "mpararel_reviewed"):
        if (cand / "patterns").is_dir() and (cand / "tuples").is_dir():
            return cand
    raise RMLError(
        f"{src} is not an mParaRel checkout: expected data/mpararel_reviewed/patterns/ and .../tuples/ "
        "(or patterns/ and tuples/ directly inside it)"
    )


def mpararel_languages(src: str | os.PathLike) -> list[str]:
    """The language folders of an mParaRel checkout that have both patterns and tuples, sorted."""
    root = data_root(src)
    pats = {p.name for p in (root / "patterns").iterdir() if p.is_dir()}
    tups = {p.name for p in (root / "tuples").iterdir() if p.is_dir()}
    return sorted(pats & tups)


def _code(folder: str) -> str | None:
    code = FOLDER_CODES.get(folder, folder)
    return code if code in LANGUAGES else None


def resolve_languages(requested: Sequence[str] | str, available: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Map requested languages to ``{lakn code: mParaRel folder}`` (in request order).

    ``requested`` holds lakn codes or folder names, or is ``"all"``. Returns the mapping and, for
    ``"all"``, the folders left out (no lakn code, or ``zh-hant`` when ``zh-hans`` is taken).
    Unknown languages, languages missing from ``available`` and two requests for one code are errors.
    """
    available = list(available)
    if isinstance(requested, str):
        if requested.strip() == "all":
            chosen: dict[str, str] = {}
            left_out = []
            for folder in available:
                code = _code(folder)
                if code is None or (code in chosen) or (folder == "zh-hant" and "zh-hans" in available):
                    left_out.append(folder)
                else:
                    chosen[code] = folder
            if not chosen:
                raise RMLError(f"no mParaRel language folder has a lakn language code: {available}")
            return chosen, left_out
        requested = [r for r in requested.split(",") if r.strip()]
    requested = [str(r).strip() for r in requested]
    if not requested:
        raise RMLError("no languages requested (e.g. languages=['en', 'fr', 'zh'] or 'all')")
    chosen = {}
    for name in requested:
        if name in FOLDER_CODES:
            code, folder = FOLDER_CODES[name], name
        elif name in LANGUAGES:
            code, folder = name, _DEFAULT_FOLDER.get(name, name)
        elif name in available:
            raise RMLError(
                f"mParaRel language folder {name!r} has no lakn language code: lakn.facts.LANGUAGES does not "
                f"list {name!r}; add it there (code, name, script) to build it"
            )
        else:
            raise RMLError(
                f"unknown language {name!r}: use lakn codes ({', '.join(sorted(LANGUAGES))}) or mParaRel "
                f"folder names ({', '.join(available)})"
            )
        if code in chosen and chosen[code] == folder:
            raise RMLError(f"language {name!r} is requested twice")
        if code in chosen:
            raise RMLError(
                f"language {name!r} maps to lakn code {code!r}, already taken by folder {chosen[code]!r}: "
                "ask for zh (simplified, folder zh-hans) or zh-hant (traditional), not both"
            )
        if folder not in available:
            raise RMLError(
                f"language {name!r} (folder {folder!r}) is not in this mParaRel checkout; it has: "
                f"{', '.join(available)}"
            )
        chosen[code] = folder
    return chosen, []


def relation_key(name: str) -> tuple:
    m = re.fullmatch(r"P(\d+)", name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)

class Tally:
    """Counts of skipped items by reason, with a few example locations each."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] += n
        if len(self.examples[reason]) < _EXAMPLES:
            self.examples[reason].append(where)


# --------------------------------------------------------------------------- reading


def _read_jsonl(path: Path, root: Path, kind: str, tally: Tally, on_malformed: str) -> Iterator[tuple[int, dict, str]]:
    """Yield (line number, record, location) of a patterns or tuples file; malformed lines raise or
    are counted (``on_malformed``)."""
    rel = path.relative_to(root).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise RMLError(f"{rel}: not UTF-8 text ({err})") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{rel}:{lineno}"
        if not line.strip():
            continue
        problem = None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            record, problem = None, f"malformed JSON (column {err.colno}: {err.msg})"
        if problem is None:
            problem = _check_record(record, kind)
        if problem is not None:
            if on_malformed == "raise":
                raise RMLError(f"{root / rel}:{lineno}: {problem} (pass on_malformed='skip' / --skip-malformed "
                               "to skip and count such lines)")
            tally.add(f"malformed {kind} line", f"{where} ({problem})")
            continue
        yield lineno, record, where


def _check_record(record, kind: str) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if kind == "pattern":
        if not isinstance(record.get("pattern"), str):
            return "no string field 'pattern'"
        return None
    missing = [k for k in _TUPLE_KEYS if k not in record]
    if missing:
        return f"missing field(s) {missing}"
    bad = [k for k in _TUPLE_KEYS if not isinstance(record[k], (str, int)) or isinstance(record[k], bool)]
    if bad:
        return f"field(s) {bad} must be strings"
    if "lineid" in record and (not isinstance(record["lineid"], int) or isinstance(record["lineid"], bool)):
        return "field 'lineid' must be an integer"
    return None


def _normalise(text: str) -> str:
    return " ".join(str(text).split())


def _dedup_key(pattern: str) -> str:
    """Templates that read the same are duplicates: compatibility forms folded (NFKC: the full-width
    comma of "[X]，位于[Y]" is ","), and no spaces (machine translation spaces CJK text at random)."""
    return "".join(unicodedata.normalize("NFKC", pattern).split())


def _is_empty(pattern: str) -> bool:
    """True when nothing but the slots, spaces and punctuation is left (e.g. ``"[X] [Y]"``)."""
    rest = pattern.replace(SLOT_X, "").replace(SLOT_Y, "")
    return all(ch.isspace() or ch in string.punctuation or unicodedata.category(ch)[0] in "PZC" for ch in rest)


@lru_cache(maxsize=65536)
def _causal_after(after: str) -> bool:
    # Fact.queries is lakn's one notion of a causal query; it looks only at the text after the slot.
    fact = Fact(fact_id="_", relation="_", answers={"en": "x"}, templates={"en": ("x " + SLOT_Y + after,)})
    return bool(fact.queries("en", causal=True))


def is_causal(query: str) -> bool:
    """True when a causal LM can use the query: its slot comes last, closing punctuation aside."""
    return _causal_after(query.split(SLOT_Y, 1)[1])


def read_patterns(path: Path, root: Path, tally: Tally, on_malformed: str, human_checked_only: bool) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for _, record, where in _read_jsonl(path, root, "pattern", tally, on_malformed):
        pattern = _normalise(record["pattern"])
        nx, ny = pattern.count(SLOT_X), pattern.count(SLOT_Y)
        if not pattern:
            tally.add("empty template", f"{where} ({pattern!r})")
            continue
        if ny != 1 or nx != 1:
            tally.add("template without exactly one [X] and one [Y]", f"{where} ({pattern!r})")
            continue
        if _is_empty(pattern):
            tally.add("empty template", f"{where} ({pattern!r})")
            continue
        key = _dedup_key(pattern)
        if key in seen:
            tally.add("duplicate template", f"{where} ({pattern!r})")
            continue
        if human_checked_only and record.get("checked-by-human") is not True:
            tally.add("template not checked by a human (human_checked_only)", where)
            continue
        seen.add(key)
        out.append(pattern)
    return out


@dataclass
class MTuple:
    sub_uri: str
    obj_uri: str
    sub_label: str
    obj_label: str
    lineid: int
    where: str


def read_tuples(path: Path, root: Path, tally: Tally, on_malformed: str) -> dict[str, list[MTuple]]:
    """{sub_uri: [tuple, ...]} of one tuples file (labels stripped; empty labels counted and dropped)."""
    by_subject: dict[str, list[MTuple]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for lineno, r, where in _read_jsonl(path, root, "tuple", tally, on_malformed):
        t = MTuple(str(r["sub_uri"]).strip(), str(r["obj_uri"]).strip(), _normalise(r["sub_label"]),
                   _normalise(r["obj_label"]), int(r.get("lineid", lineno - 1)), where)
        if not t.sub_uri or not t.obj_uri:
            tally.add("tuple with an empty sub_uri or obj_uri", where)
            continue
        if not t.sub_label:
            tally.add("tuple with an empty subject label", where)
            continue
        if not t.obj_label:
            tally.add("tuple with an empty object label", where)
            continue
        if SLOT_X in t.sub_label or SLOT_Y in t.sub_label:
            tally.add("subject label containing a slot marker", f"{where} ({t.sub_label!r})")
            continue
        if (t.sub_uri, t.obj_uri) in seen:
            tally.add("duplicate tuple", where)
            continue
        seen.add((t.sub_uri, t.obj_uri))
        by_subject[t.sub_uri].append(t)
    return by_subject
