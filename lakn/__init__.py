"""lakn: find and use language-agnostic knowledge neurons (LAKNs) in multilingual language models.

    import lakn
    model = lakn.load_model()                       # Gemma 3 270M, offline, cached
    facts = lakn.load_facts("demo")
    result = lakn.localize(model, facts[:3], languages=["en", "fr", "zh"], steps=10)
    result.neurons(facts[0].fact_id)                # [(layer, neuron), ...]

The data path, one module per step (README "Architecture"): facts / config / hooks / models ->
tokens -> probability / objective -> results -> attribution -> selection / scoring -> splits /
interventions / weights -> keys -> pivot -> closed_form -> closed_form_edit -> editing -> localization -> evaluation -> plotting -> report -> cli; beside it, rml (build
RML-LAMA-style facts from mParaRel) above facts, known (which facts the model knows) above probability
and translate (the model's own translation of an answer) above tokens.
"""

from ._deprecation import deprecated_names
from ._version import __version__
from .attribution import QueryAttribution, attribute_queries, coarse_to_fine, integrated_gradients, step_grid
from .config import RunConfig, RunConfigError
from .facts import LANGUAGES, Fact, FactsError, Query, load_facts, select_facts
from .hooks import Neuron, add_hook, capture_hook, hook_name, neuron_hooks, scale_hook, set_hook
from .models import ModelLoadError, cache_dir, load_model
from .probability import AnswerStats, answer_probability, answer_stats, batch_answer_probability, change_rate
from .results import LocalizationResult
from .scoring import FactScores, score_fact
from .selection import neuron_sets, select_neurons, specific_scores
from .splits import Split, split_facts
from .tokens import encode_query
from .interventions import enhance, intervene, suppress
from .editing import EDIT_METHODS, Edit, edit_fact, edit_facts, inject_fact, layer_neurons, w_out
from .closed_form import Preservation, preservation
from .keys import key_neurons
from .pivot import lens_ranks, pivot_layer
from . import causal  # (the causal selection: lakn.causal.reselect, reference_damage, ...)
from .causal import reselect
from .localization import localize
from .evaluation import (
    ChangeRateResult, EditingResult, EnhancementResult, InjectionResult, TradeoffResult, change_rates,
    edit_evaluation, editing_experiment, enhancement_experiment, injection_experiment, load_runs, localize_methods, tradeoff,
    generality_by_prior, locality_by_margin, unrelated_facts,
)
from . import plotting  # (figures: lakn.plotting.layer_distribution, write_run_figures, ...)
from .rml import BuildReport, build_rml
from .known import KnownTable, filter_known, select_known
from .translate import translate_answer
from .report import write_report

__all__ = [
    "__version__",
    "QueryAttribution", "attribute_queries", "coarse_to_fine", "integrated_gradients", "step_grid",
    "RunConfig", "RunConfigError",
    "LANGUAGES", "Fact", "FactsError", "Query", "load_facts", "select_facts",
    "Neuron", "capture_hook", "hook_name", "neuron_hooks", "scale_hook", "set_hook", "add_hook",
    "ModelLoadError", "cache_dir", "load_model",
    "AnswerStats", "answer_probability", "answer_stats", "batch_answer_probability", "change_rate",
    "LocalizationResult",
    "FactScores", "score_fact",
    "neuron_sets", "select_neurons", "specific_scores",
    "Split", "split_facts",
    "encode_query",
    "enhance", "intervene", "suppress",
    "EDIT_METHODS", "Edit", "edit_fact", "edit_facts", "inject_fact", "layer_neurons", "w_out",
    "Preservation", "preservation", "key_neurons", "lens_ranks", "pivot_layer",
    "causal", "reselect",
    "localize",
    "TradeoffResult", "tradeoff", "unrelated_facts", "locality_by_margin", "generality_by_prior", "load_runs",
    "ChangeRateResult", "EditingResult", "EnhancementResult", "InjectionResult", "change_rates",
    "edit_evaluation", "editing_experiment", "enhancement_experiment", "injection_experiment", "localize_methods",
    "plotting",
    "BuildReport", "build_rml",
    "KnownTable", "filter_known", "select_known",
    "translate_answer",
    "write_report",
]

__getattr__ = deprecated_names(__name__, {"answer_probabilities": "lakn.probability:answer_stats"})
