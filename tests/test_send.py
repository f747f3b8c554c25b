"""`segengine send` against a real SMTP server (aiosmtpd) on localhost.

The server runs in the test process, so it outlives a sender killed with SIGKILL,
and its mailbox is the ground truth: who got the message, how often, and when the
sender handed it over. Kill tests kill a real `python -m segengine send` at many
moments and at named crash points, resume, and check the mailbox: nobody twice
(apart from reported uncertain deliveries) and every active contact once.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from aiosmtpd.controller import Controller
from conftest import Cli, write  # noqa: E402 - tests/ is on sys.path via conftest

import segengine
from segengine.errors import InputError
from segengine.fields import Schema
from segengine.send import verify_token
from segengine.send.journal import journal_path, read_state
from segengine.send.templates import Template, text_of_html

EVERYONE = {"name": "everyone", "rules": []}
FEW = {"name": "few", "rules": [{"field": "email", "op": "starts_with", "value": "a"}]}
HTML = ("<p>Hello {{first_name}} from {{company}}</p>"
        "<a href='https://example.com/u/{{token}}'>unsubscribe</a>")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """An aiosmtpd handler: per-recipient answers, every delivered message, hand-over times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []
        self.handed: list[tuple[str, float]] = []  # (recipient, monotonic time of RCPT)
        self.attempts: collections.Counter[str] = collections.Counter()
        self.answers: dict[str, str] = {}
        self.content_answers: dict[str, str] = {}  # per recipient, after the content

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.attempts[address] += 1
            self.handed.append((address, time.monotonic()))
        answer = self.answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.content_answers:
                return self.content_answers[rcpt]
        with self.lock:
            self.messages.extend((rcpt, envelope.content) for rcpt in envelope.rcpt_tos)
        return "250 OK"

    def counts(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(rcpt for rcpt, _ in self.messages)


@pytest.fixture
def smtp():
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    mailbox.address = f"127.0.0.1:{port}"
    mailbox.tls = "none"  # a plain server: no STARTTLS
    yield mailbox
    controller.stop()


@pytest.fixture(scope="module")
def synth_ws(tmp_path_factory) -> Path:
    """A workspace of 300 synthetic contacts (some unsubscribed or bounced)."""
    from segengine.synth import generate

    root = tmp_path_factory.mktemp("send")
    generate(root / "data", contacts=300, events=2_000, seed=3)
    ws = segengine.Workspace.init(root / "ws")
    ws.import_contacts(root / "data" / "contacts.parquet")
    ws.import_events(root / "data" / "events.parquet")
    ws.save_segment(EVERYONE)
    return root / "ws"


@pytest.fixture
def big(synth_ws, tmp_path) -> segengine.Workspace:
    shutil.copytree(synth_ws, tmp_path / "ws")
    return segengine.open(tmp_path / "ws")


def active_emails(ws: segengine.Workspace) -> set[str]:
    return set(ws.members("everyone", active_only=True)["email"].to_list())


def sent_events(ws: segengine.Workspace, campaign: str, kind: str = "sent") -> pl.DataFrame:
    snap = ws.snapshot()
    return (
        pl.read_parquet(list(snap.files("events")))
        .filter((pl.col("campaign") == campaign) & (pl.col("type") == kind))
    )


def send(ws: segengine.Workspace, smtp: Mailbox, campaign: str = "spring", **kw):
    options = {"subject": "Hi {{first_name}}", "html": HTML, "from_addr": "news@example.com",
               "smtp": smtp.address, "record_every": 0.2, "backoff": 0.01,
               "tls": smtp.tls}
    options.update(kw)
    return ws.send(campaign, "everyone", **options)


# --- delivering, resuming, recording ---------------------------------------------------


def test_send_delivers_each_active_contact_once_and_records_sent_events(big, smtp):
    active = active_emails(big)
    result = send(big, smtp, connections=3).as_dict()
    assert result == {"campaign": "spring", "audience": len(active), "sent": len(active),
                      "failed": 0, "bounced": 0, "skipped": 0,
                      "uncertain": {"count": 0, "emails": []}}
    assert smtp.counts() == collections.Counter({e: 1 for e in active})
    events = sent_events(big, "spring")
    assert events.height == len(active) and events["contact_id"].n_unique() == len(active)
    # the same command again sends nothing: everyone has a `sent` event
    again = send(big, smtp).as_dict()
    assert (again["sent"], again["skipped"], again["audience"]) == (0, len(active), len(active))
    assert len(smtp.messages) == len(active)
    assert big.count("everyone")["sendable"] == len(active)


def test_a_segment_of_sent_contacts_sees_the_send(big, smtp):
    send(big, smtp)
    rule = {"activity": "sent", "campaigns": ["spring"]}
    got = big.count({"name": "got-spring", "rules": [rule]})
    assert got["total"] == len(active_emails(big))


def test_crash_leftovers_in_the_journal_are_recorded_on_resume(big, smtp):
    """`done` lines whose events were never committed become events, not resends."""
    send(big, smtp)
    # Forget the recorded events (as if the process died before the recorder ran).
    ws_path = big.path
    manifest = json.loads((ws_path / "manifest.json").read_text())
    keep = [f for f in manifest["events"]
            if pl.read_parquet(ws_path / f).filter(pl.col("campaign") == "spring").height == 0]
    manifest["events"] = keep
    (ws_path / "manifest.json").write_text(json.dumps(manifest))
    assert sent_events(big, "spring").height == 0
    result = send(big, smtp).as_dict()
    assert result["sent"] == 0 and result["skipped"] == len(active_emails(big))
    assert sent_events(big, "spring").height == len(active_emails(big))


# --- messages ----------------------------------------------------------------------------


@pytest.fixture
def small(ws, tmp_path) -> segengine.Workspace:
    write(tmp_path / "c.csv",
          "email,first_name,company,score,status\n"
          "ann@example.com,Ann,A&B <x>,3,\n"
          "bob@example.com,,\"Bob\r\nBcc: evil@example.com\",2.5,\n"
          "cat@example.com,Cat,Catco,1,unsubscribed\n")
    ws.import_contacts(tmp_path / "c.csv")
    ws.save_segment(EVERYONE)
    return ws


def parse(data: bytes):
    return email.parser.BytesParser(policy=email.policy.default).parsebytes(data)


def test_headers_bodies_and_merge_tags(small, smtp):
    result = send(small, smtp, subject="Héllo {{first_name}} at {{company}}", connections=1,
                  html="<p>{{first_name}} of {{company}} scored {{score}} ({{email_domain}})</p>",
                  unsubscribe_url="https://example.com/unsub?t={{token}}&e={{email}}")
    assert result.sent == 2  # cat is unsubscribed
    messages = {rcpt: parse(data) for rcpt, data in smtp.messages}
    ann, bob = messages["ann@example.com"], messages["bob@example.com"]
    assert ann["Subject"] == "Héllo Ann at A&B <x>"
    assert ann["To"] == "ann@example.com" and ann["From"] == "news@example.com"
    assert ann.get_content_type() == "multipart/alternative"
    text, html = (part.get_content() for part in ann.iter_parts())
    assert "<p>Ann of A&amp;B &lt;x&gt; scored 3 (example.com)</p>" in html  # escaped
    assert "Ann of A&B <x> scored 3 (example.com)" in text  # derived from the HTML, raw
    assert [p.get_content_type() for p in ann.iter_parts()] == ["text/plain", "text/html"]
    # an empty value renders as nothing; a line break in a value cannot add a header
    assert bob["Subject"] == "Héllo  at Bob Bcc: evil@example.com" and bob["Bcc"] is None
    assert "scored 2.5" in bob.get_body(("html",)).get_content()
    ids = {m["Message-ID"] for m in messages.values()}
    assert len(ids) == 2 and all(i.startswith("<") and i.endswith("@example.com>") for i in ids)
    assert ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = ann["List-Unsubscribe"]
    assert url.startswith("<https://example.com/unsub?t=") and url.endswith("&e=ann%40example.com>")
    tok = url.split("t=")[1].split("&")[0]
    assert verify_token(small.path, "spring", "ann@example.com", tok)
    assert not verify_token(small.path, "other", "ann@example.com", tok)
    assert tok not in bob["List-Unsubscribe"]
    assert (small.path / "send-secret").stat().st_mode & 0o777 == 0o600


def test_default_unsubscribe_is_a_mailto_to_the_sender(small, smtp):
    send(small, smtp, from_addr="Newsletter <news@example.com>", text="Hi {{first_name}}!\n")
    message = parse(smtp.messages[0][1])
    assert message["List-Unsubscribe"].startswith("<mailto:news@example.com?subject=unsubscribe%20")
    assert message["From"] == "Newsletter <news@example.com>"
    assert message.get_body(("plain",)).get_content().startswith("Hi ")


def test_templates_never_run_code():
    template = Template.parse("{{__class__}} and {{ first_name }}", "--html", "html")
    assert template.tags == ("__class__", "first_name")
    assert template.parts == ("", " and ", "")
    with pytest.raises(InputError, match=r"unknown merge tag \{\{__class__\}\}"):
        template.check(Schema.from_pairs([("first_name", "text")]))
    with pytest.raises(InputError, match="malformed merge tag"):
        Template.parse("{{ a.b }}", "--html", "html")
    # After a bar comes fallback text, never a filter: "upper" is rendered as it is
    # where the value is empty, and nothing is applied to a value that is there.
    filtered = Template.parse("{{ first_name | upper }}", "--html", "html")
    assert (filtered.tags, filtered.fallbacks) == (("first_name",), ("upper",))
    frame = pl.DataFrame({"first_name": ["ann", ""]})
    assert frame.select(filtered.expr()).to_series().to_list() == ["ann", "upper"]
    with pytest.raises(InputError, match="malformed merge tag"):
        Template.parse("{{ first_name | {{x}} }}", "--html", "html")
    assert text_of_html("<style>p{}</style><p>A &amp; B</p><a href='u'>x</a>") == "A & B\nx (u)\n"


def test_unknown_merge_tag_exits_2_before_any_connection(small, smtp, tmp_path):
    html = write(tmp_path / "m.html", "<p>Hi {{fist_name}}</p>")
    run = Cli(small.path)(
        "send", "c", "--segment", "everyone", "--subject", "x", "--html", html,
        "--from", "a@example.com", "--smtp", smtp.address, code=2)
    assert "{{fist_name}}" in run.stderr and "did you mean {{first_name}}" in run.stderr
    run = Cli(small.path)(
        "send", "c", "--segment", "everyone", "--subject", "{{nope}}", "--html", html,
        "--from", "a@example.com", "--smtp", smtp.address, code=2)
    assert "--subject" in run.stderr
    assert smtp.attempts == collections.Counter() and not (small.path / "sends").exists()


def test_dry_run_connects_to_nothing(small, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    html = write(tmp_path / "m.html", "<p>Hi {{first_name}}</p>")
    run = Cli(small.path)(
        "send", "c", "--segment", "everyone", "--subject", "Hi {{first_name}}", "--html", html,
        "--from", "a@example.com", "--smtp", f"127.0.0.1:{port}", "--dry-run", "--json")
    out = json.loads(run.stdout)
    assert (out["audience"], out["to_send"], out["dry_run"]) == (2, 2, True)
    assert "Subject: Hi Ann" in out["sample"]["message"]
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert not (small.path / "sends").exists()


# --- SMTP answers ------------------------------------------------------------------------


def test_permanent_rejection_bounces_the_contact(small, smtp):
    smtp.answers["ann@example.com"] = "550 5.1.1 no such user"
    result = send(small, smtp)
    assert (result.sent, result.bounced, result.failed) == (1, 1, 0)
    count = small.count("everyone")
    assert count["by_status"] == {"active": 1, "unsubscribed": 1, "bounced": 1}
    bounces = sent_events(small, "spring", "bounce")
    assert bounces.height == 1
    again = send(small, smtp)  # bounced: out of the audience now
    assert (again.audience, again.sent, again.skipped) == (1, 0, 1)


@pytest.mark.parametrize("answer, bounced", [
    ("500 Line too long.", False),                  # about the message, not the recipient
    ("554 5.7.1 message refused as spam", False),
    ("552 5.3.4 message too big", False),
    ("550 5.1.1 no such user", True),               # 5.1.x: the address
    ("552 5.2.2 mailbox full", True),               # 5.2.x: the mailbox
])
def test_a_refused_message_bounces_only_for_a_verdict_on_the_recipient(small, smtp, answer, bounced):
    smtp.content_answers["ann@example.com"] = answer
    result = send(small, smtp)
    assert (result.bounced, result.failed) == ((1, 0) if bounced else (0, 1))
    statuses = small.count("everyone")["by_status"]
    assert statuses["bounced"] == (1 if bounced else 0)
    assert statuses["active"] == (1 if bounced else 2)


def test_temporary_failure_is_retried_then_reported(small, smtp):
    smtp.answers["ann@example.com"] = "451 4.7.1 try again later"
    result = send(small, smtp, retries=3)
    assert (result.sent, result.failed, result.bounced) == (1, 1, 0)
    assert smtp.attempts["ann@example.com"] == 4  # the first try and 3 retries
    assert result.failures[0][0] == "ann@example.com" and "451" in result.failures[0][1]
    assert small.count("everyone")["by_status"]["active"] == 2  # a failure is no bounce
    del smtp.answers["ann@example.com"]
    again = send(small, smtp)  # a failed contact is tried again by the next run
    assert (again.sent, again.skipped) == (1, 1)
    assert smtp.counts()["ann@example.com"] == 1


def test_rate_caps_the_whole_send(big, smtp):
    segment = {"name": "some", "rules": [{"field": "email", "op": "contains", "value": "a"}]}
    n = big.count(segment)["sendable"]
    start = time.monotonic()
    result = big.send("rated", segment, subject="x", html="x", from_addr="a@example.com",
                      smtp=smtp.address, rate=100, connections=4, tls="none")
    elapsed = time.monotonic() - start
    assert result.sent == n > 100
    assert elapsed >= (n - 4) / 100 * 0.95
    assert elapsed < n / 100 + 3


def test_unsubscribe_while_sending_stops_their_messages(big, smtp, tmp_path):
    members = big.members("everyone", active_only=True).sort("contact_id")
    late = members["email"].to_list()[-120:]  # sent last: the send goes by contact id
    write(tmp_path / "late.csv", "email\n" + "\n".join(late) + "\n")
    outcome = {}

    def run():
        outcome["result"] = send(big, smtp, rate=60, connections=2)

    sender = threading.Thread(target=run)
    sender.start()
    time.sleep(0.5)
    other = segengine.open(big.path)  # like a second process: its own handle
    while True:
        try:
            changed = other.unsubscribe(emails=tmp_path / "late.csv").changed
            break
        except segengine.SegengineError:  # the sender's recorder held the lock a moment
            time.sleep(0.01)
    exited = time.monotonic()
    sender.join()
    result = outcome["result"]
    assert changed > 50  # the send had not reached them yet
    after = [rcpt for rcpt, at in smtp.handed if rcpt in set(late) and at > exited]
    assert len(after) <= 2  # at most the messages in flight on the 2 connections
    got = smtp.counts()
    assert result.skipped >= changed - 2
    assert result.sent + result.skipped == result.audience == len(members)
    assert all(n == 1 for n in got.values())


# --- killing the sender ----------------------------------------------------------------------


def send_cmd(ws: Path, address: str, html: Path, *extra: str,
             segment: str = "everyone") -> list[str]:
    tls = [] if "--tls" in extra else ["--tls", "none"]
    return [sys.executable, "-m", "segengine", "-w", str(ws), "send", "spring", "--segment",
            segment, "--subject", "Hi {{first_name}}", "--html", str(html), "--from",
            "news@example.com", "--smtp", address, "--json", *tls, *extra]


def run_send(ws: Path, address: str, html: Path, *extra: str, env=None,
             segment: str = "everyone") -> dict:
    done = subprocess.run(send_cmd(ws, address, html, *extra, segment=segment),
                          capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_mailbox(got: collections.Counter, active: set[str], uncertain: set[str], most: int = 1):
    assert set(got) <= active
    for address in active - uncertain:
        assert got[address] == 1, address
    for address in uncertain:
        assert got[address] <= most, address


@pytest.mark.slow
def test_kill_at_many_moments_then_resume(big, smtp, tmp_path):
    html = write(tmp_path / "m.html", HTML)
    active = active_emails(big)
    rng = random.Random(7)
    kills = mid_send = 0
    for i in range(12):
        proc = subprocess.Popen(send_cmd(big.path, smtp.address, html, "--rate", "60",
                                         "--connections", "2"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 4 == 0:  # while starting up or recording the previous run's deliveries
            time.sleep(rng.uniform(0.2, 1.5))
        else:  # after a random number of handed-over messages: mid-send on any machine
            seen, wanted = len(smtp.handed), rng.randint(1, 25)
            deadline = time.monotonic() + 30
            while len(smtp.handed) < seen + wanted and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            mid_send += proc.poll() is None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 10 and mid_send >= 7
    final = run_send(big.path, smtp.address, html)
    uncertain = set(final["uncertain"]["emails"])
    assert final["uncertain"]["count"] == len(uncertain) <= 2 * kills
    check_mailbox(smtp.counts(), active, uncertain)
    held = {a for a in uncertain if smtp.counts()[a] == 0}
    # the held-back uncertain ones are exactly those without a delivery or a journaled one
    assert final["sent"] + final["skipped"] + len(uncertain) == final["audience"] == len(active)
    retried = run_send(big.path, smtp.address, html, "--retry-uncertain")
    assert retried["sent"] == len(uncertain)
    check_mailbox(smtp.counts(), active, uncertain, most=2)
    assert all(smtp.counts()[a] == 1 for a in held)
    assert set(smtp.counts()) == active
    events = sent_events(big, "spring")
    assert events["contact_id"].n_unique() == len(active)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, uncertain_gets",
    [("send:after-250", 1), ("send:before-data", 0), ("files-synced", None), ("committed", None)],
)
def test_kill_at_named_points(big, smtp, tmp_path, point, uncertain_gets):
    html = write(tmp_path / "m.html", HTML)
    big.save_segment(FEW)
    active = set(big.members("few", active_only=True)["email"].to_list())
    env = {**os.environ, "SEGENGINE_CRASH_AT": point}
    killed = subprocess.run(send_cmd(big.path, smtp.address, html, "--connections", "1",
                                     segment="few"),
                            capture_output=True, env=env, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    resumed = run_send(big.path, smtp.address, html, segment="few")
    uncertain = resumed["uncertain"]["emails"]
    if uncertain_gets is None:  # killed while recording: deliveries were journaled
        assert uncertain == []
    else:  # the one message on the connection when it died
        assert len(uncertain) == 1 and smtp.counts()[uncertain[0]] == uncertain_gets
        assert read_state(journal_path(big.path, "spring")).uncertain.size == 1
    check_mailbox(smtp.counts(), active, set(uncertain))
    assert set(smtp.counts()) == active - {u for u in uncertain if uncertain_gets == 0}
    recorded = sent_events(big, "spring")["contact_id"].n_unique()
    assert recorded == resumed["sent"] + resumed["skipped"]


def test_journal_ignores_a_torn_last_line_and_cuts_it_off(tmp_path):
    from segengine.send.journal import Journal

    path = tmp_path / "sends" / "x.journal"
    journal = Journal(path, "x")
    for line in ("intent 1 10", "done 1 11", "intent 2 12", "intent 3 13", "bounce 3 14"):
        journal.wait_synced(journal.append(line))
    journal.close()
    with open(path, "ab") as f:
        f.write(b"done 2 1")  # torn: "done 2 17957..." (or "done 21 ...") never completed
    state = read_state(path)
    assert state.done.tolist() == [1] and state.done_at.tolist() == [11]
    assert state.uncertain.tolist() == [2] and state.bounced.tolist() == [3]
    journal = Journal(path, "x")
    journal.append("intent 4 15")
    journal.close()
    state = read_state(path)
    assert state.uncertain.tolist() == [2, 4] and state.done.tolist() == [1]


@pytest.mark.parametrize("campaign, email, candidate", [
    ("spring", "ann@example.com", "é" * 32),          # non-ASCII: compare_digest raises on it
    ("spring", "ann@example.com", None),
    ("spring", "ann@example.com", b"0123456789abcdef0123456789abcdef"),
    ("spring", "\ud800@example.com", "0" * 32),        # a lone surrogate cannot be encoded
    ("spring\x00", "ann@example.com", ""),
    (None, "ann@example.com", "0" * 32),
    ("spring", None, "0" * 32),
    ("spring", "ann@example.com", "0" * 10_000),
])
def test_verify_token_answers_false_never_raises(small, campaign, email, candidate):
    from segengine.send.tokens import workspace_secret

    workspace_secret(small.path)  # a workspace that has sent: the secret exists
    assert verify_token(small.path, campaign, email, candidate) is False


def test_verify_token_with_a_damaged_secret_is_false(tmp_path):
    from segengine.send.tokens import SECRET_FILE

    (tmp_path / SECRET_FILE).write_text("not hex\n")
    assert verify_token(tmp_path, "spring", "ann@example.com", "0" * 16) is False


@pytest.mark.parametrize("option", ["subject", "unsubscribe_url", "from_addr"])
def test_a_line_break_in_a_header_option_is_refused_before_sending(small, smtp, option):
    value = {"subject": "Hi\r\nBcc: evil@example.com",
             "unsubscribe_url": "https://x.example/u?t={{token}}\nBcc: evil@example.com",
             "from_addr": "news@example.com\r\nBcc: evil@example.com"}[option]
    with pytest.raises(InputError, match="must be one line"):
        send(small, smtp, **{option: value})
    assert smtp.attempts == {} and smtp.messages == []


def test_long_merge_values_never_make_a_line_over_998(small, smtp, tmp_path):
    long = "Bartholomew" * 300  # 3,300 characters, in the subject and the unsubscribe URL
    write(tmp_path / "long.csv", f"email,first_name\nann@example.com,{long}\n")
    small.import_contacts(tmp_path / "long.csv")
    result = send(small, smtp, subject="Hi {{first_name}}, " + "x" * 950,
                  unsubscribe_url="https://x.example/u?n={{first_name}}&t={{token}}")
    assert (result.sent, result.bounced, result.failed) == (2, 0, 0)
    for _, content in smtp.messages:
        assert max(len(line) for line in content.split(b"\r\n")) <= 998
