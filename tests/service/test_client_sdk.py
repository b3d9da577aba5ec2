"""The SDK and the CLI verbs against a real gateway (uvicorn in a thread; Ray out of reach, jobs stay queued).

Typed errors, retries with backoff, idempotent submission, paging, downloads; and the `keys` commands.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import prime_ray.client as sdk
from prime_ray.cli import app as cli
from prime_ray.client import AuthError, GatewayError, JobFailed, NotFound, PrimeClient, SpecError
from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.states import JobState
from prime_ray.spec import parse_spec

SPEC = {"name": "sdk", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, module_db_url):
    root = tmp_path_factory.mktemp("sdk")
    settings = GatewaySettings(db_url=module_db_url, artifact_root=str(root / "artifacts"),
                               ray_address=f"http://127.0.0.1:{free_port()}")
    app = create_app(settings)
    _, admin = create_key(app.state.store.sessions, "admin")
    _, reader = create_key(app.state.store.sessions, "reader", read_only=True)
    with BackgroundServer(app, free_port()) as url:
        yield {"url": url, "admin": admin, "reader": reader, "app": app, "root": root, "db_url": settings.db_url}


@pytest.fixture
def client(gateway):
    with PrimeClient(gateway["url"], gateway["admin"], backoff_s=0.01) as c:
        yield c


def test_submit_a_dict_a_jobspec_or_a_file(client, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: from-file\nstages: [ingest]\ndata:\n  source: {format: jsonl, path: u.jsonl}\n  task: {kind: rating}\n")
    jobs = [client.submit(SPEC), client.submit(parse_spec(SPEC)), client.submit(path), client.submit(str(path))]
    assert [job.name for job in jobs] == ["sdk", "sdk", "from-file", "from-file"]
    assert len({job.id for job in jobs}) == 4 and all(job.state == "queued" for job in jobs)
    assert client.get(jobs[0].id).data["spec"]["name"] == jobs[0].id
    with pytest.raises(sdk._spec.SpecError, match="cannot read"):
        client.submit(tmp_path / "missing.yaml")


def test_resubmitting_with_the_same_idempotency_key_returns_the_same_job(client):
    first = client.submit(SPEC, idempotency_key="same")
    assert client.submit(SPEC, idempotency_key="same").id == first.id


def test_errors_are_typed(client, gateway):
    with pytest.raises(SpecError) as refused:
        client.submit({**SPEC, "train": {"lora": {"r": 0}}})
    assert [(p.path, p.message) for p in refused.value.problems] == [("train.lora.r", "must be > 0")]
    assert isinstance(refused.value, sdk._spec.SpecError) and refused.value.status == 422

    with pytest.raises(NotFound):
        client.get("job-000000000000")
    with PrimeClient(gateway["url"], "prk_bad_key") as stranger, pytest.raises(AuthError) as denied:
        stranger.list()
    assert denied.value.status == 401
    job = client.submit(SPEC)
    with PrimeClient(gateway["url"], gateway["reader"]) as reader:
        assert reader.get(job.id).id == job.id
        with pytest.raises(AuthError) as forbidden:
            reader.submit(SPEC)
        assert forbidden.value.status == 403
        with pytest.raises(AuthError):
            reader.get(job.id).cancel()


def test_connection_errors_are_retried_with_backoff_then_raised(monkeypatch):
    with PrimeClient(f"http://127.0.0.1:{free_port()}", "k", retries=3, backoff_s=0.01) as nowhere:
        with pytest.raises(GatewayError, match="cannot reach the gateway"):
            nowhere.list()
        assert nowhere._retrying.statistics["attempt_number"] == 3


def test_503_is_retried(client, gateway):
    job = client.submit(SPEC)
    gateway["app"].state.store.update(job.id, submitted=True)  # its logs now have to come from Ray, which is down
    before = _requests_of(client, "/v1/jobs/{job_id}/logs", "5xx")
    with pytest.raises(GatewayError) as unavailable:
        job.logs()
    assert unavailable.value.status == 503 and "Ray Jobs API" in unavailable.value.detail
    assert _requests_of(client, "/v1/jobs/{job_id}/logs", "5xx") - before == 5  # the default: 5 attempts


def _requests_of(client, handler, status):
    text = client.request("GET", "/metrics").text
    for line in text.splitlines():
        if line.startswith("http_requests_total{") and f'handler="{handler}"' in line and f'status="{status}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_list_follows_pages_and_filters(client, gateway):
    ids = [client.submit({**SPEC, "seed": i}).id for i in range(3)]
    assert [job.id for job in client.list(limit=3)] == ids[::-1]
    everything = client.list()
    assert len(everything) == len({job.id for job in everything}) >= 3
    gateway["app"].state.store.update(ids[0], state=JobState.running)
    assert [job.id for job in client.list(state="running")] == [ids[0]]


def test_wait_raises_job_failed_and_times_out(client, gateway):
    job = client.submit(SPEC)
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.3, poll_s=0.1)
    gateway["app"].state.store.update(job.id, state=JobState.failed, error="stage 'ingest' failed: boom")
    with pytest.raises(JobFailed, match="boom") as failed:
        job.wait(progress=False)
    assert failed.value.job.state == "failed"


def test_events_and_download(client, gateway, tmp_path):
    from prime_ray.pipeline.events import EventLog

    job = client.submit(SPEC)
    folder = gateway["root"] / "artifacts" / job.id
    log = EventLog(folder / "events.jsonl")
    log.emit("job_started", metrics={"stages": ["ingest"]})
    log.emit("stage_started", "ingest")
    (folder / "ingest").mkdir()
    (folder / "ingest" / "manifest.json").write_text('{"stage": "ingest"}')
    (folder / "a file with spaces #1.txt").write_text("spaces")
    assert [e.kind for e in job.events(follow=False)] == ["job_started", "stage_started"]
    cursor = list(job.events(follow=False))[-1].cursor
    log.emit("progress", "ingest", done=1, total=1)
    assert [e.kind for e in job.events(cursor=cursor, follow=False)] == ["progress"]

    written = job.download(tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "a file with spaces #1.txt", "events.jsonl", "ingest/manifest.json"]
    assert (tmp_path / "out" / "ingest" / "manifest.json").read_text() == '{"stage": "ingest"}'
    with pytest.raises(NotFound):
        job.download(tmp_path / "out2", paths=["eval/missing.json"])
    with pytest.raises(ValueError, match="leaves"):
        job.download(tmp_path / "out3", paths=["../../escape.txt"])


def test_cli_verbs(gateway, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIME_RAY_URL", gateway["url"])
    monkeypatch.setenv("PRIME_RAY_API_KEY", gateway["admin"])
    runner = CliRunner()
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    submitted = runner.invoke(cli, ["submit", str(spec)])
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()

    status = runner.invoke(cli, ["status", job_id, "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "queued"
    listed = runner.invoke(cli, ["list", "--state", "queued", "--limit", "500"])
    assert listed.exit_code == 0 and job_id in listed.stdout
    assert runner.invoke(cli, ["logs", job_id]).exit_code == 0
    (gateway["root"] / "artifacts" / job_id / "eval").mkdir(parents=True)
    (gateway["root"] / "artifacts" / job_id / "eval" / "report.json").write_text("{}")
    files = runner.invoke(cli, ["artifacts", "list", job_id])
    assert files.exit_code == 0 and "eval/report.json" in files.stdout
    got = runner.invoke(cli, ["artifacts", "download", job_id, "eval/report.json", "--dest", str(tmp_path / "d")])
    assert got.exit_code == 0 and (tmp_path / "d" / "eval" / "report.json").read_text() == "{}"
    cancelled = runner.invoke(cli, ["cancel", job_id])
    assert cancelled.exit_code == 0 and "cancel requested" in cancelled.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SPEC, "seed": "x"}))
    refused = runner.invoke(cli, ["submit", str(bad)])
    assert refused.exit_code == 2 and "seed" in refused.stderr
    denied = runner.invoke(cli, ["cancel", job_id, "--api-key", gateway["reader"]])
    assert denied.exit_code == 1 and "403" in denied.stderr
    missing = runner.invoke(cli, ["status", "job-000000000000"])
    assert missing.exit_code == 1 and "404" in missing.stderr


def test_keys_commands(db_url):
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--read-only", "--name", "ci", "--db-url", db_url])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    assert key.startswith("prk_") and key_id in created.stderr and "read-only" in created.stderr
    listed = runner.invoke(cli, ["keys", "list", "--db-url", db_url]).stdout
    assert key_id in listed and "ci" in listed and key.split("_")[2] not in listed
    assert runner.invoke(cli, ["keys", "revoke", key_id, "--db-url", db_url]).exit_code == 0
    again = runner.invoke(cli, ["keys", "revoke", key_id, "--db-url", db_url])
    assert again.exit_code == 1 and "no live key" in again.stderr


def test_the_sdk_imports_neither_ray_nor_torch():
    import subprocess
    import sys

    code = "import sys, prime_ray.client; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
