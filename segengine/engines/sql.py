"""Compile resolved rule trees to one SQL statement, built as a sqlglot tree.

The statement (SPEC sections 4 and 9) is ``SELECT contact_id FROM contacts WHERE
<predicate>``, with CTEs when a rule needs "the last N campaigns". It is built from
sqlglot nodes only: field names become quoted identifiers and values become literals,
so no field name or value can change the statement's shape (nothing here parses text).

Why the predicates look the way they do:

* Every rule compiles to a *two-valued* predicate (never NULL), so that ``NOT`` of a
  rule is exactly its complement. Positive operators are ``<present> AND <test>``
  (``FALSE AND NULL`` is ``FALSE``); negative operators (``is_not``, ``ne``, ...) are
  ``NOT`` of their positive operator, which makes them true on empty values.
* Text is compared after ``LOWER`` on the column and Python's ``str.lower`` on the
  value. DuckDB's ``LOWER`` differs from Python's in two places only: ``İ`` (Python
  gives ``i̇``) and the Greek final sigma (Python gives ``ς`` at the end of a word). The
  column expression emulates Python only when the value contains a character those
  differences could touch, so the common case stays a plain ``LOWER``.
* ``email_domain`` is the part after the *last* ``@``, as the other engines derive it.
* Dates are compared as DATE values against date literals. A timestamp's day is its
  UTC day (`utc_day`), for naive (UTC) and absolute timestamp columns alike, whatever
  the session time zone: never ``CAST(ts AS DATE)``, which takes an instant's day in
  the session's zone.
* Activity rules become ``contact_id IN (SELECT contact_id FROM events WHERE ...)``,
  grouped and filtered by ``HAVING COUNT(*)`` unless the condition is "at least one";
  a count condition that zero events satisfy becomes ``NOT IN`` of the complement,
  so contacts without events are included.

Dialect notes (`to_sql`): the "last N campaigns" tie-break orders campaign ids by
code point. DuckDB, Spark, BigQuery and Snowflake (without a column collation) compare
strings by their UTF-8 bytes, which is code point order; PostgreSQL gets ``COLLATE "C"``.
Timestamp columns may be naive or absolute in every dialect (`utc_day` says how each
takes the UTC day); PostgreSQL has no ``ENDS_WITH`` and compares a ``RIGHT`` instead.
Identifiers are always quoted, so in Snowflake the tables and columns must carry
their lower-case (case-sensitive) names. The final-sigma emulation is DuckDB only
(it uses RE2 character classes); Spark's ``LOWER`` already follows Java's, which
agrees with Python's once ``I`` is replaced first (`sql_lower`: Turkic JVM locales).
Spark tests an activity's membership with a correlated ``EXISTS`` instead of ``IN``
(`SqlCompiler.member`): its ``NOT IN`` under ``OR`` is a null-aware nested-loop join.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from ..definition.nodes import (
    ANY_CAMPAIGN,
    POSITIVE_OF,
    ActivityRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    SegmentRef,
    Window,
    day_bounds,
)
from ..errors import EngineError, InputError
from ..fields import FieldType, Schema

DIALECTS = ("duckdb", "spark", "postgres", "snowflake", "bigquery")

CONTACTS = "contacts"
EVENTS = "events"
RECENT_CAMPAIGNS = "recent_campaigns"  # CTE: campaigns ranked by send time, latest first

# --- Python's str.lower, where SQL LOWER differs ------------------------------------

DOTTED_CAPITAL_I = "\u0130"
LOWER_DOTTED_I = "i\u0307"  # what Python's "İ".lower() returns

# Unicode's Final_Sigma context as Python applies it: Σ lower-cases to ς when a cased
# letter precedes it and no cased letter follows it, case-ignorable characters
# skipped on both sides. Python counts a character that is both cased and
# case-ignorable as case-ignorable. The extra ranges complete RE2's categories to
# Python's (Unicode 14) Cased and Case_Ignorable properties.
_CASED = r"\p{Lu}\p{Ll}\p{Lt}\x{aa}\x{ba}\x{2160}-\x{217f}\x{24b6}-\x{24e9}" + (
    r"\x{1f130}-\x{1f149}\x{1f150}-\x{1f169}\x{1f170}-\x{1f189}"
)
_CASE_IGNORABLE = r"\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}'.:\x{b7}\x{387}\x{55f}\x{5f4}" + (
    r"\x{2018}\x{2019}\x{2024}\x{2027}\x{fe13}\x{fe52}\x{fe55}\x{ff07}\x{ff0e}\x{ff1a}"
)
FINAL_SIGMA_PATTERN = (
    f"([{_CASED}][{_CASE_IGNORABLE}]*)\u03a3([{_CASE_IGNORABLE}]*)([^{_CASED}{_CASE_IGNORABLE}]|$)"
)
FINAL_SIGMA_REPLACEMENT = "\\1\u03c2\\2\\3"
#: dialects whose regular expressions are RE2 with \p{..} classes and \1 replacements
_RE2_DIALECTS = frozenset({"duckdb"})


#: dialects that test membership in an activity's contacts with EXISTS, not IN
_EXISTS_DIALECTS = frozenset({"spark"})
#: the alias of an activity's contacts inside EXISTS
MATCHED = "matched"
#: dialects whose ``LOWER`` of non-ASCII text follows the default locale of a JVM
_JVM_LOWER_DIALECTS = frozenset({"spark"})


def sql_lower(text: exp.Expression, dialect: str) -> exp.Lower:
    """``LOWER(text)`` that does not depend on the locale the statement runs in.

    Spark lower-cases ASCII-only text itself but hands any other text to Java's
    ``String.toLowerCase()`` in the JVM's *default* locale, where Turkish and Azeri turn
    ``I`` into a dotless ``ı`` (``IĞDIR`` would become ``ığdır``, not Python's ``iğdir``).
    Replacing ``I`` first leaves the locale nothing to decide. The guard is part of the
    compiled tree, so the statement ``segengine sql --dialect spark`` prints is the one
    the Spark engine runs.
    """
    if dialect in _JVM_LOWER_DIALECTS:
        text = exp.func("REPLACE", text, exp.Literal.string("I"), exp.Literal.string("i"))
    return exp.Lower(this=text)


def lower_text(column: exp.Expression, values: Iterable[str], dialect: str) -> exp.Expression:
    """``LOWER(column)`` that agrees with Python's ``str.lower`` for matching `values`.

    `values` are the rule's values, already lower-cased in Python. The plain SQL
    ``LOWER`` can only disagree with Python on a match where a value holds ``i``, a
    combining dot above, ``σ`` or ``ς``; only then is the emulation added.
    """
    text = "".join(values)
    if "i" in text or "\u0307" in text:
        column = exp.func(
            "REPLACE",
            column,
            exp.Literal.string(DOTTED_CAPITAL_I),
            exp.Literal.string(LOWER_DOTTED_I),
        )
    if dialect in _RE2_DIALECTS and ("\u03c3" in text or "\u03c2" in text):
        column = exp.RegexpReplace(
            this=column,
            expression=exp.Literal.string(FINAL_SIGMA_PATTERN),
            replacement=exp.Literal.string(FINAL_SIGMA_REPLACEMENT),
            modifiers=exp.Literal.string("g"),
        )
    return sql_lower(column, dialect)


# --- literals -------------------------------------------------------------------------


def _string(value: str) -> exp.Expression:
    return exp.Literal.string(value)


def _number(value: float | int) -> exp.Expression:
    """A numeric literal; infinities and NaN (valid YAML floats) as a cast string."""
    value = float(value)
    if math.isfinite(value):
        return exp.Literal.number(repr(value))
    return exp.cast(_string(str(value)), exp.DataType.Type.DOUBLE)


def _date(value: dt.date) -> exp.Expression:
    return exp.cast(_string(value.isoformat()), exp.DataType.Type.DATE)


def _int(value: int) -> exp.Expression:
    return exp.Literal.number(int(value))


def _column(name: str, table: str | None = None) -> exp.Column:
    return exp.column(name, table=table, quoted=True)


def _table(name: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(name, quoted=True))


def _in_query(expr: exp.Expression, query: exp.Select) -> exp.Expression:
    """``expr IN (SELECT ...)``."""
    return exp.In(this=expr, query=exp.Subquery(this=query))


def _in(expr: exp.Expression, literals: Sequence[exp.Expression]) -> exp.Expression:
    """``expr IN (...)``; an empty list matches nothing (``IN ()`` is not SQL)."""
    if not literals:
        return exp.false()
    return exp.In(this=expr, expressions=list(literals))


def _and(*conditions: exp.Expression) -> exp.Expression:
    return exp.and_(*conditions) if conditions else exp.true()


def _or(*conditions: exp.Expression) -> exp.Expression:
    return exp.or_(*conditions) if conditions else exp.false()


def _not(condition: exp.Expression) -> exp.Expression:
    return exp.Not(this=exp.paren(condition, copy=False))


def _day_range(day: exp.Expression, low: dt.date | None, high: dt.date | None) -> exp.Expression:
    """`day` within the inclusive range; None bounds are open."""
    if low is not None and high is not None:
        if low == high:
            return exp.EQ(this=day, expression=_date(low))
        return exp.Between(this=day, low=_date(low), high=_date(high))
    if low is not None:
        return exp.GTE(this=day, expression=_date(low))
    if high is not None:
        return exp.LTE(this=day, expression=_date(high))
    return exp.true()


#: What a day-range operator selects when its bound falls off the calendar (before
#: 0001-01-01 or after 9999-12-31): nothing, or a range open at that end.
_OFF_CALENDAR: dict[str, Callable[[Any, dt.date], tuple[dt.date | None, dt.date | None] | None]] = {
    "before": lambda value, as_of: None,
    "after": lambda value, as_of: None,
    "older_than_days": lambda value, as_of: None,
    "in_last_days": lambda value, as_of: (None, as_of),
}


def _day_filter(day: exp.Expression, op: str, value: Any, as_of: dt.date) -> exp.Expression:
    """`day` within the range `op` selects (`day_bounds`), safe at the calendar's ends."""
    try:
        bounds = day_bounds(op, value, as_of)
    except OverflowError:
        bounds = _OFF_CALENDAR[op](value, as_of)
    return exp.false() if bounds is None else _day_range(day, *bounds)


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


# --- field rules ---------------------------------------------------------------------
# A builder gets the compiler, the column expression and the rule's value, and returns
# the *test* of a positive operator; the compiler adds the "value present" guard.
# Negative operators are never built directly: they are NOT of their positive operator.

Builder = Callable[["SqlCompiler", exp.Expression, Any], exp.Expression]


def _text_is(c: SqlCompiler, col: exp.Expression, value: str) -> exp.Expression:
    v = value.lower()
    return exp.EQ(this=lower_text(col, [v], c.dialect), expression=_string(v))


def _text_contains(c: SqlCompiler, col: exp.Expression, value: str) -> exp.Expression:
    v = value.lower()
    position = exp.StrPosition(this=lower_text(col, [v], c.dialect), substr=_string(v))
    return exp.GT(this=position, expression=_int(0))


def _text_starts_with(c: SqlCompiler, col: exp.Expression, value: str) -> exp.Expression:
    v = value.lower()
    return exp.StartsWith(this=lower_text(col, [v], c.dialect), expression=_string(v))


#: dialects without an ``ENDS_WITH`` function (PostgreSQL has only ``starts_with``)
_NO_ENDS_WITH_DIALECTS = frozenset({"postgres"})


def _text_ends_with(c: SqlCompiler, col: exp.Expression, value: str) -> exp.Expression:
    v = value.lower()
    text = lower_text(col, [v], c.dialect)
    if c.dialect in _NO_ENDS_WITH_DIALECTS:
        # RIGHT counts characters (code points in UTF-8), as Python's len does
        suffix = exp.Right(this=text, expression=_int(len(v)))
        return exp.EQ(this=suffix, expression=_string(v))
    return exp.EndsWith(this=text, expression=_string(v))


def _text_in(c: SqlCompiler, col: exp.Expression, value: Sequence[str]) -> exp.Expression:
    values = sorted({v.lower() for v in _as_tuple(value)})
    return _in(lower_text(col, values, c.dialect), [_string(v) for v in values])


def _status_is(c: SqlCompiler, col: exp.Expression, value: str) -> exp.Expression:
    return exp.EQ(this=sql_lower(col, c.dialect), expression=_string(value.lower()))


def _status_in(c: SqlCompiler, col: exp.Expression, value: Sequence[str]) -> exp.Expression:
    values = sorted({v.lower() for v in _as_tuple(value)})
    return _in(sql_lower(col, c.dialect), [_string(v) for v in values])


def _compare(node: type[exp.Binary]) -> Builder:
    def build(c: SqlCompiler, col: exp.Expression, value: float) -> exp.Expression:
        return node(this=col, expression=_number(value))

    build.__name__ = f"_number_{node.__name__.lower()}"
    return build


def _number_between(c: SqlCompiler, col: exp.Expression, value: Any) -> exp.Expression:
    low, high = value
    return exp.Between(this=col, low=_number(low), high=_number(high))


def _number_in(c: SqlCompiler, col: exp.Expression, value: Sequence[float]) -> exp.Expression:
    return _in(col, [_number(v) for v in sorted(set(_as_tuple(value)))])


def _day_op(op: str) -> Builder:
    def build(c: SqlCompiler, col: exp.Expression, value: Any) -> exp.Expression:
        return _day_filter(col, op, value, c.as_of)

    build.__name__ = f"_date_{op}"
    return build


def _boolean_is(c: SqlCompiler, col: exp.Expression, value: bool) -> exp.Expression:
    return exp.EQ(this=col, expression=exp.true() if value else exp.false())


LIST_ITEM = "list_name"  # the lambda parameter that walks a contact's lists


def _has_any_list(c: SqlCompiler, col: exp.Expression, names: Sequence[str]) -> exp.Expression:
    """Whether the contact's lists hold any of `names` (lower-cased), case-insensitively."""
    item = exp.column(LIST_ITEM)
    matching = exp.ArrayFilter(
        this=col,
        expression=exp.Lambda(
            this=_in(lower_text(item, names, c.dialect), [_string(n) for n in names]),
            expressions=[exp.to_identifier(LIST_ITEM)],
        ),
    )
    size = exp.Coalesce(this=exp.ArraySize(this=matching), expressions=[_int(0)])
    return exp.GT(this=size, expression=_int(0))


def _lists_includes(c: SqlCompiler, col: exp.Expression, value: Any) -> exp.Expression:
    names = sorted({v.lower() for v in _as_tuple(value)})
    return _has_any_list(c, col, names) if names else exp.false()


def _lists_includes_all(c: SqlCompiler, col: exp.Expression, value: Any) -> exp.Expression:
    names = sorted({v.lower() for v in _as_tuple(value)})
    return _and(*(_has_any_list(c, col, [n]) for n in names))


_DATE_OPS: dict[str, Builder] = {
    op: _day_op(op)
    for op in ("on", "before", "after", "between", "in_last_days", "older_than_days")
}

#: Positive operators per field type. Negative operators come from POSITIVE_OF.
FIELD_OPS: dict[FieldType, dict[str, Builder]] = {
    FieldType.TEXT: {
        "is": _text_is,
        "contains": _text_contains,
        "starts_with": _text_starts_with,
        "ends_with": _text_ends_with,
        "in": _text_in,
    },
    FieldType.NUMBER: {
        "eq": _compare(exp.EQ),
        "gt": _compare(exp.GT),
        "gte": _compare(exp.GTE),
        "lt": _compare(exp.LT),
        "lte": _compare(exp.LTE),
        "between": _number_between,
        "in": _number_in,
    },
    FieldType.DATE: _DATE_OPS,
    FieldType.DATETIME: _DATE_OPS,
    FieldType.BOOLEAN: {"is": _boolean_is},
    FieldType.ENUM: {"is": _status_is, "in": _status_in},
    FieldType.SET: {"includes": _lists_includes, "includes_all": _lists_includes_all},
}

#: Types whose fields support is_empty / is_not_empty (status is never empty).
EMPTIABLE = frozenset(FieldType) - {FieldType.ENUM}


def _present(col: exp.Expression, ftype: FieldType) -> exp.Expression:
    """The field has a value: not NULL, and for text not ``""``, for lists not ``[]``."""
    not_null = exp.Not(this=exp.Is(this=col.copy(), expression=exp.null()))
    if ftype is FieldType.TEXT:
        return _and(not_null, exp.NEQ(this=col.copy(), expression=_string("")))
    if ftype is FieldType.SET:
        size = exp.Coalesce(this=exp.ArraySize(this=col.copy()), expressions=[_int(0)])
        return _and(not_null, exp.GT(this=size, expression=_int(0)))
    return not_null


# --- activity rules ------------------------------------------------------------------

_COUNT_OPS: dict[str, Callable[[exp.Expression, Any], exp.Expression]] = {
    "eq": lambda n, v: exp.EQ(this=n, expression=_int(v)),
    "gte": lambda n, v: exp.GTE(this=n, expression=_int(v)),
    "lte": lambda n, v: exp.LTE(this=n, expression=_int(v)),
    "gt": lambda n, v: exp.GT(this=n, expression=_int(v)),
    "lt": lambda n, v: exp.LT(this=n, expression=_int(v)),
    "between": lambda n, v: exp.Between(this=n, low=_int(v[0]), high=_int(v[1])),
}


def _count_test(cond: CountCondition, n: exp.Expression) -> exp.Expression:
    build = _COUNT_OPS.get(cond.op)
    if build is None:
        raise EngineError(f"unknown count operator {cond.op!r}")
    return build(n, cond.value)


def _count_key(cond: CountCondition) -> tuple[str, Any]:
    value = tuple(cond.value) if isinstance(cond.value, (tuple, list)) else cond.value
    return cond.op, value


#: Count conditions that mean "at least one event" and "no event": no grouping needed.
AT_LEAST_ONE = frozenset({("gte", 1), ("gt", 0)})
NONE_AT_ALL = frozenset({("eq", 0), ("lte", 0), ("lt", 1), ("between", (0, 0))})


def _event_column(name: str) -> exp.Column:
    return _column(name, EVENTS)


# --- the UTC day of a timestamp -----------------------------------------------------
# A warehouse's timestamp column is either naive (holding UTC) or absolute (an instant),
# and ``CAST(ts AS DATE)`` takes an instant's day in the *session* time zone. Each
# dialect below gets a day that is the UTC day for both kinds under any session time
# zone, from functions that read both kinds the same way (checked on DuckDB, PostgreSQL
# and Spark by tests/test_sql_on_engines.py; Snowflake and BigQuery from their docs).

_DATE = exp.DataType.Type.DATE
EPOCH_DAY = dt.date(1970, 1, 1)
SECONDS_PER_DAY = 86_400
MICROS_PER_DAY = 86_400_000_000


def _call(name: str, *args: exp.Expression) -> exp.Expression:
    return exp.Anonymous(this=name, expressions=list(args))


def _floor_div(numerator: exp.Expression, denominator: int) -> exp.Expression:
    """``FLOOR(n / d)``: days before 1970 round down, not towards zero."""
    return exp.Floor(this=exp.Div(this=numerator, expression=_int(denominator), typed=True))


def _duckdb_day(ts: exp.Expression) -> exp.Expression:
    # epoch_us reads TIMESTAMP as UTC and TIMESTAMPTZ as its instant (any precision);
    # make_timestamp(µs) is the naive UTC timestamp, whose date needs no time zone
    return exp.cast(_call("MAKE_TIMESTAMP", _call("EPOCH_US", ts)), _DATE)


def _postgres_day(ts: exp.Expression) -> exp.Expression:
    # extract(epoch) reads timestamp as UTC and timestamptz as its instant (exact numeric)
    seconds = exp.Extract(this=exp.var("EPOCH"), expression=ts)
    days = exp.cast(_floor_div(seconds, SECONDS_PER_DAY), exp.DataType.Type.INT)
    return exp.Add(this=_date(EPOCH_DAY), expression=days)


def _spark_day(ts: exp.Expression) -> exp.Expression:
    # TIMESTAMP_NTZ's date needs no time zone; a TIMESTAMP's UTC day comes from its
    # seconds since the epoch. unix_seconds takes only TIMESTAMP before Spark 4.3, so
    # the other branch casts (never evaluated for NTZ: typeof folds to a constant).
    utc_days = _floor_div(_call("UNIX_SECONDS", exp.cast(ts.copy(), exp.DataType.Type.TIMESTAMP)),
                          SECONDS_PER_DAY)
    return exp.Case(
        ifs=[
            exp.If(
                this=exp.EQ(this=_call("TYPEOF", ts.copy()), expression=_string("timestamp_ntz")),
                true=exp.cast(ts.copy(), _DATE),
            )
        ],
        default=_call("DATE_FROM_UNIX_DATE", exp.cast(utc_days, exp.DataType.Type.INT)),
    )


def _snowflake_day(ts: exp.Expression) -> exp.Expression:
    # DATE_PART(EPOCH_MICROSECOND) reads TIMESTAMP_NTZ as UTC and TIMESTAMP_LTZ/TZ as
    # their instant; NUMBER division is exact
    micros = exp.Extract(this=exp.var("EPOCH_MICROSECOND"), expression=ts)
    return exp.DateAdd(
        this=_date(EPOCH_DAY), expression=_floor_div(micros, MICROS_PER_DAY), unit=exp.var("DAY")
    )


def _bigquery_day(ts: exp.Expression) -> exp.Expression:
    # DATE(ts) and CAST(ts AS DATE) follow @@time_zone for TIMESTAMP, and the functions
    # taking a zone refuse DATETIME. TO_JSON_STRING writes a DATETIME as it is and a
    # TIMESTAMP in UTC ("...Z"), both as a quoted ISO 8601 text starting with the date;
    # SAFE_CAST gives NULL for NULL (whose JSON is `null`).
    text = exp.Substring(
        this=_call("TO_JSON_STRING", ts), start=_int(2), length=_int(len("YYYY-MM-DD"))
    )
    return exp.TryCast(this=text, to=exp.DataType.build("DATE"))


#: The UTC day of a timestamp column of either kind, per dialect (see `utc_day`).
_UTC_DAY: dict[str, Callable[[exp.Expression], exp.Expression]] = {
    "duckdb": _duckdb_day,
    "postgres": _postgres_day,
    "spark": _spark_day,
    "snowflake": _snowflake_day,
    "bigquery": _bigquery_day,
}


def utc_day(ts: exp.Expression, dialect: str) -> exp.Expression:
    """The UTC date of timestamp `ts`, naive (UTC) or absolute, in any session time zone."""
    return _UTC_DAY[dialect](ts)


def email_domain() -> exp.Expression:
    """The part of ``email`` after its last ``@`` (``""`` without one).

    ``SUBSTRING(email, LENGTH(email) - STRPOS(REVERSE(email), '@') + 2)``: one reverse
    and one search, portable to every dialect, and cheaper than a regular expression.
    """
    email = _column("email", CONTACTS)
    from_end = exp.StrPosition(this=exp.func("REVERSE", email.copy()), substr=_string("@"))
    start = exp.Add(
        this=exp.Sub(this=exp.Length(this=email.copy()), expression=from_end),
        expression=_int(2),
    )
    return exp.Substring(this=email, start=start)


# --- the compiler --------------------------------------------------------------------


@dataclass
class SqlCompiler:
    """Turns resolved rule trees into predicates over ``contacts``; one per statement.

    It remembers whether a rule needed the ranked campaigns CTE, which `select` then
    attaches once however many rules use it.
    """

    schema: Schema
    as_of: dt.date
    dialect: str = "duckdb"
    needs_recent_campaigns: bool = False

    #: One handler per node type; `visit` fails loudly on anything else.
    NODE_HANDLERS = {
        Group: "visit_group",
        FieldRule: "visit_field_rule",
        ActivityRule: "visit_activity_rule",
        SegmentRef: "visit_segment_ref",
    }

    def visit(self, node: Any) -> exp.Expression:
        """The node's two-valued predicate, negated when the node says so."""
        handler = self.NODE_HANDLERS.get(type(node))
        if handler is None:
            return self.visit_undefined(node)
        predicate = getattr(self, handler)(node)
        return _not(predicate) if getattr(node, "negate", False) else predicate

    def visit_undefined(self, node: Any) -> exp.Expression:
        raise EngineError(f"the SQL compiler has no handler for {type(node).__name__}: {node!r}")

    def visit_group(self, group: Group) -> exp.Expression:
        parts = [self.visit(rule) for rule in group.rules]
        if group.match == "all":
            return _and(*parts)
        if group.match == "any":
            return _or(*parts)
        raise EngineError(f"unknown group match {group.match!r}")

    def visit_segment_ref(self, ref: SegmentRef) -> exp.Expression:
        raise EngineError(
            f"segment reference {ref.segment!r} reached the SQL compiler; "
            "resolve references with inline_references before compiling"
        )

    # field rules

    def field_column(self, name: str) -> exp.Expression:
        """The column of a field; ``email_domain`` is derived from ``email``."""
        if name == "email_domain":
            return email_domain()
        column = _column(name, CONTACTS)
        if self.field_type(name) is FieldType.DATETIME:
            return utc_day(column, self.dialect)
        return column

    def field_type(self, name: str) -> FieldType:
        try:
            return self.schema.type_of(name)
        except KeyError:
            raise EngineError(f"unknown field {name!r}") from None

    def visit_field_rule(self, rule: FieldRule) -> exp.Expression:
        ftype = self.field_type(rule.field)
        column = self.field_column(rule.field)
        if rule.op in ("is_empty", "is_not_empty") and ftype in EMPTIABLE:
            present = _present(column, ftype)
            return present if rule.op == "is_not_empty" else _not(present)
        positive_op = POSITIVE_OF.get(rule.op, rule.op)
        build = FIELD_OPS[ftype].get(positive_op)
        if build is None:
            raise EngineError(f"{rule.op!r} is not an operator for {ftype} field {rule.field!r}")
        test = build(self, column.copy(), rule.value)
        positive = test if ftype is FieldType.SET else _and(self.guard(column, ftype, rule), test)
        return _not(positive) if rule.op in POSITIVE_OF else positive

    def guard(self, column: exp.Expression, ftype: FieldType, rule: FieldRule) -> exp.Expression:
        """What makes a positive test false (not NULL) on an empty value.

        List tests need none (they are false on NULL and ``[]``). A text test with
        non-empty values cannot match ``""``, so only NULL needs excluding; skipping
        the ``<> ''`` comparison keeps simple counts as fast as hand-written SQL.
        """
        if ftype is FieldType.TEXT and all(_as_tuple(rule.value)):
            return exp.Not(this=exp.Is(this=column.copy(), expression=exp.null()))
        return _present(column, ftype)

    # activity rules

    def visit_activity_rule(self, rule: ActivityRule) -> exp.Expression:
        contact_id = _column("contact_id", CONTACTS)
        matching = exp.select(_event_column("contact_id")).from_(_table(EVENTS), copy=False)
        matching = matching.where(*self.event_filters(rule), copy=False)
        cond = rule.count
        n = exp.Count(this=exp.Star())
        if _count_key(cond) in AT_LEAST_ONE:
            return self.member(contact_id, matching)
        if _count_key(cond) in NONE_AT_ALL:
            return _not(self.member(contact_id, matching))
        grouped = matching.group_by(_event_column("contact_id"), copy=False)
        if cond.matches_zero:
            # zero events satisfy it: exclude the contacts whose count does not
            grouped = grouped.having(_not(_count_test(cond, n)), copy=False)
            return _not(self.member(contact_id, grouped))
        grouped = grouped.having(_count_test(cond, n), copy=False)
        return self.member(contact_id, grouped)

    def member(self, contact_id: exp.Column, query: exp.Select) -> exp.Expression:
        """The contact is among the ids `query` selects (never NULL ones).

        ``contact_id IN (query)``; in Spark ``EXISTS (SELECT 1 FROM (query) WHERE id =
        contact_id)``: Spark plans ``NOT IN`` under ``OR`` as a null-aware nested-loop
        join over all contacts and events (minutes at 1M contacts), ``NOT EXISTS`` as a
        hash join. The two differ only for a contact whose own id is NULL.
        """
        if self.dialect not in _EXISTS_DIALECTS:
            return _in_query(contact_id, query)
        matched = exp.to_identifier(MATCHED, quoted=True)
        inner = exp.Subquery(this=query, alias=exp.TableAlias(this=matched))
        correlated = exp.EQ(this=_column("contact_id", MATCHED), expression=contact_id.copy())
        probe = exp.select(exp.Literal.number(1)).from_(inner, copy=False)
        return exp.Exists(this=probe.where(correlated, copy=False))

    def event_filters(self, rule: ActivityRule) -> list[exp.Expression]:
        filters: list[exp.Expression] = [
            exp.EQ(this=_event_column("type"), expression=_string(rule.event_type)),
            # NULL ids would make IN / NOT IN three-valued
            exp.Not(this=exp.Is(this=_event_column("contact_id"), expression=exp.null())),
        ]
        campaigns = self.campaign_filter(rule.campaigns)
        if campaigns is not None:
            filters.append(campaigns)
        if rule.when is not None:
            filters.append(self.window_filter(rule.when))
        if rule.url_contains is not None:
            filters.append(self.url_filter(rule.url_contains))
        return filters

    def campaign_filter(self, campaigns: Any) -> exp.Expression | None:
        campaign = _event_column("campaign")
        if isinstance(campaigns, LastCampaigns):
            self.needs_recent_campaigns = True
            recent = (
                exp.select(_column("campaign"))
                .from_(_table(RECENT_CAMPAIGNS))
                .where(exp.LTE(this=_column("recency"), expression=_int(campaigns.n)))
            )
            return _in_query(campaign, recent)
        if campaigns == ANY_CAMPAIGN:
            return None
        if isinstance(campaigns, (tuple, list)):
            return _in(campaign, [_string(c) for c in sorted(set(campaigns))])
        raise EngineError(f"unknown campaigns selector {campaigns!r}")

    def window_filter(self, when: Window) -> exp.Expression:
        day = utc_day(_event_column("timestamp"), self.dialect)
        return _day_filter(day, when.op, when.value, self.as_of)

    def url_filter(self, text: str) -> exp.Expression:
        v = text.lower()
        url = _event_column("url")
        position = exp.StrPosition(this=lower_text(url, [v], self.dialect), substr=_string(v))
        return _and(
            exp.Not(this=exp.Is(this=url.copy(), expression=exp.null())),
            exp.GT(this=position, expression=_int(0)),
        )

    def recent_campaigns_cte(self) -> exp.Select:
        """Campaigns sent on or before the end of the as_of day, ranked latest first.

        Send time is a campaign's earliest ``sent`` event; ties go to the larger
        campaign id in code point order.
        """
        send_time = exp.Min(this=_event_column("timestamp"))
        campaign = _event_column("campaign")
        tie_break: exp.Expression = campaign.copy()
        if self.dialect == "postgres":
            tie_break = exp.Collate(this=tie_break, expression=exp.to_identifier("C", quoted=True))
        ranking = exp.Window(
            this=exp.RowNumber(),
            order=exp.Order(
                expressions=[
                    exp.Ordered(this=send_time.copy(), desc=True),
                    exp.Ordered(this=tie_break, desc=True),
                ]
            ),
        )
        return (
            exp.select(campaign.copy(), exp.alias_(ranking, "recency", quoted=True))
            .from_(_table(EVENTS))
            .where(
                exp.EQ(this=_event_column("type"), expression=_string("sent")),
                exp.Not(this=exp.Is(this=campaign.copy(), expression=exp.null())),
            )
            .group_by(campaign.copy())
            .having(
                exp.LTE(this=utc_day(send_time.copy(), self.dialect), expression=_date(self.as_of))
            )
        )

    # statements

    def select(self, roots: Sequence[Group]) -> exp.Select:
        """``SELECT contact_id FROM contacts`` matching any of `roots`, each once."""
        predicate = _or(*(self.visit(root) for root in roots))
        query = (
            exp.select(_column("contact_id", CONTACTS))
            .from_(_table(CONTACTS))
            .where(predicate, copy=False)
        )
        if self.needs_recent_campaigns:
            query = query.with_(
                exp.to_identifier(RECENT_CAMPAIGNS, quoted=True),
                as_=self.recent_campaigns_cte(),
                copy=False,
            )
        return query


def check_dialect(dialect: str) -> str:
    if dialect not in DIALECTS:
        close = difflib.get_close_matches(dialect, DIALECTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(
            f"unknown SQL dialect {dialect!r}{hint}; choose one of {', '.join(DIALECTS)}"
        )
    return dialect


def compile_segments(
    roots: Sequence[Group], schema: Schema, as_of: dt.date, dialect: str = "duckdb"
) -> exp.Select:
    """One SELECT of the contacts matching any of `roots` (their union), each once."""
    return SqlCompiler(schema, as_of, check_dialect(dialect)).select(roots)


def compile_segment(
    root: Group, schema: Schema, as_of: dt.date, dialect: str = "duckdb"
) -> exp.Select:
    """One self-contained SELECT whose single column ``contact_id`` lists the matches.

    `dialect` only selects dialect-specific emulations (see the module docstring);
    render the result with ``.sql(dialect=...)`` for the same dialect.
    """
    return compile_segments([root], schema, as_of, dialect)


def to_sql(root: Group, schema: Schema, as_of: dt.date, dialect: str) -> str:
    """The segment's statement as pretty-printed SQL text in `dialect`."""
    query = compile_segment(root, schema, as_of, dialect)
    return query.sql(dialect=dialect, pretty=True)
