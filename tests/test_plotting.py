"""Tests for lakn.plotting: figure data checked numerically against the result it was drawn from."""

from __future__ import annotations

import json
import math
from collections import Counter

import pandas as pd
import pytest
import torch

from lakn import plotting
from lakn.results import FactRecord, LocalizationResult


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def localized():
    """A real (tiny) localisation run: 2 facts x 3 languages, 3 IG steps."""
    import lakn
    from lakn.facts import Fact
    from lakn.testing import tiny_model

    model = tiny_model(weight_scale=3.0)
    rows = [("France", "Paris", "Frankreich"), ("Spain", "Madrid", "Spanien")]
    facts = [
        Fact.from_dict({
            "fact_id": f"capital_{country.lower()}", "relation": "capital",
            "object": {"en": city, "fr": city, "de": city},
            "queries": {"en": [f"The capital of {country} is [Y]", f"{country}'s capital is [Y]"],
                        "fr": [f"La capitale de {country} est [Y]"],
                        "de": [f"Die Hauptstadt von {de} ist [Y]"]},
        })
        for country, city, de in rows
    ]
    return lakn.localize(model, facts, steps=3, progress=False)


def _record(fid: str, n_layers: int, d_mlp: int, langs, seed: int) -> FactRecord:
    g = torch.Generator().manual_seed(seed)
    per = {l: torch.rand(n_layers, d_mlp, generator=g) for l in langs}
    return FactRecord(fid, "capital", torch.rand(n_layers, d_mlp, generator=g), per, [], {}, [])


def handmade(lakn: dict, specific: dict, n_layers: int = 4, d_mlp: int = 8, method: str = "matrice",
             model: str = "toy") -> LocalizationResult:
    """A LocalizationResult with chosen neuron sets (random score maps)."""
    langs = sorted({l for v in specific.values() for l in v})
    records = {fid: _record(fid, n_layers, d_mlp, langs, i) for i, fid in enumerate(lakn)}
    config = {"languages": langs, "model": model, "method": method, "n_layers": n_layers, "d_mlp": d_mlp}
    return LocalizationResult(config, records, lakn, specific, "raw")


# --------------------------------------------------------------------------- layer distribution


def test_layer_distribution_counts_match_result(localized):
    fig = plotting.layer_distribution(localized)
    assert len(fig.data) == 1 and fig.data[0].type == "bar"
    expected = Counter(l for neurons in localized.lakn.values() for l, _ in neurons)
    assert list(fig.data[0].y) == [expected.get(l, 0) for l in range(localized.n_layers)]
    assert list(fig.data[0].x) == list(range(localized.n_layers))
    assert "layer" in fig.layout.xaxis.title.text
    assert fig.layout.title.text.startswith("LAKNs per layer")


def test_layer_distribution_share_and_relative_depth():
    a = handmade({"f": [(0, 1), (0, 2), (3, 0)], "g": [(3, 1)]}, {"f": {"en": []}, "g": {"en": []}})
    b = handmade({"f": [(1, 1)]}, {"f": {"en": []}}, n_layers=2)
    fig = plotting.layer_distribution({"four": a, "two": b}, share=True, relative_depth=True)
    assert [t.name for t in fig.data] == ["four", "two"]
    assert list(fig.data[0].y) == pytest.approx([0.5, 0.0, 0.0, 0.5])
    assert list(fig.data[1].y) == pytest.approx([0.0, 1.0])
    assert list(fig.data[0].x) == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert list(fig.data[1].x) == pytest.approx([0.25, 0.75])
    # a list of results gets default names model · method, numbered when they repeat
    fig = plotting.layer_distribution([a, a])
    assert [t.name for t in fig.data] == ["toy · matrice (1)", "toy · matrice (2)"]
    fig = plotting.layer_distribution([a, b], names=["x", "y"])
    assert list(fig.data[0].y) == [2, 0, 0, 2] and list(fig.data[1].y) == [0, 1]
    with pytest.raises(ValueError, match="names"):
        plotting.layer_distribution([a, b], names=["x"])


# --------------------------------------------------------------------------- one fact


def test_score_map_and_language_scores(localized):
    fid = localized.fact_ids[0]
    score = localized.score(fid)
    fig = plotting.score_map(localized, fid, top=5)
    heat, marks = fig.data
    assert torch.allclose(torch.tensor(heat.z), score, atol=1e-6)
    top = torch.topk(score.flatten(), 5).indices
    d = score.shape[1]
    assert list(marks.y) == [int(i) // d for i in top] and list(marks.x) == [int(i) % d for i in top]
    assert all(t.startswith("L") for t in marks.text)
    assert fid in fig.layout.title.text and "fact: " + fid in heat.hovertemplate

    fig = plotting.language_scores(localized, fid, top=5)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == list(localized.records[fid].per_language)
    for t in bars:
        s = localized.records[fid].per_language[t.name]
        want = [float(s[int(i) // d, int(i) % d]) for i in top]
        assert list(t.y) == pytest.approx(want, abs=1e-6)
    with pytest.raises(KeyError, match="nope"):
        plotting.score_map(localized, "nope")


# --------------------------------------------------------------------------- languages


def test_overlap_matrix_on_constructed_sets():
    lakn = {"f": [(0, 0)], "g": []}
    specific = {
        "f": {"en": [(1, 1)], "fr": [(1, 1), (1, 2)], "zh": []},
        "g": {"en": [(2, 0), (2, 1)], "fr": [(2, 1)], "zh": []},
    }
    r = handmade(lakn, specific)
    m = plotting.overlap_matrix(r)
    # f: en {00,11} fr {00,11,12} zh {00}; g: en {20,21} fr {21} zh {}
    assert m.loc["en", "fr"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m.loc["en", "zh"] == pytest.approx((1 / 2 + 0.0) / 2)
    assert m.loc["fr", "zh"] == pytest.approx((1 / 3 + 0.0) / 2)
    assert m.loc["zh", "zh"] == pytest.approx(1.0)  # g's two empty sets are left out
    assert plotting.jaccard([], [(0, 0)]) == 0.0 and math.isnan(plotting.jaccard([], []))
    fig = plotting.language_overlap(r)
    assert list(fig.data[0].x) == ["en", "fr", "zh"]
    assert fig.data[0].z[0][1] == pytest.approx((2 / 3 + 1 / 2) / 2)
    m = plotting.overlap_matrix(r, include_lakn=False)
    assert m.loc["en", "fr"] == pytest.approx(1 / 2)  # f: {11} vs {11,12}; g: {20,21} vs {21}
    assert m.loc["en", "zh"] == 0.0 and math.isnan(m.loc["zh", "zh"])  # no fact has a zh set



def test_lakn_vs_specific_counts():
    lakn = {"f": [(0, 0), (1, 0)], "g": [(1, 3)]}
    specific = {"f": {"en": [(2, 0)], "fr": [(2, 1), (3, 1)]}, "g": {"en": [(2, 5)], "fr": []}}
    r = handmade(lakn, specific)
    fig = plotting.lakn_vs_specific(r)
    assert list(fig.data[0].y) == [1, 2, 0, 0]
    assert list(fig.data[1].y) == pytest.approx([0, 0, 1.5, 0.5])
    fig = plotting.lakn_vs_specific(r, by_language=True)
    assert [t.name for t in fig.data] == ["LAKN (all languages)", "specific: en", "specific: fr"]
    assert list(fig.data[1].y) == [0, 0, 2, 0] and list(fig.data[2].y) == [0, 0, 1, 1]


# --------------------------------------------------------------------------- interventions


def _changes() -> pd.DataFrame:
    rows = []
    for method, scale in (("matrice", 1.0), ("random", 0.1)):
        for intervention, sign in (("suppress", -1), ("enhance", 1)):
            for kind, rel_scale in (("related", 1.0), ("other_relation", 0.2)):
                for lang in ("en", "zh"):
                    for v in (0.4, 0.6):
                        rows.append(dict(method=method, language=lang, intervention=intervention,
                                         kind=kind, change=sign * v * scale * rel_scale))
    return pd.DataFrame(rows)


def test_probability_change_means_and_error_bars():
    df = _changes()
    fig = plotting.probability_change(df)
    names = {t.name for t in fig.data if t.type == "bar"}
    assert names == {"matrice · related", "matrice · other_relation", "random · related", "random · other_relation"}
    assert [a.text for a in fig.layout.annotations][:2] == ["suppress", "enhance"]
    first = next(t for t in fig.data if t.name == "matrice · related" and t.xaxis == "x")
    assert list(first.x) == ["en", "zh"]
    assert list(first.y) == pytest.approx([-0.5, -0.5])
    assert list(first.error_y.array) == pytest.approx([df["change"].iloc[:2].std()] * 2)
    s = plotting.summarize_changes(df, spread="sem")
    row = s[(s.method == "random") & (s.intervention == "enhance") & (s.kind == "other_relation") & (s.language == "en")]
    assert float(row["mean"].iloc[0]) == pytest.approx(0.01)
    assert float(row["spread"].iloc[0]) == pytest.approx(pd.Series([0.008, 0.012]).std() / 2 ** 0.5)
    # minimal input: only language and change; columns are read by name, never renamed
    fig = plotting.probability_change(pd.DataFrame({"language": ["en", "en"], "change": [-0.2, -0.4]}))
    assert list(fig.data[0].y) == pytest.approx([-0.3])
    with pytest.raises(ValueError, match="change"):
        plotting.probability_change(pd.DataFrame({"language": ["en"], "change_rate": [-0.2]}))


# --------------------------------------------------------------------------- run folders


def test_write_run_figures(localized, tmp_path, capsys):
    run = localized.save(tmp_path / "run")
    paths = plotting.write_run_figures(run)
    assert capsys.readouterr().out == ""
    stems = {p.stem for p in paths}
    assert {"layer_distribution", "layer_distribution_share", "lakn_vs_specific", "language_overlap"} <= stems
    assert {f"score_map_{f}" for f in localized.fact_ids} <= stems
    assert "probability_change" not in stems
    assert all(p.is_file() and p.parent == run / "figures" for p in paths)
    assert (run / "figures" / "plotly.min.js").is_file()  # offline: no CDN
    html = paths[0].read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html

    # eval.json: drawn when it is a ChangeRateResult file, skipped with a warning when it is not
    from lakn.evaluation import ChangeRateResult, EditingResult

    ChangeRateResult(_changes().to_dict("records")).save(run / "eval.json")
    out = tmp_path / "figs"
    paths = plotting.write_run_figures(run, out)
    assert out / "probability_change.html" in paths
    pd.testing.assert_frame_equal(plotting.read_eval_table(run / "eval.json"), _changes())
    for text in (json.dumps({"something": 1}), "{not json", json.dumps({"kind": "EditingResult", "rows": []})):
        (run / "eval.json").write_text(text)
        with pytest.warns(UserWarning, match="not a ChangeRateResult file"):
            assert "probability_change" not in {p.stem for p in plotting.write_run_figures(run, out)}
    EditingResult([]).save(run / "eval.json")
    with pytest.warns(UserWarning, match="holds a EditingResult"):
        assert plotting.read_eval_table(run / "eval.json") is None


def test_write_run_figures_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plotting.write_run_figures(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="result.json"):
        plotting.write_run_figures(tmp_path / "empty")


def test_cli_plot(localized, tmp_path, capsys):
    from lakn.cli import main

    run = localized.save(tmp_path / "run")
    assert main(["plot", str(run), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "figs" / "layer_distribution.html") in printed


def test_probability_change_reads_evaluation_rows():
    """lakn.evaluation.ChangeRateResult rows (and the result itself) are read by their column names."""
    rows = [dict(method="matrice", intervention="suppress", target="f", fact_id=fid, kind=kind, language="en",
                 split=split, p_before=0.5, p_after=0.5 * (1 + c), change=c, n_neurons=3)
            for fid, kind, split, c in [("f", "related", "seen", -0.8), ("f", "related", "heldout_language", -0.4),
                                        ("g", "same_relation", "seen", -0.2), ("h", "other_relation", "seen", 0.0)]]
    df = pd.DataFrame(rows)
    fig = plotting.probability_change(df)
    means = {t.name: t.y[0] for t in fig.data if t.type == "bar"}
    assert means == pytest.approx({"matrice · related": -0.6, "matrice · same_relation": -0.2,
                                   "matrice · other_relation": 0.0})
    fig = plotting.probability_change(df, split="seen")
    assert next(t for t in fig.data if t.name == "matrice · related").y == pytest.approx((-0.8,))
    from lakn.evaluation import ChangeRateResult

    fig = plotting.probability_change(ChangeRateResult(rows))
    assert {t.name: t.y[0] for t in fig.data if t.type == "bar"} == pytest.approx(means)
