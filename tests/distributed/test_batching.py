"""GroupQueue: requests waiting for a busy engine are joined per key, the longest-waiting key first."""

from __future__ import annotations

import asyncio

from prime_ray.distributed.batching import GroupQueue


class _Engine:
    """Records each call; a call waits until the test lets it finish (the engine is 'busy')."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()

    async def run(self, key, requests):
        self.calls.append((key, list(requests)))
        await self.release.wait()
        if key == "bad":
            raise RuntimeError("engine down")
        return [ValueError(r) if r.startswith("!") else r.upper() for r in requests]


def test_requests_that_wait_are_joined_per_key_oldest_key_first():
    async def scenario():
        engine = _Engine()
        queue = GroupQueue(engine.run, size=len, full=1, wait_s=0.0)
        first = asyncio.ensure_future(queue.submit("x", "a"))
        await asyncio.sleep(0.01)  # the engine is busy with [a]
        later = [asyncio.ensure_future(queue.submit(k, r)) for k, r in [("y", "b"), ("x", "c"), ("x", "!d")]]
        await asyncio.sleep(0.01)
        engine.release.set()
        return engine.calls, await first, await asyncio.gather(*later)

    calls, first, later = asyncio.run(scenario())
    assert calls == [("x", ["a"]), ("y", ["b"]), ("x", ["c", "!d"])]
    assert first == "A" and later[:2] == ["B", "C"]
    assert isinstance(later[2], ValueError)  # a request's failure is its own result, not its batch-mates'


def test_a_small_group_waits_for_more_of_its_kind_and_a_raising_run_fails_its_batch():
    async def scenario():
        engine = _Engine()
        engine.release.set()
        queue = GroupQueue(engine.run, size=len, full=100, wait_s=1.0)
        first = asyncio.ensure_future(queue.submit("x", "a"))
        await asyncio.sleep(0.01)  # well within the wait: joins the first request
        second = asyncio.ensure_future(queue.submit("x", "b"))
        done = await asyncio.gather(first, second)
        failed = await asyncio.gather(queue.submit("bad", "c"), queue.submit("bad", "d"))
        return engine.calls, done, failed

    calls, done, failed = asyncio.run(scenario())
    assert calls == [("x", ["a", "b"]), ("bad", ["c", "d"])] and done == ["A", "B"]
    assert all(isinstance(f, RuntimeError) and str(f) == "engine down" for f in failed)
