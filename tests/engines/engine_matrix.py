"""The engines under test and how each is built over the same Parquet tables."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from segengine.engines.base import Engine, Tables

#: Random trees each engine checked against the reference evaluator (this process).
TREES_RUN: dict[str, int] = {}

#: Every engine; the spark parameter carries the marks test_spark.py's tests carry.
ENGINE_NAMES = ("duckdb", "polars", "index", "auto", "spark")


def why_no_spark() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "PySpark is not installed: pip install -e '.[spark]'"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java 17+ is not installed (apt-get install openjdk-17-jre-headless)"
    return None


def engine_params() -> list:
    spark_marks = [pytest.mark.spark, pytest.mark.xdist_group("spark")]
    return [
        pytest.param(name, marks=spark_marks if name == "spark" else (), id=name)
        for name in ENGINE_NAMES
    ]


def build(
    name: str, tables: Tables, directory: Path, request, indexed: Tables | None = None
) -> Engine:
    """Engine `name` over `tables`; the index engines index `indexed` (default: `tables`)."""
    if name == "duckdb":
        from segengine.engines.duckdb import DuckDBEngine

        return DuckDBEngine(tables)
    if name == "polars":
        from segengine.engines.polars import PolarsEngine

        return PolarsEngine(tables)
    if name in ("index", "auto"):
        from segengine.engines.auto import AutoEngine
        from segengine.engines.index import IndexEngine
        from segengine.store.index import IndexData, build_index

        indexed = indexed or tables
        build_index(indexed.contacts, indexed.events, indexed.schema, directory / "index")
        data = IndexData.open(directory / "index")
        return IndexEngine(tables, data) if name == "index" else AutoEngine(tables, data)
    if name == "spark":
        from segengine.engines.spark import SparkEngine

        return SparkEngine(tables, session=request.getfixturevalue("spark_session"))
    raise AssertionError(f"unknown engine {name}")
