"""Strict fact records (issue 16): safe ids, typed fields, bounded inputs, errors that name the place.

Every bad input is a one-line FactsError naming the file, the line, the fact and the field, and
quoting at most about 100 characters of the value; property tests check the loader never raises
anything else.
"""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakn.facts import (
    FACT_ID_PATTERN,
    LANGUAGES,
    MAX_QUERY_CHARS,
    SLOT,
    Fact,
    FactsError,
    Query,
    _quote,
    check_context_length,
    check_fact_id,
    load_facts,
    safe_file_stem,
)

BOUND = 400  # longest message any bad value may produce (the path of the file aside)


def _record(**over):
    rec = {"fact_id": "f1", "relation": "capital", "object": {"en": "Paris", "zh": "巴黎"},
           "queries": {"en": ["The capital of France is [Y]."], "zh": ["法国的首都是[Y]"]}}
    rec.update(over)
    return rec


def _jsonl(tmp_path, *records, name="facts.jsonl"):
    """Write records as JSON lines after one good record, so the bad one is on line 2."""
    path = tmp_path / name
    lines = [json.dumps(r) for r in (_record(fact_id="good"), *records)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _load_error(path, **kwargs) -> str:
    with pytest.raises(FactsError) as info:
        load_facts(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < BOUND + len(str(path)), message
    return message


@pytest.mark.parametrize("bad_id", ["../../evil", "/abs/evil", "a/b", "a\\b", ".hidden", "..", "-x", "a..b",
                                    "", " ", "x" * 129, "café", "a b", "a\nb"])
def test_unsafe_fact_ids_are_rejected_at_load_with_file_and_line(tmp_path, bad_id):
    path = _jsonl(tmp_path, _record(fact_id=bad_id))
    message = _load_error(path)
    assert f"{path}, line 2" in message
    if bad_id.strip():
        assert "field 'fact_id'" in message and "not an allowed fact id" in message
        assert "ASCII letters, digits" in message  # the rule is stated
    else:
        assert "has no 'fact_id'" in message


def test_id_rule_and_file_stem():
    for good in ["capital_france", "P106_11", "Q42.v2", "a-b", "7", "x" * 128]:
        assert check_fact_id(good) == good
    for bad in ["../../evil", "/abs/evil", "a/b", 5, None]:
        with pytest.raises(FactsError):
            check_fact_id(bad)
    stem = safe_file_stem("capital_france")
    assert stem.startswith("capital_france-") and stem == safe_file_stem("capital_france")  # stable
    assert safe_file_stem("A") != safe_file_stem("a")
    assert safe_file_stem("A").lower() != safe_file_stem("a").lower()  # case-insensitive disks
    for evil in ["../../evil", "/abs/evil", "a/b", "..", ".", "\\x\\..\\y", "\x00"]:
        stem = safe_file_stem(evil)
        assert "/" not in stem and "\\" not in stem and ".." not in stem and not stem.startswith(".")
    assert len({safe_file_stem(i) for i in ["a/b", "a_b", "a\\b", "a.b"]}) == 4


def test_integer_ids_are_read_as_strings(tmp_path):
    assert [f.fact_id for f in load_facts(_jsonl(tmp_path, _record(fact_id=17)))] == ["good", "17"]


def test_object_list_is_an_error_not_a_string(tmp_path):
    message = _load_error(_jsonl(tmp_path, _record(object={"en": ["Paris"], "zh": "巴黎"})))
    assert "line 2" in message and "fact 'f1'" in message and "field 'object.en'" in message
    assert "got a list ['Paris']" in message and "other_gold_objects" in message


def test_subject_string_is_an_error_naming_the_field(tmp_path):
    message = _load_error(_jsonl(tmp_path, _record(subject="France")))
    assert "line 2" in message and "fact 'f1'" in message and "field 'subject'" in message
    assert "got a string 'France'" in message


@pytest.mark.parametrize("causal_ok, field, problem", [
    ({"en": ["x"]}, "causal_ok.en[0]", "must be a query index"),
    ({"en": [1.5]}, "causal_ok.en[0]", "must be a query index"),
    ({"en": [True]}, "causal_ok.en[0]", "must be a query index"),
    ({"en": [0, 3]}, "causal_ok.en[1]", "out of range"),
    ({"en": [-1]}, "causal_ok.en[0]", "out of range"),
    ({"en": "0"}, "causal_ok.en", "must be a list"),
    ({"de": [0]}, "causal_ok.de", "no queries"),
    ([0], "causal_ok", "keyed by language"),
])
def test_bad_causal_ok_names_fact_language_and_field(tmp_path, causal_ok, field, problem):
    message = _load_error(_jsonl(tmp_path, _record(causal_ok=causal_ok)))
    assert "line 2" in message and "fact 'f1'" in message and f"field '{field}'" in message
    assert problem in message and "invalid literal" not in message


@pytest.mark.parametrize("over, field, problem", [
    ({"object": {"en": "   ", "zh": "巴黎"}}, "object.en", "only whitespace"),
    ({"object": {"en": "", "zh": "巴黎"}}, "object.en", "empty string"),
    ({"object": {"en": 5, "zh": "巴黎"}}, "object.en", "got a number 5"),
    ({"object": ["Paris"]}, "object", "keyed by language"),
    ({"queries": {"en": [5]}}, "queries.en[0]", "must be a string"),
    ({"queries": {"en": {"q": "x [Y]"}}}, "queries.en", "must be a list"),
    ({"queries": []}, "queries", "non-empty object"),
    ({"other_gold_objects": {"en": "Lutetia"}}, "other_gold_objects.en", "must be a list"),
    ({"other_gold_objects": {"en": [None]}}, "other_gold_objects.en[0]", "got null"),
    ({"relation": ["capital"]}, "relation", "must be a string"),
    ({"relation_label": 3}, "relation_label", "must be a string"),
    ({"subject": {"en": ["France"]}}, "subject.en", "must be a string"),
    ({"object": {"en": "\ud800", "zh": "巴黎"}}, "object.en", "unpaired surrogate"),
])
def test_field_types_are_checked(tmp_path, over, field, problem):
    message = _load_error(_jsonl(tmp_path, _record(**over)))
    assert "line 2" in message and "fact 'f1'" in message and f"field '{field}'" in message
    assert problem in message


def test_extra_keys_and_nulls_are_allowed(tmp_path):
    rec = _record(sub_uri="Q142", obj_uri="Q90", languages=["en", "zh"], relation_type="N-1",
                  subject=None, other_gold_objects=None, causal_ok=None, relation_label=None)
    fact = load_facts(_jsonl(tmp_path, rec))[1]
    assert fact.subjects == {} and fact.other_answers == {} and fact.causal_ok is None
    assert fact.relation_label == ""


def test_whitespace_only_answer_is_an_error_at_load(tmp_path):
    message = _load_error(_jsonl(tmp_path, _record(object={"en": " \t ", "zh": "巴黎"})))
    assert "field 'object.en'" in message and "non-empty string" in message


def test_5mb_query_is_a_short_error_at_load(tmp_path):
    path = _jsonl(tmp_path, _record(queries={"en": ["x" * 5_000_000 + " [Y]"]}, object={"en": "Paris"}))
    message = _load_error(path)
    assert len(message) < 400 and "line 2" in message and "field 'queries.en[0]'" in message
    assert "5,000,004 characters" in message and f"{MAX_QUERY_CHARS:,}" in message


def test_50mb_query_without_slot_is_a_short_error(tmp_path):
    path = _jsonl(tmp_path, _record(queries={"en": ["y" * 50_000_000]}, object={"en": "Paris"}))
    assert len(_load_error(path)) < 400  # the length cap speaks first
    message = _load_error(path, max_query_chars=None)  # without the cap: the missing slot, quoted short
    assert len(message) < 400 and "no answer slot [Y]" in message and "50,000,000 characters" in message


def test_non_utf8_file_names_byte_offset_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(_record()).encode()
    path.write_bytes(good + b"\n" + '{"fact_id": "café"}'.encode("latin-1") + b"\n")
    message = _load_error(path)
    offset = len(good) + 1 + len('{"fact_id": "caf')
    assert str(path) in message and "not valid UTF-8" in message
    assert f"byte offset {offset}" in message and "line 2" in message and "0xe9" in message


def test_bom_and_unicode_line_separators_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    rec = _record(relation_label="capital\u2028of\x85")  # str.splitlines would break these lines
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rec, ensure_ascii=False).encode() + b"\r\n")
    assert load_facts(path)[0].relation_label == "capital\u2028of\x85"


def test_json_list_errors_name_the_line(tmp_path):
    path = tmp_path / "facts.json"
    text = json.dumps([_record(fact_id="a"), _record(fact_id="b", subject="B")], indent=1)
    path.write_text(text)
    line = text[: text.rfind("{", 0, text.index('"fact_id": "b"'))].count("\n") + 1  # where record 2 opens
    message = _load_error(path)
    assert f"line {line} (fact #2)" in message and "fact 'b'" in message
    path.write_text(json.dumps({"facts": [_record(), _record(fact_id="f2")]}))
    assert [f.fact_id for f in load_facts(path)] == ["f1", "f2"]
    path.write_text('{"facts": 3}')
    assert "field 'facts'" in _load_error(path)
    path.write_text("[" * 100_000)
    assert "malformed JSON" in _load_error(path)


def test_paths_that_are_not_files(tmp_path):
    assert "is a folder" in _load_error(tmp_path)
    assert "not found" in _load_error(tmp_path / "nothing.jsonl")


def test_duplicate_ids_name_both_lines(tmp_path):
    message = _load_error(_jsonl(tmp_path, _record(fact_id="good")))
    assert "appears twice" in message and "line 1" in message and "line 2" in message


def test_quote_is_bounded_and_one_line():
    assert _quote("abc") == "'abc'"
    long = _quote("z" * 10_000_000)
    assert len(long) < 140 and "10,000,000 characters" in long
    assert "\n" not in _quote("a\nb" * 100) and len(_quote(["q" * 10_000] * 1000)) <= 100
    assert len(_quote({"k": {"k": {"k": {"k": list(range(10_000))}}}})) <= 100


def test_context_length_check_for_phase_b():
    q = Query("The capital of France is [Y]", "The capital of France is", "Paris", " ", "en")
    check_context_length(q, 10, 8192, fact_id="f1")
    check_context_length(q, 10**6, None)
    with pytest.raises(FactsError, match=r"fact 'f1', language 'en': .* 9,000 tokens .* 8,192 tokens"):
        check_context_length(q, 9000, 8192, fact_id="f1")


# ---- property-based: the loader raises FactsError or returns well-typed facts, nothing else ----

_langs = st.sampled_from(["en", "zh", "fr", "de", "xx", ""])
_short_text = st.text(max_size=12)
_template = st.one_of(_short_text, _short_text.map(lambda t: f"{t} {SLOT}"), st.just(f"A{SLOT}B{SLOT}"))
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), _short_text)
_json = st.recursive(_json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(_short_text, inner, max_size=3)),
                     max_leaves=8)
_id_text = st.text(alphabet=string.ascii_letters + string.digits + "_.-/\\ ~:é\x00", max_size=20)


def _maybe(strategy):
    return st.one_of(strategy, _json)


_record_strategy = st.fixed_dictionaries(
    {
        "fact_id": _maybe(st.one_of(_id_text, st.integers(-3, 30))),
        "queries": _maybe(st.dictionaries(_langs, _maybe(st.lists(_maybe(_template), max_size=3)), max_size=3)),
        "object": _maybe(st.dictionaries(_langs, _maybe(_short_text), max_size=3)),
    },
    optional={
        "relation": _maybe(_short_text),
        "relation_label": _maybe(_short_text),
        "subject": _maybe(st.dictionaries(_langs, _maybe(_short_text), max_size=2)),
        "causal_ok": _maybe(st.dictionaries(_langs, _maybe(st.lists(_maybe(st.integers(-1, 3)), max_size=3)),
                                            max_size=2)),
        "other_gold_objects": _maybe(st.dictionaries(_langs, _maybe(st.lists(_short_text, max_size=2)), max_size=2)),
        "sub_uri": _json,
    },
)


@st.composite
def _valid_record(draw):
    """A well-formed record (random ids, languages, templates, answers, causal_ok)."""
    langs = draw(st.lists(st.sampled_from(["en", "zh", "fr", "ru", "ja"]), min_size=1, max_size=3, unique=True))
    ident = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,20}", fullmatch=True))
    queries = {lang: draw(st.lists(_short_text.map(lambda t: f"{t} {SLOT}"), min_size=1, max_size=3))
               for lang in langs}
    answer = st.text(min_size=1, max_size=8).filter(str.strip)
    rec = {"fact_id": ident, "relation": draw(_short_text), "queries": queries,
           "object": {lang: draw(answer) for lang in langs}}
    if draw(st.booleans()):
        rec["causal_ok"] = {lang: draw(st.lists(st.integers(0, len(queries[lang]) - 1), max_size=3))
                            for lang in langs}
    if draw(st.booleans()):
        rec["subject"] = {lang: draw(_short_text) for lang in langs}
        rec["other_gold_objects"] = {langs[0]: draw(st.lists(answer, max_size=2))}
    return rec


@st.composite
def _mutated_record(draw):
    """A well-formed record with one field replaced by random JSON."""
    rec = draw(_valid_record())
    key = draw(st.sampled_from(["fact_id", "queries", "object", "subject", "causal_ok", "relation",
                                "other_gold_objects", "relation_label"]))
    rec[key] = draw(_json)
    return rec


_any_record = st.one_of(_valid_record(), _mutated_record(), _record_strategy, _json)


def _check_fact(fact: Fact) -> None:
    assert isinstance(fact.fact_id, str) and FACT_ID_PATTERN.fullmatch(fact.fact_id) and ".." not in fact.fact_id
    assert isinstance(fact.relation, str) and isinstance(fact.relation_label, str)
    assert fact.templates and all(lang in LANGUAGES for lang in fact.templates)
    for lang, templates in fact.templates.items():
        assert isinstance(templates, tuple)
        assert all(isinstance(t, str) and t.count(SLOT) == 1 for t in templates)
        assert isinstance(fact.answers[lang], str) and fact.answers[lang].strip()
        fact.queries(lang, causal=True), fact.queries(lang, causal=False)  # never raise
    assert all(isinstance(a, str) and a.strip() for a in fact.answers.values())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fact.subjects.items())
    assert all(isinstance(v, tuple) and all(isinstance(a, str) for a in v) for v in fact.other_answers.values())
    if fact.causal_ok is not None:
        for lang, idx in fact.causal_ok.items():
            assert isinstance(idx, tuple)
            assert all(type(i) is int and 0 <= i < len(fact.templates[lang]) for i in idx)
    stem = safe_file_stem(fact.fact_id)
    assert stem and "/" not in stem and "\\" not in stem and ".." not in stem


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_any_record, min_size=1, max_size=3), as_list=st.booleans())
def test_loader_returns_typed_facts_or_raises_facts_error(tmp_path, records, as_list):
    path = tmp_path / ("facts.json" if as_list else "facts.jsonl")
    text = json.dumps(records) if as_list else "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text(text, encoding="utf-8")
    try:
        facts = load_facts(path)
    except FactsError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message
        assert len(message) < BOUND + len(str(path))
        return
    assert len(facts) == len({f.fact_id for f in facts})
    for fact in facts:
        _check_fact(fact)


@settings(max_examples=200, deadline=None)
@given(record=_any_record)
def test_from_dict_returns_typed_fact_or_raises_facts_error(record):
    try:
        fact = Fact.from_dict(record, "here")
    except FactsError as err:
        assert str(err).startswith("here: ") and "\n" not in str(err)
        return
    _check_fact(fact)


@settings(max_examples=300, deadline=None)
@given(fact_id=st.one_of(_id_text, st.text(max_size=200)))
def test_ids_pass_the_rule_and_stay_inside_a_folder_or_raise(tmp_path_factory, fact_id):
    try:
        check_fact_id(fact_id)
        valid = True
    except FactsError as err:
        assert "\n" not in str(err) and len(str(err)) < BOUND
        valid = False
    if fact_id:
        stem = safe_file_stem(fact_id)  # total on non-empty strings: facts built in code are safe too
        assert stem and "/" not in stem and "\\" not in stem and "\x00" not in stem
        assert ".." not in stem and not stem.startswith((".", "-")) and len(stem) <= 81
        folder = tmp_path_factory.getbasetemp()
        assert (folder / f"{stem}.json").resolve().parent == folder.resolve()
    assert valid == bool(FACT_ID_PATTERN.fullmatch(fact_id) and ".." not in fact_id)
