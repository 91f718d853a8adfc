"""DIMSE status values by name, and the status each validation code is answered with.

The table lives beside the validation codes (not in the network adapter) so the rejection row
records exactly the status the sender was given. PS3.4 Annex B.2.3 defines the C-STORE ranges:
A7xx refused (out of resources), A9xx data set does not match SOP class, Cxxx cannot understand,
0122 SOP class not supported (used here for "refused by this node's configuration").
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from dicom_node.dicom.validation import Code
from storage.errors import BlobStoreFailed, DatabaseUnavailable


class Status(IntEnum):
    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    MOVE_DESTINATION_UNKNOWN = 0xA801
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRUNCATED = 0xC001
    SOP_INSTANCE_UID_MISMATCH = 0xC002
    TYPE1_MISSING = 0xC010
    UID_INVALID = 0xC011
    PHOTOMETRIC_UNKNOWN = 0xC020
    BITS_STORED_EXCEEDS_ALLOCATED = 0xC021
    DIMENSIONS_OUT_OF_BOUNDS = 0xC022
    PIXEL_DATA_LENGTH_MISMATCH = 0xC023
    SERIES_IN_OTHER_STUDY = 0xC030
    CANCEL = 0xFE00
    PENDING = 0xFF00


# In precedence order: when an instance fails several checks, the first listed decides the status.
CODE_STATUS: dict[str, Status] = {
    Code.UNREADABLE: Status.CANNOT_UNDERSTAND,
    Code.SOP_CLASS_MISMATCH: Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    Code.MODALITY_NOT_ALLOWED: Status.SOP_CLASS_NOT_SUPPORTED,
    Code.TRUNCATED: Status.TRUNCATED,
    Code.SOP_INSTANCE_UID_MISMATCH: Status.SOP_INSTANCE_UID_MISMATCH,
    Code.TYPE1_MISSING: Status.TYPE1_MISSING,
    Code.UID_INVALID: Status.UID_INVALID,
    Code.PHOTOMETRIC_UNKNOWN: Status.PHOTOMETRIC_UNKNOWN,
    Code.BITS_STORED_EXCEEDS_ALLOCATED: Status.BITS_STORED_EXCEEDS_ALLOCATED,
    Code.DIMENSIONS_OUT_OF_BOUNDS: Status.DIMENSIONS_OUT_OF_BOUNDS,
    Code.PIXEL_DATA_LENGTH_MISMATCH: Status.PIXEL_DATA_LENGTH_MISMATCH,
    Code.SERIES_IN_OTHER_STUDY: Status.SERIES_IN_OTHER_STUDY,
    # The node's own failures, recorded as rejections too: the sender should retry later.
    BlobStoreFailed.code: Status.OUT_OF_RESOURCES,
    DatabaseUnavailable.code: Status.OUT_OF_RESOURCES,
}
_PRECEDENCE = {code: rank for rank, code in enumerate(CODE_STATUS)}


def primary_code(codes: Iterable[str]) -> str:
    """The code that decides the status: the most fundamental failure."""
    return min(codes, key=lambda code: _PRECEDENCE.get(code, len(_PRECEDENCE)))


def status_for_codes(codes: Iterable[str]) -> Status:
    return CODE_STATUS.get(primary_code(codes), Status.CANNOT_UNDERSTAND)
