"""Baseline: hand-written ClickHouse SQL (chdb, in-process) over the raw Parquet files.

The DuckDB baseline's queries as a ClickHouse user writes them: ``file(..., Parquet)``
views, ``lower()`` for case-insensitive text, ``IN`` / ``NOT IN`` subqueries (ClickHouse
prefers them to correlated ``EXISTS``), ``GROUP BY ... HAVING`` for thresholds, and
``ifNull`` wherever a negated predicate meets a null. The session time zone is UTC, so
``toDate`` gives UTC days. `chdb_bitmap` runs the same segments on MergeTree tables
with bitmaps.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from . import RawData, days_before, queries

LISTS = "arrayMap(x -> lower(trimBoth(x)), splitByChar(';', ifNull(c.lists, '')))"
STATUS = "if(lower(trimBoth(ifNull(c.status, ''))) = '', 'active', lower(trimBoth(c.status)))"
DOMAIN = "lower(splitByChar('@', c.email)[2])"
SETTINGS = {"session_timezone": "UTC", "union_default_mode": "DISTINCT"}


def d(day: dt.date) -> str:
    return f"toDate('{day.isoformat()}')"


def last_campaigns(n: int, as_of: dt.date) -> str:
    """The last n campaigns: by earliest `sent` up to the end of as_of, ties by id desc."""
    return (
        "SELECT campaign FROM events WHERE type = 'sent' GROUP BY campaign "
        f"HAVING toDate(min(timestamp)) <= {d(as_of)} "
        f"ORDER BY min(timestamp) DESC, campaign DESC LIMIT {n}"
    )


def in_window(kind: str, low: dt.date, high: dt.date, extra: str = "") -> str:
    """The emails with an event of `kind` on a UTC day in [low, high]."""
    return (f"SELECT email FROM events WHERE type = '{kind}' {extra} "
            f"AND toDate(timestamp) BETWEEN {d(low)} AND {d(high)}")


def opened_ever() -> str:
    return "SELECT email FROM events WHERE type = 'open'"


# --- field predicates (also used by chdb_bitmap, over its contacts table) -------------

STATE_IN = "lower(c.state) IN ('ca', 'tx', 'ny')"
TITLE_ENGINEER = "position(lower(c.title), 'engineer') > 0"
ADDED_H1_2025 = "toDate(c.date_added) BETWEEN toDate('2025-01-01') AND toDate('2025-06-30')"
EMPTY_AWARE = "ifNull(lower(c.state) != 'ca', 1) AND ifNull(c.title, '') = ''"
ACTIVE = f"{STATUS} = 'active'"
NEWSLETTER = f"has({LISTS}, 'newsletter')"
CTO_OR_SALES_WEST = (
    "(lower(c.title) = 'cto' OR position(lower(c.title), 'sales') > 0) "
    "AND lower(c.state) IN ('ca', 'or', 'wa')"
)
ADDED_BEFORE_2025 = "toDate(c.date_added) < toDate('2025-01-01')"
STATE_CA = "lower(c.state) = 'ca'"
SCORED_STATES = "c.score >= 40 AND lower(c.state) IN ('ca', 'ny', 'tx')"
THREE_FIELDS = (
    "c.employees BETWEEN 50 AND 5000 AND NOT ifNull(lower(c.state) IN ('ca', 'tx'), 0) "
    "AND ifNull(c.title, '') != ''"
)
LOW_CUSTOMER = f"has({LISTS}, 'customers') AND ifNull(c.score < 20, 0)"
EXCLUDED = (
    "ifNull(lower(c.title) = 'student', 0) OR ifNull(c.vip, 0) "
    f"OR ifNull(endsWith({DOMAIN}, 'gmail.example'), 0)"
)


def engaged_mid_size(as_of: dt.date) -> str:
    return (
        "ifNull(c.score >= 60 AND c.employees BETWEEN 100 AND 10000 "
        f"AND toDate(c.last_login) BETWEEN {d(days_before(as_of, 365))} AND {d(as_of)}, 0)"
    )


def every_operator_fields(as_of: dt.date) -> str:
    return (
        f"{STATUS} IN ('active', 'bounced') AND NOT has({LISTS}, 'trial') "
        "AND startsWith(lower(c.company), 'g') AND ifNull(c.score != 50, 1) "
        "AND c.vip = false AND c.birthday <= toDate('1989-12-31') "
        f"AND toDate(c.last_login) <= {d(as_of - dt.timedelta(days=31))}"
    )


# --- the segments ------------------------------------------------------------------------


def select(where: str) -> str:
    return f"SELECT email FROM contacts c WHERE {where}"


def field_state_in(as_of: dt.date) -> str:
    return select(STATE_IN)


def field_title_contains(as_of: dt.date) -> str:
    return select(TITLE_ENGINEER)


def field_date_added_between(as_of: dt.date) -> str:
    return select(ADDED_H1_2025)


def field_empty_aware(as_of: dt.date) -> str:
    return select(EMPTY_AWARE)


def list_newsletter_active(as_of: dt.date) -> str:
    return select(f"{ACTIVE} AND {NEWSLETTER}")


def cto_or_sales_west(as_of: dt.date) -> str:
    return select(CTO_OR_SALES_WEST)


def inactive_newsletter(as_of: dt.date) -> str:
    return select(f"{ACTIVE} AND {NEWSLETTER} AND {ADDED_BEFORE_2025} "
                  f"AND c.email NOT IN ({opened_ever()})")


def never_opened(as_of: dt.date) -> str:
    return select(f"{ACTIVE} AND c.email NOT IN ({opened_ever()})")


def state_ca(as_of: dt.date) -> str:
    return select(STATE_CA)


def never_opened_any_status(as_of: dt.date) -> str:
    return select(f"c.email NOT IN ({opened_ever()})")


def opened_nl_0034_in_september(as_of: dt.date) -> str:
    opens = in_window("open", dt.date(2026, 9, 1), dt.date(2026, 9, 30), "AND campaign = 'nl-0034'")
    return select(f"c.email IN ({opens})")


def ca_pricing_clickers_30d(as_of: dt.date) -> str:
    clicks = in_window("click", days_before(as_of, 30), as_of,
                       "AND position(lower(url), 'pricing') > 0")
    return select(f"{ACTIVE} AND {STATE_CA} AND c.email IN ({clicks})")


def opened_3x_in_90d(as_of: dt.date) -> str:
    opens = in_window("open", days_before(as_of, 90), as_of)
    return select(f"c.email IN ({opens} GROUP BY email HAVING count() >= 3)")


def opened_any_of_last_5(as_of: dt.date) -> str:
    return select("c.email IN (SELECT email FROM events WHERE type = 'open' "
                  f"AND campaign IN ({last_campaigns(5, as_of)}))")


def cold_in_last_5(as_of: dt.date) -> str:
    twice = ("SELECT email FROM events WHERE type = 'open' "
             f"AND campaign IN ({last_campaigns(5, as_of)}) GROUP BY email HAVING count() >= 2")
    return select(f"{ACTIVE} AND c.email NOT IN ({twice})")


def nested_negation(as_of: dt.date) -> str:
    clickers = in_window("click", days_before(as_of, 180), as_of)
    customers_quiet = (f"hasAny({LISTS}, ['customers', 'trial']) "
                       f"AND c.email NOT IN ({clickers})")
    return select(f"{STATUS} != 'bounced' AND (({customers_quiet}) "
                  f"OR {engaged_mid_size(as_of)}) AND NOT ({EXCLUDED})")


def opened_2_5x_180d_scored(as_of: dt.date) -> str:
    opens = in_window("open", days_before(as_of, 180), as_of)
    return select(f"{SCORED_STATES} AND c.email IN ({opens} GROUP BY email "
                  "HAVING count() BETWEEN 2 AND 5)")


def clicked_pricing_2x(as_of: dt.date) -> str:
    return select("c.email IN (SELECT email FROM events WHERE type = 'click' "
                  "AND position(lower(url), 'pricing') > 0 GROUP BY email HAVING count() >= 2)")


def three_field_rules(as_of: dt.date) -> str:
    return select(THREE_FIELDS)


def nested_negation_quiet(as_of: dt.date) -> str:
    opened = in_window("open", days_before(as_of, 30), as_of)
    clicked = in_window("click", days_before(as_of, 90), as_of)
    return select(f"{STATUS} != 'unsubscribed' AND c.email NOT IN ({opened}) "
                  f"AND c.email NOT IN ({clicked}) AND NOT ({LOW_CUSTOMER})")


def every_operator(as_of: dt.date) -> str:
    sent = in_window("sent", days_before(as_of, 60), as_of)
    clicked_3x = "SELECT email FROM events WHERE type = 'click' GROUP BY email HAVING count() >= 3"
    return select(f"{every_operator_fields(as_of)} AND c.email IN ({sent}) "
                  f"AND c.email NOT IN ({clicked_3x})")


QUERIES = queries(globals())


def union_sql(parts: tuple[str, ...], as_of: dt.date) -> str:
    body = " UNION DISTINCT ".join(f"({QUERIES[p](as_of)})" for p in parts)
    return f"SELECT count() FROM ({body})"


class ChdbSession:
    """One in-process ClickHouse session: in `directory` (kept), or a temporary one."""

    def __init__(self, directory: Path | None = None) -> None:
        from chdb import session

        self.session = session.Session(str(directory)) if directory else session.Session()
        settings = ", ".join(f"{k} = '{v}'" for k, v in SETTINGS.items())
        self.execute(f"SET {settings}")

    def execute(self, sql: str) -> str:
        return str(self.session.query(sql, "CSV"))

    def scalar(self, sql: str) -> int:
        return int(self.execute(sql).strip().strip('"'))

    def close(self) -> None:
        self.session.close()


class ChdbParquetBaseline:
    """Views over the raw Parquet files; every count reads them again."""

    def __init__(self, data: RawData):
        self.chdb = ChdbSession()
        self.chdb.execute("CREATE DATABASE IF NOT EXISTS bench")
        self.chdb.execute("USE bench")
        for name, path in (("contacts", data.contacts), ("events", data.events)):
            self.chdb.execute(f"CREATE OR REPLACE VIEW {name} AS "
                              f"SELECT * FROM file('{path}', Parquet)")

    def count(self, parts: tuple[str, ...], as_of: dt.date) -> int:
        return self.chdb.scalar(union_sql(parts, as_of))

    def close(self) -> None:
        self.chdb.close()
