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
import importlib.util
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import reference_contact_ids
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
JVM_OPTIONS = "-Duser.timezone=America/Los_Angeles -Duser.language=tr -Duser.country=TR"
SESSION_TIME_ZONE = "Pacific/Kiritimati"  # UTC+14: any day computed in it is a day late


# one worker runs every Spark test, so a test run starts one shared session
pytestmark = pytest.mark.xdist_group("spark")

def _why_no_spark() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "PySpark is not installed: pip install -e '.[spark]'"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "Java 17+ is not installed (apt-get install openjdk-17-jre-headless)"
    return None


@pytest.fixture(scope="session")
def spark():
    """The run's one SparkSession, in a non-UTC JVM with a Turkish default locale."""
    reason = _why_no_spark()
    if reason:
        pytest.skip(reason)
    from segengine.engines.spark import pyspark_sql

    session = (
        pyspark_sql().SparkSession.builder.master("local[2]")
        .appName("segengine-tests")
        .config("spark.driver.extraJavaOptions", JVM_OPTIONS)
        .config("spark.sql.session.timeZone", SESSION_TIME_ZONE)
        .config("spark.sql.shuffle.partitions", "2")
        # tiny data: compiling Java for each query costs more than it saves (-40% time)
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


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
        by_status = {"active": 0, "unsubscribed": 0, "bounced": 0}
        for c in ws.contacts:
            by_status[c["status"]] += c["contact_id"] in union
        assert engine.count(roots, ws.as_of) == by_status
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
