"""What suppressing and enhancing the neurons does: the probability change rate, by name.

The figures read the schema of :class:`~lakn.evaluation.ChangeRateResult` (``DIR/eval.json``) by
its column names: nothing is guessed or renamed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from ..evaluation.change_rates import ChangeRateResult
from ..results import ResultTable
from ._style import PATTERNS, TEMPLATE, color, text

__all__ = ["CHANGE_COLUMNS", "summarize_changes", "probability_change", "read_eval_table"]

CHANGE_COLUMNS = {
    "language": "language code of the query (required)",
    "change": "probability change rate (P_after - P_before) / P_before of the answer (required)",
    "intervention": "'suppress' or 'enhance' (optional; one panel per value)",
    "kind": "which queries: 'related' (the fact's own), 'same_relation' or 'other_relation' (optional)",
    "method": "neuron-selection method, e.g. 'matrice', 'kn', 'random' (optional)",
    "split": "seen / heldout_paraphrase / heldout_language (optional; filter with split=)",
}
"""The columns the change figures read: those of :class:`~lakn.evaluation.ChangeRateResult`."""

_DEFAULTS = {"method": "lakn", "intervention": "intervention", "kind": "related"}


def _change_table(changes):
    """``changes`` (a result table or a DataFrame) as a DataFrame with every column the figures use."""
    df = changes.to_dataframe() if isinstance(changes, ResultTable) else changes
    missing = [c for c in ("language", "change") if c not in df.columns]
    if missing:
        raise ValueError(
            f"probability_change needs columns {missing}; got {list(df.columns)}. Expected: "
            + "; ".join(f"{k}: {v}" for k, v in CHANGE_COLUMNS.items())
        )
    df = df.copy()
    for col, default in _DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
        df[col] = df[col].astype(str)
    df["language"] = df["language"].astype(str)
    df["change"] = df["change"].astype(float)
    return df


def summarize_changes(changes, spread: str = "std", split: str | Sequence[str] | None = None):
    """Mean change rate with its spread per (intervention, method, kind, language).

    ``spread``: ``"std"`` (standard deviation of the rows, default), ``"sem"`` (standard error)
    or ``"ci95"`` (1.96 standard errors); ``split`` keeps only rows of that split (or splits).
    Returns columns intervention, method, kind, language, mean, spread, n.
    """
    if spread not in ("std", "sem", "ci95"):
        raise ValueError(f"spread must be 'std', 'sem' or 'ci95', got {spread!r}")
    df = _change_table(changes)
    keys = ["intervention", "method", "kind", "language"]
    if split is not None and "split" in df.columns:
        df = df[df["split"].isin([split] if isinstance(split, str) else list(split))]
    g = df.groupby(keys, sort=False)["change"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["std"] = out["std"].fillna(0.0)
    if spread == "std":
        out["spread"] = out["std"]
    else:
        out["spread"] = out["std"] / out["n"].clip(lower=1) ** 0.5 * (1.96 if spread == "ci95" else 1.0)
    return out[keys + ["mean", "spread", "n"]]


def probability_change(changes, *, spread: str = "std", split: str | Sequence[str] | None = None,
                       title: str | None = None):
    """Bar chart of the probability change rate per language, method and kind of query (the fact's
    own or other facts'), one panel per intervention (suppress, enhance), with error bars.

    ``changes``: a :class:`~lakn.evaluation.ChangeRateResult` or a table in its schema, one row per
    query (or per fact): columns ``language`` and ``change`` (the rate (P_after - P_before) /
    P_before), and optionally ``intervention``, ``kind`` and ``method`` (see :data:`CHANGE_COLUMNS`).
    Bars show the mean, error bars the ``spread`` (``std``, ``sem`` or ``ci95``); related bars are
    solid, other kinds hatched. ``split`` keeps only rows of that split (e.g. ``"heldout_language"``).

    With :func:`lakn.change_rates`: ``probability_change(rates.to_dataframe())`` (one row per
    query), or ``probability_change(rates.per_fact())`` for error bars over facts.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    summary = summarize_changes(changes, spread, split)
    if summary.empty:
        raise ValueError(f"no rows to plot (split={split!r})")
    interventions = list(dict.fromkeys(summary["intervention"]))
    methods = list(dict.fromkeys(summary["method"]))
    kinds = list(dict.fromkeys(summary["kind"]))
    languages = list(dict.fromkeys(summary["language"]))
    fig = make_subplots(rows=1, cols=len(interventions), subplot_titles=[text(i) for i in interventions],
                        shared_yaxes=True)
    for c, intervention in enumerate(interventions, start=1):
        part = summary[summary["intervention"] == intervention]
        for i, method in enumerate(methods):
            for j, kind in enumerate(kinds):
                rows = part[(part["method"] == method) & (part["kind"] == kind)]
                if rows.empty:
                    continue
                rows = rows.set_index("language").reindex([l for l in languages if l in set(rows["language"])])
                related = kind == "related"
                fig.add_trace(go.Bar(
                    x=list(rows.index), y=rows["mean"].tolist(),
                    error_y=dict(type="data", array=rows["spread"].tolist(), visible=True),
                    name=f"{text(method)} · {text(kind)}", legendgroup=f"{method} · {kind}", showlegend=c == 1,
                    marker=dict(color=color(i), pattern_shape="" if related else PATTERNS[1 + j % 5],
                                opacity=1.0 if related else 0.6),
                    customdata=[[text(method), text(kind), text(intervention), s, n]
                                for s, n in zip(rows["spread"].tolist(), rows["n"].tolist())],
                    hovertemplate=("method: %{customdata[0]}<br>language: %{x}<br>queries: %{customdata[1]}"
                                   "<br>intervention: %{customdata[2]}<br>mean change: %{y:.1%}"
                                   f"<br>{spread}: %{{customdata[3]:.1%}}<br>rows: %{{customdata[4]}}<extra></extra>"),
                ), row=1, col=c)
        fig.update_xaxes(title_text="language", row=1, col=c)
    fig.update_yaxes(title_text="probability change rate (P_after − P_before) / P_before", tickformat=".0%",
                     row=1, col=1)
    fig.update_layout(title=dict(text=title or f"Probability change of the answer (mean ± {spread})", x=0.01),
                      template=TEMPLATE, barmode="group", legend=dict(title="method · queries"),
                      hoverlabel=dict(namelength=-1))
    fig.add_hline(y=0, line_color="gray", line_width=1)
    return fig




def read_eval_table(path: str | os.PathLike):
    """The rows of ``DIR/eval.json`` (a :class:`~lakn.evaluation.ChangeRateResult`) as a DataFrame;
    None when the file is absent, and None with a warning when it is not such a file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return ChangeRateResult.load(path).to_dataframe()
    except (OSError, ValueError) as err:
        warnings.warn(f"lakn: {path} is not a ChangeRateResult file ({err}); no probability-change figure",
                      stacklevel=2)
        return None
