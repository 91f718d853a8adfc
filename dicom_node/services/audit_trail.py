"""The audit trail for admins: listing events and verifying the hash chain (CLI and admin API)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
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


def _view(row: AuditEvent) -> AuditEventView:
    return AuditEventView(
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
        items = [_view(row) for row in rows]
    return Page(items=items, total=total, page=request.page, page_size=request.page_size)


# RFC 5424 6.2.1: facility 4 (security/authorization); notice for success, warning otherwise.
_FACILITY = 4
_SEVERITY = {"success": 5}
_WARNING = 4
# The SD-ID's enterprise number is RFC 5612's documentation number until one is registered.
SD_ID = "dicom-node@32473"


def _sd_value(value: object) -> str:
    """RFC 5424 6.3.3: within a PARAM-VALUE, escape '"', '\\' and ']'."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, or the NILVALUE."""
    cleaned = "".join(ch for ch in value if 33 <= ord(ch) <= 126)[:limit]
    return cleaned or "-"


def syslog_line(event: AuditEventView, *, hostname: str) -> str:
    """One audit event as an RFC 5424 message, for a hospital's audit repository."""
    pri = _FACILITY * 8 + _SEVERITY.get(event.outcome, _WARNING)
    timestamp = event.occurred_at.isoformat(timespec="microseconds").replace("+00:00", "Z")
    params = {
        "id": event.id,
        "actor": event.actor,
        "outcome": event.outcome,
        "object": event.object_ref,
        "client": event.client_address,
        "correlation": event.correlation_id,
        "hash": event.hash,
    }
    data = " ".join(f'{name}="{_sd_value(value)}"' for name, value in params.items() if value is not None)
    message = json.dumps(event.detail, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return (
        f"<{pri}>1 {timestamp} {_header_token(hostname, 255)} dicom-node - "
        f"{_header_token(event.action, 32)} [{SD_ID} {data}] {message}"
    )


def syslog_export(node: Node, *, after_id: int = 0, batch: int = 500) -> Iterator[str]:
    """Every event after `after_id`, oldest first, as RFC 5424 lines (pipe them to the repository)."""
    hostname = socket.gethostname()
    last = after_id
    while True:
        with node.sessions() as session:
            rows = session.scalars(
                select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(batch)
            ).all()
            views = [_view(row) for row in rows]
        if not views:
            return
        for view in views:
            yield syslog_line(view, hostname=hostname)
        last = views[-1].id
