"""Folding the runner's events into what a job row shows: current stage, progress per stage, metrics.

    job_started(stages)  -> every stage listed as pending
    stage_started        -> the stage is running and current
    progress(done/total) -> its counters and live metrics
    stage_finished       -> finished; its final metrics go to the job's metrics
    stage_skipped        -> skipped (its manifest matched); its counts go to the job's metrics
    stage_failed / job_failed -> the error
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from prime_ray.pipeline.events import Event


@dataclass
class JobProgress:
    stage: str | None = None
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, stage: str | None, progress: dict, metrics: dict, error: str | None) -> JobProgress:
        # Copies: the row's JSON values are replaced as a whole, so the ORM sees the change.
        return cls(stage, copy.deepcopy(progress or {}), copy.deepcopy(metrics or {}), error)

    def _entry(self, stage: str) -> dict[str, Any]:
        return self.progress.setdefault(stage, {"state": "pending", "done": None, "total": None, "metrics": {}})

    def apply(self, event: Event) -> None:
        kind, stage = event.kind, event.stage
        if kind == "job_started":
            for name in event.metrics.get("stages", []):
                self._entry(str(name))
        elif stage is None:
            if kind == "job_failed" and event.message:
                self.error = event.message
            return
        elif kind == "stage_started":
            self._entry(stage).update(state="running")
            self.stage = stage
        elif kind == "progress":
            entry = self._entry(stage)
            entry.update(state="running", done=event.done, total=event.total)
            entry["metrics"] = {**entry["metrics"], **event.metrics}
        elif kind in ("stage_finished", "stage_skipped"):
            entry = self._entry(stage)
            entry["state"] = "finished" if kind == "stage_finished" else "skipped"
            if entry["total"] is not None:
                entry["done"] = entry["total"]
            self.metrics[stage] = dict(event.metrics)
            if self.stage == stage:
                self.stage = None
        elif kind == "job_cancelled":  # the runner names the stage it stopped in
            self._entry(stage)["state"] = "cancelled"
            if self.stage == stage:
                self.stage = None
        elif kind == "stage_failed":
            self._entry(stage)["state"] = "failed"
            self.error = f"stage '{stage}' failed: {event.message}"
        elif kind == "job_failed" and event.message:
            self.error = event.message
