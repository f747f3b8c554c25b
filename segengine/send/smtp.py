"""Delivering one message over one SMTP connection, with the journal steps around it.

A delivery is ``MAIL FROM``, ``RCPT TO``, ``DATA`` and the content. The ``intent``
line is appended to the journal before ``MAIL FROM`` and its fsync is awaited just
before the content is sent, so the disk flush overlaps two network round trips. What
each answer means:

=========================  ==========================================================
answer                     outcome
=========================  ==========================================================
250 after the content      delivered (``done``)
5xx to RCPT or content     bounced: permanent refusal of this recipient (``bounce``)
5xx to MAIL or DATA        failed: the server refuses the sender, not the recipient
(no longer active)         dropped before an attempt: the guard says no
4xx, refused/lost          retried with exponential backoff on a fresh connection,
connection before content  then failed (``fail``: a later send tries again)
connection lost after the  uncertain: the server may have accepted it; the intent
content was sent           stays and only ``--retry-uncertain`` sends it again
=========================  ==========================================================
"""

from __future__ import annotations

import re
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from ..store.workspace import crash_point
from .journal import Journal

PERIOD_RE = re.compile(rb"(?m)^\.")
NETWORK_ERRORS = (smtplib.SMTPException, OSError)


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
    from ..errors import InputError

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


class Connection:
    """One SMTP connection, opened on first use and reopened after a failure."""

    def __init__(self, host: str, port: int, sender: str, *, timeout: float,
                 retries: int, backoff: float):
        self.host, self.port, self.sender = host, port, sender
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.smtp: smtplib.SMTP | None = None

    def _open(self) -> smtplib.SMTP:
        if self.smtp is None:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            smtp.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
                journal.append(f"done {item.contact_id} {at}")
                return Result(Outcome.DELIVERED, at)
            except _Temporary as exc:
                detail = str(exc)
            except _Final as exc:
                if exc.outcome is not Outcome.UNCERTAIN:
                    journal.append(f"{exc.outcome.value} {item.contact_id} {now_us()}")
                return Result(exc.outcome, now_us(), exc.detail)
        journal.append(f"fail {item.contact_id} {now_us()}")
        return Result(Outcome.FAILED, now_us(), detail)

    def _attempt(self, item: Delivery, journal: Journal, seq: int) -> None:
        try:
            smtp = self._open()
            options = ["SMTPUTF8"] if not item.email.isascii() else []
            if options and not smtp.has_extn("smtputf8"):
                raise _Final(Outcome.FAILED, "the server does not accept non-ASCII addresses")
            self._expect(smtp.mail(self.sender, options), "MAIL FROM", Outcome.FAILED)
            self._expect(smtp.rcpt(item.email), "RCPT TO", Outcome.BOUNCED)
            journal.wait_synced(seq)
            crash_point("send:before-data")
            code, reply = smtp.docmd("data")
            if code != 354:
                self._expect((code, reply), "DATA", Outcome.FAILED)
            smtp.send(PERIOD_RE.sub(b"..", item.data) + b".\r\n")
        except (_Temporary, _Final):
            raise
        except NETWORK_ERRORS as exc:
            # Nothing complete reached the server: the content's final "." was not sent.
            self._drop()
            raise _Temporary(f"connection: {exc}") from None
        try:
            answer = smtp.getreply()
        except NETWORK_ERRORS as exc:
            self._drop()
            raise _Final(Outcome.UNCERTAIN, f"no answer after the content: {exc}") from None
        crash_point("send:after-250")
        self._expect(answer, "end of DATA", Outcome.BOUNCED)

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


def probe(host: str, port: int, timeout: float) -> None:
    """Connect once before a send starts, so a wrong --smtp fails at once and clearly."""
    from ..errors import SegengineError

    try:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
        smtp.ehlo()
        smtp.quit()
    except NETWORK_ERRORS as exc:
        raise SegengineError(
            f"--smtp: cannot talk to the SMTP server {host}:{port}: {exc}"
        ) from None
