"""Two gateways (two real `prime-ray gateway` processes) on one Postgres database and one Ray head.

Jobs are submitted through both; each is submitted to Ray exactly once and followed to its end by
one gateway at a time. One gateway is killed with SIGKILL while it holds running jobs: the other takes
them over once their leases expire and follows them to their end. The database's sessions are then
ended again and again during a run (`pg_terminate_backend`): no request gets a 5xx, no job is lost.

Jobs that must still be running at a given moment read their data from a named pipe (as in
test_gateway_ray.py): they wait until the test writes it, so no timing is guessed.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select
from waiting import wait_until

from prime_ray.service.db import JobRow, open_database, retry_transient
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port, start_ray_head, stop_process_group, stop_ray_head, wait_for_http

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "service" / "users.jsonl"
LEASE_S = 8


def _spec(data: Path, name: str) -> dict:
    return {"name": name, "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
            "data": {"source": {"format": "jsonl", "path": str(data)}, "task": {"kind": "rating"}}}


class Gateway:
    def __init__(self, home: Path, index: int, command: list[str], env: dict):
        self.index, self.command, self.env = index, command, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"gateway-{index}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([*self.command, "--port", str(self.port)], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for_http(f"{self.url}/healthz", timeout_s=180, alive=lambda: self.process.poll() is None)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process_group(self.process.pid)
            self.process.wait(timeout=30)

    def holds(self, lease_owner: str | None) -> bool:
        """Whether a lease is this process's (the gateway's id is host:pid:random)."""
        return lease_owner is not None and lease_owner.split(":")[1] == str(self.process.pid)

    def submitted(self) -> Counter:
        """Job id -> how many times this gateway's log says it submitted it to Ray."""
        lines = self.log.read_text(errors="replace").splitlines()
        return Counter(line.split("submitted job ")[1].split()[0] for line in lines if "submitted job " in line)


class Replicas:
    def __init__(self, home: Path, db_url: str, head, key: str):
        self.home, self.db_url, self.head = home, db_url, head
        self.auth = {"Authorization": f"Bearer {key}"}
        self.sessions = open_database(db_url)
        env = {**os.environ, "PRIME_RAY_POLL_INTERVAL_S": "0.5", "PRIME_RAY_LEASE_S": str(LEASE_S)}
        command = [sys.executable, "-m", "prime_ray", "gateway", "--host", "127.0.0.1", "--db-url", db_url,
                   "--artifact-root", str(home / "artifacts"), "--ray-address", head.jobs_url,
                   "--ray-token-file", head.token_file]
        self.gateways = [Gateway(home, i, command, env) for i in range(2)]

    def rows(self, ids: list[str]) -> dict[str, JobRow]:
        def read() -> dict[str, JobRow]:
            with self.sessions() as session:
                return {row.id: row for row in session.scalars(select(JobRow).where(JobRow.id.in_(ids)))}

        return retry_transient(read)  # the last test ends this connection too

    def ray_submissions(self) -> Counter:
        """Job id -> how many Ray jobs were submitted for it."""
        from ray.job_submission import JobSubmissionClient

        ray_jobs = JobSubmissionClient(self.head.jobs_url, headers={"Authorization": f"Bearer {self.head.token()}"})
        return Counter((job.metadata or {}).get("prime_ray_job") for job in ray_jobs.list_jobs())

    def submitted_by_gateways(self) -> Counter:
        return sum((gateway.submitted() for gateway in self.gateways), Counter())


@pytest.fixture(scope="module")
def replicas(module_postgres_url):
    home = Path(tempfile.mkdtemp(prefix="prr-", dir="/tmp"))  # short: Ray's socket paths live under it
    head = start_ray_head(home / "ray", num_cpus=2)
    cluster = None
    try:
        _, key = create_key(open_database(module_postgres_url), "admin")
        cluster = Replicas(home, module_postgres_url, head, key)
        for gateway in cluster.gateways:
            gateway.start()
        yield cluster
    finally:
        if cluster is not None:
            for gateway in cluster.gateways:
                gateway.stop()
            cluster.sessions.kw["bind"].dispose()
        stop_ray_head(head)
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or ())]
        shutil.rmtree(home, ignore_errors=True)
        assert leftovers == []



def _feed(pipe: Path, timeout: float = 120) -> None:
    """Write the users into a named pipe once its job has it open for reading (which proves it still runs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        os.set_blocking(fd, True)
        os.write(fd, FIXTURE.read_bytes())
    finally:
        os.close(fd)


def _create(http: httpx.Client, gateway: Gateway, spec: dict, auth: dict) -> str:
    response = http.post(f"{gateway.url}/v1/jobs", json=spec, headers=auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_twenty_jobs_through_two_gateways_and_one_killed_mid_run(replicas, tmp_path):
    data = tmp_path / "users.jsonl"
    shutil.copy(FIXTURE, data)
    pipes = {}
    ids = []
    with httpx.Client(timeout=60) as http:
        for i in range(20):
            source = data
            if i % 5 == 0:  # 4 of them wait on a pipe: still running when a gateway is killed
                source = tmp_path / f"pipe-{i}.jsonl"
                os.mkfifo(source)
            job_id = _create(http, replicas.gateways[i % 2], _spec(source, f"r{i}"), replicas.auth)
            ids.append(job_id)
            if source != data:
                pipes[job_id] = source
        blocked = list(pipes)
        wait_until(lambda: all(r.state == "running" and r.stage == "ingest" for r in replicas.rows(blocked).values()),
               timeout=600, every=0.5)

        # Kill the gateway that follows the most of the waiting jobs (each is followed by exactly one).
        leases = {job_id: (row.lease_owner, row.lease_expires_at) for job_id, row in replicas.rows(blocked).items()}
        owners = {job_id: owner for job_id, (owner, _) in leases.items()}
        assert all(sum(g.holds(owner) for g in replicas.gateways) == 1 for owner in owners.values()), owners
        victim = max(replicas.gateways, key=lambda g: sum(g.holds(owner) for owner in owners.values()))
        survivor = next(g for g in replicas.gateways if g is not victim)
        orphans = [job_id for job_id, owner in owners.items() if victim.holds(owner)]
        # (the victim may still renew them before it dies: their leases end at these times or later)
        expiry = {job_id: leases[job_id][1] for job_id in orphans}
        victim.kill()

        for pipe in pipes.values():
            _feed(pipe)
        wait_until(lambda: all(r.state in ("succeeded", "failed", "cancelled") for r in replicas.rows(ids).values()),
               timeout=600, every=0.5)
        jobs = {job_id: http.get(f"{survivor.url}/v1/jobs/{job_id}", headers=replicas.auth).json() for job_id in ids}

    for job_id, job in jobs.items():
        assert job["state"] == "succeeded" and job["metrics"]["ingest"]["users"] == 6, (job_id, job)
    rows = replicas.rows(ids)
    for job_id in orphans:  # followed to its end by the survivor, only once the dead gateway's lease expired
        assert rows[job_id].finished_at > expiry[job_id] and rows[job_id].lease_owner is None
    ray_submissions = replicas.ray_submissions()
    assert all(ray_submissions[job_id] == 1 for job_id in ids), ray_submissions
    by_gateways = replicas.submitted_by_gateways()
    assert all(by_gateways[job_id] == 1 for job_id in ids), by_gateways  # never submitted twice, by either
    print(f"submitted by gateway: {[sum(g.submitted()[j] for j in ids) for g in replicas.gateways]}; "
          f"killed gateway {victim.index} held {len(orphans)} running job(s)")


def test_ended_database_sessions_during_a_run_cost_no_5xx_and_no_job(replicas, postgres_admin, tmp_path):
    for gateway in replicas.gateways:
        if gateway.process.poll() is not None:
            gateway.start()  # the one the previous test killed
    data = tmp_path / "users.jsonl"
    shutil.copy(FIXTURE, data)
    stop = threading.Event()
    ended: list[int] = []
    answers: list[tuple[str, int]] = []

    def terminate():
        while not stop.is_set():
            ended.append(postgres_admin.terminate_sessions(replicas.db_url))
            stop.wait(0.3)

    def read():
        with httpx.Client(timeout=120, headers=replicas.auth) as http:
            while not stop.is_set():
                for gateway in replicas.gateways:
                    answer = http.get(f"{gateway.url}/v1/jobs", params={"limit": 5})
                    answers.append((f"GET {gateway.url}/v1/jobs", answer.status_code))

    with httpx.Client(timeout=120) as http:
        before = len(http.get(f"{replicas.gateways[0].url}/v1/jobs", params={"limit": 500},
                              headers=replicas.auth).json()["jobs"])
        threads = [threading.Thread(target=terminate), threading.Thread(target=read)]
        for thread in threads:
            thread.start()
        try:
            ids = []
            for i in range(6):
                response = http.post(f"{replicas.gateways[i % 2].url}/v1/jobs", json=_spec(data, f"t{i}"),
                                     headers=replicas.auth)
                answers.append(("POST /v1/jobs", response.status_code))
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            wait_until(lambda: all(r.state in ("succeeded", "failed", "cancelled") for r in replicas.rows(ids).values()),
                   timeout=600, every=0.5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        jobs = [http.get(f"{replicas.gateways[1].url}/v1/jobs/{job_id}", headers=replicas.auth).json() for job_id in ids]
        after = len(http.get(f"{replicas.gateways[0].url}/v1/jobs", params={"limit": 500},
                             headers=replicas.auth).json()["jobs"])
        ready = [http.get(f"{g.url}/readyz", headers=replicas.auth).json() for g in replicas.gateways]

    assert sum(ended) > 0  # sessions were really ended under the gateways
    assert [a for a in answers if a[1] >= 500] == [] and len(answers) > 6
    assert [job["state"] for job in jobs] == ["succeeded"] * 6
    assert after == before + 6  # no job lost, none stored twice by a retried create
    ray_submissions = replicas.ray_submissions()
    assert all(ray_submissions[job_id] == 1 for job_id in ids), ray_submissions
    assert all(replicas.submitted_by_gateways()[job_id] == 1 for job_id in ids)
    assert [r["database"] for r in ready] == ["ok", "ok"] and all(r["ready"] for r in ready)
    print(f"{sum(ended)} database sessions ended during the run; {len(answers)} answers, none a 5xx")
