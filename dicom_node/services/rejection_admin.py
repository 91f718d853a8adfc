"""Rejected inputs for admins: what was refused and why; quarantined bytes (PHI) to admins only, audited."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from dicom_node.services.views import NotFound, Page, PageRequest
from storage import audit
from storage.errors import BlobNotFound
from storage.listing import comma_list_has, fetch_page
from storage.models import Rejection

if TYPE_CHECKING:
    from dicom_node.services.node import Node


@dataclass(frozen=True, slots=True)
class RejectionView:
    id: str
    received_at: datetime
    association_ref: str | None
    calling_ae_title: str
    called_ae_title: str
    sop_class_uid: str | None
    status: int
    codes: list[str]
    size_bytes: int | None
    sha256: str | None
    has_quarantined_bytes: bool


def _view(row: Rejection) -> RejectionView:
    return RejectionView(
        id=row.id,
        received_at=row.received_at,
        association_ref=row.association_ref,
        calling_ae_title=row.calling_ae_title,
        called_ae_title=row.called_ae_title,
        sop_class_uid=row.sop_class_uid,
        status=row.status,
        codes=[code for code in row.codes.split(",") if code],
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        has_quarantined_bytes=row.quarantine_key is not None,
    )


def list_rejections(node: Node, request: PageRequest, *, code: str | None = None) -> Page[RejectionView]:
    statement = select(Rejection)
    if code is not None:
        statement = statement.where(comma_list_has(Rejection.codes, code))
    with node.sessions() as session:
        rows, total = fetch_page(
            session,
            statement.order_by(Rejection.received_at.desc(), Rejection.id),
            page=request.page,
            page_size=request.page_size,
        )
        items = [_view(row) for row in rows]
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)


def get_rejection(node: Node, rejection_id: str) -> RejectionView:
    with node.sessions() as session:
        row = session.get(Rejection, rejection_id)
        if row is None:
            raise NotFound()
        return _view(row)


def quarantined_bytes(
    node: Node, rejection_id: str, *, actor: str, client_address: str | None = None
) -> Path:
    """The file of a rejection's quarantined bytes; the read is audited before the path is handed out."""
    now = node.clock.now()
    with node.sessions.begin() as session:
        row = session.get(Rejection, rejection_id)
        if row is None or row.quarantine_key is None:
            raise NotFound()
        try:
            path = node.blobs.path_of(row.quarantine_key)
        except BlobNotFound as exc:
            raise NotFound() from exc
        audit.append(
            session,
            actor=actor,
            action="phi_read",
            outcome="success",
            object_ref=rejection_id,
            client_address=client_address,
            now=now,
            detail={"what": "quarantined_bytes"},
        )
    return path
