"""`serve.batch` for methods, with the types it has at run time.

`serve.batch` turns a method of a list of requests (`requests: list[GenerateRequest]`) into one called
with a single request, and gives the wrapper `set_max_batch_size` and `set_batch_wait_timeout_s`
(Ray's docs use them). Ray's own hints omit the setters; `batch` here returns the same decorator,
described as it behaves: the method becomes an awaitable of one request, with the two setters.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

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
