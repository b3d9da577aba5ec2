"""The web console over HTTP on a real uvicorn server (Ray out of reach: jobs stay queued).

Login and sessions, CSRF, read-only keys, spec validation shown at its path, job pages with a rendered
report, and confinement of the files it serves. The browser test (test_console_browser.py) drives the
same pages in Chromium against a real Ray.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import pytest

from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key, revoke_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings

SPEC_YAML = """\
name: console-demo
model: {name_or_path: tiny-test}
stages: [ingest]
data:
  source: {format: jsonl, path: users.jsonl}
  task: {kind: rating}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, module_db_url):
    root = tmp_path_factory.mktemp("console")
    settings = GatewaySettings(db_url=module_db_url, artifact_root=str(root / "artifacts"),
                               ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=0.2)
    app = create_app(settings)
    sessions = app.state.store.sessions
    keys = {"admin": create_key(sessions, "admin")[1], "reader": create_key(sessions, "reader", read_only=True)[1]}
    with BackgroundServer(app, free_port()) as url:
        yield url, app, keys, root / "artifacts"


@contextlib.contextmanager
def _login(url: str, key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/login", data={"api_key": key, "next": "/"})
        assert response.status_code == 303 and response.headers["location"] == "/", response.text
        yield client


def _csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_pages_need_a_login_and_a_bad_key_is_refused(gateway):
    url, _, _, _ = gateway
    with httpx.Client(base_url=url, timeout=10) as anonymous:
        for path in ("/", "/submit", "/jobs/job-x", "/jobs/job-x/files/spec.json"):
            response = anonymous.get(path)
            assert response.status_code == 303 and response.headers["location"] == f"/login?next={path}"
        refused = anonymous.post("/login", data={"api_key": "prk_nope_nope"})
        assert refused.status_code == 401 and "not a live API key" in refused.text
        assert "prime_ray_session" not in refused.cookies


def test_login_sets_an_http_only_session_cookie_and_never_leaves_the_site(gateway):
    url, _, keys, _ = gateway
    with httpx.Client(base_url=url, timeout=10) as client:
        response = client.post("/login", data={"api_key": keys["admin"], "next": "//evil.example/x"})
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "prime_ray_session=" in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert keys["admin"] not in cookie  # the session holds the key's id, not the key
        assert "Jobs" in client.get("/").text


def test_a_spec_with_problems_is_shown_at_its_paths_and_nothing_is_created(gateway):
    url, app, keys, _ = gateway
    with _login(url, keys["admin"]) as client:
        csrf = _csrf(client.get("/submit").text)
        before = app.state.store.counts_by_state()
        bad = SPEC_YAML.replace("{kind: rating}", "{kind: rating}\ntrain: {lora: {r: 0}, bogus: 1}")
        response = client.post("/submit", data={"spec": bad, "csrf": csrf, "action": "submit"})
        assert response.status_code == 422
        assert "<code>train.lora.r</code>" in response.text and "<code>train.bogus</code>" in response.text
        assert app.state.store.counts_by_state() == before
        unreadable = client.post("/submit", data={"spec": "a: [1,", "csrf": csrf, "action": "check"})
        assert unreadable.status_code == 422 and 'id="problems"' in unreadable.text
        checked = client.post("/submit", data={"spec": SPEC_YAML, "csrf": csrf, "action": "check"})
        assert checked.status_code == 200 and "The spec is valid." in checked.text
        assert app.state.store.counts_by_state() == before


def test_submit_creates_a_job_and_its_page_lists_stages_and_renders_the_report(gateway):
    url, app, keys, artifacts = gateway
    with _login(url, keys["admin"]) as client:
        csrf = _csrf(client.get("/submit").text)
        response = client.post("/submit", data={"spec": SPEC_YAML, "csrf": csrf, "action": "submit"})
        assert response.status_code == 303
        job_id = response.headers["location"].rsplit("/", 1)[1]
        row = app.state.store.get(job_id)
        assert row.name == "console-demo" and row.state == "queued"

        listing = client.get("/").text
        assert f'href="/jobs/{job_id}"' in listing and "console-demo" in listing
        assert job_id in client.get("/", params={"state": "queued"}).text
        assert job_id not in client.get("/", params={"state": "succeeded"}).text

        # The report is written by the eval stage; here the files are put in place to test the page alone.
        report = artifacts / job_id / "eval"
        report.mkdir(parents=True)
        (report / "report.md").write_text("# Report\n\n| mode | MAE |\n|---|---|\n| prime | 0.9 |\n\n<script>alert(1)</script>\n")
        (report / "report.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        page = client.get(f"/jobs/{job_id}").text
        assert "<table>" in page and "<td>prime</td>" in page and "<td>0.9</td>" in page
        assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert f'src="/jobs/{job_id}/files/eval/report.png"' in page
        assert 'data-stage="ingest"' in page and "Cancel" in page
        png = client.get(f"/jobs/{job_id}/files/eval/report.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        markdown = client.get(f"/jobs/{job_id}/files/eval/report.md")
        assert markdown.headers["content-disposition"].startswith("attachment")
        for escape in ("../../gateway.db", "%2e%2e/%2e%2e/gateway.db", "/etc/passwd"):
            assert client.get(f"/jobs/{job_id}/files/{escape}").status_code == 404

        cancelled = client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf})
        assert cancelled.status_code == 303 and app.state.store.get(job_id).cancel_requested


def test_forms_without_the_session_csrf_token_are_refused(gateway):
    url, app, keys, _ = gateway
    with _login(url, keys["admin"]) as client:
        before = app.state.store.counts_by_state()
        for token in ("", "forged"):
            response = client.post("/submit", data={"spec": SPEC_YAML, "csrf": token, "action": "submit"})
            assert response.status_code in (403, 422)
        assert client.post("/submit", data={"spec": SPEC_YAML, "action": "submit"}).status_code == 422
        assert app.state.store.counts_by_state() == before
    with _login(url, keys["admin"]) as other:  # another session's token is not this one's
        stolen = _csrf(other.get("/submit").text)
    with _login(url, keys["admin"]) as client:
        assert client.post("/submit", data={"spec": SPEC_YAML, "csrf": stolen}).status_code == 403


def test_a_read_only_key_sees_no_submit_or_cancel_and_cannot_post(gateway):
    url, app, keys, _ = gateway
    row, _ = app.state.store.create(*_parsed(), None)
    with _login(url, keys["reader"]) as client:
        home = client.get("/").text
        assert "(read-only)" in home and 'href="/submit"' not in home
        assert "Cancel" not in client.get(f"/jobs/{row.id}").text
        csrf = _csrf(home)
        assert client.post("/submit", data={"spec": SPEC_YAML, "csrf": csrf}).status_code == 403
        assert client.post(f"/jobs/{row.id}/cancel", data={"csrf": csrf}).status_code == 403
        assert not app.state.store.get(row.id).cancel_requested


def test_revoking_a_key_ends_its_console_sessions(gateway):
    url, app, _, _ = gateway
    key_row, key = create_key(app.state.store.sessions, "short-lived")
    with _login(url, key) as client:
        assert client.get("/").status_code == 200
        revoke_key(app.state.store.sessions, key_row.id)
        assert client.get("/").status_code == 303


def _parsed():
    import yaml

    from prime_ray.spec import parse_spec

    return (parse_spec(yaml.safe_load(SPEC_YAML)),)


def test_a_succeeded_job_offers_its_student_and_says_why_it_cannot_answer_yet(gateway):
    """Without a deployment the student cannot answer (409 from the same code as the REST predict), and
    deploying needs Ray, which is out of reach here (503): both shown on the page, not as a crash."""
    from prime_ray.service.states import JobState

    url, app, keys, _ = gateway
    row, _ = app.state.store.create(*_parsed(), None)
    app.state.store.update(row.id, state=JobState.running)
    app.state.store.update(row.id, state=JobState.succeeded)
    with _login(url, keys["admin"]) as client:
        page = client.get(f"/jobs/{row.id}").text
        assert 'id="student"' in page and "Deploy the student" in page
        csrf = _csrf(page)
        asked = client.post(f"/jobs/{row.id}/ask", data={"csrf": csrf, "user_id": "u17", "input": "Heat (1995)"})
        assert asked.status_code == 409 and 'id="ask-error"' in asked.text and "not deployed" in asked.text
        assert 'value="Heat (1995)"' in asked.text  # the question stays in the form
        deployed = client.post(f"/jobs/{row.id}/deploy", data={"csrf": csrf})
        assert deployed.status_code == 503 and "Ray cannot take the request" in deployed.text
    with _login(url, keys["reader"]) as client:
        page = client.get(f"/jobs/{row.id}").text
        assert 'id="student"' in page and "Deploy the student" not in page
        assert client.post(f"/jobs/{row.id}/deploy", data={"csrf": _csrf(page)}).status_code == 403


def _streamed(client: httpx.Client, job_id: str, cursor: int) -> list[str]:
    with client.stream("GET", f"/jobs/{job_id}/stream", params={"cursor": cursor}) as response:
        assert response.status_code == 200
        return [line.split(":", 1)[1].strip() for line in response.iter_lines() if line.startswith("event:")]


def test_a_job_page_follows_only_the_events_its_job_record_shows(gateway):
    """The page reloads on a stage's event to show that stage's new state, which the follower writes into
    the job's record after the event is in the file: the page's stream starts where the record stood and
    carries only the events the record has taken in (else a reload could show the stage still pending,
    and nothing would reload it again while the stage runs)."""
    from prime_ray.pipeline.events import EventLog, read_events
    from prime_ray.service.states import JobState

    url, app, keys, artifacts = gateway
    row, _ = app.state.store.create(*_parsed(), None)
    app.state.store.update(row.id, state=JobState.running)
    log = EventLog(artifacts / row.id / "events.jsonl")
    (artifacts / row.id).mkdir(parents=True)
    for kind in ("job_started", "stage_started", "stage_finished"):
        log.emit(kind, None if kind == "job_started" else "ingest")
    offsets = [offset for offset, _ in read_events(log.path)]
    app.state.store.update(row.id, events_offset=offsets[1])  # the follower has applied up to stage_started
    with _login(url, keys["admin"]) as client:
        page = client.get(f"/jobs/{row.id}").text
        assert f'data-cursor="{offsets[1]}"' in page and 'data-terminal="false"' in page
        # (A job that ended with its record behind its file cannot happen; here it ends the stream.)
        app.state.store.update(row.id, state=JobState.succeeded)
        assert _streamed(client, row.id, 0) == ["job_started", "stage_started", "end"]
        app.state.store.update(row.id, events_offset=offsets[2])
        assert _streamed(client, row.id, 0) == ["job_started", "stage_started", "stage_finished", "end"]
        assert _streamed(client, row.id, offsets[1]) == ["stage_finished", "end"]
