"""The pseudonym map (PHI at rest): original ↔ pseudonym, written by de-identification, read to re-identify.

Pseudonyms are keyed and deterministic, so a mapping made twice (a re-sent study, two workers) is the
same row; inserts are ON CONFLICT DO NOTHING on (key, kind, original).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import PseudonymEntry

_pseudonyms: Table = PseudonymEntry.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Mapping:
    kind: str
    original: str
    pseudonym: str


def record_mappings(
    session: Session, mappings: Iterable[Mapping], *, key_id: str, study_id: str | None, now: datetime
) -> None:
    rows = [
        {
            "key_id": key_id,
            "kind": mapping.kind,
            "original": mapping.original,
            "pseudonym": mapping.pseudonym,
            "first_study_id": study_id,
            "created_at": now,
        }
        for mapping in {(m.kind, m.original): m for m in mappings}.values()
    ]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(_pseudonyms).on_conflict_do_nothing(
        index_elements=["key_id", "kind", "original"]
    )
    session.execute(statement, rows)


def original_of(session: Session, *, kind: str, pseudonym: str, key_id: str) -> str | None:
    """Re-identification: the original value behind a pseudonym made under `key_id` (a PHI read)."""
    return session.scalar(
        select(PseudonymEntry.original).where(
            PseudonymEntry.kind == kind,
            PseudonymEntry.pseudonym == pseudonym,
            PseudonymEntry.key_id == key_id,
        )
    )


def pseudonym_of(session: Session, *, kind: str, original: str, key_id: str) -> str | None:
    return session.scalar(
        select(PseudonymEntry.pseudonym).where(
            PseudonymEntry.kind == kind,
            PseudonymEntry.original == original,
            PseudonymEntry.key_id == key_id,
        )
    )
