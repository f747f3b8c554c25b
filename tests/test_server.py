"""The HTTP API (SPEC section 12) through Starlette's in-process client, and a real
`segengine serve` process that another process imports into while it serves."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

pytest.importorskip("fastapi")

from conftest import SAMPLE, SEGMENTS, Cli  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import segengine  # noqa: E402
from segengine.server import HideTokens, check_bind  # noqa: E402
from segengine.server.app import MAX_BODY_BYTES, create_app  # noqa: E402

AS_OF = "2026-11-27"
NEVER_OPENED_NEWSLETTER = {
    "rules": [
        {"field": "status", "op": "is", "value": "active"},
        {"field": "lists", "op": "includes", "value": "newsletter"},
        {"activity": "opened", "negate": True},
    ]
}


@pytest.fixture(scope="module")
def sample_ws(tmp_path_factory) -> Path:
    """The committed sample with the seed's segments saved (built once, copied per test)."""
    path = tmp_path_factory.mktemp("sample") / "ws"
    ws = segengine.Workspace.init(path)
    ws.import_contacts(SAMPLE / "contacts.csv")
    ws.import_events(SAMPLE / "events.csv")
    for seg in sorted(SEGMENTS.glob("*.yaml")):
        ws.save_segment(seg)
    return path


@pytest.fixture
def ws_path(sample_ws: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ws"
    shutil.copytree(sample_ws, target)
    return target


@pytest.fixture
def client(ws_path: Path) -> TestClient:
    return TestClient(create_app(ws_path), raise_server_exceptions=False)


def test_health_and_schema(client: TestClient, ws_path: Path) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert health["version"] == segengine.__version__
    assert health["snapshot"] == segengine.open(ws_path).snapshot().version
    schema = client.get("/api/schema").json()
    fields = {f["name"]: f for f in schema["fields"]}
    assert fields["title"]["type"] == "text" and "contains" in fields["title"]["operators"]
    assert fields["lists"]["operators"] == ["includes", "includes_all", "excludes", "is_empty", "is_not_empty"]
    assert "newsletter" in schema["lists"]
    assert schema["statuses"] == ["active", "unsubscribed", "bounced"]
    sent = [c["sent_at"] for c in schema["campaigns"]]
    assert sent == sorted(sent, reverse=True) and sent[0].endswith("Z")
    docs = client.get("/docs")
    assert docs.status_code == 200
    # Swagger UI comes from the server, never a CDN: the page works without internet access.
    scripts = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert scripts and all(s.startswith("/") for s in scripts), scripts
    for url in scripts:
        assert client.get(url).status_code == 200, url
    assert "/api/count" in client.get("/openapi.json").json()["paths"]


def test_count_equals_the_library(client: TestClient, ws_path: Path) -> None:
    ws = segengine.open(ws_path)
    answer = client.post("/api/count", json={"segments": [NEVER_OPENED_NEWSLETTER], "as_of": AS_OF}).json()
    elapsed = answer.pop("elapsed_ms")
    answer.pop("snapshot")
    assert elapsed >= 0
    assert answer == ws.count({"name": "x", **NEVER_OPENED_NEWSLETTER}, as_of=AS_OF)
    union = client.post("/api/count", json={"segments": ["never-opened", "state-ca"], "as_of": AS_OF}).json()
    assert union["total"] == ws.count("never-opened", "state-ca", as_of=AS_OF)["total"]


def test_explain_and_sql(client: TestClient, ws_path: Path) -> None:
    ws = segengine.open(ws_path)
    tree = client.post("/api/explain", json={"segment": "never-opened", "as_of": AS_OF}).json()
    expected = ws.explain("never-opened", as_of=AS_OF)
    expected.pop("_tree")
    assert tree == expected
    for dialect in ("duckdb", "postgres", "spark"):
        answer = client.post("/api/sql", json={"segment": "never-opened", "dialect": dialect, "as_of": AS_OF}).json()
        assert answer == {"dialect": dialect, "sql": ws.sql("never-opened", dialect=dialect, as_of=AS_OF)}


def test_members_pages_in_email_order(client: TestClient, ws_path: Path) -> None:
    ws = segengine.open(ws_path)
    everyone = ws.members("state-ca", as_of=AS_OF, active_only=True)
    first = client.post("/api/members", json={"segments": ["state-ca"], "as_of": AS_OF, "limit": 5,
                                              "columns": ["email", "state"]}).json()
    second = client.post("/api/members", json={"segments": ["state-ca"], "as_of": AS_OF, "limit": 5,
                                               "offset": 5, "columns": ["email"]}).json()
    assert first["total"] == second["total"] == everyone.height
    assert [r["email"] for r in first["rows"] + second["rows"]] == everyone["email"].to_list()[:10]
    assert set(first["rows"][0]) == {"email", "state"}
    with_inactive = client.post("/api/members", json={"segments": ["state-ca"], "active_only": False,
                                                      "limit": 0}).json()
    assert with_inactive["total"] == ws.members("state-ca", active_only=False).height > everyone.height
    bad = client.post("/api/members", json={"segments": ["state-ca"], "columns": ["emial"]})
    assert bad.status_code == 400 and bad.json()["errors"][0]["location"] == "columns"


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_streams_the_cli_bytes(client: TestClient, ws_path: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"cli.{fmt}"
    Cli(ws_path)("export", "never-opened", "-o", out, "--format", fmt, "--as-of", AS_OF,
                 "--columns", "email,state,lists")
    response = client.post("/api/export", json={"segments": ["never-opened"], "format": fmt, "as_of": AS_OF,
                                                "columns": ["email", "state", "lists"]})
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="never-opened.{fmt}"'
    if fmt == "csv":
        assert response.content == out.read_bytes()
    else:  # the same rows and types (both written by the same export code)
        assert pl.read_parquet(io.BytesIO(response.content)).equals(pl.read_parquet(out))


def test_saved_segments_round_trip(client: TestClient) -> None:
    listed = client.get("/api/segments").json()["segments"]
    assert [s["name"] for s in listed] == ["cto-or-sales-west", "inactive-newsletter", "never-opened", "state-ca"]
    saved = client.put("/api/segments/nl-never", json={"description": "d", **NEVER_OPENED_NEWSLETTER})
    assert saved.status_code == 200 and saved.json()["name"] == "nl-never"
    shown = client.get("/api/segments/nl-never").json()
    assert shown["name"] == "nl-never" and shown["description"] == "d"
    assert shown["rules"] == [
        {"field": "status", "op": "is", "value": "active"},
        {"field": "lists", "op": "includes", "value": ["newsletter"]},
        {"activity": "opened", "negate": True},
    ]
    assert client.delete("/api/segments/nl-never").json() == {"deleted": "nl-never"}
    assert client.get("/api/segments/nl-never").status_code == 404


def errors_of(response: httpx.Response, status: int) -> list[dict]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    errors = response.json()["errors"]
    assert errors and all(set(e) == {"location", "message"} and e["message"] for e in errors)
    return errors


def test_error_statuses(client: TestClient, ws_path: Path, monkeypatch) -> None:
    bad_rule = {"rules": [{"field": "title", "op": "containz", "value": "cto"},
                          {"activity": "opened", "count": {"gte": -1}}]}
    errors = errors_of(client.post("/api/count", json={"segments": [bad_rule]}), 400)
    assert [e["location"] for e in errors][0] == "rules[0].op" and "contains" in errors[0]["message"]
    assert any(e["location"].startswith("rules[1]") for e in errors)
    assert errors_of(client.post("/api/count", json={"segments": []}), 400)[0]["location"] == "segments"
    assert errors_of(client.post("/api/count", json={"segments": ["x"], "bogus": 1}), 400)[0]["location"] == "bogus"
    assert errors_of(client.post("/api/count", json={"segments": ["state-ca"], "as_of": "2026-13-01"}), 400)[0]["location"] == "as_of"
    errors_of(client.post("/api/count", json={"segments": ["state-ca"], "engine": "warp"}), 400)
    errors_of(client.post("/api/count", json={"segments": ["no-such-segment"]}), 404)
    errors_of(client.post("/api/count", json={"segments": ["../etc"]}), 400)
    # a name is a saved segment, never a file in the server's working directory
    monkeypatch.chdir(ws_path.parent)
    (ws_path.parent / "readme").write_text("name: readme\nrules: []\n")
    errors_of(client.post("/api/count", json={"segments": ["readme"]}), 404)
    errors_of(client.get("/api/segments/no-such"), 404)
    errors_of(client.delete("/api/segments/no-such"), 404)
    # names are checked before any file is touched
    assert errors_of(client.put("/api/segments/Bad.Name", json={"rules": []}), 400)[0]["location"] == "name"
    assert errors_of(client.put("/api/segments/a", json={"name": "b", "rules": []}), 400)[0]["location"] == "name"
    # cycles and references
    assert client.put("/api/segments/a", json={"rules": [{"field": "state", "op": "is", "value": "CA"}]}).status_code == 200
    assert client.put("/api/segments/b", json={"rules": [{"segment": "a"}]}).status_code == 200
    errors_of(client.put("/api/segments/a", json={"rules": [{"segment": "b"}]}), 409)
    errors_of(client.delete("/api/segments/a"), 409)
    assert client.get("/api/segments/a").json()["rules"][0]["field"] == "state"  # unchanged
    # only JSON on writes, and not too much of it
    assert errors_of(client.post("/api/count", content="segments=state-ca",
                                 headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    errors_of(client.put("/api/segments/c", content='{"rules": []}', headers={"content-type": "text/plain"}), 415)
    assert "c" not in segengine.open(ws_path).snapshot().segments
    big = json.dumps({"segments": ["x" * (MAX_BODY_BYTES + 10)]})
    errors_of(client.post("/api/count", content=big, headers={"content-type": "application/json"}), 413)
    errors_of(client.post("/api/count", content="{not json", headers={"content-type": "application/json"}), 400)


def test_busy_workspace_refuses_writes_not_reads(client: TestClient, ws_path: Path) -> None:
    store = segengine.open(ws_path).store
    with store.lock():  # another writer, as an import would be
        errors_of(client.put("/api/segments/during", json={"rules": []}), 503)
        errors_of(client.delete("/api/segments/state-ca"), 503)
        assert client.post("/api/count", json={"segments": ["state-ca"]}).status_code == 200
        assert client.get("/api/segments").status_code == 200
    assert client.put("/api/segments/during", json={"rules": []}).status_code == 200


def test_no_traceback_reaches_a_client(client: TestClient, monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(client.app.state.served.ws, "count", broken)
    with caplog.at_level(logging.ERROR, logger="segengine.server"):
        errors = errors_of(client.post("/api/count", json={"segments": ["state-ca"]}), 500)
    assert "secret internals" not in errors[0]["message"]
    assert "secret internals" in caplog.text  # the server's log keeps it


def test_token_bearer_and_browser_cookie(ws_path: Path) -> None:
    client = TestClient(create_app(ws_path, token="s3cret-token"), follow_redirects=False)
    errors_of(client.get("/api/health"), 401)
    errors_of(client.get("/api/health", headers={"Authorization": "Bearer wrong"}), 401)
    errors_of(client.post("/api/count", json={"segments": ["state-ca"]}), 401)
    assert client.get("/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    prompt = client.get("/")
    assert prompt.status_code == 401 and "app.js" not in prompt.text and 'name="token"' in prompt.text
    assert client.get("/?token=nope").status_code == 401
    kept = client.get('/?segment="><script>')  # the prompt keeps the rest of the URL, escaped
    assert '<form method="get" action="/"><input type="hidden" name="segment" value="&quot;&gt;&lt;script&gt;">' in kept.text
    assert "<script>" not in kept.text
    redirect = client.get("/?segment=state-ca&token=s3cret-token")
    assert redirect.status_code == 303 and redirect.headers["location"] == "/?segment=state-ca"
    cookie = redirect.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "s3cret-token" not in cookie
    assert client.get("/api/health").status_code == 200  # the cookie now
    assert "app.js" in client.get("/").text


def test_binding_and_logs() -> None:
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(segengine.errors.InputError, match="token"):
        check_bind("0.0.0.0", None)
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:1", "GET", "/?segment=a&token=s3cret", "1.1", 303), None)
    HideTokens().filter(record)
    assert "s3cret" not in record.getMessage() and "segment=a" in record.getMessage()


def test_cli_refuses_open_bind_without_token(ws_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("SEGENGINE_TOKEN", raising=False)
    result = Cli(ws_path)("serve", "--host", "0.0.0.0", code=2)
    assert "token" in result.stderr
    empty = ws_path.parent / "empty-token"
    empty.write_text("  \n")
    assert "empty" in Cli(ws_path)("serve", "--token-file", empty, code=2).stderr


# --- a real server process -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(ws_path: Path, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "segengine", "-w", str(ws_path), "serve", "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/api/health", timeout=1)
            return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start within 30 s")


def stop(proc: subprocess.Popen) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    return time.monotonic() - started


def test_real_server_sees_another_process_commit(ws_path: Path, tmp_path: Path) -> None:
    proc, url = start_server(ws_path)
    try:
        ca = {"segments": [{"rules": [{"field": "state", "op": "is", "value": "CA"}]}]}
        before = httpx.post(url + "/api/count", json=ca).json()
        version = httpx.get(url + "/api/health").json()["snapshot"]
        extra = tmp_path / "more.csv"
        extra.write_text("email,state\n" + "".join(f"new{i}@example.com,CA\n" for i in range(25)))
        importer = subprocess.run(
            [sys.executable, "-m", "segengine", "-w", str(ws_path), "import", "contacts", str(extra)],
            capture_output=True, text=True, timeout=120,
        )
        assert importer.returncode == 0, importer.stderr  # the server did not block the writer
        assert httpx.get(url + "/api/health").json()["snapshot"] == version + 1
        after = httpx.post(url + "/api/count", json=ca).json()
        assert after["total"] == before["total"] + 25
        # SIGTERM in the middle of a slow request: explain counts every group on its
        # own, so deeply nested groups cost it time quadratic in the depth (about 20 s
        # here), keeping a worker thread busy as a long count or export would
        group: dict = {"match": "any", "rules": []}
        for depth in range(100):
            clicks = [{"activity": "clicked", "url_contains": f"x{depth}-{i}"} for i in range(60)]
            group = {"match": "any", "rules": [*clicks, group]}

        def slow() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(url + "/api/explain", json={"segment": group}, timeout=60)

        threading.Thread(target=slow, daemon=True).start()
        time.sleep(1.5)
    finally:
        seconds = stop(proc)
    assert seconds < 5
    log = proc.stdout.read()
    # the only traceback is uvicorn's note that it cancelled the slow request
    assert log.count("Traceback") == log.count("CancelledError: Task cancelled, timeout graceful") <= 1
    segengine.open(ws_path).save_segment({"name": "after-stop", "rules": []})  # no lock left behind


def test_real_server_keeps_the_token_out_of_its_log(ws_path: Path) -> None:
    proc, url = start_server(ws_path, env={"SEGENGINE_TOKEN": "tok-123456"})
    try:
        assert httpx.get(url + "/api/health").status_code == 401
        page = httpx.get(url + "/?token=tok-123456", follow_redirects=False)
        assert page.status_code == 303
        assert httpx.get(url + "/api/health", cookies=page.cookies).status_code == 200
    finally:
        stop(proc)
    assert "tok-123456" not in proc.stdout.read()


def test_rewriting_results_keeps_the_serve_section(tmp_path: Path) -> None:
    from benchmarks.report import kept_sections, write_scale_section

    results = tmp_path / "RESULTS.md"
    results.write_text("# segengine benchmarks\n\n## 1m\n\nold\n")
    write_scale_section("serve benchmark", "serve", 10_000_000, ["| ten |"], results)
    write_scale_section("serve benchmark", "serve", 1_000_000, ["| one |"], results)
    write_scale_section("serve benchmark", "serve", 1_000_000, ["| one again |"], results)
    text = results.read_text()
    assert text.startswith("# segengine benchmarks\n\n## 1m\n\nold\n")
    (section,) = kept_sections(text)
    assert section == ("<!-- serve benchmark -->\n## serve\n\n### At 1,000,000 contacts\n\n| one again |\n\n"
                       "### At 10,000,000 contacts\n\n| ten |\n<!-- /serve benchmark -->\n")
    assert kept_sections("# nothing marked\n") == []


def test_a_busy_port_is_an_error(ws_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "segengine", "-w", str(ws_path), "serve", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert "try --port" in result.stderr and "Traceback" not in result.stderr


def test_the_command_line_starts_without_the_server_libraries() -> None:
    code = "import sys, segengine.cli; print(sorted(m for m in ('fastapi', 'uvicorn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_saving_a_segment_keeps_the_engines_warm(ws_path: Path, tmp_path: Path) -> None:
    """A commit that changes no data (a saved segment) keeps the loaded index; new data replaces it."""
    ws = segengine.open(ws_path)
    before = ws.count({"name": "x", **NEVER_OPENED_NEWSLETTER}, as_of=AS_OF)
    engine = ws.session.engine("auto")
    version = ws.snapshot().version
    ws.save_segment({"name": "kept-warm", **NEVER_OPENED_NEWSLETTER})
    assert ws.snapshot().version == version + 1
    assert ws.session.engine("auto") is engine
    assert ws.count("kept-warm", as_of=AS_OF) == before

    # One member opens a campaign: an import of events replaces the engine, and it sees it.
    first = int(ws.contact_ids("kept-warm", as_of=AS_OF)[0])
    con = ws.session.connection(ws.snapshot())
    email, = con.execute("SELECT email FROM contacts WHERE contact_id = ?", [first]).fetchone()
    campaign, = con.execute("SELECT campaign FROM events WHERE type = 'sent' LIMIT 1").fetchone()
    events = tmp_path / "more.csv"
    events.write_text(f"email,campaign,type,timestamp,url\n{email},{campaign},open,2026-11-20T10:00:00Z,\n")
    summary = ws.import_events(events)
    assert summary.imported == 1, summary
    assert ws.session.engine("auto") is not engine
    after = ws.count("kept-warm", as_of=AS_OF)
    assert after["total"] == before["total"] - 1
# --- sync jobs -----------------------------------------------------------------------------


def test_sync_jobs_routes(client: TestClient, ws_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    created = client.post("/api/sync", json={"job": "crm", "segments": ["never-opened", "state-ca"],
                                             "to": str(out), "columns": ["email", "state"]})
    assert created.status_code == 200, created.text
    assert created.json()["columns"] == ["email", "state"] and created.json()["run"] == 0
    assert [j["job"] for j in client.get("/api/sync").json()["jobs"]] == ["crm"]
    run = client.post("/api/sync/crm/run", json={"as_of": AS_OF})
    assert run.status_code == 200, run.text
    expected = segengine.open(ws_path).count("never-opened", "state-ca", as_of=AS_OF)["sendable"]
    assert run.json() == {"job": "crm", "run": 1, "added": expected, "removed": 0, "members": expected,
                          "files": [str(out / "crm.000001.added.csv"), str(out / "crm.000001.removed.csv")],
                          "full": True, "as_of": AS_OF}
    assert len((out / "crm.000001.added.csv").read_text().splitlines()) == expected + 1
    again = client.post("/api/sync/crm/run", json={})
    assert again.json()["run"] == 2 and again.json()["added"] == again.json()["removed"] == 0
    assert [r["run"] for r in client.get("/api/sync/crm").json()["runs"]] == [1, 2]


def test_sync_jobs_route_errors(client: TestClient, ws_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    job = {"job": "crm", "segments": ["never-opened"], "to": str(out)}
    assert client.post("/api/sync", json=job).status_code == 200
    errors_of(client.post("/api/sync", json=job), 409)
    errors_of(client.get("/api/sync/nope"), 404)
    errors_of(client.post("/api/sync/nope/run", json={}), 404)
    assert errors_of(client.get("/api/sync/Bad.Name"), 400)[0]["location"] == "job"
    assert errors_of(client.post("/api/sync", json={**job, "job": "x", "segments": ["no-such"]}),
                     404)[0]["location"] == "segments[0]"
    errors_of(client.post("/api/sync", json={**job, "job": "x", "to": str(ws_path / "data")}), 400)
    errors_of(client.post("/api/sync", json={**job, "job": "x", "format": "xlsx"}), 400)
    assert errors_of(client.post("/api/sync/crm/run", json={"as_of": "2026-13-01"}),
                     400)[0]["location"] == "as_of"
    store = segengine.open(ws_path).store
    with store.lock():
        errors_of(client.post("/api/sync/crm/run", json={}), 503)
        assert client.get("/api/sync/crm").status_code == 200  # reads are never refused
    assert client.delete("/api/segments/never-opened").status_code == 200
    before = (ws_path / "manifest.json").read_bytes()
    message = errors_of(client.post("/api/sync/crm/run", json={}), 400)[0]["message"]
    assert "segment 'never-opened' no longer exists" in message
    assert (ws_path / "manifest.json").read_bytes() == before and os.listdir(out) == []
# --- analytics: overlap, trend, why ---------------------------------------------------


def test_overlap_trend_why_answer_the_cli_documents(client: TestClient, ws_path: Path) -> None:
    ws = segengine.open(ws_path)
    overlap = client.post("/api/overlap", json={"segments": ["never-opened", "state-ca", NEVER_OPENED_NEWSLETTER],
                                                "as_of": AS_OF})
    assert overlap.status_code == 200, overlap.text
    doc = overlap.json()
    expected = ws.overlap("never-opened", "state-ca", {"name": "unsaved", **NEVER_OPENED_NEWSLETTER}, as_of=AS_OF)
    assert doc == expected and doc["segments"][2] == "unsaved"
    trend = client.post("/api/trend", json={"segments": ["never-opened"], "from": "2026-09-30",
                                            "to": "2026-11-30", "every": "month"}).json()
    assert trend == ws.trend("never-opened", start="2026-09-30", end="2026-11-30", every="month")
    assert [p["as_of"] for p in trend["points"]] == ["2026-09-30", "2026-10-30", "2026-11-30"]
    email = ws.members("state-ca")["email"][0]
    why = client.post("/api/why", json={"email": email.upper(), "segment": "state-ca", "as_of": AS_OF}).json()
    assert why == ws.why(email, "state-ca", as_of=AS_OF) and why["member"] is True


def test_analytics_bad_input_is_a_400_with_the_cli_message(client: TestClient) -> None:
    one = errors_of(client.post("/api/overlap", json={"segments": ["state-ca"]}), 400)
    assert "at least two segments" in one[0]["message"]
    after = errors_of(client.post("/api/trend", json={"segments": ["state-ca"], "from": "2026-02-01",
                                                      "to": "2026-01-01"}), 400)
    assert after[0]["location"] == "from" and "is after --to" in after[0]["message"]
    every = errors_of(client.post("/api/trend", json={"segments": ["state-ca"], "from": "2026-01-01",
                                                      "to": "2026-01-02", "every": "hour"}), 400)
    assert every[0]["location"] == "every"
    date = errors_of(client.post("/api/trend", json={"segments": ["state-ca"], "from": "soon", "to": "2026-01-02"}), 400)
    assert date[0]["location"] == "from"
    errors_of(client.post("/api/trend", json={"segments": ["state-ca"], "to": "2026-01-02"}), 400)
    unknown = errors_of(client.post("/api/why", json={"email": "nobody@nowhere.example", "segment": "state-ca"}), 400)
    assert "no contact has the address" in unknown[0]["message"]
    errors_of(client.post("/api/why", json={"email": "a@b.c", "segment": "no-such-segment"}), 404)


# --- priorities ----------------------------------------------------------------------------


def test_priority_answers_the_cli_document(client: TestClient, ws_path: Path) -> None:
    order = ["never-opened", "state-ca", "cto-or-sales-west"]
    answer = client.post("/api/priority", json={"segments": order, "as_of": AS_OF})
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc == segengine.open(ws_path).priority(*order, as_of=AS_OF)
    assert doc == Cli(ws_path).json("count", *order, "--priority", "--as-of", AS_OF)
    assert [r["segment"] for r in doc["segments"]] == order
    assert sum(r["total"] for r in doc["segments"]) == doc["union"]["total"]
    assert doc["segments"][1]["lost"] > 0  # the sample's segments overlap: the order matters
    # a definition sent inline takes its place in the order under the name `unsaved`
    inline = client.post("/api/priority", json={"segments": [NEVER_OPENED_NEWSLETTER, "state-ca"],
                                                "as_of": AS_OF, "engine": "duckdb"}).json()
    assert inline == segengine.open(ws_path).priority(
        {"name": "unsaved", **NEVER_OPENED_NEWSLETTER}, "state-ca", as_of=AS_OF, engine="duckdb")


def test_priority_bad_input_is_one_line_and_changes_nothing(client: TestClient, ws_path: Path) -> None:
    before = (ws_path / "manifest.json").read_bytes()
    one = errors_of(client.post("/api/priority", json={"segments": ["state-ca"]}), 400)
    assert len(one) == 1 and "at least two segments (got 1)" in one[0]["message"]
    twice = errors_of(client.post("/api/priority", json={"segments": ["state-ca", "never-opened", "state-ca"]}), 400)
    assert len(twice) == 1 and "'state-ca' is listed twice" in twice[0]["message"]
    none = errors_of(client.post("/api/priority", json={"segments": []}), 400)
    assert none[0]["location"] == "segments"
    as_of = errors_of(client.post("/api/priority", json={"segments": ["state-ca", "never-opened"],
                                                         "as_of": "yesterday"}), 400)
    assert as_of[0]["location"] == "as_of"
    unknown = errors_of(client.post("/api/priority", json={"segments": ["state-ca", "state-cb"]}), 404)
    assert unknown == [{"location": "segments[1]", "message": "no saved segment 'state-cb' (did you mean 'state-ca'?)"}]
    for error in (*one, *twice, *none, *as_of, *unknown):
        assert "\n" not in error["message"]
    assert (ws_path / "manifest.json").read_bytes() == before
