"""Old names that keep working for one release, with a ``DeprecationWarning`` naming the new one.

A module lists its moved or renamed public names and gets a module-level ``__getattr__``::

    __getattr__ = deprecated_names(__name__, {"answer_probabilities": "lakn.probability:answer_stats"})

The target module is imported only when an old name is used, so an alias never adds an import
arrow to the package's layering (tests/test_architecture.py).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable

REMOVED_IN = "0.3"


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` (a name, keyword or option) is deprecated in favour of ``new``."""
    warnings.warn(f"{old} is deprecated and will be removed in lakn {REMOVED_IN}; use {new}",
                  DeprecationWarning, stacklevel=stacklevel)


def deprecated_names(module: str, aliases: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``aliases`` (``{old_name: "package.module:new_name"}``)."""

    def __getattr__(name: str) -> Any:
        target = aliases.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        path, new = target.split(":")
        warn_renamed(f"{module}.{name}", f"{path}.{new}")
        return getattr(importlib.import_module(path), new)

    return __getattr__
