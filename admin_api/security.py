"""Who may call what: one table of (method, route) → least role, enforced by one dependency.

Every route of the app must be in ROUTE_ROLES (a test checks it), so a new endpoint cannot ship without
a decision; `None` marks the few public routes. Rate limits apply per client address to every request
(login included, against password guessing) and per caller once authenticated.
"""

from __future__ import annotations

from typing import Final

from fastapi import Request

from admin_api.context import ApiContext
from admin_api.errors import ApiError
from admin_api.ratelimit import retry_after_header
from dicom_node.core import metrics
from dicom_node.services import auth
from dicom_node.services.auth import AuthenticationFailed, Principal
from storage.models import Role

V1: Final = "/api/v1"
ROUTE_ROLES: Final[dict[tuple[str, str], Role | None]] = {
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
    ("POST", f"{V1}/auth/login"): None,
    ("POST", f"{V1}/auth/logout"): Role.VIEWER,
    ("GET", f"{V1}/auth/me"): Role.VIEWER,
    ("POST", f"{V1}/auth/password"): Role.VIEWER,
    ("GET", f"{V1}/studies"): Role.VIEWER,
    ("GET", f"{V1}/studies/{{study_id}}"): Role.VIEWER,
    ("GET", f"{V1}/jobs"): Role.VIEWER,
    ("GET", f"{V1}/jobs/{{job_id}}"): Role.VIEWER,
    ("POST", f"{V1}/jobs/{{job_id}}/retry"): Role.OPERATOR,
    ("POST", f"{V1}/jobs/{{job_id}}/cancel"): Role.OPERATOR,
    ("GET", f"{V1}/rejections"): Role.VIEWER,
    ("GET", f"{V1}/rejections/{{rejection_id}}"): Role.VIEWER,
    ("GET", f"{V1}/rejections/{{rejection_id}}/bytes"): Role.ADMIN,
    ("GET", f"{V1}/audit"): Role.ADMIN,
    ("GET", f"{V1}/audit/verify"): Role.ADMIN,
    ("GET", f"{V1}/peers"): Role.VIEWER,
    ("POST", f"{V1}/peers"): Role.ADMIN,
    ("GET", f"{V1}/peers/{{ae_title}}"): Role.VIEWER,
    ("DELETE", f"{V1}/peers/{{ae_title}}"): Role.ADMIN,
    ("PATCH", f"{V1}/peers/{{ae_title}}"): Role.ADMIN,
    ("POST", f"{V1}/peers/{{ae_title}}/echo"): Role.OPERATOR,
    ("GET", f"{V1}/tokens"): Role.ADMIN,
    ("POST", f"{V1}/tokens/{{token_id}}/revoke"): Role.ADMIN,
    ("GET", f"{V1}/users"): Role.ADMIN,
    ("POST", f"{V1}/users"): Role.ADMIN,
    ("GET", f"{V1}/users/{{user_id}}"): Role.ADMIN,
    ("PATCH", f"{V1}/users/{{user_id}}"): Role.ADMIN,
}
# Reading original patient identifiers (a query flag on study routes) needs this role, and is audited.
PHI_ROLE: Final = Role.ADMIN


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _limit(limiter_wait: float, scope: str) -> None:
    if limiter_wait > 0:
        metrics.RATE_LIMITED.labels(scope=scope).inc()
        raise ApiError(
            "rate.limited",
            "Too many requests; retry later.",
            headers={"Retry-After": retry_after_header(limiter_wait)},
        )


def authorize(request: Request) -> Principal | None:
    """The dependency every route runs: rate limits, then the token and the role the table asks for."""
    context: ApiContext = request.app.state.context
    _limit(context.client_limiter.take(f"addr:{client_address(request)}"), "client")
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    key = (request.method, template or "")
    if key not in ROUTE_ROLES:
        raise ApiError("auth.forbidden", "This route has no access rule.")
    required = ROUTE_ROLES[key]
    if required is None:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError("auth.required", "A bearer token is required.", headers={"WWW-Authenticate": "Bearer"})
    try:
        principal = auth.authenticate(context.node, token.strip())
    except AuthenticationFailed as exc:
        raise ApiError(exc.code, exc.message, headers={"WWW-Authenticate": "Bearer"}) from exc
    _limit(context.user_limiter.take(f"tok:{principal.user_id or principal.token_id}"), "user")
    if not principal.may(required):
        raise ApiError("auth.forbidden", "Your role does not allow this.")
    request.state.principal = principal
    return principal


def principal_of(request: Request) -> Principal:
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is None:
        raise ApiError("auth.required", "A bearer token is required.")
    return principal


def require_phi_reader(request: Request) -> Principal:
    principal = principal_of(request)
    if not principal.may(PHI_ROLE):
        raise ApiError("auth.forbidden", "Only admins may read original identifiers.")
    return principal
