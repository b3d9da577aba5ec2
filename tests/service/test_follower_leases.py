"""Followers of several gateways on one database, ticking at the same time (threads), with an in-memory
Ray Jobs API (Ray is slow to start and not what is tested: the end-to-end run with a real Ray and two
gateway processes is test_gateway_replicas.py). On SQLite and on Postgres.
"""

from __future__ import annotations

import itertools
import threading
import types
from collections import Counter

from sqlalchemy import update

from prime_ray.distributed.jobs import RayJobInfo, RayRefused
from prime_ray.service import follower as follower_module
from prime_ray.service.db import JobRow, open_database, utcnow
from prime_ray.service.follower import Follower
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.store import JobStore
from prime_ray.spec import parse_spec

SPEC = {"name": "lease", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}


class MemoryRay:
    """The Jobs API's contract, in memory: a submission id is taken once; jobs run until told to end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, str] = {}
        self.submit_calls: Counter = Counter()

    def info(self, submission_id: str) -> RayJobInfo | None:
        with self.lock:
            status = self.jobs.get(submission_id)
        return RayJobInfo(status=status, message=None) if status else None

    def submit(self, submission_id: str, entrypoint: str, metadata: dict[str, str]) -> None:
        with self.lock:
            self.submit_calls[submission_id] += 1
            if submission_id in self.jobs:
                raise RayRefused(f"job {submission_id} already exists")
            self.jobs[submission_id] = "RUNNING"

    def stop(self, submission_id: str) -> None:
        with self.lock:
            self.jobs[submission_id] = "STOPPED"

    def finish_all(self) -> None:
        with self.lock:
            self.jobs = {key: "SUCCEEDED" for key in self.jobs}


def _followers(db_url, tmp_path, ray, n):
    settings = GatewaySettings(db_url=db_url, artifact_root=str(tmp_path / "artifacts"), lease_s=60,
                               poll_interval_s=0.1)
    sessions = open_database(db_url)
    store = JobStore(sessions, settings.artifact_root)
    return store, [Follower(store, ray, settings, owner=f"gw-{i}") for i in range(n)]


def _tick_together(followers, rounds):
    barrier = threading.Barrier(len(followers))

    def run(follower):
        for _ in range(rounds):
            barrier.wait()
            follower.tick()

    threads = [threading.Thread(target=run, args=(f,)) for f in followers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_followers_ticking_together_submit_each_job_once_and_follow_it_to_its_end(db_url, tmp_path):
    ray = MemoryRay()
    store, followers = _followers(db_url, tmp_path, ray, 3)
    ids = [store.create(parse_spec(SPEC), "k")[0].id for _ in range(12)]
    _tick_together(followers, rounds=3)
    rows = [store.get(job_id) for job_id in ids]
    assert all(row.submitted and row.state == "running" for row in rows)
    assert ray.submit_calls == Counter({row.submission_id: 1 for row in rows})  # no second try, even refused
    holders = Counter(row.lease_owner for row in rows)
    assert sum(holders.values()) == 12 and set(holders) <= {"gw-0", "gw-1", "gw-2"}

    ray.finish_all()
    _tick_together(followers, rounds=1)
    assert {store.get(job_id).state for job_id in ids} == {"succeeded"}
    assert store.claim("gw-9", lease_s=60) == []
    store.sessions.kw["bind"].dispose()


def test_a_dead_gateways_jobs_are_followed_by_another_after_its_lease(db_url, tmp_path):
    ray = MemoryRay()
    store, (first, second) = _followers(db_url, tmp_path, ray, 2)
    ids = [store.create(parse_spec(SPEC), "k")[0].id for _ in range(3)]
    first.tick()  # submits all three and holds them
    first.tick()  # sees them run; then it "dies": it never ticks again
    second.tick()
    assert {store.get(job_id).lease_owner for job_id in ids} == {"gw-0"}
    ray.finish_all()
    second.tick()
    assert {store.get(job_id).state for job_id in ids} == {"running"}  # not its jobs while the lease holds

    with store.sessions.begin() as session:  # the lease runs out (60 s, not waited for here)
        session.execute(update(JobRow).values(lease_expires_at=utcnow()))
    second.tick()
    assert {store.get(job_id).state for job_id in ids} == {"succeeded"}
    assert sum(ray.submit_calls.values()) == 3
    store.sessions.kw["bind"].dispose()


def test_a_tick_slower_than_half_a_lease_still_gets_through_every_job(db_url, tmp_path, monkeypatch):
    ray = MemoryRay()
    store, (follower,) = _followers(db_url, tmp_path, ray, 1)
    ids = [store.create(parse_spec(SPEC), "k")[0].id for _ in range(3)]
    clock = itertools.count(step=1000)  # each reading of the follower's clock is 1000 s later: ticks run out
    monkeypatch.setattr(follower_module, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    for _ in range(3):
        follower.tick()  # one job per tick, the least recently looked-at first
    assert all(store.get(job_id).submitted for job_id in ids)
    store.sessions.kw["bind"].dispose()
