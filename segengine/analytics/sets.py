"""Sets of contacts for analytics: intersections and differences counted cheaply.

Overlap and trend compare several answers of one engine with each other. When the
engine answers from the engagement index, an answer is a set of index rows, a roaring
bitmap or a boolean mask, and the comparisons stay there: pairwise intersections of
bitmaps cost microseconds, masks are packed to bits (one byte per eight contacts) so
that an AND and a popcount read an eighth of the data. Any other engine answers with
contact ids, which become a bitmap over the ids.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pyroaring import BitMap

from ..definition.lower import AllOf, DayRange, Lowered
from ..engines.auto import AutoEngine
from ..engines.base import Engine
from ..engines.index import IndexEngine
from ..fields import STATUSES
from ..store.index.bitmaps import bitmap_rows, to_bitmap
from ..store.index.layout import BitmapKeys
from ..store.workspace import Snapshot
from .sliding import (
    PointEvaluator,
    TrendMemory,
    added_by,
    added_flags,
    flags_of,
    moved_point,
    moving,
    remember_point,
)


@dataclass(frozen=True)
class Members:
    """A set of contacts, as a bitmap or as packed bits over `n` positions."""

    n: int
    bitmap: BitMap | None = None
    bits: np.ndarray | None = None

    @classmethod
    def of(cls, rows: BitMap | np.ndarray, n: int) -> Members:
        if isinstance(rows, BitMap):
            return cls(n, bitmap=rows)
        return cls(n, bits=np.packbits(rows))

    @functools.cached_property
    def _packed_bitmap(self) -> np.ndarray:
        assert self.bitmap is not None
        mask = np.zeros(self.n, dtype=bool)
        mask[bitmap_rows(self.bitmap)] = True
        return np.packbits(mask)

    def packed(self) -> np.ndarray:
        """The set as packed bits (a bitmap's are computed once, then kept)."""
        return self.bits if self.bits is not None else self._packed_bitmap

    def __len__(self) -> int:
        if self.bitmap is not None:
            return len(self.bitmap)
        return int(np.bitwise_count(self.packed()).sum(dtype=np.int64))

    def _pair(self, other: Members) -> tuple[BitMap, BitMap] | tuple[np.ndarray, np.ndarray]:
        if self.bitmap is not None and other.bitmap is not None:
            return self.bitmap, other.bitmap
        return self.packed(), other.packed()

    def __and__(self, other: Members) -> Members:
        a, b = self._pair(other)
        if isinstance(a, BitMap):
            return Members(self.n, bitmap=a & b)
        return Members(self.n, bits=a & b)

    def __or__(self, other: Members) -> Members:
        a, b = self._pair(other)
        if isinstance(a, BitMap):
            return Members(self.n, bitmap=a | b)
        return Members(self.n, bits=a | b)

    def common(self, other: Members) -> int:
        """How many contacts are in both (nothing materialised for two bitmaps)."""
        a, b = self._pair(other)
        if isinstance(a, BitMap):
            return a.intersection_cardinality(b)
        return int(np.bitwise_count(a & b).sum(dtype=np.int64))

    def without(self, other: Members) -> int:
        """How many contacts are in this set and not in `other`."""
        a, b = self._pair(other)
        if isinstance(a, BitMap):
            return a.difference_cardinality(b)
        return int(np.bitwise_count(a & ~b).sum(dtype=np.int64))


class Evaluation:
    """One engine over one snapshot, answering lowered trees with `Members`.

    The index engines answer with index rows; the others with contact ids, which are
    positions here too (the active contacts are read the same way, from the snapshot).
    """

    def __init__(self, engine: Engine, snapshot: Snapshot, connection_of):
        self.engine = engine
        self.snapshot = snapshot
        self.index = getattr(engine, "index", None) if isinstance(engine, (AutoEngine, IndexEngine)) else None
        self._connection_of = connection_of
        self._active: Members | None = None
        #: what the points of a trend share (sliding.py)
        self.memory = TrendMemory()
        self._n: int | None = None
        #: a trend's last point: its members (as a set, or as flags in
        #: `memory.members`) and (total, sendable)
        self.previous: Members | None = None
        self.last: tuple[int, int] | None = None
        self._active_flags: np.ndarray | None = None

    @property
    def n(self) -> int:
        if self.index is not None:
            return self.index.n
        if self._n is None:
            self._n = int(self.snapshot.manifest.get("next_contact_id") or 1)
            con = self._connection_of(self.snapshot)
            (top,), = con.execute("SELECT max(contact_id) FROM contacts").fetchall()
            self._n = max(self._n, int(top or 0) + 1)
        return self._n

    def members(self, roots: Sequence[Lowered], as_of: dt.date) -> Members:
        """The contacts matching any of the lowered `roots` at `as_of`."""
        if self.index is not None:
            return Members.of(self.engine.rows(roots, as_of), self.n)  # type: ignore[attr-defined]
        return self.from_ids(self.engine.evaluate_ids(roots, as_of))

    def point(self, roots: Sequence[Lowered], day: dt.date) -> dict[str, int | None]:
        """A trend's point: the size of the union of `roots` (lowered with ``as_it_was``
        at `day`), its sendable part, and how many joined and left since the last point.

        On the index, with activity rules, a point is moved from the last one where it
        can be (`moved_point`: only the rows added since, or with events on the days in
        between, are tested again), and the members are kept as one flag per row;
        otherwise each point is a set evaluated in full.
        """
        trees = self.moving_trees(roots)
        if trees is None:
            return self.point_in_full(roots, day)
        base = self.engine.evaluator(day)  # type: ignore[attr-defined]
        evaluator = PointEvaluator(base.index, base.tables, day, base.fallback, memory=self.memory)
        active = self.active_flags()
        before = self.memory.members
        if before is not None and self.last is not None:
            changed = moved_point(evaluator, self.index, trees, day)
            if changed is not None:
                now = before[changed]
                joined = int(np.count_nonzero(now))
                left = len(changed) - joined
                total, sendable = self.last
                kept = active[changed]
                sendable += int(np.count_nonzero(kept & now)) - int(np.count_nonzero(kept & ~now))
                self.last = (total + joined - left, sendable)
                return {"total": self.last[0], "sendable": sendable, "joined": joined, "left": left}
        if before is None and self.previous is not None:
            before = np.unpackbits(self.previous.packed(), count=self.n).view(bool)
        flags = flags_of(evaluator.union(trees), self.n)
        flags &= added_flags(self.index, self.memory, day).flags
        total = int(np.count_nonzero(flags))
        sendable = int(np.count_nonzero(flags & active))
        self.previous, self.last = None, (total, sendable)
        remember_point(evaluator, flags, trees)
        return {
            "total": total, "sendable": sendable,
            "joined": None if before is None else int(np.count_nonzero(flags & ~before)),
            "left": None if before is None else int(np.count_nonzero(before & ~flags)),
        }

    def point_in_full(self, roots: Sequence[Lowered], day: dt.date) -> dict[str, int | None]:
        """A trend's point from its set of members, compared with the last point's."""
        current = self.as_it_stood(roots, day)
        before = self.previous
        if before is None and self.memory.members is not None:
            before = Members(self.n, bits=np.packbits(self.memory.members))
            self.memory.members = None
        total, sendable = len(current), current.common(self.active())
        self.previous, self.last = current, (total, sendable)
        return {
            "total": total, "sendable": sendable,
            "joined": None if before is None else current.without(before),
            "left": None if before is None else before.without(current),
        }

    def moving_trees(self, roots: Sequence[Lowered]) -> list[Lowered] | None:
        """The trees of `roots` under their ``date_added`` cut when a point of them can
        be moved from the last (index only, with activity rules)."""
        if self.index is None or not self.cut(roots) or "date_added" not in self.index.fields:
            return None
        trees = [r.rules[1] for r in roots]  # type: ignore[attr-defined]
        return trees if moving(trees) is not None else None

    def active_flags(self) -> np.ndarray:
        """One flag per row: whether its status is active."""
        if self._active_flags is None:
            if self.index is not None:
                # one pass over the status codes, cheaper than scattering the bitmap's rows
                self._active_flags = np.asarray(self.index.status) == STATUSES.index("active")
            else:
                self._active_flags = np.unpackbits(self.active().packed(), count=self.n).view(bool)
        return self._active_flags

    @staticmethod
    def cut(roots: Sequence[Lowered]) -> bool:
        return all(isinstance(r, AllOf) and len(r.rules) == 2 and isinstance(r.rules[0], DayRange)
                   and r.rules[0].field == "date_added" and r.rules[0].low is None for r in roots)

    def as_it_stood(self, roots: Sequence[Lowered], day: dt.date) -> Members:
        """The contacts matching any of `roots`, lowered with ``as_it_was`` at `day`.

        On the index, the points of one trend share their work (`sliding`): the
        ``date_added`` conjunct every root starts with is answered once for all of them,
        from the last point's answer, and the rest by a `PointEvaluator`. Points must
        come in increasing order for the sharing to pay; any order is answered right.
        """
        if self.index is None or not self.cut(roots) or "date_added" not in self.index.fields:
            return self.members(roots, day)
        base = self.engine.evaluator(day)  # type: ignore[attr-defined]
        evaluator = PointEvaluator(base.index, base.tables, day, base.fallback, memory=self.memory)
        rows = evaluator.union([r.rules[1] for r in roots])  # type: ignore[union-attr]
        if isinstance(rows, BitMap):
            return Members(self.n, bitmap=rows & added_by(self.index, self.memory, day, packed=False))
        packed = np.packbits(rows)
        return Members(self.n, bits=packed & added_by(self.index, self.memory, day, packed=True))

    def from_ids(self, ids: np.ndarray) -> Members:
        return Members(self.n, bitmap=to_bitmap(np.asarray(ids)))

    def active(self) -> Members:
        """The contacts whose current status is active (sendable)."""
        if self._active is None:
            if self.index is not None:
                bitmap = self.index.contact_bitmaps.get(BitmapKeys.status("active"))
                self._active = Members(self.n, bitmap=BitMap(bitmap))
            else:
                con = self._connection_of(self.snapshot)
                ids = con.execute(
                    "SELECT contact_id FROM contacts WHERE status = 'active' ORDER BY contact_id"
                ).fetchnumpy()["contact_id"]
                self._active = self.from_ids(np.asarray(ids))
        return self._active


def evaluation(session, engine_name: str, snapshot: Snapshot) -> Evaluation:
    """The `Evaluation` of `engine_name` (the session's cached engine) over `snapshot`."""
    return Evaluation(session.engine(engine_name, snapshot), snapshot, session.connection)
