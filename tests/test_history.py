"""`segengine history EMAIL`: a contact's fields, status changes and events in time order."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import Cli, write

from segengine.history import UnknownContact, iso_datetime

CONTACTS = (
    "email,status,lists,first_name,score,last_login\n"
    "ann@example.com,active,news;beta,Ann,3,2024-05-06T07:08:09Z\n"
    "bob@example.com,active,,Bob,,\n"
)
EVENTS = (
    "email,campaign,type,timestamp,url\n"
    "ann@example.com,c2,open,2024-03-02T10:00:00.5Z,\n"
    "ann@example.com,c1,sent,2024-03-01T09:00:00Z,\n"
    "ann@example.com,c2,sent,2024-03-02T09:00:00Z,\n"
    "ann@example.com,c2,click,2024-03-02T10:00:01Z,https://example.com/p\n"
    "bob@example.com,c1,sent,2024-03-01T09:00:00Z,\n"
)
ANN = {"name": "ann", "rules": [{"field": "email", "op": "is", "value": "ann@example.com"}]}


@pytest.fixture
def filled(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "c.csv", CONTACTS))
    ws.import_events(write(tmp_path / "e.csv", EVENTS))
    return ws


def test_history_lists_fields_changes_and_events_in_time_order(filled, tmp_path):
    filled.unsubscribe(ANN)
    filled.resubscribe(write(tmp_path / "ann.csv", "email\nann@example.com\n"), reason="asked")
    found = filled.history("  ANN@example.com\t")
    data = found.as_dict()
    assert data["email"] == "ann@example.com"
    fields = data["fields"]
    assert list(fields)[:5] == ["email", "email_domain", "status", "date_added", "lists"]
    assert fields["email_domain"] == "example.com"
    assert fields["status"] == "active"
    assert fields["lists"] == ["beta", "news"]
    assert fields["score"] == 3
    assert fields["last_login"] == "2024-05-06T07:08:09Z"
    assert [(e["campaign"], e["type"]) for e in data["events"]] == [
        ("c1", "sent"), ("c2", "sent"), ("c2", "open"), ("c2", "click"), ("bulk-unsubscribe", "unsubscribe"),
    ]
    assert data["events"][2]["timestamp"] == "2024-03-02T10:00:00.5Z"
    assert data["events"][3]["url"] == "https://example.com/p"
    changes = data["status_changes"]
    assert [(c["from_status"], c["to_status"], c["command"]) for c in changes] == [
        ("active", "unsubscribed", "unsubscribe"), ("unsubscribed", "active", "resubscribe"),
    ]
    assert changes[1]["reason"] == "asked"
    timeline = found.timeline()
    kinds = [(row["kind"], row.get("type") or row.get("to_status")) for row in timeline]
    # the unsubscribe's status change comes right before its event (same time)
    assert kinds[-3:] == [("status", "unsubscribed"), ("event", "unsubscribe"), ("status", "active")]
    # time order across fractions of a second, which ISO texts alone would get wrong
    assert [row["type"] for row in timeline[:4]] == ["sent", "sent", "open", "click"]


def test_history_of_a_contact_without_events(filled):
    data = filled.history("bob@example.com").as_dict()
    assert data["status_changes"] == []
    assert [e["campaign"] for e in data["events"]] == ["c1"]
    assert data["fields"]["score"] is None and data["fields"]["lists"] == []


def test_unknown_email_is_an_input_error(filled):
    with pytest.raises(UnknownContact, match="no contact has the email 'nobody@example.com'"):
        filled.history("Nobody@example.com")


def test_iso_datetime_shows_a_fraction_only_when_present():
    assert iso_datetime(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02T03:04:05Z"
    assert iso_datetime(dt.datetime(2024, 1, 2, 3, 4, 5, 120000)) == "2024-01-02T03:04:05.12Z"


def test_cli_history(filled):
    cli = Cli(filled.path)
    data = cli.json("history", "ann@example.com")
    assert data["fields"]["first_name"] == "Ann"
    human = cli("history", "ann@example.com").stdout
    assert "c2" in human and "ann@example.com" in human
    bad = cli("history", "nobody@example.com", code=2)
    assert "no contact has the email" in bad.stderr
