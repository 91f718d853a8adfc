"""Migrations: `upgrade head` on an empty database is the ORM schema, and down/up round-trips."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, pool, text

from storage import migrate
from storage.models import Base
from tests.conftest import DATABASES
from tests.harness.postgres import PostgresCluster


@pytest.fixture(params=DATABASES)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nothing has touched: not a copy of the migrated template."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database()
    yield cluster.url(name)
    cluster.drop_database(name)


def schema_diff(url: str) -> list[Any]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_the_empty_database_really_is_empty(empty_database_url: str) -> None:
    assert table_names(empty_database_url) == set()
    assert migrate.current_revision(empty_database_url) is None


def test_upgrade_head_matches_the_orm_metadata(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()
    assert table_names(empty_database_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert schema_diff(empty_database_url) == []


def test_downgrade_base_then_upgrade_head_round_trips(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    migrate.downgrade(empty_database_url, "base")
    assert table_names(empty_database_url) <= {"alembic_version"}
    assert migrate.current_revision(empty_database_url) is None

    migrate.upgrade(empty_database_url)
    assert migrate.current_revision(empty_database_url) == migrate.head_revision()
    assert schema_diff(empty_database_url) == []


def test_upgrade_is_idempotent(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url)
    migrate.upgrade(empty_database_url)
    assert schema_diff(empty_database_url) == []


def test_the_comparison_sees_a_drifted_schema(empty_database_url: str) -> None:
    """Guards the guard: a schema that differs from the ORM gives a non-empty diff."""
    migrate.upgrade(empty_database_url)
    engine = create_engine(empty_database_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP INDEX ix_jobs_status_run_at"))
    finally:
        engine.dispose()
    diff = schema_diff(empty_database_url)
    assert [entry[0] for entry in diff] == ["add_index"]


def test_there_is_one_head() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
