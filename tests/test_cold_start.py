"""A one-shot `segengine count` answered from the index loads only what it uses.

Each count runs the real command line in a new Python process, which then reports the
heavy engines found in ``sys.modules`` at exit: none of DuckDB, Polars or PyArrow may be
there when the engagement index answers (behaviour, lists, statuses, numbers, dates,
small text dictionaries and click URLs). The same process asked for ``--engine duckdb``
must show DuckDB loaded, so the check itself can fail.
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
AS_OF = "2026-11-01"

#: Runs the command line as `segengine` would and prints, after its own output, the
#: heavy modules it imported (on a line of its own).
DRIVER = """
import json, sys
from segengine.cli import main
try:
    main(sys.argv[1:], prog_name="segengine")
except SystemExit as exc:
    code = exc.code
print("\\nloaded:" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
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
    for name, body in DEFINITIONS.items():
        (root.parent / f"{name}.json").write_text(json.dumps({"name": name, **body}))
    return root


def run_count(workspace: Path, segment: Path, *options: str) -> tuple[dict, list[str]]:
    argv = ["-w", str(workspace), "count", str(segment), "--json", "--as-of", AS_OF, *options]
    done = subprocess.run(
        [sys.executable, "-c", DRIVER.format(heavy=HEAVY), *argv],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    output, _, loaded = done.stdout.rpartition("\nloaded:")
    return json.loads(output), json.loads(loaded)


@pytest.mark.parametrize("name", [*DEFINITIONS, "state-ca", "cto-or-sales-west"])
def test_a_count_from_the_index_loads_no_engine(sample: Path, name: str) -> None:
    segment = sample.parent / f"{name}.json"
    if not segment.exists():
        segment = SEGMENTS / f"{name}.yaml"
    result, loaded = run_count(sample, segment)
    assert loaded == []
    expected = segengine.open(sample).count(segment, as_of=AS_OF, engine="duckdb")
    assert result["by_status"] == expected["by_status"]


def test_the_check_sees_an_engine_that_is_loaded(sample: Path) -> None:
    result, loaded = run_count(sample, SEGMENTS / "state-ca.yaml", "--engine", "duckdb")
    assert "duckdb" in loaded
    assert result["total"] > 0
