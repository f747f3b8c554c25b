"""Building an index from a snapshot's files, and keeping it current inside a commit."""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow.parquet as pq

from ...errors import EngineError
from ...fields import Schema
from ...progress import NullProgress
from ..arrays import link_or_copy, load
from ..checksums import DamagedFile
from ..manifest import Manifest, covers_of, schema_of

if TYPE_CHECKING:
    from ...progress import Progress


from .contacts import (
    build_contacts,
)
from .events import (
    EventPart,
)
from .layout import (
    CONTACTS_VERSION,
    FORMAT,
    META,
)
from .read import (
    IndexData,
)


class Committing(Protocol):
    """A commit in progress, as the index build uses it (a
    `segengine.store.workspace.Transaction`, which calls `refresh_index`)."""

    root: Path
    manifest: Manifest

    def new_file(self, table: str, suffix: str = ..., directory: str = ...) -> Path: ...

    def relative(self, path: Path) -> str: ...


# --- building and refreshing -----------------------------------------------------------


def build_index(
    contacts: Sequence[str],
    events: Sequence[str],
    schema: Schema,
    directory: Path,
    previous: IndexData | None = None,
    covers: dict[str, list[str]] | None = None,
    progress: Progress | None = None,
) -> dict:
    """Build the index of these files into `directory`, reusing `previous` where it can.

    `covers` names the files as the manifest does (workspace-relative); it defaults to
    the given paths. `progress` shows the events indexed (long builds run for minutes).
    Returns the meta written to ``meta.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    covers = covers or {"contacts": list(contacts), "events": list(events)}
    same_contacts = (
        previous is not None
        and previous.meta["covers"]["contacts"] == covers["contacts"]
        and previous.meta["schema"] == _schema_json(schema)
        and previous.meta["contacts"]["version"] == CONTACTS_VERSION
    )
    with ThreadPoolExecutor(1) as pool:
        if same_contacts:
            for file in sorted((previous.directory / "contacts").iterdir()):
                link_or_copy(file, directory / "contacts" / file.name)
            contact_meta = previous.meta["contacts"]
            ids = load(directory / "contacts" / "ids.npy")
            events_meta, reused = _build_events(
                events, ids, bool(contact_meta["dense"]), same_contacts, directory, previous,
                covers, progress)
        else:
            # The contact part and the event part only share the contacts' ids: the
            # fields are indexed on a thread of their own while the events stream.
            building = pool.submit(build_contacts, directory, contacts, schema)
            ids = contact_ids(contacts)
            dense = bool(len(ids) == 0 or (ids[0] == 1 and ids[-1] == len(ids)))
            events_meta, reused = _build_events(
                events, ids, dense, same_contacts, directory, previous, covers, progress)
            contact_meta = building.result()
    meta = {
        "format": FORMAT,
        "covers": covers,
        "schema": _schema_json(schema),
        "contacts": contact_meta,
        "events": events_meta,
        "incremental": reused,
    }
    (directory / META).write_text(json.dumps(meta))
    return meta


def contact_ids(files: Sequence[str]) -> np.ndarray:
    """The contacts' ids in order, as the contact part stores them (`ids.npy`)."""
    parts = [pq.read_table(f, columns=["contact_id"]).column("contact_id").to_numpy()
             for f in files]
    ids = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # workspace files are sorted already
        ids = np.sort(ids)
    return ids


def _build_events(
    events: Sequence[str], ids: np.ndarray, dense: bool, same_contacts: bool,
    directory: Path, previous: IndexData | None, covers: dict[str, list[str]],
    progress: Progress | None,
) -> tuple[dict, bool]:
    """The event part (extending `previous` when it can); returns its meta and whether
    it was an update."""
    n = len(ids)
    old_events = previous.meta["covers"]["events"] if previous is not None else []
    reuse = (
        previous is not None
        and covers["events"][: len(old_events)] == old_events
        and n >= previous.n
        and np.array_equal(ids[: previous.n], previous.ids)
        and (same_contacts or previous.meta["events"]["orphans"] == 0)
        and previous.meta["events"]["recent_bitmaps"]
    )
    new_files = list(events)[len(old_events) :] if reuse else list(events)
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in new_files)
    part = EventPart.extend(previous, n, directory, total) if reuse else EventPart.empty(n, directory)
    reporter = progress if progress is not None and total else NullProgress()
    with reporter.task(f"indexing {total:,} events", total=total) as task:
        part.add_files(new_files, np.asarray(ids), dense, task)
    return part.write(), bool(reuse)


def _schema_json(schema: Schema) -> list[list[str]]:
    return [[name, ftype.value] for name, ftype in schema.custom]


def refresh_index(tx: Committing, progress: Progress | None = None) -> None:
    """Bring the index up to date with the transaction's files (no-op when it already is).

    Called by `Transaction.commit` before anything is made durable, so the index files
    are part of the same atomic commit as the data they describe.
    """
    covers = covers_of(tx.manifest)
    current = tx.manifest.get("index") or {}
    if current.get("covers") == covers and current.get("format") == FORMAT:
        return
    previous = None
    if current.get("path"):
        try:
            previous = IndexData.open(tx.root / current["path"])
        except (OSError, ValueError, KeyError, EngineError, DamagedFile):
            previous = None  # unreadable or another format (`read.upgraded`): build from scratch
    directory = tx.new_file("index", suffix="", directory="index")
    schema = schema_of(tx.manifest)
    files = ([str(tx.root / f) for f in covers["contacts"]],
             [str(tx.root / f) for f in covers["events"]])
    try:
        # Every file of the previous index the update reads is checked as it is read (a
        # file linked into the new index is expected to hold the old one's bytes), and
        # one it only links keeps the checksum of its first commit: damage is never
        # blessed, and the 10 GB of a big index are not hashed for a small import.
        build_index(*files, schema, directory, previous=previous, covers=covers,
                    progress=progress)
    except DamagedFile:
        if previous is None:
            raise
        # a damaged file of the previous index is not carried into the next one
        import shutil  # with its compression modules, for writers only

        shutil.rmtree(directory)
        build_index(*files, schema, directory, covers=covers, progress=progress)
    tx.manifest["index"] = {"path": tx.relative(directory), "format": FORMAT, "covers": covers}


