"""The segment rule tree: immutable, typed, hashable nodes.

A parsed and validated definition is a `Segment` whose `root` is a `Group`. Values
are normalised by the parser, so engines never re-check them:

================================  ==============================================
field type / operator             `FieldRule.value`
================================  ==============================================
text is/is_not/contains/...       ``str`` as written (engines lower-case it)
text in/not_in                    ``tuple[str, ...]``
number eq/ne/gt/gte/lt/lte        ``float``
number between                    ``(low, high)`` floats
number in/not_in                  ``tuple[float, ...]``
date on/not_on/before/after       ``datetime.date``
date between                      ``(date, date)``
date in_last_days/older_than_days ``int`` (>= 0)
boolean is                        ``bool``
status is/is_not                  ``str``, lower-case
status in/not_in                  ``tuple[str, ...]``, lower-case
lists includes/includes_all/...   ``tuple[str, ...]`` as written
is_empty/is_not_empty             ``None``
================================  ==============================================
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass, field
from typing import Any, Union

from ..fields import ACTIVITY_EVENT_TYPE

ANY_CAMPAIGN = "any"

@dataclass(frozen=True, slots=True)
class FieldRule:
    field: str
    op: str
    value: Any = None
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Window:
    """An activity rule's `when`: a day window on the event's UTC date."""

    op: str  # on | before | after | between | in_last_days | older_than_days
    value: Any  # date, (date, date) or int


@dataclass(frozen=True, slots=True)
class CountCondition:
    """An activity rule's `count`: how many matching events the contact must have."""

    op: str = "gte"  # eq | gte | lte | gt | lt | between
    value: Any = 1  # int or (low, high)


@dataclass(frozen=True, slots=True)
class LastCampaigns:
    """``campaigns: {last: N}``: the N campaigns sent last on or before `as_of`."""

    n: int


Campaigns = Union[str, tuple[str, ...], LastCampaigns]  # noqa: UP007 - readable alias


@dataclass(frozen=True, slots=True)
class ActivityRule:
    activity: str  # sent | opened | clicked | bounced | unsubscribed
    campaigns: Campaigns = ANY_CAMPAIGN
    when: Window | None = None
    count: CountCondition = field(default_factory=CountCondition)
    url_contains: str | None = None
    negate: bool = False

    @property
    def event_type(self) -> str:
        """The stored event type this rule counts (``opened`` counts ``open`` events)."""
        return ACTIVITY_EVENT_TYPE[self.activity]


@dataclass(frozen=True, slots=True)
class SegmentRef:
    segment: str
    negate: bool = False


@dataclass(frozen=True, slots=True)
class BucketRule:
    """``{bucket: {seed, from, to}}``: the contact's bucket number for `seed` is in
    ``[low, high)`` (`bucket_number`); ``0 <= low <= high <= BUCKETS``."""

    seed: str
    low: int
    high: int
    negate: bool = False


@dataclass(frozen=True, slots=True)
class Group:
    match: str = "all"  # all | any
    rules: tuple[Rule, ...] = ()
    negate: bool = False


Rule = Union[Group, FieldRule, ActivityRule, BucketRule, SegmentRef]  # noqa: UP007
NODE_TYPES: tuple[type, ...] = (Group, FieldRule, ActivityRule, BucketRule, SegmentRef)


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    root: Group
    description: str = ""


# --- shared semantics -------------------------------------------------------------
# The lowering pass (lower.py) uses these, so day arithmetic and count conditions are
# defined once.


def count_range(cond: CountCondition) -> tuple[int, int | None]:
    """The inclusive range of event counts a condition accepts (None: no upper bound).

    ``lt 0`` gives ``(0, -1)``, a range that holds no count.
    """
    op, v = cond.op, cond.value
    ranges = {
        "eq": lambda: (v, v),
        "gte": lambda: (v, None),
        "lte": lambda: (0, v),
        "gt": lambda: (v + 1, None),
        "lt": lambda: (0, v - 1),
        "between": lambda: (v[0], v[1]),
    }
    if op not in ranges:
        raise ValueError(f"unknown count operator {op!r}")
    low, high = ranges[op]()
    return max(int(low), 0), None if high is None else int(high)


def day_bounds(op: str, value: Any, as_of: dt.date) -> tuple[dt.date | None, dt.date | None]:
    """The inclusive day range ``(low, high)`` a date operator selects; None = unbounded.

    ``not_on`` is not a range: engines evaluate it as the negation of ``on``. At the
    ends of the calendar a range that selects no day is ``EMPTY_RANGE`` (low > high),
    and a lower bound before the first day is unbounded.
    """
    try:
        return _day_bounds(op, value, as_of)
    except OverflowError:
        if op == "in_last_days":
            return None, as_of
        return EMPTY_RANGE


EMPTY_RANGE: tuple[dt.date, dt.date] = (dt.date.max, dt.date.min)


def _day_bounds(op: str, value: Any, as_of: dt.date) -> tuple[dt.date | None, dt.date | None]:
    one = dt.timedelta(days=1)
    if op == "on":
        return value, value
    if op == "before":
        return None, value - one
    if op == "after":
        return value + one, None
    if op == "between":
        return value[0], value[1]
    if op == "in_last_days":
        return as_of - dt.timedelta(days=value), as_of
    if op == "older_than_days":
        return None, as_of - dt.timedelta(days=value) - one
    raise ValueError(f"{op!r} is not a day-range operator")


#: Bucket numbers run from 0 to BUCKETS - 1: a bucket is one hundredth of a percent.
BUCKETS = 10_000
#: How many leading hex digits of the SHA-256 make the number (60 bits: every SQL
#: dialect's signed 64-bit integer holds it).
BUCKET_HEX_DIGITS = 15


def bucket_number(seed: str, email: str) -> int:
    """The contact's bucket number for `seed`: stable, it depends on nothing but the
    seed and the (normalised, as stored) email, never on the engine or the day."""
    digest = _sha256()(f"{seed}:{email}".encode()).hexdigest()
    return int(digest[:BUCKET_HEX_DIGITS], 16) % BUCKETS


@functools.cache
def _sha256():
    # hashlib loads OpenSSL (~3 ms): a count that splits no bucket never needs it
    from hashlib import sha256

    return sha256


def today_utc() -> dt.date:
    """The default `as_of`: today's date in UTC."""
    return dt.datetime.now(dt.UTC).date()
