"""DICOM TLS (PS3.15 B.1) on real associations: the node's SCP built from `tls_*` settings.

The node is started through the product's path (settings → `build_node` → `scp_config` → `start_scp`,
via the `make_node` fixture), with a throwaway CA, server and client certificate made by the
`openssl` CLI. The peers are pynetdicom with an `ssl` client context and DCMTK: the DCMTK here
(3.6.7) is built with OpenSSL, so `echoscu`/`storescu` are run with `+tls key cert +cf ca`.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from dicom_node.dicom.dimse_status import Status
from dicom_node.services.node import Node
from storage.models import Instance
from tests.conftest import NodeMaker
from tests.harness import datasets, dicom_tools
from tests.harness.tls import CALLING_AE, Pki, dcmtk_tls_args, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Made once per module: RSA key generation is the slow part, and the certificates are read-only."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_settings(pki: Pki, *, require_client_certificate: bool) -> dict[str, object]:
    settings: dict[str, object] = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    if require_client_certificate:
        settings["tls_ca_file"] = pki.ca_cert
    return settings


def client_context(pki: Pki, *, with_certificate: bool) -> ssl.SSLContext:
    """A client that verifies the node against the test CA (and its name, 127.0.0.1)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if with_certificate:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


def associate(port: int, *, tls: ssl.SSLContext | None, timeout: float = 10) -> Association:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    tls_args = (tls, "127.0.0.1") if tls is not None else None
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", tls_args=tls_args)


def close_transport(assoc: Association) -> None:
    """Close a failed requestor's socket: pynetdicom only shuts it down, and `shutdown()` on a connection the
    peer already dropped raises before `close()` runs, leaving the socket to the garbage collector."""
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None:
        transport.socket.close()


def _instances(node: Node) -> list[str]:
    with node.sessions() as session:
        return [row.original_sop_instance_uid for row in session.scalars(select(Instance))]


def _echo_and_store(assoc: Association) -> str:
    """C-ECHO and one C-STORE on an established association, then release; returns the stored UID."""
    ct = datasets.make_ct()
    try:
        assert int(assoc.send_c_echo().Status) == Status.SUCCESS
        assert int(assoc.send_c_store(ct).Status) == Status.SUCCESS
    finally:
        assoc.release()
    return str(ct.SOPInstanceUID)


def _tls_version(assoc: Association) -> str | None:
    transport = assoc.dul.socket
    sock = transport.socket if transport is not None else None
    return sock.version() if isinstance(sock, ssl.SSLSocket) else None


def test_tls_scu_echoes_and_stores_and_the_row_is_committed(make_node: NodeMaker, pki: Pki) -> None:
    node, server = make_node(**_tls_settings(pki, require_client_certificate=False))
    assoc = associate(server.port, tls=client_context(pki, with_certificate=False))
    assert assoc.is_established
    # The bytes went over TLS 1.2 or later (the node's minimum), not plain TCP.
    assert _tls_version(assoc) in {"TLSv1.2", "TLSv1.3"}
    uid = _echo_and_store(assoc)
    assert _instances(node) == [uid]


def test_plain_tcp_gets_no_association_on_the_tls_port(make_node: NodeMaker, pki: Pki) -> None:
    node, server = make_node(**_tls_settings(pki, require_client_certificate=False))
    plain = associate(server.port, tls=None)
    assert not plain.is_established
    close_transport(plain)
    result = dicom_tools.echoscu(server.port, calling_ae=CALLING_AE, timeout=30)
    assert result.returncode != 0, result.stdout + result.stderr
    assert _instances(node) == []
    # The failed handshakes left the node serving TLS peers.
    assoc = associate(server.port, tls=client_context(pki, with_certificate=False))
    assert assoc.is_established
    assoc.release()


def test_a_silent_tcp_peer_does_not_block_tls_associations(make_node: NodeMaker, pki: Pki) -> None:
    """A port scanner, a load-balancer probe or a stalled client opens TCP and sends nothing.

    pynetdicom's `AssociationServer.get_request` runs the server-side handshake (`wrap_socket`,
    blocking, no timeout) in the accept loop, so until that peer closes no other peer is accepted,
    and `ScpServer.stop` hangs in `shutdown()` as well.
    """
    _, server = make_node(**_tls_settings(pki, require_client_certificate=False))
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        assoc = associate(server.port, tls=client_context(pki, with_certificate=False), timeout=5)
        established = assoc.is_established
        if established:
            assoc.release()
        else:
            close_transport(assoc)
    finally:
        silent.close()  # unblocks the accept loop, so the fixture can stop the server
    assert established, "one silent TCP connection stopped the TLS port from accepting associations"


def test_client_certificate_is_required_when_a_ca_is_configured(make_node: NodeMaker, pki: Pki) -> None:
    node, server = make_node(**_tls_settings(pki, require_client_certificate=True))
    anonymous = associate(server.port, tls=client_context(pki, with_certificate=False))
    assert not anonymous.is_established
    close_transport(anonymous)
    assert _instances(node) == []

    assoc = associate(server.port, tls=client_context(pki, with_certificate=True))
    assert assoc.is_established
    uid = _echo_and_store(assoc)
    assert _instances(node) == [uid]


def test_dcmtk_echoscu_and_storescu_over_mutual_tls(make_node: NodeMaker, pki: Pki, tmp_path: Path) -> None:
    node, server = make_node(**_tls_settings(pki, require_client_certificate=True))
    echo = dicom_tools.run_tool(
        "echoscu",
        ["-aet", "ECHOSCU", "-aec", "DICOM_NODE", *dcmtk_tls_args(pki), "127.0.0.1", str(server.port)],
        timeout=30,
    )
    assert echo.returncode == 0, echo.stdout + echo.stderr

    ct = datasets.make_ct()
    path = datasets.write(ct, tmp_path / "in" / "ct.dcm")
    stored = dicom_tools.storescu(server.port, [path], extra=dcmtk_tls_args(pki), timeout=60)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert _instances(node) == [ct.SOPInstanceUID]

    # Anonymous TLS (no client certificate) is refused like the pynetdicom client without one.
    anonymous = dicom_tools.run_tool(
        "echoscu",
        [
            "-aet",
            "ECHOSCU",
            "-aec",
            "DICOM_NODE",
            *dcmtk_tls_args(pki, certificate=False),
            "127.0.0.1",
            str(server.port),
        ],
        timeout=30,
    )
    assert anonymous.returncode != 0, anonymous.stdout + anonymous.stderr
