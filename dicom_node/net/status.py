"""Errors of our tree → the DIMSE status the peer is answered with (resolved along the MRO)."""

from __future__ import annotations

from dicom_node.core.errors import (
    DicomNodeError,
    InstanceRejected,
    PeerAlreadyExists,
    PeerNotFound,
    SettingsInvalid,
)
from dicom_node.dicom.dimse_status import Status, primary_code, status_for_codes
from storage.errors import BlobNotFound, BlobStoreFailed, DatabaseUnavailable, StorageError

INTERNAL_ERROR_CODE = "node.internal_error"

# An unexpected failure is ours, not the sender's: OUT_OF_RESOURCES invites a retry, where
# CANNOT_UNDERSTAND would make a modality drop the image for good.
ERROR_STATUS: dict[type[Exception], Status] = {
    BlobStoreFailed: Status.OUT_OF_RESOURCES,
    BlobNotFound: Status.OUT_OF_RESOURCES,
    DatabaseUnavailable: Status.OUT_OF_RESOURCES,
    StorageError: Status.OUT_OF_RESOURCES,
    PeerNotFound: Status.MOVE_DESTINATION_UNKNOWN,
    PeerAlreadyExists: Status.CANNOT_UNDERSTAND,
    SettingsInvalid: Status.OUT_OF_RESOURCES,
    DicomNodeError: Status.CANNOT_UNDERSTAND,
}


def status_for_error(error: Exception) -> tuple[Status, str]:
    """The status and the error code (for ErrorComment) that answer `error`."""
    if isinstance(error, InstanceRejected):
        return status_for_codes(error.codes), primary_code(error.codes)
    for cls in type(error).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls], str(getattr(error, "code", INTERNAL_ERROR_CODE))
    return Status.OUT_OF_RESOURCES, INTERNAL_ERROR_CODE
