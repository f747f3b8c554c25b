"""How a stored value becomes a cell of an export (docs/export-and-unsubscribe.md), for every writer.

The rules that mean the same in every engine are written once, as sqlglot trees, and
rendered per dialect: an empty text is an empty cell, a list is joined with ``;``, a
boolean is ``true``/``false``, a date is ISO-8601, ``email_domain`` is what follows
the ``@``, and a free-text cell a spreadsheet would run as a formula gets a leading
``'`` (unless ``raw``). Numbers and datetimes are rendered as DuckDB's writer prints
them; Spark has no such printing, so its rendering rebuilds the same text from parts
(shortest round-trip digits, the fraction of a second only when there is one).

`CSV_CELLS`/`PARQUET_CELLS` render for the single-file writer (DuckDB, `file.py`),
`SPARK_CSV_CELLS`/`SPARK_PARQUET_CELLS` for the partitioned writer (`partitioned.py`),
so that the part files, concatenated, hold the bytes of the single-file export.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from ..engines.sql import email_domain
from ..fields import FieldType

#: First characters that make a spreadsheet treat a cell as a formula (OWASP; docs/export-and-unsubscribe.md).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: field types whose cells hold free text and so may start like a formula
FREE_TEXT = frozenset({FieldType.TEXT, FieldType.SET})

DUCKDB = "duckdb"
SPARK = "spark"


# --- the rules, once ---------------------------------------------------------------


def _string(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def empty_as_null(value: exp.Expression) -> exp.Expression:
    """An empty text as NULL: both writers print NULL as an empty cell."""
    return exp.Nullif(this=value, expression=_string(""))


def text_cell(col: exp.Expression) -> exp.Expression:
    return empty_as_null(col)


def list_cell(col: exp.Expression) -> exp.Expression:
    """A list's items joined with ``;`` (no items: an empty cell)."""
    return empty_as_null(exp.ArrayToString(this=col, expression=_string(";")))


def date_cell(col: exp.Expression) -> exp.Expression:
    return exp.TimeToStr(this=col, format=_string("%Y-%m-%d"))


def boolean_cell(col: exp.Expression) -> exp.Expression:
    return exp.Case(ifs=[
        exp.If(this=col.copy(), true=_string("true")),
        exp.If(this=exp.Not(this=col.copy()), true=_string("false")),
    ])


def formula_guarded(value: exp.Expression) -> exp.Expression:
    """`value` with ``'`` in front when its first character would start a formula."""
    first = exp.Substring(this=value.copy(), start=exp.Literal.number(1), length=exp.Literal.number(1))
    starts = exp.In(this=first, expressions=[_string(c) for c in FORMULA_START])
    guarded = exp.DPipe(this=_string("'"), expression=value.copy(), safe=True)
    return exp.Case(ifs=[exp.If(this=starts, true=guarded)], default=value.copy())


#: field type -> the rule of a CSV cell shared by every writer (others are per writer)
SHARED_CSV_RULES: dict[FieldType, Callable[[exp.Expression], exp.Expression]] = {
    FieldType.TEXT: text_cell,
    FieldType.DATE: date_cell,
    FieldType.BOOLEAN: boolean_cell,
    FieldType.ENUM: lambda col: col,
    FieldType.SET: list_cell,
}


def source_tree(name: str, table: str | None) -> exp.Expression:
    """The stored (or derived) value of a field."""
    if name == "email_domain":
        return email_domain(exp.column("email", table=table, quoted=True))
    return exp.column(name, table=table, quoted=True)


def source(name: str, table: str | None, dialect: str) -> str:
    """The stored (or derived) value of a field, as SQL of `dialect`."""
    return source_tree(name, table).sql(dialect)


def _render(rule: Callable[[exp.Expression], exp.Expression], dialect: str) -> Callable[[str], str]:
    """A rule over SQL text of `dialect` (the writers hold columns as SQL text)."""
    return lambda col: rule(exp.maybe_parse(col, dialect=dialect)).sql(dialect)


# --- DuckDB: the single-file writer --------------------------------------------------


def _csv_number(col: str) -> str:
    # DuckDB prints 3.0 for a whole DOUBLE; integers up to 1e18 are exact as BIGINT.
    return (
        f"CASE WHEN isfinite({col}) AND {col} = trunc({col}) AND abs({col}) < 1e18 "
        f"THEN CAST(CAST({col} AS BIGINT) AS VARCHAR) ELSE CAST({col} AS VARCHAR) END"
    )


def _csv_datetime(col: str) -> str:
    # A fraction of a second only when there is one, without trailing zeros.
    return (
        f"CASE WHEN microsecond({col}) % 1000000 = 0 THEN strftime({col}, '%Y-%m-%dT%H:%M:%SZ') "
        f"ELSE rtrim(strftime({col}, '%Y-%m-%dT%H:%M:%S.%f'), '0') || 'Z' END"
    )


#: field type -> SQL rendering a stored value as the text of a CSV cell (NULL = empty cell)
CSV_CELLS: dict[FieldType, Callable[[str], str]] = {
    **{ftype: _render(rule, DUCKDB) for ftype, rule in SHARED_CSV_RULES.items()},
    FieldType.NUMBER: _csv_number,
    FieldType.DATETIME: _csv_datetime,
}

#: field type -> SQL of the Parquet column (native types; datetimes tagged as UTC)
PARQUET_CELLS: dict[FieldType, Callable[[str], str]] = {
    FieldType.TEXT: _render(text_cell, DUCKDB),
    FieldType.NUMBER: lambda col: col,
    FieldType.DATE: lambda col: col,
    FieldType.DATETIME: lambda col: f"timezone('UTC', {col})",
    FieldType.BOOLEAN: lambda col: col,
    FieldType.ENUM: lambda col: col,
    FieldType.SET: lambda col: col,
}


@functools.lru_cache(maxsize=1024)
def cell(name: str, ftype: FieldType, fmt: str, raw: bool) -> str:
    """DuckDB SQL of one output column over the ``contacts`` view aliased ``c``.

    The shared rules apply to the column's tree directly (no SQL text parsed), and the
    SQL of a column is kept: an export of many columns in a process that exports
    repeatedly would otherwise spend milliseconds rendering the same text.
    """
    alias = exp.to_identifier(name, quoted=True).sql(DUCKDB)
    if fmt == "parquet":
        return f"{PARQUET_CELLS[ftype](source(name, 'c', DUCKDB))} AS {alias}"
    rule = SHARED_CSV_RULES.get(ftype)
    if rule is None:
        return f"{CSV_CELLS[ftype](source(name, 'c', DUCKDB))} AS {alias}"
    value = rule(source_tree(name, "c"))
    if not raw and ftype in FREE_TEXT:
        value = formula_guarded(value)
    return f"{value.sql(DUCKDB)} AS {alias}"


# --- Spark: the partitioned writer ---------------------------------------------------

#: Characters that make the DuckDB writer quote a cell (its comment character '#' too).
QUOTE_TRIGGERS = '[,"#\r\n]'
INFINITY = "CAST('Infinity' AS DOUBLE)"
#: Significant digits that always identify a double.
MAX_DIGITS = 17


def spark_text(value: str) -> str:
    """A Spark SQL string literal (quotes and backslashes escaped)."""
    return _string(value).sql(SPARK)


def spark_name(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(SPARK)


@dataclass(frozen=True)
class SparkCell:
    """One output column in Spark SQL: helper columns, stage by stage, then the cell.

    Helpers are projections of their own so that an expression used several times is
    computed once per row (Spark does not collapse projections that would repeat a
    costly expression).
    """

    value: str
    helpers: tuple[tuple[str, ...], ...] = ()


def _whole(col: str) -> str:
    # what DuckDB's writer prints as an integer: finite, whole and below 1e18
    return f"(abs({col}) < 1.0E18D AND {col} = CAST(CAST({col} AS BIGINT) AS DOUBLE))"


def _shortest_scientific(col: str) -> str:
    """`col` as ``d.ddde±XX`` with the fewest digits that read back as the same double.

    Java's ``Double.toString`` (Spark's cast) is not always shortest before Java 19
    (``8.41E21`` prints as ``8.409999999999999E21``); formatting with 1, 2, ... 17
    digits and keeping the first that round-trips is.
    """
    def branch(digits: int) -> str:
        text = f"format_string('%.{digits - 1}e', {col})"
        return f"WHEN CAST({text} AS DOUBLE) = {col} THEN {text}"

    branches = " ".join(branch(n) for n in range(1, MAX_DIGITS))
    return f"CASE {branches} ELSE format_string('%.{MAX_DIGITS - 1}e', {col}) END"


def _python_repr(col: str, digits: str, exponent: str) -> str:
    """Python's ``repr`` of a double (what DuckDB's ``CAST(.. AS VARCHAR)`` prints), from its
    shortest `digits` (no sign or point) and decimal `exponent`: positional notation for
    exponents -4 to 15, else ``d.ddde+XX``."""
    d, x = digits, exponent
    scientific = (
        f"concat(left({d}, 1), IF(length({d}) > 1, concat('.', substring({d}, 2)), ''), 'e', "
        f"IF({x} < 0, '-', '+'), IF(abs({x}) < 10, '0', ''), CAST(abs({x}) AS STRING))"
    )
    return (
        f"concat(IF({col} < 0, '-', ''), CASE WHEN {x} >= 16 OR {x} < -4 THEN {scientific} "
        f"WHEN {x} < 0 THEN concat('0.', repeat('0', -{x} - 1), {d}) "
        f"WHEN length({d}) <= {x} + 1 THEN concat({d}, repeat('0', {x} + 1 - length({d})), '.0') "
        f"ELSE concat(left({d}, {x} + 1), '.', substring({d}, {x} + 2)) END)"
    )


def _spark_csv_number(col: str, tag: str) -> SparkCell:
    """As DuckDB writes a number (`CSV_CELLS`): whole numbers as integers, others as Python's
    ``repr`` (``0.1``, ``1e-05``, ``1e+20``), ``inf``, ``-inf``, ``nan``."""
    sci, digits, exponent = (spark_name(f"__segengine_{part}_{tag}") for part in ("sci", "d", "x"))
    finite = f"(NOT isnan({col}) AND abs({col}) < {INFINITY})"
    value = (
        f"CASE WHEN {col} IS NULL THEN NULL WHEN isnan({col}) THEN 'nan' "
        f"WHEN {col} = {INFINITY} THEN 'inf' WHEN {col} = -{INFINITY} THEN '-inf' "
        f"WHEN {_whole(col)} THEN CAST(CAST({col} AS BIGINT) AS STRING) "
        f"ELSE {_python_repr(col, digits, exponent)} END"
    )
    return SparkCell(value, (
        (f"CASE WHEN {finite} AND NOT {_whole(col)} THEN {_shortest_scientific(col)} END AS {sci}",),
        (
            f"regexp_replace(substring_index({sci}, 'e', 1), '[-.]', '') AS {digits}",
            f"CAST(substring_index({sci}, 'e', -1) AS INT) AS {exponent}",
        ),
    ))


def _spark_csv_datetime(col: str, tag: str) -> SparkCell:
    # a fraction of a second only when there is one, without trailing zeros; NTZ values
    # are formatted as they are, whatever the session's time zone
    return SparkCell(
        f"CASE WHEN date_format({col}, 'SSSSSS') = '000000' "
        f"""THEN date_format({col}, "yyyy-MM-dd'T'HH:mm:ss'Z'") """
        f"""ELSE concat(regexp_replace(date_format({col}, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"), """
        f"'0+$', ''), 'Z') END"
    )


def _spark_shared(rule: Callable[[exp.Expression], exp.Expression]) -> Callable[[str, str], SparkCell]:
    render = _render(rule, SPARK)
    return lambda col, tag: SparkCell(render(col))


#: field type -> Spark SQL of a CSV cell's text (NULL = empty cell), as `CSV_CELLS`
SPARK_CSV_CELLS: dict[FieldType, Any] = {
    **{ftype: _spark_shared(rule) for ftype, rule in SHARED_CSV_RULES.items()},
    FieldType.NUMBER: _spark_csv_number,
    FieldType.DATETIME: _spark_csv_datetime,
}

_EPOCH_NTZ = "TIMESTAMP_NTZ'1970-01-01 00:00:00'"

#: field type -> Spark SQL of a Parquet column, typed as `PARQUET_CELLS` writes it,
#: except datetimes, which become instants (Parquet ``isAdjustedToUTC``) without a
#: time zone's help
SPARK_PARQUET_CELLS: dict[FieldType, Callable[[str], str]] = {
    **PARQUET_CELLS,
    FieldType.TEXT: _render(text_cell, SPARK),
    FieldType.DATETIME: lambda col: f"timestamp_micros(timestampdiff(MICROSECOND, {_EPOCH_NTZ}, {col}))",
}


def csv_cell(name: str, ftype: FieldType, tag: str, raw: bool) -> SparkCell:
    """One CSV column's cell text, guarded unless `raw`, as `cell` renders it for DuckDB."""
    rendered = SPARK_CSV_CELLS[ftype](source(name, None, SPARK), tag)
    if raw or ftype not in FREE_TEXT:
        return rendered
    return SparkCell(_render(formula_guarded, SPARK)(rendered.value), rendered.helpers)


def csv_field(cell: str) -> str:
    """A cell's text as DuckDB's CSV writer puts it in a line: RFC 4180 quoting when it holds
    a comma, quote, ``#``, CR or LF, or is an empty text; NULL as nothing."""
    quoted = f"""concat('"', replace({cell}, '"', '""'), '"')"""
    return (
        f"CASE WHEN {cell} IS NULL THEN '' WHEN {cell} = '' OR {cell} RLIKE {spark_text(QUOTE_TRIGGERS)} "
        f"THEN {quoted} ELSE {cell} END"
    )


def with_helpers(frame: Any, cells: Sequence[SparkCell]) -> Any:
    """`frame` with every cell's helper columns, one projection per stage."""
    stages = max((len(c.helpers) for c in cells), default=0)
    for stage in range(stages):
        extra = [h for c in cells if stage < len(c.helpers) for h in c.helpers[stage]]
        frame = frame.selectExpr("*", *extra)
    return frame


