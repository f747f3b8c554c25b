"""The bucket rule: its definition, its checks, and its number in every SQL dialect.

The number is checked against an independent computation (tests/reference.py's
`bucket_of`, hashlib on the contract's words) on real DuckDB, PostgreSQL and Spark, over
emails whose UTF-8 bytes differ from their characters (non-ASCII), whose hashes start
with zeros, and seeds holding colons and quotes. Every engine's answers are checked in
tests/engines/test_conformance.py and, in random trees, against the reference evaluator.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest
from reference import bucket_of
from sqlglot import exp
from test_sql_on_engines import postgres  # noqa: F401 - the throwaway server fixture

from segengine.definition.lower import FALSE, Bucket, lower
from segengine.definition.nodes import BucketRule, Group, Segment, bucket_number
from segengine.definition.parse import parse_definition
from segengine.definition.rewrite import to_dict
from segengine.engines import sql
from segengine.errors import DefinitionError
from segengine.fields import Schema

SCHEMA = Schema()
AS_OF = dt.date(2026, 3, 15)

#: Non-ASCII, upper case, quotes, a plus, and many plain ones (some hash to leading zeros).
EMAILS = [
    "anna@example.com", "çelik@bücher.de", "ǅemal'o@Ärger.de", "e+tag@x.io", "ΣΊΣΥΦΟΣ@x.gr",
    "a@b.c", "😀@emoji.io",
] + [f"user{i}@example{i % 7}.com" for i in range(300)]  # fmt: skip
SEEDS = ["spring-ab", "a:b", "Ärger 'x'", "s"]


def problems(*rules) -> list[str]:
    try:
        parse_definition({"name": "s", "rules": list(rules)}, SCHEMA)
    except DefinitionError as err:
        return [str(p) for p in err.problems]
    return []


# --- the number ------------------------------------------------------------------------


def test_the_number_is_the_contracts_formula():
    for seed in SEEDS:
        for email in EMAILS:
            assert bucket_number(seed, email) == bucket_of(seed, email)
    assert bucket_number("ab", "x@y.com") == 1637  # pinned: a change of the rule shows


def test_some_hashes_start_with_zeros():
    import hashlib

    leading = [e for e in EMAILS for s in SEEDS
               if hashlib.sha256(f"{s}:{e}".encode()).hexdigest().startswith("0")]
    assert leading, "the emails should include hashes whose hex starts with 0"


# --- the definition --------------------------------------------------------------------


def test_a_bucket_rule_parses_and_round_trips():
    doc = {"name": "ab-a", "match": "all", "rules": [{"bucket": {"seed": "spring", "from": 0, "to": 4500}},
                                     {"bucket": {"seed": "x", "from": 10, "to": 10}, "negate": True}]}
    segment = parse_definition(doc, SCHEMA)
    assert segment.root.rules == (BucketRule("spring", 0, 4500), BucketRule("x", 10, 10, negate=True))
    assert to_dict(segment) == doc
    assert parse_definition(to_dict(segment), SCHEMA) == segment


def test_yaml_bucket_rule():
    from segengine.definition.parse import load_definition

    text = "name: holdout\nrules:\n  - bucket: {seed: 'spring:2026', from: 9000, to: 10000}\n"
    assert load_definition(text, SCHEMA).root.rules == (BucketRule("spring:2026", 9000, 10000),)


@pytest.mark.parametrize(
    ("bucket", "expected"),
    [
        ({"seed": "s", "from": -1, "to": 5}, "rules[0].bucket.from: a bucket bound must be at least 0, got -1"),
        ({"seed": "s", "from": 0, "to": 10001},
         "rules[0].bucket.to: a bucket bound must be at most 10000, got 10001"),
        ({"seed": "s", "from": 4.5, "to": 5},
         "rules[0].bucket.from: expected a bucket bound (a whole number), got the number 4.5"),
        ({"seed": "s", "from": True, "to": 5},
         "rules[0].bucket.from: expected a bucket bound (a whole number), got the boolean true"),
        ({"seed": "s", "from": "0", "to": 5},
         "rules[0].bucket.from: expected a bucket bound (a whole number), got text '0'"),
        ({"seed": "s", "from": 6000, "to": 5000},
         "rules[0].bucket.to: to 5000 is less than from 6000: buckets [from, to) need from <= to"),
        ({"seed": "", "from": 0, "to": 5},
         'rules[0].bucket.seed: the seed may not be "": name the test, e.g. seed: spring-ab'),
        ({"seed": 7, "from": 0, "to": 5},
         "rules[0].bucket.seed: expected text, got the number 7; quote it to make it text"),
        ({"from": 0, "to": 5}, "rules[0].bucket.seed: missing: a bucket takes seed, from, to"),
        ({"seed": "s", "from": 0}, "rules[0].bucket.to: missing: a bucket takes seed, from, to"),
    ],
)
def test_each_bucket_problem_is_reported_with_its_path(bucket, expected):
    assert problems({"bucket": bucket}) == [expected]


def test_a_bucket_holds_exactly_seed_from_and_to():
    assert problems({"bucket": {"seed": "s", "from": 0, "to": 5, "form": 1}}) == [
        "rules[0].bucket.form: unknown key (did you mean 'from'?)"
    ]
    assert problems({"bucket": {"seed": "s", "from": 0, "to": 5}, "seed": "x"}) == [
        "rules[0].seed: unknown key; a bucket rule takes bucket, negate"
    ]
    assert problems({"bucket": [0, 5]}) == [
        "rules[0].bucket: expected {seed: TEXT, from: LOW, to: HIGH}, e.g. {seed: spring-ab, "
        "from: 0, to: 5000}, got a list"
    ]
    assert problems({"bucket": {"seed": "s", "from": 0, "to": 5}, "field": "email"}) == [
        "rules[0]: a rule must be exactly one kind of rule; this one has 'field' (a field rule) "
        "and 'bucket' (a bucket rule)"
    ]
    assert problems({"bucket": {"seed": "s", "from": 0, "to": 5}, "negate": "yes"}) == [
        "rules[0].negate: expected true or false, got text 'yes'"
    ]


def test_every_problem_of_a_definition_is_reported_at_once():
    found = problems({"bucket": {"seed": "", "from": -3, "to": 20000}},
                     {"match": "any", "rules": [{"bucket": {"seed": "s", "from": 9, "to": 2}}]})
    assert found == [
        'rules[0].bucket.seed: the seed may not be "": name the test, e.g. seed: spring-ab',
        "rules[0].bucket.from: a bucket bound must be at least 0, got -3",
        "rules[0].bucket.to: a bucket bound must be at most 10000, got 20000",
        "rules[1].rules[0].bucket.to: to 2 is less than from 9: buckets [from, to) need from <= to",
    ]


def test_lowering():
    assert lower(Group("all", (BucketRule("s", 0, 0),)), SCHEMA, AS_OF).rules == (FALSE,)
    assert lower(Group("all", (BucketRule("s", 3, 9),)), SCHEMA, AS_OF).rules == (Bucket("s", 3, 9),)


# --- the command line: saved, shown, explained; bad input changes nothing ----------------


@pytest.fixture
def contacts(cli, tmp_path):
    lines = ["email,status"] + [f"{e},active" for e in EMAILS[:5] + EMAILS[7:60]]
    (tmp_path / "c.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cli("import", "contacts", tmp_path / "c.csv")
    return tmp_path


def test_cli_bucket_segment_counts_and_explains(cli, ws, contacts, tmp_path):
    path = tmp_path / "half.yaml"
    path.write_text("name: half\nrules:\n  - bucket: {seed: spring, from: 0, to: 5000}\n")
    cli("segment", "save", path)
    emails = ws.members("half")["email"].to_list()
    everyone = ws.members({"name": "all", "rules": []})["email"].to_list()
    assert sorted(emails) == sorted(e for e in everyone if bucket_of("spring", e) < 5000)
    for engine in ("auto", "index", "duckdb", "polars"):
        assert cli.json("count", "half", "--engine", engine)["total"] == len(emails)
    shown = cli("explain", "half").stdout
    assert "bucket of seed spring in [0, 5000)" in shown
    assert cli.json("segment", "show", "half")["rules"] == [
        {"bucket": {"seed": "spring", "from": 0, "to": 5000}}
    ]


@pytest.mark.parametrize(
    ("bucket", "message"),
    [
        ("{seed: s, from: 0, to: 10001}", "a bucket bound must be at most 10000, got 10001"),
        ("{seed: s, from: -1, to: 1}", "a bucket bound must be at least 0, got -1"),
        ("{seed: s, from: 7, to: 6}", "to 6 is less than from 7"),
        ("{seed: '', from: 0, to: 6}", 'the seed may not be ""'),
    ],
)
def test_bad_bucket_rules_exit_2_and_change_nothing(cli, ws, contacts, tmp_path, bucket, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nrules:\n  - bucket: {bucket}\n")
    before = (ws.path / "manifest.json").read_bytes()
    result = cli("segment", "save", path, code=2)
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (ws.path / "manifest.json").read_bytes() == before
    assert cli("count", path, code=2).stderr.count("\n") == 1


# --- the printed SQL's number on real engines ---------------------------------------------


def bucket_sql(dialect: str, seed: str) -> str:
    """``SELECT email, <number> FROM emails`` in `dialect`."""
    number = sql.bucket_number(seed, dialect, exp.column("email", quoted=True))
    query = exp.select(exp.column("email", quoted=True), exp.alias_(number, "bucket"))
    return query.from_(exp.to_table("emails")).sql(dialect)


def expected_numbers(seed: str) -> dict[str, int]:
    return {email: bucket_of(seed, email) for email in EMAILS}


def statement_rows(dialect: str) -> list[tuple[str, Group, set[int]]]:
    """Printed statements of bucket segments and the contact ids (row numbers) they select."""
    rng = random.Random(7)
    cases = []
    for seed in SEEDS:
        for low, high in ((0, 4500), (4500, 9000), (9000, 10_000), (0, 10_000), (0, 1),
                          tuple(sorted(rng.sample(range(10_001), 2)))):
            root = Group("all", (BucketRule(seed, low, high),))
            ids = {i for i, e in enumerate(EMAILS) if low <= bucket_of(seed, e) < high}
            cases.append((sql.to_sql(root, SCHEMA, AS_OF, dialect), root, ids))
    return cases


def test_duckdb_computes_the_number():
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE emails (email VARCHAR)")
    con.executemany("INSERT INTO emails VALUES (?)", [(e,) for e in EMAILS])
    con.execute("CREATE TABLE contacts AS SELECT row_number() OVER () - 1 AS contact_id, email "
                "FROM emails")
    for seed in SEEDS:
        assert dict(con.sql(bucket_sql("duckdb", seed)).fetchall()) == expected_numbers(seed)
    for text, root, ids in statement_rows("duckdb"):
        assert {r[0] for r in con.sql(text).fetchall()} == ids, root


@pytest.mark.xdist_group("postgres")
def test_postgres_computes_the_number(postgres):  # noqa: F811 - the fixture
    import psycopg

    with psycopg.connect(host=postgres, user="postgres", dbname="postgres",
                         autocommit=True) as con:
        con.execute("DROP SCHEMA IF EXISTS buckets CASCADE")
        con.execute("CREATE SCHEMA buckets")
        con.execute("SET search_path TO buckets")
        con.execute("CREATE TABLE emails (email text)")
        con.execute("CREATE TABLE contacts (contact_id bigint, email text)")
        with con.cursor() as cur:
            cur.executemany("INSERT INTO emails VALUES (%s)", [(e,) for e in EMAILS])
            cur.executemany("INSERT INTO contacts VALUES (%s, %s)", list(enumerate(EMAILS)))
        for seed in SEEDS:
            assert dict(con.execute(bucket_sql("postgres", seed)).fetchall()) == expected_numbers(seed)
        for text, root, ids in statement_rows("postgres"):
            assert {r[0] for r in con.execute(text).fetchall()} == ids, root
        con.execute("DROP SCHEMA buckets CASCADE")


@pytest.mark.spark
@pytest.mark.xdist_group("spark")
def test_spark_computes_the_number(spark):
    frame = spark.createDataFrame([(i, e) for i, e in enumerate(EMAILS)], "contact_id BIGINT, email STRING")
    frame.createOrReplaceTempView("contacts")
    frame.select("email").createOrReplaceTempView("emails")
    try:
        for seed in SEEDS:
            got = {row[0]: row[1] for row in spark.sql(bucket_sql("spark", seed)).collect()}
            assert got == expected_numbers(seed)
        cases = statement_rows("spark")
        union = "\nUNION ALL\n".join(
            f"SELECT {i} AS n, contact_id FROM ({text}) AS s{i}" for i, (text, _, _) in enumerate(cases)
        )
        rows = spark.sql(union).collect()
        for i, (_, root, ids) in enumerate(cases):
            assert {r[1] for r in rows if r[0] == i} == ids, root
    finally:
        spark.catalog.dropTempView("contacts")
        spark.catalog.dropTempView("emails")


@pytest.mark.parametrize(
    ("dialect", "functions"),
    [("snowflake", {"SHA2", "UPPER", "SUBSTRING", "TO_NUMBER"}),
     ("bigquery", {"SHA256", "TO_HEX", "SUBSTRING", "CONCAT", "CAST", "MOD"})],
)
def test_warehouse_text_parses_back_with_the_reviewed_functions(dialect, functions):
    import sqlglot
    from test_sql_on_engines import called_functions

    text = sql.to_sql(Group("all", (BucketRule("a'b:c", 0, 4500),)), SCHEMA, AS_OF, dialect)
    tree = sqlglot.parse_one(text, read=dialect)
    assert tree.sql(dialect, pretty=True) == text
    assert functions <= called_functions(text)
    assert "a\\'b:c:" in text or "a''b:c:" in text  # the seed is one literal


def test_explain_json_names_the_bucket(cli, contacts):
    doc = {"name": "ab", "rules": [{"bucket": {"seed": "s", "from": 0, "to": 10000}, "negate": True}]}
    (contacts / "ab.json").write_text(json.dumps(doc))
    result = cli.json("explain", contacts / "ab.json")
    (rule,) = result["tree"]["rules"]
    assert rule["kind"] == "bucket" and rule["matches"] == 0
    assert rule["rule"] == {"bucket": {"seed": "s", "from": 0, "to": 10000}, "negate": True}


def test_a_segment_object_with_a_bucket_rule_counts(ws, contacts):
    segment = Segment("quarter", Group("all", (BucketRule("q", 0, 2500),)))
    everyone = ws.members({"name": "all", "rules": []})["email"].to_list()
    assert ws.count(segment)["total"] == sum(bucket_of("q", e) < 2500 for e in everyone)


# --- the index's cache ----------------------------------------------------------------------


def test_bucket_cache_computes_a_seed_once_and_keeps_ranges():
    import numpy as np

    from segengine.store.index.buckets import NO_BUCKET, BucketCache

    calls = []
    numbers = np.array([5, 4999, 5000, 9999, NO_BUCKET, 0], dtype=np.uint16)

    def compute():
        calls.append(1)
        return numbers

    cache = BucketCache(len(numbers), max_seeds=2, max_ranges=2)
    assert list(cache.rows("s", 0, 5000, compute)) == [0, 1, 5]
    assert list(cache.rows("s", 5000, 10_000, compute)) == [2, 3]  # the no-bucket row: none
    assert cache.rows("s", 0, 5000, compute) is cache.rows("s", 0, 5000, compute)
    assert len(calls) == 1
    assert not cache.numbers("s", compute).flags.writeable
    cache.numbers("t", compute)
    cache.numbers("u", compute)  # the least recently used seed ("s") goes
    assert cache.seeds() == ["t", "u"] and len(calls) == 3
    with pytest.raises(ValueError, match="bucket numbers for 6 contacts"):
        cache.numbers("v", lambda: numbers[:3])


def test_the_index_hashes_a_seed_once_per_snapshot(cli, ws, contacts, monkeypatch):
    from segengine.engines import duckdb as duckdb_engine

    calls = []
    real = duckdb_engine.bucket_numbers
    monkeypatch.setattr(duckdb_engine, "bucket_numbers",
                        lambda tables, seed: calls.append(seed) or real(tables, seed))
    everyone = ws.members({"name": "all", "rules": []})["email"].to_list()
    for low, high in ((0, 4500), (4500, 9000), (9000, 10_000), (0, 4500)):
        doc = {"name": "g", "rules": [{"bucket": {"seed": "once", "from": low, "to": high}}]}
        expected = sum(low <= bucket_of("once", e) < high for e in everyone)
        assert ws.count(doc, engine="index")["total"] == expected
    assert calls == ["once"]
    (contacts / "more.csv").write_text("email\nlate@example.com\n")
    ws.import_contacts(contacts / "more.csv")  # a new snapshot: its index starts afresh
    ws.count({"name": "g", "rules": [{"bucket": {"seed": "once", "from": 0, "to": 1}}]},
             engine="index")
    assert calls == ["once", "once"]
