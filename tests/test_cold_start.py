"""A one-shot `segengine count` answered from the index loads only what it uses.

Each count runs the real command line in a new Python process, which then reports the
heavy engines found in ``sys.modules`` at exit: none of DuckDB, Polars or PyArrow may be
there when the engagement index answers (behaviour, lists, statuses, numbers, dates,
small text dictionaries and click URLs). The same process asked for ``--engine duckdb``
must show DuckDB loaded, so the check itself can fail. Neither is a Parquet file hashed
(their checksums are checked when an engine reads them, and the index reads none), nor
are OpenSSL and shutil loaded, and numpy's OpenBLAS runs one thread. A count that the
index's bitmaps answer alone (activity in a window, "at least k times in the last N
days", statuses, lists) does not even import numpy, while one that reads a per-contact
array does, so that check can fail too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE, SEGMENTS

import segengine

HEAVY = ("duckdb", "polars", "pyarrow")
#: Smaller start-up costs a count from the index does without: OpenSSL (bucket numbers
#: only) and shutil with its compression modules (writers only).
STARTUP = ("hashlib", "shutil", "lzma", "bz2")
AS_OF = "2026-11-01"
#: Counts the bitmaps answer alone: numpy (a quarter of a one-shot count's time) stays out.
NUMPY_FREE = {
    "opened-3x-in-90d": {"rules": [
        {"activity": "opened", "when": {"in_last_days": 90}, "count": {"gte": 3}}]},
    "active-newsletter-clickers-30d": {"rules": [
        {"field": "status", "op": "is", "value": "active"},
        {"field": "lists", "op": "includes", "value": "newsletter"},
        {"activity": "clicked", "when": {"in_last_days": 30}},
    ]},
    "not-opened-in-14d-or-bounced": {"match": "any", "rules": [
        {"activity": "opened", "negate": True, "when": {"in_last_days": 14}},
        {"field": "status", "op": "is", "value": "bounced"},
    ]},
}

#: Runs the command line as `segengine` would and prints, after its own output, the
#: heavy modules it imported and the Parquet files it checked (each on a line of its own).
DRIVER = """
import json, os, sys
from segengine.cli import main
from segengine.store import checksums
try:
    main(sys.argv[1:], prog_name="segengine")
except SystemExit as exc:
    code = exc.code
print("\\nloaded:" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
print("parquet:" + json.dumps(sorted(p for p in checksums._verified if p.endswith(".parquet"))))
print("openblas:" + json.dumps(os.environ.get("OPENBLAS_NUM_THREADS")))
sys.exit(code)
"""

DEFINITIONS = {
    "opened-twice-in-90d": {"rules": [
        {"activity": "opened", "when": {"in_last_days": 90}, "count": {"gte": 2}}]},
    "clicked-pricing": {"rules": [{"activity": "clicked", "url_contains": "PRICING"}]},
    "fields-and-lists": {"rules": [
        {"field": "status", "op": "is", "value": "active"},
        {"field": "lists", "op": "includes", "value": "newsletter"},
        {"field": "date_added", "op": "in_last_days", "value": 3650},
        {"activity": "opened", "negate": True, "campaigns": {"last": 3}},
    ]},
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cold") / "ws"
    ws = segengine.Workspace.init(root)
    ws.import_contacts(SAMPLE / "contacts.csv")
    ws.import_events(SAMPLE / "events.csv")
    for name, body in {**DEFINITIONS, **NUMPY_FREE}.items():
        (root.parent / f"{name}.json").write_text(json.dumps({"name": name, **body}))
    return root


def run_count(
    workspace: Path, segment: Path, *options: str, watch: tuple[str, ...] = HEAVY + STARTUP
) -> tuple[dict, list[str], list[str]]:
    argv = ["-w", str(workspace), "count", str(segment), "--json", "--as-of", AS_OF, *options]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER.format(heavy=watch), *argv],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    output, _, loaded = done.stdout.rpartition("\nloaded:")
    loaded, _, hashed = loaded.partition("\nparquet:")
    hashed, _, threads = hashed.partition("\nopenblas:")
    # numpy's OpenBLAS would start a thread per core at import: one is all a count uses
    assert json.loads(threads) == "1"
    return json.loads(output), json.loads(loaded), json.loads(hashed)


@pytest.mark.parametrize("name", [*DEFINITIONS, "state-ca", "cto-or-sales-west"])
def test_a_count_from_the_index_loads_no_engine(sample: Path, name: str) -> None:
    segment = sample.parent / f"{name}.json"
    if not segment.exists():
        segment = SEGMENTS / f"{name}.yaml"
    result, loaded, parquet = run_count(sample, segment)
    assert loaded == []
    assert parquet == []  # the index answers: no Parquet file is read, so none is hashed
    expected = segengine.open(sample).count(segment, as_of=AS_OF, engine="duckdb")
    assert result["by_status"] == expected["by_status"]


@pytest.mark.parametrize("name", NUMPY_FREE)
def test_a_count_the_bitmaps_answer_does_not_import_numpy(sample: Path, name: str) -> None:
    segment = sample.parent / f"{name}.json"
    result, loaded, parquet = run_count(sample, segment, watch=("numpy", *HEAVY, *STARTUP))
    assert loaded == []
    assert parquet == []
    expected = segengine.open(sample).count(segment, as_of=AS_OF, engine="duckdb")
    assert result["by_status"] == expected["by_status"]


def test_the_check_sees_numpy_when_a_count_reads_an_array(sample: Path) -> None:
    # "at least 3 times ever" reads the per-contact event counts, a numpy array
    segment = sample.parent / "opened-3x-ever.json"
    segment.write_text(json.dumps({"name": "opened-3x-ever", "rules": [
        {"activity": "opened", "count": {"gte": 3}}]}))
    result, loaded, _ = run_count(sample, segment, watch=("numpy", *HEAVY))
    assert loaded == ["numpy"]
    expected = segengine.open(sample).count(segment, as_of=AS_OF, engine="duckdb")
    assert result["by_status"] == expected["by_status"]


def test_the_check_sees_an_engine_that_is_loaded(sample: Path) -> None:
    result, loaded, parquet = run_count(sample, SEGMENTS / "state-ca.yaml", "--engine", "duckdb")
    assert "duckdb" in loaded
    assert len(parquet) >= 2  # DuckDB reads the Parquet files: each is checked first
    assert result["total"] > 0


def test_the_cold_benchmark_times_alternating_pairs(sample: Path) -> None:
    from benchmarks import cold

    result = cold.measure(sample, pairs=2)
    assert len(result["count_walls"]) == len(result["import_walls"]) == 2
    expected = segengine.open(sample).count(
        {"name": "x", "rules": [{"activity": "opened", "when": {"in_last_days": 90},
                                 "count": {"gte": 3}}]}, as_of=cold.AS_OF)
    assert result["total"] == expected["total"]
    assert result["ratio"] == result["count_seconds"] / result["import_seconds"] > 0
    assert "| cold count ms |" in "\n".join(cold.lines(result))


def test_numpy_on_first_use_puts_numpy_itself_in_the_module() -> None:
    import numpy

    from segengine.lazy import OnFirstUse, numpy_on_first_use

    namespace: dict = {}
    namespace["np"] = numpy_on_first_use(namespace)
    assert isinstance(namespace["np"], OnFirstUse)
    assert namespace["np"].arange(3).tolist() == [0, 1, 2]
    assert namespace["np"] is numpy  # later uses are plain global look-ups
