"""Transfers are audited per study per association when it ends; refused associations are audited too."""

from __future__ import annotations

import json

from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select

from dicom_node.dicom.dimse_status import Status
from dicom_node.services.node import Node
from storage import audit
from storage.models import AuditEvent, Study
from tests.conftest import NodeMaker
from tests.harness import datasets
from tests.harness.datasets import PATIENT_ID_CANARY, PATIENT_NAME_CANARY
from tests.harness.waiting import wait_until


def _events(node: Node) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_one_receive_event_per_study_and_one_reject_event_per_association(make_node: NodeMaker) -> None:
    node, server = make_node()
    first, second = generate_uid(), generate_uid()
    good = [datasets.make_ct(study_uid=first, instance_number=i, seed=i) for i in range(1, 4)]
    good.append(datasets.make_ct(study_uid=second))
    bad = datasets.make_ct(study_uid=second, instance_number=9)
    del bad.StudyInstanceUID  # refused: a required element is missing

    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        assert all(int(assoc.send_c_store(ds).Status) == Status.SUCCESS for ds in good)
        assert int(assoc.send_c_store(bad).Status) != Status.SUCCESS
        assert int(assoc.send_c_store(good[0]).Status) == Status.SUCCESS  # identical duplicate
    finally:
        assoc.release()

    wait_until(lambda: len(_events(node)) == 3, timeout=10, what="the transfer's audit events")
    events = _events(node)
    with node.sessions() as session:
        refs = {s.original_study_instance_uid: s.id for s in session.scalars(select(Study))}
    receives = {e.object_ref: json.loads(e.detail) for e in events if e.action == "receive"}
    assert receives == {
        refs[first]: {"instances": {"duplicate_identical": 1, "stored": 3}, "aborted": False},
        refs[second]: {"instances": {"stored": 1}, "aborted": False},
    }
    (reject,) = [e for e in events if e.action == "reject"]
    assert reject.actor == "MODALITY1" and reject.client_address == "127.0.0.1"
    assert json.loads(reject.detail)["codes"] and json.loads(reject.detail)["failed"] == 0
    assert len({e.correlation_id for e in events}) == 1  # the association's id
    for event in events:
        for needle in (PATIENT_ID_CANARY, PATIENT_NAME_CANARY, first, second):
            assert needle not in event.detail and needle != event.object_ref
    with node.sessions() as session:
        assert audit.verify_chain(session) == (3, None)


def test_a_refused_association_is_audited(make_node: NodeMaker) -> None:
    node, server = make_node(allowed_calling_aes=["ALLOWED"])
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOM_NODE")
    assert assoc.is_rejected
    wait_until(lambda: len(_events(node)) == 1, timeout=10, what="the refusal's audit event")
    (event,) = _events(node)
    assert (event.action, event.outcome, event.actor) == ("association_reject", "failure", "STRANGER")
    assert json.loads(event.detail) == {"called_ae": "DICOM_NODE", "reason": "calling_ae_not_allowed"}
