"""Liveness and readiness: what `/healthz` and `/readyz` answer, as facts about the node."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from storage import migrate

if TYPE_CHECKING:
    from dicom_node.services.node import Node


@dataclass(frozen=True, slots=True)
class Readiness:
    database: bool
    migrations_at_head: bool
    scp_listening: bool
    # No inference stage yet: no model is required, and none is loaded.
    model_loaded: bool = False
    model_required: bool = False
    provider: str | None = None

    @property
    def ready(self) -> bool:
        return (
            self.database
            and self.migrations_at_head
            and self.scp_listening
            and (self.model_loaded or not self.model_required)
        )


def readiness(node: Node, *, scp_listening: Callable[[], bool]) -> Readiness:
    database = at_head = False
    try:
        with node.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            database = True
            at_head = migrate.at_head(connection)
    except SQLAlchemyError:
        pass
    return Readiness(database=database, migrations_at_head=at_head, scp_listening=scp_listening())


def tcp_listening(host: str, port: int, *, timeout: float = 1.0) -> Callable[[], bool]:
    """A probe for an SCP in another process or host: does its port accept a connection?"""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host

    def probe() -> bool:
        try:
            with socket.create_connection((target, port), timeout=timeout):
                return True
        except OSError:
            return False

    return probe
