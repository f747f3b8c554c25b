"""The engagement index and the `index` / `auto` engines.

Differential tests (index vs the pure-Python oracle vs DuckDB on random workspaces and
trees), one case per operator, incremental updates against full rebuilds, and the
never-stale rule: an index that does not cover the snapshot's files is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE, Cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap
from reference import reference_contact_ids
from strategies import (
    _COUNTS,
    _URL_CONTAINS,
    _WINDOWS,
    AS_OF,
    DATE_SINGLE,
    DAYS,
    NUMBER_SINGLE,
    NUMBERS,
    SCHEMA,
    rule_trees,
    workspaces,
    write_workspace,
)

import segengine
from segengine.definition.lower import Compare
from segengine.definition.nodes import (
    ActivityRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    SegmentRef,
    Window,
)
from segengine.engines import get_engine
from segengine.engines import index as index_engine_module
from segengine.engines.auto import AutoEngine
from segengine.engines.duckdb import DuckDBEngine
from segengine.engines.index import Evaluator, IndexEngine
from segengine.errors import EngineError
from segengine.fields import EVENT_TYPES
from segengine.store import aggregates
from segengine.store import index as store_index
from segengine.store.index import IndexData, build_index, load_index

D = dt.date
T = dt.datetime


def index_engine(tables, directory: Path) -> IndexEngine:
    build_index(tables.contacts, tables.events, tables.schema, directory)
    return IndexEngine(tables, IndexData.open(directory))


def expected(ws, root, as_of=None) -> list[int]:
    as_of = as_of or ws.as_of
    return sorted(reference_contact_ids(list(ws.contacts), list(ws.events), ws.schema, root, as_of))


# --- differential --------------------------------------------------------------------


#: Random workspaces in CI (6 single trees and one union of 3 each); a deep run sets
#: SEGENGINE_INDEX_EXAMPLES=500 (3,000 trees). Some examples index text fields without
#: per-value bitmaps (hypothesis draws which), so both text paths meet random trees.
INDEX_EXAMPLES = int(os.environ.get("SEGENGINE_INDEX_EXAMPLES", "25"))


#: Random workspaces for the count structures (8 trees each); a deep run sets e.g.
#: SEGENGINE_COUNT_EXAMPLES=300.
COUNT_EXAMPLES = int(os.environ.get("SEGENGINE_COUNT_EXAMPLES", "15"))


@settings(max_examples=COUNT_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data(), marks=st.integers(1, 4),
       sparse=st.sampled_from([1, 8, 10**9]), kept=st.integers(1, 3),
       order_after=st.sampled_from([0, 1, 10**9]))
def test_count_structures_match_the_reference(ws, data, marks, sparse, kept, order_after,
                                              tmp_path_factory):
    """Count ranges in windows (cumulative marks, and from `order_after` asks on the
    window's counts sorted) and URL counts without a window (per-URL runs), with few
    marks so bounds fall between them, and `sparse` choosing the cumulative path
    (10**9: always) or sorting, against the reference. The eight rules share one
    index, so the counts kept per day (`kept` of them) are reused and dropped between
    rules, and each rule is counted twice (a second ask may take the sorted counts)."""
    directory = tmp_path_factory.mktemp("ws")
    tables = write_workspace(ws, directory / "data")
    engine = index_engine(tables, directory / "index")
    windowed = st.builds(
        ActivityRule, st.sampled_from(["opened", "clicked", "sent"]),
        when=_WINDOWS, count=_COUNTS, negate=st.booleans())
    url_counts = st.builds(
        ActivityRule, st.just("clicked"), url_contains=_URL_CONTAINS.filter(bool),
        count=_COUNTS, negate=st.booleans())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_engine_module, "MARKS", marks)
        patch.setattr(index_engine_module, "SPARSE", sparse)
        patch.setattr(index_engine_module, "KEPT_DAYS", kept)
        patch.setattr(index_engine_module, "ORDER_AFTER", order_after)
        for _ in range(8):
            rule = data.draw(windowed | url_counts)
            root = Group("all", (rule,))
            want = expected(ws, root)
            assert engine.contact_ids([root], ws.as_of).tolist() == want, rule
            assert sum(engine.count([root], ws.as_of).values()) == len(want), rule


#: Random workspaces for the cumulative day unions of date fields (8 trees each).
DAY_UNION_EXAMPLES = int(os.environ.get("SEGENGINE_DAY_UNION_EXAMPLES", "15"))


@settings(max_examples=DAY_UNION_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data(), marks=st.integers(1, 12))
def test_day_unions_match_the_reference(ws, data, marks, tmp_path_factory):
    """Date rules answered from cumulative unions of the day bitmaps (every run of days
    takes that path, with few marks so bounds fall between them), against the reference."""
    directory = tmp_path_factory.mktemp("ws")
    tables = write_workspace(ws, directory / "data")
    engine = index_engine(tables, directory / "index")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_engine_module, "MAX_DAY_UNION", 0)
        patch.setattr(index_engine_module, "MARK_UNIONS", marks)
        for _ in range(8):
            root = data.draw(rule_trees(ws.schema, ws.campaigns))
            want = expected(ws, root)
            assert engine.contact_ids([root], ws.as_of).tolist() == want, root
            assert sum(engine.count([root], ws.as_of).values()) == len(want), root


#: Random workspaces for number and date rules on the sorted values (8 trees each).
VALUE_ORDER_EXAMPLES = int(os.environ.get("SEGENGINE_VALUE_ORDER_EXAMPLES", "15"))


@settings(max_examples=VALUE_ORDER_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data(), fine=st.integers(1, 3), chunks=st.integers(1, 8),
       marks=st.integers(1, 4), sparse=st.sampled_from([1, 8, 10**9]),
       ordered_rows=st.sampled_from([0, 10**9]), day_union=st.sampled_from([0, 31]),
       day_bitmaps=st.booleans(), few_chunks=st.sampled_from([0, 3]))
def test_sorted_values_match_the_reference(ws, data, fine, chunks, marks, sparse, ordered_rows,
                                           day_union, day_bitmaps, few_chunks, tmp_path_factory):
    """Number, date and boolean rules, counts of events (ever and in windows) and wide
    windows (`day_union` 0: every window of more than one day) answered from sorted rows
    (from the first ask, with chunks of a few rows so bounds fall inside them), with and
    without the per-row tests of the other rules of a group (`sparse`, `ordered_rows`),
    against the reference. Without `day_bitmaps`, every date field is answered from
    its sorted days."""
    directory = tmp_path_factory.mktemp("ws")
    tables = write_workspace(ws, directory / "data")
    with pytest.MonkeyPatch.context() as patch:
        if not day_bitmaps:
            patch.setattr(store_index.contacts, "VALUE_BITMAPS_MAX", 0)
        engine = index_engine(tables, directory / "index")
    # values from the data's own pools, so bounds land on stored values and inside runs
    numbers = st.sampled_from(NUMBERS)
    number_rules = st.one_of(
        st.builds(FieldRule, st.just("score"), st.sampled_from(NUMBER_SINGLE), numbers),
        st.builds(FieldRule, st.just("score"), st.just("between"),
                  st.tuples(numbers, numbers).map(lambda p: tuple(sorted(p)))),
        st.builds(FieldRule, st.just("score"), st.just("in"),
                  st.lists(numbers, min_size=1, max_size=3).map(tuple)),
    )
    date_rules = st.one_of(
        st.builds(FieldRule, st.sampled_from(["birthday", "last_seen"]),
                  st.sampled_from(DATE_SINGLE), st.sampled_from(DAYS)),
        st.builds(FieldRule, st.sampled_from(["birthday", "last_seen"]), st.just("between"),
                  st.tuples(st.sampled_from(DAYS), st.sampled_from(DAYS)).map(
                      lambda p: tuple(sorted(p)))),
    )
    boolean_rules = st.builds(FieldRule, st.just("vip"), st.just("is"), st.booleans()) | st.builds(
        FieldRule, st.just("vip"), st.sampled_from(["is_empty", "is_not_empty"]), st.none())
    activity_rules = st.builds(
        ActivityRule, st.sampled_from(["opened", "clicked", "sent"]),
        when=st.none() | _WINDOWS, count=_COUNTS, negate=st.booleans())
    value_rules = st.builds(
        lambda rule, negate: Group("all", (rule,), negate=negate),
        number_rules | date_rules | boolean_rules | activity_rules, st.booleans())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_engine_module, "ORDER_AFTER", 0)
        patch.setattr(index_engine_module, "ORDERED_ROWS", ordered_rows)
        patch.setattr(index_engine_module, "MAX_DAY_UNION", day_union)
        patch.setattr(index_engine_module, "FINE_ROWS", fine)
        patch.setattr(index_engine_module, "FINE_CHUNKS", chunks)
        patch.setattr(index_engine_module, "MARK_UNIONS", marks)
        patch.setattr(index_engine_module, "FEW_CHUNKS", few_chunks)
        patch.setattr(index_engine_module, "SPARSE", sparse)
        for _ in range(8):
            root = data.draw(rule_trees(ws.schema, ws.campaigns) | value_rules)
            want = expected(ws, root)
            assert engine.contact_ids([root], ws.as_of).tolist() == want, root
            assert sum(engine.count([root], ws.as_of).values()) == len(want), root


#: Random workspaces for counts over chosen campaigns (8 rules each).
CAMPAIGN_COUNT_EXAMPLES = int(os.environ.get("SEGENGINE_CAMPAIGN_COUNT_EXAMPLES", "15"))


@settings(max_examples=CAMPAIGN_COUNT_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data(), steps=st.sampled_from([0, 2000, 10**9]))
def test_counts_over_campaigns_match_the_reference(ws, data, steps, tmp_path_factory):
    """Count ranges over a few campaigns (with and without a window) from per-campaign
    level bitmaps, or by counting the events (`steps` 0), against the reference."""
    directory = tmp_path_factory.mktemp("ws")
    tables = write_workspace(ws, directory / "data")
    engine = index_engine(tables, directory / "index")
    chosen = st.lists(st.sampled_from(ws.campaigns), min_size=1, max_size=4).map(
        lambda c: tuple(sorted(set(c)))) | st.integers(1, 6).map(LastCampaigns)
    rules = st.builds(
        ActivityRule, st.sampled_from(["opened", "clicked", "sent"]), chosen,
        when=st.none() | _WINDOWS, count=_COUNTS, negate=st.booleans())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_engine_module, "MAX_LEVEL_STEPS", steps)
        for _ in range(8):
            rule = data.draw(rules)
            root = Group("all", (rule,))
            want = expected(ws, root)
            assert engine.contact_ids([root], ws.as_of).tolist() == want, rule
            assert sum(engine.count([root], ws.as_of).values()) == len(want), rule


def updated_index_engine(tables, directory: Path, delta: bool) -> IndexEngine:
    """An index of the first events file, then updated with the second: its aggregates
    in a delta over the first's base, or (`delta` False) folded into a new base."""
    first = directory / "first"
    build_index(tables.contacts, tables.events[:1], tables.schema, first)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aggregates, "DELTA_MAX_PER_CONTACT", 1e9 if delta else 0.0)
        build_index(tables.contacts, tables.events, tables.schema, directory / "updated",
                    previous=IndexData.open(first))
    index = IndexData.open(directory / "updated")
    assert index.meta["incremental"]
    assert (index.meta["events"]["aggregates"]["delta"] is not None) is delta
    return IndexEngine(tables, index)


@settings(max_examples=INDEX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data(), value_bitmaps=st.booleans(),
       build=st.sampled_from(["full", "delta", "dense"]))
def test_index_matches_reference_and_duckdb(ws, data, value_bitmaps, build, tmp_path_factory):
    """`build`: one full build, or an update of an index of the first events file (as an
    import makes it), keeping the aggregates in a delta or writing a new base."""
    directory = tmp_path_factory.mktemp("ws")
    tables = write_workspace(ws, directory / "data")
    with pytest.MonkeyPatch.context() as patch:
        if not value_bitmaps:  # and no JSON dictionaries: the Arrow text path too
            patch.setattr(store_index.contacts, "VALUE_BITMAPS_MAX", 0)
            patch.setattr(store_index.contacts, "WORDS_MAX", -1)
            patch.setattr(store_index.events, "WORDS_MAX", -1)
        if build == "full" or len(tables.events) < 2:  # one file: no later events to add
            engine = index_engine(tables, directory / "index")
        else:
            engine = updated_index_engine(tables, directory / "index", build == "delta")
    duck = DuckDBEngine(tables)
    try:
        for _ in range(6):
            root = data.draw(rule_trees(ws.schema, ws.campaigns))
            want = expected(ws, root)
            assert engine.contact_ids([root], ws.as_of).tolist() == want, root
            assert duck.contact_ids([root], ws.as_of).tolist() == want, root
            by_status = engine.count([root], ws.as_of)
            assert by_status == duck.count([root], ws.as_of)
            assert sum(by_status.values()) == len(want)
        roots = [data.draw(rule_trees(ws.schema, ws.campaigns)) for _ in range(3)]
        union = sorted(set().union(*(expected(ws, r) for r in roots)))
        assert engine.contact_ids(roots, ws.as_of).tolist() == union
    finally:
        duck.close()


# --- one case per operator -----------------------------------------------------------


def fixed_workspace():
    """A deterministic workspace from the shared pools, with events of every kind."""
    from strategies import CAMPAIGNS, DATETIMES, SEND_TIMES, URLS, Workspace, _contact

    rng = random.Random(7)
    ids = list(range(1, 41))
    contacts = tuple(_contact(rng, cid) for cid in ids)
    events = []
    for cid in ids:
        for _ in range(rng.randint(0, 6)):
            etype = rng.choice(EVENT_TYPES)
            pool = SEND_TIMES if etype == "sent" else DATETIMES
            events.append({
                "contact_id": cid, "campaign": rng.choice(CAMPAIGNS[:5]), "type": etype,
                "timestamp": rng.choice(pool),
                "url": rng.choice(URLS) or None if etype == "click" else None,
            })
    distinct = tuple({tuple(e.values()): e for e in events}.values())
    return Workspace(SCHEMA, contacts, distinct, CAMPAIGNS, AS_OF)


FIELD_CASES = [
    ("city", "is", "berlin"), ("city", "is_not", "BERLIN"), ("city", "contains", "STAN"),
    ("city", "not_contains", "ärg"), ("city", "starts_with", "new"), ("city", "ends_with", "york"),
    ("city", "in", ("Berlin", "straße")), ("city", "not_in", ("berlin",)),
    ("city", "is_empty", None), ("city", "is_not_empty", None), ("city", "is", "i̇stanbul"),
    ("city", "contains", "ς"), ("email", "ends_with", ".io"), ("email_domain", "is", "X.IO"),
    ("email_domain", "not_in", ("x.io", "bücher.de")),
    ("score", "eq", 1.0), ("score", "ne", 1.0), ("score", "gt", 0.0), ("score", "gte", 2.0),
    ("score", "lt", 0.0), ("score", "lte", 0.1), ("score", "between", (0.0, 3.5)),
    ("score", "in", (0.0, 100.0)), ("score", "not_in", (0.0,)), ("score", "is_empty", None),
    ("score", "is_not_empty", None),
    ("birthday", "on", D(2026, 3, 15)), ("birthday", "not_on", D(2026, 3, 15)),
    ("birthday", "before", D(2026, 3, 14)), ("birthday", "after", D(2026, 3, 14)),
    ("birthday", "between", (D(2026, 2, 13), D(2026, 3, 16))), ("birthday", "in_last_days", 7),
    ("birthday", "older_than_days", 8), ("birthday", "is_empty", None),
    ("birthday", "before", dt.date.min), ("birthday", "after", dt.date.max),
    ("birthday", "in_last_days", 100_000),
    ("last_seen", "on", D(2026, 3, 14)), ("last_seen", "not_on", D(2026, 3, 14)),
    ("last_seen", "between", (D(2026, 3, 13), D(2026, 3, 14))),
    ("last_seen", "older_than_days", 0), ("last_seen", "is_not_empty", None),
    ("date_added", "in_last_days", 30), ("date_added", "after", D(2026, 3, 15)),
    ("vip", "is", True), ("vip", "is", False), ("vip", "is_empty", None),
    ("vip", "is_not_empty", None),
    ("status", "is", "active"), ("status", "is_not", "bounced"), ("status", "in", ("active",)),
    ("status", "not_in", ("active", "bounced")),
    ("lists", "includes", ("VIP",)), ("lists", "includes", ("newsletter", "b2b")),
    ("lists", "includes_all", ("vip", "newsletter")), ("lists", "excludes", ("vip",)),
    ("lists", "excludes", ("nope",)), ("lists", "is_empty", None), ("lists", "is_not_empty", None),
    ("lists", "includes", ("ärger-liste",)),
]

WINDOWS = [
    None, Window("on", AS_OF), Window("before", AS_OF), Window("after", D(2026, 2, 13)),
    Window("between", (D(2026, 3, 8), AS_OF)), Window("in_last_days", 7),
    Window("in_last_days", 0), Window("older_than_days", 30),
]
COUNTS = [
    CountCondition(), CountCondition("eq", 0), CountCondition("eq", 2), CountCondition("gte", 2),
    CountCondition("lte", 1), CountCondition("gt", 1), CountCondition("lt", 2),
    CountCondition("between", (1, 2)), CountCondition("between", (0, 0)),
]
CAMPAIGN_CHOICES = ["any", ("c1", "C1"), ("never-sent",), LastCampaigns(1), LastCampaigns(2),
                    LastCampaigns(9)]


@pytest.fixture(scope="module", params=["current", "minimal"])
def fixed(request, tmp_path_factory):
    """The fixed workspace indexed twice: as indexes are built now, and with only what
    every format-3 index has (format 3; no per-value field bitmaps, as for a field with more than
    VALUE_BITMAPS_MAX values; no campaign day ranges or recent-day bitmaps, as in an
    index built before them), so both the fast paths and their fallbacks are checked."""
    ws = fixed_workspace()
    directory = tmp_path_factory.mktemp("fixed")
    tables = write_workspace(ws, directory / "data")
    minimal = request.param == "minimal"
    with pytest.MonkeyPatch.context() as patch:
        if minimal:
            patch.setattr(store_index.contacts, "VALUE_BITMAPS_MAX", 0)
        engine = index_engine(tables, directory / "index")
    if minimal:
        meta_path = directory / "index" / "meta.json"
        meta = json.loads(meta_path.read_text())
        del meta["events"]["campaign_days"], meta["events"]["recent_bitmaps"]
        meta["format"] = 3  # aggregates as full arrays, no "aggregates" section
        del meta["events"]["aggregates"]
        meta_path.write_text(json.dumps(meta))
        engine = IndexEngine(tables, IndexData.open(directory / "index"))
        assert engine.index.campaign_days is None
        assert engine.index.recent_days("open", 1) is None
    fields = engine.index.fields
    assert fields["city"].value_bitmaps is not minimal
    assert (fields["birthday"].bitmap_days is None) is minimal
    return ws, engine


@pytest.mark.parametrize(("name", "op", "value"), FIELD_CASES)
@pytest.mark.parametrize("negate", [False, True])
def test_every_field_operator(fixed, name, op, value, negate):
    ws, engine = fixed
    root = Group("all", (FieldRule(name, op, value, negate),))
    assert engine.contact_ids([root], ws.as_of).tolist() == expected(ws, root)


@pytest.mark.parametrize("activity", ["sent", "opened", "clicked", "bounced", "unsubscribed"])
def test_every_activity_form(fixed, activity):
    ws, engine = fixed
    for when in WINDOWS:
        for count in COUNTS:
            for campaigns in CAMPAIGN_CHOICES:
                for negate in (False, True):
                    rule = ActivityRule(activity, campaigns, when, count, negate=negate)
                    root = Group("all", (rule,))
                    got = engine.contact_ids([root], ws.as_of).tolist()
                    assert got == expected(ws, root), rule


@pytest.mark.parametrize("url", ["PRICING", "ärger", "a%b", "https://", "zzz"])
@pytest.mark.parametrize("count", [CountCondition(), CountCondition("eq", 0), CountCondition("gte", 2)])
def test_url_contains(fixed, url, count):
    ws, engine = fixed
    for when in (None, Window("in_last_days", 30)):
        rule = ActivityRule("clicked", "any", when, count, url_contains=url)
        root = Group("all", (rule,))
        assert engine.contact_ids([root], ws.as_of).tolist() == expected(ws, root)


def test_groups_empty_nested_and_negated(fixed):
    ws, engine = fixed
    opened = ActivityRule("opened")
    cases = [
        Group("all", ()), Group("any", ()), Group("all", (), negate=True),
        Group("any", (Group("all", (opened, FieldRule("vip", "is", True))),
                      Group("any", (), negate=True)), negate=True),
        Group("all", (FieldRule("status", "is", "active"), ActivityRule("clicked", negate=True))),
    ]
    for root in cases:
        assert engine.contact_ids([root], ws.as_of).tolist() == expected(ws, root), root
        assert sum(engine.count([root], ws.as_of).values()) == len(expected(ws, root))


@pytest.mark.parametrize("join", ["to_bitmap", "gather", "to_mask"])
def test_every_way_of_joining_bitmaps_and_masks(fixed, monkeypatch, join):
    """Groups mixing bitmap rules (status, lists, activity) and mask rules (numbers) give
    the same rows whichever join the cost model picks."""
    from segengine.engines import index as index_engine_module

    def forced(n, in_bitmap, in_mask):
        return {way: 0.0 if way == join else 1.0 for way in ("to_bitmap", "gather", "to_mask")}

    monkeypatch.setattr(index_engine_module, "join_costs", forced)
    ws, engine = fixed
    score = FieldRule("score", "gte", 0.0)
    cases = [
        Group("all", (FieldRule("status", "is_not", "bounced"), score)),
        Group("any", (FieldRule("status", "is", "active"), FieldRule("score", "lt", 0.1))),
        Group("all", (ActivityRule("opened"), score, FieldRule("lists", "includes", ("vip",)))),
        Group("any", (ActivityRule("clicked", negate=True), FieldRule("score", "is_empty"))),
        Group("all", (Group("any", (ActivityRule("sent"), score)), FieldRule("vip", "is", True)),
              negate=True),
    ]
    for root in cases:
        assert engine.contact_ids([root], ws.as_of).tolist() == expected(ws, root), root
        assert sum(engine.count([root], ws.as_of).values()) == len(expected(ws, root))


def test_reindex_rebuilds_the_index_in_one_commit(tmp_path):
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(SAMPLE / "contacts.csv")
    ws.import_events(SAMPLE / "events.csv")
    before = ws.snapshot().manifest["index"]["path"]
    counts = {seg["name"]: ws.count(seg) for seg in SAMPLE_SEGMENTS}
    result = ws.reindex()
    after = ws.snapshot().manifest["index"]
    assert after["path"] == result["path"] != before
    assert after["covers"] == store_index.covers_of(ws.snapshot().manifest)
    assert json.loads((ws.path / after["path"] / "meta.json").read_text())["incremental"] is False
    assert {seg["name"]: ws.count(seg) for seg in SAMPLE_SEGMENTS} == counts
    shown = Cli(ws.path).json("reindex")
    assert shown["path"] == ws.snapshot().manifest["index"]["path"] != after["path"]
    assert "rebuilt the engagement index" in Cli(ws.path)("reindex").stdout


def test_last_campaigns_tie_break_and_as_of():
    """Send time desc, then campaign id desc by code point; later sends are not eligible."""
    from strategies import Workspace

    contacts = tuple(
        {"contact_id": i, "email": f"a{i}@x.io", "status": "active", "date_added": T(2026, 1, 1),
         "lists": [], **{name: None for name, _ in SCHEMA.custom}}
        for i in (1, 2, 3, 4)
    )
    tie = T(2026, 3, 10, 9)
    events = (
        {"contact_id": 1, "campaign": "Z", "type": "sent", "timestamp": tie, "url": None},
        {"contact_id": 2, "campaign": "ä", "type": "sent", "timestamp": tie, "url": None},
        {"contact_id": 3, "campaign": "a", "type": "sent", "timestamp": T(2026, 3, 16), "url": None},
        {"contact_id": 4, "campaign": "b", "type": "open", "timestamp": tie, "url": None},
    )
    ws = Workspace(SCHEMA, contacts, events, ("Z", "ä", "a", "b"), AS_OF)
    root = Group("all", (ActivityRule("sent", LastCampaigns(1)),))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tables = write_workspace(ws, Path(tmp) / "data", split=False)
        engine = index_engine(tables, Path(tmp) / "index")
        assert engine.contact_ids([root], AS_OF).tolist() == [2] == expected(ws, root)
        assert engine.contact_ids([root], D(2026, 3, 16)).tolist() == [3]
        assert engine.contact_ids([root], D(2026, 3, 9)).tolist() == []


def test_unknown_nodes_and_references_fail_loudly(fixed):
    ws, engine = fixed
    with pytest.raises(EngineError, match="no handler"):
        engine.contact_ids([Group("all", ("not a rule",))], ws.as_of)
    with pytest.raises(EngineError, match="not resolved"):
        engine.contact_ids([Group("all", (SegmentRef("x"),))], ws.as_of)


# --- the workspace: built in the import's transaction, incremental, never stale ---------


def split_events(tmp_path: Path) -> tuple[Path, ...]:
    """The sample events as four CSV files: most of them, two small batches, and a retry."""
    lines = (SAMPLE / "events.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    cut, cut2 = len(rows) * 9 // 10, len(rows) * 19 // 20
    paths = []
    parts = (("a", rows[:cut]), ("b", rows[cut:cut2]), ("b2", rows[cut2:]),
             ("c", rows[cut - 50 : cut + 50]))
    for name, part in parts:
        path = tmp_path / f"events-{name}.csv"
        path.write_text(header + "".join(part))
        paths.append(path)
    return tuple(paths)


SAMPLE_SEGMENTS = [
    {"name": "s1", "rules": [{"activity": "opened", "when": {"in_last_days": 60}}]},
    {"name": "s2", "rules": [{"activity": "opened", "count": {"gte": 3}},
                             {"field": "state", "op": "in", "value": ["CA", "ny"]}]},
    {"name": "s3", "match": "any", "rules": [
        {"activity": "clicked", "url_contains": "pricing"},
        {"activity": "sent", "campaigns": {"last": 2}, "count": {"eq": 0}},
        {"field": "lists", "op": "includes", "value": "Newsletter"}]},
    {"name": "s4", "rules": [{"activity": "opened", "negate": True},
                             {"field": "status", "op": "is", "value": "active"}]},
    {"name": "s5", "rules": [{"activity": "clicked", "campaigns": ["c2023-11-14-promo"],
                              "when": {"before": "2024-06-01"}},
                             {"field": "score", "op": "gte", "value": 20}]},
    {"name": "s6", "rules": [{"field": "title", "op": "contains", "value": "ENGINEER"},
                             {"field": "last_login", "op": "older_than_days", "value": 400}]},
]
SAMPLE_AS_OF = "2024-12-01"


def assert_same_answers(ws, engines=("index", "duckdb", "auto")) -> None:
    snap = ws.snapshot()
    for definition in SAMPLE_SEGMENTS:
        results = {e: ws.contact_ids(definition, as_of=SAMPLE_AS_OF, engine=e, snapshot=snap).tolist()
                   for e in engines}
        assert len({tuple(r) for r in results.values()}) == 1, (definition["name"], results)
        counts = {e: ws.count(definition, as_of=SAMPLE_AS_OF, engine=e) for e in engines}
        assert len({json.dumps(c, sort_keys=True) for c in counts.values()}) == 1


#: DELTA_MAX_PER_CONTACT that makes every update keep its aggregates in a delta, or fold
#: them into a new base (at 1,000 sample contacts, a batch of 1,000 events is either)
DELTA_SHARES = {"delta": 1e9, "dense": 0.0}


@pytest.fixture(scope="module", params=sorted(DELTA_SHARES))
def sample_ws(request, tmp_path_factory):
    """The sample data imported as contacts, then events in three imports plus a retry;
    the updates keep their aggregates in a delta or write a new base (the param)."""
    tmp = tmp_path_factory.mktemp("sample")
    ws = segengine.Workspace.init(tmp / "ws")
    first, second, third, retry = split_events(tmp)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aggregates, "DELTA_MAX_PER_CONTACT", DELTA_SHARES[request.param])
        ws.import_contacts(SAMPLE / "contacts.csv")
        ws.import_events(first)
        after_first = ws.snapshot().manifest
        ws.import_events(second)
        ws.import_events(third)
        ws.import_events(retry)  # all duplicates: no commit, the index stays
    delta = index_meta(ws)["events"]["aggregates"]["delta"]
    assert (delta is not None) is (request.param == "delta")
    return ws, after_first


def index_meta(ws) -> dict:
    snap = ws.snapshot()
    return json.loads((snap.root / snap.manifest["index"]["path"] / "meta.json").read_text())


def test_every_import_commits_a_covering_index(sample_ws):
    ws, after_first = sample_ws
    snap = ws.snapshot()
    entry = snap.manifest["index"]
    assert entry["covers"] == {"contacts": snap.manifest["contacts"], "events": snap.manifest["events"]}
    assert len(entry["covers"]["events"]) == 3
    assert after_first["index"]["covers"]["events"] == after_first["events"]
    assert index_meta(ws)["incremental"] is True
    assert_same_answers(ws)


def assert_equals_full_rebuild(ws, tmp_path: Path) -> None:
    """The workspace's (incrementally built) index has the arrays and bitmaps of a full
    build over the same files."""
    snap = ws.snapshot()
    incremental = load_index(snap)
    build_index(snap.files("contacts"), snap.files("events"), snap.schema, tmp_path / "full")
    full = IndexData.open(tmp_path / "full")
    for name in ("ids", "count", "first", "last", "recent", "status"):
        assert np.array_equal(getattr(incremental, name), getattr(full, name)), name
    assert set(incremental.bitmaps.entries) == set(full.bitmaps.entries)
    for key in full.bitmaps.entries:
        assert incremental.bitmaps.get(key) == full.bitmaps.get(key), key


def test_incremental_update_equals_full_rebuild(sample_ws, tmp_path):
    ws, _ = sample_ws
    assert_equals_full_rebuild(ws, tmp_path)
    snap = ws.snapshot()
    incremental, full = load_index(snap), IndexData.open(tmp_path / "full")
    assert not full.meta["incremental"]
    assert incremental.send_us == full.send_us and incremental.campaigns == full.campaigns
    as_of = dt.date.fromisoformat(SAMPLE_AS_OF)
    for definition in SAMPLE_SEGMENTS:
        root = ws.resolve(ws.load_segment(definition, snap), snap)
        a = IndexEngine(snap.tables, incremental).contact_ids([root], as_of)
        b = IndexEngine(snap.tables, full).contact_ids([root], as_of)
        assert a.tolist() == b.tolist()


@pytest.mark.parametrize("share", sorted(DELTA_SHARES))
def test_contacts_import_rebuilds_contacts_and_keeps_events(tmp_path, monkeypatch, share):
    """New contacts extend the rows past the aggregates' base; their first events then
    land in the delta (or a new base), and the index equals a full rebuild."""
    monkeypatch.setattr(aggregates, "DELTA_MAX_PER_CONTACT", DELTA_SHARES[share])
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(SAMPLE / "contacts.csv")
    ws.import_events(SAMPLE / "events.csv")
    lines = (SAMPLE / "contacts.csv").read_text().splitlines()
    header = lines[0].split(",")
    first = lines[1].split(",")
    first[header.index("status")] = "unsubscribed"
    extra = "\n".join([
        "email,status,lists,state,score",
        f"{first[0]},unsubscribed,vip;Newsletter,CA,99",
        "new.person@example.com,,newsletter,ny,",
    ])
    (tmp_path / "more.csv").write_text(extra + "\n")
    ws.import_contacts(tmp_path / "more.csv")
    meta = index_meta(ws)
    assert meta["incremental"] is True and meta["contacts"]["n"] == 1001
    assert_same_answers(ws)
    (tmp_path / "new.csv").write_text(
        "email,campaign,type,timestamp,url\n"
        "new.person@example.com,c2024-11-20-news,open,2024-11-21T08:00:00Z,\n"
        f"{first[0]},c2024-11-20-news,click,2024-11-21T09:00:00Z,https://x.example/pricing\n"
    )
    assert ws.import_events(tmp_path / "new.csv").imported == 2
    meta = index_meta(ws)
    assert (meta["events"]["aggregates"]["delta"] is not None) is (share == "delta")
    assert_same_answers(ws)
    assert_equals_full_rebuild(ws, tmp_path)
    by = ws.count({"name": "x", "rules": [{"field": "lists", "op": "includes", "value": "VIP"}]},
                  engine="index")
    assert by["by_status"]["unsubscribed"] >= 1


def test_index_refuses_a_manifest_it_does_not_cover(sample_ws, tmp_path):
    ws, after_first = sample_ws
    copy = tmp_path / "copy"
    shutil.copytree(ws.path, copy)
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["index"] = after_first["index"]  # an older index, covering fewer events
    # the GC removed its directory: build it again, for the files it covered
    old_dir = copy / after_first["index"]["path"]
    if not old_dir.exists():
        covers = after_first["index"]["covers"]
        build_index([str(copy / f) for f in covers["contacts"]],
                    [str(copy / f) for f in covers["events"]], ws.snapshot().schema, old_dir,
                    covers=covers)
    manifest_path.write_text(json.dumps(manifest))
    other = segengine.open(copy)
    definition = SAMPLE_SEGMENTS[0]
    with pytest.raises(EngineError, match="does not cover"):
        other.count(definition, engine="index")
    engine = get_engine("auto", other.snapshot())
    assert isinstance(engine, AutoEngine) and engine.index is None
    assert other.count(definition, as_of=SAMPLE_AS_OF) == ws.count(definition, as_of=SAMPLE_AS_OF)

    # An entry that claims the right files but points at an index built for others.
    manifest["index"] = dict(json.loads((ws.path / "manifest.json").read_text())["index"])
    manifest["index"]["path"] = after_first["index"]["path"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="other files"):
        segengine.open(copy).count(definition, engine="index")


def test_index_engine_without_index_refuses(tmp_path):
    with pytest.raises(EngineError, match="engagement index"):
        IndexEngine(write_workspace(fixed_workspace(), tmp_path))


def test_planner_sends_unsupported_rules_to_duckdb(sample_ws, monkeypatch):
    ws, _ = sample_ws
    definition = SAMPLE_SEGMENTS[1]
    want = ws.contact_ids(definition, as_of=SAMPLE_AS_OF, engine="duckdb").tolist()

    def refuse(self, node):
        return not isinstance(node, Compare)

    monkeypatch.setattr(Evaluator, "supports", refuse)
    monkeypatch.setattr(Evaluator, "unsupported_reason", lambda self, node: f"{node.op!r} (switched off by the test)")
    ws._after_write()  # drop cached engines
    assert ws.contact_ids(definition, as_of=SAMPLE_AS_OF, engine="auto").tolist() == want
    with pytest.raises(EngineError, match="switched off"):
        ws.contact_ids(definition, as_of=SAMPLE_AS_OF, engine="index")


def test_saving_a_segment_keeps_the_index(sample_ws):
    ws, _ = sample_ws
    before = ws.snapshot().manifest["index"]
    ws.save_segment(SAMPLE_SEGMENTS[0])
    assert ws.snapshot().manifest["index"] == before
    assert (ws.path / before["path"] / "meta.json").exists()


def test_empty_workspace_and_events_without_url_column(tmp_path):
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.save_segment(SAMPLE_SEGMENTS[0])
    assert ws.count("s1", engine="index")["total"] == 0
    ws.import_contacts(SAMPLE / "contacts.csv")
    table = pa.table({
        "email": ["dsmith300@outlook.example"] * 2,
        "campaign": ["x", "x"],
        "type": ["open", "sent"],
        "timestamp": pa.array([T(2024, 11, 30, 23), T(2024, 11, 1)], pa.timestamp("ms", tz="UTC")),
    })
    pq.write_table(table, tmp_path / "e.parquet")
    ws.import_events(tmp_path / "e.parquet")
    assert ws.count("s1", as_of=SAMPLE_AS_OF, engine="index")["total"] == 1
    assert_same_answers(ws)


# --- the layout that makes it fast: chunks, day-sorted segments, progress ------------------


EXTRA_RULES = [
    [{"activity": "opened", "when": {"in_last_days": 90}, "count": {"gte": 2}}],
    [{"activity": "opened", "when": {"in_last_days": 900}, "count": {"gte": 3}}],  # recent
    [{"activity": "sent", "when": {"after": "2025-01-01"}, "count": {"lt": 2}}],  # recent
    [{"activity": "clicked", "when": {"in_last_days": 900}, "count": {"eq": 3}}],  # not
    [{"activity": "opened", "when": {"after": "2023-12-01"}, "count": {"lte": 3}}],  # wide
    [{"activity": "sent", "when": {"before": "2026-09-01"}, "count": {"gte": 40}}],
    [{"activity": "sent", "when": {"between": ["2024-01-01", "2024-10-31"]}, "count": {"lt": 3}}],
    [{"activity": "clicked", "url_contains": "PRICING", "when": {"in_last_days": 200}}],
    [{"activity": "clicked", "url_contains": "pricing", "count": {"gte": 2}}],
    [{"activity": "clicked", "url_contains": "example", "negate": True}],
    [{"activity": "opened", "campaigns": ["c2024-07-16-promo", "c2024-09-24-promo"],
      "when": {"after": "2023-12-01"}, "count": {"between": [1, 2]}}],
    [{"match": "any", "rules": [{"field": "state", "op": "is", "value": "CA"},
                                {"activity": "opened", "when": {"in_last_days": 30}}]},
     {"field": "status", "op": "is", "value": "active"}],
]


def sample_roots(ws, snap):
    defs = SAMPLE_SEGMENTS + [{"name": f"x{i}", "rules": r} for i, r in enumerate(EXTRA_RULES)]
    return [ws.resolve(ws.load_segment(d, snap), snap) for d in defs]


def answers(tables, index, roots, as_of) -> list[list[int]]:
    return [IndexEngine(tables, index).contact_ids([root], as_of).tolist() for root in roots]


def test_small_chunks_and_blocks_build_the_same_index(sample_ws, tmp_path, monkeypatch):
    """Many chunks and event-store blocks (as at 200M events) give the same arrays, bitmaps
    and answers as one of each; every block's events of a type are sorted by day."""
    import segengine.store.index.events as store_index

    ws, _ = sample_ws
    snap = ws.snapshot()
    args = (snap.files("contacts"), snap.files("events"), snap.schema)
    build_index(*args, tmp_path / "one")
    monkeypatch.setattr(store_index, "BATCH_ROWS", 300)
    monkeypatch.setattr(store_index, "BLOCK_ROWS", 1000)
    build_index(*args, tmp_path / "many")
    one, many = IndexData.open(tmp_path / "one"), IndexData.open(tmp_path / "many")
    assert len(one.blocks()) == 1 and len(many.blocks()) > 3
    for name in ("count", "first", "last", "recent"):
        assert np.array_equal(getattr(one, name), getattr(many, name)), name
    assert one.send_us == many.send_us
    assert set(one.bitmaps.entries) == set(many.bitmaps.entries)
    assert any(key.startswith("u/") for key in one.bitmaps.entries)
    for key in one.bitmaps.entries:
        assert one.bitmaps.get(key) == many.bitmaps.get(key), key
    for block in many.blocks():
        for etype, cols in block.columns.items():
            if "day" in cols:
                assert (np.diff(np.asarray(cols["day"])) >= 0).all(), etype
    as_of = dt.date.fromisoformat(SAMPLE_AS_OF)
    roots = sample_roots(ws, snap)
    assert answers(snap.tables, many, roots, as_of) == answers(snap.tables, one, roots, as_of)


@pytest.mark.parametrize("sparse", [1, 10**9])
def test_counting_by_sort_and_by_bincount_agree(sample_ws, monkeypatch, sparse):
    """Count thresholds answer from sorted event rows (few events: a bitmap) or from a
    bincount over all contacts (many: a mask); both must equal DuckDB."""
    import segengine.engines.index as engine_index

    ws, _ = sample_ws
    snap = ws.snapshot()
    as_of = dt.date.fromisoformat(SAMPLE_AS_OF)
    roots = sample_roots(ws, snap)
    duck = DuckDBEngine(snap.tables)
    try:
        want = [duck.contact_ids([root], as_of).tolist() for root in roots]
    finally:
        duck.close()
    monkeypatch.setattr(engine_index, "SPARSE", sparse)
    assert answers(snap.tables, load_index(snap), roots, as_of) == want


class RecordingProgress:
    """Records each task's description, total and how far it was advanced."""

    def __init__(self):
        self.tasks: dict[str, list] = {}

    def task(self, description, total=None):
        import contextlib

        record = self.tasks[description] = [total, 0]

        class Task:
            def advance(self, n=1):
                record[1] += n

            def update(self, completed):
                record[1] = completed

        return contextlib.nullcontext(Task())


def test_index_build_reports_progress(tmp_path):
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(SAMPLE / "contacts.csv")
    progress = RecordingProgress()
    summary = ws.import_events(SAMPLE / "events.csv", progress=progress)
    n = summary.imported
    assert progress.tasks[f"indexing {n:,} events"] == [n, n]


def test_a_rule_segments_of_a_union_share_is_evaluated_once(fixed, monkeypatch):
    """Two segments with the same count rule (and a tree that repeats a group): the
    rule's events are counted once per evaluation, and the answers stay exact."""
    ws, engine = fixed
    counted = []
    original = Evaluator.counted

    def counting(self, events, low, high):
        counted.append(events)
        return original(self, events, low, high)

    monkeypatch.setattr(Evaluator, "counted", counting)
    twice = ActivityRule("opened", "any", None, CountCondition("gte", 2))
    shared = Group("any", (twice, FieldRule("vip", "is", True)))
    roots = [
        Group("all", (twice, FieldRule("status", "is", "active"))),
        Group("all", (shared, FieldRule("score", "gt", 0.0))),
        Group("any", (shared, Group("all", (shared,), negate=True))),
    ]
    union = sorted(set().union(*(expected(ws, r) for r in roots)))
    assert engine.contact_ids(roots, ws.as_of).tolist() == union
    assert len(counted) == 1
    for root in roots:  # each evaluation counts for itself
        assert engine.contact_ids([root], ws.as_of).tolist() == expected(ws, root)
    assert len(counted) == 4


@pytest.mark.parametrize("values", [
    np.array([3.0, 100.0, 0.0, 41.0, 3.0]),  # whole numbers: 16-bit offsets
    np.array([3.5, -1.0, 2.0]),  # fractions: a comparison sort
    np.array([-128, 127, 0, -5], dtype=np.int8),
    np.array([2**60, 2**60 + 5, 2**60 - 3], dtype=np.int64),
    np.array([2**62, -(2**62)], dtype=np.int64),  # a span too wide for offsets
    np.array([2**64 - 1, 2**64 - 7], dtype=np.uint64),
    np.array([2.0**60, 2.0**60 + 256, 2.0**60 - 512]),
    np.array([np.inf, 1.0, -np.inf]),
    np.array([], dtype=np.float64),
])
def test_sorting_a_column_for_its_order_sorts_every_kind_of_value(values):
    keys, bounds, order = index_engine_module.sorted_runs(values)
    assert np.array_equal(values[order], np.sort(values))
    distinct, counts = np.unique(values, return_counts=True)
    assert np.array_equal(keys, distinct) and keys.dtype == values.dtype
    assert bounds.tolist() == [0, *np.cumsum(counts).tolist()]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=60), marks=st.integers(1, 12),
       few=st.sampled_from([0, 3]), data=st.data())
def test_cumulative_unions_answer_every_run_of_their_bitmaps(sizes, marks, few, data):
    """`Cumulative.first`, `rest` and `between` against plain unions, for every bound,
    with marks that fall between them and kept tails reused across asks."""
    rows = np.random.default_rng(len(sizes)).permutation(max(sum(sizes), 1))
    cuts = np.cumsum([0, *sizes])
    bitmaps = [BitMap(rows[a:b].tolist()) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_engine_module, "MARK_UNIONS", marks)
        patch.setattr(index_engine_module, "FEW_CHUNKS", few)
        unions = index_engine_module.Cumulative.build(bitmaps)
        for _ in range(2):  # the second pass reads the kept tails
            for lo in range(len(bitmaps) + 1):
                assert unions.first(lo) == BitMap.union(BitMap(), *bitmaps[:lo])
                assert unions.rest(lo) == BitMap.union(BitMap(), *bitmaps[lo:])
                hi = data.draw(st.integers(lo, len(bitmaps)))
                assert unions.between(lo, hi) == BitMap.union(BitMap(), *bitmaps[lo:hi])
