"""Lowering: a resolved rule tree rewritten into the few node kinds engines evaluate.

Runs after `rewrite.inline_references` and before any engine sees the tree (as ibis
lowers its expression trees before a backend compiles them). Everything the segment
language means beyond "and / or / not of simple tests" is decided here, once:

* negative operators (``is_not``, ``ne``, ``not_on``, ``excludes``, ``is_empty``, ...)
  become `Not` of their positive form, so docs/segments.md's rule "negative operators are
  true on empty values" follows from "positive tests are false on empty values";
  the operator table (`validate.OPERATORS`) says which operator negates which;
* `negate` on any node becomes a `Not` around it;
* date operators and activity `when` windows become inclusive day ranges fixed at
  `as_of` (a range no calendar day falls in becomes `Constant(False)`);
* count conditions become integer ranges; "at least one" is `HasEvents`, "none at
  all" is explicitly ``Not(HasEvents)``, ranges every contact or none passes fold to a
  `Constant`; a `CountIn` range that holds 0 also matches contacts without events;
* values become tuples, text (values, list names, url parts) lower-cased, campaign
  ids sorted and distinct;
* a bucket rule becomes `Bucket` (its range holds at least one bucket) or
  ``Constant(False)`` for an empty range.

Unknown fields, operators a field type lacks, unresolved references and foreign
objects in a tree fail here, with one message whatever the engine.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from ..errors import EngineError
from ..fields import FieldType, Schema
from .nodes import (
    ANY_CAMPAIGN,
    BUCKETS,
    ActivityRule,
    BucketRule,
    FieldRule,
    Group,
    LastCampaigns,
    Rule,
    SegmentRef,
    count_range,
    day_bounds,
)
from .validate import DAY_RANGE_OPS, OPERATORS, POSITIVE_OPS, one_of

Day = Union[dt.date, None]  # noqa: UP007 - None: the range is open at that end

# --- the lowered node kinds -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllOf:
    """True when every rule is (no rules: true)."""

    rules: tuple[Lowered, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """True when some rule is (no rules: false)."""

    rules: tuple[Lowered, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The complement of `rule`; engines never handle it (their `negate` does)."""

    rule: Lowered


@dataclass(frozen=True, slots=True)
class Constant:
    """A rule whose answer `as_of` already decides (e.g. ``before: 0001-01-01``)."""

    value: bool


@dataclass(frozen=True, slots=True)
class Present:
    """The field has a value: not null, and for text not ``""``, for lists not ``[]``."""

    field: str
    type: FieldType


@dataclass(frozen=True, slots=True)
class Compare:
    """A positive operator of the field's type; false on an empty value.

    `values` is a tuple: one value for ``is``/``eq``/``contains``/..., ``(low, high)``
    for ``between``, the list for ``in``/``includes``/``includes_all``. Text, status and
    list names are lower-cased; numbers are floats.
    """

    field: str
    type: FieldType
    op: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class DayRange:
    """A date or datetime field's UTC day is in ``[low, high]`` (false on empty)."""

    field: str
    type: FieldType
    low: Day
    high: Day


@dataclass(frozen=True, slots=True)
class Events:
    """The events an activity rule counts (hashable: rules counting the same share it).

    `campaigns`: ``"any"``, a sorted tuple of ids, or `LastCampaigns` (which campaigns
    those are depends on the data, so engines resolve it); `days`: the window's
    inclusive UTC day range, or None for no window; `url_contains`: lower-cased.
    """

    event_type: str
    campaigns: str | tuple[str, ...] | LastCampaigns = ANY_CAMPAIGN
    days: tuple[Day, Day] | None = None
    url_contains: str | None = None


@dataclass(frozen=True, slots=True)
class HasEvents:
    """The contact has at least one of `events`."""

    events: Events


@dataclass(frozen=True, slots=True)
class CountIn:
    """The contact's number of `events` is in ``[low, high]`` (high None: unbounded).

    Never ``[1, None]`` (that is `HasEvents`) nor ``[0, 0]`` (``Not(HasEvents)``). When
    `low` is 0 (`includes_zero`) contacts without any of the events match too.
    """

    events: Events
    low: int
    high: int | None

    @property
    def includes_zero(self) -> bool:
        return self.low == 0


@dataclass(frozen=True, slots=True)
class Bucket:
    """The contact's bucket number for `seed` (`nodes.bucket_number` of its stored
    email) is in ``[low, high)``, never an empty range; false for a contact without
    an email (only data never imported can lack one)."""

    seed: str
    low: int
    high: int


Lowered = Union[  # noqa: UP007
    AllOf, AnyOf, Not, Constant, Present, Compare, DayRange, HasEvents, CountIn, Bucket
]

#: Every kind a lowered tree holds. Engines handle all but `Not` (the base class does).
LOWERED_KINDS: tuple[type, ...] = (
    AllOf, AnyOf, Not, Constant, Present, Compare, DayRange, HasEvents, CountIn, Bucket,
)

TRUE, FALSE = Constant(True), Constant(False)


# --- the pass -------------------------------------------------------------------------


def lower(root: Rule, schema: Schema, as_of: dt.date) -> Lowered:
    """`root` (references inlined) as a lowered tree, fixed at `as_of`."""
    node = _lower(root, schema, as_of)
    return Not(node) if getattr(root, "negate", False) else node


def lower_all(roots: Sequence[Rule], schema: Schema, as_of: dt.date) -> tuple[Lowered, ...]:
    """`lower` of each root; trees asked again (warm runs, `explain`) come from a cache."""
    try:
        return tuple(_lower_cached(root, schema, as_of) for root in roots)
    except TypeError:  # a tree built by hand with an unhashable value (a list)
        return tuple(lower(root, schema, as_of) for root in roots)


@functools.lru_cache(maxsize=1024)
def _lower_cached(root: Rule, schema: Schema, as_of: dt.date) -> Lowered:
    # nodes are immutable, so a lowered tree can be shared by every request that asks
    return lower(root, schema, as_of)


def _lower(rule: Any, schema: Schema, as_of: dt.date) -> Lowered:
    if isinstance(rule, Group):
        rules = tuple(lower(child, schema, as_of) for child in rule.rules)
        if rule.match == "all":
            return AllOf(rules)
        if rule.match == "any":
            return AnyOf(rules)
        raise EngineError(f"unknown group match {rule.match!r}; use all or any")
    if isinstance(rule, FieldRule):
        return lower_field(rule, schema, as_of)
    if isinstance(rule, ActivityRule):
        return lower_activity(rule, as_of)
    if isinstance(rule, BucketRule):
        return lower_bucket(rule)
    if isinstance(rule, SegmentRef):
        raise EngineError(
            f"segment reference {rule.segment!r} was not resolved: engines evaluate resolved "
            "trees (inline_references replaces references first)"
        )
    raise EngineError(
        f"no handler for {type(rule).__name__}: engines cannot evaluate a "
        f"{type(rule).__name__} node ({rule!r}); a segment tree holds groups, field, "
        "activity, bucket and segment rules"
    )


def field_type(schema: Schema, name: str) -> FieldType:
    try:
        return schema[name]
    except KeyError:
        raise EngineError(f"unknown field {name!r}: the data has no such field") from None


def lower_field(rule: FieldRule, schema: Schema, as_of: dt.date) -> Lowered:
    ftype = field_type(schema, rule.field)
    ops = OPERATORS[ftype]
    spec = ops.get(rule.op)
    if spec is None:
        raise EngineError(
            f"{rule.op!r} is not an operator for {ftype} field {rule.field!r}; "
            f"it takes {one_of(ops)}"
        )
    if spec.positive is None:
        return positive_test(rule.field, ftype, rule.op, rule.value, as_of)
    return Not(positive_test(rule.field, ftype, spec.positive, rule.value, as_of))


def positive_test(field: str, ftype: FieldType, op: str, value: Any, as_of: dt.date) -> Lowered:
    """The lowered form of a positive operator (false on an empty value)."""
    if op == "is_not_empty":
        return Present(field, ftype)
    if not _lowers_to_compare(ftype, op):  # a day-range operator of a date field
        bounds = day_range(op, value, as_of)
        return FALSE if bounds is None else DayRange(field, ftype, *bounds)
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if ftype in (FieldType.TEXT, FieldType.ENUM, FieldType.SET):
        values = tuple(v.lower() for v in values)
    elif ftype is FieldType.NUMBER:
        values = tuple(float(v) for v in values)
    return Compare(field, ftype, op, values)


def _lowers_to_compare(ftype: FieldType, op: str) -> bool:
    dates = ftype in (FieldType.DATE, FieldType.DATETIME)
    return op != "is_not_empty" and not (dates and op in DAY_RANGE_OPS)


#: Per field type, the positive operators that become `Compare` nodes: what every
#: engine's `visit_compare` must implement (checked when its class is created).
COMPARE_OPS: dict[FieldType, frozenset[str]] = {
    ftype: frozenset(op for op in ops if _lowers_to_compare(ftype, op))
    for ftype, ops in POSITIVE_OPS.items()
}


def day_range(op: str, value: Any, as_of: dt.date) -> tuple[Day, Day] | None:
    """The inclusive day range of a date operator at `as_of`; None when it holds no day."""
    low, high = day_bounds(op, value, as_of)
    if low is not None and high is not None and low > high:
        return None
    return low, high


def lower_activity(rule: ActivityRule, as_of: dt.date) -> Lowered:
    days = None
    if rule.when is not None:
        days = day_range(rule.when.op, rule.when.value, as_of)
    low, high = count_range(rule.count)
    if high is not None and low > high:
        return FALSE
    if low == 0 and high is None:
        return TRUE
    if rule.when is not None and days is None:  # a window without a day: no event counts
        return Constant(low == 0)
    campaigns = rule.campaigns
    if isinstance(campaigns, (tuple, list)):
        campaigns = tuple(sorted(set(campaigns)))
    url = None if rule.url_contains is None else rule.url_contains.lower()
    events = Events(rule.event_type, campaigns, days, url)
    if (low, high) == (1, None):
        return HasEvents(events)
    if (low, high) == (0, 0):
        return Not(HasEvents(events))
    return CountIn(events, low, high)


def lower_bucket(rule: BucketRule) -> Lowered:
    if not 0 <= rule.low <= rule.high <= BUCKETS:
        raise EngineError(
            f"bucket range [{rule.low}, {rule.high}) is not within [0, {BUCKETS}] with from <= to"
        )
    if rule.low == rule.high:  # holds no bucket
        return FALSE
    return Bucket(rule.seed, rule.low, rule.high)


# --- reading lowered trees ------------------------------------------------------------


def events_of(node: Lowered) -> list[Events]:
    """Every distinct event selection in a lowered tree, in tree order."""
    found: dict[Events, None] = {}

    def walk(n: Lowered) -> None:
        if isinstance(n, (AllOf, AnyOf)):
            for child in n.rules:
                walk(child)
        elif isinstance(n, Not):
            walk(n.rule)
        elif isinstance(n, (HasEvents, CountIn)):
            found.setdefault(n.events)

    walk(node)
    return list(found)


def fields_of(node: Lowered) -> set[str]:
    """Every contact field a lowered tree reads (a bucket rule reads the address)."""
    if isinstance(node, (AllOf, AnyOf)):
        return set().union(*(fields_of(child) for child in node.rules))
    if isinstance(node, Not):
        return fields_of(node.rule)
    if isinstance(node, (Present, Compare, DayRange)):
        return {node.field}
    if isinstance(node, Bucket):
        return {"email"}
    return set()


# --- time travel: the data as it stood at the end of a day ----------------------------


def as_it_stood(node: Lowered, day: dt.date, added: FieldType = FieldType.DATETIME) -> Lowered:
    """`node` (lowered at ``as_of = day``) over the data as it stood at the end of `day`.

    Every event selection is cut to events on or before `day`, and only contacts whose
    ``date_added`` day is on or before `day` can match. "The last N campaigns" already
    see nothing later at ``as_of = day``. Field values and statuses stay the current
    ones: the workspace keeps no history of them. Engines evaluate the result as any
    lowered tree, so every engine answers a point of a trend the same way.
    """
    return AllOf((DayRange("date_added", added, None, day), _capped(node, day)))


def _capped(node: Lowered, day: dt.date) -> Lowered:
    if isinstance(node, AllOf):
        return AllOf(tuple(_capped(rule, day) for rule in node.rules))
    if isinstance(node, AnyOf):
        return AnyOf(tuple(_capped(rule, day) for rule in node.rules))
    if isinstance(node, Not):
        return Not(_capped(node.rule, day))
    if isinstance(node, (HasEvents, CountIn)):
        low, high = node.events.days or (None, None)
        high = day if high is None else min(high, day)
        if low is not None and low > high:  # the window lies after `day`: no event counts
            return Constant(isinstance(node, CountIn) and node.includes_zero)
        events = Events(node.events.event_type, node.events.campaigns, (low, high),
                        node.events.url_contains)
        if isinstance(node, HasEvents):
            return HasEvents(events)
        return CountIn(events, node.low, node.high)
    return node  # field tests and constants do not depend on events
