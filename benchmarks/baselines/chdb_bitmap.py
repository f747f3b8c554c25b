"""Baseline: ClickHouse (chdb) over MergeTree tables loaded once, with roaring bitmaps.

What a ClickHouse expert builds for segments, as Klaviyo and PostHog describe theirs:
contacts get a dense ``UInt32`` id; events are a MergeTree ordered by (type, day, id),
so a window is a range of the primary key; ``AggregatingMergeTree`` tables keep one
``groupBitmap`` per (type, day) and per (type, campaign). A segment is then bitmap
algebra (``bitmapAnd`` / ``bitmapOr`` / ``bitmapAndnot`` against all contacts) over
scalar subqueries: field rules and count thresholds as ``groupBitmapState`` of a
filter, "did it in a window" as ``groupBitmapOrState`` of the stored day bitmaps.
Loading the tables is timed apart from the counts (the `load_seconds` attribute).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time

from . import SEGMENT_NAMES, RawData, days_before
from . import chdb_sql as ch
from .chdb_sql import ChdbSession, d

ALL = "(SELECT groupBitmapState(uid) FROM contacts)"

LOAD = (
    "CREATE TABLE contacts ENGINE = MergeTree ORDER BY uid AS "
    "SELECT toUInt32(rowNumberInAllBlocks() + 1) AS uid, * FROM file('{contacts}', Parquet)",
    "CREATE TABLE events ENGINE = MergeTree ORDER BY (type, day, uid) AS "
    "SELECT c.uid AS uid, ifNull(e.type, '') AS type, ifNull(e.campaign, '') AS campaign, "
    "ifNull(toDate(e.timestamp), toDate('1970-01-01')) AS day, e.timestamp AS timestamp, "
    "lower(e.url) AS url FROM file('{events}', Parquet) AS e "
    "INNER JOIN contacts AS c ON c.email = e.email",
    "CREATE TABLE day_bitmaps ENGINE = AggregatingMergeTree ORDER BY (type, day) AS "
    "SELECT type, day, groupBitmapState(uid) AS users FROM events GROUP BY type, day",
    "CREATE TABLE campaign_bitmaps ENGINE = AggregatingMergeTree ORDER BY (type, campaign) AS "
    "SELECT type, campaign, groupBitmapState(uid) AS users FROM events GROUP BY type, campaign",
)


def fields(where: str) -> str:
    return f"(SELECT groupBitmapState(uid) FROM contacts AS c WHERE {where})"


def days(kind: str, low: dt.date | None = None, high: dt.date | None = None) -> str:
    """Who had an event of `kind` in [low, high] (no bounds: ever), from day bitmaps."""
    window = "" if low is None else f" AND day BETWEEN {d(low)} AND {d(high or low)}"
    return f"(SELECT groupBitmapOrState(users) FROM day_bitmaps WHERE type = '{kind}'{window})"


def campaigns(kind: str, selected: str) -> str:
    return (f"(SELECT groupBitmapOrState(users) FROM campaign_bitmaps "
            f"WHERE type = '{kind}' AND campaign IN ({selected}))")


def events(kind: str, where: str) -> str:
    return f"(SELECT groupBitmapState(uid) FROM events WHERE type = '{kind}' AND {where})"


def counted(kind: str, where: str, having: str) -> str:
    return ("(SELECT groupBitmapState(uid) FROM (SELECT uid FROM events "
            f"WHERE type = '{kind}' AND {where} GROUP BY uid HAVING {having}))")


def both(*bitmaps: str) -> str:
    out = bitmaps[0]
    for other in bitmaps[1:]:
        out = f"bitmapAnd({out}, {other})"
    return out


def either(*bitmaps: str) -> str:
    out = bitmaps[0]
    for other in bitmaps[1:]:
        out = f"bitmapOr({out}, {other})"
    return out


def without(bitmap: str, *others: str) -> str:
    for other in others:
        bitmap = f"bitmapAndnot({bitmap}, {other})"
    return bitmap


def in_days(low: dt.date, high: dt.date) -> str:
    return f"day BETWEEN {d(low)} AND {d(high)}"


def last_5(as_of: dt.date) -> str:
    return ch.last_campaigns(5, as_of)


BITMAPS = {
    "field-state-in": lambda a: fields(ch.STATE_IN),
    "field-title-contains": lambda a: fields(ch.TITLE_ENGINEER),
    "field-date-added-between": lambda a: fields(ch.ADDED_H1_2025),
    "field-empty-aware": lambda a: fields(ch.EMPTY_AWARE),
    "list-newsletter-active": lambda a: fields(f"{ch.ACTIVE} AND {ch.NEWSLETTER}"),
    "cto-or-sales-west": lambda a: fields(ch.CTO_OR_SALES_WEST),
    "inactive-newsletter": lambda a: without(
        fields(f"{ch.ACTIVE} AND {ch.NEWSLETTER} AND {ch.ADDED_BEFORE_2025}"), days("open")),
    "never-opened": lambda a: without(fields(ch.ACTIVE), days("open")),
    "state-ca": lambda a: fields(ch.STATE_CA),
    "never-opened-any-status": lambda a: without(ALL, days("open")),
    "opened-nl-0034-in-september": lambda a: events(
        "open", f"campaign = 'nl-0034' AND {in_days(dt.date(2026, 9, 1), dt.date(2026, 9, 30))}"),
    "ca-pricing-clickers-30d": lambda a: both(
        fields(f"{ch.ACTIVE} AND {ch.STATE_CA}"),
        events("click", f"position(url, 'pricing') > 0 AND {in_days(days_before(a, 30), a)}")),
    "opened-3x-in-90d": lambda a: counted("open", in_days(days_before(a, 90), a), "count() >= 3"),
    "opened-any-of-last-5": lambda a: campaigns("open", last_5(a)),
    "cold-in-last-5": lambda a: without(
        fields(ch.ACTIVE), counted("open", f"campaign IN ({last_5(a)})", "count() >= 2")),
    "nested-negation": lambda a: both(
        fields(f"{ch.STATUS} != 'bounced' AND NOT ({ch.EXCLUDED})"),
        either(without(fields(f"hasAny({ch.LISTS}, ['customers', 'trial'])"),
                       days("click", days_before(a, 180), a)),
               fields(ch.engaged_mid_size(a)))),
    "opened-2-5x-180d-scored": lambda a: both(
        fields(ch.SCORED_STATES),
        counted("open", in_days(days_before(a, 180), a), "count() BETWEEN 2 AND 5")),
    "clicked-pricing-2x": lambda a: counted("click", "position(url, 'pricing') > 0",
                                            "count() >= 2"),
    "three-field-rules": lambda a: fields(ch.THREE_FIELDS),
    "nested-negation-quiet": lambda a: without(
        fields(f"{ch.STATUS} != 'unsubscribed' AND NOT ({ch.LOW_CUSTOMER})"),
        days("open", days_before(a, 30), a), days("click", days_before(a, 90), a)),
    "every-operator": lambda a: without(
        both(fields(ch.every_operator_fields(a)), days("sent", days_before(a, 60), a)),
        counted("click", "1", "count() >= 3")),
}


missing = sorted(set(SEGMENT_NAMES) - set(BITMAPS))
if missing:
    raise ImportError(f"chdb_bitmap has no formulation of {', '.join(missing)}")


def source(data: RawData) -> dict[str, list]:
    """What the loaded tables were loaded from (a changed file loads them again)."""
    return {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in (data.contacts, data.events)}


class ChdbBitmapBaseline:
    """MergeTree tables and bitmap tables loaded once; each count is bitmap algebra.

    With `data.work` the tables live in a directory there and are loaded only when it
    holds none of these files (every count of a run is a new process); its
    ``loaded.json`` records the load time. Without it they are loaded in memory.
    """

    def __init__(self, data: RawData):
        directory = None if data.work is None else data.work / "chdb-bitmap"
        marker = None if directory is None else directory / "loaded.json"
        wanted = source(data)
        fresh = marker is None or not marker.is_file() or (
            json.loads(marker.read_text()).get("source") != wanted)
        if fresh and directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        self.chdb = ChdbSession(directory)
        self.chdb.execute("CREATE DATABASE IF NOT EXISTS bench")
        self.chdb.execute("USE bench")
        if fresh:
            started = time.perf_counter()
            for statement in LOAD:
                self.chdb.execute(statement.format(contacts=data.contacts, events=data.events))
            self.load_seconds = time.perf_counter() - started
            if marker is not None:
                marker.write_text(json.dumps({"source": wanted, "load_seconds": self.load_seconds}))
        else:
            self.load_seconds = json.loads(marker.read_text())["load_seconds"]

    def count(self, parts: tuple[str, ...], as_of: dt.date) -> int:
        return self.chdb.scalar(
            f"SELECT bitmapCardinality({either(*(BITMAPS[p](as_of) for p in parts))})")

    def close(self) -> None:
        self.chdb.close()
