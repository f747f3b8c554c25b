"""`segengine why`: why one contact is, or is not, in a segment.

Every rule and group of the segment's tree (references inlined, each shown under the
reference that brought it in) is decided for this one contact, with what it saw: a
field rule the stored value, an activity rule how many of the contact's events are in
its scope (type, campaigns, URL) and how many of those in its window.

Each rule is lowered at ``as_of`` exactly as the engines lower it, then decided over
the contact's own row and events, so the work is proportional to one contact, not to
the workspace. A lowered kind this module does not decide itself is asked of the
engine, which answers for every contact; the contact's membership is read from that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..addresses import normalise
from ..definition.lower import (
    AllOf,
    AnyOf,
    Bucket,
    Compare,
    Constant,
    CountIn,
    DayRange,
    Events,
    HasEvents,
    Lowered,
    Not,
    Present,
    events_of,
    fields_of,
    lower,
)
from ..definition.nodes import (
    ANY_CAMPAIGN,
    ActivityRule,
    BucketRule,
    FieldRule,
    Group,
    LastCampaigns,
    Rule,
    SegmentRef,
    bucket_number,
    day_bounds,
)
from ..definition.rewrite import rule_to_dict
from ..errors import InputError
from ..fields import ACTIVITY_EVENT_TYPE, EVENT_TYPES, FieldType, email_domain
from ..session import parse_as_of
from ..store.aggregates import RECENT
from ..store.duck import q
from ..store.index.layout import BitmapKeys
from ..store.rows import read_contact

if TYPE_CHECKING:
    import duckdb

    from ..engines.base import Engine
    from ..session import SegmentArg, Session
    from ..store.index.read import IndexData
    from ..store.workspace import Snapshot


class UnknownEmail(InputError):
    """No contact has the given email address."""


@dataclass(frozen=True)
class Event:
    type: str
    campaign: str
    day: dt.date
    url: str | None


@dataclass
class Contact:
    """One contact's row (every field, `email_domain` derived) and its events."""

    contact_id: int
    fields: dict[str, Any]
    events: list[Event]


def find_contact(
    con: duckdb.DuckDBPyConnection, schema: Mapping[str, FieldType], email: str,
    index: IndexData | None = None, reads: Reads | None = None, files: Sequence[str] = (),
) -> Contact:
    """The contact with address `email` (normalised) and its events; UnknownEmail if none.

    With the engagement index the address is found by its hash lookup and the events
    in its event store (no Parquet scan); the row itself is read by ``contact_id``,
    which the contacts file (`files`, one) is sorted by, from the one row group that
    holds it. `reads` names the fields and event types wanted (default: all); the
    address is always read.
    """
    wanted = normalise(email)  # the one address rule, as imports store addresses
    known = None  # the stored address, when the index already shows it
    if index is not None and "email" in index.fields:
        column = index.fields["email"]
        rows = column.rows_with(wanted)
        contact_id = int(index.ids[rows[0]]) if rows else None
        if rows and wanted.isascii() and reads is not None and "email" not in reads.fields:
            known = wanted  # imports lower-case ASCII addresses: the stored text is this
    else:
        found = con.execute("SELECT contact_id FROM contacts WHERE email = ?", [wanted]).fetchall()
        contact_id = int(found[0][0]) if found else None
    if contact_id is None:
        raise UnknownEmail(
            f"EMAIL: no contact has the address {wanted!r}: check it (addresses are matched "
            "trimmed and lower-cased, as on import)"
        )
    names = ["email", *(f for f in schema if f != "email" and (reads is None or f in reads.fields))]
    # the address column is the widest to decode: read only when the index cannot show it
    stored = [f for f in names if f != "email_domain" and not (f == "email" and known is not None)]
    fields = _stored_row(con, files, contact_id, stored)
    if known is not None:
        fields["email"] = known
    fields["email_domain"] = email_domain(fields.get("email"))
    fields = {name: fields.get(name) for name in names}
    types = EVENT_TYPES if reads is None else tuple(t for t in EVENT_TYPES if t in reads.types)
    if not types:
        events: list[Event] = []
    elif index is not None:
        events = _indexed_events(index, contact_id, types)
    else:
        events = [
            Event(t, c, ts.date(), u)
            for t, c, ts, u in con.execute(
                "SELECT type, campaign, timestamp, url FROM events WHERE contact_id = ? "
                f"AND type IN ({', '.join('?' for _ in types)})", [contact_id, *types],
            ).fetchall()
        ]
    return Contact(contact_id, fields, events)


def _stored_row(
    con: duckdb.DuckDBPyConnection, files: Sequence[str], contact_id: int, columns: list[str],
) -> dict[str, Any]:
    if len(files) == 1:
        try:
            row = read_contact(Path(files[0]), contact_id, columns)
        except LookupError:
            row = None  # a file without statistics: the query below reads it
        if row is not None:
            return row
    result = con.execute(
        f"SELECT {', '.join(q(f) for f in columns)} FROM contacts WHERE contact_id = ?",
        [contact_id],
    )
    return dict(zip(columns, result.fetchall()[0], strict=True))


@dataclass(frozen=True)
class Reads:
    """What deciding and showing a tree reads of one contact: fields and event types."""

    fields: frozenset[str]
    types: frozenset[str]

    @classmethod
    def of(cls, tree: Rule, schema: Mapping[str, FieldType], as_of: dt.date) -> Reads:
        fields: set[str] = set()
        types: set[str] = set()

        def walk(rule: Rule) -> None:
            if isinstance(rule, Group):
                for child in rule.rules:
                    walk(child)
                return
            if isinstance(rule, FieldRule):
                fields.add(rule.field)
            elif isinstance(rule, ActivityRule):
                types.add(ACTIVITY_EVENT_TYPE[rule.activity])
            lowered = lower(rule, schema, as_of)  # type: ignore[arg-type]
            fields.update(fields_of(lowered))
            types.update(e.event_type for e in events_of(lowered))

        walk(tree)
        if "email_domain" in fields:
            fields.add("email")
        return cls(frozenset(fields), frozenset(types))


def _indexed_events(index: IndexData, contact_id: int, types: tuple[str, ...]) -> list[Event]:
    """The contact's events from the index's event store (days are all a rule reads).

    The aggregates say which types the contact has events of; the days are its RECENT
    latest days when it has no more events than that, else the days whose (type, day)
    bitmap holds it. Only those days' slices of the store (sorted by day) are read, so
    the work follows the contact's own events, not the workspace's.
    """
    row = int(np.searchsorted(index.ids, contact_id))
    urls = None
    events: list[Event] = []
    epoch = dt.date(1970, 1, 1)
    for t, etype in enumerate(EVENT_TYPES):
        if etype not in types:
            continue
        count = int(index.count[t][row])
        if count == 0:
            continue
        if count <= RECENT:
            days = sorted({int(index.recent[t][k][row]) for k in range(count)})
        else:
            first, last = int(index.first[t][row]), int(index.last[t][row])
            candidates = index.bitmap_days(etype)
            lo, hi = np.searchsorted(candidates, [first, last + 1])
            days = [int(d) for d in candidates[lo:hi]
                    if row in index.bitmaps.get(BitmapKeys.day(etype, int(d)))]
        for block in index.blocks():
            cols = block.columns[etype]
            if "rows" not in cols or len(cols["rows"]) == 0:
                continue
            starts = np.searchsorted(cols["day"], np.array(days, np.int32), side="left")
            ends = np.searchsorted(cols["day"], np.array(days, np.int32), side="right")
            for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
                for i in (lo + np.flatnonzero(np.asarray(cols["rows"][lo:hi]) == row)).tolist():
                    url = None
                    if "url" in cols and int(cols["url"][i]) >= 0:
                        urls = index.urls() if urls is None else urls
                        url = urls[int(cols["url"][i])].as_py()
                    day = epoch + dt.timedelta(days=int(cols["day"][i]))
                    events.append(Event(etype, index.campaigns[int(cols["campaign"][i])], day, url))
    return events


class SendTimes:
    """Campaign send times (the earliest ``sent`` event), read once, from the index when
    the engine has one."""

    def __init__(self, engine: Engine, con: duckdb.DuckDBPyConnection):
        self.engine = engine
        self.con = con
        self._times: list[tuple[dt.date, str]] | None = None

    def last(self, n: int, as_of: dt.date) -> set[str]:
        """The `n` campaigns sent last on or before `as_of` (ties: the larger id)."""
        eligible = sorted(((t, c) for t, c in self.times() if t <= as_of), reverse=True)
        return {c for _, c in eligible[:n]}

    def times(self) -> list[tuple[Any, str]]:
        if self._times is None:
            index = getattr(self.engine, "index", None)
            if index is not None:
                # full send times (microseconds) order campaigns sent the same day
                self._times = [
                    (_Moment(us), c)
                    for c, us in zip(index.campaigns, index.send_us, strict=True)
                    if us is not None
                ]
            else:
                rows = self.con.execute(
                    "SELECT campaign, min(timestamp) FROM events WHERE type = 'sent' GROUP BY campaign"
                ).fetchall()
                self._times = [(_Moment(ts), c) for c, ts in rows]
        return self._times


class _Moment:
    """A send time that compares with other send times and, by its UTC day, with a date."""

    __slots__ = ("value",)

    def __init__(self, value: int | dt.datetime):
        self.value = value

    def day(self) -> dt.date:
        if isinstance(self.value, dt.datetime):
            return self.value.date()
        return dt.date(1970, 1, 1) + dt.timedelta(microseconds=self.value)

    def __le__(self, other: Any) -> bool:
        if isinstance(other, dt.date):
            return self.day() <= other
        return self.value <= other.value

    def __lt__(self, other: _Moment) -> bool:
        return self.value < other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Moment) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


class Decider:
    """Decides lowered rules for one contact at one `as_of`."""

    def __init__(self, contact: Contact, as_of: dt.date, sends: SendTimes, engine: Engine):
        self.contact = contact
        self.as_of = as_of
        self.sends = sends
        self.engine = engine

    def decide(self, node: Lowered) -> bool:
        if isinstance(node, AllOf):
            return all(self.decide(rule) for rule in node.rules)
        if isinstance(node, AnyOf):
            return any(self.decide(rule) for rule in node.rules)
        if isinstance(node, Not):
            return not self.decide(node.rule)
        if isinstance(node, Constant):
            return node.value
        if isinstance(node, Present):
            return not _empty(self.value(node.field))
        if isinstance(node, Compare):
            value = self.value(node.field)
            return not _empty(value) and _compare(node, value)
        if isinstance(node, DayRange):
            value = self.value(node.field)
            return not _empty(value) and _in_days(_day(value), node.low, node.high)
        if isinstance(node, HasEvents):
            return self.count(node.events) >= 1
        if isinstance(node, CountIn):
            n = self.count(node.events)
            return n >= node.low and (node.high is None or n <= node.high)
        if isinstance(node, Bucket):
            email = self.value("email")
            return not _empty(email) and node.low <= bucket_number(node.seed, email) < node.high
        return self.ask_engine(node)

    def ask_engine(self, node: Lowered) -> bool:
        """A kind decided by the engine over every contact (its answer holds this one)."""
        ids = self.engine.evaluate_ids([node], self.as_of)
        position = int(np.searchsorted(ids, self.contact.contact_id))
        return position < len(ids) and int(ids[position]) == self.contact.contact_id

    def value(self, field: str) -> Any:
        return self.contact.fields.get(field)

    def campaigns(self, campaigns: Any) -> set[str] | None:
        """The campaign ids a selection means (None: any campaign)."""
        if campaigns == ANY_CAMPAIGN:
            return None
        if isinstance(campaigns, LastCampaigns):
            return self.sends.last(campaigns.n, self.as_of)
        return set(campaigns)

    def selected(self, events: Events, window: bool = True) -> list[Event]:
        campaigns = self.campaigns(events.campaigns)
        low, high = events.days if window and events.days is not None else (None, None)
        url = events.url_contains
        return [
            e for e in self.contact.events
            if e.type == events.event_type
            and (campaigns is None or e.campaign in campaigns)
            and (url is None or (e.url is not None and url in e.url.lower()))
            and _in_days(e.day, low, high)
        ]

    def count(self, events: Events) -> int:
        return len(self.selected(events))


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, tuple)) and len(value) == 0)


def _day(value: dt.date | dt.datetime) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value


def _in_days(day: dt.date, low: dt.date | None, high: dt.date | None) -> bool:
    return (low is None or day >= low) and (high is None or day <= high)


TEXT_TESTS = {
    "is": lambda s, v: s == v[0],
    "contains": lambda s, v: v[0] in s,
    "starts_with": lambda s, v: s.startswith(v[0]),
    "ends_with": lambda s, v: s.endswith(v[0]),
    "in": lambda s, v: s in v,
}
NUMBER_TESTS = {
    "eq": lambda x, v: x == v[0],
    "gt": lambda x, v: x > v[0],
    "gte": lambda x, v: x >= v[0],
    "lt": lambda x, v: x < v[0],
    "lte": lambda x, v: x <= v[0],
    "between": lambda x, v: v[0] <= x <= v[1],
    "in": lambda x, v: x in v,
}


def _compare(node: Compare, value: Any) -> bool:
    """A positive operator on a present value (lowered values are lower-cased text)."""
    if node.type in (FieldType.TEXT, FieldType.ENUM):
        return TEXT_TESTS[node.op](str(value).lower(), node.values)
    if node.type is FieldType.SET:
        names = {str(name).lower() for name in value if name is not None}
        if node.op == "includes":
            return any(v in names for v in node.values)
        return all(v in names for v in node.values)  # includes_all
    if node.type is FieldType.NUMBER:
        return NUMBER_TESTS[node.op](float(value), node.values)
    return bool(value) == bool(node.values[0])  # boolean "is"


# --- the tree -------------------------------------------------------------------------


def json_value(value: Any) -> Any:
    """A stored value as JSON: ISO dates and date-times (UTC), whole numbers as integers."""
    if isinstance(value, dt.datetime):
        return value.isoformat() + "Z" if value.tzinfo is None else value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def kind_of(rule: Rule) -> str:
    known = {Group: "group", FieldRule: "field", ActivityRule: "activity", SegmentRef: "segment"}
    return known.get(type(rule), type(rule).__name__.lower().removesuffix("rule"))


class Explainer:
    """The why tree: each node of the segment as written, decided over its resolved form.

    `saved` gives a referenced segment's tree as written (its own references kept), so
    a reference inside a reference is shown as one too; without it a reference's rules
    are shown resolved.
    """

    def __init__(self, decider: Decider, schema: Mapping[str, FieldType], saved=None):
        self.decider = decider
        self.schema = schema
        self.saved = saved

    def node(self, original: Rule, resolved: Rule, path: str) -> dict[str, Any]:
        """One rule or group: what it is, whether it matched and what it saw."""
        kind = kind_of(original)
        if isinstance(original, (Group, SegmentRef)):
            assert isinstance(resolved, Group)
            rule = (
                {"segment": original.segment} if isinstance(original, SegmentRef)
                else {"match": original.match}
            )
            if original.negate:
                rule["negate"] = True
            inner = resolved
            if isinstance(original, SegmentRef):
                # the reference became `all of (the segment's tree)`: show that tree's rules
                (inner,) = resolved.rules  # type: ignore[assignment]
                rule["match"] = inner.match
            children = [
                self.node(child, child_resolved, f"{path}[{i}]")
                for i, (child, child_resolved) in enumerate(
                    zip(self.originals(original, inner), inner.rules, strict=True)
                )
            ]
            results = [c["matched"] for c in children]
            held = all(results) if inner.match == "all" else any(results)
            if isinstance(original, SegmentRef) and inner.negate:
                held = not held
            return {"path": path, "kind": kind, "rule": rule, "matched": held != original.negate,
                    "rules": children}
        lowered = lower(resolved, self.schema, self.decider.as_of)  # type: ignore[arg-type]
        out: dict[str, Any] = {
            "path": path, "kind": kind, "rule": rule_to_dict(original),
            "matched": self.decider.decide(lowered),
        }
        if isinstance(original, FieldRule):
            out["value"] = json_value(self.decider.value(original.field))
        elif isinstance(original, ActivityRule):
            out["events"] = self.events_seen(original)
        elif isinstance(original, BucketRule):
            email = self.decider.value("email")
            out["bucket_number"] = None if _empty(email) else bucket_number(original.seed, email)
        return out

    def originals(self, original: Group | SegmentRef, inner: Group) -> tuple[Rule, ...]:
        """The rules as the user wrote them (a reference's: its segment's own rules)."""
        if not isinstance(original, SegmentRef):
            return original.rules
        if self.saved is not None:
            written = self.saved(original.segment)
            if len(written.rules) == len(inner.rules):
                return written.rules
        return inner.rules

    def events_seen(self, rule: ActivityRule) -> dict[str, Any]:
        """How many of the contact's events the rule's scope holds, and its window."""
        url = None if rule.url_contains is None else rule.url_contains.lower()
        scope = Events(ACTIVITY_EVENT_TYPE[rule.activity], _campaigns(rule.campaigns), None, url)
        in_scope = self.decider.selected(scope, window=False)
        seen: dict[str, Any] = {"in_scope": len(in_scope)}
        if rule.when is None:
            seen["in_window"] = len(in_scope)
        else:
            low, high = day_bounds(rule.when.op, rule.when.value, self.decider.as_of)
            seen["in_window"] = sum(_in_days(e.day, low, high) for e in in_scope)
            seen["window"] = {"from": _iso(low), "to": _iso(high)}
        if isinstance(rule.campaigns, LastCampaigns):
            seen["campaigns"] = sorted(self.decider.campaigns(rule.campaigns) or ())
        return seen


def _iso(day: dt.date | None) -> str | None:
    if day is None or day in (dt.date.min, dt.date.max):
        return None if day is None else day.isoformat()
    return day.isoformat()


def _campaigns(campaigns: Any) -> Any:
    return tuple(campaigns) if isinstance(campaigns, list) else campaigns


def why(
    session: Session,
    email: str,
    segment: SegmentArg,
    *,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """The why document of `email` in `segment` at `as_of`."""
    day = parse_as_of(as_of)
    snap: Snapshot = session.snapshot()
    loaded = session.load_segment(segment, snap)
    resolved = session.resolve(loaded, snap)
    con = session.connection(snap)
    ev = session.engine(engine, snap)
    reads = Reads.of(resolved, snap.schema, day)
    contact = find_contact(
        con, snap.schema, email, getattr(ev, "index", None), reads, snap.tables.contacts
    )
    decider = Decider(contact, day, SendTimes(ev, con), ev)
    saved = lambda name: session.load_segment(name, snap).root  # noqa: E731 - one use
    tree = Explainer(decider, snap.schema, saved).node(loaded.root, resolved, "rules")
    return {
        "email": contact.fields.get("email"),
        "segment": loaded.name,
        "as_of": day.isoformat(),
        "member": tree["matched"],
        "match": tree["rule"]["match"],
        **({"negate": True} if loaded.root.negate else {}),
        "rules": tree["rules"],
    }
