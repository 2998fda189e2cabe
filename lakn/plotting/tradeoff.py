"""The specificity trade-off figure: the fact's own drop against the unrelated drop, one line per
method and selection, markers labelled by the neuron count k (``DIR/tradeoff.json``,
a :class:`~lakn.evaluation.tradeoff.TradeoffResult`, read by column name)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..evaluation.specificity import GROUPS
from ..evaluation.tradeoff import TradeoffResult, curve_label
from ..results import ResultTable
from ._style import color, layout, text

__all__ = ["tradeoff_figure", "read_tradeoff_table", "TRADEOFF_LABELS"]

TRADEOFF_LABELS = {"seen": "own fact, seen queries", "heldout_paraphrase": "own fact, held-out paraphrases",
                   "heldout_language": "own fact, held-out languages",
                   "same_relation_different_answer": "same relation, different answer",
                   "same_relation_same_answer": "same relation, same answer", "other_relations": "other relations"}
"""Axis words of each group of :data:`~lakn.evaluation.specificity.GROUPS`."""


def tradeoff_figure(table, *, own: str = "seen", unrelated: str = "other_relations", title: str | None = None):
    """Own drop (y) against unrelated drop (x), in % of P (the negated change rate, ± one standard
    error over facts), one line per method, selection and weight pair through its k values.

    ``table``: a :class:`~lakn.evaluation.tradeoff.TradeoffResult` or a frame in its schema; ``own``
    and ``unrelated`` name groups of :data:`~lakn.evaluation.specificity.GROUPS`. Specific neurons
    sit top left: a large own drop, a small unrelated one.
    """
    import plotly.graph_objects as go

    for name, group in (("own", own), ("unrelated", unrelated)):
        if group not in GROUPS:
            raise ValueError(f"{name}={group!r} is not a group; choose from {list(GROUPS)}")
    df = table.to_dataframe() if isinstance(table, ResultTable) else table
    missing = [c for c in ("method", "selection", "k", own, unrelated) if c not in df.columns]
    if missing:
        raise ValueError(f"tradeoff_figure needs the columns {missing} of a TradeoffResult; got {list(df.columns)}")
    if df.empty:
        raise ValueError("no trade-off rows to plot")
    df = df.copy()
    for col in ("lam_same", "lam_other"):
        if col not in df.columns:
            df[col] = float("nan")
    fig = go.Figure()
    curves = df.groupby(["method", "selection", "lam_same", "lam_other"], dropna=False, sort=False)
    for c, (_, part) in enumerate(curves):
        part = part.sort_values("k")
        label = curve_label(part.iloc[0])
        x, y = -100 * part[unrelated], -100 * part[own]
        custom = [[text(label), int(r["k"]), r.get("mean_neurons", float("nan")), r.get("facts_with_neurons", 0),
                   r.get("n_targets", 0), r.get(f"{unrelated}_se", float("nan")) * 100,
                   r.get(f"{own}_se", float("nan")) * 100] for _, r in part.iterrows()]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers+text", name=text(label), text=[f"k={int(k)}" for k in part["k"]],
            textposition="top center", marker=dict(color=color(c), size=8), line=dict(color=color(c)),
            error_x=dict(type="data", array=100 * part.get(f"{unrelated}_se", 0 * x).fillna(0), visible=True,
                         thickness=1),
            error_y=dict(type="data", array=100 * part.get(f"{own}_se", 0 * y).fillna(0), visible=True, thickness=1),
            customdata=custom,
            hovertemplate=("%{customdata[0]}<br>k = %{customdata[1]} (mean %{customdata[2]:.1f} neurons; "
                           "%{customdata[3]}/%{customdata[4]} facts with neurons)<br>"
                           f"{TRADEOFF_LABELS[unrelated]}: drop %{{x:.1f}}% ± %{{customdata[5]:.1f}}<br>"
                           f"{TRADEOFF_LABELS[own]}: drop %{{y:.1f}}% ± %{{customdata[6]:.1f}}<extra></extra>"),
        ))
    fig.add_vline(x=0, line_color="gray", line_width=1)
    return layout(fig, title or f"Specificity trade-off: {TRADEOFF_LABELS[own]} vs {TRADEOFF_LABELS[unrelated]}",
                  f"drop of P on {TRADEOFF_LABELS[unrelated]} (%; mean ± s.e. over facts)",
                  f"drop of P on {TRADEOFF_LABELS[own]} (%)", legend_title="method · selection")


def read_tradeoff_table(path: str | os.PathLike):
    """The rows of ``DIR/tradeoff.json`` as a DataFrame; None when the file is absent, and None with a
    warning when it is not a :class:`~lakn.evaluation.tradeoff.TradeoffResult` file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return TradeoffResult.load(path).to_dataframe()
    except (OSError, ValueError) as err:
        warnings.warn(f"lakn: {path} is not a TradeoffResult file ({err}); no trade-off figure", stacklevel=2)
        return None
