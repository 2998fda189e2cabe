"""Several localisation runs at once: one per method on shared attributions, and reading them back."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..facts import Fact
from ..results import LocalizationResult

__all__ = ["localize_methods", "load_runs"]


def localize_methods(
    model,
    facts: Sequence[Fact],
    methods: Sequence[str] = ("matrice", "kn", "amig", "mean", "random"),
    *,
    out: str | Path | None = None,
    **kwargs,
) -> dict[str, LocalizationResult]:
    """:func:`lakn.localize` once per method on shared attributions; run folders ``out/<method>``.
    Pass ``attribution_cache=`` (a dict) to share the attributions with further calls too, e.g.
    the same methods again at an equal neuron count (``top_k``)."""
    from ..localization import localize

    results = {}
    cache = kwargs.pop("attribution_cache", None)
    cache = {} if cache is None else cache
    for method in methods:
        folder = None if out is None else Path(out) / method
        results[method] = localize(model, facts, method=method, out=folder, attribution_cache=cache, **kwargs)
    return results


def load_runs(folder: str | Path) -> dict[str, LocalizationResult]:
    """{method: result} from a run folder (``result.json`` inside) or a folder of run folders; a second
    run of the same method (e.g. another selection) is keyed ``method@folder``."""
    folder = Path(folder)
    if (folder / "result.json").is_file():
        r = LocalizationResult.load(folder)
        return {r.config.get("method", folder.name): r}
    runs = {}
    for sub in sorted(p for p in folder.iterdir() if (p / "result.json").is_file()) if folder.is_dir() else []:
        r = LocalizationResult.load(sub)
        name = str(r.config.get("method", sub.name))
        runs[name if name not in runs else f"{name}@{sub.name}"] = r  # two runs of one method: both kept
    if not runs:
        raise FileNotFoundError(f"{folder} holds no finished localisation run (no result.json in it or below it)")
    order = ["matrice", "kn", "amig", "mean", "random"]
    return dict(sorted(runs.items(), key=lambda kv: order.index(kv[0].split("@")[0]) if kv[0].split("@")[0] in order
                       else len(order)))
