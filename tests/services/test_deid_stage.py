"""The de-identification stage on a real database: a completed study in; copies, map and event out."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import threading
from datetime import datetime, timedelta

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicom_node.core.clock import ManualClock
from dicom_node.core.observability import configure_logging
from dicom_node.dicom.deid import DeidPolicy
from dicom_node.dicom.deid_keys import DeidKeys
from dicom_node.services.deid_stage import DeidStage, LeaseLost, deidentify_study
from dicom_node.services.node import Node
from dicom_node.services.recovery import discard_unreferenced_copies
from dicom_node.services.studies import complete_idle_studies
from dicom_node.services.worker import WorkerConfig, run_one, run_worker, stage_handlers
from storage import audit, jobs
from storage.blobs import FileBlobStore
from storage.errors import BlobNotFound
from storage.events import list_events
from storage.models import (
    AuditEvent,
    DeidInstance,
    DeidOutcome,
    EventKind,
    Instance,
    Job,
    JobKind,
    JobStatus,
)
from storage.pseudonyms import original_of
from tests.harness import datasets
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY
from tests.harness.ingest import receive
from tests.harness.waiting import wait_until

CONFIG = WorkerConfig(poll_seconds=0.01, lease_seconds=60)
STAGE = DeidStage(policy=DeidPolicy(), keys=DeidKeys.from_secret(bytes(range(32))))
HANDLERS = stage_handlers(STAGE, CONFIG)


def make_us(study_uid: str) -> Dataset:
    """An ultrasound image without regions: at risk of burned-in text and not cleanable, so withheld."""
    ds = datasets.make_ct(study_uid=study_uid, series_uid=generate_uid(), instance_number=9, seed=9)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.Modality = "US"
    ds.BitsStored, ds.HighBit = 16, 15
    return ds


@pytest.fixture
def study(node: Node, clock: ManualClock) -> tuple[str, list[Dataset]]:
    """A completed study of three CT instances and one ultrasound: (study ref, the originals)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    originals = [
        datasets.make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=i, seed=i)
        for i in range(1, 4)
    ]
    originals.append(make_us(study_uid))
    refs = {receive(node, ds).study_ref for ds in originals}
    clock.advance(node.study_idle_seconds + 1)
    assert complete_idle_studies(node) == list(refs)
    return refs.pop(), originals


def rows(node: Node, study_ref: str) -> list[DeidInstance]:
    with node.sessions() as session:
        return list(session.scalars(select(DeidInstance).where(DeidInstance.study_id == study_ref)))


def job_of(node: Node, study_ref: str) -> list[Job]:
    with node.sessions() as session:
        return list(session.scalars(select(Job).where(Job.study_id == study_ref).order_by(Job.created_at)))


def copies(node: Node, study_ref: str) -> list[Dataset]:
    return [
        pydicom.dcmread(node.blobs.path_of(row.blob_key))
        for row in rows(node, study_ref)
        if row.blob_key is not None
    ]


def test_completing_a_study_queues_its_deidentify_job(node: Node, study: tuple[str, list[Dataset]]) -> None:
    study_ref, _ = study
    (job,) = job_of(node, study_ref)
    assert (job.kind, job.status, job.generation, job.attempts) == (
        JobKind.DEIDENTIFY,
        JobStatus.QUEUED,
        1,
        0,
    )


def test_a_study_is_deidentified_withheld_instances_recorded_and_the_event_emitted(
    node: Node, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, originals = study
    assert run_one(node, HANDLERS, owner="w1", config=CONFIG)
    assert not run_one(node, HANDLERS, owner="w1", config=CONFIG)  # nothing else is due

    records = rows(node, study_ref)
    outcomes = sorted((row.outcome, row.reason_code) for row in records)
    assert outcomes == [
        (DeidOutcome.DEIDENTIFIED, None),
        (DeidOutcome.DEIDENTIFIED, None),
        (DeidOutcome.DEIDENTIFIED, None),
        (DeidOutcome.WITHHELD, "deid.burned_in_uncleaned"),
    ]
    out = copies(node, study_ref)
    assert len(out) == 3
    for ds, row in zip(out, [r for r in records if r.blob_key], strict=True):
        assert ds.PatientIdentityRemoved == "YES"
        assert str(ds.PatientID) not in (PATIENT_ID_CANARY,)
        assert ds.SOPInstanceUID == row.sop_instance_uid
        assert ds.StudyInstanceUID == row.study_instance_uid
        data = node.blobs.path_of(row.blob_key or "").read_bytes()
        assert PATIENT_ID_CANARY.encode() not in data
        assert PATIENT_NAME_CANARY.split("^")[0].encode() not in data
        assert row.size_bytes == len(data)
    assert len({ds.StudyInstanceUID for ds in out}) == 1
    assert out[0].StudyInstanceUID != originals[0].StudyInstanceUID

    with node.sessions() as session:
        events = [(e.kind, e.study_id, e.generation) for e in list_events(session)]
        (job,) = session.scalars(select(Job)).all()
        (event,) = session.scalars(select(AuditEvent)).all()
    assert events[-1] == (EventKind.STUDY_DEIDENTIFIED, study_ref, 1)
    assert job.status == JobStatus.SUCCEEDED
    assert (event.action, event.outcome, event.object_ref) == ("deidentify", "partial", study_ref)
    detail = json.loads(event.detail)
    assert (detail["deidentified"], detail["withheld"]) == (3, 1)
    assert detail["reasons"] == {"deid.burned_in_uncleaned": 1}
    assert PATIENT_ID_CANARY not in event.detail


def test_the_pseudonym_map_reidentifies_every_copy(node: Node, study: tuple[str, list[Dataset]]) -> None:
    study_ref, originals = study
    run_one(node, HANDLERS, owner="w1", config=CONFIG)
    by_number = {int(ds.InstanceNumber): ds for ds in originals}
    with node.sessions() as session:
        for copy in copies(node, study_ref):
            original = by_number[int(copy.InstanceNumber)]
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
                found = original_of(
                    session, kind="uid", pseudonym=copy[keyword].value, key_id=STAGE.keys.key_id
                )
                assert found == original[keyword].value, keyword
            patient = original_of(
                session, kind="patient_id", pseudonym=copy.PatientID, key_id=STAGE.keys.key_id
            )
            assert patient == PATIENT_ID_CANARY
            accession = original_of(
                session, kind="accession", pseudonym=copy.AccessionNumber, key_id=STAGE.keys.key_id
            )
            assert accession == original.AccessionNumber
        # Another key's pseudonyms are not found under this one.
        assert original_of(session, kind="patient_id", pseudonym=copy.PatientID, key_id="00000000") is None


def test_a_late_instance_deidentifies_only_what_changed(
    node: Node, clock: ManualClock, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, originals = study
    run_one(node, HANDLERS, owner="w1", config=CONFIG)
    before = {row.instance_id: (row.blob_key, row.generation) for row in rows(node, study_ref)}

    late = datasets.make_ct(
        study_uid=originals[0].StudyInstanceUID,
        series_uid=originals[0].SeriesInstanceUID,
        instance_number=4,
        seed=4,
    )
    receive(node, late)
    clock.advance(node.study_idle_seconds + 1)
    assert complete_idle_studies(node) == [study_ref]
    assert run_one(node, HANDLERS, owner="w2", config=CONFIG)

    after = {row.instance_id: (row.blob_key, row.generation) for row in rows(node, study_ref)}
    assert len(after) == 5
    assert {key: after[key] for key in before} == before  # untouched, still generation 1
    (new,) = set(after) - set(before)
    assert after[new][1] == 2
    with node.sessions() as session:
        last = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc())).first()
        assert last is not None
        assert json.loads(last.detail)["unchanged"] == 4
        assert audit.verify_chain(session) == (2, None)
    # The late copy shares the study's pseudonymous UIDs.
    assert len({ds.StudyInstanceUID for ds in copies(node, study_ref)}) == 1


def test_a_replaced_original_is_deidentified_again_and_its_old_copy_removed(
    node: Node, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, _ = study
    run_one(node, HANDLERS, owner="w1", config=CONFIG)
    record = next(row for row in rows(node, study_ref) if row.blob_key)
    old_key = record.blob_key or ""
    with node.sessions.begin() as session:  # as the `replace` duplicate policy leaves it
        session.execute(update(Instance).where(Instance.id == record.instance_id).values(sha256="0" * 64))
        jobs.enqueue(session, kind=JobKind.DEIDENTIFY, study_id=study_ref, generation=2, now=node.clock.now())
    assert run_one(node, HANDLERS, owner="w1", config=CONFIG)
    renewed = next(row for row in rows(node, study_ref) if row.instance_id == record.instance_id)
    assert renewed.blob_key not in (None, old_key)
    assert renewed.source_sha256 == "0" * 64
    with pytest.raises(BlobNotFound):
        node.blobs.path_of(old_key)


def test_a_worker_whose_lease_was_taken_over_writes_nothing(
    node: Node, clock: ManualClock, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, _ = study
    with node.sessions.begin() as session:
        stale = jobs.claim(session, kinds=["deidentify"], owner="slow", now=clock.now(), lease_seconds=10)
    assert stale is not None
    clock.advance(11)
    with node.sessions.begin() as session:
        assert jobs.claim(session, kinds=["deidentify"], owner="fast", now=clock.now(), lease_seconds=60)

    with pytest.raises(LeaseLost):
        deidentify_study(node, STAGE, stale, lease_seconds=60)
    assert rows(node, study_ref) == []
    assert list((node.blobs.root / "deid").rglob("*.dcm")) == []  # its copies were discarded


class _FailingBlobs(FileBlobStore):
    def write_bytes(self, data: bytes, *, namespace: str) -> str:
        raise OSError(28, "No space left on device")


def test_a_store_failure_fails_the_attempt_with_its_code_and_the_job_is_retried(
    node: Node, clock: ManualClock, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, _ = study
    failing = dataclasses.replace(node, blobs=_FailingBlobs(node.blobs.root))
    assert run_one(failing, HANDLERS, owner="w1", config=CONFIG)
    (job,) = job_of(node, study_ref)
    assert (job.status, job.last_error_code, job.attempts) == (JobStatus.QUEUED, "deid.store_failed", 1)
    assert job.run_at == clock.now() + timedelta(seconds=jobs.backoff_seconds(1))
    assert rows(node, study_ref) == []

    assert not run_one(node, HANDLERS, owner="w1", config=CONFIG)  # backing off
    clock.advance(jobs.backoff_seconds(1))
    assert run_one(node, HANDLERS, owner="w1", config=CONFIG)
    assert len(rows(node, study_ref)) == 4
    assert job_of(node, study_ref)[0].status == JobStatus.SUCCEEDED


def test_an_unexpected_error_is_recorded_without_its_message_and_the_worker_goes_on(
    node: Node, study: tuple[str, list[Dataset]], monkeypatch: pytest.MonkeyPatch
) -> None:
    study_ref, _ = study
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(PATIENT_NAME_CANARY)

    handlers = {"deidentify": explode}
    stop = threading.Event()
    worker = threading.Thread(target=run_worker, args=(node, handlers, stop), kwargs={"config": CONFIG})
    worker.start()
    try:
        wait_until(
            lambda: job_of(node, study_ref)[0].last_error_code is not None,
            timeout=10,
            what="the failed attempt",
        )
    finally:
        stop.set()
        worker.join(timeout=5)
    (job,) = job_of(node, study_ref)
    assert (job.status, job.last_error_code) == (JobStatus.QUEUED, "job.internal_error")
    assert not worker.is_alive()
    logged = stream.getvalue()
    assert "job_internal_error" in logged
    assert PATIENT_NAME_CANARY not in logged
    assert PATIENT_NAME_CANARY.split("^")[0] not in logged
    logging.getLogger().handlers.clear()


def test_no_patient_value_reaches_the_stage_logs(node: Node, study: tuple[str, list[Dataset]]) -> None:
    study_ref, originals = study
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    try:
        run_one(node, HANDLERS, owner="w1", config=CONFIG)
    finally:
        logging.getLogger().handlers.clear()
    logged = stream.getvalue()
    assert "study_deidentified" in logged
    for needle in (PATIENT_ID_CANARY, PATIENT_NAME_CANARY.split("^")[0], originals[0].StudyInstanceUID):
        assert needle not in logged
    assert study_ref in logged


def test_a_missing_original_is_withheld_with_its_code(node: Node, study: tuple[str, list[Dataset]]) -> None:
    study_ref, _ = study
    with node.sessions() as session:
        key = session.scalars(select(Instance.blob_key).where(Instance.study_id == study_ref)).first()
    assert key is not None
    node.blobs.path_of(key).unlink()
    assert run_one(node, HANDLERS, owner="w1", config=CONFIG)
    codes = sorted(str(row.reason_code) for row in rows(node, study_ref))
    assert codes == ["None", "None", "deid.burned_in_uncleaned", "deid.source_missing"]


def test_a_long_study_renews_its_lease_and_a_lost_one_stops_the_run(
    node: Node, clock: ManualClock, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, _ = study
    with node.sessions.begin() as session:
        job = jobs.claim(session, kinds=["deidentify"], owner="w1", now=clock.now(), lease_seconds=30)
    assert job is not None

    class _SlowClock(ManualClock):
        """Each reading is 20 s later: every instance takes longer than a third of the lease."""

        def now(self) -> datetime:
            clock.advance(20)
            return clock.now()

    slow = dataclasses.replace(node, clock=_SlowClock())
    deidentify_study(slow, STAGE, job, lease_seconds=30)
    assert len(rows(node, study_ref)) == 4  # 80 s of work on a 30 s lease: renewed on the way

    with node.sessions.begin() as session:
        session.execute(update(Job).values(lease_owner="someone-else"))
        session.execute(update(Instance).values(sha256="1" * 64))
    with pytest.raises(LeaseLost):
        deidentify_study(slow, STAGE, job, lease_seconds=30)


def test_copies_no_row_names_are_deleted_at_start_and_named_ones_kept(
    node: Node, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, _ = study
    run_one(node, HANDLERS, owner="w1", config=CONFIG)
    kept = {row.blob_key for row in rows(node, study_ref) if row.blob_key}
    orphan = node.blobs.write_bytes(
        b"a copy written by a worker that died before its commit", namespace="deid"
    )

    assert discard_unreferenced_copies(node, modified_after=0.0) == 1
    assert set(node.blobs.iter_keys("deid", modified_after=0.0)) == kept
    with pytest.raises(BlobNotFound):
        node.blobs.path_of(orphan)


def test_the_study_row_gets_the_identifiers_non_phi_views_show(
    node: Node, study: tuple[str, list[Dataset]]
) -> None:
    study_ref, originals = study
    run_one(node, HANDLERS, owner="w1", config=CONFIG)
    with node.sessions() as session:
        from storage.models import Study

        row = session.get(Study, study_ref)
    assert row is not None
    copy = copies(node, study_ref)[0]
    assert (row.pseudonym_patient_id, row.pseudonym_study_instance_uid) == (
        copy.PatientID,
        copy.StudyInstanceUID,
    )
    assert row.pseudonym_study_instance_uid != originals[0].StudyInstanceUID
    assert row.modalities == "CT,US"
    assert row.deidentified_at == node.clock.now()
