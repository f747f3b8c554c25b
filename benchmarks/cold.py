"""``python -m benchmarks.cold WORKSPACE [--pairs N] [--json] [--write]``: a cold count.

A one-shot ``segengine count`` of the suite's `opened-3x-in-90d`, answered from the
workspace's engagement index (only read), against merely starting Python with
``import polars, duckdb``. Both run as new processes, alternating (count, import,
count, import, ...), so both see the same load on a shared machine; the figure is the
ratio of their medians (issue 21's target: at most 0.6x). The full benchmark measures
the same thing in its run (`runner.measure_cold_start`); this needs only a workspace.
With ``--write`` the figures go into benchmarks/RESULTS.md (section "Cold count", one
part per scale).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from .measure import BenchmarkError, child_env, run_measured
from .runner import COLD_PAIRS, COLD_SEGMENT, IMPORT_ENGINES, compile_package
from .suite import AS_OF, segment_files


def measure(workspace: Path, pairs: int = COLD_PAIRS) -> dict[str, Any]:
    """Alternating pairs of (cold count, engines import); the medians and every wall."""
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        segment = segment_files(Path(tmp))[COLD_SEGMENT]
        count_cmd = [sys.executable, "-m", "segengine", "-w", str(workspace), "count",
                     str(segment), "--as-of", AS_OF, "--json"]
        import_cmd = [sys.executable, "-c", IMPORT_ENGINES]
        walls: dict[str, list[float]] = {"count": [], "import": []}
        total = None
        for _ in range(pairs):
            for name, cmd in (("count", count_cmd), ("import", import_cmd)):
                measured = run_measured(cmd, env=child_env())
                if measured.returncode != 0:
                    raise BenchmarkError(f"{' '.join(cmd[:4])} failed: {measured.stderr[-500:]}")
                walls[name].append(measured.wall)
                if name == "count":
                    total = int(json.loads(measured.stdout)["total"])
    manifest = json.loads((workspace / "manifest.json").read_text())
    count, imports = statistics.median(walls["count"]), statistics.median(walls["import"])
    return {"contacts": int(manifest["counts"]["contacts"]), "segment": COLD_SEGMENT,
            "cores": os.cpu_count(), "load_average": round(os.getloadavg()[0], 1),
            "total": total, "pairs": pairs, "count_seconds": count, "import_seconds": imports,
            "ratio": count / imports, "count_walls": walls["count"],
            "import_walls": walls["import"]}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def lines(result: dict[str, Any]) -> list[str]:
    return [
        f"`{result['segment']}` ({result['total']:,} contacts) counted by a new "
        f"`python -m segengine count --json` process, alternating with `python -c "
        f"\"{IMPORT_ENGINES}\"`; medians of {result['pairs']} pairs ({result['cores']} "
        f"cores, load average {result['load_average']} at the end: the cores are shared):",
        "",
        "| cold count ms | import ms | ratio (target ≤ 0.6x) | fastest count ms | fastest import ms |",
        "|---|---|---|---|---|",
        f"| {_ms(result['count_seconds'])} | {_ms(result['import_seconds'])} | "
        f"{result['ratio']:.2f}x | {_ms(min(result['count_walls']))} | "
        f"{_ms(min(result['import_walls']))} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path, help="an imported workspace (only read)")
    parser.add_argument("--pairs", type=int, default=COLD_PAIRS)
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    args = parser.parse_args()
    result = measure(args.workspace, args.pairs)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("\n".join(lines(result)))
    if args.write:
        from .report import write_scale_section

        write_scale_section("cold count", "Cold count (`python -m benchmarks.cold`)",
                            result["contacts"], lines(result))


if __name__ == "__main__":
    main()
