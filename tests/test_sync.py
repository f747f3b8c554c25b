"""Sync jobs (docs/sync.md): what a run writes, the job's state, and bad input.

The crash tests (kill -9 at many moments, a full disk, concurrent writers) are in
tests/test_sync_crash.py.
"""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import Cli, write

import segengine
from segengine.errors import InputError, SegmentNotFound, WorkspaceBusy
from segengine.export import UnknownColumn
from segengine.sync import JobNotFound

CA = {"name": "ca", "rules": [{"field": "state", "op": "is", "value": "CA"}]}
NEWSLETTER = {"name": "newsletter", "rules": [{"field": "lists", "op": "includes", "value": "news"}]}

# +plus and -minus start like formulas: a CSV job without --raw guards them with a '
CONTACTS = (
    "email,status,lists,state,score\n"
    "ann@example.com,active,news,CA,1\n"
    "bob@example.com,active,,CA,2\n"
    "cat@example.com,active,,CA,3\n"
    "dan@example.com,active,,CA,4\n"
    "eve@example.com,active,,NY,5\n"
    "+plus@example.com,active,,CA,6\n"
    "-minus@example.com,active,,CA,7\n"
    "old@example.com,unsubscribed,,CA,8\n"
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def filled(tmp_path) -> segengine.Workspace:
    ws = segengine.Workspace.init(tmp_path / "ws")
    ws.import_contacts(write(tmp_path / "contacts.csv", CONTACTS), types="score=number")
    ws.save_segment(CA)
    ws.save_segment(NEWSLETTER)
    return ws


@pytest.fixture
def out(tmp_path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def change_membership(ws: segengine.Workspace, tmp_path: Path) -> None:
    """bob moves to NY (leaves), cat bounces, dan unsubscribes, eve moves to CA and
    fay arrives in CA (both join)."""
    ws.import_contacts(write(tmp_path / "update.csv", (
        "email,status,state\n"
        "bob@example.com,,NY\n"
        "cat@example.com,bounced,\n"
        "eve@example.com,,CA\n"
        "fay@example.com,active,CA\n"
    )))
    ws.unsubscribe(emails=write(tmp_path / "unsub.csv", "email\ndan@example.com\n"))


def test_first_run_exports_every_member_then_only_changes(filled, out, tmp_path):
    created = filled.sync_create("crm", "ca", to=out, columns="email,score")
    assert created["columns"] == ["email", "score"] and created["run"] == 0
    first = filled.sync_run("crm", as_of="2026-01-01")
    assert first.as_dict() == {
        "job": "crm", "run": 1, "added": 6, "removed": 0, "members": 6,
        "files": [str(out / "crm.000001.added.csv"), str(out / "crm.000001.removed.csv")],
        "full": True, "as_of": "2026-01-01",
    }
    rows = read_csv(out / "crm.000001.added.csv")
    # ordered by email in code-point order; formula-like emails guarded as export guards them
    assert [r["email"] for r in rows] == ["'+plus@example.com", "'-minus@example.com", "ann@example.com",
                                          "bob@example.com", "cat@example.com", "dan@example.com"]
    assert rows[2] == {"email": "ann@example.com", "score": "1"}
    assert (out / "crm.000001.removed.csv").read_text() == "email,reason\n"

    change_membership(filled, tmp_path)
    second = filled.sync_run("crm")
    assert (second.run, second.added, second.removed, second.members, second.full) == (2, 2, 3, 5, False)
    assert [r["email"] for r in read_csv(out / "crm.000002.added.csv")] == ["eve@example.com", "fay@example.com"]
    assert read_csv(out / "crm.000002.removed.csv") == [
        {"email": "bob@example.com", "reason": "left_segment"},
        {"email": "cat@example.com", "reason": "bounced"},
        {"email": "dan@example.com", "reason": "unsubscribed"},
    ]
    # nothing changed: both files are written, empty but for the header
    third = filled.sync_run("crm")
    assert (third.run, third.added, third.removed, third.members) == (3, 0, 0, 5)
    assert (out / "crm.000003.added.csv").read_text() == "email,score\n"
    assert (out / "crm.000003.removed.csv").read_text() == "email,reason\n"


def test_the_runs_add_up_to_the_export(filled, out, tmp_path):
    filled.sync_create("crm", "ca", "newsletter", to=out, raw=True)
    filled.sync_run("crm")
    change_membership(filled, tmp_path)
    filled.sync_run("crm")
    members: set[str] = set()
    for run in (1, 2):
        for row in read_csv(out / f"crm.{run:06d}.removed.csv"):
            members.remove(row["email"])  # never removes what was not added
        for row in read_csv(out / f"crm.{run:06d}.added.csv"):
            assert row["email"] not in members  # never added twice
            members.add(row["email"])
    filled.export("ca", "newsletter", output=tmp_path / "all.csv", raw=True)
    assert members == {r["email"] for r in read_csv(tmp_path / "all.csv")}
    # the default columns are export's: email, then the custom fields (fixed at creation)
    header = (tmp_path / "all.csv").read_text().splitlines()[0]
    assert (out / "crm.000001.added.csv").read_text().splitlines()[0] == header


def test_parquet_job_and_its_removed_emails_as_keys(filled, out, tmp_path):
    filled.sync_create("pq", "ca", to=out, format="parquet", columns=["email", "score"])
    filled.sync_run("pq")
    table = pq.read_table(out / "pq.000001.added.parquet")
    assert table.column_names == ["email", "score"]
    assert table.column("email").to_pylist()[:2] == ["+plus@example.com", "-minus@example.com"]
    filled.unsubscribe(emails=write(tmp_path / "u.csv", "email\n-minus@example.com\n"))
    result = filled.sync_run("pq")
    assert [Path(f).name for f in result.files] == ["pq.000002.added.parquet", "pq.000002.removed.csv"]
    # a Parquet file is never guarded, so the removed file's keys are not either
    assert read_csv(out / "pq.000002.removed.csv") == [{"email": "-minus@example.com", "reason": "unsubscribed"}]
    assert pq.read_table(out / "pq.000002.added.parquet").num_rows == 0


def test_files_are_private_and_no_temporary_files_stay(filled, out):
    filled.sync_create("crm", "ca", to=out)
    filled.sync_run("crm")
    names = sorted(os.listdir(out))
    assert names == ["crm.000001.added.csv", "crm.000001.removed.csv"]
    for name in names:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600


def test_state_is_a_small_bitmap_in_the_workspace(filled, out, tmp_path):
    filled.sync_create("crm", "ca", to=out)
    filled.sync_run("crm")
    job = filled.snapshot().manifest["syncs"]["crm"]
    members = job["members"]
    assert members["kind"] == "roaring32" and members["count"] == 6
    assert members["path"].startswith("syncs/")
    assert (filled.path / members["path"]).stat().st_size <= 2 * 6 + 16
    first_file = members["path"]
    filled.sync_run("crm")
    filled.sync_run("crm")
    # superseded member files are collected like any unreferenced file
    kept = {p.name for p in (filled.path / "syncs").iterdir()}
    assert Path(first_file).name not in kept and len(kept) == 2
    show = filled.sync_show("crm")
    assert [r["run"] for r in show["runs"]] == [1, 2, 3]
    assert show["runs"][0]["full"] and not show["runs"][1]["full"]
    assert show["runs"][0]["files"] == ["crm.000001.added.csv", "crm.000001.removed.csv"]


def test_contact_ids_are_stable_across_imports(filled, tmp_path):
    """The member bitmap is over contact ids: an import keeps every known address's id."""
    import polars as pl

    def ids() -> dict[str, int]:
        frame = pl.read_parquet(list(filled.snapshot().files("contacts")))
        return dict(zip(frame["email"], frame["contact_id"], strict=True))

    before = ids()
    change_membership(filled, tmp_path)
    filled.import_contacts(write(tmp_path / "more.csv", "email,state\nann@example.com,TX\naaa@example.com,CA\n"))
    after = ids()
    assert {e: after[e] for e in before} == before
    assert after["aaa@example.com"] > max(before.values())


def test_reset_starts_from_nothing_and_numbers_go_on(filled, out, tmp_path):
    filled.sync_create("crm", "ca", to=out)
    filled.sync_run("crm")
    change_membership(filled, tmp_path)
    reset = filled.sync_reset("crm")
    assert reset["next_run_full"] and reset["run"] == 1
    again = filled.sync_run("crm")
    assert (again.run, again.added, again.removed, again.members, again.full) == (2, 5, 0, 5, True)


def test_list_show_delete(filled, out):
    assert filled.sync_jobs() == []
    filled.sync_create("b-job", "ca", to=out)
    filled.sync_create("a-job", "newsletter", to=out)
    filled.sync_run("a-job")
    jobs = filled.sync_jobs()
    assert [j["job"] for j in jobs] == ["a-job", "b-job"]
    assert jobs[0]["run"] == 1 and jobs[0]["members"] == 1 and jobs[1]["members"] is None
    deleted = filled.sync_delete("a-job")
    assert deleted == {"deleted": "a-job", "to": str(out.resolve()), "runs": 1}
    assert (out / "a-job.000001.added.csv").exists()  # its files stay
    with pytest.raises(JobNotFound, match="no sync job 'a-job'"):
        filled.sync_show("a-job")
    # a new job of the same name would overwrite those files: refused
    with pytest.raises(InputError, match="already holds files of a job named 'a-job'"):
        filled.sync_create("a-job", "newsletter", to=out)


def test_a_definition_file_segment_is_kept_by_absolute_path(filled, out, tmp_path, monkeypatch):
    write(tmp_path / "ny.json", json.dumps({"name": "ny", "rules": [
        {"field": "state", "op": "is", "value": "NY"}]}))
    monkeypatch.chdir(tmp_path)
    job = filled.sync_create("ny", "ny.json", to=out)
    assert job["segments"] == [str(tmp_path / "ny.json")]
    monkeypatch.chdir(out)
    assert filled.sync_run("ny").members == 1
    (tmp_path / "ny.json").unlink()
    with pytest.raises(InputError, match=f"segment file {tmp_path / 'ny.json'} no longer exists"):
        filled.sync_run("ny")


def test_a_deleted_segment_or_directory_fails_and_changes_nothing(filled, out, tmp_path):
    filled.sync_create("crm", "ca", "newsletter", to=out)
    filled.sync_run("crm")
    filled.delete_segment("newsletter")  # allowed while a job uses it
    before = (filled.path / "manifest.json").read_bytes()
    files = sorted(os.listdir(out))
    with pytest.raises(InputError, match="segment 'newsletter' no longer exists"):
        filled.sync_run("crm")
    out.rename(tmp_path / "moved")
    with pytest.raises(InputError, match=f"segment 'newsletter', directory {out} no longer exist"):
        filled.sync_run("crm")
    assert (filled.path / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(tmp_path / "moved")) == files


def test_create_refuses_bad_input(filled, out, tmp_path):
    with pytest.raises(InputError, match="sync job name 'Bad Name'"):
        filled.sync_create("Bad Name", "ca", to=out)
    with pytest.raises(SegmentNotFound, match="no saved segment 'nope'"):
        filled.sync_create("crm", "nope", to=out)
    with pytest.raises(InputError, match="directory does not exist"):
        filled.sync_create("crm", "ca", to=tmp_path / "missing")
    with pytest.raises(InputError, match="is inside the workspace"):
        filled.sync_create("crm", "ca", to=filled.path / "data")
    with pytest.raises(UnknownColumn, match="'scroe' is not a field"):
        filled.sync_create("crm", "ca", to=out, columns="email,scroe")
    with pytest.raises(InputError, match="'xlsx' is not a format"):
        filled.sync_create("crm", "ca", to=out, format="xlsx")
    with pytest.raises(InputError, match="at least one segment"):
        filled.sync_create("crm", to=out)
    filled.sync_create("crm", "ca", to=out)
    with pytest.raises(InputError, match="sync job 'crm' exists"):
        filled.sync_create("crm", "ca", to=out)
    with pytest.raises(JobNotFound, match=r"no sync job 'cmr' \(did you mean 'crm'\?\)"):
        filled.sync_run("cmr")
    with pytest.raises(InputError, match="is not a date"):
        filled.sync_run("crm", as_of="yesterday")


def test_a_run_waits_for_no_one(filled, out):
    filled.sync_create("crm", "ca", to=out)
    with filled.store.lock(), pytest.raises(WorkspaceBusy, match="is busy"):
        filled.sync_run("crm")
    assert os.listdir(out) == []
    assert filled.sync_show("crm")["run"] == 0


# --- the command line ------------------------------------------------------------------


def test_cli_round_trip(filled, out, tmp_path):
    cli = Cli(filled.path)
    created = cli.json("sync", "create", "crm", "--segment", "ca", "--segment", "newsletter",
                       "--to", str(out), "--format", "parquet", "--columns", "email,score")
    assert created["format"] == "parquet" and created["segments"] == ["ca", "newsletter"]
    run = cli.json("sync", "run", "crm", "--as-of", "2026-06-30")
    assert (run["run"], run["added"], run["members"], run["as_of"]) == (1, 6, 6, "2026-06-30")
    assert cli.json("sync", "list")["jobs"][0]["run"] == 1
    assert [r["run"] for r in cli.json("sync", "show", "crm")["runs"]] == [1]
    human = cli("sync", "run", "crm").stdout
    assert "sync crm run 2: 0 added, 0 removed, 6 members" in human
    assert "crm.000002.added.parquet" in human
    assert cli.json("sync", "reset", "crm")["next_run_full"] is True
    assert cli.json("sync", "delete", "crm") == {"deleted": "crm", "to": str(out.resolve()), "runs": 2}
    assert "no sync jobs" in cli("sync", "list").stdout


@pytest.mark.parametrize("args, message", [
    (["sync", "run", "nope"], "no sync job 'nope'"),
    (["sync", "show", "nope"], "no sync job 'nope'"),
    (["sync", "reset", "nope"], "no sync job 'nope'"),
    (["sync", "delete", "nope"], "no sync job 'nope'"),
    (["sync", "create", "x", "--segment", "ca", "--to", "{missing}"], "directory does not exist"),
    (["sync", "create", "x", "--segment", "ca", "--to", "{ws}"], "is inside the workspace"),
    (["sync", "create", "x", "--segment", "nope", "--to", "{out}"], "no saved segment 'nope'"),
    (["sync", "create", "X!", "--segment", "ca", "--to", "{out}"], "sync job name 'X!'"),
    (["sync", "create", "x", "--segment", "ca", "--to", "{out}", "--columns", "email,"],
     "--columns: give field names"),
])
def test_cli_bad_input_is_one_line_and_exit_2(filled, out, tmp_path, args, message):
    cli = Cli(filled.path)
    before = (filled.path / "manifest.json").read_bytes()
    paths = {"missing": str(tmp_path / "missing"), "ws": str(filled.path), "out": str(out)}
    result = cli(*[a.format(**paths) for a in args], code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert (filled.path / "manifest.json").read_bytes() == before


def test_a_failed_commit_removes_the_runs_files(filled, out, monkeypatch):
    """A commit that fails (its manifest cannot be written) leaves the job as it was and
    no file of the failed run in the directory."""
    import errno

    from segengine.store.workspace import Transaction
    from segengine.sync import SyncWriteError

    filled.sync_create("crm", "ca", to=out)
    filled.sync_run("crm")
    before = (filled.path / "manifest.json").read_bytes()

    def full_disk(self, progress=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Transaction, "commit", full_disk)
    with pytest.raises(SyncWriteError, match=r"run 2 failed and was not committed \(.*No space left"):
        filled.sync_run("crm")
    monkeypatch.undo()
    assert (filled.path / "manifest.json").read_bytes() == before
    assert sorted(os.listdir(out)) == ["crm.000001.added.csv", "crm.000001.removed.csv"]
    assert filled.sync_run("crm").run == 2


def test_the_benchmark_section_survives_a_rewrite_of_the_results(tmp_path, monkeypatch):
    import benchmarks.sync as bench
    from benchmarks.report import kept_sections

    results = tmp_path / "RESULTS.md"
    results.write_text("# segengine benchmarks\n\n## 1m\n\nold\n\n## How it is measured\n\nsteps\n")
    monkeypatch.setattr(bench, "RESULTS", results)
    bench.write_section("| run | sync |\n", 1_000_000)
    bench.write_section("| run | sync, again |\n", 1_000_000)  # replaced, not added twice
    bench.write_section("| run | ten million |\n", 10_000_000)  # another scale is kept beside it
    (section,) = kept_sections(results.read_text())
    assert section.startswith("<!-- sync benchmark -->") and "again" in section and "| run | sync |" not in section
    assert section.index("At 1,000,000 contacts") < section.index("At 10,000,000 contacts")
    assert results.read_text().startswith("# segengine benchmarks\n\n## 1m\n\nold\n")
