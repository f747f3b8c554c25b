"""A trend's points on the index: what one point computed, the next one reuses.

Consecutive points of a trend ask nearly the same questions: "opened at least 3 times
in the last 90 days" at D and at D + 1 share 89 days of events, "the last 5 campaigns"
are the same campaigns for weeks, and the contacts added by D + 1 are those added by D
and a day more. `PointEvaluator` is the index evaluator with a memory kept across the
points of one trend (`TrendMemory`):

* per event type and window length, each contact's number of events in the window,
  moved from one point to the next by adding the days that enter the window and
  subtracting those that leave it (the store is sorted by day, so a day is a slice);
* answers of rules with a campaign list, by the campaigns and the days they cover
  (cut to the days those campaigns have events on), reused while those stay the same;
* the contacts added by the point, grown by the day bitmaps of `date_added`.

Answers are exactly the evaluator's; only the work differs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyroaring import BitMap

from ..definition.lower import CountIn, Events, HasEvents
from ..engines.index import MAX_DAY_UNION, Evaluator, Rows, count_in, in_range, union_all
from ..store.index.layout import BitmapKeys, day_number
from ..store.index.read import IndexData


@dataclass
class TrendMemory:
    """What a trend's points share (one per trend call: it holds one snapshot's index)."""

    #: (event type, window length or None for "since ever") -> (low, high, counts)
    windows: dict[tuple[str, int | None], tuple[int | None, int, np.ndarray]] = field(default_factory=dict)
    #: campaign-filtered answers by (kind, type, campaigns, days, url, low, high)
    answers: dict[tuple[Any, ...], Rows] = field(default_factory=dict)
    #: contacts added by `added[0]`: (day number, rows)
    added: tuple[int, BitMap | np.ndarray] | None = None


@dataclass
class PointEvaluator(Evaluator):
    memory: TrendMemory = field(default_factory=TrendMemory)

    def visit_has_events(self, node: HasEvents) -> Rows:
        etype, campaigns, (low, high) = self.selection(node.events)
        if campaigns is None and node.events.url_contains is None and high is not None and (
            low is None or high - low + 1 > MAX_DAY_UNION
        ):
            return self.window_counts(etype, low, high) > 0
        if campaigns is not None:
            return self.remembered("has", node.events, 1, None, lambda: super(PointEvaluator, self)
                                   .visit_has_events(node))
        return super().visit_has_events(node)

    def visit_count_in(self, node: CountIn) -> Rows:
        return self.counted(node.events, node.low, node.high)

    def counted(self, events: Events, low: int, high: int | None) -> Rows:
        etype, campaigns, (first, last) = self.selection(events)
        if campaigns is None and events.url_contains is None and last is not None:
            return count_in(low, high)(self.window_counts(etype, first, last))
        if campaigns is not None:
            return self.remembered("count", events, low, high,
                                   lambda: super(PointEvaluator, self).counted(events, low, high))
        return super().counted(events, low, high)

    def remembered(self, kind: str, events: Events, low: int, high: int | None, compute) -> Rows:
        """A campaign-filtered answer, reused while its campaigns and covered days stay."""
        etype, campaigns, window = self.selection(events)
        days = self.narrow(etype, campaigns, window)
        key = (kind, etype, tuple(campaigns.tolist()), days, events.url_contains, low, high)
        found = self.memory.answers.get(key)
        if found is None:
            found = self.memory.answers[key] = compute()
        return found

    def window_counts(self, etype: str, low: int | None, high: int) -> np.ndarray:
        """Each row's number of `etype` events on days [low, high] (low None: since ever)."""
        key = (etype, None if low is None else high - low)
        state = self.memory.windows.get(key)
        if state is not None:
            old_low, old_high, counts = state
            entering = high - old_high
            leaving = 0 if low is None or old_low is None else low - old_low
            moved = entering >= 0 and leaving >= 0
            if moved and (low is None or entering + leaving <= high - low):
                # in place: a point's answer is a test of the counts, never the counts
                self.add_days(counts, etype, old_high + 1, high, 1)
                if low is not None and old_low is not None:
                    self.add_days(counts, etype, old_low, low - 1, -1)
                self.memory.windows[key] = (low, high, counts)
                return counts
        rows = self.matching_rows(etype, None, (low, high), None)
        counts = np.bincount(rows, minlength=self.n).astype(np.int32)
        self.memory.windows[key] = (low, high, counts)
        return counts

    def add_days(self, counts: np.ndarray, etype: str, low: int, high: int, sign: int) -> None:
        if low > high:
            return
        for cols, lo, hi in self.window_slices(etype, (low, high)):
            rows = np.asarray(cols["rows"][lo:hi])
            if len(rows):
                np.add.at(counts, rows, sign)


def added_by(index: IndexData, memory: TrendMemory, day: dt.date) -> BitMap | np.ndarray:
    """The rows whose `date_added` day is on or before `day`, grown from the last point's."""
    column = index.fields["date_added"]
    end = day_number(day)
    if column.bitmap_days is None:
        days = np.asarray(column.arrays["days"])
        return in_range(days, None, end) & np.asarray(column.arrays["present"])
    days = column.bitmap_days
    previous = memory.added
    if previous is not None and previous[0] <= end and isinstance(previous[1], BitMap):
        start = int(np.searchsorted(days, previous[0], side="right"))
        stop = int(np.searchsorted(days, end, side="right"))
        extra = [index.contact_bitmaps.get(BitmapKeys.field_value("date_added", int(d))) for d in days[start:stop]]
        rows = previous[1] | union_all(extra) if extra else previous[1]
    else:
        stop = int(np.searchsorted(days, end, side="right"))
        rows = union_all([index.contact_bitmaps.get(BitmapKeys.field_value("date_added", int(d)))
                          for d in days[:stop]])
    memory.added = (end, rows)
    return rows
