"""Untrusted text (data values, paths, model output, help text) is printed verbatim, never read as
rich markup: values full of `[`, `]`, `[/b]`, `[link=...]` come out as they are and nothing crashes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console
from typer.testing import CliRunner

from prime_ray.cli import app
from prime_ray.cli.view import LiveView, PlainView
from prime_ray.pipeline.events import Event

runner = CliRunner()
NASTY = ["[/b]", "[link=https://example.com]click[/link]", "[bad]", "pip install 'prime-ray[embed]'", "[red]x[/"]


def _user(user_id: str, output: str) -> dict:
    history = [{"id": f"h{i}", "input": f"item {i} [{i}]", "output": "drama", "timestamp": i} for i in range(3)]
    history.append({"id": "h9", "input": "item [/b] 9", "output": output, "timestamp": 9})
    return {"user_id": user_id, "history": history, "queries": [{"id": "q1", "input": "[link=x]q", "output": "comedy"}]}


def _data(folder: Path) -> Path:
    path = folder / "data[" / "b] [link=x]" / "users [bad].jsonl"  # data[/b] [link=x]/...
    path.parent.mkdir(parents=True)
    rows = [_user("u[1]", "comedy"), _user("u2", "drama")] + [_user(f"u[/b]{i}", value) for i, value in enumerate(NASTY)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _spec(folder: Path, data: Path) -> Path:
    spec = {
        "name": "markup",
        "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": str(data.relative_to(folder))},
                 "task": {"kind": "label", "labels": ["drama", "comedy"]}, "split": {"held_out_users": 0.0}},
        "stages": ["ingest"],
        "artifact_root": "out [/b]",
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_data_validate_prints_bad_values_verbatim(tmp_path):
    data = _data(tmp_path)
    spec = _spec(tmp_path, data)
    result = runner.invoke(app, ["data", "validate", str(data), "--spec", str(spec)])
    assert result.exit_code == 1, result.output
    for value in NASTY:
        assert repr(value) in result.output or value in result.output, value
    assert str(data) in result.output  # a path with brackets, verbatim


def test_run_lists_and_skips_rows_whose_values_are_markup(tmp_path):
    data = _data(tmp_path)
    spec = _spec(tmp_path, data)
    result = runner.invoke(app, ["run", str(spec)])
    assert result.exit_code == 0, result.output
    assert "MarkupError" not in result.output
    assert "[/b]" in result.output and "[link=https://example.com]click[/link]" in result.output
    assert "out [/b]/markup" in result.output  # the artifact root, verbatim
    assert (tmp_path / "out [/b]" / "markup" / "ingest" / "manifest.json").is_file()


def test_run_in_a_terminal_shows_markup_verbatim():
    """The live view (a terminal) with messages and metrics made of markup."""
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=200))
    view(Event(kind="job_started", metrics={"stages": ["traces"]}))
    view(Event(kind="stage_started", stage="traces"))
    view(Event(kind="log", stage="traces", message="row u[/b]: output '[bad]' [link=https://x]y[/link]"))
    view(Event(kind="progress", stage="traces", done=1, total=2, metrics={"mode": "[/b]"}))
    view.progress.refresh()
    view(Event(kind="stage_failed", stage="traces", message="ValueError: [/b] at [red]"))
    view.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # colours and cursor moves
    assert "row u[/b]: output '[bad]' [link=https://x]y[/link]" in text
    assert "ValueError: [/b] at [red]" in text and "mode=[/b]" in text

    plain_out = io.StringIO()
    PlainView(Console(file=plain_out, width=200))(Event(kind="log", stage="ingest", message="[/b] [bad]"))
    assert "[/b] [bad]" in plain_out.getvalue()


def test_help_shows_bracketed_text():
    result = subprocess.run([sys.executable, "-m", "prime_ray", "gateway", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[env PRIME_RAY_HOST, 127.0.0.1]" in result.stdout
    result = runner.invoke(app, ["submit", "--help"])
    assert "[env PRIME_RAY_URL, http://127.0.0.1:8000]" in " ".join(result.output.split())  # help wraps


def test_spec_validate_prints_problem_values_verbatim(tmp_path):
    path = tmp_path / "bad [b] [link=x].yaml"
    path.write_text(yaml.safe_dump({"name": "[bad]", "data": {"source": {"format": "jsonl", "path": "[/b]"},
                                                              "task": {"kind": "label", "labels": ["[x]", "[y]"]}}}))
    result = runner.invoke(app, ["spec", "validate", str(path)])
    assert result.exit_code == 1
    assert str(path) in result.output and "name:" in result.output
