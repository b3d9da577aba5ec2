"""The job state machine: queued -> running -> succeeded | failed | cancelled.

A job that never started may also end straight from `queued` (refused submission, cancel before
start). Terminal states are final: any other move is a bug and raises IllegalTransition.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})
ACTIVE = frozenset({JobState.queued, JobState.running})

_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.queued: frozenset({JobState.running, JobState.failed, JobState.cancelled}),
    JobState.running: frozenset({JobState.succeeded, JobState.failed, JobState.cancelled}),
}


class IllegalTransition(ValueError):
    def __init__(self, job_id: str, current: JobState, wanted: JobState):
        self.job_id, self.current, self.wanted = job_id, current, wanted
        super().__init__(f"job {job_id}: cannot go from {current.value} to {wanted.value}")


def check_transition(job_id: str, current: JobState | str, wanted: JobState | str) -> JobState:
    """Return `wanted` as a JobState if the move from `current` is allowed; raise IllegalTransition otherwise."""
    current, wanted = JobState(current), JobState(wanted)
    if wanted not in _ALLOWED.get(current, frozenset()):
        raise IllegalTransition(job_id, current, wanted)
    return wanted
