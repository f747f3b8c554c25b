"""Reading import files into a staged Parquet file with a line number per record.

CSV goes through Python's `csv` module, the one reader that gets RFC 4180 quoting,
embedded newlines and the *file line number* of each record right; records are
batched into Arrow string columns, so no per-row objects outlive a batch. Parquet is
read by DuckDB directly and needs no staging.
"""

from __future__ import annotations

import csv
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ImportRejected

BATCH_ROWS = 100_000
LINE = "_line"
WIDTH = "_width"
#: column names the import pipeline uses for itself (and DuckDB's row number): a file's
#: column of that name would be dropped or shadowed, so it is refused
INTERNAL_NAMES = (LINE, WIDTH, "file_row_number")
#: a last line fed to the CSV reader after the file: read as a record of its own, the
#: file ended outside quotes; read into a field, a quote was never closed
END = "\ue000segengine: end of file\ue000"

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
        reader = csv.reader(itertools.chain(handle, [END + "\n"]), strict=False)
        try:
            header = next(reader)
        except StopIteration:
            raise ImportRejected(f"{path}: the file is empty: a header row is needed") from None
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except csv.Error as exc:
            raise ImportRejected(f"{path}: cannot read the header row: {exc}") from None
        if header == [END]:
            raise ImportRejected(f"{path}: the file is empty: a header row is needed")
        if header and END in header[-1]:
            raise ImportRejected(unclosed_quote(path, 1))
        header = [h.strip() for h in header]
        check_names(path, header)
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
                except UnicodeDecodeError:
                    raise not_utf8(path) from None
                except csv.Error as exc:
                    raise ImportRejected(f"{path}: line {last_line + 1}: {exc}") from None
                start = last_line + 1
                last_line = reader.line_num
                if not record:  # a blank line is not a record
                    continue
                if record == [END]:
                    break
                if END in record[-1]:
                    raise ImportRejected(unclosed_quote(path, start))
                if any("\x00" in cell for cell in record):
                    raise ImportRejected(
                        f"{path}: line {start}: a cell holds a NUL character (byte 0x00), which "
                        "no text field may hold: remove it (is this a binary file?)"
                    )
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


def unclosed_quote(path: Path, line: int) -> str:
    return (
        f"{path}: line {line}: a quoted field starts on this record and its closing quote "
        'never comes, so the rest of the file would be one cell: close the quote ("), or '
        'double a quote that is part of the value ("")'
    )


def check_names(path: Path, names: list[str]) -> None:
    """Refuse a column whose name the import uses for itself."""
    for name in names:
        if name in INTERNAL_NAMES:
            raise ImportRejected(
                f"{path}: column {name!r} has a name segengine uses internally "
                f"({', '.join(INTERNAL_NAMES)}): rename the column"
            )


def not_utf8(path: Path) -> ImportRejected:
    """The error for a file that is not UTF-8, naming its first bad byte and line.

    The text reader decodes ahead in blocks, so where it fails says nothing about where
    the bad byte is: the file is scanned again, as bytes.
    """
    with open(path, "rb") as f:
        head = f.read(2)
    if head in (b"\xff\xfe", b"\xfe\xff"):
        # What spreadsheets write as "Unicode text": every character in two bytes.
        return ImportRejected(
            f"{path}: the file is UTF-16, not UTF-8: save it as \"CSV UTF-8\", or convert it, "
            f"e.g. iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}"
        )
    found = first_invalid_utf8(path)
    if found is None:  # pragma: no cover - the reader failed, so a bad byte exists
        return ImportRejected(f"{path}: not UTF-8: re-save it as UTF-8")
    line, offset, byte = found
    return ImportRejected(
        f"{path}: line {line} is not UTF-8 (byte 0x{byte:02x} at byte offset {offset}): "
        f"re-save the file as UTF-8, or convert it, e.g. "
        f"iconv -f WINDOWS-1252 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}"
    )


def first_invalid_utf8(path: Path, block: int = 1 << 20) -> tuple[int, int, int] | None:
    """(line, byte offset, byte value) of the first byte that is not UTF-8, or None.

    Lines count from 1 and end at a line feed, as the rejects report counts them; the
    offset counts bytes from 0, as ``xxd -s`` and ``dd skip=`` take it.
    """
    line, base, carry = 1, 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block)
            data = carry + chunk
            if not data:
                return None
            try:
                data.decode("utf-8")
                good, carry = len(data), b""
            except UnicodeDecodeError as exc:
                # A character cut by the block's end is completed by the next block.
                if chunk and exc.reason == "unexpected end of data":
                    good, carry = exc.start, data[exc.start:]
                else:
                    bad = exc.start
                    return line + data.count(b"\n", 0, bad), base + bad, data[bad]
            line += data.count(b"\n", 0, good)
            base += good
            if not chunk:
                return None


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
