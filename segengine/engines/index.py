"""`--engine index`: segments answered from the engagement index (segengine.store.index).

A rule evaluates to a set of contact *rows* in one of two forms, whichever its data
gives for free:

* a roaring ``BitMap`` (behavioral rules from per-campaign / per-day bitmaps, status,
  lists): AND/OR/NOT and counting by status stay in compressed form;
* a numpy boolean mask over all rows (field predicates, count thresholds computed from
  the aggregates or the event store).

A group combines bitmaps with bitmaps and masks with masks, then converts between the
forms at most once (`all_of`, `any_of`). Every rule is two-valued, so negation is an
exact complement (``flip`` / ``~``) and docs/segments.md's "negative operators are true
on empty values" falls out of ``negative = not positive``.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

from pyroaring import BitMap

from ..definition.lower import (
    AllOf,
    AnyOf,
    Bucket,
    Compare,
    Constant,
    CountIn,
    DayRange,
    Events,
    HasEvents,
    Lowered,
    Not,
    Present,
)
from ..definition.nodes import ANY_CAMPAIGN, LastCampaigns
from ..errors import EngineError
from ..fields import EVENT_TYPES, STATUSES, FieldType
from ..lazy import numpy_on_first_use
from ..store.aggregates import RECENT
from ..store.index.bitmaps import bitmap_rows, runs, to_bitmap
from ..store.index.buckets import NO_BUCKET
from ..store.index.layout import BLOCK_FILES, DAY_US, BitmapKeys, day_number
from ..store.index.read import EventBlock, FieldColumn, IndexData, load_index
from ..store.manifest import Tables
from .base import Engine, Visitor, empty_by_status
from .masks import bitmap_to_mask, mask_to_bitmap

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
else:
    np = numpy_on_first_use(globals())

# numpy named, not imported: a count whose rules all answer with bitmaps never loads it
Rows = Union[BitMap, "np.ndarray"]  # noqa: UP007 - `|` cannot take a forward reference

#: Up to this many day bitmaps are OR-ed; wider windows use the first/last-day aggregates.
MAX_DAY_UNION = 31
#: Count conditions with a value above this are not checked for `recent_test`.
MAX_PROBE = 1000


# --- set algebra over the two forms ---------------------------------------------------


def to_mask(rows: Rows, n: int) -> np.ndarray:
    if isinstance(rows, BitMap):
        return bitmap_to_mask(rows, n)
    return rows


def complement(a: Rows, n: int) -> Rows:
    if isinstance(a, BitMap):
        return a.flip(0, n)
    return ~a


def split_forms(parts: Sequence[Rows]) -> tuple[list[BitMap], list[np.ndarray]]:
    bitmaps = [p for p in parts if isinstance(p, BitMap)]
    return bitmaps, [p for p in parts if not isinstance(p, BitMap)]


#: Fewer matching events than contacts / SPARSE are counted by sorting them (the answer
#: is a bitmap); more by one bincount over all contacts (the answer is a mask).
SPARSE = 8


#: Rough cost per element (ns, numpy 2 on x86) of the conversions between the forms:
#: a mask and a bitmap convert through Roaring's serialized form (`masks`), a fraction of
#: a nanosecond per contact plus a few per row of the chunks sparse enough to be stored
#: as values; gathering a bitmap's rows through a mask and building a bitmap of the
#: survivors costs per row of the bitmap.
PACK, VALUES, GATHER, TO_BITMAP = 0.15, 3, 8, 10


def all_of(parts: Sequence[Rows], n: int) -> Rows:
    """AND of a group's parts: bitmaps with bitmaps, masks with masks, then one join.

    Converting once per group instead of once per pair is what keeps mixed trees of
    bitmap rules (status, lists, activity) and mask rules (fields) cheap. The join
    takes the cheapest of three ways (`join_costs`).
    """
    bitmaps, masks = split_forms(parts)
    if not parts:
        return everyone(n)
    bitmap = intersect_all(bitmaps, n) if bitmaps else None
    mask = masks[0] if masks else None
    for other in masks[1:]:
        mask = mask & other
    if mask is None:
        return bitmap
    if bitmap is None:
        return mask
    count = int(np.count_nonzero(mask))
    costs = join_costs(n, len(bitmap), count)
    cheapest = min(costs, key=costs.get)
    if cheapest == "to_bitmap":
        return bitmap & mask_to_bitmap(mask)
    if cheapest == "gather":
        rows = bitmap_rows(bitmap)
        return to_bitmap(rows[mask[rows]])
    return mask & bitmap_to_mask(bitmap, n)


def any_of(parts: Sequence[Rows], n: int) -> Rows:
    """OR of a group's parts: bitmaps with bitmaps, masks with masks, then one join."""
    bitmaps, masks = split_forms(parts)
    bitmap = union_all(bitmaps) if bitmaps else None
    mask = masks[0] if masks else None
    for other in masks[1:]:
        mask = mask | other
    if mask is None:
        return bitmap if bitmap is not None else BitMap()
    if bitmap is None:
        return mask
    costs = join_costs(n, len(bitmap), int(np.count_nonzero(mask)))
    if costs["to_bitmap"] < costs["to_mask"]:
        return bitmap | mask_to_bitmap(mask)
    return mask | bitmap_to_mask(bitmap, n)


def join_costs(n: int, in_bitmap: int, in_mask: int) -> dict[str, float]:
    """Estimated cost of joining a bitmap and a mask: turn the mask into a bitmap, gather
    the bitmap's rows through the mask (AND only), or turn the bitmap into a mask."""
    return {
        "to_bitmap": PACK * n + VALUES * sparse_rows(in_mask, n),
        "gather": GATHER * in_bitmap + TO_BITMAP * in_bitmap * in_mask / max(n, 1),
        "to_mask": PACK * n + VALUES * sparse_rows(in_bitmap, n),
    }


def sparse_rows(rows: int, n: int) -> int:
    """About how many of `rows` (spread over `n`) sit in chunks stored as values."""
    return rows if rows * 16 < n else 0


def union_all(bitmaps: Sequence[BitMap]) -> BitMap:
    """The union; one bitmap is returned as it is (rows are never modified in place).

    `BitMap.union` ORs chunks into bitsets and turns sparse ones back into values at the
    end, which costs per chunk: bitmaps that are all sparse (fewer rows in all than a
    chunk's 65,536 / SPARSE_CHUNK on average: a few days' events) merge their values
    pairwise about three times faster.
    """
    if len(bitmaps) <= 1:
        return bitmaps[0] if bitmaps else BitMap()
    rows = sum(len(b) for b in bitmaps)
    span = max((b.max() + 1 for b in bitmaps if b), default=0)
    if len(bitmaps) <= FEW_SPARSE and rows * SPARSE_CHUNK < span:
        result = bitmaps[0]
        for other in bitmaps[1:]:
            result = result | other
        return result
    return BitMap.union(*bitmaps)


def intersect_all(bitmaps: Sequence[BitMap], n: int) -> BitMap:
    """The intersection, one pair at a time: a chain of `&` is a few times faster than
    `BitMap.intersection(*bitmaps)` on bitmaps of millions of rows.

    Roaring stores a 65,536-row chunk holding fewer than 4,096 rows as sorted values,
    and turning an `&` of two dense chunks into values costs per row kept (about a
    millisecond per 500,000). Among `n` contacts, the dense bitmaps (at least one row in
    SPARSE_CHUNK) are intersected first, largest first, so the result turns sparse
    once, at the end, and the sparse ones then go smallest first.
    """
    dense = sorted((b for b in bitmaps if len(b) * SPARSE_CHUNK >= n), key=len, reverse=True)
    ordered = dense + sorted((b for b in bitmaps if len(b) * SPARSE_CHUNK < n), key=len)
    result = ordered[0]
    for other in ordered[1:]:
        result = result & other
    return result


#: A Roaring chunk of 65,536 rows holds its rows as values below 4,096 (1 in 16).
SPARSE_CHUNK = 16
#: Up to this many sparse bitmaps are merged pairwise (more: each merge copies the
#: growing result again, and `BitMap.union` wins).
FEW_SPARSE = 4


def everyone(n: int) -> BitMap:
    bitmap = BitMap()
    bitmap.add_range(0, n)
    return bitmap


# --- days ---------------------------------------------------------------------------

def day_numbers(low: dt.date | None, high: dt.date | None) -> tuple[int | None, int | None]:
    """A lowered day range as inclusive day numbers (None bound: open)."""
    return (
        None if low is None else day_number(low),
        None if high is None else day_number(high),
    )


def day32(day: int) -> np.int32:
    """A day as int32: searching an int32 array for an int64 converts the whole array."""
    info = np.iinfo(np.int32)
    return np.int32(min(max(day, info.min), info.max))


def in_range(days: np.ndarray, low: int | None, high: int | None) -> np.ndarray:
    mask = np.ones(len(days), dtype=bool) if low is None else days >= low
    if high is not None:
        mask &= days <= high
    return mask


# --- field rules ------------------------------------------------------------------

def compute() -> Any:
    """pyarrow.compute, imported by the first text or URL test: a count of behaviour,
    lists, statuses, numbers or dates never loads PyArrow."""
    import pyarrow.compute as pc

    return pc


def text_in(d: pa.Array, v: tuple) -> pa.Array:
    import pyarrow as pa

    return compute().is_in(d, value_set=pa.array(list(v), pa.string()))


#: The same operators on a dictionary as Python text (exact alike: a substring of UTF-8
#: bytes is a substring of code points), for the small dictionaries stored as JSON.
WORD_TESTS: dict[str, Callable[[str, tuple], bool]] = {
    "is": lambda w, v: w == v[0],
    "contains": lambda w, v: v[0] in w,
    "starts_with": lambda w, v: w.startswith(v[0]),
    "ends_with": lambda w, v: w.endswith(v[0]),
    "in": lambda w, v: w in v,
}


def word_hits(words: list[str], op: str, values: tuple) -> np.ndarray:
    """Per dictionary entry, whether it passes the text operator."""
    test = WORD_TESTS[op]
    return np.fromiter((test(w, values) for w in words), dtype=bool, count=len(words))


#: Positive text operators, on the lower-cased dictionary (values are lower-cased).
TEXT_OPS: dict[str, Callable[[pa.Array, tuple], pa.Array]] = {
    "is": lambda d, v: compute().equal(d, v[0]),
    "contains": lambda d, v: compute().match_substring(d, v[0]),
    "starts_with": lambda d, v: compute().starts_with(d, v[0]),
    "ends_with": lambda d, v: compute().ends_with(d, v[0]),
    "in": text_in,
}

NUMBER_OPS: dict[str, Callable[[np.ndarray, tuple], np.ndarray]] = {
    "eq": lambda x, v: x == v[0],
    "gt": lambda x, v: x > v[0],
    "gte": lambda x, v: x >= v[0],
    "lt": lambda x, v: x < v[0],
    "lte": lambda x, v: x <= v[0],
    "between": lambda x, v: (x >= v[0]) & (x <= v[1]),
    "in": lambda x, v: np.isin(x, np.array(v, dtype=np.float64)),
}

#: Status and list operators answer from per-value bitmaps (see `status_rows`, `list_rows`).
BITMAP_OPS: dict[FieldType, tuple[str, ...]] = {
    FieldType.ENUM: ("is", "in"),
    FieldType.SET: ("includes", "includes_all"),
}

#: Field types whose `Compare` tests `row_test` runs on a column.
COLUMN_COMPARES = frozenset({FieldType.NUMBER, FieldType.BOOLEAN, FieldType.TEXT})

#: Field types whose positive tests are already false on empty values (text: the empty
#: code is in no dictionary match; boolean: -1 equals neither 0 nor 1), so the extra
#: pass that ANDs the present mask is skipped.
EMPTY_NEVER_MATCHES = frozenset({FieldType.TEXT, FieldType.BOOLEAN})

def count_in(low: int, high: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The test of a lowered count range, over an array of counts."""
    if high is None:
        return lambda n: n >= low
    return lambda n: (n >= low) & (n <= high)


#: How many cumulative counts `CountMarks` keeps per event type: a window's count then
#: reads at most 2/MARKS of the type's events besides two per-contact arrays.
MARKS = 16


@dataclass
class CountMarks:
    """Per-contact counts of one event type's events before each of a few days.

    The days split the type's events into MARKS runs of about equal size, so the count
    before any day is the mark at or before it plus the events of at most one run.
    """

    n: int
    slices: list[tuple[np.ndarray, np.ndarray]]  # per block: rows, days (sorted by day)
    days: np.ndarray  # the mark days, ascending
    counts: list[np.ndarray]  # counts[i]: per row, events on days < days[i]
    last_day: int | None

    @classmethod
    def build(cls, n: int, slices: list[tuple[np.ndarray, np.ndarray]]) -> CountMarks:
        every = np.concatenate([np.asarray(d) for _, d in slices]) if slices else np.zeros(0, np.int32)
        if len(every) == 0:
            return cls(n, slices, np.zeros(0, np.int64), [], None)
        ordered = np.sort(every)
        picks = ordered[(np.arange(1, MARKS) * len(ordered)) // MARKS]
        days = np.unique(picks.astype(np.int64))
        counts, running, previous = [], np.zeros(n, np.int64), None
        for day in days:
            running = running + cls._between(n, slices, previous, int(day))
            dtype = np.uint16 if running.max(initial=0) < 2**16 else np.uint32
            counts.append(running.astype(dtype))
            previous = int(day)
        return cls(n, slices, days, counts, int(ordered[-1]))

    @staticmethod
    def _between(n: int, slices: list, low: int | None, high: int) -> np.ndarray:
        """Per row, the events on days in [low, high) (low None: from the first)."""
        parts = []
        for rows, days in slices:
            lo = 0 if low is None else int(np.searchsorted(days, day32(low), side="left"))
            hi = int(np.searchsorted(days, day32(high), side="left"))
            if hi > lo:
                parts.append(np.asarray(rows[lo:hi]))
        if not parts:
            return np.zeros(n, np.int64)
        return np.bincount(np.concatenate(parts), minlength=n)

    def before(self, day: int) -> np.ndarray:
        """Per row, the events on days before `day` (int64)."""
        i = int(np.searchsorted(self.days, day, side="right")) - 1
        if i < 0:
            return self._between(self.n, self.slices, None, day)
        mark = self.counts[i].astype(np.int64)
        if int(self.days[i]) == day:
            return mark
        return mark + self._between(self.n, self.slices, int(self.days[i]), day)


#: How many cumulative unions `Cumulative` keeps: the union of any first run of its
#: bitmaps then reads one kept union and at most 1/(2 * MARK_UNIONS) of the bitmaps.
MARK_UNIONS = 32


@dataclass
class Cumulative:
    """Unions of the first c of a sequence of disjoint bitmaps, for any c.

    Every `step`-th union is kept (`marks`); the union of the first c is the nearest
    mark below with the bitmaps up to c added, or the nearest above with the bitmaps
    from c removed (exact because the bitmaps are disjoint): a contact's date is on
    one day, its value in one chunk of the sorted values.
    """

    bitmaps: list[BitMap]
    step: int
    marks: list[BitMap]  # marks[k]: the union of bitmaps[: (k + 1) * step] (the last: all)
    tails: dict[int, BitMap] = field(default_factory=dict)  # m -> union of bitmaps[m:]

    @classmethod
    def build(cls, bitmaps: list[BitMap]) -> Cumulative:
        step = max(1, -(-len(bitmaps) // MARK_UNIONS))
        marks, running = [], BitMap()
        for start in range(0, len(bitmaps), step):
            running = running | union_all(bitmaps[start : start + step])
            marks.append(running)
        return cls(bitmaps, step, marks)

    @property
    def everyone(self) -> BitMap:
        """The union of all the bitmaps."""
        return self.marks[-1] if self.marks else BitMap()

    def between(self, lo: int, hi: int) -> BitMap:
        """The union of bitmaps[lo:hi].

        A few bitmaps are their union; a run from the start is `first`, one to the end
        `rest`. Otherwise it is the union up to `hi` less the one up to `lo`, which costs
        per row of the latter where that is sparse (Roaring's values), so when it holds
        fewer rows than the rest, it is the union up to `hi` and `rest(lo)` instead,
        dense with dense.
        """
        if hi - lo <= FEW_CHUNKS:
            return union_all(self.bitmaps[lo:hi])
        if not lo:
            return self.first(hi)
        if hi >= len(self.bitmaps):
            return self.rest(lo)
        upto = self.first(hi)
        near = self.marks[lo // self.step - 1] if lo >= self.step else BitMap()
        if len(near) * 2 >= len(self.everyone):
            return upto - self.first(lo)
        return upto & self.rest(lo)

    def rest(self, c: int) -> BitMap:
        """The union of bitmaps[c:]: from the nearest kept union, the rows after it
        (`tails`, kept on first use) with the bitmaps in between added or removed."""
        m = min(round(c / self.step) * self.step, len(self.bitmaps))
        tail = self.tails.get(m)
        if tail is None:
            tail = BitMap() if m >= len(self.bitmaps) else self.everyone - self.first(m)
            self.tails[m] = tail
        if m > c:
            return union_all([tail, *self.bitmaps[c:m]])
        if m < c:
            return tail - union_all(self.bitmaps[m:c])
        return tail

    def first(self, c: int, add: BitMap | None = None, remove: BitMap | None = None) -> BitMap:
        """The union of bitmaps[:c], with `add` (rows of bitmap c) added or `remove`
        (rows of bitmap c - 1) taken out: the caller's partial bitmap at the edge."""
        k = c // self.step
        below = c - k * self.step  # bitmaps to add to the mark below (k - 1)
        top = min((k + 1) * self.step, len(self.bitmaps))
        if below and k < len(self.marks) and top - c < below:
            removed = self.bitmaps[c:top] + ([remove] if remove is not None else [])
            upto = self.marks[k] - union_all(removed) if removed else self.marks[k]
            return upto | add if add is not None else upto
        parts = [self.marks[k - 1]] if k else []
        parts += self.bitmaps[k * self.step : c]
        if remove is not None:
            return union_all(parts) - remove
        if add is not None:
            parts.append(add)
        return union_all(parts)


@dataclass
class DayUnions:
    """A date field's day bitmaps as cumulative unions: the rows of any run of days are
    the rows up to its end less those before its start (`Cumulative`), instead of one
    bitmap per day (a birthday "before 1990" spans thousands)."""

    days: np.ndarray
    unions: Cumulative

    @classmethod
    def build(cls, days: np.ndarray, bitmaps: list[BitMap]) -> DayUnions:
        return cls(days, Cumulative.build(bitmaps))

    def between(self, lo: int, hi: int) -> BitMap:
        """The union of day bitmaps lo..hi-1 (positions in `days`)."""
        return self.unions.between(lo, hi)


#: How many days' cumulative counts `Evaluator.counts_before` keeps per event type (one
#: array of 2 or 4 bytes per contact each).
KEPT_DAYS = 4


class KeptDays:
    """The last few days' arrays, computed on first ask (oldest dropped first)."""

    def __init__(self) -> None:
        self.arrays: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()

    def get(self, day: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self.lock:
            found = self.arrays.get(day)
        if found is not None:
            return found
        found = compute()
        with self.lock:
            self.arrays[day] = found
            while len(self.arrays) > KEPT_DAYS:
                del self.arrays[next(iter(self.arrays))]
        return found


def compact(counts: np.ndarray) -> np.ndarray:
    """Non-negative counts in the smallest unsigned type of 2 or 4 bytes that holds them."""
    return counts.astype(np.uint16 if counts.max(initial=0) < 2**16 else np.uint32)


#: Up to this many bitmap steps (campaigns x bound^2) a count over campaigns is answered
#: by `Evaluator.campaign_count_test`; beyond it the events are counted.
MAX_LEVEL_STEPS = 2000


class CampaignLevels:
    """One campaign's contacts with at least 1, 2, ... events of one type, as bitmaps."""

    def __init__(self, once: BitMap, repeated_rows: np.ndarray, repeated_counts: np.ndarray):
        self.once = once  # the campaign's bitmap of the type: at least one event
        self.rows = repeated_rows  # rows with two events or more, sorted
        self.counts = repeated_counts
        self.levels: dict[int, BitMap] = {}

    def at_least(self, k: int) -> BitMap:
        if k == 1:
            return self.once
        found = self.levels.get(k)
        if found is None:
            found = self.levels[k] = to_bitmap(self.rows[self.counts >= k])
        return found


#: A column is sorted into `ValueOrder` on the ask after this many (a one-shot count
#: pays one pass, not a sort of every contact).
ORDER_AFTER = 1
#: `ValueOrder` cuts the sorted rows into about this many bitmaps, at least FINE_ROWS
#: rows each, each cut at a change of value where one is near.
FINE_CHUNKS, FINE_ROWS = 1024, 1024
#: A run of values covering at most this many whole chunks is their union (cheaper than
#: the difference of two cumulative unions, and as sparse as the rows themselves).
FEW_CHUNKS = 3
#: Fewer rows than this are tested one by one even where a column's sorted rows exist
#: (a range of them costs a few bitmap unions, a fraction of a millisecond).
ORDERED_ROWS = 50_000


@dataclass
class ValueOrder:
    """A column's rows with a value, sorted by value, as bitmaps of consecutive chunks.

    The rows of a value range are a run of the sorted rows: those before its end less
    those before its start. Chunks end where the value changes whenever a change is
    near, so a column of few distinct values (a score, a boolean, a count) answers any
    range from whole chunks, and any other takes at most one chunk's rows made into a
    bitmap; the chunks' cumulative unions (`Cumulative`) make the rows before a
    position a few bitmap unions whatever the number of contacts, where a compare
    passes over all of them.
    """

    keys: np.ndarray  # the distinct values, ascending
    bounds: np.ndarray  # rows[bounds[k] : bounds[k + 1]] have value keys[k]
    rows: np.ndarray  # the rows, by value (ascending within a value)
    starts: np.ndarray  # chunk c is rows[starts[c] : starts[c + 1]]
    chunks: Cumulative

    @classmethod
    def build(cls, values: np.ndarray, has: np.ndarray) -> ValueOrder:
        rows = np.flatnonzero(has).astype(np.uint32)
        keys, bounds, order = sorted_runs(values[rows])
        rows = rows[order]
        starts = chunk_starts(bounds, max(FINE_ROWS, -(-len(rows) // FINE_CHUNKS)))
        # a stable sort leaves a value's rows ascending: only a chunk of several values
        # is sorted again
        single = np.searchsorted(bounds, starts[:-1], side="right") == np.searchsorted(
            bounds, starts[1:], side="left")
        bitmaps = [
            to_bitmap(rows[a:b] if one else np.sort(rows[a:b]))
            for a, b, one in zip(starts[:-1].tolist(), starts[1:].tolist(), single.tolist(),
                                 strict=True)
        ]
        return cls(keys, bounds, rows, starts, Cumulative.build(bitmaps))

    @property
    def everyone(self) -> BitMap:
        """The rows with a value."""
        return self.chunks.everyone

    def before(self, p: int) -> BitMap:
        """The rows of the first `p` values."""
        if p <= 0:
            return BitMap()
        if p >= len(self.rows):
            return self.everyone
        c = int(np.searchsorted(self.starts, p, side="right")) - 1
        start, end = int(self.starts[c]), int(self.starts[c + 1])
        if p == start:
            return self.chunks.first(c)
        if p - start <= end - p:
            return self.chunks.first(c, add=to_bitmap(np.sort(self.rows[start:p])))
        return self.chunks.first(c + 1, remove=to_bitmap(np.sort(self.rows[p:end])))

    def run(self, p: int, q: int) -> BitMap:
        """The rows of values p..q-1 (positions in the order): whole chunks from their
        cumulative unions (`Cumulative.between`), others less or plus part of a chunk."""
        if q <= p:
            return BitMap()
        first, last = np.searchsorted(self.starts, (p, q))
        if last < len(self.starts) and self.starts[first] == p and self.starts[last] == q:
            return self.chunks.between(int(first), int(last))
        if q >= len(self.rows):
            return self.everyone - self.before(p) if p else self.everyone
        upto = self.before(q)
        return upto - self.before(p) if p else upto

    def position(self, value: Any, side: str) -> int:
        """Where `value` would go in the sorted values (a bound outside an integer type's
        range: before or after them all)."""
        dtype = self.keys.dtype
        if dtype.kind in "iu" and not isinstance(value, np.floating | float):
            info = np.iinfo(dtype)
            if int(value) < info.min:
                return 0
            if int(value) > info.max:
                return len(self.rows)
        # the key in the values' own type: a key of another type converts the whole array
        return int(self.bounds[np.searchsorted(self.keys, dtype.type(value), side=side)])

    def compare(self, op: str, values: tuple) -> BitMap:
        """`NUMBER_OPS[op]` on the rows with a value (NaN values and bounds excluded)."""
        at = self.position
        if op == "in":
            return union_all([self.run(at(v, "left"), at(v, "right")) for v in values])
        v = values[0]
        ranges = {
            "eq": lambda: (at(v, "left"), at(v, "right")),
            "gt": lambda: (at(v, "right"), len(self.rows)),
            "gte": lambda: (at(v, "left"), len(self.rows)),
            "lt": lambda: (0, at(v, "left")),
            "lte": lambda: (0, at(v, "right")),
            "between": lambda: (at(v, "left"), at(values[1], "right")),
        }
        return self.run(*ranges[op]())


def sorted_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct values ascending, where each one's run starts (and the end), the
    positions that sort `values` stably).

    Whole numbers within a span of 65,536 (scores, counts, booleans, days) are sorted as
    16-bit offsets, which numpy radix-sorts in one pass over the data (about ten times
    faster than a comparison sort of 10M values), and their runs are counted, not found.
    """
    kind = values.dtype.kind
    if len(values) and kind in "iuf":
        exact = float if kind == "f" else int
        low, high = exact(values.min()), exact(values.max())
        if high - low < 2**16 and (kind != "f" or bool(np.all(values == np.floor(values)))):
            # in the values' own type: a difference below the span cannot overflow it
            offsets = (values - values.dtype.type(low)).astype(np.uint16)
            counts = np.bincount(offsets)
            present = np.flatnonzero(counts)
            keys = (values.dtype.type(low) + present.astype(values.dtype)).astype(values.dtype)
            bounds = np.concatenate(([0], np.cumsum(counts[present]))).astype(np.int64)
            return keys, bounds, np.argsort(offsets, kind="stable")
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    changes = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    firsts = np.concatenate(([0], changes)).astype(np.int64) if len(ordered) else changes
    bounds = np.concatenate((firsts, [len(ordered)])).astype(np.int64)
    return ordered[firsts], bounds, order


def chunk_starts(bounds: np.ndarray, fine: int) -> np.ndarray:
    """Chunk bounds over sorted values whose runs start at `bounds` (and end at its
    last): the runs themselves when there are at most FINE_CHUNKS; otherwise about every
    `fine` positions, each moved to the next change of value when one comes within
    `fine` positions (a run of one value longer than that is cut where it falls)."""
    n = int(bounds[-1]) if len(bounds) else 0
    if len(bounds) - 1 <= FINE_CHUNKS:
        # few distinct values (a score, employees, a boolean, a count, days): one chunk
        # per value. A range's bounds are always changes of value, so no chunk is ever
        # cut, and the cumulative unions then fall on every value or every few.
        return np.asarray(bounds, dtype=np.int64)
    targets = np.arange(fine, n, fine)
    changes = bounds[1:]  # every run's end, the last being n
    moved = changes[np.searchsorted(changes, targets, side="left")]
    cuts = np.where(moved - targets < fine, moved, targets)
    return np.unique(np.concatenate(([0], cuts[cuts < n], [n]))).astype(np.int64)


@dataclass
class UrlCounts:
    """Per click URL code, the rows that clicked it (sorted) and how many times."""

    starts: np.ndarray  # starts[code]..starts[code + 1]: that URL's runs
    rows: np.ndarray
    counts: np.ndarray

    @classmethod
    def build(cls, blocks: list[tuple[np.ndarray, np.ndarray]]) -> UrlCounts:
        rows = np.concatenate([np.asarray(r) for r, _ in blocks]) if blocks else np.zeros(0, np.uint32)
        urls = np.concatenate([np.asarray(u) for _, u in blocks]) if blocks else np.zeros(0, np.int32)
        has = urls >= 0
        keys = np.sort((urls[has].astype(np.int64) << 32) | rows[has].astype(np.int64))
        distinct, counts = runs(keys)
        codes = distinct >> 32
        size = int(codes[-1]) + 1 if len(codes) else 0
        starts = np.searchsorted(codes, np.arange(size + 1))
        return cls(starts, (distinct & 0xFFFFFFFF).astype(np.uint32), counts.astype(np.int64))

    def of(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (row, count) runs of the URLs `codes` (a row repeats once per URL)."""
        codes = codes[codes < len(self.starts) - 1]
        spans = [(int(self.starts[c]), int(self.starts[c + 1])) for c in codes]
        if not spans:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        return (np.concatenate([self.rows[a:b] for a, b in spans]),
                np.concatenate([self.counts[a:b] for a, b in spans]))


@dataclass
class Evaluator(Visitor[Rows]):
    """Evaluates lowered trees over one index at one `as_of`.

    `fallback`, when given, answers a node the index does not `support` (the planner's
    DuckDB path) as a boolean mask; without it such a node is an `EngineError`.
    """

    index: IndexData
    tables: Tables
    as_of: dt.date
    fallback: Callable[[Any], np.ndarray] | None = None
    #: answers of this evaluation's nodes: a rule or group that segments of a union (or
    #: branches of a tree) share is evaluated once; answers are never modified in place
    answers: dict[Any, Rows] = field(default_factory=dict, repr=False)

    engine_name = "index"
    COMPARE_OPS = {
        FieldType.TEXT: TEXT_OPS,
        FieldType.NUMBER: NUMBER_OPS,
        FieldType.BOOLEAN: ("is",),
        **BITMAP_OPS,
    }

    @property
    def n(self) -> int:
        return self.index.n

    def supports(self, node: Any) -> bool:
        """Field tests need the field in the index (status and lists always are)."""
        if isinstance(node, (Present, Compare, DayRange)) and node.type not in BITMAP_OPS:
            column = self.index.fields.get(node.field)
            return column is not None and column.type is node.type
        return True

    def unsupported_reason(self, node: Any) -> str:
        return f"field {node.field!r} ({node.type}) is not in the index"

    def visit(self, node: Any) -> Rows:
        """The rows matching `node`, once per evaluation (`answers`)."""
        try:
            found = self.answers.get(node)
        except TypeError:  # a tree built by hand with an unhashable value
            return self.answer(node)
        if found is None:
            found = self.answers[node] = self.answer(node)
        return found

    def answer(self, node: Any) -> Rows:
        """The rows matching `node`; what the index lacks goes to `fallback`."""
        if not self.supports(node):
            if self.fallback is None:
                raise EngineError(f"--engine index cannot answer this: {self.unsupported_reason(node)}")
            return self.fallback(node)
        return super().visit(node)

    def negate(self, rows: Rows) -> Rows:
        return complement(rows, self.n)

    def visit_all_of(self, node: AllOf) -> Rows:
        """The AND of the rules; the field tests that need a pass over every contact go
        last, and when the others leave few rows they test only those rows."""
        per_row = [rule for rule in node.rules if self.row_testable(rule)]
        first = [rule for rule in node.rules if not self.row_testable(rule)]
        if per_row and first and self.at_most(first) * SPARSE >= self.n:
            # too many rows left for tests one by one: one intersection of them all
            # (`intersect_all` orders it)
            return self.all_of_rules(first + per_row)
        parts = [self.all_of_rules(first)] if first else []
        if per_row and parts:
            narrowed = parts[0]
            if isinstance(narrowed, BitMap) and self.row_tests_pay(len(narrowed), per_row):
                rows = bitmap_rows(narrowed)
                for rule in per_row:
                    rows = rows[self.row_test(rule, rows)]
                return to_bitmap(rows)
        return all_of(parts + [self.visit(rule) for rule in per_row], self.n)

    def few_statuses(self, node: Any, rows: Rows) -> bool:
        """Whether `node` is a status rule matching less than half the contacts: negated,
        the other contacts (dense, `other_statuses`) intersect faster than its rows
        (sparse) subtract."""
        return (type(node) is Compare and node.type is FieldType.ENUM
                and len(rows) * 2 < self.n)

    def at_most(self, rules: Sequence[Any]) -> int:
        """An upper bound of the rows matching all of `rules`: the fewest of a positive
        rule's (every contact when none is a bitmap)."""
        sizes = [len(rows) for rows in (self.visit(rule) for rule in rules if type(rule) is not Not)
                 if isinstance(rows, BitMap)]
        return min(sizes, default=self.n)

    def all_of_rules(self, rules: Sequence[Any]) -> Rows:
        """The AND of `rules`, where a negated rule answered by a bitmap is taken away
        from the others (one difference) instead of complemented and intersected."""
        parts, removed = [], []
        for rule in rules:
            if type(rule) is Not:
                inner = self.visit(rule.rule)
                if self.few_statuses(rule.rule, inner):
                    parts.append(self.other_statuses(rule.rule.values, inner))
                    continue
                if isinstance(inner, BitMap):
                    removed.append(inner)
                    continue
                parts.append(self.negate(inner))
            else:
                parts.append(self.visit(rule))
        if not removed:
            return all_of(parts, self.n)
        gone = union_all(removed)
        if not parts:
            return complement(gone, self.n)
        kept = all_of(parts, self.n)
        if isinstance(kept, BitMap):
            return kept - gone
        return all_of([kept, complement(gone, self.n)], self.n)

    # --- field tests on some rows (the planner's selective path) ----------------------

    def row_testable(self, node: Any) -> bool:
        """Whether `row_test` answers `node`: a field test whose index form is a column
        (numbers, booleans, dates without day bitmaps, text without value bitmaps)."""
        if type(node) is Not:
            return self.row_testable(node.rule)
        if not isinstance(node, (Compare, Present, DayRange)) or node.type in BITMAP_OPS:
            return False
        if isinstance(node, Compare) and node.type not in COLUMN_COMPARES:
            return False
        if not self.supports(node):
            return False
        column = self.index.fields[node.field]
        if column.type is FieldType.TEXT:
            return not column.value_bitmaps and not isinstance(node, DayRange)
        return not (isinstance(node, DayRange) and column.bitmap_days is not None)

    def row_tests_pay(self, rows: int, rules: Sequence[Any]) -> bool:
        """Whether testing `rules` on `rows` rows one by one beats answering them over all
        contacts: a pass over every contact costs more than a gather of a few of them,
        a range of a column's sorted rows (`ValueOrder`) less than a gather of many.

        Where a column would be sorted (it was asked before), a test on many rows
        counts as an ask, so the next evaluation answers it from the sorted rows.
        """
        if rows * SPARSE >= self.n:
            return False
        if rows < ORDERED_ROWS:
            return True
        keys = [self.order_key(rule) for rule in rules]
        due = [self.asked(key) for key in keys if key is not None]
        return len(due) < len(keys) or not all(due)

    def order_key(self, node: Any) -> tuple | None:
        """The `index.derived` key of the sorted rows that answer a row-testable rule
        (None: a text rule, answered by its dictionary)."""
        if type(node) is Not:
            return self.order_key(node.rule)
        column = self.index.fields[node.field]
        if column.type is FieldType.TEXT or (
            isinstance(node, Present) and column.type is not FieldType.BOOLEAN
        ):
            return None
        return ("value-order", column.name)

    def row_test(self, node: Any, rows: np.ndarray) -> np.ndarray:
        """`node` on the contacts `rows` only, as a mask over `rows` (exactly the rows
        `visit` would give, restricted)."""
        if type(node) is Not:
            return ~self.row_test(node.rule, rows)
        column = self.index.fields[node.field]
        arrays = column.arrays
        if column.type is FieldType.TEXT:
            empty = len(column.words) if column.words is not None else len(column.lower)
            codes = np.asarray(arrays["codes"])[rows]
            if isinstance(node, Present):
                return codes != empty
            words = column.words
            if words is not None:
                hits = word_hits(words, node.op, node.values)
            else:
                hits = TEXT_OPS[node.op](column.lower, node.values)
                hits = compute().fill_null(hits, False).to_numpy(zero_copy_only=False)
            return np.append(hits, False)[codes]
        if column.type is FieldType.BOOLEAN:
            values = np.asarray(arrays["values"])[rows]
            if isinstance(node, Present):
                return values >= 0
            return values == int(bool(node.values[0]))
        present = np.asarray(arrays["present"])[rows]
        if isinstance(node, Present):
            return present
        if isinstance(node, DayRange):
            low, high = day_numbers(node.low, node.high)
            return in_range(np.asarray(arrays["days"])[rows], low, high) & present
        return NUMBER_OPS[node.op](np.asarray(arrays["values"])[rows], node.values) & present

    def visit_any_of(self, node: AnyOf) -> Rows:
        return any_of([self.visit(rule) for rule in node.rules], self.n)

    def visit_constant(self, node: Constant) -> Rows:
        return everyone(self.n) if node.value else BitMap()

    # --- field rules -----------------------------------------------------------------

    def visit_present(self, node: Present) -> Rows:
        if node.type is FieldType.SET:
            return self.index.contact_bitmaps.get(BitmapKeys.IN_A_LIST)
        if node.type is FieldType.ENUM:
            return self.status_rows(STATUSES)
        return self.present(self.index.fields[node.field])

    def visit_compare(self, node: Compare) -> Rows:
        if node.type is FieldType.ENUM:
            return self.status_rows(node.values)
        if node.type is FieldType.SET:
            return self.list_rows(node.op, node.values)
        column = self.index.fields[node.field]
        if column.type is FieldType.NUMBER and not any(np.isnan(v) for v in node.values):
            order = self.value_order(column, "values")
            if order is not None:
                return order.compare(node.op, node.values)
        if column.type is FieldType.BOOLEAN:
            order = self.value_order(column, "values")
            if order is not None:
                return order.compare("eq", (int(bool(node.values[0])),))
        matched = self.positive(column, node.op, node.values)
        if column.type not in EMPTY_NEVER_MATCHES and isinstance(matched, np.ndarray):
            matched &= self.present(column)  # bitmaps hold present rows only
        return matched

    def visit_day_range(self, node: DayRange) -> Rows:
        column = self.index.fields[node.field]
        low, high = day_numbers(node.low, node.high)
        if column.bitmap_days is not None:
            return self.days_union(column, low, high)
        order = self.value_order(column, "days")
        if order is not None:
            return order.run(
                0 if low is None else order.position(day32(low), "left"),
                len(order.rows) if high is None else order.position(day32(high), "right"),
            )
        matched = in_range(np.asarray(column.arrays["days"]), low, high)
        return matched & np.asarray(self.present(column))

    def value_order(self, column: FieldColumn, values: str) -> ValueOrder | None:
        """The column's rows sorted by value, once it has been asked ORDER_AFTER times
        (a boolean's empty value, -1, and a number's NaN are no value)."""

        def source() -> tuple[np.ndarray, np.ndarray]:
            data = np.asarray(column.arrays[values])
            if column.type is FieldType.BOOLEAN:
                return data, data >= 0
            has = np.asarray(column.arrays["present"])
            return data, has & ~np.isnan(data) if data.dtype.kind == "f" else has

        return self.ordered(("value-order", column.name), source)

    def asked(self, key: tuple) -> bool:
        """Count an ask of the sorted rows under `key`; whether they are due (built, or
        asked ORDER_AFTER times before)."""
        found = self.index.derived.get(key)
        if isinstance(found, ValueOrder):
            return True
        asked = int(found or 0)
        if asked < ORDER_AFTER:
            self.index.derived[key] = asked + 1
            return False
        return True

    def ordered(
        self, key: tuple, source: Callable[[], tuple[np.ndarray, np.ndarray]]
    ) -> ValueOrder | None:
        """The rows sorted by value of `source()` (values, and which rows have one), kept
        with the index under `key` from its ORDER_AFTER + 1-th ask on (None before)."""
        if not self.asked(key):
            return None
        found = self.index.derived.get(key)
        if isinstance(found, ValueOrder):
            return found
        values, has = source()
        order = self.index.derived[key] = ValueOrder.build(values, has)
        return order

    def present(self, column: FieldColumn) -> Rows:
        if column.type is FieldType.TEXT:
            words = column.words  # the JSON copy, when small: no PyArrow for its length
            empty = len(words) if words is not None else len(column.lower)
            if column.value_bitmaps:
                return complement(self.value_bitmap(column, empty), self.n)
            return np.asarray(column.arrays["codes"]) != empty
        if column.type is FieldType.BOOLEAN:
            order = self.value_order(column, "values")
            if order is not None:
                return order.everyone
            return np.asarray(column.arrays["values"]) >= 0
        return np.asarray(column.arrays["present"])

    def days_union(self, column: FieldColumn, low: int | None, high: int | None) -> BitMap:
        """Rows whose date falls on a day in [low, high], from the field's day bitmaps."""
        days = column.bitmap_days
        lo = 0 if low is None else int(np.searchsorted(days, low, side="left"))
        hi = len(days) if high is None else int(np.searchsorted(days, high, side="right"))
        if hi - lo <= MAX_DAY_UNION:
            return union_all([self.value_bitmap(column, int(day)) for day in days[lo:hi]])
        return self.day_unions(column).between(lo, hi)

    def day_unions(self, column: FieldColumn) -> DayUnions:
        """The field's cumulative day unions (built on first use, kept with the index)."""
        key = ("day-unions", column.name)
        unions = self.index.derived.get(key)
        if unions is None:
            bitmaps = [self.value_bitmap(column, int(day)) for day in column.bitmap_days]
            unions = self.index.derived[key] = DayUnions.build(column.bitmap_days, bitmaps)
        return unions

    def value_bitmap(self, column: FieldColumn, code: int) -> BitMap:
        return self.index.contact_bitmaps.get(BitmapKeys.field_value(column.name, code))

    def positive(self, column: FieldColumn, op: str, values: tuple) -> Rows:
        """A positive operator's test (callers AND it with `present`)."""
        if column.type is FieldType.TEXT:
            return self.text_test(column, op, values)
        if column.type is FieldType.NUMBER:
            return NUMBER_OPS[op](np.asarray(column.arrays["values"]), values)
        return np.asarray(column.arrays["values"]) == int(bool(values[0]))  # boolean "is"

    def text_test(self, column: FieldColumn, op: str, value: tuple) -> Rows:
        """Evaluate on the (small) lower-cased dictionary, then look codes up.

        A field with per-value bitmaps answers with the union of the matching values'
        bitmaps; a high-cardinality one with a pass over its codes.
        """
        words = column.words
        if words is not None:
            hits = word_hits(words, op, value)
        else:
            hits = TEXT_OPS[op](column.lower, value)
            hits = compute().fill_null(hits, False).to_numpy(zero_copy_only=False)
        matching = np.flatnonzero(hits)
        if column.value_bitmaps:
            return union_all([self.value_bitmap(column, int(code)) for code in matching])
        codes = np.asarray(column.arrays["codes"])
        if len(matching) == 0:
            return np.zeros(self.n, dtype=bool)
        if len(matching) <= 4:  # a few compares stream; a gather does not
            result = codes == matching[0]
            for code in matching[1:]:
                result |= codes == code
            return result
        return np.append(hits, False).take(codes)  # the last code means empty

    def status_rows(self, wanted: Sequence[str]) -> BitMap:
        """The contacts with one of the `wanted` statuses (a union of several is kept with
        the index, as the statuses change only with it)."""
        chosen = tuple(s for s in STATUSES if s in wanted)
        store = self.index.contact_bitmaps
        if len(chosen) <= 1:
            return union_all([store.get(BitmapKeys.status(s)) for s in chosen])
        found = self.index.derived.get(("statuses", chosen))
        if found is None:
            found = self.index.derived[("statuses", chosen)] = union_all(
                [store.get(BitmapKeys.status(s)) for s in chosen])
        return found

    def other_statuses(self, wanted: Sequence[str], rows: BitMap) -> BitMap:
        """Every contact but `rows`, those with one of the `wanted` statuses (kept with
        the index like `status_rows`)."""
        key = ("not-statuses", tuple(s for s in STATUSES if s in wanted))
        found = self.index.derived.get(key)
        if found is None:
            found = self.index.derived[key] = complement(rows, self.n)
        return found

    def list_rows(self, op: str, values: tuple) -> Rows:
        store = self.index.contact_bitmaps
        names = [store.get(BitmapKeys.list_name(v.lower())) for v in dict.fromkeys(values)]
        if op == "includes":
            return union_all(names)
        return intersect_all(names, self.n) if names else everyone(self.n)  # includes_all

    # --- bucket rules ----------------------------------------------------------------

    def visit_bucket(self, node: Bucket) -> Rows:
        """From the index's cache: the seed's numbers are computed once per snapshot."""
        return self.index.buckets.rows(
            node.seed, node.low, node.high, lambda: self.bucket_numbers(node.seed)
        )

    def bucket_numbers(self, seed: str) -> np.ndarray:
        """Every row's bucket number for `seed` (`NO_BUCKET` without an email)."""
        from ..store.index.events import contact_rows  # the build's module: it loads PyArrow
        from .duckdb import bucket_numbers

        ids, numbers = bucket_numbers(self.tables, seed)
        rows, known = contact_rows(ids, self.index.ids, bool(self.index.meta["contacts"]["dense"]))
        if not known.all() or len(ids) != self.n:
            raise EngineError(
                "the engagement index does not hold the same contacts as the data; "
                "use --engine auto or duckdb"
            )
        out = np.full(self.n, NO_BUCKET, dtype=np.uint16)
        has = numbers >= 0
        out[rows[has]] = numbers[has]
        return out

    # --- activity rules --------------------------------------------------------------

    def campaign_codes(self, campaigns: Any) -> np.ndarray | None:
        """Codes of the campaigns a rule selects (None: any campaign)."""
        if campaigns == ANY_CAMPAIGN:
            return None
        if isinstance(campaigns, LastCampaigns):
            campaigns = self.last_campaigns(campaigns.n)
        codes = self.index.campaign_codes
        return np.array(sorted({codes[c] for c in campaigns if c in codes}), dtype=np.int64)

    def last_campaigns(self, n: int) -> list[str]:
        """The `n` campaigns with the latest send time on or before `as_of`.

        Ties go to the larger campaign id by code point (Python's str order). Campaigns
        without a `sent` event have no send time and are never chosen.
        """
        end = day_number(self.as_of)
        eligible = [
            (send, campaign)
            for campaign, send in zip(self.index.campaigns, self.index.send_us, strict=True)
            if send is not None and send // DAY_US <= end
        ]
        eligible.sort(reverse=True)
        return [campaign for _, campaign in eligible[:n]]

    def selection(self, events: Events) -> tuple[str, np.ndarray | None, tuple]:
        """(event type, campaign codes or None for any, window in day numbers)."""
        window: tuple[int | None, int | None] = (None, None)
        if events.days is not None:
            window = day_numbers(*events.days)
        return events.event_type, self.campaign_codes(events.campaigns), window

    def visit_has_events(self, node: HasEvents) -> Rows:
        etype, campaigns, window = self.selection(node.events)
        has = (
            self.has_event(etype, campaigns, window)
            if node.events.url_contains is None
            else self.has_clicked_url(node.events.url_contains, campaigns, window)
        )
        return has if has is not None else self.counted(node.events, 1, None)

    def visit_count_in(self, node: CountIn) -> Rows:
        return self.counted(node.events, node.low, node.high)

    def counted(self, events: Events, low: int, high: int | None) -> Rows:
        """Contacts whose number of `events` is in ``[low, high]``, the cheapest way."""
        etype, campaigns, window = self.selection(events)
        test = count_in(low, high)
        if campaigns is None and window == (None, None) and events.url_contains is None:
            order = self.aggregate_order("count", self.type_code(etype))
            if order is not None:
                return self.count_range(order, low, high)
            return test(np.asarray(self.index.count[self.type_code(etype)]))
        if campaigns is None and events.url_contains is None:
            matched = self.recent_test(etype, window, low, high)
            if matched is not None:
                return matched
            key = ("window-order", etype, window)
            if self.window_counted(etype, window) and self.asked(key):
                order = self.ordered(key, lambda: self.window_source(etype, window))
                return self.count_range(order, low, high)
            counts = self.counts_in_window(etype, window)
            if counts is not None:
                return test(counts)
        if campaigns is None and window == (None, None):  # a URL count, ever
            return self.url_count_test(events.url_contains, low, high)
        if campaigns is not None and events.url_contains is None:
            matched = self.campaign_count_test(etype, campaigns, window, low, high)
            if matched is not None:
                return matched
        rows = self.matching_rows(etype, campaigns, window, events.url_contains)
        return self.count_test(rows, test)

    def counts_in_window(self, etype: str, window: tuple) -> np.ndarray | None:
        """Per row, its events of `etype` in `window` from the cumulative structures
        (None: the window holds so few events that sorting them is cheaper)."""
        counts = self.counts_outside_window(etype, window)
        return counts if counts is not None else self.window_counts(etype, window)

    def window_counted(self, etype: str, window: tuple) -> bool:
        """Whether `counts_in_window` answers for `window` (not too few events in it)."""
        inside = sum(hi - lo for _, lo, hi in self.window_slices(etype, window))
        return inside * SPARSE >= self.n

    def window_source(self, etype: str, window: tuple) -> tuple[np.ndarray, np.ndarray]:
        """A window's per-row counts as a `ValueOrder` source (rows with none: no value);
        only for a window `window_counted` answers for (`counts_in_window` is then not None)."""
        counts = self.counts_in_window(etype, window)
        return counts, counts > 0

    def aggregate_order(self, name: str, t: int) -> ValueOrder | None:
        """The rows with events of type `t`, sorted by their aggregate `name` (count,
        first or last day), from the ORDER_AFTER + 1-th ask on."""
        aggregates = {"count": self.index.count, "first": self.index.first, "last": self.index.last}
        return self.ordered(
            ("aggregate-order", name, t),
            lambda: (np.asarray(aggregates[name][t]), np.asarray(self.index.count[t]) > 0),
        )

    def count_range(self, order: ValueOrder, low: int, high: int | None) -> BitMap:
        """The rows whose count is in [low, high], from the sorted rows with a count of
        at least one (`order`): a range of them, or the complement of those above."""
        if low >= 1:
            return order.compare("gte", (low,)) if high is None else order.compare(
                "between", (low, high))
        if high is None:
            return everyone(self.n)
        return complement(order.compare("gt", (high,)), self.n)

    def campaign_count_test(
        self, etype: str, campaigns: np.ndarray, window: tuple, low: int, high: int | None
    ) -> BitMap | None:
        """A count range over a few campaigns in bitmap algebra, from per-campaign levels.

        `levels[j]` holds the rows with at least j events of the campaigns added so far;
        adding a campaign c, a row reaches j when it had j - i before and has at least i
        of c (`CampaignLevels`), so the range is levels[low] less levels[high + 1].
        None (count the events instead) when a campaign's events straddle the window or
        the bound is too high for the levels to pay.
        """
        top = low if high is None else high + 1
        if len(campaigns) * top * top > MAX_LEVEL_STEPS:
            return None
        placed = self.campaigns_placed(etype, campaigns, window)
        if placed is None:
            return None
        inside, outside = placed
        if not np.all(inside | outside):
            return None
        levels: list[BitMap] = [BitMap() for _ in range(top + 1)]  # levels[0] unused
        for code in campaigns[inside].tolist():
            of = self.campaign_levels(etype, int(code))
            grown = []
            for j in range(1, top + 1):
                parts = [levels[j], of.at_least(j)]
                parts += [levels[j - i] & of.at_least(i) for i in range(1, j)]
                grown.append(union_all(parts))
            levels[1:] = grown
        reached = everyone(self.n) if low == 0 else levels[low]
        return reached if high is None else reached - levels[high + 1]

    def campaign_levels(self, etype: str, code: int) -> CampaignLevels:
        """One campaign's rows by how many events of `etype` they have (built on first use)."""
        key = ("campaign-levels", etype, code)
        levels = self.index.derived.get(key)
        if levels is None:
            rows = self.matching_rows(etype, np.array([code], dtype=np.int64), (None, None), None)
            distinct, counts = runs(np.sort(rows))
            repeated = counts >= 2
            levels = self.index.derived[key] = CampaignLevels(
                self.index.bitmaps.get(BitmapKeys.campaign(etype, code)),
                distinct[repeated], counts[repeated],
            )
        return levels

    # --- per-contact count structures, derived once per loaded index ---------------------

    def count_marks(self, etype: str) -> CountMarks:
        """The cumulative per-contact counts of `etype` at MARKS days (built on first use)."""
        key = ("count-marks", etype)
        marks = self.index.derived.get(key)
        if marks is None:
            marks = self.index.derived[key] = CountMarks.build(self.n, self.type_slices(etype))
        return marks

    def type_slices(self, etype: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per event-store block, the (rows, days) of `etype`, sorted by day."""
        return type_slices(self.index.blocks(), etype)

    def window_counts(self, etype: str, window: tuple) -> np.ndarray | None:
        """Per-row counts of `etype` in `window` as the difference of two cumulative counts.

        Each is a stored mark plus the events between it and the bound (at most 1/MARKS
        of the type's events), so no query counts the window's events one by one. None
        when the window holds so few events that sorting them is cheaper.
        """
        slices = self.window_slices(etype, window)
        inside = sum(hi - lo for _, lo, hi in slices)
        if inside * SPARSE < self.n:
            return None
        low, high = window
        marks = self.count_marks(etype)
        before_high = (
            np.asarray(self.index.count[self.type_code(etype)])
            if high is None or marks.last_day is None or high >= marks.last_day
            else self.counts_before(etype, high + 1)
        )
        # Both are cumulative, so the difference is never negative: unsigned is exact.
        return before_high if low is None else before_high - self.counts_before(etype, low)

    def counts_before(self, etype: str, day: int) -> np.ndarray:
        """Per row, the events of `etype` before `day`, kept for the last KEPT_DAYS days
        asked: a window relative to `as_of` is asked again by every segment that day."""
        kept = self.index.derived.get(("counts-before", etype))
        if kept is None:
            kept = self.index.derived[("counts-before", etype)] = KeptDays()
        return kept.get(day, lambda: compact(self.count_marks(etype).before(day)))

    def url_counts(self) -> UrlCounts:
        """Per click URL, the rows that clicked it and how often (built on first use)."""
        counts = self.index.derived.get(("url-counts",))
        if counts is None:
            slices = self.window_slices("click", (None, None))
            counts = UrlCounts.build([(c["rows"], c["url"]) for c, _, _ in slices])
            self.index.derived[("url-counts",)] = counts
        return counts

    def url_count_test(self, url_contains: str, low: int, high: int | None) -> Rows:
        """Contacts whose clicks on URLs containing `url_contains` number in [low, high],
        from the per-URL counts: the matching URLs' (row, count) runs, added up per row;
        from the second ask on, those rows sorted by count."""
        order = self.ordered(("url-order", url_contains), lambda: self.url_source(url_contains))
        if order is not None:
            return self.count_range(order, low, high)
        test = count_in(low, high)
        rows, counts = self.url_row_counts(url_contains)
        if counts.dtype.kind == "f":  # a bincount over every contact
            return test(counts)
        if bool(test(np.zeros(1, np.int64))[0]):
            return complement(to_bitmap(rows[~test(counts)]), self.n)
        return to_bitmap(rows[test(counts)])

    def url_row_counts(self, url_contains: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their clicks on URLs containing `url_contains`): sorted distinct rows
        and counts, or for many rows (None, the counts of every contact as floats)."""
        codes = np.flatnonzero(self.url_hits(url_contains))
        rows, counts = self.url_counts().of(codes)
        if len(codes) > 1 and len(rows):
            if len(rows) * SPARSE >= self.n:
                return None, np.bincount(rows, weights=counts, minlength=self.n)
            order = np.argsort(rows, kind="stable")
            rows, counts = rows[order], counts[order]
            starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
            rows, counts = rows[starts], np.add.reduceat(counts, starts)
        return rows, counts

    def url_source(self, url_contains: str) -> tuple[np.ndarray, np.ndarray]:
        """Every contact's clicks on URLs containing `url_contains`, as a `ValueOrder`
        source (rows without such a click: no value)."""
        rows, counts = self.url_row_counts(url_contains)
        if rows is None:
            every = counts.astype(np.int64)
        else:
            every = np.zeros(self.n, np.int64)
            every[rows] = counts
        return every, every > 0

    def has_event(
        self, etype: str, campaigns: np.ndarray | None, window: tuple
    ) -> Rows | None:
        """Contacts with at least one matching event, from bitmaps or aggregates.

        A campaign filter *and* a window (the bitmaps of each are per event, their AND
        is not) go through `campaigns_in_window`; None when only the event store can tell.
        """
        bitmaps = self.index.bitmaps
        low, high = window
        if low is None and high is None:
            if campaigns is None:
                return bitmaps.get(BitmapKeys.event_type(etype))
            return union_all([bitmaps.get(BitmapKeys.campaign(etype, c)) for c in campaigns])
        if campaigns is not None:
            return self.campaigns_in_window(etype, campaigns, window)
        days = self.index.bitmap_day_list(etype)
        lo = 0 if low is None else bisect.bisect_left(days, low)
        hi = len(days) if high is None else bisect.bisect_right(days, high)
        selected = days[lo:hi]
        if len(selected) == len(days):
            return bitmaps.get(BitmapKeys.event_type(etype))
        if len(selected) == 0:
            return BitMap()
        if len(selected) > MAX_DAY_UNION:
            t = self.type_code(etype)
            if hi == len(days):  # every event of this type is on or before `high`
                order = self.aggregate_order("last", t)
                if order is not None:
                    return order.compare("gte", (day32(low),))
                return np.asarray(self.index.last[t]) >= low
            if lo == 0:  # every event of this type is on or after `low`
                order = self.aggregate_order("first", t)
                if order is not None:
                    return order.compare("lte", (day32(high),))
                return np.asarray(self.index.first[t]) <= high
        return union_all([bitmaps.get(BitmapKeys.day(etype, d)) for d in selected])

    def campaigns_in_window(
        self, etype: str, campaigns: np.ndarray, window: tuple[int | None, int | None]
    ) -> Rows | None:
        """Contacts with an event of one of `campaigns` inside `window`.

        A campaign whose events of this type all fall inside the window answers with its
        bitmap, one with none inside adds nothing; only the campaigns whose events
        straddle a bound of the window are read from the event store. (Campaigns are
        opened and clicked within days of their send, so straddling is rare.) None for an
        index without campaign day ranges.
        """
        placed = self.campaigns_placed(etype, campaigns, window)
        if placed is None:
            return None
        inside, outside = placed
        parts = [self.index.bitmaps.get(BitmapKeys.campaign(etype, int(c))) for c in campaigns[inside]]
        straddling = campaigns[~inside & ~outside]
        if len(straddling):
            rows = self.matching_rows(etype, straddling, window, None)
            parts.append(to_bitmap(np.sort(rows)))
        return union_all(parts)

    def campaigns_placed(
        self, etype: str, campaigns: np.ndarray, window: tuple[int | None, int | None]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(whether all of each campaign's events of `etype` fall inside `window`, whether
        none do); a campaign that is neither straddles a bound. None for an index without
        campaign day ranges."""
        spans = self.campaign_spans(etype, campaigns)
        if spans is None:
            return None
        first, last = spans
        low, high = window
        has = first <= last
        inside = has.copy()
        outside = ~has
        if low is not None:
            inside &= first >= low
            outside |= last < low
        if high is not None:
            inside &= last <= high
            outside |= first > high
        return inside, outside

    def campaign_spans(
        self, etype: str, campaigns: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(first day, last day) of each campaign's events of `etype` (first > last: none)."""
        spans = self.index.campaign_days
        if spans is None:
            return None
        t = self.type_code(etype)
        return spans[t, campaigns, 0], spans[t, campaigns, 1]

    def narrow(
        self, etype: str, campaigns: np.ndarray, window: tuple[int | None, int | None]
    ) -> tuple[int | None, int | None] | None:
        """`window` cut to the days on which `campaigns` have events (None: no such day)."""
        spans = self.campaign_spans(etype, campaigns)
        if spans is None:
            return window
        first, last = spans
        if not np.any(first <= last):
            return None
        low, high = window
        lowest, highest = int(first.min()), int(last.max())
        low = lowest if low is None else max(low, lowest)
        high = highest if high is None else min(high, highest)
        return (low, high) if low <= high else None

    @staticmethod
    def type_code(etype: str) -> int:
        return EVENT_TYPES.index(etype)

    def has_clicked_url(
        self, url_contains: str, campaigns: np.ndarray | None, window: tuple
    ) -> Rows | None:
        """Who ever clicked a matching URL: the union of per-URL bitmaps (None: filtered)."""
        if campaigns is not None or window != (None, None):
            return None
        codes = np.flatnonzero(self.url_hits(url_contains))
        return union_all([self.index.bitmaps.get(BitmapKeys.click_url(int(code))) for code in codes])

    def url_hits(self, url_contains: str) -> np.ndarray:
        """Per URL code, whether it contains `url_contains` (tested on the dictionary)."""
        words = self.index.url_words()
        if words is not None:
            return word_hits(words, "contains", (url_contains.lower(),))
        urls = self.index.urls()
        pc = compute()
        hits = pc.fill_null(pc.match_substring(urls, url_contains.lower()), False)
        return hits.to_numpy(zero_copy_only=False)

    def matching_rows(
        self, etype: str, campaigns: np.ndarray | None, window: tuple,
        url_contains: str | None,
    ) -> np.ndarray:
        """The row of every event the rule counts (a row repeats once per event).

        Each segment's events of a type are sorted by day, so a window is a slice found
        by binary search; only the slice is filtered by campaign and URL.
        """
        if campaigns is not None and len(campaigns) == 0:
            return np.zeros(0, np.uint32)
        campaign_ok = None
        if campaigns is not None:
            window = self.narrow(etype, campaigns, window)
            if window is None:
                return np.zeros(0, np.uint32)
            campaign_ok = np.zeros(len(self.index.campaigns), dtype=bool)
            campaign_ok[campaigns] = True
        url_ok = None
        if url_contains is not None:
            url_ok = np.append(self.url_hits(url_contains), False)  # code -1: no url
        parts = []
        for cols, lo, hi in self.window_slices(etype, window):
            rows = np.asarray(cols["rows"][lo:hi])
            keep = None
            if campaign_ok is not None:
                keep = campaign_ok[cols["campaign"][lo:hi]]
            if url_ok is not None:
                hit = url_ok[cols["url"][lo:hi]]
                keep = hit if keep is None else keep & hit
            parts.append(rows if keep is None else rows[keep])
        return np.concatenate(parts) if parts else np.zeros(0, np.uint32)

    def window_slices(self, etype: str, window: tuple) -> list[tuple[dict, int, int]]:
        """Per segment, its columns of `etype` and the [lo, hi) slice of the window's days."""
        low, high = window
        slices = []
        for segment in self.index.blocks():
            cols = segment.columns[etype]
            if "rows" not in cols or len(cols["rows"]) == 0:
                continue
            days = cols["day"]
            lo = 0 if low is None else int(np.searchsorted(days, day32(low), side="left"))
            hi = len(days) if high is None else int(
                np.searchsorted(days, day32(high), side="right")
            )
            slices.append((cols, lo, hi))
        return slices

    def recent_test(
        self, etype: str, window: tuple, count_low: int, count_high: int | None
    ) -> Rows | None:
        """The condition on counts capped at RECENT from each row's latest days, when exact.

        Exact when no event of the type is after the window (an `in_last_days` window
        at or after the data's end) and the condition cannot tell RECENT events from
        more (e.g. ">= 3", "< 2", not ">= 5"). None otherwise.
        """
        low, high = window
        t = self.type_code(etype)
        last_day = self.index.day_range[t][1]
        if low is None or last_day is None or (high is not None and high < last_day):
            return None
        test = count_in(count_low, count_high)
        bound = count_low if count_high is None else count_high
        if bound > MAX_PROBE:
            return None
        # the test on Python ints: a condition the day bitmaps answer needs no numpy
        if len({bool(test(k)) for k in range(RECENT, int(bound) + 2)}) > 1:
            return None  # the condition differs between RECENT events and more
        # Each row's days are sorted latest first, so "at least k events in the window"
        # is one comparison of its k-th latest day: a threshold condition ("at least 3",
        # "at most 1") is one pass; anything else counts all RECENT.
        allowed = [bool(test(k)) for k in range(RECENT + 1)]
        steps = [k for k in range(RECENT) if allowed[k + 1] != allowed[k]]
        if len(steps) == 1:
            at_least = self.at_least_since(etype, steps[0] + 1, low)
            return at_least if allowed[-1] else complement(at_least, self.n)
        recent = self.index.recent[t]  # read (and its bytes checked) only here
        counts = np.zeros(self.n, dtype=np.uint8)
        for k in range(RECENT):
            counts += np.asarray(recent[k]) >= day32(low)
        return test(counts)

    def at_least_since(self, etype: str, k: int, low: int) -> Rows:
        """Rows with at least `k` (<= RECENT) events of `etype` on or after day `low`."""
        days = self.index.recent_day_list(etype, k)
        if days is None:  # an index built before the recent-day bitmaps
            return np.asarray(self.index.recent[self.type_code(etype)][k - 1]) >= day32(low)
        start = bisect.bisect_left(days, low)
        return union_all(
            [self.index.bitmaps.get(BitmapKeys.recent(etype, k, day)) for day in days[start:]]
        )

    def counts_outside_window(self, etype: str, window: tuple) -> np.ndarray | None:
        """Per-row counts in a wide window as total minus the events outside it.

        None when the window holds fewer events than its outside (slice it instead) or
        so few that sorting them beats a pass over all contacts.
        """
        slices = self.window_slices(etype, window)
        inside = sum(hi - lo for _, lo, hi in slices)
        outside = sum(len(cols["rows"]) for cols, _, _ in slices) - inside
        if inside <= outside or inside * SPARSE < self.n:
            return None
        parts = [np.asarray(cols["rows"][:lo]) for cols, lo, _ in slices]
        parts += [np.asarray(cols["rows"][hi:]) for cols, _, hi in slices]
        rows = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
        total = np.asarray(self.index.count[self.type_code(etype)]).astype(np.int64)
        return total - np.bincount(rows, minlength=self.n)

    def count_test(self, rows: np.ndarray, test: Callable[[np.ndarray], np.ndarray]) -> Rows:
        """The contacts whose number of events in `rows` passes `test`.

        Few events: sort them and count runs, and answer with a bitmap (contacts without
        any event pass iff test(0), added by complementing). Many: one bincount over all
        contacts and a mask.
        """
        if len(rows) * SPARSE >= self.n:
            return test(np.bincount(rows, minlength=self.n))
        distinct, counts = runs(np.sort(rows))
        if bool(test(np.zeros(1, np.int64))[0]):
            return complement(to_bitmap(distinct[~test(counts)]), self.n)
        return to_bitmap(distinct[test(counts)])

    # --- results ------------------------------------------------------------------

    def union(self, roots: Sequence[Lowered]) -> Rows:
        return any_of([self.visit(root) for root in roots], self.n)


def type_slices(blocks: Sequence[EventBlock], etype: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per event-store block holding events of `etype`, their (rows, days), sorted by day."""
    slices = []
    for block in blocks:
        cols = block.columns[etype]
        if "rows" in cols and len(cols["rows"]):
            slices.append((cols["rows"], cols["day"]))
    return slices


def take_over(index: IndexData, previous: IndexData) -> None:
    """What `index` keeps of `previous`, the index it replaced in this process: what the
    store keeps (`IndexData.take_over`), and when `index` extends `previous` by blocks
    of later events, the per-contact counts before a day that those blocks do not
    change (`carry_counts`)."""
    index.take_over(previous)
    carry_counts(index, previous)


def padded(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-row counts of an index of fewer contacts over `n` rows (the new ones: 0)."""
    if len(counts) == n:
        return counts
    return np.concatenate([counts, np.zeros(n - len(counts), counts.dtype)])


def carry_counts(index: IndexData, previous: IndexData) -> None:
    """Carry `previous`'s count marks and kept cumulative counts into `index` where exact.

    `index` extends `previous` when its event store starts with `previous`'s blocks (a
    block's name is unique, and only an update links a block into the next index, over
    the same contact rows with new ones appended). Its events before day D are then
    those of `previous` plus the added blocks' events before D, so a count of the
    events before D is unchanged for every D up to the first day of the added events
    of that type: the marks and kept days up to it are kept, the later ones dropped.
    """
    old_blocks = [spec["name"] for spec in previous.meta["events"][BLOCK_FILES]]
    specs = index.meta["events"][BLOCK_FILES]
    if index.n < previous.n or [spec["name"] for spec in specs[: len(old_blocks)]] != old_blocks:
        return
    added = index.blocks()[len(old_blocks):]
    for key, marks in list(previous.derived.items()):
        if key[0] != "count-marks" or not isinstance(marks, CountMarks):
            continue
        etype = key[1]
        new = type_slices(added, etype)
        first = min((int(days[0]) for _, days in new), default=None)
        last = max((int(days[-1]) for _, days in new), default=None)
        kept = marks.days <= first if first is not None else np.ones(len(marks.days), bool)
        ends = [d for d in (marks.last_day, last) if d is not None]
        index.derived[key] = CountMarks(
            index.n, type_slices(index.blocks(), etype), marks.days[kept],
            [padded(c, index.n) for c, keep in zip(marks.counts, kept.tolist(), strict=True) if keep],
            max(ends) if ends else None,
        )
        days = previous.derived.get(("counts-before", etype))
        if isinstance(days, KeptDays):
            with days.lock:  # a server's other threads may still be counting with it
                kept_days = list(days.arrays.items())
            carried = KeptDays()
            carried.arrays = {day: padded(counts, index.n) for day, counts in kept_days
                              if first is None or day <= first}
            index.derived[("counts-before", etype)] = carried


def count_by_status(index: IndexData, rows: Rows) -> dict[str, int]:
    counts = empty_by_status()
    if isinstance(rows, BitMap):
        for s in STATUSES:
            counts[s] = rows.intersection_cardinality(index.contact_bitmaps.get(BitmapKeys.status(s)))
        return counts
    # One popcount of the mask, then gathers of the (few) rows of the other statuses:
    # ~2.5x faster than an AND and a popcount per status over all contacts.
    largest, others = index.status_rows()
    in_others = {s: int(np.count_nonzero(rows[r])) for s, r in others.items()}
    for s, n in in_others.items():
        if s:
            counts[s] = n
    counts[largest] = int(np.count_nonzero(rows)) - sum(in_others.values())
    return counts


def contact_ids_of(index: IndexData, rows: Rows) -> np.ndarray:
    positions = bitmap_rows(rows) if isinstance(rows, BitMap) else np.flatnonzero(rows)
    return index.ids[positions].astype(np.int64, copy=False)


class IndexEngine(Engine):
    """Answers from the engagement index only; refuses what it cannot answer exactly."""

    name = "index"

    def __init__(self, tables: Tables, index: IndexData | None = None):
        super().__init__(tables)
        if index is None:
            raise EngineError(
                "--engine index needs a workspace snapshot with an engagement index; "
                "use --engine auto or duckdb"
            )
        self.index = index

    @classmethod
    def for_snapshot(cls, snapshot: Any) -> IndexEngine:
        """The engine over a snapshot's index; raises EngineError when it is not current."""
        return cls(snapshot.tables, load_index(snapshot))

    def take_over(self, previous: Engine) -> None:
        earlier = getattr(previous, "index", None)
        if earlier is not None:
            take_over(self.index, earlier)

    def evaluator(self, as_of: dt.date) -> Evaluator:
        return Evaluator(self.index, self.tables, as_of)

    def rows(self, roots: Sequence[Lowered], as_of: dt.date) -> Rows:
        return self.evaluator(as_of).union(roots)

    def evaluate_ids(self, roots: Sequence[Lowered], as_of: dt.date) -> np.ndarray:
        return contact_ids_of(self.index, self.rows(roots, as_of))

    def evaluate_count(self, roots: Sequence[Lowered], as_of: dt.date) -> dict[str, int]:
        return count_by_status(self.index, self.rows(roots, as_of))


__all__ = [
    "Evaluator",
    "IndexEngine",
    "contact_ids_of",
    "count_by_status",
]
