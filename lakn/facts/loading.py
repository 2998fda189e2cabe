"""Reading facts files: the shipped sets, ``.jsonl`` and ``.json``; UTF-8 checked, every record validated."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import FactsError, _got, _quote
from .records import Fact
from .schema import MAX_QUERY_CHARS

__all__ = ["load_facts", "data_path", "data_sha256", "DEMO_SETS"]

DEMO_SETS = {"demo": "demo.jsonl", "fictional": "fictional.jsonl"}
"""The facts sets lakn ships, by the name :func:`load_facts` takes."""


def data_path(source: str | os.PathLike) -> Path:
    """The file :func:`load_facts` reads for ``source``: a shipped set's file, or the path with ``~``
    expanded, made absolute (not checked to exist)."""
    if isinstance(source, str) and source in DEMO_SETS:
        return Path(str(files("lakn") / "data" / DEMO_SETS[source]))
    return Path(os.path.abspath(Path(source).expanduser()))


def data_sha256(source: str | os.PathLike) -> str:
    """SHA-256 (hex) of the bytes of the facts file ``source`` names ("" when it is not a readable file).

    A run folder records it (``config.json``, ``data_sha256``), so an edited data file is noticed.
    """
    path = data_path(source)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    except OSError:
        return ""


def load_facts(source: str | Path = "demo", *, max_query_chars: int | None = MAX_QUERY_CHARS) -> list[Fact]:
    """Load facts from ``"demo"`` / ``"fictional"`` (shipped sets), a ``.jsonl`` file or a ``.json`` list.

    Example: ``facts = lakn.load_facts("demo")``. Every record is checked against the schema of the
    module docstring; errors name the file, line, fact and field. ``max_query_chars`` caps a
    template's length (default :data:`MAX_QUERY_CHARS`; ``None`` lifts the cap).
    """
    path = data_path(source) if isinstance(source, str) and source in DEMO_SETS else Path(source).expanduser()
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


def _skip_ws(text: str, i: int) -> int:
    """The first position at or after ``i`` that is not JSON whitespace."""
    match = _JSON_WS.match(text, i)
    return match.end() if match else i


def _json_records(text: str, path: Path) -> list[tuple[Any, str]]:
    """The records of a ``.json`` file: a list (each located by its line) or ``{"facts": [...]}``."""
    try:
        i = _skip_ws(text, 0)
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
        i = _skip_ws(text, i + 1)
        if text.startswith("]", i):
            i += 1
        else:
            while True:
                line, pos = line + text.count("\n", pos, i), i
                record, i = decoder.raw_decode(text, i)
                records.append((record, f"line {line} (fact #{len(records) + 1})"))
                i = _skip_ws(text, i)
                if text.startswith(",", i):
                    i = _skip_ws(text, i + 1)
                elif text.startswith("]", i):
                    i += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, i)
        i = _skip_ws(text, i)
        if i != len(text):
            raise json.JSONDecodeError("Extra data", text, i)
        return records
    except (ValueError, RecursionError) as err:
        if isinstance(err, FactsError):
            raise
        raise _json_error(path, err) from None

