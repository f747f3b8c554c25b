"""The Python API: a workspace and the operations users run on it.

The command line is a thin layer over this module; notebooks and batch jobs use it
directly::

    import segengine
    ws = segengine.open("path/to/workspace")
    ws.count("never-opened", "ca-ctos", as_of="2026-06-30")
    ws.members("never-opened", active_only=True)
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .definition.nodes import Group, Segment
from .engines.base import Engine
from .export.options import PARTITIONED_NEEDS_SPARK
from .fields import STATUSES
from .progress import Progress
from .session import (
    SegmentArg,
    Session,
    count_result,
    parse_as_of,
    roots_in_place,
    segments_in_place,
)
from .store.workspace import Snapshot, Store

if TYPE_CHECKING:
    import polars as pl

    from .store.imports import ImportSummary

__all__ = [
    "PARTITIONED_NEEDS_SPARK",
    "SegmentArg",
    "Workspace",
    "count_tables",
    "export_tables",
    "open",
    "parse_as_of",
    "spark_session",
]


class Workspace:
    """A segengine workspace: contacts, events, saved segments and the engagement index."""

    def __init__(self, path: str | os.PathLike[str]):
        self.store = Store(path)
        #: segments, engines and as_of for every operation (segengine.session)
        self.session = Session(self.store)

    @property
    def path(self) -> Path:
        return self.store.root

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Workspace:
        Store.init(path)
        return cls(path)

    def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    # --- imports ---------------------------------------------------------------------

    def import_contacts(
        self,
        path: str | os.PathLike[str],
        *,
        types: str | Mapping[str, str] | None = None,
        strict: bool = False,
        rejects: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> ImportSummary:
        # imports (DuckDB, PyArrow) load with the first import, not with every command
        from .store.imports import import_contacts, parse_types_option

        parsed = parse_types_option(types) if isinstance(types, str) or types is None else (
            parse_types_option(",".join(f"{k}={v}" for k, v in types.items()))
        )
        if rejects:
            self.store.check_outside(rejects, "--rejects")
        summary = import_contacts(
            self.store, path, types=parsed, strict=strict,
            rejects_path=Path(rejects) if rejects else None, progress=progress,
        )
        self._after_write()
        return summary

    def import_events(
        self,
        path: str | os.PathLike[str],
        *,
        strict: bool = False,
        rejects: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> ImportSummary:
        from .store.imports import import_events

        if rejects:
            self.store.check_outside(rejects, "--rejects")
        summary = import_events(
            self.store, path, strict=strict,
            rejects_path=Path(rejects) if rejects else None, progress=progress,
        )
        self._after_write()
        return summary

    def reindex(self, *, progress: Progress | None = None) -> dict[str, Any]:
        """Rebuild the engagement index from scratch in one commit.

        Every commit keeps the index current on its own; this is for after an upgrade
        that extends the index (an older index stays usable, and is rebuilt by the next
        import, but without what the new version adds) or to recover from a damaged
        index file. Returns the index entry of the manifest and the seconds it took.
        """
        started = time.perf_counter()
        with self.store.transaction() as tx:
            tx.manifest.pop("index", None)
            snap = tx.commit(progress)
        self._after_write()
        return {**snap.manifest["index"], "seconds": round(time.perf_counter() - started, 3)}

    def _after_write(self) -> None:
        self.session.after_write()

    # --- segments --------------------------------------------------------------------

    def load_segment(self, arg: SegmentArg, snapshot: Snapshot | None = None) -> Segment:
        """A segment from a saved name, a definition file, a dict or a `Segment`."""
        return self.session.load_segment(arg, snapshot)

    def resolve(self, segment: Segment, snapshot: Snapshot | None = None) -> Group:
        """The segment's rule tree with every reference inlined (cycles are errors)."""
        return self.session.resolve(segment, snapshot)

    def engine(self, name: str = "auto", snapshot: Snapshot | None = None) -> Engine:
        """An engine over `snapshot` (default: the current state), cached while it is current."""
        return self.session.engine(name, snapshot)

    def count(
        self,
        *segments: SegmentArg,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
    ) -> dict[str, Any]:
        """Contacts matching any of `segments`: total, by status and sendable."""
        return self.session.count(segments, as_of=as_of, engine=engine)

    def contact_ids(
        self,
        *segments: SegmentArg,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
        snapshot: Snapshot | None = None,
    ):
        """Sorted contact ids (numpy int64) of the union of `segments`."""
        return self.session.contact_ids(segments, as_of=as_of, engine=engine, snapshot=snapshot)

    def members(
        self,
        *segments: SegmentArg,
        as_of: str | dt.date | None = None,
        active_only: bool = False,
        engine: str = "auto",
    ) -> pl.DataFrame:
        """The contact rows of the union of `segments`, ordered by email."""
        import polars as pl

        snap = self.snapshot()
        ids = self.contact_ids(*segments, as_of=as_of, engine=engine, snapshot=snap)
        frame = contacts_frame(snap).filter(pl.col("contact_id").is_in(pl.Series(ids).implode()))
        if active_only:
            frame = frame.filter(pl.col("status") == "active")
        return frame.sort("email").collect()

    def sql(self, segment: SegmentArg, *, dialect: str = "duckdb", as_of: str | dt.date | None = None) -> str:
        """One self-contained SELECT of the segment's contact_id values (docs/architecture.md: the tables)."""
        from .engines.sql import to_sql

        snap = self.snapshot()
        (root,) = self.session.roots([segment], snap)
        return to_sql(root, snap.schema, parse_as_of(as_of), dialect)

    def explain(
        self, segment: SegmentArg, *, as_of: str | dt.date | None = None, engine: str = "auto"
    ) -> dict[str, Any]:
        """The rule tree with how many contacts each rule and group matches on its own."""
        from .explain import explain

        day = parse_as_of(as_of)
        snap = self.snapshot()
        seg = self.load_segment(segment, snap)
        ev = self.engine(engine, snap)
        tree = explain(ev, seg.root, self.resolve(seg, snap), day)
        total = int(snap.manifest["counts"]["contacts"])
        return {"segment": seg.name, "as_of": day.isoformat(), "contacts": total, "tree": tree.as_dict(),
                "_tree": tree}

    # --- saved segments --------------------------------------------------------------

    def save_segment(self, source: SegmentArg) -> Segment:
        """Validate and save a definition; an existing name is replaced unless that makes a cycle."""
        return self.session.save_segment(source)

    def segments(self) -> dict[str, Segment]:
        """The saved segments by name, parsed against the current fields."""
        return self.session.saved_segments()

    def delete_segment(self, name: str) -> None:
        """Delete a saved segment that no other saved segment references."""
        self.session.delete_segment(name)

    # --- describing ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the workspace holds: contacts by status, events by type, fields, campaigns."""
        snap = self.snapshot()
        con = self.session.connection(snap)
        by_status = dict(con.execute("SELECT status, count(*) FROM contacts GROUP BY status").fetchall())
        by_type = dict(con.execute("SELECT type, count(*) FROM events GROUP BY type").fetchall())
        campaigns = con.execute(
            "SELECT campaign, min(timestamp) FILTER (WHERE type = 'sent') AS send_time, "
            "count(*) FILTER (WHERE type = 'sent') AS sent, count(*) FILTER (WHERE type = 'open') AS opens, "
            "count(*) FILTER (WHERE type = 'click') AS clicks FROM events GROUP BY campaign "
            "ORDER BY send_time DESC NULLS LAST, campaign DESC"
        ).fetchall()
        lists = con.execute(
            "SELECT l, count(*) FROM (SELECT unnest(lists) AS l FROM contacts) GROUP BY l ORDER BY l"
        ).fetchall()
        return {
            "workspace": str(self.path),
            "version": snap.version,
            "committed_at": snap.manifest.get("committed_at"),
            "contacts": {
                "total": sum(by_status.values()),
                "by_status": {s: int(by_status.get(s, 0)) for s in STATUSES},
            },
            "events": {"total": sum(by_type.values()), "by_type": {k: int(v) for k, v in sorted(by_type.items())}},
            "fields": [{"name": n, "type": t.value} for n, t in snap.schema.items()],
            "lists": {name: int(n) for name, n in lists},
            "campaigns": [
                {"campaign": c, "send_time": t.isoformat() if t else None, "sent": s, "opens": o, "clicks": k}
                for c, t, s, o, k in campaigns
            ],
            "segments": sorted(snap.segments),
            "index": snap.manifest.get("index"),
        }

    # --- export, unsubscribe, resubscribe, history ----------------------------------

    def export(
        self,
        *segments: SegmentArg,
        output: str | os.PathLike[str],
        format: str | None = None,  # noqa: A002 - the `--format` option's name
        columns: str | Iterable[str] | None = None,
        raw: bool = False,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
        partitioned: bool = False,
        progress: Progress | None = None,
        label_column: str | None = None,
    ):
        """Write the active contacts of the union of `segments` to `output`.

        Returns an `ExportResult` (``.as_dict()`` is ``{"rows": N, "path": ...}``). With
        `partitioned` (and ``engine="spark"``) `output` is a directory of part files that
        Spark writes in email order (docs/spark.md); ``.as_dict()`` adds ``"files"``.
        `label_column` adds a column holding, per row, the first of `segments` (in the
        order given) that the contact matches (docs/analytics.md).
        """
        from .export import export_contacts

        cols = columns if columns is None or isinstance(columns, str) else list(columns)
        return export_contacts(
            self.session, segments, output, fmt=format, columns=cols, raw=raw, as_of=as_of,
            engine=engine, partitioned=partitioned, progress=progress, label_column=label_column,
        )

    def unsubscribe(
        self,
        *segments: SegmentArg,
        emails: str | os.PathLike[str] | None = None,
        dry_run: bool = False,
        as_of: str | dt.date | None = None,
        report: str | os.PathLike[str] | None = None,
        engine: str = "auto",
        progress: Progress | None = None,
    ):
        """Unsubscribe the active contacts of `segments` or of an `emails` file.

        Returns a `SubscriptionResult` (``.as_dict()``: matched, changed, unknown).
        """
        from .unsubscribe import unsubscribe

        result = unsubscribe(
            self.session, segments=segments, emails=emails, dry_run=dry_run, as_of=as_of,
            report=report, engine=engine, progress=progress,
        )
        self._after_write()
        return result

    def resubscribe(
        self,
        emails: str | os.PathLike[str],
        *,
        reason: str,
        include_bounced: bool = False,
        dry_run: bool = False,
        report: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ):
        """Make the unsubscribed contacts of an `emails` file active again, for `reason`."""
        from .unsubscribe import resubscribe

        result = resubscribe(
            self.session, emails, reason=reason, include_bounced=include_bounced, dry_run=dry_run,
            report=report, progress=progress,
        )
        self._after_write()
        return result

    def history(self, email: str):
        """The contact's fields, status changes and events: a `ContactHistory`."""
        from .history import contact_history

        return contact_history(self.session, email)

    # --- sending -----------------------------------------------------------------------

    def send(
        self,
        campaign: str,
        *segments: SegmentArg,
        subject: str,
        html: str,
        from_addr: str,
        smtp: str,
        text: str | None = None,
        rate: float | None = None,
        connections: int = 4,
        unsubscribe_url: str | None = None,
        dry_run: bool = False,
        retry_uncertain: bool = False,
        as_of: str | dt.date | None = None,
        progress: Progress | None = None,
        **tuning: Any,
    ):
        """Send `campaign` to the active contacts of the union of `segments`.

        `html` and `text` are template texts (not paths). Returns a `SendSummary`
        (``.as_dict()`` is the ``--json`` document) or, with `dry_run`, a `Preview`.
        `tuning` sets the other `SendOptions` (retries, backoff, record_every, ...).
        """
        from .send import SendOptions, send_campaign

        options = SendOptions(
            subject=subject, html=html, from_addr=from_addr, smtp=smtp, text=text, rate=rate,
            connections=connections, unsubscribe_url=unsubscribe_url, dry_run=dry_run,
            retry_uncertain=retry_uncertain, as_of=as_of, **tuning,
        )
        result = send_campaign(self.session, campaign, segments, options, progress=progress)
        self._after_write()
        return result

    # --- sync jobs (docs/sync.md) -------------------------------------------------------

    def sync_create(
        self,
        job: str,
        *segments: str,
        to: str | os.PathLike[str],
        format: str | None = None,  # noqa: A002 - the `--format` option's name
        columns: str | Iterable[str] | None = None,
        raw: bool = False,
    ) -> dict[str, Any]:
        """Save sync job `job`: the active contacts of `segments` (saved names or definition
        files), exported to the directory `to` as changes since the previous run."""
        from .sync import create_job

        cols = columns if columns is None or isinstance(columns, str) else list(columns)
        result = create_job(self.session, job, list(segments), to, fmt=format, columns=cols, raw=raw)
        self._after_write()
        return result

    def sync_run(self, job: str, *, as_of: str | dt.date | None = None,
                 progress: Progress | None = None):
        """Run sync job `job`: a `SyncRunResult` (``.as_dict()`` is the ``--json`` document)."""
        from .sync import run_job

        result = run_job(self.session, job, as_of=as_of, progress=progress)
        self._after_write()
        return result

    def sync_jobs(self) -> list[dict[str, Any]]:
        """The sync jobs, by name: definition, last committed run and members."""
        from .sync import list_jobs

        return list_jobs(self.session)

    def sync_show(self, job: str) -> dict[str, Any]:
        """One sync job with the history of its latest runs."""
        from .sync import show_job

        return show_job(self.session, job)

    def sync_reset(self, job: str) -> dict[str, Any]:
        """Make the job's next run start from nothing (export every member again)."""
        from .sync import reset_job

        result = reset_job(self.session, job)
        self._after_write()
        return result

    def sync_delete(self, job: str) -> dict[str, Any]:
        """Delete the job; the files it wrote stay where they are."""
        from .sync import delete_job

        result = delete_job(self.session, job)
        self._after_write()
        return result


    # --- splits and priorities ---------------------------------------------------------

    def split(
        self,
        *segments: SegmentArg,
        groups: str | Mapping[str, Any] | Iterable[tuple[str, Any]],
        seed: str | None = None,
        save: str | None = None,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
    ) -> dict[str, Any]:
        """Cut the union of `segments` into groups by bucket number (docs/analytics.md).

        `groups` is ``"a=45,b=45,holdout=10"``, ``{"a": 45, ...}`` or ``[("a", 45), ...]``: consecutive bucket
        ranges in that order, percentages with at most two decimals summing to 100. The
        seed defaults to the segments' names joined with ``+``. `save` saves one segment
        per group, ``SAVE-NAME``. Returns the ``split --json`` document.
        """
        from .splits import split_audience

        if isinstance(groups, Mapping):
            groups = list(groups.items())
        elif not isinstance(groups, str):
            groups = list(groups)
        result = split_audience(self.session, segments, groups, seed=seed, save=save,
                                as_of=as_of, engine=engine)
        if save is not None:
            self._after_write()
        return result

    def priority(
        self, *segments: SegmentArg, as_of: str | dt.date | None = None, engine: str = "auto"
    ) -> dict[str, Any]:
        """`segments` in priority order, each contact counted for the first it matches:
        per segment what it gets (total, sendable) and loses to earlier ones (the
        ``count --priority --json`` document)."""
        from .splits import priority_counts

        return priority_counts(self.session, segments, as_of=as_of, engine=engine)
    # --- integrity ---------------------------------------------------------------------

    def verify(self) -> dict[str, Any]:
        """Check every committed file against the checksum its manifest recorded.

        Returns ``files`` (path and state: ok, damaged, missing, or unchecked when the
        manifest predates checksums), the count of each state and ``ok`` (nothing
        damaged or missing).
        """
        from .store.checksums import verify_files

        snap = self.store.snapshot()
        files = verify_files(snap.root, snap.manifest)
        counts = {state: sum(f.state == state for f in files)
                  for state in ("ok", "damaged", "missing", "unchecked")}
        return {"files": [f.as_dict() for f in files], **counts,
                "healthy": counts["damaged"] == 0 and counts["missing"] == 0}
    # --- analytics: overlap, trend, why ------------------------------------------------

    def overlap(
        self, *segments: SegmentArg, as_of: str | dt.date | None = None, engine: str = "auto"
    ) -> dict[str, Any]:
        """How two or more segments share contacts: the ``overlap --json`` document."""
        from .analytics import overlap

        return overlap(self.session, segments, as_of=as_of, engine=engine)

    def trend(
        self,
        *segments: SegmentArg,
        start: str | dt.date,
        end: str | dt.date,
        every: str = "day",
        engine: str = "auto",
    ) -> dict[str, Any]:
        """The union's size from `start` to `end` (each point over the data as it stood
        at the end of that day): the ``trend --json`` document."""
        from .analytics import trend

        return trend(self.session, segments, start=start, end=end, every=every, engine=engine)

    def trend_frame(
        self,
        *segments: SegmentArg,
        start: str | dt.date,
        end: str | dt.date,
        every: str = "day",
        engine: str = "auto",
    ) -> pl.DataFrame:
        """The trend's points as a frame: as_of (a date), total, sendable, joined, left."""
        import polars as pl

        points = self.trend(*segments, start=start, end=end, every=every, engine=engine)["points"]
        schema = {"as_of": pl.String, "total": pl.Int64, "sendable": pl.Int64,
                  "joined": pl.Int64, "left": pl.Int64}
        return pl.DataFrame(points, schema=schema).with_columns(pl.col("as_of").str.to_date())

    def why(
        self, email: str, segment: SegmentArg, *, as_of: str | dt.date | None = None,
        engine: str = "auto",
    ) -> dict[str, Any]:
        """Whether the contact `email` is in `segment`, rule by rule: the ``why --json`` document."""
        from .analytics import why

        return why(self.session, email, segment, as_of=as_of, engine=engine)


def contacts_frame(snap: Snapshot) -> pl.LazyFrame:
    """The contacts of a snapshot as a lazy frame (with `email_domain` derived)."""
    import polars as pl

    files = list(snap.files("contacts"))
    if not files:
        return pl.LazyFrame(schema={"contact_id": pl.Int64, "email": pl.String, "status": pl.String})
    return pl.scan_parquet(files)


def open(path: str | os.PathLike[str] | None = None) -> Workspace:  # noqa: A001 - the API's name
    """Open a workspace (default: $SEGENGINE_WORKSPACE, else the current directory)."""
    if path is None:
        path = os.environ.get("SEGENGINE_WORKSPACE") or "."
    return Workspace(path)


# --- data that was never imported (docs/sql.md) -------------------------------------


def count_tables(
    segments: SegmentArg | Iterable[SegmentArg],
    *,
    contacts: str | os.PathLike[str] | Iterable[str],
    events: str | os.PathLike[str] | Iterable[str] = (),
    engine: str = "spark",
    as_of: str | dt.date | None = None,
    workspace: str | os.PathLike[str] | None = None,
    spark_master: str | None = None,
) -> dict[str, Any]:
    """Count segments over Parquet that lives outside any workspace, like `Workspace.count`.

    `contacts` and `events` are Parquet files, folders or globs anywhere Spark reads
    (local, ``hdfs://``, ``s3a://``), laid out as in docs/spark.md; custom fields come
    from the contacts' Parquet schema. Segments are definition files or dicts, or saved
    names of `workspace` when one is given (its data is not used). Only the Spark engine
    reads data in place; import the data to use the others.
    """
    from .engines.spark import SparkEngine

    args = segments_in_place(segments, engine)
    day = parse_as_of(as_of)
    counter = SparkEngine.at(contacts, events, master=spark_master)
    try:
        by_status = counter.count(roots_in_place(args, counter.tables.schema, workspace), day)
    finally:
        counter.close()
    return count_result(by_status, day)


def export_tables(
    segments: SegmentArg | Iterable[SegmentArg],
    output: str | os.PathLike[str],
    *,
    contacts: str | os.PathLike[str] | Iterable[str],
    events: str | os.PathLike[str] | Iterable[str] = (),
    fmt: str | None = None,
    columns: str | Iterable[str] | None = None,
    raw: bool = False,
    as_of: str | dt.date | None = None,
    engine: str = "spark",
    workspace: str | os.PathLike[str] | None = None,
    spark_master: str | None = None,
    progress: Progress | None = None,
):
    """A partitioned export of Parquet never imported, read where it lives (docs/spark.md).

    Like `count_tables`: custom fields come from the contacts' Parquet schema; segments
    are definition files or dicts, or saved names of `workspace`. Returns an `ExportResult`.
    """
    from .export.partitioned import export_tables as run

    cols = columns if columns is None or isinstance(columns, str) else list(columns)
    return run(
        segments, output, contacts=contacts, events=events, fmt=fmt, columns=cols, raw=raw,
        as_of=as_of, engine=engine, workspace=workspace, spark_master=spark_master,
        progress=progress,
    )


def spark_session(master: str | None = None) -> Any:
    """The running SparkSession, or a new one on `master` ($SPARK_MASTER, else local[*]),
    which the spark engine then uses (`segengine.engines.spark.spark_session`)."""
    from .engines.spark import spark_session as start

    return start(master)
