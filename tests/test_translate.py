"""The model's own translation of an answer (lakn.translate) and edits whose target reads it."""

import re

import pytest
import torch

import lakn
import lakn.translate as tr
from lakn.closed_form import preservation
from lakn.editing import edit_fact, edit_facts, layer_neurons
from lakn.facts import FactsError
from lakn.testing import tiny_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", weight_scale=4.0)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAKN_CACHE_DIR", str(tmp_path / "cache"))


class _Scripted(torch.nn.Module):
    """A stand-in model whose argmax next token follows a script, with a tokenizer of single characters."""

    def __init__(self, script: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab = sorted(set(script) | set("abcdefghijklmnopqrstuvwxyz :\n"))
        self.script, self.calls = script, 0
        vocab = self.vocab

        class _Tok:
            def decode(self, ids):
                return "".join(vocab[i] for i in ids)

        self.tokenizer = _Tok()

    def to_tokens(self, text):
        return torch.tensor([[self.vocab.index(c) for c in text]])

    def forward(self, tokens):
        logits = torch.zeros(1, tokens.shape[1], len(self.vocab))
        logits[0, -1, self.vocab.index(self.script[min(self.calls, len(self.script) - 1)])] = 1.0
        self.calls += 1
        return logits


def test_greedy_decoding_follows_the_argmax_to_the_end_of_the_line():
    assert tr._greedy(_Scripted(" wien\nparis"), "de:", 12) == "wien"  # stops at the newline, stripped
    assert tr._greedy(_Scripted("abcdefgh"), "x", 3) == "abc"          # or after max_tokens


def test_greedy_decoding_on_a_real_model_is_its_argmax_chain(llama):
    prompt, n = "The capital of France is", 4
    tokens = llama.to_tokens(prompt)
    chain = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(llama(tokens)[0, -1].argmax())
            if "\n" in llama.tokenizer.decode(chain + [nxt]):
                break
            chain.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
    assert tr._greedy(llama, prompt, n) == llama.tokenizer.decode(chain).strip()


def _fake_translator(table, prompts):
    """A _greedy stand-in: the last line of the prompt is '<Target>:' after '<Source>: <word>'."""

    def greedy(model, prompt, max_tokens):
        prompts.append(prompt)
        lines = prompt.split("\n")
        source, word = lines[-2].split(": ", 1)
        return table.get((source, lines[-1].rstrip(":"), word), "")

    return greedy


def test_round_trip_keeps_only_translations_the_model_reads_back(monkeypatch):
    table = {("English", "French", "Vienna"): "Vienne", ("French", "English", "Vienne"): "vienna ",
             ("English", "German", "Vienna"): "Wien", ("German", "English", "Wien"): "Venice",
             ("English", "Chinese", "Vienna"): ""}
    prompts: list[str] = []
    monkeypatch.setattr(tr, "_greedy", _fake_translator(table, prompts))
    assert tr.translate_answer(None, "Vienna", ["fr", "de", "zh", "en"]) == {"fr": "Vienne"}
    # the prompt: every aligned example pair, then the word; the source language is never translated
    first = prompts[0]
    for a, b in zip(tr.EXAMPLES["en"], tr.EXAMPLES["fr"]):
        assert f"English: {a}\nFrench: {b}\n\n" in first
    assert first.endswith("English: Vienna\nFrench:")
    assert len(prompts) == 5  # fr and de there and back, zh there only (empty); en, the source, not at all
    prompts.clear()
    assert tr.translate_answer(None, "Vienna", ["fr", "de", "zh"], round_trip=False) == {"fr": "Vienne", "de": "Wien"}
    assert len(prompts) == 3  # no way back asked for
    # more languages through aligned examples of one's own
    table[("English", "Italian", "Vienna")], table[("Italian", "English", "Vienna")] = "Vienna", "Vienna"
    words = ("Giappone", "Londra", "pittore", "Sony", "calcio", "italiano")
    assert tr.translate_answer(None, "Vienna", ["it"], examples={"it": words}) == {"it": "Vienna"}


def test_translate_answer_bad_inputs_name_the_problem(monkeypatch):
    monkeypatch.setattr(tr, "_greedy", lambda *a: "x")
    with pytest.raises(FactsError, match="nothing to translate"):
        tr.translate_answer(None, "  ", ["fr"])
    with pytest.raises(FactsError, match="unknown language code 'xx'"):
        tr.translate_answer(None, "Vienna", ["xx"])
    with pytest.raises(FactsError, match=re.escape("no translation examples for language 'it'")):
        tr.translate_answer(None, "Vienna", ["fr", "it"])
    with pytest.raises(FactsError, match="no translation examples for language 'it'"):
        tr.translate_answer(None, "Vienna", ["fr"], source="it")
    with pytest.raises(FactsError, match="'en' and 'it' differ in length"):
        tr.translate_answer(None, "Vienna", ["it"], examples={"it": ("Giappone",)})
    with pytest.raises(ValueError, match="max_tokens"):
        tr.translate_answer(None, "Vienna", ["fr"], max_tokens=0)
    assert tr.translate_answer(None, "Vienna", "fr", round_trip=False) == {"fr": "x"}  # one code, not letters


def test_every_example_list_is_aligned_and_names_a_known_language():
    assert len({len(words) for words in tr.EXAMPLES.values()}) == 1
    assert all(code in lakn.LANGUAGES and all(w.strip() == w and w for w in words) for code, words in tr.EXAMPLES.items())


def test_translate_edit_reads_the_models_translation_not_the_given_answers(llama, toy_facts, monkeypatch):
    """translate=True: the target is found on the edit language's answer and the model's translation
    (here a stand-in), the given zh answer is not read, and the translation is recorded. Re-solves
    check the zh queries in a group of their own (per_language, the default), or count the English
    queries only (per_language=False)."""
    import lakn.closed_form_edit as cfe
    import lakn.editing as editing
    import lakn.target as target

    asked, seen, checked = [], [], []
    monkeypatch.setattr(editing, "translate_answer",
                        lambda model, text, languages, source: asked.append((text, list(languages), source))
                        or {"zh": "罗马"})
    real_targets, real_hits = target.find_targets, cfe._current_hits

    def spy_targets(model, layer, encoded, **kw):
        seen.append([tuple(e.answer.tolist()) for one in encoded for e in one])
        return real_targets(model, layer, encoded, **kw)

    def spy_hits(model, groups):
        checked.append([len(g.checked) for g in groups])
        return real_hits(model, groups)

    monkeypatch.setattr(target, "find_targets", spy_targets)
    monkeypatch.setattr(cfe, "_current_hits", spy_hits)
    fact, pres = toy_facts[2], preservation(llama, [1], texts=["The cat sleeps.", "Il pleut."])
    given = {"en": "Paris", "fr": "Paris", "zh": "东京"}  # zh: a reference answer the edit must not read
    token = {w: tuple(lakn.encode_query(llama, lakn.editing._with_answers(fact, {"zh": w}).queries("zh")[0]).answer.tolist())
             for w in ("罗马", "东京")}
    edit = edit_fact(llama, fact, given, layer_neurons(llama, [1]), preserve=pres, target_steps=2, translate=True)
    edit.undo()
    assert asked == [("Paris", ["fr", "zh"], "en")]  # the key languages but the edit language's
    assert token["罗马"] in seen[-1] and token["东京"] not in seen[-1]
    assert len(seen[-1]) == len(fact.queries("en")) + len(fact.queries("zh"))
    assert checked[-1] == [len(fact.queries("en")), len(fact.queries("zh"))]
    assert edit.info["groups"] == [fact.fact_id, f"{fact.fact_id}:zh"]
    one = edit_fact(llama, fact, given, layer_neurons(llama, [1]), preserve=pres, target_steps=2, translate=True,
                    per_language=False, retries=1)
    one.undo()
    assert checked[-1] == [len(fact.queries("en"))] and one.info["groups"] == [fact.fact_id]  # zh need not take
    assert edit.info["translations"] == {fact.fact_id: {"zh": "罗马"}} and edit.info["target_languages"] == ["en", "zh"]
    asked.clear()
    edit = edit_fact(llama, fact, given, layer_neurons(llama, [1]), preserve=pres, target_steps=2, translate=True,
                     target_languages=["zh"], retries=0)
    edit.undo()
    assert asked == [("Paris", ["zh"], "en")]
    # the answers given through target_languages: re-solves count the English queries only there too
    given_zh = edit_fact(llama, fact, given, layer_neurons(llama, [1]), preserve=pres, target_steps=2,
                         target_languages=["zh"], retries=0, per_language=False)
    given_zh.undo()
    assert token["东京"] in seen[-1] and checked[-1] == [len(fact.queries("en"))]
    assert "translations" not in given_zh.info
    # a batch records each fact's, asking once for an answer two facts share; the gradient edit reads them too
    asked.clear()
    both = edit_facts(llama, toy_facts[:2], {f.fact_id: given for f in toy_facts[:2]}, layer_neurons(llama, [1]),
                      preserve=pres, target_steps=2, translate=True, retries=0)
    both.undo()
    assert both.info["translations"] == {f.fact_id: {"zh": "罗马"} for f in toy_facts[:2]}
    assert asked == [("Paris", ["fr", "zh"], "en")]
    grad = edit_fact(llama, fact, given, layer_neurons(llama, [1]), method="gradient", steps=1, translate=True)
    grad.undo()
    assert grad.info["translations"] == {fact.fact_id: {"zh": "罗马"}}
    with pytest.raises(ValueError, match="kn_embedding.*translate"):
        edit_fact(llama, fact, given, layer_neurons(llama, [1]), method="kn_embedding", translate=True)
    with pytest.raises(TypeError, match="translate must be True, False or 'auto'"):
        edit_fact(llama, fact, given, layer_neurons(llama, [1]), preserve=pres, translate="yes")
    with pytest.raises(FactsError, match=r"target language\(s\) \['de'\] unknown"):
        edit_fact(llama, fact, given, layer_neurons(llama, [1]), preserve=pres, translate=True, target_languages=["de"])


def test_the_default_translates_for_the_closed_form_only(llama, toy_facts, monkeypatch):
    """translate="auto" (the default) is translate=True for a closed-form edit with no target languages
    named, and False for the gradient and embedding peers, with target languages given, in an edit
    language lakn has no translation examples for, and in an injection."""
    import lakn.editing as editing
    from lakn.editing import inject_fact
    from lakn.facts import Fact

    asked = []
    monkeypatch.setattr(editing, "translate_answer",
                        lambda model, text, languages, source: asked.append((text, list(languages), source))
                        or {"zh": "罗马"})
    # layer 0: a change at the subject's token of the last layer (1) cannot reach the answer position
    fact, pres = toy_facts[2], preservation(llama, [0], texts=["The cat sleeps.", "Il pleut."])
    given, rows = {"en": "Paris", "fr": "Paris", "zh": "东京"}, layer_neurons(llama, [0])
    kw = dict(preserve=pres, target_steps=2, retries=0)
    default = edit_fact(llama, fact, given, rows, **kw)
    default.undo()
    explicit = edit_fact(llama, fact, given, rows, translate=True, **kw)
    explicit.undo()
    assert asked == [("Paris", ["fr", "zh"], "en")] * 2
    assert default.info["translations"] == explicit.info["translations"] == {fact.fact_id: {"zh": "罗马"}}
    assert default.deltas[0].abs().max() > 0 and torch.equal(default.deltas[0], explicit.deltas[0])
    off = edit_fact(llama, fact, given, rows, translate=False, **kw)
    off.undo()
    assert default.info["groups"] == [fact.fact_id, f"{fact.fact_id}:zh"]  # the translation's own group
    assert "translations" not in off.info and off.info["groups"] == [fact.fact_id]
    assert not torch.allclose(off.deltas[0], default.deltas[0])
    asked.clear()
    batch = edit_facts(llama, toy_facts[:2], {f.fact_id: given for f in toy_facts[:2]}, rows, **kw)
    batch.undo()  # a batch of several facts keeps the English answer by default (results.md run 20)
    assert asked == [] and "translations" not in batch.info
    asked_batch = edit_facts(llama, toy_facts[:2], {f.fact_id: given for f in toy_facts[:2]}, rows, translate=True, **kw)
    asked_batch.undo()
    assert asked == [("Paris", ["fr", "zh"], "en")]  # asked once for the batch
    assert set(asked_batch.info["translations"]) == {f.fact_id for f in toy_facts[:2]}
    one = edit_facts(llama, toy_facts[:1], {toy_facts[0].fact_id: given}, rows, **kw)
    one.undo()  # one fact through edit_facts: a single edit, translated as edit_fact's default
    assert len(asked) == 2 and set(one.info["translations"]) == {toy_facts[0].fact_id}
    asked.clear()
    for method, extra in (("gradient", dict(steps=1)), ("kn_embedding", {})):
        peer = edit_fact(llama, fact, given, rows, method=method, **extra)
        peer.undo()
        assert "translations" not in peer.info
    named = edit_fact(llama, fact, given, rows, target_languages=["zh"], **kw)
    named.undo()
    assert "translations" not in named.info and named.info["target_languages"] == ["en", "zh"]
    with inject_fact(llama, fact, languages=("en",), neurons=rows, translate="auto", **kw):
        pass
    assert asked == []
    monkeypatch.undo()  # the real translate_answer would refuse an edit language with no examples
    fact_it = Fact.from_dict({
        "fact_id": "capital_italy_it", "relation": "capital", "subject": {"en": "Italy", "it": "Italia"},
        "object": {"en": "Rome", "it": "Roma"},
        "queries": {"en": ["The capital of Italy is [Y]"], "it": ["La capitale d'Italia è [Y]"]}})
    edited = edit_fact(llama, fact_it, {"it": "Milano", "en": "Milan"}, rows, language="it", **kw)
    edited.undo()
    assert "translations" not in edited.info and edited.info["target_languages"] == ["it"]
    with pytest.raises(FactsError, match="no translation examples for language 'it'"):
        edit_fact(llama, fact_it, {"it": "Milano", "en": "Milan"}, rows, language="it", translate=True, **kw)


def test_gemma_translates_a_country_and_reads_it_back(default_model):
    """The embedded model, few-shot: two translations it knows well (docs/results.md run 16)."""
    words = lakn.translate_answer(default_model, "Germany", ["fr", "de"])
    assert words == {"fr": "Allemagne", "de": "Deutschland"}


def test_translate_leaves_out_languages_with_no_usable_query(llama, monkeypatch):
    """A language whose queries a causal LM cannot use (the slot is not last) gets no translation
    and no target, nor does a key language lakn has no translation examples for (it); the edit still
    takes their keys. Named as a target language, one without examples is an error."""
    import lakn.editing as editing
    from lakn.facts import Fact

    asked = []
    monkeypatch.setattr(editing, "translate_answer",
                        lambda model, text, languages, source: asked.append(list(languages)) or {})
    fact = Fact.from_dict({"fact_id": "capital_peru", "relation": "capital",
                           "subject": {"en": "Peru", "fr": "Pérou", "zh": "秘鲁", "it": "Perù"},
                           "object": {"en": "Lima", "fr": "Lima", "zh": "利马", "it": "Lima"},
                           "queries": {"en": ["The capital of Peru is [Y]"], "fr": ["La capitale du Pérou est [Y]"],
                                       "zh": ["[Y]是秘鲁的首都"], "it": ["La capitale del Perù è [Y]"]}})
    pres = preservation(llama, [1], texts=["The cat sleeps.", "Il pleut."])
    edit = edit_fact(llama, fact, {"en": "Quito"}, layer_neurons(llama, [1]), preserve=pres, target_steps=2,
                     translate=True, key_languages=["en", "fr", "zh", "it"], retries=0)
    edit.undo()
    assert asked == [["fr"]] and edit.info["translations"] == {"capital_peru": {}}
    assert edit.info["target_languages"] == ["en"] and edit.info["key_languages"] == ["en", "fr", "it", "zh"]
    monkeypatch.undo()  # the real translate_answer: examples are checked before the model runs
    with pytest.raises(FactsError, match="no translation examples for language 'it'"):
        edit_fact(llama, fact, {"en": "Quito"}, layer_neurons(llama, [1]), preserve=pres, translate=True,
                  target_languages=["it"])


def test_per_language_maps_each_languages_keys_to_its_own_target(llama, toy_facts, monkeypatch):
    """per_language=True: one target, found on every target language's queries, but each other target
    language's keys a group of their own, checked on its own queries and weighed apart by the
    re-solves; every key still lands on the target (the fit is exact at a tiny λ). A solve that misses
    the edit language is never kept over one that takes it."""
    import lakn.closed_form_edit as cfe
    import lakn.editing as editing
    import lakn.target as target
    from lakn.facts import Fact

    monkeypatch.setattr(editing, "translate_answer", lambda model, text, languages, source: {"zh": "罗马"})
    seen, checked = [], []
    real_targets, real_hits = target.find_targets, cfe._current_hits
    monkeypatch.setattr(target, "find_targets", lambda model, layer, encoded, **kw:
                        seen.append([len(one) for one in encoded]) or real_targets(model, layer, encoded, **kw))
    monkeypatch.setattr(cfe, "_current_hits", lambda model, groups:
                        checked.append([len(g.checked) for g in groups]) or real_hits(model, groups))
    # subjects that differ by language, so that no two prompts share a key
    fact = Fact.from_dict({"fact_id": "capital_italy", "relation": "capital",
                           "subject": {"en": "Italy", "fr": "Italie", "zh": "意大利"},
                           "object": {"en": "Rome", "fr": "Rome", "zh": "罗马"},
                           "queries": {"en": ["The capital of Italy is [Y]", "Italy's capital city is [Y]"],
                                       "fr": ["La capitale de l'Italie est [Y]", "L'Italie a pour capitale [Y]"],
                                       "zh": ["意大利的首都是[Y]", "首都在意大利的是[Y]"]}})
    pres = preservation(llama, [0], texts=["The cat sleeps.", "Il pleut."])
    rows = layer_neurons(llama, [0])  # layer 0: a change at the subject reaches the answer through layer 1
    opts = dict(preserve=pres, target_steps=3, translate=True, key_languages=["en", "fr", "zh"], lam=1e-9,
                context_weight=0.0, pivot=None, retries=1)
    for per_language in (True, False):
        edit = edit_fact(llama, fact, {"en": "Paris"}, rows, per_language=per_language, **opts)
        edit.undo()
        edited = editing._with_answers(fact, {"en": "Paris", "zh": "罗马"})
        groups = cfe._fact_groups(llama, fact, edited, ["en", "zh"], ["en", "fr", "zh"], None, "subject",
                                  per_language)
        keys, _ = cfe._group_keys(llama, groups, {0: list(range(llama.cfg.d_mlp))}, False)
        targets = edit.info["targets"]
        assert sum(len(k) for k in keys) == edit.info["n_keys"] == 6
        for k, delta in zip(keys, targets):  # each group's keys land on its own target
            torch.testing.assert_close(k.float() @ edit.deltas[0].float(), delta[None].expand(len(k), -1),
                                       rtol=1e-3, atol=1e-3 * float(delta.norm()))
        if per_language:
            assert edit.info["groups"] == ["capital_italy", "capital_italy:zh"]
            assert [g.key_languages for g in groups] == [["en", "fr"], ["zh"]]
            assert seen[-1] == [4] and checked[-1] == [2, 2]  # one target; zh's queries its own check
            assert targets[0] is targets[1]
        else:
            assert edit.info["groups"] == ["capital_italy"] and seen[-1] == [4] and checked[-1] == [2]
    # which solve is kept: the edit language first, then the fewest groups missed
    real_check = cfe._hits
    calls = iter([[0, 2], [2, 0], [2, 2]])  # hits per group (en, zh): each miss doubles that group's weight
    monkeypatch.setattr(cfe, "_hits", lambda *a: next(calls))
    kept = edit_fact(llama, fact, {"en": "Paris"}, rows, per_language=True, **{**opts, "retries": 2})
    kept.undo()
    assert kept.info["key_weights"] == [2.0, 2.0] and kept.info["missed"] == [] and kept.info["solves"] == 3
    calls = iter([[2, 0], [0, 2], [0, 2]])
    kept = edit_fact(llama, fact, {"en": "Paris"}, rows, per_language=True, **{**opts, "retries": 2})
    kept.undo()  # the first solve, zh missed, is kept over the later ones that miss en
    assert kept.info["key_weights"] == [1.0, 1.0] and kept.info["missed"] == ["capital_italy:zh"]
    calls = iter([[0, 2], [2, 0]])  # one miss each: the later solve, which misses only zh, is kept
    kept = edit_fact(llama, fact, {"en": "Paris"}, rows, per_language=True, **{**opts, "retries": 1})
    kept.undo()
    assert kept.info["key_weights"] == [2.0, 1.0] and kept.info["missed"] == ["capital_italy:zh"]
    calls = iter([[0, 0], [2, 0], [2, 0]])  # zh takes nothing at weight 2: solved again at 1, kept on a tie
    kept = edit_fact(llama, fact, {"en": "Paris"}, rows, per_language=True, **{**opts, "retries": 1})
    kept.undo()
    assert kept.info["key_weights"] == [2.0, 1.0] and kept.info["released"] == ["capital_italy:zh"]
    assert kept.info["solves"] == 3
    monkeypatch.setattr(cfe, "_hits", real_check)
    # the key languages stay those given: a target language that is not one stays in the fact's group
    only = {}
    for per_language in (True, False):
        e = edit_fact(llama, fact, {"en": "Paris", "fr": "Paris"}, rows, per_language=per_language, preserve=pres,
                      target_steps=1, key_languages=["en"], target_languages=["fr"], retries=0)
        e.undo()
        only[per_language] = (e.info["groups"], e.info["key_languages"], e.info["n_keys"])
    assert only[True] == only[False] == (["capital_italy"], ["en"], 2)
    # a batch in chunks keeps each fact's groups together
    both = edit_facts(llama, toy_facts[:2], {f.fact_id: {"en": "Paris"} for f in toy_facts[:2]}, rows, chunk_size=1,
                      **{**opts, "lam": 1e4, "retries": 0}, per_language=True)
    both.undo()
    chunks = both.info["chunks"]
    assert [c["groups"] for c in chunks] == [[f.fact_id, f"{f.fact_id}:zh"] for f in toy_facts[:2]]
    assert [c["facts"] for c in chunks] == [[f.fact_id] for f in toy_facts[:2]]
    assert [len(c["key_weights"]) for c in chunks] == [2, 2] and set(both.info["missed"]) <= set(both.info["groups"])
    assert chunks[1]["n_held_keys"] > 0  # the first chunk's keys, both its groups', held in the second solve
    for method in ("closed_form", "gradient"):
        with pytest.raises(TypeError, match="per_language must be True or False"):
            edit_fact(llama, fact, {"en": "Paris"}, rows, method=method, preserve=pres, translate=True, per_language=1)
    with pytest.raises(TypeError, match="per_language must be True or False"):
        edit_facts(llama, toy_facts[:1], {toy_facts[0].fact_id: {"en": "Paris"}}, rows, per_language="no")
