"""Study filters and details through the pipeline; job retry and cancel, each audited."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydicom.uid import UltrasoundImageStorage, generate_uid
from sqlalchemy import select, update

from dicom_node.services.worker import run_one, stage_handlers
from storage.models import AuditEvent, Job, JobStatus, Role
from tests.api.conftest import STAGE, WORKER, Api, assert_error, complete_studies, make_study
from tests.harness import datasets
from tests.harness.ingest import receive

STUDIES = "/api/v1/studies"


def _ids(api: Api, query: str = "") -> list[str]:
    answer = api.get(f"{STUDIES}?{query}", Role.VIEWER)
    assert answer.status_code == 200, (query, answer.text)
    return [item["id"] for item in answer.json()["items"]]


def test_studies_filter_by_status_modality_and_receipt_time(api: Api) -> None:
    start = api.clock.now()
    old, _ = make_study(api.node)
    assert complete_studies(api.node, api.clock) == [old]
    api.clock.advance(3600)
    middle = api.clock.now()
    new, _ = make_study(api.node, instances=2)
    assert _ids(api) == [new, old]  # newest activity first
    assert _ids(api, "status=complete") == [old]
    assert _ids(api, "status=receiving") == [new]
    assert _ids(api, "modality=CT") == [new, old]
    assert _ids(api, "modality=MR") == []
    assert _ids(api, f"received_from={iso(middle)}") == [new]
    assert _ids(api, f"received_to={iso(start + timedelta(seconds=60))}") == [old]
    assert _ids(api, f"received_from={iso(start)}&received_to={iso(middle + timedelta(hours=1))}") == [
        new,
        old,
    ]
    for bad in (
        "status=deleted",
        "modality=ct",
        "modality=C%20T",
        f"received_from={iso(middle)}&received_to={iso(start)}",
    ):
        assert_error(api.get(f"{STUDIES}?{bad}", Role.VIEWER), 422, "request.filter_invalid")
    assert_error(api.get(f"{STUDIES}?received_from=yesterday", Role.VIEWER), 422, "request.invalid")


def test_a_study_detail_follows_the_pipeline_through_deidentification(api: Api) -> None:
    ref, originals = make_study(api.node, instances=3)
    detail = api.get(f"{STUDIES}/{ref}", Role.VIEWER).json()
    assert detail["study"]["pipeline_state"] == "receiving" and detail["jobs"] == []
    assert (detail["study"]["instance_count"], detail["series_count"]) == (3, 1)

    assert complete_studies(api.node, api.clock) == [ref]
    detail = api.get(f"{STUDIES}/{ref}", Role.VIEWER).json()
    assert detail["study"]["pipeline_state"] == "deidentifying"
    assert [(job["kind"], job["status"]) for job in detail["jobs"]] == [("deidentify", "queued")]
    assert detail["study"]["pseudonym_study_instance_uid"] is None

    assert run_one(api.node, stage_handlers(STAGE, WORKER), owner="t", config=WORKER)
    detail = api.get(f"{STUDIES}/{ref}", Role.VIEWER).json()
    study = detail["study"]
    assert study["pipeline_state"] == "deidentified" and study["deidentified_at"]
    assert [(job["kind"], job["status"]) for job in detail["jobs"]] == [("deidentify", "succeeded")]
    assert (detail["deidentified"], detail["withheld"], detail["withheld_reasons"]) == (3, 0, {})
    assert study["pseudonym_patient_id"] and study["pseudonym_patient_id"] != originals[0].PatientID
    assert study["pseudonym_study_instance_uid"] not in (None, originals[0].StudyInstanceUID)
    assert study["original"] is None
    listed = api.get(STUDIES, Role.VIEWER).json()["items"]
    assert [(item["id"], item["pipeline_state"]) for item in listed] == [(ref, "deidentified")]


def test_a_withheld_instance_is_counted_by_reason(api: Api) -> None:
    ref, originals = make_study(api.node, instances=1)
    # An ultrasound without regions: at risk of burned-in text and not cleanable, so withheld.
    us = datasets.make_ct(study_uid=originals[0].StudyInstanceUID, series_uid=generate_uid(), seed=9)
    us.SOPClassUID = us.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    us.Modality = "US"
    us.BitsStored, us.HighBit = 16, 15
    receive(api.node, us)
    complete_studies(api.node, api.clock)
    assert run_one(api.node, stage_handlers(STAGE, WORKER), owner="t", config=WORKER)
    detail = api.get(f"{STUDIES}/{ref}", Role.VIEWER).json()
    assert (detail["deidentified"], detail["withheld"]) == (1, 1)
    assert detail["withheld_reasons"] == {"deid.burned_in_uncleaned": 1}
    assert set(detail["study"]["modalities"]) == {"CT", "US"}


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _set_status(api: Api, job_id: str, status: JobStatus) -> None:
    with api.node.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status, attempts=2))


def _audited(api: Api, action: str, job_id: str) -> int:
    with api.node.sessions() as session:
        return len(
            session.scalars(
                select(AuditEvent.id).where(AuditEvent.action == action, AuditEvent.object_ref == job_id)
            ).all()
        )


def test_jobs_retry_only_when_finished_badly_and_cancel_only_when_pending_each_audited(api: Api) -> None:
    ref, _ = make_study(api.node)
    complete_studies(api.node, api.clock)
    (job,) = api.get(f"/api/v1/jobs?study_id={ref}", Role.VIEWER).json()["items"]
    job_id = job["id"]
    assert job["status"] == "queued" and job["kind"] == "deidentify"
    assert api.get(f"/api/v1/jobs/{job_id}", Role.VIEWER).json()["id"] == job_id
    assert api.get("/api/v1/jobs?status=queued&kind=deidentify", Role.VIEWER).json()["total"] == 1
    assert api.get("/api/v1/jobs?status=dead", Role.VIEWER).json()["total"] == 0

    retries = cancels = 0
    for status in JobStatus:
        _set_status(api, job_id, status)
        retried = api.post(f"/api/v1/jobs/{job_id}/retry", Role.OPERATOR)
        if status in (JobStatus.DEAD, JobStatus.FAILED, JobStatus.CANCELLED):
            assert retried.status_code == 200, (status, retried.text)
            assert (retried.json()["status"], retried.json()["attempts"]) == ("queued", 0)
            retries += 1
        else:
            assert_error(retried, 409, "request.conflict")
        _set_status(api, job_id, status)
        cancelled = api.post(f"/api/v1/jobs/{job_id}/cancel", Role.OPERATOR)
        if status in (JobStatus.QUEUED, JobStatus.RUNNING):
            assert cancelled.status_code == 200, (status, cancelled.text)
            assert cancelled.json()["status"] == "cancelled"
            cancels += 1
        else:
            assert_error(cancelled, 409, "request.conflict")
    assert (retries, cancels) == (3, 2)
    assert (_audited(api, "job_retry", job_id), _audited(api, "job_cancel", job_id)) == (3, 2)
    events = api.get(f"/api/v1/audit?object_ref={job_id}", Role.ADMIN).json()["items"]
    assert len(events) == 5 and all(event["actor"].startswith("tok") for event in events)
    assert_error(api.post("/api/v1/jobs/job_none/cancel", Role.OPERATOR), 404, "request.not_found")
