"""The Spark engine gives the answers of every other engine.

One SparkSession serves the whole run (starting a JVM costs seconds) and it is set up
to catch time-zone and locale dependence: the JVM's default zone is Los Angeles, its
locale Turkish (where Java lower-cases ``I`` to a dotless ``ı``), and the session time
zone UTC+14. A Spark query costs a few hundred milliseconds however small the data
(batching trees into one ``UNION ALL`` query was measured slower still: Spark's planner
is superlinear in the plan's size), so the random tests use few examples.
"""

from __future__ import annotations

import datetime as dt
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SESSION_TIME_ZONE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_by_status, reference_contact_ids
from strategies import (
    CUSTOM_FIELDS,
    EVENTS_ARROW,
    SCHEMA,
    Workspace,
    contacts_table,
    rule_trees,
    workspaces,
    write_workspace,
)
from test_polars_engine import AS_OF, CASES, CONTACTS, EVENTS, FIXTURE, A, F, as_root

from segengine.definition.nodes import CountCondition, Group, LastCampaigns, Window
from segengine.engines.base import Tables
from segengine.errors import EngineError, InputError

D = dt.date
T = dt.datetime

# one worker runs every Spark test, so a test run starts one shared session
pytestmark = pytest.mark.xdist_group("spark")


@pytest.fixture(scope="module")
def engine(spark, tmp_path_factory):
    from segengine.engines.spark import SparkEngine

    engine = SparkEngine(write_workspace(FIXTURE, tmp_path_factory.mktemp("fixture")), session=spark)
    yield engine
    engine.close()


def each(engine, roots: list[Group], as_of: dt.date = AS_OF) -> list[set[int]]:
    """The contacts of each root on its own (one Spark query per root)."""
    return [ids(engine.contact_ids([root], as_of)) for root in roots]


def ids(array: np.ndarray) -> set[int]:
    assert array.dtype == np.int64
    assert array.tolist() == sorted(set(array.tolist())), "sorted and distinct"
    return set(array.tolist())


# --- without Spark ----------------------------------------------------------------------


def test_missing_pyspark_is_a_clear_error(monkeypatch):
    from segengine.engines import spark as spark_module

    monkeypatch.setitem(sys.modules, "pyspark.sql", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(EngineError, match=r"needs PySpark: pip install 'segengine\[spark\]'"):
        spark_module.spark_session()


def test_spark_is_a_registered_engine():
    from segengine.engines import ENGINES, engine_class
    from segengine.engines.spark import SparkEngine

    assert ENGINES["spark"] == "segengine.engines.spark:SparkEngine"
    assert engine_class("spark") is SparkEngine


# --- hand cases -------------------------------------------------------------------------

@pytest.mark.spark
def test_hand_cases(engine):
    """Every hand-computed case of the Polars engine's tests."""
    got = each(engine, [as_root(rule) for rule, _ in CASES])
    for (rule, expected), result in zip(CASES, got, strict=True):
        assert result == expected, rule


@pytest.mark.spark
def test_union_and_count(engine):
    roots = [as_root(F("status", "is", "bounced")), as_root(A()), as_root(A())]
    assert engine.contact_ids(roots, AS_OF).tolist() == [1, 2, 3, 4]
    assert engine.count(roots, AS_OF) == {"active": 2, "unsubscribed": 1, "bounced": 1}
    assert engine.count([as_root(Group("any", ()))], AS_OF) == {
        "active": 0, "unsubscribed": 0, "bounced": 0,
    }


@pytest.mark.spark
def test_text_lower_cases_like_python(spark, tmp_path):
    """Special lower-casing (İ, final sigma, title case ǅ, ß) in a Turkish-locale JVM."""
    from segengine.engines.spark import SparkEngine

    cities = ["İSTANBUL", "ISTANBUL", "ΟΔΟΣ", "ΣΊΣΥΦΟΣ ΚΑΙ", "ǅEMAL", "STRASSE", "Straße", "IĞDIR"]
    contacts = [dict(CONTACTS[0], contact_id=i + 1, city=c) for i, c in enumerate(cities)]
    ws = Workspace(SCHEMA, tuple(contacts), (), (), AS_OF)
    engine = SparkEngine(write_workspace(ws, tmp_path), session=spark)
    values = ["i̇stanbul", "istanbul", "οδος", "οδός", "σίσυφος", "σίσυφοσ", "ǆemal", "ǅemal",
              "strasse", "straße", "ığdır", "iğdir", "ΟΔΟΣ"]
    rules = [F("city", "is", v) for v in values] + [F("city", "ends_with", "ς")]
    got = each(engine, [as_root(r) for r in rules])
    for rule, result in zip(rules, got, strict=True):
        expected = reference_contact_ids(contacts, [], SCHEMA, as_root(rule), AS_OF)
        assert result == expected, (rule, [cities[i - 1] for i in expected])
    engine.close()


@pytest.mark.spark
def test_last_n_tie_break_is_code_point_order(spark, tmp_path):
    """Campaigns sent at the same instant: the larger id by code point is the later one."""
    from segengine.engines.spark import SparkEngine

    campaigns = ["Z", "a", "ä", "\uffff", "\U0001f600", "zz"]  # code point order
    sent = T(2026, 3, 1, 12)
    events = tuple(
        {"contact_id": i + 1, "campaign": c, "type": "sent", "timestamp": sent, "url": None}
        for i, c in enumerate(campaigns)
    )
    contacts = tuple(dict(CONTACTS[0], contact_id=i + 1) for i in range(len(campaigns)))
    engine = SparkEngine(write_workspace(Workspace(SCHEMA, contacts, events, (), AS_OF), tmp_path),
                         session=spark)
    # latest first: U+1F600 (id 5), U+FFFF (4), ä (3), zz (6), a (2), Z (1); UTF-16
    # order (Java's String.compareTo) would put U+FFFF first
    order = [5, 4, 3, 6, 2, 1]
    for n in (1, 2, 4):
        assert each(engine, [as_root(A("sent", campaigns=LastCampaigns(n)))]) == [set(order[:n])]
    engine.close()


@pytest.mark.spark
def test_days_never_depend_on_time_zones(spark, tmp_path):
    """Naive, zone-aware (Tokyo, ns) and millisecond timestamps all count by their UTC day,
    also when the session stops inferring TIMESTAMP_NTZ and reads every timestamp as LTZ."""
    from segengine.engines.spark import SparkEngine

    base = write_workspace(FIXTURE, tmp_path / "base", split=False)
    stamps = pa.array([T(2026, 3, 14, 23, 30), T(2026, 3, 15, 0, 30), T(2026, 3, 15, 23, 59, 59)],
                      pa.timestamp("us"))
    files = []
    for name, column in [
        ("naive-us", stamps),
        ("naive-ms", stamps.cast(pa.timestamp("ms"))),
        ("tokyo", stamps.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz="Asia/Tokyo"))),
    ]:
        table = pa.table({
            "contact_id": pa.array([1, 2, 3], pa.int64()), "campaign": ["z"] * 3,
            "type": ["open"] * 3, "timestamp": column, "url": pa.array([None] * 3, pa.string()),
        })
        pq.write_table(table, tmp_path / f"{name}.parquet")
        files.append(str(tmp_path / f"{name}.parquet"))
    on_as_of = as_root(A(when=Window("on", AS_OF)))
    before = as_root(A(when=Window("before", AS_OF)))
    for infer in ("true", "false"):
        spark.conf.set("spark.sql.parquet.inferTimestampNTZ.enabled", infer)
        try:
            for path in files:
                engine = SparkEngine(Tables(base.contacts, (path,), SCHEMA), session=spark)
                assert each(engine, [on_as_of, before]) == [{2, 3}, {1}], (path, infer)
                engine.close()
        finally:
            spark.conf.unset("spark.sql.parquet.inferTimestampNTZ.enabled")
    assert spark.conf.get("spark.sql.session.timeZone") == SESSION_TIME_ZONE


@pytest.mark.spark
def test_no_events_and_fields_missing_from_files(spark, tmp_path):
    from segengine.engines.spark import SparkEngine

    tables = write_workspace(Workspace(SCHEMA, CONTACTS, (), (), AS_OF), tmp_path)
    later = Tables(tables.contacts, (), SCHEMA.with_field("region", "text"))
    engine = SparkEngine(later, session=spark)
    got = each(engine, [
        as_root(A(count=CountCondition("eq", 0))),
        as_root(A()),
        as_root(A("sent", campaigns=LastCampaigns(3), negate=True)),
        as_root(Group("all", (F("region", "is_empty"), F("region", "is_not", "x")))),
    ])
    assert got == [{1, 2, 3, 4, 5}, set(), {1, 2, 3, 4, 5}, {1, 2, 3, 4, 5}]
    engine.close()


@pytest.mark.spark
def test_engines_share_a_session_without_mixing_data(engine, spark, tmp_path):
    from segengine.engines.spark import SparkEngine

    other = SparkEngine(write_workspace(Workspace(SCHEMA, CONTACTS[:2], (), (), AS_OF), tmp_path),
                        session=spark)
    everyone = [as_root(Group("all", ()))]
    assert other.contact_ids(everyone, AS_OF).tolist() == [1, 2]
    assert engine.contact_ids(everyone, AS_OF).tolist() == [1, 2, 3, 4, 5]
    other.close()
    assert other.views.contacts not in {t.name for t in spark.catalog.listTables()}
    assert engine.contact_ids(everyone, AS_OF).tolist() == [1, 2, 3, 4, 5]


# --- random trees against the oracle ----------------------------------------------------

EXAMPLES = int(os.environ.get("SEGENGINE_SPARK_EXAMPLES", "10"))


@pytest.mark.spark
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ws=workspaces(), data=st.data())
def test_random_trees_against_oracle(spark, tmp_path_factory, ws, data):
    """Three random trees per random workspace, each alone, then their union's count."""
    from segengine.engines.spark import SparkEngine

    roots = data.draw(st.lists(rule_trees(ws.schema, ws.campaigns), min_size=3, max_size=3))
    engine = SparkEngine(write_workspace(ws, tmp_path_factory.mktemp("random")), session=spark)
    try:
        expected = [
            reference_contact_ids(list(ws.contacts), list(ws.events), ws.schema, r, ws.as_of)
            for r in roots
        ]
        for root, want, result in zip(roots, expected, each(engine, roots, ws.as_of), strict=True):
            assert result == want, root
        union = set().union(*expected)
        assert engine.count(roots, ws.as_of) == reference_by_status(list(ws.contacts), union)
    finally:
        engine.close()


# --- data that was never imported, the API and the command line -------------------------


def _external(directory) -> tuple[str, str]:
    """FIXTURE as folders of Parquet written by another tool: int ids, a float32 score,
    a zone-aware timestamp, a column of an unsupported type."""
    contacts_dir, events_dir = directory / "contacts", directory / "events"
    contacts_dir.mkdir()
    events_dir.mkdir()
    table = contacts_table(FIXTURE)
    table = table.set_column(0, "contact_id", table.column("contact_id").cast(pa.int32()))
    table = table.set_column(table.schema.get_field_index("score"), "score",
                             table.column("score").cast(pa.float32()))
    table = table.append_column("tags", pa.array([{"x": 1}] * len(CONTACTS)))
    pq.write_table(table.slice(0, 3), contacts_dir / "part-0.parquet")
    pq.write_table(table.slice(3), contacts_dir / "part-1.parquet")
    events = pa.Table.from_pylist([dict(e) for e in EVENTS], schema=EVENTS_ARROW)
    events = events.set_column(3, "timestamp",
                               events.column("timestamp").cast(pa.timestamp("us", tz="UTC")))
    pq.write_table(events, events_dir / "events.parquet")
    return str(contacts_dir), str(events_dir)


@pytest.mark.spark
def test_data_never_imported(spark, tmp_path):
    from segengine.engines.spark import SparkEngine

    contacts, events = _external(tmp_path)
    engine = SparkEngine.at(contacts, events, session=spark)
    assert engine.tables.schema.custom == tuple(CUSTOM_FIELDS)  # 'tags' is no field
    # a sample of the hand cases: one per operator family and the activity rules
    cases = CASES[::6]
    for (rule, expected), result in zip(cases, each(engine, [as_root(r) for r, _ in cases]),
                                        strict=True):
        assert result == expected, rule
    engine.close()


@pytest.mark.spark
def test_missing_columns_are_named(spark, tmp_path):
    from segengine.engines.spark import SparkEngine

    pq.write_table(pa.table({"contact_id": [1], "mail": ["a@b.c"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match="lacks column.* email, status; found: contact_id, mail"):
        SparkEngine.at(str(tmp_path / "c.parquet"), (), session=spark)


@pytest.mark.spark
def test_api_count_tables_and_workspace_engine(spark, tmp_path, ws):
    import segengine
    from segengine.api import count_tables

    contacts, events = _external(tmp_path)
    segment = {"name": "ca", "rules": [{"activity": "opened", "campaigns": {"last": 2}}]}
    got = count_tables([segment], contacts=contacts, events=events, as_of="2026-03-15")
    assert got == {"total": 2, "by_status": {"active": 2, "unsubscribed": 0, "bounced": 0},
                   "sendable": 2, "as_of": "2026-03-15"}
    with pytest.raises(InputError, match="engine"):
        count_tables([segment], contacts=contacts, events=events, engine="polars")

    csv = tmp_path / "contacts.csv"
    csv.write_text("email,status,city\nA@x.io,active,Ärger\nb@y.io,bounced,ärger\nc@z.io,,Bonn\n")
    ws.import_contacts(csv)
    rule = {"name": "s", "rules": [{"field": "city", "op": "is", "value": "ÄRGER"}]}
    want = ws.count(rule, engine="duckdb", as_of="2026-01-01")
    assert ws.count(rule, engine="spark", as_of="2026-01-01") == want
    assert want["by_status"] == {"active": 1, "unsubscribed": 0, "bounced": 1}
    assert segengine.open(ws.path).engine("spark").session is spark
    # export: Spark matches, the store's writer keeps the single-file contract
    by_spark = ws.export(rule, output=tmp_path / "spark.csv", engine="spark", as_of="2026-01-01")
    ws.export(rule, output=tmp_path / "duckdb.csv", engine="duckdb", as_of="2026-01-01")
    assert by_spark.rows == 1
    assert (tmp_path / "spark.csv").read_bytes() == (tmp_path / "duckdb.csv").read_bytes()


@pytest.mark.spark
def test_cli_count_data_never_imported(spark, tmp_path):
    from conftest import Cli

    contacts, events = _external(tmp_path)
    seg = tmp_path / "openers.yaml"
    seg.write_text("name: openers\nrules:\n  - {activity: opened}\n")
    cli = Cli(None)
    got = cli.json("count", str(seg), "--engine", "spark", "--contacts", contacts,
                   "--events", events, "--as-of", "2026-03-15", "--spark-master", "local[1]")
    assert got["by_status"] == {"active": 2, "unsubscribed": 1, "bounced": 0}
    result = cli("count", str(seg), "--contacts", contacts, "--events", events, code=2)
    assert "--engine spark" in result.stderr
    result = cli("count", "openers", "--engine", "spark", "--contacts", contacts,
                 "--events", events, code=2)
    assert "openers" in result.stderr


def test_cli_spark_master_needs_spark_engine(tmp_path):
    from conftest import Cli

    seg = tmp_path / "all.yaml"
    seg.write_text("name: all\nrules: []\n")
    result = Cli(None)("count", str(seg), "--spark-master", "local[1]", code=2)
    assert "--engine spark" in result.stderr


# --- the printed statement is the executed one ------------------------------------------


class RecordingSession:
    """A SparkSession that remembers every statement it is asked to run."""

    def __init__(self, session):
        self.session = session
        self.statements: list[str] = []

    def sql(self, text: str):
        self.statements.append(text)
        return self.session.sql(text)

    def __getattr__(self, name: str):
        return getattr(self.session, name)


@pytest.mark.spark
def test_printed_sql_is_the_executed_sql(spark, tmp_path, ws):
    """`segengine sql --dialect spark` prints the statement the engine runs (its views
    aside), Turkish-locale guard included, and that text answers like Python in a
    Turkish JVM."""
    import sqlglot
    from sqlglot import exp

    from segengine.engines.spark import SparkEngine

    csv = tmp_path / "c.csv"
    csv.write_text("email,city\na@x.io,IĞDIR\nb@x.io,ığdır\nc@x.io,ISTANBUL\n")
    ws.import_contacts(csv)
    segment = {"name": "t", "rules": [{"field": "city", "op": "is", "value": "iğdir"},
                                      {"field": "status", "op": "is", "value": "active"}]}
    printed = ws.sql(segment, dialect="spark", as_of="2026-01-01")
    assert "REPLACE(" in printed and "'I', 'i'" in printed
    recording = RecordingSession(spark)
    engine = SparkEngine(ws.snapshot().tables, session=recording)
    try:
        found = engine.contact_ids(ws.session.roots([segment], ws.snapshot()), D(2026, 1, 1))
        (executed,) = recording.statements
        on_views = engine.on_views(sqlglot.parse_one(printed, read="spark"))
        assert sqlglot.parse_one(executed, read="spark") == on_views
        assert executed == on_views.sql("spark")
        # the printed text itself, run over views named as SPEC section 9 says
        spark.sql(f"SELECT * FROM `{engine.views.contacts}`").createOrReplaceTempView("contacts")
        spark.sql(f"SELECT * FROM `{engine.views.events}`").createOrReplaceTempView("events")
        try:
            from_text = sorted(r[0] for r in spark.sql(printed).collect())
        finally:
            spark.catalog.dropTempView("contacts")
            spark.catalog.dropTempView("events")
        assert from_text == found.tolist() == [1]  # IĞDIR, not ığdır: no dotless ı
        assert isinstance(sqlglot.parse_one(printed, read="spark"), exp.Select)
    finally:
        engine.close()


# --- partitioned export through Spark ----------------------------------------------------

AWKWARD_NOTES = [
    "=SUM(A1:A9)", "-5", "+1", "@cmd", "\ttabbed", "\rcr", "has, comma", 'quote "in" it',
    "new\nline", "crlf\r\nend", "", None, "ünïcödé ✓", "#hash", "mid#hash", "'already",
    " lead", "trail ", "a;b", "\\back\\slash", "x\u2028y", "ΟΔΟΣ", "𝒜stral",
]
AWKWARD_SCORES = [
    3.0, 2.5, -4.0, 1234567890123.0, 0.1, 0.1 + 0.2, 1e20, 1e-05, None, -0.0, 123456789012345.67,
    1e18, 9.999e17, 1e16 + 2, -2.5e-7, 1 / 3, 8.41e21, 5e-324, 1.7976931348623157e308, 0.0001,
    12345678.5, -1e-4, 100.0,
]
AWKWARD_EMAILS = [
    "=eq@x.io", "-minus@x.io", "+plus@x.io", "#hash@x.io", "'quote@x.io", "zoe@x.io", "a@x.io",
    "émile@x.io", "\ufffd@x.io", "\U0001f600stral@x.io", "~tilde@x.io", "Z@x.io", "b@x.io",
    "c@x.io", "d@x.io", "e@x.io", "f@x.io", "g@x.io", "h@x.io", "i@x.io", "j@x.io", "k@x.io",
    "l@x.io",
]
UTC = dt.UTC
AWKWARD_LOGINS = [
    T(2024, 5, 6, 23, 59, 59, 999999, tzinfo=UTC), T(2024, 5, 7, 0, 0, tzinfo=UTC),
    T(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC), T(1999, 12, 31, 23, 59, 59, tzinfo=UTC), None,
    T(2024, 5, 6, 17, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7))),  # midnight UTC
    T(2024, 5, 7, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=9))),  # 15:30 the day before
    T(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC), T(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    T(2026, 3, 15, 0, 0, 0, 120, tzinfo=UTC),
]
AWKWARD_LISTS = [["b", "a"], [], None, ["-list", "=x"], ["@x"], ["has,comma"], ['q"uote'],
                 ["#one", "ünï"], ["new\nline"]]
EXPORT_COLUMNS = "email,email_domain,status,date_added,lists,note,score,vip,birthday,last_login"


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """A workspace of values that are hard to write the same way twice."""
    import segengine

    root = tmp_path_factory.mktemp("awkward")
    n = len(AWKWARD_EMAILS)

    def cycle(values):
        return [values[i % len(values)] for i in range(n)]

    statuses = ["active"] * n
    statuses[6], statuses[12] = "unsubscribed", "bounced"  # a@x.io, b@x.io
    table = pa.table({
        "email": AWKWARD_EMAILS,
        "status": statuses,
        "lists": pa.array(cycle(AWKWARD_LISTS), pa.list_(pa.string())),
        "note": pa.array(cycle(AWKWARD_NOTES), pa.string()),
        "score": pa.array(cycle(AWKWARD_SCORES), pa.float64()),
        "vip": pa.array(cycle([True, False, None]), pa.bool_()),
        "birthday": pa.array(cycle([D(1990, 1, 2), None, D(1, 1, 1), D(9999, 12, 31), D(2000, 2, 29)]),
                             pa.date32()),
        "last_login": pa.array(cycle(AWKWARD_LOGINS), pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, root / "contacts.parquet")
    ws = segengine.Workspace.init(root / "ws")
    ws.import_contacts(root / "contacts.parquet")
    return ws


@pytest.fixture
def many_parts(spark):
    """Tiny data in several part files: four range partitions, none merged by AQE."""
    settings_ = {"spark.sql.shuffle.partitions": "4",
                 "spark.sql.adaptive.coalescePartitions.enabled": "false"}
    before = {k: spark.conf.get(k) for k in settings_}
    for key, value in settings_.items():
        spark.conf.set(key, value)
    yield
    for key, value in before.items():
        spark.conf.set(key, value)


def part_files(directory, suffix: str) -> list:
    return sorted(p for p in directory.iterdir() if p.name.startswith("part-") and p.name.endswith(suffix))


EVERYONE = {"name": "everyone", "rules": []}


@pytest.mark.spark
@pytest.mark.parametrize("raw", [False, True], ids=["guarded", "raw"])
def test_partitioned_csv_is_the_single_file_export(spark, awkward, many_parts, tmp_path, raw):
    single = tmp_path / "single.csv"
    awkward.export(EVERYONE, output=single, columns=EXPORT_COLUMNS, raw=raw, engine="duckdb")
    out = tmp_path / "parts"
    result = awkward.export(EVERYONE, output=out, columns=EXPORT_COLUMNS, raw=raw, engine="spark",
                            partitioned=True)
    parts = part_files(out, ".csv")
    header, _, body = single.read_bytes().partition(b"\n")
    assert len(parts) == result.files > 1
    data = b""
    for part in parts:
        head, _, rows = part.read_bytes().partition(b"\n")
        assert head == header
        data += rows
    assert data == body  # byte for byte, in the same order
    assert result.rows == awkward.count(EVERYONE)["sendable"] == len(AWKWARD_EMAILS) - 2
    assert result.as_dict() == {"rows": result.rows, "path": str(out), "files": len(parts)}
    assert (out / "_SUCCESS").exists() and not list(out.glob("*.txt"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".parts.")]


@pytest.mark.spark
def test_partitioned_parquet_is_the_single_file_export(spark, awkward, many_parts, tmp_path):
    single = tmp_path / "single.parquet"
    awkward.export(EVERYONE, output=single, columns=EXPORT_COLUMNS, engine="duckdb")
    setting = "spark.sql.parquet.outputTimestampType"
    before = spark.conf.get(setting, None)
    out = tmp_path / "parts.parquet"
    result = awkward.export(EVERYONE, output=out, columns=EXPORT_COLUMNS, engine="spark",
                            partitioned=True)
    parts = part_files(out, ".parquet")
    assert len(parts) == result.files > 1 and result.format == "parquet"
    got = pa.concat_tables(pq.read_table(p) for p in parts)
    want = pq.read_table(single)
    assert got.schema.equals(want.schema)  # names, types, and every column optional
    assert all(field.nullable for field in want.schema)
    assert got.equals(want)
    assert spark.conf.get(setting, None) == before  # set for the write only


@pytest.mark.spark
def test_partitioned_export_of_no_rows_and_of_a_union(spark, awkward, tmp_path):
    nobody = {"name": "nobody", "rules": [{"field": "note", "op": "is", "value": "no such note"}]}
    out = tmp_path / "none"
    out.mkdir()  # an empty directory is fine
    result = awkward.export(nobody, output=out, columns="email,note", engine="spark", partitioned=True)
    assert (result.rows, result.files) == (0, 1)
    (part,) = part_files(out, ".csv")
    assert part.read_bytes() == b"email,note\n"
    hashes = {"name": "h", "rules": [{"field": "note", "op": "contains", "value": "#"}]}
    commas = {"name": "c", "rules": [{"field": "note", "op": "contains", "value": ","}]}
    single = tmp_path / "u.csv"
    awkward.export(hashes, commas, output=single, engine="duckdb", as_of="2026-01-01")
    union = awkward.export(hashes, commas, output=tmp_path / "u", engine="spark", partitioned=True,
                           as_of="2026-01-01")
    body = b"".join(p.read_bytes().partition(b"\n")[2] for p in part_files(tmp_path / "u", ".csv"))
    assert body == single.read_bytes().partition(b"\n")[2]
    assert union.rows == awkward.count(hashes, commas)["sendable"] > 0


@pytest.mark.spark
def test_a_failed_spark_job_leaves_no_directory(spark, awkward, tmp_path, monkeypatch):
    from segengine.export import cells as spark_module
    from segengine.export.partitioned import WriteFailed
    from segengine.fields import FieldType

    # a task fails in the middle of the job, after other tasks may have written
    failing = "IF({col} LIKE '%hash%', CAST(raise_error('injected failure') AS STRING), {col})"
    cells = dict(spark_module.SPARK_CSV_CELLS)
    cells[FieldType.TEXT] = lambda col, tag: spark_module.SparkCell(failing.format(col=col))
    monkeypatch.setattr(spark_module, "SPARK_CSV_CELLS", cells)
    out = tmp_path / "failed"
    with pytest.raises(WriteFailed, match="Spark could not write"):
        awkward.export(EVERYONE, output=out, columns="email,note", engine="spark", partitioned=True)
    assert list(tmp_path.iterdir()) == []
    # an unwritable destination (even for root): the job cannot create its directory
    with pytest.raises(WriteFailed):
        awkward.export(EVERYONE, output="/proc/segengine-export", engine="spark", partitioned=True)
    assert not os.path.exists("/proc/segengine-export")


@pytest.mark.spark
def test_cli_partitioned_export(spark, awkward, tmp_path):
    from conftest import Cli

    cli = Cli(awkward.path)
    out = tmp_path / "out"
    got = cli.json("export", "--engine", "spark", "--partitioned", "-o", str(out),
                   _everyone_file(tmp_path))
    assert got == {"rows": len(AWKWARD_EMAILS) - 2, "path": str(out),
                   "files": len(part_files(out, ".csv"))}
    again = cli("export", _everyone_file(tmp_path), "--engine", "spark", "--partitioned",
                "-o", str(out), code=2)
    assert "not empty" in again.stderr and again.stderr.count("\n") == 1
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in cli("export", _everyone_file(tmp_path), "--engine", "spark",
                              "--partitioned", "-o", str(a_file), code=2).stderr
    human = cli("export", _everyone_file(tmp_path), "--engine", "spark", "--partitioned",
                "-o", str(tmp_path / "h"), "--format", "parquet")
    assert "part files" in human.stdout and part_files(tmp_path / "h", ".parquet")


def _everyone_file(directory) -> str:
    path = directory / "everyone.yaml"
    path.write_text("name: everyone\nrules: []\n")
    return str(path)


def test_cli_partitioned_needs_the_spark_engine(tmp_path, cli):
    result = cli("export", _everyone_file(tmp_path), "--partitioned", "-o", str(tmp_path / "o"),
                 code=2)
    assert "--partitioned needs --engine spark" in result.stderr
    result = cli("export", _everyone_file(tmp_path), "--engine", "spark", "-o", str(tmp_path / "o"),
                 "--contacts", str(tmp_path), code=2)
    assert "--engine spark --partitioned" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.spark
def test_partitioned_export_of_data_never_imported(spark, tmp_path):
    from conftest import Cli

    from segengine.engines.spark import SparkEngine
    from segengine.export import export_tables

    contacts, events = _external(tmp_path)
    seg = tmp_path / "openers.yaml"
    seg.write_text("name: openers\nrules:\n  - {activity: opened}\n")
    out = tmp_path / "openers"
    got = Cli(None).json("export", str(seg), "--engine", "spark", "--partitioned", "--contacts",
                         contacts, "--events", events, "--as-of", "2026-03-15", "-o", str(out),
                         "--columns", "email,city,score", "--raw")
    engine = SparkEngine.at(contacts, events, session=spark)
    matched = set(engine.contact_ids([as_root(A("opened"))], AS_OF).tolist())
    engine.close()
    want = sorted(c["email"] for c in CONTACTS if c["contact_id"] in matched and c["status"] == "active")
    lines = [p.read_text(encoding="utf-8").splitlines() for p in part_files(out, ".csv")]
    assert all(part[0] == "email,city,score" for part in lines)
    assert [line.split(",")[0] for part in lines for line in part[1:]] == want
    assert got["rows"] == len(want) > 0
    result = export_tables(str(seg), tmp_path / "p.parquet",
                           contacts=contacts, events=events, as_of="2026-03-15")
    assert pq.read_table(tmp_path / "p.parquet").column("email").to_pylist() == want
    assert result.rows == len(want)


def test_local_sessions_get_a_driver_heap_that_fits_a_million_contacts(monkeypatch):
    """Spark's default 1g driver heap fails to broadcast joins at 1M contacts / 20M events;
    a local session segengine starts gets 4g (or $SEGENGINE_SPARK_DRIVER_MEMORY), a cluster
    session keeps the cluster's setting."""
    from segengine.engines.spark import DRIVER_MEMORY_ENV, session_conf

    monkeypatch.delenv(DRIVER_MEMORY_ENV, raising=False)
    assert session_conf("local[*]")["spark.driver.memory"] == "4g"
    assert session_conf("local[*]")["spark.sql.session.timeZone"] == "UTC"
    assert "spark.driver.memory" not in session_conf("spark://head:7077")
    monkeypatch.setenv(DRIVER_MEMORY_ENV, "12g")
    assert session_conf("local[2]")["spark.driver.memory"] == "12g"
