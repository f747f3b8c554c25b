"""Exporting the active contacts of segments to CSV or Parquet (SPEC section 6).

The rows never pass through Python: the matched contact ids are registered with
DuckDB as an Arrow table and one ``COPY (SELECT ... ORDER BY email)`` joins the
snapshot's contacts to them and streams the file, sorting out of core when it must.
The COPY writes a hidden temporary file next to the target, which is fsynced and
renamed over it, so the file appears complete or not at all.

CSV cells are rendered in SQL, one rule per field type (`CSV_CELLS`): ISO-8601 dates,
datetimes as ``YYYY-MM-DDTHH:MM:SSZ`` (with a fraction of a second only when the
value has one), whole numbers without ``.0``, booleans as ``true``/``false``, lists
joined with ``;``, empty values as empty cells. Text cells that a spreadsheet would
run as a formula get a leading ``'`` unless ``raw``. Parquet keeps native types.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from .errors import InputError
from .fields import FieldType, Schema
from .progress import NullProgress, Progress, Task
from .store.imports import lit, q
from .store.status import ids_table, quiet
from .store.workspace import Snapshot, fsync_path

if TYPE_CHECKING:
    from .api import SegmentArg, Workspace

FORMATS = ("csv", "parquet")
PARQUET_SUFFIXES = (".parquet", ".pq")

#: First characters that make a spreadsheet treat a cell as a formula (OWASP, SPEC 6).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: How often the progress bar asks DuckDB how far the COPY is.
PROGRESS_POLL_SECONDS = 0.2


class UnknownColumn(InputError):
    """`--columns` names something that is not a field of the workspace."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    rows: int
    path: str
    format: str
    columns: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document of SPEC section 6."""
        return {"rows": self.rows, "path": self.path}


# --- cells ------------------------------------------------------------------------


def _guard(expr: str) -> str:
    """Prefix ``'`` to a text cell a spreadsheet would evaluate as a formula."""
    starts = ", ".join(lit(c) for c in FORMULA_START)
    return f"CASE WHEN left({expr}, 1) IN ({starts}) THEN '''' || {expr} ELSE {expr} END"


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
    FieldType.TEXT: lambda col: f"NULLIF({col}, '')",
    FieldType.NUMBER: _csv_number,
    FieldType.DATE: lambda col: f"strftime({col}, '%Y-%m-%d')",
    FieldType.DATETIME: _csv_datetime,
    FieldType.BOOLEAN: lambda col: f"CASE WHEN {col} THEN 'true' WHEN NOT {col} THEN 'false' END",
    FieldType.ENUM: lambda col: col,
    FieldType.SET: lambda col: f"NULLIF(array_to_string({col}, ';'), '')",
}

#: field types whose cells hold free text and so may start like a formula
FREE_TEXT = frozenset({FieldType.TEXT, FieldType.SET})

#: field type -> SQL of the Parquet column (native types; datetimes tagged as UTC)
PARQUET_CELLS: dict[FieldType, Callable[[str], str]] = {
    FieldType.TEXT: lambda col: f"NULLIF({col}, '')",
    FieldType.NUMBER: lambda col: col,
    FieldType.DATE: lambda col: col,
    FieldType.DATETIME: lambda col: f"timezone('UTC', {col})",
    FieldType.BOOLEAN: lambda col: col,
    FieldType.ENUM: lambda col: col,
    FieldType.SET: lambda col: col,
}


def _source(name: str) -> str:
    """The stored (or derived) value of a field in the ``contacts`` view aliased ``c``."""
    if name == "email_domain":
        return "substr(c.email, strpos(c.email, '@') + 1)"
    return f"c.{q(name)}"


def cell(name: str, ftype: FieldType, fmt: str, raw: bool) -> str:
    """SQL of one output column."""
    if fmt == "parquet":
        return f"{PARQUET_CELLS[ftype](_source(name))} AS {q(name)}"
    value = CSV_CELLS[ftype](_source(name))
    if not raw and ftype in FREE_TEXT:
        value = _guard(value)
    return f"{value} AS {q(name)}"


# --- options ----------------------------------------------------------------------


def parse_columns(columns: str | Sequence[str] | None, schema: Schema) -> tuple[str, ...]:
    """The output columns: default ``email`` then the custom fields in creation order."""
    if columns is None:
        return ("email", *schema.custom_fields)
    names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    if not names or any(not n for n in names):
        raise InputError("--columns: give field names separated by commas, e.g. email,first_name")
    known = list(schema)
    for name in names:
        if name not in schema:
            hint = difflib.get_close_matches(name, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UnknownColumn(
                f"--columns: {name!r} is not a field{extra}; fields: {', '.join(known)}"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"--columns: {', '.join(dupes)} named more than once")
    return tuple(names)


def output_format(path: Path, fmt: str | None) -> str:
    """`fmt`, or from the file name: ``.parquet``/``.pq`` is Parquet, anything else CSV."""
    if fmt is None:
        return "parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "csv"
    if fmt not in FORMATS:
        raise InputError(f"--format: {fmt!r} is not a format: use csv or parquet")
    return fmt


def output_path(path: str | os.PathLike[str]) -> Path:
    target = Path(path).expanduser()
    if target.is_dir():
        raise InputError(f"-o {target}: is a directory; give a file name")
    if not target.parent.is_dir():
        raise InputError(f"-o {target}: directory {target.parent} does not exist")
    return target.absolute()


# --- writing ----------------------------------------------------------------------


def run_with_progress(con: duckdb.DuckDBPyConnection, sql: str, task: Task) -> list[tuple]:
    """Run one statement while the progress bar follows DuckDB's own estimate (percent)."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["rows"] = con.execute(sql).fetchall()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="segengine-export", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(PROGRESS_POLL_SECONDS)
            done = con.query_progress()
            if done >= 0:
                task.update(int(done))
    except BaseException:  # Ctrl-C: stop the query before the caller removes its file
        con.interrupt()
        worker.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["rows"]


def copy_options(fmt: str) -> str:
    if fmt == "csv":
        return "FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"', NULLSTR ''"
    return "FORMAT parquet, COMPRESSION zstd"


def write_atomically(con: duckdb.DuckDBPyConnection, select: str, fmt: str, target: Path,
                     task: Task) -> int:
    """COPY `select` to a temporary file beside `target`, fsync it and rename it over `target`."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        ((rows,),) = run_with_progress(
            con, f"COPY ({select}) TO {lit(str(tmp))} ({copy_options(fmt)})", task
        )
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)
    return int(rows)


def contacts_connection(ws: Workspace, snap: Snapshot) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose ``contacts`` view shows `snap`, typed as the contract says.

    The (cached) duckdb engine of the snapshot lends it, whichever engine matched the ids.
    """
    return ws.engine("duckdb", snap).connection


def export_contacts(
    ws: Workspace,
    segments: Sequence[SegmentArg],
    output: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    columns: str | Sequence[str] | None = None,
    raw: bool = False,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
    progress: Progress | None = None,
) -> ExportResult:
    """Write the active contacts of the union of `segments` to `output`, ordered by email."""
    progress = progress or NullProgress()
    target = output_path(output)
    fmt = output_format(target, fmt)
    snap = ws.snapshot()
    schema = snap.schema
    names = parse_columns(columns, schema)
    with progress.task("matching contacts"):
        ids = ws.contact_ids(*segments, as_of=as_of, engine=engine, snapshot=snap)
    con = quiet(contacts_connection(ws, snap))
    view = f"export_ids_{uuid.uuid4().hex[:12]}"
    select = (
        f"SELECT {', '.join(cell(n, schema[n], fmt, raw) for n in names)} "
        f"FROM contacts c SEMI JOIN {view} m ON c.contact_id = m.contact_id "
        "WHERE c.status = 'active' "
        # Qualified, so that it sorts by the stored address, not by the guarded cell;
        # binary collation is code-point order for UTF-8.
        'ORDER BY c.email COLLATE "binary"'
    )
    con.register(view, ids_table(ids))
    try:
        with progress.task(f"writing {target.name}", total=100) as task:
            rows = write_atomically(con, select, fmt, target, task)
    finally:
        con.unregister(view)
    return ExportResult(rows, str(target), fmt, names)
