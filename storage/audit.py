"""The audit trail (DESIGN.md invariant 5): append-only events, each hash-chained to the one before.

A row's hash is SHA-256 over the previous row's hash and the row's own fields in a canonical JSON form,
so editing, deleting or reordering any row breaks the chain at that row, and `verify_chain` names it.
Appends are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite: the writer lock), so the
chain never forks when several processes write at once. Texts are codes and counts: never PHI.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from storage.models import AuditEvent

GENESIS_HASH = "0" * 64
# Where the current request came from (client address, user agent), set by the API per request, so
# every event a request causes names it without each service passing it along.
request_origin: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "request_origin", default=(None, None)
)
# An arbitrary constant naming "the audit chain" among PostgreSQL advisory locks.
_ADVISORY_LOCK_KEY = 0x61756469


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first row whose stored hashes disagree with the chain."""

    event_id: int
    reason: str


def event_hash(prev_hash: str, fields: Mapping[str, object]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode("ascii")).hexdigest()


def _fields(event: AuditEvent) -> dict[str, object]:
    return {
        "occurred_at": event.occurred_at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "object_ref": event.object_ref,
        "client_address": event.client_address,
        "user_agent": event.user_agent,
        "correlation_id": event.correlation_id,
        "detail": event.detail,
    }


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: str,
    now: datetime,
    object_ref: str | None = None,
    detail: Mapping[str, object] | None = None,
    client_address: str | None = None,
    user_agent: str | None = None,
    correlation_id: str | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction (it commits with the change it records)."""
    origin_address, origin_agent = request_origin.get()
    client_address = client_address or origin_address
    user_agent = user_agent or origin_agent
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    prev_hash = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    event = AuditEvent(
        occurred_at=now.astimezone(UTC),
        actor=actor,
        action=action,
        outcome=outcome,
        object_ref=object_ref,
        client_address=client_address,
        user_agent=user_agent,
        correlation_id=correlation_id,
        detail=json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":")),
        prev_hash=prev_hash or GENESIS_HASH,
    )
    event.hash = event_hash(event.prev_hash, _fields(event))
    session.add(event)
    session.flush()
    return event


def verify_chain(session: Session, *, batch: int = 1000) -> tuple[int, ChainBreak | None]:
    """Walk the chain in id order: (events checked, first break or None)."""
    expected_prev = GENESIS_HASH
    checked = 0
    last_id = 0
    while True:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
        ).all()
        if not events:
            return checked, None
        for event in events:
            # The row's own hash first: it covers prev_hash, so an edited prev_hash is an altered row;
            # an intact row that does not follow its predecessor means one was deleted or moved.
            if event_hash(event.prev_hash, _fields(event)) != event.hash:
                return checked, ChainBreak(event.id, "audit.event_altered")
            if event.prev_hash != expected_prev:
                return checked, ChainBreak(event.id, "audit.chain_broken")
            expected_prev = event.hash
            checked += 1
            last_id = event.id
