"""Token buckets per client address and per caller: 429, Retry-After, `rate.limited`, counted."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from admin_api.ratelimit import RateLimiter
from dicom_node import api_root
from dicom_node.core.clock import ManualClock
from dicom_node.core.settings import Settings
from dicom_node.services.node import Node
from storage.models import Role
from tests.api.conftest import Api, TestClient, assert_error, build_api


class Ticks:
    """A monotonic clock for the limiters that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limited(scope: str) -> float:
    return REGISTRY.get_sample_value("dicom_node_rate_limited_total", {"scope": scope}) or 0.0


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


@pytest.fixture
def limited_api(node: Node, settings: Settings, clock: ManualClock, ticks: Ticks) -> Iterator[Api]:
    context = dataclasses.replace(
        api_root.api_context(settings, node, scp_listening=lambda: True),
        user_limiter=RateLimiter(per_minute=3, clock=ticks),
        client_limiter=RateLimiter(per_minute=5, clock=ticks),
    )
    api = build_api(node, settings, clock, context, client=("192.0.2.10", 40000))
    with api.client:
        yield api


def test_a_caller_over_its_limit_gets_429_and_other_callers_do_not(limited_api: Api, ticks: Ticks) -> None:
    before = _limited("user")
    for _ in range(3):
        assert limited_api.get("/api/v1/studies", Role.VIEWER).status_code == 200
    refused = limited_api.get("/api/v1/studies", Role.VIEWER)
    assert_error(refused, 429, "rate.limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert _limited("user") == before + 1
    # Another token from the same address still has its own bucket (and the address has tokens left).
    assert limited_api.get("/api/v1/studies", Role.OPERATOR).status_code == 200

    ticks.now += 60
    assert limited_api.get("/api/v1/studies", Role.VIEWER).status_code == 200


def test_a_client_address_over_its_limit_gets_429_even_unauthenticated(
    limited_api: Api, ticks: Ticks
) -> None:
    before = _limited("client")
    for _ in range(5):
        assert limited_api.get("/healthz").status_code == 200
    refused = limited_api.post("/api/v1/auth/login", json={"username": "a", "password": "b"})
    assert_error(refused, 429, "rate.limited")
    assert int(refused.headers["retry-after"]) >= 1
    assert_error(limited_api.get("/api/v1/studies", Role.ADMIN), 429, "rate.limited")
    assert _limited("client") == before + 2

    # The same limiters seen from another address: its bucket is full.
    other = TestClient(limited_api.client.app, client=("192.0.2.11", 40000))
    assert other.get("/healthz").status_code == 200
    ticks.now += 60
    assert limited_api.get("/healthz").status_code == 200
