"""One run of a sync job: the changes since its last committed run, exactly once.

Under the writers' lock, on the snapshot the lock was taken on:

1. the members now: the active contacts of the union of the job's segments (what
   `segengine export` writes);
2. the changes: members now and not at the last committed run (added), and the other
   way round (removed), as differences of Roaring bitmaps of contact ids;
3. the new member bitmap, as a new file of the transaction (``syncs/``);
4. ``JOB.NNNNNN.added.(csv|parquet)`` with the job's columns and
   ``JOB.NNNNNN.removed.csv`` (``email``, ``reason``), each written by DuckDB into a
   private temporary directory beside it, fsynced, renamed into place, and the
   directory fsynced: a file appears complete or not at all;
5. the commit: the run number, its member bitmap and its history entry, in one
   manifest swap (`segengine.store.workspace.Transaction.commit`).

A crash before 5 leaves the last committed run as it was: the next run takes the
same number, computes the changes again against that run and replaces whatever files
the interrupted one left (its temporary directories are removed first). A crash after
5 leaves a committed run whose files were complete before it was committed. A failure
that is not a crash (a full disk, an error) removes the files this run renamed into
place, unless the commit happened, so the directory holds committed runs only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
from pyroaring import BitMap64

from ..definition.nodes import Group, Segment
from ..definition.parse import parse_definition
from ..errors import InputError, SegengineError
from ..export.cells import cell
from ..export.file import copy_options, optional_columns, run_with_progress
from ..progress import NullProgress, Progress
from ..session import parse_as_of
from ..store.duck import ids_table, lit, quiet
from ..store.workspace import Snapshot, crash_point, fsync_path
from .jobs import (
    RUNS_KEPT,
    WIDE,
    find_job,
    load_members,
    now_text,
    to_bitmap,
    to_ids,
    write_members,
)

if TYPE_CHECKING:
    from ..session import Session
    from ..store.manifest import SyncJob, SyncRunEntry

#: why a contact is in the removed file: its status when it stopped being active, else
#: it no longer matches the segments (docs/sync.md)
REASON_SQL = (
    "CASE c.status WHEN 'unsubscribed' THEN 'unsubscribed' WHEN 'bounced' THEN 'bounced' "
    "ELSE 'left_segment' END AS reason"
)


class SyncWriteError(SegengineError):
    """A run could not write its files or commit (a full disk, say): nothing was committed."""


#: a member is an active contact, as an export writes only those
ACTIVE = {"field": "status", "op": "is", "value": "active"}


@dataclass(frozen=True, slots=True)
class SyncRunResult:
    job: str
    run: int
    added: int
    removed: int
    members: int
    files: tuple[str, ...]
    full: bool
    as_of: str

    def as_dict(self) -> dict[str, Any]:
        """The ``sync run --json`` document (docs/sync.md)."""
        return {"job": self.job, "run": self.run, "added": self.added, "removed": self.removed,
                "members": self.members, "files": list(self.files), "full": self.full,
                "as_of": self.as_of}


def file_names(name: str, run: int, fmt: str) -> tuple[str, str]:
    return f"{name}.{run:06d}.added.{fmt}", f"{name}.{run:06d}.removed.csv"


def temp_dirs(directory: Path, name: str) -> list[Path]:
    """Temporary directories that runs of job `name` left in `directory` (killed runs)."""
    pattern = re.compile(re.escape(f".{name}.") + r"\d{6}\.[0-9a-f]{12}\.tmp\Z")
    return [p for p in directory.iterdir() if pattern.match(p.name) and p.is_dir()]


def check_runnable(session: Session, name: str, job: SyncJob, snap: Snapshot) -> Path:
    """The job's directory, after checking that it and every segment still exist."""
    missing = []
    for seg in job["segments"]:
        if seg in snap.segments:
            continue
        if os.path.isabs(seg):
            if not Path(seg).is_file():
                missing.append(f"segment file {seg}")
        else:
            missing.append(f"segment {seg!r}")
    directory = Path(job["to"])
    if not directory.is_dir():
        missing.append(f"directory {directory}")
    if missing:
        raise InputError(
            f"sync job {name!r} cannot run: {', '.join(missing)} no longer "
            f"{'exists' if len(missing) == 1 else 'exist'}; restore "
            f"{'it' if len(missing) == 1 else 'them'}, or `segengine sync delete {name}` and "
            "create the job again"
        )
    session.store.check_outside(directory, "--to")
    return directory


def active_members(session: Session, name: str, segments: list[str], day: dt.date,
                   snap: Snapshot) -> np.ndarray:
    """The active contacts of the union of `segments`, sorted: one evaluation of
    (any of the segments) and (status is active), so the engine intersects the status
    with the union itself (on the engagement index: two bitmaps)."""
    roots = session.roots(segments, snap)
    active = parse_definition({"name": "active", "rules": [ACTIVE]}, snap.schema).root.rules
    union = Group(match="any", rules=tuple(roots))
    members = Segment(name=f"sync-{name}", root=Group(match="all", rules=(union, *active)))
    return np.asarray(session.contact_ids([members], as_of=day, snapshot=snap), dtype=np.int64)


def publish(con: duckdb.DuckDBPyConnection, select: str, fmt: str, target: Path, scratch: str,
            progress: Progress) -> int:
    """COPY `select` into a private directory beside `target`, then rename it into place.

    DuckDB creates its file with the process's umask; inside a ``0700`` directory
    nobody else can open it before it is made ``0600`` and renamed.
    """
    workdir = target.parent / scratch
    workdir.mkdir(mode=0o700)
    try:
        tmp = workdir / target.name
        with progress.task(f"writing {target.name}", total=100) as task, optional_columns(con, fmt):
            ((rows,),) = run_with_progress(
                con, f"COPY ({select}) TO {lit(str(tmp))} ({copy_options(fmt)})", task
            )
        os.chmod(tmp, 0o600)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return int(rows)


def changes(previous: Any, current: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
    """The member bitmap now, and the ids added and removed since `previous` (None: nothing)."""
    wide = bool(current.size and current[-1] >= WIDE) or isinstance(previous, BitMap64)
    now = to_bitmap(current, wide)
    if previous is None:
        return now, current, np.array([], dtype=np.int64)
    if wide and not isinstance(previous, BitMap64):
        previous = to_bitmap(to_ids(previous), True)
    return now, to_ids(now - previous), to_ids(previous - now)


def change_files(name: str, run: int, job: SyncJob, snap: Snapshot, added: np.ndarray,
                 removed: np.ndarray) -> list[tuple[str, str, np.ndarray, str]]:
    """(file name, format, contact ids, SQL columns) of the added and the removed file."""
    fmt, schema = job["format"], snap.schema
    added_name, removed_name = file_names(name, run, fmt)
    # the removed file's emails are rendered as the added file's are, so that they
    # match as keys: guarded only in a CSV job without `raw`
    plain_email = job["raw"] or fmt == "parquet"
    return [
        (added_name, fmt, added, ", ".join(cell(c, schema[c], fmt, job["raw"]) for c in job["columns"])),
        (removed_name, "csv", removed, f"{cell('email', schema['email'], 'csv', plain_email)}, {REASON_SQL}"),
    ]


def run_job(
    session: Session,
    name: str,
    *,
    as_of: str | dt.date | None = None,
    progress: Progress | None = None,
) -> SyncRunResult:
    """Run the sync job `name`: write the changes since its last committed run, then commit."""
    day = parse_as_of(as_of)
    progress = progress or NullProgress()
    with session.store.transaction() as tx:
        snap = tx.base
        job = find_job(snap, name)
        directory = check_runnable(session, name, job, snap)
        run = job["run"] + 1
        with progress.task("matching contacts"):
            current = active_members(session, name, job["segments"], day, snap)
        con = quiet(session.connection(snap))
        previous = load_members(tx.root, job["members"])
        now, added, removed = changes(previous, current)
        files = change_files(name, run, job, snap, added, removed)
        published: list[Path] = []
        committed = False
        try:
            for leftover in temp_dirs(directory, name):
                shutil.rmtree(leftover, ignore_errors=True)
            members = write_members(tx, name, now)
            crash_point("sync:members-written")
            for file_name, fmt, rows, columns in files:
                target = directory / file_name
                published.append(target)
                view = f"sync_rows_{uuid.uuid4().hex[:12]}"
                # no rows: a constant-false filter writes the header (or the Parquet schema)
                # without scanning the contacts
                rows_of = f"SEMI JOIN {view} m ON c.contact_id = m.contact_id" if rows.size else "WHERE false"
                con.register(view, ids_table(rows))
                try:
                    publish(con, f"SELECT {columns} FROM contacts c {rows_of} "
                            'ORDER BY c.email COLLATE "binary"',
                            fmt, target, f".{name}.{run:06d}.{uuid.uuid4().hex[:12]}.tmp", progress)
                finally:
                    con.unregister(view)
                crash_point(f"sync:{file_name.split('.')[2]}-written")
            entry: SyncRunEntry = {
                "run": run,
                "committed_at": now_text(),
                "as_of": day.isoformat(),
                "full": previous is None,
                "added": int(added.size),
                "removed": int(removed.size),
                "members": int(current.size),
                "files": [f[0] for f in files],
            }
            state = tx.manifest["syncs"][name]
            state["run"] = run
            state["members"] = members
            state["runs"] = [*state["runs"], entry][-RUNS_KEPT:]
            tx.commit()
            committed = True
        except (OSError, duckdb.Error) as exc:
            # a full disk, a directory made read-only: the job stays as it was
            reason = " ".join(str(exc).split())
            raise SyncWriteError(
                f"sync job {name!r}: run {run} failed and was not committed ({reason}); "
                f"fix the cause and run it again: it writes run {run} again"
            ) from exc
        finally:
            if not committed and not committed_on_disk(session, name, run):
                for path in published:
                    with contextlib.suppress(OSError):
                        path.unlink()
    session.after_write()
    return SyncRunResult(name, run, entry["added"], entry["removed"], entry["members"],
                         tuple(str(directory / f) for f in entry["files"]), entry["full"],
                         entry["as_of"])


def committed_on_disk(session: Session, name: str, run: int) -> bool:
    """Whether run `run` of `name` is in the manifest on disk (a commit can fail after its
    rename, in the directory's fsync: then the run is committed and its files must stay)."""
    try:
        job = (session.store.snapshot().manifest.get("syncs") or {}).get(name)
    except Exception:  # noqa: BLE001 - an unreadable manifest: keep the files, a rerun replaces them
        return True
    return bool(job and job["run"] >= run)
