"""The synthetic data generator: deterministic, in the import format, realistically shaped."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest
from ruamel.yaml import YAML

from segengine.errors import InputError
from segengine.fields import EVENT_TYPES, STATUSES
from segengine.synth import LISTS, REFERENCE_END, URLS, generate

ROOT = Path(__file__).resolve().parent.parent
CONTACTS, EVENTS, SEED = 2_000, 30_000, 7
CUSTOM_FIELDS = (
    "first_name",
    "company",
    "title",
    "state",
    "city",
    "employees",
    "score",
    "vip",
    "birthday",
    "renewal_date",
    "last_login",
)
EMAIL_RE = re.compile(r"[a-z0-9._]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}\Z")


def _normalise(col: str = "email") -> pl.Expr:
    """The import's email normalisation (SPEC section 3): strip white space, lower-case."""
    return pl.col(col).str.strip_chars(" \t").str.to_lowercase()


@pytest.fixture(scope="module")
def parquet(tmp_path_factory) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    out = tmp_path_factory.mktemp("parquet")
    result = generate(out, CONTACTS, EVENTS, seed=SEED, chunk_events=7_000)
    return result, pl.read_parquet(result["contacts_path"]), pl.read_parquet(result["events_path"])


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> tuple[dict, pl.DataFrame, pl.DataFrame]:
    out = tmp_path_factory.mktemp("csv")
    result = generate(out, CONTACTS, EVENTS, seed=SEED, fmt="csv")
    read = {"infer_schema_length": 0}  # all text: check the cells as an import sees them
    return (
        result,
        pl.read_csv(result["contacts_path"], **read),
        pl.read_csv(result["events_path"], **read),
    )


# --- determinism ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_same_seed_same_bytes(tmp_path, fmt):
    a = generate(tmp_path / "a", 300, 4_000, seed=3, fmt=fmt)
    b = generate(tmp_path / "b", 300, 4_000, seed=3, fmt=fmt)
    for key in ("contacts_path", "events_path"):
        assert Path(a[key]).read_bytes() == Path(b[key]).read_bytes()


def test_other_seed_other_data(tmp_path):
    a = generate(tmp_path / "a", 300, 4_000, seed=3)
    b = generate(tmp_path / "b", 300, 4_000, seed=4)
    assert not pl.read_parquet(a["contacts_path"]).equals(pl.read_parquet(b["contacts_path"]))


def test_chunk_size_does_not_change_rows(tmp_path, parquet):
    result, _, events = parquet
    again = generate(tmp_path, CONTACTS, EVENTS, seed=SEED, chunk_events=1_000_000)
    assert pl.read_parquet(again["events_path"]).equals(events)


def test_csv_holds_the_same_data_as_parquet(parquet, csv):
    _, p_contacts, p_events = parquet
    _, c_contacts, c_events = csv
    assert c_contacts.select(_normalise())["email"].to_list() == p_contacts["email"].to_list()
    as_text = p_events.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert c_events.equals(as_text)
    assert c_contacts["state"].to_list() == p_contacts["state"].to_list()
    for column in ("date_added", "last_login"):
        as_text = p_contacts[column].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert c_contacts[column].to_list() == as_text.to_list()
    assert c_contacts["lists"].to_list() == p_contacts["lists"].to_list()


# --- sizes and shapes ---------------------------------------------------------------


def test_row_counts(parquet):
    result, contacts, events = parquet
    assert result["contacts"] == contacts.height == CONTACTS
    assert result["events"] == events.height
    assert abs(events.height - EVENTS) / EVENTS < 0.05


@pytest.mark.parametrize(("n", "m"), [(500, 2_000), (5_000, 40_000), (1_000, 120_000)])
def test_event_total_is_near_the_target(tmp_path, n, m):
    result = generate(tmp_path, n, m, seed=11)
    assert abs(result["events"] - m) / m < 0.05


def test_parquet_types(parquet):
    _, contacts, events = parquet
    assert events.schema == pl.Schema(
        {
            "email": pl.String,
            "campaign": pl.String,
            "type": pl.String,
            "timestamp": pl.Datetime("us"),
            "url": pl.String,
        }
    )
    assert contacts.schema["date_added"] == pl.Datetime("us", "UTC")
    assert contacts.schema["last_login"] == pl.Datetime("us", "UTC")
    assert contacts.schema["birthday"] == pl.Date
    assert contacts.schema["vip"] == pl.Boolean
    assert contacts.schema["score"].is_numeric()


def test_status_proportions(parquet):
    _, contacts, _ = parquet
    share = dict(contacts["status"].value_counts(normalize=True).iter_rows())
    assert set(share) == set(STATUSES)
    assert share["active"] == pytest.approx(0.90, abs=0.025)
    assert share["unsubscribed"] == pytest.approx(0.06, abs=0.02)
    assert share["bounced"] == pytest.approx(0.04, abs=0.02)


def test_custom_fields_have_some_empty_values(parquet):
    _, contacts, _ = parquet
    for field in CUSTOM_FIELDS:
        empty = contacts[field].null_count() / contacts.height
        assert 0.03 <= empty <= 0.25, (field, empty)


def test_states_and_titles_are_skewed(parquet):
    _, contacts, _ = parquet
    states = contacts["state"].drop_nulls().value_counts(sort=True)
    assert states["state"][0] == "CA"
    assert states["count"][0] > 5 * states["count"][20]
    titles = contacts["title"].drop_nulls().value_counts(sort=True)
    assert titles["count"][0] > 5 * titles["count"][-1]
    assert {"CTO", "VP Sales", "Sales Manager", "Engineer"} <= set(titles["title"])


def test_emails_unique_and_valid(parquet):
    _, contacts, _ = parquet
    emails = contacts["email"]
    assert emails.n_unique() == contacts.height
    assert all(EMAIL_RE.match(e) for e in emails.to_list())


def test_csv_emails_are_messy_but_normalise_to_unique_addresses(csv):
    _, contacts, _ = csv
    raw = contacts["email"]
    assert (raw != raw.str.strip_chars(" \t").str.to_lowercase()).any()
    assert contacts.select(_normalise())["email"].n_unique() == contacts.height


def test_lists(parquet):
    _, contacts, _ = parquet
    lists = contacts["lists"].str.split(";")
    sizes = lists.list.len().fill_null(0)
    assert sizes.min() == 0 and sizes.max() == 3
    names = set(lists.explode().drop_nulls())
    assert names == {name for name, _ in LISTS}
    assert lists.list.contains("newsletter").fill_null(False).mean() > 0.4


# --- events ---------------------------------------------------------------------


def test_events_reference_only_generated_emails(parquet, csv):
    for _, contacts, events in (parquet, csv):
        known = contacts.select(_normalise())["email"].implode()
        assert events.filter(~pl.col("email").is_in(known)).height == 0


def test_every_event_type_is_present(parquet):
    _, _, events = parquet
    assert set(events["type"].unique()) == set(EVENT_TYPES)


def test_clicks_have_urls_and_others_do_not(parquet):
    _, _, events = parquet
    clicks = events.filter(pl.col("type") == "click")
    assert clicks["url"].null_count() == 0
    assert set(clicks["url"].unique()) <= set(URLS)
    assert (
        events.filter(pl.col("type") != "click")["url"].null_count()
        == events.height - clicks.height
    )


def test_open_and_click_rates(parquet):
    _, _, events = parquet
    counts = dict(events["type"].value_counts().iter_rows())
    assert counts["open"] / counts["sent"] == pytest.approx(0.20, abs=0.03)
    assert 0.08 <= counts["click"] / counts["open"] <= 0.17


def test_engagement_is_heavy_tailed(parquet):
    _, contacts, events = parquet
    opens = events.filter(pl.col("type") == "open").group_by("email").len().sort("len")
    never = 1 - opens.height / contacts.height
    assert never > 0.35
    top_tenth = opens["len"].tail(max(1, opens.height // 10)).sum()
    assert top_tenth / opens["len"].sum() > 0.3


def test_events_after_date_added_and_before_the_reference_end(parquet):
    _, contacts, events = parquet
    joined = events.join(contacts.select("email", "date_added"), on="email")
    assert (
        joined.filter(pl.col("timestamp") < pl.col("date_added").dt.replace_time_zone(None)).height
        == 0
    )
    assert events["timestamp"].max() < REFERENCE_END.replace(tzinfo=None)
    assert contacts["date_added"].min() >= REFERENCE_END.replace(year=2023)


def test_campaigns_are_sent_to_a_large_share(parquet):
    result, contacts, events = parquet
    sends = events.filter(pl.col("type") == "sent").group_by("campaign").len()
    assert sends.height == result["campaigns"]
    ids = sends["campaign"].to_list()
    assert all(re.fullmatch(r"c\d{4}-\d\d-\d\d-[a-z]+|nl-\d{4}", c) for c in ids)
    assert sends["len"].max() > 0.5 * contacts.height


def test_unsubscribes_and_bounces_match_statuses(parquet):
    _, contacts, events = parquet
    status = contacts.select("email", "status")
    unsub = events.filter(pl.col("type") == "unsubscribe").join(status, on="email")
    assert set(unsub["status"]) == {"unsubscribed"}
    # Nobody receives a campaign after unsubscribing.
    quit_at = unsub.select("email", pl.col("timestamp").alias("quit"))
    later = events.filter(pl.col("type") == "sent").join(quit_at, on="email")
    assert later.filter(pl.col("timestamp") > pl.col("quit")).height == 0
    bounced = contacts.filter(pl.col("status") == "bounced")["email"].implode()
    hard = events.filter((pl.col("type") == "bounce") & pl.col("email").is_in(bounced))
    assert hard.height > 0


def test_csv_cells_are_in_import_format(csv):
    _, contacts, events = csv
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert events["timestamp"].str.contains(f"^{iso}$").all()
    assert contacts["date_added"].str.contains(f"^{iso}$").all()
    assert contacts["birthday"].drop_nulls().str.contains(r"^\d{4}-\d\d-\d\d$").all()
    assert set(contacts["vip"].drop_nulls()) == {"true", "false"}
    assert contacts["score"].drop_nulls().str.contains(r"^\d+$").all()


def test_progress_reports_every_chunk(tmp_path):
    seen: list[tuple[int, int]] = []
    result = generate(
        tmp_path,
        500,
        6_000,
        seed=1,
        chunk_events=1_000,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert len(seen) >= 5
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (result["events"], 6_000)


def test_no_events(tmp_path):
    result = generate(tmp_path, 50, 0, fmt="csv")
    assert result["events"] == 0
    assert Path(result["events_path"]).read_text().strip() == "email,campaign,type,timestamp,url"
    assert pl.read_csv(result["contacts_path"]).height == 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"contacts": 10, "events": 10, "fmt": "xlsx"}, "--format"),
        ({"contacts": 0, "events": 10}, "at least one contact"),
        ({"contacts": -1, "events": 0}, ">= 0"),
        ({"contacts": 10, "events": 10_000_000}, "more than"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        generate(tmp_path, **kwargs)


# --- committed sample -----------------------------------------------------------


def test_sample_is_reproducible(tmp_path):
    generate(tmp_path, contacts=1_000, events=20_000, seed=42, fmt="csv")
    for name in ("contacts.csv", "events.csv"):
        assert (tmp_path / name).read_bytes() == (ROOT / "data" / "sample" / name).read_bytes()


def _sample_counts() -> dict[str, int]:
    """The seed segments evaluated by hand with Polars on the committed sample."""
    contacts = pl.read_csv(ROOT / "data/sample/contacts.csv", infer_schema_length=0)
    events = pl.read_csv(ROOT / "data/sample/events.csv", infer_schema_length=0)
    contacts = contacts.with_columns(_normalise(), pl.col("lists").str.split(";"))
    openers = events.filter(pl.col("type") == "open")["email"].implode()
    never = ~pl.col("email").is_in(openers)
    active = pl.col("status") == "active"
    title, state = pl.col("title").str.to_lowercase(), pl.col("state").str.to_lowercase()
    rules = {
        "inactive-newsletter": active
        & never
        & pl.col("lists").list.contains("newsletter").fill_null(False)
        & (pl.col("date_added") < "2025-01-01"),
        "state-ca": (state == "ca").fill_null(False),
        "cto-or-sales-west": ((title == "cto") | title.str.contains("sales")).fill_null(False)
        & state.is_in(["ca", "or", "wa"]).fill_null(False),
        "never-opened": active & never,
    }
    return {name: contacts.filter(rule).height for name, rule in rules.items()}


def test_seed_segments_select_sample_contacts():
    """Expected counts are also listed in docs/synthetic-data.md."""
    assert _sample_counts() == {
        "inactive-newsletter": 111,
        "state-ca": 157,
        "cto-or-sales-west": 58,
        "never-opened": 492,
    }


def test_seed_segment_files_are_spec_shaped():
    yaml = YAML(typ="safe", pure=True)
    yaml.version = (1, 2)
    files = sorted((ROOT / "data" / "segments").glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "inactive-newsletter",
        "state-ca",
        "cto-or-sales-west",
        "never-opened",
    }
    for path in files:
        doc = yaml.load(path)
        assert doc["name"] == path.stem
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", doc["name"])
        assert doc.get("match", "all") in ("all", "any") and doc["rules"]
