"""The engagement index: per-contact aggregates, bitmaps and a compact event store.

The index answers segment rules in milliseconds where a scan of the raw events takes
seconds. Its parts, each a module:

- `layout`: the format version, the files and the typed bitmap names (`BitmapKeys`)
  that the writer and the reader share;
- `bitmaps`: bitmaps of contact rows and the store of named bitmaps;
- `contacts`: the contact part (ids, statuses, lists, one column per field);
- `events`: the event part (aggregates, event bitmaps, the event store's blocks);
- `build`: a full build or an update, and `refresh_index`, run inside every commit;
- `read`: `IndexData` and `load_index`, which accepts the formats it can read and
  refuses the others, in one place.

docs/index.md explains the layout and the alternatives we rejected.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..manifest import covers_of
from .layout import FORMAT, META, BitmapKeys, IndexUnavailable, day_number

if TYPE_CHECKING:
    from .build import build_index, refresh_index
    from .events import contact_rows
    from .read import FieldColumn, IndexData, load_index

#: name -> the module defining it, imported on first use: reading an index (numpy,
#: roaring) must not load the builder's PyArrow and Parquet readers
LAZY = {
    "build_index": "build", "refresh_index": "build", "contact_rows": "events",
    "FieldColumn": "read", "IndexData": "read", "load_index": "read",
}


def __getattr__(name: str) -> Any:
    module = LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

__all__ = [
    "FORMAT",
    "META",
    "BitmapKeys",
    "FieldColumn",
    "IndexData",
    "IndexUnavailable",
    "build_index",
    "contact_rows",
    "covers_of",
    "day_number",
    "load_index",
    "refresh_index",
]
