"""INSERT … ON CONFLICT DO NOTHING for both dialects: concurrent receivers race to create a row."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import Base


def insert_if_absent(session: Session, model: type[Base], values: dict[str, Any], *, unique: str) -> bool:
    """Insert `values` unless a row with the same `unique` column exists; True when inserted."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(model).values(**values).on_conflict_do_nothing(index_elements=[unique])
    result = session.execute(statement)
    return bool(result.rowcount)  # type: ignore[attr-defined]
