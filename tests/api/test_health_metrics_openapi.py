"""/healthz, /readyz (200 and 503), /metrics by route template with scrape-time gauges, OpenAPI and /docs."""

from __future__ import annotations

import re

from admin_api.security import ROUTE_ROLES
from dicom_node import api_root
from dicom_node.core.clock import ManualClock
from dicom_node.core.settings import Settings
from dicom_node.services.node import Node
from storage.models import Role
from tests.api.conftest import Api, build_api, complete_studies, make_study

READY_FIELDS = {
    "ready",
    "database",
    "migrations_at_head",
    "scp_listening",
    "model_loaded",
    "model_required",
    "provider",
}


def test_healthz_and_readyz_answer_when_all_is_well(api: Api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert set(body) == READY_FIELDS
    assert body["ready"] and body["database"] and body["migrations_at_head"] and body["scp_listening"]
    assert (body["model_loaded"], body["model_required"], body["provider"]) == (False, False, None)


def test_readyz_is_503_when_the_scp_is_not_listening(
    node: Node, settings: Settings, clock: ManualClock
) -> None:
    context = api_root.api_context(settings, node, scp_listening=lambda: False)
    api = build_api(node, settings, clock, context)
    with api.client:
        answer = api.get("/readyz")
    assert answer.status_code == 503
    body = answer.json()
    assert set(body) == READY_FIELDS
    assert (body["ready"], body["scp_listening"], body["database"]) == (False, False, True)


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


def test_metrics_count_responses_by_route_template_never_by_raw_id(api: Api) -> None:
    ref, _ = make_study(api.node)
    complete_studies(api.node, api.clock)
    assert api.get(f"/api/v1/studies/{ref}", Role.VIEWER).status_code == 200
    assert api.get("/api/v1/studies/std_nosuchstudy42", Role.VIEWER).status_code == 404
    assert api.get("/api/v1/nothing/raw_path_segment_99").status_code == 404
    text = api.get("/metrics").text
    responses = _samples(text, "dicom_node_http_responses_total")
    assert any(
        'route="/api/v1/studies/{study_id}"' in line and 'status_class="2xx"' in line for line in responses
    ), responses
    assert any(
        'route="/api/v1/studies/{study_id}"' in line and 'status_class="4xx"' in line for line in responses
    ), responses
    assert any('route="unmatched"' in line for line in responses), responses
    for raw in (ref, "std_nosuchstudy42", "raw_path_segment_99"):
        assert raw not in text
    assert _samples(text, "dicom_node_http_request_seconds_count")
    jobs = _samples(text, "dicom_node_jobs")
    assert any(
        'kind="deidentify"' in line and 'status="queued"' in line and line.endswith(" 1.0") for line in jobs
    ), jobs
    (free,) = _samples(text, "dicom_node_data_dir_free_bytes")
    assert float(free.split()[-1]) > 0
    assert re.search(r"^dicom_node_data_dir_total_bytes \S+$", text, re.MULTILINE)


def test_openapi_lists_every_route_and_docs_answer(api: Api) -> None:
    schema = api.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert documented == set(ROUTE_ROLES)
    docs = api.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
