"""Realistic synthetic contacts and events, in the import format of docs/importing.md.

Benchmarks and demos need data whose *shape* resembles a real mailing list: a few
states and titles dominate, most contacts rarely open, clicks concentrate on a few
pages, unsubscribes and bounces leave a trail in the events. The generator is
vectorised with numpy (one loop per contact block and per campaign, never per row)
and writes both files in chunks, so 10M contacts / 200M events fit in a few GB.

Everything derives from the seed and from the fixed reference date `REFERENCE_END`
(never from the clock), so one seed always gives the same rows; with the same
arguments the Parquet files are byte-identical. docs/synthetic-data.md describes the
distributions.
"""

from __future__ import annotations

import datetime as dt
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import InputError
from .fields import EVENT_TYPES, STATUSES

# --- time frame -------------------------------------------------------------------

#: Every timestamp lies before this instant; fixed so output never depends on today.
REFERENCE_END = dt.datetime(2026, 10, 31, tzinfo=dt.UTC)
HISTORY_DAYS = 3 * 365
DAY = 86_400
END = int(REFERENCE_END.timestamp())
START = END - HISTORY_DAYS * DAY
#: Campaigns stop this long before END so that late opens and clicks still fit.
LAST_SEND = END - 12 * DAY
NEVER = np.iinfo(np.int64).max

# --- vocabularies -----------------------------------------------------------------

FIRST_NAMES = (
    "james mary john patricia robert jennifer michael linda david elizabeth william barbara "
    "richard susan joseph jessica thomas sarah charles karen christopher lisa daniel nancy "
    "matthew betty anthony sandra mark margaret donald ashley steven kimberly andrew emily "
    "paul donna joshua michelle kenneth carol kevin amanda brian melissa george deborah "
    "timothy stephanie ronald rebecca jason laura edward sharon jeffrey cynthia ryan kathleen "
    "jacob amy gary angela nicholas shirley eric anna jonathan brenda wei priya mohammed "
    "sofia diego aisha hiroshi olga"
).split()
LAST_NAMES = (
    "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez "
    "lopez gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson "
    "white harris sanchez clark ramirez lewis robinson walker young allen king wright scott "
    "torres nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter "
    "roberts gomez phillips evans turner diaz parker cruz edwards collins reyes stewart "
    "morris morales murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed "
    "kelly howard kim chen patel singh okafor novak"
).split()

#: Personal mail providers. All domains use the reserved `.example` TLD (RFC 2606):
#: the data looks real but a mistaken `segengine send` can never reach anyone.
PROVIDERS = (
    ("gmail.example", 0.46),
    ("yahoo.example", 0.14),
    ("outlook.example", 0.13),
    ("hotmail.example", 0.08),
    ("icloud.example", 0.11),
    ("aol.example", 0.03),
    ("proton.example", 0.05),
)
#: Work-address share: the rest of the contacts use a personal provider.
WORK_EMAIL_SHARE = 0.5

#: (company, mail domain, employees); popularity follows the order (Zipf-like).
COMPANIES = (
    ("Acme Corp", "acme.example", 1200),
    ("Globex", "globex.example", 5400),
    ("Initech", "initech.example", 340),
    ("Hooli", "hooli.example", 42000),
    ("Umbrella Corp", "umbrella.example", 18000),
    ("Stark Industries", "stark.example", 75000),
    ("Wayne Enterprises", "wayne.example", 56000),
    ("Pied Piper", "piedpiper.example", 120),
    ("Dunder Mifflin", "dundermifflin.example", 650),
    ("Cyberdyne Systems", "cyberdyne.example", 3100),
    ("Massive Dynamic", "massivedynamic.example", 23000),
    ("Wonka Industries", "wonka.example", 2100),
    ("Tyrell Corp", "tyrell.example", 9800),
    ("Aperture Science", "aperture.example", 1500),
    ("Soylent Corp", "soylent.example", 870),
    ("Vandelay Industries", "vandelay.example", 45),
    ("Black Mesa", "blackmesa.example", 4200),
    ("Oscorp", "oscorp.example", 7600),
    ("Nakatomi Trading", "nakatomi.example", 11000),
    ("Sterling Cooper", "sterlingcooper.example", 280),
    ("Bluth Company", "bluth.example", 95),
    ("Gekko & Co, LLC", "gekko.example", 60),
    ("Los Pollos Hermanos", "lospollos.example", 430),
    ("Monsters Inc", "monstersinc.example", 2600),
    ("Planet Express", "planetexpress.example", 18),
    ("Cogswell Cogs", "cogswell.example", 730),
    ("Spacely Sprockets", "spacely.example", 1900),
    ("Virtucon", "virtucon.example", 8800),
    ("Weyland-Yutani", "weyland.example", 64000),
    ("Prestige Worldwide", "prestigeworldwide.example", 12),
)

TITLES = (
    "Engineer",
    "Sales Manager",
    "Marketing Manager",
    "Software Engineer",
    "Account Executive",
    "Product Manager",
    "VP Sales",
    "Data Analyst",
    "CTO",
    "Sales Development Rep",
    "CEO",
    "Customer Success Manager",
    "Director of Sales",
    "Senior Engineer",
    "Designer",
    "Head of Marketing",
    "Operations Manager",
    "Founder",
    "CFO",
    "HR Manager",
    "Inside Sales Representative",
    "VP Engineering",
    "Consultant",
    "Student",
)

#: US states in population order (the Zipf rank) with a few cities each, the
#: largest first.
STATE_CITIES = (
    ("CA", ("Los Angeles", "San Francisco", "San Diego", "San Jose", "Sacramento")),
    ("TX", ("Houston", "Austin", "Dallas", "San Antonio")),
    ("FL", ("Miami", "Orlando", "Tampa", "Jacksonville")),
    ("NY", ("New York", "Buffalo", "Rochester")),
    ("PA", ("Philadelphia", "Pittsburgh")),
    ("IL", ("Chicago", "Naperville")),
    ("OH", ("Columbus", "Cleveland", "Cincinnati")),
    ("GA", ("Atlanta", "Savannah")),
    ("NC", ("Charlotte", "Raleigh", "Durham")),
    ("MI", ("Detroit", "Ann Arbor", "Grand Rapids")),
    ("NJ", ("Newark", "Jersey City")),
    ("VA", ("Richmond", "Arlington")),
    ("WA", ("Seattle", "Bellevue", "Spokane", "Redmond")),
    ("AZ", ("Phoenix", "Tucson", "Scottsdale")),
    ("TN", ("Nashville", "Memphis")),
    ("MA", ("Boston", "Cambridge", "Worcester")),
    ("IN", ("Indianapolis",)),
    ("MD", ("Baltimore",)),
    ("MO", ("St. Louis", "Kansas City")),
    ("WI", ("Milwaukee", "Madison")),
    ("CO", ("Denver", "Boulder")),
    ("MN", ("Minneapolis", "Saint Paul")),
    ("SC", ("Charleston", "Columbia")),
    ("AL", ("Birmingham",)),
    ("LA", ("New Orleans",)),
    ("KY", ("Louisville",)),
    ("OR", ("Portland", "Eugene")),
    ("OK", ("Oklahoma City", "Tulsa")),
    ("CT", ("Hartford", "Stamford")),
    ("UT", ("Salt Lake City", "Provo")),
    ("IA", ("Des Moines",)),
    ("NV", ("Las Vegas", "Reno")),
    ("AR", ("Little Rock",)),
    ("MS", ("Jackson",)),
    ("KS", ("Wichita",)),
    ("NM", ("Albuquerque", "Santa Fe")),
    ("NE", ("Omaha",)),
    ("ID", ("Boise",)),
    ("WV", ("Charleston",)),
    ("HI", ("Honolulu",)),
    ("NH", ("Manchester",)),
    ("ME", ("Portland",)),
    ("MT", ("Billings",)),
    ("RI", ("Providence",)),
    ("DE", ("Wilmington",)),
    ("SD", ("Sioux Falls",)),
    ("ND", ("Fargo",)),
    ("AK", ("Anchorage",)),
    ("DC", ("Washington",)),
    ("VT", ("Burlington",)),
    ("WY", ("Cheyenne",)),
)

#: Mailing lists and their relative pull; a contact joins 0..3 of them.
LISTS = (
    ("newsletter", 6.0),
    ("customers", 2.2),
    ("trial", 1.6),
    ("webinar", 1.2),
    ("product-updates", 0.9),
    ("beta", 0.4),
)
LIST_COUNT_P = (0.12, 0.40, 0.31, 0.17)  # P(in 0, 1, 2, 3 lists)

URLS = (
    "https://example.com/pricing",
    "https://example.com/blog/segmentation-101",
    "https://example.com/docs",
    "https://example.com/features",
    "https://example.com/blog/deliverability-checklist",
    "https://example.com/docs/getting-started",
    "https://example.com/webinar/register",
    "https://example.com/contact-sales",
)

# --- behaviour ----------------------------------------------------------------------

STATUS_P = (0.90, 0.06, 0.04)  # active, unsubscribed, bounced (order of STATUSES)
INITIAL_IMPORT_SHARE = 0.12  # contacts loaded on the first day (a list migration)
NEVER_OPENER_SHARE = 0.35  # open propensity exactly 0
OPEN_RATE = 0.20  # mean open propensity over all contacts
OPEN_BETA_A = 0.55  # shape of the propensity of the others: heavy mass near 0
CLICK_BETA = (1.5, 10.5)  # per-contact click-given-open propensity, mean 0.125
SOFT_BOUNCE_P = 0.004  # per send, for contacts who stay active
TARGET_SHARE = 0.6  # wanted share of eligible contacts reached by one campaign
SEND_SPREAD = 2 * 3600  # a send is delivered over two hours
#: Terminal events (the unsubscribe or hard bounce behind a status) use at most this
#: share of the event budget, so tiny budgets still get ordinary sends.
TERMINAL_BUDGET = 0.1
CONTACT_BLOCK = 250_000  # contacts per random stream and per write: fixed for determinism
CADENCES = (1, 2, 3, 4, 5, 6, *range(7, HISTORY_DAYS + 1, 7))  # candidate days between sends
CADENCE_LABEL = {1: "daily", 7: "weekly", 14: "biweekly"}

# Per-field share of empty values (5-20 %).
EMPTY_P = {
    "first_name": 0.05,
    "company": 0.07,
    "title": 0.10,
    "state": 0.05,
    "city": 0.03,  # on top of contacts without a state
    "employees": 0.12,
    "score": 0.06,
    "vip": 0.10,
    "birthday": 0.20,
    "renewal_date": 0.15,
    "last_login": 0.18,
}

# Random streams: (seed, stream, index) keys so that each part draws the same numbers
# whatever the sizes of the other parts or the write chunks.
_CORE, _BLOCK, _CAMPAIGN = 0, 1, 2

FORMATS = ("parquet", "csv")
CSV_DATETIME = "%Y-%m-%dT%H:%M:%SZ"

CONTACTS_SCHEMA = pa.schema(
    [
        ("email", pa.string()),
        ("status", pa.string()),
        ("date_added", pa.timestamp("us", tz="UTC")),
        ("lists", pa.string()),
        ("first_name", pa.string()),
        ("company", pa.string()),
        ("title", pa.string()),
        ("state", pa.string()),
        ("city", pa.string()),
        ("employees", pa.int64()),
        ("score", pa.int64()),
        ("vip", pa.bool_()),
        ("birthday", pa.date32()),
        ("renewal_date", pa.date32()),
        ("last_login", pa.timestamp("us", tz="UTC")),
    ]
)
EVENTS_SCHEMA = pa.schema(
    [
        ("email", pa.string()),
        ("campaign", pa.string()),
        ("type", pa.string()),
        ("timestamp", pa.timestamp("us")),
        ("url", pa.string()),
    ]
)
_SENT, _OPEN, _CLICK, _BOUNCE, _UNSUB = range(len(EVENT_TYPES))
_ACTIVE, _UNSUBSCRIBED, _BOUNCED = range(len(STATUSES))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *key])))


def _zipf(n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


# --- contacts -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Population:
    """The per-contact facts that events depend on, in contact order (= date_added).

    `stop` is when a non-active contact unsubscribed or bounced (NEVER for active
    ones): no campaign reaches them afterwards. Times are Unix seconds.
    """

    date_added: np.ndarray  # int64, sorted
    status: np.ndarray  # int8 index into STATUSES
    stop: np.ndarray  # int64
    open_p: np.ndarray  # float32 propensity to open a send
    click_p: np.ndarray  # float32 propensity to click an opened send
    terminal_u: np.ndarray  # float32, picks which stops get a terminal event
    suffix: np.ndarray  # int64, a permutation of range(n): makes emails unique

    def __len__(self) -> int:
        return len(self.date_added)


def _population(seed: int, n: int) -> Population:
    """Draw the core per-contact arrays in one stream (date_added must be sorted globally)."""
    rng = _rng(seed, _CORE)
    span = HISTORY_DAYS * DAY
    initial = rng.random(n) < INITIAL_IMPORT_SHARE
    # Growth: later days add more contacts than earlier ones (density ~ t^(1/3)).
    offset = np.where(initial, rng.random(n) * DAY, rng.random(n) ** 0.75 * span)
    date_added = np.sort(START + offset.astype(np.int64))
    status = rng.choice(len(STATUSES), size=n, p=STATUS_P).astype(np.int8)
    stop_at = date_added + (rng.random(n) * (END - date_added)).astype(np.int64)
    stop = np.where(status == _ACTIVE, NEVER, stop_at)
    beta_b = OPEN_BETA_A * (1 - _engaged_mean()) / _engaged_mean()
    open_p = np.where(
        rng.random(n) < NEVER_OPENER_SHARE, 0.0, rng.beta(OPEN_BETA_A, beta_b, size=n)
    ).astype(np.float32)
    click_p = rng.beta(*CLICK_BETA, size=n).astype(np.float32)
    terminal_u = rng.random(n, dtype=np.float32)
    suffix = rng.permutation(n)
    return Population(date_added, status, stop, open_p, click_p, terminal_u, suffix)


def _engaged_mean() -> float:
    """Mean open propensity of contacts who are not never-openers, so the overall mean is OPEN_RATE."""
    return OPEN_RATE / (1 - NEVER_OPENER_SHARE)


def _pick(rng: np.random.Generator, values: tuple, n: int, s: float = 1.0) -> np.ndarray:
    return rng.choice(len(values), size=n, p=_zipf(len(values), s))


def _with_empty(rng: np.random.Generator, arr: pa.Array, share: float) -> pa.Array:
    return pc.if_else(pa.array(rng.random(len(arr)) < share), pa.nulls(len(arr), arr.type), arr)


def _strings(values) -> pa.Array:
    return pa.array(list(values), pa.string())


_FIRST = _strings(FIRST_NAMES)
_FIRST_CAP = _strings(name.capitalize() for name in FIRST_NAMES)
_LAST = _strings(LAST_NAMES)
_DOMAINS = _strings([d for _, d, _ in COMPANIES] + [d for d, _ in PROVIDERS])
_COMPANY_NAMES = _strings(c for c, _, _ in COMPANIES)
_COMPANY_SIZE = np.array([e for _, _, e in COMPANIES], dtype=np.int64)
_TITLES = _strings(TITLES)
_STATES = _strings(s for s, _ in STATE_CITIES)
_CITY_NAMES = _strings(c for _, cities in STATE_CITIES for c in cities)
_CITY_COUNT = np.array([len(c) for _, c in STATE_CITIES])
_CITY_START = np.concatenate([[0], np.cumsum(_CITY_COUNT)[:-1]])
_STATUS_NAMES = _strings(STATUSES)
_TYPE_NAMES = _strings(EVENT_TYPES)
_URLS = _strings(URLS)
_SEPARATORS = _strings(["", ".", "_"])
_PADDING = _strings(["", " ", "\t"])
# Every subset of LISTS, indexed by its bit mask, as the `;`-joined cell (null if none).
_LIST_CELLS = pa.array(
    [
        ";".join(name for i, (name, _) in enumerate(LISTS) if mask >> i & 1) or None
        for mask in range(1 << len(LISTS))
    ],
    pa.string(),
)


def _list_masks(rng: np.random.Generator, n: int) -> np.ndarray:
    """0..3 distinct lists per contact, weighted, without a loop: Gumbel top-k sampling."""
    k = rng.choice(len(LIST_COUNT_P), size=n, p=LIST_COUNT_P)
    weights = np.log([w for _, w in LISTS])
    keys = weights + rng.gumbel(size=(n, len(LISTS)))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    member = rank < k[:, None]
    return (member * (1 << np.arange(len(LISTS)))).sum(axis=1).astype(np.int64)


def _emails(
    rng: np.random.Generator, first: np.ndarray, company: np.ndarray, suffix: np.ndarray
) -> pa.Array:
    """Addresses like ``jane.smith42@gmail.example``.

    Unique by construction: name parts hold letters only and every local part ends
    with the contact's own number from a permutation, so two contacts never share
    the trailing digits.
    """
    n = len(first)
    last = rng.choice(len(LAST_NAMES), size=n, p=_zipf(len(LAST_NAMES), 0.7))
    first_s, last_s = _FIRST.take(first), _LAST.take(last)
    # Formats: first.last, flast, first_last, first, firstl.
    fmt = rng.choice(5, size=n, p=(0.40, 0.25, 0.10, 0.10, 0.15))
    initial = pc.utf8_slice_codeunits(first_s, 0, 1)
    head = pc.if_else(pa.array(fmt == 1), initial, first_s)
    sep = _SEPARATORS.take(np.select([fmt == 0, fmt == 2], [1, 2], 0))
    last_initial = pc.utf8_slice_codeunits(last_s, 0, 1)
    tail = pc.if_else(pa.array(fmt == 3), "", pc.if_else(pa.array(fmt == 4), last_initial, last_s))
    work = rng.random(n) < WORK_EMAIL_SHARE
    provider = rng.choice(len(PROVIDERS), size=n, p=[p for _, p in PROVIDERS])
    domain = _DOMAINS.take(np.where(work, company, len(COMPANIES) + provider))
    number = pc.cast(pa.array(suffix), pa.string())
    return pc.binary_join_element_wise(head, sep, tail, number, "@", domain, "")


def _messy(rng: np.random.Generator, email: pa.Array) -> pa.Array:
    """CSV realism: a few addresses typed with capitals or surrounding white space.

    The import normalises them (docs/importing.md), so they stay the same contacts.
    """
    u = rng.random(len(email))
    capital = pc.if_else(pa.array(u < 0.02), pc.utf8_capitalize(email), email)
    upper = pc.if_else(pa.array((u >= 0.02) & (u < 0.025)), pc.utf8_upper(email), capital)
    pad = _PADDING.take(rng.choice(3, size=len(email), p=(0.99, 0.008, 0.002)))
    return pc.binary_join_element_wise(pad, upper, pad, "")


def _timestamps(seconds: np.ndarray, tz: str | None = "UTC") -> pa.Array:
    return pa.array(seconds.astype(np.int64) * 1_000_000, pa.timestamp("us", tz=tz))


def _dates(days: np.ndarray) -> pa.Array:
    return pa.array(days.astype(np.int32), pa.date32())


def _contact_block(
    seed: int, pop: Population, lo: int, hi: int, messy: bool
) -> tuple[pa.Table, pa.Array, np.ndarray]:
    """Contacts lo..hi: the file rows, their canonical emails and list bit masks."""
    rng = _rng(seed, _BLOCK, lo // CONTACT_BLOCK)
    n = hi - lo
    added = pop.date_added[lo:hi]
    first = _pick(rng, FIRST_NAMES, n, 0.6)
    company = _pick(rng, COMPANIES, n, 0.9)
    email = _emails(rng, first, company, pop.suffix[lo:hi])
    masks = _list_masks(rng, n)
    state = _pick(rng, STATE_CITIES, n, 0.9)
    city = _CITY_START[state] + (rng.random(n) ** 1.6 * _CITY_COUNT[state]).astype(np.int64)
    state_empty = rng.random(n) < EMPTY_P["state"]
    noise = rng.normal(0, 12, n)
    # Lead score follows engagement, as a scoring model would.
    score = np.clip(np.rint(25 + 60 * pop.open_p[lo:hi] + noise), 0, 100).astype(np.int64)
    birthday = rng.integers(_day(dt.date(1955, 1, 1)), _day(dt.date(2005, 1, 1)), n)
    renewal = END // DAY + rng.integers(-180, 366, n)
    last_login = added + (rng.random(n) * (END - added)).astype(np.int64)
    columns = {
        "email": email,
        "status": _STATUS_NAMES.take(pop.status[lo:hi]),
        "date_added": _timestamps(added),
        "lists": _LIST_CELLS.take(masks),
        "first_name": _with_empty(rng, _FIRST_CAP.take(first), EMPTY_P["first_name"]),
        "company": _with_empty(rng, _COMPANY_NAMES.take(company), EMPTY_P["company"]),
        "title": _with_empty(rng, _TITLES.take(_pick(rng, TITLES, n)), EMPTY_P["title"]),
        "state": pc.if_else(pa.array(state_empty), pa.nulls(n, pa.string()), _STATES.take(state)),
        "city": pc.if_else(
            pa.array(state_empty),
            pa.nulls(n, pa.string()),
            _with_empty(rng, _CITY_NAMES.take(city), EMPTY_P["city"]),
        ),
        "employees": _with_empty(rng, pa.array(_COMPANY_SIZE[company]), EMPTY_P["employees"]),
        "score": _with_empty(rng, pa.array(score), EMPTY_P["score"]),
        "vip": _with_empty(rng, pa.array(rng.random(n) < 0.06), EMPTY_P["vip"]),
        "birthday": _with_empty(rng, _dates(birthday), EMPTY_P["birthday"]),
        "renewal_date": _with_empty(rng, _dates(renewal), EMPTY_P["renewal_date"]),
        "last_login": _with_empty(rng, _timestamps(last_login), EMPTY_P["last_login"]),
    }
    if messy:  # the block's last draws, so CSV and Parquet share every other value
        columns["email"] = _messy(rng, email)
    return pa.table(columns, schema=CONTACTS_SCHEMA), email, masks


def _day(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


# --- campaigns ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Exposure:
    """Sums of a per-contact weight over the contacts a campaign at time t may reach.

    A contact is reachable while ``date_added <= t < stop``; with prefix sums in
    date_added order and in stop order, the sum over any set of send times costs
    O(K log n), so many cadences can be tried on 10M contacts in milliseconds.
    """

    added: np.ndarray
    by_added: np.ndarray
    stop_sorted: np.ndarray
    by_stop: np.ndarray

    @classmethod
    def build(
        cls, pop: Population, stop_order: np.ndarray, stop_sorted: np.ndarray, weight: np.ndarray
    ) -> Exposure:
        def prefix(w: np.ndarray) -> np.ndarray:
            return np.concatenate([[0.0], np.cumsum(w, dtype=np.float64)])

        return cls(pop.date_added, prefix(weight), stop_sorted, prefix(weight[stop_order]))

    def total(self, times: np.ndarray) -> float:
        reached = self.by_added[np.searchsorted(self.added, times, "right")]
        gone = self.by_stop[np.searchsorted(self.stop_sorted, times, "right")]
        return float((reached - gone).sum())


@dataclass(frozen=True, eq=False)
class Plan:
    """The campaigns to send, in send order, and the share of reachable contacts each reaches."""

    ids: tuple[str, ...]
    times: np.ndarray  # int64 send start, ascending
    newsletter: np.ndarray  # bool: sent to the newsletter list only
    share: float
    cadence_days: int
    terminal_campaign: np.ndarray  # per contact: campaign index of its terminal event, or -1


def _weekday_on_or_after(day: dt.date, weekday: int) -> dt.date:
    return day + dt.timedelta(days=(weekday - day.weekday()) % 7)


def _date_of(seconds: int) -> dt.date:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).date()


def _at(day: dt.date, hour: int) -> int:
    return _day(day) * DAY + hour * 3600


def _main_times(cadence: int) -> np.ndarray:
    """Promotional sends every `cadence` days, Tuesdays 14:00 UTC from the second week."""
    first = _weekday_on_or_after(_date_of(START + 7 * DAY), 1)
    return np.arange(_at(first, 14), LAST_SEND + 1, cadence * DAY, dtype=np.int64)


def _newsletter_times() -> list[dt.date]:
    """The monthly newsletter: first Thursday of each month, 15:00 UTC."""
    start = _date_of(START)
    days, year, month = [], start.year, start.month + 1
    while True:
        year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
        day = _weekday_on_or_after(dt.date(year, month, 1), 3)
        if _at(day, 15) > LAST_SEND:
            return days
        days.append(day)
        month += 1


def _plan(pop: Population, newsletter: np.ndarray, events: int) -> Plan:
    """Choose the cadence and per-campaign share that give about `events` events.

    Expected events per send are 1 (the send) + soft bounce + open (+ click), using
    each reachable contact's own propensities; terminal unsubscribes and bounces add
    2-3 events each. The cadence is the one whose share is closest to TARGET_SHARE.
    """
    order = np.argsort(pop.stop, kind="stable")
    stop_sorted = pop.stop[order]
    gain = pop.open_p.astype(np.float64) * (1 + pop.click_p)
    nl_days = _newsletter_times()
    nl_times = np.array([_at(d, 15) for d in nl_days], dtype=np.int64)
    member = newsletter.astype(np.float64)
    everyone = Exposure.build(pop, order, stop_sorted, np.ones(len(pop)))
    engaged = Exposure.build(pop, order, stop_sorted, gain)
    nl_sends = Exposure.build(pop, order, stop_sorted, member).total(nl_times)
    nl_gain = Exposure.build(pop, order, stop_sorted, member * gain).total(nl_times)
    # Terminal events per stop time: a hard bounce is sent + bounce, an unsubscribe
    # is sent + open + unsubscribe.
    cost = np.select([pop.status == _BOUNCED, pop.status == _UNSUBSCRIBED], [2.0, 3.0])
    terminal_cost = np.concatenate([[0.0], np.cumsum(cost[order])])
    best = None
    for cadence in CADENCES:
        times = _main_times(cadence)
        if len(times) == 0:
            continue
        budget = float(terminal_cost[np.searchsorted(stop_sorted, times[-1], "right")])
        keep = min(1.0, TERMINAL_BUDGET * events / budget) if budget else 1.0
        sends = everyone.total(times) + nl_sends
        per_send = sends * (1 + SOFT_BOUNCE_P) + (1 - SOFT_BOUNCE_P) * (
            engaged.total(times) + nl_gain
        )
        share = (events - keep * budget) / per_send if per_send else np.inf
        fit = abs(np.log(max(share, 1e-12) / TARGET_SHARE))
        if share <= 1 and (best is None or fit < best[0]):
            best = (fit, cadence, times, share, keep)
    if best is None:
        raise InputError(
            f"--events {events} is more than {len(pop)} contacts can receive over "
            f"{HISTORY_DAYS // 365} years of daily campaigns; use more contacts or fewer events"
        )
    _, cadence, times, share, keep = best
    terminal = (pop.stop <= times[-1]) & (pop.status != _ACTIVE) & (pop.terminal_u < keep)
    return _assemble(cadence, times, nl_days, max(share, 0.0), terminal, pop)


def _assemble(
    cadence: int,
    main: np.ndarray,
    nl_days: list[dt.date],
    share: float,
    terminal: np.ndarray,
    pop: Population,
) -> Plan:
    label = CADENCE_LABEL.get(cadence, "promo")
    main_ids = [f"c{_date_of(int(t)).isoformat()}-{label}" for t in main]
    nl_ids = [f"nl-{i + 1:04d}" for i in range(len(nl_days))]
    times = np.concatenate([main, [_at(d, 15) for d in nl_days]]).astype(np.int64)
    is_nl = np.concatenate([np.zeros(len(main), bool), np.ones(len(nl_days), bool)])
    order = np.argsort(times, kind="stable")
    # A stopped contact's terminal event belongs to the first promotional send on or
    # after its stop time: everyone is reachable by those, unlike the newsletter.
    main_pos = np.flatnonzero(~is_nl[order])
    term = np.searchsorted(main, np.minimum(pop.stop, main[-1]), "left")
    terminal_campaign = np.where(terminal, main_pos[term], -1)
    return Plan(
        ids=tuple(np.array(main_ids + nl_ids, dtype=object)[order]),
        times=times[order],
        newsletter=is_nl[order],
        share=share,
        cadence_days=cadence,
        terminal_campaign=terminal_campaign,
    )


# --- events -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EventBatch:
    """Events as parallel arrays of codes; turned into strings only when written."""

    contact: np.ndarray  # int64 row in the contacts
    campaign: np.ndarray  # int32 index into Plan.ids
    type: np.ndarray  # int8 index into EVENT_TYPES
    time: np.ndarray  # int64 Unix seconds
    url: np.ndarray  # int8 index into URLS, -1 = none

    def __len__(self) -> int:
        return len(self.contact)

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        return EventBatch(
            *(
                np.concatenate([getattr(b, f) for b in batches])
                for f in ("contact", "campaign", "type", "time", "url")
            )
        )

    def slice(self, lo: int, hi: int) -> EventBatch:
        return EventBatch(
            self.contact[lo:hi],
            self.campaign[lo:hi],
            self.type[lo:hi],
            self.time[lo:hi],
            self.url[lo:hi],
        )


def _delay(
    rng: np.random.Generator, median: float, sigma: float, low: int, high: int, n: int
) -> np.ndarray:
    """Heavy-tailed reaction times: most people react soon, some days later."""
    return np.clip(rng.lognormal(np.log(median), sigma, n), low, high).astype(np.int64)


def _batch(
    k: int, contact: np.ndarray, kind: int, time: np.ndarray, url: np.ndarray | None = None
) -> EventBatch:
    n = len(contact)
    return EventBatch(
        contact,
        np.full(n, k, np.int32),
        np.full(n, kind, np.int8),
        time,
        np.full(n, -1, np.int8) if url is None else url,
    )


def _campaign_events(
    seed: int, k: int, plan: Plan, pop: Population, newsletter: np.ndarray
) -> EventBatch:
    """All events of campaign k: sends to a random share of the reachable contacts,
    their opens, clicks and soft bounces, plus the terminal events of contacts who
    stopped since the previous promotional send."""
    rng = _rng(seed, _CAMPAIGN, k)
    t = plan.times[k]
    n = int(np.searchsorted(pop.date_added, t, "right"))
    reach = (pop.stop[:n] > t) & (rng.random(n, dtype=np.float32) < plan.share)
    if plan.newsletter[k]:
        reach &= newsletter[:n]
    who = np.flatnonzero(reach)
    sent = t + rng.integers(0, SEND_SPREAD, len(who))
    bounce = rng.random(len(who)) < SOFT_BOUNCE_P
    opened = ~bounce & (rng.random(len(who)) < pop.open_p[who])
    open_at = sent[opened] + _delay(rng, 3 * 3600, 1.6, 20, 10 * DAY, int(opened.sum()))
    clicked = rng.random(len(open_at)) < pop.click_p[who[opened]]
    click_at = open_at[clicked] + _delay(rng, 45, 1.2, 2, 6 * 3600, int(clicked.sum()))
    url = rng.choice(len(URLS), size=len(click_at), p=_zipf(len(URLS), 1.1)).astype(np.int8)
    return EventBatch.concat(
        [
            _batch(k, who, _SENT, sent),
            _batch(k, who[bounce], _BOUNCE, sent[bounce] + rng.integers(1, 300, int(bounce.sum()))),
            _batch(k, who[opened], _OPEN, open_at),
            _batch(k, who[opened][clicked], _CLICK, click_at, url),
            *_terminal_events(rng, k, np.flatnonzero(plan.terminal_campaign == k), t, pop),
        ]
    )


def _terminal_events(
    rng: np.random.Generator, k: int, who: np.ndarray, t: int, pop: Population
) -> list[EventBatch]:
    """The send that ended a contact's subscription: a hard bounce for bounced
    contacts, an open then an unsubscribe for unsubscribed ones."""
    sent = t + rng.integers(0, SEND_SPREAD, len(who))
    bounced = pop.status[who] == _BOUNCED
    quit_ = ~bounced
    open_at = sent[quit_] + _delay(rng, 3 * 3600, 1.6, 20, 10 * DAY, int(quit_.sum()))
    return [
        _batch(k, who, _SENT, sent),
        _batch(k, who[bounced], _BOUNCE, sent[bounced] + rng.integers(1, 300, int(bounced.sum()))),
        _batch(k, who[quit_], _OPEN, open_at),
        _batch(k, who[quit_], _UNSUB, open_at + rng.integers(5, 1800, int(quit_.sum()))),
    ]


def _events_table(batch: EventBatch, emails: pa.Array, ids: pa.Array) -> pa.Table:
    url = pa.array(batch.url, mask=batch.url < 0)
    return pa.table(
        {
            "email": emails.take(batch.contact),
            "campaign": ids.take(batch.campaign),
            "type": _TYPE_NAMES.take(batch.type),
            "timestamp": _timestamps(batch.time, tz=None),
            "url": _URLS.take(url),
        },
        schema=EVENTS_SCHEMA,
    )


# --- writing ------------------------------------------------------------------------


class _Sink(ABC):
    """One output file written table by table to a temporary name, then renamed, so a
    crashed run never leaves a file that looks complete."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.schema = schema

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)

    @abstractmethod
    def write(self, table: pa.Table) -> None:
        """Append `table` (of this sink's schema) to the file."""

    @abstractmethod
    def _close(self) -> None:
        """Finish the temporary file so it can be renamed into place."""


#: Few distinct values: dictionary-encode. Emails and timestamps are nearly unique, and
#: trying a dictionary on them first only costs time.
_DICTIONARY_COLUMNS = frozenset(
    {
        "status",
        "lists",
        "first_name",
        "company",
        "title",
        "state",
        "city",
        "campaign",
        "type",
        "url",
    }
)


class _ParquetSink(_Sink):
    def __init__(self, path: Path, schema: pa.Schema):
        super().__init__(path, schema)
        repetitive = [f.name for f in schema if f.name in _DICTIONARY_COLUMNS]
        self.writer = pq.ParquetWriter(
            self.tmp, schema, compression="zstd", use_dictionary=repetitive
        )

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def _close(self) -> None:
        self.writer.close()


class _CsvSink(_Sink):
    """CSV through Polars: RFC 4180 quoting only where needed, ISO-8601 with `Z`."""

    def __init__(self, path: Path, schema: pa.Schema):
        super().__init__(path, schema)
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in _close
        self.header = True

    def write(self, table: pa.Table) -> None:
        pl.from_arrow(table).write_csv(
            self.file, include_header=self.header, datetime_format=CSV_DATETIME
        )
        self.header = False

    def _close(self) -> None:
        if self.header:  # no rows: still a valid file with a header
            pl.from_arrow(self.schema.empty_table()).write_csv(self.file)
        self.file.close()


_SINKS: dict[str, type[_Sink]] = {"parquet": _ParquetSink, "csv": _CsvSink}


# --- entry point --------------------------------------------------------------------


def generate(
    out_dir: Path,
    contacts: int,
    events: int,
    seed: int = 0,
    fmt: str = "parquet",
    chunk_events: int = 5_000_000,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write ``contacts.<fmt>`` and ``events.<fmt>`` into `out_dir`.

    `events` is a target: the total lands within a few percent (see
    docs/synthetic-data.md). `progress(done, target)` is called after each written
    chunk of events. Returns the paths, the row counts and the campaign plan summary.
    """
    _check(contacts, events, fmt, chunk_events)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pop = _population(seed, contacts)
    newsletter = np.zeros(contacts, dtype=bool)
    email_chunks: list[pa.Array] = []
    contacts_path = out_dir / f"contacts.{fmt}"
    with _SINKS[fmt](contacts_path, CONTACTS_SCHEMA) as sink:
        for lo in range(0, contacts, CONTACT_BLOCK):
            hi = min(lo + CONTACT_BLOCK, contacts)
            table, email, masks = _contact_block(seed, pop, lo, hi, messy=fmt == "csv")
            sink.write(table)
            email_chunks.append(email)
            newsletter[lo:hi] = masks & 1 == 1
    emails = pa.concat_arrays(email_chunks) if email_chunks else pa.array([], pa.string())
    events_path = out_dir / f"events.{fmt}"
    plan = _plan(pop, newsletter, events) if events else None
    written = _write_events(
        events_path, fmt, seed, plan, pop, newsletter, emails, chunk_events, progress, events
    )
    return {
        "contacts_path": str(contacts_path),
        "events_path": str(events_path),
        "contacts": contacts,
        "events": written,
        "campaigns": len(plan.ids) if plan else 0,
        "cadence_days": plan.cadence_days if plan else None,
        "seed": seed,
        "format": fmt,
        # The data ends here whatever day it is generated: count it as of this date.
        "as_of": REFERENCE_END.date().isoformat(),
    }


def _check(contacts: int, events: int, fmt: str, chunk_events: int) -> None:
    if fmt not in _SINKS:
        raise InputError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if contacts < 0 or events < 0:
        raise InputError("--contacts and --events must be >= 0")
    if events and not contacts:
        raise InputError("--events needs at least one contact to send to")
    if chunk_events < 1:
        raise InputError("chunk_events must be >= 1")


class _EventWriter:
    """Turns event batches into rows and writes them on one background thread.

    Arrow's take and Parquet encoding release the GIL, so on two cores writing chunk
    i overlaps generating chunk i+1; at most one chunk waits, which bounds memory.
    """

    def __init__(
        self,
        sink: _Sink,
        emails: pa.Array,
        ids: pa.Array,
        target: int,
        progress: Callable[[int, int], None] | None,
    ):
        self.sink, self.emails, self.ids = sink, emails, ids
        self.target, self.progress = target, progress
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segengine-synth")
        self.in_flight: Future | None = None
        self.written = 0

    def submit(self, batch: EventBatch) -> None:
        self.drain()
        self.in_flight = self.pool.submit(self._write, batch)

    def drain(self) -> None:
        if self.in_flight is not None:
            self.written += self.in_flight.result()
            self.in_flight = None
            if self.progress:
                self.progress(self.written, self.target)

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.pool.shutdown(wait=True)

    def _write(self, batch: EventBatch) -> int:
        self.sink.write(_events_table(batch, self.emails, self.ids))
        return len(batch)


def _write_events(
    path: Path,
    fmt: str,
    seed: int,
    plan: Plan | None,
    pop: Population,
    newsletter: np.ndarray,
    emails: pa.Array,
    chunk_events: int,
    progress: Callable[[int, int], None] | None,
    target: int,
) -> int:
    """Generate campaign by campaign; write each full `chunk_events` rows as one chunk."""
    with _SINKS[fmt](path, EVENTS_SCHEMA) as sink:
        if plan is None:
            return 0
        writer = _EventWriter(sink, emails, pa.array(list(plan.ids), pa.string()), target, progress)
        try:
            pending: list[EventBatch] = []
            buffered = 0
            for k in range(len(plan.ids)):
                batch = _campaign_events(seed, k, plan, pop, newsletter)
                pending.append(batch)
                buffered += len(batch)
                last = k == len(plan.ids) - 1
                if buffered < chunk_events and not last:
                    continue
                merged = EventBatch.concat(pending)
                cut = len(merged) if last else len(merged) - len(merged) % chunk_events
                for lo in range(0, cut, chunk_events):
                    writer.submit(merged.slice(lo, min(lo + chunk_events, cut)))
                pending, buffered = [merged.slice(cut, len(merged))], len(merged) - cut
        finally:
            writer.close()
    return writer.written
