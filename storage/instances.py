"""Stored instances, their validation results and repeated receipts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import DuplicateReceipt, Instance, ValidationResult, new_id


def find_instance(session: Session, *, original_sop_instance_uid: str) -> Instance | None:
    statement = select(Instance).where(Instance.original_sop_instance_uid == original_sop_instance_uid)
    return session.execute(statement.with_for_update()).scalar_one_or_none()


def add_instance(session: Session, instance: Instance, *, now: datetime) -> None:
    session.add(instance)
    session.add(
        ValidationResult(id=new_id("val"), instance_id=instance.id, passed=True, codes="", checked_at=now)
    )


def add_duplicate_receipt(session: Session, receipt: DuplicateReceipt) -> None:
    session.add(receipt)


def count_instances(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Instance)) or 0
