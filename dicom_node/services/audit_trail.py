"""The audit trail for admins: verifying the hash chain (`dicom-node verify-audit`, later the admin API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage import audit

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
