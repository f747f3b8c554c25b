"""Bulk unsubscribe and resubscribe (docs/export-and-unsubscribe.md).

Both select contacts (by segments, or by a file of email addresses) and hand their
ids to `segengine.store.status.change_status`, which rewrites the statuses, records
the events and appends the status log in one atomic transaction.

- ``unsubscribe`` moves *active* contacts to ``unsubscribed`` and records an
  ``unsubscribe`` event (campaign ``bulk-unsubscribe``) at the command's time for
  each; bounced and already unsubscribed contacts are matched but not changed.
- ``resubscribe`` is the only way back to ``active``. It needs a reason, moves
  unsubscribed contacts (and bounced ones only when asked), and records no event:
  the event types have no resubscribe, so the status log is its audit trail.

Emails files are read as imports read them (UTF-8 with an optional BOM, RFC 4180)
and normalised by the same rule (`segengine.addresses`: surrounding white space and
invisible characters stripped, NFKC, lower-cased). Unknown addresses are counted and, with a report path, written to a
CSV of ``line,email`` (the first line each appears on); they are never created.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from . import addresses
from .definition.nodes import Segment
from .errors import InputError
from .progress import NullProgress, Progress
from .store.duck import connect_writer as connect
from .store.duck import file_list, lit, q, quiet
from .store.imports import email_expr
from .store.staging import LINE, check_names, file_format, stage_csv
from .store.status import StatusChange, change_status, utc_naive
from .store.workspace import Snapshot, make_private

if TYPE_CHECKING:
    from .session import SegmentArg, Session

#: The campaign id of the events a bulk unsubscribe records (docs/export-and-unsubscribe.md).
BULK_CAMPAIGN = "bulk-unsubscribe"


@dataclass(frozen=True, slots=True)
class SubscriptionResult:
    """What an unsubscribe or resubscribe did (or would do, for a dry run)."""

    #: known contacts selected, whatever their status
    matched: int
    #: contacts whose status changed (would change, for a dry run)
    changed: int
    #: addresses of the emails file that are not contacts (0 for segments)
    unknown: int
    dry_run: bool
    #: the workspace version after the command (unchanged for a dry run or no change)
    version: int
    #: where the unknown addresses were written, if asked
    report: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document of docs/export-and-unsubscribe.md."""
        return {"matched": self.matched, "changed": self.changed, "unknown": self.unknown}


@dataclass(frozen=True, slots=True)
class EmailMatch:
    """The contacts an emails file names: their ids (sorted) and how many are unknown."""

    ids: np.ndarray
    unknown: int


# --- reading an emails file ---------------------------------------------------------


def email_column(columns: Sequence[str], path: Path) -> tuple[str, bool]:
    """The column holding the addresses, and whether the header row is itself an address.

    A column named ``email`` (any case) wins; a file with a single column is a list of
    addresses, and when its first row looks like an address it has no header at all.
    """
    named = [c for c in columns if c == "email"] or [c for c in columns if c.lower() == "email"]
    if named:
        return named[0], False
    if len(columns) == 1:
        return columns[0], "@" in columns[0]
    raise InputError(
        f"{path}: no 'email' column among {', '.join(repr(c) for c in columns)}: "
        "name the address column 'email', or give a file with a single column"
    )


def _listed(con: duckdb.DuckDBPyConnection, path: Path, spill: Path) -> str:
    """SQL of (line, raw) rows of the file's addresses; stages a CSV into `spill`."""
    if file_format(path) == "parquet":
        source = f"read_parquet({lit(str(path))}, file_row_number = true)"
        columns = [row[0] for row in con.execute(
            f"DESCRIBE SELECT * FROM read_parquet({lit(str(path))})").fetchall()]
        check_names(path, columns)
        column, _ = email_column(columns, path)
        return f"SELECT file_row_number + 1 AS line, CAST({q(column)} AS VARCHAR) AS raw FROM {source}"
    staged = spill / "emails.parquet"
    header, _ = stage_csv(path, staged)
    column, header_is_address = email_column(header, path)
    rows = f"SELECT {LINE} AS line, {q(column)} AS raw FROM read_parquet({lit(str(staged))})"
    if header_is_address:
        rows = f"SELECT 1::BIGINT AS line, {lit(column)} AS raw UNION ALL {rows}"
    return rows


def _contacts_sql(snap: Snapshot) -> str:
    files = snap.files("contacts")
    if not files:
        return "SELECT NULL::BIGINT AS contact_id, NULL::VARCHAR AS email WHERE false"
    # Stored addresses are matched by the address rule too, so one written by an older
    # rule (a full-width letter, a zero-width space) is still found and suppressed.
    return f"SELECT contact_id, {email_expr('email')} AS email FROM read_parquet({file_list(files)})"


def _write_report(con: duckdb.DuckDBPyConnection, report: Path) -> None:
    """The unknown addresses as CSV (line, email), written to a temp file and renamed."""
    tmp = report.with_name(f".{report.name}.tmp")
    try:
        con.execute(
            "COPY (SELECT line, email FROM found WHERE contact_id IS NULL ORDER BY line) "
            f"TO {lit(str(tmp))} (FORMAT csv, HEADER true)"
        )
        make_private(tmp)  # it holds emails
        os.replace(tmp, report)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def match_emails(path: str | os.PathLike[str], snap: Snapshot,
                 report: str | os.PathLike[str] | None = None) -> EmailMatch:
    """Look up the addresses of an emails file (CSV or Parquet) among `snap`'s contacts."""
    path = Path(path)
    report_path = check_report_path(report)
    with tempfile.TemporaryDirectory(prefix="segengine-emails-") as spill:
        con = addresses.register(quiet(connect(Path(spill))))
        try:
            listed = _listed(con, path, Path(spill))
            con.execute(
                "CREATE TEMP TABLE wanted AS SELECT email, min(line) AS line FROM "
                f"(SELECT line, {email_expr('raw')} AS email FROM ({listed})) "
                "WHERE email IS NOT NULL AND email <> '' GROUP BY email"
            )
            con.execute(
                "CREATE TEMP TABLE found AS SELECT w.line, w.email, c.contact_id FROM wanted w "
                f"LEFT JOIN ({_contacts_sql(snap)}) c ON c.email = w.email"
            )
            ids = con.execute(
                "SELECT contact_id FROM found WHERE contact_id IS NOT NULL ORDER BY contact_id"
            ).fetchnumpy()["contact_id"]
            unknown = con.execute("SELECT count(*) FROM found WHERE contact_id IS NULL").fetchone()[0]
            if report_path is not None:
                _write_report(con, report_path)
        finally:
            con.close()
    return EmailMatch(np.asarray(ids, dtype=np.int64), int(unknown))


def check_report_path(report: str | os.PathLike[str] | None) -> Path | None:
    if report is None:
        return None
    path = Path(report).expanduser()
    if path.is_dir():
        raise InputError(f"--report {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise InputError(f"--report {path}: directory {path.parent} does not exist")
    return path


# --- the commands ------------------------------------------------------------------


def _segment_label(arg: SegmentArg) -> str:
    if isinstance(arg, Mapping):
        return str(arg.get("name", "<definition>"))
    if isinstance(arg, Segment):
        return arg.name
    return os.fspath(arg)


def _result(change: StatusChange, unknown: int, report: str | os.PathLike[str] | None
            ) -> SubscriptionResult:
    return SubscriptionResult(
        matched=change.matched,
        changed=change.changed,
        unknown=unknown,
        dry_run=change.dry_run,
        version=change.version,
        report=os.fspath(report) if report is not None else None,
    )


def unsubscribe(
    session: Session,
    *,
    segments: Sequence[SegmentArg] = (),
    emails: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    as_of: str | dt.date | None = None,
    report: str | os.PathLike[str] | None = None,
    engine: str = "auto",
    progress: Progress | None = None,
) -> SubscriptionResult:
    """Unsubscribe the active contacts of the union of `segments`, or of an emails file."""
    if bool(segments) == (emails is not None):
        raise InputError("give either --segment SEG (repeat it for several) or --emails FILE")
    if report is not None and emails is None:
        raise InputError("--report lists the unknown addresses of --emails FILE: use it with --emails")
    if report is not None:
        session.store.check_outside(report, "--report")
    if as_of is not None and emails is not None:
        from .session import parse_as_of

        # batch jobs pass --as-of always; with --emails it selects nothing, but a typo
        # in it is still an error
        parse_as_of(as_of)
    progress = progress or NullProgress()
    at = utc_naive(None)  # the command's time, on every event and status-log row
    snap = session.snapshot()
    if emails is not None:
        with progress.task("reading emails"):
            found = match_emails(emails, snap, report)
        ids, unknown, reason = found.ids, found.unknown, f"emails file {os.fspath(emails)}"
    else:
        with progress.task("matching segments"):
            ids = session.contact_ids(segments, as_of=as_of, engine=engine, snapshot=snap)
        unknown = 0
        reason = "segments " + ", ".join(_segment_label(s) for s in segments)
    change = change_status(
        session.store, ids, "unsubscribed", allowed_from=("active",), event_type="unsubscribe",
        campaign=BULK_CAMPAIGN, reason=reason, command="unsubscribe", at=at,
        progress=progress, dry_run=dry_run,
    )
    return _result(change, unknown, report)


def resubscribe(
    session: Session,
    emails: str | os.PathLike[str],
    *,
    reason: str | None,
    include_bounced: bool = False,
    dry_run: bool = False,
    report: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> SubscriptionResult:
    """Make the unsubscribed (and, if asked, bounced) contacts of an emails file active again."""
    reason = (reason or "").strip()
    if not reason:
        raise InputError(
            "--reason is required: say why these contacts may receive email again "
            "(e.g. 'opted in again on 2026-05-01 via the preference centre'); "
            "it is kept in the status log"
        )
    progress = progress or NullProgress()
    at = utc_naive(None)
    with progress.task("reading emails"):
        found = match_emails(emails, session.snapshot(), report)
    allowed = ("unsubscribed", "bounced") if include_bounced else ("unsubscribed",)
    change = change_status(
        session.store, found.ids, "active", allowed_from=allowed, reason=reason,
        command="resubscribe", at=at, progress=progress, dry_run=dry_run,
    )
    return _result(change, found.unknown, report)
