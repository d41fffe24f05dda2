"""The HTTP API (``[api] listen``): the seed service's upload / jobs / cancel routes over the daemon's own
intake and ledger, ``/metrics`` for Prometheus, ``/healthz`` for load balancers, and the dashboard at ``/``.

Everything here is a thin layer: uploads become claimed files (``uploads``, ``Intake.admit``), answers are
``views`` documents, cancel is ``views.cancel_job``. Errors are JSON ``{"error": {kind, message, hint}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import structlog
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlite_utils.db import NotFoundError
from starlette.exceptions import HTTPException as StarletteHTTPException

from diarist.daemon import dashboard, usage
from diarist.daemon.config import InboxSettings, Settings
from diarist.daemon.inboxes import Upload
from diarist.daemon.ledger import Ledger, State
from diarist.daemon.metrics import Health, registry
from diarist.daemon.uploads import check_audio, receive, upload_name, upload_request
from diarist.daemon.views import cancel_job, daemon_files, file_user, file_view, job_views, outputs
from diarist.handlers import intake
from diarist.handlers.errors import DiaristError, RequestError
from diarist.handlers.exports import render
from diarist.handlers.results import read_result, rttm_of
from diarist.policies.budget import BudgetCaps
from diarist.policies.formats import ALWAYS, EXPORT_FORMATS
from diarist.policies.listen import Listen

log = structlog.get_logger("diarist")

#: the cookie a browser keeps the token in after ``/?token=...`` (the dashboard's fetches carry it)
COOKIE = "diarist_token"
#: how long an upload waits for the intake thread to claim it
ADMIT_TIMEOUT = 60.0
MEDIA_TYPES = {
    "json": "application/json",
    "rttm": "text/x-rttm; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "textgrid": "text/plain; charset=utf-8",
    "eaf": "application/xml; charset=utf-8",
    "audacity": "text/plain; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
}
#: ``Accept`` media types that name one format
ACCEPTS = {
    "application/json": "json",
    "text/x-rttm": "rttm",
    "text/rttm": "rttm",
    "application/x-subrip": "srt",
    "text/srt": "srt",
    "text/vtt": "vtt",
    "text/csv": "csv",
    "application/xml": "eaf",
    "text/x-textgrid": "textgrid",
}


@dataclass(frozen=True)
class ApiContext:
    """What the API reads and calls; the daemon supplies it (tests may build their own)."""

    #: the daemon's settings now (a reload changes its inboxes)
    current: Callable[[], Settings]
    ledger: Ledger
    admit: Callable[[Upload], Any]  # -> concurrent.futures.Future[int]
    stale: Callable[[], list[str]]
    heartbeat_ages: Callable[[], Mapping[str, float]]
    cancel: Callable[[str], None]
    host: str

    @property
    def settings(self) -> Settings:
        return self.current()

    @property
    def inboxes(self) -> dict[str, InboxSettings]:
        return {str(i.path): i for i in self.settings.inboxes}

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.cloud.timezone)

    def caps(self) -> BudgetCaps:
        c = self.settings.cloud
        return BudgetCaps(daily_usd=c.daily_budget, monthly_usd=c.monthly_budget, max_concurrent=c.max_concurrent)

    def upload_inbox(self) -> InboxSettings:
        wanted = self.settings.api.inbox
        inboxes = self.settings.inboxes
        # the configured one, unless a reload removed it ([api] itself is read at start)
        return next((i for i in inboxes if i.path == wanted), inboxes[0])

    def usage(self, by: str, since: date | None = None) -> usage.Usage:
        return usage.collect(self.ledger, by=by, tz=self.tz, since=since, caps=self.caps(), now=time.time())


def error_body(kind: str, message: str, hint: str | None = None) -> dict[str, Any]:
    return {"error": {"kind": kind, "message": message, "hint": hint}}


def _token_ok(given: str | None, tokens: tuple[str, ...]) -> bool:
    """Compared in constant time against every token (no early exit that would time which one is close)."""
    if not given:
        return False
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
    return found


def build_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="diarist",
        summary="who spoke when: upload recordings, follow them, fetch results; cloud jobs, usage, metrics",
        version="1",
        docs_url=None,  # the interactive docs page loads scripts from a CDN; /openapi.json is the contract
        redoc_url=None,
    )
    tokens = ctx.settings.api.tokens
    metrics = registry(ctx.ledger, Health(ctx.heartbeat_ages, ctx.caps, ctx.tz, ctx.settings.users))

    @app.exception_handler(RequestError)
    async def refused(_request: Request, e: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(error_body(e.kind, e.message, e.hint), status_code=e.status, headers=headers)

    @app.exception_handler(DiaristError)
    async def failed(_request: Request, e: DiaristError) -> JSONResponse:
        status = (
            503 if e.kind in ("transient", "cloud-transient", "tool-missing") else 502 if e.kind == "cloud" else 500
        )
        return JSONResponse(error_body(e.kind, e.message, e.hint), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        hint = "see /openapi.json for the routes" if e.status_code in (404, 405) else None
        return JSONResponse(error_body("request", str(e.detail), hint), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(error_body("request", f"{where}: {first.get('msg', 'invalid')}"), status_code=422)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Any]) -> Response:
        # the query string may hold a token: never logged, only the path
        started = time.monotonic()
        refused = _foreign(request, ctx.settings.api.listen)
        if refused is not None:
            return JSONResponse(error_body("request", refused, FOREIGN_HINT), status_code=403)
        if tokens and request.url.path != "/healthz":
            header = request.headers.get("authorization", "")
            given = header[7:].strip() if header[:7].lower() == "bearer " else request.cookies.get(COOKIE)
            login = request.url.path == "/" and _token_ok(request.query_params.get("token"), tokens)
            if login:
                answer = RedirectResponse("/", status_code=303)
                answer.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
                return answer
            if not _token_ok(given, tokens):
                return JSONResponse(
                    error_body(
                        "auth",
                        "this route needs a bearer token",
                        "send Authorization: Bearer <token> (a token from [api] token_file); in a browser, "
                        "open /?token=<token> once",
                    ),
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        answer = await call_next(request)
        log.debug(
            "api_request",
            method=request.method,
            path=request.url.path,
            status=answer.status_code,
            ms=round((time.monotonic() - started) * 1000),
        )
        return answer

    # -- health and metrics --------------------------------------------------------------------------------

    @app.get("/healthz", summary="200 when every daemon thread is fresh; 503 names the stale ones")
    def healthz() -> JSONResponse:
        stale = ctx.stale()
        return JSONResponse({"status": "stale" if stale else "ok", "stale": stale}, status_code=503 if stale else 200)

    @app.get("/metrics", summary="Prometheus metrics, read from the ledger at each scrape")
    def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    # -- dashboard ------------------------------------------------------------------------------------------

    def _panel() -> str:
        return dashboard.panel(ctx.ledger, ctx.inboxes, stale=ctx.stale(), by_day=ctx.usage("day"))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(dashboard.page(_panel(), ctx.host), headers=PAGE_HEADERS)

    @app.get("/dashboard/panel", response_class=HTMLResponse, include_in_schema=False)
    def panel() -> HTMLResponse:
        return HTMLResponse(_panel(), headers=PAGE_HEADERS)

    @app.get("/dashboard.js", include_in_schema=False)
    def script() -> Response:
        return Response(dashboard.SCRIPT, media_type="text/javascript", headers=PAGE_HEADERS)

    # -- files ---------------------------------------------------------------------------------------------

    @app.post(
        "/v1/files",
        status_code=201,
        summary="Upload a recording (the request body, streamed); it is claimed at once and processed",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def upload(
        request: Request,
        name: str | None = Query(None, description="the recording's file name, e.g. meeting.wav"),
        route: str | None = Query(None, description="local, cloud or auto"),
        force_cloud: str | None = Query(None, description="true: route = cloud (the seed API's option)"),
        priority: str | None = Query(None, description="cost, balanced or speed"),
        flavor: str | None = Query(None, description="a Jobs hardware flavor, e.g. a10g-small"),
        task: str | None = Query(None, description="diarization, vad, overlap, full or transcribe"),
        user: str | None = Query(None),
        language: str | None = Query(None, description="for task transcribe, e.g. en"),
        num_speakers: str | None = Query(None),
        min_speakers: str | None = Query(None),
        max_speakers: str | None = Query(None),
        formats: str | None = Query(None, description="extra formats, comma-separated: srt,vtt,textgrid,..."),
    ) -> JSONResponse:
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise RequestError(
                415,
                "send the recording itself as the request body, not a form",
                hint="curl --data-binary @meeting.wav 'http://HOST/v1/files?name=meeting.wav'",
            )
        options = dict(
            route=route, force_cloud=force_cloud, priority=priority, flavor=flavor, task=task, user=user,
            language=language, num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers,
            formats=formats,
        )  # fmt: skip
        asked = upload_request(options)
        filename = upload_name(name)
        inbox = ctx.upload_inbox()
        length = request.headers.get("content-length")
        declared = int(length) if length and length.isdigit() else None
        folder = intake.uploads_dir(inbox.path, ctx.host)
        limit = ctx.settings.api.max_upload_bytes
        got = await receive(request.stream(), folder, limit=limit, declared=declared, name=filename)
        await check_audio(got.staged)
        done = ctx.admit(Upload(inbox, got.staged, filename, asked, got.sha256, got.size))
        # from here the intake owns the staged file: a timeout stops the wait, never the admission
        waiting = asyncio.wrap_future(done)
        finished, _ = await asyncio.wait({waiting}, timeout=ADMIT_TIMEOUT)
        if not finished:
            raise RequestError(
                503,
                "the daemon's intake did not take the upload in time; it is kept and will still be processed",
                hint="see GET /v1/files in a minute before sending it again",
            )
        file_id = waiting.result()
        body = await asyncio.to_thread(lambda: file_view(ctx.ledger.get(file_id), ctx.inboxes))
        return JSONResponse(body, status_code=201, headers={"Location": f"/v1/files/{file_id}"})

    @app.get("/v1/files", summary="Files, newest first; filter by state and user")
    def list_files(
        state: str | None = None, user: str | None = None, limit: int = Query(50, ge=1, le=1000)
    ) -> dict[str, Any]:
        known = {s.value for s in State} | {"deferred"}
        if state is not None and state not in known:
            raise RequestError(400, f"unknown state {state!r}", hint=f"one of {', '.join(sorted(known))}")
        asked = () if state is None else ((State.QUEUED.value,) if state == "deferred" else (state,))
        inboxes = ctx.inboxes
        views = []
        for row in daemon_files(ctx.ledger, states=asked, limit=5000):
            if user is not None and file_user(row, inboxes) != user:
                continue
            view = file_view(row, inboxes)
            if state is None or view["state"] == state:
                views.append(view)
            if len(views) >= limit:
                break
        return {"files": views}

    def _row(file_id: int) -> Any:
        try:
            row = ctx.ledger.get(file_id)
        except NotFoundError:
            row = None
        if row is None or row.inbox not in ctx.inboxes:
            raise RequestError(404, f"no file {file_id}", hint="GET /v1/files lists them")
        return row

    @app.get("/v1/files/{file_id}", summary="One file: state, progress, route and reason, errors")
    def get_file(file_id: int) -> dict[str, Any]:
        return file_view(_row(file_id), ctx.inboxes)

    @app.get(
        "/v1/files/{file_id}/result",
        summary="The result: JSON, or RTTM and the export formats by ?format= or Accept",
        responses={200: {"content": {m.split(";")[0]: {} for m in MEDIA_TYPES.values()}}},
    )
    def get_result(request: Request, file_id: int, format: str | None = None) -> Response:
        row = _row(file_id)
        fmt = (format or _accepted(request.headers.get("accept", "")) or "json").lower()
        if fmt not in ALWAYS + EXPORT_FORMATS:
            raise RequestError(400, f"unknown format {fmt!r}", hint=f"one of {', '.join(ALWAYS + EXPORT_FORMATS)}")
        if row.state is not State.DONE:
            view = file_view(row, ctx.inboxes)
            hint = (view["error"] or {}).get("hint") if row.state is State.FAILED else "ask again when it is done"
            raise RequestError(409, f"{row.rel_path} is {view['state']}, not done", hint=hint)
        paths = outputs(row, ctx.inboxes)
        try:
            doc = read_result(paths.json)  # what the outbox holds (names applied) is the answer
        except (OSError, ValueError):
            raise RequestError(
                410, f"the result of {row.rel_path} is no longer in the outbox", hint="drop the file again"
            ) from None
        if fmt == "json":
            body = paths.json.read_bytes()
        elif fmt == "rttm":
            body = rttm_of(doc).encode("utf-8")
        else:
            body = render(doc, fmt)
        return Response(body, media_type=MEDIA_TYPES[fmt])

    # -- cloud jobs and usage --------------------------------------------------------------------------------

    @app.get("/v1/jobs", summary="Cloud jobs (in flight; all=true adds finished ones), of one user with user=")
    def list_jobs(user: str | None = None, all: bool = False) -> dict[str, Any]:
        return {"jobs": job_views(ctx.ledger, ctx.inboxes, user=user, include_closed=all)}

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a cloud job; its files fall back to local (or fail)")
    def delete_job(job_id: str) -> dict[str, Any]:  # plain def: FastAPI runs it on a worker thread
        job = ctx.ledger.job_by_hub_id(job_id)
        if job is None:
            raise RequestError(404, f"no cloud job {job_id} in this ledger", hint="GET /v1/jobs?all=true lists them")
        canceled = cancel_job(ctx.ledger, job_id, ctx.cancel)
        then = "processed locally" if ctx.settings.cloud.fallback else "failed with an .error.json"
        return {
            "job_id": canceled.job_id,
            "canceled": True,
            "files": [f.id for f in ctx.ledger.job_files(job.batch_id)],
            "then": f"its files will be {then} at the daemon's next poll",
        }

    @app.get("/v1/usage", summary="The figures of diarist usage --json")
    def get_usage(by: str = "day", since: str | None = None) -> dict[str, Any]:
        if by not in usage.GROUPS:
            raise RequestError(400, f"by must be one of {', '.join(usage.GROUPS)}, got {by!r}")
        try:
            start = date.fromisoformat(since) if since else None
        except ValueError:
            raise RequestError(400, f"since {since!r} is not a date", hint="use YYYY-MM-DD") from None
        return usage.as_json(ctx.usage(by, start))

    return app


#: the dashboard loads nothing from elsewhere, and says so to the browser
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


FOREIGN_HINT = "call the API from a program or a shell, or open the dashboard at the API's own address"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _foreign(request: Request, listen: Listen | None) -> str | None:
    """Why a request that a web page elsewhere made the browser send is refused, or None.

    A page on another site may make the browser send requests here (a form or a no-cors fetch: an upload
    routed to the cloud costs money) and, by rebinding its own host name to 127.0.0.1, even read the
    answers. Browsers say where such a request comes from (``Origin``); a rebound name shows in ``Host``.
    """
    host = request.headers.get("host", "").lower()
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host:
        return f"a request from the web page at {origin} is refused (cross-origin)"
    if request.headers.get("sec-fetch-site") == "cross-site" and request.method != "GET":
        return "a cross-site request is refused"
    if listen is not None and listen.unix is None and listen.loopback:
        name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name not in LOOPBACK_NAMES | {(listen.host or "").lower()}:
            return f"the API listens on loopback and answers requests for this machine only, not for {name!r}"
    return None


def _accepted(accept: str) -> str | None:
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ACCEPTS:
            return ACCEPTS[media]
    return None
