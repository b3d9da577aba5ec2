"""Jobs: create from a spec, list, get, cancel, events (JSON pages or server-sent events), logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from prime_ray.distributed.jobs import RayRefused, RayUnavailable
from prime_ray.pipeline.events import read_events
from prime_ray.service.api.deps import FollowerDep, JobDep, RayDep, SettingsDep, StoreDep, WriterDep, find_job
from prime_ray.service.api.errors import ApiError, errors
from prime_ray.service.follower import events_path
from prime_ray.service.models import EventOut, EventPage, JobList, JobOut, JobSummary
from prime_ray.service.states import IllegalTransition, JobState
from prime_ray.service.store import BadCursor, IdempotencyConflict, JobStore
from prime_ray.service.validation import MAX_OFFSET, event_cursor, parse_spec_body
from prime_ray.spec import JOB_SPEC_EXAMPLE, SpecProblem

EVENTS_PAGE = 1000  # events per JSON page

router = APIRouter(tags=["jobs"])


@router.post(
    "/jobs", status_code=201, response_model=JobOut, operation_id="createJob",
    summary="Create a job from a spec",
    responses={200: {"model": JobOut, "description": "The job created earlier with this Idempotency-Key."},
               **errors(403, 409, 413, 415, 422)},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobSpec"},
                             "example": JOB_SPEC_EXAMPLE},
        "application/yaml": {"schema": {"$ref": "#/components/schemas/JobSpec"}},
    }}},
)
async def create_job(
    request: Request,
    response: Response,
    key: WriterDep,
    store: StoreDep,
    follower: FollowerDep,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=200,
        description="Retrying with the same key returns the same job (200) instead of a new one.",
    )] = None,
) -> JobOut:
    """The body is a JobSpec document (JSON or YAML). Invalid specs get 422 with every problem by its
    path. The job runs under its id, with its artifacts under the gateway's artifact root."""
    spec = await run_in_threadpool(parse_spec_body, request.headers.get("content-type", ""), await request.body())
    try:
        row, created = await run_in_threadpool(store.create, spec, key.id, idempotency_key)
    except IdempotencyConflict as e:
        raise ApiError(409, str(e)) from None
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{row.id}"
    follower.wake()
    return JobOut.of(row)


@router.get("/jobs", response_model=JobList, operation_id="listJobs", summary="List jobs, newest first",
            responses=errors(422))
def list_jobs(
    store: StoreDep,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    try:
        rows, next_cursor = store.page(state, limit, cursor)
    except BadCursor as e:
        raise ApiError(422, "invalid query", [SpecProblem(path="query.cursor", message=str(e))]) from None
    return JobList(jobs=[JobSummary.of(row) for row in rows], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, operation_id="getJob",
            summary="A job: state, stage, progress", responses=errors(404))
def get_job(job: JobDep) -> JobOut:
    return JobOut.of(job)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, operation_id="cancelJob",
             summary="Cancel a job", responses=errors(403, 404, 409))
def cancel_job(job: JobDep, key: WriterDep, store: StoreDep, follower: FollowerDep) -> JobOut:
    """Asks Ray to stop the job; its state becomes `cancelled` once Ray reports it stopped."""
    try:
        row = store.request_cancel(job.id)
    except IllegalTransition as e:
        raise ApiError(409, f"job {job.id} has already ended ({e.current.value})") from None
    follower.wake()
    return JobOut.of(row)


@router.get(
    "/jobs/{job_id}/events", response_model=EventPage, operation_id="jobEvents",
    summary="The job's progress events",
    responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                     "description": "A JSON page, or a stream when asked with `Accept: text/event-stream`."},
               **errors(404, 422)},
)
async def job_events(
    request: Request,
    job_id: str,
    store: StoreDep,
    settings: SettingsDep,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_OFFSET,
                                        description="`next_cursor` of the previous page (a byte offset).")] = None,
) -> Any:
    """JSON: the events after `cursor` (at most 1000). With `Accept: text/event-stream`: every event
    after `cursor` (or `Last-Event-ID`) as it is written, until the job ends."""
    row = await run_in_threadpool(find_job, job_id, store)
    path = events_path(settings, row.id)
    if "text/event-stream" in request.headers.get("accept", ""):
        start = cursor if cursor is not None else event_cursor(request.headers.get("last-event-id"))
        return EventSourceResponse(_stream_events(store, row.id, path, start, settings.poll_interval_s))
    events = await run_in_threadpool(_events_page, path, cursor or 0)
    next_cursor = events[-1].cursor if events else (cursor or 0)
    ended = JobState(row.state).terminal and len(events) < EVENTS_PAGE
    return EventPage(events=events, next_cursor=next_cursor, finished=ended)


@router.get("/jobs/{job_id}/logs", response_class=PlainTextResponse, operation_id="jobLogs",
            summary="The Ray job's logs",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(404, 503)})
def job_logs(job: JobDep, ray: RayDep) -> str:
    if not job.submitted:
        return ""
    try:
        return ray.logs(job.submission_id)
    except RayUnavailable as e:
        raise ApiError(503, str(e)) from None
    except RayRefused:
        return ""


# ------------------------------------------------------------------------------------- helpers


def _events_page(path: Path, cursor: int) -> list[EventOut]:
    out = []
    for offset, event in read_events(path, cursor):
        out.append(EventOut(**event.model_dump(), cursor=offset))
        if len(out) == EVENTS_PAGE:
            break
    return out


async def _stream_events(store: JobStore, job_id: str, path: Path, cursor: int, poll_s: float, *,
                         applied_only: bool = False) -> AsyncIterator[dict]:
    """Server-sent events of the job's events file from `cursor` on, until the job has ended.

    `applied_only`: only the events the job's record already reflects (up to its `events_offset`), so
    that a page reloaded on an event renders the state that event brought."""
    while True:
        row = await run_in_threadpool(store.get, job_id)
        ended = JobState(row.state).terminal
        events = await run_in_threadpool(_events_page, path, cursor)
        if applied_only:
            events = [event for event in events if event.cursor <= row.events_offset]
        for event in events:
            cursor = event.cursor
            yield {"id": str(event.cursor), "event": event.kind, "data": event.model_dump_json()}
        if ended and len(events) < EVENTS_PAGE:
            return  # the job had ended before this read: nothing more will come
        if not events:
            await asyncio.sleep(poll_s)
