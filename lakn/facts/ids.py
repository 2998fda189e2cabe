"""Fact ids: the safe character set, and the file names a run folder derives from an id."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .errors import FactsError, _got, _quote

__all__ = ["MAX_FACT_ID_CHARS", "FACT_ID_PATTERN", "FACT_ID_RULE", "check_fact_id", "safe_file_stem"]

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
_STEM_CHARS = 64
_HASH_CHARS = 16  # 64 bits of SHA-256: distinct ids give distinct stems (collision odds ~n^2 / 2^65)


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
