"""Figures of a localisation run (plotly): where the LAKNs are, how languages share them, what
suppressing and enhancing them does.

Every function returns a :class:`plotly.graph_objects.Figure`; titles, axis labels and hover
text are built the same way everywhere (hover shows fact, language, layer, neuron and score
where they apply). ``write_run_figures(run_dir)`` writes every figure that applies to a run
folder as standalone HTML that works offline (``lakn plot RUN``)::

    result = lakn.LocalizationResult.load("runs/demo")
    lakn.plotting.layer_distribution(result, share=True).show()
    lakn.plotting.layer_distribution({"gemma": r1, "llama": r2}, relative_depth=True).show()
    lakn.plotting.write_run_figures("runs/demo")     # -> [Path("runs/demo/figures/..."), ...]
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import plotly.graph_objects as go

    from .results import LocalizationResult

__all__ = [
    "layer_distribution",
    "layer_counts",
    "score_map",
    "language_scores",
    "language_overlap",
    "overlap_matrix",
    "jaccard",
    "lakn_vs_specific",
    "probability_change",
    "summarize_changes",
    "read_eval_table",
    "run_figures",
    "write_run_figures",
    "CHANGE_COLUMNS",
]

_TEMPLATE = "plotly_white"
# one colour per run / method / language, in order (plotly's qualitative "Plotly" palette)
_COLORS = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3", "#FF6692", "#B6E880",
           "#FF97FF", "#FECB52"]


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _layout(fig, title: str, x: str, y: str, **kwargs):
    fig.update_layout(title=dict(text=title, x=0.01), template=_TEMPLATE, xaxis_title=x, yaxis_title=y,
                      hoverlabel=dict(namelength=-1), legend=dict(title=kwargs.pop("legend_title", None)),
                      **kwargs)
    return fig


def _run_label(result) -> str:
    cfg = result.config
    model = str(cfg.get("model", "model")).rstrip("/").split("/")[-1]
    return f"{model} · {cfg.get('method', '?')}"


def _check_fact(result, fact_id: str) -> None:
    if fact_id not in result.records:
        raise KeyError(f"fact {fact_id!r} is not in this result; facts: {result.fact_ids[:10]}")


# --------------------------------------------------------------------------- layer distribution


def layer_counts(result, kind: str = "lakn") -> list[int]:
    """Number of selected neurons per layer, summed over the run's facts.

    ``kind``: ``"lakn"`` (default) or ``"language_specific"`` (summed over languages too).
    """
    counts = [0] * result.n_layers
    if kind == "lakn":
        sets: Iterable = result.lakn.values()
    elif kind == "language_specific":
        sets = (neurons for per_lang in result.language_specific.values() for neurons in per_lang.values())
    else:
        raise ValueError(f"kind must be 'lakn' or 'language_specific', got {kind!r}")
    for neurons in sets:
        for layer, _ in neurons:
            counts[int(layer)] += 1
    return counts


def _as_runs(result_or_results, names: Sequence[str] | None) -> list[tuple[str, Any]]:
    if isinstance(result_or_results, Mapping):
        runs = list(result_or_results.items())
        if names is not None:
            raise ValueError("pass names only with a result or a list of results, not with a dict")
        return [(str(k), v) for k, v in runs]
    if hasattr(result_or_results, "records"):
        results = [result_or_results]
    else:
        results = list(result_or_results)
    if not results:
        raise ValueError("no results to plot")
    if names is None:
        labels = [_run_label(r) for r in results]
        seen = Counter(labels)
        if len(seen) < len(labels):  # same model and method twice: number them
            labels = [f"{lab} ({i + 1})" for i, lab in enumerate(labels)]
        names = labels
    if len(names) != len(results):
        raise ValueError(f"got {len(names)} names for {len(results)} results")
    return list(zip([str(n) for n in names], results))


def layer_distribution(result_or_results, *, share: bool = False, relative_depth: bool = False,
                       names: Sequence[str] | None = None, kind: str = "lakn"):
    """Bar chart of LAKNs per layer (the paper's figure), for one run or several side by side.

    Args:
        result_or_results: a :class:`LocalizationResult`, a list of them, or a dict
            ``{name: result}`` (e.g. one per model or per method).
        share: plot each run's share of its LAKNs per layer instead of the count (compares runs
            with different numbers of facts or LAKNs).
        relative_depth: put layer ``l`` of an ``L``-layer model at depth ``(l + 0.5) / L``
            (0 = input, 1 = output), so models of different depth line up.
        names: legend names for a list of results (default: model · method).
        kind: ``"lakn"`` or ``"language_specific"``.

    One bar trace per run; ``trace.y`` holds the counts (or shares) in layer order.
    """
    import plotly.graph_objects as go

    runs = _as_runs(result_or_results, names)
    fig = go.Figure()
    k = len(runs)
    for j, (name, result) in enumerate(runs):
        counts = layer_counts(result, kind)
        n_layers = len(counts)
        total = sum(counts)
        shares = [c / total if total else 0.0 for c in counts]
        y = shares if share else counts
        layers = list(range(n_layers))
        facts_per_layer = [sorted({fid for fid, ns in result.lakn.items() if any(l == layer for l, _ in ns)})
                           for layer in layers] if kind == "lakn" else [[] for _ in layers]
        custom = [[layer, counts[layer], shares[layer], n_layers, _short_list(facts_per_layer[layer])]
                  for layer in layers]
        hover = (f"<b>{name}</b><br>layer %{{customdata[0]}} of %{{customdata[3]}}<br>"
                 "neurons: %{customdata[1]}<br>share: %{customdata[2]:.1%}<br>facts: %{customdata[4]}<extra></extra>")
        bar = dict(name=name, y=y, customdata=custom, hovertemplate=hover, marker_color=_color(j))
        if relative_depth:
            width = 0.9 / (n_layers * k)
            x = [(layer + 0.5) / n_layers for layer in layers]
            fig.add_trace(go.Bar(x=x, width=width, offset=-0.45 / n_layers + j * width, **bar))
        else:
            fig.add_trace(go.Bar(x=layers, **bar))
    what = "LAKNs" if kind == "lakn" else "language-specific neurons"
    title = f"{what} per layer" + ("" if k > 1 else f" — {runs[0][0]}, {len(runs[0][1].records)} facts")
    ytitle = f"share of {what}" if share else f"{what} (summed over facts)"
    xtitle = "relative depth (layer + 0.5) / layers" if relative_depth else "layer"
    _layout(fig, title, xtitle, ytitle, barmode="overlay" if relative_depth else "group", legend_title="run")
    if share:
        fig.update_yaxes(tickformat=".0%")
    if relative_depth:
        fig.update_xaxes(range=[0, 1])
    else:
        fig.update_xaxes(dtick=1 if max(len(layer_counts(r, kind)) for _, r in runs) <= 40 else None)
    return fig


def _short_list(items: Sequence[str], n: int = 6) -> str:
    if not items:
        return "—"
    return ", ".join(items[:n]) + (f" … (+{len(items) - n})" if len(items) > n else "")


# --------------------------------------------------------------------------- one fact


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

    _check_fact(result, fact_id)
    score = result.score(fact_id).float()
    n_layers, d_mlp = score.shape
    which = "fact-specific LAA" if fact_id in result.specific else "LAA"
    zmax = float(score.abs().max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=score.tolist(), x=list(range(d_mlp)), y=list(range(n_layers)), colorscale="RdBu_r", zmid=0,
        zmin=-zmax, zmax=zmax, colorbar=dict(title=which),
        hovertemplate=(f"fact: {fact_id}<br>language: all<br>layer %{{y}}<br>neuron %{{x}}<br>"
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
            hovertemplate=(f"fact: {fact_id}<br>language: all<br>layer %{{y}}<br>neuron %{{x}}<br>"
                           f"{which}: %{{customdata[0]:.4f}}<br>rank %{{customdata[2]}}<br>"
                           "LAKN: %{customdata[1]}<extra></extra>"),
            name=f"top {len(tops)}", showlegend=False,
        ))
    _layout(fig, f"{which} score map — {fact_id} ({len(lakns)} LAKNs)", "neuron", "layer")
    fig.update_yaxes(dtick=1 if n_layers <= 40 else None)
    return fig


def language_scores(result, fact_id: str, top: int = 10):
    """Grouped bars: the per-language scores s_l of one fact's ``top`` neurons (by its score map).

    One bar trace per language (``trace.y[i]`` is s_l of neuron ``i``), plus the cross-language
    score as black diamonds. A language-agnostic neuron scores high in every language.
    """
    import plotly.graph_objects as go

    _check_fact(result, fact_id)
    rec = result.records[fact_id]
    score = result.score(fact_id).float()
    tops = _top_neurons(score, top)
    labels = [f"L{l}.{n}" for l, n in tops]
    lakns = set(result.lakn.get(fact_id, []))
    fig = go.Figure()
    for i, (lang, s) in enumerate(rec.per_language.items()):
        values = [float(s[l, n]) for l, n in tops]
        fig.add_trace(go.Bar(
            x=labels, y=values, name=lang, marker_color=_color(i),
            customdata=[[lang, l, n, "yes" if (l, n) in lakns else "no"] for l, n in tops],
            hovertemplate=(f"fact: {fact_id}<br>language: %{{customdata[0]}}<br>layer %{{customdata[1]}}<br>"
                           "neuron %{customdata[2]}<br>score s_l: %{y:.4f}<br>LAKN: %{customdata[3]}<extra></extra>"),
        ))
    which = "fact-specific LAA" if fact_id in result.specific else "LAA"
    fig.add_trace(go.Scatter(
        x=labels, y=[float(score[l, n]) for l, n in tops], mode="markers", name=which,
        marker=dict(symbol="diamond", size=10, color="black"),
        customdata=[[l, n] for l, n in tops],
        hovertemplate=(f"fact: {fact_id}<br>language: all<br>layer %{{customdata[0]}}<br>neuron %{{customdata[1]}}"
                       f"<br>{which}: %{{y:.4f}}<extra></extra>"),
    ))
    _layout(fig, f"Per-language scores of the top {len(tops)} neurons — {fact_id}", "neuron (layer.index)",
            "score", barmode="group", legend_title="language")
    return fig


# --------------------------------------------------------------------------- languages


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
    sums = {(a, b): [] for a in langs for b in langs}
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
    _layout(fig, f"Overlap of {what} neuron sets between languages (mean over {len(result.records)} facts)",
            "language", "language")
    fig.update_yaxes(autorange="reversed")
    return fig


def lakn_vs_specific(result, *, by_language: bool = False):
    """Bars per layer: LAKNs against language-specific neurons (summed over facts).

    Language-specific neurons are averaged over languages (so both bars count one neuron set
    per fact), or, with ``by_language``, drawn as one bar per language.
    """
    import plotly.graph_objects as go

    n_layers = result.n_layers
    layers = list(range(n_layers))
    fig = go.Figure()
    lakn = layer_counts(result, "lakn")
    fig.add_trace(go.Bar(x=layers, y=lakn, name="LAKN (all languages)", marker_color="black",
                         hovertemplate="LAKNs<br>language: all<br>layer %{x}<br>neurons: %{y}<extra></extra>"))
    langs = list(result.languages) or sorted({l for v in result.language_specific.values() for l in v})
    per_lang = {l: [0] * n_layers for l in langs}
    for per in result.language_specific.values():
        for lang, neurons in per.items():
            per_lang.setdefault(lang, [0] * n_layers)
            for layer, _ in neurons:
                per_lang[lang][int(layer)] += 1
    if by_language:
        for i, (lang, counts) in enumerate(per_lang.items()):
            fig.add_trace(go.Bar(x=layers, y=counts, name=f"specific: {lang}", marker_color=_color(i),
                                 hovertemplate=(f"language-specific<br>language: {lang}<br>layer %{{x}}<br>"
                                                "neurons: %{y}<extra></extra>")))
    else:
        n = max(len(per_lang), 1)
        mean = [sum(c[layer] for c in per_lang.values()) / n for layer in layers]
        fig.add_trace(go.Bar(x=layers, y=mean, name="language-specific (mean per language)",
                             marker_color=_color(1),
                             hovertemplate=("language-specific<br>language: mean of " + ", ".join(per_lang)
                                            + "<br>layer %{x}<br>neurons: %{y:.2f}<extra></extra>")))
    _layout(fig, f"LAKNs vs language-specific neurons per layer — {_run_label(result)}, {len(result.records)} facts",
            "layer", "neurons (summed over facts)", barmode="group", legend_title="neurons")
    fig.update_xaxes(dtick=1 if n_layers <= 40 else None)
    return fig


# --------------------------------------------------------------------------- interventions

CHANGE_COLUMNS = {
    "language": "language code of the query (required)",
    "change": "probability change rate (P_after - P_before) / P_before of the answer (required; "
              "'change_rate' is accepted too)",
    "intervention": "'suppress' or 'enhance' (optional; one panel per value)",
    "relation": "which queries: 'related' (the fact's own) or 'unrelated' (optional; "
                "lakn.evaluation's column 'kind' with related / same_relation / other_relation is read "
                "as this column too)",
    "method": "neuron-selection method, e.g. 'matrice', 'kn', 'random' (optional)",
    "split": "seen / heldout_paraphrase / heldout_language (optional; filter with split=)",
}

_ALIASES = {"change_rate": "change", "rate": "change", "lang": "language", "kind": "relation",
            "queries": "relation", "mode": "intervention"}
_PATTERNS = ["", "/", "x", ".", "\\", "+"]


def _normalize_changes(df):
    df = df.rename(columns={k: v for k, v in _ALIASES.items() if k in df.columns and v not in df.columns})
    missing = [c for c in ("language", "change") if c not in df.columns]
    if missing:
        raise ValueError(
            f"probability_change needs columns {missing}; got {list(df.columns)}. Expected: "
            + "; ".join(f"{k}: {v}" for k, v in CHANGE_COLUMNS.items())
        )
    df = df.copy()
    for col, default in (("method", "lakn"), ("intervention", "intervention"), ("relation", "related")):
        if col not in df.columns:
            df[col] = default
        df[col] = df[col].astype(str)
    df["language"] = df["language"].astype(str)
    df["change"] = df["change"].astype(float)
    return df


def summarize_changes(df, spread: str = "std", split: str | Sequence[str] | None = None):
    """Mean change rate with its spread per (intervention, method, relation, language).

    ``spread``: ``"std"`` (standard deviation of the rows, default), ``"sem"`` (standard error)
    or ``"ci95"`` (1.96 standard errors); ``split`` keeps only rows of that split (or splits).
    Returns columns intervention, method, relation, language, mean, spread, n.
    """
    if spread not in ("std", "sem", "ci95"):
        raise ValueError(f"spread must be 'std', 'sem' or 'ci95', got {spread!r}")
    df = _normalize_changes(df)
    keys = ["intervention", "method", "relation", "language"]
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


def probability_change(df, *, spread: str = "std", split: str | Sequence[str] | None = None,
                       title: str | None = None):
    """Bar chart of the probability change rate per language, method and related/unrelated queries,
    one panel per intervention (suppress, enhance), with error bars.

    ``df`` is tidy, one row per query (or per fact): columns ``language`` and ``change`` (the
    rate (P_after - P_before) / P_before), and optionally ``intervention``, ``relation`` and
    ``method`` (see :data:`CHANGE_COLUMNS`). Bars show the mean, error bars the ``spread``
    (``std``, ``sem`` or ``ci95``); related bars are solid, unrelated ones hatched. ``split``
    keeps only rows of that split (e.g. ``"heldout_language"``).

    With :func:`lakn.change_rates`: ``probability_change(rates.to_dataframe())`` (one row per
    query), or ``probability_change(rates.per_fact())`` for error bars over facts.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    summary = summarize_changes(df, spread, split)
    if summary.empty:
        raise ValueError(f"no rows to plot (split={split!r})")
    interventions = list(dict.fromkeys(summary["intervention"]))
    methods = list(dict.fromkeys(summary["method"]))
    relations = list(dict.fromkeys(summary["relation"]))
    languages = list(dict.fromkeys(summary["language"]))
    fig = make_subplots(rows=1, cols=len(interventions), subplot_titles=interventions, shared_yaxes=True)
    for c, intervention in enumerate(interventions, start=1):
        part = summary[summary["intervention"] == intervention]
        for i, method in enumerate(methods):
            for j, relation in enumerate(relations):
                rows = part[(part["method"] == method) & (part["relation"] == relation)]
                if rows.empty:
                    continue
                rows = rows.set_index("language").reindex([l for l in languages if l in set(rows["language"])])
                related = relation == "related"
                fig.add_trace(go.Bar(
                    x=list(rows.index), y=rows["mean"].tolist(),
                    error_y=dict(type="data", array=rows["spread"].tolist(), visible=True),
                    name=f"{method} · {relation}", legendgroup=f"{method} · {relation}", showlegend=c == 1,
                    marker=dict(color=_color(i), pattern_shape="" if related else _PATTERNS[1 + j % 5],
                                opacity=1.0 if related else 0.6),
                    customdata=[[method, relation, intervention, s, n]
                                for s, n in zip(rows["spread"].tolist(), rows["n"].tolist())],
                    hovertemplate=("method: %{customdata[0]}<br>language: %{x}<br>queries: %{customdata[1]}"
                                   "<br>intervention: %{customdata[2]}<br>mean change: %{y:.1%}"
                                   f"<br>{spread}: %{{customdata[3]:.1%}}<br>rows: %{{customdata[4]}}<extra></extra>"),
                ), row=1, col=c)
        fig.update_xaxes(title_text="language", row=1, col=c)
    fig.update_yaxes(title_text="probability change rate (P_after − P_before) / P_before", tickformat=".0%",
                     row=1, col=1)
    fig.update_layout(title=dict(text=title or f"Probability change of the answer (mean ± {spread})", x=0.01),
                      template=_TEMPLATE, barmode="group", legend=dict(title="method · queries"),
                      hoverlabel=dict(namelength=-1))
    fig.add_hline(y=0, line_color="gray", line_width=1)
    return fig


def read_eval_table(path: str | os.PathLike):
    """Read ``DIR/eval.json`` into a tidy change table, or return ``None`` if it is absent or of a
    shape this module does not know (a list of rows, or a dict holding one under ``rows``,
    ``records``, ``queries``, ``changes`` or ``per_query``, with at least ``language`` and
    ``change``)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    rows = None
    if isinstance(data, list):
        rows = data
    elif isinstance(data, dict):
        for key in ("rows", "records", "queries", "changes", "per_query", "per_fact", "table"):
            if isinstance(data.get(key), list):
                rows = data[key]
                break
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    try:
        return _normalize_changes(pd.DataFrame(rows))
    except (ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- run folders


def run_figures(result, *, eval_table=None, top: int = 10, max_facts: int = 5) -> dict[str, Any]:
    """Every figure that applies to a result, by file stem: layer distribution (count and share),
    LAKNs vs language-specific, language overlap (with two or more languages), a score map and
    per-language scores for the first ``max_facts`` facts, and the probability change when
    ``eval_table`` is given."""
    figs: dict[str, Any] = {
        "layer_distribution": layer_distribution(result),
        "layer_distribution_share": layer_distribution(result, share=True),
        "lakn_vs_specific": lakn_vs_specific(result),
    }
    if len(result.languages) >= 2:
        figs["language_overlap"] = language_overlap(result)
    for fid in result.fact_ids[:max_facts]:
        stem = _safe(fid)
        figs[f"score_map_{stem}"] = score_map(result, fid, top=top)
        figs[f"language_scores_{stem}"] = language_scores(result, fid, top=top)
    if eval_table is not None and len(eval_table):
        figs["probability_change"] = probability_change(eval_table)
    return figs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "fact"


def write_run_figures(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      *, max_facts: int = 5) -> list[Path]:
    """Write every figure of a run folder as HTML into ``out_dir`` (default ``RUN/figures``).

    Files work offline: ``plotly.min.js`` is written once into ``out_dir`` and every HTML file
    references it (keep them together). The probability-change figure is drawn when
    ``RUN/eval.json`` exists and holds a change table (see :func:`read_eval_table`). Prints
    nothing; returns the paths of the HTML files.
    """
    from .results import LocalizationResult

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    result = LocalizationResult.load(run_dir)  # names the problem when result.json is missing
    out = Path(out_dir) if out_dir is not None else run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    figs = run_figures(result, eval_table=read_eval_table(run_dir / "eval.json"), max_facts=max_facts)
    paths = []
    for stem, fig in figs.items():
        path = out / f"{stem}.html"
        fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
        paths.append(path)
    return paths
