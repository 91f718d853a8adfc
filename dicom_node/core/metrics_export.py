"""The `/metrics` text: every process's metrics when PROMETHEUS_MULTIPROC_DIR is set, else this one's."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Metric,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.registry import Collector

from dicom_node.core.metrics_dir import multiprocess_dir


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """Every process's metrics in multiprocess mode (else this process's), plus `extra` collectors."""
    collecting = CollectorRegistry()
    if multiprocess_dir() is None:
        collecting.register(_Forward(REGISTRY))
    else:
        multiprocess.MultiProcessCollector(collecting)  # type: ignore[no-untyped-call]
    for collector in extra:
        collecting.register(collector)
    return collecting


class _Forward(Collector):
    """This process's default registry, as one collector of another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def latest_metrics(extra: Iterable[Collector] = ()) -> bytes:
    return generate_latest(registry(extra))


def serve_metrics(host: str, port: int, extra: Iterable[Collector] = ()) -> None:
    """/metrics on its own port, for the roles without the admin API (scp, worker)."""
    start_http_server(port, addr=host, registry=registry(extra))


def process_exited(pid: int) -> None:
    """Drop a dead child's live gauges (its counters stay summed, as Prometheus expects)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
