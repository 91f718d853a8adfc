"""The audit trail for admins: listing events and verifying the hash chain (CLI and admin API)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from dicom_node.services.views import Page, PageRequest
from storage import audit
from storage.listing import fetch_page
from storage.models import AuditEvent

if TYPE_CHECKING:
    from dicom_node.services.node import Node


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """How many events were checked, and the first one that breaks the chain (with its reason code)."""

    checked: int
    broken_at: int | None
    reason: str | None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def verify(node: Node) -> ChainVerification:
    with node.sessions() as session:
        checked, broken = audit.verify_chain(session)
    if broken is None:
        return ChainVerification(checked=checked, broken_at=None, reason=None)
    return ChainVerification(checked=checked, broken_at=broken.event_id, reason=broken.reason)


@dataclass(frozen=True, slots=True)
class AuditEventView:
    id: int
    occurred_at: datetime
    actor: str
    action: str
    outcome: str
    object_ref: str | None
    client_address: str | None
    user_agent: str | None
    correlation_id: str | None
    detail: dict[str, Any]
    hash: str


def list_events(
    node: Node, request: PageRequest, *, action: str | None = None, object_ref: str | None = None
) -> Page[AuditEventView]:
    """Newest first."""
    statement = select(AuditEvent)
    if action is not None:
        statement = statement.where(AuditEvent.action == action)
    if object_ref is not None:
        statement = statement.where(AuditEvent.object_ref == object_ref)
    with node.sessions() as session:
        rows, total = fetch_page(
            session, statement.order_by(AuditEvent.id.desc()), page=request.page, page_size=request.page_size
        )
        items = [
            AuditEventView(
                id=row.id,
                occurred_at=row.occurred_at,
                actor=row.actor,
                action=row.action,
                outcome=row.outcome,
                object_ref=row.object_ref,
                client_address=row.client_address,
                user_agent=row.user_agent,
                correlation_id=row.correlation_id,
                detail=json.loads(row.detail or "{}"),
                hash=row.hash,
            )
            for row in rows
        ]
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)
