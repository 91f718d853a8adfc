"""Audit of DICOM transfers, one event per study per association (as IHE ATNA's "DICOM Instances
Transferred"), plus one for what the association had rejected: an event per instance would put the
audit chain's lock on the C-STORE path, and an auditor asks "who sent which study when", not per file.

Written when the association ends (released or aborted), so a sender that dies mid-study still leaves
its record of what was stored. The object reference is our study id; AE titles and addresses are
configuration, not PHI; codes and counts only.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from storage import audit

if TYPE_CHECKING:
    from dicom_node.services.node import Node

logger = logging.getLogger(__name__)


@dataclass
class AssociationTally:
    """What one association did, counted as its C-STOREs are answered."""

    by_study: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    rejected: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def stored(self, study_ref: str, result: str) -> None:
        with self._lock:
            self.by_study[study_ref][result] += 1

    def refused(self, codes: tuple[str, ...]) -> None:
        with self._lock:
            self.rejected.update(codes or ("unknown",))

    def failure(self) -> None:
        with self._lock:
            self.failed += 1


def write_transfer_events(
    node: Node,
    tally: AssociationTally,
    *,
    calling_ae: str,
    client_address: str | None,
    association_ref: str,
    aborted: bool,
) -> None:
    """The association's audit events, in one transaction; a database failure is logged, not raised."""
    if not tally.by_study and not tally.rejected and not tally.failed:
        return
    now = node.clock.now()
    try:
        with node.sessions.begin() as session:
            for study_ref, counts in sorted(tally.by_study.items()):
                audit.append(
                    session,
                    actor=calling_ae,
                    action="receive",
                    outcome="partial" if aborted else "success",
                    object_ref=study_ref,
                    client_address=client_address,
                    correlation_id=association_ref,
                    now=now,
                    detail={"instances": dict(sorted(counts.items())), "aborted": aborted},
                )
            if tally.rejected or tally.failed:
                audit.append(
                    session,
                    actor=calling_ae,
                    action="reject",
                    outcome="failure",
                    object_ref=None,
                    client_address=client_address,
                    correlation_id=association_ref,
                    now=now,
                    detail={"codes": dict(sorted(tally.rejected.items())), "failed": tally.failed},
                )
    except SQLAlchemyError as exc:
        logger.warning(
            "transfer audit not written", extra={"event": "audit_write_failed", "reason": type(exc).__name__}
        )


def write_association_refused(
    node: Node, *, calling_ae: str, called_ae: str, client_address: str | None, reason: str
) -> None:
    try:
        with node.sessions.begin() as session:
            audit.append(
                session,
                actor=calling_ae,
                action="association_reject",
                outcome="failure",
                client_address=client_address,
                now=node.clock.now(),
                detail={"called_ae": called_ae, "reason": reason},
            )
    except SQLAlchemyError as exc:
        logger.warning(
            "association audit not written",
            extra={"event": "audit_write_failed", "reason": type(exc).__name__},
        )
