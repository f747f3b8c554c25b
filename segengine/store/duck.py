"""DuckDB plumbing shared by the store and the operations above it.

One place for what every SQL statement built from text needs (quoted identifiers
and literals, file lists) and for the connection policy: how many threads, how
much memory, where to spill, and which of DuckDB's own progress output to silence.
Two kinds of connection exist because the work differs: a *reader* (segments,
exports, history) may use a large share of memory; a *writer* (imports, status
changes) leaves room for the index build that runs in the same process and
spills to its transaction's staging directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

#: Share of physical memory a reader may use; the rest is for Python, Polars and the OS.
READER_MEMORY_SHARE = 0.6


def q(name: str) -> str:
    """Quote an SQL identifier (column names come from files, so always quote)."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """Quote an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def file_list(files: tuple[str, ...] | list[str]) -> str:
    """A DuckDB list literal of file paths, for ``read_parquet``."""
    return "[" + ", ".join(lit(f) for f in files) + "]"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def reader_memory_limit() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return "80%"  # DuckDB's own default, as a share it understands
    return f"{max(1, int(total * READER_MEMORY_SHARE) // 2**20)}MiB"


def connect_reader() -> duckdb.DuckDBPyConnection:
    """An in-memory connection using every core and a bounded share of memory."""
    spill = os.path.join(tempfile.gettempdir(), f"segengine-duckdb-{os.getpid()}")
    con = duckdb.connect(
        ":memory:",
        config={
            "threads": cpu_count(),
            "memory_limit": reader_memory_limit(),
            "temp_directory": spill,
        },
    )
    # the command line draws its own progress; DuckDB's would garble the terminal
    con.execute("SET enable_progress_bar = false")
    return con


def writer_memory_limit_mb() -> int:
    """A quarter of the physical memory, at most 4 GB (SEGENGINE_MEMORY_LIMIT_MB overrides).

    DuckDB spills past it; the rest is for the index build in the same process.
    """
    if "SEGENGINE_MEMORY_LIMIT_MB" in os.environ:
        return int(os.environ["SEGENGINE_MEMORY_LIMIT_MB"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return max(512, min(4096, total // 4))


def connect_writer(staging: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for import work: UTC, spilling to the staging directory."""
    con = duckdb.connect(config={"threads": os.cpu_count() or 2})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {lit(str(staging / 'spill'))}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")  # ours is drawn on stderr instead
    # Big imports spill to disk rather than grow past a share of the machine's memory.
    con.execute(f"SET memory_limit = '{writer_memory_limit_mb()}MB'")
    return con


def quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Stop DuckDB printing its own progress bar to stdout, which would corrupt ``--json``.

    The bar stays enabled, so `query_progress()` still reports how far a query is.
    """
    con.execute("SET enable_progress_bar_print = false")
    return con


def ids_table(contact_ids: Iterable[int] | np.ndarray | pa.Array) -> pa.Table:
    """The ids as a one-column Arrow table DuckDB can join against without copying rows."""
    if isinstance(contact_ids, pa.ChunkedArray | pa.Array):
        array = contact_ids.cast(pa.int64())
    else:
        # Wrapping the buffer copies nothing, and does not import pandas: pyarrow's NumPy
        # path for ``pa.array(ndarray)`` does, about 0.7 s of an export's start.
        values = np.ascontiguousarray(np.asarray(contact_ids, dtype=np.int64).reshape(-1))
        array = pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(values)])
    return pa.Table.from_arrays([array], names=["contact_id"])
