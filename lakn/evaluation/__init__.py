"""Measure what LAKNs do: probability change rates, editing, enhancement, injection.

Every experiment returns a :class:`~lakn.results.ResultTable` holding one row per measurement plus
the settings that made it, with ``to_dataframe()`` (raw rows, for figures), ``table()`` (the
summary the CLI prints) and ``save(path)`` / ``load(path)`` as JSON. One module per experiment:

- :mod:`~lakn.evaluation.change_rates`: suppress / enhance, (P_after - P_before) / P_before and top-1
  retention under the fair specificity protocol (groups and the unrelated sample: :mod:`~lakn.evaluation.specificity`);
- :mod:`~lakn.evaluation.tradeoff`: own against unrelated drop over neuron counts and contrast weights;
- :mod:`~lakn.evaluation.editing`: cross-lingual editing (reliability, generality, locality);
- :mod:`~lakn.evaluation.enhancement`: enhancement in the languages the model gets wrong;
- :mod:`~lakn.evaluation.injection`: teaching fictional facts;
- :mod:`~lakn.evaluation.runs`: one localisation per method, and reading run folders back.

The honest split is :mod:`lakn.splits`, the neuron sets compared are :mod:`lakn.selection`.
"""

from __future__ import annotations

from typing import Any

from .._deprecation import deprecated_names, warn_renamed
from .change_rates import INTERVENTIONS, ChangeRateResult, change_rates
from .editing import EditingResult, counterfactuals, edit_evaluation, editing_experiment
from .enhancement import EnhancementResult, enhancement_experiment
from .injection import InjectionResult, injection_experiment
from .runs import load_runs, localize_methods
from .specificity import GROUPS, generality_by_prior, locality_by_margin, unrelated_facts
from .tradeoff import TradeoffResult, tradeoff

__all__ = [
    "ChangeRateResult", "change_rates", "INTERVENTIONS", "GROUPS", "unrelated_facts", "locality_by_margin", "generality_by_prior",
    "TradeoffResult", "tradeoff",
    "EditingResult", "counterfactuals", "edit_evaluation", "editing_experiment",
    "EnhancementResult", "enhancement_experiment",
    "InjectionResult", "injection_experiment",
    "localize_methods", "load_runs",
]

_moved = deprecated_names(__name__, {
    **{name: f"lakn.splits:{name}" for name in ("Split", "split_facts", "EvalQuery", "evaluation_queries", "SPLITS")},
    "query_probabilities": "lakn.probability:batch_answer_probability",
    "neuron_sets": "lakn.selection:neuron_sets",
    "editing_sets": "lakn.selection:editing_sets",
})


def __getattr__(name: str) -> Any:
    if name == "FICTIONAL_FACTS":  # was loaded at import; now read on first use
        warn_renamed("lakn.evaluation.FICTIONAL_FACTS", 'lakn.load_facts("fictional")')
        from ..facts import load_facts

        return load_facts("fictional")
    return _moved(name)
