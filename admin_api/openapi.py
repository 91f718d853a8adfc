"""The OpenAPI document (`/openapi.json`, `/docs`) says what the API really answers.

FastAPI documents only successes and its own 422 body. This adds, from the tables that govern the
answers themselves: the bearer scheme and each route's role (`security.ROUTE_ROLES`), the one error body
for every failure a route can give (auth on protected routes, 404 where a path names an object, 400
for an unreadable body, 422, 429, 503), and the route-specific ones each route declares with
`errors_documented`. The fuzz test (tests/api/test_api_fuzz.py) holds every answer to this document.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from admin_api.errors import ErrorResponse
from admin_api.security import ROUTE_ROLES

BEARER: Final = "bearer"
_ERROR_REF: Final = {"$ref": "#/components/schemas/ErrorResponse"}
_DESCRIPTIONS: Final = {
    400: "The body is not readable JSON",
    401: "No valid token (`auth.required`, `auth.failed`)",
    403: "The token's role is below the route's",
    404: "No such object",
    422: "A parameter or body field is invalid (`request.*`); the message names the fields, never values",
    429: "Rate limited; `Retry-After` says when to retry",
    503: "The database is unavailable",
}
# Failures only some routes give, which they declare with `errors_documented`.
_ROUTE_ERRORS: Final = {
    401: "Wrong user name or password (`auth.failed`)",
    403: "Refused: the error code says why",
    409: "The object's state does not allow this: the error code says why",
    423: "The account is locked after failed logins; `Retry-After` says for how long",
}
# Routes that read no database and never wait on one: readiness answers its own 503 body.
_NO_DATABASE: Final = {"/healthz", "/readyz", "/metrics"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_REF}}}


def _complete(path: str, method: str, operation: dict[str, Any]) -> None:
    role = ROUTE_ROLES.get((method.upper(), path))
    responses: dict[str, Any] = operation.setdefault("responses", {})
    wanted = [422, 429]
    if role is not None:
        operation["security"] = [{BEARER: []}]
        note = f"Requires the **{role.value}** role or above."
        operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
        wanted += [401, 403]
    if "{" in path:
        wanted.append(404)
    if "requestBody" in operation:
        wanted.append(400)
    if path not in _NO_DATABASE:
        wanted.append(503)
    for status in sorted(wanted):
        key = str(status)
        if key == "422" or key not in responses:  # FastAPI's own 422 body is not the one we send
            responses[key] = _error(_DESCRIPTIONS[status])


def install(app: FastAPI) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(error_schema.pop("$defs", {}))
            schemas["ErrorResponse"] = error_schema
            components["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
            for path, methods in schema.get("paths", {}).items():
                for method, operation in methods.items():
                    _complete(path, method, operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def errors_documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's own failures, for its decorator's `responses`: `responses=errors_documented(409)`."""
    return {status: {"model": ErrorResponse, "description": _ROUTE_ERRORS[status]} for status in statuses}
