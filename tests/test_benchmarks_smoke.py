"""The benchmark harness at a tiny scale: every engine and baseline must agree.

The benchmarks measure time; this checks that the hand-written baselines
(benchmarks/baselines/) implement the SPEC semantics of every suite segment exactly
as segengine does, so the timings compare equal answers; that RESULTS.md keeps one
section per saved scale with its targets table; and that a cache prepared outside
the harness is reused as it is. Spark is not started here (tests/test_spark.py
covers the engine); its report section is checked on figures written in.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

import segengine
from benchmarks.__main__ import parse_args
from benchmarks.baselines import BASELINES, OPTIONAL, installed
from benchmarks.report import MET, MISSED, UNMEASURED, _data, step_peaks, targets, write
from benchmarks.runner import (
    CountMismatch,
    Options,
    Run,
    check_agreement,
    chosen_baselines,
    ensure_data,
    ensure_workspace,
    execute,
    extra_event_count,
    load_run,
    measure_segment,
    write_extra_events,
)
from benchmarks.suite import SCALES, SUITE, segment_files
from benchmarks.worker import index_is_current, refresh_index

pytestmark = pytest.mark.xdist_group("benchmarks")  # one tiny run, on one worker


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    options = Options(
        scale=SCALES["tiny"],
        runs=1,
        engines=("duckdb", "polars", "index", "auto"),
        isolate=False,
        cold_cli=False,
        extras=False,
        cache=tmp_path_factory.mktemp("bench-cache"),
        log=lambda _msg: None,
    )
    return execute(options)


def test_suite_is_big_enough_and_not_vacuous(run):
    assert len(SUITE) >= 12
    contacts = run.data["contacts"]
    # A count of 0 or of everyone would agree across paths without testing much.
    informative = [s for s in run.segments if 0 < s["total"] < contacts]
    assert len(informative) >= len(SUITE) - 1, [(s["name"], s["total"]) for s in run.segments]


def test_every_path_ran_on_every_segment(run):
    # every baseline whose package is installed (chdb is in the `bench` extra)
    expected = {f"segengine-{e}" for e in run.engines} | {b for b in BASELINES if installed(b)}
    assert {"segengine-duckdb", "segengine-polars"} <= expected
    for seg in run.segments:
        assert set(seg["paths"]) == expected, seg["name"]


@pytest.mark.parametrize("baseline", list(BASELINES))
@pytest.mark.parametrize("segment", [s.name for s in SUITE])
def test_baseline_matches_segengine_duckdb(run, baseline, segment):
    if not installed(baseline):
        pytest.skip(f"{baseline} needs {OPTIONAL[baseline]} (pip install -e '.[bench]')")
    seg = next(s for s in run.segments if s["name"] == segment)
    assert seg["paths"][baseline]["total"] == seg["paths"]["segengine-duckdb"]["total"]


def test_disagreement_fails_loudly_with_the_numbers():
    with pytest.raises(CountMismatch, match=r"'never-opened'.*duckdb=1,204.*pandas=1,203"):
        check_agreement("never-opened", {"duckdb": 1204, "pandas": 1203})
    check_agreement("never-opened", {"duckdb": 7, "pandas": 7})


# --- the report: every saved scale, and the targets ---------------------------------


def _save_as(run: Run, cache, scale: str) -> None:
    """The tiny run's results saved as if they were `scale`'s."""
    (cache / scale).mkdir(parents=True, exist_ok=True)
    saved = {**run.as_dict(), "scale": scale}
    (cache / scale / "results.json").write_text(json.dumps(saved, default=str))


def _headings(text: str) -> list[str]:
    return [line.split(":")[0][3:] for line in text.splitlines() if line.startswith("## ")
            and ":" in line]


def test_report_has_a_section_per_large_scale_and_drops_the_small_ones(run, tmp_path):
    cache = tmp_path / "cache"
    for scale in ("10m", "1m", "small"):
        _save_as(run, cache, scale)
    tiny = replace(run, options=replace(run.options, cache=cache))
    results, chart = tmp_path / "RESULTS.md", tmp_path / "ratios.png"
    assert write(tiny, results, chart) == ["1m", "10m"]
    text = results.read_text()
    assert _headings(text) == ["1m", "10m"]  # 1m first; tiny and small left out
    assert text.count("### Targets (issue 6)") == 2
    assert text.count("| target | measured | status |") == 2
    if importlib.util.find_spec("matplotlib") is not None:  # the `bench` extra draws it
        assert "(ratios.png)" in text and "scale 1m" in text
    else:
        assert "ratios.png not drawn: matplotlib is not installed" in text


def test_report_shows_the_small_scales_when_nothing_larger_exists(run, tmp_path):
    cache = tmp_path / "cache"
    _save_as(run, cache, "small")
    tiny = replace(run, options=replace(run.options, cache=cache))
    results = tmp_path / "RESULTS.md"
    assert write(tiny, results, tmp_path / "ratios.png") == ["tiny", "small"]
    assert _headings(results.read_text()) == ["tiny", "small"]


def _edited(run: Run, medians: dict[tuple[str, str], float], **fields) -> Run:
    """A copy of `run` with some warm medians (segment, path) and fields replaced."""
    segments = copy.deepcopy(run.segments)
    for seg in segments:
        for path, result in seg["paths"].items():
            result["median"] = medians.get((seg["name"], path), result["median"])
    return replace(run, segments=segments, **fields)


def _status(run: Run, start: str) -> tuple[str, str]:
    found = [o for o in targets(run) if o.target.startswith(start)]
    assert len(found) == 1, (start, [o.target for o in targets(run)])
    return found[0].status, found[0].measured


def test_targets_are_met_or_missed_by_the_runs_own_figures(run):
    fast = {("never-opened", "segengine-auto"): 0.004, ("never-opened", "duckdb-sql"): 1.0,
            ("opened-any-of-last-5", "segengine-auto"): 0.020,
            ("opened-any-of-last-5", "duckdb-sql"): 1.0,
            ("union-of-3", "segengine-auto"): 0.019, ("state-ca", "segengine-auto"): 0.011}
    fast |= {(s["name"], "segengine-polars"): 3 * s["paths"]["segengine-duckdb"]["median"]
             for s in run.segments}
    index = {"full_seconds": 301.0, "update_seconds": 9.5, "extra_events": 1_000_000,
             "incremental": True, "max_rss": 9 * 10**9}
    edited = _edited(run, fast, index=index)
    assert _status(edited, "`never-opened` by `auto`: warm") == (MET, "4.0 ms")
    assert _status(edited, "`never-opened` by `auto`: ≥ 100x")[0] == MET
    assert _status(edited, "`opened-any-of-last-5` by `auto`: warm") == (MISSED, "20.0 ms")
    assert _status(edited, "`opened-any-of-last-5` by `auto`: ≥ 100x")[0] == MISSED
    assert _status(edited, "`union-of-3`")[0] == MET
    assert _status(edited, "`state-ca`")[0] == MISSED
    assert _status(edited, "engagement-index build")[0] == MISSED
    assert _status(edited, "incremental update")[0] == MET
    assert _status(edited, "peak RSS") == (MISSED, "9.00 GB at most (index build and "
                                           f"update; {_steps(edited)} steps)")
    assert _status(edited, "Polars engine") == (MISSED, f"3.00x over {len(SUITE)} segments")
    smaller = replace(edited, index={**index, "extra_events": 1_500})
    assert _status(smaller, "incremental update")[0].startswith("n/a")


def _steps(run: Run) -> int:
    return len(step_peaks(run))


def test_targets_without_a_path_are_not_measured(run):
    without_sql = replace(run, baselines=["polars-lazy"], segments=[
        {**s, "paths": {k: v for k, v in s["paths"].items() if k != "duckdb-sql"}}
        for s in run.segments])
    assert _status(without_sql, "`never-opened` by `auto`: ≥ 100x")[0] == UNMEASURED
    assert _status(run, "engagement-index build")[0] == UNMEASURED  # extras off here
    assert _status(run, "peak RSS")[0] == UNMEASURED  # in-process: no memory figures


def _with_spark(run: Run, cache, over_budget: tuple[str, ...] = ()) -> Run:
    """`run` as if Spark had taken 10x the DuckDB engine's time on every segment."""
    segments = copy.deepcopy(run.segments)
    for seg in segments:
        if seg["name"] not in over_budget:
            duck = seg["paths"]["segengine-duckdb"]
            seg["paths"]["segengine-spark"] = {**duck, "median": 10 * duck["median"]}
    spark = {"ready_seconds": 20.0, "session_seconds": 18.0, "first_query_seconds": 5.0,
             "first_query_segment": "field-state-in", "python_max_rss": 2**28,
             "jvm_max_rss": 2**30, "process_max_rss": 2**28,
             "versions": {"spark": "4.3.0", "java": "17", "master": "local[*]"},
             "over_budget": dict.fromkeys(over_budget, 180.0)}
    return replace(run, segments=segments, engines=[*run.engines, "spark"], spark=spark,
                   options=replace(run.options, cache=cache))


def _spark_section(run: Run, tmp_path) -> str:
    results = tmp_path / "RESULTS.md"
    write(run, results, tmp_path / "ratios.png")
    text = results.read_text()
    return text[text.index("### Spark"):text.index("### Machine")]


def test_spark_section_puts_spark_next_to_duckdb_and_auto(run, tmp_path):
    with_spark = _with_spark(run, tmp_path)
    section = _spark_section(with_spark, tmp_path)
    assert "**25 s to the first answer**" in section
    # 10x per segment; the mean of as many logarithms may print as 9.999... -> "10.00x"
    assert re.search(rf"\| geometric mean \({len(SUITE)} segments\) \|  \|  \|  \|  \| "
                     r"10(\.00)?x \|", section), section
    assert "JVM 1,024 MiB" in section and "cancelled" not in section
    # the in-process paths have no memory figures; the Spark step counts Python + JVM
    assert _status(with_spark, "peak RSS") == (MET, "1.34 GB at most (Spark session "
                                               "(Python + JVM); 1 steps)")


def test_a_spark_query_over_budget_is_shown_and_left_out_of_the_means(run, tmp_path):
    with_spark = _with_spark(run, tmp_path, over_budget=("nested-negation",))
    section = _spark_section(with_spark, tmp_path)
    row = next(line for line in section.splitlines() if line.startswith("| `nested-negation`"))
    assert "> 180,000 (cancelled)" in row
    assert re.search(rf"\| geometric mean \({len(SUITE) - 1} segments\) \|  \|  \|  \|  \| "
                     r"10(\.00)?x \|", section), section
    text = (tmp_path / "RESULTS.md").read_text()
    assert "`segengine-spark` has no timing for 1 segment(s)" in text


# --- the 10m command line and a cache prepared by hand ------------------------------


def test_the_10m_command_line_is_valid():
    options, report_only = parse_args(
        ["--scale", "10m", "--engines", "duckdb,index,auto",
         "--skip-baselines", "pandas,polars-lazy", "--runs", "3", "--no-cold"])
    assert not report_only and not options.cold_cli and options.runs == 3
    assert options.engines == ("duckdb", "index", "auto")
    probe = Run(options)
    optional = [b for b in OPTIONAL if b in BASELINES]
    assert chosen_baselines(options, probe) == ["duckdb-sql", *filter(installed, optional)]
    # pandas noted once, polars-lazy once, and each optional baseline not installed
    absent = [b for b in optional if not installed(b)]
    assert len(probe.notes) == 2 + len(absent), probe.notes
    with pytest.raises(SystemExit):
        parse_args(["--skip-baselines", ",".join(BASELINES)])


def test_a_prepared_cache_is_reused_without_generating_or_importing(run, tmp_path):
    source = run.options.cache / "tiny"
    root = tmp_path / "cache" / "tiny"
    shutil.copytree(source / "data", root / "data")
    shutil.copytree(source / "workspace", root / "workspace")
    # By hand: only what identifies the data, paths elsewhere, and no import.json.
    (root / "data.json").write_text(json.dumps(
        {"contacts": 2_000, "events_target": 30_000, "seed": 1,
         "contacts_path": "/elsewhere/contacts.parquet",
         "events_path": "/elsewhere/events.parquet"}))

    def refuse(msg: str) -> None:
        raise AssertionError(f"the cache was not reused: {msg}")

    options = replace(run.options, cache=tmp_path / "cache", log=refuse)
    data = ensure_data(options, root)
    assert data["events"] == run.data["events"] and data["campaigns"] == run.data["campaigns"]
    assert data["events_path"] == str(root / "data" / "events.parquet")
    assert data["generate_seconds"] is None
    imports = ensure_workspace(options, root, data)
    assert imports["reused"] and imports["outside"]
    assert json.loads((root / "data.json").read_text())["events"] == run.data["events"]


def test_extra_events_are_a_later_batch_of_the_scaled_size(run, tmp_path):
    assert [extra_event_count(SCALES[s].events) for s in ("tiny", "1m", "10m")] == \
        [1_500, 1_000_000, 1_000_000]
    out = tmp_path / "extra.parquet"
    write_extra_events(run.data["events_path"], out, 1_500)
    con = duckdb.connect()
    n, campaigns, first = con.execute(
        f"SELECT count(*), count(DISTINCT campaign), min(timestamp) FROM '{out}'").fetchone()
    last = con.execute("SELECT max(timestamp) FROM read_parquet(?)",
                       [run.data["events_path"]]).fetchone()[0]
    assert n == 1_500 and campaigns >= 1 and first > last
    overlap = con.execute(
        f"SELECT count(*) FROM '{out}' WHERE campaign IN "
        "(SELECT campaign FROM read_parquet(?))", [run.data["events_path"]]).fetchone()[0]
    assert overlap == 0


def test_baselines_can_take_fewer_timed_runs_than_segengine(run, tmp_path):
    options = replace(run.options, runs=2, baseline_runs=1)
    root = run.options.cache / "tiny"
    seg = next(s for s in SUITE if s.name == "never-opened")
    measured = measure_segment(options, run, seg, segment_files(root / "segments"),
                               root / "workspace", run.data)
    for path, result in measured["paths"].items():
        assert result["runs"] == (2 if path.startswith("segengine-") else 1), path
    shown = replace(run, options=options)
    assert any("2 warm runs of each segengine path, 1 of each baseline" in line
               for line in _data(shown))
    assert not any("of each baseline" in line for line in _data(run))
    assert parse_args(["--baseline-runs", "1"])[0].baseline_runs == 1
    with pytest.raises(SystemExit):
        parse_args(["--baseline-runs", "0"])


def test_a_saved_run_keeps_its_number_of_runs(run):
    loaded = load_run(replace(run.options, runs=9))
    assert loaded.options.runs == 1 and loaded.segments == run.segments


def test_an_index_older_than_the_index_code_is_rebuilt_before_measuring(run, tmp_path):
    workspace = tmp_path / "workspace"
    shutil.copytree(run.options.cache / "tiny" / "workspace", workspace)
    ws = segengine.open(workspace)
    assert index_is_current(ws)
    assert refresh_index({"workspace": str(workspace)})["rebuilt"] is False
    os.utime(workspace / ws.snapshot().manifest["index"]["path"], (0, 0))  # built in 1970
    assert not index_is_current(segengine.open(workspace))
    assert refresh_index({"workspace": str(workspace)})["rebuilt"] is True
    assert index_is_current(segengine.open(workspace))


# --- the baselines' semantics on untidy raw files ---------------------------------------

#: contact instants whose UTC day is on one side of a suite window's edge and whose Los
#: Angeles day is on the other: date_added (2025-01-01), last_login (the 365-day window
#: from 2025-11-01; older than 30 days: by 2026-10-01). A baseline taking the zone's own
#: day gets each segment wrong the same way, so the errors cannot cancel out.
ADDED_AT_EDGE = "2025-01-01T03:00:00+00:00"
LOGINS_AT_EDGES = ("2025-11-01T03:00:00+00:00", "2026-10-02T03:00:00+00:00")


def _untidy_contacts(contacts, out) -> None:
    """The generated contacts as people's files hold them: mixed case, spaces around
    `;`, "" and null statuses for active contacts, "" titles, and timestamps in a zone
    other than UTC (the same instants)."""
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(contacts).to_pylist()
    for i, row in enumerate(rows):
        if row["state"]:
            row["state"] = (row["state"].lower(), row["state"].title(), row["state"])[i % 3]
        if row["title"] and i % 4 == 0:
            row["title"] = row["title"].upper()
        elif row["title"] is None and i % 2 == 0:
            row["title"] = ""
        if row["status"] == "active":
            row["status"] = ("ACTIVE", "", None, "Active", "active")[i % 5]
        if row["lists"] and i % 2 == 0:
            row["lists"] = " " + " ; ".join(n.title() for n in row["lists"].split(";")) + " "
        if row["company"] and i % 3 == 0:
            row["company"] = row["company"].upper()
    for i, row in enumerate(rows[1::37]):
        row["date_added"] = dt.datetime.fromisoformat(ADDED_AT_EDGE)
        row["last_login"] = dt.datetime.fromisoformat(LOGINS_AT_EDGES[i % 2])
    table = pa.Table.from_pylist(rows, schema=pq.read_schema(contacts))
    zoned = pa.timestamp("us", tz="America/Los_Angeles")
    for name in ("date_added", "last_login"):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 table[name].cast(zoned))
    pq.write_table(table, out)


@pytest.fixture(scope="module")
def untidy(run, tmp_path_factory):
    """Untidy raw contacts, and every suite entry's total as segengine counts them."""
    from benchmarks.baselines import RawData
    from benchmarks.suite import AS_OF, segment_files

    root = tmp_path_factory.mktemp("untidy")
    contacts = root / "contacts.parquet"
    _untidy_contacts(run.data["contacts_path"], contacts)
    ws = segengine.Workspace.init(root / "workspace")
    assert ws.import_contacts(contacts).rejected == 0
    assert ws.import_events(run.data["events_path"]).rejected == 0
    files = segment_files(root / "segments")
    totals = {s.name: ws.count(*(files[p] for p in s.parts), as_of=AS_OF, engine="duckdb")["total"]
              for s in SUITE}
    return RawData(contacts, Path(run.data["events_path"]), root / "baselines"), totals


@pytest.mark.parametrize("baseline", list(BASELINES))
def test_baseline_matches_segengine_on_untidy_files(untidy, baseline):
    import datetime as dt

    from benchmarks.baselines import open_baseline
    from benchmarks.suite import AS_OF

    if not installed(baseline):
        pytest.skip(f"{baseline} needs {OPTIONAL[baseline]} (pip install -e '.[bench]')")
    data, expected = untidy
    counter = open_baseline(baseline, data)
    try:
        got = {s.name: counter.count(s.parts, dt.date.fromisoformat(AS_OF)) for s in SUITE}
    finally:
        counter.close()
    assert {n: (got[n], t) for n, t in expected.items() if got[n] != t} == {}
