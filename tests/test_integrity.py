"""Checksums: a flipped byte in any committed file is an error naming the file, never a
wrong count; `segengine verify` lists every damaged file."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import Cli, write

import segengine
from segengine.fields import EVENT_TYPES
from segengine.store import checksums
from segengine.store.index.read import load_index

NEWSLETTER = {"name": "openers", "rules": [
    {"activity": "opened", "count": {"gte": 2}},
    {"field": "lists", "op": "includes", "value": "news"},
]}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from segengine.synth import generate

    root = tmp_path_factory.mktemp("integrity")
    generate(root / "data", contacts=400, events=4000, seed=5)
    ws = segengine.Workspace.init(root / "ws")
    ws.import_contacts(root / "data" / "contacts.parquet")
    ws.import_events(root / "data" / "events.parquet")
    write(root / "u.csv", "email\n" + ws.members({"name": "e", "rules": []})["email"][0] + "\n")
    ws.unsubscribe(emails=root / "u.csv")  # a status log file
    return root / "ws"


def kind(rel: str) -> str:
    """The kind of a committed file, for the tally of flips per kind."""
    name = rel.rsplit("/", 1)[-1]
    if rel.startswith("data/"):
        return name.split("-")[0] + " parquet"
    if "/events/" in rel:
        return "event store block"
    if "/aggregates/" in rel:
        return "aggregate array"
    if name.startswith("bitmaps-"):
        return "contact bitmaps" if "/contacts/" in rel else "event bitmaps"
    if name == "meta.json":
        return "index meta"
    if name.endswith(".arrow"):
        return "string dictionary"
    return "contact array"


def read_everything(ws_path: Path) -> None:
    """Open every committed file through the readers the engines use."""
    checksums.forget()  # a fresh process: nothing checked yet
    snap = segengine.open(ws_path).snapshot()
    for table in ("contacts", "events", "status_log"):
        snap.files(table)
    index = load_index(snap)
    _ = index.ids, index.status  # contact arrays and aggregates open when first read
    for aggregate in (index.count, index.first, index.last, index.recent):
        _ = [aggregate[t] for t in range(len(EVENT_TYPES))]
    for block in index.blocks():
        _ = [block.columns[etype] for etype in EVENT_TYPES]
    index.urls()
    for store in (index.bitmaps, index.contact_bitmaps):
        for name in list(store.entries):
            store.get(name)
    for column in index.fields.values():
        _ = column.lower
        _ = column.words  # the text dictionaries as JSON
    index.contacts_of(pa.array(["x@x.io"]))  # the addresses an events import looks up


def flip(path: Path, rng: random.Random) -> None:
    """Flip one bit of one byte, keeping the file's size and mtime (as bit rot does)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    at = rng.randrange(len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_every_committed_file_has_a_checksum(built):
    manifest = json.loads((built / "manifest.json").read_text())
    on_disk = set(checksums.referenced(built, manifest))
    assert set(manifest["checksums"]) == on_disk
    kinds = {kind(rel) for rel in on_disk}
    assert len(kinds) >= 10, kinds
    assert segengine.open(built).verify()["healthy"]


def test_random_byte_flips_in_every_kind_of_file_are_detected(built, tmp_path):
    manifest = json.loads((built / "manifest.json").read_text())
    files = sorted(manifest["checksums"])
    rng = random.Random(16)
    tried: dict[str, int] = {}
    detected: dict[str, int] = {}
    ws_path = tmp_path / "ws"
    for n in range(120):
        rel = files[n % len(files)] if n < len(files) else rng.choice(files)
        shutil.rmtree(ws_path, ignore_errors=True)
        shutil.copytree(built, ws_path)
        flip(ws_path / rel, rng)
        tried[kind(rel)] = tried.get(kind(rel), 0) + 1
        report = segengine.open(ws_path).verify()
        assert [f["path"] for f in report["files"] if f["state"] == "damaged"] == [rel]
        with pytest.raises(checksums.DamagedFile, match=rel.replace(".", r"\.")):
            read_everything(ws_path)
        detected[kind(rel)] = detected.get(kind(rel), 0) + 1
    print(f"byte flips tried {sum(tried.values())}, detected {sum(detected.values())}: {tried}")
    assert tried == detected


def run(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segengine", "-w", str(ws), *args],
                          capture_output=True, text=True, timeout=120)


def test_a_damaged_index_array_is_an_error_not_a_wrong_count(built, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built, ws)
    segment = tmp_path / "openers.json"
    segment.write_text(json.dumps(NEWSLETTER))
    before = run(ws, "count", str(segment), "--json")
    assert before.returncode == 0, before.stderr
    manifest = json.loads((ws / "manifest.json").read_text())
    counts = next(rel for rel in manifest["checksums"] if rel.endswith("aggregates/count.npy"))
    flip(ws / counts, random.Random(1))
    for engine in ("auto", "index"):
        after = run(ws, "count", str(segment), "--engine", engine)
        assert after.returncode == 1, after.stdout
        assert after.stderr.count("\n") == 1 and counts in after.stderr
        assert "segengine verify" in after.stderr and "segengine reindex" in after.stderr
    checked = run(ws, "verify")
    assert checked.returncode == 1 and f"DAMAGED: {counts}" in checked.stdout
    assert "reindex" in checked.stderr
    # reindex rebuilds the index from the data files: healthy again, the same count
    assert run(ws, "reindex").returncode == 0
    assert run(ws, "verify").returncode == 0
    def total(out: subprocess.CompletedProcess) -> tuple:
        result = json.loads(out.stdout)
        return result["total"], result["sendable"]

    assert total(run(ws, "count", str(segment), "--json")) == total(before)


def test_a_damaged_data_file_names_the_file_and_the_fix(built, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built, ws)
    manifest = json.loads((ws / "manifest.json").read_text())
    flip(ws / manifest["contacts"][0], random.Random(2))
    out = run(ws, "export", str(write(tmp_path / "all.json", '{"name": "all", "rules": []}')),
              "-o", str(tmp_path / "x.csv"), "--engine", "duckdb")
    assert out.returncode == 1 and manifest["contacts"][0] in out.stderr
    assert "backup" in out.stderr and out.stderr.count("\n") == 1
    assert not (tmp_path / "x.csv").exists()


def test_an_old_manifest_without_checksums_keeps_working(built, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(built, ws)
    manifest = json.loads((ws / "manifest.json").read_text())
    del manifest["checksums"]
    (ws / "manifest.json").write_text(json.dumps(manifest))
    cli = Cli(ws)
    assert cli.json("count", str(write(tmp_path / "a.json", json.dumps(NEWSLETTER))))
    report = cli.json("verify")
    assert report["healthy"] and report["ok"] == 0 and report["unchecked"] > 10
    assert "no checksum recorded" in cli("verify").stdout


# --- block hashes: a reader hashes the parts of a big index file it reads ---------------

#: Small blocks make the sample's index files span many of them (1 MiB in use).
SMALL_BLOCK = 4096


@pytest.fixture(scope="module")
def blocked(tmp_path_factory) -> Path:
    from segengine.synth import generate

    root = tmp_path_factory.mktemp("blocked")
    generate(root / "data", contacts=3000, events=30000, seed=7)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checksums, "BLOCK", SMALL_BLOCK)
        ws = segengine.Workspace.init(root / "ws")
        ws.import_contacts(root / "data" / "contacts.parquet")
        ws.import_events(root / "data" / "events.parquet")
    return root / "ws"


def test_big_index_files_have_block_hashes_and_data_files_none(blocked):
    manifest = json.loads((blocked / "manifest.json").read_text())
    blocks = manifest["blocks"]
    recent = next(rel for rel in blocks if rel.endswith("aggregates/recent.npy"))
    size, _, digests = blocks[recent].partition(":")
    assert int(size) == SMALL_BLOCK
    assert len(digests) == 16 * -(-(blocked / recent).stat().st_size // SMALL_BLOCK)
    assert all(rel.startswith("index/") for rel in blocks)
    assert set(blocks) <= set(manifest["checksums"])


def test_flips_in_files_with_block_hashes_are_detected(blocked, tmp_path):
    manifest = json.loads((blocked / "manifest.json").read_text())
    files = sorted(manifest["blocks"])
    rng = random.Random(21)
    ws_path = tmp_path / "ws"
    for n in range(3 * len(files)):
        rel = files[n % len(files)]
        shutil.rmtree(ws_path, ignore_errors=True)
        shutil.copytree(blocked, ws_path)
        flip(ws_path / rel, rng)
        report = segengine.open(ws_path).verify()
        assert [f["path"] for f in report["files"] if f["state"] == "damaged"] == [rel]
        with pytest.raises(checksums.DamagedFile, match=rel.replace(".", r"\.")):
            read_everything(ws_path)


def flip_at(path: Path, at: int) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_count_hashes_the_blocks_it_reads_and_a_flip_in_them_is_an_error(blocked, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(blocked, ws)
    manifest = json.loads((ws / "manifest.json").read_text())
    recent = next(rel for rel in manifest["blocks"] if rel.endswith("aggregates/recent.npy"))
    # "1 or 2 opens in 90 days" compares each contact's latest open days: it reads the
    # opens' column of `recent`, and no other type's
    segment = write(tmp_path / "s.json", json.dumps(
        {"name": "s", "rules": [{"activity": "opened", "when": {"in_last_days": 90},
                                 "count": {"between": [1, 2]}}]}))
    before = run(ws, "count", str(segment), "--json", "--as-of", "2026-11-01")
    assert before.returncode == 0, before.stderr
    # The `recent` days of the opens' column, in the middle of the file: the count reads
    # them, so a flipped bit there is an error naming the file, never a wrong count.
    mapped = np.load(ws / recent, mmap_mode="r")
    column = mapped.strides[0]  # bytes of one event type's (RECENT, rows) days
    assert column > 4 * SMALL_BLOCK
    flip_at(ws / recent, mapped.offset + EVENT_TYPES.index("open") * column + column // 2)
    after = run(ws, "count", str(segment), "--as-of", "2026-11-01")
    assert after.returncode == 1 and recent in after.stderr
    assert after.stderr.count("\n") == 1 and "segengine reindex" in after.stderr
    # The same flip in the bounces' column, which this count does not read: the count is
    # answered (the bytes it read are the committed ones), and `verify` finds the damage.
    shutil.rmtree(ws)
    shutil.copytree(blocked, ws)
    flip_at(ws / recent, mapped.offset + EVENT_TYPES.index("bounce") * column + column // 2)
    again = run(ws, "count", str(segment), "--json", "--as-of", "2026-11-01")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["total"] == json.loads(before.stdout)["total"]
    assert f"DAMAGED: {recent}" in run(ws, "verify").stdout


def test_a_file_linked_into_the_next_index_is_not_hashed_again(tmp_path, monkeypatch):
    """A hard link keeps the identity and checksum of the file it links: the first read
    after an import costs a stat, while a damaged copy is still found."""
    checksums.forget()
    first = tmp_path / "a.bin"
    first.write_bytes(b"x" * 1000)
    value = checksums.file_checksum(first)
    linked, copied = tmp_path / "b.bin", tmp_path / "c.bin"
    os.link(first, linked)
    shutil.copy(first, copied)
    data = bytearray(copied.read_bytes())
    data[7] ^= 1
    copied.write_bytes(bytes(data))
    checksums.expect(tmp_path, {"checksums": {n: value for n in ("a.bin", "b.bin", "c.bin")}})
    checksums.check(first)
    hashed = []
    real = checksums.file_checksum
    monkeypatch.setattr(checksums, "file_checksum", lambda p: hashed.append(p) or real(p))
    checksums.check(linked)
    assert hashed == []
    with pytest.raises(checksums.DamagedFile, match="c.bin"):
        checksums.check(copied)
    checksums.forget()


# --- the aggregate delta: read, and checked, when a count first reads an aggregate -----


@pytest.fixture(scope="module")
def with_delta(tmp_path_factory) -> Path:
    """The sample imported as contacts, then its events in two imports whose second keeps
    the changed aggregates in a delta over the first's base."""
    from conftest import SAMPLE

    from segengine.store import aggregates

    root = tmp_path_factory.mktemp("delta")
    header, *rows = (SAMPLE / "events.csv").read_text().splitlines(keepends=True)
    cut = len(rows) * 9 // 10
    write(root / "a.csv", header + "".join(rows[:cut]))
    write(root / "b.csv", header + "".join(rows[cut:]))
    ws = segengine.Workspace.init(root / "ws")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aggregates, "DELTA_MAX_PER_CONTACT", 1e9)
        ws.import_contacts(SAMPLE / "contacts.csv")
        ws.import_events(root / "a.csv")
        ws.import_events(root / "b.csv")
    manifest = json.loads((root / "ws" / "manifest.json").read_text())
    assert [rel for rel in manifest["checksums"] if "/aggregates/delta." in rel]
    return root / "ws"


def test_a_flipped_delta_file_is_an_error_once_a_count_reads_the_aggregates(with_delta, tmp_path):
    manifest = json.loads((with_delta / "manifest.json").read_text())
    deltas = sorted(rel for rel in manifest["checksums"] if "/aggregates/delta." in rel)
    assert len(deltas) == 5  # the rows and the four aggregates
    # "at least twice ever" reads the per-contact counts, so their delta; "3 times in
    # 90 days" is answered by bitmaps and reads no aggregate
    ever = write(tmp_path / "ever.json", json.dumps(
        {"name": "ever", "rules": [{"activity": "opened", "count": {"gte": 2}}]}))
    recent = write(tmp_path / "recent.json", json.dumps(
        {"name": "recent", "rules": [{"activity": "opened", "when": {"in_last_days": 90},
                                      "count": {"gte": 3}}]}))
    ws = tmp_path / "ws"
    rng = random.Random(3)
    for rel in deltas:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(with_delta, ws)
        flip(ws / rel, rng)
        with pytest.raises(checksums.DamagedFile, match=rel.replace(".", r"\.")):
            read_everything(ws)
    shutil.rmtree(ws)
    shutil.copytree(with_delta, ws)
    before = run(ws, "count", str(ever), "--json", "--as-of", "2026-11-01")
    assert before.returncode == 0, before.stderr
    rel = next(rel for rel in deltas if rel.endswith("delta.count.npy"))
    flip(ws / rel, rng)
    after = run(ws, "count", str(ever), "--as-of", "2026-11-01")
    assert after.returncode == 1 and rel in after.stderr
    assert after.stderr.count("\n") == 1 and "segengine reindex" in after.stderr
    answered = run(ws, "count", str(recent), "--json", "--as-of", "2026-11-01")
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)["total"] == segengine.open(with_delta).count(
        recent, as_of="2026-11-01", engine="duckdb")["total"]
    assert f"DAMAGED: {rel}" in run(ws, "verify").stdout
