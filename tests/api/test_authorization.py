"""Every (method, route) of ROUTE_ROLES against no token and each role; the table matches the app."""

from __future__ import annotations

import re

import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from admin_api.app import create_app
from admin_api.security import ROUTE_ROLES
from dicom_node import api_root
from dicom_node.core.settings import Settings
from dicom_node.services.auth import add_user, create_machine_token
from dicom_node.services.node import Node
from storage.models import Role
from tests.api.conftest import ROLES, Api, assert_error

FASTAPI_DOCS = {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
_ORDER = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
PASSWORD = "correct horse battery"
DUMMY = {
    "study_id": "std_missing",
    "job_id": "job_missing",
    "rejection_id": "rej_missing",
    "token_id": "tok_missing",
    "user_id": "usr_missing",
}


def _path(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: DUMMY.get(m.group(1), "NOSUCHAE"), template)


def _body(method: str, template: str) -> dict[str, object] | None:
    if (method, template) == ("POST", "/api/v1/peers"):
        return {"ae_title": "MATRIXAE", "host": "127.0.0.1", "port": 11112}
    if template.endswith("/auth/login"):
        return {"username": "matrix", "password": PASSWORD}
    return None


def test_every_route_of_the_app_has_an_access_rule_and_every_rule_a_route(
    node: Node, settings: Settings
) -> None:
    app = create_app(api_root.api_context(settings, node, scp_listening=lambda: True))
    # FastAPI 0.16x keeps included routers nested in app.routes; their contexts carry the full paths.
    registered = {
        (method, context.path)
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute) and context.path not in FASTAPI_DOCS
        for method in context.methods or ()
    }
    assert len(registered) > 10
    assert registered == set(ROUTE_ROLES)


def test_each_route_refuses_no_token_and_lower_roles_and_allows_its_role_and_above(api: Api) -> None:
    add_user(api.node, username="matrix", password=PASSWORD, role=Role.VIEWER)
    for (method, template), required in ROUTE_ROLES.items():
        path = _path(template)
        anonymous = api.request(method, path, json=_body(method, template))
        if required is None:
            assert anonymous.status_code not in (401, 403), (method, template, anonymous.text)
        else:
            assert_error(anonymous, 401, "auth.required")
            assert anonymous.headers["www-authenticate"] == "Bearer"
        for role in ROLES:
            answer = api.request(method, path, role, json=_body(method, template))
            allowed = required is None or _ORDER.index(role) >= _ORDER.index(required)
            if allowed:
                assert answer.status_code not in (401, 403), (method, template, role, answer.text)
            else:
                assert_error(answer, 403, "auth.forbidden")
            if (method, template) == ("POST", "/api/v1/auth/logout") and allowed:
                api.tokens[role] = _fresh(api, role)  # logout revoked it


def _fresh(api: Api, role: Role) -> str:
    return create_machine_token(api.node, role=role, name=f"again-{role.value}").token


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "dn_abc", "Bearer dn_forged"])
def test_a_malformed_or_unknown_token_is_refused(api: Api, header: str) -> None:
    answer = api.client.get("/api/v1/studies", headers={"Authorization": header})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] in {"auth.required", "auth.failed"}


def test_an_unauthenticated_caller_gets_401_before_body_validation(api: Api) -> None:
    """Validation must not run (and answer 422) for callers who may not call the route at all."""
    assert_error(api.post("/api/v1/peers", json={"ae_title": 5}), 401, "auth.required")
    assert_error(api.post("/api/v1/peers", Role.VIEWER, json={"ae_title": 5}), 403, "auth.forbidden")
