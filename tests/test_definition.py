"""Segment definitions: sources, YAML 1.2, normalisation, validation, rewrites."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segengine.definition.nodes import (
    ActivityRule,
    BucketRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    Segment,
    SegmentRef,
    Window,
)
from segengine.definition.parse import load_definition, parse_definition
from segengine.definition.rewrite import (
    ensure_acyclic,
    find_cycle,
    inline_references,
    references,
    simplify,
    to_dict,
)
from segengine.definition.validate import OPERATORS
from segengine.definition.yaml12 import dump_yaml, load_yaml
from segengine.errors import DefinitionError, ReferenceCycle, SegmentNotFound
from segengine.fields import FieldType, Schema

SCHEMA = Schema.from_pairs(
    [
        ("title", "text"),
        ("state", "text"),
        ("age", "number"),
        ("birthday", "date"),
        ("last_login", "datetime"),
        ("vip", "boolean"),
    ]
)
D = dt.date


def seg(*rules, **top) -> Segment:
    return parse_definition({"name": "s", "rules": list(rules), **top}, SCHEMA)


def rule(*written) -> object:
    return seg(*written).root.rules[0]


def problems(doc: object) -> list[str]:
    with pytest.raises(DefinitionError) as info:
        load_definition(doc, SCHEMA)
    return [str(p) for p in info.value.problems]


def rule_problems(*rules) -> list[str]:
    return problems({"name": "s", "rules": list(rules)})


# --- sources ---------------------------------------------------------------------------

YAML_DOC = """\
name: ca-ctos
description: CTOs in California
match: all
rules:
  - {field: state, op: is, value: CA}
  - {field: title, op: is, value: CTO}
"""
EXPECTED = Segment(
    name="ca-ctos",
    description="CTOs in California",
    root=Group(
        match="all",
        rules=(FieldRule("state", "is", "CA"), FieldRule("title", "is", "CTO")),
    ),
)


def test_dict_yaml_and_json_text_give_the_same_segment():
    as_dict = load_yaml(YAML_DOC)
    assert load_definition(as_dict, SCHEMA) == EXPECTED
    assert load_definition(YAML_DOC, SCHEMA) == EXPECTED
    assert load_definition(json.dumps(as_dict), SCHEMA) == EXPECTED


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".YAML"])
def test_definition_files(tmp_path: Path, suffix: str):
    path = tmp_path / f"ca-ctos{suffix}"
    text = json.dumps(load_yaml(YAML_DOC)) if suffix == ".json" else YAML_DOC
    path.write_text("\ufeff" + text, encoding="utf-8")  # a BOM is skipped
    assert load_definition(path, SCHEMA) == EXPECTED


def test_file_problems_name_the_file(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nrules:\n  - {field: titel, op: is, value: x}\n")
    with pytest.raises(DefinitionError) as info:
        load_definition(path, SCHEMA)
    assert str(info.value) == (
        f"{path}: rules[0].field: unknown field 'titel' (did you mean 'title'?)"
    )
    with pytest.raises(DefinitionError, match=r"^from-cli: "):
        load_definition(path, SCHEMA, origin="from-cli")


def test_missing_file_and_wrong_suffix(tmp_path: Path):
    with pytest.raises(SegmentNotFound, match="no such definition file"):
        load_definition(tmp_path / "nope.yaml", SCHEMA)
    txt = tmp_path / "seg.txt"
    txt.write_text(YAML_DOC)
    with pytest.raises(DefinitionError, match=r"must end in \.json, \.yaml or \.yml"):
        load_definition(txt, SCHEMA)


def test_syntax_errors_give_the_line(tmp_path: Path):
    assert problems("name: x\nrules: [\n  {field: title\n") == [
        "invalid YAML at line 4, column 1: while parsing a flow mapping expected ',' or '}', "
        "but got '<stream end>'"
    ]
    path = tmp_path / "bad.json"
    path.write_text('{"name": "x",\n "rules": [}')
    with pytest.raises(DefinitionError, match="invalid JSON at line 2, column 12"):
        load_definition(path, SCHEMA)


def test_duplicate_keys_are_refused(tmp_path: Path):
    with pytest.raises(DefinitionError, match='duplicate key "op"'):
        load_definition("name: x\nrules:\n  - {field: title, op: is, op: is_not, value: a}", SCHEMA)
    path = tmp_path / "dup.json"
    path.write_text('{"name": "x", "name": "y"}')
    with pytest.raises(DefinitionError, match="duplicate key 'name'"):
        load_definition(path, SCHEMA)


def test_a_definition_must_be_a_mapping():
    assert problems("- a\n- b\n") == ["a segment definition must be a mapping, got a list"]
    assert problems("") == ["a segment definition must be a mapping, got nothing (null)"]
    assert problems("segs/ca.yaml") == [
        "a segment definition must be a mapping, got text 'segs/ca.yaml' (to read a file, "
        "pass a pathlib.Path)"
    ]


# --- YAML 1.2 ------------------------------------------------------------------------------


def test_yaml_12_scalars():
    doc = load_yaml(
        "%YAML 1.1\n---\n"  # the directive changes nothing: always YAML 1.2 core
        "a: on\nb: off\nc: yes\nd: no\ne: 2026-01-01\nf: 2026-01-01T10:00:00Z\n"
        "g: 1_000\nh: 12:30\ni: 010\nj: 0o17\nk: 0x1F\nl: 1e3\nm: .5\nn: true\no: ~\np: Y\n"
    )
    assert doc == {
        "a": "on", "b": "off", "c": "yes", "d": "no", "e": "2026-01-01",
        "f": "2026-01-01T10:00:00Z", "g": "1_000", "h": "12:30", "i": 10, "j": 15,
        "k": 31, "l": 1000.0, "m": 0.5, "n": True, "o": None, "p": "Y",
    }  # fmt: skip


def test_yaml_on_key_and_unquoted_dates_in_rules():
    segment = load_definition(
        "name: x\nrules:\n"
        "  - {field: state, op: in, value: [on, no, yes, off]}\n"
        "  - {field: title, op: is, value: 2026-01-01}\n"
        "  - {field: birthday, op: on, value: 2026-01-01}\n"
        "  - {activity: opened, when: {on: 2026-02-01}}\n",
        SCHEMA,
    )
    assert segment.root.rules == (
        FieldRule("state", "in", ("on", "no", "yes", "off")),
        FieldRule("title", "is", "2026-01-01"),
        FieldRule("birthday", "on", D(2026, 1, 1)),
        ActivityRule("opened", when=Window("on", D(2026, 2, 1))),
    )


def test_yaml_numbers_for_text_fields_are_refused_with_a_hint():
    assert problems("name: x\nrules: [{field: state, op: is, value: 02134}]") == [
        "rules[0].value: expected text, got the number 2134; quote it to make it text"
    ]


def test_dump_yaml_quotes_what_a_reader_could_misread():
    data = {"v": ["on", "yes", "2026-01-01", "true", "5", "1_000", "~", "12:30", "plain"]}
    text = dump_yaml(data)
    assert "- 'on'\n" in text and "- '2026-01-01'\n" in text and "- plain\n" in text
    assert load_yaml(text) == data


# --- normalisation of every operator -------------------------------------------------------

# (field, op, written value, normalised value); one row per operator of every field type.
NORMALISED = [
    ("title", "is", "CTO", "CTO"),
    ("title", "is_not", " CTO ", " CTO "),
    ("title", "contains", "Sales", "Sales"),
    ("title", "not_contains", "Sales", "Sales"),
    ("title", "starts_with", "Vice", "Vice"),
    ("title", "ends_with", "Officer", "Officer"),
    ("title", "in", ["CTO", "CEO"], ("CTO", "CEO")),
    ("title", "not_in", ["CTO"], ("CTO",)),
    ("title", "is_empty", None, None),
    ("title", "is_not_empty", None, None),
    ("email", "ends_with", "@example.com", "@example.com"),
    ("email_domain", "is", "Example.com", "Example.com"),
    ("age", "eq", 5, 5.0),
    ("age", "ne", 5.5, 5.5),
    ("age", "gt", -1, -1.0),
    ("age", "gte", 0, 0.0),
    ("age", "lt", 1e3, 1000.0),
    ("age", "lte", 7, 7.0),
    ("age", "between", [18, 65.5], (18.0, 65.5)),
    ("age", "between", [3, 3], (3.0, 3.0)),
    ("age", "in", [1, 2], (1.0, 2.0)),
    ("age", "not_in", [3], (3.0,)),
    ("age", "is_empty", None, None),
    ("age", "is_not_empty", None, None),
    ("birthday", "on", "2026-01-31", D(2026, 1, 31)),
    ("birthday", "not_on", "2024-02-29", D(2024, 2, 29)),
    ("birthday", "before", "2026-01-01", D(2026, 1, 1)),
    ("birthday", "after", D(2026, 1, 1), D(2026, 1, 1)),
    ("birthday", "between", ["2026-01-01", "2026-12-31"], (D(2026, 1, 1), D(2026, 12, 31))),
    ("birthday", "in_last_days", 0, 0),
    ("birthday", "older_than_days", 30, 30),
    ("birthday", "is_empty", None, None),
    ("birthday", "is_not_empty", None, None),
    ("last_login", "on", "2026-03-01", D(2026, 3, 1)),
    ("last_login", "not_on", "2026-03-01", D(2026, 3, 1)),
    ("last_login", "after", "2026-03-01", D(2026, 3, 1)),
    ("last_login", "between", ["2026-03-01", "2026-03-01"], (D(2026, 3, 1), D(2026, 3, 1))),
    ("last_login", "older_than_days", 1, 1),
    ("last_login", "is_empty", None, None),
    ("last_login", "is_not_empty", None, None),
    ("date_added", "before", "2026-01-01", D(2026, 1, 1)),
    ("date_added", "in_last_days", 7, 7),
    ("vip", "is", True, True),
    ("vip", "is", False, False),
    ("vip", "is", "TRUE", True),
    ("vip", "is", "false", False),
    ("vip", "is_empty", None, None),
    ("vip", "is_not_empty", None, None),
    ("status", "is", "Active", "active"),
    ("status", "is_not", "BOUNCED", "bounced"),
    ("status", "in", ["active", "Unsubscribed"], ("active", "unsubscribed")),
    ("status", "not_in", ["bounced"], ("bounced",)),
    ("lists", "includes", "Newsletter", ("Newsletter",)),
    ("lists", "includes", ["a", "b"], ("a", "b")),
    ("lists", "includes_all", ["a", "b"], ("a", "b")),
    ("lists", "excludes", "vip", ("vip",)),
    ("lists", "is_empty", None, None),
    ("lists", "is_not_empty", None, None),
]


@pytest.mark.parametrize(("field", "op", "written", "expected"), NORMALISED)
def test_values_are_normalised(field, op, written, expected):
    doc = {"field": field, "op": op} | ({} if written is None else {"value": written})
    parsed = rule(doc)
    assert parsed == FieldRule(field, op, expected)
    assert type(parsed.value) is type(expected)
    if isinstance(expected, tuple):
        assert [type(x) for x in parsed.value] == [type(x) for x in expected]


#: SPEC section 4's operator table, copied: the validator's tables must match it.
SPEC_OPERATORS = {
    "text": "is is_not contains not_contains starts_with ends_with in not_in is_empty is_not_empty",
    "number": "eq ne gt gte lt lte between in not_in is_empty is_not_empty",
    "date": "on not_on before after between in_last_days older_than_days is_empty is_not_empty",
    "datetime": "on not_on before after between in_last_days older_than_days is_empty is_not_empty",
    "boolean": "is is_empty is_not_empty",
    "enum": "is is_not in not_in",
    "set": "includes includes_all excludes is_empty is_not_empty",
}


def test_operator_tables_match_the_spec():
    assert {str(t): set(ops) for t, ops in OPERATORS.items()} == {
        t: set(ops.split()) for t, ops in SPEC_OPERATORS.items()
    }
    assert set(OPERATORS) == set(FieldType)
    normalised_ops = {(SCHEMA[f], op) for f, op, _, _ in NORMALISED}
    assert normalised_ops == {(t, op) for t, ops in OPERATORS.items() for op in ops}


def test_activity_rule_defaults_and_normalisation():
    assert rule({"activity": "opened"}) == ActivityRule(
        "opened", campaigns="any", when=None, count=CountCondition("gte", 1)
    )
    assert rule({"activity": "opened"}).event_type == "open"
    parsed = rule(
        {
            "activity": "clicked",
            "campaigns": ["spring-sale", "Spring-Sale"],
            "when": {"between": ["2026-01-01", "2026-01-31"]},
            "count": {"between": [2, 5]},
            "url_contains": "Pricing",
            "negate": True,
        }
    )
    assert parsed == ActivityRule(
        "clicked",
        campaigns=("spring-sale", "Spring-Sale"),
        when=Window("between", (D(2026, 1, 1), D(2026, 1, 31))),
        count=CountCondition("between", (2, 5)),
        url_contains="Pricing",
        negate=True,
    )
    assert rule({"activity": "sent", "campaigns": {"last": 3}}).campaigns == LastCampaigns(3)
    assert rule({"activity": "bounced", "campaigns": "any"}).campaigns == "any"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"on": "2026-01-02"}, Window("on", D(2026, 1, 2))),
        ({"before": "2026-01-02"}, Window("before", D(2026, 1, 2))),
        ({"after": "2026-01-02"}, Window("after", D(2026, 1, 2))),
        ({"in_last_days": 0}, Window("in_last_days", 0)),
        ({"older_than_days": 90}, Window("older_than_days", 90)),
    ],
)
def test_activity_windows(when, expected):
    assert rule({"activity": "unsubscribed", "when": when}).when == expected


@pytest.mark.parametrize("op", ["eq", "gte", "lte", "gt", "lt"])
def test_activity_counts(op):
    assert rule({"activity": "opened", "count": {op: 0}}).count == CountCondition(op, 0)


def test_groups_segment_rules_and_top_level():
    parsed = seg(
        {"match": "any", "rules": [{"segment": "vips"}, {"segment": "staff", "negate": True}]},
        {"rules": []},
        match="any",
        negate=True,
        description="x",
    )
    assert parsed == Segment(
        "s",
        Group(
            "any",
            (
                Group("any", (SegmentRef("vips"), SegmentRef("staff", negate=True))),
                Group("all", ()),
            ),
            negate=True,
        ),
        description="x",
    )
    assert parse_definition({"name": "everyone"}, SCHEMA).root == Group("all", ())


# --- validation -----------------------------------------------------------------------------

RULE_PROBLEMS = [
    # operators
    (
        {"field": "title", "op": "containz", "value": "x"},
        "rules[0].op: 'containz' is not an operator for text field 'title' "
        "(did you mean 'contains'?)",
    ),
    (
        {"field": "title", "op": "gt", "value": "x"},
        "rules[0].op: 'gt' is not an operator for text field 'title'; it takes is, is_not, "
        "contains, not_contains, starts_with, ends_with, in, not_in, is_empty, is_not_empty",
    ),
    (
        {"field": "status", "op": "is_empty"},
        "rules[0].op: 'is_empty' is not an operator for enum field 'status'; it takes is, "
        "is_not, in, not_in",
    ),
    (
        {"field": "age"},
        "rules[0].op: missing: number field 'age' takes eq, ne, gt, gte, lt, lte, between, in, "
        "not_in, is_empty, is_not_empty",
    ),
    # fields
    (
        {"field": "titel", "op": "is", "value": "x"},
        "rules[0].field: unknown field 'titel' (did you mean 'title'?)",
    ),
    (
        {"field": "Title", "op": "is", "value": "x"},
        "rules[0].field: unknown field 'Title' (did you mean 'title'?)",
    ),
    ({"field": "zzz", "op": "is", "value": "x"}, "rules[0].field: unknown field 'zzz'"),
    (
        {"field": 5, "op": "is", "value": "x"},
        "rules[0].field: expected a field name, got the number 5",
    ),
    # values present / missing
    ({"field": "title", "op": "is"}, "rules[0].value: missing: operator 'is' needs a value"),
    (
        {"field": "title", "op": "is", "value": None},
        "rules[0].value: missing: operator 'is' needs a value",
    ),
    (
        {"field": "title", "op": "is_empty", "value": "x"},
        "rules[0].value: operator 'is_empty' takes no value",
    ),
    # text
    (
        {"field": "title", "op": "is", "value": ""},
        'rules[0].value: the value may not be "" (use is_empty to match empty values)',
    ),
    (
        {"field": "title", "op": "is", "value": ["a"]},
        "rules[0].value: expected one text value, got a list (use 'in' for several)",
    ),
    (
        {"field": "title", "op": "in", "value": "a"},
        "rules[0].value: expected a list of text values, got text 'a'",
    ),
    (
        {"field": "title", "op": "in", "value": []},
        "rules[0].value: expected a non-empty list of text values, got an empty list",
    ),
    (
        {"field": "title", "op": "contains", "value": True},
        "rules[0].value: expected text, got the boolean true; quote it to make it text",
    ),
    # numbers
    ({"field": "age", "op": "eq", "value": "5"}, "rules[0].value: expected a number, got text '5'"),
    (
        {"field": "age", "op": "eq", "value": True},
        "rules[0].value: expected a number, got the boolean true",
    ),
    (
        {"field": "age", "op": "gt", "value": float("nan")},
        "rules[0].value: expected a finite number, got the number nan",
    ),
    (
        {"field": "age", "op": "between", "value": [5, 3]},
        "rules[0].value: low 5 is greater than high 3",
    ),
    (
        {"field": "age", "op": "between", "value": [5]},
        "rules[0].value: expected [low, high], two numbers, got a list of 1",
    ),
    (
        {"field": "age", "op": "between", "value": 5},
        "rules[0].value: expected [low, high], two numbers, got the number 5",
    ),
    (
        {"field": "age", "op": "in", "value": [1, "2"]},
        "rules[0].value[1]: expected a number, got text '2'",
    ),
    (
        {"field": "age", "op": "lt", "value": 10**400},
        "rules[0].value: expected a finite number, got the number " + str(10**400),
    ),
    # dates
    (
        {"field": "birthday", "op": "on", "value": "2026-02-30"},
        "rules[0].value: invalid date '2026-02-30': no such day",
    ),
    (
        {"field": "birthday", "op": "on", "value": "2026-1-5"},
        "rules[0].value: invalid date '2026-1-5': write it as YYYY-MM-DD",
    ),
    (
        {"field": "birthday", "op": "on", "value": "20260105"},
        "rules[0].value: invalid date '20260105': write it as YYYY-MM-DD",
    ),
    (
        {"field": "birthday", "op": "on", "value": 20260105},
        "rules[0].value: expected a date YYYY-MM-DD, got the number 20260105",
    ),
    (
        {"field": "birthday", "op": "on", "value": dt.datetime(2026, 1, 1)},
        "rules[0].value: expected a date YYYY-MM-DD, got a date-time (rules are day-granular)",
    ),
    (
        {"field": "birthday", "op": "between", "value": ["2026-02-01", "2026-01-01"]},
        "rules[0].value: low 2026-02-01 is greater than high 2026-01-01",
    ),
    (
        {"field": "birthday", "op": "between", "value": ["2026-02-01", "x"]},
        "rules[0].value[1]: invalid date 'x': write it as YYYY-MM-DD",
    ),
    (
        {"field": "birthday", "op": "in_last_days", "value": -1},
        "rules[0].value: a number of days must be at least 0, got -1",
    ),
    (
        {"field": "birthday", "op": "in_last_days", "value": 1.5},
        "rules[0].value: expected a number of days (a whole number), got the number 1.5",
    ),
    (
        {"field": "birthday", "op": "older_than_days", "value": 100_001},
        "rules[0].value: a number of days must be at most 100000, got 100001",
    ),
    # booleans, status, lists
    (
        {"field": "vip", "op": "is", "value": "yes"},
        "rules[0].value: expected true or false, got text 'yes'",
    ),
    (
        {"field": "vip", "op": "is", "value": 1},
        "rules[0].value: expected true or false, got the number 1",
    ),
    (
        {"field": "status", "op": "is", "value": "activ"},
        "rules[0].value: expected a status (active, unsubscribed, bounced), got text 'activ' "
        "(did you mean 'active'?)",
    ),
    (
        {"field": "status", "op": "in", "value": ["active", "gone"]},
        "rules[0].value[1]: expected a status (active, unsubscribed, bounced), got text 'gone'",
    ),
    (
        {"field": "lists", "op": "includes", "value": ""},
        'rules[0].value: a list name may not be "" (use is_empty for contacts in no list)',
    ),
    (
        {"field": "lists", "op": "excludes", "value": ["a", 7]},
        "rules[0].value[1]: expected a list name, got the number 7; quote it to make it text",
    ),
    # keys and kinds
    (
        {"field": "title", "op": "is", "value": "x", "negat": True},
        "rules[0].negat: unknown key (did you mean 'negate'?)",
    ),
    (
        {"field": "title", "op": "is_empty", "colour": "x"},
        "rules[0].colour: unknown key; a field rule takes field, op, value, negate",
    ),
    (
        {"field": "title", "op": "is_empty", "negate": "true"},
        "rules[0].negate: expected true or false, got text 'true'",
    ),
    (
        {"field": "title", "activity": "opened"},
        "rules[0]: a rule must be exactly one kind of rule; this one has 'field' (a field rule) "
        "and 'activity' (an activity rule)",
    ),
    (
        {"segment": "a", "rules": []},
        "rules[0]: a rule must be exactly one kind of rule; this one has 'segment' (a segment "
        "rule) and 'rules' (a group)",
    ),
    (
        "title is CTO",
        "rules[0]: a rule must be a mapping such as {field: ..., op: ..., "
        "value: ...}, got text 'title is CTO'",
    ),
    # activity rules
    ({"activity": "open"}, "rules[0].activity: unknown activity 'open' (did you mean 'opened'?)"),
    (
        {"activity": "forwarded"},
        "rules[0].activity: unknown activity 'forwarded'; expected sent, "
        "opened, clicked, bounced, unsubscribed",
    ),
    (
        {"activity": "opened", "url_contains": "x"},
        "rules[0].url_contains: url_contains is only allowed on 'clicked', not on 'opened'",
    ),
    (
        {"activity": "clicked", "url_contains": ""},
        'rules[0].url_contains: url_contains may not be "" (leave it out to count every click)',
    ),
    (
        {"activity": "opened", "when": {"in_last_days": 3, "on": "2026-01-01"}},
        "rules[0].when: expected exactly one of on, before, after, between, in_last_days, "
        "older_than_days, e.g. {in_last_days: 30}, got 2 keys",
    ),
    (
        {"activity": "opened", "when": {}},
        "rules[0].when: expected exactly one of on, before, after, between, in_last_days, "
        "older_than_days, e.g. {in_last_days: 30}, got 0 keys",
    ),
    (
        {"activity": "opened", "when": 30},
        "rules[0].when: expected exactly one of on, before, after, between, in_last_days, "
        "older_than_days, e.g. {in_last_days: 30}, got the number 30",
    ),
    (
        {"activity": "opened", "when": {"in_last_day": 3}},
        "rules[0].when: 'in_last_day' is not a when operator (did you mean 'in_last_days'?)",
    ),
    (
        {"activity": "opened", "when": {"not_on": "2026-01-01"}},
        "rules[0].when: 'not_on' is not a "
        "when operator; expected one of on, "
        "before, after, between, "
        "in_last_days, older_than_days",
    ),
    (
        {"activity": "opened", "when": {"in_last_days": -3}},
        "rules[0].when.in_last_days: a number of days must be at least 0, got -3",
    ),
    (
        {"activity": "opened", "when": {"on": "tomorrow"}},
        "rules[0].when.on: invalid date 'tomorrow': write it as YYYY-MM-DD",
    ),
    (
        {"activity": "opened", "count": {"gte": 1, "lte": 3}},
        "rules[0].count: expected exactly one of eq, gte, lte, gt, lt, between, e.g. {gte: 3}, "
        "got 2 keys",
    ),
    (
        {"activity": "opened", "count": {"ge": 1}},
        "rules[0].count: 'ge' is not a count operator (did you mean 'gte'?)",
    ),
    (
        {"activity": "opened", "count": {"gte": -1}},
        "rules[0].count.gte: an event count must be at least 0, got -1",
    ),
    (
        {"activity": "opened", "count": {"eq": 1.0}},
        "rules[0].count.eq: expected an event count (a whole number), got the number 1",
    ),
    (
        {"activity": "opened", "count": {"between": [3, 1]}},
        "rules[0].count.between: low 3 is greater than high 1",
    ),
    (
        {"activity": "opened", "campaigns": {"last": 0}},
        "rules[0].campaigns.last: a number of campaigns must be at least 1, got 0",
    ),
    (
        {"activity": "opened", "campaigns": {"first": 2}},
        "rules[0].campaigns: expected {last: N}, got the keys 'first'",
    ),
    (
        {"activity": "opened", "campaigns": "spring"},
        "rules[0].campaigns: expected 'any', a list of "
        "campaign ids or {last: N}, got text 'spring' "
        "(for one campaign write [spring])",
    ),
    (
        {"activity": "opened", "campaigns": ["a", 2024]},
        "rules[0].campaigns[1]: expected a "
        "campaign id, got the number 2024; quote "
        "it to make it text",
    ),
    (
        {"activity": "opened", "campaigns": []},
        "rules[0].campaigns: expected a non-empty list of campaign ids, got an empty list",
    ),
    (
        {"activity": "opened", "negate": "no"},
        "rules[0].negate: expected true or false, got text 'no'",
    ),
    (
        {"activity": "opened", "op": "is"},
        "rules[0].op: unknown key; an activity rule takes "
        "activity, campaigns, when, count, url_contains, negate",
    ),
    # segment rules and groups
    (
        {"segment": "Vips"},
        "rules[0].segment: 'Vips' is not a valid segment name: 1 to 64 "
        "lower-case letters, digits, '-' or '_', starting with a letter or "
        "digit (did you mean 'vips'?)",
    ),
    (
        {"segment": "s"},
        "rules[0].segment: segment reference cycle: s -> s (a segment cannot reference itself)",
    ),
    ({"match": "every", "rules": []}, "rules[0].match: expected all or any, got text 'every'"),
    (
        {"match": "ALL", "rules": []},
        "rules[0].match: expected all or any, got text 'ALL' (did you mean 'all'?)",
    ),
    (
        {"rules": "x"},
        "rules[0].rules: expected a list of rules, got text 'x' (write rules: [] for none)",
    ),
    ({"match": "any", "rule": []}, "rules[0].rule: unknown key (did you mean 'rules'?)"),
    (
        {"op": "is", "value": 3},
        "rules[0]: a rule needs one of the keys 'field', 'activity', 'bucket', "
        "'segment' or 'rules' (a group)",
    ),
]


@pytest.mark.parametrize(("written", "expected"), RULE_PROBLEMS)
def test_each_problem_is_reported_with_its_path(written, expected):
    assert rule_problems(written) == [expected]


def test_nested_paths_count_from_zero():
    found = rule_problems(
        {"field": "title", "op": "is", "value": "ok"},
        {"match": "any", "rules": [{"field": "age", "op": "gt", "value": "10"}]},
    )
    assert found == ["rules[1].rules[0].value: expected a number, got text '10'"]


def test_a_misspelt_value_key_is_suggested_and_the_value_missed():
    assert rule_problems({"field": "title", "op": "is", "valeu": "x"}) == [
        "rules[0].valeu: unknown key (did you mean 'value'?)",
        "rules[0].value: missing: operator 'is' needs a value",
    ]


def test_a_misspelt_kind_key_is_suggested():
    assert rule_problems({"feild": "title", "op": "is", "value": "x"}) == [
        "rules[0].feild: unknown key (did you mean 'field'?)",
        "rules[0]: a rule needs one of the keys 'field', 'activity', 'bucket', 'segment' or 'rules' "
        "(a group)",
    ]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"rules": []}, ["name: missing: every segment needs a name, e.g. 'active-ctos'"]),
        (
            {"name": "CA CTOs"},
            [
                "name: 'CA CTOs' is not a valid segment name: 1 to 64 lower-case letters, digits, "
                "'-' or '_', starting with a letter or digit"
            ],
        ),
        (
            {"name": "Ca-Ctos"},
            [
                "name: 'Ca-Ctos' is not a valid segment name: 1 to 64 lower-case letters, digits, "
                "'-' or '_', starting with a letter or digit (did you mean 'ca-ctos'?)"
            ],
        ),
        (
            {"name": "-x"},
            [
                "name: '-x' is not a valid segment name: 1 to 64 lower-case letters, "
                "digits, '-' or '_', starting with a letter or digit"
            ],
        ),
        (
            {"name": "a" * 65},
            [
                f"name: {'a' * 65!r} is not a valid segment name: 1 to 64 "
                "lower-case letters, digits, '-' or '_', starting with a letter "
                "or digit"
            ],
        ),
        (
            {"name": 2026},
            [
                "name: the number 2026 is not a valid segment name: 1 to 64 lower-case "
                "letters, digits, '-' or '_', starting with a letter or digit; quote "
                "it to make it text"
            ],
        ),
        ({"name": "x", "rule": []}, ["rule: unknown key (did you mean 'rules'?)"]),
        (
            {"name": "x", "title": "x"},
            [
                "title: unknown key; a segment definition takes name, "
                "description, match, rules, negate"
            ],
        ),
        ({"name": "x", "description": 5}, ["description: expected text, got the number 5"]),
        ({"name": "x", "match": "or"}, ["match: expected all or any, got text 'or'"]),
        ({"name": "x", "negate": 1}, ["negate: expected true or false, got the number 1"]),
        (
            {"name": "x", "rules": None},
            ["rules: expected a list of rules, got nothing (null) (write rules: [] for none)"],
        ),
    ],
)
def test_top_level_problems(doc, expected):
    assert problems(doc) == expected


def test_names_at_the_limits_are_valid():
    for name in ("a", "0", "a" * 64, "x_y-z9"):
        assert parse_definition({"name": name}, SCHEMA).name == name


def test_every_problem_is_reported_at_once():
    doc = (
        "name: Bad Name\n"
        "colour: red\n"
        "rules:\n"
        "  - {field: title, op: containz, value: x}\n"
        "  - {field: age, op: between, value: [5, 3]}\n"
        "  - match: any\n"
        "    rules:\n"
        "      - {activity: opened, url_contains: x, count: {gte: -1}}\n"
        "      - {field: lists, op: includes, value: [ok, 3]}\n"
    )
    with pytest.raises(DefinitionError) as info:
        load_definition(doc, SCHEMA)
    assert [p.path for p in info.value.problems] == [
        "colour",
        "name",
        "rules[0].op",
        "rules[1].value",
        "rules[2].rules[0].count.gte",
        "rules[2].rules[0].url_contains",
        "rules[2].rules[1].value[1]",
    ]
    message = str(info.value)
    assert message.count("; ") >= 6 and "did you mean 'contains'?" in message
    assert isinstance(info.value, ValueError) and info.value.exit_code == 2


_WORDS = sorted(
    {
        "field",
        "op",
        "value",
        "negate",
        "activity",
        "campaigns",
        "when",
        "count",
        "url_contains",
        "segment",
        "match",
        "rules",
        "last",
        "all",
        "any",
        "s",
        "",
        "2026-01-01",
    }
    | set(SCHEMA)
    | {op for ops in OPERATORS.values() for op in ops}
    | {"opened", "clicked", "active"}
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(allow_nan=True)
    | st.sampled_from(_WORDS)
    | st.text(max_size=3)
)
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(_WORDS) | _scalars.filter(lambda x: x == x), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(rules=st.lists(_documents, max_size=3), top=_documents)
def test_any_document_parses_or_raises_a_definition_error(rules, top):
    docs = [{"name": "s", "rules": rules}, top]
    for doc in docs:
        try:
            parsed = parse_definition(doc, SCHEMA)
        except DefinitionError as err:
            assert err.problems and all(p.message for p in err.problems)
        else:
            assert parse_definition(to_dict(parsed), SCHEMA) == parsed


# --- round trip ----------------------------------------------------------------------------


def _every_kind_of_rule() -> Segment:
    field_rules = [
        {"field": f, "op": op} | ({} if value is None else {"value": value})
        for f, op, value, _ in NORMALISED
    ]
    activity_rules = [
        {"activity": "opened", "negate": True},
        {"activity": "sent", "count": {"eq": 0}},
        {
            "activity": "clicked",
            "campaigns": ["a", "b"],
            "url_contains": "pricing",
            "when": {"between": ["2026-01-01", "2026-01-31"]},
            "count": {"between": [1, 2]},
        },
        {"activity": "bounced", "campaigns": {"last": 5}, "when": {"older_than_days": 3}},
    ]
    nested = {
        "match": "any",
        "negate": True,
        "rules": [{"segment": "other", "negate": True}, {"match": "all", "rules": []}],
    }
    return seg(
        *field_rules, *activity_rules, nested, match="any", negate=True, description="every kind"
    )


def test_to_dict_round_trips():
    segment = _every_kind_of_rule()
    doc = to_dict(segment)
    assert parse_definition(doc, SCHEMA) == segment
    assert load_definition(json.dumps(doc), SCHEMA) == segment
    assert load_definition(dump_yaml(doc), SCHEMA) == segment


def test_to_dict_writes_plain_values_and_leaves_out_defaults():
    segment = seg(
        {"field": "age", "op": "between", "value": [18, 65.5]},
        {"field": "birthday", "op": "on", "value": "2026-01-01"},
        {"activity": "opened"},
    )
    assert to_dict(segment) == {
        "name": "s",
        "match": "all",
        "rules": [
            {"field": "age", "op": "between", "value": [18, 65.5]},
            {"field": "birthday", "op": "on", "value": "2026-01-01"},
            {"activity": "opened"},
        ],
    }


# --- segment references ------------------------------------------------------------------------

A_OPENED = ActivityRule("opened")
CA = FieldRule("state", "is", "CA")


def library(**roots: Group):
    saved = {name: Segment(name, root) for name, root in roots.items()}
    return saved.__getitem__  # raises KeyError for a missing name, as a store's lookup does


def test_references_are_direct_only():
    root = Group("all", (SegmentRef("a"), Group("any", (SegmentRef("b", negate=True), CA))))
    assert references(root) == {"a", "b"}
    assert references(Group()) == set()


def test_inline_references_replaces_refs_recursively():
    lookup = library(
        a=Group("all", (CA, SegmentRef("b"))),
        b=Group("any", (A_OPENED,), negate=True),
    )
    root = Group("any", (SegmentRef("a", negate=True), FieldRule("title", "is", "CTO")))
    resolved = inline_references(root, lookup)
    b = Group("any", (A_OPENED,), negate=True)
    a = Group("all", (CA, Group("all", (b,))))
    assert resolved == Group(
        "any", (Group("all", (a,), negate=True), FieldRule("title", "is", "CTO"))
    )
    assert inline_references(Group("all", (CA,)), lookup) == Group("all", (CA,))


def test_inline_references_expands_shared_segments_once():
    calls: list[str] = []
    saved = library(
        a=Group("all", (SegmentRef("c"),)),
        b=Group("all", (SegmentRef("c"),)),
        c=Group("all", (CA,)),
    )

    def lookup(name: str) -> Segment:
        calls.append(name)
        return saved(name)

    resolved = inline_references(Group("all", (SegmentRef("a"), SegmentRef("b"))), lookup)
    assert sorted(calls) == ["a", "b", "c"]
    assert references(resolved) == set()


def test_reference_cycles_are_named():
    lookup = library(
        a=Group("all", (SegmentRef("b"),)),
        b=Group("all", (SegmentRef("a"),)),
        c=Group("all", (SegmentRef("a"),)),
    )
    with pytest.raises(ReferenceCycle, match=r"^segment reference cycle: a -> b -> a$"):
        inline_references(lookup("a").root, lookup, name="a")
    with pytest.raises(ReferenceCycle, match=r"^segment reference cycle: a -> b -> a$"):
        inline_references(Group("all", (SegmentRef("c"),)), lookup, name="d")
    with pytest.raises(ReferenceCycle, match=r"^segment reference cycle: b -> a -> b$"):
        inline_references(lookup("a").root, lookup)


def test_missing_references_name_both_segments():
    lookup = library(a=Group("all", (SegmentRef("ghost"),)))
    with pytest.raises(SegmentNotFound) as info:
        inline_references(Group("all", (SegmentRef("a"),)), lookup, name="top")
    assert str(info.value) == "segment 'a' references segment 'ghost', which does not exist"
    with pytest.raises(SegmentNotFound, match="^segment 'top' references segment 'nope'"):
        inline_references(Group("all", (SegmentRef("nope"),)), lookup, name="top")
    with pytest.raises(SegmentNotFound, match="^the definition references segment 'nope'"):
        inline_references(Group("all", (SegmentRef("nope"),)), lookup)


def test_find_cycle_and_ensure_acyclic():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": set(), "d": {"a"}}
    assert find_cycle("a", graph) == ("a", "b", "d", "a")
    assert find_cycle("c", graph) is None
    assert find_cycle("x", {"x": ["x"]}) == ("x", "x")
    assert find_cycle("new", {"new": ["old"], "old": []}) is None
    with pytest.raises(ReferenceCycle, match="segment reference cycle: d -> a -> b -> d"):
        ensure_acyclic("d", graph)
    ensure_acyclic("c", graph)


# --- simplify ----------------------------------------------------------------------------------

T = FieldRule("title", "is", "CTO")


def test_simplify_flattens_same_kind_groups():
    root = Group("all", (CA, Group("all", (T, Group("all", (A_OPENED, SegmentRef("x")))))))
    assert simplify(root) == Group("all", (CA, T, A_OPENED, SegmentRef("x")))


def test_simplify_keeps_negated_and_other_kind_groups():
    other = Group("any", (CA, T))
    negated = Group("all", (CA, T), negate=True)
    root = Group("all", (A_OPENED, other, negated))
    assert simplify(root) == root


def test_simplify_drops_single_rule_groups_and_folds_negation():
    assert simplify(Group("all", (Group("any", (CA, T)),))) == Group("any", (CA, T))
    assert simplify(Group("all", (Group("any", (CA,), negate=True), T))) == Group(
        "all", (FieldRule("state", "is", "CA", negate=True), T)
    )
    assert simplify(Group("any", (CA,), negate=True)) == Group(
        "all", (FieldRule("state", "is", "CA", negate=True),)
    )
    assert simplify(Group("all", (Group("any", (CA, T), negate=True),), negate=True)) == Group(
        "any", (CA, T)
    )


def test_simplify_keeps_empty_groups_meaningful():
    # an empty all (true) inside an all, or an empty any (false) inside an any, changes nothing
    assert simplify(Group("all", (CA, T, Group("all", ())))) == Group("all", (CA, T))
    assert simplify(Group("any", (CA, T, Group("any", ())))) == Group("any", (CA, T))
    kept = Group("all", (CA, Group("any", ())))
    assert simplify(kept) == kept


def _evaluate(rule, truth: dict[str, bool]) -> bool:
    if isinstance(rule, Group):
        results = [_evaluate(r, truth) for r in rule.rules]
        value = all(results) if rule.match == "all" else any(results)
    else:
        value = truth[rule.field]
    return value != rule.negate


_leaf = st.builds(
    lambda i, n: FieldRule(f"f{i}", "is_empty", negate=n), st.integers(0, 3), st.booleans()
)
_trees = st.recursive(
    _leaf,
    lambda children: st.builds(
        lambda m, rs, n: Group(m, tuple(rs), n),
        st.sampled_from(["all", "any"]),
        st.lists(children, max_size=4),
        st.booleans(),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(tree=_trees, bits=st.integers(0, 15))
def test_simplify_preserves_meaning(tree, bits):
    root = tree if isinstance(tree, Group) else Group("all", (tree,))
    truth = {f"f{i}": bool(bits >> i & 1) for i in range(4)}
    simplified = simplify(root)
    assert isinstance(simplified, Group)
    assert _evaluate(simplified, truth) == _evaluate(root, truth)
    assert simplify(simplified) == simplified


# --- the language reference ----------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "segments.md"
DOCS_SCHEMA = Schema.from_pairs(
    [
        ("title", "text"),
        ("state", "text"),
        ("company_size", "number"),
        ("birthday", "date"),
        ("last_login", "datetime"),
        ("vip", "boolean"),
    ]
)


def _doc_snippets() -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    return re.findall(r"^```(?:yaml|json)\n(.*?)^```", text, flags=re.M | re.S)


def _doc_rules() -> list:
    found = []
    for snippet in _doc_snippets():
        doc = load_yaml(snippet)
        if isinstance(doc, list):  # a list of example rules
            doc = {"name": "example", "rules": doc}
        found.extend(load_definition(doc, DOCS_SCHEMA).root.rules)
    return found


def test_every_snippet_in_the_docs_is_a_valid_definition():
    assert len(_doc_snippets()) >= 15
    _doc_rules()


def test_the_docs_show_every_operator_and_rule_kind():
    def family(ftype: FieldType) -> FieldType:  # date and datetime share their operators
        return FieldType.DATE if ftype == FieldType.DATETIME else ftype

    rules = _doc_rules()
    shown, kinds = set(), set()
    while rules:
        node = rules.pop()
        kinds.add(type(node))
        if isinstance(node, Group):
            rules.extend(node.rules)
        elif isinstance(node, FieldRule):
            shown.add((family(DOCS_SCHEMA[node.field]), node.op))
    assert shown == {(family(t), op) for t, ops in OPERATORS.items() for op in ops}
    assert kinds == {Group, FieldRule, ActivityRule, BucketRule, SegmentRef}
