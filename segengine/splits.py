"""Splits and priorities: one audience cut into A/B/holdout groups, or several audiences
given one segment each (docs/analytics.md).

- `split_audience`: the union of segments cut by bucket number (a bucket rule,
  docs/segments.md) into groups of given percentages, with consecutive bucket ranges in
  the order given; optionally saved as one segment per group.
- `priority_counts`: segments in priority order, each contact counted for the first one
  it matches: what each segment gets, and what it loses to those before it.

Both evaluate rule trees built from the resolved segments, so every engine answers
them, and on the engagement index they are bitmap operations (a seed's bucket numbers
are computed once per snapshot).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .definition.nodes import BUCKETS, BucketRule, Group, Segment
from .definition.validate import NAME_PATTERN, NAME_RE
from .errors import InputError
from .session import SegmentArg, Session, parse_as_of

#: A group name: what may follow ``PREFIX-`` in a segment name.
GROUP_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
#: Percentages have at most two decimals: one bucket is 0.01 %.
PCT_RE = re.compile(r"[0-9]+(\.[0-9]{1,2})?\Z")
ONE_HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class SplitGroup:
    """A group of a split: its name, its share and its buckets ``[low, high)``."""

    name: str
    percent: Decimal
    low: int
    high: int


def parse_groups(groups: str | Sequence[tuple[str, Any]]) -> list[SplitGroup]:
    """``a=45,b=45,holdout=10`` (or ``[("a", 45), ...]``) as groups with consecutive buckets.

    Percentages have at most two decimals and sum to exactly 100; names are distinct,
    lower-case letters, digits, ``-`` and ``_``. Anything else is an `InputError`
    naming the option and the fix.
    """
    pairs = _pairs(groups)
    if not pairs:
        raise InputError("--groups: give NAME=PCT pairs separated by commas, e.g. a=45,b=45,holdout=10")
    parsed: list[tuple[str, Decimal]] = []
    seen: set[str] = set()
    for name, pct in pairs:
        if not GROUP_NAME_RE.match(name):
            raise InputError(
                f"--groups: {name!r} is not a group name: lower-case letters, digits, '-' or '_', "
                "starting with a letter or digit (it names the saved segment PREFIX-NAME)"
            )
        if name in seen:
            raise InputError(f"--groups: group {name!r} is named twice: give each group its own name")
        seen.add(name)
        parsed.append((name, _percent(name, pct)))
    total = sum((pct for _, pct in parsed), Decimal(0))
    if total != ONE_HUNDRED:
        raise InputError(
            f"--groups: the percentages sum to {_show(total)}, not 100: make them add up to 100 "
            "(a holdout is a group too, e.g. a=45,b=45,holdout=10)"
        )
    out, start = [], Decimal(0)
    for name, pct in parsed:
        end = start + pct
        out.append(SplitGroup(name, pct, _bucket(start), _bucket(end)))
        start = end
    return out


def _pairs(groups: str | Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    if not isinstance(groups, str):
        return [(str(name).strip(), pct) for name, pct in groups]
    pairs = []
    for item in groups.split(","):
        name, sep, pct = item.partition("=")
        if not sep or not name.strip() or not pct.strip():
            raise InputError(
                f"--groups: {item.strip()!r} is not NAME=PCT: write e.g. a=45,b=45,holdout=10"
            )
        pairs.append((name.strip(), pct.strip()))
    return pairs


def _percent(name: str, pct: Any) -> Decimal:
    text = _show(pct) if isinstance(pct, Decimal) else str(pct).strip()
    if isinstance(pct, bool) or not PCT_RE.match(text):
        raise InputError(
            f"--groups: {name}={text} is not a percentage with at most two decimals "
            "(one bucket is 0.01 %), e.g. 45 or 12.5"
        )
    value = Decimal(text)  # the pattern admits digits with an optional fraction only
    if value <= 0:
        raise InputError(f"--groups: group {name!r} has 0 %: a group needs a share above 0")
    return value


def _bucket(percent: Decimal) -> int:
    return int(percent * BUCKETS / ONE_HUNDRED)


def _show(value: Decimal) -> str:
    """``45`` for 45.00, ``12.5`` for 12.50."""
    return format(value.normalize(), "f")


def default_seed(segments: Sequence[Segment]) -> str:
    """The segments' names joined with ``+``: the same audience always splits the same way."""
    return "+".join(segment.name for segment in segments)


def _union(roots: Sequence[Group]) -> Group:
    return roots[0] if len(roots) == 1 else Group("any", tuple(roots))


def split_audience(
    session: Session,
    segments: Sequence[SegmentArg],
    groups: str | Sequence[tuple[str, Any]],
    *,
    seed: str | None = None,
    save: str | None = None,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """Cut the union of `segments` into `groups` by bucket number; count (and save) each.

    Returns ``{"seed", "as_of", "groups": [{"name", "from", "to", "percent", "total",
    "sendable"}]}``, and ``"saved"`` (the segment names) with `save`: one segment per
    group, ``SAVE-NAME``, that refers to the saved segments (a definition file's rules
    are copied in) and holds the group's bucket rule; all are saved in one commit.
    """
    parsed = parse_groups(groups)
    if seed is not None and (not isinstance(seed, str) or seed == ""):
        raise InputError('--seed: the seed may not be empty: name the test, e.g. --seed spring-ab')
    if save is not None:
        _check_prefix(save, parsed)
    day = parse_as_of(as_of)
    snap = session.snapshot()
    named = session.named_roots(segments, snap)
    seed = default_seed([segment for segment, _ in named]) if seed is None else seed
    union = _union([root for _, root in named])
    evaluator = session.engine(engine, snap)
    rows = []
    for group in parsed:
        rule = Group("all", (union, BucketRule(seed, group.low, group.high)))
        counted = evaluator.count([rule], day)
        rows.append({
            "name": group.name, "from": group.low, "to": group.high,
            "percent": float(group.percent), "total": sum(counted.values()),
            "sendable": counted["active"],
        })
    result: dict[str, Any] = {"seed": seed, "as_of": day.isoformat(), "groups": rows}
    if save is not None:
        definitions = [
            _group_definition(save, group, seed, [segment for segment, _ in named], snap.segments)
            for group in parsed
        ]
        result["saved"] = [s.name for s in session.save_segments(definitions)]
    return result


def _check_prefix(prefix: str, groups: Sequence[SplitGroup]) -> None:
    for group in groups:
        name = f"{prefix}-{group.name}"
        if not NAME_RE.match(name):
            raise InputError(
                f"--save: {name!r} is not a valid segment name ({NAME_PATTERN}): use a shorter "
                "prefix of lower-case letters, digits, '-' or '_'"
            )


def _group_definition(
    prefix: str, group: SplitGroup, seed: str, segments: Sequence[Segment], saved: dict
) -> dict[str, Any]:
    from .definition.rewrite import rule_to_dict, to_dict

    # a saved segment is referred to (the group follows its changes); a definition file
    # is not in the workspace, so its rules are copied in
    parts = [
        {"segment": s.name} if saved.get(s.name) == to_dict(s) else rule_to_dict(s.root)
        for s in segments
    ]
    audience = parts[0] if len(parts) == 1 else {"match": "any", "rules": parts}
    names = " + ".join(s.name for s in segments)
    return {
        "name": f"{prefix}-{group.name}",
        "description": f"split group {group.name} ({_show(group.percent)} %) of {names}, seed {seed!r}",
        "match": "all",
        "rules": [audience, {"bucket": {"seed": seed, "from": group.low, "to": group.high}}],
    }


def priority_counts(
    session: Session,
    segments: Sequence[SegmentArg],
    *,
    as_of: str | dt.date | None = None,
    engine: str = "auto",
) -> dict[str, Any]:
    """Segments in priority order: each contact belongs to the first it matches.

    Per segment: ``matched`` (its own contacts), ``total`` and ``sendable`` (those it
    gets), ``lost`` (its own contacts an earlier segment took). The totals add up to
    the union's total. Fewer than two segments, or one listed twice (the second would
    get nobody), is an `InputError`.
    """
    if len(segments) < 2:
        raise InputError(
            f"a priority list needs at least two segments (got {len(segments)}): "
            "name two or more SEGs, the first one taking precedence"
        )
    day = parse_as_of(as_of)
    snap = session.snapshot()
    named = session.named_roots(segments, snap)
    seen: set[str] = set()
    for segment, _ in named:
        if segment.name in seen:
            raise InputError(
                f"segment {segment.name!r} is listed twice in the priority list: its contacts go "
                "to the first place, so list each segment once"
            )
        seen.add(segment.name)
    evaluator = session.engine(engine, snap)
    rows = []
    for i, (segment, root) in enumerate(named):
        earlier = [r for _, r in named[:i]]
        own = evaluator.count([root], day)
        if earlier:
            before = Group("any", tuple(earlier), negate=True)
            gets = evaluator.count([Group("all", (root, before))], day)
        else:
            gets = own
        rows.append({
            "segment": segment.name, "matched": sum(own.values()), "total": sum(gets.values()),
            "sendable": gets["active"], "lost": sum(own.values()) - sum(gets.values()),
        })
    union = evaluator.count([root for _, root in named], day)
    return {
        "as_of": day.isoformat(),
        "segments": rows,
        "union": {"total": sum(union.values()), "sendable": union["active"]},
    }
