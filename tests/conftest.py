"""Shared fixtures: empty workspaces, the CLI runner, small import files, the SparkSession."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, tests/strategies.py

import segengine  # noqa: E402
from segengine.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"
SEGMENTS = REPO / "data" / "segments"


@pytest.fixture
def ws(tmp_path: Path) -> segengine.Workspace:
    """An empty workspace."""
    return segengine.Workspace.init(tmp_path / "ws")


class Cli:
    """Runs `segengine -w WS ...` in-process and keeps stdout and stderr apart."""

    def __init__(self, workspace: Path | None):
        self.workspace = workspace

    def __call__(self, *args: str, code: int | None = 0):
        runner = CliRunner()
        argv = (["-w", str(self.workspace)] if self.workspace else []) + [str(a) for a in args]
        result = runner.invoke(main, argv, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(ws: segengine.Workspace) -> Cli:
    return Cli(ws.path)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding, newline="")
    return path


# --- Spark ---------------------------------------------------------------------------

JVM_OPTIONS = "-Duser.timezone=America/Los_Angeles -Duser.language=tr -Duser.country=TR"
SESSION_TIME_ZONE = "Pacific/Kiritimati"  # UTC+14: any day computed in it is a day late


def why_no_spark() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "PySpark is not installed: pip install -e '.[spark]'"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java 17+ is not installed (apt-get install openjdk-17-jre-headless)"
    return None


@pytest.fixture(scope="session")
def spark():
    """The run's one SparkSession, in a non-UTC JVM with a Turkish default locale.

    Tests that use it carry ``pytest.mark.xdist_group("spark")``, so one worker runs
    them all and a test run starts one JVM.
    """
    reason = why_no_spark()
    if reason:
        pytest.skip(reason)
    from segengine.engines.spark import pyspark_sql

    session = (
        pyspark_sql().SparkSession.builder.master("local[2]")
        .appName("segengine-tests")
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.sql.session.timeZone", SESSION_TIME_ZONE)
        .config("spark.sql.shuffle.partitions", "2")
        # tiny data: compiling Java for each query costs more than it saves (-40% time)
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
