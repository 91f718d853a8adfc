"""Remote AEs: C-MOVE destinations, Query/Retrieve callers and SR push destinations."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.models import Peer


def add_peer(session: Session, peer: Peer) -> None:
    session.add(peer)


def get_peer(session: Session, *, ae_title: str) -> Peer | None:
    return session.execute(select(Peer).where(Peer.ae_title == ae_title)).scalar_one_or_none()


def list_peers(session: Session) -> Sequence[Peer]:
    return session.scalars(select(Peer).order_by(Peer.ae_title)).all()


def remove_peer(session: Session, *, ae_title: str) -> bool:
    result = session.execute(delete(Peer).where(Peer.ae_title == ae_title))
    return bool(result.rowcount)  # type: ignore[attr-defined]
