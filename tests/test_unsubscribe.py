"""Bulk unsubscribe (SPEC section 7), resubscribe and the status-change primitive."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import Cli, write
from test_crash import run_to_completion, segengine_cmd

import segengine
from segengine.errors import InputError
from segengine.store.status import STATUS_LOG, change_status, status_log_files
from segengine.unsubscribe import BULK_CAMPAIGN

CONTACTS = (
    "email,status,lists,state\n"
    "ann@example.com,active,news,CA\n"
    "bob@example.com,active,news,CA\n"
    "cat@example.com,unsubscribed,news,CA\n"
    "dan@example.com,bounced,news,CA\n"
    "eve@example.com,active,news,NY\n"
    "fay@example.com,active,,NY\n"
)
IN_CA = {"name": "in-ca", "rules": [{"field": "state", "op": "is", "value": "CA"}]}
NEWS = {"name": "news", "rules": [{"field": "lists", "op": "includes", "value": "news"}]}


@pytest.fixture
def filled(ws, tmp_path) -> segengine.Workspace:
    ws.import_contacts(write(tmp_path / "contacts.csv", CONTACTS))
    return ws


def statuses(ws) -> dict[str, str]:
    frame = pl.read_parquet(list(ws.snapshot().files("contacts")))
    return dict(zip(frame["email"], frame["status"], strict=True))


def events(ws) -> pl.DataFrame:
    files = list(ws.snapshot().files("events"))
    return pl.read_parquet(files) if files else pl.DataFrame()


def status_log(ws) -> pl.DataFrame:
    """The status log without the fixture's own import (which logs its initial statuses)."""
    files = list(status_log_files(ws.snapshot()))
    if not files:
        return pl.DataFrame()
    log = pl.read_parquet(files).filter(pl.col("command") != "import contacts")
    return log.sort("timestamp", "contact_id")


def test_unsubscribe_segments_changes_active_only_and_records_events(filled):
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    result = filled.unsubscribe(IN_CA)
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert result.as_dict() == {"matched": 4, "changed": 2, "unknown": 0}
    assert statuses(filled) == {
        "ann@example.com": "unsubscribed", "bob@example.com": "unsubscribed",
        "cat@example.com": "unsubscribed", "dan@example.com": "bounced",  # bounced stays bounced
        "eve@example.com": "active", "fay@example.com": "active",
    }
    ev = events(filled)
    assert ev.height == 2
    assert set(ev["type"]) == {"unsubscribe"} and set(ev["campaign"]) == {BULK_CAMPAIGN}
    assert ev["url"].null_count() == 2
    (stamp,) = set(ev["timestamp"])
    assert before <= stamp <= after  # the command's time
    log = status_log(filled)
    assert log.height == 2
    assert set(log["from_status"]) == {"active"} and set(log["to_status"]) == {"unsubscribed"}
    assert set(log["command"]) == {"unsubscribe"} and set(log["timestamp"]) == {stamp}
    assert "in-ca" in log["reason"][0]


def test_unsubscribe_of_a_union_and_count_and_export_reflect_it(filled, tmp_path):
    assert filled.count(NEWS)["sendable"] == 3
    result = filled.unsubscribe(IN_CA, NEWS)
    assert result.as_dict() == {"matched": 5, "changed": 3, "unknown": 0}
    assert filled.count(NEWS)["sendable"] == 0
    assert filled.count(NEWS)["by_status"] == {"active": 0, "unsubscribed": 4, "bounced": 1}
    out = tmp_path / "left.csv"
    filled.export({"name": "all", "rules": []}, output=out, columns="email")
    assert out.read_text().splitlines() == ["email", "fay@example.com"]


def test_unsubscribe_is_idempotent_and_a_repeat_commits_nothing(filled):
    first = filled.unsubscribe(IN_CA)
    version = filled.snapshot().version
    second = filled.unsubscribe(IN_CA)
    assert second.as_dict() == {"matched": 4, "changed": 0, "unknown": 0}
    assert filled.snapshot().version == version == first.version == second.version
    assert events(filled).height == 2 and status_log(filled).height == 2


def test_dry_run_reports_the_same_and_changes_nothing(filled):
    snap = filled.snapshot()
    files = sorted(os.listdir(filled.path / "data"))
    dry = filled.unsubscribe(IN_CA, dry_run=True)
    assert dry.dry_run
    assert filled.snapshot().version == snap.version
    assert filled.snapshot().manifest == snap.manifest
    assert sorted(os.listdir(filled.path / "data")) == files
    real = filled.unsubscribe(IN_CA)
    assert dry.as_dict() == real.as_dict()


def test_emails_file_is_normalised_and_unknowns_are_reported(filled, tmp_path):
    emails = write(
        tmp_path / "emails.csv",
        "name,Email\n"
        "Ann,\" ANN@Example.com\t\"\n"     # line 2: white space and case
        "Nobody,nobody@example.com\n"      # line 3: unknown
        "Cat,cat@example.com\n"            # line 4: already unsubscribed
        "Dan,dan@example.com\n"            # line 5: bounced
        "Empty,\n"                         # line 6: no address, skipped
        "Again,Nobody@example.com\n"       # line 7: the same unknown again
        "Odd,\"not an email\"\n",          # line 8: unknown
    )
    report = tmp_path / "unknown.csv"
    result = filled.unsubscribe(emails=emails, report=report)
    assert result.as_dict() == {"matched": 3, "changed": 1, "unknown": 2}
    assert statuses(filled)["ann@example.com"] == "unsubscribed"
    assert statuses(filled)["dan@example.com"] == "bounced"
    assert pl.read_csv(report).rows() == [(3, "nobody@example.com"), (8, "not an email")]
    assert "nobody@example.com" not in statuses(filled)  # unknown emails are never created


def test_emails_file_with_a_single_column_with_or_without_header(filled, tmp_path):
    headerless = write(tmp_path / "plain.csv", "ann@example.com\nzed@example.com\n")
    report = tmp_path / "r.csv"
    result = filled.unsubscribe(emails=headerless, dry_run=True, report=report)
    assert result.as_dict() == {"matched": 1, "changed": 1, "unknown": 1}
    assert pl.read_csv(report).rows() == [(2, "zed@example.com")]
    headed = write(tmp_path / "headed.csv", "address\nann@example.com\nbob@example.com\n")
    assert filled.unsubscribe(emails=headed).as_dict() == {"matched": 2, "changed": 2, "unknown": 0}


def test_emails_file_errors_are_input_errors(filled, tmp_path):
    two = write(tmp_path / "two.csv", "name,address\nAnn,ann@example.com\n")
    with pytest.raises(InputError, match="no 'email' column"):
        filled.unsubscribe(emails=two)
    with pytest.raises(InputError, match="no such file"):
        filled.unsubscribe(emails=tmp_path / "missing.csv")
    with pytest.raises(InputError, match="either --segment"):
        filled.unsubscribe()
    with pytest.raises(InputError, match="either --segment"):
        filled.unsubscribe(IN_CA, emails=two)
    with pytest.raises(InputError, match="--report"):
        filled.unsubscribe(IN_CA, report=tmp_path / "r.csv")
    assert filled.snapshot().version == 1


def test_resubscribe_needs_a_reason_and_leaves_bounced_unless_asked(filled, tmp_path):
    emails = write(tmp_path / "back.csv", "email\ncat@example.com\ndan@example.com\nann@example.com\n")
    for reason in (None, "", "   "):
        with pytest.raises(InputError, match="--reason is required"):
            filled.resubscribe(emails, reason=reason)
    result = filled.resubscribe(emails, reason="opted in again")
    assert result.as_dict() == {"matched": 3, "changed": 1, "unknown": 0}
    assert statuses(filled)["cat@example.com"] == "active"
    assert statuses(filled)["dan@example.com"] == "bounced"
    result = filled.resubscribe(emails, reason="confirmed address works", include_bounced=True)
    assert result.as_dict() == {"matched": 3, "changed": 1, "unknown": 0}
    assert statuses(filled)["dan@example.com"] == "active"
    assert events(filled).height == 0  # no resubscribe event type: the status log is the trail
    log = status_log(filled)
    assert log.select("from_status", "to_status", "command", "reason").rows() == [
        ("unsubscribed", "active", "resubscribe", "opted in again"),
        ("bounced", "active", "resubscribe", "confirmed address works"),
    ]


def test_an_import_cannot_undo_an_unsubscribe_but_resubscribe_can(filled, tmp_path):
    filled.unsubscribe(IN_CA)
    filled.import_contacts(write(tmp_path / "again.csv", "email,status\nann@example.com,active\n"))
    assert statuses(filled)["ann@example.com"] == "unsubscribed"
    filled.resubscribe(write(tmp_path / "ann.csv", "email\nann@example.com\n"), reason="asked us")
    assert statuses(filled)["ann@example.com"] == "active"


def test_change_status_primitive_for_bounces(filled):
    ids = pl.read_parquet(list(filled.snapshot().files("contacts"))).sort("contact_id")["contact_id"]
    at = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    change = change_status(
        filled.store, ids.to_numpy(), "bounced", allowed_from=("active", "unsubscribed"),
        event_type="bounce", campaign="c1", reason="550 no such user", command="send", at=at,
    )
    assert (change.matched, change.changed) == (6, 5)
    assert change.at == dt.datetime(2026, 5, 1, 10, 0)  # stored as naive UTC
    assert set(statuses(filled).values()) == {"bounced"}
    assert set(events(filled)["type"]) == {"bounce"} and events(filled).height == 5
    manifest = filled.snapshot().manifest
    assert len(manifest[STATUS_LOG]) == 2  # the fixture's import, then this change
    assert status_log(filled).height == 5
    assert manifest["counts"]["events"] == 5
    with pytest.raises(InputError, match="unknown status"):
        change_status(filled.store, [1], "gone", allowed_from=("active",), command="x")
    with pytest.raises(InputError, match="needs a campaign"):
        change_status(filled.store, [1], "bounced", allowed_from=("active",),
                      event_type="bounce", command="x")


def test_status_log_files_survive_garbage_collection(filled):
    filled.unsubscribe(IN_CA)
    log_file = filled.path / filled.snapshot().manifest[STATUS_LOG][0]
    filled.unsubscribe(NEWS)  # two more commits run the garbage collector
    filled.unsubscribe({"name": "everyone", "rules": []})
    assert log_file.exists()
    assert status_log(filled).height == 4


def test_cli_unsubscribe_resubscribe_exit_codes(filled, tmp_path):
    cli = Cli(filled.path)
    seg = write(tmp_path / "in-ca.json", '{"name": "in-ca", "rules": '
                '[{"field": "state", "op": "is", "value": "CA"}]}')
    assert cli.json("unsubscribe", "--segment", seg, "--dry-run") == {
        "matched": 4, "changed": 2, "unknown": 0}
    assert "dry run" in cli("unsubscribe", "--segment", seg, "--dry-run").stdout
    assert cli.json("unsubscribe", "--segment", seg) == {"matched": 4, "changed": 2, "unknown": 0}
    cli("unsubscribe", code=2)
    cli("unsubscribe", "--segment", "no-such-segment", code=2)
    cli("unsubscribe", "--segment", seg, "--as-of", "yesterday", code=2)
    bad = cli("unsubscribe", "--emails", write(tmp_path / "x.csv", "a,b\n1,2\n"), code=2)
    assert "no 'email' column" in bad.stderr
    emails = write(tmp_path / "e.csv", "email\nann@example.com\n")
    cli("resubscribe", "--emails", emails, code=2)
    cli("resubscribe", "--emails", emails, "--reason", " ", code=2)
    assert cli.json("resubscribe", "--emails", emails, "--reason", "asked") == {
        "matched": 1, "changed": 1, "unknown": 0}


# --- crash safety -------------------------------------------------------------------

KILL_POINTS = 20
#: kills run this many writers at a time (each in its own copy of the workspace)
KILL_BATCH = 5
NAMED_POINTS = [
    ("status:contacts-written", False),
    ("status:files-written", False),
    ("after-rename:manifest.json", True),
]


def state(path: Path) -> str:
    """Contacts, events and status log of a workspace, without the command's timestamps.

    Two runs of the same unsubscribe differ only in their time, so the digest leaves
    out the timestamps of bulk-unsubscribe events and of status-log rows.
    """
    snap = segengine.open(path).snapshot()
    parts = []
    for table, files, key in (
        ("contacts", snap.files("contacts"), ["contact_id"]),
        ("events", snap.files("events"), ["contact_id", "campaign", "type", "timestamp"]),
        ("log", status_log_files(snap), ["contact_id", "to_status"]),
    ):
        if not files:
            parts.append(f"{table}:empty")
            continue
        frame = pl.read_parquet(list(files))
        if table == "events":
            frame = frame.with_columns(
                pl.when(pl.col("campaign") == BULK_CAMPAIGN).then(None)
                .otherwise(pl.col("timestamp")).alias("timestamp"))
        if table == "log":
            frame = frame.drop("timestamp")
        frame = frame.sort(key)
        parts.append(f"{table}:{frame.height}:{frame.hash_rows(seed=1).sum()}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


@pytest.fixture(scope="module")
def crash_base(tmp_path_factory) -> tuple[Path, Path]:
    """A workspace of 5,000 contacts and an emails file naming 2,000 of them."""
    from segengine.synth import generate

    root = tmp_path_factory.mktemp("unsub-crash")
    generate(root / "data", contacts=5_000, events=20_000, seed=3, fmt="parquet")
    base = root / "ws"
    ws = segengine.Workspace.init(base)
    ws.import_contacts(root / "data" / "contacts.parquet")
    ws.import_events(root / "data" / "events.parquet")
    emails = pl.read_parquet(list(ws.snapshot().files("contacts")))["email"].sample(2_000, seed=1)
    pl.DataFrame({"email": emails}).write_csv(root / "emails.csv")
    return base, root / "emails.csv"


def start_writer(work: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(segengine_cmd(work, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def copies(base: Path, tmp_path: Path, names: list[str]) -> list[Path]:
    works = [tmp_path / name for name in names]
    for work in works:
        shutil.copytree(base, work)
    return works


@pytest.mark.slow
def test_kill_unsubscribe_at_many_moments(crash_base, tmp_path):
    base, emails = crash_base
    args = ["unsubscribe", "--emails", str(emails)]
    before = state(base)
    # Calibrate: how long a batch of writers running side by side takes to finish.
    start = time.monotonic()
    names = [f"c{i}" for i in range(KILL_BATCH)]
    writers = [start_writer(w, args) for w in copies(base, tmp_path, names)]
    assert [w.wait() for w in writers] == [0] * KILL_BATCH
    duration = time.monotonic() - start
    after = state(tmp_path / "c0")
    assert after != before
    assert all(state(tmp_path / f"c{i}") == after for i in range(1, KILL_BATCH))
    outcomes = {"old": 0, "new": 0}
    for first in range(0, KILL_POINTS, KILL_BATCH):
        batch = list(range(first, min(first + KILL_BATCH, KILL_POINTS)))
        works = copies(base, tmp_path, [f"k{i}" for i in batch])
        start = time.monotonic()
        # kills spread from start-up to just past the expected end, over all batches
        writers = [(duration * (0.05 + 1.05 * i / KILL_POINTS), start_writer(w, args))
                   for i, w in zip(batch, works, strict=True)]
        for delay, proc in writers:  # in order of delay
            time.sleep(max(0.0, start + delay - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for i, work in zip(batch, works, strict=True):
            now = state(work)
            assert now in (before, after), f"kill point {i}: neither all nor nothing"
            outcomes["old" if now == before else "new"] += 1
            if i == KILL_POINTS // 2:  # the killed writer's lock blocks nobody; a retry completes
                run_to_completion(work, args)
                assert state(work) == after
            shutil.rmtree(work)
    print(f"kill outcomes: {outcomes}")  # shown with -s: how the kills landed
    assert outcomes["old"] > 0, outcomes


@pytest.mark.parametrize("point, survives", NAMED_POINTS)
def test_crash_points_of_a_status_change(crash_base, tmp_path, point, survives):
    base, emails = crash_base
    work = tmp_path / "ws"
    shutil.copytree(base, work)
    before = state(work)
    env = {**os.environ, "SEGENGINE_CRASH_AT": point}
    proc = subprocess.run(segengine_cmd(work, "unsubscribe", "--emails", str(emails)), env=env,
                          capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert (state(work) != before) == survives
    # the next run completes (or, after the commit point, repeats nothing)
    run_to_completion(work, ["unsubscribe", "--emails", str(emails)])
    assert state(work) != before
    assert not (work / ".staging").exists()


def test_emails_accept_as_of_and_ignore_it(filled, tmp_path):
    """Batch jobs pass --as-of to every command: with --emails it changes nothing."""
    cli = Cli(filled.path)
    emails = write(tmp_path / "e.csv", "email\nann@example.com\ncat@example.com\nzed@x.io\n")
    assert cli.json("unsubscribe", "--emails", emails, "--as-of", "2026-01-01", "--dry-run") == {
        "matched": 2, "changed": 1, "unknown": 1}
    assert statuses(filled)["ann@example.com"] == "active"
    assert cli.json("unsubscribe", "--emails", emails, "--as-of", "1999-12-31") == {
        "matched": 2, "changed": 1, "unknown": 1}
    assert statuses(filled)["ann@example.com"] == "unsubscribed"
    bad = cli("unsubscribe", "--emails", emails, "--as-of", "yesterday", code=2)
    assert "--as-of: 'yesterday' is not a date" in bad.stderr
