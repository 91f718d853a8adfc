"""services.recovery: store files no row refers to (a crash between rename and commit) go to quarantine."""

from __future__ import annotations

import os
import time

from sqlalchemy import select

from dicom_node.core.settings import DuplicatePolicy
from dicom_node.services.node import IngestPolicy, Node
from dicom_node.services.recovery import ORPHAN_CODE, quarantine_unreferenced_blobs
from storage.models import DuplicateReceipt, Instance, Rejection
from tests.harness import datasets
from tests.harness.ingest import receive


def _orphan(node: Node, ds_bytes: bytes) -> str:
    """What a receiver that died after `adopt` and before its commit leaves behind."""
    return node.blobs.write_bytes(ds_bytes, namespace="store")


def _store_keys(node: Node) -> set[str]:
    return set(node.blobs.iter_keys("store", modified_after=0.0))


def test_an_unreferenced_store_file_is_quarantined_with_a_rejection_row(node: Node) -> None:
    stored = receive(node, datasets.make_ct())
    orphan_bytes = b"DICM-orphan-bytes" * 100
    orphan = _orphan(node, orphan_bytes)

    assert quarantine_unreferenced_blobs(node, modified_after=0.0) == 1

    with node.sessions() as session:
        instance = session.get(Instance, stored.instance_ref)
        rejections = session.scalars(select(Rejection)).all()
    assert instance is not None
    assert _store_keys(node) == {instance.blob_key}, "the referenced blob stays; the orphan leaves"
    assert [(r.codes, r.status, r.size_bytes) for r in rejections] == [(ORPHAN_CODE, 0xA700, 1700)]
    quarantined = node.blobs.path_of(rejections[0].quarantine_key or "")
    assert quarantined.read_bytes() == orphan_bytes, "quarantined, never deleted"
    assert orphan not in _store_keys(node)
    assert quarantine_unreferenced_blobs(node, modified_after=0.0) == 0, "a second pass finds nothing"


def test_files_older_than_the_previous_start_are_not_examined(node: Node) -> None:
    orphan = _orphan(node, b"old")
    path = node.blobs.path_of(orphan)
    an_hour_ago = time.time() - 3600
    os.utime(path, (an_hour_ago, an_hour_ago))
    assert quarantine_unreferenced_blobs(node, modified_after=an_hour_ago + 1) == 0
    assert orphan in _store_keys(node)


def test_bytes_a_duplicate_receipt_retains_are_not_orphans(node: Node) -> None:
    first = datasets.make_ct()
    receive(node, first)
    changed = datasets.make_ct(
        sop_instance_uid=first.SOPInstanceUID,
        study_uid=first.StudyInstanceUID,
        series_uid=first.SeriesInstanceUID,
        seed=7,
    )
    keep = Node(
        **{
            **{f: getattr(node, f) for f in node.__dataclass_fields__},
            "ingest": IngestPolicy(node.ingest.rules, DuplicatePolicy.KEEP),
        }
    )
    receive(keep, changed)
    with node.sessions() as session:
        (receipt,) = session.scalars(select(DuplicateReceipt)).all()
    assert receipt.retained_blob_key is not None
    assert quarantine_unreferenced_blobs(node, modified_after=0.0) == 0
    assert receipt.retained_blob_key in _store_keys(node)


def test_many_orphans_are_handled_in_batches(node: Node) -> None:
    for index in range(620):
        _orphan(node, index.to_bytes(4, "big"))
    assert quarantine_unreferenced_blobs(node, modified_after=0.0) == 620
    assert _store_keys(node) == set()
