"""The RML-LAMA builder (lakn.rml): on a synthetic mParaRel tree written here (always runs) and on the
shared mParaRel extract (skips when absent)."""

import json
from pathlib import Path

import pytest

import lakn
from lakn.facts import Fact, select_facts
from lakn.rml import RMLError, build_rml, is_causal, mpararel_languages, resolve_languages

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mpararel_sample"

PATTERNS = {
    "en": {
        "P17": ["[X] is located in [Y]", "[X]  is located in   [Y]",  # duplicate after whitespace
                "[X] is located in [Y] .", "[Y] is where [X] is", "", "[X] [Y]", "[X] is in [Y] or [Y]",
                "[X], in [Y]"],
        "P1376": ["[X] is the capital of [Y]", "[X], the capital of [Y]", "the capital of [Y] is [X]"],
    },
    "fr": {
        "P17": ["[X] est situé en [Y]", "[X] se trouve en [Y]", "[Y] contient [X]"],
        "P1376": ["[X] est la capitale de [Y]", "[X], capitale de [Y]"],
    },
    "zh-hans": {"P17": ["[X]位于[Y]", "[X]在[Y]。", "[Y]包含[X]"], "P1376": ["[X]是[Y]的首都", "[X]是这个国家的首都：[Y]"]},
    "zh-hant": {"P17": ["[X]位於[Y]", "[X]在[Y]"], "P1376": ["[X]是[Y]的首都"]},
    "is": {"P17": ["[X] er í [Y]"], "P1376": ["[X] er höfuðborg [Y]"]},
}
# (relation, lineid, sub_uri, obj_uri, {folder: (sub_label, obj_label)})
TUPLES = [
    ("P17", 0, "Q90", "Q142", {"en": ("Paris", "France"), "fr": ("Paris", "France"), "zh-hans": ("巴黎", "法国"),
                               "zh-hant": ("巴黎", "法國"), "is": ("París", "Frakkland")}),
    ("P17", 1, "Q64", "Q183", {"en": ("Berlin", "Germany"), "fr": ("Berlin", "Allemagne"),
                               "zh-hans": ("柏林", "德国"), "zh-hant": ("柏林", "德國")}),
    ("P17", 2, "Q1", "Q2", {"en": ("Foo", "Bar")}),  # English only: too few languages
    ("P17", 3, "Q90", "Q70", {"en": ("Paris", "Elsewhere"), "fr": ("Paris", "Ailleurs")}),  # other gold object
    ("P17", 4, "Q5", "Q142", {"en": ("", "France"), "fr": ("Q5", "")}),  # empty labels
    ("P17", 5, "Q64", "Q183", {"en": ("Berlin", "Germany")}),  # duplicate tuple
    ("P1376", 0, "Q90", "Q142", {"en": ("Paris", "France"), "fr": ("Paris", "France"),
                                 "zh-hans": ("巴黎", "法国"), "zh-hant": ("巴黎", "法國"), "is": ("París", "Frakkland")}),
    ("P1376", 1, "Q220", "Q38", {"en": ("Rome", "Italy"), "fr": ("Rome", "Italie"), "zh-hans": ("罗马", "意大利")}),
]


def write_tree(root: Path, extra_subjects: int = 0, patterns=PATTERNS, tuples=TUPLES) -> Path:
    """A small mParaRel checkout in the repository's layout (data/mpararel_reviewed/...)."""
    base = root / "data" / "mpararel_reviewed"
    for folder, rels in patterns.items():
        for rel, pats in rels.items():
            f = base / "patterns" / folder / f"{rel}.jsonl"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("".join(json.dumps({"pattern": p, "checked-by-human": i == 0}, ensure_ascii=False) + "\n"
                                 for i, p in enumerate(pats)), encoding="utf-8")
    rows: dict[tuple[str, str], list[str]] = {}
    all_tuples = list(tuples) + [("P1376", 100 + i, f"Q{1000 + i}", f"Q{2000 + i}",
                                  {"en": (f"City{i}", f"Land{i}"), "fr": (f"Ville{i}", f"Pays{i}"),
                                   "zh-hans": (f"城{i}", f"国{i}")}) for i in range(extra_subjects)]
    for rel, lineid, sub, obj, labels in all_tuples:
        for folder, (sl, ol) in labels.items():
            rows.setdefault((folder, rel), []).append(json.dumps(
                {"sub_uri": sub, "obj_uri": obj, "obj_label": ol, "sub_label": sl, "lineid": lineid}, ensure_ascii=False))
    for (folder, rel), lines in rows.items():
        f = base / "tuples" / folder / f"{rel}.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "mpararel")


def test_synthetic_build_counts_and_records(tree, tmp_path):
    report = build_rml(tree, tmp_path / "out", languages=["en", "fr", "zh"], min_paraphrases=1)
    recs = {r["fact_id"]: r for r in read(report.facts_path)}
    assert sorted(recs) == ["P1376_Q220", "P1376_Q90", "P17_Q64", "P17_Q90"]
    assert report.n_facts == 4 and report.languages == {"en": "en", "fr": "fr", "zh": "zh-hans"}
    paris = recs["P17_Q90"]
    assert paris["relation_label"] == "country" and paris["relation_type"] == "N-1"
    assert paris["languages"] == ["en", "fr", "zh"] and paris["obj_uri"] == "Q142"
    assert paris["subject"] == {"en": "Paris", "fr": "Paris", "zh": "巴黎"}
    assert paris["object"] == {"en": "France", "fr": "France", "zh": "法国"}
    # subject filled in, [Y] kept; duplicate, empty and bad-slot templates dropped
    assert paris["queries"]["en"] == ["Paris is located in [Y]", "Paris is located in [Y] .", "[Y] is where Paris is",
                                      "Paris, in [Y]"]
    assert paris["queries"]["zh"] == ["巴黎位于[Y]", "巴黎在[Y]。", "[Y]包含巴黎"]
    # causal_ok: slot last, closing punctuation aside
    assert paris["causal_ok"] == {"en": [0, 1, 3], "fr": [0, 1], "zh": [0, 1]}
    # the second object of the same subject is another gold answer, per language
    assert paris["other_gold_objects"] == {"en": ["Elsewhere"], "fr": ["Ailleurs"]}
    assert paris["other_gold_obj_uris"] == ["Q70"]
    assert "other_gold_objects" not in recs["P17_Q64"]
    # every skip is counted by reason
    s = report.skipped
    assert s["duplicate template"] == 1
    assert s["empty template"] == 2  # "" and "[X] [Y]"
    assert s["template without exactly one [X] and one [Y]"] == 1
    assert s["tuple with an empty subject label"] == 1 and s["tuple with an empty object label"] == 1
    assert s["duplicate tuple"] == 1
    assert s["fact with fewer than min_languages languages"] == 1  # P17_Q1, English only
    assert any("patterns/en/P17.jsonl:2" in e for e in report.examples["duplicate template"])
    sheet = Path(report.datasheet_path).read_text(encoding="utf-8")
    for text in ("CC BY-NC-SA 4.0", "Fierro", "Kassner", "Elazar", "duplicate template", "| en | English | Latin | 4 |",
                 "zh ← zh-hans"):
        assert text in sheet
    assert json.loads(Path(tmp_path / "out" / "build.json").read_text())["n_facts"] == 4


def test_causal_ok_matches_fact_queries(tree, tmp_path):
    report = build_rml(tree, tmp_path / "out", languages=["en", "fr", "zh"], min_paraphrases=1, causal=False)
    for rec in read(report.facts_path):
        for lang, queries in rec["queries"].items():
            free = Fact(rec["fact_id"], rec["relation"], {lang: "x"}, {lang: tuple(queries)})  # no causal_ok given
            kept = [q.template for q in free.queries(lang, causal=True)]
            assert [queries[i] for i in rec["causal_ok"][lang]] == kept
            assert len(set(queries)) == len(queries) and all(q.count("[Y]") == 1 and "[X]" not in q for q in queries)
    assert is_causal("a [Y] .") and is_causal("a [Y]」") and not is_causal("[Y] is a")


def test_min_paraphrases_counts_causal_queries(tree, tmp_path):
    # P17 has >= 2 causal templates in en, fr and zh; P1376 has only 1 in zh ("[X]是[Y]的首都" goes on after the slot)
    strict = build_rml(tree, tmp_path / "a", languages=["en", "fr", "zh"], min_paraphrases=2)
    loose = build_rml(tree, tmp_path / "b", languages=["en", "fr", "zh"], min_paraphrases=2, causal=False)
    assert strict.n_facts < loose.n_facts
    assert strict.skipped["(fact, language) with fewer than min_paraphrases causal queries"] >= 1
    for rec in read(strict.facts_path):
        assert all(len(rec["causal_ok"][lang]) >= 2 for lang in rec["languages"])


def test_built_facts_load_select_and_localize(tree, tmp_path, tiny_llama):
    report = build_rml(tree, tmp_path / "out", languages=["en", "fr", "zh"], min_paraphrases=1)
    facts = lakn.load_facts(report.facts_path)
    assert len(facts) == report.n_facts
    chosen, langs = select_facts(facts, languages=["en", "fr", "zh"])
    assert langs == ["en", "fr", "zh"] and len(chosen) == len(facts)
    paris = {f.fact_id: f for f in facts}["P17_Q90"]
    assert paris.other_answers == {"en": ("Elsewhere",), "fr": ("Ailleurs",)}
    assert [q.prompt for q in paris.queries("en")] == ["Paris is located in", "Paris is located in", "Paris, in"]
    result = lakn.localize(tiny_llama, chosen[:1], languages=langs, steps=1, attribution="approx", progress=False)
    assert result.fact_ids == [chosen[0].fact_id]
    assert result.records[chosen[0].fact_id].laa.shape == (tiny_llama.cfg.n_layers, tiny_llama.cfg.d_mlp)


def test_languages_mapping_and_errors(tree, tmp_path):
    avail = mpararel_languages(tree)
    assert avail == ["en", "fr", "is", "zh-hans", "zh-hant"]
    assert resolve_languages(["en", "zh-hant"], avail)[0] == {"en": "en", "zh": "zh-hant"}
    assert resolve_languages(["zh-hans"], avail)[0] == {"zh": "zh-hans"}
    chosen, left_out = resolve_languages("all", avail)
    assert chosen == {"en": "en", "fr": "fr", "zh": "zh-hans"} and left_out == ["is", "zh-hant"]
    with pytest.raises(RMLError, match="unknown language 'xx'"):
        build_rml(tree, tmp_path / "o", languages=["en", "xx"])
    with pytest.raises(RMLError, match="'is' has no lakn language code"):
        build_rml(tree, tmp_path / "o", languages=["en", "is"])
    with pytest.raises(RMLError, match="requested twice"):
        build_rml(tree, tmp_path / "o", languages=["en", "fr", "en"])
    with pytest.raises(RMLError, match="not both"):
        build_rml(tree, tmp_path / "o", languages=["zh", "zh-hant"])
    with pytest.raises(RMLError, match="'de'.*not in this mParaRel checkout"):
        build_rml(tree, tmp_path / "o", languages=["en", "de"])
    with pytest.raises(RMLError, match="P999"):
        build_rml(tree, tmp_path / "o", languages=["en"], relations=["P999"])
    with pytest.raises(RMLError, match="not an mParaRel checkout"):
        build_rml(tmp_path, tmp_path / "o", languages=["en"])
    # traditional script, written as zh
    report = build_rml(tree, tmp_path / "hant", languages=["en", "zh-hant"], min_paraphrases=1)
    paris = {r["fact_id"]: r for r in read(report.facts_path)}["P17_Q90"]
    assert paris["queries"]["zh"] == ["巴黎位於[Y]", "巴黎在[Y]"] and paris["object"]["zh"] == "法國"
    # an existing output is not replaced unless asked
    with pytest.raises(RMLError, match="exists"):
        build_rml(tree, tmp_path / "hant", languages=["en", "zh-hant"], min_paraphrases=1)
    build_rml(tree, tmp_path / "hant", languages=["en", "zh-hant"], min_paraphrases=1, overwrite=True)
    # a .jsonl target writes the datasheet beside it
    report = build_rml(tree, tmp_path / "x" / "set.jsonl", languages=["en"], min_paraphrases=1)
    assert Path(report.datasheet_path).name == "set.DATASHEET.md" and Path(report.datasheet_path).is_file()


@pytest.mark.parametrize("bad_line, problem", [
    ("{not json", "malformed JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"sub_uri": "Q9", "obj_uri": "Q8", "sub_label": "X"}', "missing field"),
])
def test_malformed_lines_error_with_file_and_line_or_are_counted(tree, tmp_path, bad_line, problem):
    f = tree / "data" / "mpararel_reviewed" / "tuples" / "fr" / "P17.jsonl"
    lines = f.read_text(encoding="utf-8").splitlines()
    lines.insert(2, bad_line)
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(RMLError, match=rf"tuples/fr/P17\.jsonl:3: {problem}"):
        build_rml(tree, tmp_path / "o", languages=["en", "fr"], min_paraphrases=1)
    report = build_rml(tree, tmp_path / "o", languages=["en", "fr"], min_paraphrases=1, on_malformed="skip")
    assert report.skipped["malformed tuple line"] == 1
    assert report.examples["malformed tuple line"][0].startswith("tuples/fr/P17.jsonl:3 (")
    assert "malformed tuple line" in Path(report.datasheet_path).read_text(encoding="utf-8")
    p = tree / "data" / "mpararel_reviewed" / "patterns" / "en" / "P1376.jsonl"
    p.write_text(p.read_text(encoding="utf-8") + '{"template": "[X] [Y]"}\n', encoding="utf-8")
    with pytest.raises(RMLError, match=r"patterns/en/P1376\.jsonl:4: no string field 'pattern'"):
        build_rml(tree, tmp_path / "o", languages=["en"], min_paraphrases=1, overwrite=True)


def test_cap_is_deterministic_for_a_seed(tmp_path):
    tree = write_tree(tmp_path / "m", extra_subjects=30)
    kw = dict(languages=["en", "fr", "zh"], min_paraphrases=1, per_relation_cap=5, relations=["P1376"])
    a = build_rml(tree, tmp_path / "a", seed=0, **kw)
    b = build_rml(tree, tmp_path / "b", seed=0, **kw)
    c = build_rml(tree, tmp_path / "c", seed=1, **kw)
    assert Path(a.facts_path).read_bytes() == Path(b.facts_path).read_bytes()
    assert a.n_facts == 5 and a.skipped["fact over per_relation_cap (not sampled)"] == 27
    assert [r["fact_id"] for r in read(a.facts_path)] != [r["fact_id"] for r in read(c.facts_path)]
    # the sample of one relation does not depend on which other relations are built
    d = build_rml(tree, tmp_path / "d", seed=0, **{**kw, "relations": ["P17", "P1376"]})
    assert [r for r in read(d.facts_path) if r["relation"] == "P1376"] == read(a.facts_path)


def test_human_checked_only_and_required_languages(tree, tmp_path):
    r = build_rml(tree, tmp_path / "h", languages=["en", "fr"], min_paraphrases=1, causal=False, human_checked_only=True)
    assert all(len(rec["queries"][lang]) == 1 for rec in read(r.facts_path) for lang in rec["languages"])
    assert r.skipped["template not checked by a human (human_checked_only)"] > 0
    r = build_rml(tree, tmp_path / "r", languages=["en", "fr", "zh"], min_languages=1, min_paraphrases=1,
                  required_languages=["zh"])
    assert all("zh" in rec["languages"] for rec in read(r.facts_path))
    assert r.skipped["fact without a required language"] == 1  # P17_Q1 (English only)


# --------------------------------------------------------------------------- the shared mParaRel extract

needs_sample = pytest.mark.skipif(not (SAMPLE / "data" / "mpararel_reviewed").is_dir(),
                                  reason=f"shared mParaRel extract not found at {SAMPLE}")


@needs_sample
def test_sample_english_counts(tmp_path):
    root = SAMPLE / "data" / "mpararel_reviewed"
    report = build_rml(SAMPLE, tmp_path / "en", languages=["en"], min_paraphrases=1, causal=False)
    recs = read(report.facts_path)
    for rel in report.relations:
        subjects = {json.loads(l)["sub_uri"] for l in (root / "tuples" / "en" / f"{rel}.jsonl").read_text().splitlines()}
        patterns = {json.loads(l)["pattern"] for l in (root / "patterns" / "en" / f"{rel}.jsonl").read_text().splitlines()}
        got = [r for r in recs if r["relation"] == rel]
        assert len(got) == len(subjects) == report.per_relation[rel]["facts"]
        assert all(len(r["queries"]["en"]) == len(patterns) for r in got)
    assert report.n_facts == len(recs) == 80 * 7 + 78
    jerusalem = {r["fact_id"]: r for r in recs}["P1376_Q1218"]
    assert jerusalem["obj_uri"] == "Q48685" and jerusalem["other_gold_obj_uris"] == ["Q801"]
    assert report.skipped == {}


@needs_sample
def test_sample_multilingual_build_loads_and_selects(tmp_path):
    langs = ["en", "fr", "zh", "ru", "ar", "ja"]
    report = build_rml(SAMPLE, tmp_path / "ml", languages=langs, min_languages=6, min_paraphrases=1,
                       per_relation_cap=10, seed=0)
    facts = lakn.load_facts(report.facts_path)
    assert 0 < len(facts) == report.n_facts <= 10 * len(report.relations)
    chosen, got = select_facts(facts, languages=langs)
    assert got == langs and len(chosen) == len(facts)
    again = build_rml(SAMPLE, tmp_path / "ml2", languages=langs, min_languages=6, min_paraphrases=1,
                      per_relation_cap=10, seed=0)
    assert Path(report.facts_path).read_bytes() == Path(again.facts_path).read_bytes()
    everything = build_rml(SAMPLE, tmp_path / "all", languages="all", min_languages=1, min_paraphrases=1)
    assert "is" in everything.left_out_folders and "zh-hant" in everything.left_out_folders
    assert len(everything.languages) == 44


# --------------------------------------------------------------------------- command line


def test_cli_data_build(tree, tmp_path, capsys):
    from lakn.cli import main

    out = tmp_path / "cli"
    args = ["data", "build", str(tree), str(out), "--languages", "en,fr,zh", "--min-paraphrases", "1",
            "--relations", "P17,P1376", "--per-relation-cap", "5", "--seed", "3"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "facts, 2 relations" in text and "DATASHEET.md" in text
    api = build_rml(tree, tmp_path / "api", languages=["en", "fr", "zh"], min_paraphrases=1,
                    relations=["P17", "P1376"], per_relation_cap=5, seed=3)
    assert (out / "facts.jsonl").read_bytes() == Path(api.facts_path).read_bytes()  # same as the Python call
    assert len(lakn.load_facts(out / "facts.jsonl")) == api.n_facts
    with pytest.raises(SystemExit) as exit_info:  # an existing output, then a bad language: one-line errors
        main(args)
    assert exit_info.value.code == 2 and "exists; pass overwrite=True" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", str(tree), str(tmp_path / "x"), "--languages", "en,xx"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("lakn: error: unknown language 'xx'") and err.count("\n") == 1
