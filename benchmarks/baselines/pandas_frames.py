"""Baseline: hand-written pandas over the raw Parquet files.

Each query reads only the columns it needs (``columns=``) and only the event type it
counts (``filters=``, pushed down to Parquet), then works on whole columns: a
boolean mask over the contacts in file order. A union ORs the masks. Day windows
compare timestamps against UTC midnights (``low <= ts < high + 1 day``), which is
the day-granular rule without converting every timestamp to a date object.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import numpy as np
import pandas as pd

from . import RawData, days_before, queries

Mask = np.ndarray
Query = Callable[["Reader", dt.date], Mask]


class Reader:
    """Column reads from the raw files."""

    def __init__(self, data: RawData):
        self.data = data

    def contacts(self, *columns: str) -> pd.DataFrame:
        return pd.read_parquet(self.data.contacts, columns=list(columns))

    def events(self, kind: str, *columns: str) -> pd.DataFrame:
        return pd.read_parquet(
            self.data.events, columns=list(columns), filters=[("type", "==", kind)]
        )


def truth(values: pd.Series) -> Mask:
    """A two-valued numpy mask: missing is False."""
    return values.fillna(False).to_numpy(dtype=bool)


def lower(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name].str.lower()


def is_active(frame: pd.DataFrame) -> Mask:
    raw = frame["status"].str.strip().str.lower()
    return truth(raw.eq("active") | raw.isna() | raw.eq(""))


def status_is(frame: pd.DataFrame, value: str) -> Mask:
    raw = frame["status"].str.strip().str.lower()
    return truth(raw.eq(value))


def in_lists(frame: pd.DataFrame, *names: str) -> Mask:
    """Member of any of `names`: one vectorised regex over the `;`-joined text."""
    pattern = r"(?:^|;)\s*(?:" + "|".join(names) + r")\s*(?:;|$)"
    return truth(frame["lists"].str.contains(pattern, case=False, regex=True))


def _midnight(day: dt.date, tz: str | None) -> pd.Timestamp:
    return pd.Timestamp(day.isoformat(), tz=tz)


def day_between(values: pd.Series, low: dt.date, high: dt.date) -> Mask:
    """low <= UTC day <= high, for zoned (UTC) or naive (UTC) timestamps."""
    tz = "UTC" if getattr(values.dt, "tz", None) is not None else None
    start, end = _midnight(low, tz), _midnight(high + dt.timedelta(days=1), tz)
    return truth((values >= start) & (values < end))


def members(contacts: pd.DataFrame, emails: pd.Series) -> Mask:
    """Whose email is among `emails`: a left merge, which keeps the contacts' order.

    ``Series.isin`` would be the obvious spelling, but on pandas 3's Arrow-backed
    strings it takes minutes for a million contacts against millions of events; a
    merge on the de-duplicated emails takes about a second.
    """
    wanted = emails.drop_duplicates().to_frame("email")
    found = contacts[["email"]].merge(wanted, on="email", how="left", indicator=True)
    return found["_merge"].eq("both").to_numpy(dtype=bool)


def opened_emails(r: Reader) -> pd.Series:
    return r.events("open", "email")["email"]


def last_campaigns(r: Reader, n: int, as_of: dt.date) -> pd.Series:
    """The last n campaigns: by earliest `sent` up to the end of as_of, ties by id desc."""
    sent = r.events("sent", "campaign", "timestamp")
    send_time = sent.groupby("campaign", observed=True)["timestamp"].min().reset_index()
    sent_by_then = send_time[send_time["timestamp"] < _midnight(as_of + dt.timedelta(days=1), None)]
    ranked = sent_by_then.sort_values(["timestamp", "campaign"], ascending=False)
    return ranked["campaign"].head(n)


def field_state_in(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("state")
    return truth(lower(c, "state").isin(["ca", "tx", "ny"]))


def field_title_contains(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("title")
    return truth(lower(c, "title").str.contains("engineer", regex=False))


def field_date_added_between(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("date_added")
    return day_between(c["date_added"], dt.date(2025, 1, 1), dt.date(2025, 6, 30))


def field_empty_aware(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("state", "title")
    is_ca = truth(lower(c, "state").eq("ca"))
    no_title = truth(c["title"].isna() | c["title"].eq(""))
    return ~is_ca & no_title


def list_newsletter_active(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("status", "lists")
    return is_active(c) & in_lists(c, "newsletter")


def cto_or_sales_west(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("title", "state")
    title = lower(c, "title")
    cto_or_sales = truth(title.eq("cto") | title.str.contains("sales", regex=False))
    return cto_or_sales & truth(lower(c, "state").isin(["ca", "or", "wa"]))


def inactive_newsletter(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status", "lists", "date_added")
    old = truth(c["date_added"] < _midnight(dt.date(2025, 1, 1), "UTC"))
    never = ~members(c, opened_emails(r))
    return is_active(c) & in_lists(c, "newsletter") & old & never


def never_opened(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status")
    return is_active(c) & ~members(c, opened_emails(r))


def state_ca(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("state")
    return truth(lower(c, "state").eq("ca"))


def never_opened_any_status(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email")
    return ~members(c, opened_emails(r))


def opened_nl_0034_in_september(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email")
    opens = r.events("open", "email", "campaign", "timestamp")
    hit = truth(opens["campaign"].eq("nl-0034")) & day_between(
        opens["timestamp"], dt.date(2026, 9, 1), dt.date(2026, 9, 30)
    )
    return members(c, opens["email"][hit])


def ca_pricing_clickers_30d(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status", "state")
    clicks = r.events("click", "email", "timestamp", "url")
    hit = truth(clicks["url"].str.lower().str.contains("pricing", regex=False)) & day_between(
        clicks["timestamp"], days_before(as_of, 30), as_of
    )
    who = is_active(c) & truth(lower(c, "state").eq("ca"))
    return who & members(c, clicks["email"][hit])


def opened_3x_in_90d(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email")
    opens = r.events("open", "email", "timestamp")
    recent = opens["email"][day_between(opens["timestamp"], days_before(as_of, 90), as_of)]
    counts = recent.value_counts()
    return members(c, pd.Series(counts.index[counts.to_numpy() >= 3]))


def _opens_in_last_5(r: Reader, as_of: dt.date) -> pd.Series:
    opens = r.events("open", "email", "campaign")
    return opens["email"][opens["campaign"].isin(last_campaigns(r, 5, as_of)).to_numpy(bool)]


def opened_any_of_last_5(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email")
    return members(c, _opens_in_last_5(r, as_of))


def cold_in_last_5(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status")
    counts = _opens_in_last_5(r, as_of).value_counts().rename("n").reset_index()
    n = c[["email"]].merge(counts, on="email", how="left")["n"].fillna(0).to_numpy()
    return is_active(c) & (n <= 1)


def nested_negation(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status", "lists", "score", "employees", "last_login", "title", "vip")
    clicks = r.events("click", "email", "timestamp")
    recent_clickers = clicks["email"][
        day_between(clicks["timestamp"], days_before(as_of, 180), as_of)
    ]
    customers_quiet = in_lists(c, "customers", "trial") & ~members(c, recent_clickers)
    engaged_mid_size = (
        truth(c["score"].ge(60))
        & truth(c["employees"].between(100, 10000, inclusive="both"))
        & day_between(c["last_login"], days_before(as_of, 365), as_of)
    )
    domain = c["email"].str.lower().str.split("@").str[1]
    excluded = (
        truth(lower(c, "title").eq("student"))
        | truth(c["vip"].astype("boolean").eq(True))
        | truth(domain.str.endswith("gmail.example"))
    )
    return ~status_is(c, "bounced") & (customers_quiet | engaged_mid_size) & ~excluded


def _counts_of(c: pd.DataFrame, emails: pd.Series) -> np.ndarray:
    """Per contact (file order), how many of `emails` are its email."""
    counts = emails.value_counts().rename("n").reset_index()
    return c[["email"]].merge(counts, on="email", how="left")["n"].fillna(0).to_numpy()


def opened_2_5x_180d_scored(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "score", "state")
    opens = r.events("open", "email", "timestamp")
    recent = opens["email"][day_between(opens["timestamp"], days_before(as_of, 180), as_of)]
    n = _counts_of(c, recent)
    fields = truth(c["score"].ge(40)) & truth(lower(c, "state").isin(["ca", "ny", "tx"]))
    return fields & (n >= 2) & (n <= 5)


def clicked_pricing_2x(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email")
    clicks = r.events("click", "email", "url")
    hit = truth(clicks["url"].str.lower().str.contains("pricing", regex=False))
    return _counts_of(c, clicks["email"][hit]) >= 2


def three_field_rules(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("employees", "state", "title")
    sized = truth(c["employees"].between(50, 5000, inclusive="both"))
    not_ca_tx = ~truth(lower(c, "state").isin(["ca", "tx"]))
    has_title = truth(c["title"].notna() & c["title"].ne(""))
    return sized & not_ca_tx & has_title


def nested_negation_quiet(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status", "lists", "score")
    opens = r.events("open", "email", "timestamp")
    clicks = r.events("click", "email", "timestamp")
    opened = opens["email"][day_between(opens["timestamp"], days_before(as_of, 30), as_of)]
    clicked = clicks["email"][day_between(clicks["timestamp"], days_before(as_of, 90), as_of)]
    low_customer = in_lists(c, "customers") & truth(c["score"].lt(20))
    active = ~members(c, opened) & ~members(c, clicked)
    return ~status_is(c, "unsubscribed") & active & ~low_customer


def every_operator(r: Reader, as_of: dt.date) -> Mask:
    c = r.contacts("email", "status", "lists", "company", "score", "vip", "birthday", "last_login")
    sent = r.events("sent", "email", "timestamp")
    recent_sent = sent["email"][day_between(sent["timestamp"], days_before(as_of, 60), as_of)]
    clicks = r.events("click", "email")["email"]
    login_by = _midnight(as_of - dt.timedelta(days=30), "UTC")  # older than 30 days
    return (
        (is_active(c) | status_is(c, "bounced"))
        & ~in_lists(c, "trial")
        & truth(lower(c, "company").str.startswith("g"))
        & ~truth(c["score"].eq(50))
        & truth(c["vip"].astype("boolean").eq(False))
        & truth(pd.to_datetime(c["birthday"]) < pd.Timestamp("1990-01-01"))
        & truth(c["last_login"] < login_by)
        & members(c, recent_sent)
        & (_counts_of(c, clicks) < 3)
    )


QUERIES = queries(globals())


class PandasBaseline:
    """Masks over the contacts in file order; a union ORs them."""

    def __init__(self, data: RawData):
        self.reader = Reader(data)

    def count(self, parts: tuple[str, ...], as_of: dt.date) -> int:
        masks = [QUERIES[p](self.reader, as_of) for p in parts]
        return int(np.logical_or.reduce(masks).sum())

    def close(self) -> None:
        """Nothing to release: every query reads the files again."""
