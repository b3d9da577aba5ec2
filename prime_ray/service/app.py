"""The gateway: a FastAPI app over the job store, the follower and the Ray Jobs API.

    POST /v1/jobs                      create a job from a spec (JSON or YAML), Idempotency-Key aware
    GET  /v1/jobs                      list (newest first, `state` filter, cursor pages)
    GET  /v1/jobs/{id}                 state, current stage, progress per stage, metrics, error
    POST /v1/jobs/{id}/cancel          stop it in Ray; cancelled once Ray reports it stopped
    GET  /v1/jobs/{id}/events          JSON page from `cursor`, or server-sent events (Accept: text/event-stream)
    GET  /v1/jobs/{id}/logs            the Ray job's logs
    GET  /v1/jobs/{id}/artifacts[/p]   list, download (confined to the job's folder)
    POST|GET|DELETE /v1/jobs/{id}/deployment    serve a succeeded job's student on Ray Serve, or remove it
    POST /v1/jobs/{id}/predict         ask the served student about a user
    POST /v1/jobs/{id}/users/{u}/history        add items to a user's memory (no retraining)
    POST /v1/chat/completions, GET /v1/models   OpenAI-compatible (model `<job>/prime`, `user` = the user)
    GET  /healthz /readyz /metrics

Every route but /healthz, /openapi.json and /docs (Swagger UI) needs `Authorization: Bearer <API key>`;
read-only keys cannot create, cancel, deploy or append history. A job accepted here is in the database before the answer: if Ray is down it stays queued
and is submitted when Ray is back (POST never fails because of Ray).

The routes live in `service/api/routes/` (one router per resource), their dependencies in
`service/api/deps.py`; this module assembles the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from swagger_ui_bundle import swagger_ui_path

from prime_ray import __version__
from prime_ray.distributed.jobs import RayJobs
from prime_ray.service.api.deps import require_key
from prime_ray.service.api.errors import errors, install_error_handlers
from prime_ray.service.api.routes import artifacts, jobs, openai, ops, students
from prime_ray.service.console import install_console
from prime_ray.service.db import open_database
from prime_ray.service.deployments import StudentDeployments
from prime_ray.service.follower import Follower
from prime_ray.service.limits import BodySizeLimit
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.store import JobStore

__all__ = ["create_app"]


def create_app(settings: GatewaySettings | None = None, ray: RayJobs | None = None) -> FastAPI:
    """The gateway app. The database is migrated here; the follower runs while the app is served."""
    settings = settings or GatewaySettings()
    sessions = open_database(settings.db_url, retry_s=settings.db_retry_s)
    store = JobStore(sessions, settings.artifact_root)
    ray = ray or RayJobs(settings.ray_address, settings.ray_token())
    follower = Follower(store, ray, settings)
    deployments = StudentDeployments(store, ray, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(follower.run(), name="prime-ray-follower")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await deployments.close()

    app = FastAPI(
        title="prime-ray gateway",
        version=__version__,
        description=(
            "Runs prime-ray jobs (personalized thinking by self-distillation) on a Ray cluster through the "
            "Ray Jobs API, and serves their trained students. Every route but `/healthz`, `/docs` and `/openapi.json` needs `Authorization: Bearer <API key>` "
            "(`prime-ray keys create`). A created job is stored before the answer; while Ray cannot be "
            "reached it stays `queued` and is submitted when Ray is back."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, with Swagger UI from packaged assets
        separate_input_output_schemas=False,
    )
    app.state.settings, app.state.store, app.state.follower, app.state.ray = settings, store, follower, ray
    app.state.deployments = deployments
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    install_console(app, settings.session_secret)

    registry = CollectorRegistry()
    registry.register(ops.JobsByState(store))
    app.state.registry = registry
    Instrumentator(registry=registry, excluded_handlers=["/metrics", "/healthz"]).instrument(app)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses=errors(401))
    v1.include_router(jobs.router)
    v1.include_router(artifacts.router)
    v1.include_router(students.router)
    v1.include_router(openai.router)
    app.include_router(v1)
    app.include_router(ops.router)

    # The API document and its browsable form need no key: the document holds no secrets. Swagger UI's
    # assets ship in the swagger-ui-bundle package: no CDN, so /docs works on a machine without internet.
    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title=f"{app.title} {app.version}",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js", swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon-32x32.png",
        )

    app.openapi = lambda: _openapi_document(app)  # type: ignore[method-assign]  # FastAPI's documented override
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
