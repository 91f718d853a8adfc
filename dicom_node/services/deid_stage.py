"""Pipeline stage: a completed study becomes its de-identified copy, pseudonym map rows and an event.

Runs as a `deidentify` job (made in the transaction that completed the study). Each original is read from
the PHI store, de-identified by the same engine as `dicom-node deidentify` and written, fsync'd, to the
`deid` namespace. Then one transaction records the pseudonym map, one row per instance (outcome, report,
pseudonymous UIDs), the `study_deidentified` event inference consumes, the audit event, and finishes the
job: either all of it happened or none did, and a re-run (a crash, a late instance re-opening the study)
repeats only what changed, since the output is deterministic and unchanged originals are skipped.

An instance that cannot be made safe (burned-in text, an encapsulated document, unreadable) is withheld
from inference with its reason code; it never fails the study. Only infrastructure errors fail the job.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from dicom_node.core import metrics
from dicom_node.core.errors import DicomNodeError
from dicom_node.dicom.deid import DeidPolicy, DeidResult, method_description
from dicom_node.dicom.deid_rules import Option
from dicom_node.services.deid_files import ENGINE_FAILED, deidentify_source, encode
from storage import audit, jobs
from storage import deid_records as records_repo
from storage.deid_records import DeidRecord, SourceInstance
from storage.errors import BlobNotFound
from storage.events import append_event
from storage.models import DeidOutcome, EventKind
from storage.pseudonyms import Mapping, record_mappings

if TYPE_CHECKING:
    from dicom_node.dicom.deid_keys import DeidKeys
    from dicom_node.services.node import Node
    from storage.jobs import ClaimedJob

logger = logging.getLogger(__name__)

DEID_NAMESPACE = "deid"
SOURCE_MISSING = "deid.source_missing"
ACTOR = "dicom-node"


class DeidStoreFailed(DicomNodeError):
    """A de-identified copy could not be written durably; the job is retried."""

    code = "deid.store_failed"


class LeaseLost(DicomNodeError):
    """The job's lease expired while it ran and another worker holds it now; this run is dropped."""

    code = "job.lease_lost"


class StudyMissing(DicomNodeError):
    code = "deid.study_missing"


@dataclass(frozen=True, slots=True)
class DeidStage:
    """What the stage needs besides the node: the policy in force and the keys."""

    policy: DeidPolicy
    keys: DeidKeys

    @property
    def policy_hash(self) -> str:
        """Names the engine, table, options and key the copies were made with (no secret in it)."""
        options = tuple(option for option in Option if option in self.policy.options)
        text = "|".join([*method_description(options, self.keys), self.policy.default_issuer])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class StudyDeidSummary:
    study_id: str
    generation: int
    deidentified: int
    withheld: int
    unchanged: int
    reasons: dict[str, int]


def deidentify_study(
    node: Node, stage: DeidStage, job: ClaimedJob, *, lease_seconds: float
) -> StudyDeidSummary:
    """Do one `deidentify` job: every changed instance of the study, then one commit (module docstring)."""
    if job.study_id is None:
        raise StudyMissing()
    study_id, generation = job.study_id, job.generation or 0
    with node.sessions() as session:
        sources = records_repo.study_sources(session, study_id)
        done = records_repo.done_sources(session, study_id)
    written: list[str] = []
    made: list[DeidRecord] = []
    mappings: dict[tuple[str, str], Mapping] = {}
    renewed_at = node.clock.now()
    identity: dict[str, str] = {}
    try:
        for source in sources:
            if done.get(source.id) == source.sha256:
                continue
            renewed_at = _keep_lease(node, job, renewed_at, lease_seconds=lease_seconds)
            record = _deidentify_instance(node, stage, source, mappings, identity)
            if record.blob_key is not None:
                written.append(record.blob_key)
            made.append(record)
        summary = _summary(study_id, generation, made, unchanged=len(sources) - len(made))
        superseded = _commit(node, stage, job, made, mappings, summary, identity, lease_seconds=lease_seconds)
    except BaseException:
        for key in written:  # nothing refers to them: the next run makes them again
            with contextlib.suppress(Exception):
                node.blobs.discard(key)
        raise
    for key in superseded:
        with contextlib.suppress(Exception):
            node.blobs.discard(key)
    _observe(summary, job)
    return summary


def _keep_lease(node: Node, job: ClaimedJob, renewed_at: datetime, *, lease_seconds: float) -> datetime:
    """Renew the lease once a third of it has passed, so a study of thousands of instances keeps it."""
    now = node.clock.now()
    if (now - renewed_at).total_seconds() < lease_seconds / 3:
        return renewed_at
    with node.sessions.begin() as session:
        if not jobs.extend_lease(session, job, now=now, lease_seconds=lease_seconds):
            raise LeaseLost()
    return now


def _deidentify_instance(
    node: Node,
    stage: DeidStage,
    source: SourceInstance,
    mappings: dict[tuple[str, str], Mapping],
    identity: dict[str, str],
) -> DeidRecord:
    """One original → its copy in the deid store (or a withheld record); `identity` collects the
    study's pseudonymous patient ID and Study Instance UID from the first copy."""
    try:
        path = node.blobs.path_of(source.blob_key)
    except BlobNotFound:
        logger.error(
            "original instance missing from the store",
            extra={"event": "deid_source_missing", "instance_ref": source.id},
        )
        return _withheld(source, SOURCE_MISSING)
    result = deidentify_source(path, stage.policy, stage.keys)
    if isinstance(result, str):
        return _withheld(source, result)
    try:
        data = encode(result)
    except Exception:  # an output pydicom cannot write is the engine's failure: withheld, not passed on
        return _withheld(source, ENGINE_FAILED)
    try:
        key = node.blobs.write_bytes(data, namespace=DEID_NAMESPACE)
    except OSError as exc:
        raise DeidStoreFailed() from exc
    study_uid = _uid(result, "StudyInstanceUID")
    for keyword, value in (("PatientID", _uid(result, "PatientID")), ("StudyInstanceUID", study_uid)):
        if value is not None:
            identity.setdefault(keyword, value)
    for pseudonym in result.pseudonyms:
        if pseudonym.original:
            mapping = Mapping(kind=pseudonym.kind, original=pseudonym.original, pseudonym=pseudonym.pseudo)
            mappings.setdefault((mapping.kind, mapping.original), mapping)
    return DeidRecord(
        instance_id=source.id,
        source_sha256=source.sha256,
        outcome=DeidOutcome.DEIDENTIFIED,
        reason_code=None,
        blob_key=key,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        study_instance_uid=study_uid,
        series_instance_uid=_uid(result, "SeriesInstanceUID"),
        sop_instance_uid=_uid(result, "SOPInstanceUID"),
        pixel_decision=result.report.pixel_decision,
        report=json.dumps(
            {
                "actions": dict(result.report.actions),
                "private_creators_removed": list(result.report.private_creators_removed),
                "options": [option.value for option in result.report.options_applied],
            },
            sort_keys=True,
        ),
    )


def _uid(result: DeidResult, keyword: str) -> str | None:
    value = result.dataset.get(keyword)
    return str(value) if value else None


def _withheld(source: SourceInstance, code: str) -> DeidRecord:
    return DeidRecord(
        instance_id=source.id,
        source_sha256=source.sha256,
        outcome=DeidOutcome.WITHHELD,
        reason_code=code,
        blob_key=None,
        size_bytes=None,
        sha256=None,
        study_instance_uid=None,
        series_instance_uid=None,
        sop_instance_uid=None,
        pixel_decision=None,
        report=json.dumps({"reason": code}),
    )


def _summary(study_id: str, generation: int, made: list[DeidRecord], *, unchanged: int) -> StudyDeidSummary:
    reasons = collections.Counter(record.reason_code for record in made if record.reason_code is not None)
    deidentified = sum(1 for record in made if record.outcome == DeidOutcome.DEIDENTIFIED)
    return StudyDeidSummary(
        study_id=study_id,
        generation=generation,
        deidentified=deidentified,
        withheld=len(made) - deidentified,
        unchanged=unchanged,
        reasons=dict(sorted(reasons.items())),
    )


def _commit(
    node: Node,
    stage: DeidStage,
    job: ClaimedJob,
    made: list[DeidRecord],
    mappings: dict[tuple[str, str], Mapping],
    summary: StudyDeidSummary,
    identity: dict[str, str],
    *,
    lease_seconds: float,
) -> list[str]:
    now = node.clock.now()
    policy_hash = stage.policy_hash
    with node.sessions.begin() as session:
        if not jobs.extend_lease(session, job, now=now, lease_seconds=lease_seconds):
            raise LeaseLost()
        record_mappings(
            session, mappings.values(), key_id=stage.keys.key_id, study_id=summary.study_id, now=now
        )
        superseded = records_repo.save_records(
            session,
            made,
            study_id=summary.study_id,
            generation=summary.generation,
            key_id=stage.keys.key_id,
            policy_hash=policy_hash,
            now=now,
        )
        records_repo.mark_study_deidentified(
            session,
            summary.study_id,
            pseudonym_patient_id=identity.get("PatientID"),
            pseudonym_study_instance_uid=identity.get("StudyInstanceUID"),
            now=now,
        )
        append_event(
            session,
            kind=EventKind.STUDY_DEIDENTIFIED,
            study_id=summary.study_id,
            generation=summary.generation,
            now=now,
        )
        audit.append(
            session,
            actor=ACTOR,
            action="deidentify",
            outcome="success" if summary.withheld == 0 else "partial",
            object_ref=summary.study_id,
            correlation_id=job.id,
            now=now,
            detail={
                "generation": summary.generation,
                "deidentified": summary.deidentified,
                "withheld": summary.withheld,
                "unchanged": summary.unchanged,
                "reasons": summary.reasons,
                "key_id": stage.keys.key_id,
                "policy_hash": policy_hash,
            },
        )
        if not jobs.succeed(session, job, now=now):
            raise LeaseLost()
    return superseded


def _observe(summary: StudyDeidSummary, job: ClaimedJob) -> None:
    metrics.DEID_INSTANCES.labels(outcome="deidentified", reason="none").inc(summary.deidentified)
    for reason, count in summary.reasons.items():
        metrics.DEID_INSTANCES.labels(outcome="withheld", reason=reason).inc(count)
    metrics.DEID_STUDIES.inc()
    logger.info(
        "study de-identified",
        extra={
            "event": "study_deidentified",
            "study_ref": summary.study_id,
            "deidentified": summary.deidentified,
            "withheld": summary.withheld,
            "unchanged": summary.unchanged,
        },
    )
