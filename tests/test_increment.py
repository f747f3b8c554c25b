"""A later batch of events: its addresses found through the index's email lookup, the
stored events not read when the batch is later than all of them, the previous index's
files checked as the update reads them; every answer the same as without any of it."""

from __future__ import annotations

import json
import random
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write

import segengine
from segengine import addresses
from segengine.store import checksums, imports
from segengine.store.index.build import build_index
from segengine.store.index.read import IndexData, load_index
from segengine.store.manifest import schema_of

#: stored as an older rule left them (white space, upper case, full-width letters)
ODD = ["  Bob@X.io", "ＡＬＩＣＥ@x.io", "Carol@Example.COM", "dave@x.io\t", "ÉVE@x.io"]
PLAIN = [f"u{i}@x.io" for i in range(40)] + ["alice@x.io", "zoë@x.io"]

SEGMENTS = [
    {"name": "o3", "rules": [{"activity": "opened", "count": {"gte": 3}, "when": {"in_last_days": 90}}]},
    {"name": "o1", "rules": [{"activity": "opened", "count": {"between": [1, 2]},
                              "when": {"in_last_days": 30}}]},
    {"name": "sent", "rules": [{"activity": "sent", "count": {"gte": 2}}]},
    {"name": "clicked", "rules": [{"activity": "clicked"}]},
]


def test_the_lookup_finds_every_contact_the_rule_finds(tmp_path):
    stored = PLAIN + ODD + ["bob@x.io", None, ""]  # "bob@x.io" and "  Bob@X.io" are one mailbox
    contacts = tmp_path / "contacts.parquet"
    pq.write_table(pa.table({
        "contact_id": pa.array(range(1, len(stored) + 1), pa.int64()),
        "email": pa.array(stored, pa.string()),
        "status": pa.array(["active"] * len(stored)),
    }), contacts)
    build_index([str(contacts)], [], schema_of({"fields": []}), tmp_path / "index")
    index = IndexData.open(tmp_path / "index")
    wanted = sorted({addresses.normalise(s) for s in stored if s} | {"nobody@x.io", "u1@x.i"})
    which, rows = index.contacts_of(pa.array(wanted, pa.string()))
    found = sorted((wanted[w], int(r)) for w, r in zip(which.tolist(), rows.tolist(), strict=True))
    expected = sorted((addresses.normalise(s), row) for row, s in enumerate(stored)
                      if s and addresses.normalise(s) in wanted)
    assert found == expected
    # one mailbox stored twice (as typed by an older rule, and as the rule stores it)
    assert [row for address, row in found if address == "bob@x.io"] == [len(PLAIN), len(PLAIN + ODD)]


def stored_by_an_older_rule(ws: segengine.Workspace, path: Path, monkeypatch) -> None:
    """Import contacts keeping their addresses as typed (as before the address rule)."""
    with monkeypatch.context() as patch:
        patch.setattr(imports, "email_expr", lambda col: f"CAST({col} AS VARCHAR)")
        patch.setattr(addresses, "sql_problem", lambda e: "NULL::VARCHAR")
        ws.import_contacts(path)


def events_csv(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    lines = ["email,campaign,type,timestamp,url"] + [",".join(f'"{v}"' for v in r) for r in rows]
    return write(path, "\n".join(lines) + "\n")


def batch(rng: random.Random, emails: list[str], day0: int, days: int, n: int, camp: str) -> list:
    rows = []
    for _ in range(n):
        day = day0 + rng.randrange(days)
        ts = f"2026-{1 + day // 28:02d}-{1 + day % 28:02d}T{rng.randrange(24):02d}:00:00Z"
        etype = rng.choice(["sent", "open", "open", "click"])
        rows.append((rng.choice(emails), f"{camp}{rng.randrange(3)}", etype, ts,
                     "https://x.io/p" if etype == "click" else ""))
    return rows


def stored_events(ws: segengine.Workspace) -> list[tuple]:
    files = list(ws.snapshot().tables.events)
    return duckdb.sql(f"SELECT contact_id, campaign, type, timestamp, url FROM read_parquet({files}) "
                      "ORDER BY ALL").fetchall()


def counts(ws: segengine.Workspace, engine: str = "index") -> list[int]:
    return [ws.count(s, as_of="2026-11-01", engine=engine)["total"] for s in SEGMENTS]


@pytest.mark.parametrize("lookup_batch", [imports.LOOKUP_BATCH, 4])
def test_a_later_batch_through_the_index_equals_one_through_the_data(tmp_path, monkeypatch,
                                                                     lookup_batch):
    # addresses looked up a few at a time: the odd ones and each mailbox's contacts are
    # found whichever batch they fall in
    monkeypatch.setattr(imports, "LOOKUP_BATCH", lookup_batch)
    contacts = write(tmp_path / "c.csv", "email\n" + "".join(f"{e}\n" for e in PLAIN + ODD))
    rng = random.Random(5)
    typed = PLAIN + [" U3@X.IO", "bob@x.io", "alice@x.io", "ＡＬＩＣＥ@X.IO", "eve@x.io",
                     "carol@example.com", "dave@x.io", "nobody@x.io", "not an address"]
    first = events_csv(tmp_path / "e1.csv", batch(rng, typed, 0, 200, 3000, "a"))
    later = batch(rng, typed, 200, 60, 2000, "b")
    # the next batch repeats some of the last one and adds more on its last day
    overlap = later[:300] + batch(rng, typed, 259, 1, 500, "c")
    workspaces = {}
    for how in ("index", "data"):
        ws = segengine.Workspace.init(tmp_path / how)
        stored_by_an_older_rule(ws, contacts, monkeypatch)
        ws.import_events(first)
        with monkeypatch.context() as patch:
            if how == "data":  # every address matched by a pass over the stored contacts
                patch.setattr(imports, "current_index", lambda snapshot: None)
            summaries = [ws.import_events(events_csv(tmp_path / f"{how}{i}.csv", rows)).as_dict()
                         for i, rows in enumerate((later, later, overlap))]
        workspaces[how] = (ws, summaries)
    (ws, got), (reference, expected) = workspaces["index"], workspaces["data"]
    for summary in (*got, *expected):
        summary.pop("file"), summary.pop("rejects_path")
    assert got == expected
    # the same batch again adds nothing; the overlapping one what it has of its own
    assert got[0]["imported"] > 0 and got[0]["rejected"] > 0 and got[1]["imported"] == 0
    assert got[2]["imported"] > 0 and got[2]["duplicates"] > 0
    assert stored_events(ws) == stored_events(reference)
    # the counts of the updated index are those of a full build and of DuckDB
    updated = counts(ws)
    assert updated == counts(ws, "duckdb")
    ws.reindex()
    assert counts(ws) == updated


def test_a_damaged_file_the_update_reads_makes_it_rebuild_the_index(tmp_path):
    rng = random.Random(9)
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "c.csv", "email\n" + "".join(f"{e}\n" for e in PLAIN)))
    ws.import_events(events_csv(tmp_path / "e1.csv", batch(rng, PLAIN, 0, 200, 3000, "a")))
    manifest = json.loads((ws.path / "manifest.json").read_text())
    # the opens' counts are read by the update (its batch has opens), an event-store
    # block is only linked into the next index
    count_file = next(r for r in manifest["checksums"] if r.endswith("aggregates/count.npy"))
    block = next(r for r in manifest["checksums"] if "/events/" in r and ".open.day" in r)
    for rel in (count_file, block):
        data = bytearray((ws.path / rel).read_bytes())
        data[len(data) // 2] ^= 0x40
        (ws.path / rel).write_bytes(bytes(data))
    checksums.forget()
    summary = ws.import_events(events_csv(tmp_path / "e2.csv", batch(rng, PLAIN, 200, 30, 500, "b")))
    assert summary.imported > 0
    index = json.loads((ws.path / "manifest.json").read_text())["index"]["path"]
    # the damaged array made the commit build the index anew (nothing linked from the old)
    new_block = ws.path / index / "events" / Path(block).name
    assert not new_block.exists()
    assert ws.verify()["healthy"]
    assert counts(ws) == counts(ws, "duckdb")


@pytest.mark.parametrize("links", [True, False])
def test_a_damaged_file_the_update_only_links_keeps_its_checksum(tmp_path, monkeypatch, links):
    from segengine.store import arrays

    if not links:  # a file system without hard links: the update copies the files
        def no_links(source, target):
            raise OSError("hard links not supported")

        monkeypatch.setattr(arrays.os, "link", no_links)
    rng = random.Random(11)
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "c.csv", "email\n" + "".join(f"{e}\n" for e in PLAIN)))
    ws.import_events(events_csv(tmp_path / "e1.csv", batch(rng, PLAIN, 0, 200, 3000, "a")))
    manifest = json.loads((ws.path / "manifest.json").read_text())
    block = next(r for r in manifest["checksums"] if "/events/" in r and ".sent.rows" in r)
    data = bytearray((ws.path / block).read_bytes())
    data[len(data) // 2] ^= 0x40
    (ws.path / block).write_bytes(bytes(data))
    checksums.forget()
    ws.import_events(events_csv(tmp_path / "e2.csv", batch(rng, PLAIN, 200, 30, 500, "b")))
    index = json.loads((ws.path / "manifest.json").read_text())["index"]["path"]
    linked = f"{index}/events/{Path(block).name}"
    report = ws.verify()
    assert [f["path"] for f in report["files"] if f["state"] == "damaged"] == [linked]
    with pytest.raises(checksums.DamagedFile, match=linked):
        load_index(ws.snapshot()).blocks()[0].columns["sent"]


def test_the_first_read_after_a_commit_does_not_hash_what_the_commit_hashed(tmp_path, monkeypatch):
    rng = random.Random(3)
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "c.csv", "email\n" + "".join(f"{e}\n" for e in PLAIN)))
    ws.import_events(events_csv(tmp_path / "e1.csv", batch(rng, PLAIN, 0, 200, 3000, "a")))
    counts(ws)
    ws.import_events(events_csv(tmp_path / "e2.csv", batch(rng, PLAIN, 200, 30, 500, "b")))
    hashed = []
    real = checksums.file_checksums
    monkeypatch.setattr(checksums, "file_checksums", lambda p, **k: hashed.append(p) or real(p, **k))
    monkeypatch.setattr(checksums, "block_hash", lambda data: hashed.append(data) or "")
    after = counts(ws)
    assert hashed == []
    assert after == counts(segengine.open(ws.path), "duckdb")


def window_segments() -> list[dict]:
    """Count ranges in windows that end before the data does: answered from per-contact
    counts before a day (`CountMarks`), not from the latest days."""
    return [{"name": f"w{low}-{days}", "rules": [
        {"activity": activity, "count": {"between": [low, low + 3]}, "when": {"in_last_days": days}}]}
        for activity in ("opened", "sent") for low in (1, 2) for days in (20, 45, 90)]


def test_counts_carried_over_an_import_equal_those_of_a_new_process(tmp_path):
    from segengine.engines.index import CountMarks, type_slices

    rng = random.Random(17)
    emails = [f"u{i}@x.io" for i in range(120)]
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "c.csv", "email\n" + "".join(f"{e}\n" for e in emails)))
    ws.import_events(events_csv(tmp_path / "e1.csv", batch(rng, emails, 0, 200, 6000, "a")))
    as_of = ["2026-03-10", "2026-05-02", "2026-06-20", "2026-07-15"]
    for day in as_of:  # the marks and kept days are derived over the first index
        for segment in window_segments():
            ws.count(segment, as_of=day, engine="index")
    old = ws.session.engine("index").index
    assert ("count-marks", "open") in old.derived and ("counts-before", "open") in old.derived
    # a later batch, with contacts of its own: their rows have no earlier events
    ws.import_contacts(write(tmp_path / "c2.csv", "email\nnew1@x.io\nnew2@x.io\n"))
    for day in as_of:
        for segment in window_segments():
            ws.count(segment, as_of=day, engine="index")
    old = ws.session.engine("index").index
    ws.import_events(events_csv(tmp_path / "e2.csv", batch(rng, emails + ["new1@x.io"], 150, 80, 2000, "b")))
    index = ws.session.engine("index").index
    carried = index.derived[("count-marks", "open")]
    assert isinstance(carried, CountMarks) and len(carried.counts[0]) == index.n == old.n
    first_new = min(int(days[0]) for _, days in type_slices(index.blocks()[len(old.blocks()):], "open"))
    assert 0 < len(carried.days) < len(old.derived[("count-marks", "open")].days)
    assert carried.days.max() <= first_new
    more = [*as_of, "2026-08-01", "2026-09-05", "2026-11-01"]
    here = [ws.count(s, as_of=d, engine="index")["total"] for d in more for s in window_segments()]
    fresh = segengine.open(ws.path)
    assert here == [fresh.count(s, as_of=d, engine="index")["total"] for d in more for s in window_segments()]
    assert here == [fresh.count(s, as_of=d, engine="duckdb")["total"] for d in more for s in window_segments()]


@pytest.mark.parametrize("collide", [False, True])
def test_find_all_is_a_comparison_with_every_row(collide, monkeypatch):
    from segengine.store.index import lookup

    if collide:  # every address shares one hash: every row is a candidate of every text
        monkeypatch.setattr(lookup, "hash_array", lambda values: np.zeros(len(values), np.uint64))
    rng = random.Random(4)
    values = sorted({f"{rng.choice('abc')}{rng.randrange(60)}@x.io" for _ in range(80)})
    dictionary = pa.array(values, pa.string())
    codes = np.array([rng.randrange(len(values) + 1) for _ in range(300)], np.uint32)
    prefixes, rows = lookup.build_lookup(codes, dictionary)
    texts = pa.array(sorted({*rng.sample(values, 30), "none@x.io", ""}), pa.string())
    which, found = lookup.find_all(prefixes, rows, codes, dictionary, texts)
    got = sorted(zip(which.tolist(), found.tolist(), strict=True))
    expected = sorted((i, row) for i, text in enumerate(texts.to_pylist())
                      for row, code in enumerate(codes.tolist())
                      if code < len(values) and values[code] == text)
    assert got == expected and len(expected) > 30


def test_an_update_makes_what_it_wrote_durable_and_links_by_their_directories(tmp_path, monkeypatch):
    from segengine.store import workspace

    rng = random.Random(8)
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "c.csv", "email\n" + "".join(f"{e}\n" for e in PLAIN)))
    ws.import_events(events_csv(tmp_path / "e1.csv", batch(rng, PLAIN, 0, 200, 3000, "a")))
    old = ws.path / json.loads((ws.path / "manifest.json").read_text())["index"]["path"]
    old_inodes = {p.stat().st_ino for p in old.rglob("*") if p.is_file()}
    synced: list[Path] = []
    real = workspace.fsync_path
    monkeypatch.setattr(workspace, "fsync_path", lambda p: synced.append(Path(p)) or real(p))
    ws.import_events(events_csv(tmp_path / "e2.csv", batch(rng, PLAIN, 200, 30, 500, "b")))
    new = ws.path / json.loads((ws.path / "manifest.json").read_text())["index"]["path"]
    files = [p for p in new.rglob("*") if p.is_file()]
    written = [p for p in files if p.stat().st_ino not in old_inodes]
    assert written and len(written) < len(files)  # the update links most of the index
    assert set(written) <= set(synced)
    assert {new, *(p for p in new.rglob("*") if p.is_dir())} <= set(synced)
    # a subdirectory is synced after the files written into it
    for path in written:
        assert synced.index(path) < synced.index(path.parent)
