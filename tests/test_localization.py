"""The localisation pipeline on tiny models: results, resume, configuration, bad input, hook hygiene."""

import json
from pathlib import Path

import pytest
import torch

import lakn
from lakn import attribution
from lakn.facts import safe_file_stem
from lakn.localization import RunConfigError, localize
from lakn.results import LocalizationResult
from lakn.testing import active_hook_count

SETTINGS = dict(steps=4, progress=False)


def test_localize_returns_consistent_result(tiny_llama, toy_facts):
    result = localize(tiny_llama, toy_facts, languages=["en", "zh"], **SETTINGS)
    assert result.fact_ids == [f.fact_id for f in toy_facts]
    assert result.languages == ["en", "zh"]
    n_layers, d_mlp = tiny_llama.cfg.n_layers, tiny_llama.cfg.d_mlp
    for fid in result.fact_ids:
        rec = result.records[fid]
        assert rec.laa.shape == (n_layers, d_mlp)
        assert set(rec.per_language) == {"en", "zh"}
        # the LAKNs are exactly the neurons at or above 0.2 x max of the selecting score, best first
        score = result.score(fid)
        expected = {(l, n) for l, n in (score >= 0.2 * score.max()).nonzero().tolist() if score[l, n] > 0}
        assert set(result.neurons(fid)) == expected
        values = [float(score[l, n]) for l, n in result.neurons(fid)]
        assert values == sorted(values, reverse=True)
        for lang, neurons in result.language_specific[fid].items():
            assert not set(neurons) & expected
        assert len(rec.queries) == 4  # 2 languages x 2 paraphrases
    assert result.selection == "raw"  # 3 reference facts < 5: raw LAA by default
    df = result.to_dataframe()
    assert set(df["kind"]) <= {"lakn", "language_specific"}
    assert len(df[df.kind == "lakn"]) == sum(len(v) for v in result.lakn.values())


def test_specific_selection_subtracts_other_facts(tiny_llama, toy_facts):
    result = localize(tiny_llama, toy_facts, languages=["en"], specificity="specific", **SETTINGS)
    assert result.selection == "specific"
    laa = {fid: rec.laa for fid, rec in result.records.items()}
    fid = result.fact_ids[0]
    others = torch.stack([laa[g].clamp_min(0) for g in result.fact_ids[1:]]).mean(0)
    torch.testing.assert_close(result.specific[fid], laa[fid] - others)


def test_random_matches_layers_of_matrice(tiny_llama, toy_facts):
    from lakn.selection import random_control

    base = localize(tiny_llama, toy_facts[:2], languages=["en"], **SETTINGS)
    rand = localize(tiny_llama, toy_facts[:2], languages=["en"], method="random", seed=3, **SETTINGS)
    for i, fid in enumerate(base.fact_ids):
        layers = sorted(l for l, _ in base.neurons(fid))
        assert len(layers) >= 3  # the tiny model selects several neurons: the comparison below means something
        assert sorted(l for l, _ in rand.neurons(fid)) == layers
        assert set(rand.neurons(fid)) != set(base.neurons(fid))
        # the control is the one seeded draw (seed, fact index), so it repeats exactly
        assert rand.neurons(fid) == random_control(base.neurons(fid), base.d_mlp, 3, i)


@pytest.mark.parametrize("method", ["kn", "amig", "mean"])
def test_baseline_methods_run(tiny_llama, toy_facts, method):
    result = localize(tiny_llama, toy_facts[:2], languages=["en", "fr"], method=method, **SETTINGS)
    assert result.config["method"] == method
    assert all(isinstance(n, tuple) and len(n) == 2 for v in result.lakn.values() for n in v)


def test_save_load_roundtrip_and_neurons_json(tiny_llama, toy_facts, tmp_path):
    result = localize(tiny_llama, toy_facts[:2], languages=["en", "fr"], out=tmp_path, **SETTINGS)
    loaded = LocalizationResult.load(tmp_path)
    assert loaded.lakn == result.lakn and loaded.language_specific == result.language_specific
    for fid in result.fact_ids:
        torch.testing.assert_close(loaded.records[fid].laa, result.records[fid].laa)
    neurons = json.loads((tmp_path / "neurons.json").read_text())
    assert neurons[result.fact_ids[0]]["lakn"] == [list(n) for n in result.neurons(result.fact_ids[0])]
    assert set(neurons[result.fact_ids[0]]["language_specific"]) == {"en", "fr"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["steps"] == 4 and config["method"] == "matrice" and config["lakn_version"] == lakn.__version__


def test_interrupted_run_resumes_to_same_result(tiny_llama, toy_facts, tmp_path, monkeypatch):
    full = localize(tiny_llama, toy_facts, languages=["en", "zh"], **SETTINGS)
    real = attribution.answer_stats  # called once per attributed query, on every path
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:  # mid-way through the third fact (4 queries a fact)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "answer_stats", flaky)
    with pytest.raises(KeyboardInterrupt):
        localize(tiny_llama, toy_facts, languages=["en", "zh"], out=tmp_path, **SETTINGS)
    done = sorted(p.stem for p in (tmp_path / "facts").glob("*.json"))
    assert done == sorted(safe_file_stem(f.fact_id) for f in toy_facts[:2])
    assert not (tmp_path / "neurons.json").exists()
    assert active_hook_count(tiny_llama) == 0

    monkeypatch.setattr(attribution, "answer_stats", real)
    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "answer_stats", counting)
    resumed = localize(tiny_llama, toy_facts, languages=["en", "zh"], out=tmp_path, **SETTINGS)
    assert counted["n"] == 2 * 2 * 2  # only the two unfinished facts were attributed
    assert resumed.lakn == full.lakn
    for fid in full.fact_ids:
        torch.testing.assert_close(resumed.records[fid].laa, full.records[fid].laa)


def test_resume_with_other_arguments_is_refused(tiny_llama, toy_facts, tmp_path):
    localize(tiny_llama, toy_facts[:1], languages=["en"], out=tmp_path, **SETTINGS)
    before = (tmp_path / "neurons.json").read_text()
    with pytest.raises(RunConfigError, match="steps: 4 -> 5"):
        localize(tiny_llama, toy_facts[:1], languages=["en"], out=tmp_path, steps=5, progress=False)
    assert (tmp_path / "neurons.json").read_text() == before  # nothing written is lost


def test_bad_arguments_fail_before_computation(tiny_llama, toy_facts, monkeypatch):
    def never(*a, **k):
        raise AssertionError("attribution must not start")

    monkeypatch.setattr("lakn.localization.attribute_queries", never)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        localize(tiny_llama, toy_facts, steps=0, progress=False)
    with pytest.raises(lakn.FactsError, match="unknown or unsupported language"):
        localize(tiny_llama, toy_facts, languages=["en", "klingon"], **SETTINGS)
    with pytest.raises(lakn.FactsError, match="asked for 10 facts"):
        localize(tiny_llama, toy_facts, n_facts=10, **SETTINGS)
    with pytest.raises(ValueError, match="method must be one of matrice, kn, amig, mean, random; got 'best'"):
        localize(tiny_llama, toy_facts, method="best", **SETTINGS)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['betta'\\]"):
        localize(tiny_llama, toy_facts, betta=1.0, **SETTINGS)
    # a zero-width space: the tokenizer yields no visible piece for it
    empty = lakn.Fact.from_dict({"fact_id": "blank", "relation": "r", "object": {"en": "\u200b"},
                                 "queries": {"en": ["The capital is [Y]"]}})
    with pytest.raises(lakn.FactsError, match="tokenises to nothing"):
        localize(tiny_llama, [empty], **SETTINGS)


def test_hooks_removed_when_attribution_fails(tiny_llama, toy_facts, monkeypatch):
    def failing(original):
        def run(model, tokens, *args, **kwargs):
            if active_hook_count(model):  # only inside a hooked forward
                raise RuntimeError("simulated failure inside the hooked forward")
            return original(model, tokens, *args, **kwargs)

        return run

    from lakn.attribution import approx, exact, kv_cache, runners

    for module in (approx, exact, kv_cache, runners):  # every place the attribution passes run the model
        for name in ("last_logits", "logits_at"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, failing(getattr(module, name)))
    with pytest.raises(RuntimeError, match="simulated failure"):
        localize(tiny_llama, toy_facts[:1], languages=["en"], **SETTINGS)
    assert active_hook_count(tiny_llama) == 0


def test_run_folder_of_version_0_1_0_loads_and_resumes(tmp_path, monkeypatch):
    """A run folder written by lakn 0.1.0 (before RunConfig; tests/data/run_v0_1_0, a tiny llama
    with d_mlp=16, 2 facts, steps=2) still loads, and the same arguments resume it: nothing is
    recomputed and the neuron sets are the stored ones."""
    import shutil

    from lakn.config import RunConfig
    from lakn.facts import Fact
    from lakn.testing import tiny_model

    folder = shutil.copytree(Path(__file__).parent / "data" / "run_v0_1_0", tmp_path / "run")
    old = LocalizationResult.load(folder)
    stored = {"capital_france": [(1, 10), (1, 9), (1, 14), (0, 12)], "capital_spain": [(1, 13), (0, 13)]}
    assert old.lakn == stored and old.d_mlp == 16 and old.selection == "raw"
    assert old.run_config == RunConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert old.run_config.steps == 2 and old.run_config.extra == {}

    def never(*a, **k):
        raise AssertionError("a finished fact must not be attributed again")

    monkeypatch.setattr("lakn.localization.attribute_queries", never)
    facts = [Fact.from_dict({"fact_id": f"capital_{c.lower()}", "relation": "capital", "object": {"en": city, "fr": city},
                             "queries": {"en": [f"The capital of {c} is [Y]"], "fr": [f"La capitale de {c} est [Y]"]}})
             for c, city in [("France", "Paris"), ("Spain", "Madrid")]]
    model = tiny_model("llama", weight_scale=4.0, d_mlp=16)
    resumed = localize(model, facts, steps=2, progress=False, out=folder, data="toy")
    assert resumed.lakn == stored
    with pytest.raises(RunConfigError, match="threshold: 0.2 -> 0.3"):
        localize(model, facts, steps=2, threshold=0.3, progress=False, out=folder, data="toy")
