"""RunConfig: validation naming the field, dict / file round trips, the differences a resume reports."""

from __future__ import annotations

import json

import pytest

from lakn.config import CHOICES, VOLATILE, RunConfig


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), "steps must be at least 1"),
    (dict(max_queries=0), "max_queries must be at least 1"),
    (dict(top_k=True), "top_k must be at least 1"),
    (dict(batch_size=-3), "batch_size must be at least 1"),
    (dict(threshold=0.0), r"threshold must be in \(0, 1\]"),
    (dict(common_fraction=1.5), r"common_fraction must be in \[0, 1\]"),
    (dict(min_reference=-1), "min_reference must be a whole number"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(first_token_only="yes"), "first_token_only must be True or False"),
    (dict(method_kwargs=[("beta", 1)]), "method_kwargs must be a dict"),
    (dict(method="best"), "method must be one of matrice, kn, amig, mean, random; got 'best'"),
    (dict(attribution="magic"), "attribution must be one of auto, fast, reference, approx, coarse-to-fine"),
    (dict(specificity="some"), "specificity must be one of"),
    (dict(reference="mine"), "reference must be one of"),
])
def test_validation_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)
    with pytest.raises(ValueError, match=message):  # replace validates again
        RunConfig().replace(**changes)


def test_dict_and_file_round_trip(tmp_path):
    cfg = RunConfig(method="kn", steps=7, fact_ids=["a", "b"], languages=["en"], method_kwargs={"share": 0.5},
                    top_k=3, versions={"torch": "x"})
    data = cfg.to_dict()
    assert list(data)[:3] == ["lakn_version", "model", "n_layers"] and "extra" not in data
    assert json.loads(json.dumps(data)) == data  # plain JSON
    assert RunConfig.from_dict(data) == cfg
    path = cfg.save(tmp_path / "run" / "config.json")
    assert RunConfig.load(path) == cfg
    # keys another version wrote are kept, and written back
    newer = RunConfig.from_dict({**data, "data_hash": "abc"})
    assert newer.extra == {"data_hash": "abc"} and newer.to_dict()["data_hash"] == "abc"
    # keys an older version did not write take the defaults
    older = RunConfig.from_dict({k: v for k, v in data.items() if k != "min_reference"})
    assert older.min_reference == RunConfig().min_reference


def test_diff_lists_what_changes_results():
    a = RunConfig(steps=10, batch_size=4, attribution="fast", versions={"torch": "1"})
    assert a.diff(a.replace(batch_size=None, attribution="reference", versions={"torch": "2"})) == {}
    assert set(VOLATILE) >= {"batch_size", "versions", "lakn_version"}
    assert a.diff(a.replace(steps=20, attribution="approx")) == {"steps": (10, 20), "attribution": ("fast", "approx")}
    assert a.diff(RunConfig.from_dict({**a.to_dict(), "data_hash": "x"})) == {"data_hash": (None, "x")}


def test_defaults_and_choices_are_the_apis():
    import inspect

    import lakn

    params = inspect.signature(lakn.localize).parameters
    defaults = RunConfig()
    for f in RunConfig.options():  # localize's keyword defaults are the configuration's
        assert params[f.name].default == getattr(defaults, f.name), f.name
    assert lakn.attribution.MODES == tuple(a for a in CHOICES["attribution"] if a != "coarse-to-fine")
    assert set(lakn.scoring.METHODS) | {"random"} == set(CHOICES["method"])


def test_data_hash_is_recorded_but_does_not_refuse_a_resume():
    """An edited data file is recomputed per fact (README "Reliability"), so data_sha256 is no difference."""
    from lakn.config import RECOMPUTED

    a = RunConfig(data="/d/facts.jsonl", data_sha256="aa")
    assert "data_sha256" in RECOMPUTED and a.diff(a.replace(data_sha256="bb")) == {}
    assert a.diff(a.replace(data="/e/facts.jsonl")) == {"data": ("/d/facts.jsonl", "/e/facts.jsonl")}
    assert RunConfig.from_dict({k: v for k, v in a.to_dict().items() if k != "data_sha256"}).data_sha256 == ""


def test_record_hash_covers_what_one_fact_depends_on():
    a = RunConfig(model="m", n_layers=2, d_mlp=8, languages=["en"], steps=3, fact_ids=["x"], data="d")
    same = a.replace(fact_ids=["x", "y"], data="e", data_sha256="f", batch_size=4, attribution="fast",
                     versions={"torch": "9"})
    assert a.record_sha256() == same.record_sha256()  # run-level and volatile keys, exact attributions
    for change in (dict(steps=4), dict(languages=["en", "fr"]), dict(model="n"), dict(attribution="approx"),
                   dict(method_kwargs={"beta": 2.0})):
        assert a.replace(**change).record_sha256() != a.record_sha256(), change
    # a key at its default counts as absent: a field added by a later version keeps old hashes
    assert RunConfig.from_dict({k: v for k, v in a.to_dict().items() if k != "min_reference"}).record_sha256() \
        == a.record_sha256()


def test_a_config_file_that_is_not_one_is_named(tmp_path):
    from lakn.config import RunConfigError

    path = tmp_path / "config.json"
    for text, words in (("{oops", "not a readable run configuration"), ("[1]", "expected a JSON object"),
                        ('{"steps": 0}', "not a valid run configuration: steps must be at least 1")):
        path.write_text(text)
        with pytest.raises(RunConfigError, match=words) as info:
            RunConfig.load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value, low, strict, ok", [
    (0, 0.0, False, True), (0.0, 0.0, True, False), (2.5, 1.0, True, True), (1.0, 1.0, True, False),
    (float("nan"), 0.0, False, False), (float("inf"), 0.0, False, False), (-1e-9, 0.0, False, False),
    (True, 0.0, False, False), ("1", 0.0, False, False), (None, 0.0, False, False),
])
def test_check_number_is_the_one_numeric_check(value, low, strict, ok):
    from lakn.config import check_number

    if ok:
        check_number("x", value, low, strict=strict)
    else:
        with pytest.raises(ValueError, match=rf"x must be a finite number {'>' if strict else '>='} {low:g}, got"):
            check_number("x", value, low, strict=strict)


def test_the_numeric_settings_share_the_check():
    """Options checked in scoring, causal scoring and editing give the same message, and a bool is
    refused rather than read as 0 or 1."""
    import torch

    from lakn.causal import _check
    from lakn.editing import _check_options
    from lakn.scoring import language_score

    with pytest.raises(ValueError, match="lam_other must be a finite number >= 0, got True"):
        _check("matrice", 1.0, True, None)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0, got nan"):
        _check_options("closed_form", float("nan"), 1.0, None)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got -1"):
        language_score(torch.rand(2, 1, 3), torch.ones(2), beta=-1)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0, got False"):
        language_score(torch.rand(2, 1, 3), torch.ones(2), beta=False)
