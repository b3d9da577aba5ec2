"""The follower: one asyncio task that submits queued jobs to Ray and follows them to their end.

Each tick claims the unfinished jobs no other gateway holds (a lease of `lease_s` seconds, renewed
every tick; see JobStore.claim) and looks at each, in the database (so a restarted gateway, or another
gateway once the lease expired, picks up exactly where the last one stopped):

- not yet known to Ray -> write its spec.json and submit it under its deterministic submission id
  (looked up first, so a job is never submitted twice, even after a crash between submit and commit);
- cancel requested -> `stop_job`; the job is cancelled once Ray reports STOPPED;
- otherwise -> apply the new lines of its events.jsonl (from the stored byte offset) and map Ray's
  status onto the job's state.

While Ray or the database cannot be reached, jobs stay as they are (queued ones are submitted once
both are back). Every write names this gateway as the lease holder: a gateway that lost a job's lease
(a tick slower than the lease) cannot overwrite what the new holder wrote.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from prime_ray.distributed.jobs import RayJobInfo, RayJobs, RayRefused, RayUnavailable
from prime_ray.pipeline.artifacts import EVENTS_FILE
from prime_ray.pipeline.events import read_events
from prime_ray.service.db import DatabaseUnavailable, JobRow
from prime_ray.service.progress import JobProgress
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.states import JobState
from prime_ray.service.store import JobStore, LeaseLost

log = logging.getLogger("prime_ray.gateway")

_STATE_OF_RAY = {
    "PENDING": JobState.queued,
    "RUNNING": JobState.running,
    "SUCCEEDED": JobState.succeeded,
    "FAILED": JobState.failed,
    "STOPPED": JobState.cancelled,
}


def job_dir(settings: GatewaySettings, job_id: str) -> Path:
    return Path(settings.artifact_root) / job_id


def events_path(settings: GatewaySettings, job_id: str) -> Path:
    return job_dir(settings, job_id) / EVENTS_FILE


def gateway_id() -> str:
    """This gateway's name as a lease holder: host, process, and a random part (a PID can be reused)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


class Follower:
    def __init__(self, store: JobStore, ray: RayJobs, settings: GatewaySettings, owner: str | None = None):
        self.store = store
        self.ray = ray
        self.settings = settings
        self.owner = owner or gateway_id()
        self.ray_error: str | None = None  # the last reason Ray could not be reached, None when it could
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._looked_at: dict[str, float] = {}  # job id -> when this follower last stepped it (monotonic)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while True:
                await asyncio.to_thread(self.tick)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            # A gateway that stops cleanly hands its jobs over at once (a rolling restart does not wait
            # for the leases to expire).
            try:
                released = self.store.release(self.owner)
                if released:
                    log.info("released %d job lease(s)", released)
            except Exception as e:  # noqa: BLE001 - the leases then expire instead
                log.warning("could not release job leases: %s", e)

    def wake(self) -> None:
        """Ask for a tick now (from any thread): a job was created or a cancel requested."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def tick(self) -> None:
        deadline = time.monotonic() + self.settings.lease_s / 2
        try:
            jobs = self.store.claim(self.owner, self.settings.lease_s)
        except DatabaseUnavailable as e:
            log.warning("the database is unavailable, jobs wait: %s", e)
            return
        except Exception:  # noqa: BLE001 - the follower must outlive any one failed tick
            log.exception("claiming jobs failed")
            return
        # Least recently looked-at first, and no later than half a lease after the claim: a slow tick
        # stops while its leases are surely still its own; the rest is next tick's (claimed afresh).
        # One job is always looked at, so that every job gets its turn however slow the database is.
        self._looked_at = {job.id: self._looked_at.get(job.id, 0.0) for job in jobs}
        jobs.sort(key=lambda job: self._looked_at[job.id])
        for n, job in enumerate(jobs):
            if n and time.monotonic() > deadline:
                self.wake()
                return
            self._looked_at[job.id] = time.monotonic()
            try:
                self.step(job)
                self.ray_error = None
            except RayUnavailable as e:
                if self.ray_error != str(e):
                    log.warning("Ray is unavailable, jobs wait: %s", e)
                self.ray_error = str(e)
                return  # every other job would fail the same way; try again next tick
            except LeaseLost as e:
                log.info("%s: leaving it to that gateway", e)
            except DatabaseUnavailable as e:
                log.warning("the database is unavailable, jobs wait: %s", e)
                return
            except Exception:  # noqa: BLE001 - one broken job must not stop the others being followed
                log.exception("following job %s failed", job.id)

    def _update(self, job: JobRow, *, state: JobState | None = None, **fields: Any) -> None:
        self.store.update(job.id, state=state, holder=self.owner, **fields)

    def step(self, job: JobRow) -> None:
        info = self.ray.info(job.submission_id)
        if info is None:
            if job.submitted:
                self._update(job, state=JobState.failed,
                             error=f"the Ray cluster no longer knows submission {job.submission_id} (restarted?)")
            elif job.cancel_requested:
                self._update(job, state=JobState.cancelled)
            else:
                self._submit(job)
            return
        if job.cancel_requested and not info.terminal:
            self.ray.stop(job.submission_id)
        self._follow(job, info)

    def _submit(self, job: JobRow) -> None:
        folder = job_dir(self.settings, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps(job.spec, indent=2))
        entrypoint = self.settings.entrypoint("prime_ray", "run", str(spec_path))
        try:
            self.ray.submit(job.submission_id, entrypoint, {"prime_ray_job": job.id})
        except RayRefused as e:
            if self.ray.info(job.submission_id) is None:  # refused, and not because it exists already
                self._update(job, state=JobState.failed, error=f"Ray refused the submission: {e}")
                return
            log.info("job %s was already submitted as %s: following it", job.id, job.submission_id)
        else:
            log.info("submitted job %s as %s", job.id, job.submission_id)
        self._update(job, submitted=True)

    def _follow(self, job: JobRow, info: RayJobInfo) -> None:
        # Status first, events second: once Ray says the job ended, its events file is complete.
        progress = JobProgress.of(job.stage, job.progress, job.metrics, job.error)
        offset = job.events_offset
        for offset, event in read_events(events_path(self.settings, job.id), job.events_offset):  # noqa: B007 - the last offset is kept
            progress.apply(event)
        state = _STATE_OF_RAY.get(info.status, JobState(job.state))
        if state is JobState.queued:  # PENDING: nothing to move (a job never goes back to queued)
            state = JobState(job.state)
        if state is JobState.failed:
            progress.error = progress.error or info.message or "the job failed"
        if state.terminal:
            progress.stage = None
        fields = dict(stage=progress.stage, progress=progress.progress, metrics=progress.metrics,
                      error=progress.error, events_offset=offset, submitted=True)
        changed = {k: v for k, v in fields.items() if getattr(job, k) != v}
        if state.value == job.state and not changed:
            return
        if state.terminal and job.state == JobState.queued.value and state is not JobState.cancelled:
            self._update(job, state=JobState.running)  # it ran between two ticks
        self._update(job, state=state, **changed)
