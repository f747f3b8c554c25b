"""`split`, `count --priority` and `export --label-column` against the reference evaluator.

One synthetic workspace (a few hundred contacts with fields, lists and events) is built
once; tests that write work on a copy. Expected answers come from tests/reference.py
over the workspace's stored rows, with bucket numbers from hashlib, never from an engine.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Cli
from reference import bucket_of, reference_contact_ids
from test_send import HTML, smtp  # noqa: F401 - the SMTP server fixture

import segengine
from segengine.definition.nodes import BucketRule, Group

AS_OF = "2026-11-20"
DAY = dt.date.fromisoformat(AS_OF)
SEGMENTS = {
    "news": {"name": "news", "rules": [{"field": "lists", "op": "includes", "value": "newsletter"}]},
    "openers": {"name": "openers", "rules": [{"activity": "opened", "when": {"in_last_days": 60}}]},
    "vips": {"name": "vips", "rules": [{"field": "vip", "op": "is", "value": True}]},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from segengine.synth import generate

    root = tmp_path_factory.mktemp("split")
    generate(root / "data", contacts=400, events=6000, seed=3)
    ws = segengine.Workspace.init(root / "ws")
    ws.import_contacts(root / "data" / "contacts.parquet")
    ws.import_events(root / "data" / "events.parquet")
    for doc in SEGMENTS.values():
        ws.save_segment(doc)
    return root / "ws"


@pytest.fixture
def ws(built, tmp_path) -> segengine.Workspace:
    """A copy of the built workspace: tests may write to it."""
    shutil.copytree(built, tmp_path / "ws")
    return segengine.Workspace(tmp_path / "ws")


@pytest.fixture
def cli(ws) -> Cli:
    return Cli(ws.path)


# --- the reference ----------------------------------------------------------------------


def stored_rows(ws: segengine.Workspace) -> tuple[list[dict], list[dict]]:
    snap = ws.snapshot()
    contacts = [row for f in snap.files("contacts") for row in pq.read_table(f).to_pylist()]
    events = [row for f in snap.files("events") for row in pq.read_table(f).to_pylist()]
    return contacts, events


class Reference:
    """The workspace's segments evaluated by the reference evaluator."""

    def __init__(self, ws: segengine.Workspace):
        self.ws = ws
        self.contacts, self.events = stored_rows(ws)
        self.by_id = {c["contact_id"]: c for c in self.contacts}

    def ids(self, segment) -> set[int]:
        root = self.ws.resolve(self.ws.load_segment(segment))
        return reference_contact_ids(self.contacts, self.events, self.ws.snapshot().schema, root, DAY)

    def union(self, *segments) -> set[int]:
        return set().union(*(self.ids(s) for s in segments))

    def active(self, ids: set[int]) -> set[int]:
        return {i for i in ids if self.by_id[i]["status"] == "active"}

    def group(self, ids: set[int], seed: str, low: int, high: int) -> set[int]:
        return {i for i in ids if low <= bucket_of(seed, self.by_id[i]["email"]) < high}


# --- split ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["auto", "index", "duckdb", "polars"])
def test_split_counts_match_the_reference(ws, engine):
    ref = Reference(ws)
    result = ws.split("news", "openers", groups="a=45,b=45,holdout=10", as_of=AS_OF, engine=engine)
    assert result["seed"] == "news+openers"
    union = ref.union("news", "openers")
    expected = []
    for name, low, high in (("a", 0, 4500), ("b", 4500, 9000), ("holdout", 9000, 10_000)):
        members = ref.group(union, "news+openers", low, high)
        expected.append({"name": name, "from": low, "to": high, "total": len(members),
                         "sendable": len(ref.active(members))})
    got = [{k: g[k] for k in ("name", "from", "to", "total", "sendable")} for g in result["groups"]]
    assert got == expected
    assert sum(g["total"] for g in got) == len(union)
    assert all(g["total"] > 0 for g in got)


def test_split_with_two_decimals_and_a_seed(ws):
    ref = Reference(ws)
    result = ws.split("news", groups=[("x", "12.34"), ("y", 87.66)], seed="q4", as_of=AS_OF)
    assert [(g["from"], g["to"]) for g in result["groups"]] == [(0, 1234), (1234, 10_000)]
    assert result["groups"][0]["total"] == len(ref.group(ref.ids("news"), "q4", 0, 1234))
    assert result["seed"] == "q4"
    as_mapping = ws.split("news", groups={"x": "12.34", "y": 87.66}, seed="q4", as_of=AS_OF)
    assert as_mapping == result


def test_save_writes_one_segment_per_group_in_one_commit(ws, tmp_path):
    ref = Reference(ws)
    path = tmp_path / "recent.json"
    path.write_text(json.dumps({"name": "recent", "rules": [
        {"field": "date_added", "op": "in_last_days", "value": 400}]}))
    version = ws.snapshot().version
    result = ws.split("vips", path, groups="a=50,b=50", save="exp", as_of=AS_OF)
    assert result["seed"] == "vips+recent"
    assert result["saved"] == ["exp-a", "exp-b"]
    assert ws.snapshot().version == version + 1  # one commit for every group
    saved = ws.snapshot().segments
    assert saved["exp-a"]["rules"][0]["rules"][0] == {"segment": "vips"}  # refers to it
    assert saved["exp-a"]["rules"][0]["rules"][1]["rules"] == [  # a file's rules copied in
        {"field": "date_added", "op": "in_last_days", "value": 400}]
    assert saved["exp-b"]["rules"][1] == {"bucket": {"seed": "vips+recent", "from": 5000, "to": 10000}}
    union = ref.union("vips", path)
    for group, (low, high) in zip(("a", "b"), ((0, 5000), (5000, 10_000)), strict=True):
        expected = ref.group(union, "vips+recent", low, high)
        assert set(ws.contact_ids(f"exp-{group}", as_of=AS_OF).tolist()) == expected
        assert ref.ids(f"exp-{group}") == expected


def test_groups_are_stable_when_the_audience_grows(ws, tmp_path):
    before = ws.split("news", groups="a=50,b=50", save="ab", as_of=AS_OF)
    members = {g: set(ws.members(f"ab-{g}", as_of=AS_OF)["email"].to_list()) for g in "ab"}
    extra = tmp_path / "more.csv"
    extra.write_text("email,lists\n" + "".join(f"new{i}@later.example,newsletter\n" for i in range(50)))
    ws.import_contacts(extra)
    after = {g: set(ws.members(f"ab-{g}", as_of=AS_OF)["email"].to_list()) for g in "ab"}
    for g in "ab":
        assert members[g] <= after[g]  # nobody moved
    assert sum(len(after[g]) for g in "ab") == sum(g["total"] for g in before["groups"]) + 50


def test_split_cli_table_and_json(cli):
    shown = cli("split", "news", "--groups", "a=45,b=45,holdout=10", "--as-of", AS_OF).stdout
    assert "holdout" in shown and "[9000, 10000)" in shown and "10 %" in shown
    doc = cli.json("split", "news", "--groups", "a=45,b=45,holdout=10", "--as-of", AS_OF)
    assert set(doc) == {"seed", "as_of", "groups"}
    assert [set(g) for g in doc["groups"]] == [{"name", "from", "to", "percent", "total", "sendable"}] * 3
    saved = cli.json("split", "news", "--groups", "a=45,b=45,holdout=10", "--save", "spring")
    assert saved["saved"] == ["spring-a", "spring-b", "spring-holdout"]
    assert cli.json("count", "spring-a", "spring-b", "spring-holdout", "--as-of", AS_OF)["total"] == \
        cli.json("count", "news", "--as-of", AS_OF)["total"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--groups", "a=45,b=45"], "--groups: the percentages sum to 90, not 100"),
        (["--groups", "a=45,b=55.5"], "--groups: the percentages sum to 100.5, not 100"),
        (["--groups", "a=33.333,b=66.667"], "--groups: a=33.333 is not a percentage with at most two decimals"),
        (["--groups", "a=50,a=50"], "--groups: group 'a' is named twice"),
        (["--groups", "a=50,b"], "--groups: 'b' is not NAME=PCT"),
        (["--groups", "A=50,b=50"], "--groups: 'A' is not a group name"),
        (["--groups", "a=100,b=0"], "--groups: group 'b' has 0 %"),
        (["--groups", "a=-5,b=105"], "--groups: a=-5 is not a percentage"),
        (["--groups", "a=50,b=50", "--seed", ""], "--seed: the seed may not be empty"),
        (["--groups", "a=50,b=50", "--save", "X" * 70], "--save: "),
    ],
)
def test_bad_split_input_exits_2_and_changes_nothing(cli, ws, args, message):
    before = (ws.path / "manifest.json").read_bytes()
    result = cli("split", "news", *args, code=2)
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (ws.path / "manifest.json").read_bytes() == before


def test_a_save_that_would_make_a_cycle_saves_no_group(cli, ws, tmp_path):
    # news-b exists and refers to news: saving the groups news-a/news-b of "news-b"
    # would make news-b refer to itself
    ws.save_segment({"name": "news-b", "rules": [{"segment": "news"}]})
    before = (ws.path / "manifest.json").read_bytes()
    result = cli("split", "news-b", "--groups", "a=50,b=50", "--save", "news", code=2)
    assert "cycle" in result.stderr
    assert (ws.path / "manifest.json").read_bytes() == before
    assert "news-a" not in ws.snapshot().segments


# --- count --priority ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["auto", "duckdb", "polars"])
def test_priority_counts_match_the_reference(ws, engine):
    ref = Reference(ws)
    result = ws.priority("vips", "openers", "news", as_of=AS_OF, engine=engine)
    taken: set[int] = set()
    expected = []
    for name in ("vips", "openers", "news"):
        own = ref.ids(name)
        gets = own - taken
        expected.append({"segment": name, "matched": len(own), "total": len(gets),
                         "sendable": len(ref.active(gets)), "lost": len(own & taken)})
        taken |= own
    assert result["segments"] == expected
    assert result["union"] == {"total": len(taken), "sendable": len(ref.active(taken))}
    assert all(row["lost"] > 0 for row in expected[1:])  # the audiences overlap


def test_priority_cli(cli):
    doc = cli.json("count", "vips", "openers", "--priority", "--as-of", AS_OF)
    assert [r["segment"] for r in doc["segments"]] == ["vips", "openers"]
    shown = cli("count", "vips", "openers", "--priority", "--as-of", AS_OF).stdout
    assert "lost to earlier" in shown and "vips > openers" in shown
    result = cli("count", "vips", "--priority", "--contacts", "x.parquet", code=2)
    assert "--priority" in result.stderr


@pytest.mark.parametrize(("segments", "says"), [
    (["vips"], "at least two segments (got 1)"),
    (["vips", "openers", "vips"], "'vips' is listed twice"),
    (["vips", "nosuch"], "no saved segment 'nosuch'"),
])
def test_priority_refuses_a_list_that_is_not_one(cli, ws, segments, says):
    before = (ws.path / "manifest.json").read_bytes()
    result = cli("count", *segments, "--priority", code=2)
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    assert (ws.path / "manifest.json").read_bytes() == before
    with pytest.raises(segengine.InputError, match=re.escape(says)):
        ws.priority(*segments)


# --- export --label-column -------------------------------------------------------------------


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("engine", ["auto", "duckdb"])
def test_label_column_names_the_first_segment_matched(cli, ws, tmp_path, engine):
    ref = Reference(ws)
    out = tmp_path / "labelled.csv"
    cli("export", "vips", "openers", "news", "-o", out, "--label-column", "audience",
        "--as-of", AS_OF, "--engine", engine)
    rows = read_csv(out)
    expected: dict[str, str] = {}
    for name in ("vips", "openers", "news"):
        for i in ref.active(ref.ids(name)):
            expected.setdefault(ref.by_id[i]["email"], name)
    assert {r["email"]: r["audience"] for r in rows} == expected
    assert [r["email"] for r in rows] == sorted(expected)
    assert list(rows[0]) == ["email", *ws.snapshot().schema.custom_fields, "audience"]
    priority = ws.priority("vips", "openers", "news", as_of=AS_OF)
    for row in priority["segments"]:
        assert sum(r["audience"] == row["segment"] for r in rows) == row["sendable"]


def test_label_column_in_parquet_and_the_api(ws, tmp_path):
    out = tmp_path / "labelled.parquet"
    result = ws.export("news", "vips", output=out, columns="email", label_column="segment",
                       as_of=AS_OF)
    table = pq.read_table(out)
    assert table.column_names == ["email", "segment"]
    assert result.rows == table.num_rows and set(table.column("segment").to_pylist()) == {"news", "vips"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--label-column", "email"], "'email' is already an exported column"),
        (["--label-column", ""], "--label-column: give the new column a name"),
        (["--label-column", "x", "--engine", "spark", "--partitioned"], "--label-column writes one file"),
    ],
)
def test_bad_label_column_exits_2(cli, tmp_path, args, message):
    out = tmp_path / "x.csv"
    result = cli("export", "news", "-o", out, *args, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_a_bucket_rule_tree_in_the_api(ws):
    """A `Segment`-free tree: the bucket rule as the split writes it, counted directly."""
    ref = Reference(ws)
    root = Group("all", (ws.resolve(ws.load_segment("news")), BucketRule("news", 0, 4500)))
    counted = ws.engine().count([root], DAY)
    assert sum(counted.values()) == len(ref.group(ref.ids("news"), "news", 0, 4500))


# --- sending to split groups through a real SMTP server ----------------------------------


def test_sending_to_split_groups_leaves_the_holdout_out(ws, smtp):  # noqa: F811 - the fixture
    ref = Reference(ws)
    ws.split("news", groups="a=45,b=45,holdout=10", seed="spring-sale", save="spring")
    options = {"subject": "Hi {{first_name}}", "html": HTML, "from_addr": "news@example.com",
               "smtp": smtp.address, "record_every": 0.2, "backoff": 0.01, "tls": smtp.tls}
    sent_a = ws.send("spring-sale-a", "spring-a", **options).as_dict()
    sent_b = ws.send("spring-sale-b", "spring-b", **options).as_dict()
    news = ref.ids("news")  # no `when` window: the send's own events change nothing here
    group = {name: {ref.by_id[i]["email"] for i in ref.active(ref.group(news, "spring-sale", lo, hi))}
             for name, lo, hi in (("a", 0, 4500), ("b", 4500, 9000), ("holdout", 9000, 10_000))}
    received = smtp.counts()
    assert set(received) == group["a"] | group["b"]
    assert set(received.values()) == {1}
    assert not set(received) & group["holdout"] and group["holdout"]
    assert (sent_a["sent"], sent_b["sent"]) == (len(group["a"]), len(group["b"]))
    for name in ("a", "b"):
        got = ws.members({"name": "got", "rules": [
            {"activity": "sent", "campaigns": [f"spring-sale-{name}"]}]})["email"].to_list()
        assert set(got) == group[name]


def test_the_bucket_benchmark_agrees_with_duckdb_sql(built):
    """benchmarks/buckets.py on a small workspace: it compares answers before timing."""
    from benchmarks.buckets import run

    result = run(built, rounds=1)
    assert set(result["groups"]) == {"a", "b", "holdout"}
    assert result["audience"] == sum(total for total, _ in result["groups"].values()) > 0
    assert all(seconds > 0 for seconds in result["seconds"].values())


# --- the HTTP API -------------------------------------------------------------------------


def test_split_route_answers_like_the_library(ws):
    from fastapi.testclient import TestClient

    from segengine.server.app import create_app

    client = TestClient(create_app(ws.path), raise_server_exceptions=False)
    body = {"segments": ["news"], "groups": "a=45,b=45,holdout=10", "as_of": AS_OF}
    answer = client.post("/api/split", json=body)
    assert answer.status_code == 200
    assert answer.json() == ws.split("news", groups="a=45,b=45,holdout=10", as_of=AS_OF)
    listed = client.post("/api/split", json={**body, "groups": [
        {"name": "a", "percent": 45}, {"name": "b", "percent": "45"},
        {"name": "holdout", "percent": 10.0}]})
    assert listed.json() == answer.json()
    bad = client.post("/api/split", json={**body, "groups": "a=45,b=45"})
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["location"] == "groups"
    assert "sum to 90" in bad.json()["errors"][0]["message"]
    inline = {**body, "segments": [{"rules": [{"field": "vip", "op": "is", "value": True}]}]}
    unseeded = client.post("/api/split", json=inline)
    assert unseeded.status_code == 400 and unseeded.json()["errors"][0]["location"] == "seed"
    assert client.post("/api/split", json={**inline, "seed": "s"}).json()["seed"] == "s"
    saved = client.post("/api/split", json={**body, "save": "web", "seed": "s1"})
    assert saved.json()["saved"] == ["web-a", "web-b", "web-holdout"]
    assert client.get("/api/segments/web-holdout").json()["rules"][1] == {
        "bucket": {"seed": "s1", "from": 9000, "to": 10000}}
