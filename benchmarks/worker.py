"""One benchmark step, run in its own process so that its peak memory is its own.

``python -m benchmarks.worker '<json job>'`` prints one JSON line with the result.
The harness also calls `run` in-process when it does not need memory figures (the
smoke test). Times are taken inside the step, around the work only, so process
start-up and imports are not counted (the cold CLI timing counts them on purpose).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Job = dict[str, Any]


def _timed_runs(call: Callable[[], dict[str, Any]], runs: int) -> dict[str, Any]:
    """One warm-up (engine set-up, file cache, plans), then `runs` timed calls."""
    start = time.perf_counter()
    first = call()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
        if result != first:
            raise RuntimeError(f"result changed between runs: {first} then {result}")
    return {**first, "warmup": warmup, "times": times}


def generate(job: Job) -> dict[str, Any]:
    from segengine.synth import generate as synth

    start = time.perf_counter()
    result = synth(Path(job["dir"]), contacts=job["contacts"], events=job["events"],
                   seed=job["seed"], fmt="parquet")
    return {**result, "seconds": time.perf_counter() - start}


def check_data(job: Job) -> dict[str, Any]:
    """What the baselines take for granted: unique emails, no duplicate event rows."""
    import duckdb

    con = duckdb.connect()
    contacts, events = job["contacts"], job["events"]
    dup_emails = con.execute(
        f"SELECT count(*) - count(DISTINCT email) FROM read_parquet('{contacts}')"
    ).fetchall()[0][0]
    dup_events = con.execute(
        "SELECT count(*) FROM (SELECT 1 FROM read_parquet(?) "
        "GROUP BY email, campaign, type, timestamp, url HAVING count(*) > 1)",
        [events],
    ).fetchall()[0][0]
    return {"duplicate_emails": int(dup_emails), "duplicate_events": int(dup_events)}


def import_file(job: Job) -> dict[str, Any]:
    import segengine

    if job["kind"] == "contacts":
        ws = segengine.Workspace.init(job["workspace"])
        call = ws.import_contacts
    else:
        ws = segengine.open(job["workspace"])
        call = ws.import_events
    start = time.perf_counter()
    summary = call(job["path"])
    seconds = time.perf_counter() - start
    return {"read": summary.read, "imported": summary.imported,
            "rejected": summary.rejected, "seconds": seconds}


def segengine_count(job: Job) -> dict[str, Any]:
    import segengine

    ws = segengine.open(job["workspace"])

    def call() -> dict[str, Any]:
        result = ws.count(*job["files"], as_of=job["as_of"], engine=job["engine"])
        return {"total": result["total"], "by_status": result["by_status"]}

    return _timed_runs(call, job["runs"])


def baseline_count(job: Job) -> dict[str, Any]:
    from .baselines import RawData, open_baseline

    work = Path(job["work"]) if job.get("work") else None
    data = RawData(Path(job["contacts"]), Path(job["events"]), work)
    baseline = open_baseline(job["baseline"], data)
    as_of = dt.date.fromisoformat(job["as_of"])
    parts = tuple(job["parts"])
    try:
        timed = _timed_runs(lambda: {"total": baseline.count(parts, as_of)}, job["runs"])
        loaded = getattr(baseline, "load_seconds", None)  # tables loaded before the counts
        return timed if loaded is None else {**timed, "load_seconds": loaded}
    finally:
        baseline.close()


def _format_keyword(export: Callable[..., Any]) -> str | None:
    params = inspect.signature(export).parameters
    return next((k for k in ("fmt", "format") if k in params), None)


def export(job: Job) -> dict[str, Any]:
    """`Workspace.export` of the segments' active contacts (default columns)."""
    import segengine

    ws = segengine.open(job["workspace"])
    kwargs: dict[str, Any] = {"output": Path(job["output"]), "as_of": job["as_of"]}
    keyword = _format_keyword(ws.export)
    if keyword:
        kwargs[keyword] = job["format"]
    elif job["format"] != "csv":
        raise RuntimeError("Workspace.export takes no format argument: only CSV can be measured")
    start = time.perf_counter()
    result = ws.export(*job["files"], **kwargs)
    seconds = time.perf_counter() - start
    report = result.as_dict() if hasattr(result, "as_dict") else result
    rows = report["rows"] if isinstance(report, dict) else int(report)
    return {"rows": int(rows), "seconds": seconds, "bytes": Path(job["output"]).stat().st_size}


def copy(job: Job) -> dict[str, Any]:
    """DuckDB ``COPY`` of the same rows (active, ordered by email) and columns."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    columns = ", ".join(f'"{c}"' for c in job["columns"])
    options = "FORMAT csv, HEADER true" if job["format"] == "csv" else "FORMAT parquet"
    query = (
        f"COPY (SELECT {columns} FROM read_parquet('{job['contacts']}') "
        f"WHERE lower(status) = 'active' ORDER BY email) TO '{job['output']}' ({options})"
    )
    start = time.perf_counter()
    rows = con.execute(query).fetchall()[0][0]
    seconds = time.perf_counter() - start
    return {"rows": int(rows), "seconds": seconds, "bytes": Path(job["output"]).stat().st_size}


def index_build(job: Job) -> dict[str, Any]:
    """A full engagement-index build of the workspace's files, then an incremental update.

    The update is what users pay: importing one more batch of events into a copy of the
    workspace, whose commit extends the index in the same transaction. The copy
    hard-links the workspace's files (they are immutable; a commit writes new ones and
    renames the manifest), and the full build's files are flushed first: otherwise the
    import's fsyncs would wait behind gigabytes of unrelated writeback.
    """
    import segengine
    from segengine.store.index import META, build_index

    ws = segengine.open(job["workspace"])
    snap = ws.snapshot()
    scratch = Path(job["scratch"])
    shutil.rmtree(scratch, ignore_errors=True)
    start = time.perf_counter()
    build_index(snap.files("contacts"), snap.files("events"), snap.schema, scratch / "full")
    full = time.perf_counter() - start
    copy_dir = scratch / "workspace"
    shutil.copytree(job["workspace"], copy_dir, copy_function=os.link)
    os.sync()
    updated = segengine.open(copy_dir)
    start = time.perf_counter()
    summary = updated.import_events(job["extra_events"])
    update = time.perf_counter() - start
    entry = updated.snapshot().manifest["index"]
    meta = json.loads((copy_dir / entry["path"] / META).read_text())
    shutil.rmtree(scratch, ignore_errors=True)
    return {"full_seconds": full, "update_seconds": update, "extra_events": summary.read,
            "incremental": bool(meta.get("incremental")),
            "aggregates_delta": meta["events"].get("aggregates", {}).get("delta") is not None}


def index_is_current(ws: Any) -> bool:
    """Whether the workspace's index can be read and was built after the index code.

    An index of an older segengine may stay readable yet lack what the current one adds
    (then the engines fall back, and an import rebuilds it instead of extending it):
    one built before `segengine.store.index` last changed is rebuilt, so the benchmark
    measures the index this code builds.
    """
    from segengine.store import index
    from segengine.store.index import IndexUnavailable, load_index

    snapshot = ws.snapshot()
    try:
        load_index(snapshot)
    except IndexUnavailable:
        return False
    built = (Path(ws.path) / snapshot.manifest["index"]["path"]).stat().st_mtime
    code = max(p.stat().st_mtime for p in Path(index.__file__).parent.glob("*.py"))
    return built >= code


def extra_events(job: Job) -> dict[str, Any]:
    """Write the later batch of events that the incremental-update measurement imports."""
    from .runner import write_extra_events

    write_extra_events(Path(job["events"]), Path(job["out"]), int(job["n"]))
    return {"written": str(job["out"])}


def refresh_index(job: Job) -> dict[str, Any]:
    """Rebuild a cached workspace's engagement index unless it is current (`index_is_current`).

    `Workspace.reindex` commits without the old index entry, so the store builds the
    index from scratch, as an import would.
    """
    import segengine

    ws = segengine.open(job["workspace"])
    if index_is_current(ws):
        return {"rebuilt": False, "seconds": 0.0}
    start = time.perf_counter()
    ws.reindex()
    return {"rebuilt": True, "seconds": time.perf_counter() - start}


def _peak_rss(pid: int) -> int | None:
    """A process's peak resident memory (Linux ``VmHWM``), else its current RSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # psutil missing, or the process is gone
        return None


def _jvm_peak_rss() -> int | None:
    """Peak RSS of this process's children: the JVM PySpark started (None without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    peaks = [_peak_rss(child.pid) for child in psutil.Process().children(recursive=True)]
    known = [p for p in peaks if p is not None]
    return sum(known) if known else None


def _self_peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _spark_versions(session: Any) -> dict[str, str]:
    jvm = session.sparkContext._jvm  # py4j gateway: the JVM's own properties
    return {"spark": session.version, "java": str(jvm.System.getProperty("java.version")),
            "master": session.sparkContext.master}


class QueryOverBudget(RuntimeError):
    """A Spark query ran past the step's budget and was cancelled."""


def _within_budget(session: Any, call: Callable[[], dict[str, Any]],
                   budget: float) -> dict[str, Any]:
    """`call()` in its own thread and Spark job group, cancelled after `budget` seconds.

    A plan can be quadratic in Spark (a nested-loop join) where the other engines take
    seconds; cancelling it keeps the rest of the suite measurable.
    """
    import uuid

    from pyspark import InheritableThread

    context = session.sparkContext
    group = f"segengine-bench-{uuid.uuid4().hex[:12]}"
    box: dict[str, Any] = {}

    def target() -> None:
        context.setJobGroup(group, "segengine benchmark query", interruptOnCancel=True)
        try:
            box["result"] = call()
        except Exception as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = InheritableThread(target=target, daemon=True)
    thread.start()
    thread.join(budget)
    if thread.is_alive():
        context.cancelJobGroup(group)
        thread.join(120)
        raise QueryOverBudget(f"cancelled after {budget:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def spark_suite(job: Job) -> dict[str, Any]:
    """Every segment through `ws.count(..., engine="spark")` in one process and session.

    ``startup``: from this process's launch (``launched_at``, the harness's clock) to a
    SparkSession ready, then the first query (views registered over the workspace's
    Parquet, first plan compiled). Then each segment: one warm-up, `runs` timed counts,
    each call within ``budget`` seconds; a segment past it is reported as
    ``{"over_budget": seconds}`` instead of timings. Peak RSS of the Python process and
    of the JVM (its child) are reported apart.
    """
    import segengine
    from segengine.engines.spark import spark_session

    start = time.perf_counter()
    session = spark_session()
    session_seconds = time.perf_counter() - start
    ready = time.time() - job["launched_at"]
    ws = segengine.open(job["workspace"])
    budget = float(job["budget"])

    def counter(files: list[str]) -> Callable[[], dict[str, Any]]:
        def count() -> dict[str, Any]:
            result = ws.count(*files, as_of=job["as_of"], engine="spark")
            return {"total": result["total"], "by_status": result["by_status"]}

        return lambda: _within_budget(session, count, budget)

    first = job["segments"][0]
    start = time.perf_counter()
    counter(first["files"])()
    first_query = time.perf_counter() - start
    results: dict[str, Any] = {}
    for seg in job["segments"]:
        try:
            results[seg["name"]] = _timed_runs(counter(seg["files"]), job["runs"])
        except QueryOverBudget:
            results[seg["name"]] = {"over_budget": budget}
    return {
        "startup": {"ready_seconds": ready, "session_seconds": session_seconds,
                    "first_query_seconds": first_query, "first_query_segment": first["name"]},
        "segments": results,
        "python_max_rss": _self_peak_rss(),
        "jvm_max_rss": _jvm_peak_rss(),
        "versions": _spark_versions(session),
    }


STEPS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "generate": generate,
    "check-data": check_data,
    "import": import_file,
    "segengine": segengine_count,
    "baseline": baseline_count,
    "export": export,
    "copy": copy,
    "index": index_build,
    "refresh-index": refresh_index,
    "extra-events": extra_events,
    "spark": spark_suite,
}


def run(job: Job) -> dict[str, Any]:
    step = STEPS.get(job["step"])
    if step is None:
        raise KeyError(f"unknown benchmark step {job['step']!r}: one of {', '.join(STEPS)}")
    return step(job)


def main(argv: list[str]) -> None:
    result = run(json.loads(argv[1]))
    sys.stdout.write(json.dumps(result, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv)
