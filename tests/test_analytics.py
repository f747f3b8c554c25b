"""`overlap`, `trend` and `why` on a real workspace, against the reference evaluator."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from conftest import Cli, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_as_it_stood, reference_contact_ids
from strategies import rule_trees, workspaces, write_workspace

from segengine.analytics import add_months, trend_points
from segengine.analytics.why import Contact, Decider, Event, Explainer, SendTimes
from segengine.engines.duckdb import DuckDBEngine
from segengine.fields import email_domain

CONTACTS = (
    "email,status,date_added,lists,state,score\n"
    "ann@example.com,active,2024-01-05T10:00:00Z,news;vip,CA,10\n"
    "bob@example.com,active,2024-01-31T23:59:59Z,news,NY,3\n"
    "cy@example.org,unsubscribed,2024-02-15T00:00:00Z,vip,CA,\n"
    "dee@example.org,bounced,2024-02-29T12:00:00Z,news,TX,7\n"
    "eve@example.net,active,2024-03-10T08:00:00Z,,CA,1\n"
    "fay@example.net,active,2024-03-31T00:00:01Z,news;vip,,9\n"
)
EVENTS = (
    "email,campaign,type,timestamp,url\n"
    "ann@example.com,jan,sent,2024-01-30T09:00:00Z,\n"
    "bob@example.com,jan,sent,2024-01-31T09:00:00Z,\n"
    "ann@example.com,jan,open,2024-01-31T10:00:00Z,\n"
    "ann@example.com,jan,click,2024-02-01T10:00:00Z,https://example.com/Pricing\n"
    "bob@example.com,jan,open,2024-02-28T10:00:00Z,\n"
    "ann@example.com,feb,sent,2024-02-29T09:00:00Z,\n"
    "cy@example.org,feb,sent,2024-02-29T09:00:00Z,\n"
    "dee@example.org,feb,sent,2024-02-29T09:00:00Z,\n"
    "cy@example.org,feb,open,2024-03-01T11:00:00Z,\n"
    "dee@example.org,feb,open,2024-03-02T11:00:00Z,\n"
    "eve@example.net,mar,sent,2024-03-31T09:00:00Z,\n"
    "fay@example.net,mar,sent,2024-03-31T09:00:00Z,\n"
    "eve@example.net,mar,open,2024-03-31T12:00:00Z,\n"
    "ann@example.com,mar,open,2024-04-02T12:00:00Z,\n"
)
SEGMENTS = {
    "news": {"name": "news", "rules": [{"field": "lists", "op": "includes", "value": "news"}]},
    "ca": {"name": "ca", "rules": [{"field": "state", "op": "is", "value": "ca"}]},
    "openers": {"name": "openers", "rules": [{"activity": "opened"}]},
    "never-opened": {"name": "never-opened", "rules": [{"activity": "opened", "negate": True}]},
    "recent": {"name": "recent", "match": "any", "rules": [
        {"activity": "opened", "campaigns": {"last": 1}},
        {"activity": "clicked", "when": {"in_last_days": 30}, "url_contains": "pricing"},
    ]},
    "ca-openers": {"name": "ca-openers", "rules": [
        {"segment": "ca"}, {"segment": "openers"}, {"field": "score", "op": "gte", "value": 5},
    ]},
    "not-ca-openers": {"name": "not-ca-openers", "rules": [{"segment": "ca-openers", "negate": True}]},
}
ENGINES = ("auto", "duckdb", "polars", "index")


@pytest.fixture
def filled(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "c.csv", CONTACTS))
    ws.import_events(write(tmp_path / "e.csv", EVENTS))
    for doc in SEGMENTS.values():
        ws.save_segment(doc)
    return ws


def rows(ws):
    """The workspace's contacts and events as the reference evaluator's dicts."""
    snap = ws.snapshot()
    con = ws.session.connection(snap)

    def fetch(sql):
        result = con.execute(sql)
        names = [d[0] for d in result.description]
        return [dict(zip(names, r, strict=True)) for r in result.fetchall()]

    return fetch("SELECT * FROM contacts"), fetch("SELECT * FROM events"), snap


def reference(ws, name, day, as_it_stood=False):
    contacts, events, snap = rows(ws)
    root = ws.resolve(ws.load_segment(name, snap), snap)
    if as_it_stood:
        return reference_as_it_stood(contacts, events, snap.schema, root, day)
    return reference_contact_ids(contacts, events, snap.schema, root, day)


def active_ids(ws):
    contacts, _, _ = rows(ws)
    return {c["contact_id"] for c in contacts if c["status"] == "active"}


# --- overlap --------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_overlap_matches_the_reference(filled, engine):
    names = ["news", "ca", "openers", "recent"]
    day = dt.date(2024, 4, 15)
    got = filled.overlap(*names, as_of=day, engine=engine)
    sets = [reference(filled, n, day) for n in names]
    active = active_ids(filled)
    assert list(got) == ["segments", "as_of", "total", "sendable", "exclusive", "union"]
    assert got["segments"] == names and got["as_of"] == "2024-04-15"
    assert got["total"] == [[len(a & b) for b in sets] for a in sets]
    assert got["sendable"] == [[len(a & b & active) for b in sets] for a in sets]
    others = [set().union(*(s for j, s in enumerate(sets) if j != i)) for i in range(len(sets))]
    assert got["exclusive"] == [len(s - o) for s, o in zip(sets, others, strict=True)]
    union = set().union(*sets)
    assert got["union"] == {"total": len(union), "sendable": len(union & active)}
    assert got["total"][0][1] > 0 and got["exclusive"] != [0, 0, 0, 0]  # the data is not trivial


def test_overlap_cli_table_and_json(filled):
    cli = Cli(filled.path)
    doc = cli.json("overlap", "news", "ca", "--as-of", "2024-04-15")
    # news: ann bob dee(bounced) fay; ca: ann cy(unsubscribed) eve
    assert doc["total"] == [[4, 1], [1, 3]]
    assert doc["sendable"] == [[3, 1], [1, 2]]
    assert doc["exclusive"] == [3, 2] and doc["union"] == {"total": 6, "sendable": 4}
    out = cli("overlap", "news", "ca", "--as-of", "2024-04-15").stdout
    assert "exclusive" in out and "union: 6 contacts, 4 sendable" in out


# --- trend ----------------------------------------------------------------------------


def test_month_steps_keep_the_day_or_take_the_month_end():
    start = dt.date(2024, 1, 31)
    assert trend_points(start, dt.date(2024, 5, 31), "month") == [
        dt.date(2024, 1, 31), dt.date(2024, 2, 29), dt.date(2024, 3, 31), dt.date(2024, 4, 30),
        dt.date(2024, 5, 31),
    ]
    assert add_months(dt.date(2025, 1, 31), 1) == dt.date(2025, 2, 28)
    assert add_months(dt.date(2024, 12, 15), 2) == dt.date(2025, 2, 15)
    assert trend_points(dt.date(2024, 1, 1), dt.date(2024, 1, 20), "week") == [
        dt.date(2024, 1, 1), dt.date(2024, 1, 8), dt.date(2024, 1, 15),
    ]
    assert trend_points(dt.date(2024, 1, 1), dt.date(2024, 1, 1), "day") == [dt.date(2024, 1, 1)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("start", "end", "every"),
    [("2024-01-29", "2024-04-03", "day"), ("2024-01-31", "2024-03-31", "month"),
     ("2024-01-01", "2024-04-30", "week")],
)
def test_trend_matches_the_reference(filled, engine, start, end, every):
    names = ["openers", "recent", "never-opened"]
    got = filled.trend(*names, start=start, end=end, every=every, engine=engine)
    assert got["segments"] == names and got["every"] == every
    active = active_ids(filled)
    previous = None
    days = trend_points(dt.date.fromisoformat(start), dt.date.fromisoformat(end), every)
    assert [p["as_of"] for p in got["points"]] == [d.isoformat() for d in days]
    for point, day in zip(got["points"], days, strict=True):
        union = set().union(*(reference(filled, n, day, as_it_stood=True) for n in names))
        expected = {
            "as_of": day.isoformat(), "total": len(union), "sendable": len(union & active),
            "joined": None if previous is None else len(union - previous),
            "left": None if previous is None else len(previous - union),
        }
        assert point == expected, day
        previous = union


def test_trend_points_move_from_the_last_point(filled, monkeypatch):
    """Daily points of activity rules are moved from the previous point (only the rows
    with events on the day, or added that day, are tested again) and stay exact."""
    from segengine.analytics import sets

    moved = []
    move = sets.moved_point

    def counting(*args):
        changed = move(*args)
        moved.append(changed is not None)
        return changed

    monkeypatch.setattr(sets, "moved_point", counting)
    # "recent" tests a click URL, which is not moved: only these two are
    names = ["openers", "never-opened"]
    got = filled.trend(*names, start="2024-01-29", end="2024-03-05", every="day")
    assert sum(moved) >= len(got["points"]) // 2
    previous = None
    for point in got["points"]:
        day = dt.date.fromisoformat(point["as_of"])
        union = set().union(*(reference(filled, n, day, as_it_stood=True) for n in names))
        assert point["total"] == len(union), day
        assert point["joined"] == (None if previous is None else len(union - previous)), day
        assert point["left"] == (None if previous is None else len(previous - union)), day
        previous = union


def test_trend_across_month_ends_sees_contacts_and_events_by_then(filled):
    got = filled.trend("openers", start="2024-01-31", end="2024-03-31", every="month")
    assert got["points"] == [
        # ann opened on Jan 31; bob was added that day but opened only on Feb 28
        {"as_of": "2024-01-31", "total": 1, "sendable": 1, "joined": None, "left": None},
        {"as_of": "2024-02-29", "total": 2, "sendable": 2, "joined": 1, "left": 0},
        {"as_of": "2024-03-31", "total": 5, "sendable": 3, "joined": 3, "left": 0},
    ]
    never = filled.trend("never-opened", start="2024-01-31", end="2024-03-31", every="month")
    # a contact not yet added is in no segment, not even "never opened"
    assert [p["total"] for p in never["points"]] == [1, 2, 1]
    assert never["points"][2]["left"] == 2 and never["points"][2]["joined"] == 1


def test_trend_frame_and_cli(filled):
    frame = filled.trend_frame("openers", start="2024-01-31", end="2024-03-31", every="month")
    assert frame.columns == ["as_of", "total", "sendable", "joined", "left"]
    assert frame["as_of"][1] == dt.date(2024, 2, 29) and frame["joined"][0] is None
    cli = Cli(filled.path)
    doc = cli.json("trend", "openers", "news", "--from", "2024-03-01", "--to", "2024-03-03")
    assert [p["as_of"] for p in doc["points"]] == ["2024-03-01", "2024-03-02", "2024-03-03"]
    out = cli("trend", "openers", "--from", "2024-01-31", "--to", "2024-03-31", "--every", "month").stdout
    assert "2024-02-29" in out and "joined" in out


# --- why ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_why_shows_each_rule_and_what_it_saw(filled, engine):
    got = filled.why("  ANN@Example.com\t", "ca-openers", as_of="2024-04-15", engine=engine)
    assert got["email"] == "ann@example.com" and got["member"] is True
    assert got["segment"] == "ca-openers" and got["match"] == "all"
    ca, openers, score = got["rules"]
    assert ca["kind"] == "segment" and ca["rule"] == {"segment": "ca", "match": "all"}
    assert ca["matched"] and ca["rules"][0]["value"] == "CA"
    opened = openers["rules"][0]
    assert opened["kind"] == "activity" and opened["events"] == {"in_scope": 2, "in_window": 2}
    assert score == {"path": "rules[2]", "kind": "field",
                     "rule": {"field": "score", "op": "gte", "value": 5}, "matched": True, "value": 10}
    bob = filled.why("bob@example.com", "recent", as_of="2024-04-15", engine=engine)
    assert bob["member"] is False
    last, clicked = bob["rules"]
    assert last["events"] == {"in_scope": 0, "in_window": 0, "campaigns": ["mar"]}
    assert clicked["events"]["window"] == {"from": "2024-03-16", "to": "2024-04-15"}
    ann = filled.why("ann@example.com", "recent", as_of="2024-03-02", engine=engine)
    assert ann["rules"][1]["events"] == {
        "in_scope": 1, "in_window": 1, "window": {"from": "2024-02-01", "to": "2024-03-02"},
    }
    assert ann["member"] is True


def test_why_agrees_with_membership_for_every_contact(filled):
    contacts, _, _ = rows(filled)
    for name in SEGMENTS:
        members = reference(filled, name, dt.date(2024, 4, 1))
        for c in contacts:
            got = filled.why(c["email"], name, as_of="2024-04-01")
            assert got["member"] is (c["contact_id"] in members), (name, c["email"])


def test_why_shows_a_bucket_number_and_agrees_with_the_engines(filled):
    import hashlib

    contacts, _, _ = rows(filled)
    half = {"name": "half", "rules": [{"bucket": {"seed": "spring", "from": 0, "to": 5000}}]}
    members = set(filled.contact_ids(half, as_of="2024-04-01").tolist())
    for c in contacts:
        # an invisible character and capitals around the address: the one address rule finds it
        got = filled.why("\u200b" + c["email"].upper() + " ", half, as_of="2024-04-01")
        (rule,) = got["rules"]
        number = int(hashlib.sha256(f"spring:{c['email']}".encode()).hexdigest()[:15], 16) % 10000
        assert rule["kind"] == "bucket" and rule["bucket_number"] == number
        assert rule["matched"] is got["member"] is (number < 5000) is (c["contact_id"] in members)


def test_why_shows_a_reference_inside_a_reference(filled):
    got = filled.why("ann@example.com", "not-ca-openers", as_of="2024-04-15")
    (outer,) = got["rules"]
    assert outer["rule"] == {"segment": "ca-openers", "negate": True, "match": "all"}
    assert outer["matched"] is False and got["member"] is False
    assert [r["kind"] for r in outer["rules"]] == ["segment", "segment", "field"]
    assert outer["rules"][0]["rule"]["segment"] == "ca" and outer["rules"][0]["matched"] is True


def test_why_cli(filled):
    cli = Cli(filled.path)
    out = cli("why", "cy@example.org", "never-opened", "--as-of", "2024-04-15").stdout
    assert "cy@example.org is NOT in never-opened" in out and "1 event(s) in scope" in out
    doc = cli.json("why", "eve@example.net", "ca-openers", "--as-of", "2024-04-15")
    assert doc["member"] is False and doc["rules"][2]["value"] == 1


@settings(max_examples=int(os.environ.get("SEGENGINE_ENGINE_EXAMPLES", "5")) * 4, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(ws=workspaces(), data=st.data())
def test_why_decides_random_trees_as_the_reference(tmp_path_factory, ws, data):
    """Every node of a random tree, for every contact, as the reference decides it."""
    root = data.draw(rule_trees(ws.schema, ws.campaigns))
    engine = DuckDBEngine(write_workspace(ws, tmp_path_factory.mktemp("why")))
    try:
        sends = SendTimes(engine, engine.connection)
        for c in ws.contacts:
            fields = {name: c.get(name) for name in ws.schema}
            fields["email_domain"] = email_domain(c["email"])
            events = [Event(e["type"], e["campaign"], e["timestamp"].date(), e["url"])
                      for e in ws.events if e["contact_id"] == c["contact_id"]]
            decider = Decider(Contact(c["contact_id"], fields, events), ws.as_of, sends, engine)
            tree = Explainer(decider, ws.schema).node(root, root, "rules")
            check(tree, root, c, ws)
    finally:
        engine.close()


def check(node, rule, contact, ws):
    from segengine.definition.nodes import Group

    whole = rule if isinstance(rule, Group) else Group("all", (rule,))
    expected = contact["contact_id"] in reference_contact_ids(
        [contact], list(ws.events), ws.schema, whole, ws.as_of
    )
    assert node["matched"] is expected, (node["path"], rule)
    for child_node, child in zip(node.get("rules", []), getattr(rule, "rules", ()), strict=True):
        check(child_node, child, contact, ws)


# --- bad input: exit 2, one line naming the option, nothing changed -------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["overlap", "news"], "overlap needs at least two segments"),
        (["overlap", "news", "nope"], "no saved segment 'nope'"),
        (["overlap", "news", "ca", "--as-of", "2024-13-01"], "--as-of: '2024-13-01' is not a date"),
        (["trend", "news", "--from", "2024-03-02", "--to", "2024-03-01"], "--from: 2024-03-02 is after --to"),
        (["trend", "news", "--from", "2024-03-01", "--to", "2024-03-09", "--every", "year"],
         "--every: 'year' is not a step"),
        (["trend", "news", "--from", "yesterday", "--to", "2024-03-01"], "--from: 'yesterday' is not a date"),
        (["trend", "news", "--from", "2024-03-01", "--to", "2024-02-30"], "--to: '2024-02-30' is not a date"),
        (["trend", "news", "--from", "2020-01-01", "--to", "2024-01-01"], "--from/--to: more than 1000 points"),
        (["why", "nobody@example.com", "news"], "EMAIL: no contact has the address 'nobody@example.com'"),
        (["why", "ann@example.com", "news", "--as-of", "soon"], "--as-of: 'soon' is not a date"),
    ],
)
def test_bad_input_exits_2_with_one_line(filled, args, message):
    before = (filled.path / "manifest.json").read_bytes()
    result = Cli(filled.path)(*args, code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.stdout == ""
    assert (filled.path / "manifest.json").read_bytes() == before


def test_bad_input_from_the_api(filled):
    from segengine.errors import InputError

    with pytest.raises(InputError, match="at least two"):
        filled.overlap("news")
    with pytest.raises(InputError, match="--every"):
        filled.trend("news", start="2024-01-01", end="2024-01-02", every="hour")
    with pytest.raises(InputError, match="no contact"):
        filled.why("x@y.z", "news")
    assert json.loads(json.dumps(filled.overlap("news", "ca")))["union"]["total"] == 6


def test_why_reads_many_events_from_the_index_as_from_the_data(filled, tmp_path):
    """More events of a type than the index keeps latest days for: the day bitmaps say
    which days to read; two on one day, one on the first and one on the last day."""
    extra = "email,campaign,type,timestamp,url\n" + "".join(
        f"bob@example.com,{c},open,{t},\n"
        for c, t in [("jan", "2024-01-31T11:00:00Z"), ("feb", "2024-03-05T08:00:00Z"),
                     ("feb", "2024-03-05T09:00:00Z"), ("mar", "2024-04-01T10:00:00Z"),
                     ("mar", "2024-04-20T10:00:00Z")]
    ) + "bob@example.com,mar,click,2024-04-20T10:01:00Z,https://x.example/PRICING\n"
    filled.import_events(write(tmp_path / "more.csv", extra))
    seg = {"name": "busy", "rules": [
        {"activity": "opened", "campaigns": ["feb", "mar"], "when": {"after": "2024-03-05"}, "count": {"gte": 2}},
        {"activity": "clicked", "url_contains": "pricing"}]}
    answers = {e: filled.why("bob@example.com", seg, as_of="2024-04-30", engine=e) for e in ENGINES}
    assert all(a == answers["duckdb"] for a in answers.values())
    opened, clicked = answers["index"]["rules"]
    assert opened["events"] == {"in_scope": 4, "in_window": 2,
                                "window": {"from": "2024-03-06", "to": None}}
    assert clicked["events"] == {"in_scope": 1, "in_window": 1} and answers["index"]["member"] is True


def test_the_analytics_benchmark_agrees_with_duckdb_sql(tmp_path):
    """benchmarks/analytics.py on a small synthetic workspace: every answer (overlap,
    each trend point, each why) is checked against hand-written SQL before timing."""
    import argparse

    import segengine
    from benchmarks.analytics import run
    from segengine.synth import generate

    generate(tmp_path / "data", contacts=400, events=6000, seed=3)
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(tmp_path / "data" / "contacts.parquet")
    ws.import_events(tmp_path / "data" / "events.parquet")
    report = run(argparse.Namespace(workspace=str(tmp_path / "ws"), as_of="2026-10-09",
                                    repeat=1, trend_repeat=1, points=40))
    assert report["trend"]["points"] == 40 and len(report["trend"]["segments"]) == 4
    assert {r["member"] for r in report["why"].values()} <= {True, False}
    assert report["overlap"]["segengine_ms"] > 0
