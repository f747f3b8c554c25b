"""`--engine auto`: the fastest exact path for each request."""

from __future__ import annotations

from .duckdb import DuckDBEngine


class AutoEngine(DuckDBEngine):
    """Answers with DuckDB over the workspace's Parquet files."""

    name = "auto"
