"""Every engine behind one fixture, for the conformance suite of this folder.

`make_engine(name, tables, directory)` builds any engine over the same Parquet tables
(the index engines build their engagement index first), so one test body checks all
of them. Spark runs where PySpark and Java exist and is skipped, visibly, elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.engine_matrix import build, engine_params, why_no_spark
from segengine.engines.base import Engine, Tables


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


@pytest.fixture(scope="module")
def fixture_tables(tmp_path_factory) -> Tables:
    """The hand-computed cases' workspace (tests/test_polars_engine.py), as Parquet."""
    from strategies import write_workspace
    from test_polars_engine import FIXTURE

    return write_workspace(FIXTURE, tmp_path_factory.mktemp("fixture"))


@pytest.fixture
def fixture_engine(make_engine, fixture_tables, tmp_path):
    return make_engine(fixture_tables, tmp_path)


def pytest_terminal_summary(terminalreporter) -> None:
    """How many random trees each engine checked against the reference evaluator."""
    from engines.engine_matrix import TREES_RUN

    if TREES_RUN:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(TREES_RUN.items()))
        terminalreporter.write_line(f"random trees checked against the reference: {counts}")
