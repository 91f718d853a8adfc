"""The job worker: claim a due job, run its stage, record the outcome; never dies of one job.

Each job runs under its own correlation id (the job id) so every log line of it can be followed. A
stage's known failure (a DicomNodeError) is recorded by its code and retried with backoff; anything
unexpected is recorded as `job.internal_error` by exception type only, since a message could quote
a value from a data set.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from dicom_node.core import metrics
from dicom_node.core.errors import DicomNodeError
from dicom_node.core.observability import bound, job_id
from dicom_node.services.deid_stage import DeidStage, LeaseLost, deidentify_study
from storage import jobs
from storage.models import JobKind

if TYPE_CHECKING:
    from dicom_node.services.node import Node
    from storage.jobs import ClaimedJob

logger = logging.getLogger(__name__)

DATABASE_ERROR = "job.database_error"
INTERNAL_ERROR = "job.internal_error"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    poll_seconds: float
    lease_seconds: float


Handler = Callable[["Node", "ClaimedJob"], object]


def stage_handlers(stage: DeidStage, config: WorkerConfig) -> Mapping[str, Handler]:
    """The job kinds this worker runs, each bound to its stage."""

    def deidentify(node: Node, job: ClaimedJob) -> object:
        return deidentify_study(node, stage, job, lease_seconds=config.lease_seconds)

    return {JobKind.DEIDENTIFY.value: deidentify}


def worker_name() -> str:
    """A lease owner unique across hosts and restarts."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def run_one(node: Node, handlers: Mapping[str, Handler], *, owner: str, config: WorkerConfig) -> bool:
    """Claim and run one due job; False when none was due."""
    with node.sessions.begin() as session:
        job = jobs.claim(
            session,
            kinds=handlers.keys(),
            owner=owner,
            now=node.clock.now(),
            lease_seconds=config.lease_seconds,
        )
    if job is None:
        return False
    with bound(job_id, job.id):
        _run(node, handlers[job.kind], job)
    return True


def _run(node: Node, handler: Handler, job: ClaimedJob) -> None:
    extra = {"job_kind": job.kind, "attempt": job.attempts}  # the job id is in every line's context
    started = time.perf_counter()
    try:
        handler(node, job)
    except LeaseLost:
        metrics.JOBS_FINISHED.labels(kind=job.kind, result="lease_lost").inc()
        logger.warning("job lease lost; another worker holds it", extra={"event": "job_lease_lost", **extra})
        return
    except DicomNodeError as exc:
        _fail(node, job, exc.code, extra)
        return
    except SQLAlchemyError:
        _fail(node, job, DATABASE_ERROR, extra)
        return
    except Exception as exc:
        logger.error(
            "job failed unexpectedly",
            extra={"event": "job_internal_error", "reason": type(exc).__name__, **extra},
        )
        _fail(node, job, INTERNAL_ERROR, extra)
        return
    finally:
        metrics.JOB_SECONDS.labels(kind=job.kind).observe(time.perf_counter() - started)
    metrics.JOBS_FINISHED.labels(kind=job.kind, result="succeeded").inc()


def _fail(node: Node, job: ClaimedJob, code: str, extra: dict[str, object]) -> None:
    try:
        with node.sessions.begin() as session:
            status = jobs.fail(session, job, code=code, now=node.clock.now())
    except SQLAlchemyError:
        status = None  # the lease expires and the job is claimed again
    metrics.JOBS_FINISHED.labels(kind=job.kind, result=status or "unrecorded").inc()
    logger.warning(
        "job attempt failed",
        extra={"event": "job_failed", "error_code": code, "outcome": status or "unrecorded", **extra},
    )


def run_worker(
    node: Node,
    handlers: Mapping[str, Handler],
    stop: threading.Event,
    *,
    config: WorkerConfig,
    owner: str | None = None,
) -> None:
    """Run jobs until `stop` is set; sleeps `poll_seconds` only when the queue is empty."""
    owner = owner or worker_name()
    while not stop.is_set():
        try:
            worked = run_one(node, handlers, owner=owner, config=config)
        except SQLAlchemyError as exc:
            logger.warning(
                "job claim failed", extra={"event": "job_claim_failed", "reason": type(exc).__name__}
            )
            worked = False
        if not worked:
            stop.wait(config.poll_seconds)
