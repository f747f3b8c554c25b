"""Evaluate segments with Polars' lazy (streaming) engine over the workspace's Parquet files.

A resolved rule tree compiles, through `functools.singledispatch` (as ibis' Polars backend
does), into one boolean `pl.Expr` over the contacts frame. Every compiled rule is
two-valued: a null never escapes a handler, so `~` is an exact negation and `negate`,
`is_not`, `ne`, ... need no special null handling.

Activity rules need the events: all activity rules of a request share one scan of the
events, pre-filtered to rows any of them counts, grouped by contact with one conditional
sum per rule, and left-joined onto the contacts (a contact without events counts 0).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from ..definition.nodes import (
    ANY_CAMPAIGN,
    POSITIVE_OF,
    ActivityRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    Rule,
    SegmentRef,
    Window,
    day_bounds,
)
from ..errors import EngineError
from ..fields import STATUSES, FieldType, Schema
from ..store.manifest import Tables
from .base import Engine, empty_by_status

#: Polars type of each field type as the engine reads it (SPEC section 9 layout).
#: Timestamps are read as naive UTC microseconds whatever unit or zone the file uses.
TIMESTAMP = pl.Datetime("us")
POLARS_TYPES: dict[FieldType, pl.DataType] = {
    FieldType.TEXT: pl.String(),
    FieldType.NUMBER: pl.Float64(),
    FieldType.DATE: pl.Date(),
    FieldType.DATETIME: TIMESTAMP,
    FieldType.BOOLEAN: pl.Boolean(),
    FieldType.ENUM: pl.String(),
    FieldType.SET: pl.List(pl.String()),
}

EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "contact_id": pl.Int64(),
    "campaign": pl.String(),
    "type": pl.String(),
    "timestamp": TIMESTAMP,
    "url": pl.String(),
}

#: Lets files written with another timestamp unit or zone, integer numbers or
#: categorical text be read as the types above; nothing lossy for day-granular rules.
_CAST_OPTIONS = pl.ScanCastOptions(
    integer_cast="allow-float",
    float_cast="upcast",
    datetime_cast=["nanosecond-downcast", "upcast", "convert-timezone"],
    categorical_to_string="allow",
)

#: Columns the engine adds hold a `#`, which no field name may contain, so they can
#: never shadow a custom field.
_ACTIVITY_COLUMN = "activity#{}"


def contacts_schema(schema: Schema) -> dict[str, pl.DataType]:
    """The contacts frame's columns and types (``email_domain`` is derived, not stored)."""
    columns: dict[str, pl.DataType] = {"contact_id": pl.Int64()}
    columns.update(
        (name, POLARS_TYPES[ftype]) for name, ftype in schema.items() if name != "email_domain"
    )
    return columns


def scan(files: Sequence[str], columns: Mapping[str, pl.DataType]) -> pl.LazyFrame:
    """Lazily read Parquet `files` as `columns`; no files is an empty frame of that shape.

    Columns missing from a file (a field created after it was written) read as null.
    """
    if not files:
        return pl.LazyFrame(schema=dict(columns))
    return pl.scan_parquet(
        list(files),
        schema=dict(columns),
        missing_columns="insert",
        extra_columns="ignore",
        cast_options=_CAST_OPTIONS,
    )


# --- the compile context ----------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What handlers need besides the rule: the schema, `as_of`, activity count columns."""

    schema: Schema
    as_of: dt.date
    activity_columns: Mapping[ActivityRule, str]


def activity_key(rule: ActivityRule) -> ActivityRule:
    """Rules that count the same events share one count column, whatever their negate."""
    return replace(rule, negate=False)


def activity_rules(rule: Rule) -> Iterator[ActivityRule]:
    """Every activity rule in a tree (by `activity_key`), in tree order."""
    if isinstance(rule, Group):
        for child in rule.rules:
            yield from activity_rules(child)
    elif isinstance(rule, ActivityRule):
        yield activity_key(rule)


# --- days -------------------------------------------------------------------------

#: What a day range whose bound falls off the calendar means: `in_last_days` with a huge N
#: reaches back to the beginning of time; `before 0001-01-01` or `after 9999-12-31` is empty.
_OVERFLOW_BOUNDS: dict[str, Callable[[dt.date], tuple[dt.date | None, dt.date | None] | None]] = {
    "in_last_days": lambda as_of: (None, as_of),
    "on": lambda as_of: None,
    "before": lambda as_of: None,
    "after": lambda as_of: None,
    "between": lambda as_of: None,
    "older_than_days": lambda as_of: None,
}


def _day_range(op: str, value: Any, as_of: dt.date) -> tuple[dt.date | None, dt.date | None] | None:
    """`day_bounds`, or None for a range that holds no day of the calendar."""
    try:
        return day_bounds(op, value, as_of)
    except OverflowError:
        return _OVERFLOW_BOUNDS[op](as_of)


def _in_days(day: pl.Expr, op: str, value: Any, as_of: dt.date) -> pl.Expr:
    """`day` (a Date expression) is in the range `op value` selects; null stays null."""
    bounds = _day_range(op, value, as_of)
    if bounds is None:
        return pl.lit(False)
    low, high = bounds
    conditions = []
    if low is not None:
        conditions.append(day >= pl.lit(low))
    if high is not None:
        conditions.append(day <= pl.lit(high))
    if not conditions:
        return day.is_not_null()
    return pl.all_horizontal(conditions) if len(conditions) > 1 else conditions[0]


# --- field rules ------------------------------------------------------------------
# Each type has a column expression, an "empty" predicate and a table of *positive*
# operators. A positive operator is false on an empty value; each negative operator is
# the negation of its positive one (SPEC: `is_not` is exactly not `is`, ...).

Op = Callable[[pl.Expr, Any, dt.date], pl.Expr]


def _lower(values: Sequence[str]) -> list[str]:
    return [v.lower() for v in values]


TEXT_OPS: dict[str, Op] = {
    "is": lambda c, v, _: c == v.lower(),
    "contains": lambda c, v, _: c.str.contains(v.lower(), literal=True),
    "starts_with": lambda c, v, _: c.str.starts_with(v.lower()),
    "ends_with": lambda c, v, _: c.str.ends_with(v.lower()),
    "in": lambda c, v, _: c.is_in(_lower(v)),
}

NUMBER_OPS: dict[str, Op] = {
    "eq": lambda c, v, _: c == v,
    "gt": lambda c, v, _: c > v,
    "gte": lambda c, v, _: c >= v,
    "lt": lambda c, v, _: c < v,
    "lte": lambda c, v, _: c <= v,
    "between": lambda c, v, _: c.is_between(v[0], v[1]),
    "in": lambda c, v, _: c.is_in([float(x) for x in v]),
}

DATE_OPS: dict[str, Op] = {
    op: functools.partial(lambda c, v, as_of, op: _in_days(c, op, v, as_of), op=op)
    for op in ("on", "before", "after", "between", "in_last_days", "older_than_days")
}

BOOLEAN_OPS: dict[str, Op] = {"is": lambda c, v, _: c == v}

STATUS_OPS: dict[str, Op] = {
    "is": lambda c, v, _: c == v.lower(),
    "in": lambda c, v, _: c.is_in(_lower(v)),
}


def _has_any(lists: pl.Expr, names: Sequence[str]) -> pl.Expr:
    return lists.list.eval(pl.element().is_in(_lower(names))).list.any()


def _has_all(lists: pl.Expr, names: Sequence[str]) -> pl.Expr:
    return pl.all_horizontal([lists.list.contains(name) for name in dict.fromkeys(_lower(names))])


SET_OPS: dict[str, Op] = {
    "includes": lambda c, v, _: _has_any(c, v),
    "includes_all": lambda c, v, _: _has_all(c, v),
}


def _email_domain() -> pl.Expr:
    # After the last '@': a domain never holds one, a quoted local part may.
    return pl.col("email").str.extract(r"@([^@]*)$", 1)


def _text_column(name: str) -> pl.Expr:
    return _email_domain() if name == "email_domain" else pl.col(name)


def _text_empty(c: pl.Expr) -> pl.Expr:
    return c.is_null() | (c == "")


def _number_valid(c: pl.Expr) -> pl.Expr:
    # NaN is a value, not empty, but like Python's float it equals and orders with nothing.
    return c.is_not_nan()


@dataclass(frozen=True)
class FieldKind:
    """How one field type compiles: its column, its empty test, its positive operators.

    `prepare` turns the raw column into what operators compare (lower-cased text, a
    UTC date); `valid` marks values an operator may match besides being non-empty.
    """

    ops: Mapping[str, Op]
    empty: Callable[[pl.Expr], pl.Expr] = lambda c: c.is_null()
    prepare: Callable[[pl.Expr], pl.Expr] = lambda c: c
    valid: Callable[[pl.Expr], pl.Expr] | None = None
    column: Callable[[str], pl.Expr] = pl.col


def _lower_text(c: pl.Expr) -> pl.Expr:
    return c.str.to_lowercase()


def _lower_list(c: pl.Expr) -> pl.Expr:
    return c.list.eval(pl.element().str.to_lowercase())


FIELD_KINDS: dict[FieldType, FieldKind] = {
    FieldType.TEXT: FieldKind(TEXT_OPS, _text_empty, _lower_text, column=_text_column),
    FieldType.NUMBER: FieldKind(NUMBER_OPS, valid=_number_valid),
    FieldType.DATE: FieldKind(DATE_OPS),
    FieldType.DATETIME: FieldKind(DATE_OPS, prepare=lambda c: c.dt.date()),
    FieldType.BOOLEAN: FieldKind(BOOLEAN_OPS),
    FieldType.ENUM: FieldKind(STATUS_OPS, _text_empty, _lower_text),
    FieldType.SET: FieldKind(SET_OPS, lambda c: c.is_null() | (c.list.len() == 0), _lower_list),
}


def compile_field(rule: FieldRule, schema: Schema, as_of: dt.date) -> pl.Expr:
    """A field rule (without its negate) as a never-null boolean expression."""
    try:
        kind = FIELD_KINDS[schema[rule.field]]
    except KeyError:
        raise EngineError(f"unknown field {rule.field!r}") from None
    column = kind.column(rule.field)
    empty = kind.empty(column)
    if rule.op == "is_empty":
        return empty.fill_null(True)
    if rule.op == "is_not_empty":
        return (~empty).fill_null(False)
    positive_op = POSITIVE_OF.get(rule.op, rule.op)
    op = kind.ops.get(positive_op)
    if op is None:
        raise EngineError(f"{rule.op!r} is not an operator for field {rule.field!r}")
    matched = ~empty & op(kind.prepare(column), rule.value, as_of)
    if kind.valid is not None:
        matched = matched & kind.valid(column)
    matched = matched.fill_null(False)
    return ~matched if positive_op != rule.op else matched


# --- activity rules ---------------------------------------------------------------

COUNT_OPS: dict[str, Callable[[pl.Expr, Any], pl.Expr]] = {
    "eq": lambda n, v: n == v,
    "gte": lambda n, v: n >= v,
    "lte": lambda n, v: n <= v,
    "gt": lambda n, v: n > v,
    "lt": lambda n, v: n < v,
    "between": lambda n, v: n.is_between(v[0], v[1]),
}


def count_condition(n: pl.Expr, cond: CountCondition) -> pl.Expr:
    try:
        return COUNT_OPS[cond.op](n, cond.value)
    except KeyError:
        raise EngineError(f"unknown count operator {cond.op!r}") from None


def _window(when: Window | None, as_of: dt.date) -> pl.Expr:
    if when is None:
        return pl.lit(True)
    return _in_days(pl.col("timestamp").dt.date(), when.op, when.value, as_of)


def _url(url_contains: str | None) -> pl.Expr:
    if url_contains is None:
        return pl.lit(True)
    # A null URL never matches.
    contains = pl.col("url").str.to_lowercase().str.contains(url_contains.lower(), literal=True)
    return contains.fill_null(False)


def _campaign_filter(campaigns: Any, last: Callable[[int], list[str]]) -> pl.Expr:
    if campaigns == ANY_CAMPAIGN:
        return pl.lit(True)
    if isinstance(campaigns, LastCampaigns):
        return pl.col("campaign").is_in(last(campaigns.n))
    return pl.col("campaign").is_in(list(campaigns))


def event_filter(rule: ActivityRule, as_of: dt.date, last: Callable[[int], list[str]]) -> pl.Expr:
    """The events an activity rule counts, as a never-null predicate over the events."""
    return pl.all_horizontal(
        pl.col("type") == rule.event_type,
        _campaign_filter(rule.campaigns, last),
        _window(rule.when, as_of),
        _url(rule.url_contains),
    ).fill_null(False)


def campaigns_by_send_time(events: pl.LazyFrame, as_of: dt.date) -> pl.LazyFrame:
    """Campaigns sent on or before `as_of`, latest send time first, ties by id descending.

    A campaign's send time is its earliest `sent` event; ids order by code point, which
    is the byte order of UTF-8 that Polars sorts strings by.
    """
    end_of_day = dt.datetime.combine(as_of, dt.time()) + dt.timedelta(days=1)
    return (
        events.filter(pl.col("type") == "sent")
        .group_by("campaign")
        .agg(pl.col("timestamp").min().alias("send_time"))
        .filter(pl.col("send_time") < end_of_day)
        .sort(["send_time", "campaign"], descending=[True, True])
        .select("campaign")
    )


# --- the rule compiler ------------------------------------------------------------


def to_expr(rule: Rule, ctx: _Context) -> pl.Expr:
    """A rule as a never-null boolean expression over the contacts frame, negate applied."""
    expr = compile_rule(rule, ctx)
    return ~expr if rule.negate else expr


@functools.singledispatch
def compile_rule(rule: object, ctx: _Context) -> pl.Expr:
    """Compile one node without its `negate`; unknown node types fail loudly."""
    raise EngineError(f"the polars engine cannot evaluate a {type(rule).__name__} node")


@compile_rule.register
def _group(rule: Group, ctx: _Context) -> pl.Expr:
    # Empty `all` matches everyone and empty `any` nobody: the identities of and/or.
    parts = [to_expr(child, ctx) for child in rule.rules]
    if rule.match == "all":
        return pl.all_horizontal(parts) if parts else pl.lit(True)
    if rule.match == "any":
        return pl.any_horizontal(parts) if parts else pl.lit(False)
    raise EngineError(f"unknown group match {rule.match!r}")


@compile_rule.register
def _field(rule: FieldRule, ctx: _Context) -> pl.Expr:
    return compile_field(rule, ctx.schema, ctx.as_of)


@compile_rule.register
def _activity(rule: ActivityRule, ctx: _Context) -> pl.Expr:
    n = pl.col(ctx.activity_columns[activity_key(rule)]).fill_null(0)
    return count_condition(n, rule.count)


@compile_rule.register
def _segment_ref(rule: SegmentRef, ctx: _Context) -> pl.Expr:
    raise EngineError(
        f"segment reference {rule.segment!r} was not resolved: engines evaluate resolved "
        "trees (segengine.definition.rewrite inlines references first)"
    )


# --- the engine -------------------------------------------------------------------


class PolarsEngine(Engine):
    """Segments evaluated by Polars' lazy engine, straight from the Parquet files."""

    name = "polars"
    #: "streaming" processes the Parquet files in batches with bounded memory.
    collect_engine = "streaming"

    def __init__(self, tables: Tables):
        super().__init__(tables)
        self._last_cache: dict[dt.date, list[str]] = {}

    def contacts(self) -> pl.LazyFrame:
        return scan(self.tables.contacts, contacts_schema(self.tables.schema))

    def events(self) -> pl.LazyFrame:
        return scan(self.tables.events, EVENTS_SCHEMA)

    def matching(self, roots: Sequence[Group], as_of: dt.date) -> pl.LazyFrame:
        """The contacts (all columns) matching any of `roots`, evaluated at `as_of`."""
        keys = list(dict.fromkeys(key for root in roots for key in activity_rules(root)))
        columns = {key: _ACTIVITY_COLUMN.format(i) for i, key in enumerate(keys)}
        ctx = _Context(self.tables.schema, as_of, columns)
        contacts = self.contacts()
        if keys:
            contacts = contacts.join(
                self._activity_counts(columns, as_of), on="contact_id", how="left"
            )
        predicate = (
            pl.any_horizontal([to_expr(root, ctx) for root in roots]) if roots else (pl.lit(False))
        )
        return contacts.filter(predicate).drop(list(columns.values()))

    def contact_ids(self, roots: Sequence[Group], as_of: dt.date) -> np.ndarray:
        ids = (
            self.matching(roots, as_of)
            .select("contact_id")
            .unique()
            .sort("contact_id")
            .collect(engine=self.collect_engine)
        )
        return ids.get_column("contact_id").to_numpy().astype(np.int64, copy=False)

    def count(self, roots: Sequence[Group], as_of: dt.date) -> dict[str, int]:
        by_status = (
            self.matching(roots, as_of)
            .group_by("status")
            .agg(pl.len().alias("n"))
            .collect(engine=self.collect_engine)
        )
        counts = empty_by_status()
        for status, n in by_status.iter_rows():
            if status in STATUSES:
                counts[status] = int(n)
        return counts

    def _activity_counts(self, columns: Mapping[ActivityRule, str], as_of: dt.date) -> pl.LazyFrame:
        """Per contact with events, one count column per activity rule, in one events scan."""
        last = functools.partial(self._last_campaigns, as_of)
        filters = {name: event_filter(rule, as_of, last) for rule, name in columns.items()}
        event_types = sorted({rule.event_type for rule in columns})
        # The cheap type test goes first, into the scan: Polars evaluates a predicate's
        # every term on every row, and lower-casing all URLs costs 3x the whole query.
        return (
            self.events()
            .filter(pl.col("type").is_in(event_types))
            .with_columns(**filters)
            .filter(pl.any_horizontal(list(filters)))
            .group_by("contact_id")
            .agg([pl.col(name).sum() for name in filters])
        )

    def _last_campaigns(self, as_of: dt.date, n: int) -> list[str]:
        """The `n` campaigns sent last on or before `as_of` (computed once per `as_of`)."""
        if as_of not in self._last_cache:
            ranked = campaigns_by_send_time(self.events(), as_of).collect(
                engine=self.collect_engine
            )
            self._last_cache[as_of] = ranked.get_column("campaign").to_list()
        return self._last_cache[as_of][:n]
