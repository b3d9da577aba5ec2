"""Typed dependencies of the routes: the gateway's parts (from `app.state`), the caller's key, the job.

    def get_job(job: JobDep) -> JobOut: ...          # 404 naming the job when there is none
    def cancel_job(job: JobDep, key: WriterDep): ... # 401 without a live key, 403 for a read-only one
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import sessionmaker

from prime_ray.distributed.jobs import RayJobs
from prime_ray.service.api.errors import ApiError
from prime_ray.service.db import JobRow
from prime_ray.service.deployments import StudentDeployments
from prime_ray.service.follower import Follower
from prime_ray.service.keys import ApiKey, verify_key
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.store import JobNotFound, JobStore


def _settings(request: Request) -> GatewaySettings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _sessions(request: Request) -> sessionmaker:
    return request.app.state.store.sessions


def _follower(request: Request) -> Follower:
    return request.app.state.follower


def _ray(request: Request) -> RayJobs:
    return request.app.state.ray


def _deployments(request: Request) -> StudentDeployments:
    return request.app.state.deployments


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
SessionsDep = Annotated[sessionmaker, Depends(_sessions)]
FollowerDep = Annotated[Follower, Depends(_follower)]
RayDep = Annotated[RayJobs, Depends(_ray)]
DeploymentsDep = Annotated[StudentDeployments, Depends(_deployments)]

bearer = HTTPBearer(auto_error=False, description="An API key from `prime-ray keys create`.")


def require_key(sessions: SessionsDep,
                credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)] = None) -> ApiKey:
    key = verify_key(sessions, credentials.credentials) if credentials else None
    if key is None:
        raise ApiError(401, "a valid API key is required (Authorization: Bearer <key>)",
                       headers={"WWW-Authenticate": "Bearer"})
    return key


KeyDep = Annotated[ApiKey, Depends(require_key)]


def require_writer(key: KeyDep) -> ApiKey:
    if key.read_only:
        raise ApiError(403, f"API key {key.id} is read-only")
    return key


WriterDep = Annotated[ApiKey, Depends(require_writer)]


def find_job(job_id: str, store: StoreDep) -> JobRow:
    """The job of the path's `job_id`, or 404 naming it."""
    try:
        return store.get(job_id)
    except JobNotFound:
        raise ApiError(404, f"no job {job_id!r}") from None


JobDep = Annotated[JobRow, Depends(find_job)]


def find_succeeded_job(job: JobDep) -> JobRow:
    """The path's job, which must have succeeded (409 otherwise): only a finished job has students."""
    if job.state != "succeeded":
        raise ApiError(409, f"job {job.id} is {job.state}: only a succeeded job's student can be served")
    return job


SucceededJobDep = Annotated[JobRow, Depends(find_succeeded_job)]
