"""Interventions and edits on tiny config-built models: hooks do what they say, compose, never leak;
W_out access per architecture (lakn.editing); reversible edits."""

import pytest
import torch

import lakn
from lakn.hooks import capture_hook, hook_name
from lakn.editing import Edit, activation_neurons, edit_fact, w_out
from lakn.interventions import enhance, intervene, suppress
from lakn.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", weight_scale=4.0)


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens("The capital of France is")


def _capture(model, tokens, layers=(0, 1)):
    store = {}
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name(l), capture_hook(store, l)) for l in layers])
    return store, logits


def _n_hooks(model):
    # hook_dict lists aliases (mlp.hook_post is mlp.out.hook_in): count each hook point once
    points = {id(hp): hp for hp in model.hook_dict.values()}
    return sum(len(hp.fwd_hooks) for hp in points.values())


@pytest.mark.parametrize("kind", ["suppress", "enhance", "factor", "value"])
def test_intervention_values(model, tokens, kind):
    neurons = [(0, 3), (1, 5), (1, 7)]
    cm = {"suppress": lambda: suppress(model, neurons), "enhance": lambda: enhance(model, neurons),
          "factor": lambda: intervene(model, neurons, factor=-1.5),
          "value": lambda: intervene(model, neurons, value=0.25)}[kind]
    pre = {}
    # hooks on one point run in the order they were added: "pre" sees what lakn's hook receives,
    # the capture inside the block sees what it returns
    with model.hooks(fwd_hooks=[(hook_name(l), capture_hook(pre, l)) for l in (0, 1)]), cm():
        changed, _ = _capture(model, tokens)
    for layer, i in neurons:
        a = pre[layer][..., i]
        expect = {"suppress": 0 * a, "enhance": 2 * a, "factor": -1.5 * a, "value": torch.full_like(a, 0.25)}[kind]
        assert torch.allclose(changed[layer][..., i], expect, atol=1e-6)
        assert a.abs().sum() > 0
    mask = torch.ones(pre[0].shape[-1], dtype=torch.bool)
    mask[3] = False
    assert torch.equal(changed[0][..., mask], pre[0][..., mask])  # other neurons untouched


def test_last_position_only(model, tokens):
    clean, _ = _capture(model, tokens, layers=(0,))
    with suppress(model, [(0, 2)], position="last"):
        changed, _ = _capture(model, tokens, layers=(0,))
    assert float(changed[0][0, -1, 2]) == 0.0
    assert torch.allclose(changed[0][0, :-1, 2], clean[0][0, :-1, 2])


def test_composes_with_user_hook_in_one_run_with_hooks(model, tokens):
    from lakn.hooks import neuron_hooks

    _, clean_logits = _capture(model, tokens)
    store = {}
    user = (hook_name(1), capture_hook(store, "user"))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=neuron_hooks([(1, 4)], factor=0.0) + [user])
    assert torch.all(store["user"][..., 4] == 0)  # lakn's hook took effect before the user's capture
    assert not torch.allclose(logits, clean_logits)  # and it changed the output
    assert store["user"][..., 5].abs().sum() > 0  # the user's hook saw the real activations
    # the context manager composes with a user's model.hooks block, both ways round
    store2 = {}
    with model.hooks(fwd_hooks=[(hook_name(0), capture_hook(store2, "outer"))]), suppress(model, [(0, 1)]):
        with torch.no_grad():
            model(tokens)
        assert _n_hooks(model) == 2
    assert "outer" in store2 and _n_hooks(model) == 0


def test_no_hook_left_after_exception(model, tokens):
    _, clean_logits = _capture(model, tokens)
    before = _n_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with suppress(model, [(0, 1), (1, 2)]):
            assert _n_hooks(model) == before + 2
            raise RuntimeError("boom")
    assert _n_hooks(model) == before
    with torch.no_grad():
        assert torch.equal(model(tokens), clean_logits)


def test_neurons_that_are_not_layer_neuron_pairs_are_named(model, toy_facts):
    """A bare neuron index, a string or a triple is an error that shows the item, not an unpacking
    TypeError from deep inside (or, for "12", silently layer 1 neuron 2)."""
    from lakn.hooks import group_by_layer

    assert group_by_layer([(1, 5), (0, 2), (1, 3), (1, 5), (torch.tensor(0), 7)]) == {0: [2, 7], 1: [3, 5]}
    for bad in ([3], ["12"], [(0, 1, 2)], [(0, "x")]):
        with pytest.raises(TypeError, match="layer, neuron"):
            group_by_layer(bad)
    with pytest.raises(TypeError, match=r"got 3; for a whole layer use lakn.editing.layer_neurons"):
        edit_fact(model, toy_facts[0], {"en": "Madrid"}, [3, 4])


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3", "bloom"])
def test_w_out_row_changes_output_as_predicted(arch):
    m = tiny_model(arch, weight_scale=3.0)
    toks = m.to_tokens("Paris is the capital")
    weight, dim = w_out(m, 1)
    assert weight.shape[dim] == m.cfg.d_mlp
    assert dim == (0 if arch == "gpt2" else 1)  # GPT-2's Conv1D stores W_out transposed
    store = {}
    hooks = [(hook_name(1), capture_hook(store, "act")), ("blocks.1.mlp.hook_out", capture_hook(store, "out"))]
    with torch.no_grad():
        m.run_with_hooks(toks, fwd_hooks=hooks)
    delta = torch.randn(m.cfg.d_model)
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.select(dim, 5).add_(delta)
    after = {}
    with torch.no_grad():
        m.run_with_hooks(toks, fwd_hooks=[("blocks.1.mlp.hook_out", capture_hook(after, "out"))])
    predicted = store["out"] + store["act"][..., 5:6] * delta
    assert torch.allclose(after["out"], predicted, atol=1e-4)
    with torch.no_grad():
        weight.copy_(saved)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_edit_is_reversible_bit_for_bit(arch, toy_facts):
    m = tiny_model(arch, weight_scale=3.0)
    fact = toy_facts[0]
    neurons = [(0, 1), (1, 2), (1, 9)]
    before = {l: w_out(m, l)[0].detach().clone() for l in (0, 1)}
    q = fact.queries("en")[0]
    p_before = lakn.answer_probability(m, lakn.Query(q.template, q.prompt, "Madrid", q.separator, "en"))
    edit = edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", language="en", steps=5, lr=0.3)
    assert isinstance(edit, Edit) and len(edit.history) == 5 and edit.history[-1] < edit.history[0]
    p_after = lakn.answer_probability(m, lakn.Query(q.template, q.prompt, "Madrid", q.separator, "en"))
    assert p_after > p_before
    changed = {l: w_out(m, l)[0].detach().clone() for l in (0, 1)}
    # only the chosen neurons' rows moved
    w1, dim = w_out(m, 1)
    diff = (changed[1] - before[1]).abs().sum(dim=1 - dim)
    assert set(torch.nonzero(diff).flatten().tolist()) <= {2, 9}
    edit.undo()
    for l in (0, 1):
        assert torch.equal(w_out(m, l)[0], before[l])
    edit.undo()  # idempotent
    edit.redo()
    assert torch.equal(w_out(m, 1)[0], changed[1])
    edit.undo()
    with edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", steps=2):
        assert not torch.equal(w_out(m, 1)[0], before[1])
    assert torch.equal(w_out(m, 1)[0], before[1])


def test_answer_probability_shapes(model, toy_facts):
    probs = lakn.answer_probability(model, toy_facts[0], ["en", "fr"])
    assert set(probs) == {"en", "fr"} and len(probs["en"]) == 2
    assert all(0 < p < 1 for p in probs["en"])
    # P(answer) of a one-token answer is the softmax at the prompt's last position, under the hooks
    query = toy_facts[0].queries("en")[0]
    enc = lakn.encode_query(model, query)

    def p_first(hooks=()):
        with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
            logits = model(torch.cat([enc.prompt, enc.answer[:-1]])[None])[0]
        log_p = logits[len(enc.prompt) - 1 :].log_softmax(-1).gather(-1, enc.answer[:, None])[:, 0]
        return float(log_p.mean().exp())

    assert probs["en"][0] == pytest.approx(p_first(), rel=1e-5)
    with suppress(model, [(0, 1)]):
        suppressed = lakn.answer_probability(model, query)
    zeroed = p_first([(hook_name(0), lambda act, hook=None: act.index_fill(-1, torch.tensor([1]), 0.0))])
    assert suppressed == pytest.approx(zeroed, rel=1e-5) and abs(suppressed - probs["en"][0]) > 1e-7


def test_activation_neurons_and_inject(toy_facts):
    m = tiny_model("llama", weight_scale=3.0)
    fact = toy_facts[1]
    neurons = activation_neurons(m, fact, ["en", "fr"], k=5)
    assert len(neurons) == 5 and len(set(neurons)) == 5
    before = w_out(m, 0)[0].detach().clone()
    with lakn.inject_fact(m, fact, language="en", neurons=neurons, method="gradient", steps=3) as edit:
        assert edit.history[-1] <= edit.history[0]
    assert torch.equal(w_out(m, 0)[0], before)


def _kl_on(model, prompts, reference):
    from lakn.editing import _next_token_log_probs

    with torch.no_grad():
        log_p = _next_token_log_probs(model, prompts)
    return float(torch.nn.functional.kl_div(log_p, reference, log_target=True, reduction="batchmean"))


def test_edit_locality_term_keeps_other_prompts(toy_facts):
    """With the KL term the preserved prompts' next-token distributions move less than without
    it, while the edit still raises the new answer; the KL history is recorded per step."""
    from lakn.editing import _next_token_log_probs

    m = tiny_model("llama", weight_scale=3.0)
    fact, others = toy_facts[0], toy_facts[1:]
    preserve = [f.queries("en")[0] for f in others] + [f.queries("fr")[0] for f in others]
    prompts = [lakn.encode_query(m, q).prompt for q in preserve]
    with torch.no_grad():
        reference = _next_token_log_probs(m, prompts)
    neurons = [(0, i) for i in range(0, 32, 2)] + [(1, i) for i in range(0, 32, 2)]
    q = fact.queries("en")[0]
    new_q = lakn.Query(q.template, q.prompt, "Madrid", q.separator, "en")
    p0 = lakn.answer_probability(m, new_q)
    with edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", steps=15, lr=0.3, locality_weight=0.0) as free:
        kl_free, p_free = _kl_on(m, prompts, reference), lakn.answer_probability(m, new_q)
    with edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", steps=15, lr=0.3, preserve=preserve,
                   locality_weight=20.0) as kept:
        kl_kept, p_kept = _kl_on(m, prompts, reference), lakn.answer_probability(m, new_q)
    assert free.locality_history == [] and len(kept.locality_history) == 15
    assert kl_free > 0 and kl_kept < 0.5 * kl_free
    assert p_free > p0 and p_kept > p0
    assert "KL" in kept.method and "KL" not in free.method
    with pytest.raises(ValueError, match="locality_weight"):
        edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", locality_weight=-1.0)


def test_edit_stops_at_target_probability(toy_facts):
    m = tiny_model("llama", weight_scale=3.0)
    fact = toy_facts[0]
    neurons = [(l, i) for l in (0, 1) for i in range(24)]
    edit = edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", steps=60, lr=0.3, target_prob=0.01)
    try:
        assert 0 < len(edit.history) < 60  # stopped early
        for q in fact.queries("en"):
            p = lakn.answer_probability(m, lakn.Query(q.template, q.prompt, "Madrid", q.separator, "en"))
            assert p >= 0.01 - 1e-6
    finally:
        edit.undo()
    with pytest.raises(ValueError, match="target_prob"):
        edit_fact(m, fact, {"en": "Madrid"}, neurons, method="gradient", target_prob=1.5)
