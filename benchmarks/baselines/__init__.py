"""Hand-written baselines: what a data engineer would write instead of using segengine.

Each baseline reads the *raw* generated Parquet files (contacts keyed by email, events
carrying the email, as `segengine.synth` writes them), not the workspace, and
implements every segment of the suite by hand with the SPEC's semantics:
case-insensitive text, null and ``""`` as empty (true for negative operators), UTC
days, "the last N campaigns" by earliest ``sent`` with the campaign-id tie-break, and
count thresholds that zero events satisfy. A union counts each contact once.

Two facts about the raw files let the baselines stay as simple as a person would
write them: the generator writes clean, unique, lower-case emails (Parquet), and no
event twice (`benchmarks.data` checks both when it generates a data set).
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..suite import SUITE


@dataclass(frozen=True)
class RawData:
    """The generated files a baseline reads; `work`: a directory where a baseline may
    keep what it loads once (tables of its own) across the processes of a run."""

    contacts: Path
    events: Path
    work: Path | None = None


class Baseline(Protocol):
    """Counts the union of named suite segments over the raw files."""

    def count(self, parts: tuple[str, ...], as_of: dt.date) -> int: ...

    def close(self) -> None: ...


#: baseline name -> "module:Class", imported only when used (pandas is optional)
BASELINES: dict[str, str] = {
    "duckdb-sql": "benchmarks.baselines.duckdb_sql:DuckDBBaseline",
    "polars-lazy": "benchmarks.baselines.polars_lazy:PolarsBaseline",
    "pandas": "benchmarks.baselines.pandas_frames:PandasBaseline",
    "chdb-parquet": "benchmarks.baselines.chdb_sql:ChdbParquetBaseline",
    "chdb-bitmap": "benchmarks.baselines.chdb_bitmap:ChdbBitmapBaseline",
    "datafusion-sql": "benchmarks.baselines.datafusion_sql:DataFusionBaseline",
}

#: baselines on packages of the `bench` extra, not the default ones: baseline -> package
OPTIONAL: dict[str, str] = {"chdb-parquet": "chdb", "chdb-bitmap": "chdb",
                             "datafusion-sql": "datafusion"}


def installed(name: str) -> bool:
    """Whether the package a baseline runs on is installed."""
    package = OPTIONAL.get(name)
    return package is None or importlib.util.find_spec(package) is not None


def open_baseline(name: str, data: RawData) -> Baseline:
    module, _, cls = BASELINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(data)


#: the single segments of the suite; a baseline implements each by a function named after it
SEGMENT_NAMES = tuple(dict.fromkeys(part for entry in SUITE for part in entry.parts))


def queries(namespace: dict[str, Any]) -> dict[str, Any]:
    """Segment name -> the function of a baseline module that implements it
    (``never-opened`` -> ``never_opened``); a missing one is an error at import."""
    return {name: namespace[name.replace("-", "_")] for name in SEGMENT_NAMES}


def days_before(as_of: dt.date, n: int) -> dt.date:
    """The first day of `in_last_days n` (SPEC: between as_of - n days and as_of)."""
    return as_of - dt.timedelta(days=n)
