"""The workspace on disk: immutable Parquet files published by an atomic manifest swap.

Layout of a workspace directory::

    segengine.json     format marker, written once by `init`
    manifest.json      the committed state: table files, fields, segments, index
    data/              immutable Parquet files (contacts, events), never modified in place
    index/             immutable engagement-index files
    syncs/             member sets of sync jobs' committed runs
    rejects/           reject reports of imports (not part of the committed state)
    .lock              writers hold an exclusive flock on it

A write creates new files, fsyncs them, writes the next manifest to a temporary file,
fsyncs it, renames it over ``manifest.json`` and fsyncs the directory. The rename is
the commit point: a process killed at any moment leaves either the old manifest (and
some unreferenced files that the next writer deletes) or the new one. Readers read
the manifest once and then only immutable files, so they see a consistent snapshot
while a writer runs. See docs/architecture.md for the alternatives we rejected.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import json
import os
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, StorageError, WorkspaceBusy, WorkspaceError
from ..fields import Schema
from ..progress import Progress
from . import checksums
from .manifest import Manifest, Tables, empty_manifest, schema_of

FORMAT_NAME = "segengine-workspace"
FORMAT_VERSION = 1
MARKER = "segengine.json"
MANIFEST = "manifest.json"
PREVIOUS = "manifest.previous.json"
LOCK = ".lock"
DATA_DIR = "data"
INDEX_DIR = "index"
REJECTS_DIR = "rejects"
#: the member sets of sync jobs' committed runs (segengine/sync/)
SYNCS_DIR = "syncs"
STAGING_DIR = ".staging"


def crash_point(name: str) -> None:
    """Kill this process at a named point when SEGENGINE_CRASH_AT names it (crash tests)."""
    if os.environ.get("SEGENGINE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's data to stable storage."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: modes of what segengine writes: contacts are personal data, private to their owner
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private(path: Path) -> None:
    """Owner-only modes on a file, or on a directory and everything in it.

    Files written by DuckDB, Polars or Spark get the process umask's modes (usually
    world-readable); exports, reports and journals hold emails, so they are tightened
    before they are published.
    """
    if path.is_dir():
        for sub in path.rglob("*"):
            sub.chmod(PRIVATE_DIR if sub.is_dir() else PRIVATE_FILE)
        path.chmod(PRIVATE_DIR)
    else:
        path.chmod(PRIVATE_FILE)


def write_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (write, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point(f"before-rename:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file
        raise
    crash_point(f"after-rename:{path.name}")
    fsync_path(path.parent)


@dataclass(frozen=True)
class Snapshot:
    """One committed state of a workspace, read once; its files never change."""

    root: Path
    manifest: Manifest

    def __post_init__(self) -> None:
        checksums.expect(self.root, self.manifest)

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def schema(self) -> Schema:
        return schema_of(self.manifest)

    @property
    def segments(self) -> dict[str, Any]:
        return self.manifest["segments"]

    def files(self, table: str) -> tuple[str, ...]:
        """Absolute paths of a table's files, each checked against its checksum on the
        first use in this process (store/checksums.py)."""
        paths = self._paths(table)
        for path in paths:
            checksums.check(path)
        return paths

    def _paths(self, table: str) -> tuple[str, ...]:
        return tuple(str(self.root / rel) for rel in self.manifest.get(table, []))

    @property
    def tables(self) -> Tables:
        """The tables of this snapshot, whose files are checked when an engine reads them."""
        return Tables(
            contacts=self._paths("contacts"),
            events=self._paths("events"),
            schema=self.schema,
            version=self.version,
        )


@dataclass
class Transaction:
    """A write in progress: new files go to ``data/``, the manifest is swapped on commit."""

    root: Path
    base: Snapshot
    manifest: Manifest
    staging: Path
    new_files: list[Path] = field(default_factory=list)
    committed: bool = False

    def new_file(self, table: str, suffix: str = ".parquet", directory: str = DATA_DIR) -> Path:
        """A fresh path for a data file of this transaction (deleted if it aborts)."""
        name = f"{table}-v{self.manifest['version']:06d}-{uuid.uuid4().hex[:12]}{suffix}"
        path = self.root / directory / name
        path.parent.mkdir(PRIVATE_DIR, exist_ok=True)
        self.new_files.append(path)
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _committed_files(self) -> set[tuple[int, int]]:
        """(device, inode) of the files the last commit recorded (each made durable by
        the commit that wrote it)."""
        found = set()
        for rel in self.base.manifest.get("checksums") or {}:
            try:
                st = os.stat(self.root / rel)
            except OSError:
                continue
            found.add((st.st_dev, st.st_ino))
        return found

    def commit(self, progress: Progress | None = None) -> Snapshot:
        """Make every new file durable, then publish the new manifest atomically.

        `progress` reports the index refresh, which can take minutes on a large import.
        """
        # The engagement index is refreshed first, so its files are made durable and
        # published with the data they describe: an index is never stale (store/index/).
        from .index import refresh_index  # lazy: numpy/pyroaring only for writers

        refresh_index(self, progress)
        durable = self._committed_files()
        for path in self.new_files:
            if path.exists():
                make_private(path)
            if path.is_dir():
                for sub in sorted(path.rglob("*"), reverse=True):  # files before their directory
                    st = sub.stat()
                    # a link to a committed file (an index update links most of the last
                    # index) adds only a directory entry: its directory's fsync makes it
                    # durable, the file's bytes were made so by the commit that wrote them
                    if sub.is_dir() or (st.st_dev, st.st_ino) not in durable:
                        fsync_path(sub)
                fsync_path(path)
            elif path.exists():
                fsync_path(path)
        for directory in {p.parent for p in self.new_files}:
            fsync_path(directory)
        crash_point("files-synced")
        self.manifest["checksums"], self.manifest["blocks"] = checksums.for_commit(
            self.root, self.manifest, self.base.manifest
        )
        self.manifest["committed_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        current = self.root / MANIFEST
        if current.exists():
            # Keep the previous manifest so that its files survive one more commit for
            # readers that are still scanning them.
            write_durably(self.root / PREVIOUS, current.read_bytes())
        write_durably(current, json.dumps(self.manifest, indent=1, sort_keys=True).encode())
        self.committed = True
        return Snapshot(self.root, self.manifest)


class Store:
    """A workspace directory on disk. Reading takes a snapshot; writing takes the lock."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()
        self._last: tuple[tuple[int, ...], Snapshot] | None = None
        if not (self.root / MARKER).is_file():
            hint = "run `segengine init DIR` first, or pass -w/--workspace"
            if not self.root.exists():
                raise WorkspaceError(f"workspace {self.root} does not exist: {hint}")
            raise WorkspaceError(f"{self.root} is not a segengine workspace: {hint}")
        try:
            marker = json.loads((self.root / MARKER).read_text())
            if not isinstance(marker, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            expected = json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION})
            raise StorageError(
                f"{self.root / MARKER} is damaged ({exc}): it holds the workspace's format; "
                f"write {expected} back into it"
            ) from None
        if marker.get("format") != FORMAT_NAME or marker.get("format_version") != FORMAT_VERSION:
            raise WorkspaceError(
                f"{self.root}: unsupported workspace format {marker!r}; "
                f"this segengine reads format {FORMAT_VERSION}"
            )

    def check_outside(self, path: str | os.PathLike[str], option: str) -> None:
        """Refuse an output path inside the workspace (symlinks resolved): a file written
        there could replace the manifest or committed data, which no commit protects."""
        resolved = Path(path).expanduser().resolve()
        if resolved == self.root or self.root in resolved.parents:
            raise InputError(
                f"{option} {path}: is inside the workspace {self.root}, where it could "
                "replace committed data; write it outside the workspace directory"
            )

    @classmethod
    def init(cls, root: str | os.PathLike[str]) -> Store:
        """Create an empty workspace (the directory may exist but must be empty)."""
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise WorkspaceError(f"{path} exists and is not a directory: choose another path")
        if path.exists() and any(path.iterdir()):
            if (path / MARKER).exists():
                raise WorkspaceError(f"{path} is already a segengine workspace")
            raise WorkspaceError(f"{path} is not empty: choose a new or empty directory")
        path.mkdir(parents=True, exist_ok=True)
        # contacts are personal data: only the owner may enter the workspace, whatever
        # the modes of the files created in it later (data, index, journal, rejects)
        path.chmod(0o700)
        for sub in (DATA_DIR, INDEX_DIR, REJECTS_DIR):
            (path / sub).mkdir(PRIVATE_DIR, exist_ok=True)
        write_durably(path / MANIFEST, json.dumps(empty_manifest(), indent=1).encode())
        marker = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
        write_durably(path / MARKER, json.dumps(marker).encode())
        return cls(path)

    # --- reading -------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The committed state. A commit replaces the manifest file (a rename), so the
        same file, by inode, size and times, is the same state: read once, kept."""
        try:
            st = os.stat(self.root / MANIFEST)
        except FileNotFoundError as exc:
            raise WorkspaceError(f"{self.root}: cannot read {MANIFEST}: {exc}") from exc
        identity = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        last = self._last
        if last is not None and last[0] == identity:
            return last[1]
        snapshot = self._read_snapshot()
        self._last = (identity, snapshot)
        return snapshot

    def _read_snapshot(self) -> Snapshot:
        try:
            manifest = json.loads((self.root / MANIFEST).read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("version"), int):
                raise ValueError("not a segengine manifest")
        except FileNotFoundError as exc:
            raise WorkspaceError(f"{self.root}: cannot read {MANIFEST}: {exc}") from exc
        except ValueError as exc:
            raise StorageError(
                f"{self.root / MANIFEST} is damaged ({exc}): {PREVIOUS} holds the state one "
                f"commit earlier (copy it over {MANIFEST} to go back to it), or restore the "
                "workspace from a backup"
            ) from None
        return Snapshot(self.root, manifest)

    # --- writing -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the exclusive writer lock; the kernel frees it if the process dies."""
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise WorkspaceBusy(
                    f"workspace {self.root} is busy: another segengine command{who} is "
                    "writing to it; try again when it has finished"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock, yield a transaction on the current state, and clean up after it.

        The body calls `Transaction.commit()` to publish; leaving the block without a
        commit (or with an exception) deletes every file the transaction created.
        """
        with self.lock():
            base = self.snapshot()  # a damaged manifest stops here, with its own message
            self._collect_garbage()
            manifest = copy.deepcopy(base.manifest)
            manifest["version"] = base.version + 1
            staging = self.root / STAGING_DIR / uuid.uuid4().hex
            staging.mkdir(PRIVATE_DIR, parents=True)
            tx = Transaction(self.root, base, manifest, staging)
            try:
                yield tx
            finally:
                import shutil  # with its compression modules, for writers only

                shutil.rmtree(staging, ignore_errors=True)
                with contextlib.suppress(OSError):
                    staging.parent.rmdir()  # only when no other staging is left
                if not tx.committed:
                    for path in tx.new_files:
                        if path.is_dir():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
            if tx.committed:
                crash_point("committed")
                self._collect_garbage()

    def _referenced(self) -> set[str] | None:
        """Files the current and the previous manifest reference; None when the previous
        one is unreadable (its files are then kept: the next commit replaces it)."""
        refs: set[str] = set()
        for name in (MANIFEST, PREVIOUS):
            path = self.root / name
            if not path.exists():
                continue
            try:
                manifest = json.loads(path.read_text())
                files = [*manifest["contacts"], *manifest["events"],
                         *manifest.get("status_log", [])]  # the audit trail (store/status.py)
                index = manifest.get("index") or {}
            except (ValueError, KeyError, TypeError, AttributeError):
                if name == PREVIOUS:
                    return None  # garbage must not block every later writer
                raise
            refs.update(files)
            if index.get("path"):
                refs.add(index["path"])
            for job in (manifest.get("syncs") or {}).values():
                if job.get("members"):
                    refs.add(job["members"]["path"])
        return refs

    def _collect_garbage(self) -> None:
        """Delete files of aborted or superseded writes. Called with the lock held."""
        import shutil

        refs = self._referenced()
        for directory in (DATA_DIR, INDEX_DIR, SYNCS_DIR) if refs is not None else ():
            base = self.root / directory
            if not base.exists():
                continue
            for entry in base.iterdir():
                if entry.relative_to(self.root).as_posix() in refs:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
