"""`overlap`, `trend` and `why` against hand-written DuckDB SQL that gives the same numbers.

    python -m benchmarks.analytics WORKSPACE [--as-of 2026-10-31] [--repeat 5] [--write]

Reads only: the segments are sent inline, the workspace is never written. The SQL
baselines read the same Parquet files (the manifest's lists) through one warm DuckDB
connection, written as an analyst would: one query per question, `count(*) FILTER`
over a membership table for the overlap, a day series joined to the events for the
trend, correlated counts for why. Every answer is checked against segengine's before
any time is reported. Prints one JSON document; with --write also the section of
benchmarks/RESULTS.md between its markers (which `make bench` keeps).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The overlap's five segments: definition and the hand-written SQL of its contact ids.
OVERLAP = {
    "list-newsletter-active": (
        {"rules": [{"field": "status", "op": "is", "value": "active"},
                   {"field": "lists", "op": "includes", "value": "Newsletter"}]},
        "SELECT contact_id FROM contacts WHERE status = 'active' "
        "AND list_contains(list_transform(lists, lambda x: lower(x)), 'newsletter')",
    ),
    "field-state-in": (
        {"rules": [{"field": "state", "op": "in", "value": ["CA", "TX", "ny"]}]},
        "SELECT contact_id FROM contacts WHERE lower(state) IN ('ca', 'tx', 'ny')",
    ),
    "opened-3x-in-90d": (
        {"rules": [{"activity": "opened", "when": {"in_last_days": 90}, "count": {"gte": 3}}]},
        "SELECT contact_id FROM events WHERE type = 'open' "
        "AND CAST(timestamp AS DATE) BETWEEN DATE '{as_of}' - 90 AND DATE '{as_of}' "
        "GROUP BY contact_id HAVING count(*) >= 3",
    ),
    "never-opened-any-status": (
        {"rules": [{"activity": "opened", "count": {"eq": 0}}]},
        "SELECT contact_id FROM contacts c WHERE NOT EXISTS "
        "(SELECT 1 FROM events e WHERE e.contact_id = c.contact_id AND e.type = 'open')",
    ),
    "opened-any-of-last-5": (
        {"rules": [{"activity": "opened", "campaigns": {"last": 5}}]},
        "SELECT DISTINCT contact_id FROM events WHERE type = 'open' AND campaign IN ("
        "SELECT campaign FROM events WHERE type = 'sent' GROUP BY campaign "
        "HAVING CAST(min(timestamp) AS DATE) <= DATE '{as_of}' "
        "ORDER BY min(timestamp) DESC, campaign DESC LIMIT 5)",
    ),
}

#: Trend segments: per-day members ``(d, contact_id)`` over the data as it stood at the
#: end of day d (added by d, events up to d), as an analyst would write them.
TREND = {
    "list-newsletter-active": (
        OVERLAP["list-newsletter-active"][0],
        "SELECT days.d, c.contact_id FROM days JOIN contacts c ON CAST(c.date_added AS DATE) <= days.d "
        "WHERE c.status = 'active' AND list_contains(list_transform(c.lists, lambda x: lower(x)), 'newsletter')",
    ),
    "never-opened-any-status": (
        OVERLAP["never-opened-any-status"][0],
        "SELECT days.d, c.contact_id FROM days JOIN contacts c ON CAST(c.date_added AS DATE) <= days.d "
        "LEFT JOIN (SELECT contact_id, min(CAST(timestamp AS DATE)) AS first_open FROM events "
        "WHERE type = 'open' GROUP BY contact_id) f USING (contact_id) "
        "WHERE f.first_open IS NULL OR f.first_open > days.d",
    ),
    "opened-3x-in-90d": (
        OVERLAP["opened-3x-in-90d"][0],
        "SELECT days.d, e.contact_id FROM days JOIN events e ON e.type = 'open' "
        "AND CAST(e.timestamp AS DATE) BETWEEN days.d - 90 AND days.d "
        "JOIN contacts c ON c.contact_id = e.contact_id AND CAST(c.date_added AS DATE) <= days.d "
        "GROUP BY days.d, e.contact_id HAVING count(*) >= 3",
    ),
    "opened-any-of-last-5": (
        OVERLAP["opened-any-of-last-5"][0],
        "SELECT DISTINCT l.d, e.contact_id FROM ("
        " SELECT days.d, s.campaign FROM days JOIN (SELECT campaign, min(timestamp) AS sent_at "
        "  FROM events WHERE type = 'sent' GROUP BY campaign) s ON CAST(s.sent_at AS DATE) <= days.d "
        " QUALIFY row_number() OVER (PARTITION BY days.d ORDER BY s.sent_at DESC, s.campaign DESC) <= 5) l "
        "JOIN events e ON e.type = 'open' AND e.campaign = l.campaign AND CAST(e.timestamp AS DATE) <= l.d "
        "JOIN contacts c ON c.contact_id = e.contact_id AND CAST(c.date_added AS DATE) <= l.d",
    ),
}

TREND_SQL = """
WITH days AS (SELECT CAST(unnest(generate_series(DATE '{start}', DATE '{end}', INTERVAL 1 DAY)) AS DATE) AS d),
members AS ({members}),
counted AS (SELECT m.d, count(*) AS total, count(*) FILTER (WHERE c.status = 'active') AS sendable
            FROM members m JOIN contacts c USING (contact_id) GROUP BY m.d),
moves AS (SELECT coalesce(cur.d, prev.d + 1) AS d,
                 count(*) FILTER (WHERE prev.contact_id IS NULL) AS joined,
                 count(*) FILTER (WHERE cur.contact_id IS NULL) AS gone
          FROM members cur FULL JOIN members prev
            ON cur.contact_id = prev.contact_id AND cur.d = prev.d + 1
          GROUP BY 1)
SELECT days.d, coalesce(total, 0), coalesce(sendable, 0),
       CASE WHEN days.d = DATE '{start}' THEN NULL ELSE coalesce(joined, 0) END,
       CASE WHEN days.d = DATE '{start}' THEN NULL ELSE coalesce(gone, 0) END
FROM days LEFT JOIN counted USING (d) LEFT JOIN moves USING (d) ORDER BY days.d
"""

#: why: the segment, the hand-written SQL of what each rule saw, and the member rule.
WHY = {
    "ca-pricing-clickers-30d": (
        {"rules": [{"field": "status", "op": "is", "value": "active"},
                   {"field": "state", "op": "is", "value": "CA"},
                   {"activity": "clicked", "url_contains": "PRICING", "when": {"in_last_days": 30}}]},
        "SELECT c.status, c.state, "
        "(SELECT count(*) FROM events e WHERE e.contact_id = c.contact_id AND e.type = 'click' "
        " AND contains(lower(e.url), 'pricing')), "
        "(SELECT count(*) FROM events e WHERE e.contact_id = c.contact_id AND e.type = 'click' "
        " AND contains(lower(e.url), 'pricing') "
        " AND CAST(e.timestamp AS DATE) BETWEEN DATE '{as_of}' - 30 AND DATE '{as_of}') "
        "FROM contacts c WHERE c.email = ?",
    ),
    "cold-in-last-5": (
        {"rules": [{"field": "status", "op": "is", "value": "active"},
                   {"activity": "opened", "campaigns": {"last": 5}, "count": {"lte": 1}}]},
        "WITH last5 AS (SELECT campaign FROM events WHERE type = 'sent' GROUP BY campaign "
        " HAVING CAST(min(timestamp) AS DATE) <= DATE '{as_of}' "
        " ORDER BY min(timestamp) DESC, campaign DESC LIMIT 5) "
        "SELECT c.status, NULL, "
        "(SELECT count(*) FROM events e WHERE e.contact_id = c.contact_id AND e.type = 'open' "
        " AND e.campaign IN (SELECT campaign FROM last5)), NULL "
        "FROM contacts c WHERE c.email = ?",
    ),
}


#: a first run longer than this is timed too: a query of minutes is not warmed by
#: running it once more (its files are in the page cache after the first seconds)
WARM_AFTER_S = 5.0


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """(median warm milliseconds, the answer): one untimed warm-up run first, unless
    it took longer than WARM_AFTER_S (then it is the first of the `repeat` runs)."""
    started = time.perf_counter()
    answer = fn()
    first = time.perf_counter() - started
    times = [first * 1000] if first > WARM_AFTER_S else []
    for _ in range(repeat - len(times)):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), answer


def connect(workspace: str):
    import duckdb

    manifest = json.loads((Path(workspace) / "manifest.json").read_text())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    files = {t: [str(Path(workspace) / f) for f in manifest[t]] for t in ("contacts", "events")}
    for table, paths in files.items():
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({paths!r})")
    return con


def overlap_sql(as_of: str) -> str:
    names = list(OVERLAP)
    ctes = ", ".join(f"s{i} AS ({OVERLAP[n][1].format(as_of=as_of)})" for i, n in enumerate(names))
    flags = ", ".join(f"c.contact_id IN (SELECT contact_id FROM s{i}) AS i{i}" for i in range(len(names)))
    k = len(names)
    aggs = []
    for i in range(k):
        for j in range(k):
            aggs.append(f"count(*) FILTER (WHERE i{i} AND i{j})")
            aggs.append(f"count(*) FILTER (WHERE i{i} AND i{j} AND active)")
    for i in range(k):
        others = " OR ".join(f"i{j}" for j in range(k) if j != i)
        aggs.append(f"count(*) FILTER (WHERE i{i} AND NOT ({others}))")
    anyone = " OR ".join(f"i{i}" for i in range(k))
    aggs += [f"count(*) FILTER (WHERE {anyone})", f"count(*) FILTER (WHERE ({anyone}) AND active)"]
    return (f"WITH {ctes}, m AS (SELECT c.status = 'active' AS active, {flags} FROM contacts c) "
            f"SELECT {', '.join(aggs)} FROM m")


def overlap_document(row: tuple, as_of: str) -> dict[str, Any]:
    k = len(OVERLAP)
    pairs = list(row[: 2 * k * k])
    return {
        "segments": list(OVERLAP), "as_of": as_of,
        "total": [[pairs[2 * (i * k + j)] for j in range(k)] for i in range(k)],
        "sendable": [[pairs[2 * (i * k + j) + 1] for j in range(k)] for i in range(k)],
        "exclusive": list(row[2 * k * k: 2 * k * k + k]),
        "union": {"total": row[-2], "sendable": row[-1]},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import segengine

    ws = segengine.open(args.workspace)
    con = connect(args.workspace)
    as_of = args.as_of
    report: dict[str, Any] = {"as_of": as_of, "contacts": ws.snapshot().manifest["counts"]["contacts"],
                              "events": ws.snapshot().manifest["counts"]["events"]}

    segs = [{"name": n, **d} for n, (d, _) in OVERLAP.items()]
    ours_ms, ours = timed(lambda: ws.overlap(*segs, as_of=as_of), args.repeat)
    sql = overlap_sql(as_of)
    theirs_ms, row = timed(lambda: con.execute(sql).fetchall()[0], args.repeat)
    if overlap_document(row, as_of) != ours:
        raise SystemExit(f"overlap disagrees:\nsegengine {ours}\nduckdb    {overlap_document(row, as_of)}")
    report["overlap"] = {"segments": len(segs), "segengine_ms": round(ours_ms, 2), "duckdb_ms": round(theirs_ms, 1)}

    end = dt.date.fromisoformat(as_of) - dt.timedelta(days=1)
    start = end - dt.timedelta(days=args.points - 1)
    report["trend"] = {"points": args.points, "from": start.isoformat(), "to": end.isoformat(), "segments": {}}
    for name, (definition, members) in TREND.items():
        seg = {"name": name, **definition}
        ours_ms, ours = timed(lambda seg=seg: ws.trend(seg, start=start, end=end), args.trend_repeat)
        sql = TREND_SQL.format(start=start, end=end, members=members)
        theirs_ms, rows = timed(lambda sql=sql: con.execute(sql).fetchall(), args.trend_repeat)
        expected = [{"as_of": d.isoformat(), "total": t, "sendable": s, "joined": j, "left": g}
                    for d, t, s, j, g in rows]
        if expected != ours["points"]:
            bad = next(i for i, (a, b) in enumerate(zip(expected, ours["points"], strict=True)) if a != b)
            raise SystemExit(f"trend of {name} disagrees at point {bad}: duckdb {expected[bad]}, "
                             f"segengine {ours['points'][bad]}")
        report["trend"]["segments"][name] = {"segengine_ms": round(ours_ms, 1), "duckdb_ms": round(theirs_ms, 1)}

    report["why"] = {}
    for name, (definition, sql) in WHY.items():
        seg = {"name": name, **definition}
        member = ws.members(seg, as_of=as_of)
        email = member["email"][len(member) // 2] if len(member) else ws.members(
            {"name": "x", "rules": []})["email"][0]
        ours_ms, ours = timed(lambda seg=seg, email=email: ws.why(email, seg, as_of=as_of), args.repeat)
        query = sql.format(as_of=as_of)
        theirs_ms, row = timed(lambda query=query, email=email: con.execute(query, [email]).fetchall()[0],
                               args.repeat)
        check_why(name, ours, row)
        report["why"][name] = {"email": email, "member": ours["member"],
                               "segengine_ms": round(ours_ms, 2), "duckdb_ms": round(theirs_ms, 1)}
    return report


def check_why(name: str, ours: dict[str, Any], row: tuple) -> None:
    """segengine's why and the SQL's numbers must agree: values, event counts, membership."""
    status, state, in_scope, in_window = row
    rules = ours["rules"]
    if name == "ca-pricing-clickers-30d":
        expected_member = status == "active" and (state or "").lower() == "ca" and in_window >= 1
        got = (rules[0]["value"], rules[1]["value"], rules[2]["events"]["in_scope"],
               rules[2]["events"]["in_window"])
        want = (status, state, in_scope, in_window)
    else:
        expected_member = status == "active" and in_scope <= 1
        got = (rules[0]["value"], rules[1]["events"]["in_scope"])
        want = (status, in_scope)
    if got != want or ours["member"] != expected_member:
        raise SystemExit(f"why of {name} disagrees: segengine {got} member {ours['member']}, "
                         f"duckdb {want} member {expected_member}")


def write_section(report: dict[str, Any]) -> None:
    def ratio(r: dict[str, Any]) -> str:
        return f"{r['duckdb_ms'] / r['segengine_ms']:,.0f}x" if r["segengine_ms"] else "-"

    load = os.getloadavg()[0]
    lines = [f"{report['events']:,} events. `python -m benchmarks.analytics WORKSPACE {' '.join(sys.argv[2:])}` on "
             f"{platform.node() or 'this machine'} ({os.cpu_count()} cores, load average {load:.1f} "
             "while measuring: the cores are shared). Warm medians, in one process (a question that "
             f"takes over {WARM_AFTER_S:.0f} s is timed from its first run: it is not warmed by a second); the baseline is "
             "hand-written DuckDB SQL over the same Parquet files on one warm connection, and every "
             f"answer is checked equal to segengine's before it is timed. `as_of` {report['as_of']}.", "",
             "| question | segengine ms | DuckDB SQL ms | segengine faster |", "|---|---|---|---|"]
    o = report["overlap"]
    lines.append(f"| overlap of {o['segments']} segments | {o['segengine_ms']:.1f} | {o['duckdb_ms']:,.0f} | {ratio(o)} |")
    t = report["trend"]
    for name, r in t["segments"].items():
        lines.append(f"| trend of {name}, {t['points']} daily points | {r['segengine_ms']:,.0f} | "
                     f"{r['duckdb_ms']:,.0f} | {ratio(r)} |")
    for name, r in report["why"].items():
        lines.append(f"| why ({name}) | {r['segengine_ms']:.1f} | {r['duckdb_ms']:,.0f} | {ratio(r)} |")
    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    worst_trend = max(r["segengine_ms"] for r in t["segments"].values())
    worst_why = max(r["segengine_ms"] for r in report["why"].values())
    lines += ["", f"- Targets (stated for 10M contacts / 200M events; this run: {report['contacts']:,}): "
              f"overlap of 5 <= 50 ms {met(o['segengine_ms'] <= 50)} ({o['segengine_ms']:.1f} ms); "
              f"trend of 90 daily points <= 1 s {met(worst_trend <= 1000)} (worst {worst_trend:,.0f} ms); "
              f"why <= 50 ms {met(worst_why <= 50)} (worst {worst_why:.1f} ms); each at least 100x "
              "faster than the SQL: see the last column."]
    from .report import write_scale_section

    write_scale_section("analytics benchmark", "Analytics (`python -m benchmarks.analytics`)",
                        int(report["contacts"]), lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace")
    parser.add_argument("--as-of", default="2026-10-31")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--trend-repeat", type=int, default=2)
    parser.add_argument("--points", type=int, default=90)
    parser.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=1))
    if args.write:
        write_section(report)


if __name__ == "__main__":
    main()
