"""Hypothesis strategies: small random workspaces and random resolved rule trees.

Data and rule values come from the same small pools (mixed case, non-ASCII, `""`,
nulls, day boundaries), so random rules hit the corner cases *and* match something.
Any engine's differential test can reuse them:

    @given(ws=workspaces(), data=st.data())
    def test_x(ws, data, tmp_path_factory):
        tables = write_workspace(ws, tmp_path_factory.mktemp("ws"))
        root = data.draw(rule_trees(ws.schema, ws.campaigns))
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from segengine.definition.nodes import (
    ANY_CAMPAIGN,
    ActivityRule,
    BucketRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    Window,
)
from segengine.engines.base import Tables
from segengine.fields import ACTIVITY_EVENT_TYPE, EVENT_TYPES, STATUSES, FieldType, Schema

# --- value pools --------------------------------------------------------------------

#: Text with case pairs, Unicode whose lower-casing is special, LIKE/regex characters,
#: white space (text, not empty) and the empty string (empty).
TEXTS = (
    "Ärger", "ärger", "ÄRGER", "İstanbul", "istanbul", "ISTANBUL", "Berlin", "berlin",
    "New York", "new york city", "Straße", "STRASSE", "ΟΔΟΣ", "οδός", "a%b_c", "x.*y",
    "50%", "O'Brien", " ", "", "ǅemal", "Σίσυφος",
)
NUMBERS = (0.0, -0.0, 1.0, 2.0, -1.5, 3.5, 100.0, 1e9, 0.1 + 0.2)
LIST_NAMES = ("newsletter", "Newsletter", "VIP", "vip", "Ärger-Liste", "ärger-liste", "b2b")
DOMAINS = ("example.com", "bücher.de", "mail.example.org", "x.io")
LOCALS = ("anna", "bob", "çelik", "d.e", "e+tag", "fritz")
CAMPAIGNS = ("c1", "c2", "C1", "camp-b", "Z", "ä-camp", "c10", "c9")
URLS = (
    "https://shop.example.com/Pricing?x=1",
    "https://example.com/pricing",
    "https://example.com/BLOG/ärger",
    "http://x.io/a%b",
    "",
)
AS_OF = dt.date(2026, 3, 15)
#: The largest day count a definition may hold (the validator's limit).
MAX_DAYS = 100_000
#: Days around `AS_OF` (window edges are where off-by-one bugs live) and a few far ones.
DAYS = tuple(AS_OF + dt.timedelta(days=d) for d in (-400, -31, -30, -8, -7, -2, -1, 0, 1, 2, 30))
DAY_STARTS = tuple(dt.datetime.combine(d, dt.time()) for d in DAYS)
DAY_ENDS = tuple(dt.datetime.combine(d, dt.time(23, 59, 59, 999999)) for d in DAYS)
DATETIMES = DAY_STARTS + DAY_ENDS + tuple(dt.datetime.combine(d, dt.time(12)) for d in DAYS[::3])
#: Few distinct send times, so campaigns tie on send time and the id tie-break matters.
#: The last instant of the `as_of` day counts as sent on or before `as_of`.
SEND_TIMES = (DAY_STARTS[5], DAY_ENDS[6], DAY_ENDS[7], DAY_STARTS[8])
#: Day counts that put a window edge exactly on a pooled day.
DAY_OFFSETS = (0, 1, 2, 7, 8, 30, 31)

CUSTOM_FIELDS = (
    ("city", FieldType.TEXT),
    ("company", FieldType.TEXT),
    ("score", FieldType.NUMBER),
    ("birthday", FieldType.DATE),
    ("last_seen", FieldType.DATETIME),
    ("vip", FieldType.BOOLEAN),
)
SCHEMA = Schema(CUSTOM_FIELDS)

VALUES: dict[FieldType, tuple[Any, ...]] = {
    FieldType.TEXT: TEXTS,
    FieldType.NUMBER: NUMBERS,
    FieldType.DATE: DAYS,
    FieldType.DATETIME: DATETIMES,
    FieldType.BOOLEAN: (True, False),
}
ARROW_TYPES: dict[FieldType, pa.DataType] = {
    FieldType.TEXT: pa.string(),
    FieldType.NUMBER: pa.float64(),
    FieldType.DATE: pa.date32(),
    FieldType.DATETIME: pa.timestamp("us"),
    FieldType.BOOLEAN: pa.bool_(),
}


@dataclass(frozen=True)
class Workspace:
    """Contacts and events as plain dicts (the oracle's input) plus their schema."""

    schema: Schema
    contacts: tuple[dict, ...]
    events: tuple[dict, ...]
    campaigns: tuple[str, ...]
    as_of: dt.date


# --- workspaces -----------------------------------------------------------------------


def _maybe(rng: random.Random, values: tuple[Any, ...]) -> Any:
    return None if rng.random() < 0.2 else rng.choice(values)


def _contact(rng: random.Random, contact_id: int) -> dict:
    lists = None if rng.random() < 0.2 else rng.sample(LIST_NAMES, rng.randint(0, 3))
    contact = {
        "contact_id": contact_id,
        "email": f"{rng.choice(LOCALS)}{contact_id}@{rng.choice(DOMAINS)}",
        "status": rng.choice(STATUSES),
        "date_added": rng.choice(DATETIMES),
        "lists": lists,
    }
    for name, ftype in CUSTOM_FIELDS:
        contact[name] = _maybe(rng, VALUES[ftype])
    return contact


def _send_plans(rng: random.Random, campaigns: tuple[str, ...]) -> dict[str, tuple]:
    """For each campaign, the times its `sent` events may have; () = never sent.

    A campaign's first send is one of the few `SEND_TIMES` (so send times tie across
    campaigns) and its later sends come after it.
    """
    plans = {}
    for campaign in campaigns:
        if rng.random() < 0.2:
            plans[campaign] = ()
        else:
            first = rng.choice(SEND_TIMES)
            plans[campaign] = (first,) + tuple(t for t in DATETIMES if t > first)
    return plans


def _event(rng: random.Random, contact_ids: list[int], plans: dict[str, tuple]) -> dict:
    campaign = rng.choice(list(plans))
    etype = rng.choice(EVENT_TYPES)
    if etype == "sent" and not plans[campaign]:
        etype = "open"
    if etype == "sent":
        # Most sends at the first send time, so it is usually the campaign's send time.
        timestamp = plans[campaign][0] if rng.random() < 0.6 else rng.choice(plans[campaign])
    else:
        timestamp = rng.choice(DATETIMES)
    return {
        "contact_id": rng.choice(contact_ids),
        "campaign": campaign,
        "type": etype,
        "timestamp": timestamp,
        "url": _maybe(rng, URLS) if etype == "click" else None,
    }


def _distinct(events: list[dict]) -> tuple[dict, ...]:
    """One row per distinct event, as the store keeps them."""
    return tuple({tuple(e.values()): e for e in events}.values())


@st.composite
def workspaces(draw: st.DrawFn) -> Workspace:
    """5-40 contacts with sparse ids and 0-120 events over the value pools.

    Hypothesis draws the sizes, the campaigns in play and a seed; the rows come from the
    seeded generator. Drawing every cell through Hypothesis cost ~0.1 s per workspace,
    which made the differential tests slow; sizes still shrink towards small examples.
    """
    # Hypothesis favours small sizes; the second branches keep busy workspaces common.
    n_contacts = draw(st.integers(5, 40))
    n_events = draw(st.integers(0, 120) | st.integers(60, 120))
    n_campaigns = draw(st.integers(2, 6) | st.integers(4, 6))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    campaigns = tuple(rng.sample(CAMPAIGNS, n_campaigns))
    ids = rng.sample(range(1, 10_000), n_contacts)
    contacts = tuple(_contact(rng, cid) for cid in ids)
    plans = _send_plans(rng, campaigns)
    events = [_event(rng, ids, plans) for _ in range(n_events)]
    # Mostly the as_of the day pools are laid around; sometimes a day before, or long ago.
    as_of = draw(st.sampled_from((AS_OF,) * 4 + (AS_OF - dt.timedelta(days=1), DAYS[0])))
    return Workspace(SCHEMA, contacts, _distinct(events), campaigns, as_of)


# --- rule trees -----------------------------------------------------------------------
# Strategies are built once and cached: building one inside a draw made a tree cost
# ~0.1 s of Hypothesis validation.

TEXT_SINGLE = ("is", "is_not", "contains", "not_contains", "starts_with", "ends_with")
NUMBER_SINGLE = ("eq", "ne", "gt", "gte", "lt", "lte")
DATE_SINGLE = ("on", "not_on", "before", "after")
COUNT_OPS = ("eq", "gte", "lte", "gt", "lt", "between")
CASES = (str, str.lower, str.upper, str.title)

_INDEX = st.integers(0, 63)
_CASE = st.sampled_from(CASES)


@functools.cache
def _text_values(pool: tuple[str, ...]) -> st.SearchStrategy[str]:
    """A non-empty piece of a pooled text, in some case (rule text may not be "")."""
    texts = st.sampled_from([t for t in pool if t])

    @st.composite
    def piece(draw: st.DrawFn) -> str:
        text = draw(texts)
        if draw(st.booleans()):
            start = draw(_INDEX) % len(text)
            text = text[start : start + 1 + draw(_INDEX) % (len(text) - start)]
        return draw(_CASE)(text)

    return piece()


def _text_pool(name: str) -> tuple[str, ...]:
    if name == "email":
        return tuple(f"{local}1@{domain}" for local in LOCALS for domain in DOMAINS) + LOCALS
    if name == "email_domain":
        return DOMAINS
    return TEXTS


def _sorted_pair(values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, Any]]:
    return st.tuples(values, values).map(lambda p: (min(p), max(p)))


def _tuple_of(values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.lists(values, min_size=1, max_size=3).map(tuple)


_DAY_COUNTS = st.sampled_from(DAY_OFFSETS + (MAX_DAYS,)) | st.integers(0, 40)
#: The calendar's ends are valid rule dates: `before 0001-01-01`, `after 9999-12-31`.
_DATES = st.sampled_from(DAYS) | st.sampled_from((dt.date.min, dt.date.max))
_NUMBERS = st.sampled_from(NUMBERS) | st.floats(-5, 5, allow_nan=False).map(float)
_EMPTIES = st.tuples(st.sampled_from(("is_empty", "is_not_empty")), st.none())
_LIST_NAMES = st.tuples(st.sampled_from(LIST_NAMES), _CASE).map(lambda p: p[1](p[0]))
_DATE_OPS = (
    st.tuples(st.sampled_from(DATE_SINGLE), _DATES)
    | st.tuples(st.just("between"), _sorted_pair(_DATES))
    | st.tuples(st.sampled_from(("in_last_days", "older_than_days")), _DAY_COUNTS)
    | _EMPTIES
)
_OPS_BY_TYPE: dict[FieldType, st.SearchStrategy[tuple[str, Any]]] = {
    FieldType.NUMBER: st.tuples(st.sampled_from(NUMBER_SINGLE), _NUMBERS)
    | st.tuples(st.just("between"), _sorted_pair(_NUMBERS))
    | st.tuples(st.sampled_from(("in", "not_in")), _tuple_of(_NUMBERS))
    | _EMPTIES,
    FieldType.DATE: _DATE_OPS,
    FieldType.DATETIME: _DATE_OPS,
    FieldType.BOOLEAN: st.tuples(st.just("is"), st.booleans()) | _EMPTIES,
    FieldType.ENUM: st.tuples(st.sampled_from(("is", "is_not")), st.sampled_from(STATUSES))
    | st.tuples(
        st.sampled_from(("in", "not_in")),
        st.lists(st.sampled_from(STATUSES), min_size=1, max_size=3, unique=True).map(tuple),
    ),
    FieldType.SET: st.tuples(
        st.sampled_from(("includes", "includes_all", "excludes")), _tuple_of(_LIST_NAMES)
    )
    | _EMPTIES,
}


@functools.cache
def field_ops(ftype: FieldType, name: str) -> st.SearchStrategy[tuple[str, Any]]:
    """(op, normalised value) pairs for every operator of a field type (nodes.py table)."""
    if ftype != FieldType.TEXT:
        return _OPS_BY_TYPE[ftype]
    texts = _text_values(_text_pool(name))
    return (
        st.tuples(st.sampled_from(TEXT_SINGLE), texts)
        | st.tuples(st.sampled_from(("in", "not_in")), _tuple_of(texts))
        | _EMPTIES
    )


@functools.cache
def field_rules(schema: Schema) -> st.SearchStrategy[FieldRule]:
    def for_field(name: str) -> st.SearchStrategy[FieldRule]:
        return st.builds(
            lambda pair, negate: FieldRule(name, pair[0], pair[1], negate),
            field_ops(schema[name], name),
            st.booleans(),
        )

    return st.one_of([for_field(name) for name in schema])


_WINDOWS = st.one_of(
    st.builds(Window, st.sampled_from(("on", "before", "after")), st.sampled_from(DAYS)),
    st.builds(Window, st.just("between"), _sorted_pair(st.sampled_from(DAYS))),
    st.builds(
        Window,
        st.sampled_from(("in_last_days", "older_than_days")),
        st.sampled_from(DAY_OFFSETS) | st.integers(0, 40),
    ),
)
_COUNTS = st.one_of(
    st.just(CountCondition()),
    st.builds(CountCondition, st.sampled_from(COUNT_OPS[:-1]), st.integers(0, 3)),
    st.builds(CountCondition, st.just("between"), _sorted_pair(st.integers(0, 3))),
)
_URL_CONTAINS = st.none() | _text_values(tuple(u for u in URLS if u))


@functools.cache
def _campaign_choices(campaigns: tuple[str, ...]) -> st.SearchStrategy[Any]:
    ids = st.lists(st.sampled_from(campaigns + ("never-sent",)), min_size=1, max_size=3)
    return st.one_of(
        st.just(ANY_CAMPAIGN),
        ids.map(lambda c: tuple(dict.fromkeys(c))),
        st.builds(LastCampaigns, st.integers(1, 4)),
    )


@functools.cache
def activity_rules(campaigns: tuple[str, ...]) -> st.SearchStrategy[ActivityRule]:
    common = {
        "campaigns": _campaign_choices(campaigns),
        "when": st.none() | _WINDOWS,
        "count": _COUNTS,
        "negate": st.booleans(),
    }
    others = st.sampled_from(sorted(a for a in ACTIVITY_EVENT_TYPE if a != "clicked"))
    return st.builds(ActivityRule, others, **common) | st.builds(
        ActivityRule, st.just("clicked"), url_contains=_URL_CONTAINS, **common
    )


#: Seeds with a colon, non-ASCII text and quotes: they are hashed with the email.
SEEDS = ("ab", "spring:2026", "Ärger 'x'", "a")
#: Bucket bounds at the ends of the range and around its middle.
_BOUNDS = st.sampled_from((0, 1, 2500, 4999, 5000, 5001, 9999, 10000)) | st.integers(0, 10_000)
bucket_rules = st.builds(
    lambda seed, pair, negate: BucketRule(seed, pair[0], pair[1], negate),
    st.sampled_from(SEEDS),
    _sorted_pair(_BOUNDS),
    st.booleans(),
)


@functools.cache
def leaf_rules(schema: Schema, campaigns: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """One field, activity or bucket rule: field and activity rules equally likely,
    bucket rules less often.

    (A plain `|` would flatten the per-field choices into the per-kind one, making
    activity rules two branches out of thirteen.)"""
    kinds = (field_rules(schema), activity_rules(tuple(campaigns)), bucket_rules)
    return st.sampled_from((0, 0, 1, 1, 2)).flatmap(kinds.__getitem__)


def _rules(schema: Schema, campaigns: tuple[str, ...], depth: int) -> st.SearchStrategy[Any]:
    leaves = leaf_rules(schema, campaigns)
    if depth <= 0:
        return leaves
    return leaves | groups(schema, campaigns, depth - 1)


@functools.cache
def groups(schema: Schema, campaigns: tuple[str, ...], depth: int) -> st.SearchStrategy[Group]:
    return st.builds(
        Group,
        st.sampled_from(("all", "any")),
        st.lists(_rules(schema, campaigns, depth), max_size=4).map(tuple),
        st.booleans(),
    )


def rule_trees(
    schema: Schema = SCHEMA, campaigns: tuple[str, ...] = CAMPAIGNS, max_depth: int = 3
) -> st.SearchStrategy[Group]:
    """Random resolved segment roots: every node kind and operator, groups nested up to
    `max_depth` deep, `negate` anywhere (the root included).

    A third of the roots hold a single rule and a third are flat groups: in deep trees
    and/or often hide a leaf's answer, so a wrong leaf would rarely change the result.
    """
    campaigns = tuple(campaigns)
    single = leaf_rules(schema, campaigns).map(lambda rule: Group("all", (rule,)))
    return single | groups(schema, campaigns, 0) | groups(schema, campaigns, max_depth - 1)


# --- Parquet --------------------------------------------------------------------------


def contacts_table(ws: Workspace) -> pa.Table:
    fields = [
        pa.field("contact_id", pa.int64()),
        pa.field("email", pa.string()),
        pa.field("status", pa.string()),
        pa.field("date_added", pa.timestamp("us")),
        pa.field("lists", pa.list_(pa.string())),
    ] + [pa.field(name, ARROW_TYPES[ftype]) for name, ftype in ws.schema.custom]
    schema = pa.schema(fields)
    return pa.Table.from_pylist([dict(c) for c in ws.contacts], schema=schema)


EVENTS_ARROW = pa.schema(
    [
        pa.field("contact_id", pa.int64()),
        pa.field("campaign", pa.string()),
        pa.field("type", pa.string()),
        pa.field("timestamp", pa.timestamp("us")),
        pa.field("url", pa.string()),
    ]
)


def _write_parts(table: pa.Table, directory: Path, stem: str, parts: int) -> tuple[str, ...]:
    """`table` as `parts` Parquet files (none when it is empty and `parts` is 0)."""
    paths = []
    size = -(-table.num_rows // parts) if parts else 0
    for i in range(parts):
        path = directory / f"{stem}-{i}.parquet"
        pq.write_table(table.slice(i * size, size), path)
        paths.append(str(path))
    return tuple(paths)


def write_workspace(ws: Workspace, directory: str | Path, split: bool = True) -> Tables:
    """Write `ws` as Parquet files in the engines' layout and describe them as `Tables`.

    With `split`, contacts go to two files and events to two (or to none when there are
    no events), so multi-file scans and the no-events case are exercised.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    events = pa.Table.from_pylist([dict(e) for e in ws.events], schema=EVENTS_ARROW)
    contacts = _write_parts(contacts_table(ws), directory, "contacts", 2 if split else 1)
    event_parts = 0 if not ws.events else (2 if split else 1)
    return Tables(
        contacts=contacts,
        events=_write_parts(events, directory, "events", event_parts),
        schema=ws.schema,
    )
