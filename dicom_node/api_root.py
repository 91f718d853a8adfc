"""The composition root of the admin API: its context and server, wired from Settings.

Apart from `bootstrap.py` because receiver and worker processes import the process code, and FastAPI
with uvicorn cost each of them ~12 MB and ~0.2 s of start-up for an API they never serve; only
`serve`'s supervisor and `dicom-node api` import this.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from admin_api.app import create_app
from admin_api.context import ApiContext
from admin_api.ratelimit import RateLimiter
from dicom_node.services.auth import AuthPolicy
from dicom_node.services.health import readiness, tcp_listening
from dicom_node.services.node_state import NodeStateCollector

if TYPE_CHECKING:
    from dicom_node.core.settings import Settings
    from dicom_node.services.node import Node


def api_context(
    settings: Settings, node: Node, *, scp_listening: Callable[[], bool] | None = None
) -> ApiContext:
    """The admin API's dependencies; without an in-process SCP, readiness probes the DICOM port."""
    probe = scp_listening or tcp_listening(settings.dicom_host, settings.dicom_port)
    return ApiContext(
        node=node,
        auth=AuthPolicy(
            session_seconds=settings.api_session_seconds,
            lockout_attempts=settings.api_lockout_attempts,
            lockout_seconds=settings.api_lockout_seconds,
        ),
        ae_title=settings.ae_title,
        readiness=lambda: readiness(node, scp_listening=probe),
        user_limiter=RateLimiter(per_minute=settings.api_rate_per_minute),
        client_limiter=RateLimiter(per_minute=settings.api_client_rate_per_minute),
        collectors=(NodeStateCollector(node),),
    )


def api_server(settings: Settings, context: ApiContext) -> uvicorn.Server:
    """The uvicorn server for the app; the caller runs it (foreground for `api`, a thread for `serve`)."""
    config = uvicorn.Config(
        create_app(context),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
    )
    return uvicorn.Server(config)
