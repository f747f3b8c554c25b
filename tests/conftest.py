"""Shared fixtures: empty workspaces, the CLI runner, small import files."""

from __future__ import annotations

import json
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
