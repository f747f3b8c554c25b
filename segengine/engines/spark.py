"""The Spark engine: the compiled SQL (`segengine.engines.sql`, dialect ``spark``) on Apache Spark.

For data beyond one machine, or data that already lives where a cluster reads it (HDFS,
S3, a lakehouse folder): the same sqlglot tree that `segengine sql --dialect spark`
prints runs in Spark SQL over two temporary views with the layout of docs/sql.md,
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
from ..errors import EngineError, InputError
from ..fields import FIELD_NAME_RE, RESERVED_NAMES, FieldType, Schema
from ..store.manifest import Tables
from .base import Engine, empty_by_status
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

    def close(self) -> None:
        """Drops this engine's views; the session stays up for the next engine."""
        for view in (self.views.contacts, self.views.events):
            self.session.catalog.dropTempView(view)
