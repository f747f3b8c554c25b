"""The partitioned export: Spark writes a directory of part files (docs/spark.md).

``--engine spark --partitioned``: part files in email order whose cells are rendered
by the rules of `cells.py` in Spark SQL, so that, concatenated in name order (headers
of the later CSV parts dropped), they hold exactly the rows of the single-file export.
A local directory is published by renaming a hidden sibling; other destinations
(``s3a://``, ``hdfs://``, ...) by Spark's output committer. Data never imported is
exported the same way (`export_tables`), read where it lives.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlglot import exp

from ..definition.nodes import Group
from ..engines.spark import DIALECT, SparkEngine
from ..engines.sql import CONTACTS, sql_lower
from ..errors import InputError, SegengineError
from ..progress import NullProgress, Progress
from ..session import SegmentArg, Session, parse_as_of, roots_in_place, segments_in_place
from ..store.workspace import fsync_path, make_private
from .cells import (
    SPARK,
    SPARK_PARQUET_CELLS,
    csv_cell,
    csv_field,
    source,
    spark_name,
    with_helpers,
)
from .options import PARTITIONED_NEEDS_SPARK, ExportResult, output_format, parse_columns

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
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        written = write(tmp.as_uri())
        if fmt == "csv":
            name_csv_parts(tmp)
        make_private(tmp)  # an export holds emails
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


def write_partitioned(engine: SparkEngine, roots: Sequence[Any], day: dt.date, names: tuple[str, ...],
                      fmt: str, raw: bool, where: Destination, progress: Progress) -> ExportResult:
    """Spark writes the export to `where`; local directories appear complete or not at all."""

    def write(uri: str) -> Written:
        return write_export(engine, roots, day, names, fmt, raw, uri)

    with progress.task(f"writing {where.shown} with Spark"):
        if where.local is not None:
            written = publish_locally(where.local, write, fmt)
        else:
            written = write(where.uri)
    return ExportResult(written.rows, where.shown, fmt, names, files=written.files)


def export_partitioned(
    session: Session,
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
    """The export of docs/export-and-unsubscribe.md as a directory of part files written by Spark.

    Concatenated in name order (headers of the later CSV parts dropped), the part files
    hold exactly the rows of the single-file export, in the same order and format.
    """
    if engine != "spark":
        raise InputError(PARTITIONED_NEEDS_SPARK)
    where = destination(output)
    if where.local is not None:
        session.store.check_outside(where.local, "-o")
    fmt = output_format(Path(where.shown), fmt)
    snap = session.snapshot()
    names = parse_columns(columns, snap.schema)
    roots = session.roots(segments, snap)
    return write_partitioned(session.engine("spark", snap), roots, parse_as_of(as_of), names, fmt, raw,
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


# --- Spark's writer ------------------------------------------------------------------

SORT_KEY = "__segengine_email"  # the stored address: rows sort by it, never by a guarded cell
LINE = "value"  # the text writer's one column
HEADER_FLAG = "__segengine_data"  # 0 for the header row, 1 for a contact
OPENS_FILE = "__segengine_opens_file"  # the first row of a task, so of a part file
#: `monotonically_increasing_id` holds the task's partition in its upper 31 bits and the
#: row's position within the task in the lower 33 (documented by Spark)
ROW_IN_TASK_MASK = (1 << 33) - 1


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



def matched_contacts(engine: SparkEngine, roots: Sequence[Group], as_of: dt.date, fields: Sequence[str]) -> Any:
    """A DataFrame of the active contacts of the union of `roots`, each once, with the
    stored columns `fields` and the sort key: the compiled statement, with its select
    list replaced and ``status`` tested as `count` counts it (lower-cased)."""
    query = engine.statement(roots, as_of)
    email = exp.column("email", table=CONTACTS, quoted=True)
    columns = [exp.alias_(email, SORT_KEY, quoted=True)] + [
        exp.alias_(exp.column(f, table=CONTACTS, quoted=True), f, quoted=True) for f in fields
    ]
    query.set("expressions", columns)
    status = sql_lower(exp.column("status", table=CONTACTS, quoted=True), DIALECT)
    query = query.where(exp.EQ(this=status, expression=exp.Literal.string("active")), copy=False)
    return engine.session.sql(query.sql(DIALECT))

def export_frame(
    engine: SparkEngine, roots: Sequence[Group], as_of: dt.date, names: Sequence[str], fmt: str, raw: bool
) -> Any:
    """The rows to write, unordered: the cells of `names` (Parquet) or one CSV line per
    contact plus the header row (CSV), with the header flag and the sort key."""
    schema = engine.tables.schema
    stored = list(dict.fromkeys("email" if n == "email_domain" else n for n in names))
    matched = matched_contacts(engine, roots, as_of, stored)
    keys = (f"1 AS {spark_name(HEADER_FLAG)}", spark_name(SORT_KEY))
    if fmt == "parquet":
        return matched.selectExpr(
            *keys, *(f"{SPARK_PARQUET_CELLS[schema[n]](source(n, None, SPARK))} AS {spark_name(n)}" for n in names)
        )
    cells = [csv_cell(n, schema[n], str(i), raw) for i, n in enumerate(names)]
    slots = [spark_name(f"__segengine_cell_{i}") for i in range(len(names))]
    rendered = with_helpers(matched, cells).selectExpr(
        *keys, *(f"{c.value} AS {slot}" for c, slot in zip(cells, slots, strict=True))
    )
    line = f"concat_ws(',', {', '.join(csv_field(slot) for slot in slots)})"
    data = rendered.selectExpr(spark_name(HEADER_FLAG), spark_name(SORT_KEY), f"{line} AS {spark_name(LINE)}")
    header = engine.session.createDataFrame(
        [(0, None, ",".join(names))],
        schema=f"{spark_name(HEADER_FLAG)} int, {spark_name(SORT_KEY)} string, {spark_name(LINE)} string",
    )
    return data.unionByName(header)

def write_export(
    engine: SparkEngine,
    roots: Sequence[Group],
    as_of: dt.date,
    names: Sequence[str],
    fmt: str,
    raw: bool,
    uri: str,
) -> Written:
    """Write the export of docs/export-and-unsubscribe.md as a directory of part files at `uri`.

    One Spark job (after the range partitioner's sampling pass) renders, sorts and
    writes; rows and part files are counted by the same job (`write_ordered`).
    """
    frame = in_email_order(export_frame(engine, roots, as_of, names, fmt, raw))
    return write_ordered(frame, fmt, uri, engine.session, ",".join(names))
