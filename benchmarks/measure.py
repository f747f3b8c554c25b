"""Timing, peak memory and the machine description.

Peak memory comes from running each step in its own process and reading that
process's ``ru_maxrss`` with ``os.wait4``: per child, unlike
``getrusage(RUSAGE_CHILDREN)``, which keeps the maximum over every child so far.
Linux starts a child's ``ru_maxrss`` at its parent's peak when it execs (the
parent's memory is the child's until then), so the process that runs the steps
does no heavy work itself: anything that reads the data set runs in a step.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = ("segengine", "duckdb", "polars", "pyarrow", "pandas", "numpy", "pyroaring")


class BenchmarkError(RuntimeError):
    """A step failed or paths disagree: the run stops and says why."""


@dataclass(frozen=True)
class Measured:
    """A finished child process: wall time, peak resident memory, its output."""

    wall: float
    max_rss: int  # bytes
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to completion; output goes to files so a chatty child never blocks."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            wall=wall,
            max_rss=usage.ru_maxrss * 1024,  # KiB on Linux
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def child_env() -> dict[str, str]:
    """The environment of child processes: this repository importable, no progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_job(job: dict[str, Any]) -> tuple[dict[str, Any], Measured]:
    """Run one `benchmarks.worker` job in a fresh process; its last stdout line is JSON."""
    measured = run_measured(
        [sys.executable, "-m", "benchmarks.worker", json.dumps(job)], env=child_env()
    )
    if measured.returncode != 0:
        tail = "\n".join(measured.stderr.strip().splitlines()[-15:])
        raise BenchmarkError(f"step {job['step']} failed (exit {measured.returncode}):\n{tail}")
    return json.loads(measured.stdout.strip().splitlines()[-1]), measured


@dataclass(frozen=True)
class Timing:
    """Warm timings of one path on one segment, in seconds."""

    median: float
    low: float
    high: float
    runs: int

    @classmethod
    def of(cls, times: Sequence[float]) -> Timing:
        return cls(statistics.median(times), min(times), max(times), len(times))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "runs": self.runs}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": usable,
        "ram_bytes": _ram_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "libraries": {name: _version(name) for name in LIBRARIES},
    }
