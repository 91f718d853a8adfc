"""Fixtures of the storage tests: sessions on the test's database (PostgreSQL and SQLite), a start time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, make_sessionmaker


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def t0() -> datetime:
    return datetime.now(UTC)
