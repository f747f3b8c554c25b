"""Baseline: hand-written Polars lazy queries over the raw Parquet files.

Each segment is a filter on ``scan_parquet(contacts)``; behaviour is a semi-join
(``how="semi"``), an anti-join (``how="anti"``) or, where zero events must count, a
left join of per-contact counts with ``fill_null(0)``. Nulls are handled explicitly
(``fill_null(False)``) wherever a predicate is negated, since ``~null`` is null.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import polars as pl
import polars.selectors as cs

from . import RawData, days_before, queries

Query = Callable[["Frames", dt.date], pl.LazyFrame]


class Frames:
    """The two lazy scans every query starts from."""

    def __init__(self, data: RawData):
        # `.dt.date()` of a zoned column is the day in its own zone: make the zone UTC
        self.contacts = pl.scan_parquet(data.contacts).with_columns(
            cs.datetime(time_zone="*").dt.convert_time_zone("UTC"))
        self.events = pl.scan_parquet(data.events)

    def of_type(self, kind: str) -> pl.LazyFrame:
        return self.events.filter(pl.col("type") == kind)


def lower(name: str) -> pl.Expr:
    return pl.col(name).str.to_lowercase()


def status() -> pl.Expr:
    raw = pl.col("status").str.strip_chars().str.to_lowercase()
    return pl.when(raw.is_null() | (raw == "")).then(pl.lit("active")).otherwise(raw)


def in_lists(*names: str) -> pl.Expr:
    """Member of any of `names` (lower case); null when the contact is in no list."""
    lists = pl.col("lists").str.split(";").list.eval(pl.element().str.strip_chars().str.to_lowercase())
    return pl.any_horizontal([lists.list.contains(name) for name in names])


def utc_day(name: str) -> pl.Expr:
    """UTC date of a zoned (converted to UTC by `Frames`) or naive (UTC by convention)
    timestamp column."""
    return pl.col(name).dt.date()


def day_between(name: str, low: dt.date, high: dt.date) -> pl.Expr:
    return utc_day(name).is_between(low, high, closed="both")


def emails(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.select("email")


def last_campaigns(f: Frames, n: int, as_of: dt.date) -> pl.LazyFrame:
    """The last n campaigns: by earliest `sent` up to the end of as_of, ties by id desc."""
    return (
        f.of_type("sent")
        .group_by("campaign")
        .agg(pl.col("timestamp").min().alias("send_time"))
        .filter(pl.col("send_time").dt.date() <= as_of)
        .sort(["send_time", "campaign"], descending=True)
        .head(n)
        .select("campaign")
    )


def never_opened_contacts(f: Frames) -> pl.LazyFrame:
    return f.contacts.join(f.of_type("open").select("email"), on="email", how="anti")


def field_state_in(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    return emails(f.contacts.filter(lower("state").is_in(["ca", "tx", "ny"])))


def field_title_contains(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    return emails(f.contacts.filter(lower("title").str.contains("engineer", literal=True)))


def field_date_added_between(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    window = day_between("date_added", dt.date(2025, 1, 1), dt.date(2025, 6, 30))
    return emails(f.contacts.filter(window))


def field_empty_aware(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    not_ca = (lower("state") != "ca").fill_null(True)
    no_title = pl.col("title").fill_null("") == ""
    return emails(f.contacts.filter(not_ca & no_title))


def list_newsletter_active(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    return emails(f.contacts.filter((status() == "active") & in_lists("newsletter")))


def cto_or_sales_west(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    title = (lower("title") == "cto") | lower("title").str.contains("sales", literal=True)
    return emails(f.contacts.filter(title & lower("state").is_in(["ca", "or", "wa"])))


def inactive_newsletter(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    old = utc_day("date_added") < dt.date(2025, 1, 1)
    wanted = (status() == "active") & in_lists("newsletter") & old
    return emails(never_opened_contacts(f).filter(wanted))


def never_opened(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    return emails(never_opened_contacts(f).filter(status() == "active"))


def state_ca(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    return emails(f.contacts.filter(lower("state") == "ca"))


def never_opened_any_status(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    return emails(never_opened_contacts(f))


def opened_nl_0034_in_september(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    opens = f.of_type("open").filter(
        (pl.col("campaign") == "nl-0034")
        & day_between("timestamp", dt.date(2026, 9, 1), dt.date(2026, 9, 30))
    )
    return emails(f.contacts.join(opens.select("email"), on="email", how="semi"))


def ca_pricing_clickers_30d(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    clicks = f.of_type("click").filter(
        lower("url").str.contains("pricing", literal=True)
        & day_between("timestamp", days_before(as_of, 30), as_of)
    )
    who = f.contacts.filter((status() == "active") & (lower("state") == "ca"))
    return emails(who.join(clicks.select("email"), on="email", how="semi"))


def opened_3x_in_90d(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    frequent = (
        f.of_type("open")
        .filter(day_between("timestamp", days_before(as_of, 90), as_of))
        .group_by("email")
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") >= 3)
    )
    return emails(f.contacts.join(frequent.select("email"), on="email", how="semi"))


def opened_any_of_last_5(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    opens = f.of_type("open").join(last_campaigns(f, 5, as_of), on="campaign", how="semi")
    return emails(f.contacts.join(opens.select("email"), on="email", how="semi"))


def cold_in_last_5(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    counts = (
        f.of_type("open")
        .join(last_campaigns(f, 5, as_of), on="campaign", how="semi")
        .group_by("email")
        .agg(pl.len().alias("n"))
    )
    joined = f.contacts.filter(status() == "active").join(counts, on="email", how="left")
    return emails(joined.filter(pl.col("n").fill_null(0) <= 1))


def nested_negation(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    recent_clickers = (
        f.of_type("click")
        .filter(day_between("timestamp", days_before(as_of, 180), as_of))
        .select("email")
        .unique()
        .with_columns(pl.lit(True).alias("recent_click"))
    )
    no_recent_click = ~pl.col("recent_click").fill_null(False)
    customers_quiet = in_lists("customers", "trial").fill_null(False) & no_recent_click
    engaged_mid_size = (
        (pl.col("score") >= 60)
        & pl.col("employees").is_between(100, 10000, closed="both")
        & day_between("last_login", days_before(as_of, 365), as_of)
    ).fill_null(False)
    excluded = (
        (lower("title") == "student").fill_null(False)
        | pl.col("vip").fill_null(False)
        | lower("email").str.split("@").list.get(1).str.ends_with("gmail.example").fill_null(False)
    )
    frame = f.contacts.join(recent_clickers, on="email", how="left")
    return emails(
        frame.filter((status() != "bounced") & (customers_quiet | engaged_mid_size) & ~excluded)
    )


def _who(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The distinct emails of some events, flagged for a left join."""
    return frame.select("email").unique().with_columns(pl.lit(True).alias("hit"))


def _counts(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.group_by("email").agg(pl.len().alias("n"))


def opened_2_5x_180d_scored(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    opens = f.of_type("open").filter(day_between("timestamp", days_before(as_of, 180), as_of))
    some = _counts(opens).filter(pl.col("n").is_between(2, 5, closed="both"))
    who = f.contacts.filter((pl.col("score") >= 40) & lower("state").is_in(["ca", "ny", "tx"]))
    return emails(who.join(some.select("email"), on="email", how="semi"))


def clicked_pricing_2x(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    clicks = f.of_type("click").filter(lower("url").str.contains("pricing", literal=True))
    twice = _counts(clicks).filter(pl.col("n") >= 2)
    return emails(f.contacts.join(twice.select("email"), on="email", how="semi"))


def three_field_rules(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    wanted = (
        pl.col("employees").is_between(50, 5000, closed="both").fill_null(False)
        & ~lower("state").is_in(["ca", "tx"]).fill_null(False)
        & (pl.col("title").fill_null("") != "")
    )
    return emails(f.contacts.filter(wanted))


def nested_negation_quiet(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    opened = f.of_type("open").filter(day_between("timestamp", days_before(as_of, 30), as_of))
    clicked = f.of_type("click").filter(day_between("timestamp", days_before(as_of, 90), as_of))
    low_customer = (
        in_lists("customers").fill_null(False) & (pl.col("score") < 20).fill_null(False)
    )
    quiet = (
        f.contacts.filter((status() != "unsubscribed") & ~low_customer)
        .join(opened.select("email"), on="email", how="anti")
        .join(clicked.select("email"), on="email", how="anti")
    )
    return emails(quiet)


def every_operator(f: Frames, as_of: dt.date) -> pl.LazyFrame:
    sent = f.of_type("sent").filter(day_between("timestamp", days_before(as_of, 60), as_of))
    clicks = _counts(f.of_type("click"))
    wanted = (
        status().is_in(["active", "bounced"])
        & ~in_lists("trial").fill_null(False)
        & lower("company").str.starts_with("g").fill_null(False)
        & (pl.col("score") != 50).fill_null(True)
        & (pl.col("vip") == False).fill_null(False)  # noqa: E712 - a column, not a Python bool
        & (pl.col("birthday") <= dt.date(1989, 12, 31)).fill_null(False)
        & (utc_day("last_login") <= as_of - dt.timedelta(days=31)).fill_null(False)
        & (pl.col("n").fill_null(0) < 3)
    )
    frame = f.contacts.join(clicks, on="email", how="left")
    return emails(frame.filter(wanted).join(sent.select("email"), on="email", how="semi"))


QUERIES = queries(globals())


class PolarsBaseline:
    """Builds the lazy plan of a union and collects only its row count."""

    def __init__(self, data: RawData):
        self.frames = Frames(data)

    def count(self, parts: tuple[str, ...], as_of: dt.date) -> int:
        plans = [QUERIES[p](self.frames, as_of) for p in parts]
        union = plans[0] if len(plans) == 1 else pl.concat(plans).unique()
        return int(union.select(pl.len()).collect().item())

    def close(self) -> None:
        """Nothing to release: scans are re-planned per query."""
