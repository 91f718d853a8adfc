"""The `/metrics` text: every process's metrics when PROMETHEUS_MULTIPROC_DIR is set, else this one's."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess, start_http_server

from dicom_node.core.metrics_dir import multiprocess_dir


def registry() -> CollectorRegistry:
    """Every process's metrics in multiprocess mode, else this process's registry."""
    if multiprocess_dir() is None:
        return REGISTRY
    collecting = CollectorRegistry()
    multiprocess.MultiProcessCollector(collecting)  # type: ignore[no-untyped-call]
    return collecting


def latest_metrics() -> bytes:
    return generate_latest(registry())


def serve_metrics(host: str, port: int) -> None:
    """/metrics on its own port, for the roles without the admin API (scp, worker)."""
    start_http_server(port, addr=host, registry=registry())


def process_exited(pid: int) -> None:
    """Drop a dead child's live gauges (its counters stay summed, as Prometheus expects)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
