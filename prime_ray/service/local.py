"""A local Ray head with the Jobs API, started and stopped by prime-ray itself (`up` / `down`, tests).

`ray start --head` detaches its daemons; they are started here in a new session, so they share one
process group that identifies them. Stopping kills exactly that cluster: its process group and any
process naming its temp dir, with their children (the job drivers), never another Ray on the machine
(plain `ray stop` would stop every cluster started with `ray start`).

The head runs with its own token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH in its temp dir), so it
neither depends on nor touches ~/.ray/auth_token.

Everything the head opens listens on loopback only. `--node-ip-address=127.0.0.1` alone is not enough:
`ray start` replaces a loopback node address by the host's address, and its servers then listen on that
address or on all interfaces. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (a single-node cluster, which a
local head is) Ray keeps 127.0.0.1 as the node's address and binds every server there. Every port is
chosen here, including the two metrics ports Ray otherwise fixes (44217, 44227).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

# Every port the head opens, so two clusters on one machine never collide on a default.
_PORT_OPTIONS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
# Ports Ray takes from the environment only: the dashboard's and the autoscaler's own metrics servers.
_PORT_VARIABLES = {"dashboard-metrics-port": "DASHBOARD_METRIC_PORT", "autoscaler-metrics-port": "AUTOSCALER_METRIC_PORT"}
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. Their sockets stay bound until all are chosen: a port given back by a
    closed socket can be handed out again by the next bind, and one port given to two of Ray's
    components makes `ray start` fail."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now. SO_REUSEADDR, as uvicorn (and most servers) set
    it: sockets of a dead server left in TIME_WAIT do not make the port taken, a listening socket does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class LocalRay:
    temp_dir: str
    pgid: int
    ports: dict[str, int]
    token_file: str

    @property
    def jobs_url(self) -> str:
        """The dashboard (Jobs API) address the gateway talks to."""
        return f"http://127.0.0.1:{self.ports['dashboard-port']}"

    @property
    def address(self) -> str:
        """The GCS address ray.init() joins."""
        return f"127.0.0.1:{self.ports['port']}"

    def token(self) -> str:
        return Path(self.token_file).read_text().strip()

    def to_json(self) -> dict:
        return asdict(self)


def _ray_cli() -> list[str]:
    script = Path(sys.executable).with_name("ray")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def start_ray_head(temp_dir: Path, *, num_cpus: int = 2, object_store_mb: int = 300, timeout_s: float = 90) -> LocalRay:
    """Start a Ray head on loopback with the dashboard's Jobs API; return once the Jobs API answers."""
    temp_dir = Path(temp_dir).resolve()
    temp_dir.mkdir(parents=True, exist_ok=True)
    token_file = temp_dir / "auth_token"
    if not token_file.exists():
        token_file.write_text(secrets.token_hex(32))
        token_file.chmod(0o600)
    names = (*_PORT_OPTIONS, *_PORT_VARIABLES)
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               # A stopped job gets SIGTERM, then SIGKILL after this many seconds (Ray's default: 3): time
               # for the runner to delete its Serve app, which outlives a killed driver.
               RAY_JOB_STOP_WAIT_TIME_S="30",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keep 127.0.0.1 as the node address: bind loopback only
               **{variable: str(ports[name]) for name, variable in _PORT_VARIABLES.items()})
    command = [
        *_ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        "--include-dashboard=true", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
        f"--object-store-memory={object_store_mb * 1024 * 1024}", "--disable-usage-stats",
        *(f"--{option}={ports[option]}" for option in _PORT_OPTIONS),
    ]
    log_path = temp_dir / "ray-start.log"
    with log_path.open("wb") as log:
        # A new session: the daemons `ray start` leaves behind share its process group.
        starter = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        head = LocalRay(temp_dir=str(temp_dir), pgid=starter.pid, ports=ports, token_file=str(token_file))
        try:
            code = starter.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_ray_head(head)  # what it started so far must not outlive the failure
            raise TimeoutError(f"`ray start` did not finish within {timeout_s:.0f}s; see {log_path}:\n"
                               f"{log_path.read_text()[-2000:]}") from None
    if code != 0:
        stop_ray_head(head)
        raise RuntimeError(f"`ray start` failed (exit {code}); see {log_path}:\n{log_path.read_text()[-2000:]}")
    try:
        wait_for_http(f"{head.jobs_url}/api/jobs/", {"Authorization": f"Bearer {head.token()}"}, timeout_s)
    except TimeoutError:
        stop_ray_head(head)
        raise
    return head


def wait_for_http(url: str, headers: dict[str, str] | None = None, timeout_s: float = 60,
                  alive: Callable[[], bool] | None = None) -> None:
    """Return once `url` answers 200; raise TimeoutError after `timeout_s`, RuntimeError as soon as
    `alive()` says the server's process has ended."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server behind {url} exited before it answered")
        try:
            response = httpx.get(url, headers=headers, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s ({last})")


def _cluster_processes(head: LocalRay) -> list[psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            in_group = os.getpgid(proc.pid) == head.pgid
            names_dir = any(head.temp_dir in part for part in proc.info["cmdline"] or ())
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        if (in_group or names_dir) and proc.pid != os.getpid():
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(found.values())


def ray_head_running(head: LocalRay) -> bool:
    """Whether the head's GCS still runs: then the cluster (and the jobs on it) is alive, even while its
    dashboard is slow to answer."""
    for proc in _cluster_processes(head):
        try:
            if proc.name() == "gcs_server" and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def listening_addresses(pids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """The (address, port) pairs each process listens on (TCP), for the checks and docs of what `up` opens."""
    out = {}
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        out[pid] = sorted((c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN)
    return out


def stop_ray_head(head: LocalRay, grace_s: float = 3) -> int:
    """Stop that cluster's processes (SIGTERM, then SIGKILL after `grace_s`); return how many there were."""
    procs = _cluster_processes(head)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def stop_process_group(pid: int, grace_s: float = 10) -> None:
    """Stop a process started in its own session (and everything in its group)."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not _group_running(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _group_running(pgid: int) -> bool:
    """Whether a process of the group still runs (an exited child its parent has not reaped does not)."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
