"""Events imported in time-range chunks: each chunk is de-duplicated, sorted and written
on its own, so a chunk boundary must neither drop nor repeat an event."""

from __future__ import annotations

import datetime as dt
import random

import polars as pl
import pytest
from conftest import SAMPLE, write
from test_index import assert_same_answers, split_events

import segengine
from segengine.store import imports

COLUMNS = ["contact_id", "campaign", "type", "timestamp", "url"]


def stored(ws) -> pl.DataFrame:
    return pl.read_parquet(list(ws.snapshot().files("events"))).select(COLUMNS).sort(COLUMNS)


def import_events(ws, path, chunk_rows):
    return imports.import_events(ws.store, path, chunk_rows=chunk_rows)


def outcome(summary) -> tuple:
    return (summary.read, summary.imported, summary.rejected, summary.duplicates)


def duplicated_events(rng: random.Random, n: int) -> str:
    """`n` rows on few timestamps, each event repeated: every chunk boundary falls
    between rows of one timestamp unless the chunks are cut on timestamps."""
    stamps = [dt.datetime(2024, 5, 1) + dt.timedelta(hours=rng.randrange(40)) for _ in range(12)]
    lines = []
    for _ in range(n):
        t = rng.choice(stamps)
        lines.append(f"{rng.choice('abc')}@x.io,c{rng.randrange(2)},{rng.choice(['open', 'click'])},"
                     f"{t.isoformat()}Z,{rng.choice(['', 'https://x.io/p'])}")
    lines += ["nobody@x.io,c1,open,2024-05-01T00:00:00Z,", "a@x.io,c1,open,never,"]
    rng.shuffle(lines)
    return "email,campaign,type,timestamp,url\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("chunk_rows", [1, 3, 17])
def test_chunks_keep_every_event_once(tmp_path, chunk_rows):
    rng = random.Random(chunk_rows)
    first = write(tmp_path / "e1.csv", duplicated_events(rng, 300))
    second = write(tmp_path / "e2.csv", duplicated_events(rng, 300))
    results = {}
    for name, rows in (("one chunk", imports.CHUNK_ROWS), ("chunked", chunk_rows)):
        ws = segengine.Workspace.init(tmp_path / name)
        ws.import_contacts(write(tmp_path / "c.csv", "email\na@x.io\nb@x.io\nc@x.io\n"))
        summaries = [import_events(ws, first, rows)]
        of_first = list(ws.snapshot().files("events"))
        summaries += [import_events(ws, path, rows) for path in (second, first)]
        rejects = [pl.read_csv(s.rejects_path) for s in summaries]
        results[name] = (ws, summaries, rejects, of_first)
    (whole, whole_summaries, whole_rejects, _), (ws, summaries, rejects, of_first) = (
        results["one chunk"], results["chunked"])
    assert [outcome(s) for s in summaries] == [outcome(s) for s in whole_summaries]
    for mine, theirs in zip(rejects, whole_rejects, strict=True):
        assert mine.equals(theirs)
    assert summaries[2].imported == 0  # a repeated file: every event is stored already
    events = stored(ws)
    assert events.equals(stored(whole))
    assert events.height == events.unique().height  # no event twice, across imports too
    assert events.height == summaries[0].imported + summaries[1].imported
    assert len(of_first) > 1  # more than one file for the import: chunks were written
    spans = {}
    for f in ws.snapshot().files("events"):
        stamps = pl.read_parquet(f)["timestamp"]
        assert stamps.is_sorted()
        spans[f] = (stamps.min(), stamps.max())
    first_spans = [spans[f] for f in of_first]
    for (_, hi), (lo, _) in zip(first_spans, first_spans[1:], strict=False):
        assert hi < lo  # one import's files hold disjoint time ranges, in order


def test_chunked_imports_index_like_a_full_build(tmp_path):
    """The sample's events in chunks of a few hundred rows, over several imports: the
    index kept by the commits answers as the DuckDB engine reading the files does."""
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(SAMPLE / "contacts.csv")
    first, second, third, retry = split_events(tmp_path)
    imports.import_events(ws.store, first, chunk_rows=4_000)
    assert len(list(ws.snapshot().files("events"))) >= 4
    for path in (second, third):
        imports.import_events(ws.store, path, chunk_rows=300)
    assert imports.import_events(ws.store, retry, chunk_rows=7).imported == 0
    total = pl.read_csv(SAMPLE / "events.csv").unique().height
    assert stored(ws).height == ws.snapshot().manifest["counts"]["events"]
    assert stored(ws).height <= total
    assert_same_answers(ws)
    ws.reindex()
    assert_same_answers(ws)


def test_an_events_file_without_rows_imports_nothing(ws, tmp_path):
    ws.import_contacts(write(tmp_path / "c.csv", "email\na@x.io\n"))
    summary = import_events(ws, write(tmp_path / "e.csv", "email,campaign,type,timestamp\n"), 1)
    assert outcome(summary) == (0, 0, 0, 0)
    assert list(ws.snapshot().files("events")) == []
