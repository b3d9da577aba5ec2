"""Polling for a condition in tests that drive real servers (no timing is guessed: the test waits for
what it needs, up to a bound)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, every: float = 0.3) -> T:
    """The first truthy value of `predicate()`, polled every `every` seconds; TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")
