"""Fact records, loaders and validation: every bad input names its problem."""

import json

import pytest

from lakn.facts import Fact, FactsError, check_languages, common_languages, load_facts, select_facts


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _record(**over):
    rec = {"fact_id": "f1", "relation": "capital", "object": {"en": "Paris", "zh": "巴黎"},
           "queries": {"en": ["The capital of France is [Y].", "[Y] is the capital of France"],
                       "zh": ["法国的首都是[Y]"]}}
    rec.update(over)
    return rec


def test_queries_split_prompt_answer_and_separator():
    fact = Fact.from_dict(_record())
    (en,) = fact.queries("en")  # the second query has its slot first: not usable by a causal LM
    assert (en.prompt, en.separator, en.continuation) == ("The capital of France is", " ", " Paris")
    (zh,) = fact.queries("zh")
    assert (zh.prompt, zh.separator, zh.continuation) == ("法国的首都是", "", "巴黎")
    assert len(fact.queries("en", causal=False)) == 2


def test_causal_ok_indices_are_respected():
    fact = Fact.from_dict(_record(causal_ok={"en": [], "zh": [0]}))
    assert fact.queries("en") == []
    assert [q.prompt for q in fact.queries("zh")] == ["法国的首都是"]


@pytest.mark.parametrize(
    "queries, message",
    [({"en": ["The capital of France is"]}, "no answer slot"),
     ({"en": ["[Y] is the capital of [Y]"]}, "2 answer slots"),
     ({"xx": ["Capital [Y]"]}, "unknown language code"),
     ({"en": "The capital of France is [Y]", "de": ["Die Hauptstadt ist [Y]"]}, "no answer .* in 'de'")],
)
def test_bad_queries_are_named(queries, message):
    with pytest.raises(FactsError, match=message):
        Fact.from_dict(_record(queries=queries))


def test_load_jsonl_reports_line_of_malformed_json(tmp_path):
    good = json.dumps(_record(), ensure_ascii=False)
    path = _write(tmp_path, "facts.jsonl", good + "\n" + '{"fact_id": "f2", "object": {\n')
    with pytest.raises(FactsError, match=r"line 2"):
        load_facts(path)


def test_load_json_list_and_errors(tmp_path):
    path = _write(tmp_path, "facts.json", json.dumps([_record(), _record(fact_id="f2")]))
    assert [f.fact_id for f in load_facts(path)] == ["f1", "f2"]
    with pytest.raises(FactsError, match="empty"):
        load_facts(_write(tmp_path, "empty.jsonl", "\n \n"))
    with pytest.raises(FactsError, match="not found"):
        load_facts(tmp_path / "missing.jsonl")
    with pytest.raises(FactsError, match="appears twice"):
        load_facts(_write(tmp_path, "dup.json", json.dumps([_record(), _record()])))
    with pytest.raises(FactsError, match="line 1, column"):
        load_facts(_write(tmp_path, "bad.json", "[{]"))


def test_select_facts_validates_request(toy_facts):
    with pytest.raises(FactsError, match="unknown or unsupported language code.*'xx'"):
        select_facts(toy_facts, languages=["en", "xx"])
    with pytest.raises(FactsError, match="asked for 9 facts but the data holds only 4"):
        select_facts(toy_facts, n_facts=9)
    chosen, langs = select_facts(toy_facts, n_facts=2)
    assert [f.fact_id for f in chosen] == ["capital_france", "capital_spain"]
    assert langs == ["en", "fr", "zh"]


def test_missing_language_is_an_error_unless_dropped(toy_facts):
    extra = Fact.from_dict(_record(fact_id="only_en", queries={"en": ["The capital of France is [Y]"]}))
    facts = toy_facts + [extra]
    with pytest.raises(FactsError, match=r"only_en \(zh\)"):
        select_facts(facts, languages=["en", "zh"])
    chosen, _ = select_facts(facts, languages=["en", "zh"], drop_incomplete=True)
    assert "only_en" not in [f.fact_id for f in chosen]
    assert common_languages(facts) == ["en"]


def test_check_languages():
    assert check_languages(["en", "zh"]) == ["en", "zh"]
    with pytest.raises(FactsError, match="no languages"):
        check_languages([])


def test_demo_set_shape():
    facts = load_facts("demo")
    assert len(facts) >= 40
    assert len({f.relation for f in facts}) >= 5
    langs = common_languages(facts)
    assert len(langs) >= 6
    from lakn.facts import LANGUAGES

    assert len({LANGUAGES[l][1] for l in langs}) >= 3
    assert all(len(f.queries(l)) >= 3 for f in facts for l in langs)


def test_shared_rml_data_loads(shared_data):
    facts = load_facts(shared_data / "facts.tiny.jsonl")
    assert len(facts) == 48
    multi = [f for f in facts if f.causal_ok is not None]
    assert multi, "causal_ok is read"
    fact = facts[0]
    for lang in fact.languages:
        for q in fact.queries(lang):
            assert "[Y]" not in q.prompt and q.answer == fact.answers[lang]


def test_full_shared_rml_data_and_shipped_sets_load_strictly(shared_data):
    from lakn.facts import safe_file_stem

    facts = load_facts(shared_data / "facts.jsonl")
    assert len(facts) == 1152
    assert len({safe_file_stem(f.fact_id) for f in facts}) == 1152
    assert len(load_facts("demo")) == 57 and len(load_facts("fictional")) == 10
