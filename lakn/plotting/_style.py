"""What every lakn figure shares: the template, the colour order, titles and labels, run names."""

from __future__ import annotations

import html

__all__ = ["TEMPLATE", "PATTERNS", "color", "layout", "run_label", "check_fact", "text"]

TEMPLATE = "plotly_white"
# one colour per run / method / language, in order (plotly's qualitative "Plotly" palette)
_COLORS = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
           "#FF97FF", "#FECB52"]
PATTERNS = ["", "/", "x", ".", "\\", "+"]
"""Bar fill patterns: the first (none) for a fact's own queries, the others for other facts'."""


def color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def text(value) -> str:
    """A data string (fact id, run name, method, model) made safe for a figure's text.

    Plotly renders tags such as ``<b>``, ``<br>`` or ``<a href=...>`` in titles, legends, tick and
    hover labels, and fills ``%{...}`` in hover templates; ``&``, ``<``, ``>`` and ``%`` therefore
    become entities, which plotly shows as the characters themselves. Use it on every string that
    comes from data or configuration, never on lakn's own markup."""
    return html.escape(str(value), quote=False).replace("%", "&#37;")


def layout(fig, title: str, x: str, y: str, **kwargs):
    fig.update_layout(title=dict(text=title, x=0.01), template=TEMPLATE, xaxis_title=x, yaxis_title=y,
                      hoverlabel=dict(namelength=-1), legend=dict(title=kwargs.pop("legend_title", None)),
                      **kwargs)
    return fig


def run_label(result) -> str:
    cfg = result.config
    model = str(cfg.get("model", "model")).rstrip("/").split("/")[-1]
    return f"{model} · {cfg.get('method', '?')}"


def check_fact(result, fact_id: str) -> None:
    if fact_id not in result.records:
        raise KeyError(f"fact {fact_id!r} is not in this result; facts: {result.fact_ids[:10]}")

