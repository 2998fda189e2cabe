"""One fact's scores: its score map and its top neurons' per-language scores."""

from __future__ import annotations

from ._style import check_fact, color, layout, text

__all__ = ["score_map", "language_scores"]


def _top_neurons(score, top: int) -> list[tuple[int, int]]:
    import torch

    flat = torch.as_tensor(score).flatten()
    k = min(int(top), flat.numel())
    idx = torch.topk(flat, k).indices.tolist()
    d = score.shape[1]
    return [(i // d, i % d) for i in idx]


def score_map(result, fact_id: str, top: int = 10):
    """Heatmap of one fact's score map (layers x neurons), its ``top`` neurons labelled.

    The map is the score that selected the LAKNs (``result.score(fact_id)``: the fact-specific
    score when the run used it, else the raw LAA). Labelled markers show the top neurons;
    LAKNs are drawn as circles, other top neurons as crosses.
    """
    import plotly.graph_objects as go

    check_fact(result, fact_id)
    score = result.score(fact_id).float()
    n_layers, d_mlp = score.shape
    which = "fact-specific LAA" if fact_id in result.specific else "LAA"
    fid = text(fact_id)
    zmax = float(score.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=score.tolist(), x=list(range(d_mlp)), y=list(range(n_layers)), colorscale="RdBu_r", zmid=0,
        zmin=-zmax, zmax=zmax, colorbar=dict(title=which),
        hovertemplate=(f"fact: {fid}<br>language: all<br>layer %{{y}}<br>neuron %{{x}}<br>"
                       f"{which}: %{{z:.4f}}<extra></extra>"),
    ))
    lakns = set(result.lakn.get(fact_id, []))
    tops = _top_neurons(score, top)
    if tops:
        fig.add_trace(go.Scatter(
            x=[n for _, n in tops], y=[l for l, _ in tops], mode="markers+text",
            text=[f"L{l}.{n}" for l, n in tops], textposition="top center",
            marker=dict(symbol=["circle-open" if t in lakns else "x-thin-open" for t in tops], size=11,
                        color="black", line=dict(width=2)),
            customdata=[[float(score[l, n]), "yes" if (l, n) in lakns else "no", r + 1]
                        for r, (l, n) in enumerate(tops)],
            hovertemplate=(f"fact: {fid}<br>language: all<br>layer %{{y}}<br>neuron %{{x}}<br>"
                           f"{which}: %{{customdata[0]:.4f}}<br>rank %{{customdata[2]}}<br>"
                           "LAKN: %{customdata[1]}<extra></extra>"),
            name=f"top {len(tops)}", showlegend=False,
        ))
    layout(fig, f"{which} score map — {fid} ({len(lakns)} LAKNs)", "neuron", "layer")
    fig.update_yaxes(dtick=1 if n_layers <= 40 else None)
    return fig


def language_scores(result, fact_id: str, top: int = 10):
    """Grouped bars: the per-language scores s_l of one fact's ``top`` neurons (by its score map).

    One bar trace per language (``trace.y[i]`` is s_l of neuron ``i``), plus the cross-language
    score as black diamonds. A language-agnostic neuron scores high in every language.
    """
    import plotly.graph_objects as go

    check_fact(result, fact_id)
    rec = result.records[fact_id]
    score = result.score(fact_id).float()
    tops = _top_neurons(score, top)
    labels = [f"L{l}.{n}" for l, n in tops]
    lakns = set(result.lakn.get(fact_id, []))
    fid = text(fact_id)
    fig = go.Figure()
    for i, (lang, s) in enumerate(rec.per_language.items()):
        values = [float(s[l, n]) for l, n in tops]
        fig.add_trace(go.Bar(
            x=labels, y=values, name=lang, marker_color=color(i),
            customdata=[[lang, l, n, "yes" if (l, n) in lakns else "no"] for l, n in tops],
            hovertemplate=(f"fact: {fid}<br>language: %{{customdata[0]}}<br>layer %{{customdata[1]}}<br>"
                           "neuron %{customdata[2]}<br>score s_l: %{y:.4f}<br>LAKN: %{customdata[3]}<extra></extra>"),
        ))
    which = "fact-specific LAA" if fact_id in result.specific else "LAA"
    fig.add_trace(go.Scatter(
        x=labels, y=[float(score[l, n]) for l, n in tops], mode="markers", name=which,
        marker=dict(symbol="diamond", size=10, color="black"),
        customdata=[[l, n] for l, n in tops],
        hovertemplate=(f"fact: {fid}<br>language: all<br>layer %{{customdata[0]}}<br>neuron %{{customdata[1]}}"
                       f"<br>{which}: %{{y:.4f}}<extra></extra>"),
    ))
    layout(fig, f"Per-language scores of the top {len(tops)} neurons — {fid}", "neuron (layer.index)",
            "score", barmode="group", legend_title="language")
    return fig

