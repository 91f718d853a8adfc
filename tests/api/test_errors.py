"""One error shape everywhere, correlation ids from safe X-Request-IDs, no submitted values echoed."""

from __future__ import annotations

import re

import pytest

from dicom_node.services import catalog
from storage.models import Role
from tests.api.conftest import Api, TestClient, assert_error

CANARY = "CANARYVALUE7731"
GENERATED = re.compile(r"req_[0-9a-f]+")


def test_a_safe_request_id_becomes_the_correlation_id_of_answers_and_errors(api: Api) -> None:
    ok = api.get("/api/v1/studies", Role.VIEWER, headers={"X-Request-ID": "lb-1234abcd.x_y"})
    assert ok.status_code == 200 and ok.headers["x-correlation-id"] == "lb-1234abcd.x_y"
    refused = api.get("/api/v1/audit", Role.VIEWER, headers={"X-Request-ID": "lb-5678efgh"})
    assert assert_error(refused, 403, "auth.forbidden")["correlation_id"] == "lb-5678efgh"


def test_an_unsafe_request_id_is_replaced(api: Api) -> None:
    for supplied in ("short", "has spaces in it", "x" * 65, f"{CANARY};drop", "ü-unicode-id"):
        answer = api.client.get("/api/v1/studies", headers={"X-Request-ID": supplied.encode()})
        error = assert_error(answer, 401, "auth.required")
        assert GENERATED.fullmatch(error["correlation_id"]), (supplied, error)
        assert CANARY not in answer.text and CANARY not in str(answer.headers)


def test_each_request_gets_its_own_correlation_id(api: Api) -> None:
    ids = {api.get("/healthz").headers["x-correlation-id"] for _ in range(3)}
    assert len(ids) == 3 and all(GENERATED.fullmatch(i) for i in ids)


def test_an_unknown_route_and_a_wrong_method_have_the_error_shape(api: Api) -> None:
    assert_error(api.get(f"/api/v1/nothing/{CANARY}", Role.ADMIN), 404, "request.not_found")
    assert_error(api.get("/nowhere"), 404, "request.not_found")
    assert_error(api.request("PUT", "/api/v1/studies", Role.ADMIN), 405, "request.method_not_allowed")


def test_not_found_conflict_and_filter_errors_have_the_error_shape(api: Api) -> None:
    assert_error(api.get(f"/api/v1/studies/{CANARY}", Role.VIEWER), 404, "request.not_found")
    assert_error(api.get(f"/api/v1/jobs/{CANARY}", Role.VIEWER), 404, "request.not_found")
    assert_error(api.post(f"/api/v1/jobs/{CANARY}/retry", Role.OPERATOR), 404, "request.not_found")
    assert_error(api.get(f"/api/v1/rejections/{CANARY}", Role.VIEWER), 404, "request.not_found")
    assert_error(api.get(f"/api/v1/peers/{CANARY}", Role.VIEWER), 404, "peer.not_found")
    assert_error(api.get(f"/api/v1/studies?status={CANARY}", Role.VIEWER), 422, "request.filter_invalid")
    assert_error(api.get(f"/api/v1/jobs?status={CANARY}", Role.VIEWER), 422, "request.filter_invalid")


INVALID = [
    ("GET", f"/api/v1/studies?page={CANARY}", None, "query.page"),
    ("GET", f"/api/v1/studies?page_size={CANARY}", None, "query.page_size"),
    ("GET", f"/api/v1/studies?received_from={CANARY}", None, "query.received_from"),
    ("GET", f"/api/v1/studies?include_phi={CANARY}", None, "query.include_phi"),
    ("GET", f"/api/v1/audit?page={CANARY}&page_size={CANARY}", None, "query.page, query.page_size"),
    ("POST", "/api/v1/peers", {"ae_title": CANARY * 2, "host": "h", "port": 104}, "ae_title"),
    ("POST", "/api/v1/peers", {"ae_title": "OK", "host": f"{CANARY} x", "port": 104}, "host"),
    ("POST", "/api/v1/peers", {"ae_title": "OK", "host": "h", "port": CANARY}, "port"),
    ("POST", "/api/v1/auth/login", {"username": CANARY * 9, "password": "p"}, "username"),
]


def test_a_validation_error_names_the_field_and_never_echoes_the_value(api: Api) -> None:
    for method, path, body, field in INVALID:
        answer = api.request(method, path, Role.ADMIN, json=body)
        error = assert_error(answer, 422, "request.invalid")
        assert field in error["message"], (path, body, error)
        assert CANARY.lower() not in answer.text.lower(), (path, body, answer.text)


def test_a_malformed_json_body_is_invalid_without_echo(api: Api) -> None:
    answer = api.post(
        "/api/v1/peers",
        Role.ADMIN,
        content=f'{{"ae_title": "{CANARY}", '.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert_error(answer, 422, "request.invalid")
    assert CANARY not in answer.text


def test_an_unexpected_error_is_internal_with_no_detail_and_a_correlation_id(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_: object, **__: object) -> None:
        raise RuntimeError(CANARY)

    monkeypatch.setattr(catalog, "list_studies", explode)
    client = TestClient(api.client.app, raise_server_exceptions=False)
    answer = client.get(
        "/api/v1/studies", headers={**api.headers(Role.VIEWER), "X-Request-ID": "lb-internal-1"}
    )
    error = assert_error(answer, 500, "internal.error")
    assert error["correlation_id"] == "lb-internal-1"
    assert CANARY not in answer.text


def test_an_unknown_field_is_refused_without_echoing_its_name(api: Api) -> None:
    """A key is the caller's text too: a field named after a patient must not come back."""
    body = {"ae_title": "PACS", "host": "10.0.0.5", "port": 104, CANARY: "x"}
    answer = api.request("POST", "/api/v1/peers", Role.ADMIN, json=body)
    error = assert_error(answer, 422, "request.invalid")
    assert "unknown field" in error["message"]
    assert CANARY.lower() not in answer.text.lower()
