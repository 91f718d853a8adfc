"""Get-or-create for both dialects: concurrent receivers race to create the same study or series."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.db import is_postgresql
from storage.models import Base

RowT = TypeVar("RowT", bound=Base)


def get_or_insert(
    session: Session, lookup: Select[RowT], model: type[RowT], values: dict[str, Any], *, unique: str
) -> RowT:
    """The row `lookup` finds, inserting `values` first when there is none.

    The lookup comes first because the row usually exists; the insert is INSERT … ON CONFLICT DO
    NOTHING on the `unique` column, so a receiver that loses the race finds the winner's row.
    """
    found = session.execute(lookup).scalar_one_or_none()
    if found is not None:
        return found
    dialect = postgresql if is_postgresql(session) else sqlite
    session.execute(dialect.insert(model).values(**values).on_conflict_do_nothing(index_elements=[unique]))
    return session.execute(lookup).scalar_one()
