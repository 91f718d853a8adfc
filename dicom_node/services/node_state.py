"""Metrics read from the node's state at scrape time: queue depth by kind and status, data disk space.

Computed by whichever process answers the scrape, from the database and the file system, so they are
right however many processes run (no per-process copy to sum); several scraped roles report the same
values, and dashboards take `max` over them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from storage.models import Job, JobStatus

if TYPE_CHECKING:
    from dicom_node.services.node import Node


JOBS = "dicom_node_jobs"
DATA_DIR_FREE = "dicom_node_data_dir_free_bytes"
DATA_DIR_TOTAL = "dicom_node_data_dir_total_bytes"
STATE_METRICS = frozenset({JOBS, DATA_DIR_FREE, DATA_DIR_TOTAL})


class NodeStateCollector(Collector):
    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(JOBS, "Jobs in the queue by kind and status.", labels=["kind", "status"])
        try:
            with self._node.sessions() as session:
                counts = {
                    (kind, status): count
                    for kind, status, count in session.execute(
                        select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
                    )
                }
            for kind in sorted({kind for kind, _ in counts}):
                for status in JobStatus:
                    jobs.add_metric([kind, status.value], counts.get((kind, status.value), 0))
            yield jobs
        except SQLAlchemyError:
            pass  # no database, no queue figures; /readyz says why
        usage = shutil.disk_usage(self._node.blobs.root)
        yield GaugeMetricFamily(DATA_DIR_FREE, "Free bytes on DATA_DIR's file system.", value=usage.free)
        yield GaugeMetricFamily(DATA_DIR_TOTAL, "Size of DATA_DIR's file system.", value=usage.total)
