"""The frozen generalist as a Ray Serve deployment, and the driver-side API the stages use.

    with generalist(spec) as g:                 # serve.run(...) the app, wait until it is healthy
        g.generate(prompts, SamplingParams())   # one request per prompt; @serve.batch groups them
        g.score(prompts, continuations)
    # the app is deleted on exit (and Serve shut down when no app is left), so the CPUs are free again

Each prompt is its own request, so requests from many callers (Ray Data workers, several stages) meet
in the replica's `@serve.batch` queue and run as one engine batch. A batch may mix requests with
different SamplingParams (samples with different seeds, a greedy verification next to a sampled
trace): it is split into groups of equal params, one engine call per group.

The app is also deployable on its own (`serve run` / `serve deploy`, see deploy/serve/generalist.yaml)
through `app_builder`; it then answers HTTP POSTs of {"prompt": ..., <SamplingParams fields>}.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from typing import Any, cast

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from prime_ray.distributed.batching import batch
from prime_ray.engine.base import Generation, GenerationEngine, SamplingParams, create_engine
from prime_ray.spec import GeneralistSpec, JobSpec, ModelSpec

DEPLOYMENT_NAME = "Generalist"
logger = logging.getLogger(__name__)


def app_name(job_name: str, stage: str) -> str:
    """One Serve app per job and stage, so jobs sharing a cluster never replace each other's apps."""
    return f"{job_name}-{stage}-generalist"


def _group_by_params(params: list[SamplingParams]) -> dict[SamplingParams, list[int]]:
    groups: dict[SamplingParams, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[p].append(i)
    return groups


@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=10, health_check_timeout_s=60)
class Generalist:
    """Model replicas around a generation engine, with dynamic batching of single-prompt requests."""

    def __init__(
        self,
        model: dict[str, Any],
        backend: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        adapter_path: str | None = None,
        device: str = "auto",
        cpu_threads: int | None = None,
    ):
        if cpu_threads:
            # Ray caps a worker's threads at its integer CPU count; a replica given 1.8 CPUs (leaving a
            # little for the Ray Data workers that only wait on it) should still use 2 cores.
            import torch

            torch.set_num_threads(cpu_threads)
        self.engine: GenerationEngine | None = create_engine(
            ModelSpec.model_validate(model),
            backend=backend,
            device=device,
            adapter_path=adapter_path,
            max_batch_size=max_batch_size,
        )
        for method in (self.generate, self.score):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)
        # One engine call at a time: a generate batch and a score batch must not share the model's
        # threads (or GPU memory) at once.
        self._engine_lock = asyncio.Lock()
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # engine batch sizes served (benchmark, tests)

    def _open_engine(self) -> GenerationEngine:
        if self.engine is None:
            raise RuntimeError("the generation engine is closed")
        return self.engine

    @batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def generate(self, prompts: list[str], params: list[SamplingParams]) -> list[Generation]:
        out: dict[int, Generation] = {}
        for p, idx in _group_by_params(params).items():
            self.batch_sizes.append(len(idx))
            # The engine blocks; a worker thread keeps the replica's event loop (health checks, the
            # next batch's queue) responsive meanwhile.
            async with self._engine_lock:
                done = await asyncio.to_thread(self._open_engine().generate, [prompts[i] for i in idx], p)
            for i, g in zip(idx, done):
                out[i] = g
        return [out[i] for i in range(len(prompts))]  # every index is in one group

    @batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        async with self._engine_lock:
            return await asyncio.to_thread(self._open_engine().score, prompts, continuations)

    def served_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes)

    async def __call__(self, request) -> dict[str, Any]:
        """HTTP: POST {"prompt": "...", "max_new_tokens": 64, "temperature": 0.7, ...}."""
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise ValueError('the request body must be a JSON object with a string "prompt"')
        prompt = body.pop("prompt")
        if "stop" in body:
            body["stop"] = tuple(body["stop"])
        return dataclasses.asdict(await self.generate(prompt, SamplingParams(**body)))

    def check_health(self) -> None:
        self._open_engine()

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica: free the model (GPU memory) right away.
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            engine.close()


def generalist_app(
    model: ModelSpec,
    generalist: GeneralistSpec,
    *,
    adapter_path: str | None = None,
    device: str = "auto",
    cpu_threads: int | None = None,
):
    """The bound Serve application: replicas and their resources from the spec's `generalist`.

    `cpu_threads`: torch threads per replica (default `generalist.cpu_threads`, else
    ceil(num_cpus_per_replica)).
    """
    # serve.deployment made the class a Deployment; mypy keeps a decorated class's own type
    return cast(Deployment, Generalist).options(
        num_replicas=generalist.replicas,
        # Requests wait in the replica's batch queue: let enough in for full batches of both methods.
        max_ongoing_requests=4 * generalist.max_batch_size,
        ray_actor_options={
            "num_cpus": generalist.num_cpus_per_replica,
            "num_gpus": generalist.num_gpus_per_replica,
        },
    ).bind(
        model.model_dump(mode="json"),
        generalist.backend,
        generalist.max_batch_size,
        generalist.batch_wait_timeout_s,
        adapter_path,
        device,
        cpu_threads or generalist.cpu_threads or max(1, math.ceil(generalist.num_cpus_per_replica)),
    )


class GeneralistAppArgs(BaseModel):
    """The `args` of the Serve config's application (deploy/serve/generalist.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: ModelSpec = ModelSpec()
    generalist: GeneralistSpec = GeneralistSpec()
    adapter_path: str | None = None
    device: str = "auto"


def app_builder(args: dict[str, Any]):
    """For `serve run prime_ray.distributed.serve:app_builder` and Serve config files."""
    parsed = GeneralistAppArgs.model_validate(args or {})
    return generalist_app(parsed.model, parsed.generalist, adapter_path=parsed.adapter_path, device=parsed.device)


class GeneralistHandle:
    """Blocking calls to the deployment, usable in the driver and inside Ray tasks and actors.

    Each prompt is sent as its own request and all are in flight at once, so the replicas batch them
    with whatever else is queued.
    """

    def __init__(self, handle: DeploymentHandle, app_name: str):
        self._handle = handle
        self.app_name = app_name

    @classmethod
    def connect(cls, app_name: str = "generalist") -> GeneralistHandle:
        """The handle of a running app (e.g. from a Ray Data worker)."""
        return cls(serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name), app_name)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        return self.generate_groups([(prompts, params)])[0]

    def generate_groups(self, groups: Sequence[tuple[Sequence[str], SamplingParams]]) -> list[list[Generation]]:
        """Several generate calls at once, one list of generations per (prompts, params) group, in order.

        Every request of every group is in flight before any result is awaited, so the groups meet in
        the replicas' batches (each batch is split by params, one engine call per group) instead of
        the second group waiting for the first one's results.
        """
        responses = [[self._handle.generate.remote(p, params) for p in prompts] for prompts, params in groups]
        return [[r.result() for r in group] for group in responses]

    def score(self, prompts: list[str], continuations: list[str]) -> list[float]:
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        responses = [self._handle.score.remote(p, c) for p, c in zip(prompts, continuations)]
        return [r.result() for r in responses]

    def served_batch_sizes(self) -> list[int]:
        """Engine batch sizes one replica has run (which replica answers is Serve's choice)."""
        return self._handle.served_batch_sizes.remote().result()


def replica_threads(spec: JobSpec) -> int:
    """torch threads per replica: `generalist.cpu_threads`, else on an embedded Ray its CPUs (as Ray
    counts them) shared among the replicas (the Ray Data workers calling them only wait), at least
    ceil(num_cpus_per_replica)."""
    g = spec.generalist
    reserved = max(1, math.ceil(g.num_cpus_per_replica))
    if g.cpu_threads:
        return g.cpu_threads
    if spec.resources.ray_address is not None:
        return reserved  # a cluster's nodes are shared with other work: keep to the reservation
    cpus = int(ray.cluster_resources().get("CPU", 0)) if ray.is_initialized() else 0
    cpus = cpus or spec.resources.num_cpus or len(os.sched_getaffinity(0))
    return max(reserved, cpus // g.replicas)


def start_generalist(spec: JobSpec, *, app_name: str = "generalist", adapter_path: str | None = None) -> GeneralistHandle:
    """Deploy G (or G + an adapter) as the Serve app `app_name` and wait until it is running.

    Serve's HTTP proxy is not started: the stages call the deployment through handles, and several
    jobs on one machine must not fight over a port.
    """
    serve.start(proxy_location="Disabled")
    app = generalist_app(spec.model, spec.generalist, adapter_path=adapter_path, cpu_threads=replica_threads(spec))
    # No access log line per request: a trace run sends thousands.
    handle = serve.run(app, name=app_name, route_prefix=None, blocking=False,
                       logging_config={"enable_access_log": False})
    return GeneralistHandle(handle, app_name)


def stop_generalist(app_name: str = "generalist") -> None:
    """Delete the app (its replicas free their CPUs/GPUs); shut Serve down when no app is left."""
    try:
        serve.delete(app_name)
        if not serve.status().applications:
            serve.shutdown()
    except Exception as e:  # noqa: BLE001 - stopping must not hide the error that made us stop
        logger.warning("stopping the Serve app %r failed: %s", app_name, e)


@contextlib.contextmanager
def generalist(spec: JobSpec, *, app_name: str = "generalist", adapter_path: str | None = None) -> Iterator[GeneralistHandle]:
    handle = start_generalist(spec, app_name=app_name, adapter_path=adapter_path)
    try:
        yield handle
    finally:
        stop_generalist(app_name)
