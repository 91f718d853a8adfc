"""Property-based fuzzing of every admin API operation with schemathesis, on PostgreSQL and SQLite.

The schema is the document the running app serves (`/openapi.json`). Cases, valid and invalid, go
through the suite's TestClient on the real app with a fresh admin token each (logout and token
revocation may end the token in use), rate limits out of the way; operations with path parameters
also get cases naming objects that exist. Every response: never a 5xx, a documented status and
content type, a body matching its documented schema, every 4xx in the one error shape, and never a
traceback or SQL in a body.

No exemptions: every status the app answers must be in the document (admin_api/openapi.py), with
the one error body; the error shape is also asserted directly.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis.strategies import SearchStrategy
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation.case import Case
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from admin_api.ratelimit import RateLimiter
from admin_api.security import ROUTE_ROLES
from dicom_node import api_root
from dicom_node.core.clock import ManualClock
from dicom_node.core.settings import Settings
from dicom_node.net.scp import ScpServer
from dicom_node.services import auth
from dicom_node.services.node import Node
from storage.models import Role
from tests.api.conftest import Api, build_api, complete_studies, make_rejection, make_study

BASE_URL = "http://testserver"
# Far above what one run sends: the limits have their own tests (test_rate_limits.py).
UNLIMITED = 1_000_000
SETTINGS = hypothesis.settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Examples per operation and kind; an operation without inputs exhausts its one case at once.
POSITIVE_EXAMPLES = 8
NEGATIVE_EXAMPLES = 5
KNOWN_OBJECT_EXAMPLES = 3
LEAKS = re.compile(r"Traceback|File \"|SELECT |INSERT INTO|DELETE FROM|sqlalchemy|psycopg|sqlite3")
PEER = "FUZZPEER"

Check = Callable[..., bool | None]
AnyCase = Case[Any]
Operation = APIOperation[Any, Any, Any, Any]


@pytest.fixture
def fuzz_api(node: Node, settings: Settings, clock: ManualClock) -> Iterator[Api]:
    """The real app with rate limits out of the way."""
    context = dataclasses.replace(
        api_root.api_context(settings, node, scp_listening=lambda: True),
        user_limiter=RateLimiter(per_minute=UNLIMITED),
        client_limiter=RateLimiter(per_minute=UNLIMITED),
    )
    api = build_api(node, settings, clock, context)
    with api.client:
        yield api


def _seed(api: Api, scp: ScpServer) -> dict[str, dict[str, str]]:
    """One of everything, so pages have items and detail routes something to find: each operation's
    path parameters naming an existing object, by operation path."""
    study_ref, _ = make_study(api.node)
    complete_studies(api.node, api.clock)
    rejection_ref = make_rejection(api.node)
    user_id = auth.add_user(
        api.node, username="fuzz-user", password="a fuzzing password", role=Role.VIEWER, actor="cli"
    )
    victim = auth.create_machine_token(api.node, role=Role.VIEWER, name="fuzz-victim").token_id
    # The node's own SCP answers the C-ECHO (an unreachable peer leaks a pynetdicom socket); PATCH and
    # DELETE, fuzzed before the echo, get another peer.
    echo = api.settings.ae_title
    for peer in (
        {"ae_title": PEER, "host": "127.0.0.1", "port": 104},
        {"ae_title": echo, "host": "127.0.0.1", "port": scp.port},
    ):
        assert api.post("/api/v1/peers", Role.ADMIN, json=peer).status_code == 201
    jobs = api.get("/api/v1/jobs", Role.ADMIN).json()["items"]
    assert jobs, "completing a study queues its jobs"
    v1 = "/api/v1"
    return {
        f"{v1}/studies/{{study_id}}": {"study_id": study_ref},
        f"{v1}/jobs/{{job_id}}": {"job_id": jobs[0]["id"]},
        f"{v1}/jobs/{{job_id}}/retry": {"job_id": jobs[0]["id"]},
        f"{v1}/jobs/{{job_id}}/cancel": {"job_id": jobs[0]["id"]},
        f"{v1}/rejections/{{rejection_id}}": {"rejection_id": rejection_ref},
        f"{v1}/rejections/{{rejection_id}}/bytes": {"rejection_id": rejection_ref},
        f"{v1}/peers/{{ae_title}}": {"ae_title": PEER},
        f"{v1}/peers/{{ae_title}}/echo": {"ae_title": echo},
        f"{v1}/tokens/{{token_id}}/revoke": {"token_id": victim},
        f"{v1}/users/{{user_id}}": {"user_id": user_id},
    }


def _send(api: Api, case: AnyCase) -> httpx.Response:
    """The case through the suite's TestClient (httpx), as an admin with a token of its own."""
    token = auth.create_machine_token(api.node, role=Role.ADMIN, name="fuzz-admin").token
    kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers={"Authorization": f"Bearer {token}"})
    kwargs.pop("cookies", None)  # the API reads none; httpx deprecates per-request cookies
    data = kwargs.pop("data", None)
    if isinstance(data, bytes | str):
        kwargs["content"] = data
    elif data is not None:
        kwargs["data"] = data
    response: httpx.Response = api.client.request(**kwargs)
    return response


CHECKS: list[Check] = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
]


def _assert_error_shape(response: httpx.Response) -> None:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "correlation_id"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["correlation_id"] == response.headers["x-correlation-id"], error


def _check_case(api: Api, case: AnyCase) -> None:
    response = _send(api, case)
    case.validate_response(response, checks=CHECKS)
    assert not LEAKS.search(response.text), (case.operation.label, response.status_code, response.text)
    if 400 <= response.status_code < 500:
        _assert_error_shape(response)


def _fuzz(api: Api, strategy: SearchStrategy[AnyCase], examples: int) -> None:
    @hypothesis.settings(SETTINGS, max_examples=examples)
    @hypothesis.given(case=strategy)
    def run(case: AnyCase) -> None:
        _check_case(api, case)

    run()


def _strategies(
    operation: Operation, known: dict[str, dict[str, str]]
) -> Iterator[tuple[str, SearchStrategy[AnyCase], int]]:
    yield "positive", operation.as_strategy(GenerationMode.POSITIVE), POSITIVE_EXAMPLES
    if operation.query or operation.body:  # any string is a valid path parameter: nothing else to break
        yield "negative", operation.as_strategy(GenerationMode.NEGATIVE), NEGATIVE_EXAMPLES
    if operation.path_parameters:
        strategy = operation.as_strategy(path_parameters=known[operation.path])
        yield "existing object", strategy, KNOWN_OBJECT_EXAMPLES


def _operations(api: Api) -> list[Operation]:
    served = api.client.get("/openapi.json")
    assert served.status_code == 200, served.text
    schema: BaseSchema = schemathesis.openapi.from_dict(served.json())
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operations.append(result.ok())
    assert len(operations) >= 29, [operation.label for operation in operations]
    return operations


def test_every_operation_answers_as_documented(
    fuzz_api: Api, scp: ScpServer, subtests: pytest.Subtests
) -> None:
    known = _seed(fuzz_api, scp)
    for operation in _operations(fuzz_api):
        for kind, strategy, examples in _strategies(operation, known):
            with subtests.test(msg=f"{operation.label} ({kind})"):
                _fuzz(fuzz_api, strategy, examples)


def test_the_document_names_the_bearer_scheme_roles_and_the_error_body_of_every_failure(
    fuzz_api: Api,
) -> None:
    document = fuzz_api.client.get("/openapi.json").json()
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert "HTTPValidationError" not in document["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            role = ROUTE_ROLES[(method.upper(), path)]
            failures = {status: body for status, body in operation["responses"].items() if int(status) >= 400}
            assert {"422", "429"} <= set(failures), (method, path)
            for status, body in failures.items():
                if (path, status) == ("/readyz", "503"):  # not ready answers the readiness body
                    continue
                assert body["content"]["application/json"]["schema"] == error_ref, (method, path, status)
            if role is None:
                assert "security" not in operation, (method, path)
            else:
                assert operation["security"] == [{"bearer": []}], (method, path)
                assert {"401", "403"} <= set(failures) and role.value in operation["description"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert set(metrics) == {"text/plain"}
