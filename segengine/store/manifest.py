"""The committed state of a workspace, as `manifest.json` holds it, and the tables it names.

The manifest stays a JSON document (other tools read it, docs/architecture.md), so its
typed form is a `TypedDict`: the same dict at run time, with every key and its type
declared once here for the writers and readers of the store.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from ..fields import Schema
from .checksums import check


class Covers(TypedDict):
    """The data files an engagement index was built from (workspace-relative)."""

    contacts: list[str]
    events: list[str]


class IndexEntry(TypedDict):
    """Where the engagement index of a version lives, its format, and what it covers."""

    path: str
    format: int
    covers: Covers


class Counts(TypedDict):
    contacts: int
    events: int


class SyncMembers(TypedDict):
    """The members of a sync job's last committed run: a serialised Roaring bitmap of
    contact ids (ids are never reused or changed, so the set is exact across imports)."""

    path: str  # workspace-relative, under ``syncs/``
    kind: str  # "roaring32" (every id below 2**32) or "roaring64"
    count: int


class SyncRunEntry(TypedDict):
    """One committed run of a sync job."""

    run: int
    committed_at: str
    as_of: str
    #: the run started from nothing (the first run, or the first after a reset)
    full: bool
    added: int
    removed: int
    members: int
    files: list[str]


class SyncJob(TypedDict):
    """A sync job (segengine/sync/): what it exports, where, and its committed state."""

    #: saved segment names, or absolute paths of definition files
    segments: list[str]
    to: str
    format: str
    columns: list[str]
    raw: bool
    created_at: str
    #: the last committed run number (0: none yet)
    run: int
    #: None: the next run starts from nothing
    members: SyncMembers | None
    #: the latest committed runs, oldest first
    runs: list[SyncRunEntry]


class Manifest(TypedDict):
    """``manifest.json``: one committed version of the workspace."""

    version: int
    committed_at: str | None
    #: workspace-relative Parquet files of each table
    contacts: list[str]
    events: list[str]
    #: the audit trail of status changes (store/status.py); absent until the first one
    status_log: NotRequired[list[str]]
    #: custom fields as [name, type] pairs in creation order
    fields: list[list[str]]
    #: saved segments by name, as their definition documents
    segments: dict[str, dict]
    next_contact_id: int
    index: IndexEntry | None
    #: sync jobs by name (segengine/sync/); absent until the first one
    syncs: NotRequired[dict[str, SyncJob]]
    counts: Counts
    #: workspace-relative path -> ``xxh3_128:<hex>`` of every file referenced above
    #: (store/checksums.py); absent in manifests written before checksums existed
    checksums: NotRequired[dict[str, str]]
    #: workspace-relative path -> ``<block size>:<hex>...``, the XXH3-64 hashes (16 hex
    #: digits each) of the blocks of every index file larger than one block, which
    #: readers check in parts (store/checksums.py); absent before block hashes existed
    blocks: NotRequired[dict[str, str]]


def empty_manifest() -> Manifest:
    return {
        "version": 0,
        "committed_at": None,
        "contacts": [],
        "events": [],
        "fields": [],
        "segments": {},
        "next_contact_id": 1,
        "index": None,
        "counts": {"contacts": 0, "events": 0},
    }


def covers_of(manifest: Manifest) -> Covers:
    """The files an index of `manifest` must have been built from."""
    return {"contacts": list(manifest["contacts"]), "events": list(manifest["events"])}


def schema_of(manifest: Manifest) -> Schema:
    return Schema.from_pairs(tuple(pair) for pair in manifest["fields"])


class Tables:
    """Where a consistent snapshot of the data lives: Parquet files and the schema.

    The file lists are checked against the manifest's checksums when an engine first
    asks for them (`checksums.check`: a hash the first time, a ``stat`` after), not when
    the snapshot is opened: a count the engagement index answers reads no Parquet, so
    it hashes none.
    """

    __slots__ = ("_contacts", "_events", "schema", "version")

    def __init__(self, contacts: tuple[str, ...], events: tuple[str, ...],
                 schema: Schema | None = None, version: int = 0):
        self._contacts = tuple(contacts)
        self._events = tuple(events)
        self.schema = Schema() if schema is None else schema
        #: identifies the snapshot (the workspace version); caches key on it
        self.version = version

    @property
    def contacts(self) -> tuple[str, ...]:
        return _checked(self._contacts)

    @property
    def events(self) -> tuple[str, ...]:
        return _checked(self._events)

    def _key(self) -> tuple:
        return (self._contacts, self._events, self.schema, self.version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tables) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Tables(contacts={self._contacts!r}, events={self._events!r}, "
                f"schema={self.schema!r}, version={self.version!r})")


def _checked(paths: tuple[str, ...]) -> tuple[str, ...]:
    for path in paths:
        check(path)
    return paths
