"""`segengine send` over TLS with a login, against real aiosmtpd servers.

Certificates come from a throwaway CA (trustme) trusted through ``--ca-file``; a
second CA plays the wrong one. Each server variant runs in the test process, as in
test_send.py, so its mailbox outlives a sender killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import test_send
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import Cli, write  # noqa: E402 - tests/ is on sys.path via conftest
from test_send import (
    EVERYONE,
    HTML,
    Mailbox,
    active_emails,
    check_mailbox,
    free_port,
    send_cmd,
    sent_events,
)

import segengine
from segengine.send.journal import journal_path, read_state

USER, PASSWORD = "mailer", "s3cret pass/word"
synth_ws, big = test_send.synth_ws, test_send.big  # the 300-contact workspace fixtures
# aiosmtpd warns about its implicit-TLS servers, which offer AUTH with TLS it cannot see
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class Relay(Mailbox):
    """A mailbox that also remembers logins (mechanism, user, accepted)."""

    def __init__(self) -> None:
        super().__init__()
        self.logins: list[tuple[str, str, bool]] = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # Offer PIPELINING (aiosmtpd handles pipelined commands but does not say so), so
        # these tests take the pipelined path and test_send.py the one command at a time.
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        ok = auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD
        with self.lock:
            self.logins.append((mechanism, auth_data.login.decode(), ok))
        return AuthResult(success=ok)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> tuple[trustme.CA, Path, Path]:
    """(the CA, its PEM file, the PEM file of an unrelated CA)."""
    root = tmp_path_factory.mktemp("ca")
    ca, wrong = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(root / "ca.pem")
    wrong.cert_pem.write_to_path(root / "wrong.pem")
    return ca, root / "ca.pem", root / "wrong.pem"


@pytest.fixture
def relay(ca):
    """A factory of servers: ``relay(tls="starttls"|"ssl"|"none", login=True, ...)``."""
    started = []

    def start(tls: str = "starttls", login: bool = True, mechanisms=("PLAIN", "LOGIN"),
              auth_require_tls: bool = True) -> Relay:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca[0].issue_cert("127.0.0.1", "localhost").configure_cert(context)
        box = Relay()
        port = free_port()
        kwargs = {}
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif tls == "ssl":
            kwargs.update(ssl_context=context)
            # aiosmtpd does not see implicit TLS as TLS when it decides to offer AUTH
            auth_require_tls = False
        if login:
            excluded = [m for m in ("PLAIN", "LOGIN") if m not in mechanisms]
            kwargs.update(authenticator=box.authenticate, auth_required=True,
                          auth_require_tls=auth_require_tls, auth_exclude_mechanism=excluded)
        controller = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        box.address = f"127.0.0.1:{port}"
        box.tls = tls
        return box

    yield start
    for controller in started:
        controller.stop()


@pytest.fixture
def small(ws, tmp_path) -> segengine.Workspace:
    write(tmp_path / "c.csv", "email,first_name\nann@example.com,Ann\nbob@example.com,\n")
    ws.import_contacts(tmp_path / "c.csv")
    ws.save_segment(EVERYONE)
    return ws


def cli_send(ws: segengine.Workspace, box: Relay, *extra: str, code: int = 0, password=PASSWORD,
             monkeypatch=None):
    html = write(Path(ws.path).parent / "m.html", "<p>Hi {{first_name|there}}</p>")
    if monkeypatch is not None:
        if password is None:
            monkeypatch.delenv("SEGENGINE_SMTP_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("SEGENGINE_SMTP_PASSWORD", password)
    return Cli(ws.path)("send", "c", "--segment", "everyone", "--subject", "Hi {{first_name}}",
                        "--html", html, "--from", "news@example.com", "--smtp", box.address,
                        *extra, "--json", code=code)


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_tls_and_login_deliver(small, relay, ca, tls, mechanism, monkeypatch):
    box = relay(tls, mechanisms=(mechanism,))
    extra = ["--ca-file", str(ca[1]), "--user", USER]
    if tls == "ssl":
        extra += ["--tls", "ssl"]  # starttls is the default
    run = cli_send(small, box, *extra, monkeypatch=monkeypatch)
    assert '"sent": 2' in run.stdout
    assert sorted(box.counts()) == ["ann@example.com", "bob@example.com"]
    assert {m for m, _, _ in box.logins} == {mechanism}
    assert all(ok for _, _, ok in box.logins)
    # the fallback renders where the value is empty
    bodies = {rcpt: data for rcpt, data in box.messages}
    assert b"Hi Ann" in bodies["ann@example.com"] and b"Hi there" in bodies["bob@example.com"]
    assert PASSWORD.encode() not in (small.path / "sends").joinpath(
        journal_path(small.path, "c").name).read_bytes()


def test_pipelined_rejections_bounce_and_fail(small, relay, ca):
    box = relay("ssl", login=False)
    probe = smtplib.SMTP_SSL(*box.address.split(":"),
                             context=ssl.create_default_context(cafile=str(ca[1])))
    assert probe.ehlo()[0] == 250 and probe.has_extn("pipelining")  # the path under test
    probe.quit()
    box.answers["ann@example.com"] = "550 5.1.1 no such user"
    result = small.send("c", "everyone", subject="x", html="x", from_addr="news@example.com",
                        smtp=box.address, tls="ssl", ca_file=str(ca[1]), connections=1)
    assert (result.sent, result.bounced, result.failed) == (1, 1, 0)
    assert list(box.counts()) == ["bob@example.com"]
    box.answers["bob@example.com"] = "451 4.7.1 later"
    again = small.send("d", "everyone", subject="x", html="x", from_addr="news@example.com",
                       smtp=box.address, tls="ssl", ca_file=str(ca[1]), retries=1, backoff=0.01)
    assert (again.sent, again.failed) == (0, 1) and box.attempts["bob@example.com"] == 3


def test_a_wrong_password_exits_1_before_anything_is_sent(small, relay, ca, monkeypatch):
    box = relay("starttls")
    run = cli_send(small, box, "--ca-file", str(ca[1]), "--user", USER, code=1,
                   password="not it", monkeypatch=monkeypatch)
    assert "login" in run.stderr and "handshake" not in run.stderr
    assert "not it" not in run.stderr + run.stdout
    assert box.logins == [("PLAIN", USER, False)] and box.handed == []
    state = read_state(journal_path(small.path, "c"))
    assert state.done.size == state.uncertain.size == 0


def test_a_wrong_ca_exits_1_naming_the_handshake(small, relay, ca, monkeypatch):
    for tls in ("starttls", "ssl"):
        box = relay(tls)
        run = cli_send(small, box, "--tls", tls, "--ca-file", str(ca[2]), "--user", USER,
                       code=1, monkeypatch=monkeypatch)
        assert "TLS handshake" in run.stderr and "certificate verify failed" in run.stderr
        assert PASSWORD not in run.stderr
        assert box.logins == [] and box.handed == []
    # without --ca-file the system's CAs do not know the throwaway CA either
    run = cli_send(small, relay("starttls"), "--user", USER, code=1, monkeypatch=monkeypatch)
    assert "TLS handshake" in run.stderr and "--ca-file" in run.stderr


def test_a_server_without_starttls_is_refused_by_default(small, relay, ca):
    box = relay("none", login=False)
    run = cli_send(small, box, code=1)
    assert "does not offer STARTTLS" in run.stderr and "--tls none" in run.stderr
    assert box.handed == []
    # implicit TLS against a plain server: the handshake fails, named as such
    run = cli_send(small, box, "--tls", "ssl", "--ca-file", str(ca[1]), code=1)
    assert "TLS handshake" in run.stderr
    # asked for explicitly, plain SMTP works
    run = cli_send(small, box, "--tls", "none")
    assert '"sent": 2' in run.stdout and len(box.counts()) == 2


def test_login_over_plain_smtp_only_when_asked(small, relay, monkeypatch):
    box = relay("none", auth_require_tls=False)
    run = cli_send(small, box, "--tls", "none", "--user", USER, monkeypatch=monkeypatch)
    assert '"sent": 2' in run.stdout and box.logins[0][2]


def test_a_relay_that_wants_a_login_is_named_before_sending(small, relay, ca):
    box = relay("starttls")
    run = cli_send(small, box, "--ca-file", str(ca[1]), code=1)
    assert "requires a login" in run.stderr and "--user" in run.stderr
    assert box.handed == []


def test_user_without_password_exits_2(small, relay, ca, monkeypatch):
    box = relay("starttls")
    run = cli_send(small, box, "--ca-file", str(ca[1]), "--user", USER, code=2,
                   password=None, monkeypatch=monkeypatch)
    assert "SEGENGINE_SMTP_PASSWORD" in run.stderr and box.handed == [] and box.logins == []


def test_bad_tls_options_exit_2(small, relay, ca, tmp_path):
    box = relay("none", login=False)
    run = cli_send(small, box, "--tls", "none", "--ca-file", str(ca[1]), code=2)
    assert "--ca-file" in run.stderr
    junk = write(tmp_path / "junk.pem", "not a certificate\n")
    run = cli_send(small, box, "--ca-file", str(junk), code=2)
    assert "--ca-file" in run.stderr and str(junk) in run.stderr
    run = cli_send(small, box, "--tls", "maybe", code=2)
    assert "--tls" in run.stderr


def test_merge_tag_fallbacks_everywhere(small, relay, ca):
    box = relay("ssl", login=False)
    result = small.send("c", "everyone", subject="Hi {{first_name|friend}}",
                        html="<p>{{first_name| dear reader }}</p>", text="T {{first_name|you}}\n",
                        unsubscribe_url="https://e.example/u?n={{first_name|none}}&t={{token}}",
                        from_addr="news@example.com", smtp=box.address, tls="ssl",
                        ca_file=str(ca[1]))
    assert result.sent == 2
    data = dict(box.messages)["bob@example.com"]
    assert b"Subject: Hi friend" in data and b"dear reader</p>" in data
    assert b"T you" in data and b"u?n=none&t=" in data
    with pytest.raises(segengine.SegengineError, match=r"unknown merge tag \{\{firstname\}\}"):
        small.send("c", "everyone", subject="Hi {{firstname|friend}}", html="x",
                   from_addr="news@example.com", smtp=box.address, tls="ssl", ca_file=str(ca[1]))


@pytest.mark.slow
def test_kill_mid_send_over_tls_then_resume(big, relay, ca, tmp_path):
    box = relay("starttls")
    html = write(tmp_path / "m.html", HTML)
    active = active_emails(big)
    env = {**os.environ, "SEGENGINE_SMTP_PASSWORD": PASSWORD}
    tls = ("--tls", "starttls", "--ca-file", str(ca[1]), "--user", USER)
    kills = 0
    for wanted in (5, 17, 40):
        proc = subprocess.Popen(send_cmd(big.path, box.address, html, *tls, "--rate", "60",
                                         "--connections", "2"),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = len(box.handed)
        deadline = time.monotonic() + 30
        while len(box.handed) < seen + wanted and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        assert proc.poll() is None  # killed mid-send, not after
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    done = subprocess.run(send_cmd(big.path, box.address, html, *tls), env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import json

    final = json.loads(done.stdout)
    uncertain = set(final["uncertain"]["emails"])
    assert len(uncertain) <= 2 * kills
    check_mailbox(box.counts(), active, uncertain)
    assert final["sent"] + final["skipped"] + len(uncertain) == final["audience"] == len(active)
    assert read_state(journal_path(big.path, "spring")).uncertain.size == len(uncertain)
    # every delivery but the uncertain ones is recorded, each once
    recorded = sent_events(big, "spring")["contact_id"]
    assert recorded.n_unique() == recorded.len() == len(active) - len(uncertain)
