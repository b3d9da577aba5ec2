"""`prime-ray up` / `down`: a local Ray head and a gateway on loopback, as background processes.

`up` records what it started (PIDs, process group, ports, temp dir) in a state file under the cache;
`down` stops exactly those processes and removes the file. Running `up` again starts only what is not
running: after a gateway crash, a gateway on the same database, Ray head and token; the Ray head and
its jobs are never stopped by `up`. Everything listens on 127.0.0.1 (see `local.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from prime_ray.paths import cache_dir
from prime_ray.service.db import open_database
from prime_ray.service.keys import create_key, has_live_key
from prime_ray.service.local import (
    LocalRay,
    free_port,
    port_is_free,
    ray_head_running,
    read_state,
    start_ray_head,
    stop_process_group,
    stop_ray_head,
    wait_for_http,
)
from prime_ray.service.settings import GatewaySettings


def state_file() -> Path:
    return cache_dir() / "up.json"


@dataclass(frozen=True)
class Stack:
    url: str
    api_key: str | None  # only when `up` created it: keys are shown once
    reused: bool  # the gateway was running already
    state: dict
    ray_reused: bool = True  # the Ray head was running already (its jobs went on)


def _alive(pid: int, created: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - created) < 1e-3
    except psutil.Error:
        return False


def up(settings: GatewaySettings, *, num_cpus: int = 2, timeout_s: float = 120) -> Stack:
    """Start what is not running of the recorded stack; make an admin key if there is none.

    A live gateway is reused. After a gateway crash only the gateway is started again, on the same
    database, artifact root, Ray head and token (with port 0, on its old port while free), so the
    jobs running in Ray go on. A Ray head whose GCS still runs is never stopped; one that died is
    cleared and started anew. The gateway's port is checked before anything is started or stopped:
    RuntimeError when it is taken.
    """
    path = state_file()
    state = read_state(path) or {}
    running = state.get("gateway")
    if running and _alive(running["pid"], running["created"]):
        return Stack(url=running["url"], api_key=None, reused=True, state=state)

    head = LocalRay(**state["ray"]) if state.get("ray") else None
    if head is not None and not ray_head_running(head):
        head = None  # died: what remains of it is cleared below, once the port is known to be free
    port = settings.port or _previous_port(running) or free_port()
    if not port_is_free(port):
        raise RuntimeError(f"port {port} is taken: choose another with --port (0: any free port); nothing was "
                           "started or stopped")
    url = f"http://127.0.0.1:{port}"

    started_head = head is None
    if head is None:
        if state.get("ray"):
            stop_ray_head(LocalRay(**state["ray"]))  # leftovers of the dead head
        head = start_ray_head(cache_dir("ray-up"), num_cpus=num_cpus, timeout_s=timeout_s)
        state = {"ray": head.to_json(), "db_url": settings.db_url, "artifact_root": settings.artifact_root}
    state.pop("gateway", None)
    path.write_text(json.dumps(state, indent=2))  # recorded at once: `down` can stop a half-started stack
    gateway: subprocess.Popen | None = None
    try:
        log_path = Path(head.temp_dir) / "gateway.log"
        env = {**os.environ, "PRIME_RAY_RAY_TOKEN_FILE": head.token_file}
        command = [sys.executable, "-m", "prime_ray", "gateway", "--host", "127.0.0.1", "--port", str(port),
                   "--db-url", state["db_url"], "--ray-address", head.jobs_url,
                   "--artifact-root", state["artifact_root"]]
        with log_path.open("ab") as log:
            gateway = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        state["gateway"] = {"pid": gateway.pid, "created": psutil.Process(gateway.pid).create_time(),
                            "url": url, "log": str(log_path)}
        path.write_text(json.dumps(state, indent=2))
        try:
            wait_for_http(f"{url}/healthz", timeout_s=timeout_s, alive=lambda: gateway.poll() is None)
        except RuntimeError:
            raise RuntimeError(f"the gateway did not start; its log {log_path}:\n{log_path.read_text()[-2000:]}") from None
    except BaseException:
        # Undo only what this call started: a Ray head that was already running keeps running.
        if started_head:
            down()
        else:
            if gateway is not None and gateway.poll() is None:
                stop_process_group(gateway.pid)
            state.pop("gateway", None)
            path.write_text(json.dumps(state, indent=2))
        raise
    api_key = None
    sessions = open_database(state["db_url"])
    if not has_live_key(sessions):
        _, api_key = create_key(sessions, name="admin")
    sessions.kw["bind"].dispose()
    return Stack(url=url, api_key=api_key, reused=False, state=state, ray_reused=not started_head)


def _previous_port(gateway: dict | None) -> int | None:
    """The port of the gateway that ran before, so clients of a restarted one need no new address."""
    if not gateway:
        return None
    port = int(gateway["url"].rsplit(":", 1)[1])
    return port if port_is_free(port) else None


def down() -> bool:
    """Stop what `up` started; False if nothing was recorded."""
    path = state_file()
    state = read_state(path)
    if state is None:
        return False
    gateway = state.get("gateway")
    if gateway and _alive(gateway["pid"], gateway["created"]):
        stop_process_group(gateway["pid"])
    if "ray" in state:
        stop_ray_head(LocalRay(**state["ray"]))
    path.unlink(missing_ok=True)
    return True
