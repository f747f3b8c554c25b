"""Baseline: hand-written DuckDB SQL over the raw Parquet files.

Written as an experienced analyst would: views over the files, ``lower()`` for
case-insensitive text, ``NOT EXISTS`` anti-joins for "never", ``GROUP BY ... HAVING``
for thresholds and a ``LEFT JOIN`` with ``coalesce(n, 0)`` where zero events count.
The session time zone is UTC, so ``CAST(ts AS DATE)`` is the UTC day of both the
zoned contact timestamps and the naive (UTC) event timestamps.
"""

from __future__ import annotations

import datetime as dt
import os

import duckdb

from . import RawData, days_before, queries

LISTS = "list_transform(string_split(c.lists, ';'), lambda x: lower(trim(x)))"
STATUS = "coalesce(nullif(lower(trim(c.status)), ''), 'active')"
DOMAIN = "lower(split_part(c.email, '@', 2))"


def _d(day: dt.date) -> str:
    return f"DATE '{day.isoformat()}'"


def _last_campaigns(n: int, as_of: dt.date) -> str:
    """The last n campaigns: by earliest `sent` up to the end of as_of, ties by id desc."""
    return (
        "SELECT campaign FROM events WHERE type = 'sent' GROUP BY campaign "
        f"HAVING CAST(min(timestamp) AS DATE) <= {_d(as_of)} "
        f"ORDER BY min(timestamp) DESC, campaign DESC LIMIT {n}"
    )


def _opened_never(as_of: dt.date) -> str:
    return "NOT EXISTS (SELECT 1 FROM events e WHERE e.email = c.email AND e.type = 'open')"


def field_state_in(as_of: dt.date) -> str:
    return "SELECT email FROM contacts c WHERE lower(c.state) IN ('ca', 'tx', 'ny')"


def field_title_contains(as_of: dt.date) -> str:
    return "SELECT email FROM contacts c WHERE contains(lower(c.title), 'engineer')"


def field_date_added_between(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE CAST(c.date_added AS DATE) "
        "BETWEEN DATE '2025-01-01' AND DATE '2025-06-30'"
    )


def field_empty_aware(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c "
        "WHERE coalesce(lower(c.state) <> 'ca', true) AND coalesce(c.title, '') = ''"
    )


def list_newsletter_active(as_of: dt.date) -> str:
    return (
        f"SELECT email FROM contacts c WHERE {STATUS} = 'active' "
        f"AND list_contains({LISTS}, 'newsletter')"
    )


def cto_or_sales_west(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c "
        "WHERE (lower(c.title) = 'cto' OR contains(lower(c.title), 'sales')) "
        "AND lower(c.state) IN ('ca', 'or', 'wa')"
    )


def inactive_newsletter(as_of: dt.date) -> str:
    return (
        f"SELECT email FROM contacts c WHERE {STATUS} = 'active' "
        f"AND list_contains({LISTS}, 'newsletter') "
        f"AND CAST(c.date_added AS DATE) < DATE '2025-01-01' AND {_opened_never(as_of)}"
    )


def never_opened(as_of: dt.date) -> str:
    return f"SELECT email FROM contacts c WHERE {STATUS} = 'active' AND {_opened_never(as_of)}"


def state_ca(as_of: dt.date) -> str:
    return "SELECT email FROM contacts c WHERE lower(c.state) = 'ca'"


def never_opened_any_status(as_of: dt.date) -> str:
    return f"SELECT email FROM contacts c WHERE {_opened_never(as_of)}"


def opened_nl_0034_in_september(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE c.email IN (SELECT email FROM events "
        "WHERE type = 'open' AND campaign = 'nl-0034' "
        "AND CAST(timestamp AS DATE) BETWEEN DATE '2026-09-01' AND DATE '2026-09-30')"
    )


def ca_pricing_clickers_30d(as_of: dt.date) -> str:
    return (
        f"SELECT email FROM contacts c WHERE {STATUS} = 'active' AND lower(c.state) = 'ca' "
        "AND c.email IN (SELECT email FROM events WHERE type = 'click' "
        "AND contains(lower(url), 'pricing') "
        f"AND CAST(timestamp AS DATE) BETWEEN {_d(days_before(as_of, 30))} AND {_d(as_of)})"
    )


def opened_3x_in_90d(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE c.email IN (SELECT email FROM events "
        "WHERE type = 'open' "
        f"AND CAST(timestamp AS DATE) BETWEEN {_d(days_before(as_of, 90))} AND {_d(as_of)} "
        "GROUP BY email HAVING count(*) >= 3)"
    )


def opened_any_of_last_5(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE c.email IN (SELECT email FROM events "
        f"WHERE type = 'open' AND campaign IN ({_last_campaigns(5, as_of)}))"
    )


def cold_in_last_5(as_of: dt.date) -> str:
    return (
        "SELECT c.email FROM contacts c LEFT JOIN (SELECT email, count(*) AS n FROM events "
        f"WHERE type = 'open' AND campaign IN ({_last_campaigns(5, as_of)}) GROUP BY email) o "
        f"ON o.email = c.email WHERE {STATUS} = 'active' AND coalesce(o.n, 0) <= 1"
    )


def nested_negation(as_of: dt.date) -> str:
    recent_clicker = (
        "EXISTS (SELECT 1 FROM events e WHERE e.email = c.email AND e.type = 'click' "
        f"AND CAST(e.timestamp AS DATE) BETWEEN {_d(days_before(as_of, 180))} AND {_d(as_of)})"
    )
    return (
        f"SELECT email FROM contacts c WHERE {STATUS} <> 'bounced' AND ("
        f"(list_has_any({LISTS}, ['customers', 'trial']) AND NOT {recent_clicker}) "
        "OR (c.score >= 60 AND c.employees BETWEEN 100 AND 10000 "
        f"AND CAST(c.last_login AS DATE) BETWEEN {_d(days_before(as_of, 365))} AND {_d(as_of)})"
        ") AND NOT (coalesce(lower(c.title) = 'student', false) OR coalesce(c.vip, false) "
        f"OR coalesce(ends_with({DOMAIN}, 'gmail.example'), false))"
    )


def _in_window(kind: str, low: dt.date, high: dt.date) -> str:
    return (f"e.email = c.email AND e.type = '{kind}' "
            f"AND CAST(e.timestamp AS DATE) BETWEEN {_d(low)} AND {_d(high)}")


def opened_2_5x_180d_scored(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE c.score >= 40 AND lower(c.state) IN ('ca', 'ny', 'tx') "
        "AND c.email IN (SELECT email FROM events WHERE type = 'open' "
        f"AND CAST(timestamp AS DATE) BETWEEN {_d(days_before(as_of, 180))} AND {_d(as_of)} "
        "GROUP BY email HAVING count(*) BETWEEN 2 AND 5)"
    )


def clicked_pricing_2x(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE c.email IN (SELECT email FROM events "
        "WHERE type = 'click' AND contains(lower(url), 'pricing') "
        "GROUP BY email HAVING count(*) >= 2)"
    )


def three_field_rules(as_of: dt.date) -> str:
    return (
        "SELECT email FROM contacts c WHERE c.employees BETWEEN 50 AND 5000 "
        "AND NOT coalesce(lower(c.state) IN ('ca', 'tx'), false) "
        "AND coalesce(c.title, '') <> ''"
    )


def nested_negation_quiet(as_of: dt.date) -> str:
    return (
        f"SELECT email FROM contacts c WHERE {STATUS} <> 'unsubscribed' "
        "AND NOT EXISTS (SELECT 1 FROM events e WHERE "
        f"{_in_window('open', days_before(as_of, 30), as_of)}) "
        "AND NOT EXISTS (SELECT 1 FROM events e WHERE "
        f"{_in_window('click', days_before(as_of, 90), as_of)}) "
        f"AND NOT (coalesce(list_contains({LISTS}, 'customers'), false) "
        "AND coalesce(c.score < 20, false))"
    )


def every_operator(as_of: dt.date) -> str:
    last_login_by = as_of - dt.timedelta(days=31)  # older than 30 days
    return (
        "SELECT c.email FROM contacts c LEFT JOIN (SELECT email, count(*) AS n FROM events "
        "WHERE type = 'click' GROUP BY email) k ON k.email = c.email "
        f"WHERE {STATUS} IN ('active', 'bounced') "
        f"AND NOT coalesce(list_contains({LISTS}, 'trial'), false) "
        "AND starts_with(lower(c.company), 'g') AND coalesce(c.score <> 50, true) "
        "AND c.vip = false AND c.birthday <= DATE '1989-12-31' "
        f"AND CAST(c.last_login AS DATE) <= {_d(last_login_by)} "
        "AND EXISTS (SELECT 1 FROM events e WHERE "
        f"{_in_window('sent', days_before(as_of, 60), as_of)}) "
        "AND coalesce(k.n, 0) < 3"
    )


QUERIES = queries(globals())


def union_sql(parts: tuple[str, ...], as_of: dt.date) -> str:
    """``SELECT count(*)`` of the union: ``UNION`` (not ``UNION ALL``) counts each email once."""
    body = " UNION ".join(f"({QUERIES[p](as_of)})" for p in parts)
    return f"SELECT count(*) FROM ({body})"


class DuckDBBaseline:
    """One connection with ``contacts`` and ``events`` views over the raw files."""

    def __init__(self, data: RawData):
        self.con = duckdb.connect(config={"threads": os.cpu_count() or 2})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"CREATE VIEW contacts AS SELECT * FROM read_parquet('{data.contacts}')")
        self.con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{data.events}')")

    def count(self, parts: tuple[str, ...], as_of: dt.date) -> int:
        return int(self.con.execute(union_sql(parts, as_of)).fetchall()[0][0])

    def close(self) -> None:
        self.con.close()
