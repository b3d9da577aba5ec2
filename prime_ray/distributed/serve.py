"""The frozen generalist as a Ray Serve deployment, and the driver-side API the stages use.

    with generalist(spec, adapters={"prime": path}) as g:   # serve.run(...) the app, wait until it is healthy
        g.generate(prompts, SamplingParams())               # one request; joined with others' on the replica
        g.generate(prompts, SamplingParams(), adapter="prime")
        g.score(prompts, continuations)
    # the app is deleted on exit (and Serve shut down when no app is left), so the CPUs are free again

A request is one caller's prompts with one SamplingParams and adapter (`GenerateRequest`; a Ray Data
worker sends one per step of its work). Requests from many callers (Ray Data workers, several stages)
wait in the replica's `GroupQueue` by (params, adapter): each engine call joins every waiting request
of the key that has waited longest, and decodes them in batches of at most `generalist.max_batch_size`
prompts. Params differ between a sampled trace and a greedy verification, adapters between the eval
stage's three models: the engine runs one of each at a time. Named adapters (`adapters`) are merged
into the weights before their group's call (`engine.adapters.MergedAdapters`), so one app serves the
generalist and the students at merged speed. A request the engine refuses (an empty prompt, say)
fails alone: its group is retried one request at a time, and only the refused one gets the error.

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
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import ray
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Deployment
from ray.serve.handle import DeploymentHandle

from prime_ray.distributed.batching import GroupQueue
from prime_ray.engine.base import Generation, GenerationEngine, SamplingParams, create_engine
from prime_ray.spec import GeneralistSpec, JobSpec, ModelSpec

DEPLOYMENT_NAME = "Generalist"
# Requests a replica takes at once (Serve's max_ongoing_requests): each is one caller's step (an eval
# call sends six), and they wait in its GroupQueue, where requests of a kind join one engine call.
MAX_ONGOING_REQUESTS = 64
T = TypeVar("T")


@dataclass(frozen=True)
class GenerateRequest:
    """One caller's prompts, generated with one SamplingParams by the model with `adapter` (None: G)."""

    prompts: tuple[str, ...]
    params: SamplingParams
    adapter: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """One caller's (prompt, continuation) pairs, scored by the model with `adapter` (None: G)."""

    prompts: tuple[str, ...]
    continuations: tuple[str, ...]
    adapter: str | None = None


R = TypeVar("R", GenerateRequest, ScoreRequest)
logger = logging.getLogger(__name__)


def app_name(job_name: str, stage: str) -> str:
    """One Serve app per job and stage, so jobs sharing a cluster never replace each other's apps."""
    return f"{job_name}-{stage}-generalist"


# Serve's replica sleeps graceful_shutdown_wait_loop_s (default 2 s) before it first counts its ongoing
# requests on shutdown: every app deletion took 3.0 s, 1.0 s with 0.1 (requests still in flight are
# waited for, in shorter loops). A job deletes an app per stage, the tests dozens.
@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=10, health_check_timeout_s=60,
                  graceful_shutdown_wait_loop_s=0.1)
class Generalist:
    """Model replicas around a generation engine, batching the requests of many callers."""

    def __init__(
        self,
        model: dict[str, Any],
        backend: str,
        max_batch_size: int,
        batch_wait_timeout_s: float,
        adapter_path: str | None = None,
        device: str = "auto",
        cpu_threads: int | None = None,
        adapters: dict[str, str] | None = None,
        prefix_cache_mib: int = 0,
    ):
        self.cpu_threads = cpu_threads
        self.engine: GenerationEngine | None = create_engine(
            ModelSpec.model_validate(model),
            backend=backend,
            device=device,
            adapter_path=adapter_path,
            adapters=adapters,
            max_batch_size=max_batch_size,
            prefix_cache_mib=prefix_cache_mib,
        )
        self.max_batch_size = max_batch_size
        # One engine call at a time, each joining every waiting request of one (method, params, adapter):
        # a generate batch and a score batch never share the model's threads (or GPU memory).
        self._queue: GroupQueue[GenerateRequest | ScoreRequest, Any] = GroupQueue(
            self._run_group, size=lambda r: len(r.prompts), full=max_batch_size, wait_s=batch_wait_timeout_s
        )
        self.batch_sizes: deque[int] = deque(maxlen=10_000)  # engine batch sizes served (benchmark, tests)

    def _open_engine(self) -> GenerationEngine:
        if self.engine is None:
            raise RuntimeError("the generation engine is closed")
        return self.engine

    async def _joined(self, requests: list[R], call: Callable[[GenerationEngine, list[R]], list[Any]]) -> list[Any]:
        """`call(engine, requests)` once for all `requests` (their items in order), its results split back
        per request. When it raises, each request is run alone, so only a request the engine refuses
        gets the error (as its result) and its batch-mates are unharmed."""
        try:
            # A worker thread keeps the replica's event loop (health checks, the queue) responsive meanwhile.
            flat = await in_thread(self.cpu_threads, call, self._open_engine(), requests)
        except Exception as e:  # noqa: BLE001 - handed to the requests that cause it
            if len(requests) == 1:
                return [e]
            return [(await self._joined([r], call))[0] for r in requests]
        out, start = [], 0
        for r in requests:
            out.append(flat[start : start + len(r.prompts)])
            start += len(r.prompts)
        return out

    async def _run_group(self, key: Hashable, requests: list[Any]) -> list[Any]:
        """One engine call for the waiting requests of `key`: ("generate", params, adapter) or ("score", adapter)."""
        method, *rest = cast(tuple, key)
        if method == "generate":
            params, adapter = rest
            n = sum(len(r.prompts) for r in requests)
            self.batch_sizes.extend(min(self.max_batch_size, n - k) for k in range(0, n, self.max_batch_size))
            return await self._joined(requests, lambda e, rs: e.generate([x for r in rs for x in r.prompts], params, adapter))
        [adapter] = rest
        return await self._joined(requests, lambda e, rs: e.score([x for r in rs for x in r.prompts],
                                                                  [c for r in rs for c in r.continuations], adapter))

    async def generate(self, request: GenerateRequest) -> list[Generation] | Exception:
        """`request`'s generations, or the error the engine raised for it (raised by the handle)."""
        return await self._queue.submit(("generate", request.params, request.adapter), request)

    async def score(self, request: ScoreRequest) -> list[float] | Exception:
        """`request`'s scores, or the error the engine raised for it (raised by the handle)."""
        return await self._queue.submit(("score", request.adapter), request)

    def served_batch_sizes(self) -> list[int]:
        return list(self.batch_sizes)

    def prefix_cache_stats(self) -> dict[str, int] | None:
        """The engine's prefix-cache counters since the replica started (None: no prefix cache)."""
        cache = getattr(self.engine, "prefix_cache", None)
        return dataclasses.asdict(cache.stats) | {"bytes": cache.nbytes} if cache is not None else None

    def reset_prefix_cache(self) -> None:
        """Drop the engine's cached prefixes (a benchmark's rounds each start cold)."""
        cache = getattr(self.engine, "prefix_cache", None)
        if cache is not None:
            cache.clear()

    async def __call__(self, request) -> dict[str, Any]:
        """HTTP: POST {"prompt": "...", "max_new_tokens": 64, "temperature": 0.7, ..., "adapter": null}."""
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise ValueError('the request body must be a JSON object with a string "prompt"')
        prompt, adapter = body.pop("prompt"), body.pop("adapter", None)
        if "stop" in body:
            body["stop"] = tuple(body["stop"])
        [generation] = _raised(await self.generate(GenerateRequest((prompt,), SamplingParams(**body), adapter)))
        return dataclasses.asdict(generation)

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
    adapters: dict[str, str] | None = None,
    device: str = "auto",
    cpu_threads: int | None = None,
):
    """The bound Serve application: replicas and their resources from the spec's `generalist`.

    `adapter_path`: a LoRA adapter merged for good; `adapters`: named LoRA adapters a request chooses.
    `cpu_threads`: torch threads per replica (default `generalist.cpu_threads`, else
    ceil(num_cpus_per_replica)).
    """
    # serve.deployment made the class a Deployment; mypy keeps a decorated class's own type
    return cast(Deployment, Generalist).options(
        num_replicas=generalist.replicas,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
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
        adapters,
        generalist.prefix_cache_mib,
    )


class GeneralistAppArgs(BaseModel):
    """The `args` of the Serve config's application (deploy/serve/generalist.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: ModelSpec = ModelSpec()
    generalist: GeneralistSpec = GeneralistSpec()
    adapter_path: str | None = None
    adapters: dict[str, str] | None = None
    device: str = "auto"


def app_builder(args: dict[str, Any]):
    """For `serve run prime_ray.distributed.serve:app_builder` and Serve config files."""
    parsed = GeneralistAppArgs.model_validate(args or {})
    return generalist_app(parsed.model, parsed.generalist, adapter_path=parsed.adapter_path, adapters=parsed.adapters,
                          device=parsed.device)


async def in_thread(cpu_threads: int | None, fn: Callable[..., T], /, *args: Any) -> T:
    """`await asyncio.to_thread(fn, *args)`, with `cpu_threads` torch threads in that thread.

    A deployment runs its engine in a worker thread, so the event loop (health checks, the next batch's
    queue) stays free. Under OpenMP torch's thread count is per thread, and a new thread starts from
    OMP_NUM_THREADS, which Ray sets to the actor's integer CPUs: `torch.set_num_threads` in `__init__`
    left the engine's thread at 1 (measured: 1.91 s against 1.08 s for twenty 2048² matmuls on 2 cores).
    A replica given 1 CPU on a 2-core machine should still use both cores while the Ray Data workers
    that only wait on it sleep.
    """

    def run() -> T:
        if cpu_threads:
            import torch

            torch.set_num_threads(cpu_threads)
        return fn(*args)

    return await asyncio.to_thread(run)


def _raised(result: T | Exception) -> T:
    """A request's result, or its error raised here (the replica returns a refused request's error)."""
    if isinstance(result, Exception):
        raise result
    return result


class GeneralistHandle:
    """Blocking calls to the deployment, usable in the driver and inside Ray tasks and actors.

    A call's prompts go as one request, so the replicas batch them together with whatever else is queued.
    """

    def __init__(self, handle: DeploymentHandle, app_name: str):
        self._handle = handle
        self.app_name = app_name

    @classmethod
    def connect(cls, app_name: str = "generalist") -> GeneralistHandle:
        """The handle of a running app (e.g. from a Ray Data worker)."""
        return cls(serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=app_name), app_name)

    def generate(self, prompts: list[str], params: SamplingParams, adapter: str | None = None) -> list[Generation]:
        return self.generate_groups([(prompts, params, adapter)])[0]

    def generate_groups(
        self, groups: Sequence[tuple[Sequence[str], SamplingParams, str | None]]
    ) -> list[list[Generation]]:
        """Several generate calls at once, one list of generations per (prompts, params, adapter) group.

        Every group's request is in flight before any result is awaited, so the groups meet in the
        replicas' batches instead of the second group waiting for the first one's results.
        """
        responses = [self._handle.generate.remote(GenerateRequest(tuple(prompts), params, adapter))
                     for prompts, params, adapter in groups]
        return [_raised(r.result()) for r in responses]

    def score(self, prompts: list[str], continuations: list[str], adapter: str | None = None) -> list[float]:
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        return _raised(self._handle.score.remote(ScoreRequest(tuple(prompts), tuple(continuations), adapter)).result())

    def served_batch_sizes(self) -> list[int]:
        """Engine batch sizes one replica has run (which replica answers is Serve's choice)."""
        return self._handle.served_batch_sizes.remote().result()

    def prefix_cache_stats(self) -> dict[str, int] | None:
        """One replica's prefix-cache counters (`PrefixCacheStats` and `bytes` held), or None without one."""
        return self._handle.prefix_cache_stats.remote().result()

    def reset_prefix_cache(self) -> None:
        """Empty one replica's prefix cache (every replica's, when there is one)."""
        self._handle.reset_prefix_cache.remote().result()


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


def start_generalist(spec: JobSpec, *, app_name: str = "generalist", adapter_path: str | None = None,
                     adapters: dict[str, str] | None = None) -> GeneralistHandle:
    """Deploy G (with `adapter_path` merged, and the named `adapters`) as the Serve app `app_name` and
    wait until it is running.

    Serve's HTTP proxy is not started: the stages call the deployment through handles, and several
    jobs on one machine must not fight over a port.
    """
    serve.start(proxy_location="Disabled")
    app = generalist_app(spec.model, spec.generalist, adapter_path=adapter_path, adapters=adapters,
                         cpu_threads=replica_threads(spec))
    # No access log line per request: a trace run sends thousands.
    handle = serve.run(app, name=app_name, route_prefix=None, blocking=False,
                       logging_config={"enable_access_log": False})
    return GeneralistHandle(handle, app_name)


_deleting: set[str] = set()  # apps this process deleted without waiting (see stop_serve_when_idle)


def stop_generalist(app_name: str = "generalist", *, wait: bool = True) -> None:
    """Delete the app (its replicas free their CPUs/GPUs).

    With `wait`, return once its replicas are gone, and shut Serve down when no app is left. Without,
    return at once: the replicas go within about a second (a stage after it that needs their CPUs
    waits for them in Ray's scheduler, a Ray Train placement group or a new replica alike), and Serve
    keeps running for the next stage; `stop_serve_when_idle` shuts it down at the end.
    """
    try:
        serve.delete(app_name, _blocking=wait)
        if not wait:
            _deleting.add(app_name)
        elif not serve.status().applications:
            serve.shutdown()
    except Exception as e:  # noqa: BLE001 - stopping must not hide the error that made us stop
        logger.warning("stopping the Serve app %r failed: %s", app_name, e)


def stop_serve_when_idle(timeout_s: float = 60.0) -> None:
    """Wait (at most `timeout_s`) for the apps this process deleted to go, then shut Serve down if no
    app is left. A job's stages start Serve without its HTTP proxy: left running on a shared cluster,
    it would keep a student deployed later from getting one."""
    try:
        deadline = time.monotonic() + timeout_s
        while _deleting & set(serve.status().applications) and time.monotonic() < deadline:
            time.sleep(0.2)
        _deleting.clear()
        if not serve.status().applications:  # another job's or a student's app keeps Serve running
            serve.shutdown()
    except Exception as e:  # noqa: BLE001 - as stop_generalist
        logger.warning("shutting Serve down failed: %s", e)


@contextlib.contextmanager
def generalist(spec: JobSpec, *, app_name: str = "generalist", adapter_path: str | None = None,
               adapters: dict[str, str] | None = None) -> Iterator[GeneralistHandle]:
    handle = start_generalist(spec, app_name=app_name, adapter_path=adapter_path, adapters=adapters)
    try:
        yield handle
    finally:
        stop_generalist(app_name)
