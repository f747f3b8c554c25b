"""The send benchmark's parts at a tiny scale: its sink speaks SMTP (plain, STARTTLS,
AUTH), its workers measure a real send and a bare smtplib loop, and its section of
RESULTS.md survives the main harness rewriting the file."""

from __future__ import annotations

import sys

import pytest

import benchmarks.send as bench
from benchmarks.report import kept_sections


@pytest.fixture
def sink(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "CACHE", tmp_path / "cache")
    ca, cert, key = bench.certificates()
    running = bench.Sink(cert, key)
    yield f"127.0.0.1:{running.port}", str(ca), tmp_path
    running.stop()


def test_bare_loop_and_a_real_send_reach_the_sink(sink):
    address, ca, tmp_path = sink
    assert bench.bare_smtplib(address, 2, "none", None, 7) == 7
    assert bench.bare_smtplib(address, 2, "starttls", ca, 7) == 7
    root = bench.workspace(6)
    for tls in ("none", "starttls"):
        spec = {"sender": "segengine", "workspace": str(root), "address": address, "tls": tls,
                "ca": ca, "connections": 2, "count": 6, "segment": "everyone",
                "campaign": f"smoke-{tls}"}
        got = bench.measure(sys.executable, spec)
        assert got["sent"] == 6 and got["cpu"] > 0 and got["wall"] > 0
    rows = [{"sender": s, "tls": t, "connections": c, "sent": 6, "cpu": 0.006, "wall": 0.1,
             "fixed": 0.003} for s in ("segengine", "smtplib") for t in ("none", "starttls")
            for c in (1, 4)]
    text = bench.table(rows, 6, 1)
    assert "| segengine | STARTTLS + AUTH | 4 | 1.000 | 0.600 | 0.00 | 60 |" in text
    assert "plain over STARTTLS: 1.00x" in text


def test_the_sending_section_is_kept_and_replaced(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    results.write_text("# segengine benchmarks\n\n## 1m\n\nfigures\n\n## How it is measured\n\n- x\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    bench.write_section("first figures\n")
    bench.write_section("second figures\n")
    text = results.read_text()
    assert text.count(bench.BEGIN) == 1 and "second figures" in text and "first" not in text
    assert text.index("## 1m") < text.index(bench.BEGIN) < text.index("## How it is measured")
    # the main harness rewrites the file and keeps every marked section whole
    kept = kept_sections(text)
    assert len(kept) == 1 and kept[0].startswith(bench.BEGIN) and "second figures" in kept[0]
    assert kept[0].rstrip().endswith(bench.END)
