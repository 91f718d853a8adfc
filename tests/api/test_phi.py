"""No GET answer, log line or metric carries PHI; originals only to admins on request, each read audited."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from admin_api.security import ROUTE_ROLES
from dicom_node.core.observability import configure_logging
from storage.models import AuditEvent, Role
from tests.api.conftest import (
    ROLES,
    Api,
    assert_error,
    complete_studies,
    deidentify_all,
    make_rejection,
)
from tests.harness import datasets
from tests.harness.canaries import Canaries, Needle, scan_text
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY
from tests.harness.ingest import receive

ACCESSION_CANARY = "ACCCANARY5150"
OTHER_ID_CANARY = "CANARYMRN0042"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def _plant(api: Api) -> tuple[Canaries, list[str]]:
    """A de-identified study, one still receiving, and a rejection, all full of canaries."""
    uids: list[str] = []
    study_refs: list[str] = []
    for patient_id, count in ((PATIENT_ID_CANARY, 3), (OTHER_ID_CANARY, 1)):
        study_uid, series_uid = generate_uid(), generate_uid()
        for i in range(1, count + 1):
            ds = datasets.make_ct(study_uid=study_uid, series_uid=series_uid, instance_number=i, seed=i)
            ds.PatientID = patient_id
            ds.AccessionNumber = ACCESSION_CANARY
            uids.extend([ds.SOPInstanceUID, series_uid])
            study_refs.append(receive(api.node, ds).study_ref)
        uids.append(study_uid)
        if patient_id == PATIENT_ID_CANARY:
            assert complete_studies(api.node, api.clock)
            assert deidentify_all(api.node) == 1
    rejected = datasets.make_ct()
    rejected.AccessionNumber = ACCESSION_CANARY
    uids.extend([rejected.SOPInstanceUID, rejected.StudyInstanceUID, rejected.SeriesInstanceUID])
    make_rejection(api.node, rejected)
    canaries = Canaries(
        names=(PATIENT_NAME_CANARY,),
        mrns=(PATIENT_ID_CANARY, OTHER_ID_CANARY),
        texts=(ACCESSION_CANARY, *sorted(set(uids))),
    )
    return canaries, sorted(set(study_refs))


# Path parameters of GET routes, filled with every id their list route answers: (list path, item key).
_ITEMS = {
    "study_id": ("/api/v1/studies", "id"),
    "job_id": ("/api/v1/jobs", "id"),
    "rejection_id": ("/api/v1/rejections", "id"),
    "ae_title": ("/api/v1/peers", "ae_title"),
    "user_id": ("/api/v1/users", "id"),
}
# Explicitly PHI-reading routes (admins only, audited): the quarantined file as it arrived.
_PHI_READING = {"/api/v1/rejections/{rejection_id}/bytes"}


def _get_paths(api: Api) -> list[str]:
    """Every GET route of the access table, each parameterised route once per existing object."""
    paths = []
    for method, template in ROUTE_ROLES:
        if method != "GET" or template in _PHI_READING:
            continue
        params = re.findall(r"\{(\w+)\}", template)
        if not params:
            paths.append(template)
            continue
        (param,) = params
        listing, key = _ITEMS[param]
        items = api.get(f"{listing}?page_size=100", Role.ADMIN).json()["items"]
        assert items, f"nothing to fill {template} with: the scan would skip it"
        paths += [template.replace(f"{{{param}}}", str(item[key])) for item in items]
    return paths


def _hits(text: str, needles: tuple[Needle, ...], where: str) -> list[str]:
    return [str(hit) for hit in scan_text(text, needles, where=where)]


def test_no_get_answer_log_line_or_metric_carries_phi_for_any_role(api: Api, log_stream: io.StringIO) -> None:
    canaries, _ = _plant(api)
    needles = canaries.needles()
    api.post("/api/v1/peers", Role.ADMIN, json={"ae_title": "PACS", "host": "127.0.0.1", "port": 104})
    api.post(
        "/api/v1/users",
        Role.ADMIN,
        json={"username": "reader", "password": "long enough password", "role": "viewer"},
    )
    paths = _get_paths(api)
    assert sum("/api/v1/studies/" in path for path in paths) == 2
    hits: list[str] = []
    for path in paths:
        for role in (None, *ROLES):
            answer = api.get(path, role)
            assert answer.status_code < 500, (path, answer.text)
            hits += _hits(answer.text, needles, f"{path} as {role}")
            hits += _hits(str(answer.headers), needles, f"headers of {path} as {role}")
    hits += _hits(api.get("/metrics").text, needles, "/metrics")
    hits += _hits(log_stream.getvalue(), needles, "the log")
    assert not hits, "\n".join(hits)
    assert log_stream.getvalue(), "the log stream saw nothing: the scan proved nothing"


def _phi_reads(api: Api) -> int:
    with api.node.sessions() as session:
        return (
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "phi_read")
            )
            or 0
        )


def test_originals_only_for_admins_on_request_and_each_read_is_audited(
    api: Api, log_stream: io.StringIO
) -> None:
    canaries, study_refs = _plant(api)
    for role in (Role.VIEWER, Role.OPERATOR):
        assert_error(api.get("/api/v1/studies?include_phi=true", role), 403, "auth.forbidden")
        for ref in study_refs:
            assert_error(api.get(f"/api/v1/studies/{ref}?include_phi=true", role), 403, "auth.forbidden")
    assert _phi_reads(api) == 0

    listed = api.get("/api/v1/studies?include_phi=true", Role.ADMIN)
    assert listed.status_code == 200
    assert _hits(listed.text, canaries.needles(), "include_phi"), "the scanner must see the originals"
    originals = {item["original"]["patient_id"] for item in listed.json()["items"]}
    assert originals == {PATIENT_ID_CANARY, OTHER_ID_CANARY}
    assert _phi_reads(api) == 1
    for number, ref in enumerate(study_refs, start=2):
        detail = api.get(f"/api/v1/studies/{ref}?include_phi=true", Role.ADMIN).json()
        assert detail["study"]["original"]["patient_id"] in originals
        assert detail["study"]["original"]["study_instance_uid"] in canaries.texts
        assert _phi_reads(api) == number
    events = api.get("/api/v1/audit?action=phi_read", Role.ADMIN).json()["items"]
    assert [event["object_ref"] for event in events] == [*reversed(study_refs), None]
    assert {event["detail"]["what"] for event in events} == {"study_original_identity"}
    assert not _hits(log_stream.getvalue(), canaries.needles(), "the log")
    # Without the flag the admin sees pseudonyms only.
    plain = api.get("/api/v1/studies", Role.ADMIN).json()["items"]
    assert all(item["original"] is None for item in plain)
