"""Progress events: one JSON object per line in the job's `events.jsonl`.

The runner, the stages and their Ray workers append to the same file (small appends are atomic on a
local or shared POSIX filesystem); the CLI and the gateway read it to show progress.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from prime_ray.files import append_line

EventKind = Literal[
    "job_started",
    "stage_started",
    "progress",
    "log",
    "stage_skipped",
    "stage_finished",
    "stage_failed",
    "job_finished",
    "job_failed",
    "job_cancelled",
]


class Event(BaseModel):
    time: float = Field(default_factory=time.time, description="Unix time in seconds.")
    kind: EventKind
    stage: str | None = None
    done: int | None = None
    total: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    message: str | None = None


class EventLog:
    """Appends events to a JSONL file. Picklable (it holds only the path), so Ray workers can use it."""

    def __init__(self, path: str | Path, listener: Callable[[Event], None] | None = None):
        self.path = Path(path)
        self.listener = listener

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "listener": None}  # a listener lives in the driver only

    def emit(self, kind: EventKind, stage: str | None = None, **fields: Any) -> Event:
        event = Event(kind=kind, stage=stage, **fields)
        append_line(self.path, event.model_dump_json())
        if self.listener is not None:
            self.listener(event)
        return event

    def for_stage(self, stage: str) -> StageProgress:
        return StageProgress(self, stage)


class StageProgress:
    """What a stage uses to say how far it is. Picklable for Ray workers."""

    def __init__(self, log: EventLog, stage: str):
        self.log = log
        self.stage = stage

    def update(self, done: int, total: int | None = None, **metrics: Any) -> None:
        self.log.emit("progress", self.stage, done=done, total=total, metrics=metrics)

    def info(self, message: str, **metrics: Any) -> None:
        self.log.emit("log", self.stage, message=message, metrics=metrics)


def read_events(path: str | Path, offset: int = 0) -> Iterator[tuple[int, Event]]:
    """Events from byte `offset` on, each with the offset just past it (a cursor to resume from).

    A last line still being written (no newline yet) is left for the next read.
    """
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as f:
        if offset > os.fstat(f.fileno()).st_size:
            return  # past the end: nothing yet (and seek refuses offsets beyond the filesystem's limit)
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            offset += len(raw)
            try:
                yield offset, Event.model_validate_json(raw)
            except ValueError:
                continue  # a torn or foreign line never stops a reader
