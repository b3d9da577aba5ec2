"""The runner: a Ray driver that runs a job's stages in order, skipping those already done.

    run_job(spec)  ->  ingest -> memory -> traces -> train -> eval   (whatever stages are registered)

Per stage: compute its config hash (the spec sections it declares) and input hash (its upstream
manifests); if a manifest with both hashes and intact outputs exists, skip it; else run it and write
the manifest. Every step is an event in `events.jsonl`.

Cancellation has one path, whatever asked for it: Ctrl-C (SIGINT), SIGTERM (what `prime-ray cancel`
makes Ray Jobs send the runner), or a caller raising KeyboardInterrupt. While a job runs, the runner's
own handlers raise `CancelRequested` in the driver. It is a BaseException, so it passes the stages'
`except Exception` and runs every `finally` / `__exit__` on its way out: a Serve app is deleted by its
context manager, a Ray Data iteration is abandoned. `job_cancelled`, with the stage it stopped in,
is recorded as the signal arrives, before any teardown; the runner then disconnects from the Ray it
started or joined (which ends the driver's actors: a Train run, Ray Data workers) and raises
JobCancelled. Manifests and partial attempts stay: a re-run resumes at the stopped stage.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prime_ray import __version__
from prime_ray.pipeline.artifacts import JobArtifacts
from prime_ray.pipeline.events import Event, EventLog
from prime_ray.pipeline.manifest import (
    Manifest,
    output_digests,
    outputs_intact,
    read_manifest,
    write_manifest,
)
from prime_ray.pipeline.stage import STAGES, StageContext, stage_order
from prime_ray.spec import JobSpec, config_hash

ATTEMPT_FILE = ".attempt.json"


class StageFailed(RuntimeError):
    """A stage raised; `stage` names it and `__cause__` is what it raised."""

    def __init__(self, stage: str, cause: BaseException):
        self.stage = stage
        super().__init__(f"stage '{stage}' failed: {type(cause).__name__}: {cause}")


class CancelRequested(KeyboardInterrupt):
    """Raised in the driver's main thread by the runner's SIGINT/SIGTERM handler."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class JobCancelled(RuntimeError):
    """The job stopped on request; `stage` is the stage it stopped in (None: between stages)."""

    def __init__(self, stage: str | None, reason: str):
        self.stage = stage
        self.reason = reason
        where = f" in stage '{stage}'" if stage else ""
        super().__init__(f"cancelled{where} ({reason})")


_SIGNAL_REASONS = {signal.SIGINT: "interrupted (SIGINT, Ctrl-C)", signal.SIGTERM: "stopped (SIGTERM)"}


class _CancelSignals:
    """The runner's SIGINT/SIGTERM handlers for the length of a job (main thread only).

    Ray installs its own on the way: `ray.init` a SIGTERM handler that exits, so `claim()` puts ours
    back before every stage, after Ray is up. Ray Train's trainer would install a SIGINT handler for
    the length of `fit()` (abort the Train run, let the driver go on): `ensure_ray` keeps it from
    registering one. The first signal raises CancelRequested; later ones are ignored so the teardown
    runs to its end (SIGKILL still ends everything).
    """

    def __init__(self, on_signal: Callable[[str], None]) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.reason: str | None = None
        self.on_signal = on_signal
        self.saved = {s: signal.getsignal(s) for s in _SIGNAL_REASONS} if self.active else {}

    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002
        if self.reason is not None:
            return
        self.reason = _SIGNAL_REASONS[signal.Signals(signum)]
        # Recorded before anything is torn down: a runner killed during the teardown (Ray Jobs sends
        # SIGKILL a few seconds after SIGTERM) has still said where it stopped.
        with contextlib.suppress(Exception):
            self.on_signal(self.reason)
        raise CancelRequested(self.reason)

    def claim(self) -> None:
        if self.active:
            for sig in _SIGNAL_REASONS:
                signal.signal(sig, self._handle)

    def release(self) -> None:
        if self.active:
            for sig, handler in self.saved.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@dataclass
class StageOutcome:
    name: str
    status: Literal["ran", "skipped"]
    manifest: Manifest


@dataclass
class JobResult:
    job_dir: Path
    uri: str
    stages: list[StageOutcome] = field(default_factory=list)

    def outcome(self, name: str) -> StageOutcome:
        return next(s for s in self.stages if s.name == name)


def run_job(
    spec: JobSpec,
    *,
    ray_address: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    force: tuple[str, ...] = (),
) -> JobResult:
    """Run `spec` to the end; raise StageFailed naming the stage that failed, JobCancelled naming the
    stage it stopped in, ValueError if `force` names a stage the job does not run.

    `ray_address` overrides the spec's; `force` names stages to run even when their manifest matches.
    """
    from prime_ray.paths import configure_environment

    order = stage_order(spec.stages)
    unknown = sorted(set(force) - set(order))
    if unknown:
        raise ValueError(f"no stage {', '.join(map(repr, unknown))} in this job to force; its stages: {', '.join(order)}")
    configure_environment()
    artifacts = JobArtifacts(spec.artifact_root, spec.name)
    artifacts.pull()
    events = EventLog(artifacts.events_path, listener=on_event)
    (artifacts.job_dir / "spec.json").write_text(spec.model_dump_json(indent=2, by_alias=True))

    events.emit("job_started", message=f"stages: {', '.join(order)}", metrics={"stages": order})
    result = JobResult(job_dir=artifacts.job_dir, uri=artifacts.uri)
    digests: dict[str, str] = {}
    current: str | None = None
    recorded: list[str] = []

    def record_cancel(reason: str, stage: str | None = None) -> None:
        if not recorded:
            recorded.append(reason)
            events.emit("job_cancelled", stage or current, message=reason)

    signals = _CancelSignals(on_signal=record_cancel)
    ray_session = _RaySession(spec, ray_address)
    try:
        signals.claim()
        _preflight(spec, order)
        for name in order:
            current = name
            stage = STAGES[name]()
            outcome = _run_stage(stage, spec, artifacts, events, digests, ray_session, signals, force=name in force)
            digests[name] = outcome.manifest.digest
            result.stages.append(outcome)
        current = None
    except KeyboardInterrupt as e:
        reason = signals.reason or (e.reason if isinstance(e, CancelRequested) else "interrupted (KeyboardInterrupt)")
        record_cancel(reason)
        _stop_after_cancel(artifacts, ray_session)
        raise JobCancelled(current, reason) from None
    except StageFailed as e:
        if signals.reason is not None:  # a library turned our interrupt into an error on its way out
            record_cancel(signals.reason, e.stage)
            _stop_after_cancel(artifacts, ray_session)
            raise JobCancelled(e.stage, signals.reason) from None
        events.emit("job_failed", e.stage, message=str(e))
        artifacts.push(artifacts.events_path.name)
        raise
    finally:
        ray_session.end_serve()
        signals.release()
    events.emit("job_finished", message=f"artifacts: {artifacts.uri}")
    artifacts.push(artifacts.events_path.name)
    return result


def _preflight(spec: JobSpec, order: list[str]) -> None:
    """Mistakes found from the spec and the model's config alone, before any stage spends time: a job
    that will train checks its LoRA target modules (a name matching nothing would be silently ignored)."""
    if "train" in order:
        from prime_ray.training.lora import check_target_modules

        try:
            check_target_modules(spec.model, spec.train.lora)
        except ValueError as e:
            raise StageFailed("train", e) from e


class _RaySession:
    """Ray as the job uses it: started or joined on the first stage that needs it."""

    def __init__(self, spec: JobSpec, address: str | None):
        self.spec = spec
        self.address = address
        self.owned = False  # this process started or joined Ray (not a caller's ray.init)
        self.used = False  # a stage has run on Ray

    def ensure(self) -> None:
        from prime_ray.distributed.cluster import ensure_ray

        self.owned = ensure_ray(self.spec.resources, address=self.address) or self.owned
        self.used = True

    def release_kept_apps(self) -> None:
        """Delete the Serve apps a stage kept running for the next one (`GeneralistMap(keep=True)`)."""
        if self.used:
            from prime_ray.distributed.batch import release_kept_apps

            release_kept_apps()

    def end_serve(self) -> None:
        """Delete the job's Serve apps and shut Serve down once none is left (see `batch.end_serve`)."""
        if self.used:
            from prime_ray.distributed.batch import end_serve

            end_serve()

    def stop(self) -> None:
        """Disconnect from the Ray this job started or joined: Ray ends the driver's actors (a Train
        run's controller and workers, Ray Data's workers), an embedded Ray stops altogether."""
        if self.owned:
            from prime_ray.distributed.cluster import disconnect_ray

            disconnect_ray()
            self.owned = False


def _stop_after_cancel(artifacts: JobArtifacts, ray_session: _RaySession) -> None:
    with contextlib.suppress(Exception):
        ray_session.end_serve()  # on a shared cluster the apps would outlive the job
    with contextlib.suppress(Exception):
        ray_session.stop()
    artifacts.push(artifacts.events_path.name)


def _run_stage(stage, spec, artifacts, events, digests, ray_session, signals, force) -> StageOutcome:
    name = stage.name
    cfg_hash = config_hash(stage.config(spec))
    in_hash = config_hash({dep: digests[dep] for dep in stage.requires})
    stage_dir = artifacts.stage_dir(name)

    previous = read_manifest(stage_dir)
    if (
        not force
        and previous is not None
        and previous.config_hash == cfg_hash
        and previous.input_hash == in_hash
        and outputs_intact(stage_dir, previous)
    ):
        events.emit("stage_skipped", name, metrics=previous.counts,
                    message="manifest matches: config, inputs and outputs unchanged")
        return StageOutcome(name, "skipped", previous)

    # A partial earlier attempt is kept for the stage to resume from only if it had the same config
    # and inputs; anything else in the folder is stale.
    attempt = {"config_hash": cfg_hash, "input_hash": in_hash}
    attempt_file = stage_dir / ATTEMPT_FILE
    if force or previous is not None or not attempt_file.exists() or json.loads(attempt_file.read_text()) != attempt:
        stage_dir = artifacts.reset_stage(name)
        attempt_file = stage_dir / ATTEMPT_FILE
        attempt_file.write_text(json.dumps(attempt))

    if stage.needs_ray:
        ray_session.ensure()
    if not stage.deploys_generalist:
        ray_session.release_kept_apps()
    signals.claim()  # after Ray's (and a previous stage's Ray Train's) handlers

    ctx = StageContext(
        spec=spec,
        artifacts=artifacts,
        out_dir=stage_dir,
        inputs={dep: artifacts.stage_dir(dep) for dep in stage.requires},
        progress=events.for_stage(name),
        events=events,
    )
    events.emit("stage_started", name)
    started = time.time()
    try:
        outcome = stage.run(ctx)
        outputs = output_digests(stage_dir, stage.outputs_for(spec))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is reported with its stage
        if signals.reason is None:  # else a library turned the cancellation into an error: not a failure
            events.emit("stage_failed", name, message=f"{type(e).__name__}: {e}")
        raise StageFailed(name, e) from e
    finished = time.time()
    manifest = Manifest(
        stage=name,
        config_hash=cfg_hash,
        input_hash=in_hash,
        outputs=outputs,
        counts=outcome.counts,
        metrics=outcome.metrics,
        started_at=started,
        finished_at=finished,
        seconds=round(finished - started, 3),
        prime_ray_version=__version__,
    )
    write_manifest(stage_dir, manifest)
    attempt_file.unlink(missing_ok=True)
    artifacts.push(name)
    events.emit("stage_finished", name, metrics={**outcome.counts, **outcome.metrics, "seconds": manifest.seconds})
    return StageOutcome(name, "ran", manifest)
