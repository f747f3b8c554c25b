"""A DuckDB connection whose `contacts` and `events` views show one snapshot."""

from __future__ import annotations

import os

import duckdb

from .base import Tables

EMPTY_EVENTS = (
    "SELECT NULL::BIGINT AS contact_id, NULL::VARCHAR AS campaign, NULL::VARCHAR AS type, "
    "NULL::TIMESTAMP AS timestamp, NULL::VARCHAR AS url WHERE false"
)
EMPTY_CONTACTS = (
    "SELECT NULL::BIGINT AS contact_id, NULL::VARCHAR AS email, NULL::VARCHAR AS status, "
    "NULL::TIMESTAMP AS date_added, NULL::VARCHAR[] AS lists WHERE false"
)


def _files(paths: tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def connect_tables(tables: Tables, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection, in UTC, with views over the snapshot's files."""
    con = duckdb.connect(config={"threads": threads or os.cpu_count() or 2})
    con.execute("SET TimeZone = 'UTC'")
    contacts = f"SELECT * FROM read_parquet({_files(tables.contacts)})" if tables.contacts else EMPTY_CONTACTS
    events = f"SELECT * FROM read_parquet({_files(tables.events)})" if tables.events else EMPTY_EVENTS
    con.execute(f"CREATE VIEW contacts AS {contacts}")
    con.execute(f"CREATE VIEW events AS {events}")
    return con
