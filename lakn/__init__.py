"""lakn: find and use language-agnostic knowledge neurons (LAKNs) in multilingual language models.

    import lakn
    model = lakn.load_model()                       # Gemma 3 270M, offline, cached
    facts = lakn.load_facts("demo")
    result = lakn.localize(model, facts[:3], languages=["en", "fr", "zh"], steps=10)
    result.neurons(facts[0].fact_id)                # [(layer, neuron), ...]
"""

__version__ = "0.1.0"

from .attribution import QueryAttribution, attribute_queries, coarse_to_fine, integrated_gradients, step_grid
from .facts import LANGUAGES, Fact, FactsError, Query, load_facts, select_facts
from .hooks import capture_hook, hook_name, neuron_hooks, scale_hook, set_hook, add_hook
from .localization import RunConfigError, localize
from .models import ModelLoadError, cache_dir, load_model
from .results import LocalizationResult
from .scoring import FactScores, score_fact, select_neurons, specific_scores
from .tokens import answer_probabilities, encode_query
from .interventions import Edit, answer_probability, edit_fact, enhance, inject_fact, intervene, suppress, w_out
from .evaluation import (
    ChangeRateResult, EditingResult, EnhancementResult, InjectionResult, Split, change_rates, editing_experiment,
    enhancement_experiment, injection_experiment, localize_methods, split_facts,
)

__all__ = [
    "__version__",
    "QueryAttribution", "attribute_queries", "coarse_to_fine", "integrated_gradients", "step_grid",
    "LANGUAGES", "Fact", "FactsError", "Query", "load_facts", "select_facts",
    "capture_hook", "hook_name", "neuron_hooks", "scale_hook", "set_hook", "add_hook",
    "RunConfigError", "localize",
    "ModelLoadError", "cache_dir", "load_model",
    "LocalizationResult",
    "FactScores", "score_fact", "select_neurons", "specific_scores",
    "answer_probabilities", "encode_query",
    "Edit", "answer_probability", "edit_fact", "enhance", "inject_fact", "intervene", "suppress", "w_out",
    "ChangeRateResult", "EditingResult", "EnhancementResult", "InjectionResult", "Split", "change_rates",
    "editing_experiment", "enhancement_experiment", "injection_experiment", "localize_methods", "split_facts",
]

from . import plotting  # noqa: E402  (figures: lakn.plotting.layer_distribution, write_run_figures, ...)
