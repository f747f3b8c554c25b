"""Exporting the active contacts of segments to CSV or Parquet (docs/export-and-unsubscribe.md).

- `cells.py`: how a stored value becomes a cell, one set of rules rendered for every
  writer (formula guard, list joining, dates, numbers, ``email_domain``);
- `options.py`: the columns, format and target of an export, checked first;
- `file.py`: one file written by DuckDB, published by an atomic rename;
- `partitioned.py`: a directory of part files written by Spark (``--partitioned``),
  also for data never imported (`export_tables`).

Operations take a `segengine.session.Session`; `segengine.api.Workspace.export` is
the public entry.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .options import PARTITIONED_NEEDS_SPARK, ExportResult, UnknownColumn, parse_columns

if TYPE_CHECKING:
    from ..progress import Progress
    from ..session import SegmentArg, Session

__all__ = [
    "PARTITIONED_NEEDS_SPARK",
    "ExportResult",
    "UnknownColumn",
    "export_contacts",
    "export_tables",
    "parse_columns",
    "run_with_progress",
]


def export_contacts(
    session: Session,
    segments: Sequence[SegmentArg],
    output: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    columns: str | Sequence[str] | None = None,
    raw: bool = False,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
    partitioned: bool = False,
    label_column: str | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Write the active contacts of the union of `segments` to `output`, ordered by email.

    `partitioned` writes a directory of part files through Spark instead. `label_column`
    adds a column naming, per row, the first of `segments` the contact matches.
    """
    if partitioned and label_column is not None:
        from ..errors import InputError

        raise InputError(
            "--label-column writes one file: leave out --partitioned to label the rows"
        )
    if partitioned:
        from .partitioned import export_partitioned

        return export_partitioned(session, segments, output, fmt=fmt, columns=columns, raw=raw,
                                  as_of=as_of, engine=engine, progress=progress)
    from .file import export_file

    return export_file(session, segments, output, fmt=fmt, columns=columns, raw=raw,
                       as_of=as_of, engine=engine, label_column=label_column, progress=progress)


def __getattr__(name: str) -> Any:
    """The writers' modules load DuckDB, sqlglot and Spark's glue: only when first used."""
    if name in ("run_with_progress", "export_file"):
        from . import file

        return getattr(file, name)
    if name in ("export_tables", "export_partitioned"):
        from . import partitioned

        return getattr(partitioned, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
