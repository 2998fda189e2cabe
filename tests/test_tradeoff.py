"""The specificity trade-off (issue 12 item 3): one row per grid point, curves, the figure, `lakn plot`."""

import json

import pandas as pd
import pytest

import lakn
from lakn.evaluation import ChangeRateResult, TradeoffResult, change_rates, tradeoff
from lakn.evaluation.specificity import GROUPS
from lakn.facts import Fact
from lakn.plotting import tradeoff_figure
from lakn.testing import active_hook_count, tiny_model


def _fact(fid, relation, answer, subject):
    return Fact.from_dict({"fact_id": fid, "relation": relation, "object": {"en": answer, "fr": answer},
                           "queries": {"en": [f"The place of {subject} is [Y]", f"{subject} is at [Y]"],
                                       "fr": [f"Le lieu de {subject} est [Y]", f"{subject} est a [Y]"]}})


FACTS = [_fact("france", "capital", "Paris", "France"), _fact("spain", "capital", "Madrid", "Spain"),
         _fact("italy", "capital", "Rome", "Italy"), _fact("born_berlin", "birth", "Berlin", "Hans"),
         _fact("born_rome", "birth", "Rome", "Marie")]


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", weight_scale=3.0)


@pytest.fixture(scope="module")
def run(model):
    return lakn.localize(model, FACTS[:2], languages=["en"], steps=1, max_queries=1, progress=False, top_k=6)


def _fake_reselect(calls):
    def reselect(result, *, method, lam_same, lam_other, top_k):
        calls.append((method, lam_same, lam_other, top_k))
        shift = int(lam_same)  # a different set per weight: neurons (1, shift + i)
        return {fid: [(1, (shift + i) % 32) for i in range(top_k)] for fid in result.fact_ids}
    return reselect


def test_prefix_tradeoff_one_row_per_k_and_matches_change_rates(model, run):
    res = tradeoff(model, {"matrice": run}, FACTS, ks=(1, 3, 3), top_k_answer=10_000, max_queries=1, progress=False)
    df = res.to_dataframe()
    assert list(df["k"]) == [1, 3] and set(df["selection"]) == {run.selection} and df["lam_same"].isna().all()
    assert set(TradeoffResult.COLUMNS) <= set(df.columns)
    assert (df["n_targets"] == 2).all() and (df["mean_neurons"] <= df["k"]).all()
    # a grid point is the protocol on the first k neurons: the same numbers as change_rates on those sets
    direct = change_rates(model, {"p": {fid: run.neurons(fid)[:1] for fid in run.fact_ids}}, FACTS, result=run,
                          interventions={"suppress": 0.0}, top_k_answer=10_000, max_queries=1, progress=False)
    s = direct.specificity().set_index("group")
    for g in ("seen", "same_relation_different_answer", "other_relations"):
        assert df.loc[0, g] == pytest.approx(s.loc[g, "change"], abs=1e-6)
        assert df.loc[0, f"{g}_n_queries"] == s.loc[g, "n_queries"]
    assert res.config["evaluation"]["unrelated"]["fact_ids"] == ["born_berlin", "born_rome", "italy"]
    assert active_hook_count(model) == 0


def test_reselect_grid_curves_figure_and_round_trip(model, run, tmp_path):
    calls = []
    res = tradeoff(model, run, FACTS, ks=(1, 2), weights=((1.0, 0.25), (4.0, 1.0)), methods=["matrice", "kn"],
                   reselect=_fake_reselect(calls), top_k_answer=10_000, max_queries=1, progress=False)
    df = res.to_dataframe()
    assert len(df) == 2 * 2 * 2 == len(calls) and set(df["selection"]) == {"causal"}
    assert sorted(set(zip(df["method"], df["lam_same"], df["k"]))) == sorted(
        (m, lam, k) for m in ("matrice", "kn") for lam in (1.0, 4.0) for k in (1, 2))
    assert (df["mean_neurons"] == df["k"]).all() and (df["facts_with_neurons"] == 2).all()
    curves = res.curves()
    assert len(curves) == 4 and all(list(c["k"]) == [1, 2] for c in curves.values())
    fig = tradeoff_figure(res)
    assert len(fig.data) == 4 and {t.name for t in fig.data} == set(curves)
    assert list(fig.data[0].text) == ["k=1", "k=2"]
    own = fig.data[0]
    first = curves[own.name]
    assert list(own.y) == pytest.approx(list(-100 * first["seen"]))
    assert list(own.x) == pytest.approx(list(-100 * first["other_relations"]))
    back = TradeoffResult.load(res.save(tmp_path / "tradeoff.json"))
    pd.testing.assert_frame_equal(back.to_dataframe(), res.to_dataframe(), check_dtype=False)
    assert back.config["ks"] == [1, 2]
    with pytest.raises(ValueError, match="not a group"):
        tradeoff_figure(res, unrelated="nope")
    with pytest.raises(ValueError, match="ks"):
        tradeoff(model, run, FACTS, ks=(0,), progress=False)


def test_lakn_plot_draws_the_tradeoff(model, run, tmp_path, monkeypatch):
    from lakn import cli

    folder = tmp_path / "run"
    run.save(folder)
    rows = [dict(method="matrice", selection="specific", k=k, lam_same=float("nan"), lam_other=float("nan"),
                 n_targets=2, facts_with_neurons=2, mean_neurons=float(k),
                 **{f"{g}{s}": (-0.1 * k if s == "" else 0.01) for g in GROUPS for s in ("", "_se")})
            for k in (5, 10)]
    TradeoffResult(rows).save(folder / "tradeoff.json")
    assert cli.main(["plot", str(folder)]) == 0
    assert (folder / "figures" / "tradeoff_other_relations.html").is_file()
    assert (folder / "figures" / "tradeoff_same_relation.html").is_file()
    # a folder of runs (no result.json of its own) gets the trade-off figures alone
    many = tmp_path / "runs"
    run.save(many / "matrice")
    TradeoffResult(rows).save(many / "tradeoff.json")
    assert cli.main(["plot", str(many)]) == 0
    assert sorted(p.name for p in (many / "figures").glob("*.html")) == ["tradeoff_other_relations.html",
                                                                       "tradeoff_same_relation.html"]
    # a file of another kind is skipped with a warning, the run's own figures are still drawn
    ChangeRateResult([]).save(folder / "tradeoff.json")
    with pytest.warns(UserWarning, match="not a TradeoffResult"):
        assert cli.main(["plot", str(folder), "--out", str(tmp_path / "figs")]) == 0
    assert not (tmp_path / "figs" / "tradeoff_other_relations.html").exists()


def test_cli_evaluate_tradeoff(model, tmp_path, monkeypatch, capsys):
    from lakn import cli, models

    data = tmp_path / "facts.jsonl"
    data.write_text("\n".join(json.dumps({"fact_id": f.fact_id, "relation": f.relation, "object": f.answers,
                                          "queries": {k: list(v) for k, v in f.templates.items()}}) for f in FACTS))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: model)
    runs = tmp_path / "runs"
    lakn.localize_methods(model, lakn.load_facts(data)[:2], methods=("matrice", "kn"), languages=["en"], steps=1,
                          max_queries=1, out=runs, data=str(data), progress=False, top_k=5)
    assert cli.main(["evaluate", str(runs), "--top-k-answer", "10000", "--holdout-languages", "fr",
                     "--tradeoff", "--tradeoff-k", "1,4"]) == 0
    out = capsys.readouterr().out
    assert "trade-off" in out and "other_relations" in out and "(2f/" in out
    res = ChangeRateResult.load(runs / "eval.json")
    assert res.config["unrelated"]["fact_ids"] == ["born_berlin", "born_rome", "italy"]
    curve = TradeoffResult.load(runs / "tradeoff.json").to_dataframe()
    assert len(curve) == 2 * 2 and set(curve["method"]) == {"matrice", "kn"}
    with pytest.raises(SystemExit):
        cli.main(["evaluate", str(runs), "--tradeoff-weights", "4-1"])


def test_causal_run_reselects_through_lakn_causal(model):
    causal = pytest.importorskip("lakn.causal")
    result = lakn.localize(model, FACTS[:3], languages=["en"], steps=1, max_queries=1, progress=False,
                           specificity="causal", attribution="approx")
    res = tradeoff(model, result, FACTS, ks=(2, 4), weights=((4.0, 1.0),), methods=["matrice", "kn"],
                   top_k_answer=10_000, max_queries=1, progress=False)
    df = res.to_dataframe()
    assert len(df) == 4 and set(df["selection"]) == {"causal"} and (df["mean_neurons"] <= df["k"]).all()
    chosen = causal.reselect(result, method="kn", lam_same=4.0, lam_other=1.0, top_k=2)
    row = df[(df.method == "kn") & (df.k == 2)].iloc[0]
    assert row["facts_with_neurons"] == sum(1 for n in chosen.values() if n)


def test_load_runs_keeps_two_runs_of_one_method(model, tmp_path):
    """A folder holding a plain and a causal run of matrice: both are loaded, the second keyed method@folder."""
    from lakn.evaluation import load_runs

    plain = lakn.localize(model, FACTS[:2], languages=["en"], steps=1, max_queries=1, progress=False, top_k=6,
                          out=tmp_path / "a_plain")
    causal = lakn.localize(model, FACTS[:3], languages=["en"], steps=1, max_queries=1, progress=False,
                           specificity="causal", causal_top_k=5, out=tmp_path / "b_causal")
    runs = load_runs(tmp_path)
    assert list(runs) == ["matrice", "matrice@b_causal"]
    assert runs["matrice"].selection == plain.selection and runs["matrice@b_causal"].selection == "causal"
    assert runs["matrice@b_causal"].lakn == causal.lakn
