"""The known-fact filter (lakn.known): batched ranks and probabilities, thresholds, the filter, files."""

import json
import math

import pytest
import torch

import lakn
from lakn.known import KnownTable, KnownTableError, batch_answer_stats, filter_known, select_known
from lakn.probability import answer_stats
from lakn.tokens import encode_query


@pytest.fixture(scope="module")
def demo():
    return lakn.load_facts("demo")[:5]


@pytest.fixture(scope="module")
def table(tiny_llama, demo):
    return select_known(tiny_llama, demo, top_k=10, data="demo")


def _query(fact, lang, index):
    (q,) = [q for q in fact.queries(lang) if q.template == fact.templates[lang][index]][:1]
    return q


def test_rows_equal_answer_stats(tiny_llama, demo, table):
    by_id = {f.fact_id: f for f in demo}
    expected_rows = sum(len(f.queries(lang)) for f in demo for lang in f.languages)
    assert len(table) == expected_rows == table.config["n_queries"]
    for row in table.rows:
        fact = by_id[row["fact_id"]]
        q = _query(fact, row["language"], row["query_index"])
        assert row["query"] == q.template and row["answer"] == q.answer
        enc = encode_query(tiny_llama, q)
        stats = answer_stats(tiny_llama, enc)
        assert row["first_token_rank"] == stats.rank
        assert row["first_token_prob"] == pytest.approx(float(stats.token_probs[0]), rel=1e-4, abs=1e-7)
        assert row["answer_prob"] == pytest.approx(stats.probability, rel=1e-4, abs=1e-7)
        assert row["answer_tokens"] == len(enc.answer)
        assert row["known"] == (stats.rank < 10)
    assert table.config["model"] == "tiny-llama" and table.config["top_k"] == 10 and table.config["data"] == "demo"


def test_batching_does_not_change_numbers(tiny_llama, demo):
    encoded = [encode_query(tiny_llama, q) for f in demo for lang in ("en", "zh", "ar") for q in f.queries(lang)]
    one = batch_answer_stats(tiny_llama, encoded, batch_size=1)
    many = batch_answer_stats(tiny_llama, encoded, batch_size=7)
    for a, b in zip(one, many):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-7)
    first_p, ranks, full_p = batch_answer_stats(tiny_llama, encoded, batch_size=5, full_answer=False)
    assert torch.equal(ranks, one[1]) and torch.allclose(first_p, one[0], rtol=1e-4, atol=1e-7)
    assert torch.equal(full_p, first_p)  # first-token-only: the answer's probability is its first token's
    assert any(len(e.answer) > 1 for e in encoded)  # multi-token answers were teacher forced
    assert all(len(x) == 0 for x in batch_answer_stats(tiny_llama, []))


def test_filter_keeps_exactly_the_rows_under_top_k(demo, table):
    ranks = sorted(r["first_token_rank"] for r in table.rows)
    k = ranks[len(ranks) // 2]  # about half known
    known_rows = [r for r in table.rows if r["first_token_rank"] < k]
    assert 0 < len(known_rows) < len(table)
    assert table.known_queries(top_k=k) == {(r["fact_id"], r["language"], r["query_index"]) for r in known_rows}
    kept = table.filter_facts(demo, top_k=k)
    by_id = {f.fact_id: f for f in demo}
    assert [f.fact_id for f in kept] == [f.fact_id for f in demo if any(r["fact_id"] == f.fact_id for r in known_rows)]
    got = {(f.fact_id, lang, t) for f in kept for lang in f.languages for t in f.templates[lang]}
    want = {(r["fact_id"], r["language"], by_id[r["fact_id"]].templates[r["language"]][r["query_index"]])
            for r in known_rows}
    assert got == want
    for f in kept:  # a kept fact's queries are usable and are exactly its known ones
        for lang in f.languages:
            assert [q.template for q in f.queries(lang)] == list(f.templates[lang])
            assert f.answers[lang] == by_id[f.fact_id].answers[lang]
    # min_languages / min_queries / rules
    per = table.known_languages(top_k=k)
    assert table.known_fact_ids(top_k=k, min_languages=2) == [fid for fid, ls in per.items() if len(ls) >= 2]
    assert table.known_fact_ids(top_k=10 ** 9, min_languages=None) == [f.fact_id for f in demo]
    assert table.known_queries(rule="prob", min_prob=0.0) == table.known_queries(top_k=10 ** 9)
    p = sorted(r["answer_prob"] for r in table.rows)[len(table) // 2]
    assert table.known_queries(rule="prob", min_prob=p) == {
        (r["fact_id"], r["language"], r["query_index"]) for r in table.rows if r["answer_prob"] >= p}
    both = table.known_queries(rule="both", top_k=k, min_prob=p)
    assert both == table.known_queries(top_k=k) & table.known_queries(rule="prob", min_prob=p)
    with pytest.raises(ValueError, match="min_prob"):
        table.known_queries(rule="prob")
    whole = table.filter_facts(demo, top_k=k, restrict_queries=False)
    assert [f.fact_id for f in whole] == [f.fact_id for f in kept] and whole[0] is by_id[whole[0].fact_id]
    summary = table.summary()
    assert summary["queries"].sum() == len(table) and summary["known"].sum() == sum(r["known"] for r in table.rows)


def test_filter_reindexes_causal_ok():
    fact = lakn.Fact.from_dict({"fact_id": "f", "relation": "r", "object": {"en": "Paris"},
                                "queries": {"en": ["[Y] is it", "It is [Y]", "So: [Y]"]}, "causal_ok": {"en": [1, 2]}})
    rows = [dict(fact_id="f", relation="r", language="en", query_index=i, query=fact.templates["en"][i], answer="Paris",
                 answer_tokens=1, first_token="P", first_token_rank=rank, first_token_prob=0.1, answer_prob=0.1,
                 known=rank < 10) for i, rank in ((1, 50), (2, 3))]
    (kept,) = KnownTable(rows, {"top_k": 10}).filter_facts([fact])
    assert kept.templates == {"en": ("So: [Y]",)} and kept.causal_ok == {"en": (0,)}
    assert [q.prompt for q in kept.queries("en")] == ["So:"]


def test_save_load_round_trip(tmp_path, table):
    for name in ("known.jsonl", "known.csv"):
        path = table.save(tmp_path / name)
        back = KnownTable.load(path)
        assert back.rows == table.rows and back.config == table.config
    header = json.loads((tmp_path / "known.jsonl").read_text().splitlines()[0])
    assert header["kind"] == "KnownTable" and header["format"] == 1
    assert filter_known(lakn.load_facts("demo")[:5], tmp_path / "known.jsonl") == table.filter_facts(
        lakn.load_facts("demo")[:5])
    df = table.to_dataframe()
    assert len(df) == len(table) and list(df.columns)[:3] == ["fact_id", "relation", "language"]
    assert not any(math.isnan(x) for x in df["answer_prob"])


def test_load_errors_name_file_and_line(tmp_path, table, demo):
    path = table.save(tmp_path / "known.jsonl")
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + ["{oops"] + lines[3:]) + "\n")
    with pytest.raises(KnownTableError, match=r"bad\.jsonl:3: malformed JSON"):
        KnownTable.load(bad)
    bad.write_text("\n".join(['{"kind": "Other"}'] + lines[1:]) + "\n")
    with pytest.raises(KnownTableError, match="not a lakn known table"):
        KnownTable.load(bad)
    # a table applied to other data is refused
    other = [lakn.Fact.from_dict({"fact_id": demo[0].fact_id, "relation": "x", "object": {"en": "A"},
                                  "queries": {"en": ["changed [Y]"] * 4}})]
    with pytest.raises(KnownTableError, match="other data"):
        table.filter_facts(other)


def test_masked_model_and_options(demo):
    from lakn.testing import tiny_model

    bert = tiny_model("bert", weight_scale=4.0)
    t = select_known(bert, demo[:1], languages=["en", "fr"], top_k=5)
    assert t.config["causal"] is False and {r["language"] for r in t.rows} == {"en", "fr"}
    for row in t.rows:
        q = [q for q in demo[0].queries(row["language"], causal=False)
             if q.template == demo[0].templates[row["language"]][row["query_index"]]][0]
        stats = answer_stats(bert, encode_query(bert, q))
        assert row["first_token_rank"] == stats.rank
        assert row["answer_prob"] == pytest.approx(stats.probability, rel=1e-4, abs=1e-7)
    t2 = select_known(bert, demo[:2], languages=["en"], max_queries=1, top_k=5)
    assert len(t2) == 2
    with pytest.raises(lakn.FactsError, match="unknown"):
        select_known(bert, demo, languages=["xx"])


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from lakn.testing import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny_llama")
    save_tiny_model(folder, "llama", weight_scale=4.0)
    return folder


def test_cli_data_known_then_evaluate_known(model_dir, tmp_path, capsys):
    from lakn.cli import main

    from pathlib import Path

    demo = Path(lakn.__file__).parent / "data" / "demo.jsonl"
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(demo.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    facts = lakn.load_facts(data)
    out = tmp_path / "known.jsonl"
    assert main(["data", "known", str(data), "--out", str(out), "--model", str(model_dir), "--languages", "en,fr",
                 "--top-k", "5"]) == 0
    text = capsys.readouterr().out
    assert "queries known (first answer token in the top 5)" in text and f"written: {out}" in text
    table = KnownTable.load(out)
    model = lakn.load_model(model_dir)
    again = select_known(model, facts, languages=["en", "fr"], top_k=5)
    assert [r["first_token_rank"] for r in table.rows] == [r["first_token_rank"] for r in again.rows]
    # about half the queries known: re-threshold the table at its median rank
    ranks = sorted(r["first_token_rank"] for r in table.rows)
    table.config["top_k"] = ranks[len(ranks) // 2]
    table.rows = [{**r, "known": r["first_token_rank"] < table.top_k} for r in table.rows]
    table.save(out)
    known = table.known_queries()
    assert 0 < len(known) < len(table)
    run = tmp_path / "run"
    lakn.localize(model, facts, languages=["en", "fr"], max_queries=1, steps=1, attribution="approx", out=run,
                  data=str(data), progress=False)
    assert main(["evaluate", str(run), "--model", str(model_dir), "--known", str(out), "--top-k-answer", "100000",
                 "--max-queries", "10"]) == 0
    assert "known table" in capsys.readouterr().out
    config = lakn.ChangeRateResult.load(run / "eval.json").config
    assert config["n_queries"] == len(known)  # only the known queries are measured ...
    seen = {(fid, q["language"], q["prompt"]) for fid, rec in lakn.LocalizationResult.load(run).records.items()
            for q in rec.queries}
    by_id = {f.fact_id: f for f in facts}
    prompts = {(fid, lang, _query(by_id[fid], lang, i).prompt) for fid, lang, i in known}
    split = config["queries_by_split"]
    assert split["seen"] == len(prompts & seen)  # ... seen ones stay seen, held-out paraphrases stay held out
    assert split["heldout_paraphrase"] == len(prompts - seen) > 0 and split["heldout_language"] == 0


def test_cli_localize_known_then_evaluate_has_no_false_change_warning(model_dir, tmp_path, capsys):
    """A run localised with --known hashed its facts after the filter; evaluate must compare the same view."""
    from pathlib import Path

    from lakn.cli import main

    demo = Path(lakn.__file__).parent / "data" / "demo.jsonl"
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(demo.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    out = tmp_path / "known.jsonl"
    assert main(["data", "known", str(data), "--out", str(out), "--model", str(model_dir), "--languages", "en,fr",
                 "--top-k", "100000"]) == 0
    table = KnownTable.load(out)  # mark one query of each fact unknown, so the filter changes the facts
    first = {}
    rows = []
    for r in table.rows:
        key = (r["fact_id"], r["language"])
        rows.append({**r, "known": key in first})
        first.setdefault(key, True)
    table.rows = rows
    table.save(out)
    run = tmp_path / "run"
    assert main(["localize", "--out", str(run), "--model", str(model_dir), "--data", str(data), "--known", str(out),
                 "--languages", "en,fr", "--steps", "1", "--attribution", "approx"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--model", str(model_dir), "--top-k-answer", "100000"]) == 0
    err = capsys.readouterr().err
    assert "changed" not in err, err
