"""Bucket numbers per seed, kept in the process next to a loaded index.

A bucket rule (``{bucket: {seed, from, to}}``) asks for every contact's SHA-256 based
bucket number under one seed. Computing them reads every email and hashes it (about
half a second per million contacts); an A/B split then counts the same seed again and
again. So the first use of a seed computes one ``uint16`` number per contact row and
keeps it, and each bucket range asked for is kept as a bitmap of rows: later counts
are bitmap operations. The cache belongs to one loaded index, that is to one
snapshot, so a commit (new contacts) starts a fresh one; nothing is written to disk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from pyroaring import BitMap

from ...lazy import numpy_on_first_use
from .bitmaps import to_bitmap

if TYPE_CHECKING:
    import numpy as np
else:
    np = numpy_on_first_use(globals())

#: The number of a row without a bucket (no email): no range [from, to) holds it.
NO_BUCKET = 0xFFFF  # uint16's largest value
#: Seeds kept per index (2 bytes per contact each: 20 MB at 10M contacts).
MAX_SEEDS = 16
#: Bucket ranges kept as bitmaps per index (a split of k groups uses k of them).
MAX_RANGES = 256


class BucketCache:
    """Per seed, every row's bucket number; per (seed, from, to), its rows as a bitmap.

    `compute` callbacks return the numbers of all `n` rows in row order (``uint16``,
    `NO_BUCKET` where a row has none); how they are computed is the engine's business.
    Safe to share between threads (the server answers requests from a pool): a seed is
    computed once even when two requests ask for it together.
    """

    def __init__(self, n: int, *, max_seeds: int = MAX_SEEDS, max_ranges: int = MAX_RANGES):
        self.n = n
        self.max_seeds = max_seeds
        self.max_ranges = max_ranges
        self._numbers: OrderedDict[str, np.ndarray] = OrderedDict()
        self._ranges: OrderedDict[tuple[str, int, int], BitMap] = OrderedDict()
        self._lock = threading.Lock()

    def numbers(self, seed: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Every row's bucket number for `seed` (read-only), computed on first use."""
        with self._lock:
            found = self._numbers.get(seed)
            if found is not None:
                self._numbers.move_to_end(seed)
                return found
            numbers = np.ascontiguousarray(compute(), dtype=np.uint16)
            if numbers.shape != (self.n,):
                raise ValueError(
                    f"bucket numbers for {self.n} contacts expected, got {numbers.shape}"
                )
            numbers.flags.writeable = False
            self._numbers[seed] = numbers
            while len(self._numbers) > self.max_seeds:
                self._numbers.popitem(last=False)
            return numbers

    def rows(self, seed: str, low: int, high: int, compute: Callable[[], np.ndarray]) -> BitMap:
        """The rows whose bucket number for `seed` is in ``[low, high)``, as a bitmap.

        The bitmap is shared: callers never change it (set operations make new ones).
        """
        key = (seed, low, high)
        with self._lock:
            found = self._ranges.get(key)
            if found is not None:
                self._ranges.move_to_end(key)
                return found
        numbers = self.numbers(seed, compute)
        rows = to_bitmap(np.flatnonzero((numbers >= low) & (numbers < high)))
        with self._lock:
            self._ranges[key] = rows
            while len(self._ranges) > self.max_ranges:
                self._ranges.popitem(last=False)
        return rows

    def seeds(self) -> list[str]:
        """The seeds whose numbers are kept, least recently used first."""
        with self._lock:
            return list(self._numbers)
