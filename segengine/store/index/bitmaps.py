"""Bitmaps of contact rows: building them from arrays, and a store of named bitmaps."""

from __future__ import annotations

import array
import mmap
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroaring import BitMap

from ...lazy import numpy_on_first_use
from ..checksums import check_range

if TYPE_CHECKING:
    import pyarrow as pa
from .layout import (
    DAY_US,
)

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy_on_first_use(globals())

# --- small helpers ---------------------------------------------------------------


def to_bitmap(rows: np.ndarray) -> BitMap:
    """A bitmap of sorted uint32 rows (array('I') is ~6x faster to ingest than numpy)."""
    return BitMap(array.array("I", np.ascontiguousarray(rows, dtype=np.uint32).tobytes()))


def bitmap_rows(bitmap: BitMap) -> np.ndarray:
    return np.frombuffer(bitmap.to_array(), dtype=np.uint32)


def flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (table columns and some kernels give chunked ones)."""
    # PyArrow is imported by the builders' helpers, never by a reader of the index
    import pyarrow as pa

    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def python_lower(values: pa.Array) -> pa.Array:
    """Lower-case text exactly as Python's ``str.lower`` (docs/segments.md).

    Arrow's ``utf8_lower`` agrees with Python on ASCII; only the non-ASCII values are
    lower-cased in Python (İ and the final sigma differ), one call per distinct value.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    values = flat(values).cast(pa.string())
    lowered = pc.utf8_lower(values)
    non_ascii = pc.invert(pc.fill_null(pc.string_is_ascii(values), True))
    if not pc.any(non_ascii).as_py():
        return lowered
    exact = [None if v is None else v.lower() for v in values.filter(non_ascii).to_pylist()]
    return pc.replace_with_mask(lowered, non_ascii, pa.array(exact, pa.string()))


def timestamp_micros(column: pa.Array) -> pa.Array:
    """Timestamps (any unit, any zone) as int64 UTC microseconds; dates at midnight."""
    import pyarrow as pa

    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("us"))
    column = column.cast(pa.timestamp("us", tz=column.type.tz))
    return column.cast(pa.int64())


def days_of(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(UTC day numbers int32, present mask) of a date or timestamp column."""
    import pyarrow as pa
    import pyarrow.compute as pc

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
        bitmap = self.read(name)
        if name in self.entries:
            self._cache[name] = bitmap
        return bitmap

    def read(self, name: str) -> BitMap:
        """A new copy of the named bitmap (empty when absent), not kept: a writer merging
        into thousands of bitmaps holds only the ones it is changing."""
        entry = self.entries.get(name)
        if entry is None:
            return BitMap()
        file, offset, size = entry
        data = self._maps.get(file)
        if data is None:
            # the standard library's memory map: reading bitmaps needs no numpy
            with open(self.directory / file, "rb") as f:
                data = self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        # the blocks holding this bitmap, not the whole layer: a count reads a few
        check_range(self.directory / file, offset, offset + size)
        return BitMap.deserialize(data[offset : offset + size])

    def take_over(self, other: BitmapStore) -> None:
        """Keep the bitmaps `other` (the store of an earlier index) has read that this one
        holds unchanged: the same layer file and place. A layer's name is unique to the
        layer, and a later index holds it only as a link to the same file."""
        for name, bitmap in other._cache.items():
            if name not in self._cache and self.entries.get(name) == other.entries.get(name):
                self._cache[name] = bitmap

    def names(self, prefix: str) -> Iterator[str]:
        return (name for name in self.entries if name.startswith(prefix))

    def write_layer(self, bitmaps: Mapping[str, BitMap] | Iterable[tuple[str, BitMap]]) -> str | None:
        """Write `bitmaps` as one new layer file; returns its name (None when empty).

        `bitmaps` may be a generator of (name, bitmap) pairs: each is written and let go
        before the next is made, so a writer of thousands of bitmaps holds one at a time.
        """
        items = bitmaps.items() if isinstance(bitmaps, Mapping) else bitmaps
        name = f"bitmaps-{uuid.uuid4().hex[:12]}.bin"
        out = None
        offset = 0
        try:
            for key, bitmap in items:
                if out is None:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    out = open(self.directory / name, "wb")  # noqa: SIM115 - closed below
                bitmap.run_optimize()
                data = bitmap.serialize()
                out.write(data)
                self.entries[key] = (name, offset, len(data))
                self._cache.pop(key, None)
                offset += len(data)
        finally:
            if out is not None:
                out.close()
        return None if out is None else name

    def layers(self) -> set[str]:
        return {file for file, _, _ in self.entries.values()}

    def to_json(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.entries.items()}

    @classmethod
    def from_json(cls, directory: Path, entries: dict[str, list]) -> BitmapStore:
        # The lists JSON gives are used as they are: an index holds thousands of named
        # bitmaps, and a count reads a few of them.
        return cls(directory, dict(entries))


class BitmapsAside:
    """What a build adds to its bitmaps, set aside in a file block by block and merged
    into each bitmap when the layer is written: at 10M contacts the bitmaps of every
    touched day, campaign and URL took ~1 GB held until the end of the build.

    The file lives in the index directory being built and is deleted when closed (an
    interrupted build's directory is deleted as a whole by the next writer).
    """

    def __init__(self, directory: Path):
        self.path = directory / f".aside-{uuid.uuid4().hex[:12]}.bin"
        self._file: Any = None
        self._parts: dict[str, list[tuple[int, int]]] = {}
        self._end = 0

    def add(self, bitmaps: Mapping[str, BitMap]) -> None:
        """Set these additions aside (the caller lets go of them)."""
        if not bitmaps:
            return
        if self._file is None:
            self._file = open(self.path, "w+b")  # noqa: SIM115 - closed by `close`
        for name, bitmap in bitmaps.items():
            data = bitmap.serialize()
            self._file.write(data)
            self._parts.setdefault(name, []).append((self._end, len(data)))
            self._end += len(data)
        self._file.flush()

    def names(self) -> list[str]:
        return list(self._parts)

    def __contains__(self, name: str) -> bool:
        return name in self._parts

    def merge_into(self, name: str, bitmap: BitMap) -> None:
        """Add to `bitmap` what was set aside for `name` (then forget it)."""
        for offset, size in self._parts.pop(name, ()):
            bitmap |= BitMap.deserialize(os.pread(self._file.fileno(), size, offset))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
        self._parts = {}


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


def is_sorted(values: np.ndarray) -> bool:
    """Whether `values` never decrease (one vectorised pass, no sort)."""
    return len(values) < 2 or bool(np.all(values[1:] >= values[:-1]))


def parts_sorted(parts: Sequence[np.ndarray]) -> bool:
    """Whether the concatenation of `parts` never decreases, without concatenating."""
    previous = None
    for part in parts:
        if len(part) == 0:
            continue
        if not is_sorted(part) or (previous is not None and part[0] < previous):
            return False
        previous = part[-1]
    return True


def day_order(days: np.ndarray) -> np.ndarray:
    """The stable order that sorts `days`, as a sort of packed (day, position) keys.

    Events come from time-ordered files, so the days are most often in order already:
    checking costs a pass, the sort ~30x that. Otherwise np.argsort is ~8x slower than
    np.sort on int64 (SIMD); positions fit in 32 bits because a block holds far fewer
    than 2**32 events.
    """
    if is_sorted(days):
        return np.arange(len(days), dtype=np.int64)
    offset = days.astype(np.int64) - int(days.min())
    keys = np.sort((offset << 32) | np.arange(len(days), dtype=np.int64))
    return keys & 0xFFFFFFFF


#: keys spanning fewer values than this are grouped by a radix sort (days, campaigns)
RADIX_SPAN = 1 << 16


def group_bitmaps(keys: np.ndarray, rows: np.ndarray) -> dict[int, BitMap]:
    """One bitmap of rows per distinct key, vectorised.

    Keys of a small span (a batch's days, campaign codes) are grouped by a stable radix
    sort of 16-bit offsets, which numpy runs in linear time, and each group's rows are
    sorted on their own (in cache); keys already in order (days of time-ordered events)
    and rows already in order (a scan of all contacts) skip their sort. Wider keys sort
    packed (key, row) pairs once.
    """
    if len(rows) == 0:
        return {}
    low, high = int(keys.min()), int(keys.max())
    if high - low >= RADIX_SPAN:
        return _group_packed(keys, rows)
    rows = np.asarray(rows, dtype=np.uint32)
    rows_sorted = is_sorted(rows)
    if not is_sorted(keys):
        order = np.argsort((keys - low).astype(np.uint16), kind="stable")
        keys, rows = keys[order], rows[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    ends = np.append(starts[1:], len(keys))
    return {
        int(keys[s]): to_bitmap(rows[s:e] if rows_sorted else np.sort(rows[s:e]))
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
    }


def _group_packed(keys: np.ndarray, rows: np.ndarray) -> dict[int, BitMap]:
    packed = sorted_unique((keys.astype(np.int64) << 32) | rows.astype(np.int64))
    key_of = packed >> 32
    row_of = (packed & 0xFFFFFFFF).astype(np.uint32)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(key_of)) + 1))
    ends = np.append(starts[1:], len(packed))
    return {
        int(key_of[s]): to_bitmap(row_of[s:e]) for s, e in zip(starts, ends, strict=True)
    }
