"""Sync runs are exactly once, tested by killing real processes (as tests/test_crash.py does).

A `segengine sync run` subprocess over ~50,000 members is killed with SIGKILL at
named points inside the run and the commit, at moments spread over its run by a
timer, and right after its first temporary file appears in the job's directory (in
the middle of DuckDB's COPY). Between kills the membership changes, and every few
kills the job is reset, so first (full) runs are killed as well as incremental ones.

After each kill, and again after the next run that completes, the invariant holds:

- the committed runs are numbered 1..K without a gap, and each has both files,
  complete, with the counts its history entry records;
- replayed from the latest full run (removed first, then added, keyed by email), no
  contact is removed that was not there and none is added twice, and the result is
  the committed member set (after a kill) or the current membership (after a run);
- nothing else is visible in the directory but the files of the interrupted run
  (K + 1), which the next run replaces; its temporary directories are gone after it.

Also here: a concurrent writer, a deleted segment, and a full disk (a small tmpfs when
the tests run as root, else a file-size limit: a real write failure either way).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import write

import segengine
from segengine.sync.jobs import load_members, to_ids

pytestmark = pytest.mark.xdist_group("sync-crash")

JOB = "crm"
AUDIENCE = {"name": "audience", "rules": [{"field": "state", "op": "is_not", "value": "CA"}]}
FILES = re.compile(JOB + r"\.(\d{6})\.(added\.(?:csv|parquet)|removed\.csv)\Z")
#: named points: inside the run (segengine/sync/run.py) and inside the commit
POINTS = [
    "sync:members-written",
    "sync:added-written",
    "sync:removed-written",
    "files-synced",
    "before-rename:manifest.previous.json",
    "before-rename:manifest.json",
    "after-rename:manifest.json",
    "committed",
]
#: fractions of the longest whole run seen so far at which a timer kills the run
TIMED = [0.3, 0.45, 0.55, 0.65, 0.72, 0.8, 0.87, 0.94, 1.02]
#: seconds after the first temporary file of the run appears (inside the COPY)
AFTER_TEMP_FILE = [0.0, 0.02, 0.08]


def segengine_cmd(ws: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "segengine", "-w", str(ws), *args]


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A workspace of 60,000 generated contacts and the saved segment `audience`."""
    root = tmp_path_factory.mktemp("sync-crash")
    from segengine.synth import generate

    generate(root / "data", contacts=60_000, events=30_000, seed=5, fmt="parquet")
    ws = segengine.Workspace.init(root / "ws")
    ws.import_contacts(root / "data" / "contacts.parquet")
    ws.import_events(root / "data" / "events.parquet")
    ws.save_segment(AUDIENCE)
    return root / "ws"


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def current_members(ws: segengine.Workspace) -> set[str]:
    return set(ws.members("audience", active_only=True)["email"].to_list())


def emails_of(ws: segengine.Workspace, ids) -> set[str]:
    frame = pl.read_parquet(list(ws.snapshot().files("contacts")), columns=["contact_id", "email"])
    return set(frame.filter(pl.col("contact_id").is_in(list(ids)))["email"].to_list())


def check(ws_path: Path, out: Path, *, after_run: bool) -> int:
    """Check the invariant of the module docstring; returns the committed run number."""
    ws = segengine.open(ws_path)
    job = ws.snapshot().manifest["syncs"][JOB]
    committed = job["run"]
    runs = job["runs"]
    assert [r["run"] for r in runs] == list(range(1, committed + 1)), "a gap in the run numbers"
    visible = [n for n in os.listdir(out) if not n.startswith(".")]
    numbers = set()
    for name in visible:
        match = FILES.match(name)
        assert match, f"unexpected file {name}"
        numbers.add(int(match.group(1)))
    allowed = set(range(1, committed + 1)) | (set() if after_run else {committed + 1})
    assert numbers <= allowed, (numbers, committed)
    if after_run:
        assert not [n for n in os.listdir(out) if n.startswith(".")], "temporary files left"
    else:
        for name in visible:  # an interrupted run's files are complete too, or absent
            if int(FILES.match(name).group(1)) == committed + 1:
                read_rows(out / name)
    members: set[str] = set()
    start = max((r["run"] for r in runs if r["full"]), default=1)
    for entry in runs:
        if entry["run"] < start:
            continue  # checked by an earlier call, when they were the latest
        added_name, removed_name = entry["files"]
        added, removed = read_rows(out / added_name), read_rows(out / removed_name)
        assert (len(added), len(removed)) == (entry["added"], entry["removed"]), entry
        for row in removed:
            assert row["email"] in members, f"run {entry['run']} removes {row['email']}, never added"
            assert row["reason"] in ("left_segment", "unsubscribed", "bounced")
            members.remove(row["email"])
        for row in added:
            assert row["email"] not in members, f"run {entry['run']} adds {row['email']} twice"
            members.add(row["email"])
    if job["members"] is not None:
        assert members == emails_of(ws, to_ids(load_members(ws.path, job["members"])))
    if after_run:
        assert members == current_members(ws)
        # the latest run saw the data as it is now: each reason is the contact's status
        # when it is not active, else it left the segment
        status = dict(pl.read_parquet(list(ws.snapshot().files("contacts")),
                                      columns=["email", "status"]).iter_rows())
        for row in read_rows(out / runs[-1]["files"][1]):
            reason = "left_segment" if status[row["email"]] == "active" else status[row["email"]]
            assert row["reason"] == reason, row
    return committed


def change_membership(ws: segengine.Workspace, rng: random.Random, step: int, tmp: Path) -> None:
    """About 1% of the members leave (unsubscribed, bounced, moved to CA), some join; one
    import, so one commit."""
    frame = pl.read_parquet(list(ws.snapshot().files("contacts")), columns=["email", "status", "state"])
    active = frame.filter(pl.col("status") == "active")
    members = active.filter(pl.col("state") != "CA")["email"].to_list()
    outside = active.filter(pl.col("state") == "CA")["email"].to_list()
    picked = rng.sample(members, 450)
    lines = ["email,status,state"]
    lines += [f"{e},bounced," for e in picked[:150]]
    lines += [f"{e},unsubscribed," for e in picked[150:300]]
    lines += [f"{e},,CA" for e in picked[300:]]
    lines += [f"{e},,TX" for e in rng.sample(outside, 150)]
    lines += [f"new{step}-{i}@example.com,active,NY" for i in range(100)]
    ws.import_contacts(write(tmp / "update.csv", "\n".join(lines) + "\n"))


def run_and_kill(ws_path: Path, out: Path, moment: tuple[str, object]) -> int | None:
    """Start a run, kill it at `moment`; returns its exit status when it ended first."""
    kind, value = moment
    env = dict(os.environ)
    if kind == "point":
        env["SEGENGINE_CRASH_AT"] = str(value)
    proc = subprocess.Popen(segengine_cmd(ws_path, "sync", "run", JOB), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kind == "timer":
        time.sleep(float(value))
    elif kind == "temp-file":
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if any(n.startswith(f".{JOB}.") for n in os.listdir(out)):
                time.sleep(float(value))
                break
            time.sleep(0.001)
    if kind != "point":
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if kind == "point":
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return proc.returncode


@pytest.mark.slow
def test_kill_a_run_at_many_moments_then_run_again(big, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(big, work)
    out = tmp_path / "out"
    out.mkdir()
    ws = segengine.open(work)
    ws.sync_create(JOB, "audience", to=out)
    started = time.monotonic()
    subprocess.run(segengine_cmd(work, "sync", "run", JOB), check=True, capture_output=True)
    duration = time.monotonic() - started
    assert check(work, out, after_run=True) == 1

    moments = ([("point", p) for p in POINTS] + [("timer", f) for f in TIMED]
               + [("temp-file", d) for d in AFTER_TEMP_FILE])
    assert len(moments) >= 20
    rng = random.Random(19)
    outcomes = {"repeated": 0, "went on": 0}
    for step, moment in enumerate(moments):
        ws = segengine.open(work)
        if step % 5 == 0:
            ws.sync_reset(JOB)  # the next run is a full one: kill those too
        else:
            change_membership(ws, rng, step, tmp_path)
        before = ws.snapshot().manifest["syncs"][JOB]["run"]
        kind, value = moment
        run_and_kill(work, out, (kind, value * duration) if kind == "timer" else moment)
        after_kill = check(work, out, after_run=False)
        assert after_kill in (before, before + 1), moment
        outcomes["repeated" if after_kill == before else "went on"] += 1
        # a lock left by the killed run blocks nobody; the next run repeats or goes on
        started = time.monotonic()
        done = subprocess.run(segengine_cmd(work, "sync", "run", JOB, "--json"), capture_output=True,
                              text=True)
        # the timers are fractions of the longest run seen: on a machine that slows down
        # after the first run, the late ones must still fall after its commit
        duration = max(duration, time.monotonic() - started)
        assert done.returncode == 0, done.stderr
        assert check(work, out, after_run=True) == after_kill + 1, moment
    assert outcomes["repeated"] >= 5 and outcomes["went on"] >= 3, outcomes


def test_concurrent_writers_are_serialised(big, tmp_path):
    """Runs and an import started together: each one either commits or is told the
    workspace is busy (exit 1), and the runs still add up."""
    work = tmp_path / "ws"
    shutil.copytree(big, work)
    out = tmp_path / "out"
    out.mkdir()
    ws = segengine.open(work)
    ws.sync_create(JOB, "audience", to=out)
    rng = random.Random(7)
    committed_runs = 0
    for step in range(3):
        change_membership(ws, rng, step, tmp_path)
        extra = write(tmp_path / f"more{step}.csv", "email,state\n" + "".join(
            f"c{step}-{i}@example.com,WA\n" for i in range(100)))
        procs = [subprocess.Popen(segengine_cmd(work, "sync", "run", JOB), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        procs.append(subprocess.Popen(segengine_cmd(work, "import", "contacts", str(extra)),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            _, err = proc.communicate()
            assert proc.returncode in (0, 1), err
            if proc.returncode == 1:
                assert "is busy" in err
        committed_runs += sum(p.returncode == 0 for p in procs[:2])
        assert check(work, out, after_run=False) == committed_runs
    subprocess.run(segengine_cmd(work, "sync", "run", JOB), check=True, capture_output=True)
    assert check(work, out, after_run=True) == committed_runs + 1


def test_a_run_against_a_held_lock_is_busy_and_changes_nothing(big, tmp_path):
    work = tmp_path / "ws"
    shutil.copytree(big, work)
    out = tmp_path / "out"
    out.mkdir()
    ws = segengine.open(work)
    ws.sync_create(JOB, "audience", to=out)
    before = (work / "manifest.json").read_bytes()
    with ws.store.lock():
        proc = subprocess.run(segengine_cmd(work, "sync", "run", JOB), capture_output=True, text=True)
    assert proc.returncode == 1 and "is busy" in proc.stderr
    assert (work / "manifest.json").read_bytes() == before
    assert os.listdir(out) == []


def test_a_deleted_segment_is_exit_2_and_changes_nothing(tmp_path):
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "c.csv", "email,state\na@example.com,NY\nb@example.com,CA\n"))
    ws.save_segment(AUDIENCE)
    out = tmp_path / "out"
    out.mkdir()
    ws.sync_create(JOB, "audience", to=out)
    subprocess.run(segengine_cmd(ws.path, "sync", "run", JOB), check=True, capture_output=True)
    subprocess.run(segengine_cmd(ws.path, "segment", "delete", "audience"), check=True, capture_output=True)
    before = (ws.path / "manifest.json").read_bytes()
    files = sorted(os.listdir(out))
    proc = subprocess.run(segengine_cmd(ws.path, "sync", "run", JOB), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: sync job '{JOB}' cannot run: segment 'audience' no longer exists; restore it, "
        f"or `segengine sync delete {JOB}` and create the job again"
    ]
    assert (ws.path / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(out)) == files


# --- a full disk --------------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (needs root), or None where it cannot be."""
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                              str(path)], capture_output=True)
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def file_size_limit(limit: int):
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_leaves_the_job_as_it_was(tmp_path):
    """ENOSPC (or, without root, EFBIG from a file-size limit) while the added file is
    written: exit 1 with one line, the job keeps its committed state, no file of the
    failed run stays; with room again, the next run writes the same run number."""
    from conftest import SAMPLE

    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(SAMPLE / "contacts.csv")
    ws.save_segment({"name": "everyone", "rules": []})
    with small_filesystem(tmp_path / "small", "256k") as small:
        out = small or tmp_path / "small"
        ws.sync_create(JOB, "everyone", to=out)
        first = ws.sync_run(JOB)
        size = Path(first.files[0]).stat().st_size
        assert first.added > 800 and size > 64 * 1024
        ws.sync_reset(JOB)  # the next run writes every member again
        filler = out / "filler"
        if small is not None:  # leave a third of the room the next file needs
            free = os.statvfs(out).f_bavail * os.statvfs(out).f_frsize
            filler.write_bytes(b"\0" * (free - size // 3))
        before = (ws.path / "manifest.json").read_bytes()
        files = sorted(os.listdir(out))
        preexec = None if small is not None else file_size_limit(size // 2)
        proc = subprocess.run(segengine_cmd(ws.path, "sync", "run", JOB), capture_output=True,
                              text=True, preexec_fn=preexec)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "run 2 failed and was not committed" in lines[0], proc.stderr
        assert ("No space left on device" if small is not None else "File too large") in lines[0]
        assert (ws.path / "manifest.json").read_bytes() == before
        assert sorted(os.listdir(out)) == files  # no half file, no temporary directory
        filler.unlink(missing_ok=True)
        again = ws.sync_run(JOB)
        assert (again.run, again.added, again.removed, again.full) == (2, first.added, 0, True)
        assert Path(again.files[0]).read_bytes() == Path(first.files[0]).read_bytes()


def test_an_interrupted_run_is_replaced_by_the_next_with_the_changes_since(big, tmp_path):
    """Killed after both files of run 2 were in place but before its commit; the data
    changes; the next run is run 2 again, its files replaced with the new changes."""
    work = tmp_path / "ws"
    shutil.copytree(big, work)
    out = tmp_path / "out"
    out.mkdir()
    ws = segengine.open(work)
    ws.sync_create(JOB, "audience", to=out)
    ws.sync_run(JOB)
    rng = random.Random(3)
    change_membership(ws, rng, 1, tmp_path)
    run_and_kill(work, out, ("point", "sync:removed-written"))
    interrupted = (out / f"{JOB}.000002.removed.csv").read_bytes()
    assert check(work, out, after_run=False) == 1
    change_membership(segengine.open(work), rng, 2, tmp_path)
    again = segengine.open(work).sync_run(JOB)
    assert again.run == 2 and not again.full
    assert (out / f"{JOB}.000002.removed.csv").read_bytes() != interrupted
    assert check(work, out, after_run=True) == 2
