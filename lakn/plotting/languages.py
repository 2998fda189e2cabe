"""How languages share neurons: Jaccard overlap of their neuron sets."""

from __future__ import annotations

import math
from typing import Iterable

from ._style import layout

__all__ = ["jaccard", "overlap_matrix", "language_overlap"]


def jaccard(a: Iterable, b: Iterable) -> float:
    """|a ∩ b| / |a ∪ b|; NaN when both are empty (no evidence either way)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else math.nan


def overlap_matrix(result, *, include_lakn: bool = True):
    """Mean Jaccard overlap between languages' neuron sets, averaged over facts.

    The set of fact f in language l is its language-specific neurons, plus its LAKNs when
    ``include_lakn`` (default). Facts where both sets are empty are left out of that pair's mean.
    Returns a square ``pandas.DataFrame`` indexed by language (NaN where no fact had neurons).
    """
    import pandas as pd

    langs = list(result.languages) or sorted({l for v in result.language_specific.values() for l in v})
    sums: dict[tuple[str, str], list[float]] = {(a, b): [] for a in langs for b in langs}
    for fid, per_lang in result.language_specific.items():
        shared = set(result.lakn.get(fid, [])) if include_lakn else set()
        sets = {l: set(per_lang.get(l, [])) | shared for l in langs}
        for a in langs:
            for b in langs:
                value = jaccard(sets[a], sets[b])
                if not math.isnan(value):
                    sums[(a, b)].append(value)
    data = [[(sum(v) / len(v)) if (v := sums[(a, b)]) else math.nan for b in langs] for a in langs]
    return pd.DataFrame(data, index=langs, columns=langs)


def language_overlap(result, *, include_lakn: bool = True):
    """Heatmap of the mean Jaccard overlap of neuron sets between languages (see :func:`overlap_matrix`).

    High off-diagonal values mean languages use the same neurons for a fact.
    """
    import plotly.graph_objects as go

    m = overlap_matrix(result, include_lakn=include_lakn)
    langs = list(m.index)
    z = [[None if math.isnan(v) else float(v) for v in row] for row in m.values.tolist()]
    text = [["" if v is None else f"{v:.2f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=z, x=langs, y=langs, zmin=0, zmax=1, colorscale="Viridis", text=text, texttemplate="%{text}",
        colorbar=dict(title="Jaccard"),
        hovertemplate="languages %{y} / %{x}<br>mean Jaccard: %{z:.3f}<extra></extra>",
    ))
    what = "language-specific + LAKN" if include_lakn else "language-specific"
    layout(fig, f"Overlap of {what} neuron sets between languages (mean over {len(result.records)} facts)",
            "language", "language")
    fig.update_yaxes(autorange="reversed")
    return fig

