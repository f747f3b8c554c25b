"""Export, rule by rule of SPEC section 6."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write

import segengine
from segengine.errors import InputError, SegmentNotFound
from segengine.export import UnknownColumn

EVERYONE = {"name": "everyone", "rules": []}
ACTIVE_ONLY_IF_EXPORTED = {"name": "in-a", "rules": [{"field": "lists", "op": "includes", "value": "a"}]}
IN_B = {"name": "in-b", "rules": [{"field": "lists", "op": "includes", "value": "b"}]}

# Emails chosen so that code-point order differs from case-insensitive, locale and
# UTF-16 order, and so that some start like formulas (+ and - are valid in emails).
CONTACTS = (
    "email,status,lists,first_name,score,vip,birthday,last_login,note\n"
    "Zoe@Example.com,active,b;a,Zoe,3,true,1990-01-02,2024-05-06T07:08:09Z,=SUM(A1:A9)\n"
    "+plus@example.com,active,a,Plus,2.5,false,,2024-05-06T07:08:09.5Z,\"has, comma\"\n"
    "-minus@example.com,active,-list;a,Minus,-4,,,,@cmd\n"
    "=eq@example.com,active,,Eq,1234567890123,,,,\"\ttabbed\"\n"
    "'quote@example.com,active,@x,Quote,,,,,\"\rcr\"\n"
    "\u00e9mile@example.com,active,b,Emile,0.1,,,,plain\n"
    "\u00c9MILE2@example.com,active,b,Emile2,,,,,\n"
    "\U0001f600stral@example.com,active,b,Astral,,,,,\n"
    "\ufffd@example.com,active,b,Fullwidth,,,,,\n"
    "~tilde@example.com,active,b,Tilde,,,,,\"quote \"\"in\"\" it\"\n"
    "a@example.com,unsubscribed,a;b,Unsub,,,,,\n"
    "b@example.com,bounced,a;b,Bounced,,,,,\n"
)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> segengine.Workspace:
    """A workspace with tricky contacts; exports never change it, so tests share it."""
    root = tmp_path_factory.mktemp("export")
    ws = segengine.Workspace.init(root / "ws")
    ws.import_contacts(write(root / "contacts.csv", CONTACTS), types="score=number")
    return ws


def undefuse(cell: str) -> str:
    """The stored text of a defused cell (a ' added before a formula trigger removed)."""
    return cell[1:] if cell[:1] == "'" and cell[1:2] in ("=", "+", "-", "@", "\t", "\r") else cell


def read_csv(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def active_emails(ws) -> list[str]:
    import polars as pl

    frame = pl.read_parquet(list(ws.snapshot().files("contacts")))
    return frame.filter(pl.col("status") == "active")["email"].to_list()


def test_rows_are_active_once_and_in_code_point_order(filled, tmp_path):
    out = tmp_path / "out.csv"
    result = filled.export(EVERYONE, output=out, raw=True)
    rows = read_csv(out)
    emails = [r["email"] for r in rows]
    expected = sorted(active_emails(filled))  # Python sorts str by code point
    assert emails == expected
    assert result.as_dict() == {"rows": len(expected), "path": str(out)}
    assert "a@example.com" not in emails and "b@example.com" not in emails
    # normalised on import: upper case became lower case, non-ASCII included
    assert "\u00e9mile2@example.com" in emails
    # code point order, not UTF-16 order: U+FFFD sorts before the astral U+1F600
    # (characters NFKC keeps: the address rule folds full-width and math letters)
    assert emails.index("\ufffd@example.com") < emails.index("\U0001f600stral@example.com")
    assert emails.index("~tilde@example.com") < emails.index("\u00e9mile@example.com")


def test_union_of_segments_lists_each_contact_once(filled, tmp_path):
    out = tmp_path / "u.csv"
    result = filled.export(ACTIVE_ONLY_IF_EXPORTED, IN_B, output=out)
    emails = [r["email"] for r in read_csv(out)]
    assert len(emails) == len(set(emails)) == result.rows
    assert result.rows == filled.count(ACTIVE_ONLY_IF_EXPORTED, IN_B)["sendable"]
    assert "zoe@example.com" in emails  # in both a and b


def test_default_columns_are_email_then_custom_fields_in_creation_order(filled, tmp_path):
    shutil.copytree(filled.path, tmp_path / "ws")
    filled = segengine.open(tmp_path / "ws")
    filled.import_contacts(write(tmp_path / "later.csv", "email,added_later\nzoe@example.com,x\n"))
    out = tmp_path / "c.csv"
    filled.export(EVERYONE, output=out)
    header = out.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header == ["email", *filled.snapshot().schema.custom_fields]
    assert header[-1] == "added_later"
    assert set(header) == {"email", "first_name", "score", "vip", "birthday", "last_login",
                           "note", "added_later"}


def test_csv_cell_rendering(filled, tmp_path):
    out = tmp_path / "cells.csv"
    filled.export(EVERYONE, output=out, columns="email,lists,score,vip,birthday,last_login,note,"
                  "status,date_added,email_domain", raw=True)
    rows = {r["email"]: r for r in read_csv(out)}
    zoe = rows["zoe@example.com"]
    assert zoe["lists"] == "a;b"
    assert zoe["score"] == "3"  # a whole number has no trailing .0
    assert zoe["vip"] == "true"
    assert zoe["birthday"] == "1990-01-02"
    assert zoe["last_login"] == "2024-05-06T07:08:09Z"
    assert zoe["status"] == "active"
    assert zoe["email_domain"] == "example.com"
    # import time: a fraction of a second, without trailing zeros
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*[1-9])?Z", zoe["date_added"])
    plus = rows["+plus@example.com"]
    assert plus["score"] == "2.5" and plus["vip"] == "false"
    assert plus["last_login"] == "2024-05-06T07:08:09.5Z"  # a fraction only when present
    assert plus["note"] == "has, comma"
    assert rows["=eq@example.com"]["score"] == "1234567890123"
    assert rows["-minus@example.com"]["score"] == "-4"
    assert rows["\u00e9mile@example.com"]["score"] == "0.1"
    assert rows["~tilde@example.com"]["note"] == 'quote "in" it'
    # empty values are empty cells, never quoted empty strings
    eq_line = next(line for line in out.read_text(encoding="utf-8").splitlines()
                   if line.startswith("=eq@"))
    assert ',,' in eq_line and '""' not in eq_line


def test_formula_injection_is_defused_in_every_text_cell(filled, tmp_path):
    out = tmp_path / "safe.csv"
    filled.export(EVERYONE, output=out, columns="email,lists,note,score")
    rows = {undefuse(r["email"]): r for r in read_csv(out)}
    assert rows["+plus@example.com"]["email"] == "'+plus@example.com"
    assert rows["-minus@example.com"]["email"] == "'-minus@example.com"
    assert rows["=eq@example.com"]["email"] == "'=eq@example.com"
    assert rows["'quote@example.com"]["email"] == "'quote@example.com"  # no trigger: unchanged
    assert rows["zoe@example.com"]["note"] == "'=SUM(A1:A9)"
    assert rows["-minus@example.com"]["note"] == "'@cmd"
    assert rows["-minus@example.com"]["lists"] == "'-list;a"
    assert rows["'quote@example.com"]["lists"] == "'@x"
    assert rows["=eq@example.com"]["note"] == "'\ttabbed"
    assert rows["'quote@example.com"]["note"] == "'\rcr"
    assert rows["-minus@example.com"]["score"] == "-4"  # a number is not a text cell
    # ordered by the stored address, not by the defused cell
    assert [undefuse(r["email"]) for r in read_csv(out)] == sorted(active_emails(filled))


def test_raw_writes_cells_as_stored(filled, tmp_path):
    out = tmp_path / "raw.csv"
    filled.export(EVERYONE, output=out, columns="email,note", raw=True)
    rows = {r["email"]: r for r in read_csv(out)}
    assert rows["=eq@example.com"]["note"] == "\ttabbed"
    assert rows["zoe@example.com"]["note"] == "=SUM(A1:A9)"
    assert "+plus@example.com" in rows


def test_rfc4180_quoting_round_trips(filled, tmp_path):
    out = tmp_path / "q.csv"
    filled.export(EVERYONE, output=out, columns="email,note", raw=True)
    text = out.read_bytes().decode("utf-8")
    assert '"quote ""in"" it"' in text
    assert '"has, comma"' in text
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert all(len(r) == 2 for r in parsed)


def test_parquet_keeps_native_types(filled, tmp_path):
    out = tmp_path / "out.parquet"
    result = filled.export(
        EVERYONE, output=out,
        columns=["email", "lists", "score", "vip", "birthday", "last_login", "date_added", "note"],
    )
    assert result.format == "parquet"
    table = pq.read_table(out)
    types = dict(zip(table.schema.names, table.schema.types, strict=True))
    assert types["email"] == pa.string()
    assert types["lists"] == pa.list_(pa.string())
    assert types["score"] == pa.float64()
    assert types["vip"] == pa.bool_()
    assert types["birthday"] == pa.date32()
    assert types["last_login"] == pa.timestamp("us", tz="UTC")
    rows = {r["email"]: r for r in table.to_pylist()}
    assert rows["=eq@example.com"]["note"] == "\ttabbed"  # no formula prefix in Parquet
    assert rows["zoe@example.com"]["lists"] == ["a", "b"]
    assert table.column("email").to_pylist() == sorted(active_emails(filled))


def test_format_option_overrides_the_suffix(filled, tmp_path):
    out = tmp_path / "data.bin"
    filled.export(EVERYONE, output=out, format="parquet")
    assert out.read_bytes()[:4] == b"PAR1"


def test_unknown_column_suggests_a_field(filled, tmp_path):
    with pytest.raises(UnknownColumn, match="did you mean 'first_name'"):
        filled.export(EVERYONE, output=tmp_path / "x.csv", columns="email,frist_name")
    with pytest.raises(InputError, match="more than once"):
        filled.export(EVERYONE, output=tmp_path / "x.csv", columns="email,email")
    assert not (tmp_path / "x.csv").exists()


def test_file_is_replaced_whole_and_no_temp_file_is_left(filled, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("old content\n")
    filled.export(EVERYONE, output=out)
    assert out.read_text(encoding="utf-8").startswith("email,")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(SegmentNotFound):
        filled.export("no-such-segment", output=out)
    assert out.read_text(encoding="utf-8").startswith("email,")  # untouched by the failure


def test_export_of_an_empty_workspace_writes_a_header(ws, tmp_path):
    out = tmp_path / "empty.csv"
    assert ws.export(EVERYONE, output=out).rows == 0
    assert out.read_text(encoding="utf-8") == "email\n"


def test_cli_export_json_and_exit_codes(filled, tmp_path):
    from conftest import Cli

    cli = Cli(filled.path)
    seg = write(tmp_path / "everyone.json", json.dumps(EVERYONE))
    out = tmp_path / "cli.csv"
    data = cli.json("export", seg, "-o", out, "--columns", "email")
    assert data == {"rows": len(active_emails(filled)), "path": str(out)}
    assert "wrote" in cli("export", seg, "-o", out).stdout
    bad = cli("export", seg, "-o", out, "--columns", "emial", code=2)
    assert "did you mean 'email'" in bad.stderr
    cli("export", "missing-segment", "-o", out, code=2)
    cli("export", seg, "-o", tmp_path / "no" / "dir.csv", code=2)
    cli("export", seg, "-o", out, "--format", "xlsx", code=2)
    cli("export", seg, "-o", out, "--as-of", "June", code=2)


class RecordingTask:
    def __init__(self):
        self.updates: list[int] = []

    def advance(self, n: int = 1) -> None:
        self.updates.append(n)

    def update(self, completed: int) -> None:
        self.updates.append(completed)


def test_run_with_progress_returns_the_result_and_raises_errors_in_the_caller():
    import duckdb

    from segengine.export import run_with_progress

    con = duckdb.connect()
    task = RecordingTask()
    assert run_with_progress(con, "SELECT count(*) FROM range(100000)", task) == [(100000,)]
    with pytest.raises(duckdb.Error):
        run_with_progress(con, "SELECT * FROM no_such_table", task)
    assert all(0 <= u <= 100 for u in task.updates)
