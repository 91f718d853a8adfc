"""Remote AEs the node talks to. The CLI and the admin API call these; changes are audited."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.core.errors import DicomNodeError, PeerAlreadyExists, PeerNotFound
from dicom_node.services.views import NothingToChange
from storage import audit
from storage import peers as peer_repo
from storage.models import Peer, new_id

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session


# A host name or an IPv4/IPv6 address: letters, digits, dots, colons and hyphens, nothing else.
HOST_PATTERN: Final = r"^[A-Za-z0-9.:\-]{1,255}$"
MAX_PORT: Final = 65535


class PeerInvalid(DicomNodeError):
    """A peer's host must be a host name or an IP address and its port 1-65535."""

    code = "peer.invalid"


@dataclass(frozen=True, slots=True)
class PeerView:
    ae_title: str
    host: str
    port: int
    push_results: bool


def _view(peer: Peer) -> PeerView:
    return PeerView(ae_title=peer.ae_title, host=peer.host, port=peer.port, push_results=peer.push_results)


def add_peer(
    session: Session,
    *,
    ae_title: str,
    host: str,
    port: int,
    push_results: bool,
    now: datetime,
    actor: str = "cli",
    client_address: str | None = None,
) -> PeerView:
    _check_address(host, port)
    if peer_repo.get_peer(session, ae_title=ae_title) is not None:
        raise PeerAlreadyExists()
    peer = Peer(
        id=new_id("peer"), ae_title=ae_title, host=host, port=port, push_results=push_results, created_at=now
    )
    peer_repo.add_peer(session, peer)
    audit.append(
        session,
        actor=actor,
        action="peer_add",
        outcome="success",
        object_ref=peer.id,
        client_address=client_address,
        now=now,
        detail={"ae_title": ae_title},
    )
    return _view(peer)


def get_peer(session: Session, *, ae_title: str) -> PeerView:
    peer = peer_repo.get_peer(session, ae_title=ae_title)
    if peer is None:
        raise PeerNotFound()
    return _view(peer)


def list_peers(session: Session) -> Sequence[PeerView]:
    return [_view(peer) for peer in peer_repo.list_peers(session)]


def update_peer(
    session: Session,
    *,
    ae_title: str,
    host: str | None = None,
    port: int | None = None,
    push_results: bool | None = None,
    now: datetime,
    actor: str = "cli",
    client_address: str | None = None,
) -> PeerView:
    """Move a peer to a new address or change whether results are pushed to it; its title stays.

    The audit event keeps old and new values (addresses are not PHI): re-pointing a push destination
    re-routes patient data, and the trail must show where to. Equal values change nothing, unaudited.
    """
    if host is None and port is None and push_results is None:
        raise NothingToChange()
    _check_address(host, port)
    peer = peer_repo.get_peer(session, ae_title=ae_title)
    if peer is None:
        raise PeerNotFound()
    changes: dict[str, object] = {}
    for field, value in (("host", host), ("port", port), ("push_results", push_results)):
        if value is not None and getattr(peer, field) != value:
            changes[field] = [getattr(peer, field), value]
            setattr(peer, field, value)
    if changes:
        audit.append(
            session,
            actor=actor,
            action="peer_update",
            outcome="success",
            object_ref=peer.id,
            client_address=client_address,
            now=now,
            detail={"ae_title": ae_title, **changes},
        )
    return _view(peer)


def _check_address(host: str | None, port: int | None) -> None:
    if host is not None and re.fullmatch(HOST_PATTERN, host) is None:
        raise PeerInvalid()
    if port is not None and not 1 <= port <= MAX_PORT:
        raise PeerInvalid()


def remove_peer(
    session: Session, *, ae_title: str, now: datetime, actor: str = "cli", client_address: str | None = None
) -> None:
    if not peer_repo.remove_peer(session, ae_title=ae_title):
        raise PeerNotFound()
    audit.append(
        session,
        actor=actor,
        action="peer_remove",
        outcome="success",
        object_ref=None,
        client_address=client_address,
        now=now,
        detail={"ae_title": ae_title},
    )


@dataclass(frozen=True, slots=True)
class EchoResult:
    ae_title: str
    success: bool
    status: int | None
    elapsed_ms: float


def echo_peer(peer: PeerView, *, calling_ae_title: str, timeout_seconds: float = 10.0) -> EchoResult:
    """C-ECHO the peer: is it reachable and does it accept us? (Verification SOP class, PS3.4 A.4)."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_seconds
    started = time.monotonic()
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    status: int | None = None
    try:
        if assoc.is_established:
            answer = assoc.send_c_echo()
            status = int(answer.Status) if answer is not None and "Status" in answer else None
    finally:
        if assoc.is_established:
            assoc.release()
    return EchoResult(
        ae_title=peer.ae_title,
        success=status == 0,
        status=status,
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
