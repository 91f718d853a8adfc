"""Receive one instance: validate, store durably, record. The C-STORE SCP (and later STOW-RS) call this.

Invariant: `receive_instance` returns only after the bytes are fsync'd under their final name and
the rows that reference them are committed. It owns its transactions, unlike other services,
because that ordering (fsync → rename → fsync dir → commit) and the separate transaction that
records a rejection are the business rule itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NoReturn

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dicom_node.core import metrics
from dicom_node.core.errors import InstanceRejected
from dicom_node.core.settings import DuplicatePolicy
from dicom_node.dicom.dimse_status import status_for_codes
from dicom_node.dicom.validation import (
    Code,
    InstanceHeader,
    ReceiveContext,
    UnreadableInstance,
    read_header,
    read_instance,
    validate_instance,
)
from storage import arrivals
from storage import rejections as rejection_repo
from storage.blobs import BlobDigest, digest_file
from storage.errors import BlobStoreFailed, DatabaseUnavailable, StorageError
from storage.models import DuplicateOutcome, Rejection, new_id

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Connection

    from dicom_node.services.node import Node

logger = logging.getLogger(__name__)

_CONCURRENT_INSERT_RETRIES = 3


class IngestResult(StrEnum):
    STORED = "stored"
    DUPLICATE_IDENTICAL = "duplicate_identical"
    DUPLICATE_KEPT_EXISTING = "duplicate_kept_existing"
    DUPLICATE_REPLACED = "duplicate_replaced"


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """A C-STORE request whose data set pynetdicom spooled to `path` (file meta, then the bytes as sent)."""

    path: Path
    context: ReceiveContext
    calling_ae_title: str
    called_ae_title: str
    association_ref: str | None


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    result: IngestResult
    instance_ref: str
    study_ref: str
    study_reopened: bool


def receive_instance(node: Node, received: ReceivedInstance) -> IngestOutcome:
    """Validate and durably store one received instance, or record why not and raise.

    Raises `InstanceRejected` (recorded, bytes quarantined) or a `StorageError` (nothing stored;
    recorded as a rejection too, best effort, since the disk or database may be what failed).
    """
    try:
        digest = digest_file(received.path)
    except OSError as exc:
        raise BlobStoreFailed() from exc
    try:
        return _store(node, received, digest)
    except StorageError as error:
        _reject(node, received, (error.code,), digest, cause=error)


def _store(node: Node, received: ReceivedInstance, digest: BlobDigest) -> IngestOutcome:
    try:
        parsed = read_instance(received.path, transfer_syntax_uid=received.context.transfer_syntax_uid)
    except UnreadableInstance:
        _reject(node, received, (Code.UNREADABLE,), digest)
    codes = validate_instance(parsed, context=received.context, rules=node.ingest.rules)
    if codes:
        _reject(node, received, tuple(codes), digest)
    header = read_header(parsed.dataset)
    del parsed  # the header is all we keep; the data set can be large

    # The bytes become durable under their final name before any row refers to them.
    blob_key = node.blobs.adopt(received.path, namespace="store")
    for _ in range(_CONCURRENT_INSERT_RETRIES):
        try:
            with node.engine.begin() as connection:
                outcome = _record(connection, node, received, header, digest, blob_key)
        except InstanceRejected as rejected:
            _reject(node, received, rejected.codes, digest, stored_key=blob_key)
        except IntegrityError:
            # Another receiver committed the same study, series or instance first: decide again.
            continue
        except SQLAlchemyError as exc:
            node.blobs.discard(blob_key)  # nothing refers to it and the sender will retry
            raise DatabaseUnavailable() from exc
        if outcome.result is IngestResult.DUPLICATE_IDENTICAL:
            node.blobs.discard(blob_key)
        metrics.INSTANCES_RECEIVED.labels(outcome=outcome.result.value).inc()
        if outcome.result in (IngestResult.STORED, IngestResult.DUPLICATE_REPLACED):
            metrics.BYTES_RECEIVED.inc(digest.size_bytes)
        logger.info(
            "instance received",
            extra={
                "event": "instance_received",
                "outcome": outcome.result.value,
                "instance_ref": outcome.instance_ref,
                "study_ref": outcome.study_ref,
                "sop_class": received.context.affected_sop_class_uid,
                "transfer_syntax": received.context.transfer_syntax_uid,
                "bytes": digest.size_bytes,
            },
        )
        return outcome
    node.blobs.discard(blob_key)
    raise DatabaseUnavailable()


def _record(
    connection: Connection,
    node: Node,
    received: ReceivedInstance,
    header: InstanceHeader,
    digest: BlobDigest,
    blob_key: str,
) -> IngestOutcome:
    now = node.clock.now()
    study = arrivals.lock_study(
        connection,
        original_study_instance_uid=header.study_instance_uid,
        original_patient_id=header.patient_id,
        now=now,
    )
    series = arrivals.ensure_series(
        connection,
        study_id=study.id,
        original_series_instance_uid=header.series_instance_uid,
        modality=header.modality,
        now=now,
    )
    if series.study_id != study.id:
        raise InstanceRejected((Code.SERIES_IN_OTHER_STUDY,))

    existing = arrivals.find_instance(connection, original_sop_instance_uid=header.sop_instance_uid)
    if existing is None:
        instance_id = new_id("ins")
        arrivals.insert_instance(
            connection,
            arrivals.NewInstance(
                id=instance_id,
                study_id=study.id,
                series_id=series.id,
                original_sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=received.context.affected_sop_class_uid,
                transfer_syntax_uid=received.context.transfer_syntax_uid,
                blob_key=blob_key,
                size_bytes=digest.size_bytes,
                sha256=digest.sha256,
                calling_ae_title=received.calling_ae_title,
                association_ref=received.association_ref,
                received_at=now,
            ),
        )
        reopened = arrivals.record_arrival(connection, study, now=now, new_instance=True)
        return IngestOutcome(IngestResult.STORED, instance_id, study.id, reopened)

    result, retained_key = _apply_duplicate_policy(connection, node, received, existing, digest, blob_key)
    arrivals.insert_duplicate_receipt(
        connection,
        {
            "instance_id": existing.id,
            "received_at": now,
            "association_ref": received.association_ref,
            "calling_ae_title": received.calling_ae_title,
            "policy": node.ingest.duplicate_policy.value,
            "outcome": _DUPLICATE_OUTCOMES[result].value,
            "sha256": digest.sha256,
            "size_bytes": digest.size_bytes,
            "retained_blob_key": retained_key,
        },
    )
    reopened = arrivals.record_arrival(connection, study, now=now, new_instance=False)
    return IngestOutcome(result, existing.id, study.id, reopened)


_DUPLICATE_OUTCOMES = {
    IngestResult.DUPLICATE_IDENTICAL: DuplicateOutcome.IDENTICAL,
    IngestResult.DUPLICATE_KEPT_EXISTING: DuplicateOutcome.KEPT_EXISTING,
    IngestResult.DUPLICATE_REPLACED: DuplicateOutcome.REPLACED,
}


def _apply_duplicate_policy(
    connection: Connection,
    node: Node,
    received: ReceivedInstance,
    existing: arrivals.StoredInstance,
    digest: BlobDigest,
    blob_key: str,
) -> tuple[IngestResult, str | None]:
    """Same bytes: nothing new. Different bytes: keep (retain the new aside) or replace (retain the old).

    Nothing is deleted: the receipt row names the blob that is not the instance's. Retained bytes
    stay in the store namespace (they are valid instances, not failed input, so not quarantined).
    """
    if existing.sha256 == digest.sha256 and existing.size_bytes == digest.size_bytes:
        return IngestResult.DUPLICATE_IDENTICAL, None
    if node.ingest.duplicate_policy is DuplicatePolicy.KEEP:
        return IngestResult.DUPLICATE_KEPT_EXISTING, blob_key
    arrivals.replace_instance_bytes(
        connection,
        existing.id,
        blob_key=blob_key,
        sha256=digest.sha256,
        size_bytes=digest.size_bytes,
        transfer_syntax_uid=received.context.transfer_syntax_uid,
        now=node.clock.now(),
    )
    return IngestResult.DUPLICATE_REPLACED, existing.blob_key


def _reject(
    node: Node,
    received: ReceivedInstance,
    codes: tuple[str, ...],
    digest: BlobDigest,
    *,
    stored_key: str | None = None,
    cause: StorageError | None = None,
) -> NoReturn:
    """Quarantine the bytes, record the rejection in its own transaction, then raise.

    Raises InstanceRejected, or `cause` when the node itself failed (disk, database).

    Recording is best effort: when the disk or database is what failed, the sender still gets the
    precise validation status and the failure is logged.
    """
    rejection_id = new_id("rej")
    quarantine_key: str | None = None
    try:
        if stored_key is not None:
            quarantine_key = node.blobs.move(stored_key, namespace="quarantine")
        elif received.path.exists():
            quarantine_key = node.blobs.adopt(received.path, namespace="quarantine")
        with node.sessions.begin() as session:
            rejection_repo.add_rejection(
                session,
                Rejection(
                    id=rejection_id,
                    received_at=node.clock.now(),
                    association_ref=received.association_ref,
                    calling_ae_title=received.calling_ae_title,
                    called_ae_title=received.called_ae_title,
                    sop_class_uid=received.context.affected_sop_class_uid or None,
                    status=int(status_for_codes(codes)),
                    codes=",".join(codes),
                    quarantine_key=quarantine_key,
                    size_bytes=digest.size_bytes,
                    sha256=digest.sha256,
                ),
            )
    except (StorageError, SQLAlchemyError, OSError) as exc:
        logger.error(
            "rejection could not be recorded",
            extra={"event": "rejection_record_failed", "error_code": codes[0], "reason": type(exc).__name__},
        )
    for code in codes:
        metrics.REJECTIONS.labels(code=code).inc()
    metrics.INSTANCES_RECEIVED.labels(outcome="failed" if cause else "rejected").inc()
    logger.warning(
        "instance rejected",
        extra={
            "event": "instance_rejected",
            "rejection_ref": rejection_id,
            "error_code": ",".join(codes),
            "sop_class": received.context.affected_sop_class_uid,
            "calling_ae": received.calling_ae_title,
        },
    )
    if cause is not None:
        raise cause
    raise InstanceRejected(codes, rejection_ref=rejection_id)
