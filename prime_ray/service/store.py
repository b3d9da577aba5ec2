"""Jobs in the database: creation (idempotent per API key), reads, pages, and guarded state changes.

Every state change goes through `transition`, which checks the state machine inside the same
transaction that writes it; the follower and the request handlers each write only their own columns.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prime_ray.service.db import JobRow, utcnow
from prime_ray.service.states import ACTIVE, JobState, check_transition
from prime_ray.spec import JobSpec

SUBMISSION_PREFIX = "prime-ray-"


class JobNotFound(LookupError):
    pass


class IdempotencyConflict(ValueError):
    """The idempotency key was used before with a different spec."""


class BadCursor(ValueError):
    pass


def submission_id(job_id: str) -> str:
    """The Ray submission id of a job: derived from its id, so a retried submission is refused by Ray."""
    return f"{SUBMISSION_PREFIX}{job_id}"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "seq" or not value.isdigit():
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"not a cursor returned by this API: {cursor!r}") from None


class JobStore:
    def __init__(self, sessions: sessionmaker, artifact_root: str):
        self.sessions = sessions
        self.artifact_root = artifact_root

    def _runnable_spec(self, spec: JobSpec, job_id: str) -> dict[str, Any]:
        """The spec as the gateway runs it: named by the job id, writing under the gateway's artifact
        root, joining the cluster it is submitted to."""
        resources = spec.resources.model_copy(update={"ray_address": None})
        runnable = spec.model_copy(update={"name": job_id, "artifact_root": self.artifact_root, "resources": resources})
        return runnable.model_dump(mode="json", by_alias=True)

    def create(self, spec: JobSpec, owner_key_id: str | None, idempotency_key: str | None = None) -> tuple[JobRow, bool]:
        """Store a queued job; with an idempotency key already used by this owner, return that job instead.

        Returns (job, created).
        """
        if idempotency_key is not None:
            existing = self._by_idempotency_key(owner_key_id, idempotency_key, spec)
            if existing is not None:
                return existing, False
        job_id = f"job-{secrets.token_hex(6)}"
        row = JobRow(
            id=job_id,
            name=spec.name,
            state=JobState.queued.value,
            spec=self._runnable_spec(spec, job_id),
            progress={},
            metrics={},
            owner_key_id=owner_key_id,
            idempotency_key=idempotency_key,
            submission_id=submission_id(job_id),
            submitted=False,
            cancel_requested=False,
            events_offset=0,
        )
        try:
            with self.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            # Two requests with the same idempotency key at once: the other one won.
            existing = self._by_idempotency_key(owner_key_id, idempotency_key, spec) if idempotency_key else None
            if existing is None:
                raise
            return existing, False
        return row, True

    def _by_idempotency_key(self, owner: str | None, key: str, spec: JobSpec) -> JobRow | None:
        with self.sessions() as session:
            row = session.scalars(
                select(JobRow).where(JobRow.owner_key_id == owner, JobRow.idempotency_key == key)
            ).first()
        if row is not None and self._runnable_spec(spec, row.id) != row.spec:
            raise IdempotencyConflict(f"Idempotency-Key {key!r} was used for a different spec (job {row.id})")
        return row

    def get(self, job_id: str) -> JobRow:
        with self.sessions() as session:
            row = session.scalars(select(JobRow).where(JobRow.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return row

    def page(self, state: JobState | None = None, limit: int = 50, cursor: str | None = None) -> tuple[list[JobRow], str | None]:
        """Newest first. The cursor is opaque: pass back `next_cursor` to get the next page."""
        query = select(JobRow).order_by(JobRow.seq.desc()).limit(limit + 1)
        if state is not None:
            query = query.where(JobRow.state == state.value)
        if cursor is not None:
            query = query.where(JobRow.seq < decode_cursor(cursor))
        with self.sessions() as session:
            rows = list(session.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].seq) if more else None

    def active(self) -> list[JobRow]:
        """Jobs the follower must look after: not yet in a terminal state."""
        with self.sessions() as session:
            return list(session.scalars(
                select(JobRow).where(JobRow.state.in_([s.value for s in ACTIVE])).order_by(JobRow.seq)
            ))

    def deployed(self) -> list[JobRow]:
        """Jobs with a deployment record (deploying, ready, failed or stopping), oldest first."""
        with self.sessions() as session:
            return list(session.scalars(select(JobRow).where(JobRow.deployment.is_not(None)).order_by(JobRow.seq)))

    def counts_by_state(self) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all()
        counts = {state.value: 0 for state in JobState}
        counts.update({state: n for state, n in rows})
        return counts

    def request_cancel(self, job_id: str) -> JobRow:
        """Mark a job for cancellation (the follower stops it in Ray); IllegalTransition if it already ended."""
        with self.sessions.begin() as session:
            row = self._locked(session, job_id)
            check_transition(job_id, row.state, JobState.cancelled)
            row.cancel_requested = True
        return row

    def update(self, job_id: str, *, state: JobState | None = None, **fields: Any) -> JobRow:
        """Write follower-owned fields, moving to `state` if given (checked against the state machine)."""
        with self.sessions.begin() as session:
            row = self._locked(session, job_id)
            if state is not None and state.value != row.state:
                check_transition(job_id, row.state, state)
                row.state = state.value
                if state is JobState.running:
                    row.started_at = utcnow()
                elif state.terminal:
                    row.finished_at = utcnow()
            for name, value in fields.items():
                setattr(row, name, value)
        return row

    @staticmethod
    def _locked(session: Session, job_id: str) -> JobRow:
        row = session.scalars(select(JobRow).where(JobRow.id == job_id).with_for_update()).first()
        if row is None:
            raise JobNotFound(job_id)
        return row
