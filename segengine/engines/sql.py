"""Compile lowered rule trees to one SQL statement, built as a sqlglot tree.

The statement (docs/segments.md, docs/sql.md) is ``SELECT contact_id FROM contacts WHERE
<predicate>``, with CTEs when a rule needs "the last N campaigns". It is built from
sqlglot nodes only: field names become quoted identifiers and values become literals,
so no field name or value can change the statement's shape (nothing here parses text).

Why the predicates look the way they do:

* Every rule compiles to a *two-valued* predicate (never NULL), so that ``NOT`` of a
  rule is exactly its complement. Positive operators are ``<present> AND <test>``
  (``FALSE AND NULL`` is ``FALSE``); negative operators (``is_not``, ``ne``, ...) are
  ``NOT`` of their positive operator (the lowering pass, `segengine.definition.lower`,
  rewrote them so), which makes them true on empty values.
* Text is compared after ``LOWER`` on the column and Python's ``str.lower`` on the
  value. DuckDB's ``LOWER`` differs from Python's in two places only: ``İ`` (Python
  gives ``i̇``) and the Greek final sigma (Python gives ``ς`` at the end of a word). The
  column expression emulates Python only when the value contains a character those
  differences could touch, so the common case stays a plain ``LOWER``.
* ``email_domain`` is the part after the *last* ``@``, the one rule every engine uses.
* Dates are compared as DATE values against date literals. A timestamp's day is its
  UTC day (`utc_day`), for naive (UTC) and absolute timestamp columns alike, whatever
  the session time zone: never ``CAST(ts AS DATE)``, which takes an instant's day in
  the session's zone.
* Activity rules become ``contact_id IN (SELECT contact_id FROM events WHERE ...)``,
  grouped and filtered by ``HAVING COUNT(*)`` unless the condition is "at least one";
  a count condition that zero events satisfy becomes ``NOT IN`` of the complement,
  so contacts without events are included.

Dialect notes (`to_sql`; what differs is data, `DIALECT_FLAGS`, like sqlglot's
generator flags): the "last N campaigns" tie-break orders campaign ids by
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
    lower_all,
)
from ..definition.nodes import (
    ANY_CAMPAIGN,
    BUCKET_HEX_DIGITS,
    BUCKETS,
    Group,
    LastCampaigns,
)
from ..errors import InputError
from ..fields import FieldType, Schema
from .base import Visitor

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
#: the alias of an activity's contacts inside EXISTS
MATCHED = "matched"


@dataclass(frozen=True)
class Dialect:
    """What the compiler does differently for one SQL dialect: data, not branches."""

    name: str
    #: regular expressions are RE2 with \p{..} classes and \1 replacements (final sigma)
    re2_regex: bool = False
    #: membership in an activity's contacts is tested with EXISTS, not IN (`member`)
    exists_membership: bool = False
    #: ``LOWER`` of non-ASCII text follows the default locale of a JVM (`sql_lower`)
    jvm_lower: bool = False
    #: the collation that orders text by code point, where the default may not
    code_point_collation: str | None = None
    #: has ``ENDS_WITH`` (PostgreSQL has only ``starts_with``; `_text_ends_with`)
    ends_with_function: bool = True


DIALECT_FLAGS: dict[str, Dialect] = {
    "duckdb": Dialect("duckdb", re2_regex=True),
    "spark": Dialect("spark", exists_membership=True, jvm_lower=True),
    "postgres": Dialect("postgres", code_point_collation="C", ends_with_function=False),
    "snowflake": Dialect("snowflake"),
    "bigquery": Dialect("bigquery"),
}
DIALECTS = tuple(DIALECT_FLAGS)


def sql_lower(text: exp.Expression, dialect: str) -> exp.Lower:
    """``LOWER(text)`` that does not depend on the locale the statement runs in.

    Spark lower-cases ASCII-only text itself but hands any other text to Java's
    ``String.toLowerCase()`` in the JVM's *default* locale, where Turkish and Azeri turn
    ``I`` into a dotless ``ı`` (``IĞDIR`` would become ``ığdır``, not Python's ``iğdir``).
    Replacing ``I`` first leaves the locale nothing to decide. The guard is part of the
    compiled tree, so the statement ``segengine sql --dialect spark`` prints is the one
    the Spark engine runs.
    """
    if DIALECT_FLAGS[dialect].jvm_lower:
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
    if DIALECT_FLAGS[dialect].re2_regex and ("\u03c3" in text or "\u03c2" in text):
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


# --- field rules ---------------------------------------------------------------------
# A builder gets the compiler, the column expression and the `Compare` node's values
# (a tuple, text lower-cased) and returns the *test* of a positive operator; the
# compiler adds the "value present" guard. Negative operators never reach it: the
# lowering made them `Not` of their positive operator.

Builder = Callable[["SqlCompiler", exp.Expression, tuple], exp.Expression]


def _text_is(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    v = values[0]
    return exp.EQ(this=lower_text(col, [v], c.dialect), expression=_string(v))


def _text_contains(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    v = values[0]
    position = exp.StrPosition(this=lower_text(col, [v], c.dialect), substr=_string(v))
    return exp.GT(this=position, expression=_int(0))


def _text_starts_with(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    v = values[0]
    return exp.StartsWith(this=lower_text(col, [v], c.dialect), expression=_string(v))


def _text_ends_with(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    """The one place "text ends with" is rendered."""
    v = values[0]
    text = lower_text(col, [v], c.dialect)
    if not c.flags.ends_with_function:
        # RIGHT counts characters (code points in UTF-8), as Python's len does
        return exp.EQ(this=exp.Right(this=text, expression=_int(len(v))), expression=_string(v))
    return exp.EndsWith(this=text, expression=_string(v))


def _text_in(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    distinct = sorted(set(values))
    return _in(lower_text(col, distinct, c.dialect), [_string(v) for v in distinct])


def _status_is(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    return exp.EQ(this=sql_lower(col, c.dialect), expression=_string(values[0]))


def _status_in(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    return _in(sql_lower(col, c.dialect), [_string(v) for v in sorted(set(values))])


def _compare(node: type[exp.Binary]) -> Builder:
    def build(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
        return node(this=col, expression=_number(values[0]))

    build.__name__ = f"_number_{node.__name__.lower()}"
    return build


def _number_between(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    low, high = values
    return exp.Between(this=col, low=_number(low), high=_number(high))


def _number_in(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    return _in(col, [_number(v) for v in sorted(set(values))])


def _boolean_is(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    return exp.EQ(this=col, expression=exp.true() if values[0] else exp.false())


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


def _lists_includes(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    names = sorted(set(values))
    return _has_any_list(c, col, names) if names else exp.false()


def _lists_includes_all(c: SqlCompiler, col: exp.Expression, values: tuple) -> exp.Expression:
    return _and(*(_has_any_list(c, col, [n]) for n in sorted(set(values))))


#: The positive operators per field type (`Compare`); dates are `DayRange` nodes.
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
    FieldType.BOOLEAN: {"is": _boolean_is},
    FieldType.ENUM: {"is": _status_is, "in": _status_in},
    FieldType.SET: {"includes": _lists_includes, "includes_all": _lists_includes_all},
}


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

def _count_in(n: exp.Expression, low: int, high: int | None) -> exp.Expression:
    """``n`` within the inclusive count range (high None: unbounded)."""
    if high is None:
        return exp.GTE(this=n, expression=_int(low))
    if low == high:
        return exp.EQ(this=n, expression=_int(low))
    if low == 0:
        return exp.LTE(this=n, expression=_int(high))
    return exp.Between(this=n, low=_int(low), high=_int(high))


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


def email_domain(email: exp.Expression | None = None) -> exp.Expression:
    """The part of `email` (default: the contacts' ``email``) after its last ``@`` (``""``
    without one): `email_domain`'s one rule (`segengine.fields.EMAIL_DOMAIN_PATTERN`),
    rendered in SQL for every engine and writer that derives it.

    ``SUBSTRING(email, LENGTH(email) - STRPOS(REVERSE(email), '@') + 2)``: one reverse
    and one search, portable to every dialect, and cheaper than a regular expression.
    """
    email = _column("email", CONTACTS) if email is None else email.copy()
    from_end = exp.StrPosition(this=exp.func("REVERSE", email.copy()), substr=_string("@"))
    start = exp.Add(
        this=exp.Sub(this=exp.Length(this=email.copy()), expression=from_end),
        expression=_int(2),
    )
    return exp.Substring(this=email, start=start)


# --- bucket numbers ------------------------------------------------------------------
# A contact's bucket number for a seed is int(sha256(seed + ":" + email)[:15 hex], 16)
# % 10000 (`nodes.bucket_number`). Each dialect takes the SHA-256 of the text's UTF-8
# bytes as hex, then the number its first 15 hex digits spell: 60 bits, so a signed
# BIGINT holds it in every dialect (checked on DuckDB, PostgreSQL and Spark by
# tests/test_sql_on_engines.py; Snowflake and BigQuery from their docs).


def _hex_digits(hex_text: exp.Expression) -> exp.Expression:
    return exp.Substring(this=hex_text, start=_int(1), length=_int(BUCKET_HEX_DIGITS))


def _duckdb_bucket_hash(text: exp.Expression) -> exp.Expression:
    # sha256 hashes a VARCHAR's UTF-8 bytes to lower-case hex; a '0x' text casts to BIGINT
    digits = _hex_digits(_call("SHA256", text))
    return exp.cast(exp.DPipe(this=_string("0x"), expression=digits, safe=True),
                    exp.DataType.Type.BIGINT)


def _postgres_bucket_hash(text: exp.Expression) -> exp.Expression:
    # sha256 takes bytea: the text's UTF-8 bytes; 'x' and 16 hex digits is a bit string,
    # and a bit(64) casts to bigint bit for bit
    digest = _call("SHA256", _call("CONVERT_TO", text, _string("UTF8")))
    digits = _hex_digits(_call("ENCODE", digest, _string("hex")))
    bits = exp.DPipe(
        this=_string("x"), expression=_call("LPAD", digits, _int(16), _string("0")), safe=True
    )
    return exp.cast(exp.cast(bits, exp.DataType.build("BIT(64)", dialect="postgres")),
                    exp.DataType.Type.BIGINT)


def _spark_bucket_hash(text: exp.Expression) -> exp.Expression:
    # sha2(text, 256): lower-case hex of the UTF-8 bytes; conv(.., 16, 10): decimal text
    digits = _hex_digits(_call("SHA2", text, _int(256)))
    return exp.cast(_call("CONV", digits, _int(16), _int(10)), exp.DataType.Type.BIGINT)


def _snowflake_bucket_hash(text: exp.Expression) -> exp.Expression:
    # SHA2 returns the hex of the UTF-8 bytes; the X format model reads hex digits
    digits = _hex_digits(exp.Upper(this=_call("SHA2", text, _int(256))))
    return _call("TO_NUMBER", digits, _string("X" * BUCKET_HEX_DIGITS))


def _bigquery_bucket_hash(text: exp.Expression) -> exp.Expression:
    # SHA256(STRING) hashes its UTF-8 bytes to BYTES; a '0x' STRING casts to INT64
    digits = _hex_digits(_call("TO_HEX", _call("SHA256", text)))
    return exp.cast(exp.Concat(expressions=[_string("0x"), digits]), exp.DataType.Type.BIGINT)


#: The number the first 15 hex digits of SHA-256(text) spell, per dialect.
_BUCKET_HASH: dict[str, Callable[[exp.Expression], exp.Expression]] = {
    "duckdb": _duckdb_bucket_hash,
    "postgres": _postgres_bucket_hash,
    "spark": _spark_bucket_hash,
    "snowflake": _snowflake_bucket_hash,
    "bigquery": _bigquery_bucket_hash,
}


def bucket_number(seed: str, dialect: str, email: exp.Expression | None = None) -> exp.Expression:
    """The bucket number (0..9999) of `email` (default: the contacts' ``email``) for
    `seed` in `dialect`; NULL for a NULL email. The seed is a literal: no seed can
    change the statement's shape."""
    email = _column("email", CONTACTS) if email is None else email.copy()
    text = exp.Concat(expressions=[_string(f"{seed}:"), email])
    hashed = exp.paren(_BUCKET_HASH[dialect](text), copy=False)
    return exp.Mod(this=hashed, expression=_int(BUCKETS))


# --- the compiler --------------------------------------------------------------------


@dataclass
class SqlCompiler(Visitor[exp.Expression]):
    """Turns lowered rule trees into predicates over ``contacts``; one per statement.

    Every handler returns a *two-valued* predicate, so `negate` is plain ``NOT``. It
    remembers whether a rule needed the ranked campaigns CTE, which `select` then
    attaches once however many rules use it.
    """

    schema: Schema
    as_of: dt.date
    dialect: str = "duckdb"
    needs_recent_campaigns: bool = False

    engine_name = "SQL"
    COMPARE_OPS = FIELD_OPS

    @property
    def flags(self) -> Dialect:
        return DIALECT_FLAGS[self.dialect]

    def negate(self, predicate: exp.Expression) -> exp.Expression:
        return _not(predicate)

    def visit_all_of(self, node: AllOf) -> exp.Expression:
        return _and(*(self.visit(rule) for rule in node.rules))

    def visit_any_of(self, node: AnyOf) -> exp.Expression:
        return _or(*(self.visit(rule) for rule in node.rules))

    def visit_constant(self, node: Constant) -> exp.Expression:
        return exp.true() if node.value else exp.false()

    # field rules

    def field_column(self, name: str, ftype: FieldType) -> exp.Expression:
        """The column of a field; ``email_domain`` is derived from ``email``."""
        if name == "email_domain":
            return email_domain()
        column = _column(name, CONTACTS)
        if ftype is FieldType.DATETIME:
            return utc_day(column, self.dialect)
        return column

    def visit_present(self, node: Present) -> exp.Expression:
        return _present(self.field_column(node.field, node.type), node.type)

    def visit_compare(self, node: Compare) -> exp.Expression:
        column = self.field_column(node.field, node.type)
        test = FIELD_OPS[node.type][node.op](self, column.copy(), node.values)
        if node.type is FieldType.SET:
            return test
        return _and(self.guard(column, node.type, node.values), test)

    def visit_day_range(self, node: DayRange) -> exp.Expression:
        column = self.field_column(node.field, node.type)
        return _and(_present(column, node.type), _day_range(column.copy(), node.low, node.high))

    def guard(self, column: exp.Expression, ftype: FieldType, values: tuple) -> exp.Expression:
        """What makes a positive test false (not NULL) on an empty value.

        List tests need none (they are false on NULL and ``[]``). A text test with
        non-empty values cannot match ``""``, so only NULL needs excluding; skipping
        the ``<> ''`` comparison keeps simple counts as fast as hand-written SQL.
        """
        if ftype is FieldType.TEXT and all(values):
            return exp.Not(this=exp.Is(this=column.copy(), expression=exp.null()))
        return _present(column, ftype)

    # bucket rules

    def visit_bucket(self, node: Bucket) -> exp.Expression:
        email = _column("email", CONTACTS)
        number = bucket_number(node.seed, self.dialect, email)
        in_range = exp.Between(this=number, low=_int(node.low), high=_int(node.high - 1))
        return _and(exp.Not(this=exp.Is(this=email.copy(), expression=exp.null())), in_range)

    # activity rules

    def matching(self, events: Events) -> exp.Select:
        """``SELECT contact_id FROM events WHERE <the events counted>``."""
        matching = exp.select(_event_column("contact_id")).from_(_table(EVENTS), copy=False)
        return matching.where(*self.event_filters(events), copy=False)

    def visit_has_events(self, node: HasEvents) -> exp.Expression:
        return self.member(_column("contact_id", CONTACTS), self.matching(node.events))

    def visit_count_in(self, node: CountIn) -> exp.Expression:
        contact_id = _column("contact_id", CONTACTS)
        grouped = self.matching(node.events).group_by(_event_column("contact_id"), copy=False)
        test = _count_in(exp.Count(this=exp.Star()), node.low, node.high)
        if node.includes_zero:
            # zero events satisfy it: exclude the contacts whose count does not
            grouped = grouped.having(_not(test), copy=False)
            return _not(self.member(contact_id, grouped))
        return self.member(contact_id, grouped.having(test, copy=False))

    def member(self, contact_id: exp.Column, query: exp.Select) -> exp.Expression:
        """The contact is among the ids `query` selects (never NULL ones).

        ``contact_id IN (query)``; in Spark ``EXISTS (SELECT 1 FROM (query) WHERE id =
        contact_id)``: Spark plans ``NOT IN`` under ``OR`` as a null-aware nested-loop
        join over all contacts and events (minutes at 1M contacts), ``NOT EXISTS`` as a
        hash join. The two differ only for a contact whose own id is NULL.
        """
        if not self.flags.exists_membership:
            return _in_query(contact_id, query)
        matched = exp.to_identifier(MATCHED, quoted=True)
        inner = exp.Subquery(this=query, alias=exp.TableAlias(this=matched))
        correlated = exp.EQ(this=_column("contact_id", MATCHED), expression=contact_id.copy())
        probe = exp.select(exp.Literal.number(1)).from_(inner, copy=False)
        return exp.Exists(this=probe.where(correlated, copy=False))

    def event_filters(self, events: Events) -> list[exp.Expression]:
        filters: list[exp.Expression] = [
            exp.EQ(this=_event_column("type"), expression=_string(events.event_type)),
            # NULL ids would make IN / NOT IN three-valued
            exp.Not(this=exp.Is(this=_event_column("contact_id"), expression=exp.null())),
        ]
        campaigns = self.campaign_filter(events.campaigns)
        if campaigns is not None:
            filters.append(campaigns)
        if events.days is not None:
            filters.append(_day_range(utc_day(_event_column("timestamp"), self.dialect), *events.days))
        if events.url_contains is not None:
            filters.append(self.url_filter(events.url_contains))
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
        return _in(campaign, [_string(c) for c in campaigns])

    def url_filter(self, v: str) -> exp.Expression:
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
        collation = self.flags.code_point_collation
        if collation is not None:
            tie_break = exp.Collate(
                this=tie_break, expression=exp.to_identifier(collation, quoted=True)
            )
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

    def select(self, roots: Sequence[Lowered]) -> exp.Select:
        """``SELECT contact_id FROM contacts`` matching any of lowered `roots`, each once."""
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
    return compile_lowered(lower_all(roots, schema, as_of), schema, as_of, dialect)


def compile_lowered(
    roots: Sequence[Lowered], schema: Schema, as_of: dt.date, dialect: str = "duckdb"
) -> exp.Select:
    """`compile_segments` of trees the lowering pass already produced."""
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
