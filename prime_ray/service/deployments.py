"""Served students on the gateway's Ray cluster: deploy, remove, follow, and forward requests to them.

A deployment is a Ray job (`python -m prime_ray.distributed.student deploy ...`, through the Ray Jobs
API like every job) that starts the job's student app behind Ray Serve's HTTP proxy and returns once it
runs; removal is another (`... undeploy JOB`). The record in the job row follows them:

    deploying --(Ray job succeeded)--> ready --(DELETE)--> stopping --(succeeded)--> (no record)
        \\--(Ray job failed)--> failed (error: Ray's message and the log tail)

A record is brought up to date when it is read (GET, predict), so no background task is needed.
Predictions are forwarded over HTTP to `http://<serve host>:<serve port>/students/<job>/...`.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from prime_ray.distributed.jobs import RayJobs
from prime_ray.service.db import JobRow
from prime_ray.service.follower import job_dir
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.store import JobStore
from prime_ray.serving.schemas import GENERALIST
from prime_ray.training.artifacts import trained_adapters

STUDENT_MODULE = "prime_ray.distributed.student"
LOG_TAIL_LINES = 30


class DeploymentError(Exception):
    """The served student cannot take the request (not deployed, not answering): `status` says how."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def served_models(settings: GatewaySettings, job_id: str) -> list[str]:
    """The OpenAI-compatible model names of a job: `<job>/<adapter>` for each trained adapter and the base."""
    adapters = [*trained_adapters(job_dir(settings, job_id) / "train"), GENERALIST]
    return [f"{job_id}/{adapter}" for adapter in adapters]


class StudentDeployments:
    def __init__(self, store: JobStore, ray: RayJobs, settings: GatewaySettings):
        self.store, self.ray, self.settings = store, ray, settings
        self.http = httpx.AsyncClient(timeout=settings.predict_timeout_s)

    def url(self, job_id: str) -> str:
        return f"http://{self.settings.serve_host}:{self.settings.serve_port}/students/{job_id}"

    def _record(self, row: JobRow, state: str, kind: str, **fields: Any) -> dict:
        attempt = (row.deployment or {}).get("attempt", 0) + (1 if kind else 0)
        record = {"state": state, "url": None, "models": [], "error": None, "attempt": attempt,
                  "submission_id": (row.deployment or {}).get("submission_id"), "updated_at": time.time(), **fields}
        if kind:
            record["submission_id"] = f"prime-ray-{row.id}-{kind}-{attempt}"
        return record

    def deploy(self, row: JobRow) -> tuple[dict, bool]:
        """Start deploying (or keep the deployment there is): (record, started now)."""
        current = self.refresh(row)
        if current is not None and current["state"] in ("deploying", "ready"):
            return current, False
        record = self._record(row, "deploying", "deploy")
        entrypoint = self.settings.entrypoint(STUDENT_MODULE, "deploy", str(job_dir(self.settings, row.id)),
                                              "--port", str(self.settings.serve_port), "--host", self.settings.serve_host)
        self.ray.submit(record["submission_id"], entrypoint, {"prime_ray_job": row.id, "prime_ray_action": "deploy"})
        self.store.update(row.id, deployment=record)
        return record, True

    def undeploy(self, row: JobRow) -> dict | None:
        """Start removing the job's student; None when there was nothing to remove."""
        current = self.refresh(row)
        if current is None:
            return None
        if current["state"] == "stopping":
            return current
        if current["state"] == "deploying":
            self.ray.stop(current["submission_id"])
        record = self._record(row, "stopping", "undeploy")
        entrypoint = self.settings.entrypoint(STUDENT_MODULE, "undeploy", row.id)
        self.ray.submit(record["submission_id"], entrypoint, {"prime_ray_job": row.id, "prime_ray_action": "undeploy"})
        self.store.update(row.id, deployment=record)
        return record

    def refresh(self, row: JobRow) -> dict | None:
        """The deployment record, moved on if its Ray job has ended since it was last read."""
        record = row.deployment
        if record is None or record["state"] not in ("deploying", "stopping"):
            return record
        info = self.ray.info(record["submission_id"])
        if info is not None and not info.terminal:
            return record
        if info is not None and info.status == "SUCCEEDED":
            if record["state"] == "stopping":
                self.store.update(row.id, deployment=None)
                return None
            record = {**record, "state": "ready", "url": self.url(row.id),
                      "models": served_models(self.settings, row.id), "updated_at": time.time()}
        else:
            why = "the Ray cluster no longer knows it (restarted?)" if info is None else (info.message or info.status)
            record = {**record, "state": "failed", "error": f"{record['submission_id']}: {why}{self._log_tail(record)}",
                      "updated_at": time.time()}
        self.store.update(row.id, deployment=record)
        return record

    def _log_tail(self, record: dict) -> str:
        try:
            lines = self.ray.logs(record["submission_id"]).strip().splitlines()[-LOG_TAIL_LINES:]
        except Exception:  # noqa: BLE001 - the logs only add detail to an error already known
            return ""
        return "\n" + "\n".join(lines) if lines else ""

    def ready_url(self, row: JobRow) -> str:
        """The served student's URL, or DeploymentError(409) saying why there is none to ask."""
        record = self.refresh(row)
        if record is None:
            raise DeploymentError(409, f"job {row.id}'s student is not deployed: POST /v1/jobs/{row.id}/deployment first")
        if record["state"] != "ready":
            detail = f"job {row.id}'s student is {record['state']}"
            raise DeploymentError(409, detail + (f": {record['error']}" if record.get("error") else ""))
        return record["url"]

    async def call(self, row: JobRow, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """Forward to the served student; its own 4xx answers come back as they are, anything else is 503."""
        from starlette.concurrency import run_in_threadpool

        url = await run_in_threadpool(self.ready_url, row)
        try:
            response = await self.http.request(method, url + path, json=body)
        except httpx.HTTPError as e:
            raise DeploymentError(503, f"job {row.id}'s student does not answer at {url}: {e!r}; redeploy it") from None
        json_body = response.headers.get("content-type", "").startswith("application/json")
        if response.status_code >= 500 or (response.status_code >= 400 and not json_body):
            # Not the student's answer: Serve's proxy (an app that is gone, a replica that crashed).
            raise DeploymentError(503, f"job {row.id}'s student failed ({response.status_code}): "
                                       f"{response.text[:500]}; redeploy it if it persists")
        return response

    async def close(self) -> None:
        await self.http.aclose()
