"""The runner: a Ray driver that runs a job's stages in order, skipping those already done.

    run_job(spec)  ->  ingest -> memory -> traces -> train -> eval   (whatever stages are registered)

Per stage: compute its config hash (the spec sections it declares) and input hash (its upstream
manifests); if a manifest with both hashes and intact outputs exists, skip it; else run it and write
the manifest. Every step is an event in `events.jsonl`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

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


class JobCancelled(RuntimeError):
    pass


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
    """Run `spec` to the end; raise StageFailed naming the stage that failed.

    `ray_address` overrides the spec's; `force` names stages to run even when their manifest matches.
    """
    from prime_ray.paths import configure_environment

    configure_environment()
    artifacts = JobArtifacts(spec.artifact_root, spec.name)
    artifacts.pull()
    events = EventLog(artifacts.events_path, listener=on_event)
    (artifacts.job_dir / "spec.json").write_text(spec.model_dump_json(indent=2, by_alias=True))

    order = [name for name in stage_order(spec.stages) if STAGES[name]().enabled(spec)]
    events.emit("job_started", message=f"stages: {', '.join(order)}", metrics={"stages": order})
    result = JobResult(job_dir=artifacts.job_dir, uri=artifacts.uri)
    digests: dict[str, str] = {}
    try:
        _preflight(spec, order)
        for name in order:
            stage = STAGES[name]()
            outcome = _run_stage(stage, spec, artifacts, events, digests, ray_address, force=name in force)
            digests[name] = outcome.manifest.digest
            result.stages.append(outcome)
    except KeyboardInterrupt:
        events.emit("job_cancelled", message="cancelled")
        artifacts.push(artifacts.events_path.name)
        raise JobCancelled("cancelled") from None
    except StageFailed as e:
        events.emit("job_failed", e.stage, message=str(e))
        artifacts.push(artifacts.events_path.name)
        raise
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


def _run_stage(stage, spec, artifacts, events, digests, ray_address, force) -> StageOutcome:
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
        from prime_ray.distributed.cluster import ensure_ray

        ensure_ray(spec.resources, address=ray_address)

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
        outputs = output_digests(stage_dir, stage.outputs)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is reported with its stage
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
