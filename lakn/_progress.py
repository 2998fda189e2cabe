"""The one progress bar of lakn (tqdm), switched off by a flag."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], enabled: bool, desc: str, *, total: int | None = None,
             unit: str = "it") -> Iterable[T]:
    """``items`` wrapped in a tqdm bar labelled ``desc`` when ``enabled``, else ``items`` unchanged."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit)
