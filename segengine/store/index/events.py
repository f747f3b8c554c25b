"""The event part of the index: aggregates, bitmaps per type, campaign, day and URL,
and the event store (chunks of events sorted by day)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyroaring import BitMap

from ...fields import EVENT_TYPES
from ..aggregates import NO_FIRST, NO_LAST, RECENT, Aggregates, Values
from ..arrays import link_or_copy, save_strings

if TYPE_CHECKING:
    from ...progress import Task
from .bitmaps import (
    BitmapsAside,
    BitmapStore,
    day_order,
    flat,
    group_bitmaps,
    is_sorted,
    parts_sorted,
    python_lower,
    runs,
    timestamp_micros,
    to_bitmap,
)
from .layout import (
    BLOCK_FILES,
    CLICK,
    DAY_US,
    SENT,
    STORE_COLUMNS,
    WORDS_MAX,
    BitmapKeys,
)
from .read import (
    IndexData,
)

#: Events aggregated and bitmapped together: bounds memory whatever the event count.
BATCH_ROWS = 4_000_000
#: Event types indexed at the same time (each on its own aggregates and bitmaps).
INDEX_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
#: Events buffered before they are sorted by day and written as one event-store block:
#: bounds the build's memory (~16 bytes an event) while keeping few blocks to search.
BLOCK_ROWS = 32_000_000
#: Rows whose recent days are grouped into recent-day bitmaps at a time: the arrays of
#: all 10M contacts at once took ~1 GB beside the aggregates.
RECENT_ROWS = 2_000_000


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
    return top_merged(had, new)


def top_merged(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The first len(a) rows of the merge of two arrays sorted down their columns (latest
    first), elementwise: the k-th largest is max over i of min(a[i-1], b[k-i]) with an
    infinite a[-1] and b[-1]. A few passes over whole rows instead of one sort per column,
    which numpy runs ~10x slower along a strided axis."""
    out = np.empty_like(a)
    for k in range(len(a)):
        best = np.maximum(a[k], b[k])
        for i in range(k):
            best = np.maximum(best, np.minimum(a[i], b[k - 1 - i]))
        out[k] = best
    return out


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
    blocks: list[dict]
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
    #: per type, whether each row had events in this update (None: none yet). A flag a
    #: row, not the distinct rows of every batch: 200M events into 10M contacts kept
    #: ~800 MB of batches' rows for the end of the build.
    changed: list[np.ndarray | None] = field(default_factory=lambda: [None for _ in EVENT_TYPES])
    #: the rows each bitmap gains from the events indexed since the last block was written
    touched: dict[str, BitMap] = field(default_factory=dict)
    #: what earlier blocks added to each bitmap, set aside in a file (`_set_aside`)
    aside: BitmapsAside | None = None
    #: events of the block being collected: type -> column -> batches
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
            blocks=[],
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
        for block in meta[BLOCK_FILES]:
            for name in block["files"].values():
                link_or_copy(previous.directory / "events" / name, directory / "events" / name)
            part.blocks.append(block)
        return part

    def add_files(
        self, files: Sequence[str], ids: np.ndarray, dense: bool, progress: Task | None = None
    ) -> None:
        """Stream the events of `files` into event-store blocks and the aggregates."""
        if not files:
            return
        (self.directory / "events").mkdir(parents=True, exist_ok=True)
        self.aside = BitmapsAside(self.directory)
        try:
            for batch in stream_events(files):
                self._add_batch(batch, ids, dense)
                if self.chunk_rows >= BATCH_ROWS:
                    self._index_chunk()
                if self.pending_rows >= BLOCK_ROWS:
                    self._flush()
                if progress is not None:
                    progress.advance(batch.num_rows)
            self._index_chunk()
            self._flush()
            # one bitmap at a time: the previous index's, what each block added, the rest
            self.bitmaps.write_layer(self._merged_bitmaps())
        finally:
            self.aside.close()
            self.aside = None
        self.touched = {}

    def _merged_bitmaps(self) -> Iterator[tuple[str, BitMap]]:
        assert self.aside is not None
        for name in [*self.aside.names(), *(n for n in self.touched if n not in self.aside)]:
            bitmap = self.bitmaps.read(name)
            self.aside.merge_into(name, bitmap)
            added = self.touched.pop(name, None)
            if added is not None:
                bitmap |= added
            yield name, bitmap

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
        for the block. Parquet batches are a row group each (~100k rows with their own
        dictionaries); indexing per chunk keeps the per-call overhead of bitmaps low.
        """
        by_type = {etype: {key: np.concatenate(parts) for key, parts in columns.items()}
                   for etype, columns in self.chunk.items()}
        # The types touch disjoint aggregates and bitmaps, and numpy's sorts and gathers
        # release the GIL: they are indexed side by side, the largest first.
        self._cover_campaigns()
        largest_first = sorted(by_type, key=lambda etype: -len(by_type[etype]["rows"]))
        if len(largest_first) > 1 and INDEX_THREADS > 1:
            with ThreadPoolExecutor(INDEX_THREADS) as pool:
                list(pool.map(lambda etype: self._index_type(etype, by_type[etype]), largest_first))
        else:
            for etype in largest_first:
                self._index_type(etype, by_type[etype])
        for etype, merged in by_type.items():
            pending = self.pending.setdefault(etype, {})
            for key, values in merged.items():
                pending.setdefault(key, []).append(values)
        self.pending_rows += self.chunk_rows
        self.chunk = {}
        self.chunk_rows = 0

    def _index_type(self, etype: str, merged: dict[str, np.ndarray]) -> None:
        r, d, c = merged["rows"], merged["day"], merged["campaign"]
        distinct = self._aggregate(EVENT_TYPES.index(etype), r, d)
        self._bitmaps(etype, distinct, r, d, c)
        if "url" in merged:
            self._url_bitmaps(r, merged["url"])

    def _url_codes(self, urls: pa.Array) -> np.ndarray:
        """URL codes: lower-cased, "" counts as no URL (code -1)."""
        urls = flat(urls).cast(pa.string())
        empty = pc.fill_null(pc.equal(urls, ""), True)
        return self.urls.encode(python_lower(pc.if_else(empty, pa.scalar(None, pa.string()), urls)))

    def _flush(self) -> None:
        """Write the buffered events as one block, each type's events sorted by day, and
        set the bitmaps' additions aside: the import's peak memory is then one block's
        events and bitmaps over the aggregates, whatever the number of events."""
        if self.aside is not None:
            self.aside.add(self.touched)
            self.touched = {}
        if not self.pending:
            return
        block = f"s{len(self.blocks):04d}-{uuid.uuid4().hex[:8]}"
        files: dict[str, str] = {}
        lengths = {t: 0 for t in EVENT_TYPES}
        for etype, columns in self.pending.items():
            # time-ordered files give days in order: the batches are written as they are
            order = None if parts_sorted(columns["day"]) else day_order(np.concatenate(columns["day"]))
            lengths[etype] = sum(len(days) for days in columns["day"])
            for key, parts in columns.items():
                name = files[f"{etype}.{key}"] = f"{block}.{etype}.{key}.bin"
                if order is None:
                    with open(self.directory / "events" / name, "wb") as out:
                        for values in parts:
                            values.tofile(out)
                else:
                    np.concatenate(parts)[order].tofile(self.directory / "events" / name)
        self.blocks.append({"name": block, "files": files, "lengths": lengths})
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
        # One sort by (row, latest day first) gives counts, first, last and the latest
        # RECENT days of every row of the batch.
        sorted_rows, sorted_days = by_row_latest_first(rows, days)
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
            if self.changed[t] is None:
                self.changed[t] = np.zeros(self.n, bool)
            self.changed[t][distinct] = True
        lo, hi = int(days.min()), int(days.max())
        old_lo, old_hi = self.day_range[t]
        self.day_range[t] = [lo if old_lo is None else min(lo, old_lo),
                             hi if old_hi is None else max(hi, old_hi)]
        return distinct

    def _merge(self, name: str, bitmap: BitMap) -> None:
        """Add rows to a bitmap (its stored rows are added when it is written)."""
        current = self.touched.get(name)
        if current is None:
            self.touched[name] = bitmap
        else:
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
        self._merge(BitmapKeys.event_type(etype), to_bitmap(distinct))
        for code, bitmap in group_bitmaps(camps, rows).items():
            self._merge(BitmapKeys.campaign(etype, code), bitmap)
        for day, bitmap in group_bitmaps(days, rows).items():
            self._merge(BitmapKeys.day(etype, day), bitmap)

    def _url_bitmaps(self, rows: np.ndarray, urls: np.ndarray) -> None:
        """Per click URL, who clicked it (ever): `url_contains` without a window."""
        has = urls >= 0
        for code, bitmap in group_bitmaps(urls[has], rows[has]).items():
            self._merge(BitmapKeys.click_url(code), bitmap)

    def _recent_bitmaps(self) -> Iterator[tuple[str, BitMap]]:
        """Per (type, k, day): the rows whose k-th latest event of the type is on that day.

        "At least k events since day D" (k <= RECENT, nothing later than the data) is
        then the union of the (type, k) bitmaps of the days from D on: a bitmap that
        combines with the others, not a pass over every contact. A full build groups
        all rows; an update moves only the rows whose recent days changed. The rows are
        taken `RECENT_ROWS` at a time, and the bitmaps of one type are handed out as
        soon as they are complete, to be written before the next are made; one nobody
        has any more is removed instead.
        """
        for t, etype in enumerate(EVENT_TYPES):
            changed: list[dict[str, BitMap]] = [{} for _ in range(RECENT)]

            def edit(k: int, day: int, rows: BitMap, add: bool, changed=changed, etype=etype) -> None:
                name = BitmapKeys.recent(etype, k + 1, day)
                current = changed[k].get(name)
                if current is None:
                    current = changed[k][name] = self.bitmaps.read(name)
                if add:
                    current |= rows
                else:
                    current -= rows

            for rows, before, after in self._recent_changes(t):
                for k in range(RECENT):
                    if before is None:  # a full build: nothing to move away from
                        moved = np.ones(len(rows), bool)
                    else:
                        moved = before[k] != after[k]
                        was = moved & (before[k] != NO_LAST)
                        for day, bitmap in group_bitmaps(before[k][was], rows[was]).items():
                            edit(k, day, bitmap, add=False)
                    now = moved & (after[k] != NO_LAST)
                    for day, bitmap in group_bitmaps(after[k][now], rows[now]).items():
                        edit(k, day, bitmap, add=True)
            for by_name in changed:
                for name, bitmap in by_name.items():
                    if bitmap:
                        yield name, bitmap
                    else:  # a day nobody's k-th latest event is on any more
                        self.bitmaps.entries.pop(name, None)
                by_name.clear()

    def _recent_changes(self, t: int) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """(rows, their recent days before, after) for type `t`, `RECENT_ROWS` rows at a
        time: every row with events in a full build (before: None), the rows this
        update's events touched in an update."""
        names = ("recent",)
        if self.previous is None:
            rows = np.flatnonzero(self.aggregates.column("count", t) > 0).astype(np.uint32)
        else:
            touched = self.changed[t]
            rows = np.flatnonzero(touched).astype(np.uint32) if touched is not None else np.zeros(0, np.uint32)
            self.changed[t] = None
        for start in range(0, len(rows), RECENT_ROWS):
            part = rows[start : start + RECENT_ROWS]
            after = self.aggregates.lookup(t, part, names).recent
            if self.previous is None:
                yield part, None, after
                continue
            before = self.previous.lookup(t, part, names).recent
            # the pages of the previous index read for it are not needed again
            self.previous.release()
            yield part, before, after

    def write(self) -> dict:
        """Write aggregates and dictionaries; returns the meta.json section."""
        self.bitmaps.write_layer(self._recent_bitmaps())
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
            "url_words": self.urls.values if len(self.urls.values) <= WORDS_MAX else None,
            "bitmaps": self.bitmaps.to_json(),
            BLOCK_FILES: self.blocks,
            "day_range": self.day_range,
            "campaign_days": self.campaign_days.tolist(),
            "recent_bitmaps": True,
            "aggregates": aggregates,
            "orphans": self.orphans,
        }


def by_row_latest_first(rows: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, days) sorted by row, each row's days latest first.

    Events of time-ordered files come with their days in order: read backwards they are
    latest first, and a stable radix sort by row (two 16-bit passes, linear time) keeps
    that order within each row, ~1.5x faster than sorting packed 64-bit keys, which is
    what days out of order need.
    """
    if is_sorted(days):
        rows, days = rows[::-1].astype(np.uint32, copy=False), days[::-1]
        order = np.argsort((rows & 0xFFFF).astype(np.uint16), kind="stable")
        if len(rows) and int(rows.max()) >= 1 << 16:
            order = order[np.argsort((rows[order] >> 16).astype(np.uint16), kind="stable")]
        return rows[order].astype(np.int64), days[order].astype(np.int32, copy=False)
    flipped = np.int64(0xFFFFFFFF) - (days.astype(np.int64) - int(NO_LAST))
    keys = np.sort((rows.astype(np.int64) << 32) | flipped)
    sorted_days = (np.int64(0xFFFFFFFF) - (keys & 0xFFFFFFFF) + int(NO_LAST)).astype(np.int32)
    return keys >> 32, sorted_days


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


