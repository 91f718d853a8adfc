"""The durable job queue (DESIGN.md invariant 4): leases, attempts, backoff and a dead letter.

A job is claimed by taking a lease: on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so workers on many
hosts never wait on each other; on SQLite the writer lock already serialises claims. A worker that
dies leaves a lease that expires, and the job is claimed again; every claim counts an attempt, so a
job that crashes its worker every time still ends in `dead`. Finishing requires the lease: a worker
whose lease expired (and was re-claimed elsewhere) cannot finish the job a second time.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.orm import Session

from storage.models import Job, JobStatus, new_id

_BACKOFF_BASE_SECONDS = 5.0
_BACKOFF_MAX_SECONDS = 900.0


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """What a worker needs of a job it holds the lease on."""

    id: str
    kind: str
    study_id: str | None
    generation: int | None
    attempts: int
    max_attempts: int
    owner: str


def enqueue(
    session: Session,
    *,
    kind: str,
    study_id: str | None,
    generation: int | None,
    now: datetime,
    max_attempts: int = 5,
) -> str:
    """Add a job in the caller's transaction, so it exists exactly when the change that causes it does."""
    job_id = new_id("job")
    session.add(
        Job(
            id=job_id,
            kind=kind,
            status=JobStatus.QUEUED,
            study_id=study_id,
            generation=generation,
            attempts=0,
            max_attempts=max_attempts,
            run_at=now,
            created_at=now,
            updated_at=now,
        )
    )
    return job_id


def backoff_seconds(attempts: int) -> float:
    """Exponential backoff after the n-th failed attempt: 5 s, 10 s, 20 s, … at most 15 minutes."""
    # The exponent is bounded first: 5.0 * 2**1024 does not fit a float (OverflowError).
    return float(min(_BACKOFF_MAX_SECONDS, _BACKOFF_BASE_SECONDS * 2 ** min(max(0, attempts - 1), 32)))


def claim(
    session: Session, *, kinds: Collection[str], owner: str, now: datetime, lease_seconds: float
) -> ClaimedJob | None:
    """Take the lease on the next due job of `kinds`, or None. Expired leases count as due."""
    due = or_(
        (Job.status == JobStatus.QUEUED) & (Job.run_at <= now),
        (Job.status == JobStatus.RUNNING) & (Job.lease_expires_at <= now),
    )
    while True:
        candidate = session.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.status)
            .where(Job.kind.in_(list(kinds)), due)
            .order_by(Job.run_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if candidate is None:
            return None
        job_id, attempts, max_attempts, status = candidate
        if status != JobStatus.RUNNING or attempts < max_attempts:
            break
        # Its worker died holding the last attempt: the job goes to the dead letter, not round again,
        # and the claim goes on to the next due job (None must mean that none is due).
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.DEAD,
                lease_owner=None,
                lease_expires_at=None,
                last_error_code="job.lease_expired",
                updated_at=now,
            )
        )
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempts)
        .values(
            status=JobStatus.RUNNING,
            attempts=attempts + 1,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
        .returning(Job.id, Job.kind, Job.study_id, Job.generation, Job.attempts, Job.max_attempts)
    ).first()
    if row is None:
        return None
    return ClaimedJob(
        id=row.id,
        kind=row.kind,
        study_id=row.study_id,
        generation=row.generation,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        owner=owner,
    )


def _held(job: ClaimedJob) -> tuple[ColumnElement[bool], ...]:
    return (
        Job.id == job.id,
        Job.status == JobStatus.RUNNING,
        Job.lease_owner == job.owner,
        Job.attempts == job.attempts,  # this claim, not an older one under the same owner name
    )


def succeed(session: Session, job: ClaimedJob, *, now: datetime) -> bool:
    """Mark the job done; False when the lease was lost (the job is someone else's now)."""
    result = session.execute(
        update(Job)
        .where(*_held(job))
        .values(
            status=JobStatus.SUCCEEDED,
            lease_owner=None,
            lease_expires_at=None,
            last_error_code=None,
            updated_at=now,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail(session: Session, job: ClaimedJob, *, code: str, now: datetime) -> str | None:
    """Record a failed attempt: back to the queue after a backoff, or `dead` once attempts are used up.

    Returns the new status, or None when the lease was lost.
    """
    status = JobStatus.DEAD if job.attempts >= job.max_attempts else JobStatus.QUEUED
    result = session.execute(
        update(Job)
        .where(*_held(job))
        .values(
            status=status,
            lease_owner=None,
            lease_expires_at=None,
            last_error_code=code,
            run_at=now + timedelta(seconds=backoff_seconds(job.attempts)),
            updated_at=now,
        )
    )
    return status.value if result.rowcount else None  # type: ignore[attr-defined]


def extend_lease(session: Session, job: ClaimedJob, *, now: datetime, lease_seconds: float) -> bool:
    """Keep a long job's lease alive; False when it was already lost."""
    result = session.execute(
        update(Job)
        .where(*_held(job))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def count_by_status(session: Session, *, kind: str | None = None) -> dict[str, int]:
    """Queue depth per status, for metrics and readiness."""
    statement = select(Job.status, func.count()).group_by(Job.status)
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    return {row[0]: row[1] for row in session.execute(statement)}


def retry(session: Session, job_id: str, *, now: datetime) -> str | None:
    """Queue a dead, failed or cancelled job again with fresh attempts; the new status, or None."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.DEAD, JobStatus.FAILED, JobStatus.CANCELLED]))
        .values(status=JobStatus.QUEUED, attempts=0, run_at=now, last_error_code=None, updated_at=now)
    )
    return JobStatus.QUEUED.value if result.rowcount else None  # type: ignore[attr-defined]


def cancel(session: Session, job_id: str, *, now: datetime) -> str | None:
    """Cancel a job that has not finished; a running one keeps running but cannot finish any more."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .values(status=JobStatus.CANCELLED, lease_owner=None, lease_expires_at=None, updated_at=now)
    )
    return JobStatus.CANCELLED.value if result.rowcount else None  # type: ignore[attr-defined]
