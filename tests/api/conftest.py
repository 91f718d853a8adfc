"""The admin API on a real node and database (PostgreSQL and SQLite): a token per role, harness data."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.exceptions import StarletteDeprecationWarning

from admin_api.app import create_app
from admin_api.context import ApiContext
from dicom_node import api_root
from dicom_node.core.clock import ManualClock
from dicom_node.core.errors import InstanceRejected
from dicom_node.core.settings import Settings
from dicom_node.dicom.deid import DeidPolicy
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.services.auth import create_machine_token
from dicom_node.services.deid_stage import DeidStage
from dicom_node.services.ingest import receive_instance
from dicom_node.services.node import Node
from dicom_node.services.studies import complete_idle_studies
from dicom_node.services.worker import WorkerConfig, run_one, stage_handlers
from storage.models import Role
from tests.harness import datasets
from tests.harness.ingest import receive, received

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its test client; httpx (a project dependency) still works.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient as TestClient

ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
WORKER = WorkerConfig(poll_seconds=0.01, lease_seconds=60)
STAGE = DeidStage(policy=DeidPolicy(), keys=DeidKeys.from_secret(bytes(range(32))))


@dataclass
class Api:
    """A TestClient on the real app, the node behind it, and one machine token per role."""

    client: TestClient
    node: Node
    clock: ManualClock
    settings: Settings
    context: ApiContext
    tokens: dict[Role, str] = field(default_factory=dict)

    def headers(self, role: Role | None, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return headers

    def request(
        self, method: str, path: str, role: Role | None = None, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = self.headers(role, **kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        answer: httpx.Response = self.client.request(method, path, headers=headers, **kwargs)
        return answer

    def get(self, path: str, role: Role | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, role, **kwargs)

    def post(self, path: str, role: Role | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, role, **kwargs)


def build_api(
    node: Node, settings: Settings, clock: ManualClock, context: ApiContext | None = None, **client: Any
) -> Api:
    context = context or api_root.api_context(settings, node, scp_listening=lambda: True)
    test_client = TestClient(create_app(context), **client)
    api = Api(client=test_client, node=node, clock=clock, settings=settings, context=context)
    for role in ROLES:
        api.tokens[role] = create_machine_token(node, role=role, name=f"test-{role.value}").token
    return api


@pytest.fixture
def api(node: Node, settings: Settings, clock: ManualClock) -> Iterator[Api]:
    built = build_api(node, settings, clock)
    with built.client:
        yield built


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, str]:
    """The one error shape: exactly code, message and correlation id, the id also in X-Correlation-ID."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "correlation_id"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["correlation_id"] and response.headers["x-correlation-id"] == error["correlation_id"]
    return dict(error)


def make_study(node: Node, *, instances: int = 1, **overrides: Any) -> tuple[str, list[Dataset]]:
    """Receive one study of CT instances: (study ref, the originals)."""
    study_uid, series_uid = overrides.pop("study_uid", None) or generate_uid(), generate_uid()
    originals = [
        datasets.make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=i, seed=i, **overrides)
        for i in range(1, instances + 1)
    ]
    refs = {receive(node, ds).study_ref for ds in originals}
    assert len(refs) == 1
    return refs.pop(), originals


def complete_studies(node: Node, clock: ManualClock) -> list[str]:
    clock.advance(node.study_idle_seconds + 1)
    return complete_idle_studies(node)


def deidentify_all(node: Node) -> int:
    """Run de-identification jobs until none is due; how many ran."""
    handlers = stage_handlers(STAGE, WORKER)
    ran = 0
    while run_one(node, handlers, owner="t", config=WORKER):
        ran += 1
    return ran


def make_rejection(node: Node, ds: Dataset | None = None) -> str:
    """Receive an instance without its Modality (type 1): rejected, quarantined; the rejection ref."""
    ds = ds or datasets.make_ct()
    del ds.Modality
    with pytest.raises(InstanceRejected) as raised:
        receive_instance(node, received(node, ds))
    assert raised.value.rejection_ref is not None
    return raised.value.rejection_ref
