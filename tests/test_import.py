"""Imports, rule by rule of SPEC section 3."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write

from segengine.errors import ImportRejected, InputError, WorkspaceError


def contacts(ws) -> pl.DataFrame:
    return pl.read_parquet(list(ws.snapshot().files("contacts"))).sort("contact_id")


def events(ws) -> pl.DataFrame:
    files = list(ws.snapshot().files("events"))
    return pl.read_parquet(files) if files else pl.DataFrame()


def row(ws, email: str) -> dict:
    return contacts(ws).filter(pl.col("email") == email).row(0, named=True)


def test_init_refuses_non_empty_dir_and_open_explains(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("hi")
    import segengine

    with pytest.raises(WorkspaceError, match="not empty"):
        segengine.Workspace.init(tmp_path / "x")
    with pytest.raises(WorkspaceError, match="segengine init"):
        segengine.open(tmp_path / "nope")


def test_csv_bom_quoting_embedded_newlines_and_line_numbers(ws, tmp_path):
    text = (
        "\ufeffemail,note\n"
        '" Ann@Example.COM\t",plain\n'
        'bob@example.com,"two\nlines, and a comma"\n'
        "not-an-email,x\n"
        'carol@example.com,"say ""hi"""\n'
    )
    summary = ws.import_contacts(write(tmp_path / "c.csv", text))
    assert (summary.read, summary.imported, summary.rejected) == (4, 3, 1)
    assert row(ws, "ann@example.com")["note"] == "plain"
    assert row(ws, "bob@example.com")["note"] == "two\nlines, and a comma"
    assert row(ws, "carol@example.com")["note"] == 'say "hi"'
    rejects = pl.read_csv(summary.rejects_path)
    # the header is line 1, bob's record spans lines 3-4, so the bad row is line 5
    assert rejects["line"].to_list() == [5]
    assert "invalid email" in rejects["reason"][0]


def test_white_space_around_emails_numbers_and_event_types_is_trimmed(ws, tmp_path):
    """ASCII white space and the no-break space around an email, a number or an event
    type go; a text field keeps its white space (SPEC: white space is text)."""
    nbsp = "\u00a0"
    text = (
        "email,city,score\n"
        f"{nbsp}Dan@X.io{nbsp},\t New{nbsp}York \t,{nbsp}7{nbsp}\n"
        f"eve@x.io,{nbsp} {nbsp},\t\n"
        "fay@x.io,Oslo,8\n"
    )
    summary = ws.import_contacts(write(tmp_path / "c.csv", text))
    assert (summary.imported, summary.rejected) == (3, 0)
    assert row(ws, "dan@x.io")["city"] == f"\t New{nbsp}York \t"
    assert row(ws, "dan@x.io")["score"] == 7.0
    assert row(ws, "eve@x.io")["city"] == f"{nbsp} {nbsp}"
    assert row(ws, "eve@x.io")["score"] is None
    assert row(ws, "fay@x.io")["score"] == 8.0
    events_csv = (
        "email,campaign,type,timestamp\n"
        f"\t{nbsp}DAN@x.io ,c1,{nbsp}Open\t,2024-03-01T10:00:00Z\n"
    )
    assert ws.import_events(write(tmp_path / "e.csv", events_csv)).imported == 1
    assert events(ws)["type"].to_list() == ["open"]


def test_type_inference_rules(ws, tmp_path):
    text = (
        "email,n,zip,d,ts,flag,t,blank\n"
        "a@x.io,1.5,02134,2024-01-31,2024-01-31T10:00:00Z,TRUE,hello,\n"
        "b@x.io,-3,10001,2024-02-29,2024-01-31 23:00:00+02:00,false,2024-01-01,\n"
        "c@x.io,,,,,,,\n"
    )
    summary = ws.import_contacts(write(tmp_path / "c.csv", text))
    assert summary.new_fields == {
        "n": "number", "zip": "text", "d": "date", "ts": "datetime",
        "flag": "boolean", "t": "text", "blank": "text",
    }
    a, b = row(ws, "a@x.io"), row(ws, "b@x.io")
    assert a["n"] == 1.5 and b["n"] == -3.0
    assert a["zip"] == "02134"
    assert b["d"] == dt.date(2024, 2, 29)
    assert b["ts"] == dt.datetime(2024, 1, 31, 21, 0)  # offsets converted to UTC
    assert a["flag"] is True and b["flag"] is False
    assert row(ws, "c@x.io")["n"] is None


def test_types_option_and_type_permanence(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "a.csv", "email,zip\na@x.io,12345\n"), types="zip=text")
    assert dict(ws.snapshot().schema.custom)["zip"] == "text"
    with pytest.raises(ImportRejected, match="keeps its type"):
        ws.import_contacts(write(tmp_path / "b.csv", "email,zip\nb@x.io,1\n"), types="zip=number")
    with pytest.raises(InputError, match="unknown type"):
        ws.import_contacts(write(tmp_path / "b.csv", "email,zip\nb@x.io,1\n"), types="zip=integer")
    # a value that does not parse as the stored type rejects that row only
    ws.import_contacts(write(tmp_path / "c.csv", "email,score\na@x.io,5\n"))
    summary = ws.import_contacts(write(tmp_path / "d.csv", "email,score\nb@x.io,7\nc@x.io,lots\n"))
    assert (summary.imported, summary.rejected) == (1, 1)
    assert "is not a number" in pl.read_csv(summary.rejects_path)["reason"][0]


def test_upsert_overwrites_keeps_absent_merges_lists_and_first_date(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "1.csv",
        "email,date_added,lists,state,title\na@x.io,2020-05-01,news; Trial ,CA,CTO\n"))
    summary = ws.import_contacts(write(tmp_path / "2.csv",
        "email,date_added,lists,state\nA@X.IO,2023-01-01,webinar;news,\nb@x.io,,,\n"))
    assert (summary.imported, summary.updated) == (1, 1)
    a = row(ws, "a@x.io")
    assert a["state"] == "CA"  # an empty cell never erases
    assert a["title"] == "CTO"  # an absent column is untouched
    assert sorted(a["lists"]) == ["Trial", "news", "webinar"]
    assert a["date_added"] == dt.datetime(2020, 5, 1)  # keeps its first value
    b = row(ws, "b@x.io")
    assert b["status"] == "active" and b["lists"] == []
    assert abs((b["date_added"] - dt.datetime.now(dt.UTC).replace(tzinfo=None)).total_seconds()) < 120


@pytest.mark.parametrize("suppressed", ["unsubscribed", "bounced"])
def test_suppression_is_permanent(ws, tmp_path, suppressed):
    ws.import_contacts(write(tmp_path / "1.csv", f"email,status\na@x.io,{suppressed}\n"))
    for n, text in enumerate([
        "email,status\na@x.io,active\n",
        "email,status\na@x.io,ACTIVE\n",
        "email,status\na@x.io,\n",
        "email\na@x.io\n",
    ]):
        ws.import_contacts(write(tmp_path / f"r{n}.csv", text))
        assert row(ws, "a@x.io")["status"] == suppressed
    table = pa.table({"email": ["a@x.io"], "status": ["active"]})
    pq.write_table(table, tmp_path / "p.parquet")
    ws.import_contacts(tmp_path / "p.parquet")
    assert row(ws, "a@x.io")["status"] == suppressed


def test_import_may_suppress_and_duplicates_in_one_file_cannot_reactivate(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "1.csv", "email\na@x.io\n"))
    ws.import_contacts(write(tmp_path / "2.csv", "email,status\na@x.io,bounced\nb@x.io,unsubscribed\nb@x.io,active\n"))
    assert row(ws, "a@x.io")["status"] == "bounced"
    assert row(ws, "b@x.io")["status"] == "unsubscribed"


def test_parquet_contacts_types_and_lists(ws, tmp_path):
    table = pa.table({
        "email": ["a@x.io", "b@x.io"],
        "lists": [["one", " two "], []],
        "score": pa.array([1, None], pa.int32()),
        "seen": pa.array([dt.datetime(2024, 1, 1, 5), None], pa.timestamp("ms", tz="America/New_York")),
        "vip": [True, None],
    })
    pq.write_table(table, tmp_path / "c.parquet")
    summary = ws.import_contacts(tmp_path / "c.parquet")
    assert summary.new_fields == {"score": "number", "seen": "datetime", "vip": "boolean"}
    a = row(ws, "a@x.io")
    assert a["lists"] == ["one", "two"] and a["score"] == 1.0
    assert a["seen"] == dt.datetime(2024, 1, 1, 5)  # pyarrow stores UTC instants


def test_reserved_and_invalid_column_names(ws, tmp_path):
    with pytest.raises(ImportRejected, match="reserved"):
        ws.import_contacts(write(tmp_path / "a.csv", "email,contact_id\na@x.io,1\n"))
    with pytest.raises(ImportRejected, match="not a valid field name"):
        ws.import_contacts(write(tmp_path / "b.csv", "email,first name\na@x.io,A\n"))
    with pytest.raises(ImportRejected, match="no 'email' column"):
        ws.import_contacts(write(tmp_path / "c.csv", "mail\na@x.io\n"))
    assert ws.snapshot().version == 0


def test_strict_rejects_whole_file(ws, tmp_path):
    with pytest.raises(ImportRejected, match="line 3"):
        ws.import_contacts(write(tmp_path / "a.csv", "email\na@x.io\nbroken\n"), strict=True)
    assert ws.snapshot().version == 0 and ws.snapshot().manifest["contacts"] == []


EVENTS = (
    "email,campaign,type,timestamp,url\n"
    "a@x.io,c1,sent,2024-03-01T10:00:00Z,\n"
    "a@x.io,c1,open,2024-03-01T12:00:00+02:00,\n"
    " A@X.IO ,c1,open,2024-03-01T10:00:00Z,\n"  # the same event: normalised email, same instant
    "a@x.io,c1,click,2024-03-01T10:05:00,https://x.io/pricing\n"
    "zed@x.io,c1,open,2024-03-01T10:00:00Z,\n"
    "a@x.io,c1,opened,2024-03-01T10:00:00Z,\n"
    "a@x.io,c1,open,yesterday,\n"
    "a@x.io,,open,2024-03-01T10:00:00Z,\n"
)


def test_events_rejects_and_deduplication(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "c.csv", "email\na@x.io\n"))
    path = write(tmp_path / "e.csv", EVENTS)
    first = ws.import_events(path)
    assert (first.read, first.imported, first.rejected, first.duplicates) == (8, 3, 4, 1)
    reasons = pl.read_csv(first.rejects_path)
    assert reasons["line"].to_list() == [6, 7, 8, 9]
    joined = " | ".join(reasons["reason"])
    for text in ("unknown email", "unknown event type", "invalid timestamp", "missing campaign"):
        assert text in joined
    again = ws.import_events(path)
    assert (again.imported, again.duplicates) == (0, 4)
    ev = events(ws)
    assert ev.height == 3
    assert ev.filter(pl.col("type") == "click")["url"].to_list() == ["https://x.io/pricing"]
    assert set(ev["timestamp"].to_list()) == {dt.datetime(2024, 3, 1, 10, 0), dt.datetime(2024, 3, 1, 10, 5)}


def test_each_import_stores_its_events_in_time_order(ws, tmp_path):
    """Stored events are sorted by timestamp per file, so window scans skip row groups."""
    import random

    ws.import_contacts(write(tmp_path / "c.csv", "email\na@x.io\nb@x.io\n"))
    rng = random.Random(3)
    for batch in range(2):
        stamps = [dt.datetime(2024, 1, 1) + dt.timedelta(minutes=rng.randrange(10**6))
                  for _ in range(300)]
        lines = [f"{rng.choice('ab')}@x.io,c{batch},open,{t.isoformat()}Z" for t in stamps]
        path = write(tmp_path / f"e{batch}.csv", "email,campaign,type,timestamp\n" + "\n".join(lines))
        ws.import_events(path)
    files = list(ws.snapshot().files("events"))
    assert len(files) == 2
    for f in files:
        stored = pl.read_parquet(f)["timestamp"]
        assert stored.len() > 250 and stored.is_sorted(), f


def test_parquet_events_any_unit_and_zone(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "c.csv", "email\na@x.io\n"))
    for unit, tz in [("s", None), ("ms", "UTC"), ("ns", "Europe/Paris")]:
        table = pa.table({
            "email": ["a@x.io"], "campaign": ["c1"], "type": ["open"],
            "timestamp": pa.array([dt.datetime(2024, 6, 1, 8, 0, tzinfo=dt.UTC)], pa.timestamp(unit, tz="UTC"))
            .cast(pa.timestamp(unit, tz=tz)),
        })
        pq.write_table(table, tmp_path / f"e-{unit}.parquet")
        ws.import_events(tmp_path / f"e-{unit}.parquet")
    assert events(ws)["timestamp"].to_list() == [dt.datetime(2024, 6, 1, 8, 0)]


def test_events_need_contacts_and_known_columns(ws, tmp_path):
    with pytest.raises(ImportRejected, match="import contacts before events"):
        ws.import_events(write(tmp_path / "e.csv", EVENTS))
    ws.import_contacts(write(tmp_path / "c.csv", "email\na@x.io\n"))
    with pytest.raises(ImportRejected, match="missing column"):
        ws.import_events(write(tmp_path / "e2.csv", "email,campaign\na@x.io,c\n"))


def test_cli_import_json_summary_and_exit_codes(cli, tmp_path):
    out = cli.json("import", "contacts", write(tmp_path / "c.csv", "email,state\na@x.io,CA\nbad,TX\n"))
    assert (out["read"], out["imported"], out["rejected"]) == (2, 1, 1)
    result = cli("import", "contacts", write(tmp_path / "s.csv", "email\nbad\n"), "--strict", code=2)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    result = cli("import", "contacts", tmp_path / "missing.csv", code=2)
    assert "no such file" in result.stderr
    info = cli.json("info")
    assert info["contacts"]["by_status"] == {"active": 1, "unsubscribed": 0, "bounced": 0}
    assert {"name": "state", "type": "text"} in info["fields"]
    human = cli("import", "contacts", write(tmp_path / "c2.csv", "email\nb@x.io\n")).stdout
    assert "rows read" in human
    json.loads(cli("info", "--json").stdout)


def test_generate_then_import_through_the_cli(cli, tmp_path):
    out = cli.json("generate", "--contacts", "300", "--events", "3000", "--seed", "7",
                   "-o", str(tmp_path / "g"))
    assert out["contacts"] == 300
    cli("import", "contacts", out["contacts_path"])
    events_summary = cli.json("import", "events", out["events_path"])
    assert events_summary["imported"] == out["events"] and events_summary["rejected"] == 0
    info = cli.json("info")
    assert info["contacts"]["total"] == 300
    assert info["events"]["total"] == out["events"]
    assert info["campaigns"] and info["campaigns"][0]["send_time"] >= info["campaigns"][-1]["send_time"]
    assert cli("generate", "--contacts", "0", "--events", "1", "-o", str(tmp_path / "x"), code=2)


def test_imported_status_changes_reach_the_audit_trail(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "1.csv", "email,status\na@x.io,\nb@x.io,bounced\n"))
    ws.import_contacts(write(tmp_path / "2.csv", "email,status\na@x.io,unsubscribed\nb@x.io,active\n"))
    a = ws.history("a@x.io").as_dict()
    b = ws.history("b@x.io").as_dict()
    assert [(c["from_status"], c["to_status"]) for c in a["status_changes"]] == [("active", "unsubscribed")]
    assert [(c["from_status"], c["to_status"]) for c in b["status_changes"]] == [(None, "bounced")]
    assert a["status_changes"][0]["command"] == "import contacts"
