"""Where the neurons sit: counts per layer, for one run or several side by side."""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from ._style import color, layout, run_label, text

__all__ = ["layer_counts", "layer_distribution", "lakn_vs_specific"]


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
        labels = [run_label(r) for r in results]
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
        name = text(name)
        hover = (f"<b>{name}</b><br>layer %{{customdata[0]}} of %{{customdata[3]}}<br>"
                 "neurons: %{customdata[1]}<br>share: %{customdata[2]:.1%}<br>facts: %{customdata[4]}<extra></extra>")
        bar = dict(name=name, y=y, customdata=custom, hovertemplate=hover, marker_color=color(j))
        if relative_depth:
            width = 0.9 / (n_layers * k)
            x = [(layer + 0.5) / n_layers for layer in layers]
            fig.add_trace(go.Bar(x=x, width=width, offset=-0.45 / n_layers + j * width, **bar))
        else:
            fig.add_trace(go.Bar(x=layers, **bar))
    what = "LAKNs" if kind == "lakn" else "language-specific neurons"
    title = f"share of {what} per layer" if share else f"{what} per layer"
    if k == 1:
        title += f" — {text(runs[0][0])}, {len(runs[0][1].records)} facts"
    ytitle = f"share of {what}" if share else f"{what} (summed over facts)"
    xtitle = "relative depth (layer + 0.5) / layers" if relative_depth else "layer"
    layout(fig, title, xtitle, ytitle, barmode="overlay" if relative_depth else "group", legend_title="run")
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
    return ", ".join(text(i) for i in items[:n]) + (f" … (+{len(items) - n})" if len(items) > n else "")



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
            fig.add_trace(go.Bar(x=layers, y=counts, name=f"specific: {text(lang)}", marker_color=color(i),
                                 hovertemplate=(f"language-specific<br>language: {text(lang)}<br>layer %{{x}}<br>"
                                                "neurons: %{y}<extra></extra>")))
    else:
        n = max(len(per_lang), 1)
        mean = [sum(c[layer] for c in per_lang.values()) / n for layer in layers]
        fig.add_trace(go.Bar(x=layers, y=mean, name="language-specific (mean per language)",
                             marker_color=color(1),
                             hovertemplate=("language-specific<br>language: mean of " + ", ".join(map(text, per_lang))
                                            + "<br>layer %{x}<br>neurons: %{y:.2f}<extra></extra>")))
    label = text(run_label(result))
    layout(fig, f"LAKNs vs language-specific neurons per layer — {label}, {len(result.records)} facts",
            "layer", "neurons (summed over facts)", barmode="group", legend_title="neurons")
    fig.update_xaxes(dtick=1 if n_layers <= 40 else None)
    return fig

