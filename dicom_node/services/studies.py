"""Study completeness: a study is complete once no instance arrived for STUDY_IDLE_SECONDS.

The timer is the `last_received_at` column, so any process (another receiver, a restarted node)
completes the study correctly; the "study complete" event is written in the same transaction.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from dicom_node.core import metrics
from storage import studies as study_repo

if TYPE_CHECKING:
    from dicom_node.services.node import Node

logger = logging.getLogger(__name__)


def complete_idle_studies(node: Node) -> list[str]:
    """Complete every study that has been idle long enough; returns the ids completed by this call."""
    now = node.clock.now()
    with node.sessions.begin() as session:
        completed = study_repo.complete_idle_studies(
            session,
            idle_before=now - timedelta(seconds=node.study_idle_seconds),
            now=now,
            max_attempts=node.job_max_attempts,
        )
    for study_id in completed:
        metrics.STUDIES_COMPLETED.inc()
        logger.info("study complete", extra={"event": "study_complete", "study_ref": study_id})
    return completed


def run_completion_sweeper(node: Node, stop: threading.Event, *, poll_seconds: float) -> None:
    """Sweep until `stop` is set; a database hiccup is logged and retried at the next tick."""
    while not stop.wait(poll_seconds):
        try:
            complete_idle_studies(node)
        except SQLAlchemyError as exc:
            logger.warning(
                "study completion sweep failed",
                extra={"event": "completion_sweep_failed", "reason": type(exc).__name__},
            )
