"""How requests become engine batches on a replica: `GroupQueue` (the generalist), and `serve.batch`
with the types it has at run time (the served students).

`serve.batch` turns a method of a list of requests (`requests: list[GenerateRequest]`) into one called
with a single request, and gives the wrapper `set_max_batch_size` and `set_batch_wait_timeout_s`
(Ray's docs use them). Ray's own hints omit the setters; `batch` here returns the same decorator,
described as it behaves: the method becomes an awaitable of one request, with the two setters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ray import serve

S = TypeVar("S")
A = TypeVar("A")
R = TypeVar("R")
S_contra = TypeVar("S_contra", contravariant=True)
A_contra = TypeVar("A_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class BatchQueue(Protocol):
    """The batch queue's settings, changeable on a replica (e.g. from the deployment's arguments)."""

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


class BoundBatched1(BatchQueue, Protocol[A_contra, R_co]):
    """A batched method of one argument, on an instance: called with one item, awaited for its result."""

    def __call__(self, item: A_contra, /) -> Coroutine[Any, Any, R_co]: ...


class Batched1(Protocol[S_contra, A_contra, R_co]):
    def __get__(self, obj: S_contra, owner: type | None = None, /) -> BoundBatched1[A_contra, R_co]: ...


class BatchDecorator(Protocol):
    def __call__(self, method: Callable[[S, list[A]], Awaitable[list[R]]], /) -> Batched1[S, A, R]: ...


def batch(*, max_batch_size: int, batch_wait_timeout_s: float) -> BatchDecorator:
    """`serve.batch(max_batch_size=..., batch_wait_timeout_s=...)` itself (see the module docstring)."""
    decorator = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
    return decorator  # type: ignore[return-value]  # Ray's hints: one batched argument, no setters


Q = TypeVar("Q")  # a request
T = TypeVar("T")  # its result


class GroupQueue(Generic[Q, T]):
    """Requests waiting for one engine, joined by key: each engine call takes every waiting request of
    the key whose oldest request has waited longest.

    `serve.batch` hands a method the requests that arrived together; when two callers' steps reach a
    busy replica one after the other, each becomes an engine batch of its own (measured on the eval:
    every Serve batch held one worker's requests, so each model's think rows ran in half-full batches).
    Here requests wait per key (sampling params and adapter) while the engine works, and the next call
    joins all of one key's requests, whoever sent them.

    `run(key, requests)` returns one result per request (an Exception as the result of a request that
    failed) and is awaited one call at a time. A key whose waiting requests hold fewer than `full`
    items (`size(request)` each) waits for more until `wait_s` after its oldest request arrived; and
    every group, full or not, waits until `wait_s` after the engine's last call ended. The second keeps
    callers in step: the callers of the call that just ended send their next step within
    milliseconds, and a group that waited through that call would otherwise start without them
    (measured on the traces stage: two Ray Data workers one step apart stayed apart for the whole
    run, each engine call held one worker's rows, and the 48 rationalizations ran as 24 + 24 where
    joined they run as 32 + 16). An engine that is idle takes a full group at once.
    """

    def __init__(self, run: Callable[[Hashable, list[Q]], Awaitable[Sequence[T]]], *,
                 size: Callable[[Q], int], full: int, wait_s: float):
        self._run, self._size, self._full, self._wait_s = run, size, full, wait_s
        self._pending: dict[Hashable, list[tuple[Q, asyncio.Future, float]]] = {}  # oldest key first
        self._wake = asyncio.Event()  # binds to a loop on first use (Python >= 3.10)
        self._task: asyncio.Task | None = None
        self._engine_free_since = float("-inf")  # loop time the last engine call ended

    async def submit(self, key: Hashable, request: Q) -> T:
        """Queue `request` under `key` and await its result."""
        loop = asyncio.get_running_loop()
        if self._task is None:  # started in the loop that serves the requests
            self._task = loop.create_task(self._serve())
        future: asyncio.Future = loop.create_future()
        self._pending.setdefault(key, []).append((request, future, loop.time()))
        self._wake.set()
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key, waiting = next(iter(self._pending.items()))
            since = self._engine_free_since
            if sum(self._size(r) for r, _, _ in waiting) < self._full:
                since = max(since, waiting[0][2])
            await asyncio.sleep(max(0.0, since + self._wait_s - loop.time()))
            batch = [(r, f) for r, f, _ in self._pending.pop(key) if not f.done()]  # a cancelled caller left
            if not batch:
                continue
            try:
                results: Sequence[Any] = await self._run(key, [r for r, _ in batch])
            except Exception as e:  # noqa: BLE001 - `run` answers failures as results; anything else fails its batch
                results = [e] * len(batch)
            self._engine_free_since = loop.time()
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
