"""A trend's points on the index: what one point computed, the next one reuses.

Consecutive points of a trend ask nearly the same questions: "opened at least 3 times
in the last 90 days" at D and at D + 1 share 89 days of events, "the last 5 campaigns"
are the same campaigns for weeks, and the contacts added by D + 1 are those added by D
and a day more. `PointEvaluator` is the index evaluator with a memory kept across the
points of one trend (`TrendMemory`):

* per event type, campaigns and window length, each contact's number of events in the
  window, moved from one point to the next by adding the days that enter the window
  and subtracting those that leave it (the store is sorted by day, so a day is a
  slice); "the last 5 campaigns" are the same campaigns for weeks, so their counts
  move too;
* "has an event" of a campaign list, by the campaigns and the days they cover (cut to
  the days those campaigns have events on), reused while those stay the same;
* the contacts added by the point, grown by the day bitmaps of `date_added`;
* answers of subtrees that test fields only, when the next point lowers them alike
  (every subtree without a date relative to `as_of`).

Answers are exactly the evaluator's; only the work differs.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from ..definition.lower import (
    AllOf,
    AnyOf,
    Compare,
    Constant,
    CountIn,
    DayRange,
    Events,
    HasEvents,
    Not,
    Present,
)
from ..engines.index import MAX_DAY_UNION, Evaluator, Rows, count_in, in_range, union_all
from ..store.index.bitmaps import bitmap_rows
from ..store.index.layout import BitmapKeys, day_number
from ..store.index.read import IndexData


@dataclass
class TrendMemory:
    """What a trend's points share (one per trend call: it holds one snapshot's index)."""

    #: (event type, campaigns or None for any, window length or None for "since ever")
    #: -> (low, high, counts)
    windows: dict[tuple[Any, ...], tuple[int | None, int, np.ndarray]] = field(default_factory=dict)
    #: campaign-filtered answers by (kind, type, campaigns, days, url, low, high)
    answers: dict[tuple[Any, ...], Rows] = field(default_factory=dict)
    #: the contacts added by the last point
    added: Added | None = None
    #: answers of subtrees without activity rules, by lowered node: the last point's
    #: and this point's (a node the next point lowers alike is reused; one point's
    #: answers at most are kept)
    fields_before: dict[Any, Rows] = field(default_factory=dict)
    fields_now: dict[Any, Rows] = field(default_factory=dict)

    def next_point(self) -> None:
        self.fields_before, self.fields_now = self.fields_now, {}


@dataclass
class PointEvaluator(Evaluator):
    """The index evaluator of one point of a trend; create one per point, in order."""

    memory: TrendMemory = field(default_factory=TrendMemory)

    def __post_init__(self) -> None:
        self.memory.next_point()

    def visit(self, node: Any) -> Rows:
        if not about_fields(node):
            return super().visit(node)
        found = self.memory.fields_now.get(node)
        if found is None:
            found = self.memory.fields_before.get(node)
            if found is None:
                found = super().visit(node)
            self.memory.fields_now[node] = found
        return found

    def visit_has_events(self, node: HasEvents) -> Rows:
        etype, campaigns, (low, high) = self.selection(node.events)
        # "since ever" is one comparison of first days (the evaluator's own way); a wide
        # closed window would be a union of its day bitmaps at every point
        if campaigns is None and node.events.url_contains is None and high is not None and (
            low is not None and high - low + 1 > MAX_DAY_UNION
        ):
            return self.window_counts(etype, low, high) > 0
        if campaigns is not None and node.events.url_contains is None and low is None:
            # "ever" in a campaign list: its counts only grow by the days entering
            return self.window_counts(etype, low, high, campaigns) > 0
        if campaigns is not None:
            # a fixed window on a campaign list: the same answer once the window is past
            return self.remembered("has", node.events, 1, None, lambda: super(PointEvaluator, self)
                                   .visit_has_events(node))
        return super().visit_has_events(node)

    def counted(self, events: Events, low: int, high: int | None) -> Rows:
        etype, campaigns, (first, last) = self.selection(events)
        if events.url_contains is None and last is not None:
            return count_in(low, high)(self.window_counts(etype, first, last, campaigns))
        return super().counted(events, low, high)

    def remembered(self, kind: str, events: Events, low: int, high: int | None, compute) -> Rows:
        """A campaign-filtered answer, reused while its campaigns and covered days stay."""
        etype, campaigns, window = self.selection(events)
        days = self.narrow(etype, campaigns, window)
        key = (kind, etype, tuple(campaigns.tolist()), days, events.url_contains, low, high)
        found = self.memory.answers.get(key)
        if found is None:
            forget(self.memory.answers, key, (0, 1, 4, 5, 6))
            found = self.memory.answers[key] = compute()
        return found

    def window_counts(
        self, etype: str, low: int | None, high: int, campaigns: np.ndarray | None = None
    ) -> np.ndarray:
        """Each row's number of `etype` events (of `campaigns`, None: any) on days
        [low, high] (low None: since ever), moved from the last point's counts."""
        chosen = None if campaigns is None else tuple(campaigns.tolist())
        key = (etype, chosen, None if low is None else high - low)
        state = self.memory.windows.get(key)
        if state is not None:
            old_low, old_high, counts = state
            entering = high - old_high
            leaving = 0 if low is None or old_low is None else low - old_low
            moved = entering >= 0 and leaving >= 0
            if moved and (low is None or entering + leaving <= high - low):
                # in place: a point's answer is a test of the counts, never the counts
                self.add_days(counts, etype, old_high + 1, high, 1, campaigns)
                if low is not None and old_low is not None:
                    self.add_days(counts, etype, old_low, low - 1, -1, campaigns)
                self.memory.windows[key] = (low, high, counts)
                return counts
        rows = self.matching_rows(etype, campaigns, (low, high), None)
        counts = np.bincount(rows, minlength=self.n).astype(np.int32)
        forget(self.memory.windows, key, (0, 2))
        self.memory.windows[key] = (low, high, counts)
        return counts

    def add_days(
        self, counts: np.ndarray, etype: str, low: int, high: int, sign: int,
        campaigns: np.ndarray | None,
    ) -> None:
        if low > high or (campaigns is not None and len(campaigns) == 0):
            return
        wanted = None
        if campaigns is not None:
            wanted = np.zeros(len(self.index.campaigns), dtype=bool)
            wanted[campaigns] = True
        for cols, lo, hi in self.window_slices(etype, (low, high)):
            if hi <= lo:
                continue
            rows = np.asarray(cols["rows"][lo:hi])
            if wanted is not None:
                rows = rows[wanted[cols["campaign"][lo:hi]]]
            # a day's events are few: counting them sorted beats ufunc.at's scatter
            rows, times = np.unique(rows, return_counts=True)
            counts[rows] += sign * times.astype(np.int32)


@functools.lru_cache(maxsize=4096)
def about_fields(node: Any) -> bool:
    """Whether a lowered subtree tests contact fields only (no events): its answer
    depends on the point only through its values, which the lowering fixed."""
    if isinstance(node, (HasEvents, CountIn)):
        return False
    if isinstance(node, (AllOf, AnyOf)):
        return all(about_fields(rule) for rule in node.rules)
    if isinstance(node, Not):
        return about_fields(node.rule)
    return isinstance(node, (Present, Compare, DayRange, Constant))


def forget(memory: dict[tuple[Any, ...], Any], key: tuple[Any, ...], same: tuple[int, ...]) -> None:
    """Drop what an earlier point kept for the rule `key` is now for (the same parts
    `same`, other campaigns or days): a trend keeps one answer per rule, not one per
    campaign set it has seen (a count per contact is 40 MB at 10M contacts)."""
    stale = [k for k in memory if k != key and all(k[i] == key[i] for i in same)]
    for k in stale:
        del memory[k]


def added_by(index: IndexData, memory: TrendMemory, day: dt.date, packed: bool) -> BitMap | np.ndarray:
    """The rows whose `date_added` day is on or before `day`: a bitmap, or with `packed`
    packed bits (`np.packbits` of the mask); both grown from the last point's by the
    day bitmaps of the days in between."""
    column = index.fields["date_added"]
    end = day_number(day)
    if column.bitmap_days is None:
        days = np.asarray(column.arrays["days"])
        mask = in_range(days, None, end) & np.asarray(column.arrays["present"])
        return np.packbits(mask) if packed else mask
    days = column.bitmap_days

    def day_bitmaps(start: int, stop: int) -> list[BitMap]:
        return [index.contact_bitmaps.get(BitmapKeys.field_value("date_added", int(d)))
                for d in days[start:stop]]

    stop = int(np.searchsorted(days, end, side="right"))
    previous = memory.added
    if previous is not None and previous.day <= end:
        start = int(np.searchsorted(days, previous.day, side="right"))
        extra = union_all(day_bitmaps(start, stop))
        previous.bitmap = previous.bitmap | extra if len(extra) else previous.bitmap
        if previous.bits is not None and len(extra):
            rows = bitmap_rows(extra)
            np.bitwise_or.at(previous.bits, rows >> 3, (128 >> (rows & 7)).astype(np.uint8))
        previous.day = end
    else:
        previous = memory.added = Added(end, union_all(day_bitmaps(0, stop)))
    if not packed:
        return previous.bitmap
    if previous.bits is None:
        mask = np.zeros(index.n, dtype=bool)
        mask[bitmap_rows(previous.bitmap)] = True
        previous.bits = np.packbits(mask)
    return previous.bits


@dataclass
class Added:
    """The contacts added by `day` (a day number), as a bitmap and, once asked, packed bits."""

    day: int
    bitmap: BitMap
    bits: np.ndarray | None = None
