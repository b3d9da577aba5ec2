"""Jobs in the database: creation (idempotent per API key), reads, pages, leases and guarded state changes.

Every state change goes through `update`, which checks the state machine inside the same transaction
that writes it; the follower and the request handlers each write only their own columns.

Several gateways may share one (Postgres) database: a gateway's follower works only on the jobs it
holds a lease on (`claim`), renews them on every tick, and its writes are refused once another gateway
has taken a lease over (`update(holder=...)` raises LeaseLost). A gateway that dies stops renewing:
its jobs are claimed by another after `lease_s`.

Every operation is one transaction (or one read) and safe to repeat, so each is retried with backoff
while the database connection is lost (`retry_transient`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prime_ray.service.db import JobRow, retry_transient, retry_window, utcnow
from prime_ray.service.states import ACTIVE, JobState, check_transition
from prime_ray.spec import JobSpec

SUBMISSION_PREFIX = "prime-ray-"
MAX_SEQ = 2**31 - 1  # `jobs.seq` is a 32-bit integer on Postgres: a larger cursor names no job
T = TypeVar("T")


class JobNotFound(LookupError):
    pass


class IdempotencyConflict(ValueError):
    """The idempotency key was used before with a different spec."""


class BadCursor(ValueError):
    pass


class LeaseLost(RuntimeError):
    """Another gateway holds the job's lease now (this one's expired): the write was not made."""


def submission_id(job_id: str) -> str:
    """The Ray submission id of a job: derived from its id, so a retried submission is refused by Ray."""
    return f"{SUBMISSION_PREFIX}{job_id}"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "seq" or not (value.isascii() and value.isdigit()) or len(value) > 10 or int(value) > MAX_SEQ:
            raise ValueError
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor(f"not a cursor returned by this API: {cursor!r}") from None


class JobStore:
    def __init__(self, sessions: sessionmaker, artifact_root: str):
        self.sessions = sessions
        self.artifact_root = artifact_root

    def _retried(self, operation: Callable[[], T]) -> T:
        return retry_transient(operation, retry_window(self.sessions))

    def _runnable_spec(self, spec: JobSpec, job_id: str) -> dict[str, Any]:
        """The spec as the gateway runs it: named by the job id, writing under the gateway's artifact
        root, joining the cluster it is submitted to."""
        resources = spec.resources.model_copy(update={"ray_address": None})
        runnable = spec.model_copy(update={"name": job_id, "artifact_root": self.artifact_root, "resources": resources})
        return runnable.model_dump(mode="json", by_alias=True)

    def create(self, spec: JobSpec, owner_key_id: str | None, idempotency_key: str | None = None) -> tuple[JobRow, bool]:
        """Store a queued job; with an idempotency key already used by this owner, return that job instead.

        Returns (job, created). The job id is chosen once, before any retry: a retry after a commit
        whose answer was lost finds the job it stored instead of storing a second one.
        """
        if idempotency_key is not None:
            existing = self._retried(lambda: self._by_idempotency_key(owner_key_id, idempotency_key, spec))
            if existing is not None:
                return existing, False
        job_id = f"job-{secrets.token_hex(6)}"
        runnable = self._runnable_spec(spec, job_id)
        # Every later answer encodes this document: refuse (ValueError) before storing what could not be sent.
        json.dumps(runnable, allow_nan=False, ensure_ascii=False).encode("utf-8")
        return self._retried(lambda: self._insert(job_id, spec, runnable, owner_key_id, idempotency_key))

    def _insert(self, job_id: str, spec: JobSpec, runnable: dict[str, Any], owner_key_id: str | None,
                idempotency_key: str | None) -> tuple[JobRow, bool]:
        row = JobRow(
            id=job_id,
            name=spec.name,
            state=JobState.queued.value,
            spec=runnable,
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
            earlier = self._find(job_id)
            if earlier is not None:  # an earlier try committed it; only its answer was lost
                return earlier, True
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

    def _find(self, job_id: str) -> JobRow | None:
        with self.sessions() as session:
            return session.scalars(select(JobRow).where(JobRow.id == job_id)).first()

    def get(self, job_id: str) -> JobRow:
        if "\x00" in job_id:  # no id has one, and Postgres refuses NUL in any string it is sent
            raise JobNotFound(job_id)
        row = self._retried(lambda: self._find(job_id))
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

        def read() -> list[JobRow]:
            with self.sessions() as session:
                return list(session.scalars(query))

        rows = self._retried(read)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].seq) if more else None

    def deployed(self) -> list[JobRow]:
        """Jobs with a deployment record (deploying, ready, failed or stopping), oldest first."""
        def read() -> list[JobRow]:
            with self.sessions() as session:
                return list(session.scalars(select(JobRow).where(JobRow.deployment.is_not(None)).order_by(JobRow.seq)))
        return self._retried(read)

    def counts_by_state(self) -> dict[str, int]:
        def read() -> list[Any]:
            with self.sessions() as session:
                return list(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all())

        counts = {state.value: 0 for state in JobState}
        counts.update({state: n for state, n in self._retried(read)})
        return counts

    def claim(self, owner: str, lease_s: float, limit: int = 1000) -> list[JobRow]:
        """Take or renew the lease, for `lease_s` seconds, on the unfinished jobs that no other gateway
        holds (never held, held by `owner`, or expired); return them, oldest first.

        Postgres: the candidates are locked with FOR UPDATE SKIP LOCKED, so gateways claiming at once
        neither wait on each other's rows nor take them, and the lease clock is the database's (no
        skew between gateway hosts). The UPDATE checks the lease again, so a claim is atomic on SQLite
        too (one writer at a time, no row locks).
        """

        def attempt() -> list[JobRow]:
            with self.sessions.begin() as session:
                now = self._now(session)
                claimable = (JobRow.state.in_([s.value for s in ACTIVE]),
                             or_(JobRow.lease_owner.is_(None), JobRow.lease_owner == owner, JobRow.lease_expires_at < now))
                candidates = list(session.scalars(
                    select(JobRow.id).where(*claimable).order_by(JobRow.seq).limit(limit)
                    .with_for_update(skip_locked=True)
                ))
                if not candidates:
                    return []
                session.execute(
                    update(JobRow).where(JobRow.id.in_(candidates), *claimable)
                    # updated_at keeps its value: a renewed lease is not a change of the job
                    .values(lease_owner=owner, lease_expires_at=now + dt.timedelta(seconds=lease_s),
                            updated_at=JobRow.updated_at)
                    .execution_options(synchronize_session=False)
                )
                return list(session.scalars(
                    select(JobRow).where(JobRow.id.in_(candidates), JobRow.lease_owner == owner).order_by(JobRow.seq)
                ))

        return self._retried(attempt)

    def release(self, owner: str) -> int:
        """Give up `owner`'s leases (a gateway shutting down): another gateway takes its jobs on its next
        tick instead of after the lease expires. Returns how many were held. Not retried: an unreleased
        lease only expires."""
        with self.sessions.begin() as session:
            result = session.execute(
                update(JobRow).where(JobRow.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None, updated_at=JobRow.updated_at)
                .execution_options(synchronize_session=False)
            )
        return result.rowcount

    @staticmethod
    def _now(session: Session) -> dt.datetime:
        if session.get_bind().dialect.name == "postgresql":
            return session.execute(select(func.now())).scalar_one()
        return utcnow()  # SQLite: one machine, one clock

    def request_cancel(self, job_id: str) -> JobRow:
        """Mark a job for cancellation (the follower stops it in Ray); IllegalTransition if it already ended."""

        def attempt() -> JobRow:
            with self.sessions.begin() as session:
                row = self._locked(session, job_id)
                check_transition(job_id, row.state, JobState.cancelled)
                row.cancel_requested = True
            return row

        return self._retried(attempt)

    def update(self, job_id: str, *, state: JobState | None = None, holder: str | None = None, **fields: Any) -> JobRow:
        """Write follower-owned fields, moving to `state` if given (checked against the state machine).

        `holder`: the gateway writing; LeaseLost if another one holds the job's lease now. A job that
        ends gives its lease up.
        """

        def attempt() -> JobRow:
            with self.sessions.begin() as session:
                row = self._locked(session, job_id)
                if holder is not None and row.lease_owner != holder:
                    raise LeaseLost(f"job {job_id} is followed by gateway {row.lease_owner} now")
                if state is not None and state.value != row.state:
                    check_transition(job_id, row.state, state)
                    row.state = state.value
                    if state is JobState.running:
                        row.started_at = utcnow()
                    elif state.terminal:
                        row.finished_at = utcnow()
                        row.lease_owner = row.lease_expires_at = None
                for name, value in fields.items():
                    setattr(row, name, value)
            return row

        return self._retried(attempt)

    @staticmethod
    def _locked(session: Session, job_id: str) -> JobRow:
        row = session.scalars(select(JobRow).where(JobRow.id == job_id).with_for_update()).first()
        if row is None:
            raise JobNotFound(job_id)
        return row
