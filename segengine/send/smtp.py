"""Delivering one message over one SMTP connection, with the journal steps around it.

A connection is opened by a `Relay`: TLS (STARTTLS by default, implicit TLS, or none
when asked for) with the certificate verified, then the login (AUTH PLAIN or LOGIN).
`probe` does that once before a send, so a bad certificate or login stops the send
before any message, naming the step.

A delivery is ``MAIL FROM``, ``RCPT TO``, ``DATA`` and the content; the three commands
go out in one packet when the server offers PIPELINING. The ``intent`` line is
appended to the journal before ``MAIL FROM`` and its flush is awaited (done by this
connection or shared with another's) just before the content is sent. What each
answer means:

=========================  ==========================================================
answer                     outcome
=========================  ==========================================================
250 after the content      delivered (``done``)
5xx to RCPT                bounced: permanent refusal of this recipient (``bounce``)
5xx to the content         bounced with an enhanced code 5.1.x/5.2.x (address, mailbox);
                           else failed: the message was refused, not the recipient
5xx to MAIL or DATA        failed: the server refuses the sender, not the recipient
(no longer active)         dropped before an attempt: the guard says no
4xx, refused/lost          retried with exponential backoff on a fresh connection,
connection before content  then failed (``fail``: a later send tries again)
connection lost after the  uncertain: the server may have accepted it; the intent
content was sent           stays and only ``--retry-uncertain`` sends it again
=========================  ==========================================================
"""

from __future__ import annotations

import base64
import os
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from .. import addresses
from ..errors import InputError, SegengineError
from ..store.workspace import crash_point
from .journal import Journal

PERIOD_RE = re.compile(rb"(?m)^\.")
NETWORK_ERRORS = (smtplib.SMTPException, OSError)
TLS_MODES = ("starttls", "ssl", "none")
#: the only place the SMTP password is read from (never the command line: other users
#: of the machine can read a process's arguments)
PASSWORD_ENV = "SEGENGINE_SMTP_PASSWORD"


class Outcome(Enum):
    DELIVERED = "done"
    BOUNCED = "bounce"
    FAILED = "fail"
    UNCERTAIN = "uncertain"
    DROPPED = "dropped"  # no longer active: not sent


@dataclass(frozen=True, slots=True)
class Delivery:
    contact_id: int
    email: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    at_us: int  # when the outcome was known (unix microseconds)
    detail: str = ""


class _Temporary(Exception):
    """A failure worth retrying: nothing reached the recipient."""


class _Final(Exception):
    def __init__(self, outcome: Outcome, detail: str):
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def now_us() -> int:
    return time.time_ns() // 1000


def parse_server(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--smtp: {spec!r} is not HOST:PORT (e.g. localhost:25)")
    return host, int(port)


class RateLimiter:
    """Caps the whole send at `rate` messages per second (shared by every connection).

    A virtual-clock token bucket: each message reserves the next free slot, and a
    burst of at most `burst` messages may go at once after an idle moment.
    """

    def __init__(self, rate: float | None, burst: int = 1):
        self.interval = 1.0 / rate if rate else 0.0
        self.slack = self.interval * max(burst - 1, 0)
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now - self.slack)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class HandshakeFailed(SegengineError):
    """The TLS handshake failed or the server does not offer STARTTLS: nothing was sent."""


class LoginFailed(SegengineError):
    """The server refused the login (or offers none we can use): nothing was sent."""


@dataclass(frozen=True)
class Relay:
    """Where and how to connect: the server, the TLS mode, the CA to trust, the login.

    The password never appears in a repr, an error message or the journal.
    """

    host: str
    port: int
    tls: str = "starttls"  # starttls | ssl | none
    ca_file: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    @classmethod
    def check(cls, host: str, port: int, *, tls: str, ca_file: str | None, user: str | None,
              password: str | None, timeout: float) -> Relay:
        """The connection settings, checked before anything connects (bad input exits 2)."""
        if tls not in TLS_MODES:
            raise InputError(f"--tls: {tls!r} is not one of {', '.join(TLS_MODES)}")
        if ca_file is not None and tls == "none":
            raise InputError("--ca-file has no effect with --tls none: drop one of them")
        if user is not None:
            if not user or any(c in user for c in "\r\n\0"):
                raise InputError("--user: give the login name as one line of text")
            if password is None:
                password = os.environ.get(PASSWORD_ENV)
            if not password:
                raise InputError(
                    f"--user {user}: put the password in the environment variable {PASSWORD_ENV} "
                    "(it is never read from the command line)"
                )
        context = None
        if tls != "none":
            # Certificates and host names are always verified: a relay that cannot be
            # verified could be anybody, and it would receive the login and every message.
            try:
                context = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise InputError(
                    f"--ca-file: cannot load CA certificates from {ca_file}: {exc}; "
                    "give a PEM file of the CA that signed the relay's certificate"
                ) from None
        return cls(host, port, tls, ca_file, user, password if user else None, timeout, context)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def connect(self, strict: bool = False) -> smtplib.SMTP:
        """An open, greeted, encrypted (unless ``none``) and logged-in connection.

        Failures that will not go away by retrying (no STARTTLS, a certificate that does
        not verify, a refused login) raise `HandshakeFailed` or `LoginFailed`; with
        `strict` (the probe before a send) every failure of the TLS or login step does,
        so the user learns which step failed before any message goes out.
        """
        stage = "connect"
        smtp: smtplib.SMTP | None = None
        try:
            if self.tls == "ssl":
                stage = "tls"
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                        context=self.context)
                stage = "connect"
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if self.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise HandshakeFailed(
                        f"--tls starttls: the SMTP server {self.address} does not offer STARTTLS, "
                        "so nothing was sent: use --tls ssl for a port with implicit TLS "
                        "(usually 465), or --tls none to send unencrypted to a relay you trust"
                    )
                stage = "tls"
                smtp.starttls(context=self.context)
                stage = "connect"
                smtp.ehlo()
            if self.user is not None:
                stage = "login"
                self._login(smtp)
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return smtp
        except (HandshakeFailed, LoginFailed):
            _close(smtp)
            raise
        except NETWORK_ERRORS as exc:
            _close(smtp)
            detail = self._scrub(str(exc) or type(exc).__name__)
            if stage == "tls" and self.tls == "ssl" and not isinstance(exc, ssl.SSLError):
                stage = "connect"  # refused or unreachable: no handshake was tried
            permanent = isinstance(exc, ssl.SSLCertVerificationError) or (
                isinstance(exc, smtplib.SMTPAuthenticationError) and 500 <= exc.smtp_code < 600
            )
            # Before the send (strict) nothing has gone out; during it, the send stops.
            outcome = "so nothing was sent" if strict else "so the send stopped"
            if stage == "tls" and (strict or permanent):
                hint = "" if self.ca_file else " (a relay with a private CA: --ca-file CA.pem)"
                raise HandshakeFailed(
                    f"--tls {self.tls}: the TLS handshake with {self.address} failed, "
                    f"{outcome}: {detail}{hint}"
                ) from None
            if stage == "login" and (strict or permanent):
                raise LoginFailed(
                    f"--user {self.user}: the SMTP server {self.address} refused the login, "
                    f"{outcome}: {detail}"
                ) from None
            raise

    def _login(self, smtp: smtplib.SMTP) -> None:
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        smtp.user, smtp.password = self.user, self.password
        for mechanism, answer in (("PLAIN", smtp.auth_plain), ("LOGIN", smtp.auth_login)):
            if mechanism in offered:
                smtp.auth(mechanism, answer)
                return
        raise LoginFailed(
            f"--user {self.user}: the SMTP server {self.address} offers "
            + (f"login only by {', '.join(offered)}" if offered else "no login (AUTH)")
            + "; segengine logs in with AUTH PLAIN or LOGIN, after TLS"
        )

    def _scrub(self, text: str) -> str:
        """A server may echo what it got: never let the password reach a message."""
        if self.password:
            plain = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
            for secret in (self.password, plain, base64.b64encode(self.password.encode()).decode()):
                text = text.replace(secret, "***")
        return text


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        try:
            smtp.close()
        except NETWORK_ERRORS:
            pass


class Connection:
    """One SMTP connection, opened on first use and reopened after a failure."""

    def __init__(self, relay: Relay, sender: str, *, retries: int, backoff: float):
        self.relay, self.sender = relay, sender
        self.retries, self.backoff = retries, backoff
        self.smtp: smtplib.SMTP | None = None
        self._mail = f"MAIL FROM:<{sender}>\r\n".encode()
        self._pipelining = False
        self._ascii_sender = sender.isascii()
        self._replies: Replies
        self._crash_points = "SEGENGINE_CRASH_AT" in os.environ  # crash tests only

    def _open(self) -> smtplib.SMTP:
        if self.smtp is None:
            smtp = self.relay.connect()
            self._pipelining = smtp.has_extn("pipelining")
            self._replies = Replies(smtp)
            self.smtp = smtp
        return self.smtp

    def _drop(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.close()
            finally:
                self.smtp = None

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.quit()
            except NETWORK_ERRORS:
                pass
            self._drop()

    def deliver(self, item: Delivery, journal: Journal, wanted: Callable[[], bool]) -> Result:
        """Deliver with retries, journaling each step.

        `wanted()` is asked right before every attempt (the contact may have been
        unsubscribed meanwhile, also during a backoff); when it says no, the contact is
        dropped and nothing more is handed to the server.
        """
        seq = None
        detail = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            if not wanted():
                if seq is not None:  # settles the intent: not delivered
                    journal.append(f"fail {item.contact_id} {now_us()}")
                return Result(Outcome.DROPPED, now_us())
            if seq is None:
                seq = journal.append(f"intent {item.contact_id} {now_us()}")
            try:
                self._attempt(item, journal, seq)
                at = now_us()
                journal.settle(f"done {item.contact_id} {at}")
                return Result(Outcome.DELIVERED, at)
            except _Temporary as exc:
                detail = str(exc)
            except (HandshakeFailed, LoginFailed):
                # The relay changed its mind mid-send (certificate, password): no later
                # message would get through either, so the whole send stops.
                journal.append(f"fail {item.contact_id} {now_us()}")
                raise
            except _Final as exc:
                if exc.outcome is not Outcome.UNCERTAIN:
                    journal.append(f"{exc.outcome.value} {item.contact_id} {now_us()}")
                return Result(exc.outcome, now_us(), exc.detail)
        journal.append(f"fail {item.contact_id} {now_us()}")
        return Result(Outcome.FAILED, now_us(), detail)

    def _attempt(self, item: Delivery, journal: Journal, seq: int) -> None:
        # The commands are written and the answers read here rather than through
        # smtplib's mail()/rcpt()/getreply(): those parse both addresses again with
        # email.utils for every message, which cost more CPU than everything else.
        # The recipient is the stored address byte for byte, never a parse of it; one
        # the address rule refuses (stored before the rule was strict) is not sent to.
        why = addresses.stored_problem(item.email)
        if why is not None:
            raise _Final(Outcome.FAILED, f"not sent: the stored address {item.email!r} {why}")
        try:
            smtp = self._open()
            mail = self._mail
            if not (item.email.isascii() and self._ascii_sender):
                if not smtp.has_extn("smtputf8"):
                    raise _Final(Outcome.FAILED, "the server does not accept non-ASCII addresses")
                mail = mail[:-2] + b" SMTPUTF8\r\n"
            rcpt = b"RCPT TO:<" + item.email.encode() + b">\r\n"
            sock, replies = smtp.sock, self._replies
            if self._pipelining:
                # RFC 2920: the three commands in one packet, one round trip. DATA is not
                # the content: the journal's sync is still awaited before the content.
                sock.sendall(mail + rcpt + b"DATA\r\n")
                mailed, rcpted, data = replies.read(), replies.read(), replies.read()
                if data[0] == 354 and not (_ok(mailed) and _ok(rcpted)):
                    # A server that takes DATA without a sender or recipient: this
                    # connection cannot be brought back to a clean state.
                    self._drop()
                self._expect(mailed, "MAIL FROM", Outcome.FAILED)
                self._expect(rcpted, "RCPT TO", Outcome.BOUNCED)
                journal.wait_synced(seq)
                if self._crash_points:
                    crash_point("send:before-data")
            else:
                sock.sendall(mail)
                self._expect(replies.read(), "MAIL FROM", Outcome.FAILED)
                sock.sendall(rcpt)
                self._expect(replies.read(), "RCPT TO", Outcome.BOUNCED)
                journal.wait_synced(seq)
                if self._crash_points:
                    crash_point("send:before-data")
                sock.sendall(b"DATA\r\n")
                data = replies.read()
            if data[0] != 354:
                self._expect(data, "DATA", Outcome.FAILED)
            content = item.data
            if content.startswith(b".") or b"\n." in content:  # dot-stuffing, rarely needed
                content = PERIOD_RE.sub(b"..", content)
            sock.sendall(content + b".\r\n")
        except (_Temporary, _Final):
            raise
        except NETWORK_ERRORS as exc:
            # Nothing complete reached the server: the content's final "." was not sent.
            self._drop()
            raise _Temporary(f"connection: {exc}") from None
        try:
            answer = replies.read()
        except NETWORK_ERRORS as exc:
            self._drop()
            raise _Final(Outcome.UNCERTAIN, f"no answer after the content: {exc}") from None
        if self._crash_points:
            crash_point("send:after-250")
        self._expect(answer, "end of DATA", _content_refusal(answer))

    def _expect(self, answer: tuple[int, bytes], step: str, permanent: Outcome) -> None:
        code, reply = answer
        if 200 <= code < 300:
            return
        text = f"{step}: {code} {reply.decode(errors='replace')}"
        if self.smtp is not None:
            try:
                if code == 421:  # the server is closing the connection
                    self._drop()
                else:
                    self.smtp.rset()
            except NETWORK_ERRORS:
                self._drop()
        if 500 <= code < 600:
            raise _Final(permanent, text)
        raise _Temporary(text)


#: enhanced status codes (RFC 3463) of a refused message that are a verdict on the
#: recipient: 5.1.x the address, 5.2.x the mailbox
RECIPIENT_VERDICT = re.compile(rb"^\s*5\.[12]\.\d{1,3}\b")


def _content_refusal(answer: tuple[int, bytes]) -> Outcome:
    """A 5xx after the content bounces the contact only when its enhanced code says the
    address or mailbox is bad; "line too long", spam or size refusals are about this
    message, and a bounce is forever."""
    return Outcome.BOUNCED if RECIPIENT_VERDICT.match(answer[1]) else Outcome.FAILED


def _ok(answer: tuple[int, bytes]) -> bool:
    return 200 <= answer[0] < 300


class Replies:
    """Reads the server's answers straight from the socket, for less CPU per message.

    Takes over from smtplib's reader once the connection is set up (greeting, TLS and
    login answered, so nothing is left in smtplib's buffer); pipelined answers that
    arrive in one packet are split here.
    """

    def __init__(self, smtp: smtplib.SMTP):
        self.smtp = smtp
        self.buffer = b""

    def read(self) -> tuple[int, bytes]:
        """One answer, possibly of several lines: (code, text)."""
        lines = []
        while True:
            end = self.buffer.find(b"\n")
            while end < 0:
                if len(self.buffer) > smtplib._MAXLINE:
                    self.smtp.close()
                    raise smtplib.SMTPResponseException(500, "Line too long.")
                chunk = self.smtp.sock.recv(65536)
                if not chunk:
                    self.smtp.close()
                    raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
                self.buffer += chunk
                end = self.buffer.find(b"\n")
            line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                break
        try:
            code = int(line[:3])
        except ValueError:
            code = -1
        return code, b"\n".join(lines)


def probe(relay: Relay, sender: str) -> None:
    """Connect, encrypt and log in once before a send starts, so a wrong --smtp, --tls,
    --ca-file or login fails at once, clearly, and before any message is sent."""
    try:
        smtp = relay.connect(strict=True)
    except NETWORK_ERRORS as exc:
        raise SegengineError(
            f"--smtp: cannot talk to the SMTP server {relay.address}: {relay._scrub(str(exc))}"
        ) from None
    try:
        # A relay that wants a login says so only at MAIL FROM: ask once, not per message.
        code = smtp.docmd("MAIL", f"FROM:<{sender}>")[0] if sender.isascii() else 0
        if code == 530 and relay.user is None:
            raise LoginFailed(
                f"the SMTP server {relay.address} requires a login, so nothing was sent: "
                f"give --user NAME and the password in ${PASSWORD_ENV}"
            )
        smtp.rset()
        smtp.quit()
    except NETWORK_ERRORS:
        _close(smtp)
