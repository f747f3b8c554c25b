"""The bytes of one message: headers and a multipart/alternative text + HTML body.

Messages are assembled directly as bytes instead of through `email.message`, which
costs far more per message than the SMTP exchange at the throughput a send needs.
What is built is plain RFC 5322 / MIME, checked by parsing it back with
`email.parser` in the tests: CRLF line ends, UTF-8 bodies in quoted-printable (so
every line stays short and 7-bit), RFC 2047 encoded subjects when they are not
plain ASCII, and a boundary beginning with ``==``, which quoted-printable output can
never contain.
"""

from __future__ import annotations

import binascii
import email.utils
import functools
import os
import re
import secrets
import time
from dataclasses import dataclass
from email.header import Header
from urllib.parse import quote

from .. import addresses
from ..errors import InputError

CRLF = "\r\n"
#: URL characters left as they are when a rendered unsubscribe URL holds non-ASCII text
URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"
PLAIN_HEADER_RE = re.compile(r"[\x20-\x7e]{0,900}\Z")


def body_part(content_type: str, text: str) -> bytes:
    """One MIME part: UTF-8, quoted-printable, CRLF line ends."""
    return PART_HEADS[content_type] + body_bytes(text)


def body_bytes(text: str) -> bytes:
    """A body in quoted-printable with CRLF line ends, ending with a line end."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"  # b2a_qp picks CRLF output from the first line end it sees
    return binascii.b2a_qp(text.replace("\n", CRLF).encode(), istext=True)


PART_HEADS = {
    kind: (
        f'Content-Type: {kind}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
    ).encode()
    for kind in ("text/plain", "text/html")
}


class _Clock:
    """The Date header, formatted once per second rather than once per message."""

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def date(self) -> str:
        now = int(time.time())
        if now != self.second:  # a race between threads only formats the same second twice
            self.text, self.second = email.utils.formatdate(now, usegmt=True), now
        return self.text


CLOCK = _Clock()


def subject_header(subject: str) -> str:
    if PLAIN_HEADER_RE.match(subject):
        return f"Subject: {subject}{CRLF}"
    encoded = Header(subject, "utf-8", header_name="Subject").encode(linesep=CRLF)
    return f"Subject: {encoded}{CRLF}"


#: characters of a URL per header line: RFC 5322 allows 998 a line
URL_LINE = 900


def url_header_value(url: str) -> str:
    """The URL for ``List-Unsubscribe: <...>``, percent-encoded where not ASCII and
    folded every `URL_LINE` characters (RFC 2369: white space inside the angle brackets
    is folding, and clients ignore it), so a long merge value never makes a line too long."""
    url = url if url.isascii() else quote(url, safe=URL_SAFE)
    if len(url) <= URL_LINE:
        return url
    return (CRLF + " ").join(url[i:i + URL_LINE] for i in range(0, len(url), URL_LINE))


@dataclass(frozen=True)
class Sender:
    """What every message of a send shares: the sender, the Message-ID domain, the boundary."""

    header: str  # the From: header value as given (display name allowed)
    address: str  # the envelope sender (MAIL FROM)
    domain: str
    boundary: str

    @classmethod
    def parse(cls, from_addr: str) -> Sender:
        name, address = email.utils.parseaddr(from_addr)
        if not address or addresses.problem(addresses.normalise(address)) is not None:
            raise InputError(
                f"--from: {from_addr!r} is not an email address: use name@example.com "
                "or 'Name <name@example.com>'"
            )
        header = email.utils.formataddr((name, address), charset="utf-8") if name else address
        boundary = "==segengine_" + secrets.token_hex(12)
        return cls(header, address, address.rsplit("@", 1)[1], boundary)

    def message(
        self, to: str, subject: str, text: str, html: str, unsubscribe_url: str
    ) -> tuple[str, bytes]:
        """(Message-ID, the message as bytes) for one contact."""
        message_id = f"<{os.urandom(16).hex()}@{self.domain}>"
        head = (
            f"{self.from_line}"
            f"To: {to}{CRLF}"
            f"{subject_header(subject)}"
            f"Date: {CLOCK.date()}{CRLF}"
            f"Message-ID: {message_id}{CRLF}"
            f"List-Unsubscribe: <{url_header_value(unsubscribe_url)}>{CRLF}"
        )
        return message_id, b"".join(
            (head.encode(), self.mime_head, PART_HEADS["text/plain"], body_bytes(text),
             self.delimiter, PART_HEADS["text/html"], body_bytes(html), self.closing)
        )

    # The parts every message of a send shares, rendered once per send.

    @functools.cached_property
    def from_line(self) -> str:
        return f"From: {self.header}{CRLF}"

    @functools.cached_property
    def mime_head(self) -> bytes:
        return (
            f"List-Unsubscribe-Post: List-Unsubscribe=One-Click{CRLF}"
            f"MIME-Version: 1.0{CRLF}"
            f'Content-Type: multipart/alternative; boundary="{self.boundary}"{CRLF}{CRLF}'
        ).encode() + self.delimiter

    @functools.cached_property
    def delimiter(self) -> bytes:
        return f"--{self.boundary}{CRLF}".encode()

    @functools.cached_property
    def closing(self) -> bytes:
        return f"--{self.boundary}--{CRLF}".encode()
