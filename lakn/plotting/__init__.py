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

One module per kind of figure: :mod:`~lakn.plotting.layers`, :mod:`~lakn.plotting.scores`,
:mod:`~lakn.plotting.languages`, :mod:`~lakn.plotting.changes`, :mod:`~lakn.plotting.tradeoff` (own against
unrelated drop), :mod:`~lakn.plotting.runs`.
"""

from .changes import CHANGE_COLUMNS, probability_change, read_eval_table, summarize_changes
from .languages import jaccard, language_overlap, overlap_matrix
from .layers import lakn_vs_specific, layer_counts, layer_distribution
from .runs import run_figures, tradeoff_figures, write_run_figures
from .scores import language_scores, score_map
from .tradeoff import TRADEOFF_LABELS, read_tradeoff_table, tradeoff_figure

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
    "tradeoff_figure",
    "tradeoff_figures",
    "read_tradeoff_table",
    "TRADEOFF_LABELS",
    "CHANGE_COLUMNS",
]
