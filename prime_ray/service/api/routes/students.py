"""A finished job's served student: deploy / undeploy it, ask it, grow a user's memory."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from prime_ray.distributed.jobs import RayRefused, RayUnavailable
from prime_ray.service.api.deps import DeploymentsDep, JobDep, SucceededJobDep, WriterDep
from prime_ray.service.api.errors import ApiError, errors
from prime_ray.service.db import JobRow
from prime_ray.service.deployments import DeploymentError, StudentDeployments
from prime_ray.serving.schemas import (
    DeploymentOut,
    HistoryAppend,
    HistoryAppended,
    Prediction,
    PredictRequest,
)
from prime_ray.spec import SpecProblem

router = APIRouter(tags=["students"])

_NOT_SERVED = {"e404": "No such job, user or adapter (the known adapters are listed).",
               "e409": "The job has not succeeded, or its student is not deployed (ready).",
               "e503": "The served student (or the Ray Jobs API) does not answer."}


def _ray_errors(call, *args: Any) -> Any:
    try:
        return call(*args)
    except (RayUnavailable, RayRefused) as e:
        raise ApiError(503, f"Ray cannot take the request: {e}") from None


@router.post("/jobs/{job_id}/deployment", status_code=202, response_model=DeploymentOut, operation_id="deployJob",
             summary="Deploy the job's student",
             responses={200: {"model": DeploymentOut, "description": "It is already deploying or ready."},
                        **errors(403, 404, 409, 503, **_NOT_SERVED)})
def deploy_job(key: WriterDep, job: SucceededJobDep, deployments: DeploymentsDep, response: Response) -> DeploymentOut:
    """Starts the student app (one base model with the job's adapters, and the users' memory) on the
    gateway's Ray cluster: `deploying`, then `ready` (or `failed`, with the reason). Poll `GET` for it."""
    record, started = _ray_errors(deployments.deploy, job)
    response.status_code = 202 if started else 200
    return DeploymentOut.model_validate(record)


@router.get("/jobs/{job_id}/deployment", response_model=DeploymentOut, operation_id="getDeployment",
            summary="The job's served student: state, URL, model names", responses=errors(404, 503))
def get_deployment(job: JobDep, deployments: DeploymentsDep) -> DeploymentOut:
    record = _ray_errors(deployments.refresh, job)
    if record is None:
        raise ApiError(404, f"job {job.id} has no deployment")
    return DeploymentOut.model_validate(record)


@router.delete("/jobs/{job_id}/deployment", status_code=202, response_model=DeploymentOut,
               operation_id="undeployJob", summary="Remove the job's served student",
               responses=errors(403, 404, 503))
def undeploy_job(key: WriterDep, job: JobDep, deployments: DeploymentsDep) -> DeploymentOut:
    """The record goes `stopping`, and away once Ray has deleted the app."""
    record = _ray_errors(deployments.undeploy, job)
    if record is None:
        raise ApiError(404, f"job {job.id} has no deployment")
    return DeploymentOut.model_validate(record)


@router.post("/jobs/{job_id}/predict", response_model=Prediction, operation_id="predict",
             summary="Ask the job's student about a user",
             responses=errors(404, 409, 422, 503, **_NOT_SERVED,
                              e422="Invalid request, or an input longer than the model's context (the limit is given)."))
async def predict(job: SucceededJobDep, body: PredictRequest, deployments: DeploymentsDep) -> Prediction:
    """The PRIME student's personal-think answer by default (`adapter`: prime, fast, generalist;
    `mode`: personal-think, direct, think): the trace, the parsed answer, the profile and episodes it
    was given, token counts. A user not seen in training brings their `history` inline."""
    return Prediction.model_validate(await forward(deployments, job, "POST", "/predict", body.model_dump(mode="json")))


@router.post("/jobs/{job_id}/users/{user_id}/history", response_model=HistoryAppended, operation_id="appendHistory",
             summary="Add items to a user's memory", responses=errors(403, 404, 409, 422, 503, **_NOT_SERVED))
async def append_history(key: WriterDep, job: SucceededJobDep, user_id: str, body: HistoryAppend,
                         deployments: DeploymentsDep) -> HistoryAppended:
    """The items join the user's episodic index at once (and the profile is rewritten with
    `refresh_profile`); they are kept under the job's artifacts (`serving/memory/`), so a redeployed
    student has them too. No retraining."""
    path = f"/users/{user_id}/history"
    return HistoryAppended.model_validate(await forward(deployments, job, "POST", path, body.model_dump(mode="json")))


async def forward(deployments: StudentDeployments, job: JobRow, method: str, path: str, body: dict | None) -> Any:
    """The served student's JSON answer; its errors (404, 422) and the deployment's (409, 503) as ApiErrors."""
    try:
        response = await deployments.call(job, method, path, body)
    except DeploymentError as e:
        raise ApiError(e.status, e.detail) from None
    except (RayUnavailable, RayRefused) as e:
        raise ApiError(503, f"Ray cannot take the request: {e}") from None
    document = response.json()
    if response.status_code >= 400:
        problems = [SpecProblem.model_validate(p) for p in document.get("problems") or []]
        detail = document.get("detail")
        if not isinstance(detail, str):  # FastAPI's own validation answer inside the app
            problems = [SpecProblem(path=".".join(map(str, d.get("loc", ()))), message=d.get("msg", ""))
                        for d in detail or []]
            detail = "invalid request"
        raise ApiError(response.status_code, detail, problems)
    return document
