"""Per-contact event aggregates of the engagement index, stored as a base and a delta.

For each (event type, contact row) the index keeps the number of events, the first and
the last day, and the days of the RECENT latest events. At 10M contacts these arrays
are 1.2 GB, and an import of a million events changes a tenth of their rows at most.
So they are stored in two parts:

- the **base**: full arrays over the rows the index had when the base was written
  (``aggregates/{count,first,last,recent}.npy``), hard-linked by later indexes;
- the **delta**: per type, the rows changed since and their current values, sorted by
  row (``aggregates/delta.{rows,count,first,last,recent}.npy``, one run per type).

An update rewrites the delta (its old rows and the rows its events touch), not the
base; once the delta would hold more entries than there are contacts (about a quarter
of the base's bytes) the update folds it into a new base instead. A reader applies a
type's delta to its base column on first use: one copy of the column and a scatter.
Rows past the base (contacts added since) read as "no events" unless the delta has them.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..fields import EVENT_TYPES
from ..lazy import numpy_on_first_use
from .arrays import link_or_copy, load, load_unchecked, save
from .checksums import check_range

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy_on_first_use(globals())

#: Per (type, row), the days of its RECENT latest events are kept: "at least k times in
#: the last N days" (k <= RECENT) is then k comparisons per contact, not a pass over the
#: window's events (shape (types, RECENT, rows), latest first).
RECENT = 3
#: int32's largest and smallest values (numpy dtypes by name: a count that reads no
#: aggregate does not import numpy)
NO_FIRST = 2**31 - 1
NO_LAST = -(2**31)
NAMES = ("count", "first", "last", "recent")
DTYPES = {"count": "uint32", "first": "int32", "last": "int32", "recent": "int32"}
#: the value of a row without events
FILL = {"count": 0, "first": NO_FIRST, "last": NO_LAST, "recent": NO_LAST}
#: The delta is folded into a new base when it would hold more entries (type, row) than
#: this many per contact: 28 bytes an entry against 120 bytes a contact in the base.
DELTA_MAX_PER_CONTACT = 1.0
DIRECTORY = "aggregates"


def _shape(name: str, rows: int) -> tuple[int, ...]:
    """One type's array of `name` over `rows` rows (`recent` has RECENT days per row)."""
    return (RECENT, rows) if name == "recent" else (rows,)


def no_events(name: str, rows: int) -> np.ndarray:
    return np.full(_shape(name, rows), FILL[name], DTYPES[name])


@dataclass
class Values:
    """The aggregates of some rows of one event type, in the order of those rows."""

    count: np.ndarray
    first: np.ndarray
    last: np.ndarray
    recent: np.ndarray  # (RECENT, rows)

    @classmethod
    def empty(cls, rows: int) -> Values:
        return cls(*(no_events(name, rows) for name in NAMES))

    def get(self, name: str) -> np.ndarray:
        return getattr(self, name)


@dataclass
class Delta:
    """One type's changed rows (sorted, unique) and their values."""

    rows: np.ndarray
    values: Values

    @classmethod
    def empty(cls) -> Delta:
        return cls(np.zeros(0, np.uint32), Values.empty(0))

    def find(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of the sorted `rows` the delta has, their positions in it)."""
        if len(self.rows) == 0:
            return np.zeros(len(rows), bool), np.zeros(0, np.int64)
        pos = np.searchsorted(self.rows, rows)
        clipped = np.minimum(pos, len(self.rows) - 1)
        hit = self.rows[clipped] == rows
        return hit, clipped[hit]

    def merged(self, rows: np.ndarray, values: Values) -> Delta:
        """This delta with `values` for the sorted unique `rows` (they win over older ones)."""
        if len(self.rows) == 0:
            return Delta(rows.astype(np.uint32), values)
        union = np.union1d(self.rows, rows).astype(np.uint32)
        old_at = np.searchsorted(union, self.rows)
        new_at = np.searchsorted(union, rows)
        merged = {}
        for name in NAMES:
            out = np.empty(_shape(name, len(union)), DTYPES[name])
            out[..., old_at] = self.values.get(name)
            out[..., new_at] = values.get(name)
            merged[name] = out
        return Delta(union, Values(**merged))


class BaseFiles(dict):
    """The base arrays of an index directory by name, each memory-mapped when first
    read, and each event type's column checked against the file's block hashes when
    first read (`type_column`): "opened 3 times in 90 days" hashes the opens' column
    of the ``recent`` file, not the file, nor the files it does not read."""

    def __init__(self, part: Path):
        super().__init__()
        self.part = part
        self._offsets: dict[str, int] = {}
        self._checked: set[tuple[str, int]] = set()
        self._maps: list[mmap.mmap] = []

    def release(self) -> None:
        """Let the pages read from the files go from this process's memory (a later read
        maps them again from the page cache). A writer that read a whole previous index
        (1.2 GB of aggregates at 10M contacts) would otherwise keep it resident."""
        for mapped in self._maps:
            if not mapped.closed:
                mapped.madvise(mmap.MADV_DONTNEED)

    def __missing__(self, name: str) -> np.ndarray:
        if name not in NAMES:
            raise KeyError(name)
        mapped = load_unchecked(self.part / f"{name}.npy")
        self._offsets[name] = mapped.offset
        self._maps.append(mapped._mmap)
        # a plain view of the memory map: np.memmap's indexing is slower per call
        array = self[name] = mapped.view(np.ndarray)
        return array

    def type_column(self, name: str, t: int) -> np.ndarray:
        """``self[name][t]``, its bytes checked before they are read."""
        array = self[name]
        if (name, t) not in self._checked:
            start = self._offsets[name] + t * array.strides[0]
            check_range(self.part / f"{name}.npy", start, start + array[t].nbytes)
            self._checked.add((name, t))
        return array[t]


class Aggregates:
    """The aggregates of `n` rows: a base over its first rows, plus per-type deltas.

    A writer that starts from an index (`extend`) keeps the base read-only and collects
    changes in the deltas, or (`dense`) copies everything into writable full arrays when
    the change is too big for a delta; a full build starts `dense` with no events.
    """

    def __init__(
        self, n: int, base: Mapping[str, np.ndarray], deltas: list[Delta] | None,
        read_deltas: Callable[[], list[Delta]] | None = None,
    ):
        self.n = n
        self.base = base if isinstance(base, BaseFiles) else dict(base)
        self.deltas = deltas
        # a reader's deltas are read (and their files checked) when first used: a count
        # answered by bitmaps reads no aggregate
        self._read_deltas = read_deltas
        #: whether `store` changed the deltas (a writer that did not links them)
        self.changed = False
        self._columns: dict[tuple[str, int], np.ndarray] = {}

    @property
    def deltas(self) -> list[Delta] | None:
        """None: the base is the whole truth (full arrays over all `n` rows, writable in
        a writer); otherwise one delta per event type."""
        read = self._read_deltas  # once: another thread may read them at the same time
        if read is not None:
            self._deltas, self._read_deltas = read(), None
        return self._deltas

    @deltas.setter
    def deltas(self, deltas: list[Delta] | None) -> None:
        self._deltas, self._read_deltas = deltas, None

    # --- building ----------------------------------------------------------------

    @classmethod
    def dense(cls, n: int, previous: Aggregates | None = None) -> Aggregates:
        """Writable full arrays: no events, or `previous` applied and padded to `n` rows."""
        base = {}
        for name in NAMES:
            shape = (len(EVENT_TYPES), *_shape(name, n))
            if previous is None:
                base[name] = np.full(shape, FILL[name], DTYPES[name])
                continue
            base[name] = np.empty(shape, DTYPES[name])
            for t in range(len(EVENT_TYPES)):
                base[name][t] = previous.column(name, t, n)
                previous.release()
        return cls(n, base, None)

    @classmethod
    def extend(cls, previous: Aggregates, n: int, new_events: int) -> Aggregates:
        """A writer's aggregates continuing `previous` for `new_events` more events."""
        held = previous.delta_entries()
        if held + new_events > DELTA_MAX_PER_CONTACT * n:
            return cls.dense(n, previous)
        deltas = previous.deltas or [Delta.empty() for _ in EVENT_TYPES]
        return cls(n, previous.base, list(deltas))

    @property
    def base_rows(self) -> int:
        """The rows the base covers (every base array has them as its last axis)."""
        opened = next(iter(self.base.values()), None)
        return int((self.base["count"] if opened is None else opened).shape[-1])

    def base_column(self, name: str, t: int) -> np.ndarray:
        """The base array of `name` for type `t` (checked first when read from files)."""
        if isinstance(self.base, BaseFiles):
            return self.base.type_column(name, t)
        return self.base[name][t]

    def release(self) -> None:
        """Let go of the columns copied and the pages of memory-mapped files read so far
        (`BaseFiles.release`): a later read makes them again."""
        self._columns.clear()
        if isinstance(self.base, BaseFiles):
            self.base.release()

    def delta_entries(self) -> int:
        return 0 if self.deltas is None else sum(len(d.rows) for d in self.deltas)

    def lookup(self, t: int, rows: np.ndarray, names: tuple[str, ...] = NAMES) -> Values:
        """The current values of type `t` at the sorted unique `rows` (only `names` are
        read; the others are left empty)."""
        base = {name: self.base_column(name, t) for name in names}  # only these are read
        if self.deltas is None and (len(rows) == 0 or rows[-1] < self.base_rows):
            values = Values.empty(0)
            for name in names:
                setattr(values, name, base[name][..., rows])
            return values
        values = Values.empty(0)  # the names not read stay empty, as above
        for name in names:
            setattr(values, name, no_events(name, len(rows)))
        inside = rows < self.base_rows
        below = rows[inside]
        for name in names:
            values.get(name)[..., inside] = base[name][..., below]
        if self.deltas is None:
            return values
        hit, at = self.deltas[t].find(rows)
        for name in names:
            values.get(name)[..., hit] = self.deltas[t].values.get(name)[..., at]
        return values

    def store(self, t: int, rows: np.ndarray, values: Values) -> None:
        """Set the values of type `t` at the sorted unique `rows`."""
        if self.deltas is None:
            for name in NAMES:
                self.base[name][t][..., rows] = values.get(name)
        else:
            self.deltas[t] = self.deltas[t].merged(rows, values)
            self.changed = True

    def write(self, directory: Path, previous_directory: Path | None) -> dict:
        """Write into `directory`; returns the meta.json section.

        A delta writer hard-links the base files of `previous_directory` (they are
        immutable) and writes the delta; a dense writer writes a new base.
        """
        part = directory / DIRECTORY
        if self.deltas is None:
            for name in NAMES:
                save(part / f"{name}.npy", self.base[name])
            return {"delta": None}
        assert previous_directory is not None, "a delta continues a previous index"
        for name in NAMES:
            link_or_copy(previous_directory / DIRECTORY / f"{name}.npy", part / f"{name}.npy")
        inherited = previous_directory / DIRECTORY / "delta.rows.npy"
        if not self.changed and inherited.exists():  # e.g. only contacts changed
            for name in ("rows", *NAMES):
                link_or_copy(inherited.with_name(f"delta.{name}.npy"), part / f"delta.{name}.npy")
        else:
            save(part / "delta.rows.npy", np.concatenate([d.rows for d in self.deltas]))
            for name in NAMES:
                runs = [d.values.get(name) for d in self.deltas]
                save(part / f"delta.{name}.npy", np.concatenate(runs, axis=-1))
        lengths = [len(d.rows) for d in self.deltas]
        return {"delta": [0, *np.cumsum(lengths).tolist()]}

    # --- reading -----------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, n: int, meta: Mapping | None) -> Aggregates:
        """The aggregates of an index directory (`meta`: its ``events.aggregates``)."""
        part = directory / DIRECTORY
        offsets = (meta or {}).get("delta")

        def read_deltas() -> list[Delta]:
            if offsets is None:
                # empty deltas, not None: a reader never writes into its memory-mapped
                # base, and a base over fewer rows than `n` reads as "no events" past its
                # end (deciding between the two would open the count file for its length)
                return [Delta.empty() for _ in EVENT_TYPES]
            rows = load(part / "delta.rows.npy").view(np.ndarray)
            stored = {name: load(part / f"delta.{name}.npy").view(np.ndarray) for name in NAMES}
            return [
                Delta(rows[a:b], Values(*(stored[name][..., a:b] for name in NAMES)))
                for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            ]

        return cls(n, BaseFiles(part), None, read_deltas)

    def column(self, name: str, t: int, n: int | None = None) -> np.ndarray:
        """The full array of `name` for type `t` over `n` rows (default: all rows).

        Without a delta for `t` this is the memory-mapped base itself; otherwise a copy
        with the delta applied, computed once per loaded index.
        """
        n = self.n if n is None else n
        base = self.base_column(name, t)
        delta = None if self.deltas is None else self.deltas[t]
        if (delta is None or len(delta.rows) == 0) and self.base_rows == n:
            return base
        key = (name, t)
        cached = self._columns.get(key)
        if cached is not None and cached.shape[-1] == n:
            return cached
        out = no_events(name, n)
        out[..., : self.base_rows] = base
        if delta is not None and len(delta.rows):
            out[..., delta.rows] = delta.values.get(name)
        if n == self.n:
            self._columns[key] = out
        return out

    def view(self, name: str) -> AggregateView:
        return AggregateView(self, name)


@dataclass(frozen=True)
class AggregateView:
    """``view[t]``: the full array of one aggregate for event type `t` (as numpy reads it,
    ``np.asarray(view)``: all types stacked, for tests and tools)."""

    aggregates: Aggregates
    name: str

    def __getitem__(self, t: int) -> np.ndarray:
        return self.aggregates.column(self.name, t)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        stacked = np.stack([self[t] for t in range(len(EVENT_TYPES))])
        return stacked if dtype is None else stacked.astype(dtype)
