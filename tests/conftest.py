"""Shared fixtures: a real PostgreSQL and SQLite for every storage-touching test, nodes, and SCPs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_node.bootstrap import build_node, configure_libraries, scp_config
from dicom_node.core.clock import ManualClock
from dicom_node.core.settings import Settings, load_settings
from dicom_node.net.scp import ScpServer, start_scp
from dicom_node.services.node import Node
from storage import migrate
from tests.harness.postgres import TEMPLATE_DB, PostgresCluster

DATABASES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session", autouse=True)
def _scrub_environment() -> None:
    """Settings come from each test, never from the developer's shell."""
    for name in list(os.environ):
        if name.startswith("DICOM_NODE_"):
            del os.environ[name]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    cluster.start()
    cluster.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    migrate.upgrade(cluster.url(TEMPLATE_DB))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """A freshly migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "dicom-node.db"
        shutil.copyfile(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = cluster.create_database(template=TEMPLATE_DB)
    yield cluster.url(name)
    cluster.drop_database(name)


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "dicom_host": "127.0.0.1",
        "dicom_port": 0,
        "scp_processes": 1,
        "shutdown_grace_seconds": 5.0,
    }
    values.update(overrides)
    return load_settings(None, **values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path / "var", database_url)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def node(settings: Settings, clock: ManualClock) -> Iterator[Node]:
    built = build_node(settings, clock=clock)
    configure_libraries(built.blobs.tmp_dir)
    yield built
    built.engine.dispose()


@pytest.fixture
def scp(node: Node, settings: Settings) -> Iterator[ScpServer]:
    """The node's SCP in this process, on a free loopback port."""
    server = start_scp(node, scp_config(settings))
    yield server
    server.stop(0)


NodeMaker = Callable[..., tuple[Node, ScpServer]]


@pytest.fixture
def make_node(tmp_path: Path, database_url: str) -> Iterator[NodeMaker]:
    """One node with its SCP per test, on the test's database, with settings overrides."""
    started: list[tuple[Node, ScpServer]] = []

    def make(**overrides: object) -> tuple[Node, ScpServer]:
        assert not started, "one node per test: the database is the test's"
        settings = make_settings(tmp_path / "var", database_url, **overrides)
        node = build_node(settings, clock=ManualClock())
        configure_libraries(node.blobs.tmp_dir)
        server = start_scp(node, scp_config(settings))
        started.append((node, server))
        return node, server

    yield make
    for node, server in started:
        server.stop(0)
        node.engine.dispose()
