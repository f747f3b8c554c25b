"""The single-file export: DuckDB writes one CSV or Parquet file (docs/export-and-unsubscribe.md).

The rows never pass through Python: the matched contact ids are registered with
DuckDB as an Arrow table and one ``COPY (SELECT ... ORDER BY email)`` joins the
snapshot's contacts to them and streams the file, sorting out of core when it must.
The COPY writes a hidden temporary file next to the target, which is fsynced and
renamed over it, so the file appears complete or not at all. The cells are rendered
by the rules of `cells.py`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from ..progress import NullProgress, Progress, Task
from ..session import SegmentArg, Session
from ..store.duck import ids_table, lit, q, quiet
from ..store.workspace import fsync_path, make_private
from .cells import cell
from .options import ExportResult, output_format, output_path, parse_columns

#: How often the progress bar asks DuckDB how far the COPY is.
PROGRESS_POLL_SECONDS = 0.2


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
        make_private(tmp)  # an export holds emails
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


def export_file(
    session: Session,
    segments: Sequence[SegmentArg],
    output: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    columns: str | Sequence[str] | None = None,
    raw: bool = False,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
    label_column: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the active contacts of the union of `segments` to `output`, ordered by email.

    With `label_column`, a last column of that name holds, per row, the first of the
    `segments` (in the order given) that the contact matches: a priority list.
    """
    progress = progress or NullProgress()
    session.store.check_outside(output, "-o")
    target = output_path(output)
    fmt = output_format(target, fmt)
    snap = session.snapshot()
    schema = snap.schema
    names = parse_columns(columns, schema)
    if label_column is not None:
        check_label_column(label_column, names)
    with progress.task("matching contacts"):
        if label_column is None:
            matched = ids_table(session.contact_ids(segments, as_of=as_of, engine=engine, snapshot=snap))
        else:
            matched = first_matches(session, segments, as_of=as_of, engine=engine, snapshot=snap)
    con = quiet(session.connection(snap))
    view = f"export_ids_{uuid.uuid4().hex[:12]}"
    cells = [cell(n, schema[n], fmt, raw) for n in names]
    if label_column is None:
        source = f"contacts c SEMI JOIN {view} m ON c.contact_id = m.contact_id "
    else:
        # segment names never start like a formula, so the label needs no guard
        cells.append(f"m.label AS {q(label_column)}")
        source = f"contacts c JOIN {view} m ON c.contact_id = m.contact_id "
    select = (
        f"SELECT {', '.join(cells)} FROM {source}"
        "WHERE c.status = 'active' "
        # Qualified, so that it sorts by the stored address, not by the guarded cell;
        # binary collation is code-point order for UTF-8.
        'ORDER BY c.email COLLATE "binary"'
    )
    con.register(view, matched)
    try:
        with progress.task(f"writing {target.name}", total=100) as task, optional_columns(con, fmt):
            rows = write_atomically(con, select, fmt, target, task)
    finally:
        con.unregister(view)
    written = names if label_column is None else (*names, label_column)
    return ExportResult(rows, str(target), fmt, written)


def check_label_column(name: str, columns: Sequence[str]) -> None:
    """`--label-column` names a new column: not empty, not one of the exported fields."""
    from ..errors import InputError

    if not name or name != name.strip():
        raise InputError("--label-column: give the new column a name, e.g. --label-column audience")
    if name in columns:
        raise InputError(
            f"--label-column: {name!r} is already an exported column: choose another name"
        )


def first_matches(
    session: Session,
    segments: Sequence[SegmentArg],
    *,
    as_of: str | dt.date | None,
    engine: str,
    snapshot: Any,
) -> pa.Table:
    """``(contact_id, label)``: every contact of the union with the name of the first of
    `segments` (in the order given) that it matches."""
    named = session.named_roots(segments, snapshot)
    evaluator = session.engine(engine, snapshot)
    from ..session import parse_as_of

    day = parse_as_of(as_of)
    ids = [evaluator.contact_ids([root], day) for _, root in named]
    codes = [np.full(len(found), i, dtype=np.int32) for i, found in enumerate(ids)]
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    all_codes = np.concatenate(codes) if codes else np.zeros(0, np.int32)
    # a stable sort by id keeps each contact's segments in the order given: the first wins
    order = np.argsort(all_ids, kind="stable")
    unique, first = np.unique(all_ids[order], return_index=True)
    labels = pa.DictionaryArray.from_arrays(
        pa.array(all_codes[order][first], pa.int32()),
        pa.array([segment.name for segment, _ in named], pa.string()),
    )
    return pa.table({"contact_id": pa.array(unique, pa.int64()), "label": labels.cast(pa.string())})
