"""Association policy: the calling-AE allowlist, the called AE title, and the association limit."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dicom_node.dicom.dimse_status import Status
from dicom_node.services.node import Node
from storage.models import Instance
from tests.conftest import NodeMaker
from tests.harness import datasets, dicom_tools
from tests.harness.waiting import wait_until


def associate(port: int, *, calling: str = "ALLOWED", called: str = "DICOM_NODE") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=called)


def echo(assoc: Association) -> int:
    return int(assoc.send_c_echo().get("Status", -1))


def _instances(node: Node) -> list[str]:
    with node.sessions() as session:
        return [row.original_sop_instance_uid for row in session.scalars(select(Instance))]


def test_allowed_calling_ae_stores_and_others_are_rejected(make_node: NodeMaker, tmp_path: Path) -> None:
    node, server = make_node(allowed_calling_aes=["ALLOWED", "STORESCU"])
    ct = datasets.make_ct()

    assoc = associate(server.port, calling="ALLOWED")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(ct).Status) == Status.SUCCESS
    finally:
        assoc.release()
    path = datasets.write(datasets.make_ct(), tmp_path / "in" / "ct.dcm")
    assert dicom_tools.storescu(server.port, [path], calling_ae="STORESCU").returncode == 0
    assert len(_instances(node)) == 2

    stranger = associate(server.port, calling="STRANGER")
    assert stranger.is_rejected
    assert not stranger.is_established
    result = dicom_tools.echoscu(server.port, calling_ae="STRANGER")
    assert result.returncode != 0, result.stdout + result.stderr
    refused = dicom_tools.storescu(server.port, [path], calling_ae="ECHOSCU")
    assert refused.returncode != 0
    assert len(_instances(node)) == 2

    # The rejections left the node serving allowed peers.
    assert dicom_tools.echoscu(server.port, calling_ae="ALLOWED").returncode == 0


def test_any_calling_ae_is_accepted_without_an_allowlist(make_node: NodeMaker) -> None:
    _, server = make_node()
    assoc = associate(server.port, calling="ANYONE")
    assert assoc.is_established
    try:
        assert echo(assoc) == Status.SUCCESS
    finally:
        assoc.release()


def _rejected(reason: str) -> float:
    labels = {"result": "rejected", "reason": reason}
    return REGISTRY.get_sample_value("dicom_node_associations_total", labels) or 0.0


def test_wrong_called_ae_title_is_rejected(make_node: NodeMaker) -> None:
    _, server = make_node()
    before = _rejected("called_ae_unknown")
    wrong = associate(server.port, called="NOT_THE_NODE")
    assert wrong.is_rejected
    wait_until(lambda: _rejected("called_ae_unknown") == before + 1, timeout=10, what="the reason counted")
    assert dicom_tools.echoscu(server.port, called_ae="NOT_THE_NODE").returncode != 0
    assert dicom_tools.echoscu(server.port, called_ae="DICOM_NODE").returncode == 0


def test_max_associations_is_honoured(make_node: NodeMaker) -> None:
    node, server = make_node(max_associations=2)
    first = associate(server.port)
    second = associate(server.port)
    held = [first, second]
    try:
        assert first.is_established and second.is_established
        before = _rejected("capacity")
        third = associate(server.port)
        assert third.is_rejected
        wait_until(lambda: _rejected("capacity") == before + 1, timeout=10, what="the reason counted")
        assert not third.is_established
        assert dicom_tools.echoscu(server.port, calling_ae="ALLOWED").returncode != 0
        # The two held associations still work.
        assert echo(first) == Status.SUCCESS
        ct = datasets.make_ct()
        assert int(second.send_c_store(ct).Status) == Status.SUCCESS
        assert _instances(node) == [ct.SOPInstanceUID]
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
    # Released, they make room again.
    wait_until(lambda: server.active_associations == 0, timeout=10, what="held associations to close")
    fourth = associate(server.port)
    try:
        assert fourth.is_established
        assert echo(fourth) == Status.SUCCESS
    finally:
        if fourth.is_established:
            fourth.release()
