"""The session: what every operation on segments needs, below the operations themselves.

A session turns what a user names (a saved segment, a definition file, a dict, a
`Segment`) into resolved rule trees, parses ``as_of``, keeps one engine per snapshot
(closed when a write makes it stale) and answers the two questions every operation
asks first: which contacts (`Session.contact_ids`) and how many (`Session.count`).
It also lends the operations a DuckDB connection over a snapshot, with the views of
the contract, under the store's connection policy (`segengine.store.duck`).

Layers call downwards only (docs/architecture.md)::

    cli -> api (Workspace) -> operations (export, unsubscribe, history, send)
        -> session -> definition, engines -> store

Data that was never imported (docs/sql.md) has no workspace and so no session:
`segments_in_place` and `roots_in_place` load its segments against the schema read
from its Parquet files, by the same rules.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .definition.nodes import Group, Segment, today_utc
from .definition.parse import load_definition, parse_definition
from .definition.rewrite import find_cycle, inline_references, references, to_dict
from .engines import ENGINES, get_engine
from .engines.base import Engine
from .errors import DefinitionError, InputError, Problem, ReferenceCycle, SegmentNotFound
from .fields import STATUSES, Schema
from .store.workspace import Snapshot, Store

if TYPE_CHECKING:
    import duckdb
    import numpy as np

#: What names a segment: a saved name, a definition file, a definition dict or a `Segment`.
SegmentArg = str | os.PathLike[str] | Mapping[str, Any] | Segment
DEFINITION_SUFFIXES = (".json", ".yaml", ".yml")
#: How many parsed definition files a session keeps.
FILE_CACHE_SIZE = 64


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


def data_key(snapshot: Snapshot) -> tuple[Any, ...]:
    """What an engine over `snapshot` reads: its data files, fields and index.

    Engines are cached by this, not by the version: saving a segment commits a new
    version with the same data, and must not make a server reload a 10M-contact index.
    """
    m = snapshot.manifest
    index = m["index"]
    return (tuple(m["contacts"]), tuple(m["events"]), tuple(map(tuple, m["fields"])),
            (index["path"], index["format"]) if index else None)


def count_result(by_status: Mapping[str, int], as_of: dt.date) -> dict[str, Any]:
    """The document `count --json` prints: every status, zeros included, and `sendable`."""
    counts = {s: int(by_status.get(s, 0)) for s in STATUSES}
    return {
        "total": sum(counts.values()),
        "by_status": counts,
        "sendable": counts["active"],
        "as_of": as_of.isoformat(),
    }


class Session:
    """Segments resolved, engines cached and `as_of` parsed over one workspace's store."""

    def __init__(self, store: Store):
        self.store = store
        self._engines: dict[tuple[str, tuple[Any, ...]], Engine] = {}
        #: per engine name, the last one a write made stale: the next takes over what
        #: it read that still holds (the bitmaps of an index an import only extended)
        self._replaced: dict[str, Engine] = {}
        #: engines are made and replaced one thread at a time (a server evaluates in several)
        self._engines_lock = threading.RLock()
        #: close an engine as soon as it is stale; a server, whose other threads may still be
        #: evaluating with it, sets this False and lets the last reference close it
        self.close_stale = True
        #: parsed definition files by (path, mtime, size, schema): reading YAML costs
        #: milliseconds, more than an indexed count, in a process that counts repeatedly
        self._files: dict[tuple[Any, ...], Segment] = {}

    def snapshot(self) -> Snapshot:
        return self.store.snapshot()

    def after_write(self) -> None:
        """Close the engines whose data a write replaced; a write that touched no data
        (a saved segment, a job's state) keeps them warm."""
        current = data_key(self.snapshot())
        with self._engines_lock:
            for key in [k for k in self._engines if k[1] != current]:
                self._drop(key)

    def _drop(self, key: tuple[str, tuple[Any, ...]]) -> None:
        engine = self._engines.pop(key)
        self._replaced[key[0]] = engine
        if self.close_stale:
            engine.close()

    # --- segments ----------------------------------------------------------------------

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
        # os.path.isfile answers False for a name the OS cannot take (too long, a NUL)
        if path.suffix.lower() in DEFINITION_SUFFIXES or os.path.isfile(text):
            if not os.path.isfile(text):
                raise SegmentNotFound(f"segment file {text} does not exist")
            return self._load_file(path, text, snap.schema)
        hint = difflib.get_close_matches(text, list(snap.segments), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise SegmentNotFound(
            f"no saved segment {text!r}{did_you_mean}: give a saved name "
            "(see `segengine segment list`) or a .json/.yaml file"
        )

    def _load_file(self, path: Path, origin: str, schema: Schema) -> Segment:
        """A definition file, parsed again only when it (or the schema) changed."""
        stat = path.stat()
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size, stat.st_ino, origin, schema)
        segment = self._files.get(key)
        if segment is None:
            segment = load_definition(path, schema, origin=origin)
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

    def roots(self, segments: Iterable[SegmentArg], snapshot: Snapshot) -> list[Group]:
        """The resolved trees of `segments` (at least one) in `snapshot`."""
        loaded = [self.load_segment(s, snapshot) for s in segments]
        if not loaded:
            raise InputError("name at least one segment")
        return [self.resolve(s, snapshot) for s in loaded]

    # --- saved segments ----------------------------------------------------------------

    def save_segment(self, source: SegmentArg) -> Segment:
        """Validate and save a definition; an existing name is replaced unless that makes a cycle."""
        return self.save_segments([source])[0]

    def save_segments(self, sources: Iterable[SegmentArg]) -> list[Segment]:
        """`save_segment` of several definitions in one commit: all are saved, or none."""
        with self.store.transaction() as tx:
            snap = tx.base
            segments = [self._definition(source, snap) for source in sources]
            graph = {
                name: references(parse_definition(doc, snap.schema).root)
                for name, doc in snap.segments.items()
            }
            for segment in segments:
                graph[segment.name] = references(segment.root)
            for segment in segments:
                missing = sorted(r for r in graph[segment.name] if r not in graph)
                if missing:
                    raise SegmentNotFound(
                        [Problem("rules", f"segment {segment.name!r} references {m!r}, which is not saved: "
                                 f"save {m!r} first") for m in missing]
                    )
                cycle = find_cycle(segment.name, graph)
                if cycle:
                    raise ReferenceCycle(
                        f"saving {segment.name!r} would make a reference cycle: {' -> '.join(cycle)}"
                    )
            for segment in segments:
                tx.manifest["segments"][segment.name] = to_dict(segment)
            tx.commit()
        self.after_write()
        return segments

    @staticmethod
    def _definition(source: SegmentArg, snap: Snapshot) -> Segment:
        if isinstance(source, Mapping):
            return parse_definition(dict(source), snap.schema)
        if isinstance(source, Segment):
            return source
        return load_definition(Path(source), snap.schema, origin=os.fspath(source))

    def saved_segments(self) -> dict[str, Segment]:
        """The saved segments by name, parsed against the current fields."""
        snap = self.snapshot()
        return {name: parse_definition(doc, snap.schema) for name, doc in sorted(snap.segments.items())}

    def delete_segment(self, name: str) -> None:
        """Delete a saved segment that no other saved segment references."""
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
        self.after_write()

    # --- engines -----------------------------------------------------------------------

    def engine(self, name: str = "auto", snapshot: Snapshot | None = None) -> Engine:
        """An engine over `snapshot` (default: the current state), cached while it is current."""
        snap = snapshot or self.snapshot()
        key = (name, data_key(snap))
        engine = self._engines.get(key)
        if engine is not None:
            return engine
        if name not in ENGINES:
            hint = difflib.get_close_matches(name, list(ENGINES), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise InputError(f"unknown engine {name!r}{extra}: use one of {', '.join(ENGINES)}")
        with self._engines_lock:
            if key not in self._engines:
                for stale in [k for k in self._engines if k[1] != key[1]]:
                    self._drop(stale)
                self._engines[key] = get_engine(name, snap)
                replaced = self._replaced.pop(name, None)
                if replaced is not None:
                    self._engines[key].take_over(replaced)
            return self._engines[key]

    def connection(self, snapshot: Snapshot) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection whose ``contacts`` and ``events`` views show `snapshot`,
        typed as the contract says: the (cached) duckdb engine of the snapshot lends it,
        whichever engine matched the contacts."""
        return self.engine("duckdb", snapshot).connection

    def contact_ids(
        self,
        segments: Iterable[SegmentArg],
        *,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
        snapshot: Snapshot | None = None,
    ) -> np.ndarray:
        """Sorted contact ids (numpy int64) of the union of `segments`."""
        snap = snapshot or self.snapshot()
        return self.engine(engine, snap).contact_ids(self.roots(segments, snap), parse_as_of(as_of))

    def count(
        self,
        segments: Iterable[SegmentArg],
        *,
        as_of: str | dt.date | None = None,
        engine: str = "auto",
    ) -> dict[str, Any]:
        """Contacts matching any of `segments`: total, by status and sendable."""
        day = parse_as_of(as_of)
        snap = self.snapshot()
        roots = self.roots(segments, snap)
        return count_result(self.engine(engine, snap).count(roots, day), day)

    # --- several segments, each by its name --------------------------------------------

    def named_roots(
        self, segments: Iterable[SegmentArg], snapshot: Snapshot
    ) -> list[tuple[Segment, Group]]:
        """Each of `segments` (at least one) with its resolved tree, in the order given."""
        loaded = [self.load_segment(s, snapshot) for s in segments]
        if not loaded:
            raise InputError("name at least one segment")
        return [(s, self.resolve(s, snapshot)) for s in loaded]


# --- data that was never imported (docs/sql.md) -------------------------------------


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
    saved = Store(workspace).snapshot().segments if workspace is not None else {}

    def load(arg: SegmentArg) -> Segment:
        if isinstance(arg, Segment):
            return arg
        if isinstance(arg, Mapping):
            return parse_definition(dict(arg), schema)
        text = os.fspath(arg)
        if text in saved:
            return parse_definition(saved[text], schema)
        if not os.path.isfile(text):
            where = "a saved segment of the workspace or " if workspace is not None else ""
            raise SegmentNotFound(f"segment {text!r} is not {where}a definition file")
        return load_definition(Path(text), schema, origin=text)

    def lookup(name: str) -> Segment:  # a KeyError becomes a SegmentNotFound naming both
        return parse_definition(saved[name], schema)

    return [inline_references(seg.root, lookup, name=seg.name) for seg in map(load, args)]
