"""The `dicom_node_associations_active` gauge returns to where it started however an association ends.

`_on_established` (EVT_ESTABLISHED) increments it and `_on_closed` (bound to both EVT_RELEASED and
EVT_ABORTED) decrements it, so a path that fires no close event, or two, leaves the gauge wrong for the
life of the process. Each case
waits for the SCP's acceptor thread to end (every handler has run by then) before it compares.

The handlers do not touch the database, so one database kind is enough here.
"""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from prometheus_client import REGISTRY
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from dicom_node.dicom.dimse_status import Status
from dicom_node.net.scp import ScpServer
from tests.conftest import NodeMaker
from tests.harness.waiting import wait_until

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

GAUGE = "dicom_node_associations_active"
ASSOCIATE_AC = 0x02
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def gauge() -> float:
    value = REGISTRY.get_sample_value(GAUGE)
    assert value is not None, f"{GAUGE} is not registered"
    return value


def associations(result: str, reason: str = "none") -> float:
    labels = {"result": result, "reason": reason}
    return REGISTRY.get_sample_value("dicom_node_associations_total", labels) or 0.0


def _acceptor_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("AcceptorThread")]


@pytest.fixture
def start() -> float:
    """The gauge once no association of an earlier test is still closing: the gauge is process-wide."""
    wait_until(lambda: not _acceptor_threads(), timeout=30, what="earlier associations to end")
    return gauge()


def wait_gauge(expected: float) -> None:
    wait_until(lambda: gauge() == expected, timeout=10, what=f"{GAUGE} == {expected} (it is {gauge()})")


def wait_closed(server: ScpServer) -> None:
    """Until the acceptor threads have returned, so no close handler is still to run."""
    wait_until(lambda: server.active_associations == 0, timeout=15, what="the acceptor thread to end")


def associate(port: int, *, calling: str = "GAUGE_SCU") -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")


def close_transport(assoc: Association) -> None:
    """pynetdicom only shuts a failed requestor's socket down, and that raises before `close()` when the
    peer already closed: close it here rather than leave it to the garbage collector."""
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.close()


def _associate_rq(*, calling: str, called: str = "DICOM_NODE") -> bytes:
    """An A-ASSOCIATE-RQ PDU for Verification, to drive the SCP from a raw socket."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the SCP closed the connection"
        data += chunk
    return data


def _recv_pdu_type(sock: socket.socket) -> int:
    pdu_type, _, length = struct.unpack(">BBL", _recv_exactly(sock, 6))
    _recv_exactly(sock, length)
    return int(pdu_type)


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a peer that crashes or loses its link does: no A-RELEASE, no A-ABORT."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_released_association_returns_the_gauge(make_node: NodeMaker, start: float) -> None:
    _, server = make_node()
    accepted = associations("accepted")
    assoc = associate(server.port)
    assert assoc.is_established
    wait_gauge(start + 1)
    assert int(assoc.send_c_echo().Status) == Status.SUCCESS
    assoc.release()
    assert assoc.is_released
    wait_closed(server)
    assert gauge() == start
    assert associations("accepted") == accepted + 1


def test_association_aborted_by_the_scu_returns_the_gauge(make_node: NodeMaker, start: float) -> None:
    _, server = make_node()
    assoc = associate(server.port)
    assert assoc.is_established
    wait_gauge(start + 1)
    assoc.abort()
    assert assoc.is_aborted
    wait_closed(server)
    assert gauge() == start


def test_tcp_connection_dropped_mid_association_returns_the_gauge(make_node: NodeMaker, start: float) -> None:
    _, server = make_node()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(_associate_rq(calling="RAW_SCU"))
        assert _recv_pdu_type(sock) == ASSOCIATE_AC
        wait_gauge(start + 1)
    finally:
        _reset(sock)
    wait_closed(server)
    assert gauge() == start


def test_tcp_connection_closed_before_any_pdu_leaves_the_gauge(make_node: NodeMaker, start: float) -> None:
    # pynetdicom waits acse_timeout (= dimse_timeout_seconds) for an A-ASSOCIATE-RQ even on a closed
    # connection; a short one lets the acceptor thread, and this test, end in seconds.
    _, server = make_node(dimse_timeout_seconds=2.0)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        wait_until(lambda: server.active_associations == 1, timeout=10, what="the connection to be accepted")
        assert gauge() == start
    finally:
        sock.close()
    wait_closed(server)
    assert gauge() == start


def test_association_rejected_by_the_allowlist_leaves_the_gauge(make_node: NodeMaker, start: float) -> None:
    _, server = make_node(allowed_calling_aes=["ALLOWED"])
    rejected = associations("rejected", "calling_ae_not_allowed")
    stranger = associate(server.port, calling="STRANGER")
    assert stranger.is_rejected
    assert not stranger.is_established
    close_transport(stranger)
    wait_until(
        lambda: associations("rejected", "calling_ae_not_allowed") == rejected + 1,
        timeout=10,
        what="the rejection to count under its reason",
    )
    wait_closed(server)
    assert gauge() == start

    # The allowlisted AE on the same server still moves the gauge up and back.
    allowed = associate(server.port, calling="ALLOWED")
    assert allowed.is_established
    wait_gauge(start + 1)
    allowed.release()
    wait_closed(server)
    assert gauge() == start


def test_idle_association_aborted_by_the_scp_returns_the_gauge(make_node: NodeMaker, start: float) -> None:
    _, server = make_node(network_timeout_seconds=1.0)
    assoc = associate(server.port)
    assert assoc.is_established
    wait_gauge(start + 1)
    # The SCU sends nothing: the SCP's network timeout aborts the association from its side.
    wait_until(lambda: assoc.is_aborted, timeout=15, what="the SCP to abort the idle association")
    wait_closed(server)
    assert gauge() == start
