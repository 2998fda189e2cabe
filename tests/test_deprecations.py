"""Old names keep working for one release, each with a DeprecationWarning that names the new one."""

from __future__ import annotations

import importlib

import pytest
import torch

from lakn.testing import tiny_model


@pytest.mark.parametrize("module, old, new", [
    ("lakn", "answer_probabilities", "lakn.probability.answer_stats"),
    ("lakn.tokens", "answer_probabilities", "lakn.probability.answer_stats"),
    ("lakn.tokens", "AnswerStats", "lakn.probability.AnswerStats"),
    ("lakn.objective", "answer_probability", "lakn.objective.output_target_probability"),
    ("lakn.interventions", "answer_probability", "lakn.probability.answer_probability"),
    ("lakn.interventions", "edit_fact", "lakn.editing.edit_fact"),
    ("lakn.interventions", "w_out", "lakn.editing.w_out"),
    ("lakn.evaluation", "query_probabilities", "lakn.probability.batch_answer_probability"),
    ("lakn.evaluation", "split_facts", "lakn.splits.split_facts"),
    ("lakn.evaluation", "neuron_sets", "lakn.selection.neuron_sets"),
    ("lakn.evaluation", "editing_sets", "lakn.selection.editing_sets"),
    ("lakn.scoring", "select_neurons", "lakn.selection.select_neurons"),
    ("lakn.scoring", "random_neurons", "lakn.selection.random_neurons"),
    ("lakn.attribution", "memory_estimate", "lakn.attribution.memory.memory_estimate"),
    ("lakn.attribution", "auto_batch_size", "lakn.attribution.memory.auto_batch_size"),
])
def test_old_name_warns_and_is_the_new_object(module, old, new):
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        got = getattr(importlib.import_module(module), old)
    path, name = new.rsplit(".", 1)
    assert got is getattr(importlib.import_module(path), name)


def test_unknown_names_still_raise_attribute_error():
    import lakn.evaluation

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lakn.evaluation.nope  # noqa: B018


def test_fictional_facts_are_read_on_first_use_only():
    import lakn.evaluation

    assert "FICTIONAL_FACTS" not in vars(lakn.evaluation)  # nothing loaded at import
    with pytest.warns(DeprecationWarning, match='load_facts\\("fictional"\\)'):
        facts = lakn.evaluation.FICTIONAL_FACTS
    assert [f.fact_id for f in facts] == [f.fact_id for f in lakn.load_facts("fictional")] and len(facts) == 10


def test_old_calls_give_the_same_numbers():
    import lakn
    import lakn.evaluation
    import lakn.tokens

    model = tiny_model("llama", weight_scale=4.0)
    query = lakn.Query("The capital of France is [Y]", "The capital of France is", "Paris", " ", "en")
    enc = lakn.encode_query(model, query)
    with pytest.warns(DeprecationWarning):
        old_stats = lakn.tokens.answer_probabilities(model, enc)
    assert old_stats == lakn.answer_stats(model, enc)
    with pytest.warns(DeprecationWarning):
        old_probs, old_ranks = lakn.evaluation.query_probabilities(model, [enc])
    new_probs, new_ranks = lakn.batch_answer_probability(model, [enc])
    assert torch.equal(old_probs, new_probs) and torch.equal(old_ranks, new_ranks)
    # mode= is the old name of attribution=, and QueryAttribution.mode of .attribution
    with pytest.warns(DeprecationWarning, match="attribution="):
        old = lakn.integrated_gradients(model, enc, steps=2, mode="reference")
    new = lakn.integrated_gradients(model, enc, steps=2, attribution="reference")
    assert torch.equal(old.attributions, new.attributions)
    with pytest.warns(DeprecationWarning, match="QueryAttribution.attribution"):
        assert old.mode == "reference"
    with pytest.warns(DeprecationWarning, match="attribution="):
        (batched,) = lakn.attribute_queries(model, [enc], steps=2, mode="reference")
    assert torch.equal(batched.attributions, new.attributions)
