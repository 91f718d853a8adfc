"""Admin list queries: one page and its total (every list paginates the same way), comma-list matching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session


def fetch_page(
    session: Session, statement: Select[Any], *, page: int, page_size: int
) -> tuple[Sequence[Any], int]:
    """Rows of page `page` (1-based) of `statement`, which must be ordered, and the total row count."""
    total = session.scalar(select(func.count()).select_from(statement.order_by(None).subquery())) or 0
    rows = session.scalars(statement.limit(page_size).offset((page - 1) * page_size)).all()
    return rows, int(total)


def comma_list_has(column: Any, value: str) -> ColumnElement[bool]:
    """`column` holds "A,B,C" and one of its items is exactly `value`."""
    return or_(
        column == value,
        column.startswith(f"{value},", autoescape=True),
        column.endswith(f",{value}", autoescape=True),
        column.contains(f",{value},", autoescape=True),
    )
