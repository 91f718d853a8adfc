"""Study completion: a receiving study completes once idle; `storage.arrivals` re-opens it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.events import append_event
from storage.jobs import enqueue
from storage.models import EventKind, JobKind, Study, StudyStatus


def complete_idle_studies(
    session: Session, *, idle_before: datetime, now: datetime, limit: int = 100, max_attempts: int = 5
) -> list[str]:
    """Complete every receiving study idle since `idle_before`; returns the ids this call completed.

    Completing makes the study's de-identification job in the same transaction, so a completed study
    always has its job, however the node stops.

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
        enqueue(
            session,
            kind=JobKind.DEIDENTIFY,
            study_id=study_id,
            generation=generation,
            now=now,
            max_attempts=max_attempts,
        )
        completed.append(study_id)
    return completed
