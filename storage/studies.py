"""Studies and series: created by the first instance, completed by idleness, re-opened by a late one."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.events import append_event
from storage.models import EventKind, Series, Study, StudyStatus, new_id
from storage.upserts import get_or_insert


def lock_study(
    session: Session, *, original_study_instance_uid: str, original_patient_id: str | None, now: datetime
) -> Study:
    """The study row for this UID, created if needed and locked for this transaction."""
    statement = (
        select(Study)
        .where(Study.original_study_instance_uid == original_study_instance_uid)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return get_or_insert(
        session,
        statement,
        Study,
        {
            "id": new_id("std"),
            "original_study_instance_uid": original_study_instance_uid,
            "original_patient_id": original_patient_id,
            "status": StudyStatus.RECEIVING,
            "generation": 0,
            "instance_count": 0,
            "first_received_at": now,
            "last_received_at": now,
        },
        unique="original_study_instance_uid",
    )


def record_instance_arrival(session: Session, study: Study, *, now: datetime, new_instance: bool) -> bool:
    """Restart the study's idle timer; re-open it if it had completed. True when re-opened."""
    reopened = study.status == StudyStatus.COMPLETE
    study.status = StudyStatus.RECEIVING
    study.last_received_at = max(study.last_received_at, now)
    study.completed_at = None
    if new_instance:
        study.instance_count += 1
    if reopened:
        append_event(
            session, kind=EventKind.STUDY_REOPENED, study_id=study.id, generation=study.generation, now=now
        )
    return reopened


def ensure_series(
    session: Session, *, study_id: str, original_series_instance_uid: str, modality: str | None, now: datetime
) -> Series:
    statement = select(Series).where(Series.original_series_instance_uid == original_series_instance_uid)
    return get_or_insert(
        session,
        statement,
        Series,
        {
            "id": new_id("ser"),
            "study_id": study_id,
            "original_series_instance_uid": original_series_instance_uid,
            "modality": modality,
            "created_at": now,
        },
        unique="original_series_instance_uid",
    )


def complete_idle_studies(
    session: Session, *, idle_before: datetime, now: datetime, limit: int = 100
) -> list[str]:
    """Complete every receiving study idle since `idle_before`; returns the ids this call completed.

    The conditional UPDATE is the claim: when several processes sweep at once, or an instance of the
    study is being committed, the row lock makes exactly one of them see the study still idle.
    """
    candidates = session.scalars(
        select(Study.id)
        .where(Study.status == StudyStatus.RECEIVING, Study.last_received_at <= idle_before)
        .order_by(Study.last_received_at)
        .limit(limit)
    ).all()
    completed: list[str] = []
    for study_id in candidates:
        result = session.execute(
            update(Study)
            .where(
                Study.id == study_id,
                Study.status == StudyStatus.RECEIVING,
                Study.last_received_at <= idle_before,
            )
            .values(status=StudyStatus.COMPLETE, completed_at=now, generation=Study.generation + 1)
            .returning(Study.generation)
        )
        generation = result.scalar_one_or_none()
        if generation is None:
            continue
        append_event(
            session, kind=EventKind.STUDY_COMPLETE, study_id=study_id, generation=generation, now=now
        )
        completed.append(study_id)
    return completed


def get_study(session: Session, study_id: str) -> Study | None:
    return session.get(Study, study_id)
