"""Cancellation through the runner, without Ray: a signal in the middle of a stage."""

from __future__ import annotations

import os
import signal

import pytest

from prime_ray.pipeline.events import read_events
from prime_ray.pipeline.runner import JobCancelled, run_job
from prime_ray.pipeline.stage import STAGES, Stage, StageResult, register_stage
from prime_ray.spec import parse_spec

CLEANED: list[str] = []


class _Done(Stage):
    name = "c_done"
    needs_ray = False
    outputs = ("done.txt",)

    def config(self, spec):
        return {}

    def run(self, ctx):
        (ctx.out_dir / "done.txt").write_text("ok")
        return StageResult(counts={"n": 1})


class _Stopped(Stage):
    """Sends itself `signal` once (the marker file says when it did), inside a context manager whose
    exit must run, and catches Exception on the way, as stage code does."""

    name = "c_stopped"
    requires = ("c_done",)
    needs_ray = False
    outputs = ("out.txt",)
    signal = signal.SIGTERM

    def config(self, spec):
        return {}

    def run(self, ctx):
        marker = ctx.out_dir / "signalled"
        if not marker.exists():
            marker.write_text("1")
            try:
                try:
                    os.kill(os.getpid(), self.signal)
                    for _ in range(10_000_000):  # the handler runs between bytecodes, at once
                        pass
                finally:
                    CLEANED.append("teardown")
            except Exception:  # noqa: BLE001 - a cancellation is no Exception
                CLEANED.append("swallowed")
        (ctx.out_dir / "out.txt").write_text("ok")
        return StageResult(counts={"n": 1})


@pytest.fixture
def stages(monkeypatch):
    saved = dict(STAGES)
    STAGES.clear()
    order = lambda wanted=None: ["c_done", "c_stopped"]  # noqa: E731
    monkeypatch.setattr("prime_ray.pipeline.runner.stage_order", order)
    register_stage(_Done)
    register_stage(_Stopped)
    CLEANED.clear()
    yield
    STAGES.clear()
    STAGES.update(saved)


def _spec(tmp_path):
    return parse_spec({"name": "c", "artifact_root": str(tmp_path),
                       "data": {"source": {"format": "jsonl", "path": "u.jsonl"}, "task": {"kind": "rating"}}})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_cancels_the_stage_records_it_and_a_rerun_resumes(tmp_path, stages, sig, monkeypatch):
    monkeypatch.setattr(_Stopped, "signal", sig)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(JobCancelled) as stopped:
        run_job(_spec(tmp_path))
    assert stopped.value.stage == "c_stopped"
    assert CLEANED == ["teardown"]  # the context's exit ran; `except Exception` did not take it
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers are back
    events = [e for _, e in read_events(tmp_path / "c" / "events.jsonl")]
    cancelled = [e for e in events if e.kind == "job_cancelled"]
    assert len(cancelled) == 1 and cancelled[0].stage == "c_stopped"
    assert cancelled[0].message == ("stopped (SIGTERM)" if sig == signal.SIGTERM else "interrupted (SIGINT, Ctrl-C)")
    assert not any(e.kind in ("stage_failed", "job_failed") for e in events)

    result = run_job(_spec(tmp_path))
    assert [(s.name, s.status) for s in result.stages] == [("c_done", "skipped"), ("c_stopped", "ran")]


def test_force_names_only_stages_of_the_job(tmp_path, stages):
    with pytest.raises(ValueError, match="no stage 'bogus'"):
        run_job(_spec(tmp_path), force=("bogus",))
