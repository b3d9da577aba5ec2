"""The gateway's REST API on a real uvicorn server, with Ray out of reach (jobs stay queued).

Security (keys, read-only keys, body limit, artifact confinement) and client mistakes: every one is
a 4xx with a useful body, never a 500.
"""

from __future__ import annotations

import http.client
import json
import re
from urllib.parse import urlsplit

import httpx
import pytest

from prime_ray.pipeline.events import EventLog
from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key, revoke_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings

SPEC = {"name": "demo", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}


class Gateway:
    def __init__(self, url, app, admin, reader, revoked, root):
        self.url, self.app, self.root = url, app, root
        self.admin = {"Authorization": f"Bearer {admin}"}
        self.reader = {"Authorization": f"Bearer {reader}"}
        self.revoked = {"Authorization": f"Bearer {revoked}"}
        self.http = httpx.Client(base_url=url, timeout=10)

    def create(self, **headers):
        response = self.http.post("/v1/jobs", json=SPEC, headers={**self.admin, **headers})
        assert response.status_code in (200, 201), response.text
        return response.json()

    def raw_get(self, path, headers):
        """A GET sent byte for byte (httpx would normalize `../` away before sending)."""
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, module_db_url):
    root = tmp_path_factory.mktemp("gateway")
    settings = GatewaySettings(
        db_url=module_db_url, artifact_root=str(root / "artifacts"),
        ray_address=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        max_body_bytes=64 * 1024, poll_interval_s=0.2,
    )
    app = create_app(settings)
    sessions = app.state.store.sessions
    _, admin = create_key(sessions, "admin")
    _, reader = create_key(sessions, "reader", read_only=True)
    revoked_row, revoked = create_key(sessions, "old")
    revoke_key(sessions, revoked_row.id)
    with BackgroundServer(app, free_port()) as url:
        yield Gateway(url, app, admin, reader, revoked, root / "artifacts")


ROUTES = [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/job-x"), ("POST", "/v1/jobs/job-x/cancel"),
          ("GET", "/v1/jobs/job-x/events"), ("GET", "/v1/jobs/job-x/logs"), ("GET", "/v1/jobs/job-x/artifacts"),
          ("GET", "/v1/jobs/job-x/artifacts/spec.json"), ("GET", "/readyz"), ("GET", "/metrics"),
          ("POST", "/v1/jobs/job-x/deployment"), ("GET", "/v1/jobs/job-x/deployment"),
          ("DELETE", "/v1/jobs/job-x/deployment"), ("POST", "/v1/jobs/job-x/predict"),
          ("POST", "/v1/jobs/job-x/users/u1/history"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_every_route_but_healthz_needs_a_live_key(gateway, method, path):
    for headers in ({}, {"Authorization": "Bearer prk_nope_nope"}, {"Authorization": "Basic YTpi"}, gateway.revoked):
        response = gateway.http.request(method, path, headers=headers, json=SPEC if method == "POST" else None)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer" and "API key" in response.json()["detail"]
    assert gateway.http.get("/healthz").json() == {"status": "ok"}


def test_read_only_key_reads_but_cannot_create_or_cancel(gateway):
    job = gateway.create()
    assert gateway.http.post("/v1/jobs", json=SPEC, headers=gateway.reader).status_code == 403
    response = gateway.http.post(f"/v1/jobs/{job['id']}/cancel", headers=gateway.reader)
    assert response.status_code == 403 and "read-only" in response.json()["detail"]
    assert gateway.http.get(f"/v1/jobs/{job['id']}", headers=gateway.reader).json()["cancel_requested"] is False


def test_a_created_job_waits_queued_while_ray_is_unreachable(gateway):
    job = gateway.create()
    assert job["state"] == "queued" and job["spec"]["name"] == job["id"] and job["name"] == "demo"
    ready = gateway.http.get("/readyz", headers=gateway.admin)
    assert ready.status_code == 503
    assert ready.json()["database"] == "ok" and "cannot reach the Ray Jobs API" in ready.json()["ray"]
    metrics = gateway.http.get("/metrics", headers=gateway.admin).text
    queued = gateway.http.get("/v1/jobs", params={"state": "queued", "limit": 500}, headers=gateway.admin).json()
    assert f'prime_ray_jobs{{state="queued"}} {len(queued["jobs"])}.0' in metrics


def test_invalid_specs_get_every_problem_by_path(gateway):
    bad = {**SPEC, "name": "no spaces allowed", "train": {"lora": {"r": 0}, "learning_rate": -1}, "typo": 1}
    del bad["data"]
    response = gateway.http.post("/v1/jobs", json=bad, headers=gateway.admin)
    assert response.status_code == 422
    problems = {p["path"]: p["message"] for p in response.json()["problems"]}
    assert problems["train.lora.r"] == "must be > 0" and problems["train.learning_rate"] == "must be > 0.0"
    assert problems["data"] == "field required" and problems["typo"] == "unknown field" and "name" in problems

    cases = [
        (b'{"name": ', "application/json", 422, "not valid JSON (line 1"),
        (b"[1, 2]", "application/json", 422, "a spec is a mapping"),
        (b"", "application/json", 422, "empty"),
        (b'{"name": "\xff"}', "application/json", 422, "cannot read the body"),
        (b"[" * 100_000, "application/json", 413, "larger than"),
        (b"a: &x [1]\nb: *x\n", "application/yaml", 422, "aliases"),
        (b"name: x\n", "text/plain", 415, "application/json or application/yaml"),
        (b"name=x", "application/x-www-form-urlencoded", 415, "application/json"),
    ]
    for body, content_type, status, text in cases:
        response = gateway.http.post("/v1/jobs", content=body, headers={**gateway.admin, "Content-Type": content_type})
        assert response.status_code == status and text in response.text, (body[:20], response.text)


def test_a_yaml_spec_is_accepted(gateway):
    body = "name: from-yaml\nstages: [ingest]\ndata:\n  source: {format: jsonl, path: u.jsonl}\n  task: {kind: rating}\n"
    response = gateway.http.post("/v1/jobs", content=body, headers={**gateway.admin, "Content-Type": "application/yaml"})
    assert response.status_code == 201 and response.json()["name"] == "from-yaml"
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"


def test_oversized_bodies_get_413_before_they_are_read(gateway):
    big = json.dumps({**SPEC, "padding": "x" * 70_000}).encode()
    response = gateway.http.post("/v1/jobs", content=big, headers={**gateway.admin, "Content-Type": "application/json"})
    assert response.status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 8192

    response = gateway.http.post("/v1/jobs", content=chunks(), headers={**gateway.admin, "Content-Type": "application/json"})
    assert response.status_code == 413 and "larger than 65536 bytes" in response.json()["detail"]


def test_idempotency_key_returns_the_same_job(gateway):
    first = gateway.http.post("/v1/jobs", json=SPEC, headers={**gateway.admin, "Idempotency-Key": "k-1"})
    again = gateway.http.post("/v1/jobs", json=SPEC, headers={**gateway.admin, "Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (201, 200) and first.json()["id"] == again.json()["id"]
    changed = gateway.http.post("/v1/jobs", json={**SPEC, "seed": 9}, headers={**gateway.admin, "Idempotency-Key": "k-1"})
    assert changed.status_code == 409 and first.json()["id"] in changed.json()["detail"]
    too_long = gateway.http.post("/v1/jobs", json=SPEC, headers={**gateway.admin, "Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and too_long.json()["problems"][0]["path"] == "header.Idempotency-Key"


def test_list_pages_with_a_cursor_and_rejects_bad_queries(gateway):
    created = [gateway.create()["id"] for _ in range(3)]
    seen, cursor = [], None
    while True:
        page = gateway.http.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})},
                                headers=gateway.admin).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:3] == created[::-1] and len(seen) == len(set(seen))
    for params, path in (({"cursor": "bm90LWEtY3Vyc29y"}, "query.cursor"), ({"limit": 0}, "query.limit"),
                         ({"limit": "ten"}, "query.limit"), ({"state": "sleeping"}, "query.state")):
        response = gateway.http.get("/v1/jobs", params=params, headers=gateway.admin)
        assert response.status_code == 422 and response.json()["problems"][0]["path"] == path


@pytest.mark.parametrize("method,suffix", [("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/logs"),
                                           ("GET", "/artifacts"), ("GET", "/artifacts/spec.json")])
def test_unknown_jobs_are_404(gateway, method, suffix):
    for job_id in ("job-000000000000", "x" * 300, "%00", "..", "%2e%2e"):
        status, body = gateway.raw_get(f"/v1/jobs/{job_id}{suffix}", gateway.admin) if method == "GET" else (
            gateway.http.post(f"/v1/jobs/{job_id}{suffix}", headers=gateway.admin).status_code, b"")
        assert status == 404, (job_id, suffix, body)


def test_cancelling_twice_is_fine_and_an_ended_job_is_409(gateway):
    job = gateway.create()
    for _ in range(2):
        response = gateway.http.post(f"/v1/jobs/{job['id']}/cancel", headers=gateway.admin)
        assert response.status_code == 202 and response.json()["cancel_requested"]
    from prime_ray.service.states import JobState

    gateway.app.state.store.update(job["id"], state=JobState.cancelled)
    response = gateway.http.post(f"/v1/jobs/{job['id']}/cancel", headers=gateway.admin)
    assert response.status_code == 409 and "already ended (cancelled)" in response.json()["detail"]


def test_events_page_from_a_cursor(gateway):
    job = gateway.create()
    log = EventLog(gateway.root / job["id"] / "events.jsonl")
    log.emit("job_started", metrics={"stages": ["ingest"]})
    log.emit("stage_started", "ingest")
    url = f"/v1/jobs/{job['id']}/events"
    page = gateway.http.get(url, params={"cursor": 0}, headers=gateway.admin).json()
    assert [e["kind"] for e in page["events"]] == ["job_started", "stage_started"] and not page["finished"]
    log.emit("progress", "ingest", done=1, total=2)
    later = gateway.http.get(url, params={"cursor": page["next_cursor"]}, headers=gateway.admin).json()
    assert [e["kind"] for e in later["events"]] == ["progress"] and later["events"][0]["done"] == 1
    beyond = gateway.http.get(url, params={"cursor": 10**9}, headers=gateway.admin).json()
    assert beyond["events"] == [] and beyond["next_cursor"] == 10**9
    for bad in ("-1", "abc", "1.5"):
        response = gateway.http.get(url, params={"cursor": bad}, headers=gateway.admin)
        assert response.status_code == 422 and response.json()["problems"][0]["path"] == "query.cursor"


def test_artifacts_are_confined_to_their_job(gateway, tmp_path):
    mine, other = gateway.create(), gateway.create()
    mine_dir, other_dir = gateway.root / mine["id"], gateway.root / other["id"]
    (mine_dir / "eval").mkdir(parents=True)
    (mine_dir / "eval" / "report.json").write_text('{"ok": true}')
    other_dir.mkdir(parents=True)
    (other_dir / "secret.txt").write_text("other job's")
    (gateway.root / "gateway-secret.txt").write_text("not an artifact")
    (mine_dir / "link-out").symlink_to(other_dir / "secret.txt")

    listed = gateway.http.get(f"/v1/jobs/{mine['id']}/artifacts", headers=gateway.admin).json()
    assert [a["path"] for a in listed["artifacts"]] == ["eval/report.json"]  # the link out is not listed
    ok = gateway.http.get(f"/v1/jobs/{mine['id']}/artifacts/eval/report.json", headers=gateway.admin)
    assert ok.status_code == 200 and ok.json() == {"ok": True}

    base = f"/v1/jobs/{mine['id']}/artifacts/"
    attempts = [
        f"../{other['id']}/secret.txt", f"eval/../../{other['id']}/secret.txt", "../gateway-secret.txt",
        "../../gateway.db", f"%2e%2e/{other['id']}/secret.txt", f"%2e%2e%2f{other['id']}%2fsecret.txt",
        "..%2f..%2fgateway.db", "%2E%2E/gateway-secret.txt", "/etc/passwd", "%2fetc%2fpasswd",
        f"{other_dir}/secret.txt", "link-out", "eval", "eval/missing.json", "%00", "a" * 5000,
    ]
    for attempt in attempts:
        status, body = gateway.raw_get(base + attempt, gateway.admin)
        assert status == 404, (attempt, body[:200])
        assert b"other job's" not in body and b"not an artifact" not in body
    status, _ = gateway.raw_get(f"/v1/jobs/{other['id']}/artifacts/secret.txt", gateway.admin)
    assert status == 200  # the file is served, by its own job only


def test_the_openapi_document_describes_every_route(gateway):
    document = gateway.http.get("/openapi.json").json()  # no key: the document holds no secrets
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/logs", "/v1/jobs/{job_id}/artifacts", "/v1/jobs/{job_id}/artifacts/{path}",
            "/healthz", "/readyz", "/metrics"} <= set(document["paths"])
    create = document["paths"]["/v1/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["example"]["name"] == "movielens-rating"
    assert {"201", "200", "401", "403", "409", "413", "415", "422"} <= set(create["responses"])
    assert "examples" in document["components"]["schemas"]["JobOut"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_every_operation_has_a_short_explicit_id_and_the_docs_page_needs_no_cdn(gateway):
    document = gateway.http.get("/openapi.json").json()
    ids = {operation["operationId"] for path in document["paths"].values() for operation in path.values()}
    assert {"createJob", "listJobs", "getJob", "cancelJob", "listArtifacts", "downloadArtifact", "jobEvents",
            "jobLogs", "deployJob", "getDeployment", "undeployJob", "predict", "appendHistory", "chatCompletions",
            "listModels", "healthz", "readyz", "metrics"} == ids
    page = gateway.http.get("/docs")
    assert page.status_code == 200 and "/openapi.json" in page.text
    assets = re.findall(r'(?:href|src)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/docs/assets/") for a in assets), assets  # nothing from another host
    for asset in assets:
        response = gateway.http.get(asset)
        assert response.status_code == 200 and len(response.content) > 500, asset


def test_student_routes_refuse_what_cannot_be_served_with_the_reason(gateway):
    job = gateway.create()  # stays queued: no Ray behind this gateway
    admin, reader = gateway.admin, gateway.reader
    ask = {"user_id": "u1", "input": "Heat (1995)"}
    for method, path, body in (("POST", f"/v1/jobs/{job['id']}/predict", ask),
                               ("POST", f"/v1/jobs/{job['id']}/deployment", None),
                               ("POST", f"/v1/jobs/{job['id']}/users/u1/history", {"items": [{"input": "x", "output": "1"}]})):
        response = gateway.http.request(method, path, json=body, headers=admin)
        assert response.status_code == 409, path
        assert response.json()["detail"] == f"job {job['id']} is queued: only a succeeded job's student can be served"
    assert gateway.http.post(f"/v1/jobs/{job['id']}/deployment", headers=reader).status_code == 403
    missing = gateway.http.post("/v1/jobs/job-nope/predict", json=ask, headers=admin)
    assert missing.status_code == 404 and missing.json()["detail"] == "no job 'job-nope'"
    none = gateway.http.get(f"/v1/jobs/{job['id']}/deployment", headers=admin)
    assert none.status_code == 404 and "has no deployment" in none.json()["detail"]
    assert gateway.http.delete(f"/v1/jobs/{job['id']}/deployment", headers=admin).status_code == 404
    assert gateway.http.get(f"/v1/jobs/{job['id']}", headers=admin).json()["deployment"] is None

    chat = {"model": f"{job['id']}/prime", "user": "u1", "messages": [{"role": "user", "content": "Heat (1995)"}]}
    assert gateway.http.post("/v1/chat/completions", json=chat, headers=admin).status_code == 409
    unknown = gateway.http.post("/v1/chat/completions", json={**chat, "model": "job-nope/prime"}, headers=admin)
    assert unknown.status_code == 404 and "no job 'job-nope'" in unknown.json()["detail"]
    # OpenAI clients read `error.message`: the same words.
    assert unknown.json()["error"] == {"message": unknown.json()["detail"], "type": "invalid_request_error",
                                       "param": None, "code": 404}
    no_user = gateway.http.post("/v1/chat/completions", json={**chat, "user": None}, headers=admin)
    assert no_user.status_code == 422 and no_user.json()["problems"][0]["path"] == "body.user"
    stream = gateway.http.post("/v1/chat/completions", json={**chat, "stream": True}, headers=admin)
    assert stream.status_code == 422 and stream.json()["problems"][0]["path"] == "body.stream"
    assert gateway.http.get("/v1/models", headers=reader).json() == {"object": "list", "data": []}
