"""The admin API (FastAPI): one app, built from an ApiContext by the composition root.

Middleware binds a correlation id to every request (from `X-Request-ID` when it is a safe token, else
new) and returns it as `X-Correlation-ID`; every route runs `security.authorize`; errors are mapped
once (`errors.py`); latency and responses are counted by route template, never by raw path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

from fastapi import Depends, FastAPI, Request, Response

from admin_api import errors, openapi
from admin_api.context import ApiContext
from admin_api.routes import access, audit, auth, health, jobs, peers, rejections, studies
from admin_api.security import authorize
from dicom_node.core import metrics
from dicom_node.core.observability import bound, correlation_id, new_correlation_id
from storage.audit import request_origin

_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{8,64}")


def _user_agent(request: Request) -> str | None:
    """The User-Agent for the audit trail: printable ASCII, at most 200 characters."""
    agent = "".join(ch for ch in request.headers.get("user-agent", "") if 32 <= ord(ch) < 127)[:200]
    return agent or None


def create_app(context: ApiContext) -> FastAPI:
    app = FastAPI(
        title="dicom-node admin API",
        version="1",
        description="Studies, jobs, rejections, peers, access and the audit trail of a dicom-node. "
        "Every failure answers one body, `ErrorResponse`; send tokens as `Authorization: Bearer dn_…`.",
        dependencies=[Depends(authorize)],
    )
    app.state.context = context
    errors.install(app)
    openapi.install(app)
    for router in (
        health.router,
        auth.router,
        studies.router,
        jobs.router,
        rejections.router,
        audit.router,
        peers.router,
        access.tokens,
        access.users,
    ):
        app.include_router(router)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        supplied = request.headers.get("x-request-id", "")
        request_id = supplied if _REQUEST_ID.fullmatch(supplied) else new_correlation_id("req")
        started = time.perf_counter()
        origin = (request.client.host if request.client else None, _user_agent(request))
        token = request_origin.set(origin)
        try:
            with bound(correlation_id, request_id):
                try:
                    response = await call_next(request)
                except Exception as exc:  # Starlette's 500 would answer outside this id, then re-raise
                    response = errors.unexpected_error(exc)
        finally:
            request_origin.reset(token)
        route = getattr(request.scope.get("route"), "path", None) or "unmatched"
        metrics.HTTP_SECONDS.labels(route=route, method=request.method).observe(time.perf_counter() - started)
        metrics.HTTP_RESPONSES.labels(
            route=route, method=request.method, status_class=f"{response.status_code // 100}xx"
        ).inc()
        response.headers["X-Correlation-ID"] = request_id
        return response

    return app
