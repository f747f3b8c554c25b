"""What an export writes: its columns, format and target, checked before any work.

Shared by the single-file writer (`file.py`) and the partitioned one (`partitioned.py`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fields import Schema

FORMATS = ("csv", "parquet")
PARQUET_SUFFIXES = (".parquet", ".pq")
#: what ``--partitioned`` without ``--engine spark`` is told
PARTITIONED_NEEDS_SPARK = (
    "--partitioned needs --engine spark: Spark's writer writes the part files "
    "(without --partitioned every engine writes one file)"
)


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
        """The ``--json`` document of docs/export-and-unsubscribe.md (and ``files`` when partitioned)."""
        doc: dict[str, Any] = {"rows": self.rows, "path": self.path}
        if self.files is not None:
            doc["files"] = self.files
        return doc


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


