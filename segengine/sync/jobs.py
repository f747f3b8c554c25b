"""Sync job definitions and their committed state in the workspace manifest.

A job lives in ``manifest.json`` under ``syncs`` (`segengine.store.manifest.SyncJob`):
its segments, target directory, format and columns (fixed when it is created, so the
files of every run have the same columns), the number of its last committed run, the
history of its latest runs and where the members of the last committed run are kept.

The members are a Roaring bitmap of contact ids, serialised in the portable format to
a file under ``syncs/`` that the manifest references (so a run's member set is
published by the same manifest swap as its run number). Contact ids are exact keys:
an import keeps the id of every known address and numbers new ones from
``next_contact_id`` upwards, and contacts are never deleted, so an id means the same
contact in every later version. A bitmap over ids takes at most about 2 bytes per member
(array containers) and much less for dense sets (bitmap and run containers).
"""

from __future__ import annotations

import array
import datetime as dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..definition.validate import NAME_RE
from ..errors import InputError, JobExists, JobNotFound
from ..export.options import FORMATS, parse_columns
from ..store import checksums
from ..store.manifest import SyncJob, SyncMembers
from ..store.workspace import SYNCS_DIR, Snapshot, Transaction

if TYPE_CHECKING:
    from ..session import Session

#: How many runs a job's history in the manifest keeps (the files of every run stay in
#: the job's directory); a nightly job keeps about three months.
RUNS_KEPT = 100
#: ids at or above this need the 64-bit bitmap
WIDE = 2**32


def job_files(name: str) -> re.Pattern[str]:
    """The names of a job's run files in its directory (and nothing else)."""
    return re.compile(re.escape(name) + r"\.(\d{6})\.(added\.(?:csv|parquet)|removed\.csv)\Z")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InputError(
            f"sync job name {name!r}: use 1 to 64 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit (as a segment is named)"
        )
    return name


def jobs_of(snap: Snapshot) -> dict[str, SyncJob]:
    return snap.manifest.get("syncs") or {}


def find_job(snap: Snapshot, name: str) -> SyncJob:
    jobs = jobs_of(snap)
    if name not in jobs:
        import difflib

        hint = difflib.get_close_matches(name, list(jobs), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise JobNotFound(
            f"no sync job {name!r}{extra}: see `segengine sync list`, or create it with "
            "`segengine sync create`"
        )
    return jobs[name]


def check_directory(session: Session, to: str | os.PathLike[str], option: str = "--to") -> Path:
    """The job's directory: existing, and outside the workspace."""
    path = Path(to).expanduser()
    if not path.exists():
        raise InputError(f"{option} {to}: directory does not exist: create it first")
    if not path.is_dir():
        raise InputError(f"{option} {to}: is not a directory")
    session.store.check_outside(path, option)
    return path.resolve()


def stored_segment(session: Session, arg: str, snap: Snapshot) -> str:
    """What a job keeps of a segment it was given: the saved name, or the definition
    file's absolute path (a relative one would depend on where later runs start)."""
    session.load_segment(arg, snap)  # validates it, or names what is wrong
    if arg in snap.segments:
        return arg
    return str(Path(arg).expanduser().resolve())


def create_job(
    session: Session,
    name: str,
    segments: list[str],
    to: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    columns: str | list[str] | None = None,
    raw: bool = False,
) -> dict[str, Any]:
    """Save a new sync job; its first run will export every member."""
    check_name(name)
    fmt = fmt or "csv"
    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not a format: use csv or parquet")
    if not segments:
        raise InputError("name at least one segment with --segment SEG (repeat it for several)")
    directory = check_directory(session, to)
    with session.store.transaction() as tx:
        snap = tx.base
        if name in jobs_of(snap):
            raise JobExists(
                f"sync job {name!r} exists: `segengine sync reset {name}` starts it again from "
                f"nothing, `segengine sync delete {name}` removes it"
            )
        stored = [stored_segment(session, str(s), snap) for s in segments]
        session.roots(stored, snap)  # references resolve, no cycle
        names = parse_columns(columns, snap.schema)
        pattern = job_files(name)
        earlier = sorted(p.name for p in directory.iterdir() if pattern.match(p.name))
        if earlier:
            raise InputError(
                f"--to {directory}: already holds files of a job named {name!r} ({earlier[0]}, ...): "
                "choose another job name or directory, or move those files away"
            )
        job: SyncJob = {
            "segments": stored,
            "to": str(directory),
            "format": fmt,
            "columns": list(names),
            "raw": bool(raw),
            "created_at": now_text(),
            "run": 0,
            "members": None,
            "runs": [],
        }
        tx.manifest.setdefault("syncs", {})[name] = job
        tx.commit()
    return describe(name, job)


def reset_job(session: Session, name: str) -> dict[str, Any]:
    """Forget the job's members: its next run exports everyone again (numbers go on)."""
    with session.store.transaction() as tx:
        find_job(tx.base, name)
        job = tx.manifest["syncs"][name]
        job["members"] = None
        tx.commit()
    return describe(name, job)


def delete_job(session: Session, name: str) -> dict[str, Any]:
    """Remove the job; the files it wrote stay in its directory."""
    with session.store.transaction() as tx:
        job = find_job(tx.base, name)
        del tx.manifest["syncs"][name]
        tx.commit()
    return {"deleted": name, "to": job["to"], "runs": job["run"]}


def describe(name: str, job: SyncJob) -> dict[str, Any]:
    """A job as `sync list` and `sync show` print it (without its run history)."""
    last = job["runs"][-1] if job["runs"] else None
    return {
        "job": name,
        "segments": list(job["segments"]),
        "to": job["to"],
        "format": job["format"],
        "columns": list(job["columns"]),
        "raw": job["raw"],
        "created_at": job["created_at"],
        "run": job["run"],
        "last_run_at": last["committed_at"] if last else None,
        "members": job["members"]["count"] if job["members"] else None,
        "next_run_full": job["members"] is None,
    }


def list_jobs(session: Session) -> list[dict[str, Any]]:
    snap = session.snapshot()
    return [describe(name, job) for name, job in sorted(jobs_of(snap).items())]


def show_job(session: Session, name: str) -> dict[str, Any]:
    snap = session.snapshot()
    job = find_job(snap, name)
    return {**describe(name, job), "runs": [dict(r) for r in job["runs"]]}


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --- the member set ---------------------------------------------------------------------


def to_bitmap(ids: np.ndarray, wide: bool) -> Any:
    """Sorted int64 contact ids as a Roaring bitmap (64-bit only when an id needs it)."""
    from pyroaring import BitMap, BitMap64

    if wide:
        return BitMap64(np.asarray(ids, dtype=np.uint64))
    return BitMap(array.array("I", np.ascontiguousarray(ids, dtype=np.uint32).tobytes()))


def to_ids(bitmap: Any) -> np.ndarray:
    """A bitmap's ids, sorted, as int64."""
    values = bitmap.to_array()
    if isinstance(values, array.array):
        return np.frombuffer(values, dtype=np.uint32).astype(np.int64)
    return np.asarray(values, dtype=np.int64)


def load_members(root: Path, members: SyncMembers | None) -> Any:
    """The committed member bitmap (None: none committed)."""
    if members is None:
        return None
    from pyroaring import BitMap, BitMap64

    kind = BitMap64 if members["kind"] == "roaring64" else BitMap
    path = root / members["path"]
    checksums.check(path)  # damaged members would add or remove the wrong contacts
    return kind.deserialize(path.read_bytes())


def write_members(tx: Transaction, name: str, bitmap: Any) -> SyncMembers:
    """The member bitmap as a new file of the transaction (deleted if it aborts)."""
    bitmap.run_optimize()
    path = tx.new_file(f"{name}-members", suffix=".roaring", directory=SYNCS_DIR)
    path.write_bytes(bitmap.serialize())
    from pyroaring import BitMap64

    kind = "roaring64" if isinstance(bitmap, BitMap64) else "roaring32"
    return {"path": tx.relative(path), "kind": kind, "count": len(bitmap)}
