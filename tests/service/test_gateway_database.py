"""Losing the Postgres connection: the store retries what is safe to retry, the gateway answers 503
(never 500) once the retry window has passed, and /readyz reports the database's state.

The server is shared, so it is never restarted here: its sessions are ended (`pg_terminate_backend`,
what a restart does to them) and new connections refused (`ALLOW_CONNECTIONS false`, what a server
that is down does) for this test's database only.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from prime_ray.service.app import create_app
from prime_ray.service.db import DatabaseUnavailable, open_database
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.states import JobState
from prime_ray.service.store import JobStore
from prime_ray.spec import parse_spec

SPEC = {"name": "db", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}


def test_store_operations_ride_out_terminated_sessions(postgres_url, postgres_admin, tmp_path):
    store = JobStore(open_database(postgres_url, retry_s=60), str(tmp_path))
    spec = parse_spec(SPEC)
    stop = threading.Event()
    ended = []

    def terminate():
        # A storm of 20 ended sessions, one round every 50 ms, then calm: a loss that never stops is not
        # transient, and on a loaded machine one store transaction can take longer than 50 ms.
        while not stop.is_set() and sum(ended) < 20:
            ended.append(postgres_admin.terminate_sessions(postgres_url))
            stop.wait(0.05)

    terminator = threading.Thread(target=terminate)
    terminator.start()
    try:
        created = [store.create(spec, "k")[0].id for _ in range(25)]
        again = [store.create(spec, "k", idempotency_key=f"i{i}")[0].id for i in range(5)]
        for job_id in created[:10]:
            store.update(job_id, state=JobState.running, holder=None)
        claimed = store.claim("gw", lease_s=60)
        counts = store.counts_by_state()
    finally:
        stop.set()
        terminator.join()
    assert sum(ended) > 0  # sessions really were ended under the store
    assert counts == {"queued": 20, "running": 10, "succeeded": 0, "failed": 0, "cancelled": 0}  # none lost, none twice
    assert [j.id for j in claimed] == created + again
    assert [store.create(spec, "k", idempotency_key=f"i{i}")[0].id for i in range(5)] == again
    store.sessions.kw["bind"].dispose()


def test_a_database_that_is_down_is_503_and_reported_by_readyz_then_recovered(postgres_url, postgres_admin, tmp_path):
    settings = GatewaySettings(db_url=postgres_url, artifact_root=str(tmp_path / "artifacts"), db_retry_s=1,
                               ray_address=f"http://127.0.0.1:{free_port()}")
    app = create_app(settings)
    _, key = create_key(app.state.store.sessions, "admin")
    auth = {"Authorization": f"Bearer {key}"}
    with BackgroundServer(app, free_port()) as url, httpx.Client(base_url=url, headers=auth, timeout=60) as http:
        assert http.post("/v1/jobs", json=SPEC).status_code == 201
        assert http.get("/readyz").json()["database"] == "ok"  # (not ready: Ray is out of reach)

        postgres_admin.allow_connections(postgres_url, False)
        try:
            postgres_admin.terminate_sessions(postgres_url)
            listed = http.get("/v1/jobs")
            ready = http.get("/readyz")
            created = http.post("/v1/jobs", json=SPEC)
        finally:
            postgres_admin.allow_connections(postgres_url, True)
        assert listed.status_code == 503 and "database cannot be reached" in listed.json()["detail"]
        assert listed.headers["Retry-After"]
        assert created.status_code == 503
        # Even the key cannot be checked: the answer says why (readyz's own check is behind the key).
        assert ready.status_code == 503 and "not currently accepting connections" in ready.json()["detail"]

        assert http.get("/readyz").json()["database"] == "ok"
        jobs = http.get("/v1/jobs")
        assert jobs.status_code == 200 and len(jobs.json()["jobs"]) == 1  # the refused POST stored nothing
    app.state.store.sessions.kw["bind"].dispose()


def test_the_retry_window_ends_in_database_unavailable(postgres_url, postgres_admin, tmp_path):
    store = JobStore(open_database(postgres_url, retry_s=0.5), str(tmp_path))
    postgres_admin.allow_connections(postgres_url, False)
    try:
        postgres_admin.terminate_sessions(postgres_url)
        with pytest.raises(DatabaseUnavailable, match="not currently accepting connections"):
            store.page()
    finally:
        postgres_admin.allow_connections(postgres_url, True)
    assert store.page() == ([], None)
    store.sessions.kw["bind"].dispose()
