"""One address rule everywhere: imports (SQL) and lookups and sends (Python) agree, no
invisible or compatibility character makes a second contact for a suppressed mailbox,
and nothing SMTP would read differently is stored or used as a recipient."""

from __future__ import annotations

import random

import duckdb
import pytest
from conftest import write
from test_send import send, smtp  # noqa: F401 - the SMTP server fixture

from segengine import addresses
from segengine.addresses import normalise, problem

EVERYONE = {"name": "everyone", "rules": []}

#: pieces random addresses are made of: ASCII, specials, every kind of white space and
#: format character, full-width and other compatibility forms, IDN, combining marks
PIECES = [
    "a", "Z", "0", ".", "-", "_", "+", "@", "@", "x.io", "ex.com", "ａ", "Ｚ", "＠", "．",
    "ß", "İ", "Σ", "é", "e\u0301", "ﬁ", "①", "bücher.de", "xn--bcher-kva.de", "中文",
    " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u2003", "\u2028",
    "\u2029", "\u202f", "\u3000", "\u200b", "\u200d", "\ufeff", "\u00ad", "\u2060",
    "\U000e0041", "\x00", "\x1f", "\x7f", ",", '"', "<", ">", "(", ")", ":", ";", "[",
    "\\", "]", "'", "`", "~", "a" * 64, "b" * 200, "\ud7ff", "\ue000", "\U0001f600",
]


def random_addresses(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        core = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 5)))
        core = rng.choice([core, f"{core}@x.io", f"u{core}@ex.com", f"ann@{core}"])
        edge = "".join(rng.choice(PIECES[25:46]) for _ in range(rng.randint(0, 2)))
        out.append(rng.choice([core, edge + core, core + edge, edge + core + edge]))
    return out


def test_sql_and_python_apply_one_rule():
    """The DuckDB SQL of imports and the Python of lookups and sends agree on every value."""
    values = random_addresses(4000, seed=16)
    con = addresses.register(duckdb.connect())
    con.execute("CREATE TABLE t (i INTEGER, raw VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(values)))
    rows = con.execute(
        f"SELECT i, n, {addresses.sql_problem('n')} FROM "
        f"(SELECT i, {addresses.sql_email('raw')} AS n FROM t) ORDER BY i"
    ).fetchall()
    refused = 0
    for (_i, n, why), raw in zip(rows, values, strict=True):
        assert n == normalise(raw), raw
        assert why == problem(n), raw
        assert normalise(n) == n, raw  # normalising twice changes nothing
        refused += why is not None
    assert 500 < refused < 3900  # the random values exercise both outcomes


@pytest.mark.parametrize("twin", [
    "\u2003u@x.io", "u@x.io\u200b", "\ufeffu@x.io", "\x85u@x.io\u2028", "ｕ@x.io", "u＠x．io",
    "U@X.IO\u00a0", "\u2060u@x.io\u180e",
])
def test_no_invisible_or_full_width_twin_of_a_suppressed_contact(ws, cli, tmp_path, twin):
    write(tmp_path / "c.csv", "email,status\nu@x.io,unsubscribed\n")
    cli("import", "contacts", tmp_path / "c.csv")
    write(tmp_path / "again.csv", f"email,name\n{twin},Ann\n")
    cli("import", "contacts", tmp_path / "again.csv")
    frame = ws.members(EVERYONE, active_only=False)
    assert frame["email"].to_list() == ["u@x.io"] and frame["status"].to_list() == ["unsubscribed"]
    assert ws.count(EVERYONE)["sendable"] == 0
    # events and lookups take the same rule
    write(tmp_path / "e.csv", f"email,campaign,type,timestamp\n{twin},c,open,2026-01-01\n")
    assert cli.json("import", "events", tmp_path / "e.csv")["imported"] == 1
    assert f"'{twin.strip()}'" not in cli("history", twin).stdout


BAD = {
    "a,b@x.io": "has ',' before the @",
    'q"x@x.io': "has '\"' before the @",
    "a>b@x.io": "has '>' before the @",
    "<a@x.io>": "has '<' before the @",
    "root,x@x.io": "has ',' before the @",
    "a b@x.io": "(U+0020)",
    "a\u200b@x.io": "(U+200B)",
    "a@b@x.io": "needs exactly one @ (found 2)",
    '"a@b"@x.io': "needs exactly one @",
    "@x.io": "nothing before the @",
    "a@x": "not a host name",
    "a@[127.0.0.1]": "not a host name",
    "a" * 65 + "@x.io": "more than 64 bytes",
    "a@" + "b." * 126 + "io": "longer than 254 bytes",
    "a@bücher\u200b.de": "U+200B",
}


def test_addresses_smtp_would_misread_are_refused_with_a_reason(ws, cli, tmp_path):
    rows = "".join(f'"{b.replace(chr(34), chr(34) * 2)}"\n' for b in BAD)
    write(tmp_path / "c.csv", "email\nok@x.io\n" + rows)
    report = tmp_path / "rejects.csv"
    summary = cli.json("import", "contacts", tmp_path / "c.csv", "--rejects", report)
    assert (summary["imported"], summary["rejected"]) == (1, len(BAD))
    import csv

    with open(report, newline="") as f:
        reasons = [r["reason"] for r in csv.DictReader(f)]
    for reason, expected in zip(reasons, BAD.values(), strict=True):
        assert reason.startswith("invalid email '") and expected in reason, reason
    for raw in BAD:
        with pytest.raises(addresses.InvalidAddress):
            addresses.parse(raw)


def test_idn_is_stored_in_its_ascii_form(ws, cli, tmp_path):
    write(tmp_path / "c.csv", "email\nJörg@Bücher.DE\njörg@xn--bcher-kva.de\n")
    summary = cli.json("import", "contacts", tmp_path / "c.csv")
    assert (summary["imported"], summary["duplicates"]) == (1, 1)
    assert ws.members(EVERYONE)["email"].to_list() == ["jörg@xn--bcher-kva.de"]


def test_the_envelope_is_the_stored_address_and_old_bad_addresses_are_not_sent_to(
        ws, tmp_path, monkeypatch, smtp):  # noqa: F811
    """A workspace imported before the rule was strict may hold `root,x@x.io`: the send
    refuses it with a reason instead of letting the relay read `root`."""
    monkeypatch.setattr(addresses, "sql_problem", lambda col: "NULL")
    monkeypatch.setattr(addresses, "sql_email", lambda col: f"lower(trim({col}))")
    write(tmp_path / "c.csv", "email\nann@x.io\n\"root,x@x.io\"\nq.\"z\"@x.io\nｆｗ@x.io\nBob+tag@Ex.com\n")
    ws.import_contacts(tmp_path / "c.csv")
    monkeypatch.undo()
    ws.save_segment(EVERYONE)
    result = send(ws, smtp, subject="Hi", html="<p>Hi</p>").as_dict()
    stored = set(ws.members(EVERYONE)["email"].to_list())
    assert {a for a, _ in smtp.handed} == {"ann@x.io", "bob+tag@ex.com"}
    assert {a for a, _ in smtp.handed} <= stored  # RCPT == stored, byte for byte
    assert (result["sent"], result["failed"]) == (2, 3)
    assert not any(a.startswith("root") for a, _ in smtp.handed)


@pytest.mark.parametrize("variant, bounced", [
    ("ｕ@x.io", "ｂ@x.io"), ("\u200bU@X.IO", "\u200bB@X.IO"), ("u@x.io\u2028", "b@x.io\u2028"),
    ("\u3000u＠x.io", "\u3000b＠x.io"),
])
def test_emails_files_find_the_contact_behind_any_spelling(ws, cli, tmp_path, variant, bounced):
    """Unsubscribe suppresses, and resubscribe (without --include-bounced) never
    reactivates a bounce, whatever spelling of the address the file uses."""
    write(tmp_path / "c.csv", "email,status\nu@x.io,active\nb@x.io,bounced\n")
    cli("import", "contacts", tmp_path / "c.csv")
    write(tmp_path / "list.csv", f"email\n{variant}\n")
    assert cli.json("unsubscribe", "--emails", tmp_path / "list.csv")["changed"] == 1
    assert ws.count(EVERYONE)["sendable"] == 0
    write(tmp_path / "optin.csv", f"email\n{bounced}\n")
    assert cli.json("resubscribe", "--emails", tmp_path / "optin.csv", "--reason", "form")["changed"] == 0
    assert ws.count(EVERYONE)["sendable"] == 0
