"""The pipeline outbox: stages append events in the same transaction as the change they announce."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Event, EventKind


def append_event(
    session: Session, *, kind: EventKind, study_id: str | None, generation: int | None, now: datetime
) -> None:
    session.add(Event(kind=kind, study_id=study_id, generation=generation, created_at=now))


def list_events(
    session: Session, *, after_id: int = 0, kind: EventKind | None = None, limit: int = 100
) -> Sequence[Event]:
    """Events in commit-id order after a consumer's cursor."""
    statement = select(Event).where(Event.id > after_id).order_by(Event.id).limit(limit)
    if kind is not None:
        statement = statement.where(Event.kind == kind)
    return session.scalars(statement).all()
