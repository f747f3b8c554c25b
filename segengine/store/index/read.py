"""Reading an index: memory-mapped arrays, lazily deserialized bitmaps, format checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ...fields import EVENT_TYPES, STATUSES, FieldType
from ...lazy import numpy_on_first_use
from ..aggregates import Aggregates
from ..arrays import load, load_strings
from ..checksums import check
from ..manifest import Manifest, covers_of

if TYPE_CHECKING:
    import pyarrow as pa


from .bitmaps import (
    BitmapStore,
)
from .buckets import BucketCache
from .layout import (
    BLOCK_FILES,
    CONTACTS_VERSION,
    LOOKUP_FIELD,
    META,
    NOT_FILES,
    READABLE_FORMATS,
    STORE_COLUMNS,
    BitmapKeys,
    IndexUnavailable,
)
from .lookup import candidate_rows, find_all

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy_on_first_use(globals())


class Committed(Protocol):
    """A committed state, as the index reads it (a `segengine.store.workspace.Snapshot`).

    Declared here so that the index, which the workspace's commit builds, never names
    the workspace's types: the store's modules import one way.
    """

    root: Path
    manifest: Manifest


# --- reading -------------------------------------------------------------------------


@dataclass
class FieldColumn:
    """One indexed field, memory-mapped; `value_bitmaps`: a text field has per-value bitmaps."""

    name: str
    type: FieldType
    arrays: dict[str, np.ndarray]
    #: a text field's lower-cased dictionary, read on first use (the email dictionary
    #: holds every contact: an import that only extends the events never needs it)
    lower_path: Path | None = None
    value_bitmaps: bool = False
    #: a date field's days that have a bitmap (None: the field has none)
    bitmap_days: np.ndarray | None = None
    #: the lower-cased dictionary as JSON (a small one; None: only `lower` has it)
    words_path: Path | None = None
    _lower: pa.Array | None = field(default=None, repr=False)
    _words: list[str] | None = field(default=None, repr=False)

    @property
    def words(self) -> list[str] | None:
        """The lower-cased dictionary as Python text, when the index stores it so."""
        if self._words is None and self.words_path is not None:
            check(self.words_path)
            self._words = json.loads(self.words_path.read_text())
        return self._words

    @property
    def lower(self) -> pa.Array | None:
        if self._lower is None and self.lower_path is not None:
            self._lower = load_strings(self.lower_path)
        return self._lower

    def rows_with(self, text: str) -> list[int]:
        """The rows whose lower-cased value is `text` (a text field): by the hash lookup
        where the index keeps one (the email field), else by a scan of the dictionary."""
        lowered = self.lower
        if lowered is None:
            return []
        codes = self.arrays["codes"]
        if "hash" in self.arrays:
            found = candidate_rows(self.arrays["hash"], self.arrays["hash_rows"], text)
            return sorted(row for row in found.tolist() if lowered[int(codes[row])].as_py() == text)
        import pyarrow as pa
        import pyarrow.compute as pc

        code = pc.index(lowered, pa.scalar(text, pa.string())).as_py()
        return [] if code < 0 else np.flatnonzero(np.asarray(codes) == code).tolist()


class TypeColumns(dict):
    """One block's columns by event type, each type's files memory-mapped (and checked)
    when first read: a rule on opens never hashes the sends, the biggest files."""

    def __init__(self, directory: Path, spec: dict):
        super().__init__()
        self.directory, self.spec = directory, spec

    def __missing__(self, etype: str) -> dict[str, np.ndarray]:
        if etype not in EVENT_TYPES:
            raise KeyError(etype)
        n = int(self.spec["lengths"][etype])
        cols = {}
        for key, dtype in STORE_COLUMNS.items():
            name = self.spec["files"].get(f"{etype}.{key}")
            if name is None:
                continue
            path = self.directory / name
            check(path)
            cols[key] = np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else (
                np.zeros(0, dtype)
            )
        self[etype] = cols
        return cols


@dataclass
class EventBlock:
    """The events of one import, per type, memory-mapped."""

    columns: dict[str, dict[str, np.ndarray]]



def upgraded(meta: dict, directory: Path) -> dict:
    """`meta` of a readable format in the current format's shape, or IndexUnavailable.

    The one place that knows what older formats lack: format 3 (and format-4 indexes
    written before these keys existed) has no aggregate delta, no per-campaign day
    ranges, no (type, k, day) bitmaps and no contact-part version. The defaults say so,
    and the build rebuilds what they mark as missing; files are never rewritten.
    """
    if meta.get("format") not in READABLE_FORMATS:
        raise IndexUnavailable(f"index {directory} has format {meta.get('format')}")
    meta["contacts"].setdefault("version", 1)
    events = meta["events"]
    events.setdefault("aggregates", None)
    events.setdefault("campaign_days", None)
    events.setdefault("recent_bitmaps", False)
    return meta


class Fields(Mapping[str, FieldColumn]):
    """The indexed fields by name, each memory-mapped when a rule first reads it: a
    one-shot count opens the files of the fields it tests, not those of every field."""

    def __init__(self, part: Path, specs: dict, open_field: Callable[[Path, str, dict], FieldColumn]):
        self._part, self._specs, self._open = part, specs, open_field
        self._opened: dict[str, FieldColumn] = {}

    def __getitem__(self, name: str) -> FieldColumn:
        column = self._opened.get(name)
        if column is None:
            column = self._opened[name] = self._open(self._part, name, self._specs[name])
        return column

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


class IndexData:
    """A loaded index: memory-mapped arrays and lazily deserialized bitmaps."""

    def __init__(self, directory: Path, meta: dict):
        self.directory = Path(directory)
        self.meta = meta
        contacts = meta["contacts"]
        self.n = int(contacts["n"])
        part = self.directory / "contacts"
        self.contact_bitmaps = BitmapStore.from_json(part, contacts["bitmaps"])
        self.fields = Fields(part, contacts["fields"], self._field)
        events = meta["events"]
        self.aggregates = Aggregates.open(self.directory, self.n, events["aggregates"])
        #: count[t], first[t], last[t] (days), recent[t] (RECENT, rows): full arrays per
        #: event type, the delta applied on first use
        self.count = self.aggregates.view("count")
        self.first = self.aggregates.view("first")
        self.last = self.aggregates.view("last")
        self.recent = self.aggregates.view("recent")
        self.campaigns: list[str] = events["campaigns"]
        self.campaign_codes = {c: i for i, c in enumerate(self.campaigns)}
        self.send_us: list[int | None] = events["send_us"]
        self.bitmaps = BitmapStore.from_json(self.directory, events["bitmaps"])
        self.day_range = events["day_range"]
        self._urls: pa.Array | None = None
        self._blocks: list[EventBlock] | None = None
        self._days: dict[str, np.ndarray] = {}
        self._day_lists: dict[str, list[int]] = {}
        self._status_rows: tuple[str, dict[str, np.ndarray]] | None = None
        #: bucket numbers per seed and bucket ranges' rows, computed on first use
        self.buckets = BucketCache(self.n)
        #: structures an evaluator derives from this (immutable) index on first use and
        #: keeps while it is loaded, e.g. cumulative event counts (engines/index.py)
        self.derived: dict[tuple, object] = {}

    # Opened (and checked) when first read, as every file of the index: a count reads
    # the statuses, not the contact ids, and a count answered by bitmaps neither.
    @cached_property
    def ids(self) -> np.ndarray:
        return np.asarray(load(self.directory / "contacts" / "ids.npy"))

    @cached_property
    def status(self) -> np.ndarray:
        return load(self.directory / "contacts" / "status.npy")

    @cached_property
    def campaign_days(self) -> np.ndarray | None:
        """Per (type, campaign code): [first day, last day] of its events (None: an index
        built before they were kept)."""
        days = self.meta["events"]["campaign_days"]
        if days is None:
            return None
        return np.array(days, np.int64).reshape(len(EVENT_TYPES), len(self.campaigns), 2)
    def take_over(self, previous: IndexData) -> None:
        """Keep what `previous`, the index this process used before a write replaced it,
        has read or computed and that this one holds unchanged: the bitmaps of the layers
        both have, and with the same contact part its statuses and bucket numbers. The
        first count after an import then reads what the import changed, not all again.
        """
        self.bitmaps.take_over(previous.bitmaps)
        self.contact_bitmaps.take_over(previous.contact_bitmaps)
        if self.meta["contacts"] != previous.meta["contacts"]:
            return
        for name in ("ids", "status"):  # cached properties, when they were read
            if name in previous.__dict__:
                self.__dict__.setdefault(name, previous.__dict__[name])
        if self._status_rows is None:
            self._status_rows = previous._status_rows
        self.buckets = previous.buckets

    @classmethod
    def open(cls, directory: Path) -> IndexData:
        check(Path(directory) / META)
        meta = json.loads((Path(directory) / META).read_text())
        return cls(directory, upgraded(meta, directory))

    @staticmethod
    def _field(part: Path, name: str, spec: dict) -> FieldColumn:
        ftype = FieldType(spec["type"])
        arrays = {k: load(part / v) for k, v in spec.items() if k not in NOT_FILES}
        lower = part / spec["lower"] if "lower" in spec else None
        days = spec.get("bitmap_days")
        return FieldColumn(
            name, ftype, arrays, lower, bool(spec.get("value_bitmaps")),
            None if days is None else np.array(days, np.int64),
            part / spec["words"] if "words" in spec else None,
        )

    def contacts_of(self, emails: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
        """Every (position in `emails`, contact row) whose stored address is that one by
        the address rule (`emails`: distinct normalised addresses); None when this
        index cannot tell (built before it listed the addresses the rule would change).
        """
        import pyarrow.compute as pc

        spec = self.meta["contacts"].get("addresses")
        if spec is None or self.meta["contacts"].get("version") != CONTACTS_VERSION:
            return None
        column = self.fields[LOOKUP_FIELD]
        if "hash" not in column.arrays or column.lower is None:
            return None
        part = self.directory / "contacts"
        which, rows = find_all(column.arrays["hash"], column.arrays["hash_rows"],
                               column.arrays["codes"], column.lower, emails)
        odd = np.asarray(load(part / spec["rows"]))
        normal = load_strings(part / spec["normal"])
        if len(odd) == 0:
            return which, rows
        # an odd row is found by the address the rule makes of it, never by its lower case
        keep = ~np.isin(rows, odd)
        normal = pc.index_in(normal, emails)
        hit = pc.is_valid(normal).to_numpy(zero_copy_only=False)
        at = pc.fill_null(normal, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return (np.concatenate([which[keep], at[hit]]),
                np.concatenate([rows[keep], odd[hit]]))

    def urls(self) -> pa.Array:
        if self._urls is None:
            self._urls = load_strings(self.directory / self.meta["events"]["urls"])
        return self._urls

    def url_words(self) -> list[str] | None:
        """The lower-cased click URLs as Python text (None: too many, see `urls`)."""
        return self.meta["events"].get("url_words")

    def blocks(self) -> list[EventBlock]:
        """The event store, memory-mapped on first use."""
        if self._blocks is None:
            self._blocks = [self._block(s) for s in self.meta["events"][BLOCK_FILES]]
        return self._blocks

    def _block(self, spec: dict) -> EventBlock:
        return EventBlock(TypeColumns(self.directory / "events", spec))

    def status_rows(self) -> tuple[str, dict[str, np.ndarray]]:
        """(the most common status, the rows of every other status code).

        Computed once per loaded index. Code 255 (no known status) is a group of its own
        under the key "", so the most common status is the total minus all the others.
        """
        if self._status_rows is None:
            codes = np.asarray(self.status)
            groups = {s: np.flatnonzero(codes == i) for i, s in enumerate(STATUSES)}
            groups[""] = np.flatnonzero(codes == 255)
            largest = max(STATUSES, key=lambda s: len(groups[s]))
            del groups[largest]
            self._status_rows = (largest, groups)
        return self._status_rows

    def bitmap_days(self, etype: str) -> np.ndarray:
        """The sorted days that have a (type, day) bitmap."""
        return self._day_array(BitmapKeys.day_prefix(etype))

    def bitmap_day_list(self, etype: str) -> list[int]:
        """`bitmap_days` as a list, for `bisect`: a window of day bitmaps needs no numpy."""
        return self._named_days(BitmapKeys.day_prefix(etype))

    def recent_days(self, etype: str, k: int) -> np.ndarray | None:
        """The sorted days that have a (type, k-th latest, day) bitmap (None: not built)."""
        if not self.meta["events"]["recent_bitmaps"]:
            return None
        return self._day_array(BitmapKeys.recent_prefix(etype, k))

    def recent_day_list(self, etype: str, k: int) -> list[int] | None:
        """`recent_days` as a list, for `bisect` (no numpy)."""
        if not self.meta["events"]["recent_bitmaps"]:
            return None
        return self._named_days(BitmapKeys.recent_prefix(etype, k))

    def _named_days(self, prefix: str) -> list[int]:
        if prefix not in self._day_lists:
            self._day_lists[prefix] = sorted(
                BitmapKeys.day_of(prefix, name) for name in self.bitmaps.names(prefix)
            )
        return self._day_lists[prefix]

    def _day_array(self, prefix: str) -> np.ndarray:
        if prefix not in self._days:
            self._days[prefix] = np.array(self._named_days(prefix), dtype=np.int64)
        return self._days[prefix]


def load_index(snapshot: Committed) -> IndexData:
    """The snapshot's index, refusing any that does not cover exactly its files."""
    entry = snapshot.manifest.get("index") or {}
    covers = covers_of(snapshot.manifest)
    if not entry.get("path"):
        raise IndexUnavailable(
            "this workspace has no engagement index yet: it is built by the next import"
        )
    if entry.get("covers") != covers:
        raise IndexUnavailable(
            "the engagement index does not cover the workspace's current files "
            "(it is rebuilt by the next import); use --engine auto or duckdb"
        )
    try:
        index = IndexData.open(snapshot.root / entry["path"])
    except (OSError, ValueError, KeyError) as exc:
        raise IndexUnavailable(f"cannot read the engagement index {entry['path']}: {exc}") from None
    if index.meta["covers"] != covers:
        raise IndexUnavailable(
            f"the engagement index {entry['path']} was built for other files than this "
            "snapshot's; use --engine auto or duckdb"
        )
    return index

