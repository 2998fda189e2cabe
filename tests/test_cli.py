"""The command line end to end on a tiny local model folder: outputs, summaries and one-line errors."""

import json
from pathlib import Path

import pytest

from lakn.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lakn.testing import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    save_tiny_model(folder, "gpt2")
    return folder


@pytest.fixture
def data_file(tmp_path, toy_facts):
    path = tmp_path / "facts.jsonl"
    rows = [{"fact_id": f.fact_id, "relation": f.relation, "object": f.answers,
             "queries": {k: list(v) for k, v in f.templates.items()}} for f in toy_facts]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_localize_then_plot(model_dir, data_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["localize", "--out", str(out), "--model", str(model_dir), "--data", str(data_file),
            "--languages", "en,zh", "--n-facts", "3", "--steps", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "facts done: 3" in text and "LAKNs per fact" in text
    neurons = json.loads((out / "neurons.json").read_text())
    assert list(neurons) == ["capital_france", "capital_spain", "capital_italy"]
    assert set(neurons["capital_france"]["language_specific"]) == {"en", "zh"}
    # the same command again resumes: nothing to compute, same output
    assert main(args) == 0
    assert json.loads((out / "neurons.json").read_text()) == neurons
    assert main(["plot", str(out)]) == 0
    paths = [p for p in capsys.readouterr().out.split() if p.endswith(".html")]
    written = sorted(p.name for p in (out / "figures").glob("*.html"))
    assert len(paths) >= 4 and sorted(Path(p).name for p in paths) == written
    assert all(Path(p).is_file() and Path(p).parent == out / "figures" for p in paths)


@pytest.mark.parametrize(
    "extra, message",
    [(["--languages", "en,xx"], "unknown or unsupported language code"),
     (["--n-facts", "99"], "asked for 99 facts but the data holds only 4"),
     (["--model", "missing/dir/model"], "model path not found"),
     (["--model", "missing.gguf"], "GGUF model file not found")],
)
def test_bad_input_gives_one_line_error(model_dir, data_file, tmp_path, capsys, extra, message):
    args = ["localize", "--out", str(tmp_path / "r"), "--model", str(model_dir), "--data", str(data_file), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_steps_zero_and_bad_json_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["localize", "--out", str(tmp_path / "r"), "--steps", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"fact_id": "a"}\n{oops\n')
    with pytest.raises(SystemExit):
        main(["localize", "--out", str(tmp_path / "r"), "--data", str(bad)])
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and ("line 1" in err or "line 2" in err)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SystemExit):
        main(["localize", "--out", str(tmp_path / "r"), "--data", str(empty)])
    assert "is empty" in capsys.readouterr().err


def test_plot_of_missing_run_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2


def test_old_option_names_still_work_with_a_warning(model_dir, data_file, tmp_path, capsys):
    """--facts (a count for localize) and --queries are the old names of --n-facts and --max-queries."""
    out = tmp_path / "run"
    assert main(["localize", "--out", str(out), "--model", str(model_dir), "--data", str(data_file),
                 "--languages", "en", "--facts", "2", "--queries", "1", "--steps", "1"]) == 0
    captured = capsys.readouterr()
    assert "--facts is deprecated" in captured.err and "use --n-facts" in captured.err
    assert "--queries is deprecated" in captured.err and "use --max-queries" in captured.err
    config = json.loads((out / "config.json").read_text())
    assert config["fact_ids"] == ["capital_france", "capital_spain"] and config["max_queries"] == 1


def test_localize_options_come_from_the_run_config(capsys):
    from lakn.cli import build_parser
    from lakn.config import CHOICES, RunConfig

    parser = build_parser()
    args = parser.parse_args(["localize", "--out", "x"])
    defaults = RunConfig()
    for f in RunConfig.options():  # every option's default is the configuration's
        assert getattr(args, f.name) == getattr(defaults, f.name), f.name
    for name in ("method", "attribution", "specificity", "reference"):
        with pytest.raises(SystemExit):
            parser.parse_args(["localize", "--out", "x", f"--{name}", "nope"])
        err = capsys.readouterr().err
        assert all(choice in err for choice in CHOICES[name]), name
