"""Every path into `active`: only `resubscribe` leads there, and a bounce never gets
laundered into an unsubscribe that `resubscribe` would then undo."""

from __future__ import annotations

import pytest
from conftest import write

EVERYONE = {"name": "everyone", "rules": []}


def statuses(ws) -> dict[str, str]:
    frame = ws.members(EVERYONE, active_only=False)
    return dict(zip(frame["email"].to_list(), frame["status"].to_list(), strict=True))


@pytest.fixture
def suppressed(ws, cli, tmp_path):
    write(tmp_path / "c.csv", "email,status\nu@x.io,unsubscribed\nb@x.io,bounced\na@x.io,active\n")
    cli("import", "contacts", tmp_path / "c.csv")
    return ws


@pytest.mark.parametrize("file_status", ["active", "unsubscribed", "bounced", ""])
def test_an_import_never_moves_a_bounced_contact(suppressed, cli, tmp_path, file_status):
    write(tmp_path / "again.csv", f"email,status\nb@x.io,{file_status}\n")
    cli("import", "contacts", tmp_path / "again.csv")
    assert statuses(suppressed)["b@x.io"] == "bounced"
    # and so resubscribe without --include-bounced cannot make it active
    write(tmp_path / "optin.csv", "email\nb@x.io\n")
    cli("resubscribe", "--emails", tmp_path / "optin.csv", "--reason", "form")
    assert statuses(suppressed)["b@x.io"] == "bounced"
    history = cli("history", "b@x.io").stdout
    assert "unsubscribed" not in history


@pytest.mark.parametrize("file_status", ["active", ""])
def test_an_import_never_reactivates(suppressed, cli, tmp_path, file_status):
    write(tmp_path / "again.csv", f"email,status\nu@x.io,{file_status}\nb@x.io,{file_status}\n")
    cli("import", "contacts", tmp_path / "again.csv")
    assert statuses(suppressed) == {"a@x.io": "active", "b@x.io": "bounced", "u@x.io": "unsubscribed"}


def test_an_import_may_suppress_further(suppressed, cli, tmp_path):
    write(tmp_path / "again.csv", "email,status\nu@x.io,bounced\na@x.io,unsubscribed\n")
    cli("import", "contacts", tmp_path / "again.csv")
    assert statuses(suppressed) == {"a@x.io": "unsubscribed", "b@x.io": "bounced", "u@x.io": "bounced"}


def test_events_and_bulk_unsubscribe_never_reactivate(suppressed, cli, tmp_path):
    write(tmp_path / "e.csv", "email,campaign,type,timestamp\n"
          "u@x.io,c1,sent,2026-01-01T00:00:00Z\nb@x.io,c1,open,2026-01-02T00:00:00Z\n")
    cli("import", "events", tmp_path / "e.csv")
    write(tmp_path / "list.csv", "email\nu@x.io\nb@x.io\n")
    cli("unsubscribe", "--emails", tmp_path / "list.csv")
    assert statuses(suppressed) == {"a@x.io": "active", "b@x.io": "bounced", "u@x.io": "unsubscribed"}


def test_only_resubscribe_reactivates_and_bounced_needs_the_flag(suppressed, cli, tmp_path):
    write(tmp_path / "optin.csv", "email\nu@x.io\nb@x.io\n")
    cli("resubscribe", "--emails", tmp_path / "optin.csv", "--reason", "form")
    assert statuses(suppressed) == {"a@x.io": "active", "b@x.io": "bounced", "u@x.io": "active"}
    cli("resubscribe", "--emails", tmp_path / "optin.csv", "--reason", "confirmed",
        "--include-bounced")
    assert statuses(suppressed)["b@x.io"] == "active"

