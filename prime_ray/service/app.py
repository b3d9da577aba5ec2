"""The gateway: a FastAPI app over the job store, the follower and the Ray Jobs API.

    POST /v1/jobs                      create a job from a spec (JSON or YAML), Idempotency-Key aware
    GET  /v1/jobs                      list (newest first, `state` filter, cursor pages)
    GET  /v1/jobs/{id}                 state, current stage, progress per stage, metrics, error
    POST /v1/jobs/{id}/cancel          stop it in Ray; cancelled once Ray reports it stopped
    GET  /v1/jobs/{id}/events          JSON page from `cursor`, or server-sent events (Accept: text/event-stream)
    GET  /v1/jobs/{id}/logs            the Ray job's logs
    GET  /v1/jobs/{id}/artifacts[/p]   list, download (confined to the job's folder)
    GET  /healthz /readyz /metrics

Every route but /healthz needs `Authorization: Bearer <API key>`; read-only keys cannot create or
cancel. A job accepted here is in the database before the answer: if Ray is down it stays queued
and is submitted when Ray is back (POST never fails because of Ray).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import yaml
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_fastapi_instrumentator import Instrumentator
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from prime_ray import __version__
from prime_ray.distributed.jobs import RayJobs, RayRefused, RayUnavailable
from prime_ray.pipeline.events import read_events
from prime_ray.service.db import DatabaseUnavailable, check_database, open_database
from prime_ray.service.follower import Follower, events_path, job_dir
from prime_ray.service.keys import ApiKey, verify_key
from prime_ray.service.limits import BodySizeLimit
from prime_ray.service.models import (
    ArtifactList,
    ArtifactOut,
    ErrorOut,
    EventOut,
    EventPage,
    HealthOut,
    JobList,
    JobOut,
    JobSummary,
    ReadyOut,
)
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.states import IllegalTransition, JobState
from prime_ray.service.store import BadCursor, IdempotencyConflict, JobNotFound, JobStore
from prime_ray.spec import JobSpec, SpecError, SpecProblem, parse_spec

log = logging.getLogger("prime_ray.gateway")

JSON_TYPES = ("application/json",)
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
EVENTS_PAGE = 1000  # events per JSON page


class ApiError(Exception):
    def __init__(self, status: int, detail: str, problems: list[SpecProblem] | None = None,
                 headers: dict[str, str] | None = None):
        self.status, self.detail, self.problems, self.headers = status, detail, problems or [], headers


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give (all of them an ErrorOut)."""
    meaning = {
        401: "No API key, or not a live one.",
        403: "The API key is read-only.",
        404: "No such job (or artifact).",
        409: "Conflict with the job's state (or with an earlier use of the Idempotency-Key).",
        413: "The request body is larger than the gateway accepts.",
        415: "The body is neither JSON nor YAML.",
        422: "Invalid input: every problem, by its path.",
        503: "The Ray Jobs API cannot be reached.",
    }
    return {code: {"model": ErrorOut, "description": meaning[code]} for code in codes}


def create_app(settings: GatewaySettings | None = None, ray: RayJobs | None = None) -> FastAPI:
    """The gateway app. The database is migrated here; the follower runs while the app is served."""
    settings = settings or GatewaySettings()
    sessions = open_database(settings.db_url, retry_s=settings.db_retry_s)
    store = JobStore(sessions, settings.artifact_root)
    ray = ray or RayJobs(settings.ray_address, settings.ray_token())
    follower = Follower(store, ray, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(follower.run(), name="prime-ray-follower")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="prime-ray gateway",
        version=__version__,
        description=(
            "Runs prime-ray jobs (personalized thinking by self-distillation) on a Ray cluster through the "
            "Ray Jobs API. Every route but `/healthz` needs `Authorization: Bearer <API key>` "
            "(`prime-ray keys create`). A created job is stored before the answer; while Ray cannot be "
            "reached it stays `queued` and is submitted when Ray is back."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the API key
        separate_input_output_schemas=False,
    )
    app.state.settings, app.state.store, app.state.follower, app.state.ray = settings, store, follower, ray
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    _install_error_handlers(app)

    registry = CollectorRegistry()
    registry.register(_JobsByState(store))
    Instrumentator(registry=registry, excluded_handlers=["/metrics", "/healthz"]).instrument(app)

    bearer = HTTPBearer(auto_error=False, description="An API key from `prime-ray keys create`.")

    def require_key(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> ApiKey:
        key = verify_key(sessions, credentials.credentials) if credentials else None
        if key is None:
            raise ApiError(401, "a valid API key is required (Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})
        return key

    def require_writer(key: ApiKey = Depends(require_key)) -> ApiKey:
        if key.read_only:
            raise ApiError(403, f"API key {key.id} is read-only")
        return key

    def find_job(job_id: str) -> Any:
        try:
            return store.get(job_id)
        except JobNotFound:
            raise ApiError(404, f"no job {job_id!r}") from None

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=_errors(401))

    @v1.post(
        "/jobs", status_code=201, response_model=JobOut, tags=["jobs"],
        summary="Create a job from a spec",
        responses={200: {"model": JobOut, "description": "The job created earlier with this Idempotency-Key."},
                   **_errors(403, 409, 413, 415, 422)},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"},
                                 "example": JobSpec.model_config["json_schema_extra"]["examples"][0]},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
        }}},
    )
    async def create_job(
        request: Request,
        response: Response,
        key: ApiKey = Depends(require_writer),
        idempotency_key: str | None = Header(
            None, alias="Idempotency-Key", min_length=1, max_length=200,
            description="Retrying with the same key returns the same job (200) instead of a new one.",
        ),
    ) -> JobOut:
        """The body is a JobSpec document (JSON or YAML). Invalid specs get 422 with every problem by its
        path. The job runs under its id, with its artifacts under the gateway's artifact root."""
        spec = _parse_spec_body(request.headers.get("content-type", ""), await request.body())
        try:
            row, created = await run_in_threadpool(store.create, spec, key.id, idempotency_key)
        except IdempotencyConflict as e:
            raise ApiError(409, str(e)) from None
        response.status_code = 201 if created else 200
        response.headers["Location"] = f"/v1/jobs/{row.id}"
        follower.wake()
        return JobOut.of(row)

    @v1.get("/jobs", response_model=JobList, tags=["jobs"], summary="List jobs, newest first",
            responses=_errors(422))
    def list_jobs(
        state: JobState | None = Query(None, description="Only jobs in this state."),
        limit: int = Query(50, ge=1, le=500),
        cursor: str | None = Query(None, max_length=200, description="`next_cursor` of the previous page."),
    ) -> JobList:
        try:
            rows, next_cursor = store.page(state, limit, cursor)
        except BadCursor as e:
            raise ApiError(422, "invalid query", [SpecProblem(path="query.cursor", message=str(e))]) from None
        return JobList(jobs=[JobSummary.of(row) for row in rows], next_cursor=next_cursor)

    @v1.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], summary="A job: state, stage, progress",
            responses=_errors(404))
    def get_job(job_id: str) -> JobOut:
        return JobOut.of(find_job(job_id))

    @v1.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, tags=["jobs"],
             summary="Cancel a job", responses=_errors(403, 404, 409))
    def cancel_job(job_id: str, key: ApiKey = Depends(require_writer)) -> JobOut:
        """Asks Ray to stop the job; its state becomes `cancelled` once Ray reports it stopped."""
        find_job(job_id)
        try:
            row = store.request_cancel(job_id)
        except IllegalTransition as e:
            raise ApiError(409, f"job {job_id} has already ended ({e.current.value})") from None
        follower.wake()
        return JobOut.of(row)

    @v1.get(
        "/jobs/{job_id}/events", response_model=EventPage, tags=["jobs"], summary="The job's progress events",
        responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                         "description": "A JSON page, or a stream when asked with `Accept: text/event-stream`."},
                   **_errors(404, 422)},
    )
    async def job_events(
        request: Request,
        job_id: str,
        cursor: int | None = Query(None, ge=0, description="`next_cursor` of the previous page (a byte offset)."),
    ) -> Any:
        """JSON: the events after `cursor` (at most 1000). With `Accept: text/event-stream`: every event
        after `cursor` (or `Last-Event-ID`) as it is written, until the job ends."""
        row = await run_in_threadpool(find_job, job_id)
        path = events_path(settings, row.id)
        if "text/event-stream" in request.headers.get("accept", ""):
            start = cursor if cursor is not None else _int_or_zero(request.headers.get("last-event-id"))
            return EventSourceResponse(_stream_events(store, row.id, path, start, settings.poll_interval_s))
        events = await run_in_threadpool(_events_page, path, cursor or 0)
        next_cursor = events[-1].cursor if events else (cursor or 0)
        ended = JobState(row.state).terminal and len(events) < EVENTS_PAGE
        return EventPage(events=events, next_cursor=next_cursor, finished=ended)

    @v1.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, tags=["jobs"], summary="The Ray job's logs",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(404, 503)})
    def job_logs(job_id: str) -> str:
        row = find_job(job_id)
        if not row.submitted:
            return ""
        try:
            return ray.logs(row.submission_id)
        except RayUnavailable as e:
            raise ApiError(503, str(e)) from None
        except RayRefused:
            return ""

    @v1.get("/jobs/{job_id}/artifacts", response_model=ArtifactList, tags=["artifacts"],
            summary="The job's artifact files", responses=_errors(404))
    def list_artifacts(job_id: str) -> ArtifactList:
        row = find_job(job_id)
        return ArtifactList(job_id=row.id, artifacts=_artifact_files(job_dir(settings, row.id)))

    @v1.get("/jobs/{job_id}/artifacts/{path:path}", response_class=FileResponse, tags=["artifacts"],
            summary="Download one artifact file",
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                       **_errors(404)})
    def download_artifact(job_id: str, path: str) -> FileResponse:
        """`path` is relative to the job's artifact folder; anything resolving outside it is 404."""
        row = find_job(job_id)
        target = confined(job_dir(settings, row.id), path)
        if target is None:
            raise ApiError(404, f"job {row.id} has no artifact {path!r}")
        return FileResponse(target, media_type="application/octet-stream", filename=target.name)

    app.include_router(v1)

    @app.get("/healthz", response_model=HealthOut, tags=["service"], summary="The process is up (no key needed)")
    def healthz() -> HealthOut:
        return HealthOut()

    @app.get("/readyz", response_model=ReadyOut, tags=["service"], summary="Database and Ray reachable",
             dependencies=[Depends(require_key)],
             responses={503: {"model": ReadyOut, "description": "Not ready: see which part."}, **_errors(401)})
    def readyz() -> JSONResponse:
        database, ray_state = check_database(sessions), "ok"
        try:
            ray.ping()
        except (RayUnavailable, RayRefused) as e:
            ray_state = str(e)
        ready = database == "ok" and ray_state == "ok"
        body = ReadyOut(ready=ready, database=database, ray=ray_state)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"], summary="Prometheus metrics",
             dependencies=[Depends(require_key)],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)})
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_key)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.openapi = lambda: _openapi_document(app)  # type: ignore[method-assign]
    return app


def _openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error answer described as what this gateway sends (a JSON ErrorOut)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes, separate_input_output_schemas=False)
        error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        for operations in document["paths"].values():
            for operation in operations.values():
                for code, answer in operation.get("responses", {}).items():
                    if code == "422":
                        answer["description"] = "Invalid input: every problem, by its path."
                    if code.startswith(("4", "5")) and "ErrorOut" in json.dumps(answer) or code == "422":
                        answer["content"] = error_body  # errors are JSON, whatever the route's own media type
        for unused in ("HTTPValidationError", "ValidationError"):
            document["components"]["schemas"].pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema


# ------------------------------------------------------------------------------------- helpers


def _parse_spec_body(content_type: str, body: bytes) -> JobSpec:
    media = content_type.split(";")[0].strip().lower()
    if media not in JSON_TYPES + YAML_TYPES:
        raise ApiError(415, f"send the spec as application/json or application/yaml, not {media or 'no content type'}")
    if not body.strip():
        raise ApiError(422, "invalid job spec", [SpecProblem(path="", message="the request body is empty")])
    try:
        if media in JSON_TYPES:
            document = json.loads(body)
        else:
            document = _load_yaml(body.decode("utf-8"))
    except json.JSONDecodeError as e:
        raise ApiError(422, "invalid job spec", [SpecProblem(
            path="", message=f"not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}")]) from None
    except (ValueError, yaml.YAMLError, RecursionError) as e:
        raise ApiError(422, "invalid job spec", [SpecProblem(path="", message=f"cannot read the body: {e}")]) from None
    try:
        return parse_spec(document)
    except SpecError as e:
        raise ApiError(422, f"invalid job spec: {len(e.problems)} problem(s)", e.problems) from None


def _load_yaml(text_: str) -> Any:
    # Aliases let a small document expand into a huge one: a spec never needs them.
    for event in yaml.parse(text_, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise ValueError("YAML aliases (*name) are not accepted")
    return yaml.safe_load(text_)


def _int_or_zero(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def _events_page(path: Path, cursor: int) -> list[EventOut]:
    out = []
    for offset, event in read_events(path, cursor):
        out.append(EventOut(**event.model_dump(), cursor=offset))
        if len(out) == EVENTS_PAGE:
            break
    return out


async def _stream_events(store: JobStore, job_id: str, path: Path, cursor: int, poll_s: float) -> AsyncIterator[dict]:
    while True:
        ended = JobState((await run_in_threadpool(store.get, job_id)).state).terminal
        events = await run_in_threadpool(_events_page, path, cursor)
        for event in events:
            cursor = event.cursor
            yield {"id": str(event.cursor), "event": event.kind, "data": event.model_dump_json()}
        if ended and len(events) < EVENTS_PAGE:
            return  # the job had ended before this read: nothing more will come
        if not events:
            await asyncio.sleep(poll_s)


def confined(root: Path, relative: str) -> Path | None:
    """The file `relative` names under `root`, or None if it is missing or resolves outside `root`."""
    try:
        base = root.resolve()
        target = (base / relative).resolve()
        if target.is_relative_to(base) and target.is_file():
            return target
    except (OSError, ValueError):  # a name too long, an embedded NUL byte
        pass
    return None


def _artifact_files(root: Path) -> list[ArtifactOut]:
    if not root.is_dir():
        return []
    base = root.resolve()
    files = []
    for path in sorted(base.rglob("*")):
        target = confined(base, str(path.relative_to(base)))
        if target is None:  # a folder, or a link leading out of the job's folder
            continue
        stat = target.stat()
        files.append(ArtifactOut(
            path=path.relative_to(base).as_posix(), size=stat.st_size,
            modified_at=dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc),
        ))
    return files


class _JobsByState:
    """A Prometheus collector: the number of jobs in each state, read from the database at scrape time."""

    def __init__(self, store: JobStore):
        self.store = store

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("prime_ray_jobs", "Jobs by state", labels=["state"])
        for state, count in self.store.counts_by_state().items():
            gauge.add_metric([state], count)
        yield gauge


def _install_error_handlers(app: FastAPI) -> None:
    def answer(status: int, detail: str, problems: list[SpecProblem] | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
        body = ErrorOut(detail=detail, problems=problems or [])
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.detail, exc.problems, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [SpecProblem(path=".".join(str(p) for p in err["loc"]), message=err["msg"]) for err in exc.errors()]
        return answer(422, "invalid request", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(DatabaseUnavailable)
    async def _database_down(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        # Retried for PRIME_RAY_DB_RETRY_S already: the client may try again later (the SDK does).
        return answer(503, str(exc), headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return answer(500, f"internal error: {type(exc).__name__}")
