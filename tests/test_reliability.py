"""Issue 16: run folders that cannot be poisoned, one input per test (the command line end to end on a
tiny local model folder, where a user meets them).

Every bad input is either a one-line ``lakn: error: ...`` naming the file / fact / field (exit 2, no
traceback, nothing written outside ``--out``, no half-made run folder) or, for a bad file inside a run
folder, a one-line warning naming it, after which the fact is recomputed and listed in result.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from lakn.cli import main
from lakn.facts import safe_file_stem

RUN = ["--languages", "en", "--n-facts", "3", "--max-queries", "1", "--steps", "1"]
COUNTRIES = [("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Japan", "Tokyo")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lakn.testing import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    save_tiny_model(folder, "gpt2")
    return folder


def _records():
    return [{"fact_id": f"capital_{c.lower()}", "relation": "capital", "object": {"en": city, "zh": city},
             "queries": {"en": [f"The capital of {c} is [Y]"], "zh": [f"{c}的首都是[Y]"]}} for c, city in COUNTRIES]


def _write(path: Path, records) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working folder (the cwd) with a data file; everything a test writes must stay in it."""
    work = tmp_path / "work" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    _write(work / "facts.jsonl", _records())
    return work


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _cli(args, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``lakn ARGS``."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return int(code or 0), captured.out, captured.err


def _error(args, capsys) -> str:
    """The one-line error of a command that must fail (exit 2, no traceback)."""
    code, _, err = _cli(args, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.endswith("\n"), err
    last = re.split(r"[\r\n]", err.rstrip("\n"))[-1]  # after the model loader's progress bar, if it ran
    assert last.startswith("lakn: error: ") and err.count("lakn: error: ") == 1, err
    return last


def _warnings(err: str) -> list[str]:
    """The warning lines of stderr (the progress bar redraws with carriage returns around them)."""
    return [line.strip() for line in re.split(r"[\r\n]", err) if line.startswith("lakn: warning: ")]


def _localize(model_dir, out, data="facts.jsonl", extra=()):
    return ["localize", "--out", out, "--model", model_dir, "--data", data, *RUN, *extra]


@pytest.fixture(autouse=True)
def _no_model_for_errors(monkeypatch, request):
    """Tests marked ``no_model`` must fail before the model loads."""
    if request.node.get_closest_marker("no_model"):
        def never(*a, **k):
            raise AssertionError("the model must not be loaded for this input")

        monkeypatch.setattr("lakn.models.load_model", never)


# --------------------------------------------------------------------------- unsafe ids


@pytest.mark.no_model
@pytest.mark.parametrize("bad_id", ["../../evil", "ABSOLUTE", "a/b"])
def test_unsafe_fact_ids_are_refused_at_load_and_nothing_is_written(sandbox, tmp_path, model_dir, capsys, bad_id):
    if bad_id == "ABSOLUTE":
        bad_id = str(tmp_path / "target" / "evil")
    records = _records()
    records[1]["fact_id"] = bad_id
    _write(sandbox / "facts.jsonl", records)
    before = _files(tmp_path)
    err = _error(_localize(model_dir, "run"), capsys)
    assert "facts.jsonl, line 2" in err and "field 'fact_id'" in err and "not an allowed fact id" in err
    assert _files(tmp_path) == before  # nothing written anywhere: no evil.json, no run folder
    assert not (sandbox / "run").exists() and not (tmp_path / "target").exists()


def test_ids_built_in_code_never_leave_the_run_folder(tmp_path, tiny_llama):
    """Facts made without the loader's check still get safe file names."""
    from lakn import Fact, localize

    facts = [Fact(fid, "capital", {"en": "Paris"}, {"en": ("The capital of France is [Y]",)})
             for fid in ("../../evil", "/tmp/abs_evil", "a/b", "A/B")]
    out = tmp_path / "x" / "y" / "run"
    localize(tiny_llama, facts, steps=1, progress=False, out=out)
    written = _files(tmp_path)
    assert written and all(out in p.parents for p in written)
    stems = {p.stem for p in (out / "facts").glob("*.json")}
    assert stems == {safe_file_stem(f.fact_id) for f in facts}
    assert not Path("/tmp/abs_evil.json").exists()


# --------------------------------------------------------------------------- verified resume


@pytest.fixture
def finished_run(sandbox, model_dir, capsys):
    """A finished run folder and its neurons.json."""
    code, _, err = _cli(_localize(model_dir, "run"), capsys)
    assert code == 0, err
    out = sandbox / "run"
    return out, json.loads((out / "neurons.json").read_text())


def _fact_file(out: Path, fact_id: str, suffix: str) -> Path:
    return out / "facts" / f"{safe_file_stem(fact_id)}{suffix}"


def _resume_and_check(model_dir, out, capsys, expected_fact, expected_reason, neurons=None):
    code, stdout, err = _cli(_localize(model_dir, out), capsys)
    assert code == 0, err
    warned = _warnings(err)
    assert any(expected_reason in w and f"recomputing fact '{expected_fact}'" in w for w in warned), err
    assert "recomputed on resume" in stdout and expected_fact in stdout
    result = json.loads((out / "result.json").read_text())
    assert [r["fact_id"] for r in result["recomputed"]] == [expected_fact]
    assert expected_reason in result["recomputed"][0]["reason"]
    if neurons is not None:
        assert json.loads((out / "neurons.json").read_text()) == neurons
    # the file is whole again: the next resume trusts it and warns about nothing
    code, _, err = _cli(_localize(model_dir, out), capsys)
    assert code == 0 and not _warnings(err), err


def test_truncated_safetensors_is_named_and_recomputed(finished_run, model_dir, capsys):
    out, neurons = finished_run
    path = _fact_file(out, "capital_spain", ".safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _resume_and_check(model_dir, out, capsys, "capital_spain", f"{path} fails its checksum", neurons)


def test_truncated_json_is_named_and_recomputed(finished_run, model_dir, capsys):
    out, neurons = finished_run
    path = _fact_file(out, "capital_spain", ".json")
    path.write_bytes(path.read_bytes()[:100])
    _resume_and_check(model_dir, out, capsys, "capital_spain", f"{path} is not valid JSON", neurons)


def test_json_edited_by_hand_fails_its_checksum(finished_run, model_dir, capsys):
    out, neurons = finished_run
    path = _fact_file(out, "capital_italy", ".json")
    meta = json.loads(path.read_text())
    meta["lakn"] = [[0, 0]]
    path.write_text(json.dumps(meta))
    _resume_and_check(model_dir, out, capsys, "capital_italy", f"{path} fails its checksum", neurons)


def test_a_fact_file_copied_over_another_is_named_and_recomputed(finished_run, model_dir, capsys):
    out, neurons = finished_run
    for suffix in (".json", ".safetensors"):
        shutil.copyfile(_fact_file(out, "capital_france", suffix), _fact_file(out, "capital_spain", suffix))
    _resume_and_check(model_dir, out, capsys, "capital_spain", "holds fact 'capital_france', not 'capital_spain'",
                      neurons)


def test_a_file_from_another_run_folder_is_named_and_recomputed(finished_run, sandbox, model_dir, capsys):
    out, neurons = finished_run
    code, _, err = _cli(_localize(model_dir, "other", extra=["--threshold", "0.5"]), capsys)
    assert code == 0, err
    for suffix in (".json", ".safetensors"):
        other = _fact_file(sandbox / "other", "capital_spain", suffix)
        shutil.copyfile(other, _fact_file(out, "capital_spain", suffix))
    _resume_and_check(model_dir, out, capsys, "capital_spain", "was made with other run settings", neurons)


def test_data_file_edited_in_place_recomputes_the_changed_fact(finished_run, sandbox, model_dir, capsys):
    """Choice (README "Reliability"): a changed data file is not refused; the facts whose records
    changed are recomputed and named, the others are kept."""
    out, _ = finished_run
    records = _records()
    records[1]["object"]["en"] = "Barcelona"
    _write(sandbox / "facts.jsonl", records)
    code, _, err = _cli(_localize(model_dir, out), capsys)
    assert code == 0, err
    warned = _warnings(err)
    assert any("facts.jsonl changed since" in w for w in warned), err
    assert any("made from another version of fact 'capital_spain'" in w for w in warned), err
    assert len(warned) == 2  # the file, and the one fact whose record changed
    assert [r["fact_id"] for r in json.loads((out / "result.json").read_text())["recomputed"]] == ["capital_spain"]
    config = json.loads((out / "config.json").read_text())
    from lakn.facts import data_sha256

    assert config["data_sha256"] == data_sha256(sandbox / "facts.jsonl")
    # the same as a fresh run on the edited data
    code, _, err = _cli(_localize(model_dir, "fresh"), capsys)
    assert code == 0, err
    fresh = json.loads((sandbox / "fresh" / "neurons.json").read_text())
    assert json.loads((out / "neurons.json").read_text()) == fresh
    queries = json.loads(_fact_file(out, "capital_spain", ".json").read_text())["queries"]
    assert {q["answer"] for q in queries} == {"Barcelona"}


def test_other_arguments_are_still_refused(finished_run, model_dir, capsys):
    out, _ = finished_run
    err = _error(_localize(model_dir, out, extra=["--threshold", "0.3"]), capsys)
    assert "threshold: 0.2 -> 0.3" in err


def test_old_run_folder_names_are_read_only_for_safe_matching_ids(tmp_path):
    """lakn 0.1.0's raw-id names: read when no new file exists, the id is safe and the stored id matches."""
    from lakn.results import FactRecord, RunFolderError

    src = Path(__file__).parent / "data" / "run_v0_1_0" / "facts"
    folder = shutil.copytree(src, tmp_path / "facts")
    assert FactRecord.load(folder, "capital_france").lakn[0] == (1, 10)
    shutil.copyfile(folder / "capital_france.json", folder / "capital_spain.json")
    with pytest.raises(RunFolderError, match="capital_spain.json holds fact 'capital_france', not 'capital_spain'"):
        FactRecord.load(folder, "capital_spain")
    (folder / "a..b.json").write_text((folder / "capital_france.json").read_text())
    assert FactRecord.find(folder, "a..b") is None  # an unsafe id never names a file


# --------------------------------------------------------------------------- strict records, bounded inputs


@pytest.mark.no_model
@pytest.mark.parametrize("change, words", [
    (lambda r: r.update(object={"en": ["Madrid"], "zh": "Madrid"}), ["field 'object.en'", "must be one answer"]),
    (lambda r: r.update(subject="Spain"), ["field 'subject'", "must be an object keyed by language"]),
    (lambda r: r.update(causal_ok={"en": ["zero"]}), ["field 'causal_ok.en[0]'", "must be a query index"]),
    (lambda r: r["queries"]["en"].append("x" * 5_000_000 + " [Y]"), ["field 'queries.en[1]'", "5,000,004 characters"]),
    (lambda r: r["queries"]["en"].append("y" * 50_000_000), ["field 'queries.en[1]'", "50,000,000 characters"]),
])
def test_bad_records_are_one_line_errors_naming_file_line_fact_and_field(sandbox, tmp_path, model_dir, capsys,
                                                                          change, words):
    records = _records()
    change(records[1])
    _write(sandbox / "facts.jsonl", records)
    before = _files(tmp_path)
    err = _error(_localize(model_dir, "run"), capsys)
    assert "facts.jsonl, line 2: fact 'capital_spain'" in err and all(w in err for w in words), err
    assert len(err) < 600  # a 50 MB value is quoted in about 100 characters
    assert _files(tmp_path) == before


@pytest.mark.no_model
def test_non_utf8_data_file_names_the_byte_offset(sandbox, model_dir, capsys):
    text = (sandbox / "facts.jsonl").read_bytes()
    (sandbox / "facts.jsonl").write_bytes(text.replace(b"Madrid", b"Madr\xe9d"))
    err = _error(_localize(model_dir, "run"), capsys)
    assert "facts.jsonl is not valid UTF-8: byte 0xe9 at byte offset" in err and "line 2" in err
    assert not (sandbox / "run").exists()


def test_answer_that_tokenises_to_nothing_names_the_fact(sandbox, model_dir, capsys):
    records = _records()
    records[1]["object"]["en"] = "\u200b"  # a zero-width space: no visible token
    _write(sandbox / "facts.jsonl", records)
    err = _error(_localize(model_dir, "run"), capsys)
    assert "fact 'capital_spain'" in err and "tokenises to nothing" in err
    assert not (sandbox / "run").exists()  # found before the run folder is made


def test_prompt_longer_than_the_context_is_an_error_before_attribution(sandbox, model_dir, capsys, monkeypatch):
    def never(*a, **k):
        raise AssertionError("attribution must not start")

    monkeypatch.setattr("lakn.localization.attribute_queries", never)
    records = _records()
    records[1]["queries"]["en"] = ["The capital of Spain, " * 80 + "is [Y]"]  # 1,766 characters: under the cap
    _write(sandbox / "facts.jsonl", records)
    err = _error(_localize(model_dir, "run"), capsys)
    assert "fact 'capital_spain', language 'en'" in err and "more than the model's context window of 256" in err
    assert not (sandbox / "run").exists()


# --------------------------------------------------------------------------- paths


@pytest.mark.no_model
def test_out_an_existing_file_is_an_error_before_the_model_loads(sandbox, model_dir, capsys):
    (sandbox / "taken").write_text("mine")
    err = _error(_localize(model_dir, "taken"), capsys)
    assert f"run folder {sandbox / 'taken'} exists and is a file" in err
    assert (sandbox / "taken").read_text() == "mine"
    err = _error(_localize(model_dir, "taken/run"), capsys)  # a folder below a file
    assert "cannot be made" in err and "is a file" in err


@pytest.mark.no_model
def test_a_folder_that_is_not_a_run_folder_is_an_error_before_the_model_loads(sandbox, model_dir, capsys):
    (sandbox / "odd").mkdir()
    (sandbox / "odd" / "config.json").write_text("{not json")
    err = _error(_localize(model_dir, "odd"), capsys)
    assert "odd/config.json: not a readable run configuration" in err
    (sandbox / "odd2" / "facts").parent.mkdir()
    (sandbox / "odd2" / "facts").write_text("")
    err = _error(_localize(model_dir, "odd2"), capsys)
    assert "facts is a file" in err


def test_model_an_existing_non_model_file_says_what_it_is_not(sandbox, capsys):
    (sandbox / "weights.txt").write_text("hello")
    err = _error(["localize", "--out", "run", "--model", "weights.txt", *RUN], capsys)
    assert "weights.txt is not a model folder or .gguf file" in err and "not found" not in err
    assert not (sandbox / "run").exists()


def test_out_with_tilde_is_expanded(sandbox, tmp_path, model_dir, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, stdout, err = _cli(_localize(model_dir, "~/x"), capsys)
    assert code == 0, err
    assert (home / "x" / "neurons.json").is_file() and not (sandbox / "~").exists()
    assert f"written: {home / 'x' / 'neurons.json'}" in stdout


def test_relative_data_is_recorded_absolute_and_evaluate_works_from_elsewhere(sandbox, tmp_path, model_dir, capsys,
                                                                            monkeypatch):
    code, _, err = _cli(_localize(model_dir, "run"), capsys)
    assert code == 0, err
    config = json.loads((sandbox / "run" / "config.json").read_text())
    assert config["data"] == str(sandbox / "facts.jsonl") and config["model"] == str(model_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, err = _cli(["evaluate", sandbox / "run", "--model", model_dir, "--max-queries", "1",
                              "--top-k-answer", "400"], capsys)
    assert code == 0, err
    assert (sandbox / "run" / "eval.json").is_file() and not any(elsewhere.iterdir())


# --------------------------------------------------------------------------- corrupt run files


@pytest.mark.parametrize("name, damage, words", [
    ("result.json", lambda p: p.write_bytes(p.read_bytes()[:50]), "result.json is not valid JSON"),
    ("config.json", lambda p: p.write_text("[1, 2"), "config.json is not valid JSON"),
    ("scores.safetensors", lambda p: p.write_bytes(p.read_bytes()[:40]), "scores.safetensors fails its checksum"),
    ("result.json", lambda p: p.write_text('{"fact_ids": 3}'), "result.json is not a lakn result"),
    ("FACT", lambda p: p.write_bytes(p.read_bytes()[:10]), ".json is not valid JSON"),
])
def test_corrupt_run_files_are_one_line_errors_for_evaluate_and_plot(finished_run, model_dir, capsys, monkeypatch,
                                                                    name, damage, words):
    out, _ = finished_run
    path = _fact_file(out, "capital_italy", ".json") if name == "FACT" else out / name
    damage(path)

    def never(*a, **k):
        raise AssertionError("the model must not be loaded for a corrupt run")

    monkeypatch.setattr("lakn.models.load_model", never)
    for command in (["evaluate", out, "--model", model_dir], ["plot", out]):
        err = _error(command, capsys)
        assert str(path) in err and words in err, err
    assert not (out / "figures").exists() and not (out / "eval.json").exists()


def test_result_load_checks_every_file(finished_run):
    from lakn.results import LocalizationResult, RunFolderError

    out, neurons = finished_run
    assert LocalizationResult.load(out).neurons_json() == neurons
    meta_path = _fact_file(out, "capital_france", ".json")
    spain = _fact_file(out, "capital_spain", ".json").read_bytes()
    meta_path.write_bytes(spain)
    with pytest.raises(RunFolderError, match="holds fact 'capital_spain', not 'capital_france'"):
        LocalizationResult.load(out)


# --------------------------------------------------------------------------- overlapping edits


@pytest.mark.parametrize("order", ["first_made_first", "last_made_first"])
def test_overlapping_edits_undone_in_any_order_restore_the_weights_bit_for_bit(tiny_llama, order):
    from lakn import Fact
    from lakn.editing import edit_fact, w_out

    fact = Fact.from_dict({"fact_id": "f", "relation": "capital", "object": {"en": "Paris"},
                           "queries": {"en": ["The capital of France is [Y]"]}})
    n_layers = int(tiny_llama.cfg.n_layers)
    before = [w_out(tiny_llama, l)[0].detach().clone() for l in range(n_layers)]
    a = edit_fact(tiny_llama, fact, {"en": "Rome"}, [(0, 1), (1, 2), (1, 3)], steps=2)
    after_a = [w_out(tiny_llama, l)[0].detach().clone() for l in range(n_layers)]
    b = edit_fact(tiny_llama, fact, {"en": "Tokyo"}, [(1, 3), (1, 4), (0, 1)], steps=2)  # shares (0, 1), (1, 3)
    assert not torch.equal(w_out(tiny_llama, 1)[0], after_a[1])
    first, second = (a, b) if order == "first_made_first" else (b, a)
    first.undo()
    if first is b:  # undoing the newest edit leaves exactly the state before it
        assert all(torch.equal(w_out(tiny_llama, l)[0], after_a[l]) for l in range(n_layers))
    second.undo()
    assert all(torch.equal(w_out(tiny_llama, l)[0], before[l]) for l in range(n_layers))
    a.redo()
    b.redo()
    a.undo()
    b.undo()
    assert all(torch.equal(w_out(tiny_llama, l)[0], before[l]) for l in range(n_layers))
    assert tiny_llama.__dict__.get("_lakn_edits") == []


def test_environment_is_clean():
    """No test above left a literal '~' folder or an evil file in the repository."""
    root = Path(__file__).resolve().parents[1]
    assert not (root / "~").exists() and not list(root.glob("**/evil.json"))
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_resume_through_the_api_warns_recomputes_only_the_bad_fact_and_records_it(tiny_llama, toy_facts, tmp_path,
                                                                                  monkeypatch):
    from lakn import attribution, localize
    from lakn.results import LocalizationResult, RunFolderWarning

    settings = dict(languages=["en"], steps=2, progress=False, out=tmp_path)
    first = localize(tiny_llama, toy_facts, **settings)
    assert first.recomputed == []
    path = _fact_file(tmp_path, "capital_italy", ".safetensors")
    path.write_bytes(b"\0" * 10)
    calls = {"n": 0}
    real = attribution.answer_stats

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "answer_stats", counting)
    with pytest.warns(RunFolderWarning, match=f"{re.escape(str(path))} fails its checksum.*recomputing fact "
                                              "'capital_italy'"):
        resumed = localize(tiny_llama, toy_facts, **settings)
    assert calls["n"] == 2  # the one bad fact's two English queries
    assert resumed.lakn == first.lakn
    assert [r["fact_id"] for r in resumed.recomputed] == ["capital_italy"]
    assert LocalizationResult.load(tmp_path).recomputed == resumed.recomputed
