"""Start-up recovery: quarantine store files that no row refers to, so no PHI sits on disk untracked.

A receiver that dies after renaming a received file into the store and before its commit leaves
a file no row names. It was never acknowledged (success is sent only after the commit), so the
sender still has the instance and will send it again; the file is quarantined, not deleted, with
a rejection row, so an administrator can see what happened and the retention rules cover it.

Only files changed since the previous start are looked at: an orphan can only come from a lifetime
that ended without a clean stop, and a scan of the whole store at every start would grow with it.
The supervisor holds the data directory's lock while this runs, so no receiver is mid-commit.

A worker that dies between writing de-identified copies and its commit leaves copies no row names;
they are derived data that the job's next run makes again, so they are deleted, not quarantined.
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import TYPE_CHECKING

from storage import deid_records, orphans
from storage import rejections as rejection_repo
from storage.errors import StorageError
from storage.models import Rejection, new_id

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dicom_node.services.node import Node

logger = logging.getLogger(__name__)

ORPHAN_CODE = "store.unacknowledged_orphan"
_ORPHAN_STATUS = 0xA700  # what its sender saw, if anything: a failure or a dropped association
_BATCH = 500


def quarantine_unreferenced_blobs(node: Node, *, modified_after: float) -> int:
    """Move every unreferenced store blob changed after `modified_after` to quarantine; the count."""
    moved = 0
    keys = node.blobs.iter_keys("store", modified_after=modified_after)
    for batch in _batches(keys):
        with node.sessions() as session:
            referenced = orphans.referenced_store_keys(session, batch)
        for key in batch:
            if key not in referenced and _quarantine(node, key):
                moved += 1
    if moved:
        logger.warning(
            "unacknowledged store files quarantined",
            extra={"event": "orphans_quarantined", "count": moved, "error_code": ORPHAN_CODE},
        )
    return moved


def discard_unreferenced_copies(node: Node, *, modified_after: float) -> int:
    """Delete every de-identified copy changed after `modified_after` that no row names; the count."""
    removed = 0
    for batch in _batches(node.blobs.iter_keys("deid", modified_after=modified_after)):
        with node.sessions() as session:
            referenced = deid_records.referenced_deid_keys(session, batch)
        for key in batch:
            if key not in referenced:
                node.blobs.discard(key)
                removed += 1
    if removed:
        logger.info(
            "unreferenced de-identified copies removed", extra={"event": "copies_discarded", "count": removed}
        )
    return removed


def _quarantine(node: Node, key: str) -> bool:
    try:
        path = node.blobs.path_of(key)
        size = path.stat().st_size
        quarantine_key = node.blobs.move(key, namespace="quarantine")
    except (StorageError, OSError):
        return False  # gone meanwhile, or the disk refuses: the next start tries again
    with node.sessions.begin() as session:
        rejection_repo.add_rejection(
            session,
            Rejection(
                id=new_id("rej"),
                received_at=node.clock.now(),
                association_ref=None,
                calling_ae_title="",
                called_ae_title="",
                sop_class_uid=None,
                status=_ORPHAN_STATUS,
                codes=ORPHAN_CODE,
                quarantine_key=quarantine_key,
                size_bytes=size,
                sha256=None,
            ),
        )
    return True


def _batches(keys: Iterator[str]) -> Iterator[list[str]]:
    while batch := list(islice(keys, _BATCH)):
        yield batch
