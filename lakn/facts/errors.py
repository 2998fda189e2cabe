"""Error type and short quoting for fact data: every message is one line and quotes at most ~100 characters."""

from __future__ import annotations

import reprlib
from typing import Any, Sequence

__all__ = ["FactsError"]

_QUOTE_CHARS = 100


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



def _quote_list(values: Sequence[Any], shown: int = 8) -> str:
    """``[v1, v2, ...]`` with each value quoted short and at most ``shown`` of them."""
    more = f", ... ({len(values) - shown} more)" if len(values) > shown else ""
    return "[" + ", ".join(_quote(v, 40) for v in values[:shown]) + more + "]"


def _short_key(key: str) -> str:
    return key if len(key) <= 20 and key.isprintable() and "'" not in key else _quote(key, 20)
