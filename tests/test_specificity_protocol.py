"""The fair specificity protocol (issue 12 item 1): groups, the disjoint seeded sample of unrelated
facts, the per-row mask pass, counts, standard errors and eval.json."""

import math

import pandas as pd
import pytest
import torch

from lakn.evaluation import ChangeRateResult, change_rates
from lakn.evaluation.specificity import (
    GROUPS,
    assign_groups,
    format_groups,
    masked_answer_pass,
    summarize_groups,
    unrelated_facts,
)
from lakn.facts import Fact
from lakn.interventions import enhance, suppress
from lakn.probability import batch_answer_probability, top1_tokens
from lakn.splits import evaluation_queries
from lakn.testing import active_hook_count, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("gemma3", weight_scale=4.0)


def _fact(fid, relation, answer, subject):
    return Fact.from_dict({"fact_id": fid, "relation": relation, "object": {"en": answer, "fr": answer},
                           "queries": {"en": [f"The place of {subject} is [Y]", f"{subject} is at [Y]"],
                                       "fr": [f"Le lieu de {subject} est [Y]", f"{subject} est a [Y]"]}})


@pytest.fixture
def world():
    """Run facts france / spain (capital); others: italy, a same-answer twin of france, and a fact of
    another relation with france's answer (excluded from france's other relations) or not."""
    return [_fact("france", "capital", "Paris", "France"), _fact("spain", "capital", "Madrid", "Spain"),
            _fact("italy", "capital", "Rome", "Italy"), _fact("twin", "capital", "Paris", "Gaul"),
            _fact("born_paris", "birth", "Paris", "Marie"), _fact("born_berlin", "birth", "Berlin", "Hans")]


SETS = {"m": {"france": [(0, 1), (1, 3)], "spain": [(1, 7)]}}


def test_assign_groups_on_constructed_queries():
    probes = [(10, "capital", "en", 5), (11, "capital", "en", 6), (12, "capital", "fr", 5),
              (13, "birth", "en", 5), (14, "birth", "en", 9), (15, "birth", "fr", 6)]
    got = assign_groups("capital", {"en": {5}, "fr": {7}}, [(0, "seen"), (1, "heldout_language")], probes)
    assert dict(got) == {0: "seen", 1: "heldout_language", 10: "same_relation_same_answer",
                         11: "same_relation_different_answer", 12: "same_relation_different_answer",
                         14: "other_relations", 15: "other_relations"}  # 13 shares the answer token: left out
    capped = assign_groups("capital", {"en": {5}}, [], probes, max_other=1, max_same=0,
                           generator=torch.Generator().manual_seed(3))
    groups = [g for _, g in capped]
    assert groups.count("other_relations") == 1 and "same_relation_different_answer" not in groups
    assert groups.count("same_relation_same_answer") == 1  # never capped, never mixed


def test_groups_and_disjoint_unrelated_sample(model, world):
    res = change_rates(model, SETS, world, top_k_answer=10_000, max_queries=1, interventions={"suppress": 0.0},
                       progress=False)
    df = res.to_dataframe()
    assert set(df["target"]) == {"france", "spain"}
    # the run's facts are never measured as unrelated; the sample is recorded and reproducible from its seed
    u = res.config["unrelated"]
    assert not set(u["fact_ids"]) & {"france", "spain"} and u["seed"] == 0 and u["sampled"]
    again = unrelated_facts(world, exclude=["france", "spain"], per_relation=u["per_relation"], seed=u["seed"])
    assert [f.fact_id for f in again] == u["fact_ids"]
    assert set(df.loc[df.group.isin(GROUPS[3:]), "fact_id"]) <= set(u["fact_ids"])
    fr = df[df.target == "france"]
    by_fact = fr.groupby("fact_id")["group"].agg(set).to_dict()
    assert by_fact["france"] == {"seen"} and by_fact["twin"] == {"same_relation_same_answer"}
    assert by_fact["italy"] == {"same_relation_different_answer"}
    assert by_fact["born_berlin"] == {"other_relations"} and "born_paris" not in by_fact  # shares " Paris"
    sp = df[df.target == "spain"].groupby("fact_id")["group"].agg(set).to_dict()
    assert sp["twin"] == {"same_relation_different_answer"} and sp["born_paris"] == {"other_relations"}
    assert (fr.kind[fr.group == "same_relation_same_answer"] == "same_answer").all()
    # counts behind every cell: one query per fact and language
    s = res.specificity().set_index(["method", "group"])
    assert s.loc[("m", "seen"), "n_facts"] == 2 and s.loc[("m", "seen"), "n_queries"] == 4
    assert s.loc[("m", "same_relation_same_answer"), "n_facts"] == 1
    assert s.loc[("m", "same_relation_same_answer"), "n_queries"] == 2
    assert s.loc[("m", "other_relations"), "n_queries"] == 2 + 4
    assert active_hook_count(model) == 0


def test_unrelated_sample_caps_per_relation_and_is_order_free():
    pool = [_fact(f"c{i}", "capital", "Paris", f"S{i}") for i in range(6)] + [_fact("b0", "birth", "Rome", "X")]
    a = unrelated_facts(pool, exclude=["c0"], per_relation=2, seed=4)
    b = unrelated_facts(list(reversed(pool)), exclude=["c0"], per_relation=2, seed=4)
    assert [f.fact_id for f in a] == [f.fact_id for f in b]
    assert sum(f.relation == "capital" for f in a) == 2 and "c0" not in {f.fact_id for f in a}
    assert {f.fact_id for f in a if f.relation == "birth"} == {"b0"}
    seeds = {tuple(f.fact_id for f in unrelated_facts(pool, per_relation=2, seed=s)) for s in range(6)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="per_relation"):
        unrelated_facts(pool, per_relation=-1)


def test_unrelated_facts_of_the_run_are_refused(model, world):
    with pytest.raises(ValueError, match="facts of the localisation"):
        change_rates(model, SETS, world, unrelated=world[1:], progress=False)


def test_per_row_mask_pass_equals_one_set_at_a_time(model, world):
    qs = evaluation_queries(model, world, max_queries=None)
    enc = [q.encoded for q in qs]
    sets = [[(0, 1), (1, 3)], [(1, 7)], [], [(0, 2), (0, 5), (1, 60)]]
    rows = [(sets[i % len(sets)], 0.0) for i in range(len(enc))]
    p, r, t = masked_answer_pass(model, enc, rows, batch_size=5)
    for s in sets:
        idx = [i for i in range(len(enc)) if rows[i][0] is s]
        with suppress(model, s):
            ref_p, ref_r = batch_answer_probability(model, [enc[i] for i in idx], batch_size=3)
            ref_t = top1_tokens(model, [enc[i] for i in idx])
        assert torch.allclose(p[idx], ref_p, rtol=1e-4, atol=1e-7) and torch.equal(r[idx], ref_r)
        assert t[idx].tolist() == ref_t
    # first token only, and factor 2 (enhance)
    p2, _, _ = masked_answer_pass(model, enc[:4], [([(1, 3)], 2.0)] * 4, first_token_only=True)
    with enhance(model, [(1, 3)]):
        ref, _ = batch_answer_probability(model, enc[:4], first_token_only=True)
    assert torch.allclose(p2, ref, rtol=1e-4, atol=1e-7)
    assert active_hook_count(model) == 0
    with pytest.raises(ValueError, match="one \\(neurons, factor\\) per query"):
        masked_answer_pass(model, enc, rows[:1])


def test_empty_neuron_set_changes_nothing_exactly(model, world):
    enc = [q.encoded for q in evaluation_queries(model, world, max_queries=None)]
    p0, r0, t0 = masked_answer_pass(model, enc, batch_size=4)
    p1, r1, t1 = masked_answer_pass(model, enc, [([], 0.0)] * len(enc), batch_size=4)
    assert torch.equal(p0, p1) and torch.equal(r0, r1) and torch.equal(t0, t1)
    change = ((p1 - p0) / p0).abs().max().item()
    assert change == 0.0 and (t1 == t0).float().mean().item() == 1.0
    # a fact whose set is empty is listed, not measured as "no change"
    res = change_rates(model, {"m": {"france": [], "spain": [(1, 7)]}}, world, top_k_answer=10_000, max_queries=1,
                       progress=False)
    assert res.config["no_neurons"]["m"] == ["france"] and set(res.to_dataframe()["target"]) == {"spain"}


def test_summary_mean_se_and_counts_on_constructed_rows(tmp_path):
    rows = []
    # fact A: en -0.5, -0.7 (mean -0.6), fr -0.2 -> A = -0.4; fact B: en -0.8 -> B = -0.8
    for target, lang, change, kept in [("A", "en", -0.5, 1), ("A", "en", -0.7, 0), ("A", "fr", -0.2, 1),
                                       ("B", "en", -0.8, 0)]:
        rows.append(dict(method="m", intervention="suppress", target=target, fact_id=target, kind="related",
                         group="seen", language=lang, split="seen", p_before=0.5, p_after=0.5 * (1 + change),
                         change=change, top1_kept=kept, n_neurons=2))
    rows.append(dict(rows[0], group="other_relations", kind="other_relation", fact_id="C", change=0.1, top1_kept=1))
    res = ChangeRateResult(rows, {"unrelated": {"fact_ids": ["C"], "seed": 3}})
    s = res.specificity().set_index("group")
    assert s.loc["seen", "change"] == pytest.approx(-0.6)
    assert s.loc["seen", "change_se"] == pytest.approx(math.sqrt(((0.2 ** 2) * 2) / 1) / math.sqrt(2))
    assert s.loc["seen", "retention"] == pytest.approx(((0.5 + 1.0) / 2 + 0.0) / 2)
    assert (s.loc["seen", "n_facts"], s.loc["seen", "n_queries"]) == (2, 4)
    assert s.loc["other_relations", "n_facts"] == 1 and math.isnan(s.loc["other_relations", "change_se"])
    per_lang = res.specificity(by_language=True).set_index(["group", "language"])
    assert per_lang.loc[("seen", "en"), "change"] == pytest.approx((-0.6 - 0.8) / 2)
    assert per_lang.loc[("seen", "fr"), "n_facts"] == 1
    table = res.specificity_table()
    assert list(table.columns) == ["seen", "other_relations"] and "(2f/4q)" in table.loc["m", "seen"]
    assert format_groups(summarize_groups(pd.DataFrame())).empty
    # eval.json round-trips, with the unrelated sample's record
    back = ChangeRateResult.load(res.save(tmp_path / "eval.json"))
    assert back.rows == rows and back.config["unrelated"] == {"fact_ids": ["C"], "seed": 3}
    pd.testing.assert_frame_equal(back.specificity(), res.specificity())


def test_files_before_the_protocol_still_summarize():
    rows = [dict(method="m", intervention="suppress", target="A", fact_id="A", kind="related", language="en",
                 split="heldout_language", change=-0.5),
            dict(method="m", intervention="suppress", target="A", fact_id="B", kind="other_relation", language="en",
                 split="seen", change=0.1)]
    s = ChangeRateResult(rows).specificity().set_index("group")
    assert s.loc["heldout_language", "change"] == -0.5 and s.loc["other_relations", "change"] == 0.1
    assert math.isnan(s.loc["other_relations", "retention"])
