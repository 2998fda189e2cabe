"""The pivot term of the closed-form target (lakn.pivot) and the closed form's re-solves (retries)."""

import pytest
import torch

import lakn
from lakn.closed_form import solve_rows
from lakn.target import find_target, find_targets
from lakn.editing import edit_fact, layer_neurons
from lakn.keys import key_prompts
from lakn.pivot import Pivot, lens_cross_entropy, lens_logits, lens_ranks, pivot_layer, pivot_loss
from lakn.testing import active_hook_count, tiny_model
from lakn.tokens import encode_query, last_logits


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def deep():
    return tiny_model("llama", n_layers=4, weight_scale=4.0)


def _pivot_inputs(model, fact, new="Madrid"):
    """The en target queries (new answer) and the fr / zh prompts at the subject's token."""
    edited = lakn.Fact(fact.fact_id, fact.relation, {**fact.answers, "en": new}, fact.templates, fact.subjects)
    targets = [encode_query(model, q) for q in edited.queries("en")]
    prompts, _, positions = key_prompts(model, fact, ["fr", "zh"], None, "subject")
    en_pos = key_prompts(model, fact, ["en"], None, "subject")[2]
    return targets, en_pos, prompts, positions


def test_lens_of_the_last_layer_is_the_model_output(deep):
    tokens = deep.to_tokens("The capital of France is")
    ranks = lens_ranks(deep, [tokens[0]], 7)
    assert ranks.shape == (1, 4)
    with torch.no_grad():
        logits = last_logits(deep, tokens)[0]
    assert int(ranks[0, -1]) == int((logits > logits[7]).sum())  # rank of token 7 in the real output
    store = {}
    with torch.no_grad(), deep.hooks(fwd_hooks=[("blocks.3.hook_resid_post", lambda x, hook: store.setdefault("x", x))]):
        deep(tokens)
    torch.testing.assert_close(lens_logits(deep, store["x"][0, -1]).float(), logits.float(), rtol=1e-4, atol=1e-4)


def test_lens_ranks_in_chunks_equal_one_row_at_a_time(deep, monkeypatch):
    """Several prompts of different lengths, layers out of order, chunks that split a prompt's rows:
    each rank is the one read from that prompt's own residual stream at that layer."""
    import lakn.pivot as pivot_module

    monkeypatch.setattr(pivot_module, "_LENS_ROWS", 3)
    prompts = [deep.to_tokens(t)[0] for t in ("The capital of France is", "Paris is in", "A b c d e f g")]
    layers = [3, 0, 2]
    ranks = lens_ranks(deep, prompts, 11, layers)
    assert ranks.shape == (3, 3)
    for i, p in enumerate(prompts):
        store = {}
        hooks = [(f"blocks.{l}.hook_resid_post", lambda x, hook, l=l: store.__setitem__(l, x)) for l in range(4)]
        with torch.no_grad(), deep.hooks(fwd_hooks=hooks):
            deep(p[None])
        for j, layer in enumerate(layers):
            with torch.no_grad():
                logits = lens_logits(deep, store[layer][0, -1]).float()
            assert int(ranks[i, j]) == int((logits > logits[11]).sum()), (i, layer)
    assert len({tuple(r.tolist()) for r in ranks}) > 1  # the prompts do differ
    assert lens_ranks(deep, [], 11, layers).shape == (0, 3)


def test_pivot_layer_lies_between_the_edit_and_the_last_layer(deep):
    assert pivot_layer(deep, 0) in (1, 2)
    assert pivot_layer(deep, 1) == 2
    assert pivot_layer(deep, 2) is None  # no layer between 2 and the last (3)


def test_pivot_term_moves_the_other_languages_lens_toward_the_token(deep, toy_facts):
    targets, en_pos, prompts, positions = _pivot_inputs(deep, toy_facts[0])
    token = int(targets[0].answer[0])
    pivot = Pivot(prompts, positions, token, layer=2, weight=10.0)

    def lens_loss(delta):
        with torch.no_grad():
            return float(pivot_loss(deep, pivot, "blocks.1.mlp.hook_out", delta))

    plain, _ = find_target(deep, 1, targets, positions=en_pos, steps=15)
    pivoted, history = find_target(deep, 1, targets, positions=en_pos, steps=15, pivot=pivot)
    assert lens_loss(pivoted) < lens_loss(plain) - 0.1
    assert lens_loss(pivoted) < lens_loss(torch.zeros_like(pivoted))
    assert history[-1] < history[0]  # the edit language's NLL still falls
    assert active_hook_count(deep) == 0


def test_pivot_loss_in_one_padded_batch_equals_each_prompt_alone(deep, toy_facts):
    _, _, prompts, positions = _pivot_inputs(deep, toy_facts[0])
    assert len({len(p) for p in prompts}) > 1  # prompts of several lengths: padding is exercised
    delta = torch.randn(int(deep.cfg.d_model), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = pivot_loss(deep, Pivot(prompts, positions, 9, 2), "blocks.1.mlp.hook_out", delta)
        alone = [pivot_loss(deep, Pivot([p], [i], 9, 2), "blocks.1.mlp.hook_out", delta)
                 for p, i in zip(prompts, positions)]
        clean = pivot_loss(deep, Pivot(prompts, positions, 9, 2), "blocks.1.mlp.hook_out", torch.zeros_like(delta))
    torch.testing.assert_close(batched, torch.stack(alone).mean(), rtol=1e-5, atol=1e-5)
    assert abs(float(batched) - float(clean)) > 1e-3  # delta reaches the lens


def _reference_target(model, layer, encoded, positions, pivot, steps, lr=0.5, decay=0.05):
    """The target search written out plainly, one query per full forward pass (the implementation
    before find_targets): an independent reference for its losses, weights and normalisations."""
    point = f"blocks.{layer}.mlp.hook_out"
    positions = [len(e.prompt) - 1 for e in encoded] if positions is None else positions
    norms = []
    for e, p in zip(encoded, positions):
        store = {}
        with torch.no_grad(), model.hooks(fwd_hooks=[(point, lambda x, hook: store.setdefault("x", x[0, p]))]):
            model(torch.cat([e.prompt, e.answer[:-1]])[None])
        norms.append(float(store["x"].norm() ** 2))
    scale = sum(norms) / len(norms)
    delta = torch.zeros(int(model.cfg.d_model), requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        losses = []
        for e, p in zip(encoded, positions):
            def add(x, hook, p=p):
                onehot = torch.zeros(x.shape[1], 1)
                onehot[p] = 1.0
                return x + onehot * delta

            with model.hooks(fwd_hooks=[(point, add)]):
                logits = model(torch.cat([e.prompt, e.answer[:-1]])[None])[0, len(e.prompt) - 1:]
            losses.append(torch.nn.functional.cross_entropy(logits.float(), e.answer))
        loss = torch.stack(losses).mean() + decay * (delta**2).sum() / scale
        if pivot is not None and pivot.weight > 0:
            loss = loss + pivot.weight * pivot_loss(model, pivot, point, delta)
        loss.backward()
        optimiser.step()
    return delta.detach()


def test_several_targets_found_together_equal_each_found_alone(deep, toy_facts, monkeypatch):
    """find_targets shares forward passes between targets (sequences of one length run together,
    chunks of 2 here, pivot prompts of several targets and two pivot layers in padded batches), yet
    each delta is what the plain one-query-at-a-time search finds for that target alone, and its NLL
    history is what find_target reports for it."""
    import lakn.target as target_module

    monkeypatch.setattr(target_module, "_TARGET_ROWS", 2)
    inputs = []
    for fact, new, layer, weight in zip(toy_facts, ("Madrid", "Tokyo", "Rome", "Paris"), (2, 3, 2, 2),
                                        (3.0, 2.0, 0.0, 1.0)):
        targets, en_pos, prompts, positions = _pivot_inputs(deep, fact, new)
        inputs.append((targets, en_pos, Pivot(prompts, positions, int(targets[0].answer[0]), layer, weight)))
    inputs[3] = (inputs[3][0], None, None)  # no pivot, keys at the last token
    lengths = [len(e.prompt) + len(e.answer) - 1 for targets, _, _ in inputs for e in targets]
    assert len(lengths) > len(set(lengths))  # some sequences of different targets share a length
    together = find_targets(deep, 1, [t for t, _, _ in inputs], steps=4, positions=[p for _, p, _ in inputs],
                            pivots=[pv for _, _, pv in inputs])
    assert len(together) == 4
    for (delta, history), (targets, where, pivot) in zip(together, inputs):
        reference = _reference_target(deep, 1, targets, where, pivot, steps=4)
        torch.testing.assert_close(delta, reference, rtol=1e-4, atol=1e-5)
        assert history == pytest.approx(find_target(deep, 1, targets, positions=where, steps=4, pivot=pivot)[1],
                                        rel=1e-4)
        with torch.no_grad():  # the first NLL is the clean model's mean over the target's queries
            clean = [float(torch.nn.functional.cross_entropy(
                deep(torch.cat([e.prompt, e.answer[:-1]])[None])[0, len(e.prompt) - 1:].float(), e.answer))
                for e in targets]
        assert history[0] == pytest.approx(sum(clean) / len(clean), rel=1e-4)
    assert float((together[0][0] - together[1][0]).norm()) > 1e-2  # each target is its own
    with pytest.raises(ValueError, match="4 targets with 2 position lists"):
        find_targets(deep, 1, [t for t, _, _ in inputs], positions=[None, None], steps=1)
    with pytest.raises(ValueError, match="no targets"):
        find_targets(deep, 1, [], steps=1)
    with pytest.raises(ValueError, match="no queries"):
        find_targets(deep, 1, [inputs[0][0], []], steps=1)
    assert active_hook_count(deep) == 0


def test_lens_cross_entropy_names_bad_rows(deep, toy_facts):
    _, _, prompts, positions = _pivot_inputs(deep, toy_facts[0])
    deltas = torch.zeros(len(prompts), int(deep.cfg.d_model))
    ce = lens_cross_entropy(deep, prompts, positions, [9] * len(prompts), 2, "blocks.1.mlp.hook_out", deltas)
    assert ce.shape == (len(prompts),) and bool((ce > 0).all())
    with pytest.raises(IndexError, match="position 99 outside prompt 0"):
        lens_cross_entropy(deep, prompts, [99] + positions[1:], [9] * len(prompts), 2, "blocks.1.mlp.hook_out", deltas)
    with pytest.raises(ValueError, match="no prompts"):
        lens_cross_entropy(deep, [], [], [], 2, "blocks.1.mlp.hook_out", deltas[:0])
    with pytest.raises(ValueError, match="prompts with"):
        lens_cross_entropy(deep, prompts, positions, [9], 2, "blocks.1.mlp.hook_out", deltas)


def test_edit_records_its_pivot_and_none_turns_it_off(deep, toy_facts):
    fact = toy_facts[0]
    answers = {"en": "Madrid", "fr": "Madrid", "zh": "马德里"}
    with edit_fact(deep, fact, answers, layer_neurons(deep, [1]), lam=1.0, target_steps=5, retries=0) as edit:
        assert edit.info["pivot_layer"] == pivot_layer(deep, 1, "en") and " pivot=L" in edit.method
    with edit_fact(deep, fact, answers, layer_neurons(deep, [1]), lam=1.0, target_steps=5, retries=0,
                   pivot=None) as edit:
        assert edit.info["pivot_layer"] is None and "pivot" not in edit.method
    with edit_fact(deep, fact, answers, layer_neurons(deep, [1]), lam=1.0, target_steps=5, retries=0,
                   target_languages=["fr", "zh"]) as edit:  # every key language has a target: nothing to pivot
        assert edit.info["pivot_layer"] is None


def test_bad_pivots_are_named(deep, toy_facts):
    fact = toy_facts[0]
    answers = {"en": "Madrid", "fr": "Madrid", "zh": "马德里"}
    for bad, words in ((1, "after the edited layer"), (9, "after the edited layer"), ("deep", "pivot must be")):
        with pytest.raises(ValueError, match=words):
            edit_fact(deep, fact, answers, layer_neurons(deep, [1]), lam=1.0, target_steps=2, pivot=bad)
    for option, words in ((dict(retries=-1), "retries must be"), (dict(retries=1.5), "retries must be"),
                          (dict(pivot_weight=-1.0), "pivot_weight must be"),
                          (dict(pivot_weight=float("nan")), "pivot_weight must be"),
                          (dict(retry_boost=1.0), "retry_boost must be"),
                          (dict(retry_boost=float("inf")), "retry_boost must be")):
        with pytest.raises(ValueError, match=words):
            edit_fact(deep, fact, answers, layer_neurons(deep, [1]), lam=1.0, target_steps=2, **option)
    targets, en_pos, prompts, positions = _pivot_inputs(deep, fact)
    with pytest.raises(IndexError, match="pivot position"):
        Pivot(prompts, [99] * len(prompts), 5, 2)
    with pytest.raises(ValueError, match="must come after"):
        find_target(deep, 2, targets, positions=en_pos, steps=1, pivot=Pivot(prompts, positions, 5, 2))
    assert active_hook_count(deep) == 0


# --------------------------------------------------------------------------- retries


def test_key_weights_scale_like_a_smaller_lam():
    g = torch.Generator().manual_seed(0)
    keys, res = torch.randn(6, 10, generator=g).double(), torch.randn(6, 4, generator=g).double()
    a = torch.randn(30, 10, generator=g).double()
    C = a.T @ a / 30
    torch.testing.assert_close(solve_rows(keys, res, C, lam=8.0, weights=torch.full((6,), 4.0)),
                               solve_rows(keys, res, C, lam=2.0))
    w = torch.tensor([1.0, 1, 1, 10, 10, 10])
    one = solve_rows(keys, res, C, lam=1.0, weights=w)
    err = ((keys @ one - res) ** 2).sum(1)
    err0 = ((keys @ solve_rows(keys, res, C, lam=1.0) - res) ** 2).sum(1)
    assert err[3:].sum() < err0[3:].sum()  # the heavier keys are fitted better
    with pytest.raises(ValueError, match="one per key"):
        solve_rows(keys, res, C, weights=torch.ones(5))


def test_a_missed_target_is_solved_again_with_heavier_keys(deep, toy_facts, monkeypatch):
    import lakn.closed_form_edit as closed_form_edit

    fact = toy_facts[1]
    answers = {"en": "Tokyo", "fr": "Tokyo", "zh": "东京"}
    neurons = layer_neurons(deep, [1])
    before = {l: lakn.w_out(deep, l)[0].clone() for l in range(4)}
    kw = dict(lam=1e9, target_steps=10, pivot=None)
    with edit_fact(deep, fact, answers, neurons, retries=0, **kw) as stiff:
        assert stiff.info["key_weights"] == [1.0] and stiff.info["solves"] == 1
        assert stiff.info["missed"] == [fact.fact_id]  # a lam so large that the edit cannot take
        first = lakn.w_out(deep, 1)[0].detach().clone()
    # never taking: every retry runs, and the first (stiffest) solve is kept, since the heavier keys took nothing more
    with edit_fact(deep, fact, answers, neurons, retries=2, **kw) as retried:
        assert retried.info["solves"] == 3 and retried.info["key_weights"] == [1.0]
        assert retried.info["missed"] == [fact.fact_id]
        assert torch.allclose(lakn.w_out(deep, 1)[0], first)
    # taking at the third solve (the check is stubbed): that solve is kept, its keys heavier twice
    calls = []

    def takes_third_time(model, groups, by_layer, rows):
        calls.append(rows.clone())
        return [len(groups[0].targets) if len(calls) == 3 else 0]

    monkeypatch.setattr(closed_form_edit, "_hits", takes_third_time)
    with edit_fact(deep, fact, answers, neurons, retries=3, **kw) as taken:  # the default boost: 2 x 2
        assert taken.info["solves"] == 3 and taken.info["key_weights"] == [4.0] and taken.info["missed"] == []
        W, dim = lakn.w_out(deep, 1)
        change = (W - before[1]).movedim(dim, 0)  # the whole layer's rows [d_mlp, d_model], in order
        assert torch.allclose(change, calls[2].to(change.dtype), atol=1e-5) and not torch.allclose(calls[0], calls[2])
    calls.clear()  # a coarser boost: the same third solve, its keys 4 x 4 heavier
    with edit_fact(deep, fact, answers, neurons, retries=3, retry_boost=4.0, **kw) as coarse:
        assert coarse.info["key_weights"] == [16.0] and coarse.info["retry_boost"] == 4.0 and coarse.info["solves"] == 3
    assert all(torch.equal(lakn.w_out(deep, l)[0], w) for l, w in before.items())


def test_a_fact_that_never_takes_goes_back_to_weight_one(deep, toy_facts, monkeypatch):
    """In a batch, a fact that took none of its queries at its heavier weight is solved again at
    weight 1 (its heavy keys bought nothing but a larger change); the lighter solve is kept if it
    misses no more facts than the heavier one, the rule that picks among the re-solves."""
    import lakn.closed_form_edit as closed_form_edit

    facts = toy_facts[:2]
    answers = {facts[0].fact_id: {"en": "Tokyo"}, facts[1].fact_id: {"en": "Madrid"}}
    neurons = layer_neurons(deep, [1])
    before = lakn.w_out(deep, 1)[0].clone()
    calls: list[torch.Tensor] = []
    lost, gained = [0], [False]  # fact 0's queries the lighter (fourth) solve loses; whether fact 1 takes

    def hits(model, groups, by_layer, rows):  # fact 0 takes from the second solve on, fact 1 never
        calls.append(rows.clone())
        n = len(groups[0].targets)
        return [n - lost[0], len(groups[1].targets) * gained[0]] if len(calls) == 4 else [n if len(calls) >= 2 else 0, 0]

    monkeypatch.setattr(closed_form_edit, "_hits", hits)
    kw = dict(lam=1e3, target_steps=3, pivot=None, retries=2)

    def change():
        W, dim = lakn.w_out(deep, 1)
        return (W - before).movedim(dim, 0)

    lost[0] = 0  # the lighter solve keeps fact 0's queries: it is kept
    with lakn.edit_facts(deep, facts, answers, neurons, **kw) as batch:
        # solves: [1, 1] misses both; [2, 2] takes fact 0 (best); [2, 4] no better; then [2, 1]
        assert batch.info["solves"] == 4 and batch.info["key_weights"] == [2.0, 1.0]
        assert batch.info["released"] == [facts[1].fact_id] and batch.info["missed"] == [facts[1].fact_id]
        torch.testing.assert_close(change(), calls[3].to(change().dtype), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(calls[1], calls[3])
    calls.clear()
    lost[0] = 1  # the lighter solve would lose one of fact 0's queries: the heavier one stays
    with lakn.edit_facts(deep, facts, answers, neurons, **kw) as batch:
        assert batch.info["solves"] == 4 and batch.info["key_weights"] == [2.0, 2.0] and batch.info["released"] == []
        assert batch.info["missed"] == [facts[1].fact_id]
        torch.testing.assert_close(change(), calls[1].to(change().dtype), atol=1e-5, rtol=1e-5)
    calls.clear()
    gained[0] = True  # ... while fact 1 takes all of its queries: one missed either way, the lighter kept
    with lakn.edit_facts(deep, facts, answers, neurons, **kw) as batch:
        assert batch.info["key_weights"] == [2.0, 1.0] and batch.info["missed"] == [facts[0].fact_id]
        torch.testing.assert_close(change(), calls[3].to(change().dtype), atol=1e-5, rtol=1e-5)
    assert torch.equal(lakn.w_out(deep, 1)[0], before)


def test_keys_and_checks_of_several_facts_run_together_as_each_alone(deep, toy_facts):
    """A batch's keys and context keys are read in one pass over every fact's prompts, and the
    top-1 check of its re-solves runs every target query together: both equal each fact alone."""
    from lakn.closed_form_edit import _group, _group_keys, _hits
    from lakn.keys import keys_and_context, prompt_keys

    groups = []
    for fact, new in zip(toy_facts[:3], ("Madrid", "Tokyo", "Paris")):
        edited = lakn.Fact(fact.fact_id, fact.relation, {**fact.answers, "en": new}, fact.templates, fact.subjects)
        groups.append(_group(deep, fact.fact_id, edited, fact, ["en"], ["en", "fr", "zh"], None, "subject"))
    by_layer = {1: [3, 0, 7, 11]}
    keys, contexts = _group_keys(deep, groups, by_layer, True)
    plain, none = _group_keys(deep, groups, by_layer, False)
    for g, k, c, p, n in zip(groups, keys, contexts, plain, none):
        alone_k, alone_c = keys_and_context(deep, g.prompts, by_layer, g.key_positions)
        torch.testing.assert_close(k, alone_k[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, alone_c[1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p, prompt_keys(deep, g.prompts, by_layer, g.key_positions)[1], rtol=1e-5, atol=1e-6)
        assert n.shape == (0, 4)
    assert _group_keys(deep, [], by_layer, True) == ([], [])
    # group 1's answers are the model's own top-1 tokens (taken), group 0's only on its first query
    import dataclasses

    with torch.no_grad():
        top = {j: [int(last_logits(deep, e.prompt[None])[0].argmax()) for e in g.targets] for j, g in enumerate(groups)}
    groups[1].targets = [dataclasses.replace(e, answer=torch.tensor([t])) for e, t in zip(groups[1].targets, top[1])]
    groups[0].targets[0] = dataclasses.replace(groups[0].targets[0], answer=torch.tensor([top[0][0]]))
    every = {1: list(range(int(deep.cfg.d_mlp)))}
    n = [len(g.targets) for g in groups]
    assert _hits(deep, groups, every, torch.zeros(int(deep.cfg.d_mlp), int(deep.cfg.d_model))) == [1, n[1], 0]
    rows = torch.randn(int(deep.cfg.d_mlp), int(deep.cfg.d_model), generator=torch.Generator().manual_seed(3))
    trial = lakn.weights.Edit(deep, every, {}, {1: rows}, [], method="trial", active=False)
    trial.redo()
    try:
        with torch.no_grad():
            expected = [sum(int(last_logits(deep, e.prompt[None])[0].argmax()) == int(e.answer[0]) for e in g.targets)
                        for g in groups]
    finally:
        trial.undo()
    assert _hits(deep, groups, every, rows) == expected
    assert active_hook_count(deep) == 0


def test_injection_takes_keys_from_untrained_languages_with_the_pivot(deep, toy_facts):
    fact = toy_facts[2]
    neurons = layer_neurons(deep, [1])
    with lakn.inject_fact(deep, fact, languages=("en",), neurons=neurons, lam=1.0, target_steps=3, retries=0) as plain:
        assert plain.info["key_languages"] == ["en"] and plain.info["pivot_layer"] is None
    with lakn.inject_fact(deep, fact, languages=("en",), key_languages=["fr", "zh"], neurons=neurons, lam=1.0,
                          target_steps=3, retries=0) as wide:
        assert wide.info["key_languages"] == ["en", "fr", "zh"]
        assert wide.info["n_keys"] == 3 * plain.info["n_keys"]  # two queries in each language
        assert wide.info["pivot_layer"] == pivot_layer(deep, 1, "en")
    with pytest.raises(lakn.FactsError, match="key language"):
        lakn.inject_fact(deep, fact, languages=("en",), key_languages=["xx"], neurons=neurons, target_steps=1)
    with pytest.raises(ValueError, match="key_languages needs method='closed_form'"):
        lakn.inject_fact(deep, fact, languages=("en",), key_languages=["fr"], neurons=neurons, method="gradient")
    assert active_hook_count(deep) == 0
