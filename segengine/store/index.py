"""The engagement index: per-contact aggregates, bitmaps and a compact event store.

The index answers segment rules in milliseconds where a scan of the raw events takes
seconds. It is a directory under ``index/`` that one manifest references::

    manifest["index"] = {"path": "index/index-v000007-...", "format": 4,
                         "covers": {"contacts": [...], "events": [...]}}

It is never stale: it is built inside the transaction that changes the data it covers
(`refresh_index`, called by `Transaction.commit` before the new files are made durable),
and readers refuse it unless its ``covers`` equal the snapshot's files exactly
(`load_index`). docs/index.md explains the layout and the alternatives we rejected.

Rows: contact *rows* are positions in the contacts sorted by ``contact_id`` (for a
workspace, ``row = contact_id - 1``). Bitmaps and arrays are indexed by row. Contact ids
are only ever appended, so rows of an older index stay valid when contacts are added;
anything else (a contact removed, an id inserted) rebuilds the event part from scratch.

Directory layout (every file immutable; files an update does not change are
hard-linked from the previous index directory, so an update writes only what changed)::

    meta.json                  covers, sizes, dictionaries (campaigns, send times), files
    contacts/ids.npy           int64 contact ids, sorted (row -> contact_id)
    contacts/status.npy        uint8 status codes (STATUSES order)
    contacts/f.<i>.*           one field: codes + lower-cased dictionary, values, days, ...
    contacts/bitmaps-*.bin     status bitmaps, one bitmap per lower-cased list name
    aggregates/*.npy           count, first day, last day per (event type, row); the days
                               of the RECENT latest events per (event type, row): a base
                               and a delta of the rows changed since (aggregates.py)
    bitmaps-*.bin              roaring bitmaps per (type), (type, campaign), (type, day),
                               (click URL)
    urls-*.arrow               lower-cased click URL dictionary
    events/<segment>.*.bin     the event store, segments of up to SEGMENT_ROWS events of
                               one import: per type the rows (uint32), days (int32),
                               campaigns (int32), urls (int32), sorted by day so that a
                               window is a slice found by binary search
"""

from __future__ import annotations

import array
import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyroaring import BitMap

from ..errors import EngineError
from ..fields import EMAIL_DOMAIN_PATTERN, EVENT_TYPES, STATUSES, FieldType, Schema
from ..progress import NullProgress
from .aggregates import NO_FIRST, NO_LAST, RECENT, Aggregates, Values
from .arrays import link_or_copy, load, load_strings, save, save_strings

if TYPE_CHECKING:
    from ..progress import Progress, Task
    from .workspace import Snapshot, Transaction

#: 2: event-store segments sorted by day per type, per-URL click bitmaps.
#: 3: aggregates/recent.npy (format 2 was committed for a while without it).
#: 4: aggregates as a base and a delta (`aggregates.py`); a format-3 index reads as a
#: base without a delta, so both are read and extended (older code refuses format 4).
FORMAT = 4
READABLE_FORMATS = (3, 4)
#: The contact part's layout within FORMAT; an older contact part is rebuilt at the next
#: commit rather than carried over (2: per-value bitmaps of text fields).
CONTACTS_VERSION = 2
META = "meta.json"
DAY_US = 86_400_000_000
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
#: Events aggregated and bitmapped together: bounds memory whatever the event count.
BATCH_ROWS = 4_000_000
#: Events buffered before they are sorted by day and written as one event-store segment:
#: bounds the build's memory (~16 bytes an event) while keeping few segments to search.
SEGMENT_ROWS = 32_000_000
TYPE_CODES = {t: i for i, t in enumerate(EVENT_TYPES)}
CLICK = TYPE_CODES["click"]
SENT = TYPE_CODES["sent"]
#: The event store's columns per type and their dtypes (``url`` for clicks only).
STORE_COLUMNS = {"rows": np.uint32, "day": np.int32, "campaign": np.int32, "url": np.int32}


class IndexUnavailable(EngineError):
    """The snapshot has no engagement index covering exactly its files."""


def day_number(day: dt.date) -> int:
    """Days since 1970-01-01 (the index's day unit)."""
    return day.toordinal() - EPOCH_ORDINAL


def covers_of(manifest: dict[str, Any]) -> dict[str, list[str]]:
    return {"contacts": list(manifest["contacts"]), "events": list(manifest["events"])}


# --- small helpers ---------------------------------------------------------------


def to_bitmap(rows: np.ndarray) -> BitMap:
    """A bitmap of sorted uint32 rows (array('I') is ~6x faster to ingest than numpy)."""
    return BitMap(array.array("I", np.ascontiguousarray(rows, dtype=np.uint32).tobytes()))


def bitmap_rows(bitmap: BitMap) -> np.ndarray:
    return np.frombuffer(bitmap.to_array(), dtype=np.uint32)


def flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (table columns and some kernels give chunked ones)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def python_lower(values: pa.Array) -> pa.Array:
    """Lower-case text exactly as Python's ``str.lower`` (SPEC section 4).

    Arrow's ``utf8_lower`` agrees with Python on ASCII; only the non-ASCII values are
    lower-cased in Python (İ and the final sigma differ), one call per distinct value.
    """
    values = flat(values).cast(pa.string())
    lowered = pc.utf8_lower(values)
    non_ascii = pc.invert(pc.fill_null(pc.string_is_ascii(values), True))
    if not pc.any(non_ascii).as_py():
        return lowered
    exact = [None if v is None else v.lower() for v in values.filter(non_ascii).to_pylist()]
    return pc.replace_with_mask(lowered, non_ascii, pa.array(exact, pa.string()))


def timestamp_micros(column: pa.Array) -> pa.Array:
    """Timestamps (any unit, any zone) as int64 UTC microseconds; dates at midnight."""
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("us"))
    column = column.cast(pa.timestamp("us", tz=column.type.tz))
    return column.cast(pa.int64())


def days_of(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTC day numbers int32, present mask) of a date or timestamp column."""
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    if pa.types.is_date32(column.type):
        days = column.view(pa.int32()).to_numpy(zero_copy_only=False)
    else:
        micros = timestamp_micros(column).to_numpy(zero_copy_only=False)
        days = np.floor_divide(micros, DAY_US)
    days = np.where(present, days, 0).astype(np.int32)
    return days, present


# --- bitmap families ---------------------------------------------------------------


@dataclass
class BitmapStore:
    """Named bitmaps serialized into layer files; ``entries`` maps name -> (file, offset, size).

    An update writes a new layer holding only the bitmaps it changed and points their
    names at it; the older layers stay (hard-linked) for the names it did not touch.
    """

    directory: Path
    entries: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    _maps: dict[str, Any] = field(default_factory=dict)
    _cache: dict[str, BitMap] = field(default_factory=dict)

    def get(self, name: str) -> BitMap:
        """The named bitmap (empty when absent); callers must not modify it."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        entry = self.entries.get(name)
        if entry is None:
            return BitMap()
        file, offset, size = entry
        data = self._maps.get(file)
        if data is None:
            data = self._maps[file] = np.memmap(self.directory / file, dtype=np.uint8, mode="r")
        bitmap = BitMap.deserialize(data[offset : offset + size].tobytes())
        self._cache[name] = bitmap
        return bitmap

    def names(self, prefix: str) -> Iterator[str]:
        return (name for name in self.entries if name.startswith(prefix))

    def write_layer(self, bitmaps: dict[str, BitMap]) -> str | None:
        """Write `bitmaps` as one new layer file; returns its name (None when empty)."""
        if not bitmaps:
            return None
        name = f"bitmaps-{uuid.uuid4().hex[:12]}.bin"
        offset = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / name, "wb") as f:
            for key, bitmap in bitmaps.items():
                bitmap.run_optimize()
                data = bitmap.serialize()
                f.write(data)
                self.entries[key] = (name, offset, len(data))
                offset += len(data)
        return name

    def layers(self) -> set[str]:
        return {file for file, _, _ in self.entries.values()}

    def to_json(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.entries.items()}

    @classmethod
    def from_json(cls, directory: Path, entries: dict[str, list]) -> BitmapStore:
        return cls(directory, {k: (v[0], int(v[1]), int(v[2])) for k, v in entries.items()})


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. np.unique hashes in numpy 2.x, which is ~15x slower here."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


def runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, how often each occurs) of a sorted array, without hashing."""
    if len(sorted_values) == 0:
        return sorted_values, np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    return sorted_values[starts], np.diff(np.append(starts, len(sorted_values)))


def day_order(days: np.ndarray) -> np.ndarray:
    """The stable order that sorts `days`, as a sort of packed (day, position) keys.

    np.argsort is ~8x slower than np.sort on int64 (SIMD); positions fit in 32 bits
    because a segment holds far fewer than 2**32 events.
    """
    if len(days) == 0:
        return np.zeros(0, np.int64)
    offset = days.astype(np.int64) - int(days.min())
    keys = np.sort((offset << 32) | np.arange(len(days), dtype=np.int64))
    return keys & 0xFFFFFFFF


def group_bitmaps(keys: np.ndarray, rows: np.ndarray) -> dict[int, BitMap]:
    """One bitmap of rows per distinct key, vectorised: sort (key, row) pairs once."""
    if len(rows) == 0:
        return {}
    packed = sorted_unique((keys.astype(np.int64) << 32) | rows.astype(np.int64))
    key_of = packed >> 32
    row_of = (packed & 0xFFFFFFFF).astype(np.uint32)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key_of)) + 1))
    ends = np.append(starts[1:], len(packed))
    return {
        int(key_of[s]): to_bitmap(row_of[s:e]) for s, e in zip(starts, ends, strict=True)
    }


# --- the contact part ----------------------------------------------------------------

#: Field types stored as dictionary codes of lower-cased text.
TEXT_KINDS = (FieldType.TEXT,)


def read_contacts(files: Sequence[str], schema: Schema) -> pa.Table:
    """All contacts sorted by contact_id; fields missing from a file read as null."""
    wanted = ["contact_id", "email", "status", "lists", "date_added", *schema.custom_fields]
    tables = []
    for f in files:
        table = pq.read_table(f)
        tables.append(table.select([c for c in wanted if c in table.column_names]))
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive")
    else:
        table = pa.table({"contact_id": pa.array([], pa.int64())})
    for name in wanted:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    table = table.select(wanted).combine_chunks()
    ids = table.column("contact_id").to_numpy()
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # workspace files are sorted already
        table = table.take(pc.sort_indices(table.column("contact_id")))
    return table


def email_domains(emails: pa.Array) -> pa.Array:
    """`email_domain` by its one rule (`fields.EMAIL_DOMAIN_PATTERN`; null without an ``@``)."""
    emails = emails.cast(pa.string())
    parsed = pc.extract_regex(emails, EMAIL_DOMAIN_PATTERN)
    return pc.struct_field(parsed, "domain")


def encode_text(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(codes, lower-cased dictionary); null and "" get the code len(dictionary).

    The code type is the narrowest that fits, so scanning a low-cardinality field reads
    one byte per contact.
    """
    values = flat(values).cast(pa.string())
    empty = pc.fill_null(pc.equal(values, ""), True)
    encoded = flat(pc.dictionary_encode(pc.if_else(empty, pa.scalar(None, pa.string()), values)))
    dictionary = encoded.dictionary
    n = len(dictionary)
    dtype = np.uint8 if n < 255 else np.uint16 if n < 65535 else np.uint32
    codes = pc.fill_null(encoded.indices.cast(pa.int64()), n).to_numpy(zero_copy_only=False)
    return codes.astype(dtype), python_lower(dictionary)


#: Text fields with at most this many distinct values (state, country, title, plan...)
#: also get one contact bitmap per value, so "state is CA" is a bitmap and combines with
#: behavioural bitmaps without a pass over every contact. Above it (email, free text)
#: the per-value bitmaps would cost more to store than a scan of the codes.
VALUE_BITMAPS_MAX = 4096


def value_bitmap_name(field_name: str, code: int) -> str:
    """The contact bitmap of one dictionary code of a text field (the last code: empty)."""
    return f"v/{field_name}/{code}"


def value_bitmaps(field_name: str, codes: np.ndarray, size: int) -> dict[str, BitMap]:
    """One bitmap per code (the empty code included), or none for a high-cardinality field."""
    if size > VALUE_BITMAPS_MAX or len(codes) == 0:
        return {}
    grouped = group_bitmaps(codes, np.arange(len(codes), dtype=np.uint32))
    return {value_bitmap_name(field_name, code): bitmap for code, bitmap in grouped.items()}


def day_bitmaps(days: np.ndarray, present: np.ndarray) -> dict[int, BitMap]:
    """One bitmap per day of a date field with few distinct days (signup dates, renewal
    dates): a date range is then a union of bitmaps. None for a field with more days."""
    rows = np.flatnonzero(present).astype(np.uint32)
    if len(rows) == 0 or len(sorted_unique(days[rows])) > VALUE_BITMAPS_MAX:
        return {}
    return group_bitmaps(days[rows], rows)


def build_field(
    directory: Path, prefix: str, ftype: FieldType, column: pa.Array, store: BitmapStore,
    name: str,
) -> dict:
    """Store one field's column (and a text field's value bitmaps in `store`).

    Returns its description for meta.json.
    """
    if ftype in TEXT_KINDS:
        codes, lowered = encode_text(column)
        bitmaps = value_bitmaps(name, codes, len(lowered))
        store.write_layer(bitmaps)
        return {
            "type": ftype.value,
            "codes": save(directory / f"{prefix}.codes.npy", codes),
            "lower": save_strings(directory / f"{prefix}.lower.arrow", lowered),
            "value_bitmaps": bool(bitmaps),
        }
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    if ftype == FieldType.NUMBER:
        values = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        return {
            "type": ftype.value,
            "values": save(directory / f"{prefix}.values.npy", values),
            "present": save(directory / f"{prefix}.present.npy", present),
        }
    if ftype in (FieldType.DATE, FieldType.DATETIME):
        days, present = days_of(column) if len(column) else (np.zeros(0, np.int32), present)
        by_day = day_bitmaps(days, present)
        store.write_layer({value_bitmap_name(name, day): b for day, b in by_day.items()})
        return {
            "type": ftype.value,
            "days": save(directory / f"{prefix}.days.npy", days),
            "present": save(directory / f"{prefix}.present.npy", present),
            "bitmap_days": sorted(by_day) if by_day else None,
        }
    if ftype == FieldType.BOOLEAN:
        values = pc.fill_null(column.cast(pa.int8()), -1).to_numpy(zero_copy_only=False)
        return {"type": ftype.value, "values": save(directory / f"{prefix}.values.npy", values)}
    raise EngineError(f"the index cannot store a {ftype} field")


def build_lists(store: BitmapStore, lists: pa.Array, n: int) -> None:
    """One bitmap per lower-cased list name, plus ``ln`` (in at least one list)."""
    lists = flat(lists).cast(pa.list_(pa.string()))
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    bitmaps = {"ln": to_bitmap(np.flatnonzero(lengths > 0))}
    names = pc.list_flatten(lists)
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
    keep = pc.is_valid(names).to_numpy(zero_copy_only=False)
    if keep.any():
        names, parents = names.filter(pa.array(keep)), parents[keep]
        encoded = flat(pc.dictionary_encode(python_lower(names)))
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        dictionary = encoded.dictionary.to_pylist()
        for code, bitmap in group_bitmaps(codes, parents.astype(np.uint32)).items():
            bitmaps[f"l/{dictionary[code]}"] = bitmap
    store.write_layer(bitmaps)


def build_contacts(directory: Path, files: Sequence[str], schema: Schema) -> dict:
    """The contact part: ids, status, every field; returns its meta.json section."""
    table = read_contacts(files, schema)
    n = table.num_rows
    table = pa.table({name: flat(table.column(name)) for name in table.column_names})
    ids = table.column("contact_id").to_numpy().astype(np.int64)
    part = directory / "contacts"
    part.mkdir(parents=True, exist_ok=True)
    save(part / "ids.npy", ids)
    status = python_lower(table.column("status").cast(pa.string()))
    codes = pc.fill_null(pc.index_in(status, pa.array(STATUSES)), 255)
    status_codes = codes.to_numpy(zero_copy_only=False).astype(np.uint8)
    save(part / "status.npy", status_codes)
    store = BitmapStore(part)
    status_maps = {f"s/{s}": to_bitmap(np.flatnonzero(status_codes == i)) for i, s in enumerate(STATUSES)}
    store.write_layer(status_maps)
    build_lists(store, table.column("lists"), n)
    fields: dict[str, dict] = {}
    columns = {"email": table.column("email"), "email_domain": email_domains(table.column("email"))}
    columns["date_added"] = table.column("date_added")
    for name in schema.custom_fields:
        columns[name] = table.column(name)
    types = {"email": FieldType.TEXT, "email_domain": FieldType.TEXT, "date_added": FieldType.DATETIME}
    types.update(schema.custom)
    for i, (name, column) in enumerate(columns.items()):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_null(column.type):
            column = pa.nulls(n, type=_arrow_type(types[name]))
        fields[name] = build_field(part, f"f{i}", types[name], column, store, name)
    dense = bool(n == 0 or (ids[0] == 1 and ids[-1] == n))
    return {
        "n": n,
        "dense": dense,
        "fields": fields,
        "bitmaps": store.to_json(),
        "version": CONTACTS_VERSION,
    }


def _arrow_type(ftype: FieldType) -> pa.DataType:
    return {
        FieldType.TEXT: pa.string(),
        FieldType.NUMBER: pa.float64(),
        FieldType.DATE: pa.date32(),
        FieldType.DATETIME: pa.timestamp("us"),
        FieldType.BOOLEAN: pa.bool_(),
    }[ftype]


# --- the event part --------------------------------------------------------------------


class Dictionary:
    """A growing text -> code dictionary; codes are stable across updates."""

    def __init__(self, values: Sequence[str] = ()):
        self.values = list(values)
        self._arrow = pa.array(self.values, pa.string())

    def encode(self, column: pa.Array) -> np.ndarray:
        """Codes of `column` (nulls -> -1), adding values never seen before."""
        encoded = flat(pc.dictionary_encode(flat(column).cast(pa.string())))
        local = encoded.dictionary
        found = pc.index_in(local, self._arrow).to_numpy(zero_copy_only=False)
        found = np.where(np.isnan(found.astype(float)), -1, found).astype(np.int64)
        missing = np.flatnonzero(found < 0)
        if len(missing):
            start = len(self.values)
            self.values.extend(local.take(pa.array(missing)).to_pylist())
            found[missing] = np.arange(start, start + len(missing))
            self._arrow = pa.array(self.values, pa.string())
        mapping = np.append(found, -1)
        indices = pc.fill_null(encoded.indices.cast(pa.int64()), len(local))
        return mapping[indices.to_numpy(zero_copy_only=False)].astype(np.int32)


def merge_recent(
    had: np.ndarray, distinct: np.ndarray, counts: np.ndarray, starts: np.ndarray,
    sorted_days: np.ndarray,
) -> np.ndarray:
    """Each row's latest RECENT days: those it `had` (RECENT, rows) merged with a batch's.

    The batch's days are sorted by row, latest first; row i's run starts at starts[i].
    """
    position = np.arange(len(sorted_days)) - np.repeat(starts, counts)
    column = np.repeat(np.arange(len(distinct)), counts)
    top = position < RECENT
    new = np.full((RECENT, len(distinct)), NO_LAST, np.int32)
    new[position[top], column[top]] = sorted_days[top]
    both = np.concatenate((had, new))
    return (-np.sort(-both.astype(np.int64), axis=0)[:RECENT]).astype(np.int32)


@dataclass
class EventPart:
    """The event part of an index being built: aggregates, bitmaps, dictionaries, store."""

    n: int
    directory: Path
    aggregates: Aggregates
    campaigns: Dictionary
    send_us: list[int | None]
    urls: Dictionary
    bitmaps: BitmapStore
    segments: list[dict]
    day_range: list[list[int | None]]
    #: per type, per campaign code: [first day, last day] of its events (NO_FIRST/NO_LAST
    #: when it has none), so "campaign C within window W" is a bitmap when all of C's
    #: events fall inside W (or none do)
    campaign_days: np.ndarray = field(
        default_factory=lambda: np.zeros((len(EVENT_TYPES), 0, 2), np.int32)
    )
    orphans: int = 0
    #: the index this part extends: its aggregates (an update moves only the rows whose
    #: recent days changed between its recent-day bitmaps and ours) and its directory
    previous: Aggregates | None = None
    previous_directory: Path | None = None
    #: per type, the distinct rows of each aggregated batch (an update's changed rows)
    changed: list[list[np.ndarray]] = field(default_factory=lambda: [[] for _ in EVENT_TYPES])
    touched: dict[str, BitMap] = field(default_factory=dict)
    #: events of the segment being collected: type -> column -> batches
    pending: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    pending_rows: int = 0
    #: decoded events not yet aggregated (same shape as `pending`)
    chunk: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)
    chunk_rows: int = 0

    @classmethod
    def empty(cls, n: int, directory: Path, aggregates: Aggregates | None = None) -> EventPart:
        """No events yet (or `aggregates` to continue from)."""
        return cls(
            n=n,
            directory=directory,
            aggregates=aggregates if aggregates is not None else Aggregates.dense(n),
            campaigns=Dictionary(),
            send_us=[],
            urls=Dictionary(),
            bitmaps=BitmapStore(directory),
            segments=[],
            day_range=[[None, None] for _ in EVENT_TYPES],
        )

    @classmethod
    def extend(cls, previous: IndexData, n: int, directory: Path, new_events: int) -> EventPart:
        """Continue the previous index's event part (for `n` contacts, `new_events` more)."""
        part = cls.empty(n, directory, Aggregates.extend(previous.aggregates, n, new_events))
        part.previous = previous.aggregates
        part.previous_directory = previous.directory
        meta = previous.meta["events"]
        part.campaigns = Dictionary(previous.campaigns)
        part.send_us = list(meta["send_us"])
        part.urls = Dictionary(previous.urls().to_pylist())
        part.orphans = int(meta["orphans"])
        part.day_range = [list(r) for r in meta["day_range"]]
        part.campaign_days = np.array(meta["campaign_days"], np.int32).reshape(
            len(EVENT_TYPES), len(previous.campaigns), 2
        )
        for layer in previous.bitmaps.layers():
            link_or_copy(previous.directory / layer, directory / layer)
        part.bitmaps = BitmapStore(directory, dict(previous.bitmaps.entries))
        for segment in meta["segments"]:
            for name in segment["files"].values():
                link_or_copy(previous.directory / "events" / name, directory / "events" / name)
            part.segments.append(segment)
        return part

    def add_files(
        self, files: Sequence[str], ids: np.ndarray, dense: bool, progress: Task | None = None
    ) -> None:
        """Stream the events of `files` into event-store segments and the aggregates."""
        if not files:
            return
        (self.directory / "events").mkdir(parents=True, exist_ok=True)
        for batch in stream_events(files):
            self._add_batch(batch, ids, dense)
            if self.chunk_rows >= BATCH_ROWS:
                self._index_chunk()
            if self.pending_rows >= SEGMENT_ROWS:
                self._flush()
            if progress is not None:
                progress.advance(batch.num_rows)
        self._index_chunk()
        self._flush()
        self.bitmaps.write_layer(self.touched)
        self.touched = {}

    def _add_batch(self, batch: pa.RecordBatch, ids: np.ndarray, dense: bool) -> None:
        contact = pc.fill_null(batch.column("contact_id").cast(pa.int64()), 0)
        rows, known = contact_rows(contact.to_numpy(zero_copy_only=False), ids, dense)
        types = dictionary_codes(batch.column("type"), type_codes)
        ts_col = batch.column("timestamp")
        micros = pc.fill_null(timestamp_micros(ts_col), 0).to_numpy(zero_copy_only=False)
        has_ts = pc.is_valid(ts_col).to_numpy(zero_copy_only=False)
        campaigns = dictionary_codes(batch.column("campaign"), self.campaigns.encode)
        valid = (types >= 0) & has_ts & (campaigns >= 0)
        self.orphans += int(np.count_nonzero(valid & ~known))
        keep = valid & known
        days = np.floor_divide(micros, DAY_US).astype(np.int32)
        for t, etype in enumerate(EVENT_TYPES):
            sel = np.flatnonzero(keep & (types == t))
            if len(sel) == 0:
                continue
            r, d, c = rows[sel].astype(np.uint32), days[sel], campaigns[sel]
            columns = {"rows": r, "day": d, "campaign": c}
            if t == CLICK:
                urls = batch.column("url").take(pa.array(sel))
                columns["url"] = dictionary_codes(urls, self._url_codes).astype(np.int32)
            if t == SENT:
                self._send_times(c, micros[sel])
            chunk = self.chunk.setdefault(etype, {})
            for key, values in columns.items():
                chunk.setdefault(key, []).append(values.astype(STORE_COLUMNS[key], copy=False))
            self.chunk_rows += len(sel)

    def _index_chunk(self) -> None:
        """Aggregate and bitmap the decoded events of at least BATCH_ROWS, then keep them
        for the segment. Parquet batches are a row group each (~100k rows with their own
        dictionaries); indexing per chunk keeps the per-call overhead of bitmaps low.
        """
        for etype, columns in self.chunk.items():
            merged = {key: np.concatenate(parts) for key, parts in columns.items()}
            r, d, c = merged["rows"], merged["day"], merged["campaign"]
            distinct = self._aggregate(EVENT_TYPES.index(etype), r, d)
            self._bitmaps(etype, distinct, r, d, c)
            if "url" in merged:
                self._url_bitmaps(r, merged["url"])
            pending = self.pending.setdefault(etype, {})
            for key, values in merged.items():
                pending.setdefault(key, []).append(values)
        self.pending_rows += self.chunk_rows
        self.chunk = {}
        self.chunk_rows = 0

    def _url_codes(self, urls: pa.Array) -> np.ndarray:
        """URL codes: lower-cased, "" counts as no URL (code -1)."""
        urls = flat(urls).cast(pa.string())
        empty = pc.fill_null(pc.equal(urls, ""), True)
        return self.urls.encode(python_lower(pc.if_else(empty, pa.scalar(None, pa.string()), urls)))

    def _flush(self) -> None:
        """Write the buffered events as one segment, each type's events sorted by day."""
        if not self.pending:
            return
        segment = f"s{len(self.segments):04d}-{uuid.uuid4().hex[:8]}"
        files: dict[str, str] = {}
        lengths = {t: 0 for t in EVENT_TYPES}
        for etype, columns in self.pending.items():
            merged = {key: np.concatenate(parts) for key, parts in columns.items()}
            order = day_order(merged["day"])
            lengths[etype] = len(order)
            for key, values in merged.items():
                name = files[f"{etype}.{key}"] = f"{segment}.{etype}.{key}.bin"
                values[order].tofile(self.directory / "events" / name)
        self.segments.append({"name": segment, "files": files, "lengths": lengths})
        self.pending = {}
        self.pending_rows = 0

    def _send_times(self, campaigns: np.ndarray, micros: np.ndarray) -> None:
        if len(self.send_us) < len(self.campaigns.values):
            self.send_us.extend([None] * (len(self.campaigns.values) - len(self.send_us)))
        earliest = np.full(len(self.campaigns.values), np.iinfo(np.int64).max, np.int64)
        np.minimum.at(earliest, campaigns, micros)
        for code in np.flatnonzero(earliest != np.iinfo(np.int64).max).tolist():
            t = int(earliest[code])  # one step per campaign in the batch, not per event
            old = self.send_us[code]
            self.send_us[code] = t if old is None else min(old, t)

    def _aggregate(self, t: int, rows: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Add a batch of one type to count / first / last; returns its distinct rows.

        Sorting the rows (SIMD) and counting runs is ~6x faster than a group-by here and
        touches only the batch's rows, not all contacts; min/max use ufunc.at.
        """
        # One sort of (row, latest day first) keys gives counts, first, last and the
        # latest RECENT days of every row of the batch.
        flipped = np.int64(0xFFFFFFFF) - (days.astype(np.int64) - int(NO_LAST))
        keys = np.sort((rows.astype(np.int64) << 32) | flipped)
        sorted_rows = keys >> 32
        sorted_days = (np.int64(0xFFFFFFFF) - (keys & 0xFFFFFFFF) + int(NO_LAST)).astype(np.int32)
        distinct, counts = runs(sorted_rows)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        ends = starts + counts - 1
        before = self.aggregates.lookup(t, distinct)
        self.aggregates.store(t, distinct, Values(
            count=before.count + counts.astype(np.uint32),
            first=np.minimum(before.first, sorted_days[ends]),
            last=np.maximum(before.last, sorted_days[starts]),
            recent=merge_recent(before.recent, distinct, counts, starts, sorted_days),
        ))
        if self.previous is not None:
            self.changed[t].append(distinct.astype(np.uint32))
        lo, hi = int(days.min()), int(days.max())
        old_lo, old_hi = self.day_range[t]
        self.day_range[t] = [lo if old_lo is None else min(lo, old_lo),
                             hi if old_hi is None else max(hi, old_hi)]
        return distinct

    def _merge(self, name: str, bitmap: BitMap) -> None:
        current = self.touched.get(name)
        if current is None:
            current = self.touched[name] = BitMap(self.bitmaps.get(name))
        current |= bitmap

    def _campaign_days(self, t: int, days: np.ndarray, camps: np.ndarray) -> None:
        """Widen each campaign's [first, last] day of type `t` to this batch's events."""
        self._cover_campaigns()
        np.minimum.at(self.campaign_days[t, :, 0], camps, days)
        np.maximum.at(self.campaign_days[t, :, 1], camps, days)

    def _cover_campaigns(self) -> None:
        """Give every campaign of the dictionary a day range (empty for new ones)."""
        k = len(self.campaigns.values)
        if self.campaign_days.shape[1] < k:
            wider = np.empty((len(EVENT_TYPES), k, 2), np.int32)
            wider[:, :, 0], wider[:, :, 1] = NO_FIRST, NO_LAST
            wider[:, : self.campaign_days.shape[1]] = self.campaign_days
            self.campaign_days = wider

    def _bitmaps(
        self, etype: str, distinct: np.ndarray, rows: np.ndarray, days: np.ndarray,
        camps: np.ndarray,
    ) -> None:
        self._campaign_days(EVENT_TYPES.index(etype), days, camps)
        self._merge(f"e/{etype}", to_bitmap(distinct))
        for code, bitmap in group_bitmaps(camps, rows).items():
            self._merge(f"c/{etype}/{code}", bitmap)
        for day, bitmap in group_bitmaps(days, rows).items():
            self._merge(f"d/{etype}/{day}", bitmap)

    def _url_bitmaps(self, rows: np.ndarray, urls: np.ndarray) -> None:
        """Per click URL, who clicked it (ever): `url_contains` without a window."""
        has = urls >= 0
        for code, bitmap in group_bitmaps(urls[has], rows[has]).items():
            self._merge(f"u/{code}", bitmap)

    def _recent_bitmaps(self) -> None:
        """Per (type, k, day): the rows whose k-th latest event of the type is on that day.

        "At least k events since day D" (k <= RECENT, nothing later than the data) is
        then the union of the (type, k) bitmaps of the days from D on: a bitmap that
        combines with the others, not a pass over every contact. A full build groups
        all rows; an update moves only the rows whose recent days changed.
        """
        changed: dict[str, BitMap] = {}

        def edit(name: str, rows: BitMap, add: bool) -> None:
            current = changed.get(name)
            if current is None:
                current = changed[name] = BitMap(self.bitmaps.get(name))
            if add:
                current |= rows
            else:
                current -= rows

        for t, etype in enumerate(EVENT_TYPES):
            rows, before, after = self._recent_changes(t)
            for k in range(RECENT):
                prefix = f"k/{etype}/{k + 1}/"
                if before is None:  # a full build: nothing to move away from
                    moved = np.ones(len(rows), bool)
                else:
                    moved = before[k] != after[k]
                    was = moved & (before[k] != NO_LAST)
                    for day, bitmap in group_bitmaps(before[k][was], rows[was]).items():
                        edit(f"{prefix}{day}", bitmap, add=False)
                now = moved & (after[k] != NO_LAST)
                for day, bitmap in group_bitmaps(after[k][now], rows[now]).items():
                    edit(f"{prefix}{day}", bitmap, add=True)
        for name in [name for name, bitmap in changed.items() if not bitmap]:
            del changed[name]  # a day nobody's k-th latest event is on any more
            self.bitmaps.entries.pop(name, None)
        self.bitmaps.write_layer(changed)

    def _recent_changes(self, t: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(rows, their recent days before, after) for type `t`: every row with events in
        a full build (before: None), the rows this update's events touched in an update."""
        names = ("recent",)
        if self.previous is None:
            rows = np.flatnonzero(self.aggregates.column("count", t) > 0).astype(np.uint32)
            return rows, None, self.aggregates.lookup(t, rows, names).recent
        parts = self.changed[t]
        rows = sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint32)
        before = self.previous.lookup(t, rows, names).recent
        return rows, before, self.aggregates.lookup(t, rows, names).recent

    def write(self) -> dict:
        """Write aggregates and dictionaries; returns the meta.json section."""
        self._recent_bitmaps()
        aggregates = self.aggregates.write(self.directory, self.previous_directory)
        if len(self.send_us) < len(self.campaigns.values):
            self.send_us.extend([None] * (len(self.campaigns.values) - len(self.send_us)))
        self._cover_campaigns()
        urls = save_strings(self.directory / f"urls-{uuid.uuid4().hex[:8]}.arrow",
                            pa.array(self.urls.values, pa.string()))
        return {
            "campaigns": self.campaigns.values,
            "send_us": self.send_us,
            "urls": urls,
            "bitmaps": self.bitmaps.to_json(),
            "segments": self.segments,
            "day_range": self.day_range,
            "campaign_days": self.campaign_days.tolist(),
            "recent_bitmaps": True,
            "aggregates": aggregates,
            "orphans": self.orphans,
        }


def type_codes(types: pa.Array) -> np.ndarray:
    """EVENT_TYPES positions of event type names (-1: not an event type)."""
    codes = pc.fill_null(pc.index_in(flat(types).cast(pa.string()), pa.array(EVENT_TYPES)), -1)
    return codes.to_numpy(zero_copy_only=False).astype(np.int64)


def dictionary_codes(column: pa.Array, encode: Callable[[pa.Array], np.ndarray]) -> np.ndarray:
    """`encode` applied per row, computed on a dictionary column's distinct values only.

    Events are read with Parquet's own dictionaries for the repetitive text columns, so
    a batch of millions of rows costs one lookup per distinct type, campaign or URL.
    """
    column = flat(column)
    if not pa.types.is_dictionary(column.type):
        return encode(column)
    mapping = np.append(encode(column.dictionary), -1)
    indices = pc.fill_null(column.indices.cast(pa.int64()), len(column.dictionary))
    return mapping[indices.to_numpy(zero_copy_only=False)]


#: Event columns decoded as dictionaries (few distinct values, millions of rows).
DICTIONARY_COLUMNS = ["campaign", "type", "url"]


def stream_events(files: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The events of `files` in bounded batches (url as null when a file has none)."""
    for f in files:
        parquet = pq.ParquetFile(f, read_dictionary=DICTIONARY_COLUMNS)
        names = parquet.schema_arrow.names
        columns = [c for c in ("contact_id", "campaign", "type", "timestamp", "url") if c in names]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            if "url" not in names:
                batch = batch.append_column("url", pa.nulls(batch.num_rows, pa.string()))
            yield batch


def contact_rows(contact_ids: np.ndarray, ids: np.ndarray, dense: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row of each contact id, whether the contact exists)."""
    n = len(ids)
    if dense:
        rows = contact_ids - 1
        known = (rows >= 0) & (rows < n)
        return np.where(known, rows, 0), known
    pos = np.searchsorted(ids, contact_ids)
    clipped = np.minimum(pos, max(n - 1, 0))
    known = (pos < n) & (ids[clipped] == contact_ids) if n else np.zeros(len(pos), bool)
    return np.where(known, clipped, 0), known


# --- building and refreshing -----------------------------------------------------------


def build_index(
    contacts: Sequence[str],
    events: Sequence[str],
    schema: Schema,
    directory: Path,
    previous: IndexData | None = None,
    covers: dict[str, list[str]] | None = None,
    progress: Progress | None = None,
) -> dict:
    """Build the index of these files into `directory`, reusing `previous` where it can.

    `covers` names the files as the manifest does (workspace-relative); it defaults to
    the given paths. `progress` shows the events indexed (long builds run for minutes).
    Returns the meta written to ``meta.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    covers = covers or {"contacts": list(contacts), "events": list(events)}
    same_contacts = (
        previous is not None
        and previous.meta["covers"]["contacts"] == covers["contacts"]
        and previous.meta["schema"] == _schema_json(schema)
        and previous.meta["contacts"].get("version") == CONTACTS_VERSION
    )
    if same_contacts:
        for file in sorted((previous.directory / "contacts").iterdir()):
            link_or_copy(file, directory / "contacts" / file.name)
        contact_meta = previous.meta["contacts"]
    else:
        contact_meta = build_contacts(directory, contacts, schema)
    ids = load(directory / "contacts" / "ids.npy")
    n = contact_meta["n"]
    old_events = previous.meta["covers"]["events"] if previous is not None else []
    reuse = (
        previous is not None
        and covers["events"][: len(old_events)] == old_events
        and n >= previous.n
        and np.array_equal(ids[: previous.n], previous.ids)
        and (same_contacts or previous.meta["events"]["orphans"] == 0)
        and previous.meta["events"].get("recent_bitmaps", False)
    )
    new_files = list(events)[len(old_events) :] if reuse else list(events)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in new_files)
    part = EventPart.extend(previous, n, directory, total) if reuse else EventPart.empty(n, directory)
    reporter = progress if progress is not None and total else NullProgress()
    with reporter.task(f"indexing {total:,} events", total=total) as task:
        part.add_files(new_files, np.asarray(ids), bool(contact_meta["dense"]), task)
    meta = {
        "format": FORMAT,
        "covers": covers,
        "schema": _schema_json(schema),
        "contacts": contact_meta,
        "events": part.write(),
        "incremental": bool(reuse),
    }
    (directory / META).write_text(json.dumps(meta))
    return meta


def _schema_json(schema: Schema) -> list[list[str]]:
    return [[name, ftype.value] for name, ftype in schema.custom]


def refresh_index(tx: Transaction, progress: Progress | None = None) -> None:
    """Bring the index up to date with the transaction's files (no-op when it already is).

    Called by `Transaction.commit` before anything is made durable, so the index files
    are part of the same atomic commit as the data they describe.
    """
    covers = covers_of(tx.manifest)
    current = tx.manifest.get("index") or {}
    if current.get("covers") == covers and current.get("format") == FORMAT:
        return
    previous = None
    if current.get("path"):
        try:
            previous = IndexData.open(tx.root / current["path"])
        except (OSError, ValueError, KeyError, EngineError):
            previous = None  # unreadable or another format: build from scratch
        if previous is not None and previous.meta.get("format") not in READABLE_FORMATS:
            previous = None
    directory = tx.new_file("index", suffix="", directory="index")
    schema = Schema.from_pairs(tuple(pair) for pair in tx.manifest["fields"])
    build_index(
        [str(tx.root / f) for f in covers["contacts"]],
        [str(tx.root / f) for f in covers["events"]],
        schema,
        directory,
        previous=previous,
        covers=covers,
        progress=progress,
    )
    tx.manifest["index"] = {"path": tx.relative(directory), "format": FORMAT, "covers": covers}


# --- reading -------------------------------------------------------------------------


#: Keys of a field's meta.json entry that are not array files.
NOT_FILES = frozenset({"type", "lower", "value_bitmaps", "bitmap_days"})


@dataclass
class FieldColumn:
    """One indexed field, memory-mapped; `value_bitmaps`: a text field has per-value bitmaps."""

    name: str
    type: FieldType
    arrays: dict[str, np.ndarray]
    #: a text field's lower-cased dictionary, read on first use (the email dictionary
    #: holds every contact: an import that only extends the events never needs it)
    lower_path: Path | None = None
    value_bitmaps: bool = False
    #: a date field's days that have a bitmap (None: the field has none)
    bitmap_days: np.ndarray | None = None
    _lower: pa.Array | None = field(default=None, repr=False)

    @property
    def lower(self) -> pa.Array | None:
        if self._lower is None and self.lower_path is not None:
            self._lower = load_strings(self.lower_path)
        return self._lower


@dataclass
class StoreSegment:
    """The events of one import, per type, memory-mapped."""

    columns: dict[str, dict[str, np.ndarray]]


class IndexData:
    """A loaded index: memory-mapped arrays and lazily deserialized bitmaps."""

    def __init__(self, directory: Path, meta: dict):
        self.directory = Path(directory)
        self.meta = meta
        contacts = meta["contacts"]
        self.n = int(contacts["n"])
        part = self.directory / "contacts"
        self.ids = np.asarray(load(part / "ids.npy"))
        self.status = load(part / "status.npy")
        self.contact_bitmaps = BitmapStore.from_json(part, contacts["bitmaps"])
        self.fields = {
            name: self._field(part, name, spec) for name, spec in contacts["fields"].items()
        }
        events = meta["events"]
        self.aggregates = Aggregates.open(self.directory, self.n, events.get("aggregates"))
        #: count[t], first[t], last[t] (days), recent[t] (RECENT, rows): full arrays per
        #: event type, the delta applied on first use
        self.count = self.aggregates.view("count")
        self.first = self.aggregates.view("first")
        self.last = self.aggregates.view("last")
        self.recent = self.aggregates.view("recent")
        self.campaigns: list[str] = events["campaigns"]
        self.campaign_codes = {c: i for i, c in enumerate(self.campaigns)}
        self.send_us: list[int | None] = events["send_us"]
        self.bitmaps = BitmapStore.from_json(self.directory, events["bitmaps"])
        self.day_range = events["day_range"]
        days = events.get("campaign_days")  # absent in indexes written before it existed
        self.campaign_days = (
            None if days is None
            else np.array(days, np.int64).reshape(len(EVENT_TYPES), len(self.campaigns), 2)
        )
        self._urls: pa.Array | None = None
        self._segments: list[StoreSegment] | None = None
        self._days: dict[str, np.ndarray] = {}
        self._status_rows: tuple[str, dict[str, np.ndarray]] | None = None

    @classmethod
    def open(cls, directory: Path) -> IndexData:
        meta = json.loads((Path(directory) / META).read_text())
        if meta.get("format") not in READABLE_FORMATS:
            raise IndexUnavailable(f"index {directory} has format {meta.get('format')}")
        return cls(directory, meta)

    @staticmethod
    def _field(part: Path, name: str, spec: dict) -> FieldColumn:
        ftype = FieldType(spec["type"])
        arrays = {k: load(part / v) for k, v in spec.items() if k not in NOT_FILES}
        lower = part / spec["lower"] if "lower" in spec else None
        days = spec.get("bitmap_days")
        return FieldColumn(
            name, ftype, arrays, lower, bool(spec.get("value_bitmaps")),
            None if days is None else np.array(days, np.int64),
        )

    def urls(self) -> pa.Array:
        if self._urls is None:
            self._urls = load_strings(self.directory / self.meta["events"]["urls"])
        return self._urls

    def segments(self) -> list[StoreSegment]:
        """The event store, memory-mapped on first use."""
        if self._segments is None:
            self._segments = [self._segment(s) for s in self.meta["events"]["segments"]]
        return self._segments

    def _segment(self, spec: dict) -> StoreSegment:
        columns: dict[str, dict[str, np.ndarray]] = {}
        for etype in EVENT_TYPES:
            n = int(spec["lengths"][etype])
            cols = {}
            for key, dtype in STORE_COLUMNS.items():
                name = spec["files"].get(f"{etype}.{key}")
                if name is None:
                    continue
                path = self.directory / "events" / name
                cols[key] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else (
                    np.zeros(0, dtype)
                )
            columns[etype] = cols
        return StoreSegment(columns)

    def status_rows(self) -> tuple[str, dict[str, np.ndarray]]:
        """(the most common status, the rows of every other status code).

        Computed once per loaded index. Code 255 (no known status) is a group of its own
        under the key "", so the most common status is the total minus all the others.
        """
        if self._status_rows is None:
            codes = np.asarray(self.status)
            groups = {s: np.flatnonzero(codes == i) for i, s in enumerate(STATUSES)}
            groups[""] = np.flatnonzero(codes == 255)
            largest = max(STATUSES, key=lambda s: len(groups[s]))
            del groups[largest]
            self._status_rows = (largest, groups)
        return self._status_rows

    def bitmap_days(self, etype: str) -> np.ndarray:
        """The sorted days that have a (type, day) bitmap."""
        return self._named_days(f"d/{etype}/")

    def recent_days(self, etype: str, k: int) -> np.ndarray | None:
        """The sorted days that have a (type, k-th latest, day) bitmap (None: not built)."""
        if not self.meta["events"].get("recent_bitmaps"):
            return None
        return self._named_days(f"k/{etype}/{k}/")

    def _named_days(self, prefix: str) -> np.ndarray:
        if prefix not in self._days:
            days = [int(name[len(prefix) :]) for name in self.bitmaps.names(prefix)]
            self._days[prefix] = np.array(sorted(days), dtype=np.int64)
        return self._days[prefix]


def load_index(snapshot: Snapshot) -> IndexData:
    """The snapshot's index, refusing any that does not cover exactly its files."""
    entry = snapshot.manifest.get("index") or {}
    covers = covers_of(snapshot.manifest)
    if not entry.get("path"):
        raise IndexUnavailable(
            "this workspace has no engagement index yet: it is built by the next import"
        )
    if entry.get("covers") != covers:
        raise IndexUnavailable(
            "the engagement index does not cover the workspace's current files "
            "(it is rebuilt by the next import); use --engine auto or duckdb"
        )
    try:
        index = IndexData.open(snapshot.root / entry["path"])
    except (OSError, ValueError, KeyError) as exc:
        raise IndexUnavailable(f"cannot read the engagement index {entry['path']}: {exc}") from None
    if index.meta["covers"] != covers:
        raise IndexUnavailable(
            f"the engagement index {entry['path']} was built for other files than this "
            "snapshot's; use --engine auto or duckdb"
        )
    return index
