"""Calling receive_instance directly, with a spool file as pynetdicom leaves one (file meta, data set)."""

from __future__ import annotations

import uuid
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.dicom.validation import ReceiveContext
from dicom_node.services.ingest import IngestOutcome, ReceivedInstance, receive_instance
from dicom_node.services.node import Node
from tests.harness import datasets


def spool(node: Node, ds: Dataset) -> Path:
    """A spool file on the store's filesystem (in `tmp_dir`), so adopting it is a rename."""
    return datasets.write(ds, node.blobs.tmp_dir / f"{uuid.uuid4().hex}.dcm")


def received(
    node: Node, ds: Dataset, *, context: ReceiveContext | None = None, association_ref: str = "assoc_test"
) -> ReceivedInstance:
    return ReceivedInstance(
        path=spool(node, ds),
        context=context
        or ReceiveContext(
            context_sop_class_uid=ds.SOPClassUID,
            affected_sop_class_uid=ds.SOPClassUID,
            affected_sop_instance_uid=ds.SOPInstanceUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        ),
        calling_ae_title="STORESCU",
        called_ae_title="DICOM_NODE",
        association_ref=association_ref,
    )


def receive(node: Node, ds: Dataset) -> IngestOutcome:
    return receive_instance(node, received(node, ds))
