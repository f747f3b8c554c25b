"""The DuckDB engine: compiled SQL (`segengine.engines.sql`) over the Parquet snapshot.

An in-memory connection holds two views, ``contacts`` and ``events``, over the
snapshot's Parquet files, so the statement `segengine sql --dialect duckdb` prints is
exactly the one this engine runs. The views also make the data look like the
contract says even when the files do not quite: time-zone-aware timestamps become
naive UTC (so no answer depends on the session time zone), columns the schema knows
but no file holds yet read as typed NULLs, and zero files give an empty typed table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import duckdb
import numpy as np
from sqlglot import exp

from ..definition.lower import Lowered
from ..definition.nodes import Group
from ..fields import FieldType, Schema
from ..store.duck import connect_reader as connect
from ..store.manifest import Tables
from .base import Engine, empty_by_status
from .sql import CONTACTS, EVENTS, bucket_number, compile_lowered

#: DuckDB column types of the contract (engines/base.py), built-ins first.
CONTACT_COLUMNS: dict[str, str] = {
    "contact_id": "BIGINT",
    "email": "VARCHAR",
    "status": "VARCHAR",
    "date_added": "TIMESTAMP",
    "lists": "VARCHAR[]",
}
EVENT_COLUMNS: dict[str, str] = {
    "contact_id": "BIGINT",
    "campaign": "VARCHAR",
    "type": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "url": "VARCHAR",
}
CUSTOM_TYPES: dict[FieldType, str] = {
    FieldType.TEXT: "VARCHAR",
    FieldType.NUMBER: "DOUBLE",
    FieldType.DATE: "DATE",
    FieldType.DATETIME: "TIMESTAMP",
    FieldType.BOOLEAN: "BOOLEAN",
}


def contact_columns(schema: Schema) -> dict[str, str]:
    columns = dict(CONTACT_COLUMNS)
    for name, ftype in schema.custom:
        columns[name] = CUSTOM_TYPES[ftype]
    return columns


def _read_parquet(files: Sequence[str]) -> exp.Expression:
    """``read_parquet([...], union_by_name := true)``: files may gain columns over time."""
    return exp.Anonymous(
        this="read_parquet",
        expressions=[
            exp.Array(expressions=[exp.Literal.string(str(f)) for f in files]),
            exp.PropertyEQ(this=exp.to_identifier("union_by_name"), expression=exp.true()),
        ],
    )


def _typed_null(name: str, sql_type: str) -> exp.Expression:
    null = exp.cast(exp.null(), exp.DataType.build(sql_type, dialect="duckdb"))
    return exp.alias_(null, name, quoted=True)


def _as_naive_utc(name: str, sql_type: str) -> exp.Expression:
    column = exp.column(name, quoted=True)
    if sql_type.startswith("TIMESTAMP WITH TIME ZONE"):
        utc = exp.func("timezone", exp.Literal.string("UTC"), column)
        return exp.alias_(utc, name, quoted=True)
    return column


def view_query(
    con: duckdb.DuckDBPyConnection, files: Sequence[str], columns: dict[str, str]
) -> exp.Select:
    """The SELECT behind a view over `files` that has at least the typed `columns`."""
    if not files:
        nulls = [_typed_null(name, t) for name, t in columns.items()]
        return exp.select(*nulls).where(exp.false())
    source = _read_parquet(files)
    found = con.sql(exp.select(exp.Star()).from_(source).sql("duckdb"))
    present = dict(zip(found.columns, (str(t) for t in found.types), strict=True))
    projections = [_as_naive_utc(name, t) for name, t in present.items()]
    projections += [_typed_null(n, t) for n, t in columns.items() if n not in present]
    return exp.select(*projections).from_(source)


def create_views(con: duckdb.DuckDBPyConnection, tables: Tables) -> None:
    """(Re)create the ``contacts`` and ``events`` views of `tables` on `con`."""
    for name, files, columns in (
        (CONTACTS, tables.contacts, contact_columns(tables.schema)),
        (EVENTS, tables.events, EVENT_COLUMNS),
    ):
        view = exp.Create(
            this=exp.Table(this=exp.to_identifier(name, quoted=True)),
            kind="VIEW",
            replace=True,
            expression=view_query(con, files, columns),
        )
        con.execute(view.sql("duckdb"))


def bucket_numbers(tables: Tables, seed: str) -> tuple[np.ndarray, np.ndarray]:
    """(contact ids, bucket numbers for `seed`) of every contact, in the files' order.

    The numbers come from the same SQL that `segengine sql` prints (`sql.bucket_number`);
    a contact without an email gets -1.
    """
    con = connect()
    try:
        create_views(con, tables)
        number = exp.Coalesce(this=bucket_number(seed, "duckdb"), expressions=[exp.Literal.number(-1)])
        query = exp.select(
            exp.column("contact_id", table=CONTACTS, quoted=True), exp.alias_(number, "bucket")
        ).from_(exp.Table(this=exp.to_identifier(CONTACTS, quoted=True)))
        result = con.sql(query.sql("duckdb")).fetchnumpy()
    finally:
        con.close()
    return (
        np.asarray(result["contact_id"], dtype=np.int64),
        np.asarray(result["bucket"], dtype=np.int64),
    )


class DuckDBEngine(Engine):
    """Runs the compiled SQL of each segment in DuckDB over the Parquet snapshot."""

    name = "duckdb"

    def __init__(self, tables: Tables, connection: duckdb.DuckDBPyConnection | None = None):
        super().__init__(tables)
        self._owns_connection = connection is None
        self._con = connect() if connection is None else connection
        create_views(self._con, tables)

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection holding the ``contacts`` and ``events`` views (for export)."""
        return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own over the same views: a connection serves one thread at
        a time, and a server evaluates in several (DuckDB releases the GIL while it runs)."""
        return self._con.cursor()

    def sql_union(self, roots: Sequence[Group], as_of: dt.date) -> exp.Select:
        """``SELECT contact_id FROM contacts WHERE ...`` for the union of `roots`."""
        return self.lowered_sql(self.lower(roots, as_of), as_of)

    def lowered_sql(self, roots: Sequence[Lowered], as_of: dt.date) -> exp.Select:
        return compile_lowered(roots, self.tables.schema, as_of, "duckdb")

    def evaluate_ids(self, roots: Sequence[Lowered], as_of: dt.date) -> np.ndarray:
        query = self.lowered_sql(roots, as_of).order_by(
            exp.column("contact_id", table=CONTACTS, quoted=True), copy=False
        )
        with self.cursor() as cur:
            result = cur.sql(query.sql("duckdb")).fetchnumpy()["contact_id"]
        return np.asarray(result, dtype=np.int64)

    def evaluate_count(self, roots: Sequence[Lowered], as_of: dt.date) -> dict[str, int]:
        """Matches by status in one pass over ``contacts``: filter, then group."""
        status = exp.column("status", table=CONTACTS, quoted=True)
        query = self.lowered_sql(roots, as_of)
        query.set("expressions", [status, exp.alias_(exp.Count(this=exp.Star()), "n")])
        query = query.group_by(status.copy(), copy=False)
        counts = empty_by_status()
        with self.cursor() as cur:
            rows = cur.sql(query.sql("duckdb")).fetchall()
        for value, n in rows:
            counts[value] = counts.get(value, 0) + int(n)
        return counts

    def close(self) -> None:
        """Closes the connection unless the caller passed it in (then it is theirs)."""
        if self._owns_connection:
            self._con.close()
