"""The Spark engine: the compiled SQL (`segengine.engines.sql`, dialect ``spark``) on Apache Spark.

For data beyond one machine, or data that already lives where a cluster reads it (HDFS,
S3, a lakehouse folder): the same sqlglot tree that `segengine sql --dialect spark`
prints runs in Spark SQL over two temporary views with the layout of SPEC section 9,
so every engine gives the same answers.

Why the views look the way they do:

* Answers never depend on a time zone. Parquet timestamps without a zone (what the
  store writes) are read by Spark 4 as ``TIMESTAMP_NTZ``, whose ``CAST(.. AS DATE)``
  ignores the session time zone. Zone-aware timestamps (and every timestamp when a
  session sets ``spark.sql.parquet.inferTimestampNTZ.enabled=false``) are read as
  ``TIMESTAMP`` (LTZ), whose date *does* follow the session time zone; the views turn
  them into ``TIMESTAMP_NTZ`` holding the UTC wall time, using micros since the epoch
  (zone-free arithmetic). A session handed in by the caller is therefore used as it
  is, whatever its ``spark.sql.session.timeZone``; sessions this module starts get UTC.
* Each engine registers views under its own names and the compiled statement reads
  them through the aliases ``contacts`` and ``events``: several engines (snapshots)
  can share one session, and a user's own ``contacts`` view is never replaced.
* Columns the schema knows but the files lack read as typed NULLs; no files at all
  give an empty typed table; numbers are read as ``DOUBLE`` as in every other engine.

Text: Spark's ``LOWER`` on non-ASCII text is Java's ``String.toLowerCase`` in the
JVM's default locale; with ``I`` replaced first (`segengine.engines.sql.sql_lower`, part of
the compiled statement that `segengine sql --dialect spark` prints) it agrees with
Python's ``str.lower`` on what segments compare, ``İ`` (``i̇``) and the Greek final
sigma included (tests/test_spark.py checks it in a Turkish-locale JVM).
String order is by UTF-8 bytes, which is code point order (the "last N" tie-break).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from sqlglot import exp

from ..definition.lower import Lowered
from ..definition.nodes import Group
from ..errors import EngineError, InputError, SegengineError
from ..export import FORMULA_START, FREE_TEXT, PARQUET_CELLS
from ..fields import FIELD_NAME_RE, RESERVED_NAMES, FieldType, Schema
from .base import Engine, Tables, empty_by_status
from .sql import CONTACTS, EVENTS, compile_lowered, sql_lower

PYSPARK_MISSING = "the spark engine needs PySpark: pip install 'segengine[spark]' (and Java 17+)"
DIALECT = "spark"
DEFAULT_MASTER = "local[*]"
MASTER_ENV = "SPARK_MASTER"

#: Settings of the sessions this module starts (a session handed in is left alone).
SESSION_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.inferTimestampNTZ.enabled": "true",
    # a progress bar on stderr would garble the command line's output
    "spark.ui.showConsoleProgress": "false",
}

#: Spark SQL types of the contract (engines/base.py), built-ins first.
CONTACT_TYPES: dict[str, str] = {
    "contact_id": "bigint",
    "email": "string",
    "status": "string",
    "date_added": "timestamp_ntz",
    "lists": "array<string>",
}
EVENT_TYPES: dict[str, str] = {
    "contact_id": "bigint",
    "campaign": "string",
    "type": "string",
    "timestamp": "timestamp_ntz",
    "url": "string",
}
CUSTOM_TYPES: dict[FieldType, str] = {
    FieldType.TEXT: "string",
    FieldType.NUMBER: "double",
    FieldType.DATE: "date",
    FieldType.DATETIME: "timestamp_ntz",
    FieldType.BOOLEAN: "boolean",
}
#: Columns without which a table cannot be evaluated; the others may be missing.
REQUIRED: dict[str, tuple[str, ...]] = {
    CONTACTS: ("contact_id", "email", "status"),
    EVENTS: ("contact_id", "campaign", "type", "timestamp"),
}
#: Spark type names (``DataType.typeName()``) -> field type, for data never imported.
FIELD_TYPE_OF_SPARK: dict[str, FieldType] = {
    "string": FieldType.TEXT,
    "varchar": FieldType.TEXT,
    "char": FieldType.TEXT,
    "byte": FieldType.NUMBER,
    "short": FieldType.NUMBER,
    "integer": FieldType.NUMBER,
    "long": FieldType.NUMBER,
    "float": FieldType.NUMBER,
    "double": FieldType.NUMBER,
    "decimal": FieldType.NUMBER,
    "date": FieldType.DATE,
    "timestamp": FieldType.DATETIME,
    "timestamp_ntz": FieldType.DATETIME,
    "boolean": FieldType.BOOLEAN,
}


def pyspark_sql() -> Any:
    """The ``pyspark.sql`` module, or the error that says how to install it."""
    try:
        import pyspark.sql
    except ImportError:
        raise EngineError(PYSPARK_MISSING) from None
    with warnings.catch_warnings(), contextlib.suppress(ImportError):
        # PySpark checks pandas' version once, on first use, and warns about pandas 3 on
        # stderr although segengine uses no pandas code path of PySpark.
        warnings.simplefilter("ignore", FutureWarning)
        import pyspark.testing.utils  # noqa: F401
    return pyspark.sql


#: Heap of a local session's driver, which is also its only executor: Spark's default
#: of 1g fails at 1M contacts / 20M events ("Not enough memory to build and broadcast
#: the table"). $SEGENGINE_SPARK_DRIVER_MEMORY overrides it; clusters keep their own.
LOCAL_DRIVER_MEMORY = "4g"
DRIVER_MEMORY_ENV = "SEGENGINE_SPARK_DRIVER_MEMORY"


def session_conf(master: str) -> dict[str, str]:
    """The settings of a session segengine starts on `master`."""
    conf = dict(SESSION_CONF)
    if master.startswith("local"):
        conf["spark.driver.memory"] = os.environ.get(DRIVER_MEMORY_ENV) or LOCAL_DRIVER_MEMORY
    return conf


def spark_session(master: str | None = None) -> Any:
    """The running SparkSession, or a new one on `master` ($SPARK_MASTER, else local[*]).

    A session that already runs in this process is returned untouched (its master and
    settings are the caller's); a new one gets `SESSION_CONF`. Starting the JVM takes
    seconds, so one session serves every engine of a process.
    """
    sql = pyspark_sql()
    active = sql.SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = sql.SparkSession.builder.appName("segengine").master(
        master or os.environ.get(MASTER_ENV) or DEFAULT_MASTER
    )
    for key, value in session_conf(master or os.environ.get(MASTER_ENV) or DEFAULT_MASTER).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # the JVM did not start: no Java, a bad master URL, ...
        raise EngineError(f"could not start Spark (needs Java 17+ on PATH or JAVA_HOME): {exc}") from exc
    session.sparkContext.setLogLevel("ERROR")
    return session


# --- the views ------------------------------------------------------------------------


def contact_types(schema: Schema) -> dict[str, str]:
    types = dict(CONTACT_TYPES)
    for name, ftype in schema.custom:
        types[name] = CUSTOM_TYPES[ftype]
    return types


def _utc_wall_time(column: Any) -> Any:
    """A ``TIMESTAMP`` (an instant) as the ``TIMESTAMP_NTZ`` of its UTC wall time.

    ``CAST(ts AS TIMESTAMP_NTZ)`` would use the session time zone; micros since the
    epoch added to the NTZ epoch do not.
    """
    from pyspark.sql import functions as F  # noqa: N812 - PySpark's own convention

    epoch = F.to_timestamp_ntz(F.lit("1970-01-01 00:00:00"))
    return F.timestamp_add("MICROSECOND", F.unix_micros(column), epoch)


def _conform(column: Any, found: str, wanted: str) -> Any:
    """`column` (Spark type `found`) as type `wanted`, time-zone-free."""
    if found == wanted:
        return column
    if wanted == "timestamp_ntz" and found == "timestamp":
        return _utc_wall_time(column)
    return column.cast(wanted)


def _empty(session: Any, types: dict[str, str]) -> Any:
    ddl = ", ".join(f"`{name}` {t}" for name, t in types.items())
    return session.createDataFrame([], schema=ddl)


def read_table(session: Any, kind: str, paths: Sequence[str], types: dict[str, str]) -> Any:
    """A DataFrame over Parquet `paths` with exactly the columns and types of `types`.

    Files may differ in their columns (they gain fields over time): schemas are merged
    and what no file has reads as NULL. A required column missing from every file is
    bad input, reported with the columns that were found.
    """
    from pyspark.sql import functions as F  # noqa: N812

    if not paths:
        return _empty(session, types)
    try:
        frame = session.read.option("mergeSchema", "true").parquet(*paths)
    except Exception as exc:
        raise InputError(f"{kind}: Spark cannot read Parquet at {', '.join(paths)}: {exc}") from exc
    found = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
    missing = [c for c in REQUIRED[kind] if c not in found]
    if missing:
        raise InputError(
            f"{kind} at {', '.join(paths)} lacks column(s) {', '.join(missing)}; "
            f"found: {', '.join(found) or 'none'} (the layout is in docs/spark.md)"
        )
    columns = [
        _conform(F.col(f"`{name}`"), found[name], wanted).alias(name)
        if name in found
        else F.lit(None).cast(wanted).alias(name)
        for name, wanted in types.items()
    ]
    try:
        return frame.select(*columns)
    except Exception as exc:  # a column of a type that does not convert, e.g. text lists
        raise InputError(f"{kind}: columns do not fit the layout of docs/spark.md: {exc}") from exc


def infer_schema(session: Any, contacts: Sequence[str]) -> Schema:
    """The custom fields of contacts that were never imported, from the Parquet schema.

    Text, numbers (any width, as double), dates, timestamps (datetime) and booleans
    become fields in file order; columns of other types or with names that are no
    field names (``[A-Za-z_][A-Za-z0-9_]*``), and the built-in names, are not fields.
    """
    if not contacts:
        return Schema()
    try:
        fields = session.read.option("mergeSchema", "true").parquet(*contacts).schema.fields
    except Exception as exc:
        raise InputError(f"contacts: Spark cannot read Parquet at {', '.join(contacts)}: {exc}") from exc
    pairs = [
        (f.name, FIELD_TYPE_OF_SPARK[f.dataType.typeName()])
        for f in fields
        if f.name not in RESERVED_NAMES
        and FIELD_NAME_RE.match(f.name)
        and f.dataType.typeName() in FIELD_TYPE_OF_SPARK
    ]
    return Schema(tuple(pairs))


# --- export: SPEC section 6, written by Spark ------------------------------------------
# The cells are rendered in Spark SQL by the rules of `segengine.export` (the DuckDB
# writer), so that the part files, concatenated, hold the bytes of the single-file export.

SORT_KEY = "__segengine_email"  # the stored address: rows sort by it, never by a guarded cell
LINE = "value"  # the text writer's one column
HEADER_FLAG = "__segengine_data"  # 0 for the header row, 1 for a contact
OPENS_FILE = "__segengine_opens_file"  # the first row of a task, so of a part file
#: `monotonically_increasing_id` holds the task's partition in its upper 31 bits and the
#: row's position within the task in the lower 33 (documented by Spark)
ROW_IN_TASK_MASK = (1 << 33) - 1

#: Characters that make the DuckDB writer quote a cell (its comment character '#' too).
QUOTE_TRIGGERS = '[,"#\r\n]'
INFINITY = "CAST('Infinity' AS DOUBLE)"
#: Significant digits that always identify a double.
MAX_DIGITS = 17


def _text(value: str) -> str:
    """A Spark SQL string literal (quotes and backslashes escaped)."""
    return exp.Literal.string(value).sql(DIALECT)


def _name(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(DIALECT)


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


def _csv_number(col: str, tag: str) -> SparkCell:
    """As `segengine.export` writes a number: whole numbers as integers, others as Python's
    ``repr`` (``0.1``, ``1e-05``, ``1e+20``), ``inf``, ``-inf``, ``nan``."""
    sci, digits, exponent = (_name(f"__segengine_{part}_{tag}") for part in ("sci", "d", "x"))
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


def _csv_datetime(col: str, tag: str) -> SparkCell:
    # a fraction of a second only when there is one, without trailing zeros; NTZ values
    # are formatted as they are, whatever the session's time zone
    return SparkCell(
        f"CASE WHEN date_format({col}, 'SSSSSS') = '000000' "
        f"""THEN date_format({col}, "yyyy-MM-dd'T'HH:mm:ss'Z'") """
        f"""ELSE concat(regexp_replace(date_format({col}, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"), """
        f"'0+$', ''), 'Z') END"
    )


#: field type -> Spark SQL of a CSV cell's text (NULL = empty cell), as `export.CSV_CELLS`
SPARK_CSV_CELLS: dict[FieldType, Any] = {
    FieldType.TEXT: lambda col, tag: SparkCell(f"NULLIF({col}, '')"),
    FieldType.NUMBER: _csv_number,
    FieldType.DATE: lambda col, tag: SparkCell(f"date_format({col}, 'yyyy-MM-dd')"),
    FieldType.DATETIME: _csv_datetime,
    FieldType.BOOLEAN: lambda col, tag: SparkCell(
        f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' END"
    ),
    FieldType.ENUM: lambda col, tag: SparkCell(col),
    FieldType.SET: lambda col, tag: SparkCell(f"NULLIF(array_join({col}, ';'), '')"),
}

_EPOCH_NTZ = "TIMESTAMP_NTZ'1970-01-01 00:00:00'"

#: field type -> Spark SQL of a Parquet column, typed as `export.PARQUET_CELLS` writes it
#: (the same SQL in both dialects) except datetimes, which become instants (Parquet
#: ``isAdjustedToUTC``) without a time zone's help
SPARK_PARQUET_CELLS: dict[FieldType, Any] = {
    **PARQUET_CELLS,
    FieldType.DATETIME: lambda col: f"timestamp_micros(timestampdiff(MICROSECOND, {_EPOCH_NTZ}, {col}))",
}


def _guard(value: str) -> str:
    """Prefix ``'`` to a text cell a spreadsheet would evaluate as a formula."""
    starts = ", ".join(_text(c) for c in FORMULA_START)
    return f"CASE WHEN substring({value}, 1, 1) IN ({starts}) THEN concat({_text(chr(39))}, {value}) ELSE {value} END"


def _source(name: str) -> str:
    """The stored (or derived) value of a field in the matched rows."""
    if name == "email_domain":
        return "substring(`email`, instr(`email`, '@') + 1)"
    return _name(name)


def csv_cell(name: str, ftype: FieldType, tag: str, raw: bool) -> SparkCell:
    """One CSV column's cell text, guarded unless `raw`, as `segengine.export.cell` renders it."""
    cell = SPARK_CSV_CELLS[ftype](_source(name), tag)
    if raw or ftype not in FREE_TEXT:
        return cell
    return SparkCell(_guard(cell.value), cell.helpers)


def csv_field(cell: str) -> str:
    """A cell's text as DuckDB's CSV writer puts it in a line: RFC 4180 quoting when it holds
    a comma, quote, ``#``, CR or LF, or is an empty text; NULL as nothing."""
    quoted = f"""concat('"', replace({cell}, '"', '""'), '"')"""
    return (
        f"CASE WHEN {cell} IS NULL THEN '' WHEN {cell} = '' OR {cell} RLIKE {_text(QUOTE_TRIGGERS)} "
        f"THEN {quoted} ELSE {cell} END"
    )


def _with_helpers(frame: Any, cells: Sequence[SparkCell]) -> Any:
    """`frame` with every cell's helper columns, one projection per stage."""
    stages = max((len(c.helpers) for c in cells), default=0)
    for stage in range(stages):
        extra = [h for c in cells if stage < len(c.helpers) for h in c.helpers[stage]]
        frame = frame.selectExpr("*", *extra)
    return frame


@dataclass(frozen=True)
class Written:
    """What Spark's writer wrote: contact rows and part files."""

    rows: int
    files: int


class WriteFailed(SegengineError):
    """Spark's job failed (exit status 1); nothing was published."""


def spark_write_error(exc: Exception, uri: str) -> SegengineError:
    """A one-line error for a failed write: bad input when the destination exists."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if "PATH_ALREADY_EXISTS" in first:
        return InputError(f"-o {uri}: already exists; choose a new directory")
    return WriteFailed(f"Spark could not write {uri}: {first[:400]}")


@contextlib.contextmanager
def _session_setting(session: Any, key: str, value: str):
    """`key` set to `value` for the duration of one write, then as it was."""
    before = session.conf.get(key, None)
    session.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            session.conf.unset(key)
        else:
            session.conf.set(key, before)


def in_email_order(frame: Any) -> Any:
    """Range partitioning on (header flag, email), then a sort within each partition.

    Part files in name order then hold the rows in email order (binary, so code-point
    order, as DuckDB's ``COLLATE "binary"``); the header row sorts first of all. Each
    row is marked when it opens its task's output, that is its part file.
    """
    from pyspark.sql import functions as F  # noqa: N812

    keys = [F.col(HEADER_FLAG).asc(), F.col(SORT_KEY).asc_nulls_last()]
    ordered = frame.repartitionByRange(*keys).sortWithinPartitions(*keys)
    opens_file = F.monotonically_increasing_id().bitwiseAND(ROW_IN_TASK_MASK) == 0
    return ordered.withColumn(OPENS_FILE, opens_file)


def _write_csv(frame: Any, uri: str, session: Any, header: str) -> None:
    """Lines through the text writer; every part file after the first (which starts with
    the header row itself) gets the header before its first line."""
    from pyspark.sql import functions as F  # noqa: N812

    opens_part = F.col(OPENS_FILE) & (F.col(HEADER_FLAG) == 1)
    line = F.when(opens_part, F.concat(F.lit(header + "\n"), F.col(LINE))).otherwise(F.col(LINE))
    (frame.select(line.alias(LINE)).write.mode("errorifexists")
     .option("maxRecordsPerFile", 0).option("lineSep", "\n").text(uri))


def _write_parquet(frame: Any, uri: str, session: Any, header: str) -> None:
    """Typed columns; timestamps as microsecond instants (``isAdjustedToUTC``), not INT96."""
    columns = [c for c in frame.columns if c not in (HEADER_FLAG, SORT_KEY, OPENS_FILE)]
    with _session_setting(session, "spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS"):
        (frame.select(*columns).write.mode("errorifexists").option("maxRecordsPerFile", 0)
         .option("compression", "zstd").parquet(uri))


#: format -> how Spark writes an ordered frame (`in_email_order`) to a directory
WRITERS: dict[str, Any] = {"csv": _write_csv, "parquet": _write_parquet}


def write_ordered(frame: Any, fmt: str, uri: str, session: Any, header: str) -> Written:
    """Write an ordered frame and count, in the same job, the rows and the part files."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F  # noqa: N812

    observation = Observation(f"segengine_export_{uuid.uuid4().hex[:12]}")
    observed = frame.observe(
        observation,
        F.coalesce(F.sum(F.col(HEADER_FLAG)), F.lit(0)).alias("rows"),
        F.coalesce(F.sum(F.col(OPENS_FILE).cast("int")), F.lit(0)).alias("files"),
    )
    try:
        WRITERS[fmt](observed, uri, session, header)
    except Exception as exc:  # Spark's, Py4J's or the JVM's: one line, nothing published
        raise spark_write_error(exc, uri) from exc
    metrics = observation.get
    # no rows at all still leaves one part file (the schema, or the header)
    return Written(int(metrics["rows"]), max(1, int(metrics["files"])))


# --- the engine -----------------------------------------------------------------------


@dataclass(frozen=True)
class ViewNames:
    """The session-wide names of one engine's two views."""

    contacts: str
    events: str

    @classmethod
    def fresh(cls) -> ViewNames:
        tag = uuid.uuid4().hex[:12]
        return cls(f"segengine_{tag}_contacts", f"segengine_{tag}_events")

    def table(self, name: str) -> exp.Table:
        """The view behind `name` (``contacts`` or ``events``), aliased as `name`."""
        view = self.contacts if name == CONTACTS else self.events
        return exp.Table(
            this=exp.to_identifier(view, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier(name, quoted=True)),
        )


class SparkEngine(Engine):
    """Runs the compiled Spark SQL of segments in a SparkSession."""

    name = "spark"

    def __init__(self, tables: Tables, session: Any = None, master: str | None = None):
        super().__init__(tables)
        self.session = session if session is not None else spark_session(master)
        self.views = ViewNames.fresh()
        read_table(self.session, CONTACTS, tables.contacts, contact_types(tables.schema)) \
            .createOrReplaceTempView(self.views.contacts)
        read_table(self.session, EVENTS, tables.events, EVENT_TYPES) \
            .createOrReplaceTempView(self.views.events)

    @classmethod
    def for_snapshot(cls, snapshot: Any) -> SparkEngine:
        return cls(snapshot.tables)

    @classmethod
    def at(
        cls,
        contacts: str | Sequence[str],
        events: str | Sequence[str] = (),
        session: Any = None,
        master: str | None = None,
    ) -> SparkEngine:
        """An engine over Parquet that was never imported: files, folders or globs.

        Any location Spark reads (``s3a://``, ``hdfs://``, a local folder); the custom
        fields come from the contacts' Parquet schema (`infer_schema`).
        """
        contacts = (contacts,) if isinstance(contacts, (str, os.PathLike)) else tuple(contacts)
        events = (events,) if isinstance(events, (str, os.PathLike)) else tuple(events)
        contacts = tuple(os.fspath(p) for p in contacts)
        events = tuple(os.fspath(p) for p in events)
        session = session if session is not None else spark_session(master)
        tables = Tables(contacts=contacts, events=events, schema=infer_schema(session, contacts))
        return cls(tables, session=session)

    # --- statements ---------------------------------------------------------------------

    def statement(self, roots: Sequence[Group], as_of: dt.date) -> exp.Select:
        """The compiled union of `roots`, reading this engine's views."""
        return self.lowered_statement(self.lower(roots, as_of), as_of)

    def lowered_statement(self, roots: Sequence[Lowered], as_of: dt.date) -> exp.Select:
        """The compiled union of lowered `roots`, reading this engine's views."""
        return self.on_views(compile_lowered(roots, self.tables.schema, as_of, DIALECT))

    def on_views(self, query: exp.Expression) -> exp.Expression:
        """`query` reading this engine's views; the only change made to a compiled statement.

        Everything else (the Turkish-locale guard of ``LOWER`` included) is in the tree
        `compile_segments` builds, so `segengine sql --dialect spark` prints what runs.
        """

        def for_spark(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Table) and node.name in (CONTACTS, EVENTS) and not node.db:
                return self.views.table(node.name)
            return node

        return query.transform(for_spark, copy=False)

    def run(self, query: exp.Expression) -> pa.Table:
        """The result of `query` as an Arrow table, collected to the driver."""
        return self.session.sql(query.sql(DIALECT)).toArrow()

    def evaluate_ids(self, roots: Sequence[Lowered], as_of: dt.date) -> np.ndarray:
        ids = self.run(self.lowered_statement(roots, as_of)).column("contact_id")
        return np.unique(ids.to_numpy().astype(np.int64, copy=False))

    def evaluate_count(self, roots: Sequence[Lowered], as_of: dt.date) -> dict[str, int]:
        """Matches by status, counted in Spark: filter, then group (statuses lower-cased)."""
        status = sql_lower(exp.column("status", table=CONTACTS, quoted=True), DIALECT)
        query = self.lowered_statement(roots, as_of)
        query.set("expressions", [exp.alias_(status, "status"), exp.alias_(exp.Count(this=exp.Star()), "n")])
        query = query.group_by(status.copy(), copy=False)
        result = self.run(query).to_pydict()
        counts = empty_by_status()
        for value, n in zip(result["status"], result["n"], strict=True):
            counts[value] = counts.get(value, 0) + int(n)
        return counts

    # --- export ---------------------------------------------------------------------------

    def matched_contacts(self, roots: Sequence[Group], as_of: dt.date, fields: Sequence[str]) -> Any:
        """A DataFrame of the active contacts of the union of `roots`, each once, with the
        stored columns `fields` and the sort key: the compiled statement, with its select
        list replaced and ``status`` tested as `count` counts it (lower-cased)."""
        query = self.statement(roots, as_of)
        email = exp.column("email", table=CONTACTS, quoted=True)
        columns = [exp.alias_(email, SORT_KEY, quoted=True)] + [
            exp.alias_(exp.column(f, table=CONTACTS, quoted=True), f, quoted=True) for f in fields
        ]
        query.set("expressions", columns)
        status = sql_lower(exp.column("status", table=CONTACTS, quoted=True), DIALECT)
        query = query.where(exp.EQ(this=status, expression=exp.Literal.string("active")), copy=False)
        return self.session.sql(query.sql(DIALECT))

    def export_frame(
        self, roots: Sequence[Group], as_of: dt.date, names: Sequence[str], fmt: str, raw: bool
    ) -> Any:
        """The rows to write, unordered: the cells of `names` (Parquet) or one CSV line per
        contact plus the header row (CSV), with the header flag and the sort key."""
        schema = self.tables.schema
        stored = list(dict.fromkeys("email" if n == "email_domain" else n for n in names))
        matched = self.matched_contacts(roots, as_of, stored)
        keys = (f"1 AS {_name(HEADER_FLAG)}", _name(SORT_KEY))
        if fmt == "parquet":
            return matched.selectExpr(
                *keys, *(f"{SPARK_PARQUET_CELLS[schema[n]](_source(n))} AS {_name(n)}" for n in names)
            )
        cells = [csv_cell(n, schema[n], str(i), raw) for i, n in enumerate(names)]
        slots = [_name(f"__segengine_cell_{i}") for i in range(len(names))]
        rendered = _with_helpers(matched, cells).selectExpr(
            *keys, *(f"{c.value} AS {slot}" for c, slot in zip(cells, slots, strict=True))
        )
        line = f"concat_ws(',', {', '.join(csv_field(slot) for slot in slots)})"
        data = rendered.selectExpr(_name(HEADER_FLAG), _name(SORT_KEY), f"{line} AS {_name(LINE)}")
        header = self.session.createDataFrame(
            [(0, None, ",".join(names))],
            schema=f"{_name(HEADER_FLAG)} int, {_name(SORT_KEY)} string, {_name(LINE)} string",
        )
        return data.unionByName(header)

    def write_export(
        self,
        roots: Sequence[Group],
        as_of: dt.date,
        names: Sequence[str],
        fmt: str,
        raw: bool,
        uri: str,
    ) -> Written:
        """Write the export of SPEC section 6 as a directory of part files at `uri`.

        One Spark job (after the range partitioner's sampling pass) renders, sorts and
        writes; rows and part files are counted by the same job (`write_ordered`).
        """
        frame = in_email_order(self.export_frame(roots, as_of, names, fmt, raw))
        return write_ordered(frame, fmt, uri, self.session, ",".join(names))

    def close(self) -> None:
        """Drops this engine's views; the session stays up for the next engine."""
        for view in (self.views.contacts, self.views.events):
            self.session.catalog.dropTempView(view)
