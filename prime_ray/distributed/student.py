"""A finished job's students as a Ray Serve application: one set of replicas, adapters chosen per request.

    with student(job_dir) as s:                              # serve.run the app, delete it on exit
        s.predict(PredictRequest(user_id="u17", input="..."))

    python -m prime_ray.distributed.student deploy JOB_DIR --port 8100   # what the gateway submits
    python -m prime_ray.distributed.student undeploy JOB_ID

Each replica holds one `ServedStudent` (the base model with the job's PEFT adapters and the users'
memory). Every request is prepared alone (memory recalled, prompt rendered, checked against the
context) and then waits in the replica's `@serve.batch` queue with the others, whatever their user or
adapter; a batch is generated with one engine call per (adapter, sampling parameters) group.

Over HTTP (Serve's proxy, route prefix `/students/<job id>`) the app answers
`POST /predict`, `POST /users/{user_id}/history` and `GET /info` with the documents of
`prime_ray.serving.schemas`; a caller's mistake is a 404/422 JSON `{"detail", "problems"}`.
The app is also deployable from a Serve config file (deploy/serve/student.yaml) through `app_builder`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from prime_ray.distributed.batching import batch
from prime_ray.distributed.serve import in_thread
from prime_ray.engine.base import Generation
from prime_ray.serving.schemas import HistoryAppend, HistoryAppended, Prediction, PredictRequest, StudentInfo
from prime_ray.serving.student import Prepared, ServedStudent, ServingError
from prime_ray.spec import GeneralistSpec, load_spec

DEPLOYMENT_NAME = "Student"
logger = logging.getLogger(__name__)

http = FastAPI(title="prime-ray student", docs_url=None, redoc_url=None)


@http.exception_handler(ServingError)
async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, "problems": [p.model_dump() for p in exc.problems]},
                        status_code=exc.status)


def app_name(job_id: str) -> str:
    return f"{job_id}-student"


def route_prefix(job_id: str) -> str:
    return f"/students/{job_id}"


# graceful_shutdown_wait_loop_s: as the generalist's (distributed/serve.py), no 2-s sleep before an idle replica stops.
@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=10, health_check_timeout_s=60,
                  graceful_shutdown_wait_loop_s=0.1)
@serve.ingress(http)
class Student:
    """Replicas of a job's base model with its adapters and memory, batching requests across users and adapters."""

    def __init__(self, job_dir: str, max_batch_size: int, batch_wait_timeout_s: float, device: str = "auto",
                 cpu_threads: int | None = None):
        self.cpu_threads = cpu_threads  # torch threads of the engine's thread (see `in_thread`)
        self.student: ServedStudent | None = ServedStudent.load(job_dir, device=device, max_batch_size=max_batch_size)
        self._generate.set_max_batch_size(max_batch_size)
        self._generate.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # engine batches served (tests, benchmark)

    def _open_student(self) -> ServedStudent:
        if self.student is None:
            raise RuntimeError("the student is closed")
        return self.student

    @batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def _generate(self, prepared: list[Prepared]) -> list[Generation]:
        self.batch_sizes.append(len(prepared))
        # The engine blocks: a worker thread keeps the event loop (health checks, the next batch) free.
        return await in_thread(self.cpu_threads, self._open_student().generate, prepared)

    async def predict(self, request: PredictRequest | dict) -> Prediction:
        """One prediction (ServingError for a caller's mistake, raised before the request is queued)."""
        student = self._open_student()
        prepared = student.prepare(PredictRequest.model_validate(request))
        return student.answer(prepared, await self._generate(prepared))

    async def append_history(self, user_id: str, append: HistoryAppend | dict) -> HistoryAppended:
        return await in_thread(self.cpu_threads, self._open_student().append_history, user_id,
                               HistoryAppend.model_validate(append))

    def info(self) -> StudentInfo:
        return self._open_student().info()

    def served_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes)

    @http.post("/predict", response_model=Prediction)
    async def _http_predict(self, body: PredictRequest) -> Prediction:
        return await self.predict(body)

    @http.post("/users/{user_id}/history", response_model=HistoryAppended)
    async def _http_history(self, user_id: str, body: HistoryAppend) -> HistoryAppended:
        return await self.append_history(user_id, body)

    @http.get("/info", response_model=StudentInfo)
    def _http_info(self) -> StudentInfo:
        return self.info()

    def check_health(self) -> None:
        self._open_student()

    def __del__(self) -> None:
        student, self.student = getattr(self, "student", None), None
        if student is not None:
            student.close()


class StudentAppArgs(BaseModel):
    """The `args` of the Serve config's application (deploy/serve/student.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_dir: str = Field(..., description="The finished job's artifact folder (it holds spec.json, train/, memory/).")
    replicas: int | None = Field(None, gt=0, description="Default: the job's `generalist.replicas`.")
    num_cpus_per_replica: float | None = Field(None, gt=0, description="Default: the job's generalist's.")
    num_gpus_per_replica: float | None = Field(None, ge=0, description="Default: the job's generalist's.")
    max_batch_size: int | None = Field(None, gt=0, description="Default: the job's `generalist.max_batch_size`.")
    batch_wait_timeout_s: float | None = Field(None, ge=0)
    device: str = "auto"


def student_app(args: StudentAppArgs):
    """The bound application; resources and batching default to the job's `generalist` section."""
    spec = load_spec(Path(args.job_dir) / "spec.json")
    g: GeneralistSpec = spec.generalist
    cpus = args.num_cpus_per_replica or g.num_cpus_per_replica
    max_batch = args.max_batch_size or g.max_batch_size
    # serve.deployment made the class a Deployment; mypy keeps a decorated class's own type
    return cast(Deployment, Student).options(
        num_replicas=args.replicas or g.replicas,
        max_ongoing_requests=4 * max_batch,  # enough waiting in the batch queue for full batches
        ray_actor_options={"num_cpus": cpus, "num_gpus": g.num_gpus_per_replica
                           if args.num_gpus_per_replica is None else args.num_gpus_per_replica},
    ).bind(str(Path(args.job_dir).resolve()), max_batch,
           g.batch_wait_timeout_s if args.batch_wait_timeout_s is None else args.batch_wait_timeout_s,
           args.device, max(1, math.ceil(cpus)))


def app_builder(args: dict[str, Any]):
    """For `serve run prime_ray.distributed.student:app_builder job_dir=...` and Serve config files."""
    return student_app(StudentAppArgs.model_validate(args or {}))


class StudentHandle:
    """Blocking calls to a running student app, from the driver or any Ray task or actor."""

    def __init__(self, handle: DeploymentHandle, job_id: str):
        self._handle, self.job_id = handle, job_id

    @classmethod
    def connect(cls, job_id: str) -> StudentHandle:
        return cls(serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name(job_id)), job_id)

    def predict(self, requests: list[PredictRequest]) -> list[Prediction]:
        """All in flight at once, so the replicas batch them; ServingError for a caller's mistake."""
        responses = [self._handle.predict.remote(r) for r in requests]
        return [r.result() for r in responses]

    def append_history(self, user_id: str, append: HistoryAppend) -> HistoryAppended:
        return self._handle.append_history.remote(user_id, append).result()

    def info(self) -> StudentInfo:
        return self._handle.info.remote().result()

    def served_batch_sizes(self) -> list[int]:
        return self._handle.served_batch_sizes.remote().result()


def start_student(job_dir: str | Path, *, http_port: int | None = None, http_host: str = "127.0.0.1",
                  **overrides: Any) -> StudentHandle:
    """Deploy the job's student and wait until it runs; with `http_port`, behind Serve's HTTP proxy.

    Without `http_port` no proxy is asked for (handles only). With one, Serve must either not be
    running yet or already run its proxy: a Serve instance started without one (a pipeline job's
    stage runs right now) cannot gain it, and that is an error saying so.
    """
    args = StudentAppArgs(job_dir=str(job_dir), **overrides)
    job_id = load_spec(Path(job_dir) / "spec.json").name
    if http_port is None:
        serve.start(proxy_location="Disabled")
        prefix = None
    else:
        serve.start(proxy_location="HeadOnly", http_options={"host": http_host, "port": http_port})
        if not serve.status().proxies:
            raise RuntimeError("Ray Serve is running without its HTTP proxy (started by a running job's stage): "
                               "deploy the student once that job has finished")
        prefix = route_prefix(job_id)
    handle = serve.run(student_app(args), name=app_name(job_id), route_prefix=prefix,
                       logging_config={"enable_access_log": False})
    return StudentHandle(handle, job_id)


def stop_student(job_id: str) -> None:
    """Delete the job's student app (its replicas free their CPUs/GPUs)."""
    serve.delete(app_name(job_id))


@contextlib.contextmanager
def student(job_dir: str | Path, **kwargs: Any) -> Iterator[StudentHandle]:
    handle = start_student(job_dir, **kwargs)
    try:
        yield handle
    finally:
        try:
            stop_student(handle.job_id)
        except Exception as e:  # noqa: BLE001 - stopping must not hide the error that made us stop
            logger.warning("deleting the student app of %s failed: %s", handle.job_id, e)


def main(argv: list[str] | None = None) -> None:
    """The gateway's Ray jobs: `deploy JOB_DIR --port P` (returns once the app runs), `undeploy JOB_ID`."""
    from prime_ray.distributed.cluster import ensure_ray
    from prime_ray.spec import ResourcesSpec

    parser = argparse.ArgumentParser(prog="python -m prime_ray.distributed.student")
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser("deploy")
    deploy.add_argument("job_dir")
    deploy.add_argument("--port", type=int, required=True)
    deploy.add_argument("--host", default="127.0.0.1")
    undeploy = commands.add_parser("undeploy")
    undeploy.add_argument("job_id")
    options = parser.parse_args(argv)
    ensure_ray(ResourcesSpec())  # inside a Ray job: the cluster of RAY_ADDRESS
    if options.command == "deploy":
        handle = start_student(options.job_dir, http_port=options.port, http_host=options.host)
        print(f"student of {handle.job_id} serving at http://{options.host}:{options.port}{route_prefix(handle.job_id)}")
    else:
        stop_student(options.job_id)
        print(f"student of {options.job_id} removed")


if __name__ == "__main__":
    main()
