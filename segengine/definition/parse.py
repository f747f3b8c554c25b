"""Parsing a segment definition (a dict, JSON/YAML text or file) into a checked `Segment`.

The parser walks the whole document, records every problem with its location
(``rules[1].rules[0].value``) and raises them together as one `DefinitionError`, so
a user fixes a definition in one round instead of one error at a time. What each
place may hold comes from the tables in `validate.py`; this module only walks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DefinitionError, Problem, SegmentNotFound
from ..fields import Schema
from . import validate as v
from .nodes import (
    ANY_CAMPAIGN,
    ActivityRule,
    BucketRule,
    CountCondition,
    FieldRule,
    Group,
    Rule,
    Segment,
    SegmentRef,
    Window,
)

Source = Mapping[str, Any] | str | Path


def load_definition(source: Source, schema: Schema, *, origin: str | None = None) -> Segment:
    """Read and check a definition given as a dict, JSON/YAML text or a .json/.yaml/.yml path.

    Text is read as YAML 1.2 (JSON is a subset of it). `origin` names the source in
    error messages; it defaults to the file's path.
    """
    if isinstance(source, Path):
        origin = origin or str(source)
        doc = _read_file(source, origin)
    elif isinstance(source, str):
        doc = load_yaml(source, origin=origin)
    elif isinstance(source, Mapping):
        doc = source
    else:
        raise TypeError(f"a definition is a dict, text or Path, not {type(source).__name__}")
    return parse_definition(doc, schema, origin=origin)


def parse_definition(doc: Any, schema: Schema, *, origin: str | None = None) -> Segment:
    """Check a definition document (as loaded from JSON/YAML) and build its rule tree."""
    too_big = _size_problem(doc)
    if too_big is not None:
        raise DefinitionError(too_big, source=origin)
    parser = _Parser(schema)
    segment = parser.segment(doc)
    if parser.problems or segment is None:
        raise DefinitionError(parser.problems, source=origin)
    return segment


#: raw nesting a document may have: two levels (a mapping, its rules list) per group,
#: and a few for the values of the innermost rule
MAX_NESTING = 2 * v.MAX_DEPTH + 8


def _size_problem(doc: Any) -> Problem | None:
    """A problem when `doc` expands to too many values or nests too deep (YAML aliases
    can make a few lines mean billions of values, or a value contain itself); walked
    without recursion, stopping at the limit."""
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    seen = 0
    while stack:
        node, path, depth = stack.pop()
        seen += 1
        if seen > v.MAX_VALUES:
            return Problem(path, f"the document holds more than {v.MAX_VALUES:,} values "
                           "(YAML aliases repeat what they name): write it out plainly")
        if depth > MAX_NESTING:
            return Problem(path, f"nests more than {MAX_NESTING} levels deep; groups may "
                           f"nest at most {v.MAX_DEPTH} deep")
        if isinstance(node, Mapping):
            stack.extend((value, _at(path, key), depth + 1) for key, value in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))
    return None


# --- files ------------------------------------------------------------------------


def load_yaml(text: str, *, origin: str | None = None) -> Any:
    # ruamel loads with the first YAML definition: a count of a .json file skips it
    from .yaml12 import load_yaml as load

    return load(text, origin=origin)


def _load_json(text: str, origin: str | None) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as err:
        message = f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        raise DefinitionError(Problem("", message), source=origin) from None
    except _DuplicateKey as err:
        raise DefinitionError(Problem("", f"invalid JSON: {err}"), source=origin) from None
    except RecursionError:
        raise DefinitionError(Problem("", TOO_DEEP), source=origin) from None


TOO_DEEP = (f"nests too deeply to read; groups may nest at most {v.MAX_DEPTH} deep: "
            "flatten the definition")


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; a definition with two `op`s is a mistake.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


_READERS: dict[str, Callable[[str, str | None], Any]] = {
    ".json": _load_json,
    ".yaml": lambda text, origin: load_yaml(text, origin=origin),
    ".yml": lambda text, origin: load_yaml(text, origin=origin),
}


def _read_file(path: Path, origin: str) -> Any:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        message = f"a definition file must end in .json, .yaml or .yml, not {path.name!r}"
        raise DefinitionError(Problem("", message), source=origin)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SegmentNotFound(Problem("", "no such definition file"), source=origin) from None
    except UnicodeDecodeError:
        raise DefinitionError(Problem("", "not UTF-8 text"), source=origin) from None
    except OSError as err:
        raise DefinitionError(Problem("", f"cannot read: {err.strerror}"), source=origin) from None
    return reader(text, origin)


# --- the walk ---------------------------------------------------------------------


def _at(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


@dataclass(frozen=True, slots=True)
class _RuleKind:
    label: str
    marks: tuple[str, ...]  # keys that make a rule this kind
    keys: tuple[str, ...]  # every key it may have
    parse: Callable[[_Parser, Mapping[str, Any], str], Rule | None]


class _Parser:
    """One walk over one document; `problems` collects everything found on the way."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.problems: list[Problem] = []
        self.name: str | None = None

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def check(self, value_check: v.ValueCheck, value: Any, path: str) -> Any:
        """Run a value check from `validate`; on failure record its problems, return None."""
        try:
            return value_check(value)
        except v.Invalid as err:
            for sub, message in err.issues:
                self.problem(path + sub, message)
            return None

    def unknown_keys(
        self, doc: Mapping[Any, Any], allowed: tuple[str, ...], path: str, label: str
    ) -> None:
        for key in doc:
            if key not in allowed:
                hint = v.suggest(key, allowed) or f"; {label} takes {v.one_of(allowed)}"
                self.problem(_at(path, key), f"unknown key{hint}")

    # --- segment and groups -------------------------------------------------------

    def segment(self, doc: Any) -> Segment | None:
        if not isinstance(doc, Mapping):
            hint = ""
            if isinstance(doc, str) and doc.lower().endswith(tuple(_READERS)):
                hint = " (to read a file, pass a pathlib.Path)"
            self.problem("", f"a segment definition must be a mapping, got {v.describe(doc)}{hint}")
            return None
        self.unknown_keys(doc, v.TOP_LEVEL_KEYS, "", "a segment definition")
        self.name = self.segment_name(doc)
        description = self.description(doc)
        root = self.group_body(doc, "")
        if self.name is None or description is None or root is None:
            return None
        return Segment(name=self.name, root=root, description=description)

    def segment_name(self, doc: Mapping[str, Any]) -> str | None:
        name = doc.get("name")
        if name is None:
            self.problem("name", "missing: every segment needs a name, e.g. 'active-ctos'")
            return None
        return self.check(v.segment_name, name, "name")

    def description(self, doc: Mapping[str, Any]) -> str | None:
        text = doc.get("description")
        if text is None:
            return ""
        if isinstance(text, str):
            return text
        self.problem("description", f"expected text, got {v.describe(text)}")
        return None

    def group_body(self, doc: Mapping[str, Any], path: str) -> Group | None:
        depth = path.count("rules[")
        if depth > v.MAX_DEPTH:
            self.problem(path, f"groups nest {depth} deep here; at most {v.MAX_DEPTH}: "
                         "flatten the groups (a negated group of negated groups is the group)")
            return None
        match = doc.get("match", "all")
        if match not in v.MATCH_KINDS:
            self.problem(
                _at(path, "match"),
                f"expected all or any, got {v.describe(match)}{v.suggest(match, v.MATCH_KINDS)}",
            )
        rules = self.rules(doc.get("rules", []), _at(path, "rules"))
        negate = self.negate(doc, path)
        if match not in v.MATCH_KINDS or rules is None or negate is None:
            return None
        return Group(match=match, rules=rules, negate=negate)

    def rules(self, raw: Any, path: str) -> tuple[Rule, ...] | None:
        if not isinstance(raw, list | tuple):
            self.problem(
                path, f"expected a list of rules, got {v.describe(raw)} (write rules: [] for none)"
            )
            return None
        parsed = [self.rule(item, f"{path}[{i}]") for i, item in enumerate(raw)]
        if any(rule is None for rule in parsed):
            return None
        return tuple(parsed)

    def negate(self, doc: Mapping[str, Any], path: str) -> bool | None:
        return self.check(v.strict_boolean, doc.get("negate", False), _at(path, "negate"))

    def rule(self, raw: Any, path: str) -> Rule | None:
        if not isinstance(raw, Mapping):
            self.problem(
                path,
                "a rule must be a mapping such as {field: ..., op: ..., "
                f"value: ...}}, got {v.describe(raw)}",
            )
            return None
        kinds = [kind for kind in self.KINDS if any(mark in raw for mark in kind.marks)]
        if len(kinds) > 1:
            found = " and ".join(
                f"{mark!r} ({kind.label})" for kind in kinds for mark in kind.marks if mark in raw
            )
            self.problem(path, f"a rule must be exactly one kind of rule; this one has {found}")
            return None
        if not kinds:
            self.unknown_keys(raw, _ALL_RULE_KEYS, path, "a rule")
            self.problem(
                path,
                "a rule needs one of the keys 'field', 'activity', 'bucket', 'segment' or 'rules' "
                "(a group)",
            )
            return None
        kind = kinds[0]
        self.unknown_keys(raw, kind.keys, path, kind.label)
        return kind.parse(self, raw, path)

    # --- field rules ------------------------------------------------------------------

    def field_rule(self, raw: Mapping[str, Any], path: str) -> FieldRule | None:
        negate = self.negate(raw, path)
        field = raw["field"]
        if not isinstance(field, str):
            self.problem(_at(path, "field"), f"expected a field name, got {v.describe(field)}")
            return None
        ftype = self.schema.get(field)
        if ftype is None:
            self.problem(
                _at(path, "field"), f"unknown field {field!r}{v.suggest(field, self.schema)}"
            )
            return None
        ops = v.OPERATORS[ftype]
        what = f"{ftype} field {field!r}"
        op = raw.get("op")
        if op is None:
            self.problem(_at(path, "op"), f"missing: {what} takes {v.one_of(ops)}")
            return None
        if not isinstance(op, str) or op not in ops:
            hint = v.suggest(op, ops) or f"; it takes {v.one_of(ops)}"
            self.problem(_at(path, "op"), f"{v.shown(op)} is not an operator for {what}{hint}")
            return None
        value = self.field_value(ops[op].check, op, raw.get("value"), _at(path, "value"))
        if negate is None or value is _BAD:
            return None
        return FieldRule(field=field, op=op, value=value, negate=negate)

    def field_value(self, value_check: v.ValueCheck | None, op: str, value: Any, path: str) -> Any:
        if value_check is v.NO_VALUE:
            if value is not None:
                self.problem(path, f"operator {op!r} takes no value")
                return _BAD
            return None
        if value is None:
            self.problem(path, f"missing: operator {op!r} needs a value")
            return _BAD
        checked = self.check(value_check, value, path)
        return _BAD if checked is None else checked

    # --- activity rules -----------------------------------------------------------------

    def activity_rule(self, raw: Mapping[str, Any], path: str) -> ActivityRule | None:
        negate = self.negate(raw, path)
        activity = raw["activity"]
        if activity not in v.ACTIVITIES:
            hint = v.suggest(activity, v.ACTIVITIES) or f"; expected {v.one_of(v.ACTIVITIES)}"
            self.problem(_at(path, "activity"), f"unknown activity {v.shown(activity)}{hint}")
        campaigns = ANY_CAMPAIGN
        if raw.get("campaigns") is not None:
            campaigns = self.check(v.campaigns, raw["campaigns"], _at(path, "campaigns"))
        when = self.one_key(raw, "when", v.WINDOW_OPS, path, "{in_last_days: 30}")
        count = self.one_key(raw, "count", v.COUNT_OPS, path, "{gte: 3}")
        url = self.url_contains(raw, activity, path)
        if activity not in v.ACTIVITIES or negate is None or campaigns is None:
            return None
        if any(part is _BAD for part in (when, count, url)):
            return None
        return ActivityRule(
            activity=activity,
            campaigns=campaigns,
            when=Window(*when) if when else None,
            count=CountCondition(*count) if count else CountCondition(),
            url_contains=url,
            negate=negate,
        )

    def one_key(
        self,
        raw: Mapping[str, Any],
        key: str,
        ops: Mapping[str, v.ValueCheck],
        path: str,
        example: str,
    ) -> Any:
        """`when` or `count`: a mapping with exactly one operator; None when absent."""
        doc = raw.get(key)
        if doc is None:
            return None
        path = _at(path, key)
        if not isinstance(doc, Mapping) or len(doc) != 1:
            got = f"{len(doc)} keys" if isinstance(doc, Mapping) else v.describe(doc)
            self.problem(
                path, f"expected exactly one of {v.one_of(ops)}, e.g. {example}, got {got}"
            )
            return _BAD
        ((op, value),) = doc.items()
        if op not in ops:
            hint = v.suggest(op, ops) or f"; expected one of {v.one_of(ops)}"
            self.problem(path, f"{v.shown(op)} is not a {key} operator{hint}")
            return _BAD
        checked = self.check(ops[op], value, _at(path, op))
        return _BAD if checked is None else (op, checked)

    def url_contains(self, raw: Mapping[str, Any], activity: Any, path: str) -> Any:
        url = raw.get("url_contains")
        if url is None:
            return None
        path = _at(path, "url_contains")
        if activity in v.ACTIVITIES and activity != v.URL_ACTIVITY:
            self.problem(
                path, f"url_contains is only allowed on {v.URL_ACTIVITY!r}, not on {activity!r}"
            )
            return _BAD
        checked = self.check(v.url_part, url, path)
        return _BAD if checked is None else checked

    # --- bucket rules -------------------------------------------------------------------

    def bucket_rule(self, raw: Mapping[str, Any], path: str) -> BucketRule | None:
        negate = self.negate(raw, path)
        doc = raw["bucket"]
        path = _at(path, "bucket")
        if not isinstance(doc, Mapping):
            self.problem(
                path,
                f"expected {{seed: TEXT, from: LOW, to: HIGH}}, e.g. {{seed: spring-ab, from: 0, "
                f"to: 5000}}, got {v.describe(doc)}",
            )
            return None
        self.unknown_keys(doc, v.BUCKET_KEYS, path, "a bucket")
        checks = {"seed": v.bucket_seed, "from": v.bucket_bound, "to": v.bucket_bound}
        parts: dict[str, Any] = {}
        for key, value_check in checks.items():
            if doc.get(key) is None:
                self.problem(_at(path, key), f"missing: a bucket takes {v.one_of(v.BUCKET_KEYS)}")
                parts[key] = None
            else:
                parts[key] = self.check(value_check, doc[key], _at(path, key))
        if any(part is None for part in parts.values()) or negate is None:
            return None
        if parts["from"] > parts["to"]:
            self.problem(
                _at(path, "to"),
                f"to {parts['to']} is less than from {parts['from']}: buckets [from, to) "
                "need from <= to",
            )
            return None
        return BucketRule(seed=parts["seed"], low=parts["from"], high=parts["to"], negate=negate)

    # --- segment rules ------------------------------------------------------------------

    def segment_rule(self, raw: Mapping[str, Any], path: str) -> SegmentRef | None:
        negate = self.negate(raw, path)
        name = raw["segment"]
        if self.check(v.segment_name, name, _at(path, "segment")) is None:
            return None
        if name == self.name:
            self.problem(
                _at(path, "segment"),
                f"segment reference cycle: {name} -> {name} (a segment cannot reference itself)",
            )
            return None
        if negate is None:
            return None
        return SegmentRef(segment=name, negate=negate)

    KINDS = (
        _RuleKind("a field rule", ("field",), v.FIELD_RULE_KEYS, field_rule),
        _RuleKind("an activity rule", ("activity",), v.ACTIVITY_RULE_KEYS, activity_rule),
        _RuleKind("a bucket rule", ("bucket",), v.BUCKET_RULE_KEYS, bucket_rule),
        _RuleKind("a segment rule", ("segment",), v.SEGMENT_RULE_KEYS, segment_rule),
        _RuleKind("a group", ("rules", "match"), v.GROUP_KEYS, group_body),
    )


_ALL_RULE_KEYS = tuple(dict.fromkeys(key for kind in _Parser.KINDS for key in kind.keys))

#: Marks a part that failed its check (None means "absent" for optional parts).
_BAD: Any = object()
