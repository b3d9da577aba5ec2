"""The REST API's request and response documents (what the OpenAPI document describes).

The SDK (`prime_ray.client`) parses the gateway's answers with these same models, so this module stays
light: pydantic and prime-ray's own plain modules only (no SQLAlchemy, Ray or torch).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prime_ray.pipeline.events import Event
from prime_ray.service.states import JobState
from prime_ray.serving.schemas import DeploymentOut
from prime_ray.spec import JOB_SPEC_EXAMPLE, JobSpec, SpecProblem

if TYPE_CHECKING:
    from prime_ray.service.db import JobRow

_JOB_EXAMPLE: dict[str, Any] = {
    "id": "job-3f9a1c2b7d4e",
    "name": "movielens-rating",
    "state": "running",
    "stage": "traces",
    "cancel_requested": False,
    "error": None,
    "created_at": "2026-11-26T10:00:00Z",
    "updated_at": "2026-11-26T10:03:12Z",
    "started_at": "2026-11-26T10:00:04Z",
    "finished_at": None,
}


class ErrorOut(BaseModel):
    """Every error answer: what went wrong and, for invalid input, each problem at its path."""

    detail: str
    problems: list[SpecProblem] = Field(default_factory=list)

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "detail": "invalid job spec: 2 problem(s)",
        "problems": [{"path": "train.lora.r", "message": "must be > 0"},
                     {"path": "data.source", "message": "field required"}],
    }]})


class StageProgressOut(BaseModel):
    state: Literal["pending", "running", "finished", "skipped", "failed", "cancelled"]
    done: int | None = Field(None, description="Units done (examples, users, steps: the stage says).")
    total: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict, description="The stage's latest live metrics.")


def _summary_fields(row: JobRow) -> dict[str, Any]:
    """A job row's columns as `JobSummary` fields (every job document has them)."""
    return dict(
        id=row.id, name=row.name, state=JobState(row.state), stage=row.stage,
        cancel_requested=row.cancel_requested, error=row.error, created_at=row.created_at,
        updated_at=row.updated_at, started_at=row.started_at, finished_at=row.finished_at,
    )


class JobSummary(BaseModel):
    id: str
    name: str = Field(description="The name the spec was submitted with (the job runs under its id).")
    state: JobState
    stage: str | None = Field(None, description="The stage running now.")
    cancel_requested: bool = False
    error: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [_JOB_EXAMPLE]})

    @classmethod
    def of(cls, row: JobRow) -> JobSummary:
        return cls(**_summary_fields(row))


class JobOut(JobSummary):
    deployment: DeploymentOut | None = Field(None, description="The served student, when one was deployed.")
    progress: dict[str, StageProgressOut] = Field(default_factory=dict, description="Per stage, in pipeline order.")
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per finished stage, its final metrics.")
    spec: JobSpec = Field(description="The spec as it runs: named by the job id, under the gateway's artifact root.")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        **_JOB_EXAMPLE,
        "progress": {
            "ingest": {"state": "finished", "done": 8, "total": 8, "metrics": {}},
            "memory": {"state": "finished", "done": 120, "total": 120, "metrics": {}},
            "traces": {"state": "running", "done": 40, "total": 96, "metrics": {"kept_rate": 0.41}},
            "train": {"state": "pending", "done": None, "total": None, "metrics": {}},
        },
        "metrics": {"ingest": {"users": 8, "examples": 120, "seconds": 1.2}},
        "spec": JOB_SPEC_EXAMPLE,
    }]})

    @classmethod
    def of(cls, row: JobRow) -> JobOut:
        return cls(
            **_summary_fields(row),
            progress={k: StageProgressOut.model_validate(v) for k, v in (row.progress or {}).items()},
            metrics=row.metrics or {},
            spec=JobSpec.model_validate(row.spec),
            deployment=DeploymentOut.model_validate(row.deployment) if row.deployment else None,
        )


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last one.")


class EventOut(Event):
    cursor: int = Field(description="Byte offset just past this event: resume from here.")


class EventPage(BaseModel):
    events: list[EventOut]
    next_cursor: int = Field(description="Pass as `cursor` to get the events after these.")
    finished: bool = Field(description="The job has ended and every event was returned: stop polling.")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "events": [{"time": 1795676217.9, "kind": "stage_started", "stage": "ingest", "done": None, "total": None,
                    "metrics": {}, "message": None, "cursor": 180}],
        "next_cursor": 180,
        "finished": False,
    }]})


class ArtifactOut(BaseModel):
    path: str = Field(description="Relative to the job's artifact folder, `/`-separated.")
    size: int
    modified_at: dt.datetime


class ArtifactList(BaseModel):
    job_id: str
    artifacts: list[ArtifactOut]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "job-3f9a1c2b7d4e",
        "artifacts": [{"path": "eval/report.json", "size": 5120, "modified_at": "2026-11-26T10:09:00Z"}],
    }]})


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    ready: bool
    database: str = Field(description="`ok`, or why the database cannot be used.")
    ray: str = Field(description="`ok`, or why the Ray Jobs API cannot be reached.")
