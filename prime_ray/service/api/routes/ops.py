"""Operations: liveness (no key), readiness (database and Ray), Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily

from prime_ray.distributed.jobs import RayRefused, RayUnavailable
from prime_ray.service.api.deps import RayDep, SessionsDep, require_key
from prime_ray.service.api.errors import errors
from prime_ray.service.db import check_database
from prime_ray.service.models import HealthOut, ReadyOut
from prime_ray.service.store import JobStore

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=HealthOut, operation_id="healthz",
            summary="The process is up (no key needed)")
def healthz() -> HealthOut:
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, operation_id="readyz", summary="Database and Ray reachable",
            dependencies=[Depends(require_key)],
            responses={503: {"model": ReadyOut, "description": "Not ready: see which part."}, **errors(401)})
def readyz(sessions: SessionsDep, ray: RayDep) -> JSONResponse:
    database, ray_state = check_database(sessions), "ok"
    try:
        ray.ping()
    except (RayUnavailable, RayRefused) as e:
        ray_state = str(e)
    ready = database == "ok" and ray_state == "ok"
    body = ReadyOut(ready=ready, database=database, ray=ray_state)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, operation_id="metrics", summary="Prometheus metrics",
            dependencies=[Depends(require_key)],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **errors(401)})
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


class JobsByState:
    """A Prometheus collector: the number of jobs in each state, read from the database at scrape time."""

    def __init__(self, store: JobStore):
        self.store = store

    def collect(self) -> Any:
        gauge = GaugeMetricFamily("prime_ray_jobs", "Jobs by state", labels=["state"])
        for state, count in self.store.counts_by_state().items():
            gauge.add_metric([state], count)
        yield gauge
