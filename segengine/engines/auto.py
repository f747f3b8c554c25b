"""`--engine auto` (the default): the fastest exact path for each request.

The planner answers from the engagement index whenever the snapshot has one that
covers exactly its files (the index is never stale: see segengine.store.index). Inside
a tree, any rule the index does not support (`Evaluator.supports`: a field it holds no
column for) is sent to DuckDB on its own and its answer joins the rest as a row mask, so one unsupported leaf does not cost the whole tree its
index path. Without a current index every request goes to DuckDB.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..definition.lower import Lowered
from ..errors import EngineError
from ..lazy import numpy_on_first_use
from ..store.index.read import IndexData, load_index
from ..store.manifest import Tables
from .base import Engine
from .index import Evaluator, contact_ids_of, count_by_status, take_over

if TYPE_CHECKING:
    import numpy as np

    from .duckdb import DuckDBEngine
else:
    np = numpy_on_first_use(globals())


class AutoEngine(Engine):
    """Index first, DuckDB for what the index cannot answer."""

    name = "auto"

    def __init__(self, tables: Tables, index: IndexData | None = None):
        super().__init__(tables)
        self.index = index
        self._duckdb: DuckDBEngine | None = None
        self._connecting = threading.Lock()
        #: why the index is not used (None when it is), for `explain`
        self.reason: str | None = None if index is not None else "no engagement index given"

    @classmethod
    def for_snapshot(cls, snapshot: Any) -> AutoEngine:
        try:
            index = load_index(snapshot)
        except EngineError as exc:
            engine = cls(snapshot.tables)
            engine.reason = str(exc)
            return engine
        return cls(snapshot.tables, index)

    @property
    def duckdb(self) -> DuckDBEngine:
        """The DuckDB engine, connected on first use only."""
        with self._connecting:  # one connection even when two threads need it first
            if self._duckdb is None:
                # imported here: a count the index answers never loads DuckDB
                from .duckdb import DuckDBEngine

                self._duckdb = DuckDBEngine(self.tables)
        return self._duckdb

    def _fallback(self, as_of: dt.date):
        def rows_of(node: Any) -> np.ndarray:
            from ..store.index.events import contact_rows

            assert self.index is not None
            ids = self.duckdb.evaluate_ids([node], as_of)
            rows, known = contact_rows(
                ids, self.index.ids, bool(self.index.meta["contacts"]["dense"])
            )
            mask = np.zeros(self.index.n, dtype=bool)
            mask[rows[known]] = True
            return mask

        return rows_of

    def evaluate_ids(self, roots: Sequence[Lowered], as_of: dt.date) -> np.ndarray:
        if self.index is None:
            return self.duckdb.evaluate_ids(roots, as_of)
        rows = Evaluator(self.index, self.tables, as_of, self._fallback(as_of)).union(roots)
        return contact_ids_of(self.index, rows)

    def evaluator(self, as_of: dt.date) -> Evaluator:
        """The index evaluator at `as_of`, DuckDB answering what it cannot; needs the index."""
        assert self.index is not None
        return Evaluator(self.index, self.tables, as_of, self._fallback(as_of))

    def rows(self, roots: Sequence[Lowered], as_of: dt.date):
        """The index rows matching any of `roots` (a bitmap or a mask); needs the index."""
        return self.evaluator(as_of).union(roots)

    def evaluate_count(self, roots: Sequence[Lowered], as_of: dt.date) -> dict[str, int]:
        if self.index is None:
            return self.duckdb.evaluate_count(roots, as_of)
        rows = Evaluator(self.index, self.tables, as_of, self._fallback(as_of)).union(roots)
        return count_by_status(self.index, rows)

    def take_over(self, previous: Engine) -> None:
        earlier = getattr(previous, "index", None)
        if self.index is not None and earlier is not None:
            take_over(self.index, earlier)

    def close(self) -> None:
        if self._duckdb is not None:
            self._duckdb.close()
            self._duckdb = None
