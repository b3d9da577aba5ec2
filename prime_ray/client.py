"""The Python SDK of the prime-ray gateway: submit a spec, follow the job, get its artifacts.

    from prime_ray.client import PrimeClient
    client = PrimeClient()                      # PRIME_RAY_URL, PRIME_RAY_API_KEY
    job = client.submit("examples/movielens-rating.yaml")
    job.wait()                                  # a progress bar on a terminal; JobFailed if it fails
    job.download("out/", paths=["eval/report.json"])

    client.deploy(job.id)                       # serve its student (waits until ready)
    answer = client.predict(job.id, "u17", "Toy Story (1995) | Animation, Comedy")
    answer.answer, answer.trace, answer.episodes

Light on purpose (httpx, pydantic, rich, tenacity; never ray or torch), so any machine can use it; the
documents it reads are the gateway's own models (`prime_ray.service.models`, `prime_ray.serving.schemas`).
Connection errors and 503 answers are retried with exponential backoff; every submission carries an
Idempotency-Key, so a retried submission never creates a second job.
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from prime_ray import spec as _spec
from prime_ray.service.models import EventOut
from prime_ray.serving.schemas import (
    DeploymentOut,
    HistoryAppend,
    HistoryAppended,
    HistoryItemIn,
    Prediction,
    PredictRequest,
)
from prime_ray.spec import JobSpec, SpecProblem

__all__ = ["PrimeClient", "Job", "JobEvent", "PrimeError", "AuthError", "NotFound", "Conflict", "SpecError",
           "JobFailed", "GatewayError", "Prediction", "HistoryAppended", "DeploymentOut"]

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")


class PrimeError(Exception):
    """Anything the SDK raises about the gateway or a job."""


class GatewayError(PrimeError):
    """The gateway answered with an error (or could not be reached after the retries)."""

    def __init__(self, status: int | None, detail: str):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {detail}" if status else detail)


class AuthError(GatewayError):
    """401 (no or bad API key) or 403 (the key is read-only)."""


class NotFound(GatewayError):
    """404: no such job or artifact."""


class Conflict(GatewayError):
    """409: the job's state does not allow it (not succeeded yet, student not deployed)."""


class SpecError(GatewayError, _spec.SpecError):
    """422: the gateway refused the spec (or another request); `problems` lists each one at its path."""

    def __init__(self, status: int, detail: str, problems: list[SpecProblem]):
        _spec.SpecError.__init__(self, problems, source="gateway")
        self.status, self.detail = status, detail
        # The gateway's own words first (a spec's problem count, or e.g. the model's context limit).
        self.args = (f"HTTP {status}: {detail}" + "".join(f"\n  {p}" for p in problems),)

    def __str__(self) -> str:
        return self.args[0]


class JobFailed(PrimeError):
    """A job ended failed or cancelled; `job` is its last state."""

    def __init__(self, job: Job):
        self.job = job
        super().__init__(f"job {job.id} {job.state}: {job.error or 'no error message'}")


# One progress event of a job (as the runner wrote it), with the cursor just past it: the gateway's own model.
JobEvent = EventOut


def _retryable(error: BaseException) -> bool:
    return isinstance(error, httpx.TransportError) or (isinstance(error, GatewayError) and error.status == 503)


class PrimeClient:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 30,
                 retries: int = 5, backoff_s: float = 0.5):
        self.url = (url or os.environ.get("PRIME_RAY_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key or os.environ.get("PRIME_RAY_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(retries),
            wait=wait_exponential(multiplier=backoff_s, max=10),
            reraise=True,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------- requests

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to the gateway, retried on connection errors and 503; errors raised as typed."""
        try:
            return self._retrying(self._send, method, path, **kwargs)
        except httpx.TransportError as e:
            raise GatewayError(None, f"cannot reach the gateway at {self.url}: {e}") from None

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code < 400:
            return response
        try:
            body = response.json()
            detail, problems = str(body.get("detail", response.text)), body.get("problems") or []
        except ValueError:
            detail, problems = response.text or response.reason_phrase, []
        status = response.status_code
        if status in (401, 403):
            raise AuthError(status, detail)
        if status == 404:
            raise NotFound(status, detail)
        if status == 409:
            raise Conflict(status, detail)
        if status == 422:
            raise SpecError(status, detail, [SpecProblem.model_validate(p) for p in problems])
        raise GatewayError(status, detail)

    # ---------------------------------------------------------------------------------- jobs

    def submit(self, spec: JobSpec | dict | str | Path, idempotency_key: str | None = None) -> Job:
        """Create a job from a JobSpec, a spec document (dict) or a spec file (YAML or JSON)."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        if isinstance(spec, JobSpec):
            kwargs: dict[str, Any] = {"json": spec.model_dump(mode="json", by_alias=True)}
        elif isinstance(spec, dict):
            kwargs = {"json": spec}
        else:
            path = Path(spec)
            try:
                content = path.read_bytes()
            except OSError as e:
                raise _spec.SpecError([SpecProblem(path="", message=f"cannot read {path}: {e.strerror}")], str(path)) from None
            kwargs = {"content": content, "headers": {**headers, "Content-Type": "application/yaml"}}
        kwargs.setdefault("headers", headers)
        return Job(self, self.request("POST", "/v1/jobs", **kwargs).json())

    def get(self, job_id: str) -> Job:
        return Job(self, self.request("GET", f"/v1/jobs/{job_id}").json())

    def list(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first (every page, or the first `limit` jobs); summaries without spec or progress."""
        jobs: list[Job] = []
        cursor = None
        while limit is None or len(jobs) < limit:
            params: dict[str, Any] = {"limit": min(500, limit - len(jobs)) if limit else 500}
            if state:
                params["state"] = state
            if cursor:
                params["cursor"] = cursor
            page = self.request("GET", "/v1/jobs", params=params).json()
            jobs.extend(Job(self, item) for item in page["jobs"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return jobs

    # ------------------------------------------------------------------------ served students

    def deploy(self, job_id: str, wait: bool = True, timeout: float = 600, poll_s: float = 1.0) -> DeploymentOut:
        """Serve a succeeded job's student; with `wait`, until it is ready (GatewayError if it failed)."""
        record = DeploymentOut.model_validate(self.request("POST", f"/v1/jobs/{job_id}/deployment").json())
        deadline = time.monotonic() + timeout
        while wait and record.state == "deploying":
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id}'s student still deploying after {timeout}s")
            time.sleep(poll_s)
            record = self.deployment(job_id)
        if wait and record.state == "failed":
            raise GatewayError(None, f"job {job_id}'s student failed to deploy: {record.error}")
        return record

    def deployment(self, job_id: str) -> DeploymentOut:
        """The job's served student (NotFound when none is deployed)."""
        return DeploymentOut.model_validate(self.request("GET", f"/v1/jobs/{job_id}/deployment").json())

    def undeploy(self, job_id: str, wait: bool = True, timeout: float = 300, poll_s: float = 1.0) -> None:
        """Remove the job's served student; with `wait`, until it is gone."""
        self.request("DELETE", f"/v1/jobs/{job_id}/deployment")
        deadline = time.monotonic() + timeout
        while wait:
            try:
                record = self.deployment(job_id)
            except NotFound:
                return
            if record.state == "failed":
                raise GatewayError(None, f"removing job {job_id}'s student failed: {record.error}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id}'s student still {record.state} after {timeout}s")
            time.sleep(poll_s)

    def predict(self, job_id: str, user_id: str, input: str, *, adapter: str = "prime", mode: str | None = None,
                history: Sequence[dict | HistoryItemIn] | None = None, candidates: builtins.list[str] | None = None,
                max_new_tokens: int | None = None, temperature: float = 0.0, seed: int | None = None) -> Prediction:
        """Ask the job's served student about `user_id` (a new user brings `history` inline).

        Raises NotFound (job, user or adapter), Conflict (job not succeeded or student not deployed),
        SpecError (bad request, or an input longer than the model's context: the limit is in the message).
        """
        body = PredictRequest(user_id=user_id, input=input, adapter=adapter, mode=mode, candidates=candidates,
                              history=[HistoryItemIn.model_validate(h) for h in history] if history is not None else None,
                              max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        response = self.request("POST", f"/v1/jobs/{job_id}/predict", json=body.model_dump(mode="json", exclude_none=True))
        return Prediction.model_validate(response.json())

    def append_history(self, job_id: str, user_id: str, items: Sequence[dict | HistoryItemIn],
                       refresh_profile: bool = False) -> HistoryAppended:
        """Add items ({input, output[, id, timestamp]}) to a user's memory; the next prediction uses them."""
        body = HistoryAppend(items=[HistoryItemIn.model_validate(i) for i in items], refresh_profile=refresh_profile)
        response = self.request("POST", f"/v1/jobs/{job_id}/users/{quote(user_id, safe='')}/history",
                                json=body.model_dump(mode="json", exclude_none=True))
        return HistoryAppended.model_validate(response.json())

    def ready(self) -> dict[str, Any]:
        """The gateway's readiness: database and Ray (503 is an answer here, not an error)."""
        response = self._http.get("/readyz")
        if response.status_code in (401, 403):
            raise AuthError(response.status_code, response.json().get("detail", ""))
        return response.json()


class Job:
    """A job on the gateway, as last fetched (`refresh()` fetches again)."""

    def __init__(self, client: PrimeClient, data: dict[str, Any]):
        self.client = client
        self.data = data

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, state={self.state!r}, stage={self.stage!r})"

    id = property(lambda self: self.data["id"])
    name = property(lambda self: self.data.get("name"))
    state = property(lambda self: self.data["state"])
    stage = property(lambda self: self.data.get("stage"))
    error = property(lambda self: self.data.get("error"))
    progress = property(lambda self: self.data.get("progress", {}))
    metrics = property(lambda self: self.data.get("metrics", {}))
    cancel_requested = property(lambda self: bool(self.data.get("cancel_requested")))

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def refresh(self) -> Job:
        self.data = self.client.request("GET", f"/v1/jobs/{self.id}").json()
        return self

    def status(self) -> str:
        """The current state (queued, running, succeeded, failed, cancelled)."""
        return self.refresh().state

    def cancel(self) -> Job:
        """Ask the gateway to stop the job; it becomes `cancelled` once Ray has stopped it."""
        self.data = self.client.request("POST", f"/v1/jobs/{self.id}/cancel").json()
        return self

    def logs(self) -> str:
        return self.client.request("GET", f"/v1/jobs/{self.id}/logs").text

    def events(self, cursor: int = 0, follow: bool = True, poll_s: float = 1.0) -> Iterator[JobEvent]:
        """The job's progress events from `cursor` on; with `follow`, until the job ends."""
        while True:
            page = self.client.request("GET", f"/v1/jobs/{self.id}/events", params={"cursor": cursor}).json()
            for item in page["events"]:
                event = JobEvent.model_validate(item)
                cursor = event.cursor
                yield event
            if page["finished"] or not follow:
                return
            if not page["events"]:
                time.sleep(poll_s)

    def wait(self, timeout: float | None = None, progress: bool = True, poll_s: float = 1.0) -> Job:
        """Block until the job ends; raise JobFailed unless it succeeded, TimeoutError after `timeout` s.

        With `progress`, a bar per stage is drawn when the output is a terminal (silent otherwise).
        """
        from rich.console import Console

        console = Console(stderr=True)
        view = _ProgressView(console) if progress and console.is_terminal else None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                self.refresh()
                if view:
                    view.show(self)
                if self.done:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {self.id} still {self.state} after {timeout}s")
                time.sleep(poll_s)
        finally:
            if view:
                view.stop()
        if self.state != "succeeded":
            raise JobFailed(self)
        return self

    def artifacts(self) -> list[dict[str, Any]]:
        """The job's files: [{path, size, modified_at}]."""
        return self.client.request("GET", f"/v1/jobs/{self.id}/artifacts").json()["artifacts"]

    def download(self, dest: str | Path, paths: list[str] | None = None) -> list[Path]:
        """Download the given artifact paths (default: all) under `dest`, keeping their relative paths."""
        dest = Path(dest).resolve()
        wanted = paths if paths is not None else [a["path"] for a in self.artifacts()]
        written = []
        for rel in wanted:
            target = (dest / rel).resolve()
            if not target.is_relative_to(dest):
                raise ValueError(f"artifact path {rel!r} leaves {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            response = self.client.request("GET", f"/v1/jobs/{self.id}/artifacts/{quote(rel, safe='/')}")
            target.write_bytes(response.content)
            written.append(target)
        return written


class _ProgressView:
    """A rich progress bar per stage, fed from the job's `progress` document."""

    def __init__(self, console: Any):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.fields[stage]:<7}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=console,
        )
        self.tasks: dict[str, Any] = {}
        self.progress.start()

    def show(self, job: Job) -> None:
        for stage, entry in job.progress.items():
            if stage not in self.tasks:
                self.tasks[stage] = self.progress.add_task(stage, stage=stage, info="", total=None)
            total = entry.get("total")
            done = entry.get("done") or 0
            if entry["state"] in ("finished", "skipped"):
                total = total or 1
                done = total
            self.progress.update(self.tasks[stage], completed=done, total=total, info=entry["state"])

    def stop(self) -> None:
        self.progress.stop()
