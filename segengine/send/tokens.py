"""Unsubscribe tokens: an HMAC of campaign and email under a per-workspace secret.

The secret lives in the workspace (``send-secret``, 32 random bytes as hex, mode
0600), created once by the first send and never changed, so a token in a message
sent today still verifies next year. An unsubscribe endpoint recomputes the token
for the (campaign, email) it is given and compares with `verify_token`; the token
alone reveals nothing about the address.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from ..store.workspace import fsync_path

SECRET_FILE = "send-secret"
TOKEN_CHARS = 32


def workspace_secret(root: Path) -> bytes:
    """The workspace's send secret, created (durably, 0600) if it does not exist yet."""
    path = root / SECRET_FILE
    if not path.exists():
        tmp = root / f".{SECRET_FILE}.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() refuses to replace: when two sends race, the first secret wins for both.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
        fsync_path(root)
    return bytes.fromhex(path.read_text().strip())


def token(secret: bytes, campaign: str, email: str) -> str:
    """The unsubscribe token of one contact for one campaign (hex)."""
    message = campaign.encode() + b"\0" + email.encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:TOKEN_CHARS]


def verify_token(root: str | os.PathLike[str], campaign: str, email: str, candidate: str) -> bool:
    """Whether `candidate` is the token of `email` for `campaign` in the workspace at `root`.

    It answers False, never raises, whatever it is given: it sits behind unsubscribe
    links, where the input is anybody's.
    """
    if not all(isinstance(v, str) for v in (campaign, email, candidate)):
        return False
    if len(candidate) != TOKEN_CHARS or not candidate.isascii():
        return False  # compare_digest refuses non-ASCII text
    try:
        secret = bytes.fromhex((Path(root) / SECRET_FILE).read_text().strip())
        expected = token(secret, campaign, email.strip().lower())
    except (OSError, ValueError, TypeError):  # no or damaged secret; unencodable text
        return False
    return hmac.compare_digest(expected, candidate)
