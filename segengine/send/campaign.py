"""Sending a campaign (docs/sending.md): resumable, never twice, never to the suppressed.

The moving parts, and why each exists:

- the **journal** (`journal.py`) makes "handed to the server" durable before it
  happens, so a crash leaves at most one uncertain delivery per connection;
- the **recorder** turns journaled deliveries into ``sent`` events with short
  transactions (every `record_every` seconds or `record_batch` messages, and at the
  end), so the workspace write lock is never held while waiting on the network and
  other commands, ``unsubscribe`` included, run during a send;
- the **guard** stats ``manifest.json`` before every message and, when another
  command has committed, reloads the statuses of the audience, so a contact
  unsubscribed meanwhile gets nothing handed to the server afterwards;
- **workers**, one thread and one SMTP connection each, share a rate limiter;
- a **renderer** thread renders messages in vectorised batches ahead of the workers.

On start, journaled deliveries not yet recorded (a crash before the recorder ran) are
recorded first; contacts with a ``sent`` event or a journaled delivery are skipped,
and contacts whose delivery is uncertain are reported and held back unless
``retry_uncertain``.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, SegengineError, WorkspaceBusy
from ..progress import NullProgress, Progress
from ..store.workspace import MANIFEST, Snapshot, Store
from . import templates as tpl
from .journal import Journal, JournalState, journal_path, read_state
from .message import Sender
from .smtp import Connection, Delivery, Outcome, RateLimiter, Relay, parse_server, probe
from .tokens import token, workspace_secret

if TYPE_CHECKING:
    from ..session import SegmentArg, Session

#: the command name recorded in the status log for hard bounces
COMMAND = "send"
RENDER_BATCH = 1_000
#: how long the final recording waits for a busy workspace before giving up (the
#: deliveries stay in the journal and the next run records them)
FINAL_WAIT_SECONDS = 60.0


class SendInterrupted(SegengineError):
    """Ctrl-C: the send stopped cleanly after recording what it delivered."""

    exit_code = 130


class CampaignBusy(SegengineError):
    """Another process is sending the same campaign from this workspace."""


@dataclass(frozen=True)
class SendOptions:
    """Everything a send needs besides the workspace, the campaign and the segments."""

    subject: str
    html: str  # the HTML template's text
    from_addr: str
    smtp: str  # HOST:PORT
    text: str | None = None  # the text template; None: derived from the HTML
    rate: float | None = None  # messages per second for the whole send; None: no cap
    connections: int = 4
    unsubscribe_url: str | None = None  # template with {{token}}; None: mailto: the sender
    dry_run: bool = False
    retry_uncertain: bool = False
    as_of: str | dt.date | None = None
    retries: int = 3  # extra attempts after a temporary failure
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float = 30.0  # SMTP socket timeout
    record_every: float = 10.0  # seconds between recording transactions
    record_batch: int = 5_000  # or this many deliveries, whichever comes first
    tls: str = "starttls"  # starttls | ssl | none
    ca_file: str | None = None  # PEM file of a private CA to trust instead of the system's
    user: str | None = None  # SMTP login (AUTH PLAIN or LOGIN, after TLS)
    #: the login's password; None: read from $SEGENGINE_SMTP_PASSWORD when `user` is set
    password: str | None = field(default=None, repr=False)


@dataclass
class SendSummary:
    """What a send did; `as_dict` is the ``--json`` document of docs/sending.md."""

    campaign: str
    audience: int  # active contacts of the union when the send started
    sent: int = 0  # delivered by this run
    failed: int = 0
    bounced: int = 0
    skipped: int = 0  # sent by an earlier run, or suppressed while this one ran
    uncertain: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (email, last error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "audience": self.audience,
            "sent": self.sent,
            "failed": self.failed,
            "bounced": self.bounced,
            "skipped": self.skipped,
            "uncertain": {"count": len(self.uncertain), "emails": sorted(self.uncertain)},
        }


@dataclass(frozen=True)
class Preview:
    """A dry run: who would get the message, and one rendered sample."""

    campaign: str
    audience: int
    to_send: int
    skipped: int
    uncertain: list[str]
    sample_to: str | None
    sample: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "audience": self.audience,
            "to_send": self.to_send,
            "skipped": self.skipped,
            "uncertain": {"count": len(self.uncertain), "emails": sorted(self.uncertain)},
            "dry_run": True,
            "sample": {"to": self.sample_to, "message": self.sample},
        }


# --- checking the request ------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The request, checked: templates parsed against the schema, server and sender parsed."""

    campaign: str
    templates: dict[str, tpl.Template]  # subject, html, text
    url: tpl.Template
    sender: Sender
    relay: Relay
    fields: list[str]

    @classmethod
    def check(cls, campaign: str, options: SendOptions, snap: Snapshot) -> Plan:
        if not campaign or campaign != campaign.strip() or any(c in campaign for c in "\r\n\0"):
            raise InputError(
                f"campaign id {campaign!r} must be non-empty text without line breaks"
            )
        for option, value in (("--subject", options.subject), ("--from", options.from_addr),
                              ("--unsubscribe-url", options.unsubscribe_url)):
            if value is not None and any(c in value for c in "\r\n\0"):
                # in a header, a line break starts a header of the sender's choosing
                raise InputError(f"{option}: must be one line (it holds a line break or NUL)")
        if options.connections < 1:
            raise InputError("--connections must be at least 1")
        if options.rate is not None and options.rate <= 0:
            raise InputError("--rate must be a positive number of messages per second")
        sender = Sender.parse(options.from_addr)
        relay = Relay.check(
            *parse_server(options.smtp), tls=options.tls, ca_file=options.ca_file,
            user=options.user, password=options.password, timeout=options.timeout,
        )
        text = options.text if options.text is not None else tpl.text_of_html(options.html)
        templates = {
            "subject": tpl.Template.parse(options.subject, "--subject", "subject"),
            "html": tpl.Template.parse(options.html, "--html", "html"),
            "text": tpl.Template.parse(
                text, "--html" if options.text is None else "--text", "text"
            ),
        }
        default_url = f"mailto:{sender.address}?subject=unsubscribe%20{{{{token}}}}"
        url_text = options.unsubscribe_url or default_url
        url = tpl.Template.parse(url_text, "--unsubscribe-url", "url")
        for template in (*templates.values(), url):
            template.check(snap.schema)
        fields = tpl.fields_used((*templates.values(), url))
        fields = ["email", *[f for f in fields if f != "email"]]
        return cls(campaign, templates, url, sender, relay, fields)


# --- the audience ----------------------------------------------------------------------


def sent_ids(snap: Snapshot, campaign: str, kind: str = "sent") -> np.ndarray:
    """Contacts with an event of type `kind` in `campaign` (sorted, distinct)."""
    files = list(snap.files("events"))
    if not files:
        return np.array([], dtype=np.int64)
    ids = (
        pl.scan_parquet(files)
        .filter((pl.col("campaign") == campaign) & (pl.col("type") == kind))
        .select("contact_id")
        .unique()
        .collect()["contact_id"]
    )
    return np.sort(ids.to_numpy().astype(np.int64))


def audience_frame(snap: Snapshot, ids: np.ndarray, fields: list[str]) -> pl.DataFrame:
    """The active contacts among `ids`, with the columns the templates need, by id."""
    files = list(snap.files("contacts"))
    if not files or len(ids) == 0:
        return pl.DataFrame(schema={"contact_id": pl.Int64, "email": pl.String})
    columns = ["contact_id", *dict.fromkeys(f if f != "email_domain" else "email" for f in fields)]
    return (
        pl.scan_parquet(files)
        .filter(pl.col("contact_id").is_in(pl.Series(ids).implode()))
        .filter(pl.col("status") == "active")
        .select(columns)
        .sort("contact_id")
        .collect()
    )


# --- recording deliveries as events ----------------------------------------------------


def record_sent(
    store: Store, campaign: str, ids: np.ndarray, at_us: np.ndarray
) -> tuple[int, int]:
    """One transaction appending a ``sent`` event per id; returns (base, new) versions."""
    table = pa.table(
        {
            "contact_id": pa.array(ids, pa.int64()),
            "campaign": pa.array([campaign] * len(ids), pa.string()),
            "type": pa.array(["sent"] * len(ids), pa.string()),
            "timestamp": pa.array(at_us, pa.int64()).cast(pa.timestamp("us")),
            "url": pa.nulls(len(ids), pa.string()),
        }
    )
    with store.transaction() as tx:
        out = tx.new_file("events")
        pq.write_table(table, out, compression="zstd")
        tx.manifest["events"] = [*tx.manifest["events"], tx.relative(out)]
        counts = tx.manifest["counts"]
        counts["events"] = int(counts.get("events", 0)) + len(ids)
        tx.commit()
        return tx.base.version, int(tx.manifest["version"])


def record_bounces(store: Store, campaign: str, ids: np.ndarray, wait: float) -> None:
    from ..store.status import change_status

    change_status(
        store, ids, "bounced", allowed_from=("active",), event_type="bounce", campaign=campaign,
        reason=f"permanent SMTP rejection while sending campaign {campaign!r}", command=COMMAND,
        wait_seconds=wait,
    )


def recover(store: Store, campaign: str, state: JournalState) -> None:
    """Record what an earlier, interrupted run delivered or saw bounce but did not record."""
    snap = store.snapshot()
    missing = ~np.isin(state.done, sent_ids(snap, campaign))
    if missing.any():
        record_sent(store, campaign, state.done[missing], state.done_at[missing])
    # A bounce already recorded is not applied again: the contact may have been
    # resubscribed since.
    bounced = state.bounced[~np.isin(state.bounced, sent_ids(snap, campaign, "bounce"))]
    if len(bounced):
        record_bounces(store, campaign, bounced, FINAL_WAIT_SECONDS)


class Recorder:
    """Collects deliveries from the workers and records them in short transactions."""

    def __init__(self, store: Store, campaign: str, options: SendOptions, guard: Guard,
                 journal: Journal):
        self.store, self.campaign, self.options, self.guard = store, campaign, options, guard
        self.journal = journal
        self._lock = threading.Lock()
        self._sent: list[tuple[int, int]] = []
        self._bounced: list[int] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="send-recorder", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def delivered(self, contact_id: int, at_us: int) -> None:
        with self._lock:
            self._sent.append((contact_id, at_us))
            if len(self._sent) >= self.options.record_batch:
                self._wake.set()

    def bounced(self, contact_id: int) -> None:
        with self._lock:
            self._bounced.append(contact_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.options.record_every)
            self._wake.clear()
            try:
                self.flush(wait=0.0)
            except WorkspaceBusy:
                continue  # another writer is committing: try again at the next tick
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                self.error = exc
                return

    def flush(self, wait: float) -> None:
        """Record everything collected so far; keep it for later if the workspace is busy."""
        with self._lock:
            sent, self._sent = self._sent, []
            bounced, self._bounced = self._bounced, []
        if sent or bounced:
            # The journal holds every delivery before its event does, so a crash while
            # recording leaves nothing uncertain that was recorded.
            self.journal.write_kept()
        try:
            if sent:
                ids, at = np.array(sent, dtype=np.int64).T
                deadline = time.monotonic() + wait
                while True:
                    try:
                        base, new = record_sent(self.store, self.campaign, ids, at)
                        break
                    except WorkspaceBusy:
                        if time.monotonic() >= deadline:
                            raise
                        time.sleep(0.05)
                sent = []
                self.guard.own_commit(base, new)
            if bounced:
                record_bounces(self.store, self.campaign, np.array(bounced, dtype=np.int64), wait)
                bounced = []
        finally:
            with self._lock:
                self._sent[:0] = sent
                self._bounced[:0] = bounced

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.flush(wait=FINAL_WAIT_SECONDS)


# --- suppression while sending ---------------------------------------------------------


def manifest_key(store: Store, path: str | None = None) -> tuple[int, int, int]:
    st = os.stat(path or store.root / MANIFEST)
    return st.st_ino, st.st_mtime_ns, st.st_size


class Guard:
    """Drops contacts that stop being active while the send runs.

    Every commit replaces ``manifest.json`` (a new inode), so one `os.stat` per
    message notices any other command's commit; only then are the statuses of the
    audience read again. Commits of the send itself (``sent`` events) change no
    status and are recognised by their base version, so they cost no reload.
    """

    def __init__(self, store: Store, snap: Snapshot, audience: np.ndarray):
        self.store = store
        self._manifest = str(store.root / MANIFEST)  # joined once: checked per message
        self.audience = pl.Series("contact_id", audience)
        self._lock = threading.Lock()
        self._version = snap.version
        self._key = manifest_key(store)
        self._dropped: frozenset[int] = frozenset()
        self.reloads = 0

    def allowed(self, contact_id: int) -> bool:
        if manifest_key(self.store, self._manifest) != self._key:
            with self._lock:
                self._refresh()
        return contact_id not in self._dropped

    def own_commit(self, base: int, new: int) -> None:
        with self._lock:
            if self._version == base:
                self._version = new

    def _refresh(self) -> None:
        key = manifest_key(self.store)  # stat first: a later commit shows as a new key
        if key == self._key:
            return
        for attempt in range(5):
            snap = self.store.snapshot()
            if snap.version == self._version:
                break
            try:
                self._dropped = frozenset(self._inactive(snap))
                self._version = snap.version
                self.reloads += 1
                break
            except (OSError, pl.exceptions.ComputeError):
                if attempt == 4:  # files of a superseded snapshot vanished: read anew
                    raise
                key = manifest_key(self.store)
        self._key = key

    def _inactive(self, snap: Snapshot) -> list[int]:
        return (
            pl.scan_parquet(list(snap.files("contacts")))
            .filter(pl.col("status") != "active")
            .filter(pl.col("contact_id").is_in(self.audience.implode()))
            .select("contact_id")
            .collect()["contact_id"]
            .to_list()
        )


# --- rendering -------------------------------------------------------------------------


class Renderer:
    """Renders messages batch by batch: Polars for the templates, then the bytes."""

    def __init__(self, plan: Plan, snap: Snapshot, secret: bytes):
        self.plan, self.schema, self.secret = plan, snap.schema, secret
        # Compiled once per send: the expressions every batch is rendered with.
        self._values = [pl.col("contact_id"), *tpl.value_columns(plan.fields, self.schema)]
        self._rendered = [
            pl.col("contact_id"), *(t.expr().alias(name) for name, t in plan.templates.items())
        ]

    def render(self, batch: pl.DataFrame) -> list[Delivery]:
        plan = self.plan
        values = batch.select(self._values)
        emails = values["email"].to_list()
        tokens = [token(self.secret, plan.campaign, e) for e in emails]
        urls = self._urls(values, tokens)
        values = values.with_columns(
            pl.Series(tpl.TOKEN, tokens, pl.String),
            pl.Series(tpl.UNSUBSCRIBE_URL, urls, pl.String),
        )
        rendered = values.select(self._rendered)
        out = []
        rows = zip(rendered.iter_rows(), emails, urls, strict=True)
        for (cid, subject, html, text), to, url in rows:
            _, data = plan.sender.message(to, subject, text, html, url)
            out.append(Delivery(cid, to, data))
        return out

    def _urls(self, values: pl.DataFrame, tokens: list[str]) -> list[str]:
        """The unsubscribe URL per contact; substituted values are percent-encoded."""
        from urllib.parse import quote

        url = self.plan.url
        columns = [
            tokens if tag == tpl.TOKEN
            else [quote(v, safe="") if v else url.fallback(i) for v in values[tag].to_list()]
            for i, tag in enumerate(url.tags)
        ]
        out = []
        for i in range(len(tokens)):
            pieces = [url.parts[0]]
            for j, column in enumerate(columns):
                pieces += (column[i], url.parts[j + 1])
            out.append("".join(pieces))
        return out


# --- the send ----------------------------------------------------------------------------


@dataclass
class Counters:
    sent: int = 0
    failed: int = 0
    bounced: int = 0
    dropped: int = 0
    uncertain: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def handled(self) -> int:
        return self.sent + self.failed + self.bounced + self.dropped + len(self.uncertain)


def lock_campaign(path) -> int:
    """An exclusive lock on the campaign's journal: two sends of one campaign never overlap."""
    path.parent.mkdir(0o700, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CampaignBusy(
            "this campaign is being sent by another segengine process: wait for it to finish, "
            "or stop it and run the same command again to resume"
        ) from None
    return fd


def send_campaign(
    session: Session,
    campaign: str,
    segments: tuple[SegmentArg, ...],
    options: SendOptions,
    progress: Progress | None = None,
) -> SendSummary | Preview:
    """Send `campaign` to the active contacts of the union of `segments` (docs/sending.md)."""
    if not segments:
        raise InputError("name at least one segment with --segment")
    store = session.store
    progress = progress or NullProgress()
    plan = Plan.check(campaign, options, store.snapshot())
    path = journal_path(store.root, campaign)
    if options.dry_run:
        return _preview(session, plan, options, segments, read_state(path))
    campaign_lock = lock_campaign(path)
    try:
        state = read_state(path)
        with progress.task("recording the previous run"):
            recover(store, campaign, state)
        return _send(session, plan, options, segments, state, progress)
    finally:
        os.close(campaign_lock)


def _select(session: Session, plan: Plan, options: SendOptions, segments, state: JournalState):
    """(snapshot, audience frame, frame of contacts to send to, skipped, uncertain emails)."""
    snap = session.store.snapshot()
    ids = session.contact_ids(segments, as_of=options.as_of, snapshot=snap)
    audience = audience_frame(snap, np.asarray(ids, dtype=np.int64), plan.fields)
    ids = audience["contact_id"].to_numpy()
    before = np.union1d(sent_ids(snap, plan.campaign), state.done)
    already = np.isin(ids, before)
    uncertain = np.isin(ids, state.uncertain) & ~already
    held = already | (uncertain if not options.retry_uncertain else np.zeros_like(uncertain))
    todo = audience.filter(pl.Series(~held))
    emails = audience.filter(pl.Series(uncertain))["email"].to_list()
    return snap, audience, todo, int(already.sum()), emails


def _preview(session, plan: Plan, options: SendOptions, segments, state: JournalState) -> Preview:
    snap, audience, todo, skipped, uncertain = _select(session, plan, options, segments, state)
    sample_from = todo if todo.height else audience
    to = sample = None
    if sample_from.height:
        secret = workspace_secret(session.store.root)
        (item,) = Renderer(plan, snap, secret).render(sample_from.head(1))
        to, sample = item.email, item.data.decode()
    return Preview(plan.campaign, audience.height, todo.height, skipped, uncertain, to, sample)


def _send(session, plan: Plan, options: SendOptions, segments, state: JournalState,
          progress: Progress) -> SendSummary:
    store = session.store
    snap, audience, todo, skipped, uncertain = _select(session, plan, options, segments, state)
    summary = SendSummary(plan.campaign, audience.height, skipped=skipped, uncertain=uncertain)
    if todo.height == 0:
        return summary
    probe(plan.relay, plan.sender.address)
    renderer = Renderer(plan, snap, workspace_secret(store.root))
    guard = Guard(store, snap, todo["contact_id"].to_numpy())
    journal = Journal(journal_path(store.root, plan.campaign), plan.campaign)
    recorder = Recorder(store, plan.campaign, options, guard, journal)
    counters = Counters()
    work: queue.Queue[Delivery | None] = queue.Queue(maxsize=4 * RENDER_BATCH)
    stop = threading.Event()
    limiter = RateLimiter(options.rate, burst=options.connections)
    errors: list[BaseException] = []

    def render_all() -> None:
        try:
            for batch in todo.iter_slices(RENDER_BATCH):
                for item in renderer.render(batch):
                    while not stop.is_set():
                        try:
                            work.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            stop.set()
        finally:
            for _ in range(options.connections):
                while True:
                    try:
                        work.put(None, timeout=0.2)
                        break
                    except queue.Full:
                        if stop.is_set():
                            return

    def deliver_all() -> None:
        conn = Connection(plan.relay, plan.sender.address, retries=options.retries,
                          backoff=options.backoff)
        try:
            while not stop.is_set():
                try:
                    item = work.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is None:
                    return
                limiter.wait()
                wanted = functools.partial(guard.allowed, item.contact_id)
                result = conn.deliver(item, journal, wanted)
                _count(counters, recorder, item, result)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            stop.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=render_all, name="send-render", daemon=True)]
    threads += [
        threading.Thread(target=deliver_all, name=f"send-smtp-{i}", daemon=True)
        for i in range(options.connections)
    ]
    recorder.start()
    interrupted = False
    with progress.task(f"sending {plan.campaign}", total=todo.height) as task:
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                threads[-1].join(0.2)
                task.update(counters.handled)
                if recorder.error is not None:
                    errors.append(recorder.error)
                    stop.set()
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            _drain(work)
            for thread in threads:
                thread.join()
    _drain(work)
    try:
        recorder.stop()
    finally:
        journal.close()
    summary.sent, summary.failed, summary.bounced = counters.sent, counters.failed, counters.bounced
    summary.skipped += counters.dropped
    summary.uncertain = sorted({*summary.uncertain, *counters.uncertain})
    summary.failures = counters.failures
    if errors:
        raise errors[0]
    if interrupted:
        raise SendInterrupted(
            f"interrupted: {summary.sent:,} delivered and recorded; run the same command again "
            "to send to the rest (nobody gets the message twice)"
        )
    return summary


def _count(counters: Counters, recorder: Recorder, item: Delivery, result) -> None:
    with counters.lock:
        if result.outcome is Outcome.DELIVERED:
            counters.sent += 1
        elif result.outcome is Outcome.BOUNCED:
            counters.bounced += 1
        elif result.outcome is Outcome.FAILED:
            counters.failed += 1
            counters.failures.append((item.email, result.detail))
        elif result.outcome is Outcome.DROPPED:
            counters.dropped += 1
        else:
            counters.uncertain.append(item.email)
    if result.outcome is Outcome.DELIVERED:
        recorder.delivered(item.contact_id, result.at_us)
    elif result.outcome is Outcome.BOUNCED:
        recorder.bounced(item.contact_id)


def _drain(work: queue.Queue) -> None:
    while True:
        try:
            work.get_nowait()
        except queue.Empty:
            return
