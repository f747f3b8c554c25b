"""Changing contact statuses: the one primitive behind unsubscribe, resubscribe and bounces.

A status change is one transaction that publishes three things with one manifest swap:

- a rewritten contacts file: DuckDB copies the old file and replaces the status of
  the changed contacts (a copy-on-write, like every other write of the store);
- an events file with one event per changed contact (``unsubscribe`` for a bulk
  unsubscribe, ``bounce`` for a hard bounce during a send), when the change has an
  event type;
- a status-log file, the audit trail: ``contact_id, timestamp, from_status,
  to_status, command, reason`` per changed contact. The manifest lists these files
  under ``status_log``. It is the only record of a resubscribe (the event types have no
  resubscribe event type) and the place `segengine history` reads status changes from.

A process killed at any moment leaves all three or none of them. Only contacts whose
current status is in ``allowed_from`` change, and the statuses are checked inside the
transaction (under the writer lock), so a contact bounced by a concurrent send stays
bounced even when it was selected earlier. A change that changes nothing commits
nothing: the workspace version stays, which makes repeated commands idempotent.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import InputError, WorkspaceBusy
from ..fields import EVENT_TYPES, STATUSES
from ..progress import NullProgress, Progress
from .duck import connect_writer as connect
from .duck import file_list, ids_table, lit, quiet
from .workspace import Snapshot, Store, Transaction, crash_point

#: Manifest key of the status-log files (a list, like ``events``).
STATUS_LOG = "status_log"

#: How often a waiting writer retries the lock.
LOCK_RETRY_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class StatusChange:
    """What a status change did (or, for a dry run, would do)."""

    #: distinct given ids that are contacts of the workspace, whatever their status
    matched: int
    #: contacts whose status changed (their status was in ``allowed_from``)
    changed: int
    #: the workspace version holding the change; the unchanged version when nothing changed
    version: int
    #: the time recorded on the events and the status log (naive UTC)
    at: dt.datetime
    dry_run: bool = False


def utc_naive(at: dt.datetime | None) -> dt.datetime:
    """`at` (default now) as a naive UTC datetime, the way the store keeps timestamps."""
    if at is None:
        return dt.datetime.now(dt.UTC).replace(tzinfo=None)
    if at.tzinfo is not None:
        return at.astimezone(dt.UTC).replace(tzinfo=None)
    return at


def _check_request(to: str, allowed_from: Iterable[str], event_type: str | None,
                   campaign: str | None, command: str) -> tuple[str, ...]:
    """Refuse a malformed request before any work: these are programming or input errors."""
    allowed = tuple(dict.fromkeys(allowed_from))
    unknown = [s for s in (to, *allowed) if s not in STATUSES]
    if unknown:
        raise InputError(f"unknown status {unknown[0]!r}: use one of {', '.join(STATUSES)}")
    if event_type is not None:
        if event_type not in EVENT_TYPES:
            raise InputError(f"unknown event type {event_type!r}: use one of {', '.join(EVENT_TYPES)}")
        if not campaign:
            raise InputError(f"a {event_type!r} event needs a campaign id")
    if not command:
        raise InputError("a status change needs the name of the command making it")
    return allowed


def _plan(con: duckdb.DuckDBPyConnection, contacts: tuple[str, ...], ids: pa.Table,
          to: str, allowed_from: tuple[str, ...]) -> tuple[int, int]:
    """Create the temp table ``changed`` (contact_id, from_status); return (matched, changed)."""
    if not contacts or ids.num_rows == 0:
        con.execute("CREATE OR REPLACE TEMP TABLE changed (contact_id BIGINT, from_status VARCHAR)")
        return 0, 0
    con.register("given_ids", ids)
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE hits AS SELECT c.contact_id, c.status "
            f"FROM read_parquet({file_list(contacts)}) c "
            "SEMI JOIN given_ids g ON c.contact_id = g.contact_id"
        )
    finally:
        con.unregister("given_ids")
    sources = ", ".join(lit(s) for s in allowed_from) or "NULL"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE changed AS SELECT contact_id, status AS from_status "
        f"FROM hits WHERE status IN ({sources}) AND status <> {lit(to)}"
    )
    matched = con.execute("SELECT count(*) FROM hits").fetchone()[0]
    changed = con.execute("SELECT count(*) FROM changed").fetchone()[0]
    return int(matched), int(changed)


def _write_contacts(con: duckdb.DuckDBPyConnection, tx: Transaction, to: str) -> str:
    """Copy the contacts with the new status for the changed ids; ordered by id as imports are."""
    out = tx.new_file("contacts")
    con.execute(
        "COPY (SELECT c.* REPLACE (CASE WHEN ch.contact_id IS NULL THEN c.status "
        f"ELSE {lit(to)} END AS status) "
        f"FROM read_parquet({file_list(tx.base.files('contacts'))}) c "
        "LEFT JOIN changed ch ON c.contact_id = ch.contact_id ORDER BY c.contact_id) "
        f"TO {lit(str(out))} (FORMAT parquet, COMPRESSION zstd)"
    )
    return tx.relative(out)


def _write_events(con: duckdb.DuckDBPyConnection, tx: Transaction, event_type: str,
                  campaign: str, at: dt.datetime) -> str:
    out = tx.new_file("events")
    con.execute(
        f"COPY (SELECT contact_id, {lit(campaign)} AS campaign, {lit(event_type)} AS type, "
        f"TIMESTAMP {lit(at.isoformat(sep=' '))} AS timestamp, NULL::VARCHAR AS url "
        f"FROM changed ORDER BY contact_id) TO {lit(str(out))} (FORMAT parquet, COMPRESSION zstd)"
    )
    return tx.relative(out)


def _write_status_log(con: duckdb.DuckDBPyConnection, tx: Transaction, to: str,
                      command: str, reason: str | None, at: dt.datetime) -> str:
    out = tx.new_file(STATUS_LOG)
    reason_sql = "NULL::VARCHAR" if reason is None else lit(reason)
    con.execute(
        f"COPY (SELECT contact_id, TIMESTAMP {lit(at.isoformat(sep=' '))} AS timestamp, "
        f"from_status, {lit(to)} AS to_status, {lit(command)} AS command, {reason_sql} AS reason "
        f"FROM changed ORDER BY contact_id) TO {lit(str(out))} (FORMAT parquet, COMPRESSION zstd)"
    )
    return tx.relative(out)


def _dry_run(store: Store, ids: pa.Table, to: str, allowed: tuple[str, ...],
             at: dt.datetime) -> StatusChange:
    """The counts a change would have now; reads a snapshot and takes no lock."""
    snap = store.snapshot()
    with tempfile.TemporaryDirectory(prefix="segengine-dry-run-") as spill:
        con = quiet(connect(Path(spill)))
        try:
            matched, changed = _plan(con, snap.files("contacts"), ids, to, allowed)
        finally:
            con.close()
    return StatusChange(matched, changed, snap.version, at, dry_run=True)


def change_status(
    store: Store,
    contact_ids: Iterable[int] | np.ndarray | pa.Array,
    to: str,
    *,
    allowed_from: Iterable[str],
    event_type: str | None = None,
    campaign: str | None = None,
    reason: str | None = None,
    command: str,
    at: dt.datetime | None = None,
    progress: Progress | None = None,
    dry_run: bool = False,
    wait_seconds: float = 0.0,
) -> StatusChange:
    """Move the given contacts whose status is in `allowed_from` to status `to`, atomically.

    Writes, in one transaction, the contacts with their new status, an event of
    `event_type` in `campaign` per changed contact (none when `event_type` is None),
    and a status-log row per changed contact recording `command` and `reason`, all at
    time `at` (default now, UTC). Ids that are not contacts are ignored (``matched``
    counts the ones that are). With `dry_run`, only counts, from the current snapshot,
    without the lock. `wait_seconds` retries a busy writer lock that long (a send
    recording bounces waits for a running import instead of failing).
    """
    allowed = _check_request(to, allowed_from, event_type, campaign, command)
    at = utc_naive(at)
    ids = ids_table(contact_ids)
    if dry_run:
        return _dry_run(store, ids, to, allowed, at)
    progress = progress or NullProgress()
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with store.transaction() as tx:
                return _apply(tx, ids, to, allowed, event_type, campaign, reason, command, at,
                              progress)
        except WorkspaceBusy:  # raised on entering only: _apply takes no lock
            if time.monotonic() >= deadline:
                raise
            time.sleep(LOCK_RETRY_SECONDS)


def _apply(tx: Transaction, ids: pa.Table, to: str, allowed: tuple[str, ...],
           event_type: str | None, campaign: str | None, reason: str | None, command: str,
           at: dt.datetime, progress: Progress) -> StatusChange:
    """Plan and write the change inside `tx`; commit only when some contact changes."""
    con = quiet(connect(tx.staging))
    try:
        with progress.task("matching contacts"):
            matched, changed = _plan(con, tx.base.files("contacts"), ids, to, allowed)
        if changed == 0:
            return StatusChange(matched, 0, tx.base.version, at)
        with progress.task(f"writing {changed:,} status changes"):
            tx.manifest["contacts"] = [_write_contacts(con, tx, to)]
            crash_point("status:contacts-written")
            if event_type is not None:
                tx.manifest["events"] = [*tx.manifest["events"],
                                         _write_events(con, tx, event_type, campaign, at)]
                counts = tx.manifest["counts"]
                counts["events"] = int(counts.get("events", 0)) + changed
            log = _write_status_log(con, tx, to, command, reason, at)
            tx.manifest[STATUS_LOG] = [*tx.manifest.get(STATUS_LOG, []), log]
            crash_point("status:files-written")
    finally:
        con.close()
    tx.commit(progress)  # reports the index refresh, the long part of a commit
    return StatusChange(matched, changed, int(tx.manifest["version"]), at)


def status_log_files(snap: Snapshot) -> tuple[str, ...]:
    """The absolute paths of a snapshot's status-log files (none in older workspaces)."""
    return snap.files(STATUS_LOG)
