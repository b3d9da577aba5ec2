"""The gateway with a real Ray: `prime-ray up` (a local Ray head with the Jobs API, and the gateway in the
background), jobs submitted through the SDK, and `prime-ray down` at the end; once on SQLite and once
on PostgreSQL (`module_db_url`).

A job that must still be running at a given moment reads its data from a named pipe: its ingest stage
waits on the pipe until the test writes the data (or cancels the job), so no timing is guessed.

A full job (every stage) costs minutes on 2 cores: each database's stack runs one (`full_job`), which
the REST test and the console test both read.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import psutil
import pytest
from waiting import wait_until

from prime_ray.client import JobFailed, PrimeClient
from prime_ray.service.local import stop_process_group, wait_for_http

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "service" / "users.jsonl"


def _spec(data: Path, name: str = "tiny") -> dict:
    return {"name": name, "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
            "data": {"source": {"format": "jsonl", "path": str(data)}, "task": {"kind": "rating"}}}


class Stack:
    """What `prime-ray up` started, and a way to kill and restart its gateway as a crash would."""

    def __init__(self, home: Path, env: dict, url: str, key: str):
        self.home, self.env, self.url, self.key = home, env, url, key
        self.state = json.loads((home / "up.json").read_text())
        self.gateway_pid = self.state["gateway"]["pid"]
        self.restarted: subprocess.Popen | None = None

    def client(self) -> PrimeClient:
        return PrimeClient(self.url, self.key)

    def ray_jobs(self):
        from ray.job_submission import JobSubmissionClient

        token = Path(self.state["ray"]["token_file"]).read_text().strip()
        dashboard = f"http://127.0.0.1:{self.state['ray']['ports']['dashboard-port']}"
        return JobSubmissionClient(dashboard, headers={"Authorization": f"Bearer {token}"})

    def kill_gateway(self) -> None:
        os.killpg(self.gateway_pid, signal.SIGKILL)
        psutil.wait_procs([psutil.Process(self.gateway_pid)], timeout=10)

    def start_gateway(self) -> None:
        """The same gateway again: same database, artifacts, port and Ray."""
        port = self.url.rsplit(":", 1)[1]
        command = [sys.executable, "-m", "prime_ray", "gateway", "--host", "127.0.0.1", "--port", port,
                   "--db-url", self.state["db_url"], "--artifact-root", self.state["artifact_root"],
                   "--ray-address", f"http://127.0.0.1:{self.state['ray']['ports']['dashboard-port']}",
                   "--ray-token-file", self.state["ray"]["token_file"]]
        log = (self.home / "gateway-restarted.log").open("ab")
        self.restarted = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        self.gateway_pid = self.restarted.pid
        wait_for_http(f"{self.url}/healthz", timeout_s=120)


def _run_cli(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prime_ray", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def stack(module_db_url):
    home = Path(tempfile.mkdtemp(prefix="prg-", dir="/tmp"))  # short: Ray's socket paths live under it
    # A short lease: the restarted gateway (a new holder) takes the killed one's job over soon.
    env = {**os.environ, "PRIME_RAY_CACHE_DIR": str(home), "PRIME_RAY_POLL_INTERVAL_S": "0.3",
           "PRIME_RAY_LEASE_S": "3", "PRIME_RAY_DB_URL": module_db_url}
    for name in ("PRIME_RAY_ARTIFACT_ROOT", "PRIME_RAY_PORT", "RAY_ADDRESS"):
        env.pop(name, None)
    started = _run_cli(["up", "--port", "0"], env, timeout=300)
    stack = None
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        export = next(line for line in started.stdout.splitlines() if line.startswith("export "))
        values = dict(part.split("=", 1) for part in export.split()[1:])
        stack = Stack(home, env, values["PRIME_RAY_URL"], values["PRIME_RAY_API_KEY"])
        again = _run_cli(["up", "--port", "0"], env, timeout=120)
        assert again.returncode == 0 and "already running" in again.stdout and stack.url in again.stdout
        yield stack
    finally:
        if stack is not None and stack.restarted is not None:
            stop_process_group(stack.restarted.pid)
            stack.restarted.wait(timeout=30)
        stopped = _run_cli(["down"], env, timeout=120)
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or ())]
        shutil.rmtree(home, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert not (home / "up.json").exists() and leftovers == []



def _full_spec(data: Path) -> dict:
    """Every stage, as small as it gets: the tiny model, 6 users, one optimizer step, two eval modes."""
    return {
        "name": "full", "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": str(data)}, "task": {"kind": "rating", "min": 1, "max": 5},
                 "split": {"held_out_users": 0.2}, "max_history": 4, "max_train_examples_per_user": 1},
        "memory": {"profile": False, "top_k": 2},
        "generalist": {"max_batch_size": 16, "max_concurrency": 1, "num_cpus_per_replica": 1},
        "traces": {"samples_per_example": 1, "max_new_tokens": 8},
        "train": {"zero_stage": 2, "num_workers": 2, "num_cpus_per_worker": 1, "max_steps": 1, "micro_batch_size": 2,
                  "max_length": 128, "log_every_steps": 1, "checkpoint_every_steps": 1},
        "eval": {"modes": ["generalist-direct", "prime-direct"], "max_new_tokens": 8, "bootstrap_samples": 0,
                 "sample_traces_per_mode": 1},
    }


@pytest.fixture(scope="module")
def full_job(stack, tmp_path_factory) -> str:
    """The id of one full job submitted through the SDK and finished (JobFailed if it did not succeed)."""
    data = tmp_path_factory.mktemp("full-job") / "users.jsonl"
    shutil.copy(FIXTURE, data)
    with stack.client() as client:
        return client.submit(_full_spec(data)).wait(timeout=480, progress=False, poll_s=0.3).id


def _feed(pipe: Path, timeout: float = 120) -> None:
    """Write the users into a job's named pipe once the job has it open for reading (so it still runs)."""

    def writer() -> int | None:
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    fd = wait_until(writer, timeout=timeout, every=0.2)
    try:
        os.set_blocking(fd, True)
        os.write(fd, FIXTURE.read_bytes())
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_full_job_succeeds_with_stage_progress_events_logs_and_its_report(stack, full_job, tmp_path):
    with stack.client() as client:
        job = client.get(full_job)
        assert job.state == "succeeded" and job.stage is None and job.error is None
        assert list(job.progress) == ["ingest", "memory", "traces", "train", "eval"]
        for stage, entry in job.progress.items():
            assert entry["state"] == "finished", stage
            assert entry["total"] is None or entry["done"] == entry["total"] > 0, (stage, entry)
        assert job.metrics["ingest"]["users"] == 6 and job.metrics["train"]["steps"] == 1

        kinds = [event.kind for event in job.events()]
        assert kinds[0] == "job_started" and kinds[-1] == "job_finished" and kinds.count("stage_finished") == 5
        with httpx.stream("GET", f"{stack.url}/v1/jobs/{job.id}/events", timeout=30,
                          headers={"Authorization": f"Bearer {stack.key}", "Accept": "text/event-stream"}) as sse:
            streamed = [line.split(":", 1)[1].strip() for line in sse.iter_lines() if line.startswith("event:")]
        assert streamed == kinds  # the stream ends by itself: the job has ended

        assert f"job {job.id}" in job.logs()
        paths = {item["path"] for item in job.artifacts()}
        assert {"spec.json", "events.jsonl", "ingest/examples.parquet", "memory/memory.parquet",
                "traces/traces.parquet", "eval/report.json", "eval/report.md"} <= paths
        written = job.download(tmp_path / "got", paths=["eval/report.json", "ingest/examples.parquet"])
        job_dir = Path(stack.state["artifact_root"]) / job.id
        for path in written:
            assert path.read_bytes() == (job_dir / path.relative_to(tmp_path / "got")).read_bytes()
        report = json.loads((tmp_path / "got" / "eval" / "report.json").read_text())
        assert report["modes"] == ["generalist-direct", "prime-direct"]


def test_a_running_job_is_cancelled_through_ray(stack, tmp_path):
    data = tmp_path / "users.jsonl"
    os.mkfifo(data)  # nothing is ever written: ingest waits until the job is stopped
    with stack.client() as client:
        job = client.submit(_spec(data))
        wait_until(lambda: job.refresh().state == "running" and job.stage == "ingest", timeout=120)
        assert job.cancel().cancel_requested
        with pytest.raises(JobFailed, match="cancelled"):
            job.wait(timeout=120, progress=False)
        assert job.state == "cancelled" and job.progress["ingest"]["state"] == "cancelled"
        assert "job_cancelled" in [event.kind for event in job.events()]  # the runner saw the stop
    assert stack.ray_jobs().get_job_status(f"prime-ray-{job.id}").value == "STOPPED"


def test_a_killed_gateway_is_restarted_and_follows_the_job_to_its_end(stack, tmp_path):
    data = tmp_path / "users.jsonl"
    os.mkfifo(data)
    with stack.client() as client:
        job = client.submit(_spec(data, name="survivor"))
        wait_until(lambda: job.refresh().state == "running" and job.stage == "ingest", timeout=120)

    stack.kill_gateway()
    ray_jobs = stack.ray_jobs()
    assert ray_jobs.get_job_status(f"prime-ray-{job.id}").value == "RUNNING"
    stack.start_gateway()

    # Opening the write end without blocking succeeds only while the job is there reading: it still runs.
    fd = os.open(data, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, FIXTURE.read_bytes())
    finally:
        os.close(fd)
    with stack.client() as client:
        job = client.get(job.id).wait(timeout=180, progress=False)
        assert job.state == "succeeded" and job.progress["ingest"]["state"] == "finished"
        assert job.metrics["ingest"]["users"] == 6
        kinds = [event.kind for event in job.events()]
    assert kinds[0] == "job_started" and kinds[-1] == "job_finished"  # nothing from before the crash is lost
    submissions = [j for j in ray_jobs.list_jobs() if (j.metadata or {}).get("prime_ray_job") == job.id]
    assert [j.submission_id for j in submissions] == [f"prime-ray-{job.id}"]  # submitted once


def test_up_refuses_a_taken_port_before_starting_anything(tmp_path, monkeypatch):
    import socket

    from typer.testing import CliRunner

    from prime_ray.cli import app as cli

    monkeypatch.setenv("PRIME_RAY_CACHE_DIR", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["up", "--port", str(port)])
    assert result.exit_code == 1 and f"port {port} is taken" in result.stderr
    assert not (tmp_path / "up.json").exists() and not (tmp_path / "ray-up").exists()


SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"


@pytest.mark.slow
def test_the_console_in_chromium_submits_a_job_watches_it_succeed_and_shows_its_report(stack, full_job, tmp_path):
    """Debian's Chromium (installed by `make test`) driven by Playwright; screenshots in test-artifacts/console/.

    The job submitted here reads a named pipe: the page is seen running, then follows the job to its end
    once the test writes the data. The report is that of the module's full job."""
    import yaml
    from playwright.sync_api import sync_playwright

    data = tmp_path / "users.jsonl"
    os.mkfifo(data)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{stack.url}/submit")
            assert "/login" in page.url
            page.fill("#api_key", stack.key)
            page.click("button:has-text('Log in')")
            page.wait_for_url(f"{stack.url}/submit")

            page.fill("#spec", yaml.safe_dump(_spec(data, name="console"), sort_keys=False))
            page.click("button:has-text('Check')")
            page.wait_for_selector("#valid")
            page.click("button:has-text('Submit')")
            page.wait_for_url(re.compile(r".*/jobs/job-[0-9a-f]+$"))
            job_id = page.url.rsplit("/", 1)[1]

            # The page follows the job over server-sent events and reloads itself when a stage starts or ends,
            # and once more when the job's stream ends.
            page.wait_for_selector("tr[data-stage='ingest'] .state.running", timeout=120_000)
            page.screenshot(path=str(SCREENSHOTS / "job-running.png"), full_page=True)
            _feed(data)
            page.wait_for_selector("#job-state.succeeded", timeout=120_000)
            assert page.locator("tr[data-stage] .state.finished").count() == 1

            page.goto(f"{stack.url}/jobs/{full_job}")
            assert page.locator("#job-state.succeeded").count() == 1
            assert page.locator("tr[data-stage] .state.finished").count() == 5
            assert page.locator("#report .markdown table").count() >= 1
            assert "generalist-direct" in page.inner_text("#report")
            assert page.evaluate("document.querySelector('img.chart').naturalWidth") > 0
            page.screenshot(path=str(SCREENSHOTS / "job-report.png"), full_page=True)

            page.goto(f"{stack.url}/")
            for shown in (job_id, full_job):
                row = page.locator(f"tr:has(a[href='/jobs/{shown}'])")
                assert row.locator(".state").inner_text() == "succeeded"
            page.screenshot(path=str(SCREENSHOTS / "jobs.png"), full_page=True)
        finally:
            browser.close()
