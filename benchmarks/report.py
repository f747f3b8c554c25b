"""RESULTS.md and ratios.png from the finished runs, one section per scale.

Ratios, not absolute times, carry the summary: a ratio is a path's warm median over
the fastest baseline's warm median on the same segment, in the same run, so the
machine's speed and load largely cancel out. Absolute times and memory are in the
detail tables for whoever needs them.

Every scale with a results.json under benchmarks/.cache/<scale>/ gets its section
(1m, then 10m; tiny and small only when neither exists), so running one scale
rewrites its own section and keeps the others. Each section checks the issue-6
targets against its own run (`targets`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .runner import UPDATE_TARGET_EVENTS, Run, load_run, saved_scales
from .suite import AS_OF, SCALES, SUITE

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
CHART = HERE / "ratios.png"
MIB = 2**20


def fastest_baseline(segment: dict[str, Any], baselines: Iterable[str]) -> tuple[str, float]:
    name = min(baselines, key=lambda b: segment["paths"][b]["median"])
    return name, segment["paths"][name]["median"]


def ratios(run: Run) -> dict[str, dict[str, float]]:
    """path -> segment -> warm median / fastest baseline's warm median.

    A segment a path has no timing for (a Spark query over its budget) is left out.
    """
    warm = [f"segengine-{e}" for e in run.engines] + list(run.baselines)
    out: dict[str, dict[str, float]] = {p: {} for p in warm}
    for seg in run.segments:
        _, best = fastest_baseline(seg, run.baselines)
        for path in (p for p in warm if p in seg["paths"]):
            out[path][seg["name"]] = seg["paths"][path]["median"] / best
    return out


def geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:,.1f}" if ms >= 1 else f"{ms:.2f}"


def _x(ratio: float) -> str:
    """A ratio with two significant digits or more: 0.004x not as 0.00x, 285x not 284.60x."""
    if ratio >= 10:
        return f"{ratio:,.0f}x"
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _machine(run: Run) -> list[str]:
    m = run.machine
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    return [
        "## Machine",
        "",
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} usable cores; RAM {m['ram_bytes'] / 2**30:.1f} GiB; "
        f"{m['os']}; Python {m['python']}",
        f"- libraries: {libs}",
        f"- load average when the run started: {m['load_average'][0]:.1f} (1 min), "
        f"{m['load_average'][2]:.1f} (15 min); other jobs shared the machine when this is "
        "above the core count, which is why the summary quotes ratios measured side by side",
        "",
    ]


def _data(run: Run) -> list[str]:
    d = run.data
    generated = (f"generated in {d['generate_seconds']:.1f} s, peak RSS "
                 f"{_mib(d['generate_max_rss'])} MiB" if d.get("generate_seconds") is not None
                 else "generated outside the harness (time and memory not measured)")
    lines = [
        "## Data",
        "",
        f"- scale `{run.options.scale.name}`: {d['contacts']:,} contacts, {d['events']:,} events "
        f"({d['campaigns']} campaigns), seed {d['seed']}; raw Parquet "
        f"{d['contacts_bytes'] / MIB:,.0f} MiB + {d['events_bytes'] / MIB:,.0f} MiB",
        f"- {generated}",
        f"- segments evaluated with `as_of = {AS_OF}`; {_runs(run)} after one warm-up per "
        "path and segment",
        "",
    ]
    return [*lines, *_imports(run.imports)]


def _runs(run: Run) -> str:
    """How many timed warm runs each path had."""
    runs, baseline = run.options.runs, run.options.baseline_runs
    if baseline is None or baseline == runs:
        return f"{runs} warm runs"
    return (f"{runs} warm runs of each segengine path, {baseline} of each baseline "
            "(whose counts take seconds: their medians are of fewer runs)")


def _imports(imp: dict[str, Any]) -> list[str]:
    heading = ["### Import (`Workspace.import_contacts` / `import_events`, Parquet input)", ""]
    if imp.get("outside"):
        return [*heading, "The workspace was imported outside the harness: import not "
                "measured here (`--reimport` measures it).", ""]
    rows = [
        [kind, f"{imp[kind]['read']:,}", f"{imp[kind]['seconds']:.1f}",
         f"{imp[kind]['rows_per_second']:,.0f}", _mib(imp[kind]["max_rss"])]
        for kind in ("contacts", "events")
    ]
    lines = [*heading, *_table(["table", "rows", "seconds", "rows/s", "peak RSS MiB"], rows)]
    if imp.get("reused"):
        lines += ["", "(import measured when the cached workspace was built; `--reimport` "
                  "measures it again)"]
    return [*lines, ""]


def _summary(run: Run) -> list[str]:
    r = ratios(run)
    kinds = sorted({s["kind"] for s in run.segments}, key=[s["kind"] for s in run.segments].index)
    header = ["path", "all segments", *kinds]
    rows = []
    for path, by_seg in r.items():
        cells = [_x(geomean(by_seg.values()))]
        for kind in kinds:
            kept = [by_seg[s["name"]] for s in run.segments
                    if s["kind"] == kind and s["name"] in by_seg]
            cells.append(_x(geomean(kept)) if kept else "n/a")
        rows.append([path, *cells])
    wins = {
        path: (sum(1 for v in by_seg.values() if v <= 1.0), len(by_seg))
        for path, by_seg in r.items() if path.startswith("segengine-")
    }
    lines = [
        "## Summary",
        "",
        "Geometric mean, over the segments, of each path's warm median divided by the fastest "
        "hand-written baseline's warm median on the same segment (below 1 = faster than the "
        "best baseline):",
        "",
        *_table(header, rows),
        "",
    ]
    lines += [f"- `{path}` is at least as fast as the best baseline on {n} of "
              f"{measured} segments." for path, (n, measured) in wins.items()]
    lines += [f"- `{path}` has no timing for {len(run.segments) - len(by_seg)} segment(s) "
              "(over the Spark query budget, see Spark): its means are over the others."
              for path, by_seg in r.items() if len(by_seg) < len(run.segments)]
    cold = _cold_summary(run)
    if cold:
        lines.append(cold)
    return [*lines, ""]


def _cold_summary(run: Run) -> str:
    parts = []
    for engine in run.engines:
        key = f"cli-{engine}"
        walls = [s["paths"][key]["cold"] for s in run.segments if key in s["paths"]]
        warm = [s["paths"][f"segengine-{engine}"]["median"] for s in run.segments
                if key in s["paths"]]
        if walls:
            ratio = geomean(w / m for w, m in zip(walls, warm, strict=True))
            parts.append(f"`{engine}` {ratio:.1f}x its warm median")
    if not parts:
        return ""
    return ("- a cold `python -m segengine count --json` process (start-up, imports, "
            "engine set-up included) takes, in geometric mean: " + "; ".join(parts) + ".")


def _per_segment(run: Run) -> list[str]:
    warm = [f"segengine-{e}" for e in run.engines] + list(run.baselines)
    header = ["segment", "total", "fastest baseline", *warm]
    rows = []
    for seg in run.segments:
        best_name, best = fastest_baseline(seg, run.baselines)
        cells = [_x(seg["paths"][p]["median"] / best) if p in seg["paths"] else "n/a"
                 for p in warm]
        rows.append([f"`{seg['name']}`", f"{seg['total']:,}", f"{best_name} {_ms(best)} ms",
                     *cells])
    return ["## Ratio to the fastest baseline, per segment", "",
            *_table(header, rows), ""]


def _details(run: Run) -> list[str]:
    header = ["segment", "path", "median ms", "min-max ms", "ratio", "cold ms", "peak RSS MiB"]
    rows = []
    for seg in run.segments:
        _, best = fastest_baseline(seg, run.baselines)
        for path, r in seg["paths"].items():
            if path.startswith("cli-"):
                continue
            cli = seg["paths"].get(path.replace("segengine-", "cli-"), {}) \
                if path.startswith("segengine-") else {}
            cold = f"{_ms(cli['cold'])} ({_mib(cli['max_rss'])} MiB)" if cli else ""
            rows.append([f"`{seg['name']}`", path, _ms(r["median"]),
                         f"{_ms(r['min'])}-{_ms(r['max'])}", _x(r["median"] / best), cold,
                         _mib(r["max_rss"])])
    return [
        "## Details",
        "",
        "Warm: one process per path and segment (Spark: one for the suite); one warm-up "
        "call, then the timed calls. `cold ms` is one `python -m segengine count --json` "
        "process timed as a whole (with its own peak RSS). Peak RSS is the step process's "
        "`ru_maxrss` (warm-up and all runs; Spark: its Python process, for the suite).",
        "",
        "<details><summary>Every path on every segment</summary>",
        "",
        *_table(header, rows),
        "",
        "</details>",
        "",
        "Segments:",
        "",
        *[f"- `{s['name']}` ({s['kind']}): {s['description']}" for s in run.segments],
        "",
    ]


def _export(run: Run) -> list[str]:
    if not run.export:
        return []
    rows = []
    for fmt, r in run.export.items():
        ours, theirs = r["segengine"], r["duckdb_copy"]
        rows.append([fmt, f"{ours['rows']:,}",
                     f"{ours['rows'] / ours['seconds']:,.0f}",
                     f"{theirs['rows'] / theirs['seconds']:,.0f}",
                     f"{ours['seconds'] / theirs['seconds']:.2f}x",
                     f"{_mib(ours['max_rss'])} / {_mib(theirs['max_rss'])}"])
    columns = ", ".join(next(iter(run.export.values()))["columns"])
    return [
        "## Export",
        "",
        "All active contacts ordered by email, default columns "
        f"({columns}): `Workspace.export` against DuckDB `COPY (SELECT ... ORDER BY email) TO` "
        "over the raw contacts file. segengine's CSV also guards against formula injection.",
        "",
        *_table(["format", "rows", "segengine rows/s", "DuckDB COPY rows/s", "time ratio",
                 "peak RSS MiB (segengine / COPY)"], rows),
        "",
    ]


def _update_kind(index: dict) -> str:
    if not index["incremental"]:
        return "rebuilt in full, not extended"
    if index.get("aggregates_delta"):
        return "extended; per-contact aggregates written as a delta over the previous base"
    return "extended"


def _index(run: Run) -> list[str]:
    if not run.index:
        return []
    i = run.index
    return [
        "## Engagement index",
        "",
        f"- full build over the workspace's files (`segengine.store.index.build_index`): "
        f"{i['full_seconds']:.2f} s",
        f"- update: importing a later batch of {i['extra_events']:,} events (the latest "
        "campaigns' events again, as new campaigns) into a copy of the workspace, index "
        "refreshed in the same commit ("
        f"{_update_kind(i)}): {i['update_seconds']:.2f} s",
        f"- peak RSS of the step: {_mib(i['max_rss'])} MiB",
        "- every import commit also refreshes the index, so the import figures above "
        "include building it",
        "",
    ]


# --- the issue-6 targets --------------------------------------------------------------

#: Behavioral segments that `auto` must count in <= 10 ms and >= 100x faster than SQL.
BEHAVIORAL_TARGETS = ("never-opened", "opened-nl-0034-in-september",
                      "ca-pricing-clickers-30d", "opened-any-of-last-5")
#: Field-only segments: the suite's `field` kind, and the seed's state-ca.
FIELD_TARGETS = (*(s.name for s in SUITE if s.kind == "field"), "state-ca")
AUTO_LIMIT = 0.010  # seconds
UNION_LIMIT = 0.020
SPEEDUP = 100.0
BUILD_LIMIT = 300.0
UPDATE_LIMIT = 10.0
RSS_LIMIT = 8 * 10**9  # bytes: "8 GB"
POLARS_LIMIT = 2.0
MET, MISSED, UNMEASURED = "met", "**missed**", "not measured"


@dataclass(frozen=True)
class Outcome:
    """One target checked against one run: what was asked, what was measured, verdict."""

    target: str
    measured: str
    status: str


def _verdict(ok: bool) -> str:
    return MET if ok else MISSED


def _median(run: Run, segment: str, path: str) -> float | None:
    seg = next((s for s in run.segments if s["name"] == segment), None)
    result = seg["paths"].get(path) if seg else None
    return result["median"] if result else None


def _auto_within(run: Run, segment: str, limit: float) -> Outcome:
    target = f"`{segment}` by `auto`: warm median ≤ {limit * 1000:.0f} ms"
    median = _median(run, segment, "segengine-auto")
    if median is None:
        return Outcome(target, "", UNMEASURED)
    return Outcome(target, f"{_ms(median)} ms", _verdict(median <= limit))


def _auto_speedup(run: Run, segment: str) -> Outcome:
    target = f"`{segment}` by `auto`: ≥ {SPEEDUP:.0f}x faster than hand-written DuckDB SQL"
    auto = _median(run, segment, "segengine-auto")
    sql = _median(run, segment, "duckdb-sql")
    if auto is None or sql is None:
        return Outcome(target, "", UNMEASURED)
    speedup = sql / auto
    return Outcome(target, f"{speedup:,.0f}x ({_ms(sql)} ms / {_ms(auto)} ms)",
                   _verdict(speedup >= SPEEDUP))


def _index_build(run: Run) -> Outcome:
    target = f"engagement-index build over all events ≤ {BUILD_LIMIT / 60:.0f} min"
    if not run.index:
        return Outcome(target, "", UNMEASURED)
    seconds = run.index["full_seconds"]
    return Outcome(target, f"{seconds:,.1f} s", _verdict(seconds <= BUILD_LIMIT))


def _index_update(run: Run) -> Outcome:
    target = (f"incremental update with {UPDATE_TARGET_EVENTS / 1e6:.0f}M new events "
              f"≤ {UPDATE_LIMIT:.0f} s")
    if not run.index:
        return Outcome(target, "", UNMEASURED)
    seconds, events = run.index["update_seconds"], run.index["extra_events"]
    measured = f"{seconds:.2f} s for {events:,} events"
    if not run.index["incremental"]:
        measured += " (the index was rebuilt in full, not extended)"
    if events < UPDATE_TARGET_EVENTS:
        return Outcome(target, measured, "n/a (smaller batch at this scale)")
    return Outcome(target, measured, _verdict(seconds <= UPDATE_LIMIT))


def step_peaks(run: Run) -> list[tuple[str, int]]:
    """(step, peak RSS in bytes) of every segengine step whose memory was measured.

    Baselines and DuckDB COPY are not segengine's and stay out; the Spark step counts
    its Python process and its JVM together.
    """
    peaks = [("generate the data", run.data.get("generate_max_rss"))]
    peaks += [(f"import {kind}", run.imports[kind].get("max_rss"))
              for kind in ("contacts", "events") if kind in run.imports]
    peaks += [(f"`{path}` on `{seg['name']}`", r.get("max_rss"))
              for seg in run.segments for path, r in seg["paths"].items()
              if path.startswith(("segengine-", "cli-")) and path != "segengine-spark"]
    peaks += [(f"export to {fmt}", r["segengine"].get("max_rss"))
              for fmt, r in run.export.items()]
    if run.index:
        peaks.append(("index build and update", run.index.get("max_rss")))
    if run.spark:
        parts = [run.spark.get("python_max_rss"), run.spark.get("jvm_max_rss")]
        if all(p is not None for p in parts):
            peaks.append(("Spark session (Python + JVM)", sum(parts)))
    return [(name, int(value)) for name, value in peaks if value is not None]


def _peak_memory(run: Run) -> Outcome:
    target = "peak RSS of every segengine step ≤ 8 GB"
    peaks = step_peaks(run)
    if not peaks:
        return Outcome(target, "", UNMEASURED)
    name, peak = max(peaks, key=lambda p: p[1])
    return Outcome(target, f"{peak / 1e9:.2f} GB at most ({name}; {len(peaks)} steps)",
                   _verdict(peak <= RSS_LIMIT))


def _polars_vs_duckdb(run: Run) -> Outcome:
    target = f"Polars engine within {POLARS_LIMIT:.0f}x of the DuckDB engine (geometric mean)"
    pairs = [(_median(run, s["name"], "segengine-polars"),
              _median(run, s["name"], "segengine-duckdb")) for s in run.segments]
    if not pairs or any(p is None or d is None for p, d in pairs):
        return Outcome(target, "", UNMEASURED)
    ratio = geomean(p / d for p, d in pairs)
    return Outcome(target, f"{ratio:.2f}x over {len(pairs)} segments",
                   _verdict(ratio <= POLARS_LIMIT))


#: A one-shot count answered from the index, against `python -c "import polars, duckdb"`.
COLD_LIMIT = 0.6


def _cold_start(run: Run) -> Outcome:
    target = (f"cold `segengine count` ≤ {COLD_LIMIT}x the time of "
              "`python -c \"import polars, duckdb\"` (issue 21)")
    cold = getattr(run, "cold", None)
    if not cold:
        return Outcome(target, "", UNMEASURED)
    ratio = cold["count_seconds"] / cold["import_seconds"]
    measured = (f"{ratio:.2f}x ({_ms(cold['count_seconds'])} ms / "
                f"{_ms(cold['import_seconds'])} ms, medians of {cold['pairs']} alternating "
                f"pairs, `{cold['segment']}`)")
    return Outcome(target, measured, _verdict(ratio <= COLD_LIMIT))


def targets(run: Run) -> list[Outcome]:
    """Every issue-6 target, checked against this run's own figures."""
    checks: list[Callable[[Run], Outcome]] = []
    for name in BEHAVIORAL_TARGETS:
        checks += [lambda r, n=name: _auto_within(r, n, AUTO_LIMIT),
                   lambda r, n=name: _auto_speedup(r, n)]
    checks += [lambda r, n=name: _auto_within(r, n, AUTO_LIMIT) for name in FIELD_TARGETS]
    checks += [lambda r: _auto_within(r, "union-of-3", UNION_LIMIT), _index_build,
               _index_update, _peak_memory, _polars_vs_duckdb, _cold_start]
    return [check(run) for check in checks]


def _targets(run: Run) -> list[str]:
    outcomes = targets(run)
    met = sum(1 for o in outcomes if o.status == MET)
    judged = sum(1 for o in outcomes if o.status in (MET, MISSED))
    rows = [[o.target, o.measured, o.status] for o in outcomes]
    return [
        "## Targets (issue 6)",
        "",
        f"{met} of {judged} targets met in this run (warm medians; the machine's load "
        "weighs on the absolute times).",
        "",
        *_table(["target", "measured", "status"], rows),
        "",
    ]


# --- Spark ------------------------------------------------------------------------------


def _ratio_cell(numerator: float | None, denominator: float | None) -> str:
    return _x(numerator / denominator) if numerator and denominator else "n/a"


def _spark_row(run: Run, seg: dict[str, Any], over: dict[str, float]) -> list[str]:
    """One segment: Spark's warm median next to the DuckDB engine's and auto's."""
    duck = _median(run, seg["name"], "segengine-duckdb")
    auto = _median(run, seg["name"], "segengine-auto")
    cells = [f"`{seg['name']}`", f"{seg['total']:,}"]
    if seg["name"] in over:  # cancelled: the budget is a lower bound of its time
        budget = over[seg["name"]]
        return [*cells, f"> {budget * 1000:,.0f} (cancelled)", _ms(duck) if duck else "n/a",
                _ms(auto) if auto else "n/a", f"> {_ratio_cell(budget, duck)}",
                f"> {_ratio_cell(budget, auto)}"]
    spark = seg["paths"]["segengine-spark"]["median"]
    return [*cells, _ms(spark), _ms(duck) if duck else "n/a", _ms(auto) if auto else "n/a",
            _ratio_cell(spark, duck), _ratio_cell(spark, auto)]


def _spark_means(run: Run, other: str) -> list[float]:
    """Spark's warm median over `other`'s, on every segment both have."""
    return [s["paths"]["segengine-spark"]["median"] / s["paths"][other]["median"]
            for s in run.segments if "segengine-spark" in s["paths"] and other in s["paths"]]


def _spark(run: Run) -> list[str]:
    if not run.spark:
        return []
    sp = run.spark
    over = sp.get("over_budget", {})
    rows = [_spark_row(run, seg, over) for seg in run.segments]
    to_duckdb = _spark_means(run, "segengine-duckdb")
    to_auto = _spark_means(run, "segengine-auto")
    g_duck, g_auto = geomean(to_duckdb), geomean(to_auto)
    rows.append([f"geometric mean ({len(to_duckdb)} segments)", "", "", "", "",
                 _x(g_duck) if to_duckdb else "n/a", _x(g_auto) if to_auto else "n/a"])
    v = sp["versions"]
    first = sp["ready_seconds"] + sp["first_query_seconds"]
    cancelled = [
        f"- cancelled after {budget:.0f} s (the harness's budget per Spark query), so "
        f"without a warm median: `{name}`; the means leave it out, which flatters Spark"
        for name, budget in over.items()
    ]
    return [
        f"## Spark (`--engine spark`, Spark {v['spark']}, Java {v['java']}, `{v['master']}`)",
        "",
        f"- start-up: {sp['ready_seconds']:.1f} s from process start to a SparkSession "
        f"ready (of which {sp['session_seconds']:.1f} s to start the JVM and the session), "
        f"then {sp['first_query_seconds']:.1f} s for the first query (`{sp['first_query_segment']}`: "
        "views registered over the workspace's Parquet, first plan compiled): "
        f"**{first:.0f} s to the first answer**",
        f"- peak RSS: Python process {_mib(sp['python_max_rss'])} MiB, JVM "
        f"{_mib(sp['jvm_max_rss'])} MiB (the driver heap of a local session segengine "
        "starts is 4 GiB, `segengine.engines.spark.LOCAL_DRIVER_MEMORY`; in local mode the "
        "driver also runs the tasks)",
        "- warm: one session for the whole suite, measured after the other paths; "
        "`ws.count(..., engine=\"spark\")` over the workspace's Parquet; same totals as "
        "every other path",
        *cancelled,
        "",
        *_table(["segment", "total", "spark ms", "duckdb engine ms", "auto ms",
                 "spark / duckdb", "spark / auto"], rows),
        "",
        f"On one machine Spark takes {_x(g_duck)} the DuckDB engine's time and "
        f"{_x(g_auto)} `auto`'s in geometric mean, after {first:.0f} s of start-up. "
        "That is the price of a JVM, a scheduler and a query planner for every statement, "
        "which buys nothing when the data fits one machine. Spark is in segengine for what "
        "one machine cannot do: data beyond it, or data already where a cluster reads it "
        "(S3, HDFS, a lakehouse folder), counted in place with the same segments and the "
        "same answers (docs/spark.md).",
        "",
    ]


# --- the document ------------------------------------------------------------------------


def _method() -> list[str]:
    return [
        "## How it is measured",
        "",
        "- Baselines are written by hand (benchmarks/baselines/) over the **raw generated "
        "Parquet files** (contacts keyed by email, events carrying the email), not over the "
        "workspace: DuckDB SQL (views over the files, anti/semi joins), Polars lazy "
        "(`scan_parquet`, joins), pandas (`read_parquet` with `columns=` and pushed-down "
        "`filters=`), ClickHouse through chdb (`file()` views; `chdb-bitmap`: MergeTree "
        "tables loaded once, with `groupBitmap*`) and DataFusion SQL (`register_parquet`, "
        "semi/anti joins), each where its package of the `bench` extra is installed. Each "
        "but `chdb-bitmap` reads the files on every call, as segengine's DuckDB and Polars "
        "engines read the workspace's Parquet files.",
        "- Every path's total (all statuses) must be identical on every segment, or the run "
        "fails naming the segment and the numbers.",
        "- Spark is measured when PySpark and Java are installed (or named in `--engines`), "
        "in one process for the whole suite, so its start-up is measured once and apart; "
        "a Spark query running past the budget (`runner.SPARK_QUERY_BUDGET`) is cancelled "
        "and shown as such.",
        "- Each scale's section is written from benchmarks/.cache/<scale>/results.json; "
        "running one scale rewrites its own section and keeps the others found there.",
        "- Regenerate: `make bench` (1m) or `python -m benchmarks --scale small|1m|10m`; "
        "`--report-only` rewrites this file from the saved results.",
        "",
    ]


def _demoted(lines: list[str]) -> list[str]:
    """Headings one level down, to nest a run's sections under its scale's heading."""
    return ["#" + line if line.startswith("#") else line for line in lines]


def _title(run: Run) -> str:
    d = run.data
    return f"{run.options.scale.name}: {d['contacts']:,} contacts, {d['events']:,} events"


def _anchor(run: Run) -> str:
    """GitHub's anchor of the scale's heading (lower case, punctuation dropped)."""
    kept = "".join(c for c in _title(run).lower() if c.isalnum() or c in " -")
    return kept.replace(" ", "-")


def section(run: Run) -> list[str]:
    """One scale's part of RESULTS.md."""
    body = _summary(run) + _targets(run) + _per_segment(run) + _spark(run)
    body += _machine(run) + _data(run) + _export(run) + _index(run)
    if run.notes:
        body += ["## Not measured / notes", "", *[f"- {n}" for n in run.notes], ""]
    body += _details(run)
    return [f"## {_title(run)}", "", *_demoted(body)]


def markdown(runs: list[Run], charted: Run | None = None) -> str:
    """RESULTS.md for `runs` (one section each, in order); the chart shows `charted`."""
    links = ", ".join(f"[{r.options.scale.name}](#{_anchor(r)})" for r in runs)
    lines = ["# segengine benchmarks", "", f"Scales measured: {links}. Each section is one "
             "run: every path counts every segment, and ratios compare paths measured side "
             "by side in that run.", ""]
    if charted is not None:
        lines += [f"![warm median over the fastest baseline, scale {charted.options.scale.name}]"
                  "(ratios.png)", ""]
    for run in runs:
        lines += section(run)
    return "\n".join(lines + _method())


def chart(run: Run, path: Path) -> bool:
    """Grouped bars of each path's ratio per segment (log scale); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    r = ratios(run)
    names = [s["name"] for s in run.segments]
    width = 0.8 / len(r)
    fig, ax = plt.subplots(figsize=(max(10, len(names) * 0.9), 5.5))
    for i, (label, by_seg) in enumerate(r.items()):
        xs = [k + (i - (len(r) - 1) / 2) * width for k in range(len(names))]
        ax.bar(xs, [by_seg.get(n, math.nan) for n in names], width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("warm median / fastest baseline (log)")
    ax.set_title(f"segengine vs hand-written baselines, scale {run.options.scale.name} "
                 f"({run.data['contacts']:,} contacts, {run.data['events']:,} events)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


#: Scales that get a section whenever their results exist; the others only without them.
LARGE_SCALES = ("1m", "10m")
CHART_SCALE = "1m"


def report_scales(available: Iterable[str]) -> list[str]:
    """Which saved scales RESULTS.md shows, in `SCALES` order."""
    available = [name for name in SCALES if name in set(available)]
    large = [name for name in available if name in LARGE_SCALES]
    return large or available


def gather(run: Run) -> list[Run]:
    """The runs RESULTS.md shows: `run` itself, and the other scales' saved results."""
    cache = run.options.cache
    names = report_scales({*saved_scales(cache), run.options.scale.name})
    return [run if name == run.options.scale.name
            else load_run(replace(run.options, scale=SCALES[name])) for name in names]


def charted_run(runs: list[Run]) -> Run | None:
    """The chart's run: 1m if shown, else the largest scale shown."""
    return next((r for r in runs if r.options.scale.name == CHART_SCALE), runs[-1] if runs
                else None)


def saved_runs(options: Any) -> list[Run]:
    """The saved runs RESULTS.md shows (for `--report-only`), from `options.cache`."""
    names = report_scales(saved_scales(options.cache))
    return [load_run(replace(options, scale=SCALES[name])) for name in names]


def write(run: Run, results: Path = RESULTS, chart_path: Path = CHART) -> list[str]:
    """Rewrite RESULTS.md (and the chart) with `run` and the saved runs of other scales.

    Returns the scales written, in order. A run of a small scale is left out when larger
    scales have results (`report_scales`), so a smoke run never hides the 1m figures.
    """
    return write_runs(gather(run), results, chart_path)


def kept_sections(text: str) -> list[str]:
    """The sections other benchmarks (benchmarks/serve.py, benchmarks/send.py) write between their own
    markers, ``<!-- NAME -->`` ... ``<!-- /NAME -->``: rewriting the file keeps them."""
    return [m.group(0) for m in re.finditer(r"<!-- ([\w ]+) -->\n.*?<!-- /\1 -->\n", text, re.S)]


def write_scale_section(name: str, title: str, contacts: int, lines: list[str],
                        results: Path = RESULTS) -> None:
    """Write ``### At N contacts`` (`lines`) into the section ``<!-- name -->`` of RESULTS.md,
    keeping the section's other scales: a 1M run does not erase the 10M figures."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = results.read_text() if results.exists() else ""
    parts: dict[int, str] = {}
    if start in text:
        before, rest = text.split(start, 1)
        inside, after = rest.split(end, 1)
        for chunk in inside.split("\n### At ")[1:]:
            digits = chunk.split(" ", 1)[0].replace(",", "")
            if digits.isdigit():
                parts[int(digits)] = "### At " + chunk.rstrip("\n")
    else:
        before, after = text.rstrip("\n") + "\n\n", "\n"
    parts[contacts] = "\n".join([f"### At {contacts:,} contacts", "", *lines]).rstrip("\n")
    body = "\n\n".join(parts[k] for k in sorted(parts))
    results.write_text(f"{before}{start}\n## {title}\n\n{body}\n{end}\n{after.lstrip(chr(10))}")


def write_runs(runs: list[Run], results: Path = RESULTS, chart_path: Path = CHART) -> list[str]:
    """RESULTS.md with one section per run, and the chart of `charted_run`."""
    charted = charted_run(runs)
    if charted is not None and not chart(charted, chart_path):
        charted.notes.append("ratios.png not drawn: matplotlib is not installed "
                             "(`pip install -e .[bench]`).")
        charted = None
    old = results.read_text() if results.exists() else ""
    results.write_text("\n".join([markdown(runs, charted), *kept_sections(old)]))
    return [r.options.scale.name for r in runs]
