"""Pure passes over rule trees: resolve segment references, simplify, write back as a dict.

Engines evaluate *resolved* trees (`inline_references` first), may run `simplify`
to get fewer, flatter groups, and never see a `SegmentRef`. Every pass returns a new
tree; nodes are immutable, so unchanged subtrees are shared, not copied.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from ..errors import DefinitionError, ReferenceCycle, SegmentNotFound
from .nodes import (
    ANY_CAMPAIGN,
    ActivityRule,
    BucketRule,
    CountCondition,
    FieldRule,
    Group,
    LastCampaigns,
    Rule,
    Segment,
    SegmentRef,
)
from .validate import MAX_DEPTH

# --- segment references -------------------------------------------------------------


def references(root: Rule) -> set[str]:
    """The names of the segments `root` refers to directly (not their references)."""
    if isinstance(root, SegmentRef):
        return {root.segment}
    if isinstance(root, Group):
        return set().union(*(references(rule) for rule in root.rules))
    return set()


def inline_references(
    root: Group, lookup: Callable[[str], Segment], *, name: str | None = None
) -> Group:
    """Replace every segment rule by the referenced segment's tree, recursively.

    ``{segment: b, negate: n}`` becomes ``Group(all, (b.root,), negate=n)``. `lookup`
    returns a saved segment and raises `KeyError` (or `SegmentNotFound`) for a missing
    one; `name` is the segment `root` belongs to, if saved, so that a cycle back to it
    is named. Raises `ReferenceCycle` ("segment reference cycle: a -> b -> a") or
    `SegmentNotFound` naming the referencing and the missing segment.
    """
    what = f"segment {name!r}" if name else "the definition"
    try:
        inlined = _Inliner(lookup, name).group(root)
        deepest = group_depth(inlined)
    except RecursionError:
        deepest = 10 * MAX_DEPTH  # a chain of references far deeper than allowed
    if deepest > MAX_DEPTH:
        raise DefinitionError(
            f"{what} nests groups {deepest} deep once the segments it references are "
            f"inlined (a reference nests two: its rule and the segment's root); at most "
            f"{MAX_DEPTH}: flatten one of them"
        )
    return inlined


def group_depth(root: Group, memo: dict[int, int] | None = None) -> int:
    """How deep groups nest in `root` (a root without groups inside is 0).

    A segment referenced twice is one shared subtree: each is measured once, so a
    tree that expands exponentially costs its distinct nodes only.
    """
    memo = {} if memo is None else memo
    found = memo.get(id(root))
    if found is None:
        found = max((1 + group_depth(r, memo) for r in root.rules if isinstance(r, Group)),
                    default=0)
        memo[id(root)] = found
    return found


class _Inliner:
    def __init__(self, lookup: Callable[[str], Segment], name: str | None):
        self.lookup = lookup
        #: the segments being expanded, outermost first: a reference to one is a cycle
        self.chain: list[str] = [name] if name else []
        #: expanded trees by name, so a segment referenced twice is expanded once
        self.done: dict[str, Group] = {}

    def group(self, group: Group) -> Group:
        return replace(group, rules=tuple(self.rule(rule) for rule in group.rules))

    def rule(self, rule: Rule) -> Rule:
        if isinstance(rule, Group):
            return self.group(rule)
        if isinstance(rule, SegmentRef):
            return Group(match="all", rules=(self.expand(rule.segment),), negate=rule.negate)
        return rule

    def expand(self, target: str) -> Group:
        if target in self.chain:
            raise ReferenceCycle(cycle_message((*self.chain[self.chain.index(target) :], target)))
        if target not in self.done:
            try:
                segment = self.lookup(target)
            except (KeyError, SegmentNotFound):
                referrer = f"segment {self.chain[-1]!r}" if self.chain else "the definition"
                raise SegmentNotFound(
                    f"{referrer} references segment {target!r}, which does not exist"
                ) from None
            self.chain.append(target)
            self.done[target] = self.group(segment.root)
            self.chain.pop()
        return self.done[target]


def find_cycle(name: str, graph: Mapping[str, Iterable[str]]) -> tuple[str, ...] | None:
    """A reference cycle reachable from `name`, as ``(a, b, a)``, or None.

    `graph` maps each segment name to the names it references (`references` of its
    root); names missing from it reference nothing. Used before saving a segment:
    put its new references into the graph of the saved ones and look for a cycle.
    """
    path: list[str] = []
    finished: set[str] = set()

    def visit(node: str) -> tuple[str, ...] | None:
        if node in path:
            return (*path[path.index(node) :], node)
        if node in finished:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        finished.add(node)
        return None

    return visit(name)


def ensure_acyclic(name: str, graph: Mapping[str, Iterable[str]]) -> None:
    """Raise `ReferenceCycle` naming the segments if `find_cycle` finds one."""
    cycle = find_cycle(name, graph)
    if cycle:
        raise ReferenceCycle(cycle_message(cycle))


def cycle_message(cycle: Iterable[str]) -> str:
    return "segment reference cycle: " + " -> ".join(cycle)


# --- simplify -------------------------------------------------------------------------


def simplify(root: Group) -> Group:
    """An equivalent tree with fewer groups.

    A non-negated group inside a group of the same kind (all in all, any in any) is
    merged into its parent, and a group holding a single rule is replaced by that
    rule, with the group's `negate` folded into the rule's (docs/segments.md: `negate` on any rule
    is exactly its complement). The result's root is always a group.
    """
    rule = _simplify(root)
    return rule if isinstance(rule, Group) else Group(match="all", rules=(rule,))


def _simplify(rule: Rule) -> Rule:
    if not isinstance(rule, Group):
        return rule
    rules: list[Rule] = []
    for child in map(_simplify, rule.rules):
        if isinstance(child, Group) and not child.negate and child.match == rule.match:
            rules.extend(child.rules)
        else:
            rules.append(child)
    if len(rules) == 1:
        only = rules[0]
        return replace(only, negate=only.negate != rule.negate)
    return replace(rule, rules=tuple(rules))


# --- back to a document -----------------------------------------------------------------


def to_dict(segment: Segment) -> dict[str, Any]:
    """The definition document of `segment`: `parse_definition(to_dict(s), schema) == s`.

    Dates become ``YYYY-MM-DD`` text, tuples lists, whole floats ints; keys holding
    their default value are left out, except `match`.
    """
    doc: dict[str, Any] = {"name": segment.name}
    if segment.description:
        doc["description"] = segment.description
    doc.update(rule_to_dict(segment.root))
    return doc


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    """One rule as its definition document (see `to_dict`)."""
    to_doc = _RULE_DICTS.get(type(rule))
    if to_doc is None:
        raise TypeError(f"not a rule node: {type(rule).__name__}")
    doc = to_doc(rule)
    if rule.negate:
        doc["negate"] = True
    return doc


def _group_dict(group: Group) -> dict[str, Any]:
    return {"match": group.match, "rules": [rule_to_dict(rule) for rule in group.rules]}


def _field_dict(rule: FieldRule) -> dict[str, Any]:
    doc = {"field": rule.field, "op": rule.op}
    if rule.value is not None:
        doc["value"] = _plain(rule.value)
    return doc


def _activity_dict(rule: ActivityRule) -> dict[str, Any]:
    doc: dict[str, Any] = {"activity": rule.activity}
    if rule.campaigns != ANY_CAMPAIGN:
        doc["campaigns"] = _plain(rule.campaigns)
    if rule.when is not None:
        doc["when"] = {rule.when.op: _plain(rule.when.value)}
    if rule.count != CountCondition():
        doc["count"] = {rule.count.op: _plain(rule.count.value)}
    if rule.url_contains is not None:
        doc["url_contains"] = rule.url_contains
    return doc


def _bucket_dict(rule: BucketRule) -> dict[str, Any]:
    return {"bucket": {"seed": rule.seed, "from": rule.low, "to": rule.high}}


def _ref_dict(rule: SegmentRef) -> dict[str, Any]:
    return {"segment": rule.segment}


_RULE_DICTS: dict[type, Callable[[Any], dict[str, Any]]] = {
    Group: _group_dict,
    FieldRule: _field_dict,
    ActivityRule: _activity_dict,
    BucketRule: _bucket_dict,
    SegmentRef: _ref_dict,
}


def _plain(value: Any) -> Any:
    """A normalised rule value as JSON/YAML would hold it."""
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, LastCampaigns):
        return {"last": value.n}
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value
