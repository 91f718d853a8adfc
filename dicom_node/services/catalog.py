"""Studies as admins see them: pseudonymous by default, originals only on an explicit, audited request."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import Select, func, or_, select

from dicom_node.services.views import FilterInvalid, NotFound, Page, PageRequest
from storage import audit
from storage.listing import comma_list_has, fetch_page
from storage.models import DeidInstance, Job, JobKind, JobStatus, Series, Study, StudyStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dicom_node.services.node import Node

_MODALITY: Final = re.compile(r"[A-Z0-9_]{1,16}")
_DEID_STATES: Final = {
    JobStatus.QUEUED: "deidentifying",
    JobStatus.RUNNING: "deidentifying",
    JobStatus.SUCCEEDED: "deidentified",
    JobStatus.FAILED: "deidentifying",
    JobStatus.DEAD: "deid_failed",
    JobStatus.CANCELLED: "deid_cancelled",
}


@dataclass(frozen=True, slots=True)
class StudyFilter:
    status: str | None = None
    modality: str | None = None
    received_from: datetime | None = None
    received_to: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in {s.value for s in StudyStatus}:
            raise FilterInvalid()
        if self.modality is not None and _MODALITY.fullmatch(self.modality) is None:
            raise FilterInvalid()
        if self.received_from and self.received_to and self.received_from > self.received_to:
            raise FilterInvalid()


@dataclass(frozen=True, slots=True)
class OriginalIdentity:
    """PHI: only in answers to an explicit admin request, each one audited."""

    patient_id: str | None
    study_instance_uid: str


@dataclass(frozen=True, slots=True)
class StudyView:
    id: str
    status: str
    pipeline_state: str
    generation: int
    instance_count: int
    modalities: list[str]
    first_received_at: datetime
    last_received_at: datetime
    completed_at: datetime | None
    deidentified_at: datetime | None
    pseudonym_patient_id: str | None
    pseudonym_study_instance_uid: str | None
    original: OriginalIdentity | None


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: str
    kind: str
    status: str
    attempts: int
    last_error_code: str | None


@dataclass(frozen=True, slots=True)
class StudyDetail:
    study: StudyView
    series_count: int
    deidentified: int
    withheld: int
    withheld_reasons: dict[str, int]
    jobs: list[JobSummary]


def _filtered(filters: StudyFilter) -> Select[Any]:
    statement = select(Study)
    if filters.status is not None:
        statement = statement.where(Study.status == filters.status)
    if filters.modality is not None:
        m = filters.modality
        statement = statement.where(
            or_(
                comma_list_has(Study.modalities, m),
                Study.id.in_(select(Series.study_id).where(Series.modality == m)),
            )
        )
    if filters.received_from is not None:
        statement = statement.where(Study.last_received_at >= filters.received_from)
    if filters.received_to is not None:
        statement = statement.where(Study.first_received_at <= filters.received_to)
    return statement.order_by(Study.last_received_at.desc(), Study.id)


def _deid_state(study: Study, job_status: str | None) -> str:
    if study.status == StudyStatus.RECEIVING:
        return "receiving"
    if job_status is None:
        return "complete"
    return _DEID_STATES.get(JobStatus(job_status), "complete")


def _view(study: Study, job_status: str | None, *, include_phi: bool) -> StudyView:
    return StudyView(
        id=study.id,
        status=study.status,
        pipeline_state=_deid_state(study, job_status),
        generation=study.generation,
        instance_count=study.instance_count,
        modalities=[m for m in (study.modalities or "").split(",") if m],
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        deidentified_at=study.deidentified_at,
        pseudonym_patient_id=study.pseudonym_patient_id,
        pseudonym_study_instance_uid=study.pseudonym_study_instance_uid,
        original=(
            OriginalIdentity(
                patient_id=study.original_patient_id, study_instance_uid=study.original_study_instance_uid
            )
            if include_phi
            else None
        ),
    )


def _latest_deid_status(session: Session, study_ids: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(Job.study_id, Job.status)
        .where(Job.kind == JobKind.DEIDENTIFY, Job.study_id.in_(study_ids))
        .order_by(Job.created_at, Job.id)
    )
    latest: dict[str, str] = {}
    for study_id, status in rows:
        if study_id is not None:
            latest[study_id] = status  # later rows win: the newest job per study
    return latest


def _audit_phi_read(
    session: Session,
    *,
    actor: str,
    object_ref: str | None,
    count: int,
    now: datetime,
    client_address: str | None,
) -> None:
    audit.append(
        session,
        actor=actor,
        action="phi_read",
        outcome="success",
        object_ref=object_ref,
        client_address=client_address,
        now=now,
        detail={"what": "study_original_identity", "count": count},
    )


def list_studies(
    node: Node,
    filters: StudyFilter,
    request: PageRequest,
    *,
    include_phi: bool = False,
    actor: str = "",
    client_address: str | None = None,
) -> Page[StudyView]:
    """A page of studies, newest activity first; `include_phi` (admins only, checked by the caller)
    adds the original identity and writes a `phi_read` audit event in the same transaction."""
    with node.sessions.begin() as session:
        rows, total = fetch_page(session, _filtered(filters), page=request.page, page_size=request.page_size)
        states = _latest_deid_status(session, [row.id for row in rows])
        items = [_view(row, states.get(row.id), include_phi=include_phi) for row in rows]
        if include_phi:
            _audit_phi_read(
                session,
                actor=actor,
                object_ref=None,
                count=len(items),
                now=node.clock.now(),
                client_address=client_address,
            )
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)


def study_detail(
    node: Node,
    study_id: str,
    *,
    include_phi: bool = False,
    actor: str = "",
    client_address: str | None = None,
) -> StudyDetail:
    with node.sessions.begin() as session:
        study = session.get(Study, study_id)
        if study is None:
            raise NotFound()
        jobs = session.scalars(
            select(Job).where(Job.study_id == study_id).order_by(Job.created_at, Job.id)
        ).all()
        latest = next((job.status for job in reversed(jobs) if job.kind == JobKind.DEIDENTIFY), None)
        series_count = session.scalar(select(func.count()).where(Series.study_id == study_id)) or 0
        outcomes = session.execute(
            select(DeidInstance.outcome, DeidInstance.reason_code).where(DeidInstance.study_id == study_id)
        ).all()
        reasons = Counter(code for outcome, code in outcomes if outcome == "withheld" and code)
        if include_phi:
            _audit_phi_read(
                session,
                actor=actor,
                object_ref=study_id,
                count=1,
                now=node.clock.now(),
                client_address=client_address,
            )
        return StudyDetail(
            study=_view(study, latest, include_phi=include_phi),
            series_count=series_count,
            deidentified=sum(1 for outcome, _ in outcomes if outcome == "deidentified"),
            withheld=sum(1 for outcome, _ in outcomes if outcome == "withheld"),
            withheld_reasons=dict(sorted(reasons.items())),
            jobs=[
                JobSummary(
                    id=job.id,
                    kind=job.kind,
                    status=job.status,
                    attempts=job.attempts,
                    last_error_code=job.last_error_code,
                )
                for job in jobs
            ],
        )
