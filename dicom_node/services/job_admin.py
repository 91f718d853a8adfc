"""Jobs for admins: list with filters, retry a dead one, cancel a pending one; each action audited."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from dicom_node.services.views import Conflict, FilterInvalid, NotFound, Page, PageRequest
from storage import audit, jobs
from storage.listing import fetch_page
from storage.models import Job, JobStatus

if TYPE_CHECKING:
    from dicom_node.services.node import Node


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    kind: str
    status: str
    study_id: str | None
    generation: int | None
    attempts: int
    max_attempts: int
    run_at: datetime
    last_error_code: str | None
    created_at: datetime
    updated_at: datetime


def _view(job: Job) -> JobView:
    return JobView(
        id=job.id,
        kind=job.kind,
        status=job.status,
        study_id=job.study_id,
        generation=job.generation,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        run_at=job.run_at,
        last_error_code=job.last_error_code,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def list_jobs(
    node: Node,
    request: PageRequest,
    *,
    status: str | None = None,
    kind: str | None = None,
    study_id: str | None = None,
) -> Page[JobView]:
    if status is not None and status not in {s.value for s in JobStatus}:
        raise FilterInvalid()
    statement = select(Job)
    if status is not None:
        statement = statement.where(Job.status == status)
    if kind is not None:
        statement = statement.where(Job.kind == kind)
    if study_id is not None:
        statement = statement.where(Job.study_id == study_id)
    with node.sessions() as session:
        rows, total = fetch_page(
            session,
            statement.order_by(Job.created_at.desc(), Job.id),
            page=request.page,
            page_size=request.page_size,
        )
        return Page(
            items=[_view(job) for job in rows], total=total, page=request.page, page_size=request.page_size
        )


def get_job(node: Node, job_id: str) -> JobView:
    with node.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound()
        return _view(job)


def _act(
    node: Node,
    job_id: str,
    change: Callable[..., str | None],
    action: str,
    *,
    actor: str,
    client_address: str | None,
) -> JobView:
    now = node.clock.now()
    with node.sessions.begin() as session:
        if session.get(Job, job_id) is None:
            raise NotFound()
        if change(session, job_id, now=now) is None:
            raise Conflict()
        audit.append(
            session,
            actor=actor,
            action=action,
            outcome="success",
            object_ref=job_id,
            client_address=client_address,
            now=now,
        )
    return get_job(node, job_id)


def retry_job(node: Node, job_id: str, *, actor: str, client_address: str | None = None) -> JobView:
    """A dead, failed or cancelled job queued again with its attempts reset."""
    return _act(node, job_id, jobs.retry, "job_retry", actor=actor, client_address=client_address)


def cancel_job(node: Node, job_id: str, *, actor: str, client_address: str | None = None) -> JobView:
    return _act(node, job_id, jobs.cancel, "job_cancel", actor=actor, client_address=client_address)
