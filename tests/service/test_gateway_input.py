"""Client mistakes the gateway's models used to accept: each is a 4xx with a located problem (or an empty
page), never a 500, and nothing is stored from a refused request. A real uvicorn server, a real SQLite
database and real files; Ray is out of reach (jobs stay queued).

The gateway's log is watched (conftest.py): after the tests it must hold no unhandled exception.
"""

from __future__ import annotations

import json
import os
import threading

import httpx
import pytest

from prime_ray.pipeline.events import EventLog
from prime_ray.service.api.routes import jobs as app_module  # where create_job calls parse_spec_body
from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.states import JobState
from prime_ray.service.store import MAX_SEQ, encode_cursor

SPEC = {"name": "demo", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating"}}}
JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}


class Gateway:
    def __init__(self, url, app, key, root):
        self.url, self.app, self.root = url, app, root
        self.auth = {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(base_url=url, timeout=60)

    def post(self, body: bytes | str, headers: dict) -> httpx.Response:
        return self.http.post("/v1/jobs", content=body, headers={**self.auth, **headers})

    def job_count(self) -> int:
        return sum(self.app.state.store.counts_by_state().values())

    def create(self) -> dict:
        response = self.http.post("/v1/jobs", json=SPEC, headers=self.auth)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-input")
    settings = GatewaySettings(db_url=f"sqlite:///{root / 'gateway.db'}", artifact_root=str(root / "artifacts"),
                               ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=0.2)
    app = create_app(settings)
    _, key = create_key(app.state.store.sessions, "admin")
    with BackgroundServer(app, free_port()) as url:
        yield Gateway(url, app, key, root / "artifacts")


def _problems(response: httpx.Response) -> dict[str, str]:
    return {p["path"]: p["message"] for p in response.json()["problems"]}


def test_a_lone_surrogate_is_refused_before_anything_is_stored(gateway):
    before = gateway.job_count()
    body = json.dumps({**SPEC, "name": "a\ud800"})  # json.dumps writes it as the escape \ud800
    assert "\\ud800" in body
    response = gateway.post(body, JSON)
    assert response.status_code == 422, response.text
    assert _problems(response) == {"name": "not valid Unicode text (a lone surrogate)"}
    data = {**SPEC["data"], "source": {"format": "jsonl", "path": "users\udfff.jsonl"}}
    response = gateway.post(json.dumps({**SPEC, "data": data, "x\ud800": 1}), JSON)
    assert response.status_code == 422
    assert _problems(response) == {"data.source.path": "not valid Unicode text (a lone surrogate)",
                                   "x\\ud800": "key is not valid Unicode text (a lone surrogate)"}
    response = gateway.post('name: "a\\ud800"\n', YAML)  # the YAML escape gives the same string
    assert response.status_code == 422 and "name" in _problems(response)
    assert gateway.job_count() == before  # nothing stored
    listed = gateway.http.get("/v1/jobs", params={"limit": 500}, headers=gateway.auth)
    assert listed.status_code == 200


def test_non_finite_numbers_are_refused_over_rest(gateway):
    before = gateway.job_count()
    body = json.dumps({**SPEC, "data": {**SPEC["data"], "task": {"kind": "rating", "min": float("nan")}},
                       "traces": {"temperature": float("inf")}})
    assert "NaN" in body and "Infinity" in body
    response = gateway.post(body, JSON)
    assert response.status_code == 422
    assert _problems(response) == {"data.task.min": "must be a finite number",
                                   "traces.temperature": "must be a finite number"}
    yaml_body = ("name: nan\ndata:\n  source: {format: jsonl, path: u.jsonl}\n  task: {kind: rating, min: .nan}\n"
                 "train:\n  lambda: -.inf\n")
    response = gateway.post(yaml_body, YAML)
    assert response.status_code == 422
    assert _problems(response) == {"data.task.min": "must be a finite number", "train.lambda": "must be a finite number"}
    assert gateway.job_count() == before


def test_huge_integers_in_a_spec_are_refused(gateway):
    response = gateway.post(json.dumps({**SPEC, "seed": 10**30}), JSON)
    assert response.status_code == 422
    assert _problems(response) == {"seed": "out of range (integers must fit in 64 bits)"}
    response = gateway.post(json.dumps({**SPEC, "seed": 10**30}).replace(str(10**30), "9" * 5000), JSON)
    assert response.status_code == 422 and "cannot read the document" in response.text


def test_duplicate_keys_are_refused_in_json_and_yaml_bodies(gateway):
    body = '{"name": "a",\n "stages": ["ingest"],\n "name": "b",\n' + json.dumps({"data": SPEC["data"]})[1:]
    response = gateway.post(body, JSON)
    assert response.status_code == 422
    assert _problems(response) == {"name": "duplicate key (line 3, first on line 1)"}
    yaml_body = "name: a\ndata:\n  source: {format: jsonl, path: u.jsonl}\n  task: {kind: rating}\ntrain: {}\ntrain: {}\n"
    response = gateway.post(yaml_body, YAML)
    assert response.status_code == 422
    assert _problems(response) == {"train": "duplicate key (line 6, first on line 5)"}


def test_a_byte_order_mark_before_a_body_is_ignored(gateway):
    response = gateway.post(b"\xef\xbb\xbf" + json.dumps(SPEC).encode(), JSON)
    assert response.status_code == 201 and response.json()["name"] == "demo"


def test_a_list_cursor_beyond_the_job_sequence_is_a_422(gateway):
    huge = encode_cursor(10**30)  # what the API would write, for a number no row can have
    # the job sequence is a 32-bit integer (Postgres); the last cursor: 'seq:' and a non-ASCII digit
    for cursor in (huge, encode_cursor(2**63), encode_cursor(MAX_SEQ + 1), "c2VxOu-8kw"):
        response = gateway.http.get("/v1/jobs", params={"cursor": cursor}, headers=gateway.auth)
        assert response.status_code == 422, (cursor, response.text)
        assert list(_problems(response)) == ["query.cursor"]
    response = gateway.http.get("/v1/jobs", params={"cursor": encode_cursor(MAX_SEQ)}, headers=gateway.auth)
    assert response.status_code == 200  # the largest cursor is a page (of every job)


def test_an_events_cursor_beyond_64_bits_is_a_422_and_a_large_one_an_empty_page(gateway):
    job = gateway.create()
    EventLog(gateway.root / job["id"] / "events.jsonl").emit("job_started")
    url = f"/v1/jobs/{job['id']}/events"
    response = gateway.http.get(url, params={"cursor": 10**30}, headers=gateway.auth)
    assert response.status_code == 422 and list(_problems(response)) == ["query.cursor"]
    for cursor in (2**63 - 1, 2**62):
        response = gateway.http.get(url, params={"cursor": cursor}, headers=gateway.auth)
        assert response.status_code == 200, response.text
        assert response.json()["events"] == [] and response.json()["next_cursor"] == cursor


def test_a_last_event_id_beyond_64_bits_is_a_422_and_a_large_one_an_empty_stream(gateway):
    job = gateway.create()
    EventLog(gateway.root / job["id"] / "events.jsonl").emit("job_started")
    gateway.app.state.store.update(job["id"], state=JobState.cancelled)  # ended: the stream ends too
    stream = {**gateway.auth, "Accept": "text/event-stream"}
    url = f"/v1/jobs/{job['id']}/events"
    response = gateway.http.get(url, headers={**stream, "Last-Event-ID": str(10**30)})
    assert response.status_code == 422 and list(_problems(response)) == ["header.Last-Event-ID"]
    response = gateway.http.get(url, headers={**stream, "Last-Event-ID": str(2**63 - 1)})
    assert response.status_code == 200 and "event:" not in response.text
    response = gateway.http.get(url, headers={**stream, "Last-Event-ID": "0"})
    assert response.status_code == 200 and "event: job_started" in response.text


def test_a_symlink_loop_in_a_job_folder_is_skipped_by_the_listing(gateway):
    job = gateway.create()
    folder = gateway.root / job["id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text("{}")
    os.symlink("loop-b", folder / "loop-a")
    os.symlink("loop-a", folder / "loop-b")
    os.symlink(".", folder / "self")  # a folder that contains itself
    listed = gateway.http.get(f"/v1/jobs/{job['id']}/artifacts", headers=gateway.auth)
    assert listed.status_code == 200, listed.text
    assert [a["path"] for a in listed.json()["artifacts"]] == ["report.json"]
    for name in ("loop-a", "self/report.json", "self/self/loop-b"):
        assert gateway.http.get(f"/v1/jobs/{job['id']}/artifacts/{name}", headers=gateway.auth).status_code in (200, 404)
    assert gateway.http.get(f"/v1/jobs/{job['id']}/artifacts/loop-a", headers=gateway.auth).status_code == 404


def test_a_deep_yaml_body_is_refused_by_its_depth(gateway):
    body = "a: " + "[" * 8000 + "]" * 8000  # 16 KB, nested 8000 deep
    response = gateway.post(body, YAML)
    assert response.status_code == 422
    assert "nested deeper than 32 levels" in response.json()["problems"][0]["message"]
    response = gateway.post("[" * 8000 + "]" * 8000, JSON)
    assert response.status_code == 422


def test_healthz_answers_while_a_body_is_being_parsed(gateway, monkeypatch):
    """The parse is held until /healthz has answered: were it on the event loop, /healthz could not answer
    (the parse would give up waiting after a minute and `released` would say so)."""
    parsing, release, released = threading.Event(), threading.Event(), []
    real = app_module.parse_spec_body

    def held(content_type: str, body: bytes):
        parsing.set()
        released.append(release.wait(timeout=60))
        return real(content_type, body)

    monkeypatch.setattr(app_module, "parse_spec_body", held)
    answers: list[httpx.Response] = []
    poster = threading.Thread(target=lambda: answers.append(gateway.post("a: " + "[" * 8000 + "]" * 8000, YAML)))
    poster.start()
    try:
        assert parsing.wait(timeout=60)
        health = gateway.http.get("/healthz")
    finally:
        release.set()
        poster.join(timeout=120)
    assert health.status_code == 200 and released == [True]
    assert answers[0].status_code == 422
