"""The view of a running job: the same events drawn as a live view (terminal) or plain lines, for
`prime-ray run` and `prime-ray submit --wait` (against a real gateway; the events are written here)."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

from prime_ray.cli import app as cli
from prime_ray.cli.view import LiveView, PlainView
from prime_ray.pipeline.events import Event, EventLog
from prime_ray.service.app import create_app
from prime_ray.service.keys import create_key
from prime_ray.service.local import free_port
from prime_ray.service.server import BackgroundServer
from prime_ray.service.settings import GatewaySettings
from prime_ray.service.states import JobState

REPORT = "## Evaluation: x\n\n| mode | mae ↓ |\n|---|---:|\n| prime-direct | 0.500 [0.1, 0.9] |\n"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _events(t0: float) -> list[Event]:
    return [
        Event(time=t0, kind="job_started", metrics={"stages": ["traces", "train"]}),
        Event(time=t0, kind="stage_started", stage="traces"),
        Event(time=t0 + 10, kind="progress", stage="traces", done=2, total=8, metrics={"kept": 1, "rows": 4}),
        Event(time=t0 + 12, kind="log", stage="traces", message="a message of the job"),
        Event(time=t0 + 40, kind="stage_finished", stage="traces", metrics={"kept": 3, "seconds": 40.0}),
        Event(time=t0 + 41, kind="stage_started", stage="train"),
        Event(time=t0 + 51, kind="progress", stage="train", done=5, total=10, metrics={"loss": 2.25, "tokens_per_s": 88.5}),
    ]


def test_plain_view_writes_a_line_per_event_with_unit_rate_and_eta():
    out = io.StringIO()
    view = PlainView(Console(file=out, width=300))
    for event in _events(1000.0):
        view(event)
    lines = out.getvalue().splitlines()
    assert len(lines) == 7
    assert "traces progress 2/8 users 0.2 users/s ETA 0:00:30 kept=1  rows=4" in lines[2]
    assert lines[3].endswith("traces log a message of the job")
    assert "train progress 5/10 steps 0.5 steps/s ETA 0:00:10 loss=2.25  tokens_per_s=88.5" in lines[6]


def test_live_view_draws_one_line_per_stage_with_unit_and_metrics():
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=160))
    for event in _events(time.time()):
        view(event)
    view.progress.refresh()
    view.close()
    screen = ANSI.sub("", out.getvalue())
    last = screen.split("\r")[-3:]  # the final frame: one line per stage
    final = "".join(last)
    assert "8/8 users" in final and "done in 0:00:40" in final and "kept=3" in final
    assert "5/10 steps" in final and "loss=2.25" in final and "ETA" in final
    assert "a message of the job" in screen


@pytest.fixture
def gateway(tmp_path):
    settings = GatewaySettings(db_url=f"sqlite:///{tmp_path / 'gateway.db'}", artifact_root=str(tmp_path / "artifacts"),
                               ray_address=f"http://127.0.0.1:{free_port()}", poll_interval_s=0.2)
    app = create_app(settings)
    _, admin = create_key(app.state.store.sessions, "admin")
    with BackgroundServer(app, free_port()) as url:
        yield {"url": url, "admin": admin, "app": app, "root": tmp_path / "artifacts"}


def test_submit_wait_follows_the_events_then_prints_the_report(gateway, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIME_RAY_URL", gateway["url"])
    monkeypatch.setenv("PRIME_RAY_API_KEY", gateway["admin"])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "w", "model": {"name_or_path": "tiny-test"}, "stages": ["ingest"],
                                "data": {"source": {"format": "jsonl", "path": "/x/users.jsonl"}, "task": {"kind": "rating"}}}))
    store = gateway["app"].state.store

    def play() -> None:  # what the runner and the follower would do
        while not (jobs := store.page(limit=1)[0]):
            time.sleep(0.1)
        job_id = jobs[0].id
        folder = gateway["root"] / job_id
        log = EventLog(folder / "events.jsonl")
        for event in _events(time.time()):
            log.emit(event.kind, event.stage, done=event.done, total=event.total, metrics=event.metrics,
                     message=event.message)
        (folder / "eval").mkdir(parents=True)
        (folder / "eval" / "report.md").write_text(REPORT)
        log.emit("job_finished", message="artifacts: x")
        store.update(job_id, state=JobState.running)
        store.update(job_id, state=JobState.succeeded)

    player = threading.Thread(target=play, daemon=True)
    player.start()
    result = CliRunner().invoke(cli, ["submit", str(spec), "--wait"])
    player.join(timeout=30)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "traces progress 2/8 users" in result.stderr and "train progress 5/10 steps" in result.stderr
    assert "| prime-direct | 0.500 [0.1, 0.9] |" in out  # the report, verbatim (not a terminal)
    assert "eval/report.md" in out and "succeeded" in out


def test_run_refuses_a_force_that_names_no_stage(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"name": "f", "data": {"source": {"format": "jsonl", "path": "u.jsonl"},
                                                      "task": {"kind": "rating"}}}))
    result = CliRunner().invoke(cli, ["run", str(spec), "--force", "bogus"])
    assert result.exit_code == 2 and "'bogus' is not a stage" in result.output
    assert not (tmp_path / "artifacts").exists()


def test_the_report_is_drawn_as_tables_on_a_terminal():
    from prime_ray.cli.view import show_report

    def result(value, parse):
        return {"n": 4, "metrics": {"mae": {"value": value, "low": value - 0.5, "high": value + 0.5},
                                    "accuracy": {"value": 0.5, "low": None, "high": None}},
                "health": {"parse_rate": {"value": parse, "low": None, "high": None}}}

    report = {"primary_metric": "mae", "lower_is_better": ["mae"], "metrics": ["mae", "accuracy"],
              "splits": ["test_query"], "results": {"test_query": {"prime-direct": result(0.75, 1.0),
                                                                   "fast-direct": result(1.25, 0.5)}}}
    out = io.StringIO()
    show_report(Console(file=out, force_terminal=True, width=120), report, "unused", ["/x/eval/report.md"], "/x")
    text = ANSI.sub("", out.getvalue())
    assert "test_query (n = 4) · mae lower is better" in text
    row = next(line for line in text.splitlines() if "prime-direct" in line)
    assert "0.750 [0.250, 1.250]" in row and "0.500" in row and "1.00" in row
    assert "unused" not in text and "/x/eval/report.md" in text
