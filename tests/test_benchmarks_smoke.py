"""The benchmark harness at a tiny scale: every engine and baseline must agree.

The benchmarks measure time; this only checks that the hand-written baselines
(benchmarks/baselines/) implement the SPEC semantics of every suite segment exactly
as segengine does, so the timings compare equal answers.
"""

from __future__ import annotations

import pytest

from benchmarks.baselines import BASELINES
from benchmarks.runner import CountMismatch, Options, check_agreement, execute
from benchmarks.suite import SCALES, SUITE


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
    expected = {f"segengine-{e}" for e in run.engines} | set(BASELINES)
    assert {"segengine-duckdb", "segengine-polars"} <= expected
    for seg in run.segments:
        assert set(seg["paths"]) == expected, seg["name"]


@pytest.mark.parametrize("baseline", list(BASELINES))
@pytest.mark.parametrize("segment", [s.name for s in SUITE])
def test_baseline_matches_segengine_duckdb(run, baseline, segment):
    seg = next(s for s in run.segments if s["name"] == segment)
    assert seg["paths"][baseline]["total"] == seg["paths"]["segengine-duckdb"]["total"]


def test_disagreement_fails_loudly_with_the_numbers():
    with pytest.raises(CountMismatch, match=r"'never-opened'.*duckdb=1,204.*pandas=1,203"):
        check_agreement("never-opened", {"duckdb": 1204, "pandas": 1203})
    check_agreement("never-opened", {"duckdb": 7, "pandas": 7})
