"""Atomic JSON writes: a crash never leaves half a file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


def jsonable(obj):
    """``obj`` with mappings and sequences made JSON-ready; values JSON cannot hold become their repr."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)

