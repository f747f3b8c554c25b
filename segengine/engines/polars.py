"""Evaluate segments with Polars' lazy (streaming) engine over the workspace's Parquet files.

A lowered rule tree (`segengine.definition.lower`) compiles, through a `Visitor`, into one
boolean `pl.Expr` over the contacts frame. Every compiled rule is two-valued: a null never
escapes a handler, so `~` is an exact negation and `Not` needs no special null handling.

Activity rules need the events: all activity rules of a request share one scan of the
events, pre-filtered to rows any of them counts, grouped by contact with one conditional
sum per distinct event selection, and left-joined onto the contacts (a contact without events counts 0).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

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
    Present,
    events_of,
)
from ..definition.nodes import ANY_CAMPAIGN, LastCampaigns, bucket_number
from ..fields import EMAIL_DOMAIN_PATTERN, STATUSES, FieldType, Schema
from ..store.manifest import Tables
from .base import Engine, Visitor, empty_by_status

#: Polars type of each field type as the engine reads it (docs/sql.md layout).
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


# --- days -------------------------------------------------------------------------


def _in_days(day: pl.Expr, low: dt.date | None, high: dt.date | None) -> pl.Expr:
    """`day` (a Date expression) is in the inclusive range; null stays null."""
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
# operators over the `Compare` node's values (a tuple, text already lower-cased). A
# positive operator is false on an empty value; negative ones are `Not` of it.

Op = Callable[[pl.Expr, tuple], pl.Expr]

TEXT_OPS: dict[str, Op] = {
    "is": lambda c, v: c == v[0],
    "contains": lambda c, v: c.str.contains(v[0], literal=True),
    "starts_with": lambda c, v: c.str.starts_with(v[0]),
    "ends_with": lambda c, v: c.str.ends_with(v[0]),
    "in": lambda c, v: c.is_in(list(v)),
}

NUMBER_OPS: dict[str, Op] = {
    "eq": lambda c, v: c == v[0],
    "gt": lambda c, v: c > v[0],
    "gte": lambda c, v: c >= v[0],
    "lt": lambda c, v: c < v[0],
    "lte": lambda c, v: c <= v[0],
    "between": lambda c, v: c.is_between(v[0], v[1]),
    "in": lambda c, v: c.is_in(list(v)),
}

BOOLEAN_OPS: dict[str, Op] = {"is": lambda c, v: c == v[0]}

STATUS_OPS: dict[str, Op] = {
    "is": lambda c, v: c == v[0],
    "in": lambda c, v: c.is_in(list(v)),
}


def _has_any(lists: pl.Expr, names: Sequence[str]) -> pl.Expr:
    return lists.list.eval(pl.element().is_in(list(names))).list.any()


def _has_all(lists: pl.Expr, names: Sequence[str]) -> pl.Expr:
    return pl.all_horizontal([lists.list.contains(name) for name in dict.fromkeys(names)])


SET_OPS: dict[str, Op] = {
    "includes": lambda c, v: _has_any(c, v),
    "includes_all": lambda c, v: _has_all(c, v),
}


def _email_domain() -> pl.Expr:
    return pl.col("email").str.extract(EMAIL_DOMAIN_PATTERN, 1)


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
    FieldType.DATE: FieldKind({}),
    FieldType.DATETIME: FieldKind({}, prepare=lambda c: c.dt.date()),
    FieldType.BOOLEAN: FieldKind(BOOLEAN_OPS),
    FieldType.ENUM: FieldKind(STATUS_OPS, _text_empty, _lower_text),
    FieldType.SET: FieldKind(SET_OPS, lambda c: c.is_null() | (c.list.len() == 0), _lower_list),
}


# --- activity rules ---------------------------------------------------------------


def _count_in(n: pl.Expr, low: int, high: int | None) -> pl.Expr:
    return n >= low if high is None else n.is_between(low, high)


def _url(url_contains: str | None) -> pl.Expr:
    if url_contains is None:
        return pl.lit(True)
    # A null URL never matches.
    contains = pl.col("url").str.to_lowercase().str.contains(url_contains, literal=True)
    return contains.fill_null(False)


def _campaign_filter(campaigns: Any, last: Callable[[int], list[str]]) -> pl.Expr:
    if campaigns == ANY_CAMPAIGN:
        return pl.lit(True)
    if isinstance(campaigns, LastCampaigns):
        return pl.col("campaign").is_in(last(campaigns.n))
    return pl.col("campaign").is_in(list(campaigns))


def event_filter(events: Events, last: Callable[[int], list[str]]) -> pl.Expr:
    """The events an activity rule counts, as a never-null predicate over the events."""
    window = pl.lit(True)
    if events.days is not None:
        window = _in_days(pl.col("timestamp").dt.date(), *events.days)
    return pl.all_horizontal(
        pl.col("type") == events.event_type,
        _campaign_filter(events.campaigns, last),
        window,
        _url(events.url_contains),
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


@dataclass
class Compiler(Visitor[pl.Expr]):
    """A lowered tree as one never-null boolean expression over the contacts frame.

    Every handler is two-valued (a null never escapes), so `~` is an exact negation.
    `activity_columns` names the count column of each event selection.
    """

    schema: Schema
    activity_columns: Mapping[Events, str]

    engine_name = "polars"
    COMPARE_OPS = {ftype: kind.ops for ftype, kind in FIELD_KINDS.items()}

    def negate(self, expr: pl.Expr) -> pl.Expr:
        return ~expr

    def visit_all_of(self, node: AllOf) -> pl.Expr:
        # Empty `all` matches everyone and empty `any` nobody: the identities of and/or.
        parts = [self.visit(child) for child in node.rules]
        return pl.all_horizontal(parts) if parts else pl.lit(True)

    def visit_any_of(self, node: AnyOf) -> pl.Expr:
        parts = [self.visit(child) for child in node.rules]
        return pl.any_horizontal(parts) if parts else pl.lit(False)

    def visit_constant(self, node: Constant) -> pl.Expr:
        return pl.lit(node.value)

    def visit_present(self, node: Present) -> pl.Expr:
        kind = FIELD_KINDS[node.type]
        return (~kind.empty(kind.column(node.field))).fill_null(False)

    def positive(self, field: str, ftype: FieldType, test: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
        """`test` of the prepared column, false on an empty (or invalid) value."""
        kind = FIELD_KINDS[ftype]
        column = kind.column(field)
        matched = ~kind.empty(column) & test(kind.prepare(column))
        if kind.valid is not None:
            matched = matched & kind.valid(column)
        return matched.fill_null(False)

    def visit_compare(self, node: Compare) -> pl.Expr:
        op = FIELD_KINDS[node.type].ops[node.op]
        return self.positive(node.field, node.type, lambda c: op(c, node.values))

    def visit_day_range(self, node: DayRange) -> pl.Expr:
        return self.positive(node.field, node.type, lambda c: _in_days(c, node.low, node.high))

    def visit_bucket(self, node: Bucket) -> pl.Expr:
        # Polars has no SHA-256: the one Python rule, per batch of emails
        def numbers(emails: pl.Series) -> pl.Series:
            return pl.Series(
                [None if e is None else bucket_number(node.seed, e) for e in emails.to_list()],
                dtype=pl.Int32,
            )

        number = pl.col("email").map_batches(numbers, return_dtype=pl.Int32, is_elementwise=True)
        return number.is_between(node.low, node.high - 1).fill_null(False)

    def count(self, events: Events) -> pl.Expr:
        return pl.col(self.activity_columns[events]).fill_null(0)

    def visit_has_events(self, node: HasEvents) -> pl.Expr:
        return self.count(node.events) >= 1

    def visit_count_in(self, node: CountIn) -> pl.Expr:
        return _count_in(self.count(node.events), node.low, node.high)


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

    def matching(self, roots: Sequence[Lowered], as_of: dt.date) -> pl.LazyFrame:
        """The contacts (all columns) matching any of lowered `roots`, at `as_of`."""
        keys = list(dict.fromkeys(key for root in roots for key in events_of(root)))
        columns = {key: _ACTIVITY_COLUMN.format(i) for i, key in enumerate(keys)}
        compiler = Compiler(self.tables.schema, columns)
        contacts = self.contacts()
        if keys:
            contacts = contacts.join(
                self._activity_counts(columns, as_of), on="contact_id", how="left"
            )
        predicate = (
            pl.any_horizontal([compiler.visit(root) for root in roots]) if roots else pl.lit(False)
        )
        return contacts.filter(predicate).drop(list(columns.values()))

    def evaluate_ids(self, roots: Sequence[Lowered], as_of: dt.date) -> np.ndarray:
        ids = (
            self.matching(roots, as_of)
            .select("contact_id")
            .unique()
            .sort("contact_id")
            .collect(engine=self.collect_engine)
        )
        return ids.get_column("contact_id").to_numpy().astype(np.int64, copy=False)

    def evaluate_count(self, roots: Sequence[Lowered], as_of: dt.date) -> dict[str, int]:
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

    def _activity_counts(self, columns: Mapping[Events, str], as_of: dt.date) -> pl.LazyFrame:
        """Per contact with events, one count column per event selection, in one events scan."""
        last = functools.partial(self._last_campaigns, as_of)
        filters = {name: event_filter(events, last) for events, name in columns.items()}
        event_types = sorted({events.event_type for events in columns})
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
