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

A partitioned export (`export_partitioned`, ``--engine spark --partitioned``) is
written by Spark instead: a directory of part files in email order whose cells are
rendered by the same rules in Spark SQL (`segengine.engines.spark.SPARK_CSV_CELLS`),
published by renaming a hidden sibling directory (local paths) or by Spark's output
committer (``s3a://``, ``hdfs://``, ...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import duckdb

from .errors import InputError
from .fields import FieldType, Schema
from .progress import NullProgress, Progress, Task
from .store.duck import ids_table, lit, q, quiet
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
    files: int | None = None  # part files of a partitioned export

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document of SPEC section 6 (and ``files`` when partitioned)."""
        doc: dict[str, Any] = {"rows": self.rows, "path": self.path}
        if self.files is not None:
            doc["files"] = self.files
        return doc


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


@contextlib.contextmanager
def optional_columns(con: duckdb.DuckDBPyConnection, fmt: str) -> Iterator[None]:
    """Parquet columns that may all be empty, whatever this export's data holds.

    DuckDB's writer marks a column ``required`` when its statistics show no NULL (the
    stored file's counts, a filter such as ``status = 'active'``), so the schema would
    change with the data, and differ from what Spark's writer (the partitioned export)
    writes. Without statistics propagation every column is ``optional``; measured on 1M
    contacts it makes no difference to the time an export takes.
    """
    if fmt != "parquet":
        yield
        return
    con.execute("SET disabled_optimizers = 'statistics_propagation'")
    try:
        yield
    finally:
        con.execute("RESET disabled_optimizers")


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
    partitioned: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the active contacts of the union of `segments` to `output`, ordered by email.

    `partitioned` writes a directory of part files through Spark instead
    (`export_partitioned`).
    """
    if partitioned:
        return export_partitioned(ws, segments, output, fmt=fmt, columns=columns, raw=raw,
                                  as_of=as_of, engine=engine, progress=progress)
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
        with progress.task(f"writing {target.name}", total=100) as task, optional_columns(con, fmt):
            rows = write_atomically(con, select, fmt, target, task)
    finally:
        con.unregister(view)
    return ExportResult(rows, str(target), fmt, names)


# --- partitioned, through Spark -----------------------------------------------------

PARTITIONED_NEEDS_SPARK = (
    "--partitioned needs --engine spark: Spark's writer writes the part files "
    "(without --partitioned every engine writes one file)"
)
#: a URI of a file system other than the local one (``s3a://``, ``hdfs://``, ``abfss://``)
REMOTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: what Spark's text writer calls a part file, and what a CSV part is called instead
TEXT_PART = re.compile(r"^(\.?part-.*)\.txt(\.crc)?$")


@dataclass(frozen=True)
class Destination:
    """Where a partitioned export goes: a local directory (published by a rename of a
    hidden sibling) or a URI that Spark's output committer publishes."""

    uri: str
    local: Path | None

    @property
    def shown(self) -> str:
        return str(self.local) if self.local is not None else self.uri


def destination(output: str | os.PathLike[str]) -> Destination:
    """The checked `-o` of a partitioned export: a directory that is new or empty."""
    text = os.fspath(output)
    if REMOTE_URI.match(text) and not text.lower().startswith("file:"):
        return Destination(text, None)
    if text.lower().startswith("file:"):
        text = url2pathname(urlsplit(text).path)
    target = Path(text).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise InputError(f"-o {target}: is a file; give a directory that does not exist or is empty")
    if target.is_dir() and any(target.iterdir()):
        raise InputError(f"-o {target}: is a directory that is not empty; give a new or empty one")
    if not target.parent.is_dir():
        raise InputError(f"-o {target}: directory {target.parent} does not exist")
    return Destination(target.as_uri(), target)


def name_csv_parts(directory: Path) -> None:
    """``part-*.txt`` (Spark's text writer) as ``part-*.csv``, with their checksum files."""
    for path in directory.iterdir():
        match = TEXT_PART.match(path.name)
        if match:
            path.rename(path.with_name(f"{match.group(1)}.csv{match.group(2) or ''}"))


def publish_locally(target: Path, write: Callable[[str], Any], fmt: str) -> Any:
    """Run `write` into a hidden sibling of `target`, then make it `target` at once.

    The files and the directory are fsynced before the rename, the directory and its
    parent after it; a failed job, a crash or Ctrl-C leaves only the hidden sibling
    behind at worst, never a partial `target`.
    """
    from .engines.spark import WriteFailed

    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        written = write(tmp.as_uri())
        if fmt == "csv":
            name_csv_parts(tmp)
        for path in tmp.iterdir():
            fsync_path(path)
        fsync_path(tmp)
        os.rename(tmp, target)  # replaces an empty directory, refuses anything else
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteFailed(f"could not publish {target}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(target)
    fsync_path(target.parent)
    return written


def write_partitioned(engine: Any, roots: Sequence[Any], day: dt.date, names: tuple[str, ...],
                      fmt: str, raw: bool, where: Destination, progress: Progress) -> ExportResult:
    """Spark writes the export to `where`; local directories appear complete or not at all."""

    def write(uri: str):
        return engine.write_export(roots, day, names, fmt, raw, uri)

    with progress.task(f"writing {where.shown} with Spark"):
        if where.local is not None:
            written = publish_locally(where.local, write, fmt)
        else:
            written = write(where.uri)
    return ExportResult(written.rows, where.shown, fmt, names, files=written.files)


def export_partitioned(
    ws: Workspace,
    segments: Sequence[SegmentArg],
    output: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    columns: str | Sequence[str] | None = None,
    raw: bool = False,
    as_of: str | dt.date | None = None,
    engine: str = "spark",
    progress: Progress | None = None,
) -> ExportResult:
    """The export of SPEC section 6 as a directory of part files written by Spark.

    Concatenated in name order (headers of the later CSV parts dropped), the part files
    hold exactly the rows of the single-file export, in the same order and format.
    """
    from .api import parse_as_of

    if engine != "spark":
        raise InputError(PARTITIONED_NEEDS_SPARK)
    where = destination(output)
    fmt = output_format(Path(where.shown), fmt)
    snap = ws.snapshot()
    names = parse_columns(columns, snap.schema)
    roots = ws._roots(segments, snap)
    return write_partitioned(ws.engine("spark", snap), roots, parse_as_of(as_of), names, fmt, raw,
                             where, progress or NullProgress())


def export_tables(
    segments: SegmentArg | Sequence[SegmentArg],
    output: str | os.PathLike[str],
    *,
    contacts: str | os.PathLike[str] | Sequence[str],
    events: str | os.PathLike[str] | Sequence[str] = (),
    fmt: str | None = None,
    columns: str | Sequence[str] | None = None,
    raw: bool = False,
    as_of: str | dt.date | None = None,
    engine: str = "spark",
    workspace: str | os.PathLike[str] | None = None,
    spark_master: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """A partitioned export of Parquet never imported, read where it lives (docs/spark.md).

    Like `segengine.api.count_tables`: custom fields come from the contacts' Parquet
    schema; segments are definition files or dicts, or saved names of `workspace`.
    """
    from .api import parse_as_of, roots_in_place, segments_in_place
    from .engines.spark import SparkEngine

    args = segments_in_place(segments, engine)
    day = parse_as_of(as_of)
    where = destination(output)
    fmt = output_format(Path(where.shown), fmt)
    reader = SparkEngine.at(contacts, events, master=spark_master)
    try:
        schema = reader.tables.schema
        names = parse_columns(columns, schema)
        roots = roots_in_place(args, schema, workspace)
        return write_partitioned(reader, roots, day, names, fmt, raw, where,
                                 progress or NullProgress())
    finally:
        reader.close()
