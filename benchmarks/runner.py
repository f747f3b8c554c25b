"""The benchmark run: data, workspace, the suite through every path, the agreement check.

Every path counts every segment of the suite in the same run: segengine per engine
(warm, in-process, and once as a cold `segengine count` process) and each baseline.
All totals must be equal, or the run stops with `CountMismatch` naming the segment
and the numbers. Steps run in their own processes (`isolate=True`) so that each has
its own peak memory; the smoke test runs them in-process, which only loses memory
figures. Spark (`SESSION_ENGINES`) runs the whole suite in one process after the
other paths, so that its start-up is measured once and apart from its warm medians.

A cache prepared outside the harness is reused as it is: data.json needs only what
identifies the data (`ensure_data`), and a workspace without import.json is reused
when its committed counts are the data's (`ensure_workspace`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import worker
from .baselines import BASELINES, OPTIONAL, installed
from .measure import BenchmarkError, Measured, Timing, child_env, machine, run_job, run_measured
from .suite import AS_OF, DATA_SEED, SCALES, SUITE, BenchSegment, Scale, segment_files

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
ENGINE_ORDER = ("duckdb", "polars", "index", "auto")
#: Engines measured in one process for the whole suite: their start-up (a JVM for
#: Spark) is measured once, apart, instead of being paid again for every segment.
SESSION_ENGINES = ("spark",)
ALL_ENGINES = (*ENGINE_ORDER, *SESSION_ENGINES)
#: The issue-6 target is an incremental update of 1M new events; smaller scales add 5%
#: of their events instead (1M at 1m and 10m).
UPDATE_TARGET_EVENTS = 1_000_000


def spark_available() -> bool:
    """PySpark importable and a `java` to start its JVM (JAVA_HOME first, as Spark does)."""
    if importlib.util.find_spec("pyspark") is None:
        return False
    java_home = os.environ.get("JAVA_HOME")
    if java_home and Path(java_home, "bin", "java").is_file():
        return True
    return shutil.which("java") is not None


def default_engines() -> tuple[str, ...]:
    """Every engine; Spark only where it can start, so `make bench` works without Java."""
    return ALL_ENGINES if spark_available() else ENGINE_ORDER


def extra_event_count(events: int) -> int:
    """Size of the batch the incremental index update imports: 1M, or 5% of small data."""
    return min(UPDATE_TARGET_EVENTS, events // 20)


class CountMismatch(BenchmarkError):
    """Two paths disagree on a segment's total: the benchmark would compare wrong answers."""


@dataclass(frozen=True)
class Options:
    scale: Scale
    runs: int = 5
    baseline_runs: int | None = None  # timed runs of the baselines (None: `runs`)
    engines: tuple[str, ...] = ENGINE_ORDER
    skip_baselines: tuple[str, ...] = ()
    reimport: bool = False
    isolate: bool = True  # each step in its own process (peak memory per step)
    cold_cli: bool = True
    extras: bool = True  # export and index measurements
    cache: Path = CACHE
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    """Everything measured; `report.write` turns it into RESULTS.md and the chart."""

    options: Options
    machine: dict[str, Any] = field(default_factory=machine)
    data: dict[str, Any] = field(default_factory=dict)
    imports: dict[str, Any] = field(default_factory=dict)
    engines: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    segments: list[dict[str, Any]] = field(default_factory=list)
    export: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] = field(default_factory=dict)
    spark: dict[str, Any] = field(default_factory=dict)
    cold: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    KEYS = ("machine", "data", "imports", "engines", "baselines", "segments", "export",
            "index", "spark", "cold", "notes")

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.options.scale.name, "runs": self.options.runs,
                "baseline_runs": self.options.baseline_runs,
                **{k: getattr(self, k) for k in self.KEYS}}


def load_run(options: Options) -> Run:
    """The last run of `options.scale`, from its results.json (to rewrite the report).

    The number of warm runs is the saved run's, not the command line's.
    """
    path = options.cache / options.scale.name / "results.json"
    if not path.is_file():
        raise BenchmarkError(f"no results at {path}: run the benchmark first")
    saved = json.loads(path.read_text())
    runs = saved.get("runs", options.runs)
    return Run(replace(options, runs=runs, baseline_runs=saved.get("baseline_runs")),
               **{k: saved[k] for k in Run.KEYS if k in saved})


def saved_scales(cache: Path) -> list[str]:
    """Scales (in `SCALES` order) whose results.json exists under `cache`."""
    return [name for name in SCALES if (cache / name / "results.json").is_file()]


# --- running steps ---------------------------------------------------------------------


def step(options: Options, job: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """(result, peak RSS in bytes or None): a fresh process, or in-process without memory."""
    if options.isolate:
        result, measured = run_job(job)
        return result, measured.max_rss
    return worker.run(job), None


def cold_count(workspace: Path, files: Sequence[Path], engine: str) -> tuple[int, Measured]:
    """One `python -m segengine count --json` process, timed as a whole (start-up included)."""
    cmd = [sys.executable, "-m", "segengine", "-w", str(workspace), "count",
           *map(str, files), "--as-of", AS_OF, "--engine", engine, "--json"]
    measured = run_measured(cmd, env=child_env())
    if measured.returncode != 0:
        raise BenchmarkError(f"segengine count failed (exit {measured.returncode}): "
                             f"{measured.stderr.strip()[-2000:]}")
    return int(json.loads(measured.stdout)["total"]), measured


#: The segment and the number of alternating pairs of the cold start comparison.
COLD_SEGMENT, COLD_PAIRS = "opened-3x-in-90d", 9
IMPORT_ENGINES = "import polars, duckdb"


def compile_package() -> None:
    """Byte-compile segengine as an installation does (pip writes the .pyc files): a cold
    process then measures start-up, not compiling the sources of an editable checkout."""
    import compileall

    import segengine

    compileall.compile_dir(Path(segengine.__file__).parent, quiet=1)


def measure_cold_start(options: Options, run: Run, files: dict[str, Path],
                       workspace: Path) -> None:
    """A one-shot `segengine count` against merely importing Polars and DuckDB.

    The two processes alternate, so both see the same load on a shared machine; the
    report compares their medians.
    """
    compile_package()
    count_cmd = [sys.executable, "-m", "segengine", "-w", str(workspace), "count",
                 str(files[COLD_SEGMENT]), "--as-of", AS_OF, "--json"]
    import_cmd = [sys.executable, "-c", IMPORT_ENGINES]
    counts, imports = [], []
    for _ in range(COLD_PAIRS):
        for cmd, walls in ((count_cmd, counts), (import_cmd, imports)):
            measured = run_measured(cmd, env=child_env())
            if measured.returncode != 0:
                raise BenchmarkError(f"{' '.join(cmd[:4])} failed: {measured.stderr[-500:]}")
            walls.append(measured.wall)
    run.cold = {"segment": COLD_SEGMENT, "pairs": COLD_PAIRS,
                "count_seconds": statistics.median(counts),
                "import_seconds": statistics.median(imports),
                "count_walls": counts, "import_walls": imports}
    options.log(f"cold count {run.cold['count_seconds'] * 1000:.0f} ms, "
                f"{IMPORT_ENGINES} {run.cold['import_seconds'] * 1000:.0f} ms")


# --- data and workspace ----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _located(meta: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """`meta` with paths that exist: as recorded, or under `root`/data (a moved cache)."""
    found = {}
    for key in ("contacts_path", "events_path"):
        recorded = Path(meta.get(key) or root / "data" / f"{key.split('_')[0]}.parquet")
        for candidate in (recorded, root / "data" / recorded.name):
            if candidate.is_file():
                found[key] = str(candidate)
                break
        else:
            return None
    return {**meta, **found}


def _completed(meta: dict[str, Any]) -> dict[str, Any]:
    """Figures the report needs that a hand-made data.json may lack, read from the files.

    Generation time and memory cannot be recovered: they stay unknown (``None``).
    """
    import duckdb
    import pyarrow.parquet as pq

    contacts, events = Path(meta["contacts_path"]), Path(meta["events_path"])
    out = {"generate_seconds": None, "generate_max_rss": None, **meta,
           "contacts_bytes": contacts.stat().st_size, "events_bytes": events.stat().st_size}
    if "events" not in meta:
        out["events"] = pq.ParquetFile(events).metadata.num_rows
    if "campaigns" not in meta:
        out["campaigns"] = duckdb.connect().execute(
            "SELECT count(DISTINCT campaign) FROM read_parquet(?)", [str(events)]
        ).fetchall()[0][0]
    return out


def ensure_data(options: Options, root: Path) -> dict[str, Any]:
    """The generated files, reused when this scale's data.json describes them.

    A data.json needs only contacts, events_target and seed (a cache prepared by hand,
    or moved: paths are also looked for under `root`/data); what else the report needs
    is read from the files, and the data is never generated again if they exist.
    """
    meta_path = root / "data.json"
    scale = options.scale
    meta = _read_json(meta_path)
    wanted = {"contacts": scale.contacts, "events_target": scale.events, "seed": DATA_SEED}
    if meta and all(meta.get(k) == v for k, v in wanted.items()):
        located = _located(meta, root)
        if located is not None:
            completed = _completed(located)
            if completed != meta:
                meta_path.write_text(json.dumps(completed, indent=1))
            return completed
    out = root / "data"
    shutil.rmtree(out, ignore_errors=True)
    options.log(f"generating {scale.contacts:,} contacts / {scale.events:,} events ...")
    generated, rss = step(options, {"step": "generate", "dir": str(out), "contacts": scale.contacts,
                                    "events": scale.events, "seed": DATA_SEED})
    checks, _ = step(options, {"step": "check-data", "contacts": generated["contacts_path"],
                               "events": generated["events_path"]})
    if checks["duplicate_emails"] or checks["duplicate_events"]:
        raise BenchmarkError(f"generated data breaks the baselines' assumptions: {checks}")
    meta = {**wanted, "events": generated["events"], "campaigns": generated["campaigns"],
            "contacts_path": generated["contacts_path"], "events_path": generated["events_path"],
            "generate_seconds": generated["seconds"], "generate_max_rss": rss,
            "contacts_bytes": Path(generated["contacts_path"]).stat().st_size,
            "events_bytes": Path(generated["events_path"]).stat().st_size, **checks}
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _workspace_counts(workspace: Path) -> dict[str, int] | None:
    """The committed contact and event counts of a workspace, or None if there is none."""
    manifest = _read_json(workspace / "manifest.json")
    return manifest.get("counts") if manifest else None


def ensure_workspace(options: Options, root: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The imported workspace, reused unless `--reimport`; imports are measured when done.

    Reused when import.json says it holds this data, or, without import.json (imported
    outside the harness), when its committed counts are the data's; the import figures
    are then unknown.
    """
    workspace = root / "workspace"
    meta_path = root / "import.json"
    meta = _read_json(meta_path)
    counts = _workspace_counts(workspace)
    holds_data = counts == {"contacts": data["contacts"], "events": data["events"]}
    if not options.reimport and counts is not None:
        if meta and meta.get("data_events") == data["events"]:
            return {**meta, "reused": True}
        if holds_data:
            return {"data_events": data["events"], "reused": True, "outside": True}
    shutil.rmtree(workspace, ignore_errors=True)
    meta_path.unlink(missing_ok=True)
    meta = {"data_events": data["events"]}
    for kind in ("contacts", "events"):
        options.log(f"importing {kind} ...")
        result, rss = step(options, {"step": "import", "kind": kind, "workspace": str(workspace),
                                     "path": data[f"{kind}_path"]})
        meta[kind] = {**result, "rows_per_second": result["read"] / result["seconds"],
                      "max_rss": rss}
    meta_path.write_text(json.dumps(meta, indent=1))
    return {**meta, "reused": False}


# --- the suite -------------------------------------------------------------------------


def available_engines(options: Options, run: Run) -> list[str]:
    from segengine.engines import ENGINES

    engines = [e for e in options.engines if e in ENGINES]
    for missing in (e for e in options.engines if e not in ENGINES):
        run.notes.append(f"engine `{missing}` is not registered in segengine yet: not measured.")
    if "spark" in engines and not spark_available():
        engines.remove("spark")
        run.notes.append("engine `spark` not measured: PySpark or Java is missing "
                         "(`pip install -e .[spark]` and Java 17+).")
    return engines


def chosen_baselines(options: Options, run: Run) -> list[str]:
    """The baselines to run; each one left out is noted once, with why."""
    skipped = set(options.skip_baselines)
    if not options.scale.pandas:
        run.notes.append(f"pandas skipped at {options.scale.name}: the events do not fit "
                         "comfortably in pandas' memory on this machine.")
        skipped.discard("pandas")
    run.notes += [f"baseline `{name}` skipped on request (--skip-baselines)."
                  for name in BASELINES if name in skipped]
    absent = [b for b in BASELINES if b not in skipped and not installed(b)]
    run.notes += [f"baseline `{name}` not measured: `{OPTIONAL[name]}` is not installed "
                  "(`pip install -e .[bench]`)." for name in absent]
    return [b for b in BASELINES if b not in skipped and b not in absent
            and (b != "pandas" or options.scale.pandas)]


def check_agreement(segment: str, totals: dict[str, int]) -> None:
    """Every path must return the same total, or the benchmark compares wrong answers."""
    if len(set(totals.values())) > 1:
        listing = ", ".join(f"{path}={n:,}" for path, n in totals.items())
        raise CountMismatch(f"segment {segment!r}: totals differ: {listing}")


def measure_segment(options: Options, run: Run, seg: BenchSegment, files: dict[str, Path],
                    workspace: Path, data: dict[str, Any]) -> dict[str, Any]:
    seg_files = [str(files[p]) for p in seg.parts]
    paths: dict[str, dict[str, Any]] = {}
    for engine in (e for e in run.engines if e not in SESSION_ENGINES):
        result, rss = step(options, {"step": "segengine", "workspace": str(workspace),
                                     "engine": engine, "files": seg_files, "as_of": AS_OF,
                                     "runs": options.runs})
        paths[f"segengine-{engine}"] = _path_result(result, rss)
        if options.cold_cli:
            total, measured = cold_count(workspace, [Path(f) for f in seg_files], engine)
            paths[f"cli-{engine}"] = {"total": total, "cold": measured.wall,
                                      "max_rss": measured.max_rss}
    for name in run.baselines:
        result, rss = step(options, {"step": "baseline", "baseline": name,
                                     "contacts": data["contacts_path"],
                                     "events": data["events_path"], "parts": list(seg.parts),
                                     "as_of": AS_OF, "runs": options.baseline_runs or options.runs,
                                     "work": str(options.cache / options.scale.name / "baselines")})
        paths[name] = _path_result(result, rss)
    check_agreement(seg.name, {path: r["total"] for path, r in paths.items()})
    first = next(iter(paths.values()))
    return {"name": seg.name, "kind": seg.kind, "description": seg.description,
            "total": first["total"], "by_status": first.get("by_status"), "paths": paths}


#: Seconds a Spark query may run before it is cancelled: a plan that Spark makes quadratic
#: (a nested-loop join, as `nested-negation` was before the Spark dialect used EXISTS)
#: must not stall the rest of the suite; the others take seconds.
SPARK_QUERY_BUDGET = 180.0


def measure_spark(options: Options, run: Run, files: dict[str, Path], workspace: Path) -> None:
    """The whole suite through `--engine spark` in one process, after the other paths.

    One session serves every segment, as in a Spark job: its start-up (process start to
    a session ready, then the first query, which registers the views and compiles the
    first plan) is measured once, apart from the per-segment warm medians. Spark's
    totals join each segment's agreement check; a segment whose query ran past
    `SPARK_QUERY_BUDGET` has no Spark timings and is listed in ``run.spark``.
    """
    options.log("spark: starting a session, then the whole suite ...")
    job = {"step": "spark", "workspace": str(workspace), "as_of": AS_OF, "runs": options.runs,
           "segments": [{"name": s.name, "files": [str(files[p]) for p in s.parts]}
                        for s in SUITE],
           "budget": SPARK_QUERY_BUDGET, "launched_at": time.time()}
    result, rss = step(options, job)
    over_budget = {}
    for seg in run.segments:
        measured = result["segments"][seg["name"]]
        if "over_budget" in measured:
            over_budget[seg["name"]] = measured["over_budget"]
            continue
        seg["paths"]["segengine-spark"] = _path_result(measured, result["python_max_rss"])
        check_agreement(seg["name"], {p: r["total"] for p, r in seg["paths"].items()})
    run.spark = {**result["startup"], "python_max_rss": result["python_max_rss"],
                 "jvm_max_rss": result["jvm_max_rss"], "process_max_rss": rss,
                 "versions": result["versions"], "over_budget": over_budget}


def _path_result(result: dict[str, Any], rss: int | None) -> dict[str, Any]:
    timing = Timing.of(result["times"])
    out = {"total": result["total"], "by_status": result.get("by_status"),
           "warmup": result["warmup"], **timing.as_dict(), "max_rss": rss}
    if "load_seconds" in result:  # a baseline's tables, loaded once before its counts
        out["load_seconds"] = result["load_seconds"]
    return out


# --- export and index ------------------------------------------------------------------

EXPORT_SEGMENT = {"name": "everyone", "rules": []}


def measure_export(options: Options, run: Run, root: Path, workspace: Path,
                   data: dict[str, Any]) -> None:
    import segengine

    if not hasattr(segengine.Workspace, "export"):
        run.notes.append("export not measured: `Workspace.export` does not exist yet "
                         "(segengine/export.py is being written).")
        return
    out = root / "export"
    out.mkdir(exist_ok=True)
    definition = out / "everyone.json"
    definition.write_text(json.dumps(EXPORT_SEGMENT))
    columns = ["email", *segengine.open(workspace).snapshot().schema.custom_fields]
    for fmt in ("csv", "parquet"):
        try:
            ours, ours_rss = step(options, {"step": "export", "workspace": str(workspace),
                                            "files": [str(definition)], "as_of": AS_OF,
                                            "format": fmt, "output": str(out / f"ours.{fmt}")})
        except (BenchmarkError, RuntimeError) as exc:
            run.notes.append(f"export to {fmt} not measured: {str(exc).strip()[-300:]}")
            continue
        theirs, theirs_rss = step(options, {"step": "copy", "contacts": data["contacts_path"],
                                            "columns": columns, "format": fmt,
                                            "output": str(out / f"copy.{fmt}")})
        if ours["rows"] != theirs["rows"]:
            raise CountMismatch(f"export {fmt}: segengine wrote {ours['rows']:,} rows, "
                                f"DuckDB COPY {theirs['rows']:,}")
        run.export[fmt] = {"segengine": {**ours, "max_rss": ours_rss},
                           "duckdb_copy": {**theirs, "max_rss": theirs_rss},
                           "columns": columns}


def measure_index(options: Options, run: Run, root: Path, workspace: Path,
                  data: dict[str, Any]) -> None:
    if "index" not in run.engines:
        run.notes.append("engagement-index build and incremental update not measured: "
                         "the `index` engine is not registered (or not requested).")
        return
    extra = root / "extra-events.parquet"
    # In a worker, not here: DuckDB over all events would raise this process's peak
    # memory, and every later child would report it as its own (see measure.py).
    step(options, {"step": "extra-events", "events": str(data["events_path"]),
                   "out": str(extra), "n": extra_event_count(data["events"])})
    result, rss = step(options, {"step": "index", "workspace": str(workspace),
                                 "scratch": str(root / "index-scratch"),
                                 "extra_events": str(extra)})
    run.index = {**result, "max_rss": rss}


def write_extra_events(events: Path, out: Path, n: int) -> None:
    """A later batch of `n` events: the latest campaigns' events again, as new campaigns.

    Campaigns are taken from the latest send backwards until `n` events are covered
    (the last one taken in time order), renamed ``bench-extra-<id>`` and moved past the
    data's last event, so the batch holds no duplicate and only appends.
    """
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"""COPY (
        WITH ev AS (SELECT * FROM read_parquet(?)),
        sizes AS (
            SELECT campaign, min(timestamp) FILTER (WHERE type = 'sent') AS sent, count(*) AS n
            FROM ev GROUP BY campaign),
        taken AS (
            SELECT campaign, sum(n) OVER (ORDER BY sent DESC NULLS LAST, campaign DESC
                                          ROWS UNBOUNDED PRECEDING) - n AS prior
            FROM sizes QUALIFY prior < ?),
        picked AS (SELECT ev.*, taken.prior FROM ev JOIN taken USING (campaign)),
        shift AS (SELECT (SELECT max(timestamp) FROM ev) - min(timestamp) + INTERVAL 1 DAY
                  AS delta FROM picked)
        SELECT email, 'bench-extra-' || campaign AS campaign, type,
               timestamp + (SELECT delta FROM shift) AS timestamp, url
        FROM picked ORDER BY prior, timestamp, email, type LIMIT ?
        ) TO '{out}' (FORMAT parquet)""",
        [str(events), n, n],
    )


# --- entry point -----------------------------------------------------------------------


def execute(options: Options) -> Run:
    """Run the whole benchmark for one scale and return the measurements."""
    run = Run(options)
    root = options.cache / options.scale.name
    root.mkdir(parents=True, exist_ok=True)
    run.data = ensure_data(options, root)
    run.imports = ensure_workspace(options, root, run.data)
    workspace = root / "workspace"
    files = segment_files(root / "segments")
    run.engines = available_engines(options, run)
    run.baselines = chosen_baselines(options, run)
    if "index" in run.engines:
        refreshed, _ = step(options, {"step": "refresh-index", "workspace": str(workspace)})
        if refreshed["rebuilt"]:
            run.notes.append("the cached workspace's engagement index predates this "
                             "segengine's index code and was rebuilt first "
                             f"({refreshed['seconds']:.1f} s).")
    if not run.engines:
        raise BenchmarkError(f"none of the engines {options.engines} exists in segengine")
    if options.cold_cli and "auto" in run.engines:
        measure_cold_start(options, run, files, workspace)
    for seg in SUITE:
        options.log(f"segment {seg.name} ...")
        run.segments.append(measure_segment(options, run, seg, files, workspace, run.data))
    loads = {name: r["load_seconds"] for seg in run.segments
             for name, r in seg["paths"].items() if "load_seconds" in r}
    run.notes += [f"baseline `{name}` loaded its tables once in {seconds:,.1f} s, before and "
                  "outside its timed counts." for name, seconds in loads.items()]
    if "spark" in run.engines:
        try:
            measure_spark(options, run, files, workspace)
        except CountMismatch:
            raise
        except BenchmarkError as exc:  # Spark did not start or a query failed: keep the rest
            run.engines.remove("spark")
            run.notes.append(f"engine `spark` not measured: {str(exc).strip()[-500:]}")
    if options.extras:
        measure_export(options, run, root, workspace, run.data)
        measure_index(options, run, root, workspace, run.data)
    (root / "results.json").write_text(json.dumps(run.as_dict(), indent=1, default=str))
    return run
