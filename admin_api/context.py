"""What every route needs, built once by the composition root and held by the app."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from admin_api.ratelimit import RateLimiter

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from dicom_node.services.auth import AuthPolicy
    from dicom_node.services.health import Readiness
    from dicom_node.services.node import Node


@dataclass(frozen=True, slots=True)
class ApiContext:
    node: Node
    auth: AuthPolicy
    ae_title: str
    readiness: Callable[[], Readiness]
    user_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(per_minute=600))
    client_limiter: RateLimiter = field(default_factory=lambda: RateLimiter(per_minute=1200))
    # Scrape-time metrics (queue depth, disk space) added to /metrics.
    collectors: Sequence[Collector] = ()
