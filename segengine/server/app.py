"""The HTTP API and the builder page over one workspace.

Every request takes the workspace's newest committed snapshot (the manifest is a file
of about a kilobyte, read per request), so a commit by another process is visible to
the next request; the session keeps engines warm per snapshot. Evaluation runs in the
thread pool, never on the event loop, several at a time: the hot routes hop to it once per
request (FastAPI's plain ``def`` routes would hop for the body and the response as well). The
writers' lock is held only inside a segment's ``PUT`` or ``DELETE`` and a sync job's create
or run; a sync run evaluates on a session of its own, so other requests are answered while it
writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hashlib
import hmac
import html
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import Workspace, contacts_frame
from ..definition.rewrite import to_dict
from ..definition.validate import OPERATORS
from ..errors import (
    DefinitionError,
    InputError,
    JobExists,
    JobNotFound,
    ReferenceCycle,
    SegengineError,
    SegmentNotFound,
    WorkspaceBusy,
)
from ..fields import STATUSES
from ..session import data_key

log = logging.getLogger("segengine.server")

#: Largest request body accepted: a definition is a few kilobytes.
MAX_BODY_BYTES = 1 << 20
#: The cookie a browser gets in exchange for `/?token=TOKEN`.
COOKIE = "segengine_session"
SEGMENT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
#: The name an inline definition without one is evaluated under.
UNSAVED = "unsaved"
STATIC = resources.files("segengine.server") / "static"


class ApiError(Exception):
    """An answer other than 200: a status and the section-12 list of errors."""

    def __init__(self, status: int, errors: list[dict[str, Any]]):
        super().__init__(errors)
        self.status = status
        self.errors = errors


def error(status: int, location: str, message: str) -> ApiError:
    return ApiError(status, [{"location": location, "message": message}])


# --- request bodies --------------------------------------------------------------------

SegmentItem = str | dict[str, Any]


class Evaluate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segments: list[SegmentItem] = Field(min_length=1, description="saved names or definitions; several mean their union")
    as_of: str | None = Field(None, description="YYYY-MM-DD (UTC); default today")
    engine: str = "auto"


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segment: SegmentItem
    as_of: str | None = None
    engine: str = "auto"


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segment: SegmentItem
    dialect: str = "duckdb"
    as_of: str | None = None


class MembersRequest(Evaluate):
    limit: int = Field(50, ge=0, le=10_000)
    offset: int = Field(0, ge=0)
    columns: list[str] | None = None
    active_only: bool = True


class ExportRequest(Evaluate):
    format: Literal["csv", "parquet"] = "csv"
    columns: list[str] | None = None
    raw: bool = False


class SplitGroupItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    percent: str | float = Field(description="at most two decimals; all groups sum to 100")


class SplitRequest(Evaluate):
    groups: str | list[SplitGroupItem] = Field(
        description="'a=45,b=45,holdout=10' or [{name, percent}, ...], in bucket order")
    seed: str | None = Field(None, description="default: the segments' names joined with +")
    save: str | None = Field(None, description="save one segment per group, named SAVE-NAME")


class PriorityRequest(Evaluate):
    """Two or more segments in priority order (the first takes precedence)."""


class SyncCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: str
    segments: list[str] = Field(min_length=1, description="saved segment names; several mean their union")
    to: str = Field(description="an existing directory on the server, outside the workspace")
    format: Literal["csv", "parquet"] = "csv"
    columns: list[str] | None = None
    raw: bool = False


class SyncRun(BaseModel):
    model_config = ConfigDict(extra="forbid")
    as_of: str | None = Field(None, description="YYYY-MM-DD (UTC); default today")


class OverlapRequest(Evaluate):
    """Two or more segments (one is refused with the command's message)."""


class TrendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    segments: list[SegmentItem] = Field(min_length=1, description="saved names or definitions; their union")
    start: str = Field(alias="from", description="the first point, YYYY-MM-DD")
    end: str = Field(alias="to", description="the last point (at most), YYYY-MM-DD")
    every: str = Field("day", description="day | week | month")
    engine: str = "auto"


class WhyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str
    segment: SegmentItem
    as_of: str | None = None
    engine: str = "auto"


# --- the workspace behind the routes -----------------------------------------------------


class Served:
    """The workspace a server answers for.

    Requests evaluate concurrently in the thread pool: the session makes engines one
    thread at a time, DuckDB runs each query on a connection of its own (and releases the
    GIL while it does), so a slow DuckDB fallback does not hold up index-answered counts.
    An engine a newer snapshot replaced is closed by its last request, not under it.
    """

    def __init__(self, path: str | Path):
        self.ws = Workspace(path)
        self.ws.session.close_stale = False
        #: one writer (segment PUT/DELETE) and one scan for /api/schema at a time
        self.lock = threading.Lock()
        #: what /api/schema describes, for the newest data files only
        self.schemas: dict[tuple[Any, ...], dict[str, Any]] = {}

    def segments(self, items: list[SegmentItem], snap) -> list[Any]:
        """Each item loaded on its own, so a problem names the segment it is in."""
        loaded, errors, status = [], [], 400
        for i, item in enumerate(items):
            where = f"segments[{i}]" if len(items) > 1 else ""
            try:
                item = inline(item)
                if isinstance(item, str) and item not in snap.segments:
                    # never a definition file of the server's directory, as the CLI would try
                    hint = difflib.get_close_matches(item, list(snap.segments), n=1)
                    raise SegmentNotFound(f"no saved segment {item!r}"
                                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
                loaded.append(self.ws.load_segment(item, snap))
            except DefinitionError as exc:
                status = max(status, status_of(exc))
                errors += problems(exc, where)
        if errors:
            raise ApiError(status, errors)
        return loaded


def inline(item: SegmentItem) -> SegmentItem:
    """A definition sent inline needs no name; a name sent as text must be saved."""
    if isinstance(item, dict):
        return item if "name" in item else {"name": UNSAVED, **item}
    if not SEGMENT_NAME_RE.match(item):
        raise error(400, "segments", f"{item!r} is not a segment name: use [a-z0-9][a-z0-9_-]{{0,63}}")
    return item


def status_of(exc: SegengineError) -> int:
    if isinstance(exc, ReferenceCycle | JobExists):
        return 409
    if isinstance(exc, SegmentNotFound | JobNotFound):
        return 404
    if isinstance(exc, WorkspaceBusy):
        return 503
    if isinstance(exc, InputError):
        return 400
    return 500


def problems(exc: SegengineError, prefix: str = "") -> list[dict[str, Any]]:
    if isinstance(exc, DefinitionError):
        return [{"location": ".".join(p for p in (prefix, pr.path) if p), "message": pr.message}
                for pr in exc.problems]
    message = str(exc)
    if message.startswith("--") and ": " in message:  # a CLI option's name: the JSON key instead
        option, message = message.split(": ", 1)
        return [{"location": option.lstrip("-").replace("-", "_"), "message": message}]
    return [{"location": prefix, "message": message}]


def session_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie never shows it."""
    return hmac.new(token.encode(), b"segengine browser session", hashlib.sha256).hexdigest()


def jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # naive datetimes of the contract are UTC
        return value.isoformat().replace("+00:00", "") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# --- the middleware: token, JSON-only writes, body size ----------------------------------


class Guard:
    """Pure ASGI middleware: checks run before routing, so nothing runs when they fail."""

    def __init__(self, app, token: str | None, max_body: int = MAX_BODY_BYTES):
        self.app = app
        self.token = token
        self.cookie = session_value(token) if token else None
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token and not self.authorised(headers):
            return await reply(send, 401, "Authorization",
                               "this server needs its token: send `Authorization: Bearer TOKEN`, "
                               "or open the page as /?token=TOKEN", {"www-authenticate": "Bearer"})
        if scope["method"] in ("POST", "PUT", "PATCH"):
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return await reply(send, 415, "Content-Type",
                                   f"send the body as application/json, not {kind or 'nothing'!r}")
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                return await reply(send, 413, "body",
                                   f"the body is larger than {self.max_body:,} bytes")
            receive = self.limited(receive)
        try:
            await self.app(scope, receive, send)
        except BodyTooLarge:
            await reply(send, 413, "body", f"the body is larger than {self.max_body:,} bytes")

    def authorised(self, headers: dict[str, str]) -> bool:
        assert self.token and self.cookie
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.cookie.encode()):
                return True
        return False

    def limited(self, receive):
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge
            return message

        return wrapped


class BodyTooLarge(Exception):
    pass


async def reply(send, status: int, location: str, message: str, extra: dict[str, str] | None = None):
    response = JSONResponse({"errors": [{"location": location, "message": message}]}, status, headers=extra)
    await response({"type": "http"}, None, send)


# --- the application ---------------------------------------------------------------------


def create_app(workspace: str | Path, token: str | None = None) -> FastAPI:
    """The ASGI application for `workspace`; with `token`, every /api/ route needs it."""
    served = Served(workspace)
    # The API docs at /docs load Swagger UI from files shipped in a package, not from a
    # CDN: the server must document itself on a machine without internet access.
    app = FastAPIOffline(
        title="segengine",
        version=__version__,
        description="Exact segment counts, members, SQL and exports over one workspace.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.served = served

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        headers = {"retry-after": "1"} if exc.status == 503 else None
        return JSONResponse({"errors": exc.errors}, exc.status, headers=headers)

    @app.exception_handler(SegengineError)
    async def segengine_error(request: Request, exc: SegengineError):
        status = status_of(exc)
        return JSONResponse({"errors": problems(exc)}, status,
                            headers={"retry-after": "1"} if status == 503 else None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ()) if p != "body"]
            location = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")
            errors.append({"location": location or "body", "message": e.get("msg", "invalid")})
        return JSONResponse({"errors": errors}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"errors": [{"location": "", "message": str(exc.detail)}]}, exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # The traceback goes to the server's log, never to the client.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"errors": [{"location": "", "message": f"internal error ({type(exc).__name__}); "
                                         "the server log has the details"}]}, 500)

    @contextlib.contextmanager
    def evaluating() -> Iterator[Any]:
        # the snapshot is read once per request: everything it evaluates sees one state
        yield served.ws.snapshot()

    # --- reading ---------------------------------------------------------------------

    @app.get("/api/health", tags=["workspace"])
    def health() -> dict[str, Any]:
        """The server is up; `snapshot` is the workspace version it answers from."""
        return {"status": "ok", "version": __version__, "snapshot": served.ws.snapshot().version}

    @app.get("/api/schema", tags=["workspace"])
    def schema() -> dict[str, Any]:
        """What a builder needs: fields with their operators, lists, campaigns, statuses."""
        snap = served.ws.snapshot()
        # saving a segment makes a new snapshot over the same data: keep the description
        key = data_key(snap)
        cached = served.schemas.get(key)
        if cached is None:
            cached = describe(snap)
            served.schemas = {key: cached}
        return {"snapshot": snap.version, **cached, "segments": sorted(snap.segments)}

    def describe(snap) -> dict[str, Any]:
        # Lists and campaigns take a scan of every contact and event (most of a second
        # at a million contacts), so they are kept per snapshot.
        with served.lock, served.ws.session.engine("duckdb", snap).cursor() as con:
            lists = [r[0] for r in con.execute(
                "SELECT DISTINCT l FROM (SELECT unnest(lists) AS l FROM contacts) ORDER BY l").fetchall()]
            campaigns = con.execute(
                "SELECT campaign, min(timestamp) FILTER (WHERE type = 'sent') AS sent_at FROM events "
                "GROUP BY campaign ORDER BY sent_at DESC NULLS LAST, campaign DESC").fetchall()
            return {
                "fields": [{"name": n, "type": t.value, "operators": list(OPERATORS[t])}
                           for n, t in snap.schema.items()],
                "lists": lists,
                "campaigns": [{"id": c, "sent_at": jsonable(t)} for c, t in campaigns],
                "statuses": list(STATUSES),
            }

    def count_now(body: Evaluate) -> dict[str, Any]:
        started = time.perf_counter()
        with evaluating() as snap:
            segs = served.segments(body.segments, snap)
            result = served.ws.count(*segs, as_of=body.as_of, engine=body.engine)
        return {**result, "snapshot": snap.version,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}

    @app.post("/api/count", tags=["segments"], response_model=None)
    async def count(body: Evaluate) -> JSONResponse:
        """The `count --json` document of the union of `segments`, plus `elapsed_ms`."""
        return JSONResponse(await run_in_threadpool(count_now, body))

    def explain_now(body: ExplainRequest) -> dict[str, Any]:
        with evaluating() as snap:
            (seg,) = served.segments([body.segment], snap)
            result = served.ws.explain(seg, as_of=body.as_of, engine=body.engine)
        result.pop("_tree", None)
        return result

    @app.post("/api/explain", tags=["segments"], response_model=None)
    async def explain(body: ExplainRequest) -> JSONResponse:
        """The `explain --json` document: how many contacts each rule and group matches."""
        return JSONResponse(await run_in_threadpool(explain_now, body))

    def sql_now(body: SqlRequest) -> dict[str, Any]:
        with evaluating() as snap:
            (seg,) = served.segments([body.segment], snap)
            text = served.ws.sql(seg, dialect=body.dialect, as_of=body.as_of)
        return {"dialect": body.dialect, "sql": text}

    @app.post("/api/sql", tags=["segments"], response_model=None)
    async def sql(body: SqlRequest) -> JSONResponse:
        """The SELECT of the segment's contact ids in a SQL dialect (as `segengine sql`)."""
        return JSONResponse(await run_in_threadpool(sql_now, body))

    def members_now(body: MembersRequest) -> dict[str, Any]:
        import polars as pl

        with evaluating() as snap:
            segs = served.segments(body.segments, snap)
            ids = served.ws.contact_ids(*segs, as_of=body.as_of, engine=body.engine, snapshot=snap)
        # The rows are read outside the lock: a snapshot's files never change, and a
        # preview reading Parquet must not hold up the next count.
        frame = contacts_frame(snap)
        names = frame.collect_schema().names()
        columns = body.columns or [c for c in names if c != "contact_id"]
        unknown = [c for c in columns if c not in names or c == "contact_id"]
        if unknown:
            raise error(400, "columns", f"unknown column {unknown[0]!r}: use some of "
                        + ", ".join(c for c in names if c != "contact_id"))
        needed = list(dict.fromkeys(["contact_id", "status", "email", *columns]))
        frame = frame.select(needed).filter(pl.col("contact_id").is_in(pl.Series(ids).implode()))
        if body.active_only:
            frame = frame.filter(pl.col("status") == "active")
        total, page = pl.collect_all([
            frame.select(pl.len()),
            frame.sort("email").slice(body.offset, body.limit).select(columns),
        ])
        rows = [{k: jsonable(v) for k, v in row.items()} for row in page.to_dicts()]
        return {"total": int(total.item()), "columns": columns, "rows": rows}

    @app.post("/api/members", tags=["segments"], response_model=None)
    async def members(body: MembersRequest) -> JSONResponse:
        """Contact rows of the union ordered by email; `total` counts them before paging."""
        return JSONResponse(await run_in_threadpool(members_now, body))

    @app.post("/api/export", tags=["segments"], response_class=StreamingResponse,
              responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
    def export(body: ExportRequest) -> StreamingResponse:
        """The file `segengine export` writes for the union (active contacts), streamed."""
        folder = Path(tempfile.mkdtemp(prefix="segengine-export-"))
        try:
            output = folder / f"export.{body.format}"
            with evaluating() as snap:
                segs = served.segments(body.segments, snap)
            # An export takes seconds at scale: it runs on a session of its own (engines
            # opened for it and closed after), so counts do not queue behind it.
            own = Workspace(served.ws.path)
            try:
                result = own.export(*segs, output=output, format=body.format, columns=body.columns,
                                    raw=body.raw, as_of=body.as_of, engine=body.engine)
            finally:
                own.session.after_write()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

        def chunks() -> Iterator[bytes]:
            try:
                with open(output, "rb") as f:
                    while block := f.read(1 << 16):
                        yield block
            finally:
                shutil.rmtree(folder, ignore_errors=True)

        names = [s.name for s in segs if s.name != UNSAVED] or ["segment"]
        media = "text/csv; charset=utf-8" if body.format == "csv" else "application/vnd.apache.parquet"
        return StreamingResponse(chunks(), media_type=media, headers={
            "content-disposition": f'attachment; filename="{"+".join(names)}.{body.format}"',
            "x-segengine-rows": str(result.rows),
        })

    # --- saved segments --------------------------------------------------------------

    def checked_name(name: str) -> str:
        if not SEGMENT_NAME_RE.match(name):
            raise error(400, "name", f"{name!r} is not a segment name: use [a-z0-9][a-z0-9_-]{{0,63}}")
        return name

    @app.get("/api/segments", tags=["saved segments"])
    def list_segments() -> dict[str, Any]:
        """The saved segments: name and description (as `segment list --json`)."""
        with evaluating():
            segments = served.ws.segments()
        return {"segments": [{"name": n, "description": s.description} for n, s in segments.items()]}

    @app.get("/api/segments/{name}", tags=["saved segments"])
    def get_segment(name: str) -> dict[str, Any]:
        """The definition as saved (as `segment show --json`)."""
        checked_name(name)
        with evaluating() as snap:
            if name not in snap.segments:
                raise error(404, "name", f"no saved segment {name!r}")
            return to_dict(served.ws.load_segment(name, snap))

    @app.put("/api/segments/{name}", tags=["saved segments"])
    def put_segment(name: str, definition: dict[str, Any] = Body(...)) -> dict[str, Any]:
        """Save the body under `name` (replacing it), as `segment save` does."""
        checked_name(name)
        if definition.get("name", name) != name:
            raise error(400, "name", f"the body's name {definition['name']!r} differs from the URL's {name!r}")
        with served.lock:
            segment = served.ws.save_segment({**definition, "name": name})
        return to_dict(segment)

    @app.delete("/api/segments/{name}", tags=["saved segments"])
    def delete_segment(name: str) -> dict[str, Any]:
        """Delete a saved segment; refused (409) while another segment references it."""
        checked_name(name)
        with served.lock:
            try:
                served.ws.delete_segment(name)
            except SegmentNotFound:
                raise
            except DefinitionError as exc:  # the only other refusal: it is still referenced
                raise ApiError(409, problems(exc)) from None
        return {"deleted": name}

    # --- splits and priorities ---------------------------------------------------------

    def split_now(body: SplitRequest) -> dict[str, Any]:
        groups = body.groups if isinstance(body.groups, str) else [
            (g.name, g.percent) for g in body.groups]
        if body.seed is None and any(isinstance(s, dict) and "name" not in s for s in body.segments):
            # the default seed is the segments' names: unnamed ones would all share one cut
            raise error(400, "seed", "a definition sent without a name needs a seed for its split, "
                        'e.g. "seed": "spring-ab"')
        with evaluating() as snap:
            segs = served.segments(body.segments, snap)
            return served.ws.split(*segs, groups=groups, seed=body.seed, save=body.save,
                                   as_of=body.as_of, engine=body.engine)

    @app.post("/api/split", tags=["segments"], response_model=None)
    async def split(body: SplitRequest) -> JSONResponse:
        """The `split --json` document: the union cut into groups by bucket number."""
        return JSONResponse(await run_in_threadpool(split_now, body))

    def priority_now(body: PriorityRequest) -> dict[str, Any]:
        with evaluating() as snap:
            segs = served.segments(body.segments, snap)
            return served.ws.priority(*segs, as_of=body.as_of, engine=body.engine)

    @app.post("/api/priority", tags=["segments"], response_model=None)
    async def priority(body: PriorityRequest) -> JSONResponse:
        """The `count --priority --json` document: each contact counted for the first segment
        (in the order given) that holds it."""
        return JSONResponse(await run_in_threadpool(priority_now, body))

    # --- sync jobs (docs/sync.md) -------------------------------------------------------

    def checked_job(name: str) -> str:
        if not SEGMENT_NAME_RE.match(name):
            raise error(400, "job", f"{name!r} is not a sync job name: use [a-z0-9][a-z0-9_-]{{0,63}}")
        return name

    @app.get("/api/sync", tags=["sync jobs"])
    def list_sync_jobs() -> dict[str, Any]:
        """The sync jobs with their last committed run (as `sync list --json`)."""
        with evaluating():
            return {"jobs": served.ws.sync_jobs()}

    @app.get("/api/sync/{job}", tags=["sync jobs"])
    def show_sync_job(job: str) -> dict[str, Any]:
        """One sync job and its latest committed runs (as `sync show --json`)."""
        checked_job(job)
        with evaluating():
            return served.ws.sync_show(job)

    @app.post("/api/sync", tags=["sync jobs"])
    def create_sync_job(body: SyncCreate) -> dict[str, Any]:
        """Save a sync job over saved segments (as `sync create --json`); a taken name is a 409."""
        checked_job(body.job)
        snap = served.ws.snapshot()
        for i, name in enumerate(body.segments):
            if name not in snap.segments:  # never a definition file of the server's directory
                raise error(404, f"segments[{i}]", f"no saved segment {name!r}")
        return Workspace(served.ws.path).sync_create(
            body.job, *body.segments, to=body.to, format=body.format, columns=body.columns, raw=body.raw)

    @app.post("/api/sync/{job}/run", tags=["sync jobs"])
    def run_sync_job(job: str, body: SyncRun | None = None) -> dict[str, Any]:
        """Run the job (as `sync run --json`); a busy workspace is a 503, a job whose segments
        or directory are gone a 400, and nothing changes then."""
        checked_job(job)
        # a session of its own: the served one stays free for counts during the run
        return Workspace(served.ws.path).sync_run(job, as_of=body.as_of if body else None).as_dict()

    # --- analytics: overlap, trend, why ------------------------------------------------

    def overlap_now(body: OverlapRequest) -> dict[str, Any]:
        with evaluating() as snap:
            segs = served.segments(body.segments, snap)
            return served.ws.overlap(*segs, as_of=body.as_of, engine=body.engine)

    @app.post("/api/overlap", tags=["analytics"], response_model=None)
    async def overlap(body: OverlapRequest) -> JSONResponse:
        """The `overlap --json` document: pairwise totals and sendable counts, exclusive, union."""
        return JSONResponse(await run_in_threadpool(overlap_now, body))

    def trend_now(body: TrendRequest) -> dict[str, Any]:
        with evaluating() as snap:
            segs = served.segments(body.segments, snap)
            return served.ws.trend(*segs, start=body.start, end=body.end, every=body.every,
                                   engine=body.engine)

    @app.post("/api/trend", tags=["analytics"], response_model=None)
    async def trend(body: TrendRequest) -> JSONResponse:
        """The `trend --json` document: the union's size per point, joined and left."""
        return JSONResponse(await run_in_threadpool(trend_now, body))

    def why_now(body: WhyRequest) -> dict[str, Any]:
        with evaluating() as snap:
            (seg,) = served.segments([body.segment], snap)
            return served.ws.why(body.email, seg, as_of=body.as_of, engine=body.engine)

    @app.post("/api/why", tags=["analytics"], response_model=None)
    async def why(body: WhyRequest) -> JSONResponse:
        """The `why --json` document: the contact's membership, rule by rule."""
        return JSONResponse(await run_in_threadpool(why_now, body))

    # --- the page ----------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        token = app.state.token
        given = request.query_params.get("token")
        if token and given is not None:
            rest = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "token"]
            if not hmac.compare_digest(given.encode(), token.encode()):
                return HTMLResponse(prompt_page("That token is not this server's.", rest), 401)
            response = RedirectResponse("/" + (f"?{urlencode(rest)}" if rest else ""), 303)
            response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict",
                                secure=request.url.scheme == "https", path="/")
            return response
        if token and not hmac.compare_digest(request.cookies.get(COOKIE, "").encode(),
                                             session_value(token).encode()):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            return HTMLResponse(prompt_page(None, rest), 401)
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"),
                            headers={"cache-control": "no-store"})

    app.state.token = token
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.add_middleware(Guard, token=token)
    return app


def prompt_page(problem: str | None, keep: list[tuple[str, str]]) -> str:
    """The page without a token: a prompt only, keeping the rest of the URL (``?segment=``)."""
    note = f'<p class="problem" role="alert">{problem}</p>' if problem else ""
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in keep)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>segengine: token needed</title><link rel="stylesheet" href="/static/app.css"></head>
<body class="prompt"><main><h1>segengine</h1>
<p>This server needs its access token. Paste it here, or open the link <code>/?token=TOKEN</code>.</p>
{note}<form method="get" action="/">{hidden}<label>Token <input name="token" type="password" autofocus required
autocomplete="off"></label> <button type="submit">Open</button></form></main></body></html>"""
