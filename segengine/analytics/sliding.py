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

A trend's point can also be moved from the last one as a whole (`moved_point`): only
the rows added since, or whose count crossed a rule's bounds, are tested again, and the
members are flags flipped in place.

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
from ..store.index.bitmaps import bitmap_rows, runs
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
    #: the last point's members, one flag per row, while the next point can be moved
    #: from them (`moved_point`); with the shape of the trees they answer and their
    #: field subtrees' answers as flags
    members: np.ndarray | None = None
    shape: Any = None
    field_flags: dict[Any, np.ndarray] = field(default_factory=dict)
    added_flags: AddedFlags | None = None

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
        counts = self.moved_counts(etype, low, high, campaigns)
        if counts is not None:
            return counts
        key = window_key(etype, low, high, campaigns)
        rows = self.matching_rows(etype, campaigns, (low, high), None)
        counts = np.bincount(rows, minlength=self.n).astype(np.int32)
        forget(self.memory.windows, key, (0, 2))
        self.memory.windows[key] = (low, high, counts)
        return counts

    def moved_counts(
        self, etype: str, low: int | None, high: int, campaigns: np.ndarray | None = None,
        moves: list[Move] | None = None,
    ) -> np.ndarray | None:
        """`window_counts` moved in place from an earlier point's, adding each change of
        counts to `moves`; None when no earlier counts are worth moving."""
        key = window_key(etype, low, high, campaigns)
        state = self.memory.windows.get(key)
        if state is None:
            return self.swapped_counts(key, high, campaigns, moves)
        old_low, old_high, counts = state
        entering = high - old_high
        leaving = 0 if low is None or old_low is None else low - old_low
        if not (entering >= 0 and leaving >= 0 and (low is None or entering + leaving <= high - low)):
            return None
        # in place: a point's answer is a test of the counts, never the counts
        self.add_days(counts, etype, old_high + 1, high, 1, campaigns, moves)
        if low is not None and old_low is not None:
            self.add_days(counts, etype, old_low, low - 1, -1, campaigns, moves)
        self.memory.windows[key] = (low, high, counts)
        return counts

    def swapped_counts(
        self, key: tuple[Any, ...], high: int, campaigns: np.ndarray | None,
        moves: list[Move] | None,
    ) -> np.ndarray | None:
        """Counts since ever of a campaign list moved from another list's ("the last 5
        campaigns" change every few days, by one campaign): the events of the campaigns
        that left are taken out, those of the campaigns that came in added; reading a
        campaign's events is a slice of its days, recounting all of them a pass over
        every row."""
        if campaigns is None or key[2] is not None:
            return None
        earlier = [k for k in self.memory.windows if k[0] == key[0] and k[2] is None and k[1] is not None]
        if len(earlier) != 1:
            return None
        old_low, old_high, counts = self.memory.windows[earlier[0]]
        if old_high > high:
            return None
        before, now = set(earlier[0][1]), set(key[1])
        codes = functools.partial(np.array, dtype=np.int64)
        self.add_days(counts, key[0], None, old_high, -1, codes(sorted(before - now)), moves)
        self.add_days(counts, key[0], None, high, 1, codes(sorted(now - before)), moves)
        self.add_days(counts, key[0], old_high + 1, high, 1, codes(sorted(now & before)), moves)
        del self.memory.windows[earlier[0]]
        self.memory.windows[key] = (None, high, counts)
        return counts

    def add_days(
        self, counts: np.ndarray, etype: str, low: int | None, high: int, sign: int,
        campaigns: np.ndarray | None, moves: list[Move] | None = None,
    ) -> None:
        """Add `sign` per event on days [low, high] (low None: since ever) to `counts`."""
        if (low is not None and low > high) or (campaigns is not None and len(campaigns) == 0):
            return
        if campaigns is not None and len(campaigns) > 1 and low is None:
            # since ever: campaign by campaign, each maybe whole (below)
            for code in campaigns:
                self.add_days(counts, etype, low, high, sign, campaigns[campaigns == code], moves)
            return
        window: tuple[int | None, int | None] | None = (low, high)
        if campaigns is not None:
            window = self.narrow(etype, campaigns, (low, high))
            if window is None:
                return
        if low is not None and window[0] is not None and window[1] - window[0] < MAX_DAY_UNION:
            for day in range(window[0], window[1] + 1):
                self.add_day(counts, etype, day, sign, campaigns, moves)
            return
        rows = self.events_of(etype, window, campaigns)
        if campaigns is not None and len(campaigns) == 1 and len(rows):
            # a campaign's events all in the window, and as many as its bitmap has rows
            # (a contact opens a campaign once, mostly): the bitmap's rows, in order
            spans = self.campaign_spans(etype, campaigns)
            distinct = self.index.bitmaps.get(BitmapKeys.campaign(etype, int(campaigns[0])))
            whole = spans is not None and window == (int(spans[0][0]), int(spans[1][0]))
            if whole and len(distinct) == len(rows):
                self.add_rows(counts, bitmap_rows(distinct), sign, moves)
                return
        # counting them sorted beats ufunc.at's scatter, and the rows in order make the
        # reads and writes of the counts go forward
        rows, times = runs(np.sort(rows))
        self.add_rows(counts, rows, sign * times.astype(counts.dtype), moves)

    def add_day(
        self, counts: np.ndarray, etype: str, day: int, sign: int, campaigns: np.ndarray | None,
        moves: list[Move] | None,
    ) -> None:
        """`add_days` of one day."""
        slices = [(cols, lo, hi) for cols, lo, hi in self.window_slices(etype, (day, day)) if hi > lo]
        events = sum(hi - lo for _, lo, hi in slices)
        if events == 0:
            return
        # the day's bitmap holds its rows in order, once each: when it has as many rows
        # as the day has events (a contact rarely has two of a type on one day), no row
        # repeats and the rows move by one each, without sorting the day's events
        distinct = self.index.bitmaps.get(BitmapKeys.day(etype, day))
        once = len(distinct) == events
        if once and campaigns is None:
            self.add_rows(counts, bitmap_rows(distinct), sign, moves)
            return
        rows = self.events_of(etype, (day, day), campaigns)
        if once:
            # all of the day's events of `campaigns`: the bitmap's rows are in order
            self.add_rows(counts, bitmap_rows(distinct) if len(rows) == events else rows, sign, moves)
            return
        rows, times = runs(np.sort(rows))
        self.add_rows(counts, rows, sign * times.astype(counts.dtype), moves)

    def events_of(self, etype: str, window: tuple, campaigns: np.ndarray | None) -> np.ndarray:
        """The row of each `etype` event in `window` (of `campaigns`, None: any)."""
        wanted = None
        if campaigns is not None:
            wanted = np.zeros(len(self.index.campaigns), dtype=bool)
            wanted[campaigns] = True
        parts = []
        for cols, lo, hi in self.window_slices(etype, window):
            if hi > lo:
                rows = np.asarray(cols["rows"][lo:hi])
                parts.append(rows if wanted is None else rows[wanted[cols["campaign"][lo:hi]]])
        return np.concatenate(parts) if parts else np.zeros(0, np.uint32)

    @staticmethod
    def add_rows(counts: np.ndarray, rows: np.ndarray, added: Any, moves: list[Move] | None) -> None:
        """``counts[rows] += added`` for distinct `rows`, the change kept in `moves`."""
        before = counts[rows]
        after = before + added
        counts[rows] = after
        if moves is not None:
            moves.append(Move(rows, before, after))

    def entered_rows(self, etype: str, low: int, high: int, touched: list[np.ndarray]) -> None:
        """Add to `touched` the rows with an `etype` event on days [low, high]."""
        for cols, lo, hi in self.window_slices(etype, (low, high)):
            if hi > lo:
                touched.append(np.asarray(cols["rows"][lo:hi]))


@dataclass(frozen=True)
class Move:
    """Rows whose count of a window changed on one day's (or campaign's) events, with
    their counts before and after (a row is in one move at most once)."""

    rows: np.ndarray
    before: np.ndarray
    after: np.ndarray


def window_key(etype: str, low: int | None, high: int, campaigns: np.ndarray | None) -> tuple[Any, ...]:
    """What a window's counts are kept by: its events and its length (not its days)."""
    return (etype, None if campaigns is None else tuple(campaigns.tolist()),
            None if low is None else high - low)


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


@dataclass
class AddedFlags:
    """The contacts added by `day` (a day number), one flag per row, and the rows the
    last move added (None: computed from scratch, nothing to compare with)."""

    day: int
    flags: np.ndarray
    grown: np.ndarray | None = None


def added_flags(index: IndexData, memory: TrendMemory, day: dt.date) -> AddedFlags:
    """The rows whose `date_added` day is on or before `day`, one flag per row, moved
    from the last point's by the rows added in between."""
    column = index.fields["date_added"]
    end = day_number(day)
    days = np.asarray(column.arrays["days"])
    present = np.asarray(column.arrays["present"])
    last = memory.added_flags
    if last is None or last.day > end:
        last = memory.added_flags = AddedFlags(end, in_range(days, None, end) & present)
        return last
    if column.bitmap_days is not None:
        start, stop = np.searchsorted(column.bitmap_days, [last.day, end], side="right")
        grown = bitmap_rows(union_all([
            index.contact_bitmaps.get(BitmapKeys.field_value("date_added", int(d)))
            for d in column.bitmap_days[start:stop]
        ]))
    else:
        grown = np.flatnonzero(in_range(days, last.day + 1, end) & present)
    last.flags[grown] = True
    last.day, last.grown = end, grown
    return last


# --- points moved from the last one ------------------------------------------------------
#
# Between two points, only some rows can change their answer: the rows added in between,
# and for each activity rule the rows with an event on a day that entered or left its
# window (or of a campaign that entered or left its list). Every other row answers as it
# did, provided the trees test the same fields the same way. `moved_point` evaluates the
# trees on those rows only and flips the members that changed, so a point costs in
# proportion to a day's events, not to the number of contacts.


def tree_shape(node: Any, events: list[Any], fields: list[Any]) -> Any:
    """`node` with its activity rules reduced to their kind (collected in `events`) and
    its field subtrees kept as they are (collected in `fields`); None when a rule cannot
    be moved from point to point (a URL filter, an open-ended window, a bucket)."""
    if about_fields(node):
        fields.append(node)
        return node
    if isinstance(node, (HasEvents, CountIn)):
        chosen = node.events
        if chosen.url_contains is not None or chosen.days is None or chosen.days[1] is None:
            return None
        events.append(node)
        return (type(node).__name__, chosen.event_type, getattr(node, "low", 1), getattr(node, "high", None))
    if isinstance(node, (AllOf, AnyOf)):
        parts = tuple(tree_shape(rule, events, fields) for rule in node.rules)
        return None if any(p is None for p in parts) else (type(node).__name__, parts)
    if isinstance(node, Not):
        part = tree_shape(node.rule, events, fields)
        return None if part is None else ("Not", part)
    return None


def moving(trees: list[Any]) -> tuple[Any, list[Any], list[Any]] | None:
    """(shape, activity rules, field subtrees) of trees whose points can be moved, None
    for trees without activity rules (a point of those costs microseconds already)."""
    events: list[Any] = []
    fields: list[Any] = []
    shape = tuple(tree_shape(tree, events, fields) for tree in trees)
    if not events or any(part is None for part in shape):
        return None
    return shape, events, fields


def flags_of(rows: Rows, n: int) -> np.ndarray:
    """An answer as one flag per row (a new array: the caller may change it)."""
    if isinstance(rows, BitMap):
        flags = np.zeros(n, dtype=bool)
        flags[bitmap_rows(rows)] = True
        return flags
    return np.array(rows, dtype=bool)


def remember_point(evaluator: PointEvaluator, members: np.ndarray, trees: list[Any]) -> None:
    """Keep what the next point needs to be moved from this one (evaluated in full)."""
    memory = evaluator.memory
    found = moving(trees)
    if found is None:
        memory.members = memory.shape = None
        memory.field_flags = {}
        return
    shape, events, fields = found
    # every window's counts as of this point: a later point moved from here must see
    # each row's count go from its count here to its count then (a rule answered here
    # without its counts would leave them at an older point)
    for node in events:
        etype, campaigns, (low, high) = evaluator.selection(node.events)
        if isinstance(node, HasEvents) and campaigns is None and low is None:
            memory.windows[("first day", etype, None)] = (None, high, None)
        else:
            evaluator.window_counts(etype, low, high, campaigns)
    # the field subtrees' flags are made when a point is moved (a trend whose fields
    # lower differently at every point never needs them)
    kept = {node: memory.field_flags[node] for node in fields if node in memory.field_flags}
    memory.members, memory.shape, memory.field_flags = members, shape, kept


def moved_point(evaluator: PointEvaluator, index: IndexData, trees: list[Any], day: dt.date) -> np.ndarray | None:
    """The rows whose membership changed since the last point (`memory.members` is
    updated), or None when this point must be evaluated in full."""
    memory = evaluator.memory
    found = moving(trees)
    if memory.members is None or found is None or found[0] != memory.shape:
        return None
    _, events, fields = found
    for node in fields:  # the same nodes as the last point's: the same answers
        if node not in memory.field_flags:
            memory.field_flags[node] = flags_of(evaluator.visit(node), evaluator.n)
    selections = [evaluator.selection(node.events) for node in events]
    keys = {window_key(etype, low, high, campaigns) for etype, campaigns, (low, high) in selections}
    if len({(k[0], k[2]) for k in keys}) != len(keys):
        return None  # two campaign lists over one window would move one count's state
    added = added_flags(index, memory, day)
    if added.grown is None:
        return None
    touched: list[np.ndarray] = [added.grown]
    moved: dict[tuple[Any, ...], list[Move]] = {}
    answers: dict[Any, Any] = {}
    for node, (etype, campaigns, (low, high)) in zip(events, selections, strict=True):
        if (isinstance(node, HasEvents) and campaigns is None and low is None):
            # "ever had one": whose first such event is on or before the day; only the
            # rows with an event on the days since the last point can have changed
            state = memory.windows.get(("first day", etype, None))
            memory.windows[("first day", etype, None)] = (None, high, None)
            if state is None or state[1] > high:
                return None
            evaluator.entered_rows(etype, state[1] + 1, high, touched)
            first = np.asarray(index.first[evaluator.type_code(etype)])
            answers[node] = lambda rows, first=first, high=high: first[rows] <= high
            continue
        key = window_key(etype, low, high, campaigns)
        if key not in moved:
            moved[key] = []
            if evaluator.moved_counts(etype, low, high, campaigns, moved[key]) is None:
                evaluator.window_counts(etype, low, high, campaigns)  # for the next point
                return None
        counts = memory.windows[key][2]
        test = count_in(1, None) if isinstance(node, HasEvents) else count_in(node.low, node.high)
        # a row whose count moved answers differently only if the move crossed the
        # rule's bounds (a row moved twice crosses in one of its moves at least)
        touched += [move.rows[test(move.before) != test(move.after)] for move in moved[key]]
        answers[node] = lambda rows, counts=counts, test=test: test(counts[rows])
    rows = np.concatenate(touched) if touched else np.zeros(0, np.uint32)
    now = np.zeros(len(rows), dtype=bool)
    for tree in trees:
        now |= flags_at(tree, rows, answers, memory.field_flags)
    now &= added.flags[rows]
    # a row touched twice (an event entering and one leaving) counts once. The rows are
    # a few runs already in order (a day's or a campaign's bitmap rows, the rows added),
    # which a stable sort merges; np.unique without counts hashes, many times slower
    changed, _ = runs(np.sort(rows[now != memory.members[rows]], kind="stable"))
    memory.members[changed] ^= True
    return changed


def flags_at(node: Any, rows: np.ndarray, answers: dict[Any, Any], fields: dict[Any, np.ndarray]) -> np.ndarray:
    """The answer of `node` at `rows`, one flag per row."""
    if about_fields(node):
        return fields[node][rows]
    if isinstance(node, (HasEvents, CountIn)):
        return answers[node](rows)
    if isinstance(node, Not):
        return ~flags_at(node.rule, rows, answers, fields)
    is_all = isinstance(node, AllOf)
    result = np.full(len(rows), is_all)
    for rule in node.rules:
        part = flags_at(rule, rows, answers, fields)
        result = result & part if is_all else result | part
    return result
