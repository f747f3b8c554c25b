"""``python -m benchmarks.buckets WORKSPACE [--rounds R] [--json] [--write]``: bucket splits.

Times, on an existing workspace (only read: nothing is saved), an A/B/holdout split
of a newsletter audience (``a=45,b=45,holdout=10``) and one group's count, side by side
with hand-written DuckDB SQL over the same Parquet files that gives the same numbers:

* **first use of a seed**: a fresh seed, so the engagement index computes every
  contact's bucket number before the counts (the split as `segengine split` runs it);
* **cached**: the same seed again (the process keeps its numbers and ranges);
* **DuckDB SQL**: one ``GROUP BY`` of the groups and statuses, hashing every email in
  the query (the fair baseline for a whole split), and one group's count.

Every figure is the median of `rounds` runs in this process (the first-use figure uses
a new seed each round). The answers are compared before any time is reported. With
``--write``, the figures go into benchmarks/RESULTS.md (section "Bucket splits", one part
per scale).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

AUDIENCE = {"name": "newsletter", "rules": [
    {"field": "lists", "op": "includes", "value": "newsletter"}]}
GROUPS = (("a", 0, 4500), ("b", 4500, 9000), ("holdout", 9000, 10_000))


def _timed(fn) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def duckdb_split_sql(files: list[str], seed: str) -> str:
    """The hand-written query: every group's total and active count in one pass."""
    from segengine.store.duck import file_list, lit

    number = (f"CAST('0x' || substring(sha256({lit(seed + ':')} || email), 1, 15) AS BIGINT)"
              " % 10000")
    group = "CASE " + " ".join(
        f"WHEN {number} < {high} THEN {lit(name)}" for name, _, high in GROUPS
    ) + " END"
    return (
        f"SELECT {group} AS grp, count(*) AS total, count(*) FILTER (status = 'active') AS sendable "
        f"FROM read_parquet({file_list(files)}) "
        "WHERE list_contains(list_transform(lists, lambda x: lower(x)), 'newsletter') GROUP BY 1"
    )


def duckdb_group_sql(files: list[str], seed: str, low: int, high: int) -> str:
    from segengine.store.duck import file_list, lit

    number = (f"CAST('0x' || substring(sha256({lit(seed + ':')} || email), 1, 15) AS BIGINT)"
              " % 10000")
    return (
        f"SELECT count(*) FROM read_parquet({file_list(files)}) "
        "WHERE list_contains(list_transform(lists, lambda x: lower(x)), 'newsletter') "
        f"AND {number} BETWEEN {low} AND {high - 1}"
    )


def run(workspace: Path, rounds: int) -> dict[str, Any]:
    import duckdb

    import segengine
    from segengine.api import parse_as_of
    from segengine.definition.nodes import BucketRule, Group

    ws = segengine.open(workspace)
    snap = ws.snapshot()
    files = list(snap.files("contacts"))
    engine = ws.engine("auto", snap)
    day = parse_as_of(None)
    audience = ws.resolve(ws.load_segment(AUDIENCE, snap), snap)
    engine.count([audience], day)  # warm: the index and the audience's bitmaps

    def split(seed: str) -> dict[str, Any]:
        return ws.split(AUDIENCE, groups="a=45,b=45,holdout=10", seed=seed, engine="auto")

    def one_group(seed: str) -> int:
        root = Group("all", (audience, BucketRule(seed, 0, 4500)))
        return sum(engine.count([root], day).values())

    first, cached, group_cached, first_group = [], [], [], []
    for i in range(rounds):
        seconds, result = _timed(lambda i=i: split(f"bench-first-{i}"))
        first.append(seconds)
        seconds, _ = _timed(lambda i=i: one_group(f"bench-group-{i}"))
        first_group.append(seconds)
    seed = "bench-first-0"
    for _ in range(rounds):
        seconds, result = _timed(lambda: split(seed))
        cached.append(seconds)
        seconds, group_total = _timed(lambda: one_group(seed))
        group_cached.append(seconds)

    con = duckdb.connect()
    sql_split, sql_group = [], []
    for _ in range(rounds):
        seconds, rows = _timed(lambda: con.sql(duckdb_split_sql(files, seed)).fetchall())
        sql_split.append(seconds)
        seconds, ((sql_total,),) = _timed(
            lambda: con.sql(duckdb_group_sql(files, seed, 0, 4500)).fetchall())
        sql_group.append(seconds)
    by_group = {name: (total, sendable) for name, total, sendable in rows}
    ours = {g["name"]: (g["total"], g["sendable"]) for g in result["groups"]}
    if ours != by_group or group_total != sql_total:
        raise SystemExit(f"answers differ: segengine {ours} {group_total}, DuckDB SQL {by_group} {sql_total}")

    median = statistics.median
    return {
        "workspace": str(workspace),
        "contacts": int(snap.manifest["counts"]["contacts"]),
        "audience": sum(t for t, _ in ours.values()),
        "groups": ours,
        "rounds": rounds,
        "seconds": {
            "split_first_use_of_seed": median(first),
            "split_cached": median(cached),
            "group_count_first_use_of_seed": median(first_group),
            "group_count_cached": median(group_cached),
            "duckdb_sql_split": median(sql_split),
            "duckdb_sql_group_count": median(sql_group),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path, help="an imported workspace (only read)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="Print one JSON document.")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    args = parser.parse_args()
    result = run(args.workspace, args.rounds)
    if args.write:
        write(result)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    s = result["seconds"]
    print(f"{result['contacts']:,} contacts, audience {result['audience']:,}, "
          f"median of {result['rounds']} rounds")
    print(f"{'':42} {'segengine':>12} {'DuckDB SQL':>12} {'ratio':>8}")
    for name, ours, sql in table_rows(s):
        print(f"{name:42} {ours * 1000:10.2f}ms {sql * 1000:10.1f}ms {sql / ours:7.0f}x")


def table_rows(s: dict[str, float]) -> list[tuple[str, float, float]]:
    return [
        ("split a/b/holdout, first use of a seed", s["split_first_use_of_seed"], s["duckdb_sql_split"]),
        ("split a/b/holdout, seed cached", s["split_cached"], s["duckdb_sql_split"]),
        ("one group's count, first use of a seed", s["group_count_first_use_of_seed"],
         s["duckdb_sql_group_count"]),
        ("one group's count, seed cached", s["group_count_cached"], s["duckdb_sql_group_count"]),
    ]


def write(result: dict[str, Any]) -> None:
    import os
    import platform

    from .report import write_scale_section

    s = result["seconds"]
    lines = [f"`python -m benchmarks.buckets WORKSPACE --rounds {result['rounds']} --write` on "
             f"{platform.node() or 'this machine'} ({os.cpu_count()} cores, load average "
             f"{os.getloadavg()[0]:.1f}: the cores are shared). An a=45,b=45,holdout=10 split of the "
             f"newsletter audience ({result['audience']:,} contacts), medians of {result['rounds']} rounds in "
             "one process, next to hand-written DuckDB SQL over the same Parquet that gives the same numbers.",
             "", "| | segengine | DuckDB SQL | ratio |", "|---|---|---|---|"]
    for name, ours, sql in table_rows(s):
        lines.append(f"| {name} | {ours * 1000:,.2f} ms | {sql * 1000:,.0f} ms | {sql / ours:,.1f}x |")
    lines += ["", f"- Targets: a cached split count <= 10 ms: "
              f"{'met' if s['group_count_cached'] <= 0.010 else 'missed'} ({s['group_count_cached'] * 1000:.2f} ms); "
              f"the first use of a seed <= 5 s: {'met' if s['split_first_use_of_seed'] <= 5 else 'missed'} "
              f"({s['split_first_use_of_seed']:.2f} s)."]
    write_scale_section("buckets benchmark", "Bucket splits (`python -m benchmarks.buckets`)",
                        result["contacts"], lines)


if __name__ == "__main__":
    main()
