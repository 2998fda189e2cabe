"""The constrained closed-form edit (docs/method.md §8.3): the solve, preservation, batch, hooks, undo."""

import numpy as np
import pytest
import torch

import lakn
from lakn.closed_form import Preservation, preservation, solve_rows
from lakn.target import find_target
from lakn.editing import EDIT_METHODS, edit_fact, edit_facts, inject_fact, layer_neurons, w_out
from lakn.facts import FactsError
from lakn.keys import (_subject_end, context_keys, key_neurons, keys_and_context, key_prompts, post_activations, prompt_keys,
                       subject_position)
from lakn.testing import active_hook_count, tiny_model

TEXTS = ["The cat sleeps.", "Il pleut.", "我们吃饭。"]  # few tokens: the layer's covariance has a null space


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", weight_scale=4.0)


def _mlp_out(model, tokens, layer):
    store = {}

    def grab(out, hook=None):
        store["out"] = out.detach().clone()
        return out

    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_out", grab)]):
        model(tokens)
    return store["out"][0]


def _weights(model):
    return {l: w_out(model, l)[0].detach().clone() for l in range(int(model.cfg.n_layers))}


def _same(model, saved):
    return all(torch.equal(w_out(model, l)[0], w) for l, w in saved.items())


def _prompt_tokens(model, fact, langs):
    return [model.to_tokens(q.prompt) for l in langs for q in fact.queries(l)]


# --------------------------------------------------------------------------- the solve


def test_solve_satisfies_its_normal_equations_and_interpolates_without_lam():
    g = torch.Generator().manual_seed(0)
    q, n, d = 5, 12, 7
    K, R = torch.randn(q, n, generator=g, dtype=torch.float64), torch.randn(q, d, generator=g, dtype=torch.float64)
    A = torch.randn(40, n, generator=g, dtype=torch.float64)
    C = A.T @ A / 40
    dW = solve_rows(K, R, C, lam=3.0, ridge=1e-6)
    lhs = (K.T @ K + 3.0 * C) @ dW
    rho = 1e-6 * float((K.T @ K + 3.0 * C).diagonal().mean())
    torch.testing.assert_close(lhs + rho * dW, K.T @ R, rtol=1e-9, atol=1e-9)
    exact = solve_rows(K, R, C, lam=0.0, ridge=1e-12)  # n > q: the keys map exactly to the residuals
    torch.testing.assert_close(K @ exact, R, rtol=1e-6, atol=1e-6)
    big = solve_rows(K, R, C, lam=1e8)
    assert float((A @ big).norm()) < 1e-3 * float((A @ exact).norm())  # large lam: preserved keys barely move


def test_null_space_solve_leaves_preserved_keys_exactly_and_maps_the_keys():
    g = torch.Generator().manual_seed(1)
    n, d = 16, 6
    K0 = torch.randn(30, 9, generator=g, dtype=torch.float64) @ torch.randn(9, n, generator=g, dtype=torch.float64)
    C = K0.T @ K0 / 30  # rank 9 of 16: a null space of dimension 7
    K, R = torch.randn(4, n, generator=g, dtype=torch.float64), torch.randn(4, d, generator=g, dtype=torch.float64)
    dW = solve_rows(K, R, C, lam=1e4, null_space=1e-8, ridge=1e-12)
    assert float((K0 @ dW).abs().max()) < 1e-8 * float(dW.abs().max())
    torch.testing.assert_close(K @ dW, R, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no null space"):
        solve_rows(K, R, torch.eye(n, dtype=torch.float64), null_space=1e-3)
    with pytest.raises(ValueError, match="lam"):
        solve_rows(K, R, C, lam=-1.0)


# --------------------------------------------------------------------------- edits on a tiny model


def test_closed_form_edit_maps_keys_to_the_target_and_raises_the_new_answer(llama, toy_facts):
    fact = toy_facts[0]
    before = _weights(llama)
    q = fact.queries("en")[0]
    new_q = lakn.Query(q.template, q.prompt, "Madrid", q.separator, "en")
    p0 = lakn.answer_probability(llama, new_q)
    prompts = _prompt_tokens(llama, fact, ["en", "fr", "zh"])
    outs0 = [_mlp_out(llama, t, 1)[-1] for t in prompts]
    with edit_fact(llama, fact, {"en": "Madrid", "fr": "Madrid", "zh": "马德里"}, layer_neurons(llama, [1]),
                   lam=0.0, ridge=1e-12, target_steps=30, position="last") as edit:
        assert edit.method.startswith("closed_form") and "keys=en,fr,zh" in edit.method
        assert edit.info["n_keys"] == 6 and edit.history[-1] < edit.history[0]
        target = edit.info["targets"][0]
        for t, o0 in zip(prompts, outs0):  # every language's key gives the same output change
            torch.testing.assert_close(_mlp_out(llama, t, 1)[-1] - o0, target, rtol=1e-3, atol=1e-3)
        assert lakn.answer_probability(llama, new_q) > p0
    assert _same(llama, before)


def test_large_lam_and_null_space_keep_preserved_outputs(llama, toy_facts):
    fact = toy_facts[1]
    pres = preservation(llama, [1], texts=TEXTS)
    texts = [llama.to_tokens(t) for t in TEXTS]
    ref = [_mlp_out(llama, t, 1) for t in texts]
    keys = [llama.to_tokens(q.prompt) for l in ("en", "fr") for q in fact.queries(l)]
    key0 = [_mlp_out(llama, t, 1)[-1] for t in keys]

    def change(**kw):  # the keys alone (no context keys): the tiny layer cannot also pin a whole prompt
        with edit_fact(llama, fact, {"en": "Rome", "fr": "Rome"}, layer_neurons(llama, [1]), preserve=pres,
                       ridge=1e-12, position="last", context_weight=0.0, **kw) as e:
            moved = max(float((_mlp_out(llama, t, 1) - r).abs().max()) for t, r in zip(texts, ref))
            target = e.info["targets"][0]
            err = max(float((_mlp_out(llama, t, 1)[-1] - k0 - target).abs().max()) for t, k0 in zip(keys, key0))
        return moved, err / float(target.abs().max())

    free, free_err = change(lam=0.0)
    kept, _ = change(lam=1e6)
    null, null_err = change(lam=1e4, null_space=1e-6)
    assert free > 1e-2 and free_err < 1e-3
    assert kept < 0.05 * free
    assert null < 1e-4 * free and null_err < 1e-3  # preserved tokens untouched, keys still mapped


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_weight_edit_and_hooks_give_the_same_logits(arch, toy_facts):
    m = tiny_model(arch, weight_scale=3.0)
    fact = toy_facts[2]
    tokens = m.to_tokens("The capital of Italy is Rome, of Spain Madrid")
    for method, neurons in (("closed_form", [(0, i) for i in range(0, 40, 3)] + [(1, 5), (1, 7)]),
                            ("gradient", [(0, 1), (1, 2)]), ("kn_embedding", [(1, 3), (1, 4)])):
        edit = edit_fact(m, fact, {"en": "Tokyo"}, neurons, method=method, steps=3, lam=10.0, position="last")
        with torch.no_grad():
            applied = m(tokens)
        edit.undo()
        with torch.no_grad():
            clean = m(tokens)
            with m.hooks(fwd_hooks=edit.hooks()):
                hooked = m(tokens)
        assert float((applied - clean).abs().max()) > 1e-4, method
        torch.testing.assert_close(hooked, applied, atol=1e-5, rtol=1e-5)
        assert active_hook_count(m) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with m.hooks(fwd_hooks=edit.hooks()):
            raise RuntimeError("boom")
    assert active_hook_count(m) == 0


def test_undo_restores_bit_for_bit_for_batches_and_overlapping_edits(llama, toy_facts):
    before = _weights(llama)
    answers = {f.fact_id: {"en": toy_facts[(i + 1) % 4].answers["en"]} for i, f in enumerate(toy_facts)}
    a = edit_fact(llama, toy_facts[0], answers[toy_facts[0].fact_id], layer_neurons(llama, [1]))
    b = edit_facts(llama, toy_facts[1:], answers, [(0, 3), (1, 2), (1, 60)], lam=1.0)
    c = edit_fact(llama, toy_facts[2], {"en": "Paris"}, [(1, 2), (0, 3)], method="gradient", steps=2)
    d = edit_facts(llama, toy_facts[:2], answers, {toy_facts[0].fact_id: [(1, 2)], toy_facts[1].fact_id: [(1, 9)]},
                   method="kn_embedding")
    assert not _same(llama, before)
    for e in (b, d, a, c):  # any order
        e.undo()
    assert _same(llama, before)
    b.redo()
    b.undo()
    assert _same(llama, before)


def test_batch_is_one_solve_that_maps_every_fact(llama, toy_facts):
    facts = toy_facts[:3]
    answers = {f.fact_id: {"en": toy_facts[(i + 1) % 4].answers["en"], "fr": toy_facts[(i + 1) % 4].answers["fr"]}
               for i, f in enumerate(facts)}
    neurons = layer_neurons(llama, [1])
    prompts = {f.fact_id: _prompt_tokens(llama, f, ["en", "fr"]) for f in facts}
    out0 = {i: [_mlp_out(llama, t, 1)[-1] for t in p] for i, p in prompts.items()}
    exact = dict(lam=0.0, ridge=1e-12, context_weight=0.0)  # keys alone: interpolated exactly (no context keys)
    with edit_facts(llama, facts, answers, neurons, target_steps=5, position="last", **exact) as batch:
        assert "batch=3" in batch.method and batch.info["n_keys"] == 12
        for f, target in zip(facts, batch.info["targets"]):
            for t, o0 in zip(prompts[f.fact_id], out0[f.fact_id]):
                torch.testing.assert_close(_mlp_out(llama, t, 1)[-1] - o0, target, rtol=1e-3, atol=1e-3)
        joint = batch.deltas[1].clone()
    summed = torch.zeros_like(joint)
    for f in facts:
        with edit_fact(llama, f, answers[f.fact_id], neurons, target_steps=5, position="last", **exact) as single:
            summed += single.deltas[1]
    assert float((joint - summed).abs().max()) > 1e-3 * float(joint.abs().max())


def test_chunks_are_solved_in_sequence_and_a_later_chunk_leaves_the_earlier_keys_where_they_were(llama, toy_facts):
    """chunk_size=2 on three facts, keys alone (λ 0, no context keys, one solve each): facts 0-1 are
    solved together, then fact 2 on the model they edited, with their keys held at residual 0. Every
    fact's prompts then read its own target at the key: facts 0-1 exactly as after their chunk
    (fact 2's solve did not move them, though solved without the hold it does), fact 2 on top of
    what the first chunk left at its keys."""
    facts = toy_facts[:3]
    answers = {f.fact_id: {"en": toy_facts[(i + 1) % 4].answers["en"], "fr": toy_facts[(i + 1) % 4].answers["fr"]}
               for i, f in enumerate(facts)}
    neurons = layer_neurons(llama, [1])
    exact = dict(lam=0.0, ridge=1e-12, context_weight=0.0, retries=0, pivot=None, target_steps=5, position="last")
    prompts = {f.fact_id: _prompt_tokens(llama, f, ["en", "fr"]) for f in facts}

    def outs(fid):
        return torch.stack([_mlp_out(llama, t, 1)[-1] for t in prompts[fid]])

    out0 = {f.fact_id: outs(f.fact_id) for f in facts}
    with edit_facts(llama, facts[:2], answers, neurons, **exact):
        middle = outs(facts[2].fact_id)
        with edit_facts(llama, facts[2:], answers, neurons, **exact):  # fact 2 solved without the hold
            unheld = {f.fact_id: outs(f.fact_id) for f in facts[:2]}
        first = {f.fact_id: outs(f.fact_id) for f in facts[:2]}
    with edit_facts(llama, facts, answers, neurons, chunk_size=2, **exact) as chunked:
        targets = chunked.info["targets"]
        assert [c["n_held_keys"] for c in chunked.info["chunks"]] == [0, 8]  # 2 facts x 2 languages x 2 queries
        for f, target in zip(facts[:2], targets[:2]):
            torch.testing.assert_close(outs(f.fact_id), first[f.fact_id], rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(outs(f.fact_id) - out0[f.fact_id], target.float().expand(4, -1),
                                       rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(outs(facts[2].fact_id) - middle, targets[2].float().expand(4, -1),
                                   rtol=1e-3, atol=1e-3)
    drift = max(float((unheld[f.fact_id] - first[f.fact_id]).abs().max()) for f in facts[:2])
    assert drift > 1e-2 * max(float(t.abs().max()) for t in targets[:2])  # without the hold fact 2 moves them


def test_chunked_edits_keep_their_chunks_apart_and_undo_bit_for_bit(llama, toy_facts, tmp_path, monkeypatch):
    """The bookkeeping of chunk_size: each chunk's facts, solves, key weights and held keys; the
    earlier chunk's prompts join the preserved keys (uncached); undo and the hooks; one chunk is one solve."""
    import lakn.closed_form as closed_form

    facts = toy_facts[:3]
    answers = {f.fact_id: {"en": toy_facts[(i + 1) % 4].answers["en"], "fr": toy_facts[(i + 1) % 4].answers["fr"]}
               for i, f in enumerate(facts)}
    neurons = layer_neurons(llama, [1])
    kw = dict(lam=1.0, target_steps=3, pivot=None, retries=1, position="last")
    base = preservation(llama, [1], texts=TEXTS)
    before = _weights(llama)
    cached = sorted((tmp_path / "cache").rglob("*"))
    merged: list[dict] = []
    real = closed_form.preservation
    monkeypatch.setattr(closed_form, "preservation", lambda *a, **k: merged.append(k) or real(*a, **k))
    solves: list[tuple] = []  # every solve's keys, residuals, weights and covariance
    real_solve = closed_form.solve_rows

    def spy(keys, residuals, covariance=None, **k):
        solves.append((keys, residuals, k["weights"], covariance))
        return real_solve(keys, residuals, covariance, **k)

    monkeypatch.setattr(closed_form, "solve_rows", spy)
    with edit_facts(llama, facts, answers, neurons, chunk_size=2, preserve=base, **kw) as chunked:
        info = chunked.info
        tokens = llama.to_tokens(facts[0].queries("en")[0].prompt)
        with torch.no_grad():
            edited_logits = llama(tokens)
    assert _same(llama, before) and sorted((tmp_path / "cache").rglob("*")) == cached  # chunk prompts: no cache file
    assert [(m["facts"], m["languages"], m["max_queries"], m["cache"]) for m in merged] == [
        (facts[:2], ["en", "fr"], 2, False)]
    assert "batch=3 chunks=2" in chunked.method and info["chunk_size"] == 2
    assert [c["facts"] for c in info["chunks"]] == [[f.fact_id for f in facts[:2]], [facts[2].fact_id]]
    assert len(info["key_weights"]) == 3 and info["solves"] == sum(c["solves"] for c in info["chunks"]) >= 2
    assert info["groups"] == [f.fact_id for f in facts] and len(info["targets"]) == 3 == len(info["target_history"])
    assert info["n_keys"] == 12  # 3 facts x 2 languages x 2 queries, summed over the chunks
    # the second chunk's solves end with the first chunk's 8 keys and their context keys: residual 0,
    # weighing CHUNK_HOLD x their kept weight (context keys x context_weight more); C has their prompts
    first, second = info["chunks"]
    n_held, n_ctx = second["n_held_keys"], second["n_held_context_keys"]
    assert first["n_held_keys"] == 0 and n_held == 8 and n_ctx > 0
    assert info["n_held_keys"] == 8 and info["n_held_context_keys"] == n_ctx
    hold = [lakn.closed_form_edit.CHUNK_HOLD * w for w in first["key_weights"]]
    for keys, residuals, w, cov in solves[first["solves"]:]:
        tail = w[-(n_held + n_ctx):]
        assert torch.equal(residuals[-(n_held + n_ctx):], torch.zeros(n_held + n_ctx, residuals.shape[1],
                                                                      dtype=residuals.dtype))
        torch.testing.assert_close(tail[:n_held], torch.tensor([h for h in hold for _ in range(4)]))
        assert set(tail[n_held:].tolist()) <= {lakn.editing.CONTEXT_WEIGHT * h for h in hold}
        assert not torch.allclose(cov, solves[0][3])  # the first chunk's prompts joined the preserved keys
    for keys, residuals, w, cov in solves[:first["solves"]]:
        assert len(w) == len(keys) and torch.allclose(cov, solves[0][3])
    monkeypatch.setattr(closed_form, "solve_rows", real_solve)
    with torch.no_grad(), llama.hooks(fwd_hooks=chunked.hooks()):
        hooked_logits = llama(tokens)
    torch.testing.assert_close(hooked_logits, edited_logits, rtol=1e-4, atol=1e-4)
    assert _same(llama, before) and active_hook_count(llama) == 0
    chunked.redo()
    chunked.undo()
    assert _same(llama, before)
    with edit_facts(llama, facts, answers, neurons, preserve=base, **kw) as once:
        pass
    with edit_facts(llama, facts, answers, neurons, chunk_size=3, preserve=base, **kw) as whole:  # one chunk: one solve
        assert "chunks" not in whole.info
        torch.testing.assert_close(whole.deltas[1], once.deltas[1])
    calls = [0]
    real_targets = lakn.target.find_targets

    def fail_second(*a, **k):  # the second chunk's target search fails: nothing stays changed
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("boom")
        return real_targets(*a, **k)

    monkeypatch.setattr(lakn.target, "find_targets", fail_second)
    with pytest.raises(RuntimeError, match="boom"):
        edit_facts(llama, facts, answers, neurons, chunk_size=2, preserve=base, **kw)
    assert _same(llama, before)
    monkeypatch.setattr(lakn.target, "find_targets", real_targets)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="chunk_size"):
            edit_facts(llama, facts, answers, neurons, chunk_size=bad)
    import numpy as np

    with edit_facts(llama, facts, answers, neurons, chunk_size=np.int64(2), preserve=base, **kw) as again:
        assert again.info["chunk_size"] == 2
        # info["missed"]: the facts whose new answer is not top-1 on all target queries at the end
        for f in facts:
            enc = [lakn.tokens.encode_query(llama, q) for q in lakn.editing._with_answers(
                f, answers[f.fact_id]).queries("en")]
            top = lakn.probability.top1_tokens(llama, enc)
            assert (f.fact_id in again.info["missed"]) == any(t != int(e.answer[0]) for t, e in zip(top, enc))
    with pytest.raises(ValueError, match="chunk_size is an option of the closed form"):
        edit_facts(llama, facts, answers, [(1, 2)], method="kn_embedding", chunk_size=1)
    assert _same(llama, before)


def test_inject_through_the_same_solve(llama, toy_facts):
    fact = toy_facts[3]
    before = _weights(llama)
    with inject_fact(llama, fact, languages=("en", "fr"), neurons=layer_neurons(llama, [1]), lam=0.0,
                     ridge=1e-12) as e:
        assert "inject" in e.method and e.info["key_languages"] == ["en", "fr"] and len(e.info["targets"]) == 2
        assert e.info["n_keys"] == 4
    from lakn.editing import INJECT_LAM, LAM

    with inject_fact(llama, fact, languages=("en",), neurons=layer_neurons(llama, [1]), target_steps=1,
                     retries=0) as d:  # injection starts looser than an edit (results.md run 10)
        assert d.info["lam"] == INJECT_LAM < LAM
    with inject_fact(llama, fact, language="en", neurons=[(1, 1), (1, 2)], method="gradient", steps=2) as g:
        assert len(g.history) == 2
    assert _same(llama, before)


# --------------------------------------------------------------------------- preservation


def test_preservation_is_cached_saved_loaded_and_checked(llama, tmp_path, toy_facts):
    pres = preservation(llama, [0, 1], texts=TEXTS)
    files = sorted((tmp_path / "cache" / "covariance").glob("*.safetensors"))
    assert len(files) == 2 and all(len(f.stem) == 40 for f in files)  # named by a hash
    assert pres.n_tokens == sum(llama.to_tokens(t).shape[1] for t in TEXTS)
    acts = torch.cat([post_activations(llama, llama.to_tokens(t), [1])[1][0] for t in TEXTS]).double()
    torch.testing.assert_close(pres[1], acts.T @ acts / pres.n_tokens)
    again = preservation(llama, [1], texts=TEXTS)  # from the cache
    assert torch.equal(again[1], pres[1]) and again.n_tokens == pres.n_tokens
    with_facts = preservation(llama, [1], texts=TEXTS, facts=toy_facts[:2], languages=["en"])
    assert with_facts.n_tokens > pres.n_tokens and "4 query prompts" in with_facts.source
    path = pres.save(tmp_path / "p.safetensors")
    loaded = Preservation.load(path)
    assert loaded.layers == [0, 1] and torch.equal(loaded[0], pres[0]) and loaded.source == pres.source
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="p.safetensors"):
        Preservation.load(path)
    with pytest.raises(ValueError, match="metadata"):
        Preservation.load(tmp_path / "missing.safetensors")


def test_answer_weight_counts_each_fact_prompts_last_token_that_many_times(llama, tmp_path, toy_facts):
    """``answer_weight=w``: the moment is ``sum_t w_t a_t a_t^T / sum_t w_t`` with ``w_t = w`` at each
    fact prompt's last token and 1 elsewhere (the texts' tokens too, also a text equal to a prompt,
    which shares its batch); weight 1 is the plain moment under the hash and cache file of before;
    a weight that is not a whole number >= 1 is refused."""
    import hashlib
    import json

    facts = toy_facts[:2]
    prompts = [q.prompt for f in facts for q in f.queries("en")[:1]]
    texts = [*TEXTS, prompts[0], "  "]  # the same tokens as a fact prompt, weighted 1: one batch, two weights
    kw = dict(texts=texts, facts=facts, languages=["en"], max_queries=1)
    plain = preservation(llama, [1], **kw)
    heavy = preservation(llama, [1], **kw, answer_weight=5)
    total, weight = torch.zeros_like(heavy[1]), 0.0
    for text, w_last in [(t, 1.0) for t in texts if t.strip()] + [(p, 5.0) for p in prompts]:
        a = post_activations(llama, llama.to_tokens(text), [1])[1][0].double()
        w = torch.ones(a.shape[0], dtype=torch.float64)
        w[-1] = w_last
        total, weight = total + (a * w[:, None]).T @ a, weight + float(w.sum())
    torch.testing.assert_close(heavy[1], total / weight)
    assert heavy.n_tokens == plain.n_tokens + 4 * len(prompts) and "answer positions x5" in heavy.source
    assert not torch.allclose(heavy[1], plain[1]) and heavy.source_sha256 != plain.source_sha256
    old_hash = hashlib.sha256(json.dumps([*TEXTS, prompts[0], *prompts], ensure_ascii=False).encode()).hexdigest()
    assert plain.source_sha256 == old_hash  # the hash (and so the cache file) of before the option
    again = preservation(llama, [1], **kw, answer_weight=1.0)
    assert torch.equal(again[1], plain[1]) and again.source_sha256 == plain.source_sha256
    no_facts = preservation(llama, [1], texts=TEXTS, answer_weight=5)  # nothing to weigh: the plain moment
    assert no_facts.source_sha256 == preservation(llama, [1], texts=TEXTS).source_sha256
    assert len(list((tmp_path / "cache" / "covariance").glob("*.safetensors"))) == 3
    for bad in (0.5, 2.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="answer_weight must be a whole number >= 1"):
            preservation(llama, [1], texts=TEXTS, facts=facts, answer_weight=bad)
    for bad in ("8", True, None):
        with pytest.raises(TypeError, match="answer_weight"):
            preservation(llama, [1], texts=TEXTS, facts=facts, answer_weight=bad)
    assert preservation(llama, [1], **kw, answer_weight=np.int64(5)).source_sha256 == heavy.source_sha256


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors(llama, toy_facts):
    fact = toy_facts[0]
    before = _weights(llama)
    n = [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match="unknown edit method"):
        edit_fact(llama, fact, {"en": "Rome"}, n, method="rome")
    with pytest.raises(ValueError, match="no neurons"):
        edit_fact(llama, fact, {"en": "Rome"}, [])
    with pytest.raises(FactsError, match="edit language 'en'"):
        edit_fact(llama, fact, {"fr": "Rome"}, n)
    with pytest.raises(FactsError, match="key language"):
        edit_fact(llama, fact, {"en": "Rome"}, n, key_languages=["en", "xx"])
    with pytest.raises(ValueError, match="lam"):
        edit_fact(llama, fact, {"en": "Rome"}, n, lam=-1.0)
    with pytest.raises(ValueError, match="null_space"):
        edit_fact(llama, fact, {"en": "Rome"}, n, null_space=2.0)
    with pytest.raises(IndexError, match="d_mlp"):
        edit_fact(llama, fact, {"en": "Rome"}, [(1, 10_000)])
    with pytest.raises(ValueError, match="layer"):
        edit_fact(llama, fact, {"en": "Rome"}, [(0, 1), (1, 1)], preserve=preservation(llama, [1], texts=TEXTS))
    other = tiny_model("llama", d_mlp=48)
    wrong = preservation(other, [0, 1], texts=TEXTS)
    with pytest.raises(ValueError, match="another model"):
        edit_fact(llama, fact, {"en": "Rome"}, n, preserve=wrong)
    with pytest.raises(FactsError, match="no entry"):
        edit_facts(llama, toy_facts[:2], {fact.fact_id: {"en": "Rome"}}, n)
    with pytest.raises(TypeError, match="unknown option"):
        edit_facts(llama, toy_facts[:1], {fact.fact_id: {"en": "Rome"}}, n, lamda=3)
    with pytest.raises(FactsError, match="no queries or answer"):
        inject_fact(llama, fact, languages=("de",), neurons=n)
    for option in ("translate", "per_language"):  # an injection reads each training language's own answer
        with pytest.raises(ValueError, match=f"'{option}'.*options of edit_fact"):
            inject_fact(llama, fact, languages=("en",), neurons=n, **{option: True})
    bert = tiny_model("bert")
    with pytest.raises(ValueError, match="causal LM"):
        edit_fact(bert, fact, {"en": "Rome"}, [(0, 1)])
    with pytest.raises(ValueError, match="causal LM; chunk_size"):  # refused before any preserved keys are built
        edit_facts(bert, toy_facts[:2], {f.fact_id: {"en": "Rome"} for f in toy_facts[:2]}, [(0, 1)], chunk_size=1)
    assert _same(llama, before) and active_hook_count(llama) == 0
    assert EDIT_METHODS == ("closed_form", "gradient", "kn_embedding")


def test_a_failing_solve_leaves_no_hooks_and_no_change(llama, toy_facts, monkeypatch):
    import lakn.closed_form as cf

    before = _weights(llama)

    def broken(*args, **kwargs):
        raise RuntimeError("solver failed")

    monkeypatch.setattr(cf, "solve_rows", broken)
    with pytest.raises(RuntimeError, match="solver failed"):
        edit_fact(llama, toy_facts[0], {"en": "Rome"}, layer_neurons(llama, [1]), preserve=preservation(llama, [1], texts=TEXTS))
    assert _same(llama, before) and active_hook_count(llama) == 0 and not llama.__dict__.get("_lakn_edits")
    delta, history = find_target(llama, 1, [lakn.encode_query(llama, toy_facts[0].queries("en")[0])], steps=2)
    keys = prompt_keys(llama, [llama.to_tokens("Hello")[0]], {1: [0, 5]})
    assert delta.shape == (int(llama.cfg.d_model),) and len(history) == 2 and keys[1].shape == (1, 2)
    assert active_hook_count(llama) == 0


# --------------------------------------------------------------------------- subject position


def test_subject_end_exact_case_and_inflected():
    assert _subject_end("The capital of France is", "France") == len("The capital of France")
    assert _subject_end("the capital of france is", "France") == len("the capital of france")
    # Russian genitive: "Франции" for "Франция" -> the longest prefix that occurs ("Франци")
    assert _subject_end("Столица Франции —", "Франция") == len("Столица Франци")
    assert _subject_end("The capital of Spain is", "France") is None
    assert _subject_end("anything", "  ") is None


def test_subject_position_is_the_subjects_last_token(llama):
    for prompt, subject in [("The capital of France is", "France"), ("France's capital city is", "France"),
                            ("法国的首都是", "法国"), ("Столица Франции —", "Франция")]:
        tokens = llama.to_tokens(prompt)[0]
        pos = subject_position(llama, prompt, subject)
        assert pos is not None and 0 < pos < len(tokens)
        text_to_pos = llama.tokenizer.decode(tokens[1:pos + 1])  # without <bos>
        end = _subject_end(prompt, subject)
        # the decoded tokens up to pos cover the subject's end, the ones before it do not
        assert len(text_to_pos) >= end
        assert len(llama.tokenizer.decode(tokens[1:pos])) < end
    assert subject_position(llama, "The capital of Spain is", "France") is None


def test_prompt_keys_read_the_given_positions(llama):
    prompts = [llama.to_tokens(t)[0] for t in ("The capital of France is", "Le chat dort", "The capital of Spain is")]
    positions = [4, 1, 2]
    keys = prompt_keys(llama, prompts, {1: [0, 3, 7]}, positions)
    for i, (p, pos) in enumerate(zip(prompts, positions)):
        acts = post_activations(llama, p[None], [1])[1][0]
        torch.testing.assert_close(keys[1][i], acts[pos, [0, 3, 7]].double())
    last = prompt_keys(llama, prompts, {1: [0, 3, 7]})
    torch.testing.assert_close(last[1][1], post_activations(llama, prompts[1][None], [1])[1][0, -1, [0, 3, 7]].double())
    with pytest.raises(IndexError, match="outside prompt 0"):
        prompt_keys(llama, prompts[:1], {1: [0]}, [99])
    with pytest.raises(ValueError, match="2 key positions for 1 prompts"):
        prompt_keys(llama, prompts[:1], {1: [0]}, [0, 1])


def test_context_keys_are_every_position_but_the_key(llama):
    prompts = [llama.to_tokens(t)[0] for t in ("The capital of France is", "Le chat dort", "The capital of Spain is")]
    positions = [4, 1, 2]
    ctx = context_keys(llama, prompts, {1: [0, 3, 7]}, positions)[1]
    expected = []
    for p, pos in zip(prompts, positions):
        acts = post_activations(llama, p[None], [1])[1][0][:, [0, 3, 7]].double()
        expected += [acts[i] for i in range(len(p)) if i != pos]
    assert ctx.shape == (sum(len(p) for p in prompts) - 3, 3)
    torch.testing.assert_close(ctx, torch.stack(expected))
    both = keys_and_context(llama, prompts, {1: [0, 3, 7]}, positions)  # one forward pass for both
    torch.testing.assert_close(both[0][1], prompt_keys(llama, prompts, {1: [0, 3, 7]}, positions)[1])
    torch.testing.assert_close(both[1][1], ctx)
    with pytest.raises(ValueError, match="2 key positions for 1 prompts"):
        context_keys(llama, prompts[:1], {1: [0]}, [0, 1])
    for bad in (-1, 99):  # not silently "every position"
        with pytest.raises(IndexError, match="outside prompt 0"):
            context_keys(llama, prompts[:1], {1: [0]}, [bad])


def test_context_keys_keep_the_rest_of_the_facts_prompts(llama, toy_facts):
    """With context keys the edit changes the MLP output of the fact's own prompts at the subject
    and much less elsewhere in them; without (context_weight=0) the change spreads over the prompt."""
    fact = _with_subjects(toy_facts[0])
    pres = preservation(llama, [0], texts=TEXTS)
    tokens = llama.to_tokens(fact.queries("en")[0].prompt)
    pos = subject_position(llama, fact.queries("en")[0].prompt, "France")
    clean = _mlp_out(llama, tokens, 0)
    spread = {}
    for weight in (0.0, 1.0):
        edit = edit_fact(llama, fact, {"en": "Rome", "fr": "Rome"}, layer_neurons(llama, [0]), preserve=pres,
                         lam=1.0, retries=0, pivot=None, context_weight=weight)
        try:
            change = (_mlp_out(llama, tokens, 0) - clean).norm(dim=-1)
        finally:
            edit.undo()
        n_tokens = sum(len(llama.to_tokens(q.prompt)[0]) for l in ("en", "fr") for q in fact.queries(l))
        assert edit.info["n_context_keys"] == (n_tokens - edit.info["n_keys"] if weight else 0)
        others = torch.cat([change[:pos], change[pos + 1:]])
        spread[weight] = float(others.max() / change[pos])
    assert spread[1.0] < 0.5 * spread[0.0], spread
    with pytest.raises(ValueError, match="context_weight must be a finite number >= 0"):
        edit_fact(llama, fact, {"en": "Rome"}, layer_neurons(llama, [0]), preserve=pres, context_weight=-1.0)


def test_find_target_acts_only_at_its_position(llama, toy_facts):
    enc = lakn.encode_query(llama, toy_facts[0].queries("en")[0])  # "The capital of France is" -> Paris
    pos = subject_position(llama, "The capital of France is", "France")
    delta, history = find_target(llama, 0, [enc], steps=8, positions=[pos])
    # layer 0 at the subject token: only attention in the later layer carries it to the answer
    assert history[-1] < history[0] - 0.1
    tokens = enc.prompt[None]
    onehot = torch.zeros(tokens.shape[1], 1)
    onehot[pos] = 1.0
    clean = _mlp_out(llama, tokens, 0)
    store = {}

    def add(out, hook=None):
        return out + onehot * delta

    def grab(out, hook=None):
        store["out"] = out.detach().clone()
        return out

    with torch.no_grad(), llama.hooks(fwd_hooks=[("blocks.0.mlp.hook_out", add), ("blocks.0.mlp.hook_out", grab)]):
        llama(tokens)
    changed = (store["out"][0] - clean).norm(dim=-1)
    assert changed[pos] > 0 and torch.count_nonzero(changed) == 1
    with pytest.raises(IndexError, match="target position"):
        find_target(llama, 0, [enc], steps=1, positions=[len(enc.prompt)])


def _with_subjects(fact):
    return fact  # the toy facts name their subjects


def _without_subjects(fact):
    return lakn.Fact(fact.fact_id, fact.relation, fact.answers, fact.templates, {}, fact.relation_label,
                     fact.other_answers, fact.causal_ok)


def test_subject_position_edit_keys_and_solve(llama, toy_facts):
    """position="subject": the keys are the subject's last token of every key language's prompt,
    the edit maps them to the target (the delta it was found with) and undoes bit for bit."""
    fact = _with_subjects(toy_facts[0])
    before = _weights(llama)
    pres = preservation(llama, [0], texts=TEXTS)
    edit = edit_fact(llama, fact, {"en": "Rome", "fr": "Rome", "zh": "罗马"}, layer_neurons(llama, [0]),
                     preserve=pres, position="subject", lam=1.0)
    try:
        assert edit.info["n_keys"] == sum(len(fact.queries(l)) for l in ("en", "fr", "zh"))
        assert edit.info["position"] == "subject"
        # layer 0 (a later layer carries the subject token to the answer): its output at the subject token of the first en prompt moved toward the target
        prompt = fact.queries("en")[0].prompt
        tokens = llama.to_tokens(prompt)
        pos = subject_position(llama, prompt, "France")
        edited = _mlp_out(llama, tokens, 0)[pos]
    finally:
        edit.undo()
    clean = _mlp_out(llama, tokens, 0)[pos]
    target = edit.info["targets"][0]
    cos = torch.nn.functional.cosine_similarity(edited - clean, target, dim=0)
    assert float(target.norm()) > 0 and cos > 0.5
    assert _same(llama, before)


def test_subject_position_needs_subjects(llama, toy_facts):
    pres = preservation(llama, [1], texts=TEXTS)
    with pytest.warns(UserWarning, match="names no subject: keys at the last prompt token"):
        edit = edit_fact(llama, _without_subjects(toy_facts[0]), {"en": "Rome"}, layer_neurons(llama, [1]), preserve=pres)
    edit.undo()
    absent = lakn.Fact("x", "capital", toy_facts[0].answers, toy_facts[0].templates, {"en": "Atlantis", "fr": "Atlantis"})
    with pytest.raises(FactsError, match="contains the fact's subject 'Atlantis'.*or use position='last'"):
        edit_fact(llama, absent, {"en": "Rome"}, layer_neurons(llama, [1]), preserve=pres)
    with pytest.raises(ValueError, match="unknown key position 'middle'"):
        edit_fact(llama, toy_facts[0], {"en": "Rome"}, layer_neurons(llama, [1]), preserve=pres, position="middle")


def test_key_neurons_rank_by_key_against_preserved_energy(llama, toy_facts):
    """key_neurons: min over languages of mean k_i^2 / C_ii, computed here by hand from the keys;
    a neuron made expensive in C drops out; bad k / moment shapes are named."""
    fact, d_mlp = toy_facts[0], int(llama.cfg.d_mlp)
    langs = ["en", "fr", "zh"]
    prompts, plangs, positions = key_prompts(llama, fact, langs, 2, "subject")
    keys = prompt_keys(llama, prompts, {1: list(range(d_mlp))}, positions)[1]
    eye = torch.eye(d_mlp, dtype=torch.float64)
    per_lang = torch.stack([(keys[[i for i, l in enumerate(plangs) if l == lang]] ** 2).mean(0) for lang in langs])
    expected = per_lang.min(0).values.argsort(descending=True)[:5].tolist()
    assert key_neurons(llama, fact, 1, 5, eye, langs) == [(1, i) for i in expected]
    costly = eye.clone()
    costly[expected[0], expected[0]] = 1e9  # the best neuron is loud on preserved text: not cheap any more
    picked = key_neurons(llama, fact, 1, 5, costly, langs)
    assert (1, expected[0]) not in picked and picked[:4] == [(1, i) for i in expected[1:5]]
    with pytest.raises(ValueError, match="k must be in 1"):
        key_neurons(llama, fact, 1, d_mlp + 1, eye, langs)
    with pytest.raises(ValueError, match="second moment is"):
        key_neurons(llama, fact, 1, 3, eye[:4, :4], langs)
    with pytest.raises(FactsError, match=r"key language\(s\) \['xx'\] unknown"):
        key_neurons(llama, fact, 1, 3, eye, ["en", "xx"])
    with pytest.raises(IndexError, match="layer 9 out of range"):
        key_neurons(llama, fact, 9, 3, eye, langs)
    en_only = lakn.Fact(fact.fact_id, fact.relation, fact.answers, fact.templates, {"en": "France"},
                        fact.relation_label, fact.other_answers, fact.causal_ok)
    with pytest.warns(UserWarning, match=r"no key prompt in \['fr'\]"):
        assert len(key_neurons(llama, en_only, 1, 3, eye, ["en", "fr"])) == 3


def test_target_languages_find_one_target_on_every_given_language(llama, toy_facts, monkeypatch):
    """target_languages: the delta is found on the new answers of the edit language and the given
    ones (what find_targets is handed), recorded in info and the label; bad use is named."""
    import lakn.target as cf

    seen = []
    real = cf.find_targets

    def spy(model, layer, encoded, **kw):
        (one,) = encoded  # one fact: one target
        seen.append([tuple(e.answer.tolist()) for e in one])
        return real(model, layer, encoded, **kw)

    monkeypatch.setattr(cf, "find_targets", spy)
    fact, pres = toy_facts[0], preservation(llama, [1], texts=TEXTS)
    new = {"en": "Rome", "fr": "Rome", "zh": "罗马"}
    answer = {l: tuple(lakn.encode_query(llama, lakn.editing._with_answers(fact, new).queries(l)[0]).answer.tolist())
              for l in new}
    edit = edit_fact(llama, fact, new, layer_neurons(llama, [1]), preserve=pres, target_steps=2)
    edit.undo()
    assert set(seen[-1]) == {answer["en"]} and edit.info["target_languages"] == ["en"]
    edit = edit_fact(llama, fact, new, layer_neurons(llama, [1]), preserve=pres, target_steps=2,
                     target_languages=["zh"])
    edit.undo()
    assert set(seen[-1]) == {answer["en"], answer["zh"]} and len(seen[-1]) == len(fact.queries("en")) + len(fact.queries("zh"))
    assert edit.info["target_languages"] == ["en", "zh"] and "targets=en,zh" in edit.method
    as_string = edit_fact(llama, fact, new, layer_neurons(llama, [1]), preserve=pres, target_steps=2,
                          target_languages="zh")  # one code, not its letters
    as_string.undo()
    assert as_string.info["target_languages"] == ["en", "zh"]
    with pytest.raises(FactsError, match=r"target language\(s\) \['de'\].*no new answer"):
        edit_fact(llama, fact, new, layer_neurons(llama, [1]), preserve=pres, target_languages=["de"])
    with pytest.raises(ValueError, match="kn_embedding.*target_languages"):
        edit_fact(llama, fact, new, layer_neurons(llama, [1]), method="kn_embedding", target_languages=["fr"])


def test_several_layers_are_solved_in_order_with_a_target_found_again_at_each(llama, toy_facts):
    """MEMIT's spreading: layer 0's rows take half of the target found on the clean model at layer 0;
    layer 1's target is found with layer 0's update applied and its rows take all of it. The
    spreading steps leave nothing behind: one edit on the model, undone bit for bit."""
    from lakn.weights import _delta_hooks

    fact = toy_facts[0]
    before = _weights(llama)
    answers = {"en": "Madrid", "fr": "Madrid", "zh": "马德里"}
    prompts = _prompt_tokens(llama, fact, ["en", "fr", "zh"])
    targets = [lakn.encode_query(llama, lakn.Query(q.template, q.prompt, "Madrid", q.separator, "en"))
               for q in fact.queries("en")]
    first, _ = find_target(llama, 0, targets, steps=30)  # what the edit finds at layer 0 (deterministic)
    clean0 = [_mlp_out(llama, t, 0)[-1] for t in prompts]
    edit = edit_fact(llama, fact, answers, layer_neurons(llama, [0, 1]), lam=0.0, ridge=1e-12, target_steps=30,
                     position="last")
    try:
        assert llama.__dict__["_lakn_edits"] == [edit] and edit.info["layers"] == [0, 1]
        last = edit.info["targets"][0]  # found at layer 1 on the model with layer 0's rows changed
        for t, c0 in zip(prompts, clean0):
            torch.testing.assert_close(_mlp_out(llama, t, 0)[-1] - c0, first / 2, rtol=1e-3, atol=1e-3)
        edit.undo()
        with llama.hooks(fwd_hooks=_delta_hooks({0: edit.deltas[0]}, {0: edit.neurons_by_layer[0]})):
            half = [_mlp_out(llama, t, 1)[-1] for t in prompts]
        edit.redo()
        for t, h in zip(prompts, half):
            torch.testing.assert_close(_mlp_out(llama, t, 1)[-1] - h, last, rtol=1e-3, atol=1e-3)
        assert float((last - first).norm()) > 1e-3  # a target of its own, not layer 0's again
    finally:
        edit.undo()
    assert _same(llama, before) and not llama.__dict__.get("_lakn_edits") and active_hook_count(llama) == 0


def test_preserve_other_facts_adds_their_prompts_to_the_preserved_keys(llama, toy_facts):
    """``preserve=[facts]``: the closed form solves with the default covariance merged with those facts'
    first 2 prompts per language (the same update as passing that Preservation); the gradient edit
    takes each fact's first edit-language query as a KL prompt."""
    from lakn.closed_form import preservation_for

    others = toy_facts[1:3]
    expected = preservation_for(llama, None, [1], frozenset({toy_facts[0].fact_id})).merged(
        preservation(llama, [1], texts=[], facts=others, max_queries=2))
    assert expected.n_tokens > preservation_for(llama, None, [1], frozenset({toy_facts[0].fact_id})).n_tokens
    kw = dict(lam=10.0, position="last", target_steps=3)
    with edit_fact(llama, toy_facts[0], {"en": "Rome"}, layer_neurons(llama, [1]), preserve=others, **kw) as a:
        pass
    with edit_fact(llama, toy_facts[0], {"en": "Rome"}, layer_neurons(llama, [1]), preserve=expected, **kw) as b:
        pass
    assert a.info["n_preserved_tokens"] == expected.n_tokens
    torch.testing.assert_close(a.deltas[1], b.deltas[1])
    with edit_fact(llama, toy_facts[0], {"en": "Rome"}, [(1, 2)], method="gradient", steps=2, preserve=others) as g:
        assert g.locality_history and "KL x1 on 2 prompts" in g.method


def test_weight_fingerprint_does_not_depend_on_the_thread_count():
    """The covariance cache is keyed by a hash of the weights; a float32 sum of a large tensor
    changes in its last digits with the number of threads, which made every run with another
    OMP_NUM_THREADS rebuild the cache."""
    from lakn.closed_form import _fingerprint

    class Weights(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4_000_000, generator=torch.Generator().manual_seed(0)) * 3 + 0.1)

    model, threads = Weights(), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _fingerprint(model)
        torch.set_num_threads(2)
        two = _fingerprint(model)
    finally:
        torch.set_num_threads(threads)
    assert one == two
    with torch.no_grad():
        model.w[1] += 1.0  # a change the strided sample misses still moves the sum
    assert _fingerprint(model) != one


def test_preservation_repr_names_the_moments_without_printing_them():
    from lakn.closed_form import Preservation

    p = Preservation({3: torch.eye(4, dtype=torch.float64)}, 10, source="two texts", source_sha256="ab" * 32, model="m")
    assert repr(p) == ("Preservation(layers=[3], n_tokens=10, source='two texts', source_sha256='abababababab', "
                       "model='m')")
