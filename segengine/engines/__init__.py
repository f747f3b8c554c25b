"""Engines: each turns resolved rule trees into work for one evaluator.

All of them must give exactly the same answers (the differential tests check it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store.workspace import Snapshot
    from .base import Engine

#: engine name -> "module:Class"; modules are imported only when used
ENGINES: dict[str, str] = {
    "auto": "segengine.engines.auto:AutoEngine",
    "duckdb": "segengine.engines.duckdb:DuckDBEngine",
    "index": "segengine.engines.index:IndexEngine",
    "polars": "segengine.engines.polars:PolarsEngine",
    "spark": "segengine.engines.spark:SparkEngine",
}


def engine_class(name: str) -> type[Engine]:
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_engine(name: str, snapshot: Snapshot) -> Engine:
    """An engine over a snapshot's tables."""
    cls = engine_class(name)
    factory = getattr(cls, "for_snapshot", None)
    return factory(snapshot) if factory else cls(snapshot.tables)
