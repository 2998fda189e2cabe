"""The edit evaluation (lakn.evaluation.editing.edit_evaluation, injection_experiment, lakn edit / inject):
numbers relative to the model before the edit, on tiny models with dummy and breaking edits."""

import json

import pytest
import torch

import lakn
from lakn.tokens import last_logits
from lakn.evaluation.editing import EditingResult, apply_edits, edit_evaluation, locality_group
from lakn.evaluation.injection import InjectionResult, injection_experiment
from lakn.facts import Fact
from lakn.probability import top1_margins
from lakn.splits import evaluation_queries
from lakn.testing import tiny_model

CITIES = ["Paris", "Madrid", "Rome", "Tokyo", "Cairo", "Moscow", "Berlin", "London", "Ottawa", "Canberra", "Lisbon"]
COUNTRIES = ["France", "Spain", "Italy", "Japan", "Egypt", "Russia", "Germany", "England", "Canada", "Australia",
             "Portugal"]


def fact(fid, relation, answer, subject, fr=None):
    return Fact.from_dict({
        "fact_id": fid, "relation": relation, "object": {"en": answer, "fr": fr or answer},
        "queries": {"en": [f"The capital of {subject} is [Y]", f"{subject}'s capital city is [Y]",
                           f"{subject} has its capital in [Y]", f"The seat of {subject}'s government is [Y]"],
                    "fr": [f"La capitale de {subject} est [Y]", f"{subject} a pour capitale [Y]"]}})


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", weight_scale=3.0)


@pytest.fixture(scope="module")
def capitals():
    return [fact(f"cap_{c.lower()}", "capital", city, c) for c, city in zip(COUNTRIES, CITIES)]


def noop(model, facts, new_answers, neurons, **options):
    """A dummy edit that changes nothing."""

    class Handle:
        undone = False

        def undo(self):
            self.undone = True

    return Handle()


def breaking(model, facts, new_answers, neurons, **options):
    """An edit that breaks everything: large random W_out in every layer (undone bit for bit)."""
    saved = []
    g = torch.Generator().manual_seed(0)
    for layer in range(model.cfg.n_layers):
        w, _ = lakn.w_out(model, layer)
        saved.append((w, w.detach().clone()))
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=g) * 50)

    class Handle:
        def undo(self):
            with torch.no_grad():
                for w, orig in saved:
                    w.copy_(orig)

    return Handle()


def test_noop_edit_gives_the_before_numbers_exactly(model, capitals):
    sets = {"lakn": {f.fact_id: [(1, 2), (1, 3)] for f in capitals[:4]}}
    res = edit_evaluation(model, capitals, sets, methods={"noop": {"method": noop}}, max_queries=2, max_heldout=2,
                          progress=False)
    df = res.to_dataframe()
    eff = df[df.metric != "locality"]
    # the queries: 2 edit queries (en: reliability; fr: generality) and up to 2 held-out (en only: fr has 2 in all)
    assert set(eff.metric) == {"reliability", "generality", "heldout"}
    assert (eff.groupby(["fact_id", "metric"]).size() == 2).all()
    assert set(eff.loc[eff.metric == "heldout", "language"]) == {"en"}
    # nothing changed: reliability = the share of queries that already predicted the new answer
    assert (eff.top1 == eff.top1_before).all() and (eff.success == eff.success_before).all()
    rel = eff[eff.metric == "reliability"]
    table = res.table()
    assert table.loc[("noop", "lakn", 1, "reliability", "en"), "value"] == pytest.approx(rel.top1_before.mean())
    assert table.loc[("noop", "lakn", 1, "reliability", "en"), "n_queries"] == len(rel) == 8
    assert table.loc[("noop", "lakn", 1, "reliability", "en"), "n_facts"] == 4
    # locality: every unrelated query keeps its top-1 exactly; the edited fact is never its own locality
    loc = df[df.metric == "locality"]
    assert len(loc) and (loc.success == 1.0).all()
    assert not (loc.other_fact == loc.fact_id).any()
    assert res.wide().loc[("noop", "lakn", 1), "loc_same"] == 1.0
    # every unrelated fact is a capital: same_answer when its first answer token is the edited fact's old or new
    # one in that language (the tiny tokenizer shares some), else same_relation; one query per language
    def token(f, lang, answer=None):
        f = f if answer is None else Fact(f.fact_id, f.relation, {lang: answer}, f.templates)
        return lakn.encode_query(model, f.queries(lang)[0]).answer[0].item()

    by_id = {f.fact_id: f for f in capitals}
    new = res.config["new_answers"]
    expected = ["same_answer" if token(by_id[o], lang) in {token(by_id[f], lang), token(by_id[f], lang, new[f][lang])}
                else "same_relation" for f, o, lang in zip(loc.fact_id, loc.other_fact, loc.language)]
    assert list(loc.group) == expected and {"same_answer", "same_relation"} == set(expected)
    assert len(loc) == 4 * 10 * 2
    # old_top1_before: the model's own top-1 before the edit was the fact's old answer (first token)
    own = eff[eff.metric != "heldout"]
    for fid, lang, prompt, flag in zip(own.fact_id, own.language, own.prompt, own.old_top1_before):
        query = next(q for q in by_id[fid].queries(lang) if q.prompt == prompt)
        enc = lakn.encode_query(model, query)
        with torch.no_grad():
            top = int(last_logits(model, enc.prompt[None])[0].argmax())
        assert flag == float(top == int(enc.answer[0]))


def test_gen_known_counts_only_languages_the_model_answered_before():
    import pandas as pd

    from lakn.evaluation.editing import _wide

    base = dict(method="m", neurons="s", batch=1, fact_id="f", n_neurons=3, success=1.0, group="")
    rows = [dict(base, metric="reliability", language="en", top1=1.0, top1_before=0.0, old_top1_before=1.0),
            dict(base, metric="generality", language="fr", top1=1.0, top1_before=0.0, old_top1_before=1.0),
            dict(base, metric="generality", language="ar", top1=0.0, top1_before=0.0, old_top1_before=0.0),
            dict(base, metric="generality", language="ar", top1=0.0, top1_before=0.0, old_top1_before=0.0),
            dict(base, metric="generality", language="zh", top1=0.0, top1_before=0.0, old_top1_before=1.0)]
    wide = _wide(pd.DataFrame(rows))
    assert wide.loc[("m", "s", 1), "gen_top1"] == pytest.approx(0.25)
    assert wide.loc[("m", "s", 1), "gen_known"] == pytest.approx(0.5)  # fr and zh, not the ar it never knew


def test_breaking_edit_drops_locality_and_is_undone(model, capitals):
    before = lakn.w_out(model, 0)[0].detach().clone()
    sets = {"lakn": {capitals[0].fact_id: [(0, 1)]}}
    res = edit_evaluation(model, capitals, sets, methods={"break": {"method": breaking}, "noop": {"method": noop}},
                          max_queries=1, progress=False)
    assert torch.equal(lakn.w_out(model, 0)[0], before)
    wide = res.wide()
    assert wide.loc[("noop", "lakn", 1), "loc_same"] == 1.0
    assert wide.loc[("break", "lakn", 1), "loc_same"] < 0.5
    df = res.to_dataframe()  # the same relation's facts that share the edited answer are a column apart
    shared = df[(df.metric == "locality") & (df.group == "same_answer")]
    assert len(shared)
    for name in ("noop", "break"):
        assert wide.loc[(name, "lakn", 1), "loc_same_answer"] == pytest.approx(shared[shared.method == name].success.mean())
    # every locality row carries its query's pre-edit lead, the one top1_margins gives for that prompt
    pool = evaluation_queries(model, capitals, max_queries=1)
    _, margins = top1_margins(model, [q.encoded for q in pool])
    lead = {q.prompt: m for q, m in zip(pool, margins)}
    loc = df[df.metric == "locality"]
    assert loc.margin_before.tolist() == pytest.approx([lead[p] for p in loc.prompt], abs=1e-6)
    # split by that lead, the retention per bin recombines to the group's retention
    split = lakn.locality_by_margin(res, edges=[0.5])
    for (name, group), part in split.groupby(["method", "group"]):
        kept = loc[(loc.method == name) & (loc.group == group)].success
        assert part.n.sum() == len(kept)
        assert (part.locality * part.n).sum() / part.n.sum() == pytest.approx(kept.mean())
    assert set(split[split.method == "noop"].locality) == {1.0}
    # split by the old answer's prior, each language's generality recombines too
    gen = df[df.metric == "generality"]
    assert len(gen)
    prior = lakn.generality_by_prior(res, edges=[0.1])
    for (name, lang), part in prior.groupby(["method", "language"]):
        rows = gen[(gen.method == name) & (gen.language == lang)]
        assert part.n.sum() == len(rows)
        assert (part.generality * part.n).sum() / part.n.sum() == pytest.approx(rows.top1.mean())


def test_preserved_sample_puts_the_edited_relations_first():
    from lakn.cli.edit import preserved_sample

    rest = [fact(f"cap_{i}", "capital", CITIES[i], COUNTRIES[i]) for i in range(5)]
    rest += [fact(f"lang_{i}", "language", CITIES[i], COUNTRIES[i]) for i in range(5)]
    picked = preserved_sample(rest, {"language"}, 7, seed=0)
    assert [f.relation for f in picked] == ["language"] * 5 + ["capital"] * 2
    assert preserved_sample(rest, {"language"}, 7, seed=0) == picked  # seeded
    orders = {tuple(f.fact_id for f in preserved_sample(rest, {"language"}, 5, seed=s)) for s in range(6)}
    assert len(orders) > 1 and all(set(o) == {f"lang_{i}" for i in range(5)} for o in orders)
    blind = preserved_sample(rest, set(), 10, seed=0)  # no edited relation among them: the plain seeded draw
    assert sorted(f.fact_id for f in blind) == sorted(f.fact_id for f in rest)
    assert [f.fact_id for f in blind] != [f.fact_id for f in rest]
    assert preserved_sample(rest, {"capital"}, 0, seed=0) == []


def test_locality_by_margin_splits_near_ties_from_confident_answers():
    import pandas as pd

    rows = [dict(method="m", neurons="s", batch=1, metric="locality", margin_before=m, success=s)
            for m, s in [(0.0, 0.0), (0.1, 0.0), (0.2, 1.0), (0.25, 0.0), (0.3, 1.0), (1.0, 0.0), (5.0, 1.0),
                         (float("inf"), 1.0)]]
    rows.append(dict(method="m", neurons="s", batch=1, metric="recall", margin_before=None, success=0.0))
    out = lakn.locality_by_margin(pd.DataFrame(rows), edges=(1.0, 0.25))  # any order; a bin holds its lower edge
    assert [str(b) for b in out.margin] == ["[0.0, 0.25)", "[0.25, 1.0)", "[1.0, inf)"]
    assert out.locality.tolist() == pytest.approx([1 / 3, 1 / 2, 2 / 3]) and out.n.tolist() == [3, 2, 3]
    # a batch of fifty is not pooled with single edits of the same method
    rows += [dict(method="m", neurons="s", batch=50, metric="locality", margin_before=0.5, success=0.0)]
    out = lakn.locality_by_margin(pd.DataFrame(rows), edges=(0.25, 1.0))
    assert out[out.batch == 50][["locality", "n"]].values.tolist() == [[0.0, 1]]
    assert out[out.batch == 1].n.tolist() == [3, 2, 3]
    for bad in ([0.0, 1.0], [], [0.5, float("inf")]):
        with pytest.raises(ValueError, match="positive, finite"):
            lakn.locality_by_margin(pd.DataFrame(rows), edges=bad)
    with pytest.raises(ValueError, match="margin_before"):
        lakn.locality_by_margin(pd.DataFrame(rows).drop(columns="margin_before"))


def test_generality_by_prior_splits_by_the_old_answers_probability_before_the_edit():
    import pandas as pd

    rows = [dict(method="m", neurons="s", batch=1, metric="generality", language=lang, p_old_before=p, top1=t, success=s)
            for lang, p, t, s in [("fr", 0.001, 0.0, 1.0), ("fr", 0.009, 1.0, 1.0), ("fr", 0.01, 0.0, 0.0),
                                  ("fr", 0.5, 1.0, 1.0), ("fr", 1.0, 1.0, 1.0), ("zh", 0.002, 0.0, 0.0)]]
    rows.append(dict(method="m", neurons="s", batch=1, metric="locality", language="fr", p_old_before=0.9, top1=0.0,
                     success=0.0))  # not a generality row: left out
    out = lakn.generality_by_prior(pd.DataFrame(rows), edges=(0.2, 0.01))  # any order; a bin holds its lower edge
    fr = out[out.language == "fr"]
    assert [str(b) for b in fr.prior] == ["[0.0, 0.01)", "[0.01, 0.2)", "[0.2, inf)"]
    assert fr.generality.tolist() == pytest.approx([0.5, 0.0, 1.0]) and fr.n.tolist() == [2, 1, 2]
    assert fr.p_new_gt_old.tolist() == pytest.approx([1.0, 0.0, 1.0])
    assert out[out.language == "zh"][["generality", "n"]].values.tolist() == [[0.0, 1]]
    for bad in ([0.0, 0.5], [], [0.5, 1.0]):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            lakn.generality_by_prior(pd.DataFrame(rows), edges=bad)
    with pytest.raises(ValueError, match="p_old_before"):
        lakn.generality_by_prior(pd.DataFrame(rows).drop(columns="p_old_before"))


def test_locality_groups_on_hand_made_facts(model):
    edited = fact("cap_france", "capital", "Paris", "France")
    pool = [fact("same_new", "capital", "Madrid", "Spain"), fact("same_old", "capital", "Paris", "Italy"),
            fact("same_rel", "capital", "Tokyo", "Japan"), fact("other_rel", "language", "Madrid", "Egypt")]
    tok = {c: lakn.encode_query(model, f.queries("en")[0]).answer[0] for c, f in
           zip(["Madrid", "Paris", "Tokyo"], pool[:3])}
    assert len(set(tok.values())) == 3  # precondition: three different first tokens
    res = edit_evaluation(model, [edited, *pool], {"s": {"cap_france": [(1, 0)]}}, methods={"noop": {"method": noop}},
                          new_answers={"cap_france": {"en": "Madrid", "fr": "Madrid"}}, languages=["en"],
                          unrelated=pool, progress=False)
    groups = res.to_dataframe().query("metric == 'locality'").set_index("other_fact")["group"].to_dict()
    assert groups == {"same_new": "same_answer", "same_old": "same_answer", "same_rel": "same_relation",
                      "other_rel": "other_relation"}
    # the same through the helper, for a batch: a fact of the relation sharing no answer token
    assert locality_group("language", 1, "en", []) == "other_relation"


def test_batches_of_1_and_10_run_and_undo(model, capitals):
    before = [lakn.w_out(model, layer)[0].detach().clone() for layer in range(model.cfg.n_layers)]
    sets = {"lakn": {f.fact_id: [(1, i)] for i, f in enumerate(capitals)}}
    res = edit_evaluation(model, capitals, sets, methods={"gradient": {"method": "gradient", "steps": 1}},
                          languages=["en"], max_queries=1, max_heldout=0, batch_sizes=(1, 10), progress=False)
    for layer, w in enumerate(before):
        assert torch.equal(lakn.w_out(model, layer)[0], w)
    df = res.to_dataframe()
    eff = df[df.metric == "reliability"]
    assert eff.groupby("batch").fact_id.nunique().to_dict() == {1: 11, 10: 10}
    assert eff.groupby("batch").batch_id.nunique().to_dict() == {1: 11, 10: 1}
    loc = df[(df.metric == "locality") & (df.batch == 10)]
    assert set(loc.other_fact) == {capitals[10].fact_id}  # the batch's own facts are not its locality
    assert res.config["batched"]["10"] == (getattr(lakn.editing, "edit_facts", None) is not None)
    assert res.wide().loc[("gradient", "lakn", 10), "n_neurons"] == 10
    with pytest.raises(ValueError, match="not offered"):
        apply_edits(model, capitals[:1], {capitals[0].fact_id: {"en": "Rome"}}, {capitals[0].fact_id: [(0, 1)]},
                    method="no_such_method")


def test_save_load_round_trip(model, capitals, tmp_path):
    sets = {"lakn": {f.fact_id: [(1, 2)] for f in capitals[:2]}}
    res = edit_evaluation(model, capitals[:5], sets, methods={"noop": {"method": noop}}, max_queries=1, progress=False)
    path = res.save(tmp_path / "edit.json")
    assert json.loads(path.read_text())["kind"] == "EditingResult"
    back = EditingResult.load(path)
    assert back.rows == res.rows and back.config == res.config
    assert back.table().equals(res.table()) and back.wide().equals(res.wide())


def test_injection_with_no_training_keeps_everything(model, capitals):
    fict = lakn.load_facts("fictional")[:1]
    res = injection_experiment(model, fict, languages=["en", "fr", "zh"], train_languages=["en", "fr"],
                               unrelated=capitals[:3], k=4, steps=0, neuron_sets=("activation", "random"),
                               progress=False)
    df = res.to_dataframe()
    rec = df[df.metric == "recall"].astype({"trained": bool})
    assert set(rec[rec.trained].language) == {"en", "fr"} and set(rec[~rec.trained].language) == {"zh"}
    assert (rec.top1 == rec.top1_before).all()
    assert (df[df.metric == "locality"].success == 1.0).all()
    loc = df[df.metric == "locality"]
    pool = evaluation_queries(model, capitals[:3], languages=["en", "fr", "zh"], max_queries=1)
    _, margins = top1_margins(model, [q.encoded for q in pool])
    lead = {q.prompt: m for q, m in zip(pool, margins)}
    assert len(loc) == 2 * len(pool)  # each query once per neuron set
    assert loc.margin_before.tolist() == pytest.approx([lead[p] for p in loc.prompt], abs=1e-6)
    assert len(set(lead.values())) > 1 and (loc.margin_before >= 0).all()
    wide = res.wide()
    assert set(wide.index) == {("gradient", "activation"), ("gradient", "random")}
    assert (wide["locality"] == 1.0).all() and (wide["n_neurons"] == 4).all()
    back = InjectionResult.load(res.save(_tmp_json()))
    assert back.rows == res.rows


def test_injection_closed_form_preserves_the_preserve_facts(model, capitals, monkeypatch, tmp_path):
    """The closed form's preserved keys hold the preserve facts' prompts (2 per language): the
    covariance it solves with is the default one merged with theirs."""
    import lakn.evaluation.injection as injection
    from lakn.closed_form import preservation, preservation_for

    monkeypatch.setenv("LAKN_CACHE_DIR", str(tmp_path / "cache"))
    used, real = [], injection.inject_fact

    def spy(*args, method="closed_form", **kw):
        used.append(kw.get("preserve"))
        return real(*args, method=method, **kw)

    monkeypatch.setattr(injection, "inject_fact", spy)
    fict = lakn.load_facts("fictional")[:1]
    injection_experiment(model, fict, languages=["en", "fr"], train_languages=["en"], unrelated=capitals[:2],
                         preserve=capitals[2:4], k=4, methods=("closed_form",), neuron_sets=("layer",), layers=[1],
                         progress=False)
    assert len(used) == 1 and used[0] is not None
    expected = preservation_for(model, None, [1]).merged(
        preservation(model, [1], texts=[], facts=capitals[2:4], languages=["en", "fr"], max_queries=2))
    assert used[0].n_tokens == expected.n_tokens > preservation_for(model, None, [1]).n_tokens
    torch.testing.assert_close(used[0][1], expected[1])


def _tmp_json():
    import tempfile

    return tempfile.mkdtemp() + "/inject.json"


def test_cli_edit_and_inject_print_and_write(tmp_path, monkeypatch, capsys, capitals):
    from lakn import cli, models

    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(json.dumps({"fact_id": f.fact_id, "relation": f.relation, "object": f.answers,
                                          "queries": {k: list(v) for k, v in f.templates.items()}})
                              for f in capitals[:4]))
    m = tiny_model("llama", weight_scale=3.0)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: m)
    runs = tmp_path / "runs"
    lakn.localize_methods(m, lakn.load_facts(data), methods=("matrice",), languages=["en"], steps=1, max_queries=1,
                          out=runs, data=str(data), progress=False, top_k=3)
    assert cli.main(["edit", str(runs), "--method", "gradient", "--steps", "1", "--edit-set", "lakn,layer",
                     "--batch", "1,2", "--max-queries", "1", "--languages", "en,fr"]) == 0
    out = capsys.readouterr().out
    assert "loc_same" in out and "reliability" in out and "gen_fr" in out
    df = EditingResult.load(runs / "edit.json").to_dataframe()
    assert set(df.neurons) == {"lakn", "language_specific", "random", "layer"}
    assert set(df.batch) == {1, 2}
    assert df.loc[df.neurons == "layer", "n_neurons"].min() == m.cfg.d_mlp
    # these facts name no subject: the default key position falls back to the last prompt token, with a warning
    with pytest.warns(UserWarning, match="names no subject: keys at the last prompt token"):
        assert cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "layer", "--layers", "0",
                         "--max-queries", "1", "--languages", "en,fr"]) == 0
    assert cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "layer", "--layers", "0",
                     "--position", "last", "--lam", "100", "--max-queries", "1", "--languages", "en,fr",
                     "--pivot", "none", "--retries", "1", "--retry-boost", "2.5", "--target-steps", "3",
                     "--context-weight", "0"]) == 0
    capsys.readouterr()
    cf = EditingResult.load(runs / "edit.json")
    assert cf.config["methods"]["closed_form"] == {"method": "closed_form", "lam": 100.0, "position": "last",
                                                   "pivot": None, "retries": 1, "retry_boost": 2.5,
                                                   "target_steps": 3, "context_weight": 0.0}
    described = cf.config["edits"]["closed_form"]  # the edits' own descriptions: λ, keys, no pivot term
    assert described and all(e.startswith("closed_form λ=100 ") and "pivot=" not in e and "context=" not in e
                             for e in described)
    # each closed-form edit's solves: one re-solve at most, weights 1 or 2.5, and "missed" names
    # exactly the single edits whose reliability query did not take (the same query, checked the same way)
    solves = cf.config["solves"]
    assert solves and all(s["method"] == "closed_form" and s["batch"] == 1 for s in solves)
    rel = cf.to_dataframe().query("metric == 'reliability'").groupby(["batch", "batch_id", "fact_id"]).top1.min()
    for s in solves:
        assert 1 <= s["solves"] <= 2 and set(s["key_weights"]) <= {1.0, 2.5} and len(s["key_weights"]) == len(s["facts"])
        assert set(s["missed"]) <= set(s["facts"]) and s["released"] == []
        (fid,) = s["facts"]
        assert (fid in s["missed"]) == (rel[(1, fid, fid)] < 1)
    with pytest.raises(SystemExit):
        cli.main(["edit", str(runs), "--pivot", "late"])
    assert "expected auto, none or a layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["edit", str(runs), "--retries", "-1"])
    assert "must be at least 0, got -1" in capsys.readouterr().err
    for bad in ("-1", "nan", "x"):
        with pytest.raises(SystemExit):
            cli.main(["edit", str(runs), "--context-weight", bad])
        assert "--context-weight" in capsys.readouterr().err
    for bad in ("1", "0.5", "inf"):
        with pytest.raises(SystemExit):
            cli.main(["edit", str(runs), "--retry-boost", bad])
        assert "--retry-boost" in capsys.readouterr().err
    # --chunk: each batch solved in chunks, one after another; single edits are one chunk each
    assert cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "layer", "--layers", "0",
                     "--position", "last", "--max-queries", "1", "--languages", "en,fr", "--pivot", "none",
                     "--retries", "0", "--target-steps", "2", "--batch", "1,4", "--chunk", "3"]) == 0
    capsys.readouterr()
    chunked = EditingResult.load(runs / "edit.json")
    assert chunked.config["methods"]["closed_form"]["chunk_size"] == 3
    (four,) = [s for s in chunked.config["solves"] if s["batch"] == 4]
    assert [c["facts"] for c in four["chunks"]] == [four["facts"][:3], four["facts"][3:]] and four["solves"] == 2
    assert all(s["chunks"] is None for s in chunked.config["solves"] if s["batch"] == 1)
    assert any("batch=4 chunks=3" in e for e in chunked.config["edits"]["closed_form"])
    with pytest.raises(SystemExit):
        cli.main(["edit", str(runs), "--chunk", "0"])
    assert "--chunk" in capsys.readouterr().err
    def quick_edit(*more: str) -> EditingResult:  # a small closed-form lakn edit and what it wrote
        assert cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "layer", "--position", "last",
                         "--max-queries", "1", "--languages", "en,fr", "--retries", "0", "--target-steps", "2",
                         *more]) == 0
        capsys.readouterr()
        return EditingResult.load(runs / "edit.json")

    # --translate: the target reads the model's own translations (a tiny model's fail the round trip: none)
    translated = quick_edit("--layers", "0", "--pivot", "none", "--translate")
    assert translated.config["methods"]["closed_form"]["translate"] is True
    assert all(set(s["translations"]) == set(s["facts"]) and all(set(t) <= {"fr"} for t in s["translations"].values())
               for s in translated.config["solves"])
    # the key set (lakn.key_neurons of the layer) beside as many random neurons of it; a target on en and fr
    assert cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "key", "--layers", "1",
                     "--key-neurons", "5", "--position", "last", "--target-languages", "fr", "--max-queries", "1",
                     "--languages", "en,fr"]) == 0
    capsys.readouterr()
    ks = EditingResult.load(runs / "edit.json")
    assert ks.config["methods"]["closed_form"]["target_languages"] == ["fr"]
    # per-language groups by default: fr's keys a group of their own, with a key weight of their own
    assert "per_language" not in ks.config["methods"]["closed_form"] and ks.config["solves"]
    assert all(s["groups"] == [f for fid in s["facts"] for f in (fid, f"{fid}:fr")] and len(s["key_weights"]) == 2
               for s in ks.config["solves"])
    one = quick_edit("--layers", "1", "--target-languages", "fr", "--no-per-language")
    assert one.config["methods"]["closed_form"]["per_language"] is False and one.config["solves"]
    assert all(s["groups"] == s["facts"] and len(s["key_weights"]) == 1 for s in one.config["solves"])
    kdf = ks.to_dataframe()
    assert set(kdf.neurons) == {"key", "key_random"} and set(kdf.n_neurons) == {5}
    one = capitals[0].fact_id  # --fact-ids narrows every set, the derived key sets too
    assert cli.main(["edit", str(runs), "--method", "kn_embedding", "--edit-set", "lakn,key", "--layers", "1",
                     "--key-neurons", "3", "--position", "last", "--max-queries", "1", "--languages", "en,fr",
                     "--fact-ids", one]) == 0
    capsys.readouterr()
    edited = EditingResult.load(runs / "edit.json").to_dataframe()
    assert set(edited[edited.metric == "reliability"].fact_id) == {one}
    assert {"key", "key_random", "lakn"} <= set(edited.neurons)
    # --preserve: other facts' prompts join the closed form's preserved keys and leave the locality pool
    import lakn.closed_form as cf

    seen, real = [], cf.preservation

    def spy(model, layers, **kw):
        seen.append(sorted(f.fact_id for f in kw.get("facts") or ()) if kw.get("texts") == [] else None)
        return real(model, layers, **kw)

    monkeypatch.setattr(cf, "preservation", spy)
    assert cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "layer", "--layers", "1",
                     "--position", "last", "--max-queries", "1", "--languages", "en,fr", "--fact-ids", one,
                     "--preserve", "2"]) == 0
    capsys.readouterr()
    kept = [ids for ids in seen if ids is not None]
    assert len(kept) == 1 and len(kept[0]) == 2 and one not in kept[0]
    pooled = EditingResult.load(runs / "edit.json").to_dataframe()
    measured = set(pooled[pooled.metric == "locality"].other_fact)
    assert measured and not measured & set(kept[0]) and measured <= {f.fact_id for f in capitals[:4]} - {one}
    with pytest.raises(SystemExit):
        cli.main(["edit", str(runs), "--method", "closed_form", "--edit-set", "layer", "--layers", "1",
                  "--position", "last", "--max-queries", "1", "--languages", "en", "--preserve", "2"])
    assert "--preserve needs facts that are neither edited nor measured" in capsys.readouterr().err
    # default --preserve: the closed form keeps the data file's facts outside the run (none here before)
    assert [ids for ids in seen if ids is not None] == kept
    bigger = tmp_path / "more.jsonl"
    bigger.write_text(data.read_text() + "\n" + json.dumps({"fact_id": capitals[4].fact_id, "relation": "capital",
                                                           "object": capitals[4].answers,
                                                           "queries": {k: list(v) for k, v in capitals[4].templates.items()}}))
    assert cli.main(["edit", str(runs), "--data", str(bigger), "--method", "closed_form", "--edit-set", "layer",
                     "--layers", "1", "--position", "last", "--max-queries", "1", "--languages", "en,fr"]) == 0
    assert "preserving 1 facts" in capsys.readouterr().out
    assert [ids for ids in seen if ids is not None][-1] == [capitals[4].fact_id]
    monkeypatch.setattr(cf, "preservation", real)
    assert cli.main(["inject", str(runs), "--method", "gradient", "--steps", "1", "--k", "3", "--languages", "en,fr",
                     "--train-languages", "en", "--fact-ids", "fict_capital_velmora"]) == 0
    assert "recall_trained" in capsys.readouterr().out
    inj = InjectionResult.load(runs / "inject.json")
    assert cli.main(["inject", "--out", str(tmp_path / "keys.json"), "--method", "closed_form", "--edit-set", "layer",
                     "--layers", "0", "--languages", "en,fr", "--train-languages", "en", "--key-languages", "fr",
                     "--target-steps", "2", "--fact-ids", "fict_capital_velmora"]) == 0
    capsys.readouterr()
    keyed = InjectionResult.load(tmp_path / "keys.json")
    assert keyed.config["methods"]["closed_form"] == {"method": "closed_form", "target_steps": 2, "key_languages": ["fr"]}
    # default --preserve: the closed form keeps the facts after the first --n-unrelated; the gradient method none
    import lakn.evaluation.injection as injection

    seen.clear()
    trained, train = [], injection._train

    def train_spy(model, fact, neurons, *, method, languages, options):
        trained.append((method, options.get("preserve")))
        return train(model, fact, neurons, method=method, languages=languages, options=options)

    monkeypatch.setattr(injection, "_train", train_spy)
    monkeypatch.setattr(cf, "preservation", spy)
    assert cli.main(["inject", "--out", str(tmp_path / "kept.json"), "--method", "closed_form,gradient", "--steps", "1",
                     "--edit-set", "layer", "--layers", "0", "--languages", "en,fr", "--train-languages", "en",
                     "--target-steps", "2", "--fact-ids", "fict_capital_velmora", "--unrelated", str(data),
                     "--n-unrelated", "2"]) == 0
    assert "preserving 2 facts" in capsys.readouterr().out
    monkeypatch.setattr(cf, "preservation", real)
    later = [f.fact_id for f in capitals[2:4]]
    assert [ids for ids in seen if ids is not None] == [sorted(later)]
    held = InjectionResult.load(tmp_path / "kept.json")
    assert held.config["preserve"] == later and held.config["methods"]["gradient"]["preserve"] == []
    assert {r["other_fact"] for r in held.rows if r["metric"] == "locality"} == {f.fact_id for f in capitals[:2]}
    grad = [p for m, p in trained if m == "gradient"]  # no KL prompts unless --preserve asks for them
    assert grad and all(list(p) == [] for p in grad)
    assert any(m == "closed_form" and isinstance(p, cf.Preservation) for m, p in trained)
    trained.clear()  # --preserve 1 asks: both methods keep one fact
    assert cli.main(["inject", "--out", str(tmp_path / "one.json"), "--method", "closed_form,gradient", "--steps", "1",
                     "--edit-set", "layer", "--layers", "0", "--languages", "en,fr", "--train-languages", "en",
                     "--target-steps", "2", "--fact-ids", "fict_capital_velmora", "--unrelated", str(data),
                     "--n-unrelated", "2", "--preserve", "1"]) == 0
    capsys.readouterr()
    assert InjectionResult.load(tmp_path / "one.json").config["preserve"] == later[:1]
    assert [len(p) for m, p in trained if m == "gradient"] == [1]
    # lakn's demo facts are never preserved twice: the closed form keeps them anyway
    demo_pool = tmp_path / "demo_pool.jsonl"
    demo_pool.write_text(data.read_text() + "\n" + lakn.facts.data_path("demo").read_text().splitlines()[0])
    assert cli.main(["inject", "--out", str(tmp_path / "demo.json"), "--method", "closed_form", "--edit-set", "layer",
                     "--layers", "0", "--languages", "en,fr", "--train-languages", "en", "--target-steps", "2",
                     "--fact-ids", "fict_capital_velmora", "--unrelated", str(demo_pool), "--n-unrelated", "2"]) == 0
    assert InjectionResult.load(tmp_path / "demo.json").config["preserve"] == later
    assert cli.main(["inject", "--out", str(tmp_path / "kn.json"), "--method", "kn_embedding", "--edit-set", "layer",
                     "--layers", "0", "--languages", "en,fr", "--train-languages", "en",
                     "--fact-ids", "fict_capital_velmora", "--unrelated", str(data), "--n-unrelated", "2"]) == 0
    capsys.readouterr()
    assert InjectionResult.load(tmp_path / "kn.json").config["preserve"] == []  # no closed form: nothing kept
    assert {r["fact_id"] for r in inj.rows} == {"fict_capital_velmora"}
    assert {r["other_fact"] for r in inj.rows if r["metric"] == "locality"} <= {f.fact_id for f in capitals[:4]}
