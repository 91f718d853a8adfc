"""Engines and sessions for SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode with synchronous=FULL, so a committed instance row survives power loss, and
every transaction starts with BEGIN IMMEDIATE (SQLAlchemy's documented pysqlite fix), so concurrent
receiver processes serialise on the write lock instead of failing on upgrade from a read lock.

Writers also queue on an OS file lock (`<database>.writer-lock`, flock) taken just before BEGIN
IMMEDIATE and released just after COMMIT or ROLLBACK. SQLite's own busy handler waits for a held
lock by sleeping 1, 2, 5, 10… ms and retrying; the kernel wakes a flock waiter the moment the lock
is free. With several receiver processes and associations that is the difference between queueing
for one commit (~1 ms) and sleeping through several.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create the engine for `url`, with the pragmas and pool settings the node relies on."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            connect_args["factory"] = _WriterLockedConnection
        engine = create_engine(url, connect_args=connect_args)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        dbapi_connection = connection.connection.dbapi_connection
        if isinstance(dbapi_connection, _WriterLockedConnection):
            dbapi_connection.acquire_writer_lock()
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if isinstance(dbapi_connection, _WriterLockedConnection):
                dbapi_connection.release_writer_lock()
            raise


class _WriterLockedConnection(sqlite3.Connection):
    """A pysqlite connection that holds the database's writer flock from BEGIN to COMMIT/ROLLBACK.

    Each connection opens the lock file itself: flock locks belong to the open file description,
    so two connections of one process exclude each other just as two processes do.
    """

    def __init__(self, database: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(database, *args, **kwargs)
        self._lock_fd = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._locked = False

    def acquire_writer_lock(self) -> None:
        if not self._locked:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._locked = True

    def release_writer_lock(self) -> None:
        if self._locked:
            self._locked = False
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self.release_writer_lock()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release_writer_lock()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release_writer_lock()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit, so adapters can read ids they just wrote."""
    return sessionmaker(engine, expire_on_commit=False)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
