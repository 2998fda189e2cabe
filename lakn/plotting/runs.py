"""Every figure of a run folder, written as offline HTML (``lakn plot RUN``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .changes import probability_change, read_eval_table
from .languages import language_overlap
from .layers import lakn_vs_specific, layer_distribution
from .scores import language_scores, score_map
from .tradeoff import read_tradeoff_table, tradeoff_figure

__all__ = ["run_figures", "write_run_figures", "tradeoff_figures"]


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


def tradeoff_figures(table) -> dict[str, Any]:
    """The trade-off figures of a :class:`~lakn.evaluation.tradeoff.TradeoffResult` table, by file stem:
    own seen drop against the other-relation drop and against the same-relation different-answer drop."""
    if table is None or not len(table):
        return {}
    return {"tradeoff_other_relations": tradeoff_figure(table),
            "tradeoff_same_relation": tradeoff_figure(table, unrelated="same_relation_different_answer")}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "fact"


def write_run_figures(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      *, max_facts: int = 5) -> list[Path]:
    """Write every figure of a run folder as HTML into ``out_dir`` (default ``RUN/figures``).

    Files work offline: ``plotly.min.js`` is written once into ``out_dir`` and every HTML file
    references it (keep them together). The probability-change figure is drawn when
    ``RUN/eval.json`` exists and holds a change table (see :func:`read_eval_table`), the trade-off
    figures when ``RUN/tradeoff.json`` does (also in a folder of runs, which has no ``result.json``). Prints
    nothing; returns the paths of the HTML files.
    """
    from ..results import LocalizationResult

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    trade = read_tradeoff_table(run_dir / "tradeoff.json")
    if trade is not None and not (run_dir / "result.json").exists():  # a folder of runs (lakn.localize_methods)
        figs = tradeoff_figures(trade)
    else:
        result = LocalizationResult.load(run_dir)  # names the problem when result.json is missing
        figs = {**run_figures(result, eval_table=read_eval_table(run_dir / "eval.json"), max_facts=max_facts),
                **tradeoff_figures(trade)}
    out = Path(out_dir) if out_dir is not None else run_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figs.items():
        path = out / f"{stem}.html"
        fig.write_html(str(path), include_plotlyjs="directory", full_html=True)
        paths.append(path)
    return paths
