"""Remote AEs the node talks to. The CLI and (later) the admin API call these."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicom_node.core.errors import PeerAlreadyExists, PeerNotFound
from storage import peers as peer_repo
from storage.models import Peer, new_id

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session


@dataclass(frozen=True, slots=True)
class PeerView:
    ae_title: str
    host: str
    port: int
    push_results: bool


def _view(peer: Peer) -> PeerView:
    return PeerView(ae_title=peer.ae_title, host=peer.host, port=peer.port, push_results=peer.push_results)


def add_peer(
    session: Session, *, ae_title: str, host: str, port: int, push_results: bool, now: datetime
) -> PeerView:
    if peer_repo.get_peer(session, ae_title=ae_title) is not None:
        raise PeerAlreadyExists()
    peer = Peer(
        id=new_id("peer"), ae_title=ae_title, host=host, port=port, push_results=push_results, created_at=now
    )
    peer_repo.add_peer(session, peer)
    return _view(peer)


def list_peers(session: Session) -> Sequence[PeerView]:
    return [_view(peer) for peer in peer_repo.list_peers(session)]


def remove_peer(session: Session, *, ae_title: str) -> None:
    if not peer_repo.remove_peer(session, ae_title=ae_title):
        raise PeerNotFound()
