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


def test_a_small_group_also_waits_for_the_callers_of_the_call_that_just_ended():
    """Two callers one step apart: B's step waited through A's call, and A's next step (same key as
    B's) arrives right after A's call ends. Anchored on its own arrival, B's group would start at once
    without A's, and the two would stay one step apart; the wait after the engine call joins them."""

    async def scenario():
        engine = _Engine()
        queue = GroupQueue(engine.run, size=len, full=100, wait_s=0.2)

        async def caller_a():
            await queue.submit("direct", "a1")
            await asyncio.sleep(0.02)  # the caller's own work between two steps
            return await queue.submit("think", "a2")

        a = asyncio.ensure_future(caller_a())
        await asyncio.sleep(0.01)
        b = asyncio.ensure_future(queue.submit("think", "b1"))  # arrives while A's group waits
        await asyncio.sleep(0.6)  # A's call runs; B's request is now much older than wait_s
        engine.release.set()
        return engine.calls, await asyncio.gather(a, b)

    calls, results = asyncio.run(scenario())
    assert calls == [("direct", ["a1"]), ("think", ["b1", "a2"])]
    assert results == ["A2", "B1"]


def test_a_full_group_waits_only_right_after_an_engine_call():
    """A full group starts at once on an idle engine, and waits `wait_s` only after a call ends (so the
    caller of that call joins with its next step: one call of 2 rows instead of two of 1)."""

    async def scenario():
        engine = _Engine()
        queue = GroupQueue(engine.run, size=len, full=1, wait_s=0.2)

        async def caller(first, then):
            await queue.submit("step1", first)
            await asyncio.sleep(0.02)
            return await queue.submit("step2", then)

        a = asyncio.ensure_future(caller("a1", "a2"))
        await asyncio.sleep(0.01)  # the engine took a1 at once: its group was full
        first_calls = list(engine.calls)
        b = asyncio.ensure_future(queue.submit("step2", "b2"))
        await asyncio.sleep(0.3)
        engine.release.set()
        return first_calls, engine.calls, await asyncio.gather(a, b)

    first_calls, calls, results = asyncio.run(scenario())
    assert first_calls == [("step1", ["a1"])]
    assert calls == [("step1", ["a1"]), ("step2", ["b2", "a2"])] and results == ["A2", "B2"]
