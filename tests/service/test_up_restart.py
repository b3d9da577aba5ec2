"""`prime-ray up` on the real CLI: everything it starts listens on loopback, and after a gateway crash it
starts only the gateway again (same port, database, Ray head and token) while a Ray job keeps running.
A taken port is refused before anything is stopped; the gateway's log holds no unhandled exception."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest
from waiting import wait_until

from prime_ray.service.local import LOOPBACK, LocalRay, _cluster_processes, listening_addresses, start_ray_head

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]


def _cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prime_ray", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _state(home: Path) -> dict:
    return json.loads((home / "up.json").read_text())


def _stack_pids(state: dict) -> list[int]:
    head = LocalRay(**state["ray"])
    return [state["gateway"]["pid"], *(p.pid for p in _cluster_processes(head))]


def _not_loopback(state: dict) -> dict[int, list[tuple[str, int]]]:
    listening = listening_addresses(_stack_pids(state))
    return {pid: wide for pid, pairs in listening.items() if (wide := [a for a in pairs if a[0] not in LOOPBACK])}



class RayJobs:
    """The head's Jobs API, spoken directly (with the head's token)."""

    def __init__(self, state: dict):
        head = LocalRay(**state["ray"])
        self.http = httpx.Client(base_url=head.jobs_url, headers={"Authorization": f"Bearer {head.token()}"},
                                 timeout=30)

    def submit(self, entrypoint: str) -> str:
        response = self.http.post("/api/jobs/", json={"entrypoint": entrypoint})
        assert response.status_code == 200, response.text
        return response.json()["submission_id"]

    def status(self, submission_id: str) -> str:
        return self.http.get(f"/api/jobs/{submission_id}").json()["status"]

    def logs(self, submission_id: str) -> str:
        return self.http.get(f"/api/jobs/{submission_id}/logs").json()["logs"]


@pytest.fixture
def home():
    home = Path(tempfile.mkdtemp(prefix="pru-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {**os.environ, "PRIME_RAY_CACHE_DIR": str(home)}
    for name in ("PRIME_RAY_DB_URL", "PRIME_RAY_ARTIFACT_ROOT", "PRIME_RAY_PORT", "RAY_ADDRESS"):
        env.pop(name, None)
    try:
        yield home, env
    finally:
        stopped = _cli(["down"], env, timeout=120)
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or ())]
        shutil.rmtree(home, ignore_errors=True)
        assert stopped.returncode == 0 and leftovers == [], (stopped.stderr, leftovers)


def test_up_listens_on_loopback_only_and_restarts_only_a_dead_gateway(home):
    home, env = home
    started = _cli(["up", "--port", "0"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "ray head started" in started.stdout
    export = next(line for line in started.stdout.splitlines() if line.startswith("export "))
    values = dict(part.split("=", 1) for part in export.split()[1:])
    url, key = values["PRIME_RAY_URL"], values["PRIME_RAY_API_KEY"]
    port = int(url.rsplit(":", 1)[1])
    state = _state(home)
    head = LocalRay(**state["ray"])
    gcs = next(p for p in _cluster_processes(head) if p.name() == "gcs_server")

    # A job driver joins the loopback head and runs a task on it.
    ray_jobs = RayJobs(state)
    probe = ray_jobs.submit(f"{sys.executable} -c 'import ray; ray.init(); "
                            "print(\"node\", ray.get(ray.remote(lambda: ray.util.get_node_ip_address()).remote()))'")
    wait_until(lambda: ray_jobs.status(probe) in ("SUCCEEDED", "FAILED", "STOPPED"), timeout=180, every=0.5)
    assert ray_jobs.status(probe) == "SUCCEEDED", ray_jobs.logs(probe)
    assert "node 127.0.0.1" in ray_jobs.logs(probe)

    # A Ray job that runs until it is stopped; its workers open ports of their own too.
    job = ray_jobs.submit(f"{sys.executable} -c 'import time; time.sleep(3600)'")
    wait_until(lambda: ray_jobs.status(job) == "RUNNING", timeout=180, every=0.5)
    assert _not_loopback(state) == {}  # gateway, GCS, raylet, dashboard, agents, metrics, client server, job

    # The gateway crashes with a client connected: its side of the connection is left in TIME_WAIT.
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert client.get("/v1/jobs").status_code == 200
    os.killpg(state["gateway"]["pid"], signal.SIGKILL)
    psutil.wait_procs([psutil.Process(state["gateway"]["pid"])], timeout=30)
    client.close()
    time_wait = wait_until(lambda: [c for c in psutil.net_connections(kind="tcp")
                                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT], timeout=30, every=0.5)
    assert time_wait

    # Someone else listens on the port: refused, and the Ray head and its job are untouched.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        refused = _cli(["up", "--port", str(port)], env)
    assert refused.returncode == 1 and f"port {port} is taken" in refused.stderr
    assert gcs.is_running() and ray_jobs.status(job) == "RUNNING"

    # The port is free again (only TIME_WAIT left): `up` starts the gateway alone, on the same port.
    again = _cli(["up", "--port", "0"], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"gateway started: {url}" in again.stdout and "ray head already running" in again.stdout
    assert "an API key exists already" in again.stdout  # the same database
    restarted = _state(home)
    assert restarted["ray"] == state["ray"] and restarted["db_url"] == state["db_url"]
    assert restarted["gateway"]["pid"] != state["gateway"]["pid"]
    assert gcs.is_running() and ray_jobs.status(job) == "RUNNING"
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        assert client.get("/v1/jobs").status_code == 200  # the old key: same database
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ray"] == "ok"  # same Ray head and token
    assert _not_loopback(restarted) == {}

    log = Path(restarted["gateway"]["log"]).read_text()
    assert "Traceback" not in log and "unhandled error" not in log


def test_a_ray_start_that_does_not_finish_in_time_leaves_nothing_running():
    temp_dir = Path(tempfile.mkdtemp(prefix="prt-", dir="/tmp"))
    try:
        with pytest.raises(TimeoutError, match="did not finish within 1s"):
            start_ray_head(temp_dir, num_cpus=1, timeout_s=1)
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(temp_dir) in " ".join(p.info["cmdline"] or ())]
        assert leftovers == []
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
