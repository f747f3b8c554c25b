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
import difflib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from .definition.nodes import Group, Segment, today_utc
from .definition.parse import load_definition, parse_definition
from .definition.rewrite import find_cycle, inline_references, references, to_dict
from .engines import ENGINES, get_engine
from .engines.base import Engine
from .errors import DefinitionError, InputError, Problem, SegmentNotFound
from .fields import STATUSES, Schema
from .progress import Progress
from .store.imports import ImportSummary, import_contacts, import_events, parse_types_option
from .store.workspace import Snapshot, Store

SegmentArg = str | os.PathLike[str] | Mapping[str, Any] | Segment
DEFINITION_SUFFIXES = (".json", ".yaml", ".yml")


def parse_as_of(value: str | dt.date | None) -> dt.date:
    """`as_of` as a date: default today (UTC); text must be YYYY-MM-DD."""
    if value is None:
        return today_utc()
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"--as-of: {value!r} is not a date: use YYYY-MM-DD") from None


#: How many parsed definition files a Workspace keeps.
FILE_CACHE_SIZE = 64


class Workspace:
    """A segengine workspace: contacts, events, saved segments and the engagement index."""

    def __init__(self, path: str | os.PathLike[str]):
        self.store = Store(path)
        self._engines: dict[tuple[str, int], Engine] = {}
        #: parsed definition files by (path, mtime, size, schema): reading YAML costs
        #: milliseconds, more than an indexed count, in a process that counts repeatedly
        self._files: dict[tuple[Any, ...], Segment] = {}

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
        parsed = parse_types_option(types) if isinstance(types, str) or types is None else (
            parse_types_option(",".join(f"{k}={v}" for k, v in types.items()))
        )
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
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()

    # --- segments --------------------------------------------------------------------

    def load_segment(self, arg: SegmentArg, snapshot: Snapshot | None = None) -> Segment:
        """A segment from a saved name, a definition file, a dict or a `Segment`."""
        snap = snapshot or self.snapshot()
        if isinstance(arg, Segment):
            return arg
        if isinstance(arg, Mapping):
            return parse_definition(dict(arg), snap.schema)
        text = os.fspath(arg)
        if text in snap.segments:
            return parse_definition(snap.segments[text], snap.schema)
        path = Path(text)
        if path.suffix.lower() in DEFINITION_SUFFIXES or path.is_file():
            if not path.is_file():
                raise SegmentNotFound(f"segment file {text} does not exist")
            return self._load_file(path, text, snap)
        hint = difflib.get_close_matches(text, list(snap.segments), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SegmentNotFound(
            f"no saved segment {text!r}{did_you_mean}: give a saved name "
            "(see `segengine segment list`) or a .json/.yaml file"
        )

    def _load_file(self, path: Path, origin: str, snap: Snapshot) -> Segment:
        """A definition file, parsed again only when it (or the schema) changed."""
        stat = path.stat()
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size, stat.st_ino, origin, snap.schema)
        segment = self._files.get(key)
        if segment is None:
            segment = load_definition(path, snap.schema, origin=origin)
            if len(self._files) >= FILE_CACHE_SIZE:
                del self._files[next(iter(self._files))]
            self._files[key] = segment
        return segment

    def resolve(self, segment: Segment, snapshot: Snapshot | None = None) -> Group:
        """The segment's rule tree with every reference inlined (cycles are errors)."""
        snap = snapshot or self.snapshot()

        def lookup(name: str) -> Segment:
            if name == segment.name and name not in snap.segments:
                return segment
            return parse_definition(snap.segments[name], snap.schema)

        return inline_references(segment.root, lookup, name=segment.name)

    def _roots(self, segments: Iterable[SegmentArg], snap: Snapshot) -> list[Group]:
        loaded = [self.load_segment(s, snap) for s in segments]
        if not loaded:
            raise InputError("name at least one segment")
        return [self.resolve(s, snap) for s in loaded]

    def engine(self, name: str = "auto", snapshot: Snapshot | None = None) -> Engine:
        """An engine over `snapshot` (default: the current state), cached while it is current."""
        snap = snapshot or self.snapshot()
        key = (name, snap.version)
        if key not in self._engines:
            if name not in ENGINES:
                hint = difflib.get_close_matches(name, list(ENGINES), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise InputError(f"unknown engine {name!r}{extra}: use one of {', '.join(ENGINES)}")
            stale = [k for k in self._engines if k[1] != snap.version]
            for k in stale:
                self._engines.pop(k).close()
            self._engines[key] = get_engine(name, snap)
        return self._engines[key]

    def count(
        self,
        *segments: SegmentArg,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
    ) -> dict[str, Any]:
        """Contacts matching any of `segments`: total, by status and sendable."""
        day = parse_as_of(as_of)
        snap = self.snapshot()
        roots = self._roots(segments, snap)
        return count_result(self.engine(engine, snap).count(roots, day), day)

    def contact_ids(
        self,
        *segments: SegmentArg,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
        snapshot: Snapshot | None = None,
    ):
        """Sorted contact ids (numpy int64) of the union of `segments`."""
        snap = snapshot or self.snapshot()
        return self.engine(engine, snap).contact_ids(self._roots(segments, snap), parse_as_of(as_of))

    def members(
        self,
        *segments: SegmentArg,
        as_of: str | dt.date | None = None,
        active_only: bool = False,
        engine: str = "auto",
    ) -> pl.DataFrame:
        """The contact rows of the union of `segments`, ordered by email."""
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
        (root,) = self._roots([segment], snap)
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
        with self.store.transaction() as tx:
            snap = tx.base
            if isinstance(source, Mapping):
                segment = parse_definition(dict(source), snap.schema)
            elif isinstance(source, Segment):
                segment = source
            else:
                segment = load_definition(Path(source), snap.schema, origin=os.fspath(source))
            graph = {
                name: references(parse_definition(doc, snap.schema).root)
                for name, doc in snap.segments.items()
            }
            graph[segment.name] = references(segment.root)
            missing = sorted(r for r in graph[segment.name] if r not in graph)
            if missing:
                raise SegmentNotFound(
                    [Problem("rules", f"segment {segment.name!r} references {m!r}, which is not saved: "
                             f"save {m!r} first") for m in missing]
                )
            cycle = find_cycle(segment.name, graph)
            if cycle:
                from .errors import ReferenceCycle

                raise ReferenceCycle(
                    f"saving {segment.name!r} would make a reference cycle: {' -> '.join(cycle)}"
                )
            tx.manifest["segments"][segment.name] = to_dict(segment)
            tx.commit()
        self._after_write()
        return segment

    def segments(self) -> dict[str, Segment]:
        snap = self.snapshot()
        return {name: parse_definition(doc, snap.schema) for name, doc in sorted(snap.segments.items())}

    def delete_segment(self, name: str) -> None:
        with self.store.transaction() as tx:
            saved = tx.base.segments
            if name not in saved:
                raise SegmentNotFound(f"no saved segment {name!r}")
            users = sorted(
                other for other, doc in saved.items()
                if other != name and name in references(parse_definition(doc, tx.base.schema).root)
            )
            if users:
                raise DefinitionError(
                    f"segment {name!r} is referenced by {', '.join(users)}: "
                    "change or delete those segments first"
                )
            del tx.manifest["segments"][name]
            tx.commit()
        self._after_write()

    # --- describing ------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What the workspace holds: contacts by status, events by type, fields, campaigns."""
        from .engines.duckdb import connect, create_views

        snap = self.snapshot()
        con = connect()
        create_views(con, snap.tables)
        try:
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
        finally:
            con.close()
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
    ):
        """Write the active contacts of the union of `segments` to `output`.

        Returns an `ExportResult` (``.as_dict()`` is ``{"rows": N, "path": ...}``). With
        `partitioned` (and ``engine="spark"``) `output` is a directory of part files that
        Spark writes in email order (docs/spark.md); ``.as_dict()`` adds ``"files"``.
        """
        from .export import export_contacts

        cols = columns if columns is None or isinstance(columns, str) else list(columns)
        return export_contacts(
            self, segments, output, fmt=format, columns=cols, raw=raw, as_of=as_of,
            engine=engine, partitioned=partitioned, progress=progress,
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
            self, segments=segments, emails=emails, dry_run=dry_run, as_of=as_of,
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
            self, emails, reason=reason, include_bounced=include_bounced, dry_run=dry_run,
            report=report, progress=progress,
        )
        self._after_write()
        return result

    def history(self, email: str):
        """The contact's fields, status changes and events: a `ContactHistory`."""
        from .history import contact_history

        return contact_history(self, email)

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
        result = send_campaign(self, campaign, segments, options, progress=progress)
        self._after_write()
        return result


def count_result(by_status: Mapping[str, int], as_of: dt.date) -> dict[str, Any]:
    """The document `count --json` prints: every status, zeros included, and `sendable`."""
    counts = {s: int(by_status.get(s, 0)) for s in STATUSES}
    return {
        "total": sum(counts.values()),
        "by_status": counts,
        "sendable": counts["active"],
        "as_of": as_of.isoformat(),
    }


def contacts_frame(snap: Snapshot) -> pl.LazyFrame:
    """The contacts of a snapshot as a lazy frame (with `email_domain` derived)."""
    files = list(snap.files("contacts"))
    if not files:
        return pl.LazyFrame(schema={"contact_id": pl.Int64, "email": pl.String, "status": pl.String})
    return pl.scan_parquet(files)


def open(path: str | os.PathLike[str] | None = None) -> Workspace:  # noqa: A001 - the API's name
    """Open a workspace (default: $SEGENGINE_WORKSPACE, else the current directory)."""
    if path is None:
        path = os.environ.get("SEGENGINE_WORKSPACE") or "."
    return Workspace(path)


# --- data that was never imported (SPEC section 9) -------------------------------------


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


def segments_in_place(
    segments: SegmentArg | Iterable[SegmentArg], engine: str
) -> list[SegmentArg]:
    """The segments of a count or export over data never imported, as a list; only the
    Spark engine reads data in place."""
    if engine != "spark":
        raise InputError(
            f"engine {engine!r} cannot read data in place: use engine='spark' (--engine spark), "
            "or import the data into a workspace"
        )
    single = isinstance(segments, (str, os.PathLike, Mapping, Segment))
    args = [segments] if single else list(segments)
    if not args:
        raise InputError("name at least one segment")
    return args


def roots_in_place(
    args: Iterable[SegmentArg], schema: Schema, workspace: str | os.PathLike[str] | None = None
) -> list[Group]:
    """The resolved trees of segments over data never imported, whose fields are `schema`.

    Segments are definition files, dicts or `Segment`s, or saved names of `workspace`
    when one is given (only its definitions are used, not its data).
    """
    saved = Workspace(workspace).snapshot().segments if workspace is not None else {}

    def load(arg: SegmentArg) -> Segment:
        if isinstance(arg, Segment):
            return arg
        if isinstance(arg, Mapping):
            return parse_definition(dict(arg), schema)
        text = os.fspath(arg)
        if text in saved:
            return parse_definition(saved[text], schema)
        if not Path(text).is_file():
            where = "a saved segment of the workspace or " if workspace is not None else ""
            raise SegmentNotFound(f"segment {text!r} is not {where}a definition file")
        return load_definition(Path(text), schema, origin=text)

    def lookup(name: str) -> Segment:  # a KeyError becomes a SegmentNotFound naming both
        return parse_definition(saved[name], schema)

    return [inline_references(seg.root, lookup, name=seg.name) for seg in map(load, args)]
