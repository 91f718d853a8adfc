"""Rows of the de-identified store: one per original instance, with its outcome and report (no PHI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.models import DeidInstance, DeidOutcome, Instance, Series, Study, new_id


@dataclass(frozen=True, slots=True)
class SourceInstance:
    """An original instance of a study, as de-identification needs it."""

    id: str
    blob_key: str
    sha256: str


@dataclass(frozen=True, slots=True)
class DeidRecord:
    """What de-identifying one instance produced; `blob_key` is None when it was withheld."""

    instance_id: str
    source_sha256: str
    outcome: DeidOutcome
    reason_code: str | None
    blob_key: str | None
    size_bytes: int | None
    sha256: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    pixel_decision: str | None
    report: str


def study_sources(session: Session, study_id: str) -> list[SourceInstance]:
    rows = session.execute(
        select(Instance.id, Instance.blob_key, Instance.sha256)
        .where(Instance.study_id == study_id)
        .order_by(Instance.received_at, Instance.id)
    )
    return [SourceInstance(id=row[0], blob_key=row[1], sha256=row[2]) for row in rows]


def done_sources(session: Session, study_id: str) -> dict[str, str]:
    """instance id → source sha256 of what is already de-identified (or withheld) for the study."""
    rows = session.execute(
        select(DeidInstance.instance_id, DeidInstance.source_sha256).where(DeidInstance.study_id == study_id)
    )
    return {row[0]: row[1] for row in rows}


def save_records(
    session: Session,
    records: Sequence[DeidRecord],
    *,
    study_id: str,
    generation: int,
    key_id: str,
    policy_hash: str,
    now: datetime,
) -> list[str]:
    """Insert or replace the rows of `records`; returns the blob keys of copies they superseded."""
    existing = {
        row.instance_id: row
        for row in session.scalars(
            select(DeidInstance).where(DeidInstance.instance_id.in_([r.instance_id for r in records]))
        )
    }
    superseded: list[str] = []
    for record in records:
        row = existing.get(record.instance_id)
        if row is None:
            row = DeidInstance(id=new_id("din"), instance_id=record.instance_id, created_at=now)
            session.add(row)
        elif row.blob_key is not None and row.blob_key != record.blob_key:
            superseded.append(row.blob_key)
        row.study_id = study_id
        row.source_sha256 = record.source_sha256
        row.outcome = record.outcome
        row.reason_code = record.reason_code
        row.blob_key = record.blob_key
        row.size_bytes = record.size_bytes
        row.sha256 = record.sha256
        row.study_instance_uid = record.study_instance_uid
        row.series_instance_uid = record.series_instance_uid
        row.sop_instance_uid = record.sop_instance_uid
        row.pixel_decision = record.pixel_decision
        row.report = record.report
        row.key_id = key_id
        row.policy_hash = policy_hash
        row.generation = generation
        row.updated_at = now
    return superseded


def study_records(session: Session, study_id: str) -> Sequence[DeidInstance]:
    return session.scalars(
        select(DeidInstance).where(DeidInstance.study_id == study_id).order_by(DeidInstance.created_at)
    ).all()


def referenced_deid_keys(session: Session, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    found = session.scalars(select(DeidInstance.blob_key).where(DeidInstance.blob_key.in_(keys)))
    return {key for key in found if key is not None}


def mark_study_deidentified(
    session: Session,
    study_id: str,
    *,
    pseudonym_patient_id: str | None,
    pseudonym_study_instance_uid: str | None,
    now: datetime,
) -> None:
    """Give the study the identifiers non-PHI views show, and its modalities (not PHI)."""
    modalities = sorted(
        {m for m in session.scalars(select(Series.modality).where(Series.study_id == study_id)) if m}
    )
    values: dict[str, object] = {"deidentified_at": now, "modalities": ",".join(modalities)[:64] or None}
    if pseudonym_patient_id is not None:
        values["pseudonym_patient_id"] = pseudonym_patient_id
    if pseudonym_study_instance_uid is not None:
        values["pseudonym_study_instance_uid"] = pseudonym_study_instance_uid
    session.execute(update(Study).where(Study.id == study_id).values(**values))
