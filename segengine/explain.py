"""`segengine explain`: how many contacts each rule and group matches on its own.

A user sees at once why a segment is small or large: the rule that cuts it down, the
field rule whose values are mostly empty, the group that matches everyone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .definition.nodes import ActivityRule, BucketRule, FieldRule, Group, Rule, SegmentRef
from .definition.rewrite import rule_to_dict
from .engines.base import Engine


@dataclass
class Explained:
    """One node of the tree with its own match count."""

    path: str
    kind: str
    rule: dict[str, Any]
    matches: int
    empty: int | None = None  # field rules: contacts whose value is empty
    children: list[Explained] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "kind": self.kind, "matches": self.matches}
        if self.empty is not None:
            out["empty"] = self.empty
        out["rule"] = self.rule
        if self.children:
            out["rules"] = [c.as_dict() for c in self.children]
        return out


def _count(engine: Engine, rule: Rule, as_of: dt.date) -> int:
    root = rule if isinstance(rule, Group) else Group("all", (rule,))
    return sum(engine.count([root], as_of).values())


def explain(engine: Engine, original: Group, resolved: Group, as_of: dt.date) -> Explained:
    """Count `original`'s nodes; `resolved` is the same tree with references inlined."""
    return _explain(engine, original, resolved, as_of, "rules")


def _explain(engine: Engine, node: Rule, resolved: Rule, as_of: dt.date, path: str) -> Explained:
    matches = _count(engine, resolved, as_of)
    if isinstance(node, Group):
        summary = {"match": node.match, "negate": node.negate} if node.negate else {"match": node.match}
        assert isinstance(resolved, Group)
        children = [
            _explain(engine, child, child_resolved, as_of, f"{path}[{i}]")
            for i, (child, child_resolved) in enumerate(zip(node.rules, resolved.rules, strict=True))
        ]
        return Explained(path, "group", summary, matches, children=children)
    empty = None
    if isinstance(node, FieldRule) and node.field not in ("status",):
        empty = _count(engine, FieldRule(node.field, "is_empty"), as_of)
    kind = {
        FieldRule: "field", ActivityRule: "activity", BucketRule: "bucket", SegmentRef: "segment"
    }[type(node)]
    return Explained(path, kind, rule_to_dict(node), matches, empty)


def yaml_value(value: Any) -> str:
    """`value` as a user writes it in a definition: flow-style YAML on one line.

    ``[newsletter, vip]`` and ``{in_last_days: 30}``, with quotes only where a YAML
    reader would take the text for something else (``'2025-01-01'``, ``'true'``).
    """
    import io

    from ruamel.yaml import YAML

    from .definition.yaml12 import QuotingResolver

    yaml = YAML(typ="safe", pure=True)
    yaml.Resolver = QuotingResolver
    yaml.default_flow_style = True
    yaml.allow_unicode = True
    yaml.width = 1_000_000
    out = io.StringIO()
    yaml.dump(value, out)
    text = out.getvalue().strip()
    # A plain scalar is written as a document of its own, ended by "...".
    return text.removesuffix("...").strip()


def render(tree: Explained, total: int) -> list[str]:
    """Indented text lines: the count, its share of all contacts, and the rule."""
    lines: list[str] = []

    def describe(node: Explained) -> str:
        r = node.rule
        neg = "NOT " if r.get("negate") else ""
        if node.kind == "group":
            return f"{neg}{r['match'].upper()} of {len(node.children)} rule(s)"
        if node.kind == "field":
            value = "" if "value" not in r else f" {yaml_value(r['value'])}"
            return f"{neg}{r['field']} {r['op']}{value}"
        if node.kind == "segment":
            return f"{neg}segment {yaml_value(r['segment'])}"
        if node.kind == "bucket":
            b = r["bucket"]
            return f"{neg}bucket of seed {yaml_value(b['seed'])} in [{b['from']}, {b['to']})"
        extras = ", ".join(f"{k}: {yaml_value(v)}" for k, v in r.items() if k not in ("activity", "negate"))
        return f"{neg}{r['activity']} {extras}".rstrip()

    def walk(node: Explained, depth: int) -> None:
        share = f"{100 * node.matches / total:5.1f}%" if total else "    -"
        empty = f"  ({node.empty:,} empty)" if node.empty else ""
        lines.append(f"{node.matches:>12,} {share}  {'  ' * depth}{describe(node)}{empty}")
        for child in node.children:
            walk(child, depth + 1)

    walk(tree, 0)
    return lines
