"""The fixed benchmark suite: data scales and the segments every engine and baseline counts.

The segments cover what users ask for (field filters, list membership, the seed's
examples, behaviour over the events, nested logic, unions) and the semantics that
are easy to get wrong by hand: case-insensitive text, empty values, UTC days,
"last N campaigns" with its tie-break, and count thresholds that zero satisfies.
Every baseline in `benchmarks.baselines` implements each of them by hand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SEED_SEGMENTS = REPO / "data" / "segments"

#: The synthetic data ends on 2026-10-31 (segengine.synth.REFERENCE_END): evaluate the
#: day after, so "last 30 days" windows hold the latest campaigns' opens and clicks.
AS_OF = "2026-11-01"
DATA_SEED = 1


@dataclass(frozen=True)
class Scale:
    """A data-set size; pandas is skipped where it cannot hold the events in memory."""

    name: str
    contacts: int
    events: int
    pandas: bool = True


SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", 2_000, 30_000),
    "small": Scale("small", 20_000, 400_000),
    "1m": Scale("1m", 1_000_000, 20_000_000),
    "10m": Scale("10m", 10_000_000, 200_000_000, pandas=False),
}


@dataclass(frozen=True)
class BenchSegment:
    """One entry of the suite: a segment, or the union of several (`parts`)."""

    name: str
    kind: str
    description: str
    parts: tuple[str, ...]  # names of single segments (a union has several)


def _rules(*rules: dict[str, Any], match: str = "all") -> dict[str, Any]:
    return {"match": match, "rules": list(rules)}


def field(name: str, op: str, value: Any = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"field": name, "op": op}
    if value is not None:
        rule["value"] = value
    return rule


ACTIVE = field("status", "is", "active")

#: Definitions written here (SPEC section 4 syntax); the seed's come from data/segments.
DEFINITIONS: dict[str, dict[str, Any]] = {
    "field-state-in": _rules(field("state", "in", ["CA", "TX", "ny"])),
    "field-title-contains": _rules(field("title", "contains", "ENGINEER")),
    "field-date-added-between": _rules(field("date_added", "between", ["2025-01-01", "2025-06-30"])),
    "field-empty-aware": _rules(field("state", "is_not", "CA"), field("title", "is_empty")),
    "list-newsletter-active": _rules(ACTIVE, field("lists", "includes", "Newsletter")),
    "never-opened-any-status": _rules({"activity": "opened", "count": {"eq": 0}}),
    "opened-nl-0034-in-september": _rules(
        {
            "activity": "opened",
            "campaigns": ["nl-0034"],
            "when": {"between": ["2026-09-01", "2026-09-30"]},
        }
    ),
    "ca-pricing-clickers-30d": _rules(
        ACTIVE,
        field("state", "is", "CA"),
        {"activity": "clicked", "url_contains": "PRICING", "when": {"in_last_days": 30}},
    ),
    "opened-3x-in-90d": _rules(
        {"activity": "opened", "when": {"in_last_days": 90}, "count": {"gte": 3}}
    ),
    "opened-any-of-last-5": _rules({"activity": "opened", "campaigns": {"last": 5}}),
    "cold-in-last-5": _rules(
        ACTIVE, {"activity": "opened", "campaigns": {"last": 5}, "count": {"lte": 1}}
    ),
    "nested-negation": _rules(
        field("status", "is_not", "bounced"),
        _rules(
            _rules(
                field("lists", "includes", ["customers", "trial"]),
                {"activity": "clicked", "when": {"in_last_days": 180}, "negate": True},
            ),
            _rules(
                field("score", "gte", 60),
                field("employees", "between", [100, 10000]),
                field("last_login", "in_last_days", 365),
            ),
            match="any",
        ),
        {
            "match": "any",
            "negate": True,
            "rules": [
                field("title", "is", "student"),
                field("vip", "is", True),
                field("email_domain", "ends_with", "GMAIL.example"),
            ],
        },
    ),
    # --- shapes a team writes beyond the first suite (issue 21) ---
    "opened-2-5x-180d-scored": _rules(
        {"activity": "opened", "when": {"in_last_days": 180}, "count": {"between": [2, 5]}},
        field("score", "gte", 40),
        field("state", "in", ["CA", "NY", "TX"]),
    ),
    "clicked-pricing-2x": _rules(
        {"activity": "clicked", "url_contains": "pricing", "count": {"gte": 2}}
    ),
    "three-field-rules": _rules(
        field("employees", "between", [50, 5000]),
        field("state", "not_in", ["CA", "TX"]),
        field("title", "is_not_empty"),
    ),
    "nested-negation-quiet": _rules(
        field("status", "is_not", "unsubscribed"),
        {
            "match": "any",
            "negate": True,
            "rules": [
                {"activity": "opened", "when": {"in_last_days": 30}},
                {"activity": "clicked", "when": {"in_last_days": 90}},
            ],
        },
        {
            "match": "all",
            "negate": True,
            "rules": [field("lists", "includes", "customers"), field("score", "lt", 20)],
        },
    ),
    "every-operator": _rules(
        field("status", "in", ["active", "bounced"]),
        field("lists", "excludes", "trial"),
        field("company", "starts_with", "G"),
        field("score", "ne", 50),
        field("vip", "is", False),
        field("birthday", "before", "1990-01-01"),
        field("last_login", "older_than_days", 30),
        {"activity": "sent", "when": {"in_last_days": 60}},
        {"activity": "clicked", "count": {"lt": 3}},
    ),
}

SUITE: tuple[BenchSegment, ...] = (
    BenchSegment("field-state-in", "field", "state in CA, TX, ny (any case)", ("field-state-in",)),
    BenchSegment("field-title-contains", "field", "title contains ENGINEER",
                 ("field-title-contains",)),
    BenchSegment("field-date-added-between", "field", "added 2025-01-01..2025-06-30 (UTC days)",
                 ("field-date-added-between",)),
    BenchSegment("field-empty-aware", "field", "state is not CA (empties in) and no title",
                 ("field-empty-aware",)),
    BenchSegment("list-newsletter-active", "list", "active and in list Newsletter",
                 ("list-newsletter-active",)),
    BenchSegment("cto-or-sales-west", "seed", "seed: CTO or *sales* in CA/OR/WA",
                 ("cto-or-sales-west",)),
    BenchSegment("inactive-newsletter", "seed", "seed: active newsletter, old, never opened",
                 ("inactive-newsletter",)),
    BenchSegment("never-opened", "seed", "seed: active, never opened", ("never-opened",)),
    BenchSegment("state-ca", "seed", "seed: state is CA", ("state-ca",)),
    BenchSegment("never-opened-any-status", "behavioral", "opened count eq 0 (no events too)",
                 ("never-opened-any-status",)),
    BenchSegment("opened-nl-0034-in-september", "behavioral",
                 "opened nl-0034 during September 2026", ("opened-nl-0034-in-september",)),
    BenchSegment("ca-pricing-clickers-30d", "behavioral",
                 "active in CA, clicked a pricing URL in the last 30 days",
                 ("ca-pricing-clickers-30d",)),
    BenchSegment("opened-3x-in-90d", "behavioral", "opened at least 3 times in 90 days",
                 ("opened-3x-in-90d",)),
    BenchSegment("opened-any-of-last-5", "behavioral", "opened any of the last 5 campaigns",
                 ("opened-any-of-last-5",)),
    BenchSegment("cold-in-last-5", "behavioral", "active, opened <= 1 of the last 5 (zero too)",
                 ("cold-in-last-5",)),
    BenchSegment("nested-negation", "behavioral", "nested any/all, negated activity and group",
                 ("nested-negation",)),
    BenchSegment("union-of-3", "union",
                 "state-ca OR opened-3x-in-90d OR ca-pricing-clickers-30d",
                 ("state-ca", "opened-3x-in-90d", "ca-pricing-clickers-30d")),
    BenchSegment("opened-2-5x-180d-scored", "behavioral",
                 "opened 2-5 times in 180 days, score >= 40, state in CA/NY/TX",
                 ("opened-2-5x-180d-scored",)),
    BenchSegment("clicked-pricing-2x", "behavioral",
                 "clicked a URL containing pricing at least twice, ever",
                 ("clicked-pricing-2x",)),
    BenchSegment("three-field-rules", "field",
                 "employees 50-5000, state not in CA/TX (empties in), has a title",
                 ("three-field-rules",)),
    BenchSegment("nested-negation-quiet", "behavioral",
                 "not unsubscribed, not (opened 30d or clicked 90d), not (customer and score < 20)",
                 ("nested-negation-quiet",)),
    BenchSegment("every-operator", "behavioral",
                 "status in, excludes, starts_with, ne, boolean, date before, older_than, "
                 "sent in 60d, clicked < 3", ("every-operator",)),
    BenchSegment("union-of-3-mixed", "union",
                 "opened-2-5x-180d-scored OR clicked-pricing-2x OR nested-negation",
                 ("opened-2-5x-180d-scored", "clicked-pricing-2x", "nested-negation")),
    BenchSegment("union-of-5", "union",
                 "state-ca OR three-field-rules OR opened-3x-in-90d OR clicked-pricing-2x "
                 "OR opened-nl-0034-in-september",
                 ("state-ca", "three-field-rules", "opened-3x-in-90d", "clicked-pricing-2x",
                  "opened-nl-0034-in-september")),
)

SEED_NAMES = ("cto-or-sales-west", "inactive-newsletter", "never-opened", "state-ca")


def segment_files(directory: Path) -> dict[str, Path]:
    """Write the suite's own definitions as JSON into `directory`; add the seed's YAML files.

    Every path (segengine in-process, the cold CLI) then reads the same definition files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {name: SEED_SEGMENTS / f"{name}.yaml" for name in SEED_NAMES}
    for name, body in DEFINITIONS.items():
        path = directory / f"{name}.json"
        text = json.dumps({"name": name, **body}, indent=1)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        files[name] = path
    return files
