"""Import and build at scale: an events file into a workspace holding only its contacts,
a later batch of events and the first count after it, and a full index build.

    python -m benchmarks.imports --base WS --events EVENTS.parquet [--extra MORE.parquet]
        --scratch DIR

`--base` is a workspace with the contacts imported and no events (it is copied, never
written). Each step runs in its own process, so its peak RSS is its own
(`benchmarks.measure`); the load average is printed beside each, as the machine may
be shared. The results go to stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from .measure import BenchmarkError, child_env, run_measured

#: the count timed before and after the later batch (an index path that reads the
#: per-contact aggregates and the event store)
SEGMENT = {"name": "opened-3x-in-90d",
           "rules": [{"activity": "opened", "count": {"gte": 3}, "when": {"in_last_days": 90}}]}
AS_OF = "2026-11-01"


def step_import(workspace: str, events: str) -> dict:
    import segengine

    start = time.perf_counter()
    summary = segengine.open(workspace).import_events(events)
    return {"seconds": time.perf_counter() - start, "imported": summary.imported,
            "duplicates": summary.duplicates, "files": len(segengine.open(workspace)
                                                           .snapshot().files("events"))}


def step_update(workspace: str, events: str) -> dict:
    """A later batch into a workspace, and the first count after it against warm ones."""
    import segengine

    ws = segengine.open(workspace)

    def count() -> float:
        start = time.perf_counter()
        ws.count(SEGMENT, as_of=AS_OF)
        return time.perf_counter() - start

    count()
    before = statistics.median(count() for _ in range(5))
    start = time.perf_counter()
    summary = ws.import_events(events)
    seconds = time.perf_counter() - start
    first = count()
    after = statistics.median(count() for _ in range(5))
    return {"seconds": seconds, "imported": summary.imported, "count_before": before,
            "first_count_after": first, "count_after": after}


def step_build(workspace: str, out: str) -> dict:
    from segengine.store.index.build import build_index
    from segengine.store.manifest import schema_of

    root = Path(workspace)
    manifest = json.loads((root / "manifest.json").read_text())
    start = time.perf_counter()
    build_index([str(root / f) for f in manifest["contacts"]],
                [str(root / f) for f in manifest["events"]], schema_of(manifest), Path(out))
    return {"seconds": time.perf_counter() - start}


STEPS = {"import": step_import, "update": step_update, "build": step_build}


def measured(step: str, *args: str) -> dict:
    load = os.getloadavg()[0]
    run = run_measured([sys.executable, "-m", "benchmarks.imports", "--step", step, *args],
                       env=child_env())
    if run.returncode != 0:
        raise BenchmarkError(f"step {step} failed:\n{run.stderr[-2000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result.update(step=step, wall=run.wall, max_rss_mib=run.max_rss / 2**20, load_1min=load)
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", choices=sorted(STEPS))
    parser.add_argument("args", nargs="*")
    parser.add_argument("--base")
    parser.add_argument("--events")
    parser.add_argument("--extra")
    parser.add_argument("--scratch")
    options = parser.parse_args(argv)
    if options.step:
        cpu = sum(os.times()[:2])
        result = STEPS[options.step](*options.args)
        # CPU of every thread of the step: on a shared machine it varies less than wall time
        result["cpu"] = sum(os.times()[:2]) - cpu
        print(json.dumps(result))
        return
    if not (options.base and options.events and options.scratch):
        parser.error("--base, --events and --scratch are required")
    scratch = Path(options.scratch)
    workspace = scratch / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(options.base, workspace, symlinks=True)
    measured("import", str(workspace), options.events)
    if options.extra:
        measured("update", str(workspace), options.extra)
    measured("build", str(workspace), str(scratch / "full-build"))
    shutil.rmtree(scratch / "full-build", ignore_errors=True)


if __name__ == "__main__":
    main()
