"""A rehearsal of `ray up cluster/local.yaml` on this machine, on loopback.

The head node's start commands are taken from the YAML and run with bash, as the cluster launcher runs
them over SSH, on a head made of a temporary home: `~/prime-ray` is this checkout (the YAML's file
mount), `~/.ray/auth_token` a token from `ray get-auth-token --generate`, `~/ray_bootstrap_config.yaml`
the prepared config. What differs from a real head is set through the PRIME_RAY_* variables the YAML
reads (loopback address, free ports, temporary artifacts and database), never by editing the commands.
Then a job goes through the gateway with the SDK and must succeed. Everything started is stopped by
its process group and temporary directory.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest
import yaml

from prime_ray.client import JobFailed, PrimeClient
from prime_ray.service.local import LocalRay, free_ports, stop_ray_head

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent  # where `ray` and `prime-ray` are, as install.sh's PATH line
LOOPBACK = "127.0.0.2"  # Ray maps 127.0.0.1 to the machine's address; the rest of 127/8 it takes as given

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def _users(path: Path) -> None:
    """Six users rating movies 1-5 in prime-ray's native JSONL."""
    with path.open("w") as f:
        for u in range(6):
            history = [
                {"id": f"m{i}", "input": f"Movie {i} (199{i}) | Drama", "output": str(1 + (u + i) % 5),
                 "timestamp": 880000000 + 1000 * i}
                for i in range(5)
            ]
            f.write(json.dumps({"user_id": f"u{u}", "history": history}) + "\n")


@pytest.fixture
def head():
    """A head node started by cluster/local.yaml's own commands; yields (env, their output), then stops it."""
    config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    base = Path(tempfile.mkdtemp(prefix="prh", dir="/tmp"))  # short: Ray's socket paths live under it
    started: list[int] = []
    try:
        env = _head_env(base, config)
        outputs = []
        for command in config["head_start_ray_commands"]:
            if command == "ray stop":
                continue  # it would stop every Ray started with `ray start` on this shared machine
            proc = subprocess.Popen(["bash", "-c", command], env=env, cwd=env["HOME"], start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            started.append(proc.pid)
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"`{command}` failed:\n{output[-3000:]}"
            outputs.append(output)
        yield env, "\n".join(outputs)
    finally:
        for pgid in started:
            stop_ray_head(LocalRay(temp_dir=str(base), pgid=pgid, ports={}, token_file=""))
        shutil.rmtree(base, ignore_errors=True)


def _head_env(base: Path, config: dict) -> dict[str, str]:
    """The head's home as `ray up` leaves it (checkout, token, bootstrap config), and its environment."""
    home = base / "home"
    home.mkdir()
    (home / "prime-ray").symlink_to(ROOT)
    (base / "ray").mkdir()
    gcs, dashboard, client, agent, gateway = free_ports(5)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "PRIME_RAY_")) or k == "PRIME_RAY_CACHE_DIR"}
    env.update(
        HOME=str(home),
        PATH=f"{VENV_BIN}:{env['PATH']}",
        RAY_TMPDIR=str(base / "ray"),
        RAY_USAGE_STATS_ENABLED="0",
        PRIME_RAY_NODE_IP=LOOPBACK,
        PRIME_RAY_DASHBOARD_HOST="127.0.0.1",
        PRIME_RAY_GCS_PORT=str(gcs),
        PRIME_RAY_DASHBOARD_PORT=str(dashboard),
        PRIME_RAY_CLIENT_PORT=str(client),
        PRIME_RAY_AGENT_PORT=str(agent),
        PRIME_RAY_HOST="127.0.0.1",
        PRIME_RAY_PORT=str(gateway),
        PRIME_RAY_ARTIFACT_ROOT=str(base / "artifacts"),
        PRIME_RAY_DB_URL=f"sqlite:///{base / 'gateway.db'}",
    )
    subprocess.run(["ray", "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    # What `ray up` uploads to the head; the monitor (autoscaler) reads it.
    from ray.autoscaler._private.util import prepare_config

    bootstrap = copy.deepcopy(config)
    bootstrap["provider"].update(head_ip=LOOPBACK, worker_ips=[])
    (home / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(prepare_config(bootstrap)))
    return env


def test_local_head_runs_a_job_submitted_through_the_gateway(head, tmp_path):
    env, output = head
    jobs_api = f"http://127.0.0.1:{env['PRIME_RAY_DASHBOARD_PORT']}"
    assert f"jobs go to {jobs_api}" in output  # gateway.sh found this head's Jobs API by itself
    key = subprocess.run(["prime-ray", "keys", "create", "--name", "rehearsal"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    users = tmp_path / "users.jsonl"
    _users(users)
    spec = {
        "name": "rehearsal",
        "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": str(users)}, "task": {"kind": "rating", "min": 1, "max": 5}},
        "stages": ["ingest"],
    }
    with PrimeClient(f"http://{env['PRIME_RAY_HOST']}:{env['PRIME_RAY_PORT']}", key) as client:
        job = client.submit(spec)
        try:
            job.wait(timeout=150, progress=False)
        except JobFailed:
            pytest.fail(f"job {job.state}: {job.error}\n{job.logs()[-3000:]}")
        paths = {a["path"] for a in job.artifacts()}
    assert {"ingest/examples.parquet", "ingest/users.parquet", "ingest/manifest.json"} <= paths
    assert (Path(env["PRIME_RAY_ARTIFACT_ROOT"]) / job.id / "ingest" / "examples.parquet").is_file()

    # It ran on the rehearsed head: that head's Jobs API knows it, behind the head's token.
    token = (Path(env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    ray_jobs = httpx.get(f"{jobs_api}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    ours = [j for j in ray_jobs if (j.get("metadata") or {}).get("prime_ray_job") == job.id]
    assert [j["status"] for j in ours] == ["SUCCEEDED"]
