"""storage.db: SQLite writers queue on the flock from BEGIN to COMMIT/ROLLBACK, across connections."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from storage.db import make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'lock.db'}")
    with engine.begin() as connection:
        connection.execute(text("create table t (n integer)"))
    yield engine
    engine.dispose()


def _insert_in_thread(engine: Engine, started: threading.Event, done: threading.Event) -> threading.Thread:
    def insert() -> None:
        started.set()
        with engine.begin() as connection:
            connection.execute(text("insert into t values (2)"))
        done.set()

    thread = threading.Thread(target=insert)
    thread.start()
    return thread


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_a_second_writer_waits_for_the_first_and_then_proceeds(engine: Engine, ending: str) -> None:
    started, done = threading.Event(), threading.Event()
    with engine.connect() as first:
        transaction = first.begin()
        first.execute(text("insert into t values (1)"))
        thread = _insert_in_thread(engine, started, done)
        assert started.wait(5)
        assert not done.wait(0.3), "the second writer must queue behind the open transaction"
        released_at = time.monotonic()
        getattr(transaction, ending)()
    assert done.wait(5)
    assert time.monotonic() - released_at < 1.0, "woken by the release, not by a busy-handler retry"
    thread.join(5)
    with engine.connect() as reader:
        rows = sorted(n for (n,) in reader.execute(text("select n from t")))
    assert rows == ([1, 2] if ending == "commit" else [2])


def test_a_failed_statement_releases_the_lock_with_the_rollback(engine: Engine) -> None:
    with pytest.raises(Exception, match="no such table"), engine.begin() as connection:
        connection.execute(text("insert into missing values (1)"))
    started, done = threading.Event(), threading.Event()
    _insert_in_thread(engine, started, done).join(5)
    assert done.is_set()


def test_writers_wait_on_the_flock_itself(engine: Engine, tmp_path: Path) -> None:
    """Another process holding the lock file (here: this test) stops writers, though SQLite is free."""
    fd = os.open(tmp_path / "lock.db.writer-lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started, done = threading.Event(), threading.Event()
        thread = _insert_in_thread(engine, started, done)
        assert started.wait(5)
        assert not done.wait(0.3)
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert done.wait(5)
        thread.join(5)
    finally:
        os.close(fd)
