"""``python -m benchmarks.sync WORKSPACE [--scratch DIR] [--segment FILE] [--rounds R] [--write]``.

What a sync job costs (docs/sync.md), next to what it replaces, on a copy of a
benchmark workspace (``cp -a``: the original stays untouched):

- the first (full) run against ``segengine export`` of the same segment (same rows,
  same columns, CSV);
- a run after about 1% of the members changed (unsubscribed with ``segengine
  unsubscribe --emails``, not timed) against writing only the changed rows with one
  DuckDB ``COPY`` per file (the ids given, the rows read from the contacts' Parquet
  file, ordered by email): the least a program that already knew the changes would do;
- the bytes of job state per member (the member bitmap the workspace keeps).

Each comparison is timed end to end (a fresh process, as cron runs it: ``segengine
sync run`` against ``segengine export``, or a Python process running the COPY) and in
one warm process (``Workspace.sync_run`` against ``Workspace.export``, or the COPY on
an open connection); medians of ``--rounds`` alternating rounds, wall seconds.
``--write`` puts the table into benchmarks/RESULTS.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
#: the default audience: the active contacts of the newsletter list
DEFAULT_SEGMENT = {"name": "list-newsletter-active", "match": "all", "rules": [
    {"field": "status", "op": "is", "value": "active"},
    {"field": "lists", "op": "includes", "value": "Newsletter"}]}
JOB = "bench"
CHANGE_SHARE = 0.01

#: the baseline of an incremental run: the changed rows, written by DuckDB alone
COPY_CHANGED = """
import sys, duckdb, pyarrow.parquet as pq
contacts, added_ids, removed_ids, out, columns = sys.argv[1:6]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
for ids, select, name in ((added_ids, columns, "added"),
                          (removed_ids, "email, 'unsubscribed' AS reason", "removed")):
    con.register("ids", pq.read_table(ids))
    con.execute(f"COPY (SELECT {select} FROM read_parquet('{contacts}') c SEMI JOIN ids "
                f"ON c.contact_id = ids.contact_id ORDER BY c.email) TO '{out}.{name}.csv' "
                "(FORMAT csv, HEADER true)")
    con.unregister("ids")
"""


def segengine(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segengine", "-w", str(ws), *args],
                          check=True, capture_output=True, text=True)


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def prepare(source: Path, scratch: Path, segment_file: Path | None) -> tuple[Path, Path, str]:
    """A private copy of `source` with the segment saved and a fresh job on it."""
    ws = scratch / "ws"
    if not ws.exists():
        scratch.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(source), str(ws)], check=True)
    if segment_file is None:
        segment_file = scratch / "segment.json"
        segment_file.write_text(json.dumps(DEFAULT_SEGMENT))
    name = json.loads(segment_file.read_text())["name"]
    segengine(ws, "segment", "save", str(segment_file))
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    jobs = json.loads(segengine(ws, "sync", "list", "--json").stdout)["jobs"]
    if any(j["job"] == JOB for j in jobs):
        segengine(ws, "sync", "delete", JOB)
    segengine(ws, "sync", "create", JOB, "--segment", name, "--to", str(out))
    return ws, out, name


def prewarm(workspace, name: str) -> None:
    """Load the engines of the current snapshot (the index and DuckDB's views), as a
    long-lived process has them, so a warm timing measures the work itself."""
    workspace.count(name)
    workspace.session.connection(workspace.snapshot())


def full_runs(ws: Path, out: Path, name: str, rounds: int) -> dict[str, list[float]]:
    """The first (full) run against export, end to end and warm, alternating."""
    import segengine as lib

    times: dict[str, list[float]] = {"sync cli": [], "export cli": [], "sync warm": [], "export warm": []}
    export_file = out.parent / "export.csv"
    for _ in range(rounds):
        segengine(ws, "sync", "reset", JOB)
        times["sync cli"].append(timed(lambda: segengine(ws, "sync", "run", JOB))[0])
        times["export cli"].append(timed(lambda: segengine(ws, "export", name, "-o", str(export_file)))[0])
    warm = lib.open(ws)
    warm.export(name, output=export_file)  # load the engines once, as a long-lived process has
    for _ in range(rounds):
        warm.sync_reset(JOB)
        prewarm(warm, name)
        times["sync warm"].append(timed(lambda: warm.sync_run(JOB))[0])
        prewarm(warm, name)
        times["export warm"].append(timed(lambda: warm.export(name, output=export_file))[0])
    rows = sum(1 for _ in open(export_file, encoding="utf-8")) - 1
    last = json.loads(segengine(ws, "sync", "show", JOB, "--json").stdout)["runs"][-1]
    assert last["added"] == rows, (last, rows)  # the same rows as the export
    return times


def change_members(ws: Path, name: str, scratch: Path, step: int) -> None:
    """Unsubscribe about 1% of the segment's active members (one commit, not timed)."""
    import segengine as lib

    emails = lib.open(ws).members(name, active_only=True)["email"]
    picked = emails.sample(fraction=CHANGE_SHARE, seed=step)
    path = scratch / "unsubscribe.csv"
    path.write_text("email\n" + "\n".join(picked.to_list()) + "\n")
    segengine(ws, "unsubscribe", "--emails", str(path))


def changed_ids(ws: Path, scratch: Path) -> tuple[Path, Path, int]:
    """The ids the next run will add and remove, as Parquet files for the baseline."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import segengine as lib
    from segengine.sync.jobs import load_members, to_ids

    w = lib.open(ws)
    job = w.snapshot().manifest["syncs"][JOB]
    previous = to_ids(load_members(w.path, job["members"]))
    con = w.session.connection(w.snapshot())
    ids = w.contact_ids(*job["segments"])
    con.register("matched", pa.table({"contact_id": ids}))
    now = con.execute("SELECT c.contact_id FROM contacts c SEMI JOIN matched m "
                      "ON c.contact_id = m.contact_id WHERE status = 'active' ORDER BY 1"
                      ).fetchnumpy()["contact_id"]
    con.unregister("matched")
    added, removed = np.setdiff1d(now, previous), np.setdiff1d(previous, now)
    paths = scratch / "added-ids.parquet", scratch / "removed-ids.parquet"
    for path, values in zip(paths, (added, removed), strict=True):
        pq.write_table(pa.table({"contact_id": pa.array(values, pa.int64())}), path)
    return paths[0], paths[1], int(added.size + removed.size)


def copy_changed(con, contacts: str, added: Path, removed: Path, columns: str, target: str) -> None:
    """The baseline in a warm process: the changed rows, one DuckDB COPY per file."""
    import pyarrow.parquet as pq

    for ids, select, kind in ((added, columns, "added"),
                              (removed, "email, 'unsubscribed' AS reason", "removed")):
        con.register("ids", pq.read_table(ids))
        con.execute(f"COPY (SELECT {select} FROM read_parquet('{contacts}') c SEMI JOIN ids "
                    f"ON c.contact_id = ids.contact_id ORDER BY c.email) "
                    f"TO '{target}.{kind}.csv' (FORMAT csv, HEADER true)")
        con.unregister("ids")


def incremental_runs(ws: Path, name: str, scratch: Path, rounds: int
                     ) -> tuple[dict[str, list[float]], list[int]]:
    """A run after a 1% change against the DuckDB COPY of the changed rows alone."""
    import functools

    import duckdb

    import segengine as lib
    from segengine.export.cells import cell

    times: dict[str, list[float]] = {"sync cli": [], "copy cli": [], "sync warm": [], "copy warm": []}
    changed: list[int] = []
    segengine(ws, "sync", "reset", JOB)
    segengine(ws, "sync", "run", JOB)
    target = str(scratch / "baseline")
    for step in range(2 * rounds):
        change_members(ws, name, scratch, step)
        added, removed, count = changed_ids(ws, scratch)
        changed.append(count)
        snap = lib.open(ws).snapshot()
        (contacts,) = snap.files("contacts")
        job = snap.manifest["syncs"][JOB]
        columns = ", ".join(cell(c, snap.schema[c], "csv", False) for c in job["columns"])
        if step >= rounds:
            w = lib.open(ws)
            prewarm(w, name)
            times["sync warm"].append(timed(functools.partial(w.sync_run, JOB))[0])
            con = duckdb.connect()
            times["copy warm"].append(timed(functools.partial(
                copy_changed, con, contacts, added, removed, columns, target))[0])
            con.close()
        else:
            times["sync cli"].append(timed(functools.partial(segengine, ws, "sync", "run", JOB))[0])
            command = [sys.executable, "-c", COPY_CHANGED, contacts, str(added), str(removed),
                       target, columns]
            times["copy cli"].append(timed(functools.partial(subprocess.run, command, check=True))[0])
    return times, changed


def state_bytes(ws: Path) -> tuple[int, int]:
    import segengine as lib

    job = lib.open(ws).snapshot().manifest["syncs"][JOB]
    return (ws / job["members"]["path"]).stat().st_size, job["members"]["count"]


def table(full: dict[str, list[float]], incr: dict[str, list[float]], changed: list[int],
          state: tuple[int, int], members: int, segment: str, rounds: int,
          counts: dict[str, int]) -> str:
    med = {k: statistics.median(v) for k, v in {**{f"full {k}": v for k, v in full.items()},
                                                **{f"incr {k}": v for k, v in incr.items()}}.items()}

    def row(what: str, ours: str, base: str, target: str) -> str:
        a, b = med[ours], med[base]
        return f"| {what} | {a:.2f} s | {b:.2f} s | {a / b:.2f}x | {target} |"

    size, count = state
    lines = [
        f"Segment `{segment}`: {members:,} active members of {counts['contacts']:,} contacts "
        f"({counts['events']:,} events), CSV, the default columns (email and the custom fields); "
        f"medians of {rounds} rounds, wall time on "
        f"the shared 2-core machine. A 1% change: {statistics.median(changed):,.0f} changed rows "
        "(members unsubscribed).",
        "",
        "| run | sync | baseline | ratio | target |",
        "|---|---|---|---|---|",
        row("first (full) run vs `segengine export`, end to end", "full sync cli", "full export cli",
            "<= 1.2x"),
        row("first (full) run vs `Workspace.export`, warm process", "full sync warm", "full export warm",
            "<= 1.2x"),
        row("after a 1% change vs DuckDB `COPY` of the changed rows, end to end", "incr sync cli",
            "incr copy cli", "<= 1.2x, <= 5 s"),
        row("after a 1% change vs DuckDB `COPY` of the changed rows, warm process", "incr sync warm",
            "incr copy warm", "<= 1.2x"),
        "",
        f"Job state: {size:,} bytes for {count:,} members, {size / count:.3f} bytes per member "
        "(target: at most 2).",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str, contacts: int) -> None:
    """Replace (or add) this scale's part of the sync section of RESULTS.md."""
    from .report import write_scale_section

    write_scale_section("sync benchmark", "Sync jobs (`python -m benchmarks.sync`)", contacts,
                        text.rstrip("\n").splitlines(), RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sync", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, help="the workspace to copy (never written to)")
    parser.add_argument("--scratch", type=Path, default=HERE / ".cache" / "sync",
                        help="where the copy and the job's files go (reused when present)")
    parser.add_argument("--segment", type=Path, default=None,
                        help="a definition file (default: the active contacts of the newsletter list)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not (args.workspace / "manifest.json").is_file():
        parser.error(f"{args.workspace}: not a workspace")
    os.environ.setdefault("SEGENGINE_WORKSPACE", str(args.scratch / "ws"))
    ws, out, name = prepare(args.workspace, args.scratch, args.segment)
    full = full_runs(ws, out, name, args.rounds)
    members = json.loads(segengine(ws, "sync", "show", JOB, "--json").stdout)["members"]
    state = state_bytes(ws)
    incr, changed = incremental_runs(ws, name, args.scratch, args.rounds)
    counts = json.loads((ws / "manifest.json").read_text())["counts"]
    text = table(full, incr, changed, state, members, name, args.rounds, counts)
    print(text)
    print(json.dumps({"full": full, "incremental": incr, "changed": changed}), file=sys.stderr)
    if args.write:
        write_section(text, int(counts["contacts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
