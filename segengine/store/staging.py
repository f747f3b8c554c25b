"""Reading import files into a staged Parquet file with a line number per record.

CSV goes through Python's `csv` module, the one reader that gets RFC 4180 quoting,
embedded newlines and the *file line number* of each record right; records are
batched into Arrow string columns, so no per-row objects outlive a batch. Parquet is
read by DuckDB directly and needs no staging.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ImportRejected

BATCH_ROWS = 100_000
LINE = "_line"

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def file_format(path: Path) -> str:
    """``csv`` or ``parquet``, from the file's first bytes (not its name)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except FileNotFoundError:
        raise ImportRejected(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportRejected(f"{path} is a directory: pass a CSV or Parquet file") from None
    return "parquet" if head == b"PAR1" else "csv"


def stage_csv(
    path: Path,
    out: Path,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[str], int]:
    """Copy a CSV file into Parquet with all columns as text plus its line number.

    Returns the header names and the number of records read. Empty cells become null.
    """
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ImportRejected(f"{path}: cannot open: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle, strict=False)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportRejected(f"{path}: the file is empty: a header row is needed") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ImportRejected(f"{path}: cannot read the header row: {exc}") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            dupes = sorted({h for h in header if header.count(h) > 1})
            raise ImportRejected(f"{path}: duplicate column names in the header: {dupes}")
        width = len(header)
        names = [*header, LINE, "_width"]
        schema = pa.schema([(n, pa.string()) for n in header] + [(LINE, pa.int64()), ("_width", pa.int32())])
        writer = pq.ParquetWriter(out, schema)
        rows = 0
        try:
            columns: list[list[str | None]] = [[] for _ in range(width)]
            lines: list[int] = []
            widths: list[int] = []
            last_line = reader.line_num
            while True:
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except UnicodeDecodeError as exc:
                    raise ImportRejected(
                        f"{path}: not UTF-8 near line {last_line + 1}: {exc.reason}; "
                        "save the file as UTF-8"
                    ) from None
                except csv.Error as exc:
                    raise ImportRejected(f"{path}: line {last_line + 1}: {exc}") from None
                start = last_line + 1
                last_line = reader.line_num
                if not record:  # a blank line is not a record
                    continue
                for i in range(width):
                    value = record[i] if i < len(record) else ""
                    columns[i].append(value if value != "" else None)
                lines.append(start)
                widths.append(len(record))
                rows += 1
                if len(lines) >= BATCH_ROWS:
                    _flush(writer, names, columns, lines, widths)
                    if progress:
                        progress(rows)
            _flush(writer, names, columns, lines, widths)
        finally:
            writer.close()
    return header, rows


def _flush(writer, names, columns, lines, widths) -> None:
    if not lines:
        return
    arrays = [pa.array(col, pa.string()) for col in columns]
    arrays += [pa.array(lines, pa.int64()), pa.array(widths, pa.int32())]
    writer.write_table(pa.Table.from_arrays(arrays, names=names))
    for col in columns:
        col.clear()
    lines.clear()
    widths.clear()
