"""Crash safety, tested as SQLite does: kill a real writer and look at what is left.

A real import runs in a subprocess and is killed with SIGKILL at many moments spread
over its run; afterwards the workspace must open and hold exactly the old data or
exactly the new data, and the next writer must not be blocked. Named crash points
inside the commit hit the moments a timer rarely lands on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import segengine

KILL_POINTS = 20


def digest(path: Path) -> tuple[int, str]:
    """(version, content hash) of a workspace's committed contacts and events."""
    ws = segengine.open(path)
    snap = ws.snapshot()
    parts = []
    for table, key in (("contacts", ["contact_id"]), ("events", ["contact_id", "campaign", "type", "timestamp"])):
        files = list(snap.files(table))
        if not files:
            parts.append(f"{table}:empty")
            continue
        frame = pl.read_parquet(files).sort(key)
        parts.append(f"{table}:{frame.height}:{frame.hash_rows().sum()}")
    return snap.version, hashlib.sha256("|".join(parts).encode()).hexdigest()


def segengine_cmd(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "segengine", "-w", str(ws), *args]


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A base workspace with some data, and a larger contacts file and events file."""
    root = tmp_path_factory.mktemp("crash")
    from segengine.synth import generate

    generate(root / "base", contacts=2_000, events=20_000, seed=1, fmt="csv")
    generate(root / "more", contacts=20_000, events=100_000, seed=2, fmt="csv")
    base = root / "ws"
    ws = segengine.Workspace.init(base)
    ws.import_contacts(root / "base" / "contacts.csv")
    ws.import_events(root / "base" / "events.csv")
    return base, root / "more" / "contacts.csv", root / "more" / "events.csv"


def run_to_completion(ws: Path, args: list[str]) -> float:
    start = time.monotonic()
    subprocess.run(segengine_cmd(ws, *args), check=True, capture_output=True)
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["contacts", "events"])
def test_kill_import_at_many_moments(big_files, tmp_path, kind):
    base, contacts_file, events_file = big_files
    args = ["import", kind, str(contacts_file if kind == "contacts" else events_file)]
    before = digest(base)
    done = tmp_path / "done"
    shutil.copytree(base, done)
    if kind == "events":  # the events need their contacts
        run_to_completion(done, ["import", "contacts", str(contacts_file)])
        shutil.rmtree(base.parent / "ws-events-base", ignore_errors=True)
        shutil.copytree(done, base.parent / "ws-events-base")
        base = base.parent / "ws-events-base"
        before = digest(base)
    duration = run_to_completion(done, args)
    after = digest(done)
    assert after != before
    outcomes = {"old": 0, "new": 0}
    for i in range(KILL_POINTS):
        work = tmp_path / f"k{i}"
        shutil.copytree(base, work)
        proc = subprocess.Popen(segengine_cmd(work, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # spread the kills from start-up to just past the expected end
        time.sleep(duration * (0.05 + 1.05 * i / KILL_POINTS))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = digest(work)
        assert state in (before, after), f"kill point {i}: neither the old nor the new state"
        outcomes["old" if state == before else "new"] += 1
        if i % 4 == 0:
            # a lock left by the killed process blocks nobody, and the next write works
            run_to_completion(work, args)
            assert digest(work)[1] == after[1]
            assert not (work / ".staging").exists()
        shutil.rmtree(work)
    assert outcomes["old"] > 0, outcomes  # the kills really did land during the import


@pytest.mark.parametrize(
    "point, survives",
    [
        ("files-synced", False),
        ("before-rename:manifest.json", False),
        ("after-rename:manifest.json", True),
        ("committed", True),
    ],
)
def test_crash_points_inside_commit(big_files, tmp_path, point, survives):
    base, contacts_file, _ = big_files
    work = tmp_path / "ws"
    shutil.copytree(base, work)
    before = digest(work)
    env = {**os.environ, "SEGENGINE_CRASH_AT": point}
    proc = subprocess.run(
        segengine_cmd(work, "import", "contacts", str(contacts_file)), env=env, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL
    state = digest(work)
    assert (state != before) == survives
    data_files = set(os.listdir(work / "data"))
    run_to_completion(work, ["import", "contacts", str(contacts_file)])
    # the next writer removes whatever the killed one left behind
    referenced = {Path(p).name for p in segengine.open(work).snapshot().manifest["contacts"]}
    assert referenced <= set(os.listdir(work / "data"))
    assert len(set(os.listdir(work / "data"))) <= len(data_files) + 1


def test_second_writer_gets_busy_error(ws, tmp_path):
    with ws.store.lock():
        proc = subprocess.run(
            segengine_cmd(ws.path, "import", "contacts", str(tmp_path / "x.csv")),
            capture_output=True, text=True,
        )
    assert proc.returncode == 1
    assert "is busy" in proc.stderr


def test_reader_sees_a_consistent_snapshot_during_a_write(big_files, tmp_path):
    base, contacts_file, _ = big_files
    work = tmp_path / "ws"
    shutil.copytree(base, work)
    ws = segengine.open(work)
    snap = ws.snapshot()
    before = pl.read_parquet(list(snap.files("contacts"))).height
    run_to_completion(work, ["import", "contacts", str(contacts_file)])
    # files of the previous version survive one more commit for readers still on it
    assert pl.read_parquet(list(snap.files("contacts"))).height == before
