"""The segment commands through the CLI and the API: save, list, show, delete, count,
sql, explain, and the demo."""

from __future__ import annotations

import json

import duckdb
import pytest
from conftest import SAMPLE, SEGMENTS, Cli, write

import segengine
from segengine.errors import DefinitionError, SegmentNotFound

AS_OF = "2026-11-01"
# Counted by hand (Polars and DuckDB SQL written independently) on data/sample.
EXPECTED = {"inactive-newsletter": 111, "state-ca": 157, "cto-or-sales-west": 58, "never-opened": 492}


@pytest.fixture(scope="module")
def sample_ws(tmp_path_factory):
    ws = segengine.Workspace.init(tmp_path_factory.mktemp("sample") / "ws")
    ws.import_contacts(SAMPLE / "contacts.csv")
    ws.import_events(SAMPLE / "events.csv")
    for path in sorted(SEGMENTS.glob("*.yaml")):
        ws.save_segment(path)
    return ws


@pytest.fixture
def scli(sample_ws):
    return Cli(sample_ws.path)


def test_seed_examples_count_as_computed_by_hand(scli):
    for name, total in EXPECTED.items():
        out = scli.json("count", name, "--as-of", AS_OF)
        assert out["total"] == total
        assert set(out["by_status"]) == {"active", "unsubscribed", "bounced"}
        assert out["sendable"] == out["by_status"]["active"]
        assert out["as_of"] == AS_OF


def test_count_union_counts_each_contact_once(scli, sample_ws):
    union = scli.json("count", "state-ca", "cto-or-sales-west", "--as-of", AS_OF)
    a = set(sample_ws.contact_ids("state-ca"))
    b = set(sample_ws.contact_ids("cto-or-sales-west"))
    assert union["total"] == len(a | b) < EXPECTED["state-ca"] + EXPECTED["cto-or-sales-west"]


def test_count_accepts_files_and_dicts(scli, sample_ws, tmp_path):
    by_file = scli.json("count", str(SEGMENTS / "state-ca.yaml"))
    assert by_file["total"] == EXPECTED["state-ca"]
    doc = {"name": "ny", "rules": [{"field": "state", "op": "is", "value": "ny"}]}
    path = write(tmp_path / "ny.json", json.dumps(doc))
    assert scli.json("count", str(path))["total"] == sample_ws.count(doc)["total"] > 0


@pytest.mark.parametrize("engine", ["duckdb", "polars", "auto"])
def test_engines_agree_on_the_seed_examples(sample_ws, engine):
    for name, total in EXPECTED.items():
        assert sample_ws.count(name, as_of=AS_OF, engine=engine)["total"] == total


def test_human_count_is_a_table(scli):
    out = scli("count", "state-ca", "--as-of", AS_OF).stdout
    assert "sendable" in out and "157" in out


def test_bad_input_exits_2_with_one_line(scli, tmp_path):
    cases = [
        ("count", "no-such-segment"),
        ("count", "state-ca", "--as-of", "2026-13-01"),
        ("count", "state-ca", "--engine", "duckbd"),
        ("count", str(tmp_path / "missing.yaml")),
        ("sql", "state-ca", "--dialect", "oracle"),
    ]
    for args in cases:
        result = scli(*args, code=2)
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, args
    bad = write(tmp_path / "bad.yaml", "name: bad\nrules:\n  - {field: titel, op: containz, value: x}\n")
    result = scli("count", str(bad), code=2)
    assert "rules[0].field" in result.stderr and "title" in result.stderr
    assert "did you mean 'never-opened'" in scli("count", "never-opend", code=2).stderr


def test_segment_save_list_show_delete(tmp_path, sample_ws):
    ws = segengine.Workspace.init(tmp_path / "ws2")
    ws.import_contacts(SAMPLE / "contacts.csv")
    cli = Cli(ws.path)
    base = write(tmp_path / "base.yaml", "name: base\nrules: [{field: state, op: is, value: CA}]\n")
    user = write(tmp_path / "user.yaml", "name: user\nrules: [{segment: base}, {field: vip, op: is, value: true}]\n")
    cli("segment", "save", base)
    cli("segment", "save", user)
    listed = cli.json("segment", "list", "--counts", "--as-of", AS_OF)
    assert [r["name"] for r in listed] == ["base", "user"]
    assert listed[0]["count"]["total"] == EXPECTED["state-ca"]
    shown = cli.json("segment", "show", "user")
    assert shown["rules"][0] == {"segment": "base"}
    assert "segment: base" in cli("segment", "show", "user").stdout
    # delete refuses while referenced; a cycle is refused and names the segments
    assert "user" in cli("segment", "delete", "base", code=2).stderr
    cyclic = write(tmp_path / "base2.yaml", "name: base\nrules: [{segment: user}]\n")
    err = cli("segment", "save", cyclic, code=2).stderr
    assert "base" in err and "user" in err and "cycle" in err
    cli("segment", "delete", "user")
    cli("segment", "delete", "base")
    assert cli.json("segment", "list") == []


def test_api_errors_are_typed(sample_ws):
    with pytest.raises(SegmentNotFound):
        sample_ws.count("nope")
    with pytest.raises(DefinitionError):
        sample_ws.count({"name": "x", "rules": [{"field": "state", "op": "eq", "value": 1}]})
    with pytest.raises(DefinitionError, match="cycle: loop -> loop"):
        sample_ws.count({"name": "loop", "rules": [{"segment": "loop"}]})



@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sql_output_runs_on_duckdb_and_agrees_with_count(scli, sample_ws, name):
    text = scli("sql", name, "--dialect", "duckdb", "--as-of", AS_OF).stdout
    snap = sample_ws.snapshot()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Pacific/Auckland'")  # the answer must not depend on it
    con.execute(f"CREATE VIEW contacts AS SELECT * FROM read_parquet({list(snap.files('contacts'))})")
    con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet({list(snap.files('events'))})")
    ids = [r[0] for r in con.execute(text).fetchall()]
    assert len(ids) == len(set(ids)) == EXPECTED[name]
    for dialect in ("spark", "postgres", "snowflake", "bigquery"):
        out = scli("sql", name, "--dialect", dialect, "--as-of", AS_OF).stdout
        assert out.lstrip().upper().startswith(("SELECT", "WITH"))


def test_explain_counts_each_rule(scli):
    out = scli.json("explain", "inactive-newsletter", "--as-of", AS_OF)
    tree = out["tree"]
    assert tree["matches"] == EXPECTED["inactive-newsletter"]
    assert [r["path"] for r in tree["rules"]] == [f"rules[{i}]" for i in range(4)]
    assert all(r["matches"] >= tree["matches"] for r in tree["rules"])
    assert tree["rules"][1]["empty"] > 0  # contacts in no list
    assert tree["rules"][3]["kind"] == "activity"
    human = scli("explain", "inactive-newsletter", "--as-of", AS_OF).stdout
    assert "NOT opened" in human and "lists includes" in human


def test_demo_runs_end_to_end(tmp_path):
    result = Cli(None)("demo", str(tmp_path / "demo"), "--json")
    out = json.loads(result.stdout)
    assert {n: c["total"] for n, c in out["counts"].items()} == EXPECTED
    again = Cli(None)("demo", str(tmp_path / "demo"))  # re-runs over its own workspace
    assert "union of all" in again.stdout


def test_a_definition_file_is_read_again_when_it_changes(sample_ws, tmp_path):
    """Parsed files are cached per workspace, keyed by path, mtime and size."""
    path = tmp_path / "seg.yaml"
    path.write_text("name: s\nrules:\n  - {field: state, op: is, value: CA}\n")
    assert sample_ws.count(path)["total"] == 157
    assert sample_ws.count(path)["total"] == 157
    path.write_text("name: s\nrules:\n  - {field: state, op: is, value: TX}\n")
    tx = sample_ws.count(path)["total"]
    assert tx != 157
    assert tx == sample_ws.count({"name": "s", "rules": [{"field": "state", "op": "is", "value": "tx"}]})["total"]
