"""The Polars engine: hand-computed cases per operator, and differential tests against
the pure-Python oracle (and the DuckDB engine, once it imports) on random trees."""

from __future__ import annotations

import datetime as dt
import importlib
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import day_range, reference_by_status, reference_contact_ids
from strategies import SCHEMA, Workspace, field_ops, rule_trees, workspaces, write_workspace

from segengine.definition.nodes import (
    ActivityRule,
    BucketRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    Window,
    day_bounds,
)
from segengine.engines.base import Tables
from segengine.engines.polars import PolarsEngine
from segengine.errors import EngineError
from segengine.fields import Schema

D = dt.date
T = dt.datetime
AS_OF = D(2026, 3, 15)
END = dt.time(23, 59, 59, 999999)


def contact(cid, email, status, added, lists, city, score, birthday, last_seen, vip):
    return {
        "contact_id": cid, "email": email, "status": status, "date_added": added,
        "lists": lists, "city": city, "company": None, "score": score,
        "birthday": birthday, "last_seen": last_seen, "vip": vip,
    }


CONTACTS = (
    contact(1, "anna@example.com", "active", T(2026, 3, 15), ["Newsletter", "VIP"], "Ärger",
            10.0, D(2000, 1, 1), T.combine(D(2026, 3, 14), END), True),
    contact(2, "bob@bücher.de", "unsubscribed", T(2026, 3, 1, 12), [], "İstanbul", 2.5, None,
            T(2026, 3, 15), False),
    contact(3, "carl@x.io", "bounced", T(2025, 1, 1), None, "", None, D(2026, 3, 15), None,
            None),
    contact(4, "dora@example.com", "active", T.combine(D(2026, 3, 14), END), ["newsletter"],
            None, -1.0, D(1999, 12, 31), T(2026, 2, 13), True),
    contact(5, "eve@mail.example.org", "active", T(2026, 3, 16), ["b2b"], " ", 0.0,
            D(2026, 2, 13), T(2026, 3, 16), False),
)


def event(cid, campaign, etype, ts, url=None):
    return {"contact_id": cid, "campaign": campaign, "type": etype, "timestamp": ts, "url": url}


# Send times: a 03-01, b and c tied at 03-10 09:00, e after as_of, d never sent.
EVENTS = (
    event(1, "a", "sent", T(2026, 3, 1, 10)),
    event(2, "a", "sent", T(2026, 3, 1, 10)),
    event(1, "b", "sent", T(2026, 3, 10, 9)),
    event(4, "c", "sent", T(2026, 3, 10, 9)),
    event(5, "e", "sent", T(2026, 3, 16, 8)),
    event(1, "a", "open", T(2026, 3, 2, 8)),
    event(1, "a", "open", T(2026, 3, 3, 8)),
    event(1, "b", "open", T.combine(D(2026, 3, 15), END)),
    event(2, "d", "open", T(2026, 3, 5)),
    event(4, "c", "open", T(2026, 3, 14)),
    event(1, "a", "click", T(2026, 3, 2, 9), "https://X.com/Pricing"),
    event(2, "a", "click", T(2026, 3, 2, 9), None),
    event(4, "c", "click", T(2026, 3, 14, 1), "https://x.com/blog"),
    event(3, "a", "bounce", T(2026, 3, 1, 11)),
    event(2, "a", "unsubscribe", T(2026, 3, 2, 10)),
)
FIXTURE = Workspace(SCHEMA, CONTACTS, EVENTS, ("a", "b", "c", "d", "e"), AS_OF)
ALL = {1, 2, 3, 4, 5}


def F(field, op, value=None, negate=False):  # noqa: N802 - reads like a rule
    return FieldRule(field, op, value, negate)


def A(activity="opened", **kwargs):  # noqa: N802
    return ActivityRule(activity, **kwargs)


CASES = [
    # text: Python lower-casing ('İ' -> 'i̇'), "" and null are empty, " " is text
    (F("city", "is", "ärger"), {1}),
    (F("city", "is", "ÄRGER"), {1}),
    (F("city", "is", "istanbul"), set()),
    (F("city", "is", "İSTANBUL"), {2}),
    (F("city", "is_not", "ärger"), {2, 3, 4, 5}),
    (F("city", "contains", "STAN"), {2}),
    (F("city", "not_contains", "r"), {2, 3, 4, 5}),
    (F("city", "starts_with", "i"), {2}),
    (F("city", "ends_with", " "), {5}),
    (F("city", "in", ("berlin", "ÄRGER")), {1}),
    (F("city", "not_in", ("ärger",)), {2, 3, 4, 5}),
    (F("city", "is_empty"), {3, 4}),
    (F("city", "is_not_empty"), {1, 2, 5}),
    (F("email_domain", "is", "EXAMPLE.com"), {1, 4}),
    (F("email_domain", "ends_with", ".DE"), {2}),
    (F("email", "contains", "@example"), {1, 4}),
    # number
    (F("score", "eq", 2.5), {2}),
    (F("score", "ne", 2.5), {1, 3, 4, 5}),
    (F("score", "gt", 0.0), {1, 2}),
    (F("score", "gte", 0.0), {1, 2, 5}),
    (F("score", "lt", 0.0), {4}),
    (F("score", "lte", 2.5), {2, 4, 5}),
    (F("score", "between", (0.0, 2.5)), {2, 5}),
    (F("score", "in", (10.0, -1.0)), {1, 4}),
    (F("score", "not_in", (10.0,)), {2, 3, 4, 5}),
    (F("score", "is_empty"), {3}),
    # date
    (F("birthday", "on", D(2000, 1, 1)), {1}),
    (F("birthday", "not_on", D(2000, 1, 1)), {2, 3, 4, 5}),
    (F("birthday", "before", D(2000, 1, 1)), {4}),
    (F("birthday", "after", D(2000, 1, 1)), {3, 5}),
    (F("birthday", "between", (D(1999, 12, 31), D(2000, 1, 1))), {1, 4}),
    (F("birthday", "in_last_days", 30), {3, 5}),
    (F("birthday", "in_last_days", 0), {3}),
    (F("birthday", "older_than_days", 30), {1, 4}),
    (F("birthday", "is_empty"), {2}),
    (F("birthday", "before", D.min), set()),
    (F("birthday", "after", D.max), set()),
    (F("birthday", "in_last_days", 10**6), {1, 3, 4, 5}),
    (F("birthday", "older_than_days", 10**6), set()),
    # datetime: compared by UTC date; 23:59:59.999999 is still that day
    (F("last_seen", "on", D(2026, 3, 14)), {1}),
    (F("last_seen", "on", D(2026, 3, 15)), {2}),
    (F("last_seen", "in_last_days", 0), {2}),
    (F("last_seen", "in_last_days", 1), {1, 2}),
    (F("last_seen", "in_last_days", 30), {1, 2, 4}),
    (F("last_seen", "older_than_days", 29), {4}),
    (F("last_seen", "after", D(2026, 3, 15)), {5}),
    (F("last_seen", "before", D(2026, 3, 15)), {1, 4}),
    (F("last_seen", "not_on", D(2026, 3, 15)), {1, 3, 4, 5}),
    (F("date_added", "on", D(2026, 3, 14)), {4}),
    (F("date_added", "between", (D(2026, 3, 1), D(2026, 3, 15))), {1, 2, 4}),
    # boolean
    (F("vip", "is", True), {1, 4}),
    (F("vip", "is", False), {2, 5}),
    (F("vip", "is", True, negate=True), {2, 3, 5}),
    (F("vip", "is_empty"), {3}),
    (F("vip", "is_not_empty"), {1, 2, 4, 5}),
    # status
    (F("status", "is", "active"), {1, 4, 5}),
    (F("status", "is_not", "active"), {2, 3}),
    (F("status", "in", ("unsubscribed", "bounced")), {2, 3}),
    (F("status", "not_in", ("active",)), {2, 3}),
    # lists: [] and null are both "in no list"
    (F("lists", "includes", ("NEWSLETTER",)), {1, 4}),
    (F("lists", "includes", ("vip", "b2b")), {1, 5}),
    (F("lists", "includes_all", ("newsletter", "Vip")), {1}),
    (F("lists", "excludes", ("newsletter",)), {2, 3, 5}),
    (F("lists", "is_empty"), {2, 3}),
    (F("lists", "is_not_empty"), {1, 4, 5}),
    # activity: counts, zero-event contacts, campaigns, windows, urls
    (A(), {1, 2, 4}),
    (A(negate=True), {3, 5}),
    (A(count=CountCondition("eq", 0)), {3, 5}),
    (A(count=CountCondition("gte", 2)), {1}),
    (A(count=CountCondition("gt", 2)), {1}),
    (A(count=CountCondition("lt", 1)), {3, 5}),
    (A(count=CountCondition("lte", 1)), {2, 3, 4, 5}),
    (A(count=CountCondition("between", (0, 1))), {2, 3, 4, 5}),
    (A(campaigns=("a",)), {1}),
    (A(campaigns=("A",)), set()),
    (A(campaigns=LastCampaigns(1)), {4}),
    (A(campaigns=LastCampaigns(2)), {1, 4}),
    (A(campaigns=LastCampaigns(10)), {1, 4}),
    (A(when=Window("on", AS_OF)), {1}),
    (A(when=Window("in_last_days", 1)), {1, 4}),
    (A(when=Window("before", D(2026, 3, 3))), {1}),
    (A(when=Window("after", AS_OF)), set()),
    (A(when=Window("older_than_days", 10)), {1}),
    (A(when=Window("between", (D(2026, 3, 3), D(2026, 3, 5)))), {1, 2}),
    (A("clicked"), {1, 2, 4}),
    (A("clicked", url_contains="PRICING"), {1}),
    (A("clicked", url_contains="x.com"), {1, 4}),
    (A("clicked", url_contains="pricing", negate=True), {2, 3, 4, 5}),
    (A("bounced"), {3}),
    (A("unsubscribed"), {2}),
    (A("sent", campaigns=LastCampaigns(1)), {4}),
    (A("sent", count=CountCondition("gte", 2)), {1}),
    (A("sent", campaigns=("e",)), {5}),
    # groups
    (Group("all", ()), ALL),
    (Group("any", ()), set()),
    (Group("all", (), negate=True), set()),
    (Group("any", (F("status", "is", "active"), F("city", "is_empty"))), {1, 3, 4, 5}),
    (Group("all", (F("status", "is", "active"), Group("any", (A(), F("lists", "is_empty"))))),
     {1, 4}),
    (Group("all", (A(), A(negate=True))), set()),
]


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Tables:
    return write_workspace(FIXTURE, tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="module")
def engine(tables) -> PolarsEngine:
    return PolarsEngine(tables)


def as_root(rule) -> Group:
    return rule if isinstance(rule, Group) else Group("all", (rule,))


@pytest.mark.parametrize(("rule", "expected"), CASES, ids=[repr(c[0])[:80] for c in CASES])
def test_hand_computed(engine, rule, expected):
    root = as_root(rule)
    assert set(engine.contact_ids([root], AS_OF).tolist()) == expected
    # The oracle must agree with the hand computation too, or the oracle is wrong.
    assert reference_contact_ids(list(CONTACTS), list(EVENTS), SCHEMA, root, AS_OF) == expected


def test_last_campaigns_follow_as_of(engine):
    """Before b and c were sent, the last campaign is a (sent to 1 and 2)."""
    root = as_root(A("sent", campaigns=LastCampaigns(1)))
    assert engine.contact_ids([root], D(2026, 3, 9)).tolist() == [1, 2]
    assert engine.contact_ids([root], D(2026, 2, 28)).tolist() == []
    assert engine.contact_ids([root], D(2026, 3, 16)).tolist() == [5]


def test_union_and_count(engine):
    roots = [as_root(F("status", "is", "bounced")), as_root(A()), as_root(A())]
    ids = engine.contact_ids(roots, AS_OF)
    assert ids.dtype == np.int64
    assert ids.tolist() == [1, 2, 3, 4]
    assert engine.count(roots, AS_OF) == {"active": 2, "unsubscribed": 1, "bounced": 1}
    assert engine.count([as_root(Group("any", ()))], AS_OF) == {
        "active": 0, "unsubscribed": 0, "bounced": 0,
    }
    assert engine.contact_ids([], AS_OF).tolist() == []


def test_no_event_files(tmp_path):
    ws = Workspace(SCHEMA, CONTACTS, (), (), AS_OF)
    tables = write_workspace(ws, tmp_path)
    assert tables.events == ()
    engine = PolarsEngine(tables)
    never = as_root(A(count=CountCondition("eq", 0)))
    last = as_root(A("sent", campaigns=LastCampaigns(3), negate=True))
    assert engine.contact_ids([never], AS_OF).tolist() == [1, 2, 3, 4, 5]
    assert engine.contact_ids([as_root(A())], AS_OF).tolist() == []
    assert engine.contact_ids([last], AS_OF).tolist() == [1, 2, 3, 4, 5]


def test_field_missing_from_files_reads_as_empty(tables):
    """A custom field created after the files were written is empty for everyone."""
    later = Tables(tables.contacts, tables.events, SCHEMA.with_field("region", "text"))
    engine = PolarsEngine(later)
    assert engine.contact_ids([as_root(F("region", "is_empty"))], AS_OF).tolist() == [1, 2, 3, 4, 5]
    assert engine.contact_ids([as_root(F("region", "is_not", "x"))], AS_OF).size == 5


def test_nan_orders_with_nothing(tmp_path):
    ws = Workspace(SCHEMA, (dict(CONTACTS[0], score=float("nan")),), (), (), AS_OF)
    engine = PolarsEngine(write_workspace(ws, tmp_path, split=False))
    for op, value, expected in [("gt", 0.0, []), ("lt", 0.0, []), ("ne", 1.0, [1]),
                                ("is_empty", None, []), ("is_not_empty", None, [1])]:
        assert engine.contact_ids([as_root(F("score", op, value))], AS_OF).tolist() == expected


def test_unknown_field_is_a_clear_error(engine):
    with pytest.raises(EngineError, match="unknown field 'nope'"):
        engine.contact_ids([as_root(F("nope", "is", "x"))], AS_OF)


@pytest.mark.parametrize(
    ("op", "value"),
    [("on", D(2026, 1, 1)), ("before", D(2026, 1, 1)), ("after", D(2026, 1, 1)),
     ("between", (D(2025, 12, 30), D(2026, 1, 2))), ("in_last_days", 0),
     ("in_last_days", 45), ("older_than_days", 0), ("older_than_days", 7)],
)
def test_day_bounds_agrees_with_oracle(op, value):
    low, high = day_bounds(op, value, AS_OF)
    ref_low, ref_high = day_range(op, value, AS_OF)
    assert low is None or low.toordinal() == ref_low
    assert high is None or high.toordinal() == ref_high


def test_timestamps_in_other_units_and_zones(tmp_path):
    """Events written in ns with a zone read as naive UTC; the day is the UTC day."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = write_workspace(FIXTURE, tmp_path / "base", split=False)
    stamps = pa.array([T(2026, 3, 14, 23, 30), T(2026, 3, 15, 0, 30)], pa.timestamp("ns"))
    table = pa.table({
        "contact_id": pa.array([1, 2], pa.int64()),
        "campaign": ["z", "z"],
        "type": ["open", "open"],
        "timestamp": stamps.cast(pa.timestamp("ns", tz="UTC")).cast(
            pa.timestamp("ns", tz="Asia/Tokyo")),
        "url": pa.array([None, None], pa.string()),
    })
    path = tmp_path / "events-tz.parquet"
    pq.write_table(table, path)
    engine = PolarsEngine(Tables(base.contacts, (str(path),), SCHEMA))
    root = as_root(A(when=Window("on", AS_OF)))
    assert engine.contact_ids([root], AS_OF).tolist() == [2]


# --- differential tests -----------------------------------------------------------


def _other_engines() -> list[tuple[str, type | None, str]]:
    """(name, engine class or None, why it is skipped)."""
    try:
        module = importlib.import_module("segengine.engines.duckdb")
        return [("duckdb", module.DuckDBEngine, "")]
    except Exception as exc:  # noqa: BLE001 - any import failure means "not ready yet"
        return [("duckdb", None, f"segengine.engines.duckdb does not import yet: {exc!r}")]


#: 200 random workspaces per engine in CI; SEGENGINE_HYPOTHESIS_EXAMPLES=2000 for a deep run.
EXAMPLES = int(os.environ.get("SEGENGINE_HYPOTHESIS_EXAMPLES", "200"))
#: The DuckDB engine spends ~0.6 s per example (connection and view set-up per engine),
#: so by default it gets fewer examples to keep this file well under a minute.
OTHER_EXAMPLES = int(os.environ.get("SEGENGINE_HYPOTHESIS_EXAMPLES", "40"))
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


def check_against_oracle(engine_class, ws: Workspace, roots, directory) -> None:
    """Each root alone, their union and the count by status all equal the oracle's."""
    engine = engine_class(write_workspace(ws, directory))
    try:
        expected_each = [
            reference_contact_ids(list(ws.contacts), list(ws.events), ws.schema, root, ws.as_of)
            for root in roots
        ]
        for root, expected in zip(roots, expected_each, strict=True):
            assert set(engine.contact_ids([root], ws.as_of).tolist()) == expected, root
        union = set().union(*expected_each)
        assert engine.contact_ids(roots, ws.as_of).tolist() == sorted(union)
        assert engine.count(roots, ws.as_of) == reference_by_status(list(ws.contacts), union)
    finally:
        engine.close()


def _roots(ws: Workspace) -> st.SearchStrategy[list[Group]]:
    return st.lists(rule_trees(ws.schema, ws.campaigns), min_size=1, max_size=4)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=HEALTH)
@given(ws=workspaces(), data=st.data())
def test_polars_matches_oracle(tmp_path_factory, ws, data):
    roots = data.draw(_roots(ws))
    check_against_oracle(PolarsEngine, ws, roots, tmp_path_factory.mktemp("polars"))


@pytest.mark.parametrize(("name", "engine_class", "skip"), _other_engines(),
                         ids=[e[0] for e in _other_engines()])
@settings(max_examples=OTHER_EXAMPLES, deadline=None, suppress_health_check=HEALTH)
@given(ws=workspaces(), data=st.data())
def test_other_engine_matches_oracle(tmp_path_factory, name, engine_class, skip, ws, data):
    if engine_class is None:
        pytest.skip(skip)
    roots = data.draw(_roots(ws))
    check_against_oracle(engine_class, ws, roots, tmp_path_factory.mktemp(name))


EXPECTED_OPS = {
    "text": {"is", "is_not", "contains", "not_contains", "starts_with", "ends_with", "in",
             "not_in", "is_empty", "is_not_empty"},
    "number": {"eq", "ne", "gt", "gte", "lt", "lte", "between", "in", "not_in", "is_empty",
               "is_not_empty"},
    "date": {"on", "not_on", "before", "after", "between", "in_last_days", "older_than_days",
             "is_empty", "is_not_empty"},
    "datetime": {"on", "not_on", "before", "after", "between", "in_last_days",
                 "older_than_days", "is_empty", "is_not_empty"},
    "boolean": {"is", "is_empty", "is_not_empty"},
    "enum": {"is", "is_not", "in", "not_in"},
    "set": {"includes", "includes_all", "excludes", "is_empty", "is_not_empty"},
}
FIELD_OF_TYPE = {"text": "city", "number": "score", "date": "birthday",
                 "datetime": "last_seen", "boolean": "vip", "enum": "status", "set": "lists"}


@pytest.mark.parametrize("ftype", sorted(EXPECTED_OPS))
def test_strategies_reach_every_operator(ftype):
    seen: set[str] = set()

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(field_ops(SCHEMA[FIELD_OF_TYPE[ftype]], FIELD_OF_TYPE[ftype]))
    def collect(pair):
        seen.add(pair[0])

    collect()
    assert seen == EXPECTED_OPS[ftype]


def test_strategies_reach_every_node_kind():
    seen: set[tuple[str, str]] = set()

    def walk(rule):
        if isinstance(rule, Group):
            seen.add(("group", rule.match))
            for child in rule.rules:
                walk(child)
        elif isinstance(rule, FieldRule):
            seen.add(("field", str(SCHEMA[rule.field])))
        elif isinstance(rule, BucketRule):
            seen.add(("bucket", "empty" if rule.low == rule.high else "range"))
        else:
            seen.add(("activity", type(rule.campaigns).__name__))
            seen.add(("activity", rule.activity))

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(rule_trees(SCHEMA, FIXTURE.campaigns))
    def collect(root):
        walk(root)

    collect()
    assert {("field", t) for t in EXPECTED_OPS} <= seen
    assert {("group", "all"), ("group", "any"), ("activity", "str"), ("activity", "tuple"),
            ("activity", "LastCampaigns"), ("activity", "clicked"), ("activity", "sent"),
            ("bucket", "range")} <= seen


def test_schema_has_every_custom_type():
    assert {str(t) for _, t in SCHEMA.custom} == {"text", "number", "date", "datetime", "boolean"}
    assert isinstance(SCHEMA, Schema)
