"""Input limits: hostile files and definitions are refused quickly with a location,
never swallowed, silently dropped or left to blow up an engine."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write

from segengine.definition.validate import MAX_DEPTH
from segengine.errors import DefinitionError

ALL = {"name": "all", "rules": []}


def test_an_unclosed_quote_names_the_line_it_opened_on(ws, cli, tmp_path):
    write(tmp_path / "c.csv", 'email,name\na@x.io,Ann\nb@x.io,"Bob\nc@x.io,Cat\nd@x.io,Dan\n')
    out = cli("import", "contacts", tmp_path / "c.csv", code=2)
    assert "line 3:" in out.stderr and "closing quote" in out.stderr
    assert ws.count(ALL)["total"] == 0
    # the same in an emails file
    write(tmp_path / "ok.csv", "email\na@x.io\nb@x.io\n")
    cli("import", "contacts", tmp_path / "ok.csv")
    write(tmp_path / "list.csv", 'email\na@x.io\n"b@x.io\n')
    out = cli("unsubscribe", "--emails", tmp_path / "list.csv", code=2)
    assert "line 3:" in out.stderr
    assert ws.count(ALL)["sendable"] == 2
    # a quote in the header row, and a last line without a line break, still read fine
    write(tmp_path / "h.csv", '"email","name"\ne@x.io,"Eve ""E"""')
    assert cli.json("import", "contacts", tmp_path / "h.csv")["imported"] == 1


def test_a_nul_in_a_cell_is_refused(ws, cli, tmp_path):
    write(tmp_path / "c.csv", "email,name\na@x.io,Ann\nb@x.io,B\x00b\n")
    out = cli("import", "contacts", tmp_path / "c.csv", code=2)
    assert "line 3:" in out.stderr and "NUL" in out.stderr
    pq.write_table(pa.table({"email": ["a@x.io", "b@x.io"], "name": ["Ann", "B\x00b"]}),
                   tmp_path / "c.parquet")
    summary = cli.json("import", "contacts", tmp_path / "c.parquet")
    assert (summary["imported"], summary["rejected"]) == (1, 1)
    assert "name: the value holds a NUL" in summary["first_rejects"][0]["reason"]


def test_a_nul_in_an_event_cell_is_named_in_the_reason(ws, tmp_path):
    """An address is checked once per distinct address, its other cells per row: the
    reasons still come in the order of the columns, for every row of an address."""
    import datetime as dt

    import polars as pl

    write(tmp_path / "c.csv", "email\na@x.io\nb@x.io\n")
    ws.import_contacts(tmp_path / "c.csv")
    t = dt.datetime(2024, 5, 1)
    pq.write_table(pa.table({
        "email": ["a@x.io", "a\x00@x.io", "b@x.io", "a\x00@x.io", "a@x.io"],
        "campaign": ["c1", "c1", "c\x002", "c\x002", "c1"],
        "type": ["open"] * 5, "timestamp": [t] * 5, "url": [None] * 5}), tmp_path / "e.parquet")
    summary = ws.import_events(tmp_path / "e.parquet")
    assert (summary.imported, summary.rejected, summary.duplicates) == (1, 3, 1)
    email = "email: the value holds a NUL character (byte 0x00)"
    campaign = "campaign: the value holds a NUL character (byte 0x00)"
    invalid = "invalid email 'a\x00@x.io': it contains a space, control or invisible character (U+0000)"
    rejects = pl.read_csv(summary.rejects_path)
    assert rejects["line"].to_list() == [2, 3, 4]
    assert rejects["reason"].to_list() == [
        f"{email}; {invalid}", campaign, f"{email}; {campaign}; {invalid}"]


@pytest.mark.parametrize("name", ["_line", "_width", "file_row_number"])
def test_internal_column_names_are_refused_not_dropped(ws, cli, tmp_path, name):
    write(tmp_path / "c.csv", f"email,{name}\na@x.io,7\n")
    out = cli("import", "contacts", tmp_path / "c.csv", code=2)
    assert repr(name) in out.stderr and "rename" in out.stderr
    pq.write_table(pa.table({"email": ["a@x.io"], name: [7]}), tmp_path / "c.parquet")
    out = cli("import", "contacts", tmp_path / "c.parquet", code=2)
    assert repr(name) in out.stderr
    pq.write_table(pa.table({"email": ["a@x.io"], name: [7]}), tmp_path / "list.parquet")
    cli("unsubscribe", "--emails", tmp_path / "list.parquet", code=2)
    assert ws.count(ALL)["total"] == 0


def test_a_wide_file_is_bounded(ws, cli, tmp_path):
    header = ",".join(f"c{i}" for i in range(1000))
    write(tmp_path / "wide.csv", f"email,{header}\na@x.io," + ",".join(["1"] * 1000) + "\n")
    started = time.monotonic()
    out = cli("import", "contacts", tmp_path / "wide.csv", code=2)
    assert time.monotonic() - started < 30 and "1000 custom columns" in out.stderr
    header = ",".join(f"c{i}" for i in range(80))  # wide, within the limit
    write(tmp_path / "w80.csv", f"email,{header}\na@x.io," + ",".join(["1"] * 80) + "\n")
    summary = cli.json("import", "contacts", tmp_path / "w80.csv")
    assert summary["imported"] == 1 and len(summary["new_fields"]) == 80


@pytest.mark.parametrize("column, values", [
    ("prefs", pa.array([{"a": 1}, {"a": 2}])),
    ("tags", pa.array([["x"], ["y"]])),
    ("email", pa.array([{"e": "a@x.io"}, {"e": "b@x.io"}])),
    ("status", pa.array([["active"], ["active"]])),
])
def test_a_nested_parquet_column_is_refused_with_its_name(ws, cli, tmp_path, column, values):
    table = {"email": pa.array(["a@x.io", "b@x.io"]), column: values}
    pq.write_table(pa.table(table), tmp_path / "c.parquet")
    out = cli("import", "contacts", tmp_path / "c.parquet", code=2)
    assert repr(column) in out.stderr
    assert ws.count(ALL)["total"] == 0


def nested(depth: int) -> dict:
    rule: dict = {"field": "email", "op": "contains", "value": "a"}
    for _ in range(depth):
        rule = {"negate": True, "rules": [rule, {"activity": "opened"}]}
    return {"name": "deep", "rules": [rule]}


@pytest.fixture
def small(ws, tmp_path):
    write(tmp_path / "c.csv", "email\na@x.io\nb@y.io\n")
    ws.import_contacts(tmp_path / "c.csv")
    write(tmp_path / "e.csv", "email,campaign,type,timestamp\na@x.io,c,open,2026-01-01\n")
    ws.import_events(tmp_path / "e.csv")
    return ws


def test_the_deepest_allowed_nesting_runs_on_every_engine(small):
    import duckdb

    expected = small.count(nested(MAX_DEPTH), engine="polars")["total"]
    for engine in ("duckdb", "index", "auto"):
        assert small.count(nested(MAX_DEPTH), engine=engine)["total"] == expected
    sql = small.sql(nested(MAX_DEPTH))
    assert duckdb.sql("SELECT 1").fetchall() and "NOT" in sql


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 1000, 5000])
def test_deeper_nesting_is_refused_with_a_location(small, tmp_path, depth):
    with pytest.raises(DefinitionError) as err:
        small.count(nested(depth))
    assert "at most 32" in str(err.value) and "rules[0]" in str(err.value)
    leaf = '{"field": "email", "op": "contains", "value": "a"}'
    text = '{"negate": true, "rules": [' * depth + leaf + ', {"activity": "opened"}]}' * depth
    text = '{"name": "deep", "rules": [' + text + "]}"
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(DefinitionError, match="32"):
        small.count(path)
    yaml = tmp_path / "deep.yaml"
    yaml.write_text(text)  # JSON is YAML
    with pytest.raises(DefinitionError, match="32|deeply"):
        small.count(yaml)


def test_references_cannot_nest_deeper_than_allowed(small):
    small.save_segment({"name": "s0", "rules": [{"field": "email", "op": "contains", "value": "a"}]})
    for i in range(1, 40):
        small.save_segment({"name": f"s{i}", "rules": [{"segment": f"s{i - 1}", "negate": True}]})
    with pytest.raises(DefinitionError, match="once the segments it references are inlined"):
        small.count("s39")
    assert small.count("s15")["total"] >= 0  # a reference nests two groups: 30 deep


def test_a_yaml_alias_bomb_is_refused_quickly(small, tmp_path):
    lines = ['a0: &a0 {field: email, op: contains, value: "x"}']
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} {{rules: [*a{i - 1}, *a{i - 1}, *a{i - 1}]}}")
    bomb = "\n".join(["name: bomb", "x-anchors:", *("  " + line for line in lines),
                      "rules: [*a29]"])
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb)
    started = time.monotonic()
    with pytest.raises(DefinitionError, match="100,000 values"):
        small.count(path)
    assert time.monotonic() - started < 5
