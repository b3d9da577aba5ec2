"""Cancelling `prime-ray run` in the middle of a stage, on the real local Ray, then resuming.

One job on the tiny model is run by the CLI in its own session (as a terminal runs it) and stopped
three times: SIGTERM during traces (what Ray Jobs sends when `prime-ray cancel` stops a job), Ctrl-C
(SIGINT to the whole process group, as a terminal sends it) during train, and SIGINT to the runner
alone during eval, after Ray Train ran in that process. Each time: exit 130, `job_cancelled` names
the stage, every process of the run (the embedded Ray: raylet, GCS, Serve replicas, Ray Data and
Train workers) is gone, and the next run skips the finished stages and starts at the stopped one
(the last one is stopped too, once it is seen to start at eval).
The seconds from the signal until no process of the run is left are printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prime_ray.pipeline.events import read_events

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "e2e" / "users.jsonl"
ROOT = Path(__file__).resolve().parents[2]


def _spec(folder: Path) -> Path:
    (folder / "users.jsonl").write_bytes(FIXTURE.read_bytes())
    spec = {
        "name": "stop-me",
        "model": {"name_or_path": "tiny-test"},
        "data": {"source": {"format": "jsonl", "path": "users.jsonl"}, "task": {"kind": "rating", "min": 1, "max": 5},
                 "split": {"held_out_users": 0.25}, "max_history": 5, "max_train_examples_per_user": 2},
        # No profiles: the memory stage then needs no Serve app (what is stopped here comes after it).
        "memory": {"profile": False, "top_k": 2},
        # One user per call, one call at a time, long traces: after its first user the traces stage still
        # has two calls to make, long enough to be stopped in.
        "generalist": {"max_batch_size": 4, "rows_per_call": 2, "max_concurrency": 1, "num_cpus_per_replica": 1},
        "traces": {"samples_per_example": 2, "max_new_tokens": 48},
        "train": {"zero_stage": 2, "num_workers": 2, "num_cpus_per_worker": 1, "max_steps": 6, "learning_rate": 0.05,
                  "micro_batch_size": 1, "max_length": 256, "fast_thinking_baseline": True,
                  "log_every_steps": 1, "checkpoint_every_steps": 2},
        "eval": {"modes": ["generalist-direct", "prime-direct", "prime-personal-think"], "max_new_tokens": 32,
                 "bootstrap_samples": 20, "sample_traces_per_mode": 1},
        "resources": {"num_cpus": 2},
        "artifact_root": "artifacts",
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            pids.append(int(entry.name))
    return pids


def _events(job_dir: Path) -> list:
    return [event for _, event in read_events(job_dir / "events.jsonl")]


class _Run:
    """`prime-ray run` in its own session; stdout (not a terminal: the plain view) to a file."""

    def __init__(self, spec: Path, out: Path):
        self.out = out
        self.start_offset = (spec.parent / "artifacts" / "stop-me" / "events.jsonl")
        self.offset = self.start_offset.stat().st_size if self.start_offset.exists() else 0
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with out.open("w") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "prime_ray", "run", str(spec)], cwd=spec.parent,
                                         stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def new_events(self) -> list:
        return [event for _, event in read_events(self.start_offset, self.offset)]

    def wait_for(self, predicate, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(e) for e in self.new_events()):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {self.proc.returncode}) first:\n{self.out.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting; events: {[(e.kind, e.stage) for e in self.new_events()]}")

    def stop(self, sig: int, group: bool) -> float:
        """Send `sig`; return the seconds until no process of the run's session is left."""
        sent = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=300)
        while _session_pids(self.proc.pid):
            if time.monotonic() - sent > 300:
                raise AssertionError(f"processes of the run still alive: {_session_pids(self.proc.pid)}")
            time.sleep(0.2)
        return time.monotonic() - sent


def _started(stage: str, progressed: bool = False):
    if progressed:
        return lambda e: e.kind == "progress" and e.stage == stage and (e.done or 0) >= 1
    return lambda e: e.kind == "stage_started" and e.stage == stage


def _check_cancelled(run: _Run, stage: str, seconds: float, how: str) -> None:
    print(f"\ncancel during {stage} ({how}): exit {run.proc.returncode}, "
          f"every process of the run gone {seconds:.1f} s after the signal")
    events = run.new_events()
    assert run.proc.returncode == 130, run.out.read_text()
    cancelled = [e for e in events if e.kind == "job_cancelled"]
    assert len(cancelled) == 1 and cancelled[0].stage == stage, [(e.kind, e.stage) for e in events]
    assert not any(e.kind in ("stage_failed", "job_failed", "job_finished") for e in events)
    assert f"job cancelled in stage '{stage}'" in run.out.read_text()


def _resumed_at(run: _Run, stage: str, done: list[str]) -> None:
    kinds = {(e.kind, e.stage) for e in run.new_events()}
    for name in done:
        assert ("stage_skipped", name) in kinds, (name, kinds)
    assert ("stage_started", stage) in kinds


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(2700)  # four runs of a whole job on the tiny model
def test_cancel_during_traces_train_and_eval_frees_ray_and_resumes(tmp_path):
    spec = _spec(tmp_path)
    job_dir = tmp_path / "artifacts" / "stop-me"

    run = _Run(spec, tmp_path / "run1.out")
    run.wait_for(_started("traces", progressed=True))
    seconds = run.stop(signal.SIGTERM, group=False)
    _check_cancelled(run, "traces", seconds, "SIGTERM to the runner, as Ray Jobs' stop sends it")
    # Ray's own lines went to the job's log file, not to the command's output.
    assert "Started a local Ray instance" in (job_dir / "logs" / "driver.log").read_text()
    assert "Started a local Ray instance" not in run.out.read_text()
    parts = list((job_dir / "traces" / "parts").glob("*"))
    assert parts, "the users finished before the stop are kept for the re-run"

    run = _Run(spec, tmp_path / "run2.out")
    run.wait_for(_started("train", progressed=True))
    _resumed_at(run, "traces", ["ingest", "memory"])
    traces_done = next(e for e in run.new_events() if e.kind == "stage_finished" and e.stage == "traces")
    assert traces_done.metrics["users_resumed"] >= len(parts)
    seconds = run.stop(signal.SIGINT, group=True)
    _check_cancelled(run, "train", seconds, "Ctrl-C: SIGINT to the process group")

    run = _Run(spec, tmp_path / "run3.out")
    run.wait_for(_started("eval", progressed=True))
    _resumed_at(run, "train", ["ingest", "memory", "traces"])
    seconds = run.stop(signal.SIGINT, group=False)  # after Ray Train ran in this process
    _check_cancelled(run, "eval", seconds, "SIGINT to the runner after Ray Train ran in it")

    run = _Run(spec, tmp_path / "run4.out")
    run.wait_for(_started("eval"))
    _resumed_at(run, "eval", ["ingest", "memory", "traces", "train"])
    seconds = run.stop(signal.SIGTERM, group=False)
    _check_cancelled(run, "eval", seconds, "SIGTERM, right after the resumed eval started")
    assert not (job_dir / "eval" / "manifest.json").exists()
