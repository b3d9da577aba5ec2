"""Routes of the web console (see the package docstring). Pages read the same store and files as the API."""

from __future__ import annotations

import collections
import datetime as dt
import hmac
import mimetypes
import re
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.middleware.sessions import SessionMiddleware

from prime_ray.distributed.jobs import RayRefused, RayUnavailable
from prime_ray.pipeline.events import read_events

# The API's own helpers, so the console parses specs and serves files exactly as the REST API does.
from prime_ray.service.api.routes.artifacts import _artifact_files, confined
from prime_ray.service.api.routes.jobs import _stream_events
from prime_ray.service.api.routes.students import forward
from prime_ray.service.follower import events_path, job_dir
from prime_ray.service.keys import ApiKey, key_by_id, verify_key
from prime_ray.service.states import JobState
from prime_ray.service.store import JobNotFound
from prime_ray.service.validation import MAX_OFFSET, ApiError, parse_spec_body
from prime_ray.serving.schemas import PredictRequest
from prime_ray.spec import JOB_SPEC_EXAMPLE

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["clock"] = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
# Reports are Markdown written by prime-ray from model output: raw HTML in them is shown as text, not run.
markdown = MarkdownIt("commonmark", {"html": False}).enable("table")

EVENTS_SHOWN = 50
LOG_LINES = 200
# Files the browser may show inline; everything else is downloaded, so an artifact can never run as a page.
INLINE_TYPES = {"image/png", "image/jpeg", "text/plain"}
# Terminal colour codes in Ray's log lines (CSI sequences): a page shows the text without them.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LoginRequired(Exception):
    """Raised by `console_key` when the session holds no live key: answered with a redirect to /login."""


class Forbidden(Exception):
    """A console action the session may not do (read-only key, missing or wrong CSRF token)."""


def console_key(request: Request) -> ApiKey:
    """The live API key of the session (a dependency); a revoked key ends the session."""
    key_id = request.session.get("key_id")
    key = key_by_id(request.app.state.store.sessions, key_id) if isinstance(key_id, str) else None
    if key is None:
        request.session.clear()
        raise LoginRequired(request.url.path)
    return key


ConsoleKey = Annotated[ApiKey, Depends(console_key)]


def check_csrf(request: Request, token: str) -> None:
    expected = request.session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Forbidden("the form expired or did not come from this console: reload the page and try again")


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("key", None)
    context["csrf"] = request.session.get("csrf", "")
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _local_path(target: str | None) -> str:
    """Where to go after login: a path on this site only (never `//host` or a full URL)."""
    return target if target and target.startswith("/") and not target.startswith("//") else "/"


def _stage_rows(row: Any) -> list[dict[str, Any]]:
    stages = (row.spec or {}).get("stages") or list((row.progress or {}).keys())
    rows = []
    for stage in stages:
        progress = (row.progress or {}).get(stage, {})
        done, total = progress.get("done"), progress.get("total")
        state = progress.get("state", "pending")
        fraction = 1.0 if state in ("finished", "skipped") else (done / total if done is not None and total else 0.0)
        rows.append({"name": stage, "state": state, "done": done, "total": total, "percent": round(100 * fraction),
                     "metrics": progress.get("metrics") or {}})
    return rows


def _job_percent(row: Any) -> int:
    stages = _stage_rows(row)
    return round(sum(s["percent"] for s in stages) / len(stages)) if stages else 0


def _recent_events(path: Path) -> list[Any]:
    return list(collections.deque((event for _, event in read_events(path)), maxlen=EVENTS_SHOWN))


def install_console(app: FastAPI, session_secret: str) -> None:
    """Add the console's pages, its static files and the session middleware to the gateway `app`."""
    app.add_middleware(SessionMiddleware, secret_key=session_secret, session_cookie="prime_ray_session",
                       same_site="strict", https_only=False)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="console-static")
    router = APIRouter(include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/login?next={exc.args[0]}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> HTMLResponse:
        return _render(request, "error.html", status_code=403, message=str(exc))

    def find(job_id: str) -> Any:
        try:
            return app.state.store.get(job_id)
        except JobNotFound:
            return None

    @router.get("/login")
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return _render(request, "login.html", next=_local_path(next))

    @router.post("/login")
    def login(request: Request, api_key: Annotated[str, Form(max_length=200)],
              next: Annotated[str, Form(max_length=2000)] = "/") -> Response:
        key = verify_key(app.state.store.sessions, api_key.strip())
        if key is None:
            return _render(request, "login.html", status_code=401, next=_local_path(next),
                           error="That is not a live API key.")
        request.session.clear()
        request.session.update(key_id=key.id, csrf=secrets.token_urlsafe(32))
        return RedirectResponse(_local_path(next), status_code=303)

    @router.post("/logout")
    def logout(request: Request, key: ConsoleKey, csrf: Annotated[str, Form(max_length=200)]) -> Response:
        check_csrf(request, csrf)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @router.get("/")
    def jobs_page(request: Request, key: ConsoleKey, state: str = "") -> HTMLResponse:
        wanted = JobState(state) if state in {s.value for s in JobState} else None
        rows, _ = app.state.store.page(wanted, 200, None)
        jobs = [{"row": row, "percent": _job_percent(row)} for row in rows]
        return _render(request, "jobs.html", key=key, jobs=jobs, state=wanted.value if wanted else "",
                       states=[s.value for s in JobState])

    def job_view(request: Request, key: ApiKey, row: Any, status_code: int = 200, **ask: Any) -> HTMLResponse:
        root = job_dir(app.state.settings, row.id)
        events = _recent_events(events_path(app.state.settings, row.id))
        report = root / "eval" / "report.md"
        return _render(
            request, "job.html", status_code=status_code, key=key, job=row, state=JobState(row.state),
            stages=_stage_rows(row), deployment=row.deployment, ask=ask,
            # The live stream starts where the record's state was taken from: an event written since, but
            # not yet applied by the follower, still comes (and reloads the page once it is applied).
            events=events, cursor=row.events_offset, artifacts=_artifact_files(root),
            report_html=markdown.render(report.read_text(errors="replace")) if report.is_file() else None,
            charts=[p for p in ("eval/report.png", "train/curves.png") if (root / p).is_file()],
            spec_yaml=yaml.safe_dump(row.spec, sort_keys=False),
        )

    @router.get("/jobs/{job_id}")
    def job_page(request: Request, key: ConsoleKey, job_id: str) -> HTMLResponse:
        row = find(job_id)
        if row is None:
            return _render(request, "error.html", status_code=404, key=key, message=f"No job {job_id!r}.")
        return job_view(request, key, row)

    @router.post("/jobs/{job_id}/deploy")
    def deploy(request: Request, key: ConsoleKey, job_id: str, csrf: Annotated[str, Form(max_length=200)]) -> Response:
        """Start serving a succeeded job's student (the REST API's deployJob)."""
        check_csrf(request, csrf)
        if key.read_only:
            raise Forbidden(f"API key {key.id} is read-only")
        row = find(job_id)
        if row is not None and row.state == JobState.succeeded.value:
            try:
                app.state.deployments.deploy(row)
            except (RayUnavailable, RayRefused) as e:
                return job_view(request, key, row, status_code=503, error=f"Ray cannot take the request: {e}")
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @router.post("/jobs/{job_id}/ask")
    async def ask(request: Request, key: ConsoleKey, job_id: str, csrf: Annotated[str, Form(max_length=200)],
                  user_id: Annotated[str, Form(min_length=1, max_length=200)],
                  input: Annotated[str, Form(min_length=1, max_length=100_000)],
                  adapter: Annotated[str, Form(max_length=40)] = "prime") -> Response:
        """Ask the served student about a user (the REST API's predict), shown on the job page."""
        check_csrf(request, csrf)
        row = await run_in_threadpool(find, job_id)
        if row is None:
            return _render(request, "error.html", status_code=404, key=key, message=f"No job {job_id!r}.")
        asked = {"user_id": user_id, "input": input, "adapter": adapter}
        try:
            answer = await forward(app.state.deployments, row, "POST", "/predict",
                                   PredictRequest(user_id=user_id, input=input, adapter=adapter).model_dump(mode="json"))
        except ApiError as e:
            problems = "; ".join(f"{p.path}: {p.message}" for p in e.problems)
            return job_view(request, key, row, status_code=e.status, asked=asked,
                            error=e.detail + (f" ({problems})" if problems else ""))
        return job_view(request, key, row, asked=asked, answer=answer)

    @router.get("/jobs/{job_id}/log")
    def job_log(request: Request, key: ConsoleKey, job_id: str) -> Response:
        """The tail of the Ray job's log, as plain text (fetched by the job page)."""
        row = find(job_id)
        if row is None or not row.submitted:
            return Response("", media_type="text/plain")
        try:
            text = app.state.ray.logs(row.submission_id)
        except Exception as e:  # noqa: BLE001 - the page shows why the log cannot be read, whatever it is
            text = f"(the log cannot be read now: {type(e).__name__}: {e})"
        return Response(ANSI.sub("", "\n".join(text.splitlines()[-LOG_LINES:])), media_type="text/plain")

    @router.get("/jobs/{job_id}/stream")
    async def job_stream(request: Request, key: ConsoleKey, job_id: str,
                         cursor: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> Response:
        row = await run_in_threadpool(find, job_id)
        if row is None:
            return Response(status_code=404)
        path = events_path(app.state.settings, row.id)

        async def events() -> AsyncIterator[dict]:
            async for event in _stream_events(app.state.store, row.id, path, cursor, app.state.settings.poll_interval_s,
                                              applied_only=True):
                yield event
            # The job has ended and every event was sent: the page shows its final state. (Without this, a
            # page rendered just before the job's state changed would only see the stream close, and the
            # browser's EventSource would reconnect to it forever.)
            yield {"event": "end", "data": ""}

        return EventSourceResponse(events())

    @router.get("/jobs/{job_id}/files/{path:path}")
    def job_file(request: Request, key: ConsoleKey, job_id: str, path: str) -> Response:
        row = find(job_id)
        target = confined(job_dir(app.state.settings, row.id), path) if row else None
        if target is None:
            return _render(request, "error.html", status_code=404, key=key, message=f"No artifact {path!r}.")
        media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        inline = media in INLINE_TYPES
        return FileResponse(target, media_type=media if inline else "application/octet-stream",
                            filename=target.name, content_disposition_type="inline" if inline else "attachment",
                            headers={"X-Content-Type-Options": "nosniff"})

    @router.post("/jobs/{job_id}/cancel")
    def cancel(request: Request, key: ConsoleKey, job_id: str, csrf: Annotated[str, Form(max_length=200)]) -> Response:
        check_csrf(request, csrf)
        if key.read_only:
            raise Forbidden(f"API key {key.id} is read-only")
        row = find(job_id)
        if row is not None and not JobState(row.state).terminal:
            app.state.store.request_cancel(row.id)
            app.state.follower.wake()
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)

    @router.get("/submit")
    def submit_page(request: Request, key: ConsoleKey) -> HTMLResponse:
        example = JOB_SPEC_EXAMPLE
        return _render(request, "submit.html", key=key, spec_text=yaml.safe_dump(example, sort_keys=False),
                       problems=None)

    @router.post("/submit")
    async def submit(request: Request, key: ConsoleKey, spec: Annotated[str, Form(max_length=1 << 20)],
                     csrf: Annotated[str, Form(max_length=200)], action: Annotated[str, Form()] = "submit") -> Response:
        check_csrf(request, csrf)
        if key.read_only:
            raise Forbidden(f"API key {key.id} is read-only")
        try:
            parsed = await run_in_threadpool(parse_spec_body, "application/yaml", spec.encode())
        except ApiError as e:
            return _render(request, "submit.html", status_code=422, key=key, spec_text=spec, detail=e.detail,
                           problems=e.problems)
        if action == "check":
            return _render(request, "submit.html", key=key, spec_text=spec, problems=[], valid=True)
        row, _ = await run_in_threadpool(app.state.store.create, parsed, key.id, None)
        app.state.follower.wake()
        return RedirectResponse(f"/jobs/{row.id}", status_code=303)

    app.include_router(router)
