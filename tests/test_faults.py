"""Faults of the disk and damaged workspace files: one line naming the file and the
fix, exit 1, the workspace as it was and no temporary file left behind.

Real faults where the machine allows them: a tiny tmpfs (disk full), a read-only bind
mount, a process run as another user (permission denied) and RLIMIT_FSIZE (a file
size limit). Mounting needs root; those tests are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write

import segengine


def run(ws: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segengine", "-w", str(ws), *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kw)


def one_line_error(out: subprocess.CompletedProcess, *words: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def files_of(ws: Path) -> set[str]:
    return {p.relative_to(ws).as_posix() for p in ws.rglob("*") if p.is_file()}


def contacts_csv(path: Path, n: int, offset: int = 0) -> Path:
    rows = "".join(f"u{offset + i}@example.com,{'x' * 40}{i},{i}\n" for i in range(n))
    return write(path, "email,note,score\n" + rows)


@pytest.fixture
def small(tmp_path) -> Path:
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(contacts_csv(tmp_path / "c.csv", 50))
    return tmp_path / "ws"


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


needs_mount = pytest.mark.skipif(not can_mount(), reason="mounting needs root")


def unchanged_after(ws: Path, before_files: set[str], manifest: bytes) -> None:
    assert (ws / "manifest.json").read_bytes() == manifest
    left = files_of(ws) - before_files
    assert not left, f"left behind: {left}"


# --- damaged workspace files ----------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"{\"format\": \"segengine-wor", b"\x00\x01garbage", b"[]"])
def test_a_damaged_marker_is_one_line(small, content):
    (small / "segengine.json").write_bytes(content)
    one_line_error(run(small, "info"), "segengine.json is damaged", "format_version")


@pytest.mark.parametrize("content", [b"", b"{\"version\": 3, \"contacts\": [\"da", b"\xff\xfe", b"null"])
def test_a_damaged_manifest_is_one_line_naming_the_previous_one(small, tmp_path, content):
    (small / "manifest.json").write_bytes(content)
    one_line_error(run(small, "info"), "manifest.json is damaged", "manifest.previous.json")
    one_line_error(run(small, "import", "contacts", contacts_csv(tmp_path / "d.csv", 3)),
                   "manifest.json is damaged")
    assert (small / "manifest.json").read_bytes() == content
    assert not (small / ".staging").exists()


def test_a_garbage_previous_manifest_never_blocks_a_writer(small, tmp_path):
    (small / "manifest.previous.json").write_bytes(b"\x00garbage{")
    out = run(small, "import", "contacts", contacts_csv(tmp_path / "d.csv", 5, offset=100))
    assert out.returncode == 0, out.stderr
    assert json.loads((small / "manifest.previous.json").read_text())["version"] == 1
    # the next writer collects the files the garbage kept alive
    assert run(small, "import", "contacts", contacts_csv(tmp_path / "e.csv", 5, offset=200)).returncode == 0
    assert len(list((small / "data").glob("contacts-*"))) == 2  # current and previous only


def test_a_truncated_data_file_of_an_old_manifest_is_one_line(small, tmp_path):
    """Without checksums (a manifest from before them) the reader's own error is named."""
    manifest = json.loads((small / "manifest.json").read_text())
    del manifest["checksums"]
    (small / "manifest.json").write_text(json.dumps(manifest))
    data = small / manifest["contacts"][0]
    data.write_bytes(data.read_bytes()[:100])
    out = run(small, "count", write(tmp_path / "a.json", '{"name": "a", "rules": []}'),
              "--engine", "duckdb")
    one_line_error(out, manifest["contacts"][0], "segengine verify")


# --- a full disk, a read-only file system, no permission, a file size limit ------------


@pytest.fixture
def mounted(tmp_path):
    points: list[Path] = []

    def mount(*args: str, point: Path) -> Path:
        point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(point)], check=True, capture_output=True)
        points.append(point)
        return point

    yield mount
    for point in reversed(points):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@needs_mount
def test_a_full_disk_is_one_line_and_leaves_nothing(small, tmp_path, mounted):
    disk = mounted("-t", "tmpfs", "-o", "size=1200k", "tmpfs", point=tmp_path / "disk")
    shutil.copytree(small, disk / "ws")
    ws = disk / "ws"
    before, manifest = files_of(ws), (ws / "manifest.json").read_bytes()
    big = contacts_csv(tmp_path / "big.csv", 40_000, offset=1000)
    out = run(ws, "import", "contacts", big)
    one_line_error(out, "no space left on the device")
    unchanged_after(ws, before, manifest)
    assert run(ws, "info").returncode == 0


@needs_mount
def test_a_read_only_file_system_is_one_line_and_reads_still_work(small, tmp_path, mounted):
    ro = mounted("--bind", str(small), point=tmp_path / "ro")
    subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
    out = run(ro, "import", "contacts", contacts_csv(tmp_path / "d.csv", 3, offset=500))
    one_line_error(out, "read-only")
    assert run(ro, "count", write(tmp_path / "a.json", '{"name": "a", "rules": []}')).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chattr"), reason="chattr +i needs root")
def test_an_immutable_directory_is_one_line(small, tmp_path):
    """Root ignores file modes, not the immutable flag: the data directory refuses new files."""
    before, manifest = files_of(small), (small / "manifest.json").read_bytes()
    if subprocess.run(["chattr", "+i", str(small / "data")], capture_output=True).returncode:
        pytest.skip("the file system has no immutable flag")
    try:
        out = run(small, "import", "contacts", contacts_csv(tmp_path / "d.csv", 3, offset=700))
    finally:
        subprocess.run(["chattr", "-i", str(small / "data")], check=True)
    one_line_error(out, "not permitted", "lsattr")
    unchanged_after(small, before, manifest)


def test_a_file_size_limit_is_one_line_and_leaves_nothing(small, tmp_path):
    before, manifest = files_of(small), (small / "manifest.json").read_bytes()
    big = contacts_csv(tmp_path / "big.csv", 30_000, offset=1000)

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = run(small, "import", "contacts", big, preexec_fn=limited)
    one_line_error(out, "size limit")
    unchanged_after(small, before, manifest)
    assert run(small, "import", "contacts", big).returncode == 0
