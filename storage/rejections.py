"""Rejected inputs: what was refused, why (stable codes), and where the quarantined bytes are."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Rejection, ValidationResult, new_id


def add_rejection(session: Session, rejection: Rejection) -> None:
    session.add(rejection)
    session.add(
        ValidationResult(
            id=new_id("val"),
            rejection_id=rejection.id,
            passed=False,
            codes=rejection.codes,
            checked_at=rejection.received_at,
        )
    )


def list_rejections(session: Session, *, limit: int = 100) -> Sequence[Rejection]:
    return session.scalars(select(Rejection).order_by(Rejection.received_at.desc()).limit(limit)).all()
