"""The send journal: what was handed to the SMTP server, durably, before it was handed.

One append-only text file per campaign in the workspace (``sends/<hash>.journal``),
one line per step of a delivery::

    intent <contact_id>                    fsynced before the message goes to the server
    done <contact_id> <unix microseconds>  the server answered 250: delivered
    bounce <contact_id> <unix microseconds> the server refused the recipient (5xx)
    fail <contact_id>                      given up after temporary failures: not delivered

The last line of a contact decides its state. ``intent`` without a later line means
the send died while the message was with the server: it may or may not have been
delivered (*uncertain*). A torn last line (no newline: the process died mid-write)
is ignored, and cut off before the next run appends, so that it can never glue
onto a new line or, completed, name another contact.

Syncing is grouped (group commit): a writer waiting for its line either flushes
everything written so far itself or waits for the flush in progress, so N
connections share one `fdatasync` instead of paying one each, and no thread is
woken per message (a syncer thread cost more CPU per message than the flush). ``done``, ``bounce`` and ``fail`` lines are not waited for, nor even
written at once: they are kept (`settle`) and written together with the next
``intent`` (one `write` for both), before a recording transaction, and at the end. A
crash loses at most the settled lines kept since a connection's last ``intent``,
which leaves that one contact uncertain, so there is still at most one uncertain
delivery per connection.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..store.workspace import fsync_path

SENDS_DIR = "sends"
KINDS = ("intent", "done", "bounce", "fail")


def journal_path(root: Path, campaign: str) -> Path:
    digest = hashlib.sha256(campaign.encode()).hexdigest()[:24]
    return root / SENDS_DIR / f"{digest}.journal"


@dataclass(frozen=True)
class JournalState:
    """What a journal says, per contact (numpy int64 arrays of contact ids)."""

    done: np.ndarray
    done_at: np.ndarray  # unix microseconds of each `done`
    bounced: np.ndarray
    bounced_at: np.ndarray
    uncertain: np.ndarray  # intent as the last line: maybe delivered

    @classmethod
    def empty(cls) -> JournalState:
        nothing = np.array([], dtype=np.int64)
        return cls(nothing, nothing, nothing, nothing, nothing)


def read_state(path: Path) -> JournalState:
    """Parse a journal (vectorised); every contact's last complete line wins."""
    if not path.exists():
        return JournalState.empty()
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]  # a torn last line is ignored
    lines = [line for line in data.split(b"\n") if line and not line.startswith(b"#")]
    if not lines:
        return JournalState.empty()
    frame = pl.read_csv(
        io.BytesIO(b"\n".join(lines)),
        has_header=False,
        separator=" ",
        new_columns=["kind", "contact_id", "at"],
        schema_overrides={"kind": pl.String, "contact_id": pl.Int64, "at": pl.Int64},
        truncate_ragged_lines=True,
    )
    last = (
        frame.with_row_index("seq")
        .filter(pl.col("kind").is_in(KINDS))
        .group_by("contact_id")
        .agg(pl.all().sort_by("seq").last())
    )

    def ids(kind: str) -> tuple[np.ndarray, np.ndarray]:
        rows = last.filter(pl.col("kind") == kind).sort("contact_id")
        return rows["contact_id"].to_numpy(), rows["at"].fill_null(0).to_numpy()

    done, done_at = ids("done")
    bounced, bounced_at = ids("bounce")
    uncertain, _ = ids("intent")
    return JournalState(done, done_at, bounced, bounced_at, uncertain)


class Journal:
    """An open journal: thread-safe appends and grouped, waitable fsyncs."""

    def __init__(self, path: Path, campaign: str):
        path.parent.mkdir(0o700, exist_ok=True)
        created = not path.exists()
        self.path = path
        # the journal names the contacts of a send: private, like the workspace
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._cond = threading.Condition()
        self._written = 0  # sequence number of the last appended line
        self._synced = 0
        self._syncing = False  # a writer is flushing (see wait_synced)
        self._closed = False
        self._kept: list[bytes] = []  # settled lines not written yet
        if created:
            os.write(self.fd, f"# segengine send journal of campaign {campaign!r}\n".encode())
            os.fsync(self.fd)
            fsync_path(path.parent)
        else:
            # Cut a torn last line off: completed by a newline it could name another
            # contact ("done 12" torn to "done 1"), glued to ours it would hide ours.
            data = path.read_bytes()
            whole = data.rfind(b"\n") + 1
            if whole < len(data):
                os.ftruncate(self.fd, whole)
                os.fsync(self.fd)

    def append(self, line: str) -> int:
        """Append one line (after any kept ones); returns its sequence number for `wait_synced`."""
        data = (line + "\n").encode()
        with self._cond:
            if self._kept:
                data = b"".join((*self._kept, data))
                self._kept.clear()
            os.write(self.fd, data)  # O_APPEND: one write() per call, never interleaved
            self._written += 1
            seq = self._written
        return seq

    def settle(self, line: str) -> None:
        """Keep a line that settles a delivery; it is written with the next `append`."""
        data = (line + "\n").encode()
        with self._cond:
            self._kept.append(data)

    def write_kept(self) -> None:
        """Write the kept lines now (before deliveries are recorded, and at the end)."""
        with self._cond:
            if self._kept:
                os.write(self.fd, b"".join(self._kept))
                self._kept.clear()
                self._written += 1

    def wait_synced(self, seq: int) -> None:
        """Block until the line `seq` (and every earlier one) is on stable storage.

        Group commit without a thread of its own: the first writer to wait flushes
        every line written so far; writers arriving meanwhile wait for that flush
        or, if it does not cover them, one of them does the next.
        """
        with self._cond:
            while self._synced < seq:
                if self._closed:
                    raise OSError("the send journal was closed before it was synced")
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self._written
                self._cond.release()  # writers keep appending during the flush
                try:
                    os.fdatasync(self.fd)
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self._synced = max(self._synced, target)

    def sync(self) -> None:
        self.write_kept()
        with self._cond:
            target = self._written
        self.wait_synced(target)

    def close(self) -> None:
        self.sync()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        os.close(self.fd)
