"""Fuzzing the import parser and the definition parser with random inputs.

Every input must end in a result or a segengine error (one line, an exit status),
never another exception; a definition that parses must give the same count on every
engine. The runs here are bounded; a longer run by hand:

    SEGENGINE_FUZZ=3000 .venv/bin/python -m pytest -n 0 -q -s tests/test_fuzz.py
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter

import pytest
from conftest import write

import segengine
from segengine.errors import SegengineError

RUNS = int(os.environ.get("SEGENGINE_FUZZ", "60"))

CELLS = [
    "a@x.io", "B@X.IO", " c@x.io\t", "ｄ@x.io", "e\u200b@x.io", "\ufefff@x.io", "g,h@x.io",
    'q"x@x.io', "<i@x.io>", "j@x", "@x.io", "k@@x.io", "", " ", "active", "unsubscribed",
    "bounced", "ACTIVE", "nope", "2026-01-01", "2026-13-45", "2026-01-01T10:00:00Z", "1",
    "-2.5e3", "0042", "true", "FALSE", "a;b;;c", "x\x00y", "\u2028", "é", "\U0001f600",
    "=SUM(A1)", "\\", "'", '"', '""', "\r", "\n", "\r\n", ",", "x" * 300,
]
HEADERS = ["email", "Email", " EMAIL ", "status", "date_added", "lists", "name", "score",
           "born", "vip", "_line", "file_row_number", "bad name", "1st", "contact_id", "email"]
RAW = [b"\xff", b"\xfe\xff", b"\xef\xbb\xbf", b"\x00", b'"', b"\r", b"\n", b",", b"\xc3"]


def random_csv(rng: random.Random) -> bytes:
    header = ["email", *rng.sample(HEADERS, rng.randint(0, 4))]
    if rng.random() < 0.1:
        header = rng.sample(HEADERS, rng.randint(0, 3))
    lines = [",".join(header)]
    for _ in range(rng.randint(0, 8)):
        cells = []
        for _ in range(len(header) + rng.choice([0, 0, 0, -1, 1])):
            cell = rng.choice(CELLS)
            if rng.random() < 0.3 and any(c in cell for c in ',"\r\n'):
                cell = '"' + cell.replace('"', '""') + '"'
            cells.append(cell)
        lines.append(",".join(cells))
    data = ("\n" if rng.random() < 0.8 else "\r\n").join(lines).encode()
    for _ in range(rng.choice([0, 0, 0, 1, 2])):  # damage a few bytes
        at = rng.randrange(len(data) + 1)
        data = data[:at] + rng.choice(RAW) + data[at:]
    return data


def test_fuzz_the_import_parser(tmp_path):
    rng = random.Random(1616)
    ws = segengine.Workspace.init(tmp_path / "ws")
    outcomes: Counter[str] = Counter()
    for n in range(RUNS):
        data = random_csv(rng)
        path = tmp_path / f"in{n}.csv"
        path.write_bytes(data)
        try:
            summary = ws.import_contacts(path, rejects=tmp_path / "rejects.csv")
            outcomes["imported" if summary.imported + summary.updated else "rows rejected"] += 1
        except SegengineError as exc:
            assert "\n" not in str(exc), str(exc)
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point: report any other failure
            pytest.fail(f"input {n} ({data!r}) raised {type(exc).__name__}: {exc}")
    # every stored address is valid under the rule, whatever the input
    from segengine.addresses import normalise, problem

    for email in ws.members({"name": "all", "rules": []}, active_only=False)["email"]:
        assert problem(email) is None and normalise(email) == email, email
    print(f"import fuzz: {RUNS} inputs: {dict(outcomes)}")
    assert outcomes["refused"] and outcomes["imported"]


KEYS = ["name", "rules", "match", "negate", "field", "op", "value", "activity", "campaigns",
        "when", "count", "url_contains", "segment", "description", "extra"]
FIELDS = ["email", "email_domain", "status", "date_added", "lists", "score", "city", "vip",
          "born", "nope"]
OPS = ["is", "is_not", "contains", "not_contains", "starts_with", "ends_with", "in",
       "not_in", "is_empty", "is_not_empty", "eq", "ne", "gt", "gte", "lt", "lte", "between",
       "on", "before", "after", "in_last_days", "older_than_days", "includes",
       "includes_all", "excludes", "bogus"]
VALUES = [None, True, False, 0, 1, -1, 2.5, float("nan"), 10**30, "", "a", "A", "x.io",
          "2026-01-01", "2026-02-30", "active", "news", [], ["a", "b"], [1, 2], [1], {},
          {"gte": 1}, {"in_last_days": 30}, {"between": ["2026-01-01", "2026-12-31"]},
          "é", "\x00", "%", "_", "'; DROP TABLE contacts; --"]
ACTIVITIES = ["sent", "opened", "clicked", "bounced", "unsubscribed", "read"]


#: rules that are valid on the fuzz workspace, mixed in so that many documents count
VALID = [
    {"field": "email", "op": "contains", "value": "x"}, {"field": "email_domain", "op": "is", "value": "X.IO"},
    {"field": "status", "op": "in", "value": ["active", "bounced"]},
    {"field": "score", "op": "between", "value": [0, 2]}, {"field": "score", "op": "is_empty"},
    {"field": "city", "op": "is", "value": "PARIS"}, {"field": "city", "op": "not_in", "value": ["rome"]},
    {"field": "vip", "op": "is", "value": True}, {"field": "born", "op": "before", "value": "2000-01-01"},
    {"field": "born", "op": "in_last_days", "value": 400}, {"field": "lists", "op": "includes", "value": "NEWS"},
    {"field": "lists", "op": "excludes", "value": ["a", "b"]}, {"field": "date_added", "op": "is_not_empty"},
    {"activity": "opened"}, {"activity": "sent", "campaigns": ["c1"]},
    {"activity": "clicked", "url_contains": "X.IO/"}, {"activity": "opened", "count": {"gte": 1}},
    {"activity": "sent", "when": {"in_last_days": 90}}, {"activity": "bounced", "negate": True},
    {"segment": "saved"}, {"segment": "saved", "negate": True},
]


def random_rule(rng: random.Random, depth: int) -> object:
    kind = rng.random()
    if kind < 0.5:
        return dict(rng.choice(VALID), **({"negate": True} if rng.random() < 0.2 else {}))
    kind = rng.random()
    if depth < 4 and kind < 0.35:
        rule: dict = {"rules": [random_rule(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
        if rng.random() < 0.5:
            rule["match"] = rng.choice(["all", "any", "some"])
    elif kind < 0.65:
        rule = {"field": rng.choice(FIELDS), "op": rng.choice(OPS)}
        if rng.random() < 0.8:
            rule["value"] = rng.choice(VALUES)
    elif kind < 0.95:
        rule = {"activity": rng.choice(ACTIVITIES)}
        for key, choices in (("campaigns", [["c1"], "any", "c2", [], [1]]),
                             ("when", VALUES), ("count", VALUES), ("url_contains", VALUES)):
            if rng.random() < 0.3:
                rule[key] = rng.choice(choices)
    else:
        rule = {"segment": rng.choice(["saved", "missing", 3])}
    if rng.random() < 0.2:
        rule["negate"] = rng.choice([True, False, "yes", 1])
    if rng.random() < 0.05:
        rule[rng.choice(KEYS)] = rng.choice(VALUES)
    if rng.random() < 0.03:
        return rng.choice(VALUES)
    return rule


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzdef")
    ws = segengine.Workspace.init(root / "ws")
    write(root / "c.csv", "email,score,city,vip,born,lists,status\n"
          "a@x.io,1,Paris,true,2000-01-01,news;a,active\nb@y.io,2.5,,false,,b,unsubscribed\n"
          "c@x.io,,paris,,1999-12-31,,active\nd@z.io,-1,Rome,true,2026-01-01,news,bounced\n")
    ws.import_contacts(root / "c.csv")
    write(root / "e.csv", "email,campaign,type,timestamp,url\n"
          "a@x.io,c1,sent,2026-01-01T10:00:00Z,\na@x.io,c1,open,2026-01-02T10:00:00Z,\n"
          "c@x.io,c2,click,2026-02-01T10:00:00Z,https://x.io/a\n")
    ws.import_events(root / "e.csv")
    ws.save_segment({"name": "saved", "rules": [{"field": "score", "op": "gt", "value": 0}]})
    return ws


def test_fuzz_the_definition_parser(small):
    rng = random.Random(1617)
    outcomes: Counter[str] = Counter()
    for n in range(RUNS * 5):
        doc: object = {"name": rng.choice(["fuzz"] * 17 + ["", "Bad Name", 7]),
                       "rules": [random_rule(rng, 0) for _ in range(rng.randint(0, 4))]}
        if rng.random() < 0.2:
            doc["match"] = rng.choice(["all", "any", None])  # type: ignore[index]
        text = json.dumps(doc, default=str) if rng.random() < 0.3 else None
        try:
            totals = {engine: small.count(text or doc, engine=engine, as_of="2026-03-01")["total"]
                      for engine in ("duckdb", "index", "polars")}
        except SegengineError as exc:
            outcomes["refused"] += 1
            assert str(exc) and "Traceback" not in str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - the point: report any other failure
            pytest.fail(f"definition {n} {doc!r} raised {type(exc).__name__}: {exc}")
        assert len(set(totals.values())) == 1, (doc, totals)
        outcomes["counted"] += 1
    print(f"definition fuzz: {RUNS * 5} documents: {dict(outcomes)}")
    assert outcomes["refused"] and outcomes["counted"]


YAML_BASE = """name: fuzz
description: x
rules:
  - match: any
    rules:
      - {field: city, op: is, value: Paris}
      - {field: score, op: between, value: [1, 2]}
  - activity: opened
    when: {in_last_days: 30}
    count: {gte: 2}
  - &a {field: email, op: contains, value: "@x"}
  - *a
"""
YAML_PIECES = [
    "&x ", "*x", "*a", "&a ", "[", "]", "{", "}", ":", "- ", "\n", "  ", "'", '"', "\t",
    "!!python/object/apply:os.system ", "%YAML 1.1\n---\n", "<<: *a\n", "\x00", "\ufeff",
    "null", "~", "0o17", "1_000", "2026-01-01", "yes", "on", "? ", "|\n", ">-\n", "#",
    "!!binary ", "!!set ", "&y [*y]", "? [a, b]\n: c\n",
]


def test_fuzz_yaml_text(recwarn):
    from segengine.definition.parse import load_definition
    from segengine.fields import Schema

    schema = Schema.from_pairs([("city", "text"), ("score", "number")])
    rng = random.Random(1618)
    outcomes: Counter[str] = Counter()
    for _ in range(RUNS * 10):
        text = YAML_BASE
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(text) + 1)
            if rng.random() < 0.3:
                text = text[:at] + text[at + rng.randint(1, 5):]
            else:
                text = text[:at] + rng.choice(YAML_PIECES) + text[at:]
        try:
            load_definition(text, schema)
            outcomes["valid"] += 1
        except SegengineError:
            outcomes["refused"] += 1
        except Exception as exc:  # noqa: BLE001 - the point: report any other failure
            pytest.fail(f"{text!r} raised {type(exc).__name__}: {exc}")
    print(f"YAML fuzz: {RUNS * 10} texts: {dict(outcomes)}")
    assert outcomes["valid"] and outcomes["refused"]
    assert not [w for w in recwarn if "anchor" in str(w.message)]  # nothing on stderr
