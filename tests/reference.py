"""The test oracle: SPEC section 4 evaluated row by row in plain Python.

Deliberately naive and independent of the engines: it shares nothing with them but the
node classes (even the day arithmetic is redone here, on day ordinals), so a bug in a
shared helper shows up as a difference. Slow by design; only tests use it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from segengine.definition.nodes import (
    ActivityRule,
    BucketRule,
    FieldRule,
    Group,
    LastCampaigns,
    SegmentRef,
)
from segengine.fields import FieldType, Schema

NEGATIVE = {
    "is_not": "is",
    "not_contains": "contains",
    "not_in": "in",
    "ne": "eq",
    "not_on": "on",
    "excludes": "includes",
}
EVENT_TYPE = {
    "sent": "sent",
    "opened": "open",
    "clicked": "click",
    "bounced": "bounce",
    "unsubscribed": "unsubscribe",
}


def reference_contact_ids(
    contacts: list[dict], events: list[dict], schema: Schema, root: Group, as_of: dt.date
) -> set[int]:
    """The contact ids `root` matches at `as_of`, straight from the SPEC's wording."""
    evaluator = _Evaluator(events, schema, as_of)
    return {c["contact_id"] for c in contacts if evaluator.matches(root, c)}


def reference_as_it_stood(
    contacts: list[dict], events: list[dict], schema: Schema, root: Group, day: dt.date
) -> set[int]:
    """The ids `root` matches at ``as_of = day`` over the data as it stood at the end of
    `day`: only contacts added on or before it, only events on or before it (trend)."""
    end = day.toordinal()
    added = [c for c in contacts if c["date_added"] is not None and day_of(c["date_added"]) <= end]
    before = [e for e in events if day_of(e["timestamp"]) <= end]
    return reference_contact_ids(added, before, schema, root, day)


def reference_by_status(contacts: list[dict[str, Any]], ids: set[int]) -> dict[str, int]:
    """How many of the contacts with `ids` have each status (what engines' count returns)."""
    by_status = {"active": 0, "unsubscribed": 0, "bounced": 0}
    for c in contacts:
        by_status[c["status"]] += c["contact_id"] in ids
    return by_status


def day_range(op: str, value: Any, as_of: dt.date) -> tuple[int, int]:
    """Inclusive range of day ordinals an operator selects (may reach off the calendar)."""
    lowest, highest = -(10**9), 10**9
    today = as_of.toordinal()
    if op == "on":
        return value.toordinal(), value.toordinal()
    if op == "before":
        return lowest, value.toordinal() - 1
    if op == "after":
        return value.toordinal() + 1, highest
    if op == "between":
        return value[0].toordinal(), value[1].toordinal()
    if op == "in_last_days":
        return today - value, today
    if op == "older_than_days":
        return lowest, today - value - 1
    raise AssertionError(op)


def day_of(value: dt.date | dt.datetime) -> int:
    """The UTC day of a date or a naive-UTC datetime, as an ordinal."""
    if isinstance(value, dt.datetime):
        return value.date().toordinal()
    return value.toordinal()


def in_days(value: dt.date | dt.datetime, op: str, rule_value: Any, as_of: dt.date) -> bool:
    low, high = day_range(op, rule_value, as_of)
    return low <= day_of(value) <= high


def is_empty(value: Any) -> bool:
    if value is None or value == "":
        return True
    return isinstance(value, list) and len(value) == 0


def email_domain(email: str | None) -> str | None:
    if email is None or "@" not in email:
        return None
    return email.rsplit("@", 1)[1]


def positive(ftype: FieldType, op: str, stored: Any, value: Any, as_of: dt.date) -> bool:
    """A positive operator on a non-empty stored value."""
    if ftype in (FieldType.TEXT, FieldType.ENUM):
        text = stored.lower()
        if op == "is":
            return text == value.lower()
        if op == "contains":
            return value.lower() in text
        if op == "starts_with":
            return text.startswith(value.lower())
        if op == "ends_with":
            return text.endswith(value.lower())
        if op == "in":
            return any(text == v.lower() for v in value)
    elif ftype == FieldType.NUMBER:
        if op == "eq":
            return stored == value
        if op == "gt":
            return stored > value
        if op == "gte":
            return stored >= value
        if op == "lt":
            return stored < value
        if op == "lte":
            return stored <= value
        if op == "between":
            return value[0] <= stored <= value[1]
        if op == "in":
            return any(stored == v for v in value)
    elif ftype in (FieldType.DATE, FieldType.DATETIME):
        return in_days(stored, op, value, as_of)
    elif ftype == FieldType.BOOLEAN:
        if op == "is":
            return stored == value
    elif ftype == FieldType.SET:
        names = {name.lower() for name in stored if name is not None}
        if op == "includes":
            return any(v.lower() in names for v in value)
        if op == "includes_all":
            return all(v.lower() in names for v in value)
    raise AssertionError(f"{op} on {ftype}")


class _Evaluator:
    def __init__(self, events: list[dict], schema: Schema, as_of: dt.date):
        self.events = events
        self.schema = schema
        self.as_of = as_of

    def matches(self, rule: Any, contact: dict) -> bool:
        if isinstance(rule, Group):
            results = [self.matches(child, contact) for child in rule.rules]
            result = all(results) if rule.match == "all" else any(results)
        elif isinstance(rule, FieldRule):
            result = self.field(rule, contact)
        elif isinstance(rule, ActivityRule):
            result = self.activity(rule, contact["contact_id"])
        elif isinstance(rule, BucketRule):
            email = contact.get("email")
            result = email is not None and rule.low <= bucket_of(rule.seed, email) < rule.high
        elif isinstance(rule, SegmentRef):
            raise AssertionError("the oracle evaluates resolved trees only")
        else:
            raise AssertionError(type(rule))
        return result != rule.negate

    def field(self, rule: FieldRule, contact: dict) -> bool:
        ftype = self.schema[rule.field]
        if rule.field == "email_domain":
            stored = email_domain(contact.get("email"))
        else:
            stored = contact.get(rule.field)
        if rule.op == "is_empty":
            return is_empty(stored)
        if rule.op == "is_not_empty":
            return not is_empty(stored)
        if rule.op in NEGATIVE:
            if is_empty(stored):
                return True
            return not positive(ftype, NEGATIVE[rule.op], stored, rule.value, self.as_of)
        if is_empty(stored):
            return False
        return positive(ftype, rule.op, stored, rule.value, self.as_of)

    def last_campaigns(self, n: int) -> set[str]:
        send_time: dict[str, dt.datetime] = {}
        for e in self.events:
            if e["type"] == "sent":
                c = e["campaign"]
                if c not in send_time or e["timestamp"] < send_time[c]:
                    send_time[c] = e["timestamp"]
        eligible = [
            (t, c) for c, t in send_time.items() if t.date().toordinal() <= self.as_of.toordinal()
        ]
        # Latest send time first; on a tie the greater campaign id (code points) first.
        eligible.sort(reverse=True)
        return {c for _, c in eligible[:n]}

    def activity(self, rule: ActivityRule, contact_id: int) -> bool:
        campaigns = rule.campaigns
        if isinstance(campaigns, LastCampaigns):
            campaigns = self.last_campaigns(campaigns.n)
        n = 0
        for e in self.events:
            if e["contact_id"] != contact_id or e["type"] != EVENT_TYPE[rule.activity]:
                continue
            if campaigns != "any" and e["campaign"] not in campaigns:
                continue
            if rule.when is not None and not in_days(
                e["timestamp"], rule.when.op, rule.when.value, self.as_of
            ):
                continue
            if rule.url_contains is not None and (
                e.get("url") is None or rule.url_contains.lower() not in e["url"].lower()
            ):
                continue
            n += 1
        return count_holds(rule.count.op, rule.count.value, n)


def bucket_of(seed: str, email: str) -> int:
    """The bucket number as the contract words it, with nothing shared with the engines."""
    digest = hashlib.sha256((seed + ":" + email).encode("utf-8")).hexdigest()
    return int(digest[:15], 16) % 10000


def count_holds(op: str, value: Any, n: int) -> bool:
    if op == "eq":
        return n == value
    if op == "gte":
        return n >= value
    if op == "lte":
        return n <= value
    if op == "gt":
        return n > value
    if op == "lt":
        return n < value
    if op == "between":
        return value[0] <= n <= value[1]
    raise AssertionError(op)
