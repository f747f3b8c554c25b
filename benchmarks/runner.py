"""The benchmark run: data, workspace, the suite through every path, the agreement check.

Every path counts every segment of the suite in the same run: segengine per engine
(warm, in-process, and once as a cold `segengine count` process) and each baseline.
All totals must be equal, or the run stops with `CountMismatch` naming the segment
and the numbers. Steps run in their own processes (`isolate=True`) so that each has
its own peak memory; the smoke test runs them in-process, which only loses memory
figures.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import worker
from .baselines import BASELINES
from .measure import BenchmarkError, Measured, Timing, child_env, machine, run_job, run_measured
from .suite import AS_OF, DATA_SEED, SUITE, BenchSegment, Scale, segment_files

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
ENGINE_ORDER = ("duckdb", "polars", "index", "auto")


class CountMismatch(BenchmarkError):
    """Two paths disagree on a segment's total: the benchmark would compare wrong answers."""


@dataclass(frozen=True)
class Options:
    scale: Scale
    runs: int = 5
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
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        keys = ("machine", "data", "imports", "engines", "baselines", "segments", "export",
                "index", "notes")
        return {"scale": self.options.scale.name, **{k: getattr(self, k) for k in keys}}


def load_run(options: Options) -> Run:
    """The last run of `options.scale`, from its results.json (to rewrite the report)."""
    path = options.cache / options.scale.name / "results.json"
    if not path.is_file():
        raise BenchmarkError(f"no results at {path}: run the benchmark first")
    saved = json.loads(path.read_text())
    saved.pop("scale")
    return Run(options, **saved)


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


# --- data and workspace ----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_data(options: Options, root: Path) -> dict[str, Any]:
    """The generated files, reused when a previous run of this scale left them complete."""
    meta_path = root / "data.json"
    scale = options.scale
    meta = _read_json(meta_path)
    wanted = {"contacts": scale.contacts, "events_target": scale.events, "seed": DATA_SEED}
    if meta and all(meta.get(k) == v for k, v in wanted.items()):
        return meta
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


def ensure_workspace(options: Options, root: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The imported workspace, reused unless `--reimport`; imports are measured when done."""
    workspace = root / "workspace"
    meta_path = root / "import.json"
    meta = _read_json(meta_path)
    if meta and not options.reimport and meta.get("data_events") == data["events"] \
            and workspace.is_dir():
        return {**meta, "reused": True}
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
    return engines


def chosen_baselines(options: Options, run: Run) -> list[str]:
    chosen = [b for b in BASELINES if b not in options.skip_baselines]
    if not options.scale.pandas and "pandas" in chosen:
        chosen.remove("pandas")
        run.notes.append(f"pandas skipped at {options.scale.name}: the events do not fit "
                         "comfortably in pandas' memory on this machine.")
    for name in options.skip_baselines:
        run.notes.append(f"baseline `{name}` skipped on request (--skip-baselines).")
    return chosen


def check_agreement(segment: str, totals: dict[str, int]) -> None:
    """Every path must return the same total, or the benchmark compares wrong answers."""
    if len(set(totals.values())) > 1:
        listing = ", ".join(f"{path}={n:,}" for path, n in totals.items())
        raise CountMismatch(f"segment {segment!r}: totals differ: {listing}")


def measure_segment(options: Options, run: Run, seg: BenchSegment, files: dict[str, Path],
                    workspace: Path, data: dict[str, Any]) -> dict[str, Any]:
    seg_files = [str(files[p]) for p in seg.parts]
    paths: dict[str, dict[str, Any]] = {}
    for engine in run.engines:
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
                                     "as_of": AS_OF, "runs": options.runs})
        paths[name] = _path_result(result, rss)
    check_agreement(seg.name, {path: r["total"] for path, r in paths.items()})
    first = next(iter(paths.values()))
    return {"name": seg.name, "kind": seg.kind, "description": seg.description,
            "total": first["total"], "by_status": first.get("by_status"), "paths": paths}


def _path_result(result: dict[str, Any], rss: int | None) -> dict[str, Any]:
    timing = Timing.of(result["times"])
    return {"total": result["total"], "by_status": result.get("by_status"),
            "warmup": result["warmup"], **timing.as_dict(), "max_rss": rss}


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
    _write_extra_events(Path(data["events_path"]), extra)
    result, rss = step(options, {"step": "index", "workspace": str(workspace),
                                 "scratch": str(root / "index-scratch"),
                                 "extra_events": str(extra)})
    run.index = {**result, "max_rss": rss}


def _write_extra_events(events: Path, out: Path) -> None:
    """A small later batch: the last campaign's events again as a new campaign, a day on."""
    import duckdb

    con = duckdb.connect()
    con.execute(
        "COPY (SELECT email, 'bench-extra' AS campaign, type, timestamp + INTERVAL 1 DAY "
        "AS timestamp, url FROM read_parquet(?) WHERE campaign = (SELECT arg_max(campaign, "
        f"timestamp) FROM read_parquet(?) WHERE type = 'sent')) TO '{out}' (FORMAT parquet)",
        [str(events), str(events)],
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
            run.notes.append(f"the cached workspace's engagement index was in an older format "
                             f"and was rebuilt first ({refreshed['seconds']:.1f} s).")
    if not run.engines:
        raise BenchmarkError(f"none of the engines {options.engines} exists in segengine")
    for seg in SUITE:
        options.log(f"segment {seg.name} ...")
        run.segments.append(measure_segment(options, run, seg, files, workspace, run.data))
    if options.extras:
        measure_export(options, run, root, workspace, run.data)
        measure_index(options, run, root, workspace, run.data)
    (root / "results.json").write_text(json.dumps(run.as_dict(), indent=1, default=str))
    return run
