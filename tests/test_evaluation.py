"""Evaluation: honest splits (lakn.splits), batched probabilities (lakn.probability), change-rate
arithmetic, neuron sets (lakn.selection), result files."""

import pytest
import torch

import lakn
from lakn.evaluation import (
    ChangeRateResult,
    EditingResult,
    change_rates,
    counterfactuals,
    editing_experiment,
)
from lakn.interventions import suppress
from lakn.probability import answer_stats, batch_answer_probability, top1_margins, top1_tokens
from lakn.selection import neuron_sets
from lakn.splits import evaluation_queries, split_facts
from lakn.testing import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", weight_scale=4.0)


def test_split_is_deterministic_and_disjoint(toy_facts):
    a = split_facts(toy_facts, holdout_share=0.5, holdout_languages=["zh"], seed=3)
    b = split_facts(toy_facts, holdout_share=0.5, holdout_languages=["zh"], seed=3)
    assert [f.templates for f in a.localization] == [f.templates for f in b.localization]
    for loc, ev, full in zip(a.localization, a.evaluation, toy_facts):
        assert "zh" not in loc.templates and ev.templates["zh"] == full.templates["zh"]
        for lang in ("en", "fr"):
            assert len(loc.templates[lang]) == 1 and len(ev.templates[lang]) == 1
            assert set(loc.templates[lang]) | set(ev.templates[lang]) == set(full.templates[lang])
        assert loc.queries("en")  # usable by localize
    seeds = {tuple(split_facts(toy_facts, seed=s).localization[0].templates["en"]) for s in range(8)}
    assert len(seeds) == 2  # the seed matters


def test_split_renumbers_causal_ok():
    fact = lakn.Fact.from_dict({"fact_id": "x", "object": {"en": "Paris"},
                                "queries": {"en": ["A [Y]", "[Y] is B", "C [Y]", "D [Y]"]},
                                "causal_ok": {"en": [0, 2, 3]}})
    split = split_facts([fact], holdout_share=0.5, seed=0)
    got = {q.template for f in (split.localization[0], split.evaluation[0]) for q in f.queries("en")}
    assert got == {"A [Y]", "C [Y]", "D [Y]"}


def test_batched_probabilities_match_single_forward(model):
    qs = evaluation_queries(model, lakn.load_facts("fictional"), max_queries=None)
    probs, ranks = batch_answer_probability(model, [q.encoded for q in qs], batch_size=5)
    for q, p, r in zip(qs, probs, ranks):
        ref = answer_stats(model, q.encoded)
        assert abs(float(p) - ref.probability) < 1e-5 and int(r) == ref.rank
    first, first_ranks = batch_answer_probability(model, [q.encoded for q in qs], batch_size=5, first_token_only=True)
    assert any(len(q.encoded.answer) > 1 for q in qs)
    for q, p, r in zip(qs, first, first_ranks):
        ref = answer_stats(model, q.encoded)
        assert abs(float(p) - float(ref.token_probs[0])) < 1e-5 and int(r) == ref.rank
    tops = top1_tokens(model, [q.encoded for q in qs], batch_size=4)
    with torch.no_grad():
        last = [model(q.encoded.prompt[None])[0, -1] for q in qs]
    assert tops == [int(logits.argmax()) for logits in last]
    same, margins = top1_margins(model, [q.encoded for q in qs], batch_size=3)
    assert same == tops
    for logits, m in zip(last, margins):  # the lead of the top logit over the runner-up, in nats
        two = logits.topk(2).values
        assert m == pytest.approx(float(two[0] - two[1]), abs=1e-4) and m >= 0
    assert len(set(round(m, 3) for m in margins)) > 1  # not a constant


def test_change_rates_values_and_kinds(model, toy_facts):
    sets = {"m": {"capital_france": [(0, 1), (1, 3)], "capital_spain": []}}
    res = change_rates(model, sets, toy_facts, top_k_answer=1000, max_queries=1, progress=False)
    df = res.to_dataframe()
    assert set(df["kind"]) == {"related", "same_relation"}
    # own queries of the two targets; the two other facts (not in sets) are the unrelated sample
    assert res.config["n_kept"] == res.config["n_queries"] == 6
    assert res.config["unrelated"]["n_probe_kept"] == res.config["unrelated"]["n_probe_queries"] == 6
    # a method with no neuron for a fact is listed, not averaged in as "no change"
    assert "capital_spain" not in set(df["target"]) and res.config["no_neurons"]["m"] == ["capital_spain"]
    # a suppress row equals the change computed by hand
    row = df[(df.target == "capital_france") & (df.intervention == "suppress") & (df.fact_id == "capital_italy")
             & (df.language == "fr")].iloc[0]
    q = [q for q in evaluation_queries(model, toy_facts, max_queries=1)
         if q.fact_id == "capital_italy" and q.language == "fr"][0]
    before = answer_stats(model, q.encoded).probability
    with suppress(model, [(0, 1), (1, 3)]):
        after = answer_stats(model, q.encoded).probability
    assert row.change == pytest.approx((after - before) / before, rel=1e-4, abs=1e-6)
    # the top-k filter: with k = 0 no query is answered, so nothing is scored
    none = change_rates(model, sets, toy_facts, top_k_answer=0, max_queries=1, progress=False)
    assert none.config["n_kept"] == 0 and none.rows == []


def test_summary_arithmetic_on_constructed_rows(tmp_path):
    rows = []
    # fact A: related changes -0.5 and -0.7 (two queries) -> -0.6; fact B: related -0.2 -> mean over facts -0.4
    for target, fid, kind, change in [("A", "A", "related", -0.5), ("A", "A", "related", -0.7),
                                      ("B", "B", "related", -0.2), ("A", "B", "same_relation", 0.1),
                                      ("B", "A", "same_relation", -0.1), ("A", "C", "other_relation", 0.3)]:
        rows.append(dict(method="m", intervention="suppress", target=target, fact_id=fid, kind=kind, language="en",
                         split="seen", p_before=0.5, p_after=0.5 * (1 + change), change=change, n_neurons=3))
    res = ChangeRateResult(rows, {"top_k_answer": 10})
    s = res.summary().set_index(["kind"])
    assert s.loc["related", "mean"] == pytest.approx(-0.4)
    assert s.loc["related", "std"] == pytest.approx(torch.tensor([-0.6, -0.2]).std().item())
    assert s.loc["same_relation", "mean"] == pytest.approx(0.0)
    t = res.table()
    assert t.loc[("m", "en"), "suppress:related"] == pytest.approx(-0.4)
    assert t.loc[("m", "en"), "facts_kept"] == 2
    path = res.save(tmp_path / "eval.json")
    back = ChangeRateResult.load(path)
    assert back.rows == rows and back.config == {"top_k_answer": 10}
    with pytest.raises(ValueError):
        EditingResult.load(path)


def test_neuron_sets_random_matched_per_layer():
    class R:  # the parts of a LocalizationResult neuron_sets reads
        fact_ids = ["a"]
        lakn = {"a": [(0, 1), (0, 5), (2, 7)]}
        d_mlp = 16

    sets = neuron_sets({"matrice": R()}, seed=1)
    layers = sorted(l for l, _ in sets["random"]["a"])
    assert layers == [0, 0, 2] and sets["matrice"]["a"] == R.lakn["a"]


def test_counterfactuals_rotate_within_each_relation(toy_facts):
    """Each fact takes the next fact of its relation (wrapping round) whose answer differs in every
    language: the four capitals get four different new answers, never their own."""
    import dataclasses

    new = counterfactuals(toy_facts)
    assert list(new) == [f.fact_id for f in toy_facts]
    assert {fid: a["en"] for fid, a in new.items()} == {
        "capital_france": "Madrid", "capital_spain": "Rome", "capital_italy": "Tokyo", "capital_japan": "Paris"}
    assert new["capital_japan"]["zh"] == "巴黎"
    # a partner whose answer is the same in one language is skipped; a relation of one fact gets none
    france, spain, italy, japan = toy_facts
    twin = dataclasses.replace(spain, answers={**spain.answers, "fr": "Paris"})
    alone = dataclasses.replace(japan, relation="other")
    new = counterfactuals([france, twin, italy, alone])
    assert new["capital_france"]["en"] == "Rome" and new["capital_spain"]["en"] == "Rome"
    assert new["capital_italy"]["en"] == "Paris" and "capital_japan" not in new


def test_editing_experiment_rows_and_restores(toy_facts):
    m = tiny_model("llama", weight_scale=3.0)
    new = counterfactuals(toy_facts)
    assert new["capital_france"]["en"] == "Madrid"
    before = lakn.w_out(m, 1)[0].detach().clone()
    sets = {"lakn": {"capital_france": [(1, 2), (1, 3)]}}
    res = editing_experiment(m, toy_facts, sets, languages=["en", "fr"], steps=3, max_queries=1, progress=False)
    assert torch.equal(lakn.w_out(m, 1)[0], before)
    df = res.to_dataframe()
    # one en query (reliability), one fr query (generality), one query per other fact and language (locality)
    assert df["metric"].value_counts().to_dict() == {"locality": 6, "reliability": 1, "generality": 1}
    assert (df[df.metric == "reliability"]["p_new_after"] > df[df.metric == "reliability"]["p_new_before"]).all()
    loc = df[df.metric == "locality"]
    assert ((loc.p_after - loc.p_before) / loc.p_before - loc.change).abs().max() < 1e-9
    table = res.table()
    assert table.loc[("lakn", "locality", "*"), "success"] == pytest.approx(loc.success.mean())
    assert table.loc[("lakn", "reliability", "en"), "n_neurons"] == 2


@pytest.mark.integration
def test_gemma_suppress_lakns_and_evaluate(default_model):
    facts = [f for f in lakn.load_facts("demo") if f.fact_id in ("capital_france", "capital_japan")]
    split = split_facts(facts, holdout_share=0.5, seed=0)
    result = lakn.localize(default_model, split.localization, languages=["en", "fr"], steps=1, max_queries=1,
                           first_token_only=True, progress=False, top_k=20)
    rates = change_rates(default_model, neuron_sets({"matrice": result}), facts, result=result,
                         languages=["en", "fr", "de"], max_queries=1, progress=False)
    t = rates.summary()
    assert {"seen", "heldout_paraphrase", "heldout_language"} & set(rates.to_dataframe()["split"])
    related = t[(t.method == "matrice") & (t.intervention == "suppress") & (t.kind == "related")]
    assert len(related) and (related["mean"] < 0).all()


def test_cli_evaluate_edit_inject_on_a_tiny_run(tmp_path, monkeypatch, capsys):
    import json

    from lakn import cli, models
    from lakn.evaluation import InjectionResult

    records = [{"fact_id": f"cap_{c}", "relation": "capital", "object": {"en": city, "fr": city},
                "queries": {"en": [f"The capital of {c} is [Y]", f"{c}'s capital city is [Y]"],
                            "fr": [f"La capitale de {c} est [Y]", f"{c} a pour capitale [Y]"]}}
               for c, city in [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome")]]
    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    m = tiny_model("llama", weight_scale=3.0)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: m)
    runs = tmp_path / "runs"
    lakn.localize_methods(m, lakn.load_facts(data), methods=("matrice", "kn"), languages=["en"], steps=1,
                          max_queries=1, out=runs, data=str(data), progress=False, top_k=5)
    assert cli.main(["evaluate", str(runs), "--top-k-answer", "400", "--holdout-languages", "fr"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "top-1 retention" in out and "heldout_language" in out and "± " in out
    assert "no fact outside the run" in captured.err  # all three facts are the run's: no unrelated group
    res = ChangeRateResult.load(runs / "eval.json")
    assert {"matrice", "kn", "random"} == set(res.to_dataframe()["method"])
    assert {"seen", "heldout_paraphrase", "heldout_language"} == set(res.to_dataframe()["split"])
    assert cli.main(["edit", str(runs), "--steps", "2", "--neurons", "2"]) == 0
    edits = EditingResult.load(runs / "edit.json").to_dataframe()
    assert set(edits["neurons"]) == {"lakn", "language_specific", "random"}
    assert (edits.groupby("neurons")["n_neurons"].max() <= 2).all()
    assert cli.main(["inject", "--out", str(tmp_path / "inj.json"), "--languages", "en,fr", "--k", "3",
                     "--steps", "2", "--unrelated", str(data), "--n-unrelated", "2", "--preserve", "1",
                     "--facts", "fict_capital_velmora,fict_currency_kelvaria"]) == 0
    inj = InjectionResult.load(tmp_path / "inj.json")
    assert {r["fact_id"] for r in inj.rows} == {"fict_capital_velmora", "fict_currency_kelvaria"}
    assert len(inj.config["preserve"]) == 1 and inj.config["preserve"][0] not in {
        r.get("other_fact") for r in inj.rows if r["metric"] == "locality"}


def test_change_rates_caps_unrelated_queries_with_one_sample(model, toy_facts):
    from lakn.facts import Fact

    facts = [Fact(f.fact_id, "capital" if i < 2 else f"rel{i}", f.answers, f.templates) for i, f in enumerate(toy_facts)]
    sets = {"a": {"capital_france": [(0, 1)]}, "b": {"capital_france": [(1, 3)]}}
    full = change_rates(model, sets, facts, top_k_answer=1000, max_queries=1, progress=False).to_dataframe()
    capped = change_rates(model, sets, facts, top_k_answer=1000, max_queries=1, max_unrelated=2, seed=5,
                          progress=False).to_dataframe()
    per_job = capped.groupby(["method", "intervention"])
    # related and same-relation queries are all kept; other relations are cut to the cap
    for kind, n in (("related", 3), ("same_relation", 3)):
        assert (per_job.apply(lambda d: (d.kind == kind).sum()) == n).all()
    assert (per_job.apply(lambda d: (d.kind == "other_relation").sum()) == 2).all()
    assert (full.kind == "other_relation").sum() == 4 * 6  # 2 facts x 3 languages, per job
    # the same sample for every method and intervention, and the numbers equal the uncapped run's
    picked = {tuple(sorted(d.loc[d.kind == "other_relation", ["fact_id", "language"]].itertuples(index=False)))
              for _, d in per_job}
    assert len(picked) == 1
    merged = capped.merge(full, on=["method", "intervention", "target", "fact_id", "language", "split"])
    assert len(merged) == len(capped) and (merged.change_x - merged.change_y).abs().max() < 1e-6
    with pytest.raises(ValueError, match="max_unrelated"):
        change_rates(model, sets, facts, top_k_answer=1000, max_queries=1, max_unrelated=-1, progress=False)


def test_injection_with_locality_term_and_disjoint_sets(toy_facts):
    from lakn.evaluation import injection_experiment

    m = tiny_model("llama", weight_scale=3.0)
    fict = [lakn.load_facts("fictional")[0]]
    with pytest.raises(ValueError, match="preserve and unrelated"):
        injection_experiment(m, fict, unrelated=toy_facts[:2], preserve=toy_facts[1:3], progress=False)
    res = injection_experiment(m, fict, languages=["en", "fr", "zh"], unrelated=toy_facts[:2], preserve=toy_facts[2:],
                               k=6, steps=3, lr=0.3, progress=False)
    df = res.to_dataframe()
    assert res.config["preserve"] == ["capital_italy", "capital_japan"]
    assert set(df.loc[df.metric == "locality", "other_fact"]) == {"capital_france", "capital_spain"}
    assert (df.loc[df.metric == "recall", "steps_run"] == 3).all()
