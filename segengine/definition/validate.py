"""What a valid definition looks like: keys, operators per field type, value checks.

The parser (`parse.py`) walks a definition and asks these tables what each place may
hold. Every operator maps to the *value check* that turns the written value into the
normalised form `nodes.py` documents, or to `NO_VALUE` for operators that take none.
A check raises `Invalid` with a message that says what was expected and how to fix
it; the parser adds the location and keeps going, so all problems are reported at
once.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..fields import ACTIVITY_EVENT_TYPE, STATUSES, FieldType
from .nodes import ANY_CAMPAIGN, BUCKETS, LastCampaigns

#: A segment name (also the name a segment rule refers to).
NAME_PATTERN = "[a-z0-9][a-z0-9_-]{0,63}"
NAME_RE = re.compile(NAME_PATTERN + r"\Z")

#: Day counts above this (about 273 years) are refused: `as_of - N days` must stay a date.
MAX_DAYS = 100_000
#: Event counts and `{last: N}` must fit a 32-bit integer in every SQL dialect.
MAX_COUNT = 2**31 - 1

TOP_LEVEL_KEYS = ("name", "description", "match", "rules", "negate")
GROUP_KEYS = ("match", "rules", "negate")
FIELD_RULE_KEYS = ("field", "op", "value", "negate")
ACTIVITY_RULE_KEYS = ("activity", "campaigns", "when", "count", "url_contains", "negate")
SEGMENT_RULE_KEYS = ("segment", "negate")
BUCKET_RULE_KEYS = ("bucket", "negate")
#: What the mapping under `bucket` holds: exactly these keys.
BUCKET_KEYS = ("seed", "from", "to")
MATCH_KINDS = ("all", "any")

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


class Invalid(Exception):  # an internal signal: users see the Problems made from it
    """A value is wrong: `issues` holds (sub-path, message) pairs, sub-path like ``[1]``."""

    def __init__(self, message: str = "", *, issues: list[tuple[str, str]] | None = None):
        self.issues = issues if issues is not None else [("", message)]
        super().__init__("; ".join(m for _, m in self.issues))


ValueCheck = Callable[[Any], Any]


# --- messages ---------------------------------------------------------------------


#: How deep groups may nest (segment references inlined): every engine evaluates 32
#: nested negated groups (DuckDB in ~1.5 s, its planner doubling with every ~8 more
#: levels: 100 took minutes), and 200 overflowed Python's stack in the SQL compiler.
MAX_DEPTH = 32
#: How many values (mappings, lists, scalars) a definition document may expand to:
#: YAML aliases can make a few lines mean billions of values.
MAX_VALUES = 100_000


def describe(value: Any) -> str:
    """How a value reads in a message: ``text '5'``, ``the number 5``, ``a list``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {_show(value)}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, dt.date):
        return f"the date object {value.isoformat()}"
    return f"a {type(value).__name__}"


def shown(value: Any) -> str:
    """A value the user wrote as a name: ``'open'`` for text, else `describe`."""
    return repr(value) if isinstance(value, str) else describe(value)


def suggest(word: Any, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""`` when none is close."""
    if not isinstance(word, str):
        return ""
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def one_of(candidates: Iterable[str]) -> str:
    return ", ".join(candidates)


def quote_hint(value: Any) -> str:
    if isinstance(value, bool | int | float):
        return "; quote it to make it text"
    return ""


# --- scalar checks ------------------------------------------------------------------


def text(value: Any) -> str:
    if isinstance(value, list | tuple):
        raise Invalid(f"expected one text value, got {describe(value)} (use 'in' for several)")
    if not isinstance(value, str):
        raise Invalid(f"expected text, got {describe(value)}{quote_hint(value)}")
    if value == "":
        raise Invalid('the value may not be "" (use is_empty to match empty values)')
    return value


def number(value: Any) -> float:
    if isinstance(value, list | tuple):
        raise Invalid(f"expected one number, got {describe(value)} (use 'in' for several)")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, got {describe(value)}")
    as_float = float(value) if abs(value) < 1e308 else math.inf  # huge ints overflow float()
    if not math.isfinite(as_float):
        raise Invalid(f"expected a finite number, got {describe(value)}")
    return as_float


def date(value: Any) -> dt.date:
    """A rule date: text ``YYYY-MM-DD`` (or a `datetime.date` from Python callers)."""
    if isinstance(value, dt.datetime):
        raise Invalid("expected a date YYYY-MM-DD, got a date-time (rules are day-granular)")
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str):
        raise Invalid(f"expected a date YYYY-MM-DD, got {describe(value)}")
    if not _DATE_RE.match(value):
        raise Invalid(f"invalid date {value!r}: write it as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise Invalid(f"invalid date {value!r}: no such day") from None


def whole_number(low: int, high: int, what: str) -> ValueCheck:
    """An integer in ``low..high``; booleans and floats such as ``3.0`` are refused."""

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected {what} (a whole number), got {describe(value)}")
        if value < low:
            raise Invalid(f"{what} must be at least {low}, got {value}")
        if value > high:
            raise Invalid(f"{what} must be at most {high}, got {value}")
        return value

    return check


days = whole_number(0, MAX_DAYS, "a number of days")
event_count = whole_number(0, MAX_COUNT, "an event count")
last_n = whole_number(1, MAX_COUNT, "a number of campaigns")

_BOOLEAN_TEXT = {"true": True, "false": False}


def boolean(value: Any) -> bool:
    """``true``/``false``; the strings "true"/"false" in any case are accepted too."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _BOOLEAN_TEXT:
        return _BOOLEAN_TEXT[value.lower()]
    raise Invalid(f"expected true or false, got {describe(value)}")


def strict_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid(f"expected true or false, got {describe(value)}")


def status(value: Any) -> str:
    if isinstance(value, list | tuple):
        raise Invalid(f"expected one status, got {describe(value)} (use 'in' for several)")
    if isinstance(value, str) and value.lower() in STATUSES:
        return value.lower()
    raise Invalid(
        f"expected a status ({one_of(STATUSES)}), got {describe(value)}" + suggest(value, STATUSES)
    )


def segment_name(value: Any) -> str:
    if isinstance(value, str) and NAME_RE.match(value):
        return value
    fix = quote_hint(value)
    if isinstance(value, str) and NAME_RE.match(value.lower()):
        fix = f" (did you mean {value.lower()!r}?)"
    raise Invalid(
        f"{shown(value)} is not a valid segment name: 1 to 64 lower-case letters, digits, "
        f"'-' or '_', starting with a letter or digit{fix}"
    )


def list_name(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a list name, got {describe(value)}{quote_hint(value)}")
    if value == "":
        raise Invalid('a list name may not be "" (use is_empty for contacts in no list)')
    return value


def url_part(value: Any) -> str:
    """`url_contains`: non-empty text, compared case-insensitively by the engines."""
    if not isinstance(value, str):
        raise Invalid(f"expected text, got {describe(value)}{quote_hint(value)}")
    if value == "":
        raise Invalid('url_contains may not be "" (leave it out to count every click)')
    return value


bucket_bound = whole_number(0, BUCKETS, "a bucket bound")


def bucket_seed(value: Any) -> str:
    """A bucket rule's seed: non-empty text (the same seed gives the same buckets)."""
    if not isinstance(value, str):
        raise Invalid(f"expected text, got {describe(value)}{quote_hint(value)}")
    if value == "":
        raise Invalid('the seed may not be "": name the test, e.g. seed: spring-ab')
    return value


def campaign_id(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a campaign id, got {describe(value)}{quote_hint(value)}")
    if value == "":
        raise Invalid('a campaign id may not be ""')
    return value


# --- shapes -----------------------------------------------------------------------


def list_of(item: ValueCheck, what: str) -> ValueCheck:
    """A non-empty list, every element checked; problems point at ``[i]``."""

    def check(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise Invalid(f"expected a list of {what}, got {describe(value)}")
        if not value:
            raise Invalid(f"expected a non-empty list of {what}, got an empty list")
        out, issues = [], []
        for i, element in enumerate(value):
            try:
                if isinstance(element, list | tuple):
                    raise Invalid(f"expected one of {what}, got a list inside the list")
                out.append(item(element))
            except Invalid as err:
                issues.extend((f"[{i}]{sub}", message) for sub, message in err.issues)
        if issues:
            raise Invalid(issues=issues)
        return tuple(out)

    return check


def one_or_list(item: ValueCheck, what: str) -> ValueCheck:
    """One value or a list of them, always normalised to a tuple."""
    many = list_of(item, what)

    def check(value: Any) -> tuple[Any, ...]:
        if isinstance(value, list | tuple):
            return many(value)
        return (item(value),)

    return check


def pair(item: ValueCheck, what: str) -> ValueCheck:
    """``[low, high]`` with ``low <= high``, both checked by `item`."""

    def check(value: Any) -> tuple[Any, Any]:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise Invalid(f"expected [low, high], two {what}, got {_shape(value)}")
        low, high = list_of(item, what)(value)
        if low > high:
            raise Invalid(f"low {_show(low)} is greater than high {_show(high)}")
        return low, high

    return check


def _shape(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return describe(value)


def _show(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


# --- operators by field type ----------------------------------------------------------

#: Marks an operator that takes no value.
NO_VALUE = None


@dataclass(frozen=True, slots=True)
class Operator:
    """One operator of a field type: everything the language says about it, in one row.

    `check` turns the written value into its normalised form (`NO_VALUE`: takes none);
    `positive` names the operator this one is the complement of (None: it is positive
    itself); `true_on_empty` is its truth on an empty value (docs/segments.md: positive
    operators are false there, their complements true). Validation, the operator
    lists of error messages and docs, the lowering pass and every engine read this.
    """

    check: ValueCheck | None
    positive: str | None = None

    @property
    def true_on_empty(self) -> bool:
        return self.positive is not None


def _operators(
    positive: dict[str, ValueCheck | None], negative: dict[str, str], *, emptiable: bool = True
) -> dict[str, Operator]:
    """A field type's table: positive operators, then each complement after its positive."""
    ops: dict[str, Operator] = {}
    for op, check in positive.items():
        ops[op] = Operator(check)
        ops.update((neg, Operator(check, op)) for neg, pos in negative.items() if pos == op)
    if emptiable:
        # "is_empty" is the complement of "has a value": true on empty, like every negative
        ops["is_empty"] = Operator(NO_VALUE, "is_not_empty")
        ops["is_not_empty"] = Operator(NO_VALUE)
    return ops


_text_values = list_of(text, "text values")
_numbers = list_of(number, "numbers")
_statuses = list_of(status, "statuses")
_list_names = one_or_list(list_name, "list names")

TEXT_OPS = _operators(
    {"is": text, "contains": text, "starts_with": text, "ends_with": text, "in": _text_values},
    {"is_not": "is", "not_contains": "contains", "not_in": "in"},
)
NUMBER_OPS = _operators(
    {
        "eq": number,
        "gt": number,
        "gte": number,
        "lt": number,
        "lte": number,
        "between": pair(number, "numbers"),
        "in": _numbers,
    },
    {"ne": "eq", "not_in": "in"},
)
#: The day-range operators: each selects an inclusive range of days fixed at `as_of`.
DAY_RANGE_OPS = ("on", "before", "after", "between", "in_last_days", "older_than_days")
DATE_OPS = _operators(
    {
        "on": date,
        "before": date,
        "after": date,
        "between": pair(date, "dates"),
        "in_last_days": days,
        "older_than_days": days,
    },
    {"not_on": "on"},
)
BOOLEAN_OPS = _operators({"is": boolean}, {})
#: status is never empty, so it has no is_empty / is_not_empty
STATUS_OPS = _operators({"is": status, "in": _statuses}, {"is_not": "is", "not_in": "in"}, emptiable=False)
_lists = _operators({"includes": _list_names, "includes_all": _list_names}, {"excludes": "includes"})
LIST_OPS = {op: _lists[op] for op in ("includes", "includes_all", "excludes", "is_empty", "is_not_empty")}

#: The operators of each field type (docs/segments.md).
OPERATORS: dict[FieldType, dict[str, Operator]] = {
    FieldType.TEXT: TEXT_OPS,
    FieldType.NUMBER: NUMBER_OPS,
    FieldType.DATE: DATE_OPS,
    FieldType.DATETIME: DATE_OPS,
    FieldType.BOOLEAN: BOOLEAN_OPS,
    FieldType.ENUM: STATUS_OPS,
    FieldType.SET: LIST_OPS,
}

#: Per field type, the positive operators (what engines must each implement).
POSITIVE_OPS: dict[FieldType, frozenset[str]] = {
    ftype: frozenset(op for op, spec in ops.items() if spec.positive is None)
    for ftype, ops in OPERATORS.items()
}

#: An activity rule's `when`: the day-range date operators, on the event's UTC date.
WINDOW_OPS: dict[str, ValueCheck] = {op: DATE_OPS[op].check for op in DAY_RANGE_OPS}

#: An activity rule's `count`.
COUNT_OPS: dict[str, ValueCheck] = {
    "eq": event_count,
    "gte": event_count,
    "lte": event_count,
    "gt": event_count,
    "lt": event_count,
    "between": pair(event_count, "event counts"),
}

ACTIVITIES = tuple(ACTIVITY_EVENT_TYPE)
#: The only activity that may carry `url_contains`.
URL_ACTIVITY = "clicked"

_campaign_ids = list_of(campaign_id, "campaign ids")
_CAMPAIGNS_SHAPE = "'any', a list of campaign ids or {last: N}"


def campaigns(value: Any) -> Any:
    """``any``, a list of campaign ids (exact text), or ``{last: N}`` with N >= 1."""
    if value == ANY_CAMPAIGN:
        return ANY_CAMPAIGN
    if isinstance(value, list | tuple):
        return _campaign_ids(value)
    if isinstance(value, dict):
        if list(value) != ["last"]:
            keys = one_of(repr(k) for k in value)
            raise Invalid(f"expected {{last: N}}, got the keys {keys}")
        try:
            return LastCampaigns(last_n(value["last"]))
        except Invalid as err:
            raise Invalid(issues=[(".last" + sub, m) for sub, m in err.issues]) from None
    hint = f" (for one campaign write [{value}])" if isinstance(value, str) and value else ""
    raise Invalid(f"expected {_CAMPAIGNS_SHAPE}, got {describe(value)}{hint}")
