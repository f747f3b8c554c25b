"""RESULTS.md and ratios.png from a finished run.

Ratios, not absolute times, carry the summary: a ratio is a path's warm median over
the fastest baseline's warm median on the same segment, in the same run, so the
machine's speed and load largely cancel out. Absolute times and memory are in the
detail tables for whoever needs them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .runner import Run
from .suite import AS_OF

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
CHART = HERE / "ratios.png"
MIB = 2**20


def fastest_baseline(segment: dict[str, Any], baselines: Iterable[str]) -> tuple[str, float]:
    name = min(baselines, key=lambda b: segment["paths"][b]["median"])
    return name, segment["paths"][name]["median"]


def ratios(run: Run) -> dict[str, dict[str, float]]:
    """path -> segment -> warm median / fastest baseline's warm median."""
    warm = [f"segengine-{e}" for e in run.engines] + list(run.baselines)
    out: dict[str, dict[str, float]] = {p: {} for p in warm}
    for seg in run.segments:
        _, best = fastest_baseline(seg, run.baselines)
        for path in warm:
            out[path][seg["name"]] = seg["paths"][path]["median"] / best
    return out


def geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:,.1f}" if ms >= 1 else f"{ms:.2f}"


def _x(ratio: float) -> str:
    """A ratio with two significant digits, so 0.004x does not print as 0.00x."""
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
    d, imp = run.data, run.imports
    lines = [
        "## Data",
        "",
        f"- scale `{run.options.scale.name}`: {d['contacts']:,} contacts, {d['events']:,} events "
        f"({d['campaigns']} campaigns), seed {d['seed']}; raw Parquet "
        f"{d['contacts_bytes'] / MIB:,.0f} MiB + {d['events_bytes'] / MIB:,.0f} MiB",
        f"- generated in {d['generate_seconds']:.1f} s, peak RSS {_mib(d['generate_max_rss'])} MiB",
        f"- segments evaluated with `as_of = {AS_OF}`; {run.options.runs} warm runs after one "
        "warm-up per path and segment",
        "",
        "### Import (`Workspace.import_contacts` / `import_events`, Parquet input)",
        "",
    ]
    rows = [
        [kind, f"{imp[kind]['read']:,}", f"{imp[kind]['seconds']:.1f}",
         f"{imp[kind]['rows_per_second']:,.0f}", _mib(imp[kind]["max_rss"])]
        for kind in ("contacts", "events")
    ]
    lines += _table(["table", "rows", "seconds", "rows/s", "peak RSS MiB"], rows)
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
            names = [s["name"] for s in run.segments if s["kind"] == kind]
            cells.append(_x(geomean(by_seg[n] for n in names)))
        rows.append([path, *cells])
    wins = {
        path: sum(1 for v in by_seg.values() if v <= 1.0)
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
              f"{len(run.segments)} segments." for path, n in wins.items()]
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
        cells = [_x(seg["paths"][p]["median"] / best) for p in warm]
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
        "Warm: one process per path and segment; one warm-up call, then the timed calls. "
        "`cold ms` is one `python -m segengine count --json` process timed as a whole "
        "(with its own peak RSS). Peak RSS is the step process's `ru_maxrss` (warm-up and "
        "all runs).",
        "",
        *_table(header, rows),
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


def _index(run: Run) -> list[str]:
    if not run.index:
        return []
    i = run.index
    return [
        "## Engagement index",
        "",
        f"- full build over the workspace's files (`segengine.store.index.build_index`): "
        f"{i['full_seconds']:.2f} s",
        f"- incremental update: importing one more campaign's {i['extra_events']:,} events "
        f"into a copy of the workspace, index extended in the same commit "
        f"(incremental: {i['incremental']}): {i['update_seconds']:.2f} s",
        f"- peak RSS of the step: {_mib(i['max_rss'])} MiB",
        "- every import commit also refreshes the index, so the import figures above "
        "include building it",
        "",
    ]


def _method() -> list[str]:
    return [
        "## How it is measured",
        "",
        "- Baselines are written by hand (benchmarks/baselines/) over the **raw generated "
        "Parquet files** (contacts keyed by email, events carrying the email), not over the "
        "workspace: DuckDB SQL (views over the files, anti/semi joins), Polars lazy "
        "(`scan_parquet`, joins), pandas (`read_parquet` with `columns=` and pushed-down "
        "`filters=`). Each reads the files on every call, as segengine's DuckDB and Polars "
        "engines read the workspace's Parquet files.",
        "- Every path's total (all statuses) must be identical on every segment, or the run "
        "fails naming the segment and the numbers.",
        "- Regenerate: `make bench` (1m) or `python -m benchmarks --scale small|1m|10m`.",
        "",
    ]


def markdown(run: Run) -> str:
    lines = [f"# segengine benchmarks ({run.options.scale.name})", ""]
    lines += _summary(run) + _per_segment(run) + _machine(run) + _data(run)
    lines += _export(run) + _index(run)
    if run.notes:
        lines += ["## Not measured / notes", "", *[f"- {n}" for n in run.notes], ""]
    lines += _details(run) + _method()
    return "\n".join(lines)


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
        ax.bar(xs, [by_seg[n] for n in names], width, label=label)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("warm median / fastest baseline (log)")
    ax.set_title(f"segengine vs hand-written baselines, scale {run.options.scale.name} "
                 f"({run.data['contacts']:,} contacts, {run.data['events']:,} events)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(run: Run, results: Path = RESULTS, chart_path: Path = CHART) -> None:
    if not chart(run, chart_path):
        run.notes.append("ratios.png not drawn: matplotlib is not installed "
                         "(`pip install -e .[bench]`).")
    results.write_text(markdown(run))
