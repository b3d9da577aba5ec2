"""The stage interface and the registry the runner reads.

A stage is one module under `prime_ray.pipeline.stages` with one class registered here. It declares
the stages it reads from and the parts of the spec it depends on; the runner does the rest (order,
manifests, skipping, events). Adding a stage never touches the runner.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from prime_ray.pipeline.artifacts import JobArtifacts
from prime_ray.pipeline.events import EventLog, StageProgress
from prime_ray.spec import JobSpec


@dataclass
class StageContext:
    spec: JobSpec
    artifacts: JobArtifacts
    out_dir: Path  # this stage's folder; it may hold a partial earlier attempt of the same config
    inputs: dict[str, Path]  # each required stage's folder
    progress: StageProgress
    events: EventLog


@dataclass
class StageResult:
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"examples": 120, "users": 8}
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"tokens_per_s": 41.2}


class Stage(abc.ABC):
    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    needs_ray: ClassVar[bool] = True
    # The stage runs the generalist through `GeneralistMap`, so it may take over the Serve app the stage
    # before it kept running (memory -> traces). Before any other stage, the runner deletes kept apps:
    # their replicas hold the CPUs (or GPUs) that stage needs.
    deploys_generalist: ClassVar[bool] = False
    # Output files (relative to the stage folder) whose digests go into the manifest; folders are walked.
    # A stage whose outputs depend on the spec overrides `outputs_for`.
    outputs: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def config(self, spec: JobSpec) -> Any:
        """The parts of the spec this stage's output depends on (hashed into its manifest)."""

    @abc.abstractmethod
    def run(self, ctx: StageContext) -> StageResult:
        """Write the stage's outputs under ctx.out_dir."""

    def outputs_for(self, spec: JobSpec) -> tuple[str, ...]:
        """The outputs this stage writes for `spec` (default: the declared `outputs`)."""
        return self.outputs


STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    if cls.name in STAGES and STAGES[cls.name] is not cls:
        raise ValueError(f"stage {cls.name!r} is registered twice")
    STAGES[cls.name] = cls
    return cls


def stage_order(wanted: Sequence[str] | None = None) -> list[str]:
    """Registered stages in dependency order; with `wanted`, only those and what they need."""
    import prime_ray.pipeline.stages  # noqa: F401  (registers the built-in stages)

    unknown = set(wanted or ()) - STAGES.keys()
    if unknown:
        raise ValueError(f"unknown stage(s): {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise ValueError(f"stage dependency cycle: {' -> '.join(path + (name,))}")
        for dep in STAGES[name].requires:
            if dep not in STAGES:
                raise ValueError(f"stage {name!r} requires unknown stage {dep!r}")
            visit(dep, path + (name,))
        order.append(name)

    for name in wanted if wanted else STAGES:
        visit(name, ())
    return order
