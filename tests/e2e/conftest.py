"""Fixtures for end-to-end tests of `dicom-node serve` as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, make_sessionmaker
from tests.harness.node_process import NodeProcess, node_env
from tests.harness.ports import free_port

StartNode = Callable[..., NodeProcess]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def dicom_port() -> int:
    return free_port()


@pytest.fixture
def base_settings(data_dir: Path, database_url: str, dicom_port: int) -> dict[str, object]:
    """DICOM_NODE_* settings every node of a test shares: same DATA_DIR, database and port."""
    return {
        "data_dir": data_dir,
        "database_url": database_url,
        "dicom_host": "127.0.0.1",
        "dicom_port": dicom_port,
        "scp_processes": 1,
        "api_port": 0,
        "metrics_port": 0,
        "shutdown_grace_seconds": 5,
        "log_level": "INFO",
    }


@pytest.fixture
def start_node(tmp_path: Path, base_settings: dict[str, object]) -> Iterator[StartNode]:
    """Start `dicom-node serve` (or `command`) with the base settings plus overrides; stopped at teardown."""
    started: list[NodeProcess] = []

    def _start(
        *, wait: bool = True, timeout: float = 60.0, command: str = "serve", **overrides: object
    ) -> NodeProcess:
        env = node_env(**{**base_settings, **overrides})
        node = NodeProcess(env, tmp_path / "logs", command=command, name=f"node-{len(started)}")
        started.append(node)
        node.start()
        if wait:
            node.wait_listening(timeout)
        return node

    yield _start
    for node in started:
        node.stop(timeout=30)


@pytest.fixture
def db(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the node's database, from the test process."""
    engine = make_engine(database_url)
    yield make_sessionmaker(engine)
    engine.dispose()
