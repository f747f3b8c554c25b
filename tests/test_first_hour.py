"""What a new user meets in the first hour: import messages and exit codes, tables in
pipes, --json everywhere, export safety, explain's wording, count's timing."""

from __future__ import annotations

import io
import json
import re

import pytest
from conftest import SAMPLE, SEGMENTS, Cli, write

from segengine.errors import ImportRejected


def contact_lines(n: int) -> str:
    return "".join(f"user{i}@x.io,{i}\n" for i in range(n))


# --- 2. an import that rejects every row fails ---------------------------------------


def test_import_that_rejects_every_row_exits_1_and_says_so(cli, tmp_path):
    bad = write(tmp_path / "bad.csv", "email,score\nnot-an-address,1\nalso bad,2\n")
    result = cli("import", "contacts", bad, code=1)
    assert "all 2 rows of" in result.stderr and "nothing was imported" in result.stderr
    assert "line 2: invalid email 'not-an-address'" in result.stderr
    assert "rejects.csv" in result.stderr
    # --json still prints its document, and the exit status is the same
    out = cli("import", "contacts", bad, "--json", code=1)
    assert json.loads(out.stdout)["rejected"] == 2


def test_import_that_rejects_some_rows_exits_0_with_a_warning(cli, tmp_path):
    cli("import", "contacts", write(tmp_path / "c.csv", "email\na@x.io\n"))
    some = write(tmp_path / "e.csv", "email,campaign,type,timestamp\n"
                 "a@x.io,c1,open,2026-01-01T00:00:00Z\nnobody@x.io,c1,open,2026-01-01T00:00:00Z\n")
    result = cli("import", "events", some)
    assert "warning: 1 of 2 rows rejected" in result.stderr
    assert "line 3: unknown email 'nobody@x.io'" in result.stderr


def test_events_all_unknown_exit_1(cli, tmp_path):
    cli("import", "contacts", write(tmp_path / "c.csv", "email\na@x.io\n"))
    none = write(tmp_path / "e.csv", "email,campaign,type,timestamp\nb@x.io,c1,open,2026-01-01\n")
    assert "the only row of" in cli("import", "events", none, code=1).stderr


# --- 3. built-in column names ignore case --------------------------------------------


def test_builtin_contact_columns_match_any_case_custom_fields_keep_theirs(ws, cli, tmp_path):
    f = write(tmp_path / "c.csv", "Email, Status ,DATE_ADDED,Lists,First_Name\n"
              "A@X.io,unsubscribed,2024-01-02,News;VIP,Ann\n")
    summary = cli.json("import", "contacts", f)
    assert (summary["imported"], summary["new_fields"]) == (1, {"First_Name": "text"})
    info = cli.json("history", "a@x.io")["fields"]
    assert info["status"] == "unsubscribed" and info["First_Name"] == "Ann"
    assert sorted(info["lists"]) == ["News", "VIP"]
    # the custom field keeps its exact name: `first_name` would be another field
    assert "first_name" not in info


def test_builtin_columns_of_a_parquet_file_match_any_case(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({" Email ": ["A@x.io"], "STATUS": ["bounced"], "Zip": ["02134"]}), f)
    summary = ws.import_contacts(f)
    assert (summary.imported, summary.new_fields) == (1, {"Zip": "text"})
    assert ws.count({"name": "b", "rules": [{"field": "status", "op": "is", "value": "bounced"}]},
                    as_of="2026-01-01")["total"] == 1


def test_builtin_event_columns_match_any_case(cli, tmp_path):
    cli("import", "contacts", write(tmp_path / "c.csv", "email\na@x.io\n"))
    f = write(tmp_path / "e.csv", "EMAIL,Campaign,Type,TimeStamp,URL\n"
              "a@x.io,c1,click,2026-01-01T10:00:00Z,https://x.io/a\n")
    assert cli.json("import", "events", f)["imported"] == 1


def test_two_spellings_of_one_builtin_column_are_refused(ws, tmp_path):
    f = write(tmp_path / "c.csv", "email,Email\na@x.io,b@x.io\n")
    with pytest.raises(ImportRejected, match="'email' and 'Email' both name the built-in column 'email'"):
        ws.import_contacts(f)


def test_missing_email_column_lists_the_columns_found(ws, cli, tmp_path):
    f = write(tmp_path / "c.csv", "E-mail address,name\na@x.io,Ann\n")
    with pytest.raises(ImportRejected, match=r"no 'email' column \(found 'E-mail address', 'name'\)"):
        ws.import_contacts(f)
    cli("import", "contacts", write(tmp_path / "ok.csv", "email\na@x.io\n"))
    e = write(tmp_path / "e.csv", "Mail,campaign,type,timestamp\na@x.io,c1,open,2026-01-01\n")
    with pytest.raises(ImportRejected, match=r"missing column\(s\) email \(found 'Mail', 'campaign'"):
        ws.import_events(e)


# --- 4. a byte that is not UTF-8 ------------------------------------------------------


def test_bad_byte_far_down_names_its_line_and_offset(ws, tmp_path):
    head = "email,score\n" + contact_lines(3999)  # lines 1..4000
    f = tmp_path / "latin1.csv"
    f.write_bytes(head.encode() + "zoë@x.io,1\n".encode("latin-1"))
    offset = len(head.encode()) + 2
    with pytest.raises(ImportRejected) as caught:
        ws.import_contacts(f)
    message = str(caught.value)
    assert f"line 4001 is not UTF-8 (byte 0xeb at byte offset {offset})" in message
    assert "re-save the file as UTF-8" in message and "iconv -f" in message


def test_bad_byte_near_the_top_is_not_blamed_on_the_header(ws, tmp_path):
    f = tmp_path / "short.csv"
    f.write_bytes(b"email,city\na@x.io,Paris\nb@x.io,K\xf6ln\n")
    with pytest.raises(ImportRejected, match=r"line 3 is not UTF-8 \(byte 0xf6 at byte offset 32\)"):
        ws.import_contacts(f)


def test_utf16_file_is_named_as_such(ws, tmp_path):
    f = tmp_path / "excel.csv"
    f.write_bytes("email\na@x.io\n".encode("utf-16"))
    with pytest.raises(ImportRejected, match="is UTF-16, not UTF-8.*iconv -f UTF-16 -t UTF-8"):
        ws.import_contacts(f)


def test_first_invalid_utf8_across_block_boundaries(tmp_path):
    from segengine.store.staging import first_invalid_utf8

    f = tmp_path / "x.csv"
    # a valid 3-byte character cut by every block size, then a bad byte on line 3
    f.write_bytes("a\n€€€\n".encode() + b"b\xff\n")
    for block in (1, 2, 3, 4, 5, 64):
        assert first_invalid_utf8(f, block=block) == (3, 13, 0xFF)
    f.write_bytes("a\n€".encode()[:-1])  # cut at the end of the file
    assert first_invalid_utf8(f, block=2) == (2, 2, 0xE2)
    f.write_bytes(b"fine\n")
    assert first_invalid_utf8(f) is None


# --- 5. generate says which --as-of to use -------------------------------------------


def test_generate_prints_the_as_of_of_its_data(tmp_path):
    run = Cli(None)
    out = run("generate", "--contacts", "50", "--events", "200", "--seed", "3", "-o", tmp_path / "g")
    assert "count it with --as-of 2026-10-31" in out.stdout
    doc = run.json("generate", "--contacts", "50", "--events", "200", "--seed", "3", "-o", tmp_path / "h")
    assert doc["as_of"] == "2026-10-31"


# --- 6. progress on a terminal ---------------------------------------------------------


def test_progress_shows_rows_rate_and_phase_not_question_marks():
    from rich.console import Console

    from segengine.progress import RichProgress

    screen = io.StringIO()
    bar = RichProgress(Console(file=screen, force_terminal=True, width=120))
    with bar.task("reading contacts.csv") as task:
        task.update(200_000)
    with bar.task("indexing 1,000 events", total=1000) as task:
        task.update(500)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "0/?" not in text
    assert "reading contacts.csv" in text and "200,000 rows" in text
    assert re.search(r"[\d,]+ rows/s", text)
    assert "1,000/1,000" in text and "100%" in text


# --- 7. re-importing an unchanged file -------------------------------------------------


def test_reimport_reports_changed_rows_as_updated_and_the_rest_unchanged(cli, tmp_path):
    f = write(tmp_path / "c.csv", "email,score,lists\na@x.io,1,news\nb@x.io,2,\nc@x.io,3,news;vip\n")
    first = cli.json("import", "contacts", f)
    assert (first["imported"], first["updated"], first["unchanged"]) == (3, 0, 0)
    again = cli("import", "contacts", f)
    assert re.search(r"updated\W+0\b", again.stdout) and re.search(r"unchanged\W+3\b", again.stdout)
    g = write(tmp_path / "d.csv", "email,score,lists\na@x.io,1,news\nb@x.io,5,\nc@x.io,,vip\nd@x.io,4,\n")
    second = cli.json("import", "contacts", g)
    assert (second["imported"], second["updated"], second["unchanged"]) == (1, 1, 2)
    # a new field with a value changes a contact; a suppression does too
    h = write(tmp_path / "e.csv", "email,status,city\na@x.io,,Oslo\nb@x.io,bounced,\nc@x.io,,\n")
    third = cli.json("import", "contacts", h)
    assert (third["updated"], third["unchanged"]) == (2, 1)


# --- 8. whole values when not on a terminal --------------------------------------------


def test_tables_print_whole_values_in_a_pipe(cli, tmp_path):
    url = "https://example.com/" + "very-long-path/" * 12 + "?utm_source=newsletter"
    cli("import", "contacts", write(tmp_path / "c.csv", "email\na@x.io\n"))
    cli("import", "events", write(tmp_path / "e.csv", "email,campaign,type,timestamp,url\n"
                                  f"a@x.io,spring,click,2026-03-01T10:11:12Z,{url}\n"))
    out = cli("history", "a@x.io").stdout
    line = next(x for x in out.splitlines() if "click" in x)
    assert url in line and "2026-03-01T10:11:12Z" in line
    description = "Active contacts in California who opened a campaign in the last ninety days " * 2
    seg = write(tmp_path / "s.yaml", f"name: ca\ndescription: {description.strip()}\n"
                "rules:\n  - {field: status, op: is, value: active}\n")
    cli("segment", "save", seg)
    listed = cli("segment", "list").stdout
    assert any(description.strip() in x for x in listed.splitlines())
    assert all(x == x.rstrip() for x in listed.splitlines())


# --- 9. help and docs stand alone ------------------------------------------------------


def test_help_and_docs_never_cite_the_spec(tmp_path):
    from conftest import REPO
    from test_docs import leaf_commands

    from segengine.cli import main

    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        assert "SPEC" not in page.read_text(), page.name
    run = Cli(None)
    for name, _ in leaf_commands(main):
        assert "SPEC" not in run(*name.split()[1:], "--help").stdout, name
    for group in ("", "import", "segment"):
        assert "SPEC" not in run(*group.split(), "--help").stdout, group


# --- 10. --json everywhere, export safety, explain in the segment language --------------


def test_json_on_init_sql_segment_save_and_delete(tmp_path):
    run = Cli(None)
    assert run.json("init", tmp_path / "w") == {"workspace": str(tmp_path / "w")}
    cli = Cli(tmp_path / "w")
    cli("import", "contacts", write(tmp_path / "c.csv", "email,state\na@x.io,CA\n"))
    assert cli.json("segment", "save", SEGMENTS / "state-ca.yaml")["saved"] == "state-ca"
    doc = cli.json("sql", "state-ca", "--dialect", "postgres", "--as-of", "2026-01-02")
    assert (doc["segment"], doc["dialect"], doc["as_of"]) == ("state-ca", "postgres", "2026-01-02")
    assert doc["sql"].startswith("SELECT") and doc["sql"] == cli("sql", "state-ca", "--dialect",
                                                                 "postgres", "--as-of", "2026-01-02").stdout.strip()
    assert cli.json("segment", "delete", "state-ca") == {"deleted": "state-ca"}


@pytest.fixture
def sample(cli):
    cli("import", "contacts", SAMPLE / "contacts.csv")
    cli("import", "events", SAMPLE / "events.csv")
    cli("segment", "save", SEGMENTS / "never-opened.yaml")
    return cli


def test_export_replaces_an_existing_file_unless_no_clobber(sample, tmp_path):
    out = tmp_path / "a.csv"
    out.write_text("precious\n")
    refused = sample("export", "never-opened", "-o", out, "--no-clobber", code=2)
    assert "the file exists (--no-clobber)" in refused.stderr
    assert out.read_text() == "precious\n"
    sample("export", "never-opened", "-o", out)
    assert out.read_text().startswith("email")


def test_export_refuses_a_name_that_contradicts_the_format(sample, tmp_path):
    err = sample("export", "never-opened", "-o", tmp_path / "a.xlsx", code=2).stderr
    assert "not .xlsx" in err and "--format csv" in err
    assert not (tmp_path / "a.xlsx").exists()
    err = sample("export", "never-opened", "-o", tmp_path / "a.csv", "--format", "parquet", code=2).stderr
    assert "names a csv file but --format is parquet" in err
    # an explicit --format is a decision: any other name is fine
    sample("export", "never-opened", "-o", tmp_path / "a.txt", "--format", "csv")
    assert (tmp_path / "a.txt").read_text().startswith("email")
    sample("export", "never-opened", "-o", tmp_path / "b.pq")
    assert (tmp_path / "b.pq").read_bytes()[:4] == b"PAR1"
    sample("export", "never-opened", "-o", tmp_path / "audience.2026-11-01")
    assert (tmp_path / "audience.2026-11-01").read_text().startswith("email")


def test_explain_prints_values_as_written_in_yaml(sample, tmp_path):
    seg = write(tmp_path / "s.yaml", "name: s\nrules:\n"
                "  - {field: lists, op: includes_all, value: [newsletter, customers]}\n"
                "  - {field: date_added, op: before, value: '2025-01-01'}\n"
                "  - {activity: opened, when: {in_last_days: 30}, campaigns: [c1, 'yes']}\n")
    out = sample("explain", seg, "--as-of", "2026-11-01").stdout
    assert "lists includes_all [newsletter, customers]" in out
    assert "date_added before '2025-01-01'" in out
    assert "opened campaigns: [c1, 'yes'], when: {in_last_days: 30}" in out
    assert "['" not in out and "{'" not in out


# --- 11. count reports its time -------------------------------------------------------


def test_count_reports_elapsed_time(sample):
    doc = sample.json("count", "never-opened", "--as-of", "2026-11-01")
    assert isinstance(doc["elapsed_ms"], float) and doc["elapsed_ms"] >= 0
    assert re.search(r"counted in [\d,.]+ ms", sample("count", "never-opened").stdout)


def test_outputs_inside_the_workspace_are_refused(sample, tmp_path):
    """An export, a rejects report or an unsubscribe report written into the workspace
    could replace its manifest or committed data: refused (exit 2), nothing written."""
    ws = sample.workspace
    manifest = (ws / "manifest.json").read_bytes()
    link = tmp_path / "link"
    link.symlink_to(ws)
    for target in (ws / "manifest.json", ws / "data" / "x.csv", link / "out.csv"):
        err = sample("export", "never-opened", "-o", target, "--format", "csv", code=2).stderr
        assert "inside the workspace" in err and err.count("\n") == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("email\nnot-an-address\n")
    err = sample("import", "contacts", bad, "--rejects", ws / "manifest.json", code=2).stderr
    assert "inside the workspace" in err
    emails = tmp_path / "emails.csv"
    emails.write_text("email\nnobody@example.com\n")
    err = sample("unsubscribe", "--emails", emails, "--report", link / "r.csv", code=2).stderr
    assert "inside the workspace" in err
    assert (ws / "manifest.json").read_bytes() == manifest
    assert not (ws / "data" / "x.csv").exists() and not (ws / "r.csv").exists()
