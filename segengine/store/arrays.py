"""Immutable array files of the engagement index: numpy arrays, Arrow string columns.

Arrays are memory-mapped when read; a later index reuses a file it does not change by
hard-linking it, so a file once written is never opened for writing again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..lazy import numpy_on_first_use
from .checksums import check, check_range, inherit

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
else:
    np = numpy_on_first_use(globals())


def save(path: Path, array_: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array_), allow_pickle=False)
    return path.name


def load(path: Path) -> np.ndarray:
    check(path)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_unchecked(path: Path) -> np.memmap:
    """The array of `path` memory-mapped, only its header checked (its first block):
    the caller checks the bytes it reads (`checksums.check_range`) before using them."""
    check_range(path, 0, 1)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def save_strings(path: Path, values: pa.Array) -> str:
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"v": values.cast(pa.large_string())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path.name


def load_strings(path: Path) -> pa.Array:
    # PyArrow loads with the first text dictionary a count reads, not with the index
    import pyarrow as pa

    check(path)
    with pa.memory_map(str(path), "r") as source:
        column = pa.ipc.open_file(source).read_all().column("v")
    # one chunk (as `save_strings` writes) is used in place: combining copies it (the
    # 10M addresses of a big workspace: 400 MB, seconds)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def link_or_copy(source: Path, target: Path) -> None:
    """Reuse an immutable file of the previous index without copying its bytes; a read
    of `target` is checked against `source`'s recorded checksums."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        import shutil  # here: a reader of the index never copies

        shutil.copyfile(source, target)
    inherit(source, target)
