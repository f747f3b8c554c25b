"""Every engine behind one fixture, for the conformance suite of this folder.

`make_engine(name, tables, directory)` builds any engine over the same Parquet tables
(the index engines build their engagement index first), so one test body checks all
of them. Spark runs where PySpark and Java exist and is skipped, visibly, elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from segengine.engines.base import Engine, Tables

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


@pytest.fixture(scope="session")
def spark_session():
    """One local SparkSession in UTC for the suite (the Spark tests' own session when
    they run in the same process: a running session is reused, never stopped here)."""
    reason = why_no_spark()
    if reason:
        pytest.skip(reason)
    from segengine.engines.spark import pyspark_sql

    sql = pyspark_sql()
    active = sql.SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    session = (
        sql.SparkSession.builder.master("local[2]")
        .appName("segengine-conformance")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(params=engine_params())
def engine_name(request) -> str:
    if request.param == "spark":
        request.getfixturevalue("spark_session")
    return request.param


@pytest.fixture
def make_engine(request, engine_name):
    """Builds `engine_name` over tables; every engine made is closed after the test."""
    made: list[Engine] = []

    def make(tables: Tables, directory: Path, indexed: Tables | None = None) -> Engine:
        engine = build(engine_name, tables, Path(directory), request, indexed)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


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


@pytest.fixture(scope="module")
def fixture_tables(tmp_path_factory) -> Tables:
    """The hand-computed cases' workspace (tests/test_polars_engine.py), as Parquet."""
    from strategies import write_workspace
    from test_polars_engine import FIXTURE

    return write_workspace(FIXTURE, tmp_path_factory.mktemp("fixture"))


@pytest.fixture
def fixture_engine(make_engine, fixture_tables, tmp_path):
    return make_engine(fixture_tables, tmp_path)
